//! `ferry serve`: the coordinator's flags, and running it until a signal.

use crate::server::{Config, Coordinator, TlsFiles};
use anyhow::Result;
use ferry_proto::DEFAULT_PATH_TEMPLATE;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// How long `ferry serve` waits for sessions to drain after a signal.
const GRACE: Duration = Duration::from_secs(10);

#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// Address to serve gRPC on.
    #[arg(long, env = "FERRY_LISTEN", default_value = "127.0.0.1:7443")]
    pub listen: SocketAddr,
    /// Where the coordinator keeps its database and repository cache.
    #[arg(long, env = "FERRY_DATA_DIR")]
    pub data_dir: PathBuf,
    /// The fleet's Git repository, as agents reach it.
    #[arg(long, env = "FERRY_REPO")]
    pub repo: String,
    /// Where the coordinator reads the repository to resolve refs, if not
    /// from --repo (for example agents use an in-cluster mirror).
    #[arg(long, env = "FERRY_RESOLVE_URL")]
    pub resolve_url: Option<String>,
    /// Each cluster's directory: {cluster} and {label.KEY} placeholders.
    #[arg(long, env = "FERRY_PATH_TEMPLATE", default_value = DEFAULT_PATH_TEMPLATE)]
    pub path_template: String,
    /// Serving certificate (PEM) instead of one from the coordinator's CA.
    #[arg(long, env = "FERRY_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// Serving key (PEM).
    #[arg(long, env = "FERRY_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Names (DNS or IP) for the serving certificate the coordinator's CA issues.
    #[arg(
        long = "tls-san",
        env = "FERRY_TLS_SANS",
        value_delimiter = ',',
        default_value = "localhost,127.0.0.1"
    )]
    pub tls_sans: Vec<String>,
    /// A directory (a mounted Secret) with the coordinator's own Git
    /// credentials, as an agent's: `username` and `password` (or `token`),
    /// `bearerToken`, `ca.crt`; `identity` and `known_hosts` for SSH.
    #[arg(long, env = "FERRY_GIT_SECRET_DIR")]
    pub git_secret_dir: Option<PathBuf>,
    /// Git username for HTTPS (overrides the directory's `username`).
    #[arg(long, env = "FERRY_GIT_USERNAME")]
    pub git_username: Option<String>,
    /// Git password or token for HTTPS (overrides the directory's `password`).
    #[arg(long, env = "FERRY_GIT_PASSWORD", hide_env_values = true)]
    pub git_password: Option<String>,
    /// How long agent certificates live (renewed automatically at two thirds).
    #[arg(long, env = "FERRY_CERT_LIFETIME", default_value = "30d")]
    pub cert_lifetime: String,
    /// A directory holding the coordinator's CA as `tls.crt` and `tls.key`
    /// (a mounted Secret, shared by replicas), instead of the one it makes
    /// in its data dir on first start.
    #[arg(long, env = "FERRY_CA_DIR")]
    pub ca_dir: Option<PathBuf>,
    /// A file holding the first admin token, registered when the store has
    /// no token yet (a mounted Secret); without it a random one is written
    /// to DATA_DIR/admin-token.
    #[arg(long, env = "FERRY_BOOTSTRAP_TOKEN_FILE")]
    pub bootstrap_token_file: Option<PathBuf>,
    /// A directory of trusted keys (`allowed_signers` files, armored
    /// OpenPGP keys): a pin or rollout of a commit that does not verify is
    /// refused, naming why. Read again at every check. Agents verify on
    /// their own, with keys their clusters hold.
    #[arg(long, env = "FERRY_VERIFY_KEYS")]
    pub verify_keys: Option<PathBuf>,
    /// What must be signed: the commit itself, or an annotated tag naming it.
    #[arg(long, env = "FERRY_VERIFY_MODE", default_value = "commit")]
    pub verify_mode: ferry_proto::verify::Mode,
    /// Where the coordinator keeps its state: `sqlite` (the default, a file
    /// in DATA_DIR) or a PostgreSQL DSN (`postgres://USER:PASSWORD@HOST:5432/DB`,
    /// or `host=… user=… dbname=…`), which several coordinators may share.
    #[arg(
        long,
        env = "FERRY_STORE",
        hide_env_values = true,
        default_value = "sqlite"
    )]
    pub store: String,
    /// A file (a mounted Secret) holding the PostgreSQL DSN, instead of
    /// --store (which other users of the machine can read in the process list).
    #[arg(long, env = "FERRY_STORE_FILE", conflicts_with = "store")]
    pub store_file: Option<PathBuf>,
    /// CA certificates (PEM) that verify PostgreSQL's server certificate
    /// (default: the system's). TLS is required to a database off this
    /// machine; plaintext there only with `sslmode=disable` and --insecure.
    #[arg(long, env = "FERRY_STORE_CA")]
    pub store_ca: Option<PathBuf>,
    /// Serve `/metrics`, `/healthz` and `/readyz` over plain HTTP on this
    /// address (e.g. 0.0.0.0:9090); off when not given.
    #[arg(long, env = "FERRY_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
}

