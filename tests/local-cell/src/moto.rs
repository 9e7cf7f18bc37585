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
}

impl Moto {
    pub async fn start(install: &Install, run_dir: &Path, region: &str) -> Result<Self, CellError> {
        let port = free_port("127.0.0.1")?;
        let mut cmd = Command::new(install.moto_server()?);
        cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
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
        })
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
