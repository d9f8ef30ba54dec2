//! The agent's client of its own cluster's API server, built from the
//! kubeconfig (or in-cluster credentials) and built again when connections
//! fail: a cluster whose API server was replaced may have a new CA or new
//! credentials, which only a fresh read of the kubeconfig learns. Every
//! part of the agent takes the current client from here.

use crate::metrics::{CountRequests, Metrics};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Why no client could be built.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The kubeconfig could not be read or used.
    #[error("kubeconfig {}: {source}", .path.display())]
    Kubeconfig {
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// No in-cluster or default Kubernetes credentials.
    #[error("finding in-cluster or default Kubernetes credentials: {0}")]
    NoCredentials(#[source] kube::config::InferConfigError),
    /// The Kubernetes client could not be built.
    #[error("building the Kubernetes client: {0}")]
    Client(#[source] kube::Error),
}

/// The shortest time between two rebuilds of the client.
const REFRESH_EVERY: Duration = Duration::from_secs(2);

/// The current client, and how to make the next one.
pub struct Cluster {
    kubeconfig: Option<PathBuf>,
    metrics: Metrics,
    current: watch::Sender<kube::Client>,
    last_refresh: Mutex<Instant>,
}

async fn build(kubeconfig: Option<&PathBuf>, metrics: &Metrics) -> Result<kube::Client, Error> {
    let mut kc = match kubeconfig {
        Some(p) => {
            let bad = |source: Box<dyn std::error::Error + Send + Sync>| Error::Kubeconfig {
                path: p.clone(),
                source,
            };
            let file = kube::config::Kubeconfig::read_from(p).map_err(|e| bad(Box::new(e)))?;
            kube::Config::from_custom_kubeconfig(file, &Default::default())
                .await
                .map_err(|e| bad(Box::new(e)))?
        }
        None => kube::Config::infer().await.map_err(Error::NoCredentials)?,
    };
    // The sync loop retries with its own backoff; kube's default retries of
    // 429/503 (up to 15, minutes apart) would stall a sync instead.
    kc.default_retry = false;
    Ok(kube::client::ClientBuilder::try_from(kc)
        .map_err(Error::Client)?
        .with_layer(&CountRequests(metrics.clone()))
        .build())
}

impl Cluster {
    /// The first client: an unusable kubeconfig is an error at once.
    pub async fn connect(kubeconfig: Option<PathBuf>, metrics: Metrics) -> Result<Cluster, Error> {
        let client = build(kubeconfig.as_ref(), &metrics).await?;
        Ok(Cluster {
            kubeconfig,
            metrics,
            current: watch::channel(client).0,
            last_refresh: Mutex::new(Instant::now()),
        })
    }

    /// The client to use now.
    pub fn client(&self) -> kube::Client {
        self.current.borrow().clone()
    }

    /// Follows the client as it is rebuilt (for long-running watches).
    pub fn subscribe(&self) -> watch::Receiver<kube::Client> {
        self.current.subscribe()
    }

    /// Builds the client again from the kubeconfig, at most every few
    /// seconds, after a connection failed. Returns whether it did.
    pub async fn refresh(&self) -> bool {
        {
            let mut last = self.last_refresh.lock().unwrap_or_else(|p| p.into_inner());
            if last.elapsed() < REFRESH_EVERY {
                return false;
            }
            *last = Instant::now();
        }
        match build(self.kubeconfig.as_ref(), &self.metrics).await {
            Ok(c) => {
                tracing::info!(
                    "rebuilt the Kubernetes client from the kubeconfig after a connection failed"
                );
                self.current.send_replace(c);
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "re-reading the kubeconfig");
                false
            }
        }
    }
}

/// Whether a failure is the connection's (network, TLS, credentials the
/// client could not use) rather than an answer of the API server.
pub fn is_connection_error(e: &kube::Error) -> bool {
    !matches!(
        e,
        kube::Error::Api(_) | kube::Error::SerdeError(_) | kube::Error::Discovery(_)
    )
}

/// What to tell operators when the API server's certificate is not
/// trusted, judged by the whole error chain; `None` otherwise.
pub fn certificate_problem(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut text = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cur = c.source();
    }
    let lower = text.to_lowercase();
    (lower.contains("certificate") || lower.contains("unknownissuer")).then(|| {
        format!(
            "the API server's certificate is not trusted ({text}); if the cluster's API server was replaced, update the kubeconfig's certificate-authority: the agent reads it again after every failed connection"
        )
    })
}
