//! moto's server: the cell's AWS control plane (RDS, SSM, ECS, ELBv2).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use aws_sdk_rds::config::{BehaviorVersion, Credentials, Region};
use nix::sys::signal::Signal;
use switchyard_aws::AwsClients;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::install::Install;
use crate::process::{free_port, Server};
use crate::CellError;

/// A running moto server and SDK clients pointed at it.
#[derive(Debug)]
pub struct Moto {
    pub endpoint: String,
    pub region: String,
    pub clients: AwsClients,
    server: Server,
    /// Where moto's recorder writes the requests it sees while recording.
    recording: std::path::PathBuf,
}

impl Moto {
    pub async fn start(install: &Install, run_dir: &Path, region: &str) -> Result<Self, CellError> {
        let port = free_port("127.0.0.1")?;
        let mut cmd = Command::new(install.moto_server()?);
        cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
        // Off until `start_recording`: the set-up's PutParameter bodies hold passwords.
        let recording = run_dir.join("logs").join("moto-requests.jsonl");
        cmd.env("MOTO_RECORDER_FILEPATH", &recording);
        cmd.env_remove("MOTO_ENABLE_RECORDING");
        // moto refuses nothing as root and holds no data of ours worth isolating.
        let log = run_dir.join("logs").join("moto.log");
        let mut server = Server::spawn(
            "moto",
            cmd,
            None,
            &log,
            &install.registry(),
            Signal::SIGTERM,
        )?;
        server
            .wait_listening(("127.0.0.1", port), Duration::from_secs(60))
            .await?;
        let endpoint = format!("http://127.0.0.1:{port}");
        let clients = AwsClients::from_config(&sdk_config(&endpoint, region).await);
        Ok(Self {
            endpoint,
            region: region.to_owned(),
            clients,
            server,
            recording,
        })
    }

    /// Starts recording every request from now on (moto's recorder), from an empty record.
    pub async fn start_recording(&self) -> Result<(), CellError> {
        self.post("/moto-api/recorder/reset-recording", &[], "")
            .await?;
        self.post("/moto-api/recorder/start-recording", &[], "")
            .await
            .map(|_| ())
    }

    /// Stops recording and returns each request in order: its API call and, for SSM, the
    /// parameter names it named. The record is then deleted: request bodies can hold
    /// whatever a call sent.
    pub async fn stop_recording(&self) -> Result<Vec<RecordedCall>, CellError> {
        self.post("/moto-api/recorder/stop-recording", &[], "")
            .await?;
        let text = std::fs::read_to_string(&self.recording).unwrap_or_default();
        let _ = std::fs::remove_file(&self.recording);
        Ok(text.lines().filter_map(recorded_call).collect())
    }

    /// Environment that points the standard AWS config chain at this moto: what an
    /// operation run locally (or by hand) is given. moto accepts any keys: these are
    /// placeholders, not credentials.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("AWS_ENDPOINT_URL".to_owned(), self.endpoint.clone()),
            ("AWS_REGION".to_owned(), self.region.clone()),
            ("AWS_ACCESS_KEY_ID".to_owned(), "testing".to_owned()),
            ("AWS_SECRET_ACCESS_KEY".to_owned(), "testing".to_owned()),
        ]
    }

    /// EC2's CreateVpc, which the cell needs only to give its target group a VPC; a raw
    /// query-protocol call spares linking the whole EC2 SDK for one request.
    pub async fn create_vpc(&self) -> Result<String, CellError> {
        let body = "Action=CreateVpc&Version=2016-11-15&CidrBlock=10.0.0.0%2F16";
        let auth = format!(
            "AWS4-HMAC-SHA256 Credential=testing/20260101/{}/ec2/aws4_request, SignedHeaders=host, Signature=0",
            self.region
        );
        let response = self
            .post(
                "/",
                &[
                    ("Authorization", &auth),
                    ("Content-Type", "application/x-www-form-urlencoded"),
                ],
                body,
            )
            .await?;
        let vpc = response
            .split("<vpcId>")
            .nth(1)
            .and_then(|rest| rest.split("</vpcId>").next())
            .ok_or_else(|| {
                CellError::Setup(format!("CreateVpc answered without a vpcId: {response}"))
            })?;
        Ok(vpc.to_owned())
    }

    /// Keeps every ECS task's last status where the API put it. moto otherwise walks a
    /// task towards STOPPED one step per DescribeTasks, so a drain check would see the
    /// direct writers' tasks stop while their workers still write; the scheduler
    /// (`workload::direct`) stops them when their workers have exited.
    pub(crate) async fn hold_ecs_task_states(&self) -> Result<(), CellError> {
        let body = r#"{"model_name": "ecs::task", "transition": {"progression": "manual", "times": 2147483647}}"#;
        self.post(
            "/moto-api/state-manager/set-transition",
            &[("Content-Type", "application/json")],
            body,
        )
        .await
        .map(|_| ())
    }

    async fn post(
        &self,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Result<String, CellError> {
        let addr = self.endpoint.trim_start_matches("http://");
        let mut stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| CellError::Setup(format!("moto: {e}")))?;
        let mut request = format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        request.push_str(body);
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| CellError::Setup(format!("moto: {e}")))?;
        let mut response = String::new();
        stream
            .read_to_string(&mut response)
            .await
            .map_err(|e| CellError::Setup(format!("moto: {e}")))?;
        if !response.starts_with("HTTP/1.1 2") && !response.starts_with("HTTP/1.0 2") {
            return Err(CellError::Setup(format!(
                "moto {path}: {}",
                response.lines().next().unwrap_or_default()
            )));
        }
        Ok(response)
    }

    pub fn pid(&self) -> Option<u32> {
        self.server.pid()
    }

    pub fn stop(&mut self) {
        self.server.stop(Duration::from_secs(10));
    }
}

