//! `ferry serve`: builds the coordinator from its config and runs it until
//! shut down. TLS by default; plaintext only when explicitly insecure.
//! Owns every task it starts: stopping it ends the server, the rollout
//! driver and every session, and waits for them.

use crate::auth;
use crate::driver::{Driver, DriverHandle};
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::pki::{self, Pki};
use crate::repo::Repo;
use crate::service::{AdminService, AgentLinkService, EnrollmentService};
use crate::store::Store;
use crate::store::postgres::Postgres;
use crate::store::sqlite::Sqlite;
use crate::store::timed::Timed;
use ferry_proto::v1::admin_server::AdminServer;
use ferry_proto::v1::agent_link_server::AgentLinkServer;
use ferry_proto::v1::enrollment_server::EnrollmentServer;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The data dir could not be made or restricted.
    #[error("the data dir {}: {source}", .path.display())]
    DataDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The store could not be opened or read.
    #[error("the store ({at}): {source}")]
    Store {
        /// Where it is (a file, or a PostgreSQL address without password).
        at: String,
        #[source]
        source: crate::store::Error,
    },
    /// The CA or a certificate could not be made or read.
    #[error(transparent)]
    Pki(#[from] pki::Error),
    /// The serving certificate files could not be read.
    #[error("reading {}: {source}", .path.display())]
    TlsFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// gRPC could not be set up or failed while serving.
    #[error("{what}: {source}")]
    Serve {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A repository URL that carries a password: agents would be handed it
    /// and keep it; credentials belong in a Secret.
    #[error(
        "{flag} {url} carries a password: agents are told this URL and would keep it. Give the coordinator its credentials with --git-secret-dir (or FERRY_GIT_USERNAME/FERRY_GIT_PASSWORD), and each agent its Git Secret"
    )]
    PasswordInUrl { flag: &'static str, url: String },
    /// A bootstrap admin token too short to be a secret.
    #[error("the bootstrap admin token must be at least 16 characters")]
    WeakBootstrapToken,
    /// The address could not be bound.
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

fn serve_err(what: &str) -> impl FnOnce(tonic::transport::Error) -> Error + '_ {
    move |e| Error::Serve {
        what: what.to_string(),
        source: Box::new(e),
    }
}

/// PEM files of an externally issued serving certificate.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Everything `ferry serve` needs.
#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// The fleet repository, as agents reach it.
    pub repo_url: String,
    /// Where the coordinator itself reads the repository to resolve refs,
    /// when that differs from `repo_url` (agents behind a mirror, or on SSH
    /// while the coordinator reads over HTTPS). `None`: `repo_url`.
    pub resolve_url: Option<String>,
    pub path_template: String,
    /// Names (DNS names or IPs) of the serving certificate the CA issues.
    pub tls_names: Vec<String>,
    /// Serve this certificate instead of one from the coordinator's CA.
    pub tls: Option<TlsFiles>,
    /// How long agent certificates live.
    pub cert_lifetime: Duration,
    /// Plaintext gRPC and no certificates: local development only.
    pub insecure: bool,
    /// Live events a watcher may fall behind by before it catches up from
    /// the store (tests make it small).
    pub event_buffer: usize,
    /// The coordinator's own Git credentials, for resolving refs.
    pub git_auth: ferry_proto::git::GitAuth,
    /// Where to serve `/metrics`, `/healthz` and `/readyz` (plain HTTP);
    /// nowhere when `None`.
    pub metrics_listen: Option<SocketAddr>,
    /// A directory holding the CA as `tls.crt` and `tls.key` (a mounted
    /// Secret) instead of the one the coordinator makes in its data dir.
    pub ca_dir: Option<PathBuf>,
    /// The first admin token, when the store has none yet (instead of a
    /// random one written to the data dir).
    pub bootstrap_token: Option<String>,
    /// Key files a pinned or rolled-out commit must verify against (read
    /// again at every check), and what must be signed.
    pub verify_keys: Option<PathBuf>,
    pub verify_mode: ferry_proto::verify::Mode,
    /// A PostgreSQL DSN to keep state in (replicas may share it); `None`:
    /// SQLite in the data dir.
    pub store: Option<String>,
    /// CA certificates (PEM) that verify PostgreSQL's certificate (the
    /// system's when `None`).
    pub store_ca: Option<PathBuf>,
}

