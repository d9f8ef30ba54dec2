//! A Kubernetes API server emulator: a real HTTP(S) server speaking the
//! Kubernetes REST API (discovery, CRUD, server-side apply, selectors, watch,
//! CRDs, namespaces, simulated workload controllers, fault injection), so that
//! unmodified `kubectl` and kube-rs can drive it.
//!
//! Many emulators can run in one process, one per emulated cluster, each on
//! its own `127.0.0.1:0` port. It keeps everything in memory and never
//! touches the disk except for the kubeconfig a caller asks it to write.

mod builtin;
mod events;
mod patch;
mod protobuf;
mod rbac;
mod registry;
mod selector;
mod server;
mod ssa;
mod store;
mod table;
pub mod tls;

pub use registry::ResourceType;
pub use store::{Controllers, NEVER_READY};

use anyhow::{Context, Result};
use base64::Engine;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use server::Shared;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// How an emulator starts.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where to listen; port 0 picks a free one.
    pub listen: SocketAddr,
    /// Serve HTTPS with a generated CA (the default) or plain HTTP.
    pub tls: bool,
    /// The bearer token every request must carry; a random one when none
    /// is given (the kubeconfig always carries it, so clients never prompt
    /// for credentials).
    pub token: Option<String>,
    pub controllers: Controllers,
    /// How many past events a watch can resume from; older ones answer 410 Gone.
    pub event_history: usize,
    /// Serve with a certificate from this CA instead of a new one (a
    /// rebuilt API server that keeps its cluster's CA).
    pub ca: Option<Arc<tls::Ca>>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            tls: true,
            token: None,
            controllers: Controllers::default(),
            event_history: 50_000,
            ca: None,
        }
    }
}

/// Faults a test injects; they apply to every request from then on.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    pub latency: Duration,
    /// Share of requests (0.0 to 1.0) answered 500.
    pub error_500: f64,
    /// Share of requests answered 503.
    pub error_503: f64,
    /// While set, every request gets 429 with this Retry-After (seconds).
    pub throttle_retry_after: Option<u64>,
}

/// What clients asked for.
#[derive(Clone, Debug, Default)]
pub struct Counters {
    /// Requests by (verb, resource plural).
    pub requests: BTreeMap<(String, String), u64>,
    /// Mutating requests that were not dry runs (create, update, patch,
    /// delete, deletecollection), whether or not they changed anything.
    pub writes: u64,
    /// The same, by namespace ("" for cluster-scoped objects).
    pub writes_by_namespace: BTreeMap<String, u64>,
}

/// A running emulator. Dropping it stops the server.
pub struct Emulator {
    shared: Arc<Shared>,
    addr: SocketAddr,
    ca_pem: Option<String>,
    ca: Option<Arc<tls::Ca>>,
    partition: watch::Sender<bool>,
    cancel: CancellationToken,
}

