//! The `ferry` command line: `ferry serve` runs the coordinator; every other
//! subcommand is a client of its Admin API.

use crate::server::{Config, Coordinator, TlsFiles};
use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use ferry_proto::v1::admin_client::AdminClient;
use ferry_proto::v1::{
    AddClusterRequest, Cluster, CreateTokenRequest, GetClusterRequest, Health, HistoryRequest,
    LedgerEntry, ListClustersRequest, Phase, PinRequest, RevokeClusterRequest,
    SetClusterPathRequest,
};
use ferry_proto::{Bearer, DEFAULT_PATH_TEMPLATE, DialConfig};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Ferry: pull-based multi-cluster GitOps with staged rollouts.
#[derive(Parser, Debug)]
#[command(name = "ferry", version)]
pub struct Args {
    /// The coordinator's address.
    #[arg(
        long,
        global = true,
        env = "FERRY_ADDR",
        default_value = "https://127.0.0.1:7443"
    )]
    pub addr: String,
    /// CA certificate (PEM) that signed the coordinator's certificate.
    #[arg(long, global = true, env = "FERRY_CA")]
    pub ca: Option<PathBuf>,
    /// Client certificate (PEM) for mTLS.
    #[arg(long, global = true, env = "FERRY_CERT")]
    pub cert: Option<PathBuf>,
    /// Client key (PEM) for mTLS.
    #[arg(long, global = true, env = "FERRY_KEY")]
    pub key: Option<PathBuf>,
    /// API token (see `ferry token create`; the first admin token is the
    /// coordinator's data-dir/admin-token).
    #[arg(long, global = true, env = "FERRY_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// A file holding the API token.
    #[arg(
        long,
        global = true,
        env = "FERRY_TOKEN_FILE",
        conflicts_with = "token"
    )]
    pub token_file: Option<PathBuf>,
    /// Output format.
    #[arg(
        short,
        long,
        global = true,
        env = "FERRY_OUTPUT",
        default_value = "table"
    )]
    pub output: Output,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq)]
pub enum Output {
    Table,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the coordinator.
    Serve(ServeArgs),
    /// List clusters: labels, connection, pinned and applied commits, health.
    Clusters,
    /// One cluster.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Pin clusters to a branch, tag or commit (resolved to a full commit).
    Pin {
        /// Clusters to pin.
        #[arg(required = true)]
        clusters: Vec<String>,
        /// Branch, tag, full or short commit.
        #[arg(long = "commit")]
        reference: String,
        /// Why, for the ledger.
        #[arg(long, default_value = "")]
        reason: String,
        /// Pin even clusters inside an active rollout (recorded in the ledger).
        #[arg(long)]
        force: bool,
        /// Let this pin prune more than the agent's safety share (for
        /// removing most of a cluster's objects on purpose).
        #[arg(long)]
        allow_mass_prune: bool,
    },
    /// Staged rollouts: waves of clusters gated on health.
    #[command(subcommand)]
    Rollout(crate::cli_rollout::RolloutCommand),
    /// Roll a ref out, in one wave, to the clusters a label selector picks.
    Promote {
        /// Branch, tag, full or short commit.
        reference: String,
        /// Label selector of the clusters.
        #[arg(long)]
        to: String,
        #[command(flatten)]
        policy: crate::cli_rollout::PolicyArgs,
        /// Pin the moved clusters back if the wave fails.
        #[arg(long)]
        auto_rollback: bool,
    },
    /// API tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// The ledger of pin changes, newest first.
    History {
        /// Only this cluster.
        cluster: Option<String>,
        /// At most this many entries.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
}

#[derive(Subcommand, Debug)]
pub enum ClusterCommand {
    /// Show one cluster in full, with its problems.
    Show { name: String },
    /// Override the cluster's directory in the repository ("" clears it).
    SetPath { name: String, path: String },
    /// Create a cluster and a one-time join token for its agent (admin).
    Add {
        name: String,
        /// key=value (repeat).
        #[arg(long = "label")]
        labels: Vec<String>,
        /// How long the join token lasts (30m, 1h, 1d).
        #[arg(long, default_value = "1h")]
        ttl: String,
    },
    /// Close the cluster's stream and refuse its certificates (admin).
    Revoke { name: String },
}

#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Create an API token (admin); it is shown once.
    Create {
        /// viewer, operator or admin.
        #[arg(long)]
        role: String,
        /// Who or what it is for: the actor in the ledger.
        #[arg(long)]
        name: String,
    },
}

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
    /// How long agent certificates live (renewed automatically at two thirds).
    #[arg(long, env = "FERRY_CERT_LIFETIME", default_value = "30d")]
    pub cert_lifetime: String,
    /// Serve plaintext gRPC without certificates. For local development only.
    #[arg(long, env = "FERRY_INSECURE", conflicts_with = "tls_cert")]
    pub insecure: bool,
}