impl Config {
    pub fn new(listen: SocketAddr, data_dir: PathBuf, repo_url: String) -> Self {
        Config {
            listen,
            data_dir,
            repo_url,
            resolve_url: None,
            path_template: ferry_proto::DEFAULT_PATH_TEMPLATE.into(),
            tls_names: vec!["localhost".into(), "127.0.0.1".into()],
            tls: None,
            cert_lifetime: Duration::from_secs(30 * 86_400),
            insecure: false,
            event_buffer: 1024,
            git_auth: Default::default(),
            metrics_listen: None,
            ca_dir: None,
            bootstrap_token: None,
            verify_keys: None,
            verify_mode: Default::default(),
            store: None,
            store_ca: None,
        }
    }
}

/// The first admin token, written once to the data dir (owner-only).
pub const ADMIN_TOKEN_FILE: &str = "admin-token";

/// A running coordinator.
pub struct Coordinator {
    pub addr: SocketAddr,
    /// Where `/metrics` and the probes are served, if they are.
    pub metrics_addr: Option<SocketAddr>,
    pub hub: Arc<Hub>,
    server: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
    driver: tokio::task::JoinHandle<()>,
}

impl Coordinator {
    /// Opens the store, binds, and starts serving in the background.
    pub async fn start(cfg: Config) -> Result<Coordinator> {
        for (flag, url) in [
            ("--repo", Some(&cfg.repo_url)),
            ("--resolve-url", cfg.resolve_url.as_ref()),
        ] {
            if let Some(url) = url
                && ferry_proto::git::redact(url) != *url
            {
                return Err(Error::PasswordInUrl {
                    flag,
                    url: ferry_proto::git::redact(url),
                });
            }
        }
        let dir_err = |source| Error::DataDir {
            path: cfg.data_dir.clone(),
            source,
        };
        std::fs::create_dir_all(&cfg.data_dir).map_err(dir_err)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&cfg.data_dir, std::fs::Permissions::from_mode(0o700))
                .map_err(dir_err)?;
        }
        let (backend, at): (Arc<dyn Store>, String) = match &cfg.store {
            None => {
                let at = cfg.data_dir.join("ferry.db").display().to_string();
                match Sqlite::open(&cfg.data_dir).await {
                    Ok(s) => (Arc::new(s), at),
                    Err(source) => return Err(Error::Store { at, source }),
                }
            }
            Some(dsn) => match Postgres::open_with(
                dsn,
                &crate::store::postgres::Options {
                    ca: cfg.store_ca.clone(),
                    insecure: cfg.insecure,
                },
                crate::store::postgres::MIGRATIONS,
            )
            .await
            {
                Ok(s) => {
                    let at = format!("postgresql {}", s.target());
                    tracing::info!(store = %at, "the store is on PostgreSQL");
                    (Arc::new(s), at)
                }
                Err(source) => {
                    return Err(Error::Store {
                        at: "postgresql".into(),
                        source,
                    });
                }
            },
        };
        let store_err = |source| Error::Store {
            at: at.clone(),
            source,
        };
        let metrics = Metrics::default();
        let store: Arc<dyn Store> = Arc::new(Timed::new(backend, metrics.clone()));
        if store.token_count().await.map_err(store_err)? == 0 {
            let given = cfg.bootstrap_token.as_deref().map(str::trim);
            let token = match given {
                Some(t) if t.len() >= 16 => t.to_string(),
                Some(_) => return Err(Error::WeakBootstrapToken),
                None => auth::new_secret("ferry-"),
            };
            store
                .create_token(
                    &auth::hash(&token),
                    "bootstrap-admin",
                    "admin",
                    ferry_proto::now_unix_ms(),
                )
                .await
                .map_err(store_err)?;
            if given.is_some() {
                tracing::info!("registered the bootstrap admin token given");
            } else {
                let path = cfg.data_dir.join(ADMIN_TOKEN_FILE);
                pki::write_private(&path, &format!("{token}\n"))?;
                tracing::info!(file = %path.display(), "wrote the bootstrap admin token");
            }
        }
        let (tls, pki) = if cfg.insecure {
            tracing::warn!(
                "serving PLAINTEXT gRPC without certificates (--insecure): for local development only"
            );
            (None, None)
        } else {
            let pki = Arc::new(match &cfg.ca_dir {
                Some(d) => Pki::load(&d.join("tls.crt"), &d.join("tls.key"), cfg.cert_lifetime)?,
                None => Pki::open(&cfg.data_dir, cfg.cert_lifetime)?,
            });
            let (cert, key) = match &cfg.tls {
                Some(t) => (t.cert.clone(), t.key.clone()),
                None => pki.serving(&cfg.data_dir, &cfg.tls_names)?,
            };
            let read = |p: &PathBuf| {
                std::fs::read(p).map_err(|source| Error::TlsFile {
                    path: p.clone(),
                    source,
                })
            };
            // Client certificates are optional at the TLS layer: enrollment
            // runs without one. AgentLink and Renew demand one themselves.
            let tls = ServerTlsConfig::new()
                .identity(Identity::from_pem(read(&cert)?, read(&key)?))
                .client_ca_root(Certificate::from_pem(pki.ca_pem.as_bytes()))
                .client_auth_optional(true)
                .timeout(Duration::from_secs(10));
            (Some(tls), Some(pki))
        };
        let mut repo = Repo::new(
            cfg.resolve_url
                .clone()
                .unwrap_or_else(|| cfg.repo_url.clone()),
            cfg.data_dir.join("git-cache"),
            cfg.git_auth.clone(),
        );
        if let Some(dir) = &cfg.verify_keys {
            repo = repo.with_verify(dir.clone(), cfg.verify_mode);
        }
        let repo = Arc::new(repo);
        let sites = store.sites().await.map_err(store_err)?;
        let changes = store.changes();
        let hub = Arc::new(Hub::new(
            store,
            cfg.repo_url.clone(),
            cfg.path_template.clone(),
            metrics,
        ));
        hub.set_sites(&sites);
        hub.tasks.spawn(hub.clone().store_reports());
        let (driver, driver_handle) = Driver::new(hub.clone(), repo.clone(), cfg.event_buffer);
        if let Some(changes) = changes {
            hub.tasks.spawn(follow_replicas(
                hub.clone(),
                driver_handle.clone(),
                changes,
                hub.shutdown.clone(),
            ));
        }

        let (health, health_service) = tonic_health::server::health_reporter();
        health
            .set_serving::<AgentLinkServer<AgentLinkService>>()
            .await;
        health.set_serving::<AdminServer<AdminService>>().await;
        // Both reflection versions: grpcurl before 1.8.8 only speaks v1alpha.
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(ferry_proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        let reflection_err = |e: tonic_reflection::server::Error| Error::Serve {
            what: "building the reflection service".into(),
            source: Box::new(e),
        };
        let reflection_v1 = reflection().build_v1().map_err(reflection_err)?;
        let reflection_v1alpha = reflection().build_v1alpha().map_err(reflection_err)?;

        let bind_err = |source| Error::Bind {
            addr: cfg.listen,
            source,
        };
        let listener = TcpListener::bind(cfg.listen).await.map_err(bind_err)?;
        let addr = listener.local_addr().map_err(bind_err)?;
        let mut server = Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(20)))
            .http2_keepalive_timeout(Some(Duration::from_secs(20)))
            .tcp_nodelay(true);
        if let Some(tls) = tls {
            server = server
                .tls_config(tls)
                .map_err(serve_err("configuring TLS"))?;
        }
        let router = server
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(
                AgentLinkServer::new(AgentLinkService {
                    hub: hub.clone(),
                    insecure: cfg.insecure,
                })
                .max_decoding_message_size(crate::service::MAX_AGENT_MESSAGE),
            )
            .add_service(
                EnrollmentServer::new(EnrollmentService {
                    hub: hub.clone(),
                    pki,
                })
                .max_decoding_message_size(64 << 10),
            )
            .add_service(
                AdminServer::new(AdminService {
                    hub: hub.clone(),
                    repo,
                    driver: driver_handle,
                })
                .max_decoding_message_size(1 << 20),
            );
        let shutdown = hub.shutdown.clone();
        let mut metrics_addr = None;
        if let Some(addr) = cfg.metrics_listen {
            let bind_err = |source| Error::Bind { addr, source };
            let listener = TcpListener::bind(addr).await.map_err(bind_err)?;
            metrics_addr = Some(listener.local_addr().map_err(bind_err)?);
            hub.tasks.spawn(ferry_proto::ops::serve(
                listener,
                crate::metrics::ops(hub.clone()),
                shutdown.clone(),
            ));
        }
        let driver = tokio::spawn(driver.run(shutdown.clone()));
        let server = tokio::spawn(
            router.serve_with_incoming_shutdown(TcpListenerStream::new(listener), async move {
                shutdown.cancelled().await
            }),
        );
        tracing::info!(%addr, repo = %ferry_proto::git::redact(&cfg.repo_url), "coordinator serving");
        Ok(Coordinator {
            addr,
            metrics_addr,
            hub,
            server,
            driver,
        })
    }

    /// Stops serving: ends every agent session (agents reconnect on their
    /// own), stops accepting, and waits up to `grace` for the rest to drain.
    pub async fn stop(self, grace: Duration) -> Result<()> {
        self.hub.close_all();
        self.hub.shutdown.cancel();
        self.hub.tasks.close();
        let Coordinator {
            hub,
            mut server,
            mut driver,
            ..
        } = self;
        let drained = tokio::time::timeout(grace, async {
            let served = (&mut server).await;
            let _ = (&mut driver).await;
            hub.tasks.wait().await;
            served
        })
        .await;
        if drained.is_err() {
            server.abort();
            driver.abort();
        }
        match drained {
            Ok(Ok(r)) => r.map_err(serve_err("serving"))?,
            Ok(Err(e)) => tracing::error!(error = %e, "the server task failed"),
            Err(_) => tracing::warn!(?grace, "connections still open after the grace period"),
        }
        Ok(())
    }
}

