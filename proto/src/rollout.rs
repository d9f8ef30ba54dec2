//! Staged rollouts as data: the spec an operator's plan becomes, the state
//! the coordinator's engine moves forward, and their wire forms. The engine
//! itself (what happens on each step) lives in the coordinator.
//!
//! The spec is kept as JSON by the coordinator's store; its serde names are
//! part of the stored format and must not change.

use crate::domain::{Commit, Invalid};
use crate::selector::LabelSelector;
use crate::v1;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// A rollout plan that cannot run.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PlanError {
    /// The plan names no wave.
    #[error("a rollout needs at least one wave")]
    NoWaves,
    /// A wave selects nothing usable.
    #[error("wave {0}: select clusters by labels, names, a count > 0 or a percentage 1-100")]
    NoSelector(usize),
    /// A wave's label selector does not parse.
    #[error("wave {wave}: {source}")]
    Selector {
        wave: usize,
        #[source]
        source: Invalid,
    },
    /// A policy value is out of range.
    #[error("{0}")]
    Policy(String),
}

/// How clusters are picked for a wave, from those not in an earlier wave.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Selector {
    /// A Kubernetes-style label selector: `ring=canary,region in (eu,us)`.
    Labels(String),
    Names(Vec<String>),
    /// This many of the clusters still to go.
    Count(u32),
    /// This percentage (1-100) of the clusters still to go, rounded up.
    Percent(u32),
}

impl std::fmt::Display for Selector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Selector::Labels(l) => f.write_str(l),
            Selector::Names(n) => write!(f, "names: {}", n.join(",")),
            Selector::Count(c) => write!(f, "{c} clusters"),
            Selector::Percent(p) => write!(f, "{p}%"),
        }
    }
}

/// What a wave does with offline clusters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Offline {
    /// Wait for it (its progress deadline still runs).
    #[default]
    Wait,
    /// Leave it out of the wave.
    Skip,
    /// Count it as failed.
    Fail,
}

impl From<Offline> for v1::OfflinePolicy {
    fn from(o: Offline) -> Self {
        match o {
            Offline::Wait => v1::OfflinePolicy::Wait,
            Offline::Skip => v1::OfflinePolicy::Skip,
            Offline::Fail => v1::OfflinePolicy::Fail,
        }
    }
}

impl Offline {
    pub fn is_wait(&self) -> bool {
        *self == Offline::Wait
    }

    /// The policy a wire value names; `None` for unspecified (the default applies).
    pub fn from_wire(v: v1::OfflinePolicy) -> Option<Offline> {
        match v {
            v1::OfflinePolicy::Unspecified => None,
            v1::OfflinePolicy::Wait => Some(Offline::Wait),
            v1::OfflinePolicy::Skip => Some(Offline::Skip),
            v1::OfflinePolicy::Fail => Some(Offline::Fail),
        }
    }

    /// `wait`, `skip` or `fail`, as operators write it.
    pub fn parse(s: &str) -> Result<Offline, PlanError> {
        match s.trim() {
            "wait" => Ok(Offline::Wait),
            "skip" => Ok(Offline::Skip),
            "fail" => Ok(Offline::Fail),
            other => Err(PlanError::Policy(format!(
                "offline policy {other:?}: wait, skip or fail"
            ))),
        }
    }
}

/// How many failed clusters a wave tolerates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Budget {
    Count(u32),
    Percent(u32),
}

impl Budget {
    /// Allowed failures among `n` clusters.
    pub fn allowed(self, n: usize) -> usize {
        match self {
            Budget::Count(c) => c as usize,
            Budget::Percent(p) => n * p as usize / 100,
        }
    }

    /// `2` or `10%`.
    pub fn parse(s: &str) -> Result<Budget, PlanError> {
        let bad = || {
            PlanError::Policy(format!(
                "max failures {s:?}: a count (2) or a percentage (10%)"
            ))
        };
        match s.trim().strip_suffix('%') {
            Some(p) => p.trim().parse().map(Budget::Percent).map_err(|_| bad()),
            None => s.trim().parse().map(Budget::Count).map_err(|_| bad()),
        }
    }
}

/// The policy of a wave (defaults, overridden per wave).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Policy {
    /// Clusters of the wave being moved at once; 0 means all.
    pub max_parallel: u32,
    /// Every cluster of the wave on the target and Healthy for this long.
    pub bake_ms: i64,
    /// A cluster not Healthy at the target this long after its pin has failed.
    pub deadline_ms: i64,
    pub max_failures: Budget,
    pub offline: Offline,
    /// An operator approves the wave before it starts.
    pub approval: bool,
    /// Clusters whose site's mirror lacks the target: wait, skip or fail.
    /// (Stored only when not `wait`, so specs stored before it read back
    /// the same.)
    #[serde(default, skip_serializing_if = "Offline::is_wait")]
    pub mirror_lag: Offline,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            max_parallel: 0,
            bake_ms: 0,
            deadline_ms: 10 * 60 * 1000,
            max_failures: Budget::Count(0),
            offline: Offline::Wait,
            approval: false,
            mirror_lag: Offline::Wait,
        }
    }
}