impl Emulator {
    /// Starts serving; returns once the port is bound.
    pub async fn start(cfg: Config) -> Result<Emulator> {
        // A port just given up (a rebuilt server on the same address) may
        // take a moment to be free again.
        let deadline = Instant::now() + Duration::from_secs(5);
        let listener = loop {
            match TcpListener::bind(cfg.listen).await {
                Ok(l) => break l,
                Err(_) if cfg.listen.port() != 0 && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => return Err(e).with_context(|| format!("binding {}", cfg.listen)),
            }
        };
        let addr = listener.local_addr()?;
        let (acceptor, ca) = if cfg.tls {
            let ca = match &cfg.ca {
                Some(ca) => ca.clone(),
                None => Arc::new(tls::Ca::new("kube-emulator-ca")?),
            };
            let leaf = ca.issue("kube-emulator", &["localhost", "127.0.0.1"], false)?;
            (
                Some(tokio_rustls::TlsAcceptor::from(tls::server_config(&leaf)?)),
                Some(ca),
            )
        } else {
            (None, None)
        };
        let ca_pem = ca.as_ref().map(|c| c.cert_pem());
        let mut store = store::Store::new();
        store.controllers = cfg.controllers.clone();
        store.event_history = cfg.event_history;
        let shared = Arc::new(Shared {
            store: Mutex::new(store),
            faults: Mutex::new(Faults::default()),
            counters: Mutex::new(Counters::default()),
            token: Some(
                cfg.token
                    .clone()
                    .unwrap_or_else(|| (0..32).map(|_| fastrand::alphanumeric()).collect()),
            ),
            wake: tokio::sync::Notify::new(),
            accounts: Mutex::new(Default::default()),
        });
        let cancel = CancellationToken::new();
        let (partition, partitioned) = watch::channel(false);
        tokio::spawn(accept_loop(
            listener,
            addr,
            acceptor,
            shared.clone(),
            partitioned,
            cancel.clone(),
        ));
        tokio::spawn(controllers(shared.clone(), cancel.clone()));
        tracing::debug!(%addr, "kube emulator serving");
        Ok(Emulator {
            shared,
            addr,
            ca_pem,
            ca,
            partition,
            cancel,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The server URL, `https://127.0.0.1:PORT` (or http).
    pub fn url(&self) -> String {
        let scheme = if self.ca_pem.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.addr)
    }

    /// The CA that signed the serving certificate (to rebuild a server that
    /// keeps it).
    pub fn ca(&self) -> Option<Arc<tls::Ca>> {
        self.ca.clone()
    }

    /// The bearer token requests must carry.
    pub fn token(&self) -> &str {
        self.shared.token.as_deref().unwrap_or_default()
    }

    /// The PEM of the CA that signed the serving certificate.
    pub fn ca_pem(&self) -> Option<&str> {
        self.ca_pem.as_deref()
    }

    /// A token for service account `namespace/name`: requests with it are
    /// authorized by the RBAC objects in the emulator.
    pub fn service_account_token(&self, namespace: &str, name: &str) -> String {
        let token: String = (0..40).map(|_| fastrand::alphanumeric()).collect();
        self.shared.accounts.lock().expect("accounts lock").insert(
            token.clone(),
            rbac::ServiceAccount {
                namespace: namespace.into(),
                name: name.into(),
            },
        );
        token
    }

    /// A kubeconfig for this emulator, with context `emulator`.
    pub fn kubeconfig(&self) -> String {
        self.kubeconfig_with_token(self.shared.token.as_deref().unwrap_or_default())
    }

    /// A kubeconfig that authenticates with `token` (see
    /// [`Emulator::service_account_token`]).
    pub fn kubeconfig_with_token(&self, token: &str) -> String {
        let b64 = base64::engine::general_purpose::STANDARD;
        let ca = self
            .ca_pem
            .as_ref()
            .map(|p| format!("    certificate-authority-data: {}\n", b64.encode(p)))
            .unwrap_or_default();
        let user = format!("  user:\n    token: {token}\n");
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: emulator\n  cluster:\n    server: {}\n{ca}contexts:\n- name: emulator\n  context:\n    cluster: emulator\n    user: emulator\n    namespace: default\ncurrent-context: emulator\nusers:\n- name: emulator\n{user}",
            self.url()
        )
    }

    /// Writes the kubeconfig atomically (temp file, then rename).
    pub fn write_kubeconfig(&self, path: &Path) -> Result<()> {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, self.kubeconfig())
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
    }

    /// Changes the faults every later request meets.
    pub fn set_faults(&self, f: Faults) {
        *self.shared.faults.lock().expect("faults lock") = f;
    }

    /// Refuses connections (and cuts open ones) until [`Emulator::heal`].
    pub fn partition(&self) {
        self.partition.send_replace(true);
    }

    pub fn heal(&self) {
        self.partition.send_replace(false);
    }

    pub fn counters(&self) -> Counters {
        self.shared.counters.lock().expect("counters lock").clone()
    }

    /// Mutating requests so far (see [`Counters::writes`]).
    pub fn writes(&self) -> u64 {
        self.shared.counters.lock().expect("counters lock").writes
    }

