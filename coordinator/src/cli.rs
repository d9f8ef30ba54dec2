//! The `ferry` command line: `ferry serve` runs the coordinator; every other
//! subcommand is a client of its Admin API. One module per group of
//! commands; `output` renders everything they print and `dial` connects.

mod bundle;
mod cluster;
mod dial;
mod diff;
mod ledger;
mod mirror;
pub mod output;
pub mod rollout;
mod serve;
mod site;
mod store;
mod token;

pub use dial::{Admin, admin, all_clusters, status};
pub use serve::ServeArgs;

use anyhow::Result;
use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

/// Ferry: pull-based multi-cluster GitOps with staged rollouts.
#[derive(Parser, Debug)]
#[command(name = "ferry", version)]
pub struct Args {
    /// The coordinator's address; several replicas' comma-separated (the
    /// first that answers is used).
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
    /// Plaintext gRPC: `ferry serve` serves without TLS, clients accept an
    /// http:// address (and send their token in the clear). For local
    /// development only.
    #[arg(long, global = true, env = "FERRY_INSECURE")]
    pub insecure: bool,
    /// Output format.
    #[arg(
        short,
        long,
        global = true,
        env = "FERRY_OUTPUT",
        default_value = "table"
    )]
    pub output: Output,
    /// Log format (logs go to stderr; `FERRY_LOG` filters them).
    #[arg(long, global = true, env = "FERRY_LOG_FORMAT", default_value = "text")]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq)]
pub enum Output {
    Table,
    Json,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the coordinator.
    Serve(Box<ServeArgs>),
    /// List clusters: labels, connection, pinned and applied commits, health.
    Clusters {
        /// Clusters asked for per request (the list is always whole).
        #[arg(long, default_value_t = 500)]
        page_size: u32,
    },
    /// One cluster: show, set its path, add (enroll) or revoke it.
    #[command(subcommand)]
    Cluster(cluster::ClusterCommand),
    /// Pin clusters to a branch, tag or commit (resolved to a full commit).
    Pin(ledger::PinArgs),
    /// What a commit would change in clusters, computed by their agents
    /// (a server-side dry-run in each cluster); nothing is applied.
    Diff(diff::DiffArgs),
    /// Staged rollouts: waves of clusters gated on health.
    #[command(subcommand)]
    Rollout(rollout::RolloutCommand),
    /// Roll a ref out, in one wave, to the clusters a label selector picks.
    Promote {
        /// Branch, tag, full or short commit.
        reference: String,
        /// Label selector of the clusters.
        #[arg(long)]
        to: String,
        #[command(flatten)]
        policy: rollout::PolicyArgs,
        /// Pin the moved clusters back if the wave fails.
        #[arg(long)]
        auto_rollback: bool,
        #[command(flatten)]
        ask: rollout::Ask,
    },
    /// List sites: each one's Git mirror, clusters, newest ref, last report.
    Sites,
    /// One site: add, remove or show it. A site's clusters fetch from its
    /// Git mirror instead of the repository.
    #[command(subcommand)]
    Site(site::SiteCommand),
    /// Feed a site's Git mirror from the upstream repository.
    #[command(subcommand)]
    Mirror(mirror::MirrorCommand),
    /// Carry commits across an air gap: signed bundle files, imported into
    /// a site's mirror.
    #[command(subcommand)]
    Bundle(bundle::BundleCommand),
    /// API tokens.
    #[command(subcommand)]
    Token(token::TokenCommand),
    /// The coordinator's database, on its machine: back it up.
    #[command(subcommand)]
    Store(store::StoreCommand),
    /// The ledger of pin changes, newest first.
    History {
        /// Only this cluster.
        cluster: Option<String>,
        /// At most this many entries.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Print a shell completion script: `source <(ferry completion bash)`.
    Completion {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

/// Runs a parsed command line to completion, printing its output.
pub async fn run(args: Args) -> Result<()> {
    match &args.command {
        Command::Serve(s) => return serve::run(s, args.insecure).await,
        Command::Completion { shell } => {
            let mut cmd = Args::command();
            clap_complete::generate(*shell, &mut cmd, "ferry", &mut std::io::stdout());
            return Ok(());
        }
        Command::Rollout(rollout::RolloutCommand::Status { id, watch: true }) => {
            let mut client = admin(&args).await?;
            return rollout::watch(&mut client, id.clone().unwrap_or_default()).await;
        }
        _ => {}
    }
    print!("{}", execute(args).await?);
    Ok(())
}

/// Runs a client command and returns what it would print.
pub async fn execute(args: Args) -> Result<String> {
    // Mirror commands reach the coordinator only when asked to report.
    if let Command::Mirror(cmd) = &args.command {
        return mirror::execute(&args, cmd).await;
    }
    if let Command::Bundle(cmd) = &args.command {
        return bundle::execute(&args, cmd).await;
    }
    if let Command::Store(cmd) = &args.command {
        return store::execute(cmd).await;
    }
    let mut client = admin(&args).await?;
    let json = args.output == Output::Json;
    match args.command {
        Command::Serve(_)
        | Command::Completion { .. }
        | Command::Mirror(_)
        | Command::Bundle(_)
        | Command::Store(_) => {
            anyhow::bail!("not a client command")
        }
        Command::Sites => site::list(&mut client, json).await,
        Command::Site(cmd) => site::execute(&mut client, cmd, json).await,
        Command::Clusters { page_size } => cluster::list(&mut client, page_size, json).await,
        Command::Cluster(cmd) => cluster::execute(&mut client, cmd, json).await,
        Command::Pin(a) => ledger::pin(&mut client, a, json).await,
        Command::Diff(a) => diff::run(&mut client, a, json).await,
        Command::Rollout(cmd) => rollout::execute(&mut client, cmd, json).await,
        Command::Promote {
            reference,
            to,
            policy,
            auto_rollback,
            ask,
        } => {
            let plan = rollout::promote_plan(reference, to, &policy, auto_rollback)?;
            rollout::start_asking(&mut client, plan, &ask, json).await
        }
        Command::Token(cmd) => token::execute(&mut client, cmd, json).await,
        Command::History { cluster, limit } => {
            ledger::history(&mut client, cluster, limit, json).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every command and every flag says what it is for in `--help`.
    #[test]
    fn every_command_and_flag_has_help() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for sub in cmd.get_subcommands() {
                let p = format!("{path} {}", sub.get_name());
                if sub.get_about().is_none() && sub.get_name() != "help" {
                    missing.push(p.clone());
                }
                for a in sub.get_arguments() {
                    let builtin = matches!(a.get_id().as_str(), "help" | "version");
                    if !builtin
                        && !a.is_global_set()
                        && a.get_help().is_none()
                        && !a.is_positional()
                    {
                        missing.push(format!("{p} --{}", a.get_id()));
                    }
                }
                walk(sub, &p, missing);
            }
        }
        let mut missing = vec![];
        walk(&Args::command(), "ferry", &mut missing);
        assert!(missing.is_empty(), "no help for: {missing:?}");
        Args::command().debug_assert();
    }

    #[test]
    fn completion_scripts_name_every_command() {
        let mut out = vec![];
        clap_complete::generate(
            clap_complete::Shell::Bash,
            &mut Args::command(),
            "ferry",
            &mut out,
        );
        let script = String::from_utf8(out).unwrap();
        for c in [
            "serve",
            "clusters",
            "rollout",
            "promote",
            "history",
            "completion",
        ] {
            assert!(script.contains(c), "bash completion lacks {c}");
        }
    }
}
