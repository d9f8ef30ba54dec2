//! Drives rollouts. One task owns every active rollout (spec and state, in
//! memory, read from the store once at start): it steps each one's state
//! machine on a short tick and whenever status reports or an operator wake
//! it, persists each transition together with its pins and events in one
//! transaction, and only then takes the new state as current and pushes
//! the new assignments. Operators' starts and controls are commands sent to
//! that task, so a step and a control never interleave.
//!
//! With several coordinators on one database, exactly one drives
//! rollouts: the holder of the `rollouts` lease. It renews the lease every
//! second; each transition it writes is fenced by the lease's token, so a
//! paused or cut-off ex-leader can never write a stale one. Another replica
//! takes over once the lease runs out, reading the active rollouts from
//! the store. Replicas that do not lead refuse rollout commands with a
//! retryable error naming the leader.

use crate::hub::Hub;
use crate::repo::{self, Repo};
use crate::rollout::{self, Action, Observed};
use crate::store::{self, Advance, Fence, Lease, Store};
use ferry_proto::ledger::Event;
use ferry_proto::rollout::{PlanError, Rollout, RolloutPhase, Spec};
use ferry_proto::v1::{self, Health, Phase, RolloutControl};
use ferry_proto::{Commit, now_unix_ms};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The plan is not valid.
    #[error("invalid rollout plan: {0}")]
    Plan(#[from] PlanError),
    /// The plan selects no cluster, or names one that does not exist.
    #[error("invalid rollout plan: {0}")]
    Membership(String),
    /// The control does not apply in the rollout's phase.
    #[error("rollout {id} is {phase}: cannot {action}")]
    Phase {
        id: String,
        phase: RolloutPhase,
        action: String,
    },
    #[error(transparent)]
    Store(#[from] store::Error),
    #[error(transparent)]
    Repo(#[from] repo::Error),
    /// The driver has stopped (the coordinator is shutting down).
    #[error("the rollout driver has stopped")]
    Stopped,
    /// Another replica drives rollouts.
    #[error(
        "another coordinator ({0}) drives rollouts: retry (through it, or once it has stopped: a replica takes over within {LEASE_TTL:?})"
    )]
    NotLeading(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How often active rollouts are stepped when nothing wakes the driver.
const TICK: Duration = Duration::from_millis(500);

/// The shortest time between steps woken by status reports.
const REPORT_TICK: Duration = Duration::from_millis(100);

/// The lease the driver of rollouts holds.
const LEASE: &str = "rollouts";

/// How long the lease lasts unless renewed, and how often it is renewed:
/// a dead leader's rollouts move on within about `LEASE_TTL` + `LEASE_RENEW`.
const LEASE_TTL: Duration = Duration::from_secs(5);
const LEASE_RENEW: Duration = Duration::from_secs(1);

enum Command {
    Start {
        spec: Spec,
        actor: String,
        reply: oneshot::Sender<Result<Rollout>>,
    },
    /// Plan only: nothing stored.
    Plan {
        spec: Spec,
        actor: String,
        reply: oneshot::Sender<Result<Rollout>>,
    },
    Control {
        id: String,
        control: RolloutControl,
        actor: String,
        reply: oneshot::Sender<Result<Rollout>>,
    },
}

/// How the rest of the coordinator reaches the driver.
#[derive(Clone)]
pub struct DriverHandle {
    commands: mpsc::Sender<Command>,
    repo: Arc<Repo>,
    store: Arc<dyn Store>,
    /// Every stored event, live (watchers fall back to the store when they
    /// fall behind).
    pub events: broadcast::Sender<Event>,
}

impl DriverHandle {
    async fn ask(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<Rollout>>) -> Command,
    ) -> Result<Rollout> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(make(tx))
            .await
            .map_err(|_| Error::Stopped)?;
        rx.await.map_err(|_| Error::Stopped)?
    }

    /// Starts a rollout: resolves the ref (here, not in the driver, so a
    /// slow fetch holds up nobody else), then freezes membership.
    pub async fn start(&self, plan: &v1::RolloutPlan, actor: &str) -> Result<Rollout> {
        if plan.r#ref.trim().is_empty() {
            return Err(Error::Membership("a ref to roll out is required".into()));
        }
        // Check the plan before fetching anything.
        ferry_proto::rollout::waves(plan)?;
        let repo = self.repo.clone();
        let reference = plan.r#ref.clone();
        let (commit, signer) = tokio::task::spawn_blocking(move || repo.resolve(&reference))
            .await
            .map_err(|_| Error::Stopped)??;
        if let Some(s) = signer {
            self.store
                .record_signer(&commit, &s.to_string(), ferry_proto::now_unix_ms())
                .await?;
        }
        let spec = Spec::from_plan(plan, commit)?;
        let actor = actor.to_string();
        self.ask(|reply| Command::Start { spec, actor, reply })
            .await
    }

    /// The rollout `plan` would start, as it would start (waves and their
    /// clusters, no id); nothing is stored or pinned.
    pub async fn plan(&self, plan: &v1::RolloutPlan, actor: &str) -> Result<Rollout> {
        if plan.r#ref.trim().is_empty() {
            return Err(Error::Membership("a ref to roll out is required".into()));
        }
        ferry_proto::rollout::waves(plan)?;
        let repo = self.repo.clone();
        let reference = plan.r#ref.clone();
        let (commit, _) = tokio::task::spawn_blocking(move || repo.resolve(&reference))
            .await
            .map_err(|_| Error::Stopped)??;
        let spec = Spec::from_plan(plan, commit)?;
        let actor = actor.to_string();
        self.ask(|reply| Command::Plan { spec, actor, reply }).await
    }

    /// Pause, resume, abort, roll back or approve.
    pub async fn control(&self, id: &str, control: RolloutControl, actor: &str) -> Result<Rollout> {
        let (id, actor) = (id.to_string(), actor.to_string());
        self.ask(|reply| Command::Control {
            id,
            control,
            actor,
            reply,
        })
        .await
    }
}

