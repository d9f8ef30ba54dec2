//! A fleet simulator: many lightweight agents in one process, each with its
//! own enrolled identity and its own mTLS connection, speaking the real
//! `AgentLink` protocol. No Kubernetes behind them: an agent takes an
//! assignment, reports Syncing, and after `apply_time` reports the commit
//! Synced and Healthy, as a real agent does. It sends a heartbeat every
//! `heartbeat` and reconnects if its stream ends.

use anyhow::{Context, Result};
use ferry_proto::DialConfig;
use ferry_proto::v1::agent_link_client::AgentLinkClient;
use ferry_proto::v1::{
    AgentMessage, Assignment, Health, Heartbeat, Hello, Phase, StatusReport, agent_message,
    coordinator_message,
};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

/// How simulated agents behave.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// How long "applying" an assignment takes before Synced+Healthy.
    pub apply_time: Duration,
    /// Between heartbeats (a real agent: 15 s).
    pub heartbeat: Duration,
    /// Reconnect backoff bounds (the real agent's defaults).
    pub min_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for SimConfig {
    fn default() -> Self {
        let agent = ferry_agent::Config::new(
            "sim",
            ferry_proto::DialConfig::default(),
            std::path::PathBuf::new(),
        );
        SimConfig {
            apply_time: Duration::from_millis(200),
            heartbeat: Duration::from_secs(15),
            min_backoff: agent.min_backoff,
            max_backoff: agent.max_backoff,
        }
    }
}

/// What every simulated agent records, for the bench to read.
#[derive(Default)]
pub struct Tally {
    /// When (Unix ms) each agent last received an assignment.
    pub received_ms: Vec<AtomicI64>,
    /// The generation of each agent's last assignment.
    pub generation: Vec<AtomicU64>,
    /// Whether each agent's stream is open.
    pub connected: Vec<AtomicBool>,
    /// Status reports sent, in all.
    pub reports: AtomicU64,
    /// The sequence number (`drift_corrections`) of each agent's last report.
    pub sent_seq: Vec<AtomicU64>,
    /// The last burst each agent finished sending.
    pub burst_done: Vec<AtomicU64>,
}

/// A burst of status reports every agent sends as fast as it may.
#[derive(Clone, Copy, Debug, Default)]
pub struct Burst {
    /// Increases with every burst.
    pub id: u64,
    /// Reports per agent.
    pub reports: u64,
}