impl ServeArgs {
    /// The coordinator's config; `insecure` is the global `--insecure`.
    pub fn config(&self, insecure: bool) -> Result<Config> {
        let mut cfg = Config::new(self.listen, self.data_dir.clone(), self.repo.clone());
        cfg.path_template = self.path_template.clone();
        cfg.resolve_url = self.resolve_url.clone();
        cfg.tls_names = self.tls_sans.clone();
        cfg.tls = self
            .tls_cert
            .clone()
            .zip(self.tls_key.clone())
            .map(|(cert, key)| TlsFiles { cert, key });
        cfg.cert_lifetime =
            Duration::from_secs(super::rollout::seconds(&self.cert_lifetime)?.max(60) as u64);
        if insecure && cfg.tls.is_some() {
            anyhow::bail!("--insecure serves plaintext: it cannot be combined with --tls-cert");
        }
        cfg.insecure = insecure;
        cfg.metrics_listen = self.metrics_listen;
        cfg.ca_dir = self.ca_dir.clone();
        cfg.verify_keys = self.verify_keys.clone();
        cfg.verify_mode = self.verify_mode;
        cfg.store_ca = self.store_ca.clone();
        cfg.store = match &self.store_file {
            Some(f) => Some(
                std::fs::read_to_string(f)
                    .map_err(|e| anyhow::anyhow!("--store-file {}: {e}", f.display()))?
                    .trim()
                    .to_string(),
            ),
            None => store_dsn(&self.store)?,
        };
        if let Some(f) = &self.bootstrap_token_file {
            cfg.bootstrap_token = Some(
                std::fs::read_to_string(f)
                    .map_err(|e| anyhow::anyhow!("--bootstrap-token-file {}: {e}", f.display()))?,
            );
        }
        cfg.git_auth = ferry_proto::git::GitAuth {
            secret_dir: self.git_secret_dir.clone(),
            username: self.git_username.clone(),
            password: self.git_password.clone(),
            ssh_insecure_ignore_host_key: false,
        };
        Ok(cfg)
    }
}

/// `--store`: `None` for SQLite, or the PostgreSQL DSN.
fn store_dsn(store: &str) -> Result<Option<String>> {
    let s = store.trim();
    if s.is_empty() || s == "sqlite" {
        return Ok(None);
    }
    if s.starts_with("postgres://") || s.starts_with("postgresql://") || s.contains('=') {
        return Ok(Some(s.to_string()));
    }
    anyhow::bail!(
        "--store must be `sqlite` or a PostgreSQL address (postgres://USER:PASSWORD@HOST:5432/DB); got {:?}",
        ferry_proto::git::redact(s)
    )
}

/// Every agent holds a connection: lift the soft open-file limit to the
/// hard one, as servers do (the default soft limit is often 1024).
fn raise_nofile() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let r = getrlimit(Resource::Nofile);
    if let (Some(current), maximum) = (r.current, r.maximum)
        && maximum.is_none_or(|m| current < m)
    {
        let want = Rlimit {
            current: maximum,
            maximum,
        };
        match setrlimit(Resource::Nofile, want) {
            Ok(()) => tracing::debug!(limit = ?maximum, "raised the open-file limit"),
            Err(e) => tracing::warn!(current, error = %e, "could not raise the open-file limit"),
        }
    }
}

/// Serves until SIGINT or SIGTERM, then drains within [`GRACE`].
pub async fn run(args: &ServeArgs, insecure: bool) -> Result<()> {
    raise_nofile();
    let coordinator = Coordinator::start(args.config(insecure)?).await?;
    shutdown_signal().await;
    tracing::info!("shutting down");
    coordinator.stop(GRACE).await?;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing the SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