/// Acts on what other coordinators sharing the database change: pushes
/// the assignments they moved to this replica's sessions, ends the
/// sessions of clusters they revoked, hands relayed rollout commands to
/// the driver.
async fn follow_replicas(
    hub: Arc<Hub>,
    driver: DriverHandle,
    mut changes: tokio::sync::broadcast::Receiver<crate::store::Change>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    use crate::store::Change;
    use tokio::sync::broadcast::error::{RecvError, TryRecvError};
    loop {
        let first = tokio::select! {
            _ = shutdown.cancelled() => return,
            c = changes.recv() => c,
        };
        // What came with it: a pin of thousands arrives as several
        // notifications at once, and their clusters are read and pushed
        // in one go, not one read per notification.
        tokio::task::yield_now().await;
        let mut batch = vec![first];
        while batch.len() < FOLLOW_BATCH {
            match changes.try_recv() {
                Ok(c) => batch.push(Ok(c)),
                Err(TryRecvError::Lagged(n)) => batch.push(Err(RecvError::Lagged(n))),
                Err(_) => break,
            }
        }
        let mut moved: Vec<String> = vec![];
        for change in batch {
            if let Ok(Change::Assignments(names)) = change {
                moved.extend(names);
                continue;
            }
            push_moved(&hub, &mut moved).await;
            if !follow_one(&hub, &driver, change).await {
                return;
            }
        }
        push_moved(&hub, &mut moved).await;
    }
}

