//! `agent-bench`: the agent's footprint and apply speed, measured on real
//! processes. A git daemon serves a directory of N objects; `ferry serve`
//! and `ferry-agent` run as separate processes (so their RSS is theirs
//! alone) against an in-process Kubernetes API emulator. Prints a table and
//! one JSON line.
//!
//! Build the binaries first, in the same profile:
//! `cargo build --release --bin ferry --bin ferry-agent --bin agent-bench`
//! then `target/release/agent-bench`.

use anyhow::Result;
use clap::Parser;
use ferry_integration::bench::{Proc, binary, cpu_ms, rss_mib, wait_for};
use ferry_integration::world::GitServer;
use ferry_proto::v1::admin_client::AdminClient;
use ferry_proto::v1::{GetClusterRequest, Health, Phase, PinRequest};
use ferry_proto::{Bearer, DialConfig};
use kube_emulator::{Config as EmulatorConfig, Controllers, Emulator};
use serde_json::json;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Measure the agent: cold converge, RSS, steady-state writes, no-op sync cost.
#[derive(Parser)]
struct Args {
    /// Objects in the cluster's directory.
    #[arg(long, default_value_t = 1000)]
    objects: usize,
    /// Seconds of steady state to count writes over.
    #[arg(long, default_value_t = 60)]
    steady_seconds: u64,
    /// The agent's resync interval during the steady state (seconds).
    #[arg(long, default_value_t = 5)]
    resync_seconds: u64,
    /// Sign the commit (an `ssh-keygen` key) and give the agent the key to
    /// verify it with (`--verify-keys`); also time the check in-process.
    #[arg(long)]
    verify: bool,
}

/// An ssh-keygen key, its trusted-keys directory, and git config to sign with it.
fn signing_key(dir: &std::path::Path) -> Result<(std::path::PathBuf, Vec<String>)> {
    let key = dir.join("signing-key");
    let made = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key)
        .output()?;
    anyhow::ensure!(made.status.success(), "ssh-keygen failed: {made:?}");
    let keys = dir.join("trusted-keys");
    std::fs::create_dir_all(&keys)?;
    let public = std::fs::read_to_string(key.with_extension("pub"))?;
    std::fs::write(
        keys.join("allowed_signers"),
        format!("bench@example.com {}\n", public.trim()),
    )?;
    let config = vec![
        "-c".into(),
        "gpg.format=ssh".into(),
        "-c".into(),
        format!("user.signingkey={}", key.display()),
    ];
    Ok((keys, config))
}

