//! Every AWS call honours throttling: an endpoint that answers `ThrottlingException` is
//! asked again, with backoff, up to the policy's attempts, and then the error is
//! `AwsThrottled` (which the state machines retry). moto never throttles, so the endpoint
//! here is a small HTTP server that speaks SSM's JSON protocol: throttling the first
//! requests, then answering.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use aws_config::{BehaviorVersion, Region};
use switchyard_aws::{read_credentials_batch, AwsClients, MAX_ATTEMPTS};
use switchyard_errors::ErrorName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Serves SSM on a loopback port: the first `throttled` requests get a
/// `ThrottlingException`, the rest a GetParameters answer. Returns the endpoint and the
/// request count.
async fn ssm_endpoint(throttled: u32) -> (String, Arc<AtomicU32>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
    let requests = Arc::new(AtomicU32::new(0));
    let count = Arc::clone(&requests);
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let count = Arc::clone(&count);
            tokio::spawn(async move {
                // One request per connection: read the headers and the body, answer, close.
                let mut buffer = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Ok(n) = socket.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buffer.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buffer);
                    if let Some(end) = text.find("\r\n\r\n") {
                        let length = text[..end]
                            .lines()
                            .find_map(|l| {
                                let (k, v) = l.split_once(':')?;
                                k.eq_ignore_ascii_case("content-length")
                                    .then(|| v.trim().parse::<usize>().ok())?
                            })
                            .unwrap_or(0);
                        if buffer.len() >= end + 4 + length {
                            break;
                        }
                    }
                }
                let n = count.fetch_add(1, Ordering::SeqCst) + 1;
                let (status, body) = if n <= throttled {
                    (
                        "400 Bad Request",
                        r#"{"__type":"ThrottlingException","message":"Rate exceeded"}"#.to_owned(),
                    )
                } else {
                    (
                        "200 OK",
                        serde_json::json!({
                            "Parameters": [{
                                "Name": "/cell/orchestrator",
                                "Type": "SecureString",
                                "Value": r#"{"username":"switchyard","password":"not-a-secret"}"#,
                                "Version": 1
                            }],
                            "InvalidParameters": []
                        })
                        .to_string(),
                    )
                };
                let response = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: application/x-amz-json-1.1\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(response.as_bytes()).await;
                let _ = socket.shutdown().await;
            });
        }
    });
    (endpoint, requests)
}

async fn clients(endpoint: &str) -> AwsClients {
    let config = aws_config::defaults(BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(Region::new("eu-west-1"))
        .credentials_provider(aws_sdk_ssm::config::Credentials::new(
            "testing", "testing", None, None, "test",
        ))
        .load()
        .await;
    AwsClients::from_config(&config)
}

#[tokio::test]
async fn a_throttled_call_is_asked_again_until_it_is_answered() {
    let (endpoint, requests) = ssm_endpoint(3).await;
    let clients = clients(&endpoint).await;
    let read = read_credentials_batch(&clients.ssm, &["/cell/orchestrator"])
        .await
        .expect("answered after three throttles");
    assert_eq!(read[0].1.username, "switchyard");
    assert_eq!(
        requests.load(Ordering::SeqCst),
        4,
        "three throttled, one answered"
    );
}

#[tokio::test]
async fn throttling_past_every_attempt_is_aws_throttled() {
    let (endpoint, requests) = ssm_endpoint(u32::MAX).await;
    let clients = clients(&endpoint).await;
    let err = read_credentials_batch(&clients.ssm, &["/cell/orchestrator"])
        .await
        .expect_err("always throttled");
    assert_eq!(err.name(), ErrorName::AwsThrottled, "{err}");
    assert_eq!(requests.load(Ordering::SeqCst), MAX_ATTEMPTS);
}
