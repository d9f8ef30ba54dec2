//! `ferry`: the coordinator (`ferry serve`) and the operator CLI.
//!
//! Parses flags (`--help` and `--version` exit 0, a usage error 64), sets up
//! logs (to stderr; colours only on a terminal), installs the TLS crypto
//! provider, and runs the command. `ferry serve` drains on SIGTERM/SIGINT.

use clap::Parser;
use ferry_coordinator::cli::{Args, LogFormat, run};

/// `EX_USAGE` from sysexits.h.
const USAGE: i32 = 64;

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
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    if let Err(e) = run(args).await {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
