//! The agent's one loop, level-triggered: the desired state (the current
//! assignment: a directory of a repository at a pinned commit) against what
//! is in the cluster; converge; report. A pass runs when the assignment
//! changes, when a drift watch fires, and every resync interval; it reads
//! Git (the pinned commit only, cached), renders, applies and judges
//! health. When the new target cannot be read, it keeps enforcing the last
//! commit it applied. Told to stop, it finishes the step it is in (waits
//! end at once), publishes a last status and returns.

use crate::apply::{self, Applier, Plan};
use crate::cluster::{self, Cluster};
use crate::inform::{Notice, Notices};
use crate::metrics::{Metrics, SyncLabels, SyncResult};
use crate::read::{Reader, Unread};
use crate::render::{self, Object, ObjectRef};
use crate::source::Source;
use crate::state::{State, StateStore};
use crate::{Config, health};
use ferry_proto::v1::{Health, ObjectProblem, Phase, StatusReport};
use ferry_proto::verify::Signer;
use ferry_proto::{Assignment, Commit, now_unix_ms};
use kube::discovery::ApiResource;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// Problems as the wire carries them.
fn wire(problems: Vec<render::Problem>) -> Vec<ObjectProblem> {
    problems
        .into_iter()
        .map(|p| ObjectProblem {
            object: p.object,
            source: p.source,
            message: p.message,
        })
        .collect()
}

/// Two reports that differ only in their timestamps say the same thing.
fn same_report(a: &StatusReport, b: &StatusReport) -> bool {
    let strip = |r: &StatusReport| StatusReport {
        reported_unix_ms: 0,
        last_sync_unix_ms: 0,
        ..r.clone()
    };
    strip(a) == strip(b)
}

/// What one pass concluded; `None` when it was interrupted by a stop.
struct Pass {
    phase: Phase,
    health: Health,
    message: String,
    problems: Vec<ObjectProblem>,
}

impl Pass {
    fn failed(message: String, problems: Vec<ObjectProblem>) -> Pass {
        Pass {
            phase: Phase::Failed,
            health: Health::Unknown,
            message,
            problems,
        }
    }
}

/// Where the loop tells what it does: the coordinator (status), metrics,
/// readiness, and the cluster's own operators (events).
pub struct Outputs {
    pub status: watch::Sender<StatusReport>,
    pub metrics: Metrics,
    /// Set while the agent holds an applied commit it keeps enforcing.
    pub enforcing: Arc<AtomicBool>,
    pub notices: Notices,
    /// The inventory, for previews (what a prune would remove).
    pub inventory: watch::Sender<Vec<crate::state::InventoryEntry>>,
}

/// A directory as a pass finds it: planned already, or just read.
enum Rendered {
    Planned(Arc<Plan>),
    Read(RenderKey, Vec<Object>),
}

/// What a rendering depends on: repository, commit, directory, labels
/// (per-cluster values of Helm sources).
type RenderKey = (String, Commit, String, BTreeMap<String, String>);

/// The loop's own state. The sync loop is its only owner.
pub struct Syncer {
    cfg: Config,
    cluster: Arc<Cluster>,
    /// Tells when the cluster's client was rebuilt.
    clients: watch::Receiver<kube::Client>,
    applier: Applier,
    states: StateStore,
    reader: Reader,
    state: State,
    /// The plan of the last directory read (kept compact: it lives as long
    /// as the commit is applied).
    rendered: Option<(RenderKey, Arc<Plan>)>,
    status: watch::Sender<StatusReport>,
    drift_corrections: u64,
    last_sync_ms: i64,
    last_correction_ms: i64,
    metrics: Metrics,
    /// Set while the agent holds an applied commit it keeps enforcing.
    enforcing: Arc<AtomicBool>,
    /// What becomes an event in the cluster.
    notices: Notices,
    /// The pass just run failed on the mass-prune valve (its own event).
    prune_refused: bool,
    /// The last commit that verified, under which keys (their digest), and
    /// who signed it: a commit is checked once per key set, not per pass.
    verified: Option<(Commit, String, Signer)>,
    /// Who signed the applied commit (reported).
    signer: String,
    inventory: watch::Sender<Vec<crate::state::InventoryEntry>>,
    /// The inventory changed since it was last published.
    inventory_moved: bool,
}

