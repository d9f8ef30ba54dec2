//! `ferry-agent`: runs in a cluster and dials out to the coordinator.
//!
//! Parses flags (`--help` and `--version` exit 0, a usage error 64), sets up
//! logs, then runs the agent until SIGTERM or SIGINT, when it drains: the
//! step in hand finishes, the coordinator gets a last status, and the
//! process exits 0 within the grace period. An error the agent cannot get
//! past by waiting exits 1 at once.

use clap::{Parser, ValueEnum};
use ferry_agent::Config;
use ferry_proto::{DialConfig, parse_label, validate_cluster_name};
use std::path::PathBuf;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The Ferry agent: pulls its cluster's directory from Git at the commit the
/// coordinator pinned, applies it, and reports status.
#[derive(Parser, Debug)]
#[command(name = "ferry-agent", version)]
struct Args {
    /// The coordinator, https://host:port; several replicas' addresses
    /// comma-separated (the agent fails over between them by itself).
    #[arg(long, env = "FERRY_COORDINATOR")]
    coordinator: String,
    /// This cluster's name.
    #[arg(long, env = "FERRY_CLUSTER")]
    cluster: String,
    /// Labels of this cluster, key=value (repeat or comma-separate).
    #[arg(long = "label", env = "FERRY_LABELS", value_delimiter = ',')]
    labels: Vec<String>,
    /// kubeconfig file; in-cluster credentials when absent.
    #[arg(long, env = "FERRY_KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// The agent's namespace, where it keeps its state.
    #[arg(long, env = "FERRY_NAMESPACE", default_value = "ferry-system")]
    namespace: String,
    /// The Secret in that namespace where the agent keeps its identity
    /// (key, certificate, CA).
    #[arg(long, env = "FERRY_IDENTITY_SECRET", default_value = ferry_agent::identity::SECRET)]
    identity_secret: String,
    /// Where Git repositories are cached.
    #[arg(long, env = "FERRY_CACHE_DIR", default_value = "/var/cache/ferry")]
    cache_dir: PathBuf,
    /// CA certificate (PEM) of the coordinator.
    #[arg(long, env = "FERRY_CA")]
    ca: Option<PathBuf>,
    /// Client certificate (PEM) for mTLS.
    #[arg(long, env = "FERRY_CERT")]
    cert: Option<PathBuf>,
    /// Client key (PEM) for mTLS.
    #[arg(long, env = "FERRY_KEY")]
    key: Option<PathBuf>,
    /// One-time join token from `ferry cluster add`, used if the cluster has no identity yet.
    #[arg(long, env = "FERRY_JOIN_TOKEN", hide_env_values = true)]
    join_token: Option<String>,
    /// A file holding the join token (a mounted Secret).
    #[arg(long, env = "FERRY_JOIN_TOKEN_FILE", conflicts_with = "join_token")]
    join_token_file: Option<PathBuf>,
    /// Allow a plaintext http:// coordinator. For local development only.
    #[arg(long, env = "FERRY_INSECURE")]
    insecure: bool,
    /// The command that builds a kustomization (its directory is appended),
    /// e.g. "kustomize build" or "kubectl kustomize".
    #[arg(long, env = "FERRY_KUSTOMIZE")]
    kustomize: Option<String>,
    /// The `helm template`-compatible command for Helm sources (`template
    /// NAME CHART --namespace NS --include-crds -f FILE…` is appended).
    #[arg(long, env = "FERRY_HELM", default_value = "helm")]
    helm: String,
    /// Only report drift instead of repairing it.
    #[arg(long, env = "FERRY_NO_SELF_HEAL")]
    no_self_heal: bool,
    /// A directory (a mounted Secret) with Git credentials: `username` and
    /// `password` (or `token`), `bearerToken`, `ca.crt` for HTTPS; `identity`
    /// (private key) and `known_hosts` for SSH. Read again before each fetch.
    #[arg(long, env = "FERRY_GIT_SECRET_DIR")]
    git_secret_dir: Option<PathBuf>,
    /// Git username for HTTPS (overrides the secret's `username`).
    #[arg(long, env = "FERRY_GIT_USERNAME")]
    git_username: Option<String>,
    /// Git password or token for HTTPS (overrides the secret's `password`).
    #[arg(long, env = "FERRY_GIT_PASSWORD", hide_env_values = true)]
    git_password: Option<String>,
    /// Accept any SSH host key. For development only: strict checking
    /// against `known_hosts` is the default.
    #[arg(long, env = "FERRY_GIT_SSH_INSECURE_IGNORE_HOST_KEY")]
    git_ssh_insecure_ignore_host_key: bool,
    /// The bound of the Git cache, in MiB.
    #[arg(long, env = "FERRY_GIT_CACHE_MIB", default_value_t = 512)]
    git_cache_mib: u64,
    /// Seconds between drift checks of a converged cluster.
    #[arg(long, env = "FERRY_RESYNC_SECONDS", default_value_t = 30)]
    resync_seconds: u64,
    /// Seconds a stopping agent has to finish its step and say goodbye.
    #[arg(long, env = "FERRY_SHUTDOWN_GRACE_SECONDS", default_value_t = 10)]
    shutdown_grace_seconds: u64,
    /// Log format (logs go to stderr; `FERRY_LOG` filters them).
    #[arg(long, env = "FERRY_LOG_FORMAT", default_value = "text")]
    log_format: LogFormat,
    /// Namespaces the agent may write in (and only there): for a tenant
    /// agent with Roles in those namespaces and no cluster-wide rights.
    /// Objects elsewhere, and cluster-scoped ones, are refused by name;
    /// objects without a namespace go to the first. Default: the whole cluster.
    #[arg(long, env = "FERRY_NAMESPACES", value_delimiter = ',')]
    namespaces: Vec<String>,
    /// A directory of keys this cluster trusts to sign what it runs (a
    /// mounted Secret or ConfigMap: `allowed_signers` files and armored
    /// OpenPGP public keys), read again before every sync. With it, a
    /// commit that does not verify is never applied, whoever pinned it.
    #[arg(long, env = "FERRY_VERIFY_KEYS")]
    verify_keys: Option<PathBuf>,
    /// What must be signed: the commit itself, or an annotated tag naming it.
    #[arg(long, env = "FERRY_VERIFY_MODE", default_value = "commit")]
    verify_mode: ferry_proto::verify::Mode,
    /// Serve `/metrics`, `/healthz` and `/readyz` over plain HTTP on this
    /// address (e.g. 0.0.0.0:9090); off when not given.
    #[arg(long, env = "FERRY_METRICS_LISTEN")]
    metrics_listen: Option<std::net::SocketAddr>,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq)]
