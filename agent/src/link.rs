//! The agent's only connection: it dials the coordinator, says Hello with its
//! full state, then receives assignments and sends every status change.
//! Reconnects forever with capped exponential backoff with full jitter
//! (reset once a session is established), and re-sends its full state each
//! time. Told to stop, it sends the last status and
//! closes its stream cleanly. Never listens. An assignment that is not
//! well-formed (a commit that is not a full id, a path leaving the
//! repository) is refused, never acted on.

use ferry_proto::v1::agent_link_client::AgentLinkClient;
use ferry_proto::v1::{
    AgentMessage, Heartbeat, Hello, Preview, PreviewRequest, StatusReport, agent_message,
    coordinator_message,
};
use ferry_proto::{Assignment, DialConfig};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

/// How long a stopping link waits for the coordinator to take its last status.
const DRAIN: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The coordinator's address or TLS files are unusable.
    #[error(transparent)]
    Dial(#[from] ferry_proto::DialError),
    /// The stream failed.
    #[error("{}", .0.message())]
    Stream(#[from] tonic::Status),
    /// The coordinator refused this agent.
    #[error("the coordinator rejected this agent: {0}")]
    Rejected(String),
    /// The outbound stream closed under us.
    #[error("the session closed")]
    Closed,
}

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

/// Waits between reconnects: capped exponential backoff with full jitter.
/// The n-th wait is drawn uniformly from `[0, min(cap, base * 2^n)]`, so a
/// fleet that lost its coordinator at once comes back spread out rather
/// than in waves, and no wait is ever longer than the cap.
#[derive(Clone, Debug)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Self {
        Backoff {
            base,
            cap: cap.max(base),
            attempt: 0,
        }
    }

    /// The next wait.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(2u32.saturating_pow(self.attempt.min(30)))
            .min(self.cap);
        self.attempt = self.attempt.saturating_add(1);
        ceiling.mul_f64(fastrand::f64())
    }

    /// Starts over (a session was established).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// Runs the link until `stop`. Assignments go to `assignments`; every
/// change of `status` is reported.
/// Where the link hands what the coordinator says: well-formed
/// assignments, and why the last one was refused, if it was.
pub struct Inbox {
    pub assignments: watch::Sender<Option<Assignment>>,
    pub refused: watch::Sender<Option<String>>,
    /// 1 while a session is established.
    pub connected: prometheus_client::metrics::gauge::Gauge,
    /// Where preview requests go (one waits at most; more are answered
    /// "busy" at once).
    pub previews: mpsc::Sender<PreviewRequest>,
}

