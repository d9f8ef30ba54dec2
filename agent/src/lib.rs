//! The Ferry agent: one per cluster, outbound only.
//!
//! One level-triggered loop: the desired state (the current assignment: a
//! repository directory at a pinned commit) against what is in the cluster;
//! converge; report. The link to the coordinator runs beside it and only
//! carries assignments in and status out: the loop keeps converging to the
//! last assignment, which it keeps in the cluster, when the coordinator is
//! unreachable.

pub mod apply;
pub mod health;
pub mod identity;
pub mod link;
pub mod render;
pub mod source;

use anyhow::Context;
use apply::{Applier, SavedAssignment, State};
use ferry_proto::v1::{Assignment, AssignmentOptions, Health, ObjectProblem, Phase, StatusReport};
use ferry_proto::{Commit, DialConfig, now_unix_ms};
use render::Object;
use source::Source;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The longest a Git fetch may take before the pass fails and is retried.
const GIT_TIMEOUT: Duration = Duration::from_secs(600);

/// Everything the agent needs; `main` builds it from flags, tests directly.
#[derive(Clone, Debug)]
pub struct Config {
    pub cluster: String,
    pub labels: BTreeMap<String, String>,
    pub dial: DialConfig,
    /// A kubeconfig file; `None` means in-cluster (or the usual inference).
    pub kubeconfig: Option<PathBuf>,
    /// The agent's own namespace, where it keeps its state.
    pub namespace: String,
    /// Where Git repositories are cached.
    pub cache_dir: PathBuf,
    /// How often a converged cluster is checked again for drift.
    pub resync: Duration,
    /// How often health is read while objects are progressing.
    pub health_poll: Duration,
    pub heartbeat: Duration,
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    /// A one-time join token, used when the cluster has no identity yet.
    pub join_token: Option<String>,
    /// The command that builds a kustomization, given its directory last.
    pub kustomize: Vec<String>,
    /// Repair drift (the default); when off, drift is only reported.
    pub self_heal: bool,
    /// Git credentials (HTTPS, SSH).
    pub git_auth: source::GitAuth,
    /// The bound of the Git cache, in bytes.
    pub git_cache_bytes: u64,
}

impl Config {
    /// Defaults for everything but identity, coordinator and cluster access.
    pub fn new(cluster: impl Into<String>, dial: DialConfig, cache_dir: PathBuf) -> Self {
        Config {
            cluster: cluster.into(),
            labels: BTreeMap::new(),
            dial,
            kubeconfig: None,
            namespace: "ferry-system".into(),
            cache_dir,
            resync: Duration::from_secs(30),
            health_poll: Duration::from_secs(1),
            heartbeat: Duration::from_secs(15),
            min_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(30),
            join_token: None,
            kustomize: default_kustomize(),
            self_heal: true,
            git_auth: source::GitAuth::default(),
            git_cache_bytes: source::DEFAULT_CACHE_BYTES,
        }
    }
}

/// `kustomize build` if kustomize is on PATH, else `kubectl kustomize`.
pub fn default_kustomize() -> Vec<String> {
    let on_path = |name: &str| {
        std::env::var_os("PATH")
            .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
    };
    if on_path("kustomize") {
        vec!["kustomize".into(), "build".into()]
    } else {
        vec!["kubectl".into(), "kustomize".into()]
    }
}

async fn kube_client(cfg: &Config) -> anyhow::Result<kube::Client> {
    let mut kc = match &cfg.kubeconfig {
        Some(p) => {
            let file = kube::config::Kubeconfig::read_from(p)
                .with_context(|| format!("reading kubeconfig {}", p.display()))?;
            kube::Config::from_custom_kubeconfig(file, &Default::default()).await?
        }
        None => kube::Config::infer()
            .await
            .context("finding in-cluster or default Kubernetes credentials")?,
    };
    // The sync loop retries with its own backoff; kube's default retries of
    // 429/503 (up to 15, minutes apart) would stall a sync instead.
    kc.default_retry = false;
    Ok(kube::Client::try_from(kc)?)
}

