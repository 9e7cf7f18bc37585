//! Endpoint emulation: what Aurora's DNS and the NLB do, as TCP forwarders.
//!
//! Each new connection is routed at connect time — by the emulated DNS ([`Names`]) for a
//! cluster endpoint, by moto's target health for the NLB; connections already open stay
//! where they are. That is exactly the property the switchover depends on: a rename moves
//! new connections (once DNS has followed it), never existing ones.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

use crate::names::Names;
use crate::CellError;

/// What a forwarder follows.
#[derive(Clone, Debug)]
pub enum Route {
    /// A cluster endpoint: wherever `identifier`'s name leads now — the cluster that holds
    /// it in moto, once the emulated DNS has followed the rename.
    Cluster { names: Names, identifier: String },
    /// An NLB listener: the first healthy target registered in the target group now.
    TargetGroup {
        elbv2: aws_sdk_elasticloadbalancingv2::Client,
        arn: String,
    },
}

impl Route {
    /// Where a connection opened now should go; `Err` means "does not resolve", and the
    /// client's connection is closed, as an NXDOMAIN or an empty target group would.
    async fn target(&self) -> Result<String, String> {
        match self {
            Self::Cluster { names, identifier } => names
                .route(identifier)
                .ok_or_else(|| format!("name {identifier} leads nowhere now")),
            Self::TargetGroup { elbv2, arn } => {
                let out = elbv2
                    .describe_target_health()
                    .target_group_arn(arn)
                    .send()
                    .await
                    .map_err(|e| format!("describing target health of {arn}: {e}"))?;
                out.target_health_descriptions()
                    .iter()
                    .filter(|d| {
                        d.target_health()
                            .and_then(|h| h.state())
                            .map(|s| s.as_str())
                            == Some("healthy")
                    })
                    .find_map(|d| {
                        let target = d.target()?;
                        Some(format!("{}:{}", target.id()?, target.port()?))
                    })
                    .ok_or_else(|| format!("target group {arn} has no healthy target"))
            }
        }
    }

    fn describe(&self) -> String {
        match self {
            Self::Cluster { identifier, .. } => format!("cluster endpoint {identifier}"),
            Self::TargetGroup { arn, .. } => format!("target group {arn}"),
        }
    }
}

/// A listening forwarder. Dropping it closes the listener and every forwarded connection.
#[derive(Debug)]
pub struct Forwarder {
    addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Forwarder {
    pub async fn start(route: Route) -> Result<Self, CellError> {
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .map_err(|e| CellError::Setup(format!("forwarder bind: {e}")))?;
        let addr = listener
            .local_addr()
            .map_err(|e| CellError::Setup(format!("forwarder addr: {e}")))?;
        let (shutdown, stop) = watch::channel(false);
        let task = tokio::spawn(accept_loop(listener, route, stop));
        Ok(Self {
            addr,
            shutdown,
            task,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        self.task.abort();
    }
}

async fn accept_loop(listener: TcpListener, route: Route, mut stop: watch::Receiver<bool>) {
    // Owning the connections here means aborting this task closes every one of them.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            accepted = listener.accept() => {
                let Ok((client, _)) = accepted else { continue };
                let route = route.clone();
                connections.spawn(async move { forward(client, &route).await });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn forward(mut client: TcpStream, route: &Route) {
    let target = match route.target().await {
        Ok(target) => target,
        Err(reason) => {
            tracing::debug!(route = %route.describe(), %reason, "not routable; closing connection");
            return;
        }
    };
    let mut server = match TcpStream::connect(&target).await {
        Ok(server) => server,
        Err(e) => {
            tracing::debug!(route = %route.describe(), %target, error = %e, "target refused");
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
}
