//! `kube-emulator`: serve an emulated Kubernetes API until killed.

use clap::Parser;
use kube_emulator::{Config, Controllers, Emulator};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Serve an emulated Kubernetes API server until killed.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, env = "KUBE_EMULATOR_LISTEN", default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Where to write a kubeconfig for this server once it is ready.
    #[arg(long, env = "KUBE_EMULATOR_KUBECONFIG")]
    kubeconfig: PathBuf,
    /// Serve plain HTTP instead of HTTPS.
    #[arg(long, env = "KUBE_EMULATOR_PLAIN_HTTP")]
    plain_http: bool,
    /// Require this bearer token.
    #[arg(long, env = "KUBE_EMULATOR_TOKEN")]
    token: Option<String>,
    /// Milliseconds a workload takes to become available.
    #[arg(long, env = "KUBE_EMULATOR_READY_DELAY_MS", default_value_t = 300)]
    ready_delay_ms: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("FERRY_LOG"))
        .with_writer(std::io::stderr)
        .init();
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) => {
            let code = if e.use_stderr() { 64 } else { 0 };
            let _ = e.print();
            std::process::exit(code);
        }
    };
    let emu = Emulator::start(Config {
        listen: args.listen,
        tls: !args.plain_http,
        token: args.token,
        controllers: Controllers {
            ready_delay: Duration::from_millis(args.ready_delay_ms),
            ..Controllers::default()
        },
        ..Config::default()
    })
    .await?;
    emu.write_kubeconfig(&args.kubeconfig)?;
    println!(
        "kube-emulator ready at {} (kubeconfig {})",
        emu.url(),
        args.kubeconfig.display()
    );
    tokio::signal::ctrl_c().await?;
    Ok(())
}