impl Policy {
    /// This policy with what `p` sets overriding it.
    pub fn merged(&self, p: Option<&v1::WavePolicy>) -> Result<Policy, PlanError> {
        let mut out = self.clone();
        let Some(p) = p else { return Ok(out) };
        if let Some(v) = p.max_parallel {
            out.max_parallel = v;
        }
        if let Some(v) = p.bake_seconds {
            if v < 0 {
                return Err(PlanError::Policy("bake must not be negative".into()));
            }
            out.bake_ms = v.saturating_mul(1000);
        }
        if let Some(v) = p.deadline_seconds {
            if v <= 0 {
                return Err(PlanError::Policy(
                    "the progress deadline must be positive".into(),
                ));
            }
            out.deadline_ms = v.saturating_mul(1000);
        }
        if let Some(v) = &p.max_failures {
            out.max_failures = Budget::parse(v)?;
        }
        if let Some(v) = p.offline {
            let wire = v1::OfflinePolicy::try_from(v).map_err(|_| {
                PlanError::Policy(format!("offline policy {v}: wait, skip or fail"))
            })?;
            if let Some(o) = Offline::from_wire(wire) {
                out.offline = o;
            }
        }
        if let Some(v) = p.mirror_lag {
            let wire = v1::OfflinePolicy::try_from(v).map_err(|_| {
                PlanError::Policy(format!("mirror lag policy {v}: wait, skip or fail"))
            })?;
            if let Some(o) = Offline::from_wire(wire) {
                out.mirror_lag = o;
            }
        }
        if let Some(v) = p.approval {
            out.approval = v;
        }
        Ok(out)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WaveSpec {
    pub name: String,
    pub selector: Selector,
    pub policy: Policy,
}

/// A rollout as created: the commit is resolved once, membership frozen.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Spec {
    pub reference: String,
    pub commit: Commit,
    pub waves: Vec<WaveSpec>,
    pub auto_rollback: bool,
}

impl Spec {
    /// Checks a plan and makes its spec, with the commit its ref resolved to.
    pub fn from_plan(plan: &v1::RolloutPlan, commit: Commit) -> Result<Spec, PlanError> {
        Ok(Spec {
            reference: plan.r#ref.clone(),
            commit,
            waves: waves(plan)?,
            auto_rollback: plan.auto_rollback,
        })
    }
}

/// Checks a plan's waves (the commit is resolved elsewhere).
pub fn waves(plan: &v1::RolloutPlan) -> Result<Vec<WaveSpec>, PlanError> {
    if plan.waves.is_empty() {
        return Err(PlanError::NoWaves);
    }
    let defaults = Policy::default().merged(plan.defaults.as_ref())?;
    plan.waves
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let n = i + 1;
            let selector = match &w.select {
                Some(v1::wave_plan::Select::Labels(l)) => {
                    LabelSelector::parse(l)
                        .map_err(|source| PlanError::Selector { wave: n, source })?;
                    Selector::Labels(l.clone())
                }
                Some(v1::wave_plan::Select::Names(names)) if !names.names.is_empty() => {
                    Selector::Names(names.names.clone())
                }
                Some(v1::wave_plan::Select::Count(c)) if *c > 0 => Selector::Count(*c),
                Some(v1::wave_plan::Select::Percent(p)) if (1..=100).contains(p) => {
                    Selector::Percent(*p)
                }
                _ => return Err(PlanError::NoSelector(n)),
            };
            let name = if w.name.is_empty() {
                format!("wave-{n}")
            } else {
                w.name.clone()
            };
            Ok(WaveSpec {
                name,
                selector,
                policy: defaults.merged(w.policy.as_ref())?,
            })
        })
        .collect()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RolloutPhase {
    Running,
    Paused,
    /// The next wave waits for an operator's approval.
    AwaitingApproval,
    Succeeded,
    /// Over the failure budget: halted (and rolled back if asked).
    Failed,
    Aborted,
    RolledBack,
}

impl RolloutPhase {
    pub fn is_active(self) -> bool {
        matches!(self, Self::Running | Self::Paused | Self::AwaitingApproval)
    }

    const TEXT: [(Self, &'static str); 7] = [
        (Self::Running, "running"),
        (Self::Paused, "paused"),
        (Self::AwaitingApproval, "awaitingApproval"),
        (Self::Succeeded, "succeeded"),
        (Self::Failed, "failed"),
        (Self::Aborted, "aborted"),
        (Self::RolledBack, "rolledBack"),
    ];

    /// The stored form.
    pub fn as_str(self) -> &'static str {
        Self::TEXT
            .iter()
            .find(|(p, _)| *p == self)
            .expect("every phase")
            .1
    }