fn saved(a: &Assignment) -> SavedAssignment {
    SavedAssignment {
        repo_url: a.repo_url.clone(),
        commit: a.commit.clone(),
        path: a.path.clone(),
        generation: a.generation,
        allow_mass_prune: a.options.as_ref().is_some_and(|o| o.allow_mass_prune),
    }
}

fn restored(s: &SavedAssignment) -> Assignment {
    Assignment {
        repo_url: s.repo_url.clone(),
        commit: s.commit.clone(),
        path: s.path.clone(),
        generation: s.generation,
        options: Some(AssignmentOptions {
            allow_mass_prune: s.allow_mass_prune,
        }),
    }
}

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

struct Agent {
    cfg: Config,
    applier: Applier,
    source: Source,
    state: State,
    /// The rendered objects of the last (url, commit, path) read.
    rendered: Option<((String, String, String), Vec<Object>)>,
    status: watch::Sender<StatusReport>,
    drift_corrections: u64,
    last_sync_ms: i64,
    last_correction_ms: i64,
}

/// What one pass of the loop concluded.
struct Pass {
    phase: Phase,
    health: Health,
    message: String,
    problems: Vec<ObjectProblem>,
}

impl Agent {
    fn report(&mut self, a: Option<&Assignment>, pass: Pass) {
        let report = StatusReport {
            observed_generation: a.map_or(0, |a| a.generation),
            target_commit: a.map(|a| a.commit.clone()).unwrap_or_default(),
            applied_commit: self.state.applied_commit.clone(),
            phase: pass.phase as i32,
            health: pass.health as i32,
            message: pass.message,
            problems: pass.problems,
            objects: self.state.inventory.len() as u32,
            drift_corrections: self.drift_corrections,
            last_sync_unix_ms: self.last_sync_ms,
            reported_unix_ms: now_unix_ms(),
            last_correction_unix_ms: self.last_correction_ms,
        };
        self.status.send_if_modified(|cur| {
            if same_report(cur, &report) {
                false
            } else {
                *cur = report;
                true
            }
        });
    }

    fn failed(message: String, problems: Vec<ObjectProblem>) -> Pass {
        Pass {
            phase: Phase::Failed,
            health: Health::Unknown,
            message,
            problems,
        }
    }

    /// The target cannot be read from Git (server down, refused, missing
    /// commit): keep enforcing the last applied commit from the cache, with
    /// no network, so drift is still repaired; report the target Failed.
    async fn hold_last(&mut self, a: &Assignment, why: String) -> Pass {
        let applied = self.state.applied_commit.clone();
        let Some(prev) = self
            .state
            .assignment
            .clone()
            .filter(|p| !applied.is_empty() && p.commit == applied && p.commit != a.commit)
        else {
            return Self::failed(why, vec![]);
        };
        let Ok(prev_commit) = Commit::parse(&prev.commit) else {
            return Self::failed(why, vec![]);
        };
        let source = self.source.clone();
        let (url, path, c) = (
            prev.repo_url.clone(),
            prev.path.clone(),
            prev_commit.clone(),
        );
        let cached =
            tokio::task::spawn_blocking(move || source.cached_files(&url, &c, &path)).await;
        // Kustomizations are not held: building one needs the whole tree.
        let objects = match cached {
            Ok(Ok(Some(files))) if !render::is_kustomization(&files) => {
                match render::render(&files) {
                    Ok(o) => o,
                    Err(_) => return Self::failed(why, vec![]),
                }
            }
            _ => return Self::failed(why, vec![]),
        };
        let mut next = self.state.clone();
        let held = match self
            .applier
            .sync(
                &objects,
                &mut next,
                prev.allow_mass_prune,
                !self.cfg.self_heal,
            )
            .await
        {
            Ok(done) => {
                if done.writes > 0 {
                    self.drift_corrections += done.writes as u64;
                    self.last_correction_ms = now_unix_ms();
                    tracing::info!(
                        writes = done.writes,
                        commit = %prev_commit,
                        "repaired drift against the last applied commit"
                    );
                }
                if self.applier.save_state(&next).await.is_ok() {
                    self.state = next;
                }
                format!("still enforcing {}", prev_commit.short())
            }
            Err(apply::Error::Drifted(p)) => format!(
                "{} object(s) drifted from {} (self-heal is off)",
                p.len(),
                prev_commit.short()
            ),
            Err(e) => format!("enforcing {} failed too: {e}", prev_commit.short()),
        };
        Self::failed(format!("{why}; {held}"), vec![])
    }