/// One request moto's recorder saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedCall {
    /// `service:Operation`, e.g. `ssm:GetParameter`, `rds:DescribeDBClusters`.
    pub call: String,
    /// The SSM parameter names the request named (`Name`, `Names`); nothing else of its
    /// body is kept.
    pub names: Vec<String>,
}

fn recorded_call(line: &str) -> Option<RecordedCall> {
    let entry: serde_json::Value = serde_json::from_str(line).ok()?;
    let call = api_call(&entry)?;
    let names = match decoded_body(&entry)
        .and_then(|b| serde_json::from_str::<serde_json::Value>(&b).ok())
    {
        Some(body) if call.starts_with("ssm:") => body
            .get("Name")
            .and_then(|n| n.as_str())
            .map(|n| vec![n.to_owned()])
            .or_else(|| {
                body.get("Names").and_then(|n| n.as_array()).map(|names| {
                    names
                        .iter()
                        .filter_map(|n| n.as_str().map(str::to_owned))
                        .collect()
                })
            })
            .unwrap_or_default(),
        _ => Vec::new(),
    };
    Some(RecordedCall { call, names })
}

fn decoded_body(entry: &serde_json::Value) -> Option<String> {
    let body = entry.get("body").and_then(|b| b.as_str())?;
    if entry
        .get("body_encoded")
        .and_then(serde_json::Value::as_bool)
        == Some(true)
    {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD
            .decode(body)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
    } else {
        Some(body.to_owned())
    }
}

/// A recorded request as `service:Operation`: the JSON protocol's `X-Amz-Target`
/// (`AmazonSSM.GetParameter`), else the query protocol's `Action` with the service from
/// the request's SigV4 scope.
fn api_call(entry: &serde_json::Value) -> Option<String> {
    let headers = entry.get("headers")?.as_object()?;
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| v.as_str())
    };
    let service = header("Authorization")
        .and_then(|auth| auth.split("Credential=").nth(1))
        .and_then(|scope| scope.split('/').nth(3))
        .unwrap_or("unknown");
    if let Some(target) = header("X-Amz-Target") {
        let operation = target.rsplit('.').next()?;
        return Some(format!("{service}:{operation}"));
    }
    let body = decoded_body(entry).unwrap_or_default();
    let action = body
        .split('&')
        .find_map(|pair| pair.strip_prefix("Action="))
        .or_else(|| {
            entry
                .get("url")
                .and_then(|u| u.as_str())
                .and_then(|u| u.split("Action=").nth(1))
                .and_then(|a| a.split('&').next())
        })?;
    Some(format!("{service}:{action}"))
}

/// SDK config for moto: explicit endpoint and dummy keys, so parallel cells in one test
/// process never share (or race on) process-wide environment variables.
pub async fn sdk_config(endpoint: &str, region: &str) -> aws_config::SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(Region::new(region.to_owned()))
        .credentials_provider(Credentials::new(
            "testing",
            "testing",
            None,
            None,
            "local-cell",
        ))
        .load()
        .await
}
