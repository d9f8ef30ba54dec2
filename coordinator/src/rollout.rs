//! Staged rollouts as a pure state machine: a spec, the observed state of
//! the clusters and the time go in; the next state and the pins to make come
//! out. No I/O, no clock of its own: the driver persists each transition
//! together with its pins, so a coordinator killed at any point resumes
//! exactly where it was. The data types are `ferry_proto::rollout`'s.

use ferry_proto::Commit;
use ferry_proto::rollout::{
    ClusterPhase, ClusterProgress, Offline, RolloutPhase, Selector, Spec, State,
};
use ferry_proto::v1::{Health, Phase};
use std::collections::{BTreeMap, BTreeSet};

/// What the engine sees of a cluster.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Observed {
    pub connected: bool,
    pub labels: BTreeMap<String, String>,
    pub pinned: Option<Commit>,
    /// The generation of the cluster's current assignment.
    pub generation: u64,
    /// The generation the agent last reported working on: a report about
    /// an older assignment says nothing about the current one.
    pub observed_generation: u64,
    pub target: Option<Commit>,
    pub applied: Option<Commit>,
    pub phase: Phase,
    pub health: Health,
    /// The site whose Git mirror the cluster reads from, if any.
    pub site: Option<String>,
}

/// What the sites' mirrors hold of one rollout's commit.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Mirrors {
    /// Sites whose mirror holds the commit.
    pub holding: BTreeSet<String>,
    /// Where each other site's mirror is, for the wait message
    /// ("mirror at 9c1d…", "never reported").
    pub at: BTreeMap<String, String>,
}

/// What the driver must do, in order, together with persisting the state.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    Pin {
        cluster: String,
        commit: Commit,
        reason: String,
    },
    Event {
        cluster: String,
        message: String,
    },
}

/// Picks each wave's clusters, in wave order, from those not yet taken.
pub fn plan(spec: &Spec, clusters: &BTreeMap<String, Observed>) -> Result<State, String> {
    let mut left: Vec<&String> = clusters.keys().collect();
    let mut progress = vec![];
    for (i, w) in spec.waves.iter().enumerate() {
        let taken: Vec<String> = match &w.selector {
            Selector::Labels(s) => {
                let sel = ferry_proto::LabelSelector::parse(s)
                    .map_err(|e| format!("wave {}: {e}", w.name))?;
                left.iter()
                    .filter(|c| sel.matches(&clusters[**c].labels))
                    .map(|c| c.to_string())
                    .collect()
            }
            Selector::Names(names) => {
                for n in names {
                    if !clusters.contains_key(n) {
                        return Err(format!("wave {}: unknown cluster {n:?}", w.name));
                    }
                }
                let names: std::collections::HashSet<&String> = names.iter().collect();
                left.iter()
                    .filter(|c| names.contains(**c))
                    .map(|c| c.to_string())
                    .collect()
            }
            Selector::Count(n) => left
                .iter()
                .take(*n as usize)
                .map(|c| c.to_string())
                .collect(),
            Selector::Percent(p) => {
                let n = (left.len() * (*p).min(100) as usize).div_ceil(100);
                left.iter().take(n).map(|c| c.to_string()).collect()
            }
        };
        {
            let taken: std::collections::HashSet<&String> = taken.iter().collect();
            left.retain(|c| !taken.contains(c));
        }
        for name in taken {
            let previous = clusters[&name].pinned.clone();
            progress.push(ClusterProgress {
                name,
                wave: i,
                previous,
                phase: ClusterPhase::Waiting,
                pinned_ms: 0,
                reason: String::new(),
            });
        }
    }
    if progress.is_empty() {
        return Err("no cluster matches any wave".into());
    }
    Ok(State {
        phase: RolloutPhase::Running,
        wave: 0,
        wave_started_ms: 0,
        baked_since_ms: 0,
        approved: BTreeSet::new(),
        clusters: progress,
        message: String::new(),
    })
}

/// The site whose mirror lacks the rollout's commit, for a cluster in one.
fn lacks<'o>(o: &'o Observed, mirrors: &Mirrors) -> Option<&'o str> {
    o.site.as_deref().filter(|s| !mirrors.holding.contains(*s))
}

fn at_target_healthy(o: &Observed, commit: &Commit) -> bool {
    o.observed_generation >= o.generation
        && o.applied.as_ref() == Some(commit)
        && o.phase == Phase::Synced
        && o.health == Health::Healthy
}