/// What an operator asked for, as a verb.
fn control_verb(c: RolloutControl) -> &'static str {
    match c {
        RolloutControl::Unspecified => "do nothing",
        RolloutControl::Pause => "pause",
        RolloutControl::Resume => "resume",
        RolloutControl::Abort => "abort",
        RolloutControl::Rollback => "roll back",
        RolloutControl::Approve => "approve",
    }
}

/// The task that owns the active rollouts.
pub struct Driver {
    hub: Arc<Hub>,
    store: Arc<dyn Store>,
    repo: Arc<Repo>,
    /// How many commits a rollout's target is ahead of a mirror's tip:
    /// (target, mirror tip) -> count, from the coordinator's own history.
    behind: std::collections::HashMap<(Commit, String), Option<usize>>,
    active: BTreeMap<String, Rollout>,
    commands: mpsc::Receiver<Command>,
    events: broadcast::Sender<Event>,
    /// This coordinator, as leases name it.
    holder: String,
    /// The lease's token while this driver leads.
    token: Option<i64>,
    /// When the lease was last asked for, and last held.
    asked: Option<tokio::time::Instant>,
    held: Option<tokio::time::Instant>,
    /// Who leads, when another replica does.
    leader: String,
}

/// This process's name among coordinators: the pod (`HOSTNAME`), the
/// process and the driver.
fn holder_name() -> String {
    static DRIVERS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    format!(
        "{}/{}/{}",
        std::env::var("HOSTNAME").unwrap_or_else(|_| "ferry".into()),
        std::process::id(),
        DRIVERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    )
}

impl Driver {
    /// The driver and its handle. `event_buffer`: live events a watcher may
    /// fall behind by before it catches up from the store.
    pub fn new(hub: Arc<Hub>, repo: Arc<Repo>, event_buffer: usize) -> (Driver, DriverHandle) {
        let (events, _) = broadcast::channel(event_buffer.max(1));
        let (tx, commands) = mpsc::channel(64);
        let store = hub.store.clone();
        let driver = Driver {
            repo: repo.clone(),
            behind: Default::default(),
            store: store.clone(),
            hub,
            active: BTreeMap::new(),
            commands,
            events: events.clone(),
            holder: holder_name(),
            token: None,
            asked: None,
            held: None,
            leader: String::new(),
        };
        let handle = DriverHandle {
            commands: tx,
            store,
            repo,
            events,
        };
        (driver, handle)
    }