impl Syncer {
    pub fn new(
        cfg: Config,
        cluster: Arc<Cluster>,
        states: StateStore,
        state: State,
        out: Outputs,
    ) -> Self {
        let Outputs {
            status,
            metrics,
            enforcing,
            notices,
            inventory,
        } = out;
        inventory.send_replace(state.inventory.clone());
        let mut clients = cluster.subscribe();
        enforcing.store(state.applied_commit.is_some(), Ordering::Relaxed);
        metrics.managed_objects.set(state.inventory.len() as i64);
        let client = clients.borrow_and_update().clone();
        Syncer {
            applier: {
                let mut a = Applier::new(client, cfg.cluster.clone());
                a.namespaces = cfg.namespaces.clone();
                a
            },
            cluster,
            clients,
            reader: Reader {
                source: Source::new(cfg.cache_dir.clone())
                    .with_auth(cfg.git_auth.clone())
                    .with_max_bytes(cfg.git_cache_bytes),
                kustomize: cfg.kustomize.clone(),
                helm: cfg.helm.clone(),
                cluster: cfg.cluster.clone(),
            },
            cfg,
            states,
            state,
            rendered: None,
            status,
            drift_corrections: 0,
            last_sync_ms: 0,
            last_correction_ms: 0,
            metrics,
            enforcing,
            notices,
            prune_refused: false,
            verified: None,
            signer: String::new(),
            inventory,
            inventory_moved: true,
        }
    }

    /// Counts a pass that ran to its end.
    fn count(&self, pass: &Pass, took: Duration) {
        let result = if pass.phase == Phase::Failed {
            SyncResult::failure
        } else {
            self.metrics.last_success.set(now_unix_ms() as f64 / 1000.0);
            SyncResult::success
        };
        self.metrics
            .syncs
            .get_or_create(&SyncLabels { result })
            .inc();
        self.metrics.sync_duration.observe(took.as_secs_f64());
        self.metrics
            .managed_objects
            .set(self.state.inventory.len() as i64);
        self.enforcing
            .store(self.state.applied_commit.is_some(), Ordering::Relaxed);
    }

    /// Tells a new inventory to previews, and its kinds to the drift watches.
    /// A kind discovery could not resolve now is asked for again after the
    /// next pass (its objects' drift watch must not stay missing).
    async fn publish_inventory(&mut self, kinds: &watch::Sender<Vec<ApiResource>>) {
        let now = &self.state.inventory;
        self.inventory.send_if_modified(|held| {
            if held == now {
                false
            } else {
                held.clone_from(now);
                true
            }
        });
        let (managed, complete) = self.applier.resources(&self.state.inventory).await;
        self.inventory_moved = !complete;
        kinds.send_if_modified(|cur| {
            if *cur == managed {
                false
            } else {
                *cur = managed;
                true
            }
        });
    }

    /// Counts writes that repaired drift.
    fn corrected(&mut self, writes: usize, commit: &Commit) {
        self.drift_corrections += writes as u64;
        self.last_correction_ms = now_unix_ms();
        self.metrics.drift_corrections.inc_by(writes as u64);
        self.notices.send(Notice::DriftRepaired {
            commit: commit.short().to_string(),
            writes,
        });
    }

    /// The first report, before any pass: what the cluster was left with.
    pub fn initial_report(state: &State) -> StatusReport {
        StatusReport {
            applied_commit: state
                .applied_commit
                .as_ref()
                .map(Commit::to_string)
                .unwrap_or_default(),
            phase: Phase::Pending as i32,
            objects: state.inventory.len() as u32,
            reported_unix_ms: now_unix_ms(),
            ..Default::default()
        }
    }