/// The most changes [`follow_replicas`] takes at once.
const FOLLOW_BATCH: usize = 256;

/// Pushes (and forgets) the clusters other replicas moved.
async fn push_moved(hub: &Hub, moved: &mut Vec<String>) {
    if moved.is_empty() {
        return;
    }
    moved.sort_unstable();
    moved.dedup();
    hub.push_many(moved.iter().map(String::as_str)).await;
    moved.clear();
}

/// Acts on one change of another replica (assignments aside); `false`
/// once the changes have ended.
async fn follow_one(
    hub: &Arc<Hub>,
    driver: &DriverHandle,
    change: Result<crate::store::Change, tokio::sync::broadcast::error::RecvError>,
) -> bool {
    use crate::store::Change;
    use tokio::sync::broadcast::error::RecvError;
    match change {
        Ok(Change::Assignments(names)) => {
            hub.push_many(names.iter().map(String::as_str)).await;
        }
        Ok(Change::Closed(names)) => {
            for n in &names {
                hub.close(n);
            }
        }
        Ok(Change::Touched(names)) => hub.touch(names.iter().map(String::as_str)),
        // Sites changed, or changes were missed: sites read again, and
        // every connected cluster gets its assignment again (an
        // unchanged one is a no-op for its agent).
        Ok(Change::Sites | Change::Resync) | Err(RecvError::Lagged(_)) => {
            if !matches!(change, Ok(Change::Sites)) {
                driver.catch_up();
            }
            // Whatever was missed, rollouts read the whole fleet again.
            hub.touch_all();
            match hub.store.sites().await {
                Ok(sites) => hub.set_sites(&sites),
                Err(e) => {
                    tracing::error!(error = %e, "reading sites another coordinator changed")
                }
            }
            let names = hub.connected_clusters();
            hub.resync(names.iter().map(String::as_str)).await;
        }
        // Another replica asks for a preview of a cluster that may be
        // here: asked of its agent, the answer stored for the asker.
        Ok(Change::Preview { cluster, request }) if hub.connected(&cluster) => {
            use prost::Message;
            let Ok(req) = ferry_proto::v1::PreviewRequest::decode(request.as_slice()) else {
                tracing::warn!(%cluster, "a relayed preview request that does not decode");
                return true;
            };
            let hub = hub.clone();
            hub.tasks.clone().spawn(async move {
                let id = req.id.clone();
                let answer = match hub.preview_here(&cluster, req, RELAYED_PREVIEW).await {
                    Ok(p) => p,
                    Err(error) => ferry_proto::v1::Preview {
                        id: id.clone(),
                        error,
                        ..Default::default()
                    },
                };
                if let Err(e) = hub.store.answer_relayed(&id, answer.encode_to_vec()).await {
                    tracing::warn!(%cluster, error = %e, "storing a relayed preview's answer");
                }
            });
        }
        Ok(Change::Preview { .. }) => {}
        // Only the asker takes the answer (every replica is told).
        Ok(Change::PreviewAnswered(id)) if hub.awaits_preview(&id) => {
            use prost::Message;
            match hub.store.take_relayed(&id).await {
                Ok(Some(bytes)) => match ferry_proto::v1::Preview::decode(bytes.as_slice()) {
                    Ok(p) => hub.answer_relayed(p),
                    Err(e) => {
                        tracing::warn!(%id, error = %e, "a relayed preview answer that does not decode")
                    }
                },
                // Taken already (not ours), or gone.
                Ok(None) => {}
                Err(e) => tracing::warn!(%id, error = %e, "reading a relayed preview's answer"),
            }
        }
        Ok(Change::PreviewAnswered(_)) => {}
        // A rollout command for whichever replica drives rollouts, and
        // the answer to one this replica relayed.
        Ok(Change::Command(id)) => driver.carry_out(id),
        Ok(Change::CommandAnswered(id)) => driver.answered(&id),
        Err(RecvError::Closed) => return false,
    }
    true
}

/// How long a relayed preview may take in the agent (the asker waits as
/// long as its own request says).
const RELAYED_PREVIEW: Duration = Duration::from_secs(60);
