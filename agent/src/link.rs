//! The agent's only connection: it dials the coordinator, says Hello with its
//! full state, then receives assignments and sends every status change.
//! Reconnects forever with capped, jittered exponential backoff, and re-sends
//! its full state each time. Never listens.

use backon::BackoffBuilder;
use ferry_proto::DialConfig;
use ferry_proto::v1::agent_link_client::AgentLinkClient;
use ferry_proto::v1::{
    AgentMessage, Assignment, Heartbeat, Hello, StatusReport, agent_message, coordinator_message,
};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

/// What the link needs to know about its agent.
#[derive(Clone, Debug)]
pub struct LinkConfig {
    pub dial: DialConfig,
    pub cluster: String,
    pub labels: BTreeMap<String, String>,
    pub heartbeat: Duration,
    /// Backoff bounds between reconnects.
    pub min_backoff: Duration,
    pub max_backoff: Duration,
}

fn backoff(cfg: &LinkConfig) -> impl Iterator<Item = Duration> {
    backon::ExponentialBuilder::default()
        .with_min_delay(cfg.min_backoff)
        .with_max_delay(cfg.max_backoff)
        .with_jitter()
        .without_max_times()
        .build()
}

/// Runs the link until `shutdown`. Assignments go to `assignments`; every
/// change of `status` is reported.
pub async fn run(
    cfg: LinkConfig,
    identity: watch::Receiver<Option<crate::identity::Identity>>,
    assignments: watch::Sender<Option<Assignment>>,
    mut status: watch::Receiver<StatusReport>,
    connected: watch::Sender<bool>,
    shutdown: CancellationToken,
) {
    let mut delays = backoff(&cfg);
    loop {
        let started = Instant::now();
        let result = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = session(&cfg, identity.borrow().clone(), &assignments, &mut status, &connected) => r,
        };
        connected.send_replace(false);
        match result {
            Ok(()) => tracing::info!("the coordinator closed the session; reconnecting"),
            Err(e) => tracing::warn!(error = %e, "coordinator link down"),
        }
        // A session that lasted a while resets the backoff.
        if started.elapsed() > Duration::from_secs(30) {
            delays = backoff(&cfg);
        }
        let delay = delays.next().unwrap_or(cfg.max_backoff);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

async fn session(
    cfg: &LinkConfig,
    identity: Option<crate::identity::Identity>,
    assignments: &watch::Sender<Option<Assignment>>,
    status: &mut watch::Receiver<StatusReport>,
    connected: &watch::Sender<bool>,
) -> anyhow::Result<()> {
    let mut dial = cfg.dial.clone();
    if let Some(id) = identity {
        dial.identity = Some((id.cert_pem, id.key_pem));
    }
    let channel = dial.endpoint()?.connect().await?;
    let mut client = AgentLinkClient::new(channel);
    let (tx, rx) = mpsc::channel::<AgentMessage>(16);
    let hello = Hello {
        cluster: cfg.cluster.clone(),
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        labels: cfg.labels.clone().into_iter().collect(),
        status: Some(status.borrow_and_update().clone()),
    };
    tx.send(AgentMessage {
        msg: Some(agent_message::Msg::Hello(hello)),
    })
    .await?;
    let mut inbound = client.session(ReceiverStream::new(rx)).await?.into_inner();
    connected.send_replace(true);
    tracing::info!(addr = %cfg.dial.addr, "connected to the coordinator");
    let mut heartbeat = tokio::time::interval(cfg.heartbeat);
    heartbeat.tick().await;
    loop {
        tokio::select! {
            msg = inbound.message() => match msg? {
                None => return Ok(()),
                Some(m) => match m.msg {
                    Some(coordinator_message::Msg::Assignment(a)) => {
                        tracing::info!(commit = %a.commit, path = %a.path, generation = a.generation, "assignment received");
                        assignments.send_if_modified(|cur| {
                            if cur.as_ref() == Some(&a) { false } else { *cur = Some(a); true }
                        });
                    }
                    Some(coordinator_message::Msg::Rejection(r)) => {
                        anyhow::bail!("the coordinator rejected this agent: {}", r.reason);
                    }
                    Some(coordinator_message::Msg::Ping(_)) | None => {}
                },
            },
            changed = status.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
                let report = status.borrow_and_update().clone();
                tx.send(AgentMessage { msg: Some(agent_message::Msg::Status(report)) }).await?;
            }
            _ = heartbeat.tick() => {
                tx.send(AgentMessage { msg: Some(agent_message::Msg::Heartbeat(Heartbeat {})) }).await?;
            }
        }
    }
}