    async fn observed(&self) -> Result<BTreeMap<String, Observed>> {
        let clusters = self.store.clusters().await?;
        let now = now_unix_ms();
        Ok(clusters
            .into_iter()
            .map(|c| {
                let s = c.status.unwrap_or_default();
                let o = Observed {
                    connected: self.hub.reachable(&c.name, c.last_seen_ms, now),
                    pinned: c.pin.as_ref().map(|p| p.0.clone()),
                    generation: c.pin.as_ref().map_or(0, |p| p.1),
                    observed_generation: s.observed_generation,
                    target: Commit::parse(&s.target_commit).ok(),
                    applied: Commit::parse(&s.applied_commit).ok(),
                    phase: Phase::try_from(s.phase).unwrap_or_default(),
                    health: Health::try_from(s.health).unwrap_or_default(),
                    site: self.hub.site_of(&c.labels).map(|s| s.0),
                    labels: c.labels,
                };
                (c.name, o)
            })
            .collect())
    }

    /// What the sites' mirrors hold of a rollout's commit.
    async fn mirrors(&mut self, spec: &Spec) -> Result<rollout::Mirrors> {
        if !self.hub.has_sites() {
            return Ok(rollout::Mirrors::default());
        }
        let sites = self.store.sites().await?;
        let holding: std::collections::BTreeSet<String> = self
            .store
            .sites_holding(&spec.commit)
            .await?
            .into_iter()
            .collect();
        let branch = format!("refs/heads/{}", spec.reference);
        let mut at = BTreeMap::new();
        for s in sites {
            let tip = s
                .refs
                .get(&branch)
                .or_else(|| s.refs.get(&spec.reference))
                .cloned();
            let text = match (tip, s.reported_ms) {
                (_, 0) => "never reported".to_string(),
                (Some(t), _) => {
                    let mut text = format!("mirror at {}", &t[..t.len().min(8)]);
                    if !holding.contains(&s.name) {
                        let key = (spec.commit.clone(), t.clone());
                        if !self.behind.contains_key(&key) {
                            let (repo, target) = (self.repo.clone(), spec.commit.clone());
                            let n = tokio::task::spawn_blocking(move || repo.behind(&target, &t))
                                .await
                                .ok()
                                .flatten();
                            self.behind.insert(key.clone(), n);
                        }
                        if let Some(Some(n)) = self.behind.get(&key) {
                            text.push_str(&format!(", {n} commit(s) behind"));
                        }
                    }
                    text
                }
                (None, _) => format!("mirror has no {}", spec.reference),
            };
            at.insert(s.name, text);
        }
        if self.behind.len() > 10_000 {
            self.behind.clear();
        }
        Ok(rollout::Mirrors { holding, at })
    }

    /// Persists a transition of `before` to `after` with its pins and
    /// events, then pushes the pins and publishes the events. Returns the
    /// rollout as it now is.
    async fn commit(
        &self,
        before: &Rollout,
        after: ferry_proto::rollout::State,
        actions: Vec<Action>,
        actor: &str,
    ) -> Result<Rollout> {
        let mut pins = vec![];
        let mut events = vec![];
        for a in actions {
            match a {
                Action::Pin {
                    cluster,
                    commit,
                    reason,
                } => {
                    events.push((
                        cluster.clone(),
                        format!("pinned to {} ({reason})", commit.short()),
                    ));
                    pins.push((cluster, commit, reason));
                }
                Action::Event { cluster, message } => events.push((cluster, message)),
            }
        }
        let changed = after
            .clusters
            .iter()
            .zip(&before.state.clusters)
            .filter(|(a, b)| a != b)
            .map(|(a, _)| a.clone())
            .collect();
        let t = std::time::Instant::now();
        let now = now_unix_ms();
        let (entries, stored) = self
            .store
            .advance(
                Advance {
                    id: before.id.clone(),
                    state: after.clone(),
                    changed,
                    actor: actor.to_string(),
                    pins,
                    events,
                    fence: self.token.map(|token| Fence {
                        lease: LEASE.into(),
                        holder: self.holder.clone(),
                        token,
                    }),
                },
                now,
            )
            .await?;
        let stored_in = t.elapsed();
        self.hub.metrics.pins.inc_by(entries.len() as u64);
        self.hub
            .push_many(entries.iter().map(|e| e.cluster.as_str()))
            .await;
        tracing::debug!(
            pins = entries.len(),
            store_ms = stored_in.as_millis() as u64,
            push_ms = (t.elapsed() - stored_in).as_millis() as u64,
            "rollout transition"
        );
        for e in stored {
            tracing::info!(cluster = %e.cluster, message = %e.message, "rollout event");
            let _ = self.events.send(e);
        }
        Ok(Rollout {
            state: after,
            updated_ms: now,
            ..before.clone()
        })
    }

