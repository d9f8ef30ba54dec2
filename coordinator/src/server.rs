//! `ferry serve`: builds the coordinator from its config and runs it until
//! shut down. TLS by default; plaintext only when explicitly insecure.

use crate::driver::Driver;
use crate::hub::Hub;
use crate::repo::Repo;
use crate::service::{AdminService, AgentLinkService};
use crate::store::Store;
use anyhow::{Context, Result, bail};
use ferry_proto::v1::admin_server::AdminServer;
use ferry_proto::v1::agent_link_server::AgentLinkServer;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

/// PEM files for serving TLS.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// CA whose client certificates are accepted (mTLS).
    pub client_ca: Option<PathBuf>,
}

/// Everything `ferry serve` needs.
#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// The fleet repository, as agents reach it.
    pub repo_url: String,
    pub path_template: String,
    /// `None` only together with `insecure`.
    pub tls: Option<TlsFiles>,
    pub insecure: bool,
}

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
        let tls = match (&cfg.tls, cfg.insecure) {
            (Some(t), _) => {
                let read = |p: &PathBuf| {
                    std::fs::read(p).with_context(|| format!("reading {}", p.display()))
                };
                let mut tls = ServerTlsConfig::new()
                    .identity(Identity::from_pem(read(&t.cert)?, read(&t.key)?));
                if let Some(ca) = &t.client_ca {
                    tls = tls.client_ca_root(Certificate::from_pem(read(ca)?));
                }
                Some(tls)
            }
            (None, true) => {
                tracing::warn!(
                    "serving PLAINTEXT gRPC (--insecure): anyone who can reach this port can pin clusters"
                );
                None
            }
            (None, false) => bail!(
                "TLS is required: give --tls-cert and --tls-key (and --client-ca for mTLS), or --insecure for a plaintext dev setup"
            ),
        };
        std::fs::create_dir_all(&cfg.data_dir)
            .with_context(|| format!("creating {}", cfg.data_dir.display()))?;
        let store = Arc::new(
            Store::open(&cfg.data_dir)
                .with_context(|| format!("opening the store in {}", cfg.data_dir.display()))?,
        );
        let repo = Arc::new(Repo::new(
            cfg.repo_url.clone(),
            cfg.data_dir.join("repo.git"),
        ));
        let hub = Arc::new(Hub::new(
            store,
            cfg.repo_url.clone(),
            cfg.path_template.clone(),
        ));
        let driver = Arc::new(Driver::new(hub.clone(), repo.clone()));

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
                AgentLinkServer::new(AgentLinkService { hub: hub.clone() })
                    .max_decoding_message_size(4 << 20),
            )
            .add_service(AdminServer::new(AdminService {
                hub: hub.clone(),
                repo,
                driver: driver.clone(),
            }));
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