fn failed_at_target(o: &Observed, commit: &Commit) -> Option<String> {
    if o.observed_generation < o.generation {
        return None;
    }
    if o.target.as_ref() == Some(commit) && o.phase == Phase::Failed {
        return Some("the agent failed to apply the target commit".into());
    }
    if o.applied.as_ref() == Some(commit) && o.health == Health::Degraded {
        return Some("Degraded at the target commit".into());
    }
    None
}

/// Rolls back every cluster this rollout moved; returns the pins to make.
pub fn rollback(spec: &Spec, state: &mut State, why: &str) -> Vec<Action> {
    let mut actions = vec![];
    for c in state.clusters.iter_mut() {
        if matches!(
            c.phase,
            ClusterPhase::Pinned | ClusterPhase::Healthy | ClusterPhase::Failed
        ) {
            if let Some(previous) = c.previous.as_ref().filter(|p| **p != spec.commit) {
                actions.push(Action::Pin {
                    cluster: c.name.clone(),
                    commit: previous.clone(),
                    reason: format!("rollback: {why}"),
                });
            }
            c.phase = ClusterPhase::RolledBack;
        }
    }
    actions
}

/// One step of the rollout at `now_ms`, with no site mirrors.
pub fn step(
    spec: &Spec,
    state: &mut State,
    observed: &BTreeMap<String, Observed>,
    now_ms: i64,
) -> Vec<Action> {
    step_with(spec, state, observed, &Mirrors::default(), now_ms)
}

