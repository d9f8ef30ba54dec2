//! Drives rollouts: one task steps every active rollout's state machine on a
//! short tick (and whenever a status report or an operator wakes it),
//! persists each transition together with its pins and events in one
//! transaction, then pushes the new assignments. Operator controls go
//! through the same lock, so a step and a control never interleave.

use crate::hub::Hub;
use crate::repo::Repo;
use crate::rollout::{
    self, Action, Budget, Observed, Offline, Policy, RolloutPhase, Selector, Spec, State, WaveSpec,
};
use crate::store::{self, Advance, EventRecord, RolloutRecord};
use ferry_proto::v1::{self, Health, Phase, RolloutControl};
use ferry_proto::{Commit, now_unix_ms};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Mutex, Notify, broadcast};
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The plan is not valid.
    #[error("invalid rollout plan: {0}")]
    Plan(String),
    /// The control does not apply in the rollout's phase.
    #[error("rollout {id} is {phase:?}: cannot {action}")]
    Phase {
        id: String,
        phase: RolloutPhase,
        action: String,
    },
    #[error(transparent)]
    Store(#[from] store::Error),
    #[error(transparent)]
    Repo(#[from] crate::repo::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How often active rollouts are stepped when nothing wakes the driver.
const TICK: Duration = Duration::from_millis(500);

/// The shortest time between steps woken by status reports.
const REPORT_TICK: Duration = Duration::from_millis(100);

pub struct Driver {
    pub hub: Arc<Hub>,
    pub repo: Arc<Repo>,
    lock: Mutex<()>,
    pub wake: Notify,
    pub events: broadcast::Sender<EventRecord>,
}

fn parse_budget(s: &str) -> Result<Budget> {
    let bad = || {
        Error::Plan(format!(
            "max failures {s:?}: a count (2) or a percentage (10%)"
        ))
    };
    match s.trim().strip_suffix('%') {
        Some(p) => p.trim().parse().map(Budget::Percent).map_err(|_| bad()),
        None => s.trim().parse().map(Budget::Count).map_err(|_| bad()),
    }
}

fn merge_policy(base: &Policy, p: Option<&v1::WavePolicy>) -> Result<Policy> {
    let mut out = base.clone();
    let Some(p) = p else { return Ok(out) };
    if let Some(v) = p.max_parallel {
        out.max_parallel = v;
    }
    if let Some(v) = p.bake_seconds {
        if v < 0 {
            return Err(Error::Plan("bake must not be negative".into()));
        }
        out.bake_ms = v * 1000;
    }
    if let Some(v) = p.deadline_seconds {
        if v <= 0 {
            return Err(Error::Plan("the progress deadline must be positive".into()));
        }
        out.deadline_ms = v * 1000;
    }
    if let Some(v) = &p.max_failures {
        out.max_failures = parse_budget(v)?;
    }
    if let Some(v) = &p.offline {
        out.offline = match v.as_str() {
            "wait" => Offline::Wait,
            "skip" => Offline::Skip,
            "fail" => Offline::Fail,
            other => {
                return Err(Error::Plan(format!(
                    "offline policy {other:?}: wait, skip or fail"
                )));
            }
        };
    }
    if let Some(v) = p.approval {
        out.approval = v;
    }
    Ok(out)
}

/// Checks a plan and turns it into waves (the commit is resolved elsewhere).
pub fn waves(plan: &v1::RolloutPlan) -> Result<Vec<WaveSpec>> {
    if plan.waves.is_empty() {
        return Err(Error::Plan("a rollout needs at least one wave".into()));
    }
    let defaults = merge_policy(&Policy::default(), plan.defaults.as_ref())?;
    plan.waves
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let selector = match &w.select {
                Some(v1::wave_plan::Select::Labels(l)) => {
                    ferry_proto::LabelSelector::parse(l).map_err(|e| Error::Plan(format!("wave {}: {e}", i + 1)))?;
                    Selector::Labels(l.clone())
                }
                Some(v1::wave_plan::Select::Names(n)) if !n.names.is_empty() => Selector::Names(n.names.clone()),
                Some(v1::wave_plan::Select::Count(c)) if *c > 0 => Selector::Count(*c),
                Some(v1::wave_plan::Select::Percent(p)) if (1..=100).contains(p) => Selector::Percent(*p),
                _ => return Err(Error::Plan(format!("wave {}: select clusters by labels, names, a count > 0 or a percentage 1-100", i + 1))),
            };
            let name = if w.name.is_empty() { format!("wave-{}", i + 1) } else { w.name.clone() };
            Ok(WaveSpec { name, selector, policy: merge_policy(&defaults, w.policy.as_ref())? })
        })
        .collect()
}