    /// Reads, renders and applies the assignment; judges health.
    async fn pass(&mut self, a: &Assignment) -> Pass {
        let commit = match Commit::parse(&a.commit) {
            Ok(c) => c,
            Err(e) => return Self::failed(format!("bad assignment: {e}"), vec![]),
        };
        let key = (a.repo_url.clone(), a.commit.clone(), a.path.clone());
        if self.rendered.as_ref().map(|r| &r.0) != Some(&key) {
            if self.state.applied_commit != a.commit {
                self.report(
                    Some(a),
                    Pass {
                        phase: Phase::Syncing,
                        health: Health::Unknown,
                        message: format!("syncing {}", commit.short()),
                        problems: vec![],
                    },
                );
            }
            let source = self.source.clone();
            let (url, path) = (a.repo_url.clone(), a.path.clone());
            let c = commit.clone();
            // A Git server that hangs must not hang the agent: the pass
            // fails (and is retried) after GIT_TIMEOUT.
            let read = tokio::task::spawn_blocking(move || source.files(&url, &c, &path));
            let files = match tokio::time::timeout(GIT_TIMEOUT, read).await {
                Err(_) => {
                    let why = format!(
                        "fetching {} from {} took over {} s: gave up, will retry",
                        commit.short(),
                        source::redact(&a.repo_url),
                        GIT_TIMEOUT.as_secs()
                    );
                    return self.hold_last(a, why).await;
                }
                Ok(read) => read,
            };
            let files = match files {
                Ok(Ok((files, fetched))) => {
                    if fetched {
                        tracing::info!(commit = %commit, "fetched");
                    }
                    files
                }
                Ok(Err(e)) => return self.hold_last(a, e.to_string()).await,
                Err(e) => return Self::failed(format!("reading Git: {e}"), vec![]),
            };
            let files = if render::is_kustomization(&files) {
                match self.kustomize(a, &commit).await {
                    Ok(f) => vec![f],
                    Err(p) => {
                        let message = format!("{} at {}: nothing was applied", p, commit.short());
                        return Self::failed(message, wire(vec![p]));
                    }
                }
            } else {
                files
            };
            match render::render(&files) {
                Ok(objects) => self.rendered = Some((key, objects)),
                Err(problems) => {
                    let message = format!(
                        "{} invalid document(s) at {} in {}: nothing was applied",
                        problems.len(),
                        commit.short(),
                        a.path
                    );
                    let problems = wire(problems);
                    return Self::failed(message, problems);
                }
            }
        }
        let objects = self
            .rendered
            .as_ref()
            .map(|r| r.1.clone())
            .unwrap_or_default();
        let allow = a.options.as_ref().is_some_and(|o| o.allow_mass_prune);
        let before = self.state.applied_commit.clone();
        let mut next = self.state.clone();
        next.assignment = Some(saved(a));
        let detect_only = !self.cfg.self_heal && before == a.commit;
        match self
            .applier
            .sync(&objects, &mut next, allow, detect_only)
            .await
        {
            Ok(applied) => {
                next.applied_commit = a.commit.clone();
                if applied.writes > 0 && before == a.commit {
                    self.drift_corrections += applied.writes as u64;
                    self.last_correction_ms = now_unix_ms();
                    tracing::info!(writes = applied.writes, "repaired drift");
                }
                if applied.writes > 0 {
                    tracing::info!(commit = %commit, writes = applied.writes, pruned = applied.pruned, "applied");
                }
                if let Err(e) = self.applier.save_state(&next).await {
                    return Self::failed(
                        format!("applied, but saving the inventory failed: {e}"),
                        vec![],
                    );
                }
                self.state = next;
                self.last_sync_ms = now_unix_ms();
                self.judge(&applied.live, &commit)
            }
            Err(apply::Error::Drifted(problems)) => Pass {
                phase: Phase::Synced,
                health: Health::Degraded,
                message: format!(
                    "{} object(s) drifted from Git at {}; self-heal is off",
                    problems.len(),
                    commit.short()
                ),
                problems: wire(problems),
            },
            Err(apply::Error::Rejected(problems)) => {
                let message = format!(
                    "{} object(s) rejected at {}: nothing was applied",
                    problems.len(),
                    commit.short()
                );
                let problems = wire(problems);
                Self::failed(message, problems)
            }
            Err(e) => Self::failed(e.to_string(), vec![]),
        }
    }