/// The simulated fleet.
pub struct Fleet {
    pub names: Vec<String>,
    pub tally: Arc<Tally>,
    burst: watch::Sender<Burst>,
    stop: CancellationToken,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Adds cluster `name` through the Admin API and enrolls it with its join
/// token, as `ferry cluster add` and an agent's first start do. Returns the
/// dial settings of the enrolled identity.
pub async fn enroll<S>(
    admin: &mut ferry_proto::v1::admin_client::AdminClient<S>,
    coordinator: &DialConfig,
    name: &str,
) -> Result<DialConfig>
where
    S: tonic::client::GrpcService<tonic::body::Body>,
    S::Error: Into<tonic::codegen::StdError>,
    S::ResponseBody: tonic::codegen::Body<Data = tonic::codegen::Bytes> + Send + 'static,
    <S::ResponseBody as tonic::codegen::Body>::Error: Into<tonic::codegen::StdError> + Send,
{
    let token = admin
        .add_cluster(ferry_proto::v1::AddClusterRequest {
            name: name.to_string(),
            // One of 100 sites (ferry-bench's rollout with sites).
            labels: [(
                "site".to_string(),
                format!(
                    "s{:02}",
                    name.trim_start_matches(|c: char| !c.is_ascii_digit())
                        .parse::<usize>()
                        .unwrap_or(0)
                        % 100
                ),
            )]
            .into(),
            token_ttl_seconds: 3600,
        })
        .await
        .with_context(|| format!("adding {name}"))?
        .into_inner()
        .join_token;
    let id = ferry_agent::identity::enroll(coordinator, name, &token)
        .await
        .with_context(|| format!("enrolling {name}"))?;
    Ok(DialConfig {
        identity: Some((id.cert_pem, id.key_pem)),
        ..coordinator.clone()
    })
}

/// The status a simulated agent reports.
fn report(a: Option<&Assignment>, applied: &str, phase: Phase, seq: u64) -> StatusReport {
    let now = ferry_proto::now_unix_ms();
    StatusReport {
        observed_generation: a.map_or(0, |a| a.generation),
        target_commit: a.map(|a| a.commit.clone()).unwrap_or_default(),
        applied_commit: applied.to_string(),
        phase: phase as i32,
        health: if phase == Phase::Synced {
            Health::Healthy as i32
        } else {
            Health::Unknown as i32
        },
        message: format!("{phase}"),
        problems: vec![],
        objects: 12,
        drift_corrections: seq,
        last_sync_unix_ms: now,
        reported_unix_ms: now,
        last_correction_unix_ms: 0,
        signer: String::new(),
    }
}

impl Fleet {
    /// An empty fleet; add agents with [`Fleet::spawn`].
    pub fn new(capacity: usize) -> Fleet {
        let tally = Tally {
            received_ms: (0..capacity).map(|_| AtomicI64::new(0)).collect(),
            generation: (0..capacity).map(|_| AtomicU64::new(0)).collect(),
            connected: (0..capacity).map(|_| AtomicBool::new(false)).collect(),
            sent_seq: (0..capacity).map(|_| AtomicU64::new(0)).collect(),
            burst_done: (0..capacity).map(|_| AtomicU64::new(0)).collect(),
            ..Tally::default()
        };
        Fleet {
            names: vec![],
            tally: Arc::new(tally),
            burst: watch::channel(Burst::default()).0,
            stop: CancellationToken::new(),
        }
    }

    /// Starts one simulated agent with an enrolled identity (cert, key PEM).
    pub fn spawn(&mut self, name: String, dial: DialConfig, cfg: SimConfig) {
        let idx = self.names.len();
        assert!(
            idx < self.tally.received_ms.len(),
            "fleet capacity exceeded"
        );
        self.names.push(name.clone());
        let tally = self.tally.clone();
        let burst = self.burst.subscribe();
        let stop = self.stop.clone();
        tokio::spawn(async move {
            let mut sim = Sim {
                idx,
                name,
                cfg,
                tally,
                burst,
                assignment: None,
                applied: String::new(),
                seq: 0,
                established: false,
            };
            let mut backoff =
                ferry_agent::link::Backoff::new(sim.cfg.min_backoff, sim.cfg.max_backoff);
            while !stop.is_cancelled() {
                let r = tokio::select! {
                    _ = stop.cancelled() => return,
                    r = sim.session(&dial) => r,
                };
                sim.tally.connected[idx].store(false, Ordering::Relaxed);
                if let Err(e) = r {
                    tracing::debug!(cluster = %sim.name, error = %e, "simulated session ended");
                }
                // The real agent's policy: reset once a session was had.
                if sim.established {
                    backoff.reset();
                    sim.established = false;
                }
                tokio::time::sleep(backoff.next_delay()).await;
            }
        });
    }

    /// Asks every agent to send `reports` status reports as fast as it may.
    pub fn burst(&self, reports: u64) -> u64 {
        let mut id = 0;
        self.burst.send_modify(|b| {
            b.id += 1;
            b.reports = reports;
            id = b.id;
        });
        id
    }