fn selector_text(s: &Selector) -> String {
    match s {
        Selector::Labels(l) => l.clone(),
        Selector::Names(n) => format!("names: {}", n.join(",")),
        Selector::Count(c) => format!("{c} clusters"),
        Selector::Percent(p) => format!("{p}%"),
    }
}

fn phase_text<T: serde::Serialize>(p: &T) -> String {
    let s = serde_json::to_value(p)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().chain(c).collect())
        .unwrap_or_default()
}

/// The wire view of a stored rollout.
pub fn to_proto(r: &RolloutRecord) -> v1::Rollout {
    let spec: Spec = serde_json::from_str(&r.spec).expect("stored specs parse");
    let state: State = serde_json::from_str(&r.state).expect("stored states parse");
    let waves = spec
        .waves
        .iter()
        .enumerate()
        .map(|(i, w)| v1::RolloutWave {
            name: w.name.clone(),
            selector: selector_text(&w.selector),
            bake_ms: w.policy.bake_ms,
            deadline_ms: w.policy.deadline_ms,
            approval: w.policy.approval,
            started_unix_ms: if state.wave == i {
                state.wave_started_ms
            } else {
                0
            },
            baked_since_unix_ms: if state.wave == i {
                state.baked_since_ms
            } else {
                0
            },
            clusters: state
                .clusters
                .iter()
                .filter(|c| c.wave == i)
                .map(|c| v1::RolloutCluster {
                    name: c.name.clone(),
                    phase: phase_text(&c.phase),
                    previous_commit: c.previous.clone(),
                    reason: c.reason.clone(),
                    pinned_unix_ms: c.pinned_ms,
                })
                .collect(),
        })
        .collect();
    v1::Rollout {
        id: r.id.clone(),
        r#ref: spec.reference.clone(),
        commit: spec.commit.clone(),
        phase: phase_text(&state.phase),
        message: state.message.clone(),
        current_wave: state.wave as u32,
        waves,
        actor: r.actor.clone(),
        created_unix_ms: r.created_ms,
        updated_unix_ms: r.updated_ms,
        auto_rollback: spec.auto_rollback,
    }
}

impl Driver {
    /// `event_buffer`: live events a watcher may fall behind by before it
    /// catches up from the store.
    pub fn new(hub: Arc<Hub>, repo: Arc<Repo>, event_buffer: usize) -> Self {
        let (events, _) = broadcast::channel(event_buffer.max(1));
        Driver {
            hub,
            repo,
            lock: Mutex::new(()),
            wake: Notify::new(),
            events,
        }
    }

    fn observed(&self) -> Result<BTreeMap<String, Observed>> {
        Ok(self
            .hub
            .store
            .clusters()?
            .into_iter()
            .map(|c| {
                let s = c.status.clone().unwrap_or_default();
                let o = Observed {
                    connected: self.hub.connected(&c.name),
                    labels: c.labels.clone(),
                    pinned: c.pin.as_ref().map(|p| p.0.to_string()).unwrap_or_default(),
                    target: s.target_commit.clone(),
                    applied: s.applied_commit.clone(),
                    phase: Phase::try_from(s.phase).unwrap_or_default(),
                    health: Health::try_from(s.health).unwrap_or_default(),
                };
                (c.name, o)
            })
            .collect())
    }

