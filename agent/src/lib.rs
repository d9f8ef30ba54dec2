//! The Ferry agent: one per cluster, outbound only.
//!
//! `sync` is the one level-triggered loop (desired assignment against what
//! is in the cluster: converge, report), built from `source` (Git), `render`
//! (files to objects), `plan` (pure decisions), `apply` (server-side apply,
//! prune), `health` and `state` (what the agent keeps in its cluster).
//! `link` carries assignments in and status out; `drift` wakes the loop on
//! changes; `identity` enrolls and renews. The loop keeps converging to the
//! last assignment, kept in the cluster, when the coordinator is
//! unreachable. See docs/architecture.md.

pub mod apply;
pub mod cluster;
pub mod drift;
pub mod health;
pub mod helm;
pub mod identity;
pub mod inform;
pub mod keeper;
pub mod link;
pub mod metrics;
pub mod plan;
pub mod preview;
pub mod read;
pub mod render;
pub mod source;
pub mod state;
pub mod sync;

use ferry_proto::DialConfig;
use state::StateStore;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Why the agent could not run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No client for the cluster's API could be built.
    #[error(transparent)]
    Cluster(#[from] cluster::Error),
    /// The agent has no identity and cannot get one.
    #[error(transparent)]
    Identity(#[from] identity::Error),
    /// The metrics and probe port could not be bound.
    #[error(transparent)]
    Metrics(std::io::Error),
}

/// How long the link has, once the loop has stopped, to hand over the last
/// status.
const LINK_GRACE: Duration = Duration::from_secs(5);

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
    /// The Secret (in `namespace`) holding the agent's identity.
    pub identity_secret: String,
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
    /// A `helm template`-compatible command for Helm sources (`template
    /// NAME CHART --namespace NS --include-crds -f FILE…` is appended).
    pub helm: Vec<String>,
    /// Repair drift (the default); when off, drift is only reported.
    pub self_heal: bool,
    /// Git credentials (HTTPS, SSH).
    pub git_auth: source::GitAuth,
    /// The bound of the Git cache, in bytes.
    pub git_cache_bytes: u64,
    /// Where to serve `/metrics`, `/healthz` and `/readyz` (plain HTTP);
    /// nowhere when `None`.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// The only namespaces the agent may write (and read) in: objects
    /// elsewhere, or cluster-scoped, are refused by name before any write.
    /// Empty: the whole cluster.
    pub namespaces: Vec<String>,
    /// Trusted signing keys (a mounted Secret or ConfigMap), read again
    /// before every sync: with them, a commit that does not verify is never
    /// applied. `None`: no signature check.
    pub verify_keys: Option<PathBuf>,
    /// What must be signed: the commit, or an annotated tag naming it.
    pub verify_mode: ferry_proto::verify::Mode,
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
            identity_secret: identity::SECRET.into(),
            cache_dir,
            resync: Duration::from_secs(30),
            health_poll: Duration::from_secs(1),
            heartbeat: Duration::from_secs(15),
            min_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(30),
            join_token: None,
            kustomize: default_kustomize(),
            helm: vec!["helm".into()],
            self_heal: true,
            git_auth: source::GitAuth::default(),
            git_cache_bytes: source::DEFAULT_CACHE_BYTES,
            metrics_listen: None,
            namespaces: vec![],
            verify_keys: None,
            verify_mode: Default::default(),
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

/// Runs the agent until `shutdown`; returns at once with an error it
/// cannot get past by waiting (unusable kubeconfig, no identity and no join
/// token, a refused join token). Stopping, it finishes the step in hand,
/// hands the coordinator its last status and ends every task it started.
pub async fn run(cfg: Config, shutdown: CancellationToken) -> Result<(), Error> {
    let metrics = metrics::Metrics::default();
    let ready = Arc::new(Ready::default());
    let (held_tx, held) = watch::channel(None::<identity::Identity>);
    // Probes answer from the start: alive at once, ready once enrolled and
    // connected or enforcing a kept commit.
    let _ops = match cfg.metrics_listen {
        Some(addr) => {
            let listener = ferry_proto::ops::bind(addr).await.map_err(Error::Metrics)?;
            let ops = ops(&metrics, ready.clone(), held.clone(), cfg.dial.insecure);
            let stop = shutdown.child_token();
            Some(tokio_util::task::AbortOnDropHandle::new(tokio::spawn(
                ferry_proto::ops::serve(listener, ops, stop),
            )))
        }
        None => None,
    };
    let cluster =
        Arc::new(cluster::Cluster::connect(cfg.kubeconfig.clone(), metrics.clone()).await?);
    let client = cluster.client();
    let mut states = StateStore::new(client.clone(), cfg.namespace.clone());
    // The cluster's API may not be up yet: wait for it, but not for the coordinator.
    let state = loop {
        match states.load().await {
            Ok(s) => break s,
            Err(e) => {
                let source = e.source_error();
                let shown = cluster::certificate_problem(&e).unwrap_or_else(|| e.to_string());
                tracing::warn!(error = %shown, "reading the agent's state from the cluster; retrying");
                if cluster::is_connection_error(source) && cluster.refresh().await {
                    states.set_client(cluster.client());
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(cfg.min_backoff.max(Duration::from_secs(1))) => {}
                }
            }
        }
    };
    let place = identity::Place {
        namespace: cfg.namespace.clone(),
        secret: cfg.identity_secret.clone(),
    };
    let id_source = identity::Source {
        cluster: cfg.cluster.clone(),
        place: place.clone(),
        dial: cfg.dial.clone(),
        join_token: cfg.join_token.clone(),
        min_backoff: cfg.min_backoff,
        max_backoff: cfg.max_backoff,
    };
    let identity = if cfg.dial.insecure {
        None
    } else {
        match identity::obtain(&id_source, &client, &shutdown).await? {
            Some(id) => Some(id),
            None => return Ok(()),
        }
    };

    // Every task below is owned here: they end when `tasks` is dropped.
    let mut tasks = JoinSet::new();
    let (identity_tx, identity_rx) = watch::channel(identity.clone());
    let held_identity = identity_rx.clone();
    ready.identity.store(true, Ordering::Relaxed);
    // What the probes and metrics see of the identity, as it is renewed.
    {
        let mut rx = identity_rx.clone();
        let stop = shutdown.child_token();
        tasks.spawn(async move {
            loop {
                held_tx.send_replace(rx.borrow_and_update().clone());
                tokio::select! {
                    _ = stop.cancelled() => return,
                    r = rx.changed() => if r.is_err() { return },
                }
            }
        });
    }
    if let Some(id) = identity.filter(|i| i.not_after_ms > 0) {
        tasks.spawn(identity::renew_forever(
            id_source,
            cluster.clone(),
            id,
            identity_tx,
            shutdown.child_token(),
        ));
    }
    if let Some(a) = &state.assignment {
        tracing::info!(commit = %a.commit, path = %a.path, "resuming the last assignment kept in the cluster");
    }
    let (assign_tx, assign_rx) = watch::channel(state.assignment.clone());
    let (refused_tx, refused_rx) = watch::channel(None);
    let (status_tx, status_rx) = watch::channel(sync::Syncer::initial_report(&state));
    let status_rx_local = status_rx.clone();
    // The link outlives the loop by a moment, to carry its last status.
    let link_stop = CancellationToken::new();
    // Previews: asked over the link, answered over it.
    let (previews_tx, previews_rx) = mpsc::channel(1);
    let (answers_tx, answers_rx) = mpsc::channel(4);
    let (inventory_tx, inventory_rx) = watch::channel(Vec::new());
    let link = tokio::spawn(link::run(
        link::LinkConfig {
            dial: cfg.dial.clone(),
            cluster: cfg.cluster.clone(),
            labels: cfg.labels.clone(),
            heartbeat: cfg.heartbeat,
            min_backoff: cfg.min_backoff,
            max_backoff: cfg.max_backoff,
        },
        identity_rx,
        link::Inbox {
            assignments: assign_tx,
            refused: refused_tx,
            connected: metrics.connected.clone(),
            previews: previews_tx,
        },
        status_rx,
        answers_rx,
        link_stop.clone(),
    ));
    let link = tokio_util::task::AbortOnDropHandle::new(link);

    // Changes by other writers to what the agent manages wake a pass at once.
    let wake = Arc::new(Notify::new());
    let (kinds_tx, kinds_rx) = watch::channel(Vec::new());
    tasks.spawn(drift::run(
        cluster.subscribe(),
        cfg.cluster.clone(),
        cfg.namespaces.clone(),
        kinds_rx,
        wake.clone(),
        shutdown.child_token(),
    ));
    // The agent's own Secret and ConfigMap come back if they go.
    tasks.spawn(keeper::run(
        cluster.subscribe(),
        place,
        held_identity,
        states.lost_flag(),
        wake.clone(),
        shutdown.child_token(),
    ));

    // What the cluster's own operators see: events and a status ConfigMap.
    let (notices, notices_rx) = inform::Notices::channel();
    let inform = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(inform::run(
        cluster.subscribe(),
        cfg.namespace.clone(),
        cfg.cluster.clone(),
        status_rx_local,
        notices_rx,
        shutdown.child_token(),
    )));
    tasks.spawn(preview::run(
        preview::Previewer {
            reader: read::Reader {
                source: source::Source::new(cfg.cache_dir.join("preview"))
                    .with_auth(cfg.git_auth.clone())
                    .with_max_bytes(cfg.git_cache_bytes),
                kustomize: cfg.kustomize.clone(),
                helm: cfg.helm.clone(),
                cluster: cfg.cluster.clone(),
            },
            cluster: cluster.clone(),
            cluster_name: cfg.cluster.clone(),
            namespaces: cfg.namespaces.clone(),
            verify: cfg.verify_keys.clone().map(|d| (d, cfg.verify_mode)),
            inventory: inventory_rx,
        },
        previews_rx,
        answers_tx,
        shutdown.child_token(),
    ));
    let out = sync::Outputs {
        status: status_tx,
        metrics,
        enforcing: ready.enforcing.clone(),
        notices,
        inventory: inventory_tx,
    };
    let syncer = sync::Syncer::new(cfg, cluster, states, state, out);
    syncer
        .run(assign_rx, refused_rx, wake, kinds_tx, shutdown.clone())
        .await;

    link_stop.cancel();
    if tokio::time::timeout(LINK_GRACE, link).await.is_err() {
        tracing::warn!("the coordinator link did not close in time");
    }
    // The cluster's own status gets its last write too.
    if tokio::time::timeout(LINK_GRACE, inform).await.is_err() {
        tracing::warn!("the status ConfigMap was not written in time");
    }
    tasks.shutdown().await;
    Ok(())
}