    /// Requests of one verb on one resource plural so far.
    /// Writes to anything but objects in `namespace` (the agent's own).
    pub fn writes_except(&self, namespace: &str) -> u64 {
        let c = self.shared.counters.lock().expect("counters lock");
        c.writes - c.writes_by_namespace.get(namespace).copied().unwrap_or(0)
    }

    pub fn requests(&self, verb: &str, plural: &str) -> u64 {
        self.shared
            .counters
            .lock()
            .expect("counters lock")
            .requests
            .get(&(verb.to_string(), plural.to_string()))
            .copied()
            .unwrap_or(0)
    }

    pub fn reset_counters(&self) {
        *self.shared.counters.lock().expect("counters lock") = Counters::default();
    }

    /// One stored object, read directly (no request is counted).
    pub fn object(&self, group: &str, plural: &str, ns: Option<&str>, name: &str) -> Option<Value> {
        let s = self.shared.store.lock().expect("store lock");
        let rt = s.registry.by_plural(group, plural)?.clone();
        s.get(&rt, ns, name).ok()
    }

    /// All stored objects of one type, read directly.
    pub fn objects(&self, group: &str, plural: &str) -> Vec<Value> {
        let s = self.shared.store.lock().expect("store lock");
        let Some(rt) = s.registry.by_plural(group, plural).cloned() else {
            return vec![];
        };
        s.list(&rt, None).into_iter().cloned().collect()
    }

    /// The global resourceVersion counter.
    pub fn resource_version(&self) -> u64 {
        self.shared
            .store
            .lock()
            .expect("store lock")
            .resource_version()
    }

    /// Stops serving (also done on drop).
    pub fn stop(&self) {
        self.cancel.cancel();
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

async fn accept_loop(
    mut listener: TcpListener,
    addr: SocketAddr,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    shared: Arc<Shared>,
    mut partitioned: watch::Receiver<bool>,
    cancel: CancellationToken,
) {
    loop {
        // Connections of this epoch end when a partition starts.
        let epoch = cancel.child_token();
        loop {
            let (tcp, _) = tokio::select! {
                _ = cancel.cancelled() => return,
                _ = partitioned.wait_for(|p| *p) => break,
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::debug!(error = %e, "accept failed");
                        continue;
                    }
                },
            };
            let _ = tcp.set_nodelay(true);
            let shared = shared.clone();
            let acceptor = acceptor.clone();
            let epoch = epoch.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| shared.clone().handle(req));
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                let served = async {
                    match acceptor {
                        Some(a) => match a.accept(tcp).await {
                            Ok(tls) => {
                                let _ = builder.serve_connection(TokioIo::new(tls), svc).await;
                            }
                            Err(e) => tracing::debug!(error = %e, "TLS handshake failed"),
                        },
                        None => {
                            let _ = builder.serve_connection(TokioIo::new(tcp), svc).await;
                        }
                    }
                };
                tokio::select! {
                    _ = epoch.cancelled() => {}
                    _ = served => {}
                }
            });
        }
        // Partitioned: stop listening so connects are refused, cut every
        // open connection, and listen again on the same port once healed.
        epoch.cancel();
        drop(listener);
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = partitioned.wait_for(|p| !*p) => {}
        }
        listener = loop {
            match TcpListener::bind(addr).await {
                Ok(l) => break l,
                Err(e) => {
                    tracing::debug!(error = %e, %addr, "re-binding after a partition");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        };
    }
}

async fn controllers(shared: Arc<Shared>, cancel: CancellationToken) {
    loop {
        let next = {
            let mut s = shared.store.lock().expect("store lock");
            s.run_controllers(Instant::now());
            s.next_due()
        };
        let sleep = next
            .map(|t| t.saturating_duration_since(Instant::now()))
            .unwrap_or(Duration::from_secs(3600));
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = shared.wake.notified() => {}
            _ = tokio::time::sleep(sleep) => {}
        }
    }
}