    /// Persists a transition and carries out its pins and events.
    fn commit(&self, id: &str, state: &State, actions: Vec<Action>, actor: &str) -> Result<()> {
        let commit_of = |c: &str| Commit::parse(c).map_err(|e| Error::Plan(e.to_string()));
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
                        format!("pinned to {} ({reason})", &commit[..8]),
                    ));
                    pins.push((cluster, commit_of(&commit)?, reason));
                }
                Action::Event { cluster, message } => events.push((cluster, message)),
            }
        }
        let t = std::time::Instant::now();
        let state_json = serde_json::to_string(state).expect("state serializes");
        let (entries, stored) = self.hub.store.advance(
            &Advance {
                id,
                state: &state_json,
                active: state.phase.is_active(),
                actor,
                pins: &pins,
                events: &events,
            },
            now_unix_ms(),
        )?;
        let stored_in = t.elapsed();
        self.hub
            .push_many(entries.iter().map(|e| e.cluster.as_str()));
        tracing::debug!(
            rollout = id,
            pins = entries.len(),
            store_ms = stored_in.as_millis() as u64,
            push_ms = (t.elapsed() - stored_in).as_millis() as u64,
            state_bytes = state_json.len(),
            "rollout transition"
        );
        for e in stored {
            tracing::info!(rollout = %e.rollout, cluster = %e.cluster, message = %e.message, "rollout event");
            let _ = self.events.send(e);
        }
        Ok(())
    }

    /// Starts a rollout: resolves the ref, freezes membership, refuses overlaps.
    pub async fn start(&self, plan: &v1::RolloutPlan, actor: &str) -> Result<RolloutRecord> {
        let waves = waves(plan)?;
        if plan.r#ref.trim().is_empty() {
            return Err(Error::Plan("a ref to roll out is required".into()));
        }
        let repo = self.repo.clone();
        let reference = plan.r#ref.clone();
        let commit = tokio::task::spawn_blocking(move || repo.resolve(&reference))
            .await
            .map_err(|e| Error::Plan(e.to_string()))??;
        let spec = Spec {
            reference: plan.r#ref.clone(),
            commit: commit.to_string(),
            waves,
            auto_rollback: plan.auto_rollback,
        };
        let _guard = self.lock.lock().await;
        let observed = self.observed()?;
        let state = rollout::plan(&spec, &observed).map_err(Error::Plan)?;
        let names: Vec<String> = state.clusters.iter().map(|c| c.name.clone()).collect();
        let id = self.hub.store.create_rollout(
            &serde_json::to_string(&spec).expect("spec serializes"),
            &serde_json::to_string(&state).expect("state serializes"),
            &names,
            actor,
            now_unix_ms(),
        )?;
        let message = format!(
            "rollout of {} ({}) to {} clusters in {} waves",
            &spec.commit[..8],
            spec.reference,
            names.len(),
            spec.waves.len()
        );
        self.commit(
            &id,
            &state,
            vec![Action::Event {
                cluster: String::new(),
                message,
            }],
            actor,
        )?;
        drop(_guard);
        self.wake.notify_one();
        Ok(self.hub.store.rollout(&id)?)
    }

    /// Pause, resume, abort, roll back or approve.
    pub async fn control(
        &self,
        id: &str,
        control: RolloutControl,
        actor: &str,
    ) -> Result<RolloutRecord> {
        let _guard = self.lock.lock().await;
        let r = self.hub.store.rollout(id)?;
        let spec: Spec = serde_json::from_str(&r.spec).expect("stored specs parse");
        let mut state: State = serde_json::from_str(&r.state).expect("stored states parse");
        let refuse = |state: &State, action: &str| Error::Phase {
            id: id.to_string(),
            phase: state.phase,
            action: action.into(),
        };
        let mut actions = vec![];
        let said = match control {
            RolloutControl::Pause
                if state.phase == RolloutPhase::Running
                    || state.phase == RolloutPhase::AwaitingApproval =>
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
                actions = rollout::rollback(&spec, &mut state, &format!("requested by {actor}"));
                state.phase = RolloutPhase::RolledBack;
                "rolled back"
            }
            other => {
                let name = format!("{other:?}").to_lowercase();
                return Err(refuse(&state, &name));
            }
        };
        state.message = format!("{said} by {actor}");
        actions.push(Action::Event {
            cluster: String::new(),
            message: state.message.clone(),
        });
        self.commit(id, &state, actions, actor)?;
        drop(_guard);
        self.wake.notify_one();
        Ok(self.hub.store.rollout(id)?)
    }

    /// Steps every active rollout once.
    pub async fn tick(&self) -> Result<()> {
        let _guard = self.lock.lock().await;
        let active = self.hub.store.rollouts(true)?;
        if active.is_empty() {
            return Ok(());
        }
        let t = std::time::Instant::now();
        let observed = self.observed()?;
        tracing::trace!(
            clusters = observed.len(),
            ms = t.elapsed().as_millis() as u64,
            "observed the fleet"
        );
        let now = now_unix_ms();
        for r in active {
            let spec: Spec = serde_json::from_str(&r.spec).expect("stored specs parse");
            let mut state: State = serde_json::from_str(&r.state).expect("stored states parse");
            let before = state.clone();
            let actions = rollout::step(&spec, &mut state, &observed, now);
            if state != before || !actions.is_empty() {
                self.commit(&r.id, &state, actions, &r.actor)?;
            }
        }
        Ok(())
    }

    /// Runs until shutdown. Operators wake it at once; status reports wake
    /// it at most every [`REPORT_TICK`], so a fleet reporting in does not
    /// keep it stepping back to back.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            let started = tokio::time::Instant::now();
            if let Err(e) = self.tick().await {
                tracing::error!(error = %e, "stepping rollouts");
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.wake.notified() => {}
                _ = async {
                    self.hub.status_changed.notified().await;
                    tokio::time::sleep_until(started + REPORT_TICK).await;
                } => {}
                _ = tokio::time::sleep(TICK) => {}
            }
        }
    }
}