/// What readiness is judged on.
#[derive(Default)]
struct Ready {
    /// The agent has its identity (enrolled, or plaintext by choice).
    identity: AtomicBool,
    /// It holds an applied commit it keeps enforcing.
    enforcing: Arc<AtomicBool>,
}

/// The probe and metrics endpoint's view of the agent.
fn ops(
    metrics: &metrics::Metrics,
    ready: Arc<Ready>,
    identity: watch::Receiver<Option<identity::Identity>>,
    insecure: bool,
) -> ferry_proto::ops::Ops {
    let connected = metrics.connected.clone();
    let expiry = metrics.certificate_expiry.clone();
    let held = identity.clone();
    ferry_proto::ops::Ops {
        registry: Arc::new(metrics.registry()),
        ready: Arc::new(move || {
            let verdict = if !ready.identity.load(Ordering::Relaxed) {
                Err(if insecure {
                    "reading the agent's state from the cluster".to_string()
                } else {
                    "no identity yet: reading it from the cluster or enrolling".to_string()
                })
            } else if connected.get() == 0 && !ready.enforcing.load(Ordering::Relaxed) {
                Err("no session with the coordinator and no applied commit to enforce".into())
            } else {
                Ok(())
            };
            Box::pin(std::future::ready(verdict))
        }),
        refresh: Some(Arc::new(move || {
            if let Some(id) = held.borrow().as_ref().filter(|i| i.not_after_ms > 0) {
                expiry.set(ferry_proto::ops::unix_seconds(id.not_after_ms));
            }
            Box::pin(std::future::ready(()))
        })),
    }
}
