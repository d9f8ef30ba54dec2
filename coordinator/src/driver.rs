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
//! the store. A replica that does not lead relays operators' rollout
//! commands to the one that does through the store (`relayed_commands`,
//! NOTIFYed): the leader takes each at most once, carries it out and
//! stores the answer for the asker. A leader that takes over carries out
//! the commands nobody took meanwhile; an asker that gives up first
//! withdraws its command, so it is never carried out behind its back.

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
    /// The coordinator driving rollouts refused a relayed command (a
    /// `tonic::Code` and its message).
    #[error("{message}")]
    Relayed { code: i32, message: String },
    /// A relayed command got no answer in time.
    #[error("{0}")]
    Unanswered(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How often active rollouts are stepped when nothing wakes the driver.
const TICK: Duration = Duration::from_millis(500);

/// The shortest time between steps woken by status reports.
const REPORT_TICK: Duration = Duration::from_millis(100);

/// The longest the driver goes between reading the whole fleet for its
/// rollouts (in between, it reads what changed: see
/// [`Driver::observed`]).
const WHOLE_READ_EVERY: Duration = Duration::from_secs(5);

/// The lease the driver of rollouts holds.
const LEASE: &str = "rollouts";

/// How long the lease lasts unless renewed, and how often it is renewed:
/// a dead leader's rollouts move on within about `LEASE_TTL` + `LEASE_RENEW`.
const LEASE_TTL: Duration = Duration::from_secs(5);
const LEASE_RENEW: Duration = Duration::from_secs(1);

/// How long a replica that does not lead waits for the leader to answer a
/// command it relayed: room for a takeover (`LEASE_TTL` and a renewal)
/// and a start over a large fleet.
const RELAY_DEADLINE: Duration = Duration::from_secs(30);

/// A rollout command relayed to the replica that drives rollouts.
#[derive(Clone, PartialEq, prost::Message)]
struct RelayedCommand {
    #[prost(string, tag = "1")]
    actor: String,
    /// A start: the plan, and the commit the asker resolved its ref to.
    #[prost(message, optional, tag = "2")]
    plan: Option<v1::RolloutPlan>,
    #[prost(string, tag = "3")]
    commit: String,
    /// A control: the rollout, and what to do (a `RolloutControl`).
    #[prost(string, tag = "4")]
    rollout: String,
    #[prost(int32, tag = "5")]
    control: i32,
}

/// The leader's answer: the rollout as the command left it, or the
/// refusal (a `tonic::Code`, never `Ok`, and its message).
#[derive(Clone, PartialEq, prost::Message)]
struct RelayedAnswer {
    #[prost(string, tag = "1")]
    rollout: String,
    #[prost(int32, tag = "2")]
    code: i32,
    #[prost(string, tag = "3")]
    message: String,
}

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
    /// Another replica relayed a command under this id: carried out if
    /// this driver leads.
    Relayed { id: String },
    /// Notifications may have been missed: relayed commands nobody took
    /// are carried out if this driver leads.
    CatchUp,
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
    /// Commands this replica relayed, waiting for their answer.
    relays: Relays,
    /// Sets this replica's relayed command ids apart from others'.
    instance: String,
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
        let spec = Spec::from_plan(plan, commit.clone())?;
        let owned = actor.to_string();
        match self
            .ask(|reply| Command::Start {
                spec,
                actor: owned,
                reply,
            })
            .await
        {
            Err(Error::NotLeading(leader)) => {
                let command = RelayedCommand {
                    actor: actor.to_string(),
                    plan: Some(plan.clone()),
                    commit: commit.to_string(),
                    ..Default::default()
                };
                self.relay(command, leader).await
            }
            r => r,
        }
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
        let (owned_id, owned_actor) = (id.to_string(), actor.to_string());
        match self
            .ask(|reply| Command::Control {
                id: owned_id,
                control,
                actor: owned_actor,
                reply,
            })
            .await
        {
            Err(Error::NotLeading(leader)) => {
                let command = RelayedCommand {
                    actor: actor.to_string(),
                    rollout: id.to_string(),
                    control: control as i32,
                    ..Default::default()
                };
                self.relay(command, leader).await
            }
            r => r,
        }
    }

    /// Hands a command this replica may not carry out to the one driving
    /// rollouts, and waits for its answer (at most [`RELAY_DEADLINE`]).
    async fn relay(&self, command: RelayedCommand, leader: String) -> Result<Rollout> {
        static RELAYED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = RELAYED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let id = format!("c{}.{n}", self.instance);
        let told = Arc::new(tokio::sync::Notify::new());
        self.relays_lock().insert(id.clone(), told.clone());
        let answer = self.relayed(&id, command, leader, &told).await;
        self.relays_lock().remove(&id);
        answer
    }

    fn relays_lock(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, Arc<tokio::sync::Notify>>>
    {
        self.relays.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn relayed(
        &self,
        id: &str,
        command: RelayedCommand,
        leader: String,
        told: &tokio::sync::Notify,
    ) -> Result<Rollout> {
        use prost::Message;
        if !self
            .store
            .relay_command(id, command.encode_to_vec())
            .await?
        {
            return Err(Error::NotLeading(leader));
        }
        let deadline = tokio::time::Instant::now() + RELAY_DEADLINE;
        loop {
            if let Some(bytes) = self.store.command_answer(id).await? {
                let answer = RelayedAnswer::decode(bytes.as_slice()).map_err(|e| {
                    Error::Unanswered(format!(
                        "the answer of the coordinator driving rollouts does not decode ({e}): see `ferry rollout list`"
                    ))
                })?;
                if answer.code != 0 {
                    return Err(Error::Relayed {
                        code: answer.code,
                        message: answer.message,
                    });
                }
                return Ok(self.store.rollout(&answer.rollout).await?);
            }
            if tokio::time::Instant::now() >= deadline {
                let secs = RELAY_DEADLINE.as_secs();
                return Err(Error::Unanswered(
                    if self.store.withdraw_command(id).await? {
                        format!(
                            "no coordinator driving rollouts took the command within {secs} s (leader: {leader}); nothing was done: retry"
                        )
                    } else {
                        format!(
                            "the coordinator driving rollouts took the command but did not answer within {secs} s: see `ferry rollout list` before retrying"
                        )
                    },
                ));
            }
            // Told when the answer is stored; looked for every half second
            // regardless (a notification may be lost on a reconnect).
            tokio::select! {
                _ = told.notified() => {}
                _ = tokio::time::sleep_until(deadline.min(tokio::time::Instant::now() + Duration::from_millis(500))) => {}
            }
        }
    }

    /// Another replica relayed a command: for this replica's driver to
    /// carry out if it leads (without holding up the caller).
    pub fn carry_out(&self, id: String) {
        if let Err(mpsc::error::TrySendError::Full(c)) =
            self.commands.try_send(Command::Relayed { id })
        {
            let commands = self.commands.clone();
            tokio::spawn(async move {
                let _ = commands.send(c).await;
            });
        }
    }

    /// Commands relayed meanwhile may have been missed (the store's
    /// notifications were lost for a while).
    pub fn catch_up(&self) {
        let _ = self.commands.try_send(Command::CatchUp);
    }

    /// The answer to a command this replica relayed is stored.
    pub fn answered(&self, id: &str) {
        tell(&self.relays, id);
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
    /// Commands relayed while nobody led, for this driver to carry out
    /// now that it does.
    backlog: Vec<String>,
    /// The handle's commands waiting for answers (this replica's own are
    /// answered here once it leads, and told so directly).
    relays: Relays,
    /// The fleet as rollouts see it, and when it was last read whole.
    view: Arc<BTreeMap<String, Observed>>,
    viewed_whole: Option<tokio::time::Instant>,
}

/// Relayed commands waiting for their answer, by id: woken when told it
/// is stored.
type Relays = Arc<std::sync::Mutex<std::collections::HashMap<String, Arc<tokio::sync::Notify>>>>;

/// Wakes whoever waits for the answer to relayed command `id`, if anyone.
fn tell(relays: &Relays, id: &str) {
    if let Some(told) = relays.lock().unwrap_or_else(|p| p.into_inner()).get(id) {
        told.notify_one();
    }
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
            backlog: vec![],
            relays: Relays::default(),
            view: Default::default(),
            viewed_whole: None,
        };
        let handle = DriverHandle {
            commands: tx,
            store,
            repo,
            events,
            relays: driver.relays.clone(),
            instance: format!("{}.{}", std::process::id(), now_unix_ms()),
        };
        (driver, handle)
    }

    /// The fleet as rollouts see it, read whole when `whole`. Every change
    /// to what it holds is noted by the hub (those through other replicas
    /// as the store tells of them), so otherwise, between whole reads at
    /// most [`WHOLE_READ_EVERY`] apart, it reads again only the clusters
    /// the hub saw change: during a wave of thousands, those that reported
    /// since the last step, not the whole fleet ten times a second. The
    /// whole reads catch what no change says: a replica that died with
    /// sessions (it is taken for dead after 5 s of silence).
    async fn observed(&mut self, whole: bool) -> Result<Arc<BTreeMap<String, Observed>>> {
        let t = tokio::time::Instant::now();
        let touched = self.hub.take_touched();
        let whole = whole
            || touched.all
            || self
                .viewed_whole
                .is_none_or(|at| t.duration_since(at) >= WHOLE_READ_EVERY);
        if !whole && touched.names.is_empty() {
            return Ok(self.view.clone());
        }
        let read = match whole {
            true => self.store.clusters().await,
            false => {
                let names = touched.names.iter().cloned().collect();
                self.store.clusters_named(names).await
            }
        };
        let clusters = match read {
            Ok(c) => c,
            Err(e) => {
                // What was touched is not read: read whole next time.
                self.viewed_whole = None;
                return Err(e.into());
            }
        };
        let read_ms = t.elapsed().as_millis() as u64;
        let observed: Vec<(String, Observed)> =
            clusters.into_iter().map(|c| self.observe(c)).collect();
        if whole {
            self.view = Arc::new(observed.into_iter().collect());
            self.viewed_whole = Some(t);
        } else {
            let view = Arc::make_mut(&mut self.view);
            // A cluster removed since is read as nothing.
            for name in &touched.names {
                view.remove(name);
            }
            view.extend(observed);
        }
        tracing::debug!(
            whole,
            read = if whole {
                self.view.len()
            } else {
                touched.names.len()
            },
            read_ms,
            "observed the fleet"
        );
        Ok(self.view.clone())
    }

    fn observe(&self, c: crate::store::ClusterRecord) -> (String, Observed) {
        let s = c.status.unwrap_or_default();
        let o = Observed {
            connected: self.hub.reachable(&c.name, c.live_session),
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
        crate::summary::rollout_events(&stored);
        for e in stored {
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
        // Who is in a rollout is decided on a whole read.
        let observed = self.observed(true).await?;
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
            self.forget_view();
            return Ok(());
        }
        let observed = self.observed(false).await?;
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
                    let read = async {
                        let active = self.store.rollouts(true).await?;
                        let relayed = self
                            .store
                            .untaken_commands(RELAY_DEADLINE.as_millis() as i64)
                            .await?;
                        Ok::<_, store::Error>((active, relayed))
                    };
                    match read.await {
                        Ok((rs, relayed)) => {
                            self.active = rs.into_iter().map(|r| (r.id.clone(), r)).collect();
                            self.backlog = relayed;
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
        self.backlog.clear();
    }

    /// Drops the view of the fleet (nothing to step): the next rollout
    /// reads it whole.
    fn forget_view(&mut self) {
        self.hub.take_touched();
        self.view = Default::default();
        self.viewed_whole = None;
    }

    /// Carries out a command another replica relayed, if this driver
    /// leads and nobody took it yet, and stores the answer for the asker.
    async fn carry_out(&mut self, id: &str) {
        use prost::Message;
        if self.token.is_none() {
            return;
        }
        let request = match self.store.take_command(id, &self.holder).await {
            Ok(Some(r)) => r,
            // Taken by another (ex-)leader, or withdrawn by its asker.
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(%id, error = %e, "taking a relayed rollout command");
                return;
            }
        };
        let result = match RelayedCommand::decode(request.as_slice()) {
            Ok(c) => self.relayed(c).await,
            Err(e) => Err(Error::Membership(format!(
                "a relayed command that does not decode: {e}"
            ))),
        };
        self.fenced(&result);
        let answer = match result {
            Ok(r) => RelayedAnswer {
                rollout: r.id,
                ..Default::default()
            },
            Err(e) => {
                let status = crate::service::driver_status(e);
                RelayedAnswer {
                    rollout: String::new(),
                    code: status.code() as i32,
                    message: status.message().to_string(),
                }
            }
        };
        match self.store.answer_command(id, answer.encode_to_vec()).await {
            // Other replicas are told by the store; this one directly.
            Ok(()) => tell(&self.relays, id),
            Err(e) => tracing::warn!(%id, error = %e, "answering a relayed rollout command"),
        }
    }

    async fn relayed(&mut self, c: RelayedCommand) -> Result<Rollout> {
        match c.plan {
            Some(plan) => {
                let commit = Commit::parse(&c.commit).map_err(|e| {
                    Error::Membership(format!("a relayed start names no commit: {e}"))
                })?;
                let spec = Spec::from_plan(&plan, commit)?;
                self.start(spec, &c.actor).await
            }
            None => {
                let control =
                    RolloutControl::try_from(c.control).unwrap_or(RolloutControl::Unspecified);
                self.control(&c.rollout, control, &c.actor).await
            }
        }
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
        if self.token.is_none() {
            if let Command::Start { reply, .. } | Command::Control { reply, .. } = c {
                let _ = reply.send(Err(Error::NotLeading(self.leader.clone())));
                return;
            }
            if !matches!(c, Command::Plan { .. }) {
                return;
            }
        }
        match c {
            Command::Relayed { id } => self.carry_out(&id).await,
            Command::CatchUp => match self
                .store
                .untaken_commands(RELAY_DEADLINE.as_millis() as i64)
                .await
            {
                Ok(ids) => self.backlog.extend(ids),
                Err(e) => tracing::warn!(error = %e, "reading relayed rollout commands"),
            },
            Command::Start { spec, actor, reply } => {
                let r = self.start(spec, &actor).await;
                self.fenced(&r);
                let _ = reply.send(r);
            }
            Command::Plan { spec, actor, reply } => {
                let planned = async {
                    let observed = self.observed(true).await?;
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
            while self.token.is_some()
                && let Some(id) = (!self.backlog.is_empty()).then(|| self.backlog.remove(0))
            {
                self.carry_out(&id).await;
            }
            if self.token.is_some() {
                let r = self.tick().await;
                if let Err(e) = &r {
                    tracing::error!(error = %e, "stepping rollouts");
                }
                self.fenced(&r);
            } else {
                // Another replica steps rollouts: keep nothing.
                self.forget_view();
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