    /// Keeps `r` as the current state of its rollout (dropped once done).
    fn keep(&mut self, r: &Rollout) {
        if r.state.phase.is_active() {
            self.active.insert(r.id.clone(), r.clone());
        } else {
            self.active.remove(&r.id);
        }
    }

    async fn start(&mut self, spec: Spec, actor: &str) -> Result<Rollout> {
        let observed = self.observed().await?;
        let state = rollout::plan(&spec, &observed).map_err(Error::Membership)?;
        let message = format!(
            "rollout of {} ({}) to {} clusters in {} waves",
            spec.commit.short(),
            spec.reference,
            state.clusters.len(),
            spec.waves.len()
        );
        let created = self
            .store
            .create_rollout(spec, state.clone(), actor, now_unix_ms())
            .await?;
        let span =
            tracing::info_span!("rollout", rollout = %created.id, commit = %created.spec.commit);
        let r = self
            .commit(
                &created,
                state,
                vec![Action::Event {
                    cluster: String::new(),
                    message,
                }],
                actor,
            )
            .instrument(span)
            .await?;
        self.keep(&r);
        Ok(r)
    }

    async fn control(&mut self, id: &str, control: RolloutControl, actor: &str) -> Result<Rollout> {
        let current = match self.active.get(id) {
            Some(r) => r.clone(),
            // A finished rollout can still be rolled back.
            None => self.store.rollout(id).await?,
        };
        let mut state = current.state.clone();
        let refuse = |action: &str| Error::Phase {
            id: id.to_string(),
            phase: current.state.phase,
            action: action.into(),
        };
        let mut actions = vec![];
        let said = match control {
            RolloutControl::Pause
                if matches!(
                    state.phase,
                    RolloutPhase::Running | RolloutPhase::AwaitingApproval
                ) =>
            {
                state.phase = RolloutPhase::Paused;
                "paused"
            }
            RolloutControl::Resume if state.phase == RolloutPhase::Paused => {
                state.phase = RolloutPhase::Running;
                "resumed"
            }
            RolloutControl::Abort if state.phase.is_active() => {
                state.phase = RolloutPhase::Aborted;
                "aborted: no further pins"
            }
            RolloutControl::Approve if state.phase == RolloutPhase::AwaitingApproval => {
                state.approved.insert(state.wave);
                state.phase = RolloutPhase::Running;
                "approved the next wave"
            }
            RolloutControl::Rollback if state.phase != RolloutPhase::RolledBack => {
                actions =
                    rollout::rollback(&current.spec, &mut state, &format!("requested by {actor}"));
                state.phase = RolloutPhase::RolledBack;
                "rolled back"
            }
            other => return Err(refuse(control_verb(other))),
        };
        state.message = format!("{said} by {actor}");
        actions.push(Action::Event {
            cluster: String::new(),
            message: state.message.clone(),
        });
        let span = tracing::info_span!("rollout", rollout = %id, commit = %current.spec.commit);
        let r = self
            .commit(&current, state, actions, actor)
            .instrument(span)
            .await?;
        self.keep(&r);
        Ok(r)
    }

    /// Steps every active rollout once.
    async fn tick(&mut self) -> Result<()> {
        if self.active.is_empty() {
            return Ok(());
        }
        let observed = self.observed().await?;
        let now = now_unix_ms();
        let ids: Vec<String> = self.active.keys().cloned().collect();
        for id in ids {
            let current = self.active[&id].clone();
            let mut state = current.state.clone();
            let mirrors = self.mirrors(&current.spec).await?;
            let actions = rollout::step_with(&current.spec, &mut state, &observed, &mirrors, now);
            if state == current.state && actions.is_empty() {
                continue;
            }
            let span = tracing::info_span!("rollout", rollout = %id, commit = %current.spec.commit);
            let r = self
                .commit(&current, state, actions, &current.actor)
                .instrument(span)
                .await?;
            self.keep(&r);
        }
        Ok(())
    }