impl ServeArgs {
    pub fn config(&self) -> Result<Config> {
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
            Duration::from_secs(crate::cli_rollout::seconds(&self.cert_lifetime)?.max(60) as u64);
        cfg.insecure = self.insecure;
        Ok(cfg)
    }
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

/// Runs a parsed command line to completion, printing its output.
pub async fn run(args: Args) -> Result<()> {
    if let Command::Serve(s) = &args.command {
        raise_nofile();
        let coordinator = Coordinator::start(s.config()?).await?;
        shutdown_signal().await;
        tracing::info!("shutting down");
        return coordinator.stop(Duration::from_secs(10)).await;
    }
    if let Command::Rollout(crate::cli_rollout::RolloutCommand::Status { id, watch: true }) =
        &args.command
    {
        let mut client = admin(&args).await?;
        return crate::cli_rollout::watch(&mut client, id.clone().unwrap_or_default()).await;
    }
    print!("{}", execute(args).await?);
    Ok(())
}

/// The Admin client, carrying the caller's token.
pub type Admin =
    AdminClient<tonic::service::interceptor::InterceptedService<tonic::transport::Channel, Bearer>>;

/// Connects the Admin client the global flags describe.
pub async fn admin(args: &Args) -> Result<Admin> {
    let dial = DialConfig {
        addr: args.addr.clone(),
        ca: args.ca.clone(),
        cert: args.cert.clone(),
        key: args.key.clone(),
        identity: None,
        insecure: true,
    };
    let channel = dial
        .endpoint()?
        .connect()
        .await
        .with_context(|| format!("connecting to the coordinator at {}", args.addr))?;
    let token = match (&args.token, &args.token_file) {
        (Some(t), _) => t.clone(),
        (None, Some(f)) => std::fs::read_to_string(f)
            .with_context(|| format!("reading the token file {}", f.display()))?,
        (None, None) => String::new(),
    };
    Ok(AdminClient::with_interceptor(channel, Bearer::new(&token)?))
}

/// Runs a client command and returns what it would print.
pub async fn execute(args: Args) -> Result<String> {
    use std::fmt::Write as _;
    let mut out = String::new();
    let mut client = admin(&args).await?;
    let json = args.output == Output::Json;
    match args.command {
        Command::Serve(_) => anyhow::bail!("serve is not a client command"),
        Command::Clusters => {
            let list = client
                .list_clusters(ListClustersRequest {})
                .await
                .map_err(status)?
                .into_inner()
                .clusters;
            out.push_str(&listing(json, &list, cluster_json, clusters_table)?);
        }
        Command::Cluster(ClusterCommand::Show { name }) => {
            let c = client
                .get_cluster(GetClusterRequest { name })
                .await
                .map_err(status)?
                .into_inner();
            if json {
                writeln!(out, "{}", serde_json::to_string_pretty(&cluster_json(&c))?)?;
            } else {
                write!(out, "{}", cluster_details(&c))?;
            }
        }
        Command::Cluster(ClusterCommand::SetPath { name, path }) => {
            let c = client
                .set_cluster_path(SetClusterPathRequest { name, path })
                .await
                .map_err(status)?
                .into_inner();
            if json {
                writeln!(out, "{}", serde_json::to_string_pretty(&cluster_json(&c))?)?;
            } else {
                writeln!(out, "cluster {} now reads {}", c.name, c.path)?;
            }
        }
        Command::Pin {
            clusters,
            reference,
            reason,
            force,
            allow_mass_prune,
        } => {
            let r = client
                .pin(PinRequest {
                    clusters: clusters.clone(),
                    r#ref: reference.clone(),
                    reason,
                    force,
                    allow_mass_prune,
                })
                .await
                .map_err(status)?
                .into_inner();
            if json {
                writeln!(
                    out,
                    "{}",
                    serde_json::to_string_pretty(
                        &json!({"commit": r.commit, "changes": r.entries.iter().map(ledger_json).collect::<Vec<_>>()})
                    )?
                )?;
            } else {
                writeln!(out, "{reference} is {}", r.commit)?;
                let changed: std::collections::HashMap<&str, &LedgerEntry> =
                    r.entries.iter().map(|e| (e.cluster.as_str(), e)).collect();
                for c in &clusters {
                    match changed.get(c.as_str()) {
                        Some(e) => writeln!(
                            out,
                            "  {c}: {} -> {}",
                            short(&e.from_commit),
                            short(&e.to_commit)
                        )?,
                        None => writeln!(out, "  {c}: already pinned there")?,
                    }
                }
            }
        }
        Command::Rollout(cmd) => {
            out.push_str(&crate::cli_rollout::execute(&mut client, cmd, json).await?);
        }
        Command::Promote {
            reference,
            to,
            policy,
            auto_rollback,
        } => {
            let plan = crate::cli_rollout::promote_plan(reference, to, &policy, auto_rollback)?;
            out.push_str(&crate::cli_rollout::start(&mut client, plan, json).await?);
        }
        Command::Cluster(ClusterCommand::Add { name, labels, ttl }) => {
            let labels = labels
                .iter()
                .map(|l| ferry_proto::parse_label(l).map_err(|e| anyhow::anyhow!(e)))
                .collect::<Result<_>>()?;
            let ttl = crate::cli_rollout::seconds(&ttl)?;
            let r = client
                .add_cluster(AddClusterRequest {
                    name: name.clone(),
                    labels,
                    token_ttl_seconds: ttl,
                })
                .await
                .map_err(status)?
                .into_inner();
            if json {
                writeln!(
                    out,
                    "{}",
                    serde_json::to_string_pretty(
                        &json!({"cluster": r.cluster.as_ref().map(cluster_json), "joinToken": r.join_token, "expiresUnixMs": r.expires_unix_ms})
                    )?
                )?;
            } else {
                writeln!(
                    out,
                    "cluster {name} added; its one-time join token (valid {}s):\n{}\n",
                    ttl, r.join_token
                )?;
                writeln!(
                    out,
                    "start its agent with: ferry-agent --cluster {name} --join-token <token> --ca <coordinator ca.pem> ..."
                )?;
            }
        }
        Command::Cluster(ClusterCommand::Revoke { name }) => {
            let c = client
                .revoke_cluster(RevokeClusterRequest { name })
                .await
                .map_err(status)?
                .into_inner();
            writeln!(
                out,
                "cluster {} revoked: its session is closed and its certificates are refused",
                c.name
            )?;
        }
        Command::Token(TokenCommand::Create { role, name }) => {
            let t = client
                .create_token(CreateTokenRequest {
                    role: role.clone(),
                    name: name.clone(),
                })
                .await
                .map_err(status)?
                .into_inner();
            if json {
                writeln!(
                    out,
                    "{}",
                    serde_json::to_string_pretty(
                        &json!({"name": name, "role": role, "token": t.token})
                    )?
                )?;
            } else {
                writeln!(out, "{}", t.token)?;
            }
        }
        Command::History { cluster, limit } => {
            let entries = client
                .history(HistoryRequest {
                    cluster: cluster.unwrap_or_default(),
                    limit,
                })
                .await
                .map_err(status)?
                .into_inner()
                .entries;
            out.push_str(&listing(json, &entries, ledger_json, history_table)?);
        }
    }
    Ok(out)
}

/// A listing as a table, or as a JSON array with `-o json`.
fn listing<T>(
    json: bool,
    items: &[T],
    to_json: fn(&T) -> Value,
    to_table: fn(&[T]) -> String,
) -> Result<String> {
    if json {
        Ok(serde_json::to_string_pretty(&items.iter().map(to_json).collect::<Vec<_>>())? + "\n")
    } else {
        Ok(to_table(items))
    }
}

/// A gRPC error as the message the coordinator gave, for humans.
pub fn status(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{} ({:?})", s.message(), s.code())
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

pub fn short(c: &str) -> &str {
    if c.is_empty() {
        "-"
    } else {
        &c[..c.len().min(8)]
    }
}

pub fn ago(ms: i64) -> String {
    if ms <= 0 {
        return "never".into();
    }
    let secs = (ferry_proto::now_unix_ms() - ms).max(0) / 1000;
    match secs {
        0..60 => format!("{secs}s ago"),
        60..3600 => format!("{}m ago", secs / 60),
        _ => format!("{}h ago", secs / 3600),
    }
}

fn labels(c: &Cluster) -> String {
    let mut l: Vec<String> = c.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    l.sort();
    if l.is_empty() {
        "-".into()
    } else {
        l.join(",")
    }
}

fn phase_health(c: &Cluster) -> (String, String) {
    match &c.status {
        Some(s) => (
            Phase::try_from(s.phase).unwrap_or_default().to_string(),
            Health::try_from(s.health).unwrap_or_default().to_string(),
        ),
        None => ("-".into(), "-".into()),
    }
}

/// Left-aligned columns, two spaces apart.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, cell) in r.iter().enumerate() {
            widths[i] = widths[i].max(cell.len());
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            s.push_str(&format!("{c:<w$}  ", w = widths[i]));
        }
        out.push_str(s.trim_end());
        out.push('\n');
    };
    line(header.to_vec(), &mut out);
    for r in rows {
        line(r.iter().map(String::as_str).collect(), &mut out);
    }
    out
}