    /// Builds the assignment's kustomization from an export of the tree.
    async fn kustomize(
        &self,
        a: &Assignment,
        commit: &Commit,
    ) -> Result<source::File, render::Problem> {
        let source = self.source.clone();
        let command = self.cfg.kustomize.clone();
        let (url, path, c) = (a.repo_url.clone(), a.path.clone(), commit.clone());
        let built = tokio::task::spawn_blocking(move || {
            let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
            source
                .export(&url, &c, dir.path())
                .map_err(|e| e.to_string())?;
            Ok::<_, String>(render::kustomize(&command, &dir.path().join(&path), &path))
        })
        .await;
        match built {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => Err(render::Problem {
                source: format!("kustomize build {}", a.path),
                object: String::new(),
                message: e,
            }),
            Err(e) => Err(render::Problem {
                source: format!("kustomize build {}", a.path),
                object: String::new(),
                message: e.to_string(),
            }),
        }
    }

    fn judge(&self, live: &[serde_json::Value], commit: &Commit) -> Pass {
        let mut problems = vec![];
        let mut hs = vec![];
        for o in live {
            let v = health::judge(o);
            if v.health != Health::Healthy {
                let kind = o["kind"].as_str().unwrap_or("");
                let name = o
                    .pointer("/metadata/name")
                    .and_then(|n| n.as_str())
                    .unwrap_or("");
                let object = match o.pointer("/metadata/namespace").and_then(|n| n.as_str()) {
                    Some(ns) => format!("{kind}/{ns}/{name}"),
                    None => format!("{kind}/{name}"),
                };
                problems.push(ObjectProblem {
                    object,
                    source: String::new(),
                    message: v.reason,
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
}

/// The identity kept in the cluster, pre-provisioned files, or a new one
/// from enrollment. `None` when shut down while waiting.
async fn obtain_identity(
    cfg: &Config,
    client: &kube::Client,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<identity::Identity>> {
    let mut delay = cfg.min_backoff;
    loop {
        let attempt: anyhow::Result<Option<identity::Identity>> = async {
            if let Some(id) = identity::load(client, &cfg.namespace).await? {
                return Ok(Some(id));
            }
            if let (Some(c), Some(k)) = (&cfg.dial.cert, &cfg.dial.key) {
                // Pre-provisioned certificate files: used as they are, not renewed.
                let read = |p: &PathBuf| std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()));
                return Ok(Some(identity::Identity { cert_pem: read(c)?, key_pem: read(k)?, ca_pem: String::new(), not_before_ms: 0, not_after_ms: 0 }));
            }
            let Some(token) = &cfg.join_token else {
                anyhow::bail!("cluster {} has no identity yet: start the agent with --join-token (from `ferry cluster add`)", cfg.cluster);
            };
            let mut dial = cfg.dial.clone();
            dial.cert = None;
            dial.key = None;
            let id = match identity::enroll(&dial, &cfg.cluster, token).await {
                Ok(id) => id,
                Err(e @ identity::Error::Refused(_)) => anyhow::bail!(e),
                Err(e) => return Err(e.into()).map(|(): ()| None),
            };
            identity::save(client, &cfg.namespace, &id).await?;
            tracing::info!(cluster = %cfg.cluster, "enrolled: certificate issued and kept in the cluster");
            Ok(Some(id))
        }
        .await;
        match attempt {
            Ok(Some(id)) => return Ok(Some(id)),
            Err(e)
                if e.downcast_ref::<identity::Error>()
                    .is_none_or(|ie| matches!(ie, identity::Error::Refused(_)))
                    && !is_transient(&e) =>
            {
                return Err(e);
            }
            Err(e) => tracing::warn!(error = %e, "obtaining an identity; retrying"),
            Ok(None) => {}
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(None),
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(cfg.max_backoff);
    }
}

fn is_transient(e: &anyhow::Error) -> bool {
    matches!(
        e.downcast_ref::<identity::Error>(),
        Some(identity::Error::Unreachable(_) | identity::Error::Secret { .. })
    )
}

/// Renews the certificate at two thirds of its lifetime, keeps it in the
/// cluster and hands it to the link; the live session is not interrupted.
async fn renew_forever(
    cfg: Config,
    client: kube::Client,
    mut current: identity::Identity,
    tx: watch::Sender<Option<identity::Identity>>,
    shutdown: CancellationToken,
) {
    loop {
        let wait = Duration::from_millis((current.renew_at_ms() - now_unix_ms()).max(0) as u64);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        match identity::renew(&cfg.dial, &cfg.cluster, &current).await {
            Ok(next) => {
                if let Err(e) = identity::save(&client, &cfg.namespace, &next).await {
                    tracing::warn!(error = %e, "renewed, but keeping the new certificate failed; using it anyway");
                }
                tracing::info!(not_after = next.not_after_ms, "certificate renewed");
                current = next;
                tx.send_replace(Some(current.clone()));
            }
            Err(e) => {
                tracing::warn!(error = %e, "renewing the certificate; retrying");
                let left = (current.not_after_ms - now_unix_ms()).max(0) as u64;
                let pause = Duration::from_millis((left / 10).clamp(200, 30_000));
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(pause) => {}
                }
            }
        }
    }
}

/// Runs the agent until `shutdown`.
pub async fn run(cfg: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let client = kube_client(&cfg).await?;
    let mut applier = Applier::new(client, cfg.cluster.clone(), cfg.namespace.clone());
    // The cluster's API may not be up yet: wait for it, but not for the coordinator.
    let state = loop {
        match applier.load_state().await {
            Ok(s) => break s,
            Err(e) => {
                tracing::warn!(error = %e, "reading the agent's state from the cluster; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(cfg.min_backoff.max(Duration::from_secs(1))) => {}
                }
            }
        }
    };
    let identity = if cfg.dial.insecure {
        None
    } else {
        match obtain_identity(&cfg, applier.client(), &shutdown).await? {
            Some(id) => Some(id),
            None => return Ok(()),
        }
    };
    let (identity_tx, identity_rx) = watch::channel(identity.clone());
    if let Some(id) = identity.filter(|i| i.not_after_ms > 0) {
        tokio::spawn(renew_forever(
            cfg.clone(),
            applier.client().clone(),
            id,
            identity_tx,
            shutdown.child_token(),
        ));
    }
    let initial = state.assignment.as_ref().map(restored);
    if let Some(a) = &initial {
        tracing::info!(commit = %a.commit, path = %a.path, "resuming the last assignment kept in the cluster");
    }
    let (assign_tx, mut assign_rx) = watch::channel(initial);
    let first = StatusReport {
        applied_commit: state.applied_commit.clone(),
        phase: Phase::Pending as i32,
        objects: state.inventory.len() as u32,
        reported_unix_ms: now_unix_ms(),
        ..Default::default()
    };
    let (status_tx, status_rx) = watch::channel(first);
    let (connected_tx, _connected_rx) = watch::channel(false);
    let link_cfg = link::LinkConfig {
        dial: cfg.dial.clone(),
        cluster: cfg.cluster.clone(),
        labels: cfg.labels.clone(),
        heartbeat: cfg.heartbeat,
        min_backoff: cfg.min_backoff,
        max_backoff: cfg.max_backoff,
    };
    let link = tokio::spawn(link::run(
        link_cfg,
        identity_rx,
        assign_tx,
        status_rx,
        connected_tx,
        shutdown.child_token(),
    ));

    let mut agent = Agent {
        source: Source::new(cfg.cache_dir.clone())
            .with_auth(cfg.git_auth.clone())
            .with_max_bytes(cfg.git_cache_bytes),
        cfg,
        applier,
        state,
        rendered: None,
        status: status_tx,
        drift_corrections: 0,
        last_sync_ms: 0,
        last_correction_ms: 0,
    };
    // Changes by other writers to what the agent manages wake a pass at once.
    let drift = std::sync::Arc::new(tokio::sync::Notify::new());
    let (kinds_tx, kinds_rx) = watch::channel(Vec::new());
    let watches = tokio::spawn(watch_drift(
        agent.applier.client().clone(),
        agent.cfg.cluster.clone(),
        kinds_rx,
        drift.clone(),
        shutdown.child_token(),
    ));
    let mut next = Instant::now();
    let mut failures = 0u32;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            r = assign_rx.changed() => if r.is_err() { break },
            _ = drift.notified() => {}
            _ = tokio::time::sleep_until(next.into()) => {}
        }
        let assignment = assign_rx.borrow_and_update().clone();
        let Some(a) = assignment else {
            agent.report(
                None,
                Pass {
                    phase: Phase::Pending,
                    health: Health::Unknown,
                    message: "waiting for an assignment".into(),
                    problems: vec![],
                },
            );
            next = Instant::now() + agent.cfg.resync;
            continue;
        };
        let pass = agent.pass(&a).await;
        let delay = match (pass.phase, pass.health) {
            (Phase::Failed, _) => {
                failures += 1;
                (agent.cfg.min_backoff * 2u32.saturating_pow(failures.min(8))).min(agent.cfg.resync)
            }
            (_, Health::Progressing | Health::Unknown) => {
                failures = 0;
                agent.cfg.health_poll
            }
            _ => {
                failures = 0;
                agent.cfg.resync
            }
        };
        if pass.phase == Phase::Failed {
            tracing::warn!(message = %pass.message, "sync failed");
        }
        agent.report(Some(&a), pass);
        let inventory = agent.state.inventory.clone();
        let kinds = agent.applier.resources(&inventory).await;
        kinds_tx.send_if_modified(|cur| {
            if *cur == kinds {
                false
            } else {
                *cur = kinds;
                true
            }
        });
        next = Instant::now() + delay;
    }
    link.abort();
    watches.abort();
    Ok(())
}

/// One watcher per managed kind, on objects carrying this cluster's owner
/// label; any change after the initial list notifies `drift`. Our own writes
/// wake it too: that pass finds nothing to do and writes nothing.
async fn watch_drift(
    client: kube::Client,
    cluster: String,
    mut kinds: watch::Receiver<Vec<kube::discovery::ApiResource>>,
    drift: std::sync::Arc<tokio::sync::Notify>,
    shutdown: CancellationToken,
) {
    use futures::StreamExt;
    use kube::runtime::{WatchStreamExt, watcher};
    let mut running: Vec<(kube::discovery::ApiResource, tokio::task::JoinHandle<()>)> = vec![];
    loop {
        let want = kinds.borrow_and_update().clone();
        running.retain(|(r, h)| {
            let keep = want.contains(r);
            if !keep {
                h.abort();
            }
            keep
        });
        for r in want {
            if running.iter().any(|(x, _)| *x == r) {
                continue;
            }
            let api: kube::Api<kube::api::DynamicObject> = kube::Api::all_with(client.clone(), &r);
            let cfg =
                watcher::Config::default().labels(&format!("{}={cluster}", apply::OWNER_LABEL));
            let drift = drift.clone();
            let h = tokio::spawn(async move {
                let mut events = watcher(api, cfg).default_backoff().boxed();
                while let Some(ev) = events.next().await {
                    if let Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_)) = ev {
                        drift.notify_one();
                    }
                }
            });
            running.push((r, h));
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            r = kinds.changed() => if r.is_err() { break },
        }
    }
    for (_, h) in running {
        h.abort();
    }
}