    fn report(&mut self, a: Option<&Assignment>, pass: Pass) {
        let report = StatusReport {
            observed_generation: a.map_or(0, |a| a.generation),
            target_commit: a.map(|a| a.commit.to_string()).unwrap_or_default(),
            applied_commit: self
                .state
                .applied_commit
                .as_ref()
                .map(Commit::to_string)
                .unwrap_or_default(),
            phase: pass.phase as i32,
            health: pass.health as i32,
            message: pass.message,
            problems: pass.problems,
            objects: self.state.inventory.len() as u32,
            drift_corrections: self.drift_corrections,
            last_sync_unix_ms: self.last_sync_ms,
            reported_unix_ms: now_unix_ms(),
            last_correction_unix_ms: self.last_correction_ms,
            signer: self.signer.clone(),
        };
        let mut report = report;
        // The coordinator keeps only so much of one report; say what is cut.
        ferry_proto::status::bound(&mut report);
        self.status.send_if_modified(|cur| {
            if same_report(cur, &report) {
                false
            } else {
                *cur = report;
                true
            }
        });
    }

    /// Runs until `stop`: a pass on every new assignment, drift wake-up and
    /// resync; publishes the kinds it manages for the drift watches.
    pub async fn run(
        mut self,
        mut assignments: watch::Receiver<Option<Assignment>>,
        mut refused: watch::Receiver<Option<String>>,
        drift: Arc<Notify>,
        kinds: watch::Sender<Vec<ApiResource>>,
        stop: CancellationToken,
    ) {
        let mut next = Instant::now();
        let mut failures = 0u32;
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                r = assignments.changed() => if r.is_err() { break },
                r = refused.changed() => if r.is_err() { break },
                _ = drift.notified() => {}
                _ = tokio::time::sleep_until(next.into()) => {}
            }
            let assignment = assignments.borrow_and_update().clone();
            let Some(a) = assignment else {
                self.report(
                    None,
                    Pass {
                        phase: Phase::Pending,
                        health: Health::Unknown,
                        message: "waiting for an assignment".into(),
                        problems: vec![],
                    },
                );
                next = Instant::now() + self.cfg.resync;
                continue;
            };
            let span = tracing::info_span!(
                "sync",
                cluster = %self.cfg.cluster,
                commit = %a.commit.short(),
                generation = a.generation,
                rollout = a.rollout.as_deref().unwrap_or("-"),
            );
            if self.clients.has_changed().unwrap_or(false) {
                let c = self.clients.borrow_and_update().clone();
                self.applier.set_client(c.clone());
                self.states.set_client(c);
            }
            // Kept as soon as it arrives: an agent stopped during its first
            // sync resumes it without the coordinator.
            if self.state.assignment.as_ref() != Some(&a) {
                let mut next = self.state.clone();
                next.assignment = Some(a.clone());
                match self.states.save(&next).await {
                    Ok(_) => {
                        self.state = next;
                        self.inventory_moved = true;
                    }
                    Err(e) => {
                        span.in_scope(|| tracing::warn!(error = %e, "keeping the new assignment"))
                    }
                }
            }
            let started = Instant::now();
            let Some(mut pass) = self.pass(&a, &stop).instrument(span.clone()).await else {
                break;
            };
            // A newer assignment was refused: this one is still enforced,
            // and the coordinator hears why the newer one is not.
            if let Some(why) = refused.borrow_and_update().clone() {
                pass = Pass::failed(
                    format!("{why}; still enforcing {}", a.commit.short()),
                    pass.problems,
                );
            }
            self.count(&pass, started.elapsed());
            if pass.phase == Phase::Failed && !std::mem::take(&mut self.prune_refused) {
                self.notices.send(Notice::SyncFailed {
                    message: pass.message.clone(),
                });
            }
            let delay = match (pass.phase, pass.health) {
                // Failed, or waiting for a site's mirror to hold the commit.
                (Phase::Failed | Phase::Pending, _) => {
                    failures += 1;
                    (self.cfg.min_backoff * 2u32.saturating_pow(failures.min(8)))
                        .min(self.cfg.resync)
                }
                (_, Health::Progressing | Health::Unknown) => {
                    failures = 0;
                    self.cfg.health_poll
                }
                _ => {
                    failures = 0;
                    self.cfg.resync
                }
            };
            if pass.phase == Phase::Failed {
                span.in_scope(|| tracing::warn!(message = %pass.message, "sync failed"));
            }
            self.report(Some(&a), pass);
            if std::mem::take(&mut self.inventory_moved) {
                self.publish_inventory(&kinds).await;
            }
            next = Instant::now() + delay;
        }
        // The last word: what the coordinator last heard stays true, and
        // says the agent stopped.
        self.status.send_modify(|r| {
            r.message = format!("the agent stopped; before: {}", r.message);
            r.reported_unix_ms = now_unix_ms();
        });
    }

    /// The target cannot be read from Git (server down, refused, missing
    /// commit): keep enforcing the last applied commit from the cache, with
    /// no network, so drift is still repaired; report the target Failed.
    async fn hold_last(
        &mut self,
        a: &Assignment,
        why: String,
        stop: &CancellationToken,
    ) -> Option<Pass> {
        let Some(prev) = self.state.applied.clone().filter(|p| p.commit != a.commit) else {
            return Some(Pass::failed(why, vec![]));
        };
        let source = self.reader.source.clone();
        let (url, path, c) = (
            prev.repo_url.clone(),
            prev.path.clone(),
            prev.commit.clone(),
        );
        let cached = tokio::task::spawn_blocking(move || {
            source.cached_files(&url, &c, &path, &render::wanted)
        })
        .await;
        // Kustomizations and Helm sources are not held: building one needs
        // the whole tree.
        let objects = match cached {
            Ok(Ok(Some(files)))
                if !render::is_kustomization(&files) && !crate::helm::is_chart(&files) =>
            {
                match render::render(&files) {
                    Ok(o) => o,
                    Err(_) => return Some(Pass::failed(why, vec![])),
                }
            }
            _ => return Some(Pass::failed(why, vec![])),
        };
        let synced = match self.applier.plan(&objects).await {
            Ok(plan) => {
                self.applier
                    .sync(
                        &plan,
                        &self.state.inventory,
                        prev.allow_mass_prune,
                        !self.cfg.self_heal,
                        stop,
                    )
                    .await
            }
            Err(e) => Err(e),
        };
        let held = match synced {
            Ok(done) => {
                if done.writes > 0 {
                    self.corrected(done.writes, &prev.commit);
                    tracing::info!(
                        writes = done.writes,
                        commit = %prev.commit,
                        "repaired drift against the last applied commit"
                    );
                }
                if let Some(inventory) = done.inventory {
                    let next = self.state.with_inventory(inventory);
                    if self.states.save(&next).await.is_ok() {
                        self.state = next;
                        self.inventory_moved = true;
                    }
                }
                format!("still enforcing {}", prev.commit.short())
            }
            Err(apply::Error::Interrupted) => return None,
            Err(apply::Error::Drifted(p)) => format!(
                "{} object(s) drifted from {} (self-heal is off)",
                p.len(),
                prev.commit.short()
            ),
            Err(e) => format!(
                "enforcing {} failed too: {}",
                prev.commit.short(),
                self.failure(&e).await
            ),
        };
        Some(Pass::failed(format!("{why}; {held}"), vec![]))
    }

    /// The assignment's directory: its plan if one is kept for it, else
    /// read and rendered (per commit). `Err` is the pass that reports why
    /// it could not.
    async fn objects(
        &mut self,
        a: &Assignment,
        stop: &CancellationToken,
    ) -> Result<Rendered, Option<Pass>> {
        let key = (
            a.repo_url.clone(),
            a.commit.clone(),
            a.path.clone(),
            a.labels.clone(),
        );
        if let Some((k, plan)) = &self.rendered
            && *k == key
        {
            return Ok(Rendered::Planned(plan.clone()));
        }
        if self.state.applied_commit.as_ref() != Some(&a.commit) {
            self.report(
                Some(a),
                Pass {
                    phase: Phase::Syncing,
                    health: Health::Unknown,
                    message: format!("syncing {}", a.commit.short()),
                    problems: vec![],
                },
            );
        }
        match self.reader.read(a, stop).await {
            Ok(read) => {
                if let Some(took) = read.fetched {
                    self.metrics.fetch_duration.observe(took.as_secs_f64());
                    tracing::info!("fetched");
                }
                Ok(Rendered::Read(key, read.objects))
            }
            Err(Unread::Stopped) => Err(None),
            Err(Unread::Git(why)) => Err(self.hold_last(a, why, stop).await),
            Err(Unread::Lagging(why)) => {
                // Not a failure: the cluster keeps what it runs and waits.
                let mut pass = self.hold_last(a, why, stop).await;
                if let Some(p) = pass.as_mut().filter(|p| p.phase == Phase::Failed) {
                    p.phase = Phase::Pending;
                }
                Err(pass)
            }
            Err(Unread::Invalid { message, problems }) => {
                Err(Some(Pass::failed(message, wire(problems))))
            }
        }
    }

    /// The plan to apply: the kept one unless what the cluster serves
    /// changed since it was made, else made now (and kept for the commit;
    /// the rendered objects are dropped, the plan is their compact form).
    async fn plan(&mut self, rendered: Rendered, a: &Assignment) -> Result<Arc<Plan>, Pass> {
        let (key, planned) = match rendered {
            Rendered::Planned(plan) => match self.applier.refresh(&plan).await {
                None => return Ok(plan),
                Some(planned) => (self.rendered.take().map(|(k, _)| k), planned),
            },
            Rendered::Read(key, objects) => (Some(key), self.applier.plan(&objects).await),
        };
        match planned {
            Ok(plan) => {
                let plan = Arc::new(plan);
                if let Some(key) = key {
                    self.rendered = Some((key, plan.clone()));
                }
                Ok(plan)
            }
            Err(e) => Err(self.sync_failed(e, a).await),
        }
    }

    /// Reads, renders, plans and applies the assignment; judges health.
    /// `None` when told to stop part-way.
    async fn pass(&mut self, a: &Assignment, stop: &CancellationToken) -> Option<Pass> {
        let rendered = match self.objects(a, stop).await {
            Ok(o) => o,
            Err(pass) => return pass,
        };
        // Nothing is applied unless the cluster's own keys vouch for it.
        let signer = match self.verify(a).await {
            Ok(s) => s,
            Err(why) => {
                self.metrics.signature_refusals.inc();
                return self
                    .hold_last(a, format!("{why}: nothing was applied"), stop)
                    .await;
            }
        };
        let plan = match self.plan(rendered, a).await {
            Ok(p) => p,
            Err(pass) => return Some(pass),
        };
        let applied_before = self.state.applied_commit.as_ref() == Some(&a.commit);
        let detect_only = !self.cfg.self_heal && applied_before;
        let result = self
            .applier
            .sync(
                &plan,
                &self.state.inventory,
                a.allow_mass_prune,
                detect_only,
                stop,
            )
            .await;
        drop(plan);
        let applied = match result {
            Ok(applied) => applied,
            Err(apply::Error::Interrupted) => return None,
            Err(e) => return Some(self.sync_failed(e, a).await),
        };
        if applied.writes > 0 && applied_before {
            self.corrected(applied.writes, &a.commit);
            tracing::info!(writes = applied.writes, "repaired drift");
        }
        if applied.writes > 0 {
            tracing::info!(writes = applied.writes, pruned = applied.pruned, "applied");
        }
        // A pass that changed nothing keeps the state as it is: no copy of
        // the inventory, no comparison, no write.
        let kept = applied.inventory.is_none()
            && self.state.assignment.as_ref() == Some(a)
            && self.state.applied_commit.as_ref() == Some(&a.commit)
            && self.state.applied.as_ref() == Some(a)
            && !self.states.is_lost();
        if !kept {
            let next = State {
                assignment: Some(a.clone()),
                applied_commit: Some(a.commit.clone()),
                applied: Some(a.clone()),
                inventory: applied
                    .inventory
                    .unwrap_or_else(|| self.state.inventory.clone()),
            };
            if let Err(e) = self.states.save(&next).await {
                if cluster::is_connection_error(e.source_error()) {
                    self.cluster.refresh().await;
                }
                return Some(Pass::failed(
                    format!("applied, but saving the inventory failed: {e}"),
                    vec![],
                ));
            }
            self.state = next;
            self.inventory_moved = true;
        }
        self.last_sync_ms = now_unix_ms();
        self.signer = signer.map(|s| s.to_string()).unwrap_or_default();
        if !applied_before {
            self.notices.send(Notice::Applied {
                commit: a.commit.short().to_string(),
                objects: self.state.inventory.len(),
                writes: applied.writes,
            });
        }
        Some(judge(&applied.health, &a.commit))
    }

    /// The pass of a plan or sync that failed (never `Interrupted`).
    async fn sync_failed(&mut self, e: apply::Error, a: &Assignment) -> Pass {
        match e {
            apply::Error::Drifted(problems) => Pass {
                phase: Phase::Synced,
                health: Health::Degraded,
                message: format!(
                    "{} object(s) drifted from Git at {}; self-heal is off",
                    problems.len(),
                    a.commit.short()
                ),
                problems: wire(problems),
            },
            apply::Error::Rejected(problems) => {
                self.applier.forget_kinds();
                let message = format!(
                    "{} object(s) rejected at {}: nothing was applied",
                    problems.len(),
                    a.commit.short()
                );
                Pass::failed(message, wire(problems))
            }
            e => {
                let message = self.failure(&e).await;
                if matches!(e, apply::Error::MassPrune(_)) {
                    self.metrics.prune_refusals.inc();
                    self.prune_refused = true;
                    self.notices.send(Notice::PruneRefused {
                        message: message.clone(),
                    });
                }
                Pass::failed(message, vec![])
            }
        }
    }

    /// What to say of a failed sync, after doing what may fix it: the
    /// kinds the cluster serves are read again, and a failed connection
    /// rebuilds the client from the kubeconfig (a replaced API server may
    /// have a new CA).
    async fn failure(&mut self, e: &apply::Error) -> String {
        self.applier.forget_kinds();
        match e.kube() {
            Some(k) if cluster::is_connection_error(k) => {
                self.cluster.refresh().await;
                cluster::certificate_problem(e).unwrap_or_else(|| e.to_string())
            }
            _ => e.to_string(),
        }
    }

    /// Checks the assignment's commit against the cluster's verify keys,
    /// read again now (a rotation takes effect at once). `Ok(None)`: no
    /// policy. `Err` says why the commit must not be applied.
    async fn verify(&mut self, a: &Assignment) -> Result<Option<Signer>, String> {
        let Some(dir) = self.cfg.verify_keys.clone() else {
            return Ok(None);
        };
        let mode = self.cfg.verify_mode;
        if let Some((c, digest, s)) = &self.verified
            && *c == a.commit
            && *digest == Reader::keys_digest(dir.clone(), mode).await?
        {
            return Ok(Some(s.clone()));
        }
        let (signer, digest) = self
            .reader
            .verify(dir, mode, &a.repo_url, &a.commit)
            .await?;
        tracing::info!(signer = %signer, "commit verified");
        self.verified = Some((a.commit.clone(), digest, signer.clone()));
        Ok(Some(signer))
    }
}

/// The health of the applied objects, as one report.
fn judge(live: &[(ObjectRef, health::Verdict)], commit: &Commit) -> Pass {
    let mut problems = vec![];
    let mut hs = vec![];
    for (r, v) in live {
        if v.health != Health::Healthy {
            problems.push(ObjectProblem {
                object: r.to_string(),
                source: String::new(),
                message: v.reason.clone(),
            });
        }
        hs.push(v.health);
    }
    let health = health::aggregate(hs);
    let message = match health {
        Health::Healthy => format!("{} objects at {} are healthy", live.len(), commit.short()),
        _ => format!(
            "{} of {} objects at {} are not healthy yet",
            problems.len(),
            live.len(),
            commit.short()
        ),
    };
    Pass {
        phase: Phase::Synced,
        health,
        message,
        problems,
    }
}