pub fn clusters_table(list: &[Cluster]) -> String {
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|c| {
            let (phase, health) = phase_health(c);
            let applied = c
                .status
                .as_ref()
                .map(|s| s.applied_commit.as_str())
                .unwrap_or("");
            vec![
                c.name.clone(),
                labels(c),
                if c.connected {
                    "yes".into()
                } else {
                    "no".into()
                },
                short(&c.pinned_commit).into(),
                short(applied).into(),
                phase,
                health,
                ago(c.last_seen_unix_ms),
            ]
        })
        .collect();
    table(
        &[
            "NAME",
            "LABELS",
            "CONNECTED",
            "PINNED",
            "APPLIED",
            "PHASE",
            "HEALTH",
            "LAST SEEN",
        ],
        &rows,
    )
}

fn cluster_details(c: &Cluster) -> String {
    let (phase, health) = phase_health(c);
    let mut s = format!(
        "Name:       {}\nLabels:     {}\nConnected:  {}\nAgent:      {}\nPath:       {}\nPinned:     {} (generation {})\nPhase:      {phase}\nHealth:     {health}\nLast seen:  {}\n",
        c.name,
        labels(c),
        c.connected,
        if c.agent_version.is_empty() {
            "-"
        } else {
            &c.agent_version
        },
        if c.path_error.is_empty() {
            c.path.clone()
        } else {
            format!("unresolved: {}", c.path_error)
        },
        if c.pinned_commit.is_empty() {
            "-"
        } else {
            &c.pinned_commit
        },
        c.generation,
        ago(c.last_seen_unix_ms),
    );
    if let Some(st) = &c.status {
        s.push_str(&format!(
            "Applied:    {}\nTarget:     {}\nObjects:    {}\nMessage:    {}\n",
            if st.applied_commit.is_empty() {
                "-"
            } else {
                &st.applied_commit
            },
            if st.target_commit.is_empty() {
                "-"
            } else {
                &st.target_commit
            },
            st.objects,
            st.message,
        ));
        if !st.problems.is_empty() {
            s.push_str("Problems:\n");
            for p in &st.problems {
                let src = if p.source.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", p.source)
                };
                s.push_str(&format!("  {}{src}: {}\n", p.object, p.message));
            }
        }
    }
    s
}