    /// Reads the stored form.
    pub fn parse(s: &str) -> Option<Self> {
        Self::TEXT.iter().find(|(_, t)| *t == s).map(|(p, _)| *p)
    }
}

impl From<RolloutPhase> for v1::RolloutPhase {
    fn from(p: RolloutPhase) -> Self {
        match p {
            RolloutPhase::Running => Self::Running,
            RolloutPhase::Paused => Self::Paused,
            RolloutPhase::AwaitingApproval => Self::AwaitingApproval,
            RolloutPhase::Succeeded => Self::Succeeded,
            RolloutPhase::Failed => Self::Failed,
            RolloutPhase::Aborted => Self::Aborted,
            RolloutPhase::RolledBack => Self::RolledBack,
        }
    }
}

impl std::fmt::Display for RolloutPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        v1::RolloutPhase::from(*self).fmt(f)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClusterPhase {
    /// Not pinned yet.
    Waiting,
    /// Pinned to the target; not Healthy there yet.
    Pinned,
    Healthy,
    Failed,
    /// Left out (offline, under the skip policy).
    Skipped,
    /// Pinned back to its previous commit.
    RolledBack,
}

impl ClusterPhase {
    const TEXT: [(Self, &'static str); 6] = [
        (Self::Waiting, "waiting"),
        (Self::Pinned, "pinned"),
        (Self::Healthy, "healthy"),
        (Self::Failed, "failed"),
        (Self::Skipped, "skipped"),
        (Self::RolledBack, "rolledBack"),
    ];

    /// The stored form.
    pub fn as_str(self) -> &'static str {
        Self::TEXT
            .iter()
            .find(|(p, _)| *p == self)
            .expect("every phase")
            .1
    }

    /// Reads the stored form.
    pub fn parse(s: &str) -> Option<Self> {
        Self::TEXT.iter().find(|(_, t)| *t == s).map(|(p, _)| *p)
    }
}

impl From<ClusterPhase> for v1::RolloutClusterPhase {
    fn from(p: ClusterPhase) -> Self {
        match p {
            ClusterPhase::Waiting => Self::Waiting,
            ClusterPhase::Pinned => Self::Pinned,
            ClusterPhase::Healthy => Self::Healthy,
            ClusterPhase::Failed => Self::Failed,
            ClusterPhase::Skipped => Self::Skipped,
            ClusterPhase::RolledBack => Self::RolledBack,
        }
    }
}

/// One cluster's part in a rollout.
#[derive(Clone, Debug, PartialEq)]
pub struct ClusterProgress {
    pub name: String,
    pub wave: usize,
    /// The pin before this rollout moved it (`None`: it had none).
    pub previous: Option<Commit>,
    pub phase: ClusterPhase,
    pub pinned_ms: i64,
    pub reason: String,
}

/// Where a rollout is.
#[derive(Clone, Debug, PartialEq)]
pub struct State {
    pub phase: RolloutPhase,
    pub wave: usize,
    /// When the current wave started (0: not yet).
    pub wave_started_ms: i64,
    /// Since when every cluster of the wave has been Healthy at the target.
    pub baked_since_ms: i64,
    /// Waves an operator approved.
    pub approved: BTreeSet<usize>,
    /// Every member, in plan order.
    pub clusters: Vec<ClusterProgress>,
    pub message: String,
}

/// A rollout as stored: spec, state, who started it and when.
#[derive(Clone, Debug, PartialEq)]
pub struct Rollout {
    pub id: String,
    pub spec: Spec,
    pub state: State,
    pub actor: String,
    pub created_ms: i64,
    pub updated_ms: i64,
}