/// One step of the rollout at `now_ms`. A cluster whose site's mirror lacks
/// the commit is not pinned: its wave waits for the mirror (or skips or
/// fails it, as the wave's mirror-lag policy says).
pub fn step_with(
    spec: &Spec,
    state: &mut State,
    observed: &BTreeMap<String, Observed>,
    mirrors: &Mirrors,
    now_ms: i64,
) -> Vec<Action> {
    let mut actions = vec![];
    if state.phase != RolloutPhase::Running && state.phase != RolloutPhase::AwaitingApproval {
        return actions;
    }
    loop {
        let Some(wave) = spec.waves.get(state.wave) else {
            state.phase = RolloutPhase::Succeeded;
            state.message = format!("every wave runs {}", spec.commit.short());
            actions.push(Action::Event {
                cluster: String::new(),
                message: state.message.clone(),
            });
            return actions;
        };
        let p = &wave.policy;
        if state.wave_started_ms == 0 {
            if p.approval && !state.approved.contains(&state.wave) {
                if state.phase != RolloutPhase::AwaitingApproval {
                    state.phase = RolloutPhase::AwaitingApproval;
                    state.message = format!("wave {} waits for approval", wave.name);
                    actions.push(Action::Event {
                        cluster: String::new(),
                        message: state.message.clone(),
                    });
                }
                return actions;
            }
            state.phase = RolloutPhase::Running;
            state.wave_started_ms = now_ms;
            state.baked_since_ms = 0;
            state.message = format!("wave {} started", wave.name);
            actions.push(Action::Event {
                cluster: String::new(),
                message: state.message.clone(),
            });
        }
        let idx = state.wave;
        let members: Vec<usize> = (0..state.clusters.len())
            .filter(|&i| state.clusters[i].wave == idx)
            .collect();

        // Judge the clusters already moving.
        for &i in &members {
            let c = &mut state.clusters[i];
            let o = observed.get(&c.name).cloned().unwrap_or_default();
            match c.phase {
                ClusterPhase::Pinned | ClusterPhase::Healthy => {
                    if let Some(why) = failed_at_target(&o, &spec.commit) {
                        c.phase = ClusterPhase::Failed;
                        c.reason = why;
                    } else if at_target_healthy(&o, &spec.commit) {
                        if c.phase == ClusterPhase::Pinned {
                            actions.push(Action::Event {
                                cluster: c.name.clone(),
                                message: "Healthy at the target".into(),
                            });
                        }
                        c.phase = ClusterPhase::Healthy;
                    } else if c.phase == ClusterPhase::Pinned
                        && now_ms - c.pinned_ms > p.deadline_ms
                    {
                        c.phase = ClusterPhase::Failed;
                        c.reason =
                            format!("not Healthy at the target within {}s", p.deadline_ms / 1000);
                    } else if c.phase == ClusterPhase::Healthy {
                        // It was healthy and no longer is: back to waiting for it.
                        c.phase = ClusterPhase::Pinned;
                    }
                    if c.phase == ClusterPhase::Failed {
                        actions.push(Action::Event {
                            cluster: c.name.clone(),
                            message: format!("failed: {}", c.reason),
                        });
                    }
                }
                ClusterPhase::Waiting
                    if lacks(&o, mirrors).is_some()
                        && now_ms - state.wave_started_ms > p.deadline_ms =>
                {
                    let site = lacks(&o, mirrors).expect("checked");
                    c.phase = ClusterPhase::Failed;
                    c.reason = format!(
                        "mirror {site} did not hold {} within the {}s deadline",
                        spec.commit.short(),
                        p.deadline_ms / 1000
                    );
                    actions.push(Action::Event {
                        cluster: c.name.clone(),
                        message: format!("failed: {}", c.reason),
                    });
                }
                ClusterPhase::Waiting
                    if !o.connected && now_ms - state.wave_started_ms > p.deadline_ms =>
                {
                    c.phase = ClusterPhase::Failed;
                    c.reason = format!("offline for the whole {}s deadline", p.deadline_ms / 1000);
                    actions.push(Action::Event {
                        cluster: c.name.clone(),
                        message: format!("failed: {}", c.reason),
                    });
                }
                _ => {}
            }
        }

        // The failure budget.
        let failed = members
            .iter()
            .filter(|&&i| state.clusters[i].phase == ClusterPhase::Failed)
            .count();
        if failed > p.max_failures.allowed(members.len()) {
            state.phase = RolloutPhase::Failed;
            state.message = format!(
                "wave {}: {failed} of {} clusters failed, over the budget; halted",
                wave.name,
                members.len()
            );
            actions.push(Action::Event {
                cluster: String::new(),
                message: state.message.clone(),
            });
            if spec.auto_rollback {
                actions.extend(rollback(
                    spec,
                    state,
                    &format!("rollout failed in wave {}", wave.name),
                ));
                state.phase = RolloutPhase::RolledBack;
                state.message.push_str("; rolled back");
            }
            return actions;
        }

        // Move more clusters, up to max_parallel in flight.
        let in_flight = members
            .iter()
            .filter(|&&i| state.clusters[i].phase == ClusterPhase::Pinned)
            .count();
        let mut room = if p.max_parallel == 0 {
            usize::MAX
        } else {
            (p.max_parallel as usize).saturating_sub(in_flight)
        };
        for &i in &members {
            if room == 0 {
                break;
            }
            let c = &mut state.clusters[i];
            if c.phase != ClusterPhase::Waiting {
                continue;
            }
            let o = observed.get(&c.name).cloned().unwrap_or_default();
            if !o.connected {
                match p.offline {
                    Offline::Wait => continue,
                    Offline::Skip => {
                        c.phase = ClusterPhase::Skipped;
                        c.reason = "offline: skipped".into();
                        actions.push(Action::Event {
                            cluster: c.name.clone(),
                            message: "offline: skipped".into(),
                        });
                        continue;
                    }
                    Offline::Fail => {
                        c.phase = ClusterPhase::Failed;
                        c.reason = "offline".into();
                        actions.push(Action::Event {
                            cluster: c.name.clone(),
                            message: "failed: offline".into(),
                        });
                        continue;
                    }
                }
            }
            if let Some(site) = lacks(&o, mirrors) {
                let waiting = format!(
                    "waiting for mirror {site} to hold {} ({})",
                    spec.commit.short(),
                    mirrors
                        .at
                        .get(site)
                        .map_or("never reported", String::as_str)
                );
                match p.mirror_lag {
                    Offline::Wait => {
                        if c.reason != waiting {
                            c.reason = waiting.clone();
                            actions.push(Action::Event {
                                cluster: c.name.clone(),
                                message: waiting,
                            });
                        }
                        continue;
                    }
                    Offline::Skip => {
                        c.phase = ClusterPhase::Skipped;
                        c.reason = format!("mirror {site} lacks {}: skipped", spec.commit.short());
                    }
                    Offline::Fail => {
                        c.phase = ClusterPhase::Failed;
                        c.reason = format!("mirror {site} lacks {}", spec.commit.short());
                    }
                }
                actions.push(Action::Event {
                    cluster: c.name.clone(),
                    message: c.reason.clone(),
                });
                continue;
            }
            c.phase = ClusterPhase::Pinned;
            c.pinned_ms = now_ms;
            c.reason.clear();
            room -= 1;
            actions.push(Action::Pin {
                cluster: c.name.clone(),
                commit: spec.commit.clone(),
                reason: format!("wave {}", wave.name),
            });
        }
        // Offline failures may have broken the budget: judge again next step.
        let failed = members
            .iter()
            .filter(|&&i| state.clusters[i].phase == ClusterPhase::Failed)
            .count();
        if failed > p.max_failures.allowed(members.len()) {
            continue;
        }

        // Bake: every remaining member Healthy at the target for long enough.
        let settled = members.iter().all(|&i| {
            matches!(
                state.clusters[i].phase,
                ClusterPhase::Healthy | ClusterPhase::Skipped | ClusterPhase::Failed
            )
        });
        if !settled {
            state.baked_since_ms = 0;
            return actions;
        }
        if state.baked_since_ms == 0 {
            state.baked_since_ms = now_ms;
            state.message = format!("wave {} healthy; baking", wave.name);
        }
        if now_ms - state.baked_since_ms < p.bake_ms {
            return actions;
        }
        actions.push(Action::Event {
            cluster: String::new(),
            message: format!("wave {} done", wave.name),
        });
        state.wave += 1;
        state.wave_started_ms = 0;
        state.baked_since_ms = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use ferry_proto::rollout::{Budget, Policy, WaveSpec};

    fn t() -> Commit {
        Commit::parse(&"1".repeat(40)).unwrap()
    }
    fn old() -> Commit {
        Commit::parse(&"0".repeat(40)).unwrap()
    }

    fn fleet(n: &[(&str, &str)]) -> BTreeMap<String, Observed> {
        n.iter()
            .map(|(name, ring)| {
                (
                    name.to_string(),
                    Observed {
                        connected: true,
                        labels: [("ring".to_string(), ring.to_string())].into(),
                        pinned: Some(old()),
                        generation: 1,
                        observed_generation: 1,
                        target: Some(old()),
                        applied: Some(old()),
                        phase: Phase::Synced,
                        health: Health::Healthy,
                        site: None,
                    },
                )
            })
            .collect()
    }

    fn spec(waves: Vec<(Selector, Policy)>, auto_rollback: bool) -> Spec {
        Spec {
            reference: "main".into(),
            commit: t(),
            waves: waves
                .into_iter()
                .enumerate()
                .map(|(i, (selector, policy))| WaveSpec {
                    name: format!("w{i}"),
                    selector,
                    policy,
                })
                .collect(),
            auto_rollback,
        }
    }

    /// Applies pins to the fake fleet as agents would: healthy at once.
    fn agents(obs: &mut BTreeMap<String, Observed>, actions: &[Action], healthy: bool) {
        for a in actions {
            if let Action::Pin {
                cluster, commit, ..
            } = a
            {
                let o = obs.get_mut(cluster).unwrap();
                o.pinned = Some(commit.clone());
                o.generation += 1;
                o.observed_generation = o.generation;
                o.target = Some(commit.clone());
                o.applied = Some(commit.clone());
                o.health = if healthy {
                    Health::Healthy
                } else {
                    Health::Degraded
                };
            }
        }
    }

    fn pins(actions: &[Action]) -> Vec<String> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Pin { cluster, .. } => Some(cluster.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn waves_wait_for_health_and_bake() {
        let mut obs = fleet(&[("a", "canary"), ("b", "main"), ("c", "main")]);
        let bake = Policy {
            bake_ms: 1000,
            ..Policy::default()
        };
        let s = spec(
            vec![
                (Selector::Labels("ring=canary".into()), bake.clone()),
                (Selector::Percent(100), bake),
            ],
            false,
        );
        let mut st = plan(&s, &obs).unwrap();
        let a = step(&s, &mut st, &obs, 0);
        assert_eq!(pins(&a), ["a"]);
        agents(&mut obs, &a, true);
        assert!(pins(&step(&s, &mut st, &obs, 10)).is_empty(), "baking");
        assert!(
            pins(&step(&s, &mut st, &obs, 500)).is_empty(),
            "still baking"
        );
        let a = step(&s, &mut st, &obs, 1010);
        assert_eq!(pins(&a), ["b", "c"], "next wave after the bake");
        agents(&mut obs, &a, true);
        step(&s, &mut st, &obs, 1020);
        step(&s, &mut st, &obs, 2100);
        assert_eq!(st.phase, RolloutPhase::Succeeded);
    }

    #[test]
    fn over_budget_halts_and_rolls_back() {
        let mut obs = fleet(&[("a", "canary"), ("b", "main")]);
        let s = spec(
            vec![
                (Selector::Labels("ring=canary".into()), Policy::default()),
                (Selector::Percent(100), Policy::default()),
            ],
            true,
        );
        let mut st = plan(&s, &obs).unwrap();
        let a = step(&s, &mut st, &obs, 0);
        agents(&mut obs, &a, false);
        let a = step(&s, &mut st, &obs, 10);
        assert_eq!(st.phase, RolloutPhase::RolledBack);
        assert!(a.contains(&Action::Pin {
            cluster: "a".into(),
            commit: old(),
            reason: "rollback: rollout failed in wave w0".into()
        }));
        assert!(
            !pins(&a).contains(&"b".to_string()),
            "later waves untouched"
        );
        assert!(
            pins(&step(&s, &mut st, &obs, 20)).is_empty(),
            "halted for good"
        );
    }

    #[test]
    fn deadline_counts_against_the_budget() {
        let mut obs = fleet(&[("a", "x"), ("b", "x")]);
        let p = Policy {
            deadline_ms: 100,
            max_failures: Budget::Count(1),
            ..Policy::default()
        };
        let s = spec(vec![(Selector::Percent(100), p)], false);
        let mut st = plan(&s, &obs).unwrap();
        let a = step(&s, &mut st, &obs, 0);
        assert_eq!(pins(&a), ["a", "b"]);
        let first_pin: Vec<Action> = a
            .into_iter()
            .filter(|x| matches!(x, Action::Pin { cluster, .. } if cluster == "a"))
            .collect();
        agents(&mut obs, &first_pin, true); // b never applies the target
        step(&s, &mut st, &obs, 50);
        step(&s, &mut st, &obs, 200);
        assert_eq!(st.clusters[1].phase, ClusterPhase::Failed);
        assert_eq!(
            st.phase,
            RolloutPhase::Succeeded,
            "one failure is within the budget"
        );
    }

    #[test]
    fn offline_policies() {
        for (policy, want) in [
            (Offline::Skip, ClusterPhase::Skipped),
            (Offline::Fail, ClusterPhase::Failed),
            (Offline::Wait, ClusterPhase::Waiting),
        ] {
            let mut obs = fleet(&[("a", "x"), ("b", "x")]);
            obs.get_mut("b").unwrap().connected = false;
            let p = Policy {
                offline: policy,
                max_failures: Budget::Count(1),
                ..Policy::default()
            };
            let s = spec(vec![(Selector::Percent(100), p)], false);
            let mut st = plan(&s, &obs).unwrap();
            let a = step(&s, &mut st, &obs, 0);
            assert_eq!(pins(&a), ["a"], "{policy:?}");
            assert_eq!(st.clusters[1].phase, want, "{policy:?}");
            agents(&mut obs, &a, true);
            step(&s, &mut st, &obs, 10);
            let done = st.phase == RolloutPhase::Succeeded;
            assert_eq!(done, policy != Offline::Wait, "{policy:?}: {:?}", st.phase);
        }
    }

    #[test]
    fn a_wave_waits_for_its_sites_mirror_then_moves_on() {
        let mut obs = fleet(&[("a", "x"), ("b", "x")]);
        obs.get_mut("b").unwrap().site = Some("dmz".into());
        let s = spec(vec![(Selector::Percent(100), Policy::default())], false);
        let mut st = plan(&s, &obs).unwrap();
        let lagging = Mirrors {
            holding: BTreeSet::new(),
            at: [("dmz".to_string(), "mirror at 9c1d2e3f".to_string())].into(),
        };
        let a = step_with(&s, &mut st, &obs, &lagging, 0);
        assert_eq!(pins(&a), ["a"]);
        assert_eq!(
            st.clusters[1].reason,
            "waiting for mirror dmz to hold 11111111 (mirror at 9c1d2e3f)"
        );
        agents(&mut obs, &a, true);
        step_with(&s, &mut st, &obs, &lagging, 10);
        assert_eq!(st.phase, RolloutPhase::Running, "the wave waits");
        let fed = Mirrors {
            holding: ["dmz".to_string()].into(),
            ..Mirrors::default()
        };
        let a = step_with(&s, &mut st, &obs, &fed, 20);
        assert_eq!(pins(&a), ["b"], "the mirror holds it now");
        agents(&mut obs, &a, true);
        step_with(&s, &mut st, &obs, &fed, 30);
        assert_eq!(st.phase, RolloutPhase::Succeeded);

        // Skip, fail, and waiting past the deadline.
        for (policy, want) in [
            (Offline::Skip, ClusterPhase::Skipped),
            (Offline::Fail, ClusterPhase::Failed),
        ] {
            let p = Policy {
                mirror_lag: policy,
                max_failures: Budget::Count(1),
                ..Policy::default()
            };
            let s = spec(vec![(Selector::Percent(100), p)], false);
            let mut st = plan(&s, &obs).unwrap();
            step_with(&s, &mut st, &obs, &lagging, 0);
            assert_eq!(st.clusters[1].phase, want, "{policy:?}");
        }
        let p = Policy {
            deadline_ms: 1000,
            ..Policy::default()
        };
        let s = spec(vec![(Selector::Percent(100), p)], false);
        let mut st = plan(&s, &obs).unwrap();
        step_with(&s, &mut st, &obs, &lagging, 1);
        step_with(&s, &mut st, &obs, &lagging, 2000);
        assert_eq!(st.clusters[1].phase, ClusterPhase::Failed);
        assert!(
            st.clusters[1].reason.contains("did not hold"),
            "{}",
            st.clusters[1].reason
        );
    }

    #[test]
    fn approval_and_parallelism() {
        let mut obs = fleet(&[("a", "x"), ("b", "x"), ("c", "x")]);
        let p = Policy {
            approval: true,
            max_parallel: 2,
            ..Policy::default()
        };
        let s = spec(vec![(Selector::Percent(100), p)], false);
        let mut st = plan(&s, &obs).unwrap();
        assert!(pins(&step(&s, &mut st, &obs, 0)).is_empty());
        assert_eq!(st.phase, RolloutPhase::AwaitingApproval);
        st.approved.insert(0);
        let a = step(&s, &mut st, &obs, 1);
        assert_eq!(pins(&a), ["a", "b"], "two at a time");
        agents(&mut obs, &a, true);
        let a = step(&s, &mut st, &obs, 2);
        assert_eq!(pins(&a), ["c"]);
    }

    #[test]
    fn a_report_about_an_older_assignment_does_not_count() {
        let mut obs = fleet(&[("a", "x")]);
        let s = spec(vec![(Selector::Percent(100), Policy::default())], false);
        let mut st = plan(&s, &obs).unwrap();
        let a = step(&s, &mut st, &obs, 0);
        assert_eq!(pins(&a), ["a"]);
        // The pin moved the generation, but the agent still reports the old
        // one, Failed: that failure was about its previous assignment.
        let o = obs.get_mut("a").unwrap();
        o.generation += 1;
        o.target = Some(t());
        o.phase = Phase::Failed;
        step(&s, &mut st, &obs, 10);
        assert_eq!(st.clusters[0].phase, ClusterPhase::Pinned);
        // Once it reports on the new generation, it counts.
        obs.get_mut("a").unwrap().observed_generation += 1;
        step(&s, &mut st, &obs, 20);
        assert_eq!(st.clusters[0].phase, ClusterPhase::Failed);
    }

    #[test]
    fn paused_does_nothing_and_percent_rounds_up() {
        let obs = fleet(&[("a", "x"), ("b", "x"), ("c", "x")]);
        let s = spec(
            vec![
                (Selector::Percent(50), Policy::default()),
                (Selector::Count(10), Policy::default()),
            ],
            false,
        );
        let mut st = plan(&s, &obs).unwrap();
        assert_eq!(st.clusters.iter().filter(|c| c.wave == 0).count(), 2);
        st.phase = RolloutPhase::Paused;
        assert!(step(&s, &mut st, &obs, 0).is_empty());
    }
}
