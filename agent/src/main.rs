//! `ferry-agent`: runs in a cluster and dials out to the coordinator.

use clap::Parser;
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
    /// The coordinator, https://host:port.
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
}

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
        (None, Some(f)) => {
            Some(std::fs::read_to_string(f).map_err(|e| format!("reading {}: {e}", f.display()))?)
        }
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
    if let Some(k) = args.kustomize {
        cfg.kustomize = k.split_whitespace().map(str::to_string).collect();
    }
    Ok(cfg)
}

#[tokio::main]
async fn main() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("FERRY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::env::var("FERRY_LOG_FORMAT").as_deref() == Ok("json") {
        fmt.json().init();
    } else {
        fmt.init();
    }
    let cfg = match Args::try_parse()
        .map_err(|e| e.to_string())
        .and_then(config)
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(64);
        }
    };
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let shutdown = CancellationToken::new();
    let agent = tokio::spawn(ferry_agent::run(cfg, shutdown.clone()));
    let _ = tokio::signal::ctrl_c().await;
    shutdown.cancel();
    match tokio::time::timeout(Duration::from_secs(10), agent).await {
        Ok(Ok(Err(e))) => {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
        Err(_) => eprintln!("the agent did not stop within 10s"),
        _ => {}
    }
}