    /// Takes or renews the lease (at most every [`LEASE_RENEW`]). Taking
    /// it reads the active rollouts from the store; losing it forgets them.
    async fn lead(&mut self) {
        let now = tokio::time::Instant::now();
        if self.asked.is_some_and(|t| now < t + LEASE_RENEW) {
            return;
        }
        self.asked = Some(now);
        let ttl = LEASE_TTL.as_millis() as i64;
        match self.store.lease(LEASE, &self.holder, ttl).await {
            Ok(Lease::Held(token)) => {
                if self.token != Some(token) {
                    match self.store.rollouts(true).await {
                        Ok(rs) => {
                            self.active = rs.into_iter().map(|r| (r.id.clone(), r)).collect();
                            self.token = Some(token);
                            tracing::info!(
                                holder = %self.holder,
                                token,
                                active = self.active.len(),
                                "driving rollouts"
                            );
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "reading active rollouts; retrying");
                            self.asked = None;
                            return;
                        }
                    }
                }
                self.held = Some(now);
            }
            Ok(Lease::Elsewhere(leader)) => {
                if self.token.is_some() {
                    tracing::warn!(%leader, "another coordinator took over driving rollouts");
                }
                self.stand_down();
                self.leader = leader;
            }
            Err(e) => {
                tracing::error!(error = %e, "renewing the rollouts lease");
                self.leader = format!("none known: {e}");
                // Unrenewed, the lease runs out: stop before another
                // replica can take it (fenced writes would be refused).
                if self.held.is_some_and(|t| now > t + LEASE_TTL) {
                    self.stand_down();
                }
            }
        }
    }

    fn stand_down(&mut self) {
        self.token = None;
        self.held = None;
        self.active.clear();
    }

    /// Notes a refusal of this driver's writes: another replica leads.
    fn fenced<T>(&mut self, r: &Result<T>) {
        if let Err(Error::Store(store::Error::Fenced { .. })) = r {
            tracing::warn!("this coordinator's lease on rollouts was taken over");
            self.stand_down();
            self.asked = None;
        }
    }

    async fn command(&mut self, c: Command) {
        if self.token.is_none() && !matches!(c, Command::Plan { .. }) {
            let refused = Err(Error::NotLeading(self.leader.clone()));
            match c {
                Command::Start { reply, .. } | Command::Control { reply, .. } => {
                    let _ = reply.send(refused);
                }
                Command::Plan { .. } => {}
            }
            return;
        }
        match c {
            Command::Start { spec, actor, reply } => {
                let r = self.start(spec, &actor).await;
                self.fenced(&r);
                let _ = reply.send(r);
            }
            Command::Plan { spec, actor, reply } => {
                let planned = async {
                    let observed = self.observed().await?;
                    let state = rollout::plan(&spec, &observed).map_err(Error::Membership)?;
                    let now = now_unix_ms();
                    Ok(Rollout {
                        id: String::new(),
                        spec,
                        state,
                        actor,
                        created_ms: now,
                        updated_ms: now,
                    })
                }
                .await;
                let _ = reply.send(planned);
            }
            Command::Control {
                id,
                control,
                actor,
                reply,
            } => {
                let r = self.control(&id, control, &actor).await;
                self.fenced(&r);
                let _ = reply.send(r);
            }
        }
    }

    /// Runs until `shutdown`. Operators wake it at once; status reports wake
    /// it at most every [`REPORT_TICK`], so a fleet reporting in does not
    /// keep it stepping back to back.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let hub = self.hub.clone();
        loop {
            let started = tokio::time::Instant::now();
            self.lead().await;
            if self.token.is_some() {
                let r = self.tick().await;
                if let Err(e) = &r {
                    tracing::error!(error = %e, "stepping rollouts");
                }
                self.fenced(&r);
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                c = self.commands.recv() => match c {
                    Some(c) => self.command(c).await,
                    None => return,
                },
                _ = async {
                    hub.status_changed.notified().await;
                    tokio::time::sleep_until(started + REPORT_TICK).await;
                } => {}
                _ = tokio::time::sleep(TICK) => {}
            }
        }
    }
}