pub async fn run(
    cfg: LinkConfig,
    identity: watch::Receiver<Option<crate::identity::Identity>>,
    inbox: Inbox,
    mut status: watch::Receiver<StatusReport>,
    mut answers: mpsc::Receiver<Preview>,
    stop: CancellationToken,
) {
    let mut backoff = Backoff::new(cfg.min_backoff, cfg.max_backoff);
    // Which of several coordinator replicas to try first: spread by the
    // cluster's name, then whichever answered last.
    let mut reached = Reached {
        established: false,
        at: spread(&cfg.cluster),
    };
    loop {
        if stop.is_cancelled() {
            return;
        }
        let id = identity.borrow().clone();
        reached.established = false;
        let result = session(
            &cfg,
            id,
            &inbox,
            &mut status,
            &mut answers,
            &stop,
            &mut reached,
        )
        .await;
        inbox.connected.set(0);
        if stop.is_cancelled() {
            return;
        }
        match result {
            Ok(()) => tracing::info!("the coordinator closed the session; reconnecting"),
            Err(e) => tracing::warn!(error = %e, "coordinator link down"),
        }
        // The coordinator took us: whatever ended the session, start the
        // backoff over (a restarted coordinator is back at once).
        if reached.established {
            backoff.reset();
        }
        let delay = backoff.next_delay();
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// How far a session got.
struct Reached {
    /// The coordinator took the session.
    established: bool,
    /// Which of the coordinator's addresses answered last.
    at: usize,
}

/// A starting point among the coordinator's addresses, the same for a
/// cluster every time and spread across a fleet.
fn spread(cluster: &str) -> usize {
    cluster
        .bytes()
        .fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(b as usize))
}

async fn session(
    cfg: &LinkConfig,
    identity: Option<crate::identity::Identity>,
    inbox: &Inbox,
    status: &mut watch::Receiver<StatusReport>,
    answers: &mut mpsc::Receiver<Preview>,
    stop: &CancellationToken,
    reached: &mut Reached,
) -> Result<(), Error> {
    let mut dial = cfg.dial.clone();
    if let Some(id) = identity {
        dial.identity = Some((id.cert_pem, id.key_pem));
    }
    let (channel, answered) = tokio::select! {
        _ = stop.cancelled() => return Ok(()),
        c = dial.connect_from(reached.at) => c?,
    };
    reached.at = answered;
    let addr = dial.addresses()[answered].to_string();
    let mut client = AgentLinkClient::new(channel);
    let (tx, rx) = mpsc::channel::<AgentMessage>(16);
    let hello = Hello {
        cluster: cfg.cluster.clone(),
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        labels: cfg.labels.clone().into_iter().collect(),
        status: Some(status.borrow_and_update().clone()),
    };
    let send = |m: agent_message::Msg| {
        let tx = tx.clone();
        async move {
            tx.send(AgentMessage { msg: Some(m) })
                .await
                .map_err(|_| Error::Closed)
        }
    };
    // What the coordinator last got from us: the drain sends what is newer.
    let mut last_sent = hello.status.clone();
    send(agent_message::Msg::Hello(hello)).await?;
    let mut inbound = tokio::select! {
        _ = stop.cancelled() => return Ok(()),
        s = client.session(ReceiverStream::new(rx)) => s?.into_inner(),
    };
    reached.established = true;
    inbox.connected.set(1);
    tracing::info!(%addr, "connected to the coordinator");
    let mut heartbeat = tokio::time::interval(cfg.heartbeat);
    heartbeat.tick().await;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            msg = inbound.message() => match msg? {
                None => return Ok(()),
                Some(m) => match m.msg {
                    Some(coordinator_message::Msg::Assignment(wire)) => {
                        let a = match Assignment::try_from(wire) {
                            Ok(a) => a,
                            Err(e) => {
                                tracing::error!(error = %e, "refusing an assignment; keeping the current one");
                                inbox.refused.send_replace(Some(format!("refused {e}")));
                                continue;
                            }
                        };
                        tracing::info!(commit = %a.commit, path = %a.path, generation = a.generation, "assignment received");
                        inbox.refused.send_if_modified(|r| r.take().is_some());
                        inbox.assignments.send_if_modified(|cur| {
                            if cur.as_ref() == Some(&a) { false } else { *cur = Some(a); true }
                        });
                    }
                    Some(coordinator_message::Msg::Rejection(r)) => {
                        return Err(Error::Rejected(r.reason));
                    }
                    Some(coordinator_message::Msg::Preview(req)) => {
                        let busy = |id: String, why: &str| Preview {
                            id,
                            error: why.to_string(),
                            ..Default::default()
                        };
                        match inbox.previews.try_send(req) {
                            Ok(()) => {}
                            Err(mpsc::error::TrySendError::Full(req)) => {
                                send(agent_message::Msg::Preview(busy(req.id, "busy: another preview is running in this cluster"))).await?;
                            }
                            Err(mpsc::error::TrySendError::Closed(req)) => {
                                send(agent_message::Msg::Preview(busy(req.id, "this agent is stopping"))).await?;
                            }
                        }
                    }
                    None => {}
                },
            },
            changed = status.changed() => {
                // Closed: the loop has stopped and published its last word.
                if changed.is_err() {
                    break;
                }
                let report = status.borrow_and_update().clone();
                last_sent = Some(report.clone());
                send(agent_message::Msg::Status(report)).await?;
            }
            _ = heartbeat.tick() => {
                send(agent_message::Msg::Heartbeat(Heartbeat {})).await?;
            }
            Some(p) = answers.recv() => {
                send(agent_message::Msg::Preview(p)).await?;
            }
        }
    }
    // Stopping: the last status, then end our side of the stream and give
    // the coordinator a moment to take it and close its side.
    // (The sync loop has dropped its sender by now, so `has_changed` would
    // say "closed" rather than whether there is news.)
    let report = status.borrow_and_update().clone();
    if last_sent.as_ref() != Some(&report) {
        tracing::debug!(message = %report.message, "sending the last status");
        send(agent_message::Msg::Status(report)).await?;
    }
    drop(tx);
    let _ = tokio::time::timeout(DRAIN, async {
        while let Ok(Some(_)) = inbound.message().await {}
    })
    .await;
    tracing::info!("closed the session with the coordinator");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_is_a_cap_and_waits_spread_below_it() {
        let (base, cap) = (Duration::from_millis(200), Duration::from_secs(30));
        let mut b = Backoff::new(base, cap);
        let waits: Vec<Duration> = (0..200).map(|_| b.next_delay()).collect();
        assert!(waits.iter().all(|w| *w <= cap), "{waits:?}");
        // Full jitter: past the ramp, waits fill the range below the cap.
        let late = &waits[20..];
        assert!(late.iter().any(|w| *w < cap / 4), "{late:?}");
        assert!(late.iter().any(|w| *w > cap * 3 / 4), "{late:?}");
        // The ramp: the first waits are short.
        let mut b = Backoff::new(base, cap);
        assert!(b.next_delay() <= base);
        assert!(b.next_delay() <= base * 2);
        for _ in 0..50 {
            b.next_delay();
        }
        b.reset();
        assert!(b.next_delay() <= base, "reset starts over");
    }
}
