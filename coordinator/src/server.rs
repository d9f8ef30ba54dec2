//! `ferry serve`: builds the coordinator from its config and runs it until
//! shut down. TLS by default; plaintext only when explicitly insecure.

use crate::auth::{self, Authenticate};
use crate::driver::Driver;
use crate::hub::Hub;
use crate::pki::{self, Pki};
use crate::repo::Repo;
use crate::service::{AdminService, AgentLinkService, EnrollmentService};
use crate::store::Store;
use anyhow::{Context, Result};
use ferry_proto::v1::admin_server::AdminServer;
use ferry_proto::v1::agent_link_server::AgentLinkServer;
use ferry_proto::v1::enrollment_server::EnrollmentServer;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

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
        }
    }
}

/// The first admin token, written once to the data dir (owner-only).
pub const ADMIN_TOKEN_FILE: &str = "admin-token";

/// A running coordinator.
pub struct Coordinator {
    pub addr: SocketAddr,
    pub hub: Arc<Hub>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
}

impl Coordinator {
    /// Opens the store, binds, and starts serving in the background.
    pub async fn start(cfg: Config) -> Result<Coordinator> {
        std::fs::create_dir_all(&cfg.data_dir)
            .with_context(|| format!("creating {}", cfg.data_dir.display()))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&cfg.data_dir, std::fs::Permissions::from_mode(0o700))
                .with_context(|| format!("restricting {}", cfg.data_dir.display()))?;
        }
        let store = Arc::new(
            Store::open(&cfg.data_dir)
                .with_context(|| format!("opening the store in {}", cfg.data_dir.display()))?,
        );
        if store.token_count()? == 0 {
            let token = auth::new_secret("ferry-");
            store.create_token(
                &auth::hash(&token),
                "bootstrap-admin",
                "admin",
                ferry_proto::now_unix_ms(),
            )?;
            let path = cfg.data_dir.join(ADMIN_TOKEN_FILE);
            pki::write_private(&path, &format!("{token}\n"))?;
            tracing::info!(file = %path.display(), "wrote the bootstrap admin token");
        }
        let (tls, pki) = if cfg.insecure {
            tracing::warn!(
                "serving PLAINTEXT gRPC without certificates (--insecure): for local development only"
            );
            (None, None)
        } else {
            let pki = Arc::new(Pki::open(&cfg.data_dir, cfg.cert_lifetime)?);
            let (cert, key) = match &cfg.tls {
                Some(t) => (t.cert.clone(), t.key.clone()),
                None => pki.serving(&cfg.data_dir, &cfg.tls_names)?,
            };
            let read =
                |p: &PathBuf| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
            // Client certificates are optional at the TLS layer: enrollment
            // runs without one. AgentLink and Renew demand one themselves.
            let tls = ServerTlsConfig::new()
                .identity(Identity::from_pem(read(&cert)?, read(&key)?))
                .client_ca_root(Certificate::from_pem(pki.ca_pem.as_bytes()))
                .client_auth_optional(true)
                .timeout(Duration::from_secs(10));
            (Some(tls), Some(pki))
        };
        let repo = Arc::new(Repo::new(
            cfg.resolve_url
                .clone()
                .unwrap_or_else(|| cfg.repo_url.clone()),
            cfg.data_dir.join("repo.git"),
        ));
        let hub = Arc::new(Hub::new(
            store,
            cfg.repo_url.clone(),
            cfg.path_template.clone(),
        ));
        let driver = Arc::new(Driver::new(hub.clone(), repo.clone(), cfg.event_buffer));

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
        let reflection_v1 = reflection()
            .build_v1()
            .context("building the reflection service")?;
        let reflection_v1alpha = reflection()
            .build_v1alpha()
            .context("building the reflection service")?;

        let listener = TcpListener::bind(cfg.listen)
            .await
            .with_context(|| format!("binding {}", cfg.listen))?;
        let addr = listener.local_addr()?;
        let mut server = Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(20)))
            .http2_keepalive_timeout(Some(Duration::from_secs(20)))
            .tcp_nodelay(true);
        if let Some(tls) = tls {
            server = server.tls_config(tls).context("configuring TLS")?;
        }
        let shutdown = CancellationToken::new();
        let router = server
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(
                AgentLinkServer::new(AgentLinkService {
                    hub: hub.clone(),
                    insecure: cfg.insecure,
                })
                .max_decoding_message_size(4 << 20),
            )
            .add_service(
                EnrollmentServer::new(EnrollmentService {
                    hub: hub.clone(),
                    pki,
                })
                .max_decoding_message_size(64 << 10),
            )
            .add_service(tonic::service::interceptor::InterceptedService::new(
                AdminServer::new(AdminService {
                    hub: hub.clone(),
                    repo,
                    driver: driver.clone(),
                })
                .max_decoding_message_size(1 << 20),
                Authenticate {
                    store: hub.store.clone(),
                },
            ));
        tokio::spawn(driver.run(shutdown.clone()));
        let stop = shutdown.clone();
        let task = tokio::spawn(
            router.serve_with_incoming_shutdown(TcpListenerStream::new(listener), async move {
                stop.cancelled().await
            }),
        );
        tracing::info!(%addr, repo = %cfg.repo_url, "coordinator serving");
        Ok(Coordinator {
            addr,
            hub,
            shutdown,
            task,
        })
    }

    /// Stops serving: ends every agent session (agents reconnect on their
    /// own), stops accepting, and waits up to `grace` for the rest to drain.
    pub async fn stop(self, grace: Duration) -> Result<()> {
        self.hub.close_all();
        self.shutdown.cancel();
        match tokio::time::timeout(grace, self.task).await {
            Ok(r) => r??,
            Err(_) => tracing::warn!(?grace, "connections still open after the grace period"),
        }
        Ok(())
    }
}