/// Syncs the agent counted (its own `ferry_agent_syncs_total`, every
/// result), read from its metrics endpoint.
async fn syncs_counted(metrics: std::net::SocketAddr) -> Result<f64> {
    let (code, body) = ferry_integration::harness::http_get(metrics, "/metrics").await?;
    anyhow::ensure!(code == 200, "the agent's /metrics answered {code}");
    Ok(body
        .lines()
        .filter(|l| l.starts_with("ferry_agent_syncs_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

/// Mean microseconds of `f` over `n` runs.
fn mean_us(n: u32, mut f: impl FnMut()) -> f64 {
    let t = Instant::now();
    for _ in 0..n {
        f();
    }
    t.elapsed().as_secs_f64() * 1e6 / n as f64
}

fn objects(n: usize) -> String {
    let mut s = String::from("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: bench\n");
    for i in 0..n {
        s.push_str(&format!(
            "---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cm-{i}\n  namespace: bench\n  labels: {{app: bench}}\ndata:\n  index: \"{i}\"\n  payload: {}\n",
            "x".repeat(200)
        ));
    }
    s
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    ferry_integration::harness::init_crypto();
    let hint = "cargo build --release --bin ferry --bin ferry-agent --bin agent-bench";
    let (ferry, agent_bin) = (binary("ferry", hint)?, binary("ferry-agent", hint)?);
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();

    let git = GitServer::start(&dir.join("git"))?;
    let manifests = objects(args.objects);
    let files = [("clusters/bench/objects.yaml", Some(manifests.as_str()))];
    let signing = if args.verify {
        Some(signing_key(dir)?)
    } else {
        None
    };
    let commit = match &signing {
        Some((_, config)) => git.commit_signed("bench", &files, config)?,
        None => git.commit("bench", &files)?,
    };
    let emu = Emulator::start(EmulatorConfig {
        controllers: Controllers {
            ready_delay: Duration::from_millis(50),
            ..Controllers::default()
        },
        ..EmulatorConfig::default()
    })
    .await?;
    let kubeconfig = dir.join("kubeconfig");
    emu.write_kubeconfig(&kubeconfig)?;

    let port = ferry_integration::world::free_port()?;
    let data = dir.join("coordinator");
    let _coordinator = Proc(
        Command::new(&ferry)
            .args([
                "serve",
                "--insecure",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--data-dir",
            ])
            .arg(&data)
            .args(["--repo", &git.url])
            .env("FERRY_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()?,
    );
    let token_file = data.join("admin-token");
    let token = wait_for("the coordinator", Duration::from_secs(20), || async {
        let t = std::fs::read_to_string(&token_file).ok()?;
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
        Some(t)
    })
    .await?;
    let addr = format!("http://127.0.0.1:{port}");
    let channel = DialConfig {
        addr: addr.clone(),
        insecure: true,
        ..DialConfig::default()
    }
    .endpoint()?
    .connect()
    .await?;
    let mut admin = AdminClient::with_interceptor(channel, Bearer::new(&token)?);

    let started = Instant::now();
    let metrics: std::net::SocketAddr =
        format!("127.0.0.1:{}", ferry_integration::world::free_port()?).parse()?;
    let mut agent_cmd = Command::new(&agent_bin);
    if let Some((keys, _)) = &signing {
        agent_cmd.arg("--verify-keys").arg(keys);
    }
    let agent = Proc(
        agent_cmd
            .args([
                "--insecure",
                "--coordinator",
                &addr,
                "--cluster",
                "bench",
                "--kubeconfig",
            ])
            .arg(&kubeconfig)
            .arg("--cache-dir")
            .arg(dir.join("cache"))
            .args(["--resync-seconds", &args.resync_seconds.to_string()])
            .args(["--metrics-listen", &metrics.to_string()])
            .env("FERRY_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()?,
    );
    let pid = agent.0.id();
    wait_for("the agent to connect", Duration::from_secs(20), || async {
        let c = admin
            .clone()
            .get_cluster(GetClusterRequest {
                name: "bench".into(),
            })
            .await
            .ok()?
            .into_inner();
        c.connected.then_some(())
    })
    .await?;
    let connect_s = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle_rss = rss_mib(pid);

    let t = Instant::now();
    admin
        .pin(PinRequest {
            clusters: vec!["bench".into()],
            r#ref: commit.clone(),
            reason: "bench".into(),
            force: false,
            allow_mass_prune: false,
        })
        .await?;
    wait_for("a cold converge", Duration::from_secs(600), || async {
        let s = admin
            .clone()
            .get_cluster(GetClusterRequest {
                name: "bench".into(),
            })
            .await
            .ok()?
            .into_inner()
            .status?;
        (s.applied_commit == commit
            && s.phase == Phase::Synced as i32
            && s.health == Health::Healthy as i32)
            .then_some(())
    })
    .await?;
    let converge_s = t.elapsed().as_secs_f64();
    let managed_rss = rss_mib(pid);
    let applied = emu
        .objects("", "configmaps")
        .iter()
        .filter(|o| o["metadata"]["namespace"] == "bench")
        .count();

    // Steady state: nothing changes in Git or in the cluster.
    tokio::time::sleep(Duration::from_secs(2)).await;
    emu.reset_counters();
    let syncs_before = syncs_counted(metrics).await?;
    let cpu_before = cpu_ms(pid);
    tokio::time::sleep(Duration::from_secs(args.steady_seconds)).await;
    let steady_cpu_ms = cpu_ms(pid) - cpu_before;
    let syncs = syncs_counted(metrics).await? - syncs_before;
    let counters = emu.counters();
    let reads: u64 = counters
        .requests
        .iter()
        .filter(|((v, _), _)| v == "get" || v == "list")
        .map(|(_, n)| n)
        .sum();
    // Passes as the agent counted them (a pass takes time, so fewer than
    // the window over the interval run).
    let passes = syncs.max(1.0);
    let cpu_per_sync = steady_cpu_ms / passes;
    let cpu_share = steady_cpu_ms / (args.steady_seconds as f64 * 1000.0) * 100.0;
    let steady_rss = rss_mib(pid);
    drop(agent);

    // The check itself, in-process: what a pass of a cached, already
    // verified commit adds (the keys read again), and a new commit's.
    let mut verify_rows = vec![];
    let mut verify_json = json!(null);
    if let Some((keys, _)) = &signing {
        use ferry_proto::verify::{Mode, Policy};
        let c = ferry_proto::Commit::parse(&commit)?;
        let data = git.object("commit", &commit)?;
        let load_us = mean_us(200, || {
            Policy::load(keys, Mode::Commit).expect("keys");
        });
        let policy = Policy::load(keys, Mode::Commit)?;
        let check_us = mean_us(200, || {
            policy.verify_commit(&c, &data).expect("verifies");
        });
        verify_rows = vec![
            (
                "signature check, cached commit (keys read again)",
                format!("{:.0} µs", load_us),
            ),
            (
                "signature check, new commit (keys read + verify)",
                format!("{:.0} µs", load_us + check_us),
            ),
        ];
        verify_json = json!({"cached_commit_us": load_us, "new_commit_us": load_us + check_us});
    }

    let rows = [
        ("objects applied", format!("{applied}")),
        (
            "agent connect (process start to connected)",
            format!("{connect_s:.2} s"),
        ),
        (
            "cold converge of all objects (pin to Synced+Healthy)",
            format!("{converge_s:.2} s"),
        ),
        (
            "agent RSS idle (connected, nothing assigned)",
            format!("{idle_rss:.1} MiB"),
        ),
        (
            "agent RSS managing the objects",
            format!("{managed_rss:.1} MiB"),
        ),
        (
            "agent RSS after the steady state",
            format!("{steady_rss:.1} MiB"),
        ),
        (
            "writes during the steady state",
            format!("{} in {} s", counters.writes, args.steady_seconds),
        ),
        (
            "no-op syncs during the steady state",
            format!("{passes:.0}"),
        ),
        (
            "reads per no-op sync (resync)",
            format!("{:.0}", reads as f64 / passes),
        ),
        (
            "agent CPU per no-op sync (steady CPU / resyncs)",
            format!("{cpu_per_sync:.0} ms"),
        ),
        (
            "agent CPU during the steady state",
            format!("{cpu_share:.2} % of a core"),
        ),
    ];
    for (k, v) in rows.iter().chain(&verify_rows) {
        println!("{k:<56} {v:>14}");
    }
    println!(
        "{}",
        json!({
            "agent_bench": {
                "objects": applied, "connect_s": connect_s, "cold_converge_s": converge_s,
                "rss_idle_mib": idle_rss, "rss_managing_mib": managed_rss, "rss_steady_mib": steady_rss,
                "steady_writes": counters.writes, "steady_seconds": args.steady_seconds,
                "steady_syncs": passes,
                "reads_per_noop_sync": reads as f64 / passes,
                "cpu_ms_per_noop_sync": cpu_per_sync, "steady_cpu_percent": cpu_share,
                "verify": verify_json,
            }
        })
    );
    Ok(())
}