impl From<&Rollout> for v1::Rollout {
    fn from(r: &Rollout) -> Self {
        let (spec, state) = (&r.spec, &r.state);
        let waves = spec
            .waves
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let current = state.wave == i;
                v1::RolloutWave {
                    name: w.name.clone(),
                    selector: w.selector.to_string(),
                    bake_ms: w.policy.bake_ms,
                    deadline_ms: w.policy.deadline_ms,
                    approval: w.policy.approval,
                    started_unix_ms: if current { state.wave_started_ms } else { 0 },
                    baked_since_unix_ms: if current { state.baked_since_ms } else { 0 },
                    clusters: state
                        .clusters
                        .iter()
                        .filter(|c| c.wave == i)
                        .map(|c| v1::RolloutCluster {
                            name: c.name.clone(),
                            phase: v1::RolloutClusterPhase::from(c.phase) as i32,
                            previous_commit: c
                                .previous
                                .as_ref()
                                .map(Commit::to_string)
                                .unwrap_or_default(),
                            reason: c.reason.clone(),
                            pinned_unix_ms: c.pinned_ms,
                        })
                        .collect(),
                }
            })
            .collect();
        v1::Rollout {
            id: r.id.clone(),
            r#ref: spec.reference.clone(),
            commit: spec.commit.to_string(),
            phase: v1::RolloutPhase::from(state.phase) as i32,
            message: state.message.clone(),
            current_wave: state.wave as u32,
            waves,
            actor: r.actor.clone(),
            created_unix_ms: r.created_ms,
            updated_unix_ms: r.updated_ms,
            auto_rollback: spec.auto_rollback,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(waves: Vec<v1::WavePlan>, defaults: Option<v1::WavePolicy>) -> v1::RolloutPlan {
        v1::RolloutPlan {
            r#ref: "main".into(),
            waves,
            defaults,
            auto_rollback: true,
        }
    }

    fn wave(select: v1::wave_plan::Select, policy: Option<v1::WavePolicy>) -> v1::WavePlan {
        v1::WavePlan {
            name: String::new(),
            select: Some(select),
            policy,
        }
    }

    #[test]
    fn plans_become_specs_with_policies_merged() {
        let p = plan(
            vec![
                wave(v1::wave_plan::Select::Labels("ring=canary".into()), None),
                wave(
                    v1::wave_plan::Select::Percent(100),
                    Some(v1::WavePolicy {
                        offline: Some(v1::OfflinePolicy::Skip as i32),
                        max_failures: Some("10%".into()),
                        ..Default::default()
                    }),
                ),
            ],
            Some(v1::WavePolicy {
                bake_seconds: Some(30),
                offline: Some(v1::OfflinePolicy::Fail as i32),
                ..Default::default()
            }),
        );
        let s = Spec::from_plan(&p, Commit::parse(&"c".repeat(40)).unwrap()).unwrap();
        assert_eq!(s.waves[0].name, "wave-1");
        assert_eq!(s.waves[0].policy.bake_ms, 30_000);
        assert_eq!(s.waves[0].policy.offline, Offline::Fail);
        assert_eq!(s.waves[1].policy.offline, Offline::Skip);
        assert_eq!(s.waves[1].policy.bake_ms, 30_000, "defaults still apply");
        assert_eq!(s.waves[1].policy.max_failures, Budget::Percent(10));
    }

    #[test]
    fn bad_plans_name_the_wave_and_the_value() {
        let e = waves(&plan(vec![], None)).unwrap_err();
        assert_eq!(e, PlanError::NoWaves);
        let e = waves(&plan(
            vec![wave(v1::wave_plan::Select::Percent(0), None)],
            None,
        ))
        .unwrap_err();
        assert_eq!(e, PlanError::NoSelector(1));
        let e = waves(&plan(
            vec![wave(v1::wave_plan::Select::Labels("a in (".into()), None)],
            None,
        ))
        .unwrap_err();
        assert!(matches!(e, PlanError::Selector { wave: 1, .. }), "{e}");
        let bad = |p: v1::WavePolicy| {
            waves(&plan(
                vec![wave(v1::wave_plan::Select::Count(1), Some(p))],
                None,
            ))
            .unwrap_err()
            .to_string()
        };
        assert!(
            bad(v1::WavePolicy {
                max_failures: Some("lots".into()),
                ..Default::default()
            })
            .contains("\"lots\"")
        );
        assert!(
            bad(v1::WavePolicy {
                offline: Some(42),
                ..Default::default()
            })
            .contains("42")
        );
        assert!(
            bad(v1::WavePolicy {
                bake_seconds: Some(-1),
                ..Default::default()
            })
            .contains("negative")
        );
    }

    #[test]
    fn the_stored_spec_format_is_stable() {
        // What a coordinator of 0.1.0 stored.
        let old = format!(
            r#"{{"reference":"main","commit":"{}","waves":[{{"name":"w","selector":{{"labels":"ring=canary"}},"policy":{{"maxParallel":0,"bakeMs":0,"deadlineMs":600000,"maxFailures":{{"count":0}},"offline":"wait","approval":false}}}}],"autoRollback":false}}"#,
            "d".repeat(40)
        );
        let s: Spec = serde_json::from_str(&old).unwrap();
        assert_eq!(serde_json::to_string(&s).unwrap(), old);
        for p in RolloutPhase::TEXT.map(|(p, _)| p) {
            assert_eq!(RolloutPhase::parse(p.as_str()), Some(p));
        }
        for p in ClusterPhase::TEXT.map(|(p, _)| p) {
            assert_eq!(ClusterPhase::parse(p.as_str()), Some(p));
        }
    }
}