fn history_table(entries: &[LedgerEntry]) -> String {
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| {
            vec![
                e.id.to_string(),
                ago(e.at_unix_ms),
                e.cluster.clone(),
                short(&e.from_commit).into(),
                short(&e.to_commit).into(),
                e.actor.clone(),
                if e.rollout.is_empty() {
                    "-".into()
                } else {
                    e.rollout.clone()
                },
                e.reason.clone(),
            ]
        })
        .collect();
    table(
        &[
            "ID", "WHEN", "CLUSTER", "FROM", "TO", "ACTOR", "ROLLOUT", "REASON",
        ],
        &rows,
    )
}

pub fn cluster_json(c: &Cluster) -> Value {
    let status = c.status.as_ref().map(|s| {
        json!({
            "observedGeneration": s.observed_generation,
            "targetCommit": s.target_commit,
            "appliedCommit": s.applied_commit,
            "phase": Phase::try_from(s.phase).unwrap_or_default().to_string(),
            "health": Health::try_from(s.health).unwrap_or_default().to_string(),
            "message": s.message,
            "objects": s.objects,
            "driftCorrections": s.drift_corrections,
            "problems": s.problems.iter().map(|p| json!({"object": p.object, "source": p.source, "message": p.message})).collect::<Vec<_>>(),
            "lastSyncUnixMs": s.last_sync_unix_ms,
            "reportedUnixMs": s.reported_unix_ms,
        })
    });
    json!({
        "name": c.name,
        "labels": c.labels,
        "connected": c.connected,
        "pinnedCommit": c.pinned_commit,
        "generation": c.generation,
        "path": c.path,
        "pathError": c.path_error,
        "agentVersion": c.agent_version,
        "lastSeenUnixMs": c.last_seen_unix_ms,
        "status": status,
    })
}

pub fn ledger_json(e: &LedgerEntry) -> Value {
    json!({
        "id": e.id, "atUnixMs": e.at_unix_ms, "actor": e.actor, "cluster": e.cluster,
        "from": e.from_commit, "to": e.to_commit, "reason": e.reason, "rollout": e.rollout,
    })
}