    pub fn connected(&self) -> usize {
        self.tally.connected[..self.names.len()]
            .iter()
            .filter(|c| c.load(Ordering::Relaxed))
            .count()
    }
}

struct Sim {
    idx: usize,
    name: String,
    cfg: SimConfig,
    tally: Arc<Tally>,
    burst: watch::Receiver<Burst>,
    assignment: Option<Assignment>,
    applied: String,
    /// Sent as `drift_corrections`, so a bench can see the last one arrive.
    seq: u64,
    /// The coordinator accepted the last session.
    established: bool,
}

impl Sim {
    async fn session(&mut self, dial: &DialConfig) -> Result<()> {
        // Several coordinator replicas' addresses are tried in turn.
        let (channel, _) = dial.connect_from(0).await.context("connecting")?;
        let (tx, rx) = mpsc::channel::<AgentMessage>(8);
        let send = |m: agent_message::Msg| AgentMessage { msg: Some(m) };
        let phase = if self.applied.is_empty() {
            Phase::Pending
        } else {
            Phase::Synced
        };
        tx.send(send(agent_message::Msg::Hello(Hello {
            cluster: self.name.clone(),
            agent_version: "fleetsim".into(),
            labels: Default::default(),
            status: Some(report(
                self.assignment.as_ref(),
                &self.applied,
                phase,
                self.seq,
            )),
        })))
        .await?;
        let mut inbound = AgentLinkClient::new(channel)
            .session(ReceiverStream::new(rx))
            .await?
            .into_inner();
        self.established = true;
        self.tally.connected[self.idx].store(true, Ordering::Relaxed);
        let mut heartbeat = tokio::time::interval_at(
            tokio::time::Instant::now() + self.cfg.heartbeat.mul_f64(fastrand::f64().max(0.05)),
            self.cfg.heartbeat,
        );
        let mut applying: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
        let mut seen_burst = self.burst.borrow().id;
        loop {
            tokio::select! {
                m = inbound.message() => {
                    let Some(m) = m? else { return Ok(()) };
                    if let Some(coordinator_message::Msg::Assignment(a)) = m.msg {
                        self.tally.received_ms[self.idx]
                            .store(ferry_proto::now_unix_ms(), Ordering::Relaxed);
                        self.tally.generation[self.idx].store(a.generation, Ordering::Relaxed);
                        // As the real agent: whatever was assigned and is
                        // not applied yet gets applied (an apply cut short
                        // by a lost session is done again on the next one).
                        let done = !self.applied.is_empty() && self.applied == a.commit;
                        self.assignment = Some(a);
                        if !done {
                            self.seq += 1;
                            tx.send(send(agent_message::Msg::Status(report(
                                self.assignment.as_ref(), &self.applied, Phase::Syncing, self.seq,
                            )))).await?;
                            self.sent();
                            applying = Some(Box::pin(tokio::time::sleep(self.cfg.apply_time)));
                        }
                    }
                }
                _ = async { applying.as_mut().expect("guarded").await }, if applying.is_some() => {
                    applying = None;
                    self.applied = self.assignment.as_ref().map(|a| a.commit.clone()).unwrap_or_default();
                    self.seq += 1;
                    tx.send(send(agent_message::Msg::Status(report(
                        self.assignment.as_ref(), &self.applied, Phase::Synced, self.seq,
                    )))).await?;
                    self.sent();
                }
                _ = heartbeat.tick() => {
                    tx.send(send(agent_message::Msg::Heartbeat(Heartbeat {}))).await?;
                }
                r = self.burst.changed() => {
                    r?;
                    let b = *self.burst.borrow_and_update();
                    if b.id == seen_burst {
                        continue;
                    }
                    seen_burst = b.id;
                    for _ in 0..b.reports {
                        self.seq += 1;
                        let phase = if self.applied.is_empty() { Phase::Pending } else { Phase::Synced };
                        tx.send(send(agent_message::Msg::Status(report(
                            self.assignment.as_ref(), &self.applied, phase, self.seq,
                        )))).await?;
                        self.sent();
                    }
                    self.tally.burst_done[self.idx].store(b.id, Ordering::Relaxed);
                }
            }
        }
    }

    fn sent(&self) {
        self.tally.reports.fetch_add(1, Ordering::Relaxed);
        self.tally.sent_seq[self.idx].store(self.seq, Ordering::Relaxed);
    }
}