enum LogFormat {
    Text,
    Json,
}

/// `EX_USAGE` from sysexits.h.
const USAGE: i32 = 64;

fn config(args: Args) -> Result<Config, String> {
    validate_cluster_name(&args.cluster).map_err(|e| e.to_string())?;
    let labels = args
        .labels
        .iter()
        .filter(|l| !l.is_empty())
        .map(|l| parse_label(l).map_err(|e| e.to_string()))
        .collect::<Result<_, _>>()?;
    let join_token = match (&args.join_token, &args.join_token_file) {
        (Some(t), _) => Some(t.clone()),
        // A mounted Secret that is optional: once enrolled, the agent needs
        // no token, and the Secret may be gone.
        (None, Some(f)) => match std::fs::read_to_string(f) {
            Ok(t) => Some(t.trim().to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(format!("reading {}: {e}", f.display())),
        },
        (None, None) => None,
    };
    let dial = DialConfig {
        addr: args.coordinator,
        ca: args.ca,
        cert: args.cert,
        key: args.key,
        identity: None,
        insecure: args.insecure,
    };
    let mut cfg = Config::new(args.cluster, dial, args.cache_dir);
    cfg.labels = labels;
    cfg.kubeconfig = args.kubeconfig;
    cfg.namespace = args.namespace;
    cfg.identity_secret = args.identity_secret;
    cfg.resync = Duration::from_secs(args.resync_seconds.max(1));
    cfg.join_token = join_token;
    cfg.self_heal = !args.no_self_heal;
    cfg.git_auth = ferry_agent::source::GitAuth {
        secret_dir: args.git_secret_dir,
        username: args.git_username,
        password: args.git_password,
        ssh_insecure_ignore_host_key: args.git_ssh_insecure_ignore_host_key,
    };
    cfg.git_cache_bytes = args.git_cache_mib.max(1) << 20;
    cfg.metrics_listen = args.metrics_listen;
    cfg.verify_keys = args.verify_keys;
    cfg.verify_mode = args.verify_mode;
    cfg.namespaces = args
        .namespaces
        .into_iter()
        .map(|n| n.trim().to_string())
        .filter(|n| !n.is_empty())
        .collect();
    for n in &cfg.namespaces {
        let dns_label = n.len() <= 63
            && n.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !n.starts_with('-')
            && !n.ends_with('-');
        if !dns_label {
            return Err(format!(
                "--namespaces: {n:?} is not a namespace name (lowercase letters, digits and '-', at most 63)"
            ));
        }
    }
    cfg.helm = args.helm.split_whitespace().map(str::to_string).collect();
    if let Some(k) = args.kustomize {
        cfg.kustomize = k.split_whitespace().map(str::to_string).collect();
    }
    Ok(cfg)
}

fn init_tracing(format: LogFormat) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_env("FERRY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Json => fmt.json().init(),
        LogFormat::Text => fmt.init(),
    }
}

/// SIGINT or SIGTERM, whichever comes first.
async fn signal() -> &'static str {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    }
}

#[tokio::main]
async fn main() {
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            std::process::exit(if e.use_stderr() { USAGE } else { 0 });
        }
    };
    init_tracing(args.log_format);
    let grace = Duration::from_secs(args.shutdown_grace_seconds);
    let cfg = match config(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(USAGE);
        }
    };
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let shutdown = CancellationToken::new();
    let mut agent = tokio::spawn(ferry_agent::run(cfg, shutdown.clone()));
    let code = tokio::select! {
        r = &mut agent => match r {
            Ok(Ok(())) => 0,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "the agent cannot run");
                eprintln!("error: {e}");
                1
            }
            Err(e) => {
                eprintln!("error: the agent task failed: {e}");
                1
            }
        },
        sig = signal() => {
            tracing::info!(signal = sig, grace_seconds = grace.as_secs(), "stopping");
            shutdown.cancel();
            match tokio::time::timeout(grace, &mut agent).await {
                Ok(Ok(Ok(()))) => {
                    tracing::info!("stopped");
                    0
                }
                Ok(Ok(Err(e))) => {
                    eprintln!("error: {e}");
                    1
                }
                Ok(Err(e)) => {
                    eprintln!("error: the agent task failed: {e}");
                    1
                }
                Err(_) => {
                    eprintln!("error: the agent did not stop within {}s", grace.as_secs());
                    agent.abort();
                    1
                }
            }
        }
    };
    std::process::exit(code);
}
