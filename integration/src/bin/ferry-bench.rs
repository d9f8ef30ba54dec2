//! `ferry-bench`: how far Ferry scales on this machine. Prints tables and
//! one JSON line with the same figures.
//!
//! - **Coordinator**: `ferry serve` runs as its own process (its RSS is its
//!   own) with its CA, mTLS and SQLite (`--store postgres`: a throwaway
//!   PostgreSQL on this machine instead). A fleet simulator in this process
//!   enrolls N clusters through the real join-token flow and holds one mTLS
//!   stream per cluster, speaking the real protocol. Measured at each fleet
//!   size: connections and RSS, memory per stream, pin fan-out (pin call to
//!   each agent holding its assignment: p50, p99, max), then status reports
//!   ingested per second at saturation, and a three-wave rollout end to end.
//! - **Two replicas** (`--ha-clusters N`): two coordinators on one
//!   PostgreSQL, half the fleet on each. A pin through one to all of them
//!   (latencies, and the CPU time of each replica, PostgreSQL and the
//!   simulated agents meanwhile), three more pins (p99 of each), reports
//!   at saturation, and a rollout whose leader is killed in wave two.
//! - **Agent**: runs `agent-bench` (a real agent process against the
//!   Kubernetes API emulator) and reports its figures.
//! - **Git**: the agent's gix code against the git CLI on one repository.
//!
//! Build first, in one profile:
//! `cargo build --release -p ferry-integration -p ferry-coordinator -p ferry-agent --bins`
//! then `target/release/ferry-bench`.

use anyhow::{Context, Result, bail};
use clap::Parser;
use ferry_coordinator::cli::all_clusters;
use ferry_integration::bench::{
    Proc, binary, cpu_ms, percentile, print_table, raise_nofile, rss_mib, sockets, tree_cpu_ms,
    wait_for,
};
use ferry_integration::fleetsim::{Fleet, SimConfig};
use ferry_integration::world::GitServer;
use ferry_proto::v1::admin_client::AdminClient;
use ferry_proto::v1::{
    GetRolloutRequest, PinRequest, RolloutPlan, StartRolloutRequest, WatchEventsRequest, WavePlan,
    WavePolicy, wave_plan,
};
use ferry_proto::{Bearer, DialConfig};
use futures::StreamExt;
use serde_json::{Value, json};
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

type Admin = AdminClient<InterceptedService<Channel, Bearer>>;

const BUILD: &str =
    "cargo build --release -p ferry-integration -p ferry-coordinator -p ferry-agent --bins";

/// Measure the coordinator at fleet scale, the agent, and Git.
#[derive(Parser)]
struct Args {
    /// Fleet sizes, ascending; the fleet grows from one to the next.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    clusters: Vec<usize>,
    /// Seconds between a simulated agent's heartbeats (a real agent: 15).
    #[arg(long, default_value_t = 15)]
    heartbeat_seconds: u64,
    /// How long a simulated agent "applies" before reporting Synced.
    #[arg(long, default_value_t = 200)]
    apply_ms: u64,
    /// Status reports each agent sends in the saturation burst.
    #[arg(long, default_value_t = 10)]
    burst_reports: u64,
    /// Enrollments in flight at once.
    #[arg(long, default_value_t = 32)]
    enroll_concurrency: usize,
    #[arg(long)]
    skip_fleet: bool,
    /// The coordinator's store: `sqlite` (its data dir) or `postgres` (a
    /// throwaway PostgreSQL with its durable defaults, on this machine).
    #[arg(long, default_value = "sqlite")]
    store: String,
    /// Clusters for the two-replica run (two coordinators on PostgreSQL,
    /// half the agents on each; a pin's fan-out, reports/s, a rollout whose
    /// leader is killed half-way); 0 skips it.
    #[arg(long, default_value_t = 0)]
    ha_clusters: usize,
    #[arg(long)]
    skip_agent: bool,
    #[arg(long)]
    skip_git: bool,
    #[arg(long)]
    skip_airgap: bool,
    /// Objects for the agent figures, one run of `agent-bench` per count
    /// (the footprint table: 1000,10000,30000).
    #[arg(long, value_delimiter = ',', default_value = "1000")]
    agent_objects: Vec<usize>,
    /// Seconds of agent steady state.
    #[arg(long, default_value_t = 60)]
    agent_steady_seconds: u64,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// p50, p99 and max of latencies (ms), as a table cell and JSON.
fn spread(mut v: Vec<f64>) -> (String, Value) {
    v.sort_by(f64::total_cmp);
    let (p50, p99, max) = (
        percentile(&v, 50.0),
        percentile(&v, 99.0),
        v.last().copied().unwrap_or(0.0),
    );
    (
        format!("{p50:.0} / {p99:.0} / {max:.0} ms"),
        json!({"p50_ms": p50, "p99_ms": p99, "max_ms": max, "n": v.len()}),
    )
}

struct Coord {
    /// The PostgreSQL DSN it keeps state in (`None`: SQLite).
    store: Option<String>,
    proc: Proc,
    admin: Admin,
    ca: std::path::PathBuf,
    addr: String,
    port: u16,
    /// Where it serves `/metrics`.
    metrics: std::net::SocketAddr,
}

async fn start_coordinator(
    dir: &std::path::Path,
    repo: &str,
    store: Option<String>,
) -> Result<Coord> {
    let (port, metrics) = (
        ferry_integration::world::free_port()?,
        ferry_integration::world::free_port()?,
    );
    start_coordinator_on(dir, repo, port, metrics, store).await
}

async fn start_coordinator_on(
    dir: &std::path::Path,
    repo: &str,
    port: u16,
    metrics: u16,
    store: Option<String>,
) -> Result<Coord> {
    spawn_coordinator(dir, repo, port, metrics, store, &[], None).await
}

/// `ferry serve` with `extra` flags; `first`: the admin token and CA file
/// of the replica that made them (a second replica writes neither).
async fn spawn_coordinator(
    dir: &std::path::Path,
    repo: &str,
    port: u16,
    metrics: u16,
    store: Option<String>,
    extra: &[String],
    first: Option<(String, std::path::PathBuf)>,
) -> Result<Coord> {
    let ferry = binary("ferry", BUILD)?;
    let data = dir.join("coordinator");
    let proc = Proc(
        Command::new(&ferry)
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--data-dir",
            ])
            .arg(&data)
            .args(["--repo", repo])
            .args(extra)
            .args(["--metrics-listen", &format!("127.0.0.1:{metrics}")])
            .env("FERRY_STORE", store.as_deref().unwrap_or("sqlite"))
            .env(
                "FERRY_LOG",
                std::env::var("FERRY_BENCH_COORDINATOR_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::null())
            .spawn()?,
    );
    let token_file = data.join("admin-token");
    let token = wait_for("the coordinator", Duration::from_secs(30), || async {
        let t = match &first {
            Some((t, _)) => t.clone(),
            None => std::fs::read_to_string(&token_file).ok()?,
        };
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
        Some(t)
    })
    .await?;
    let addr = format!("https://127.0.0.1:{port}");
    let ca = first.map_or_else(|| data.join("ca.pem"), |(_, ca)| ca);
    let channel = DialConfig {
        addr: addr.clone(),
        ca: Some(ca.clone()),
        ..DialConfig::default()
    }
    .endpoint()?
    .connect()
    .await?;
    let admin = AdminClient::with_interceptor(channel, Bearer::new(token.trim())?)
        .max_decoding_message_size(256 << 20);
    Ok(Coord {
        store,
        proc,
        admin,
        ca,
        addr,
        port,
        metrics: ([127, 0, 0, 1], metrics).into(),
    })
}

/// What a coordinator restart costs a connected fleet.
struct Restart {
    clusters: usize,
    /// From SIGTERM to every agent connected again.
    back_s: f64,
    /// The most agents that (re)connected within any 100 ms, as a rate.
    peak_per_s: f64,
    /// When half and 99 % of the fleet were back.
    p50_s: f64,
    p99_s: f64,
}

/// Stops the coordinator (SIGTERM, as an orchestrator does), starts it
/// again on the same port and data, and times the fleet coming back.
async fn restart(
    c: Coord,
    fleet: &Fleet,
    n: usize,
    dir: &std::path::Path,
    repo: &str,
) -> Result<(Coord, Restart)> {
    let (port, metrics, store) = (c.port, c.metrics.port(), c.store.clone());
    let t = Instant::now();
    let pid = rustix::process::Pid::from_raw(c.proc.0.id() as i32).context("a pid")?;
    rustix::process::kill_process(pid, rustix::process::Signal::TERM)?;
    let mut old = c;
    wait_for("the coordinator to exit", Duration::from_secs(30), || {
        let exited = old.proc.0.try_wait().ok().flatten().is_some();
        async move { exited.then_some(()) }
    })
    .await?;
    let c = start_coordinator_on(dir, repo, port, metrics, store).await?;
    // Connected agents over time, every 10 ms.
    let mut samples: Vec<(f64, usize)> = vec![];
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let now = fleet.connected();
        samples.push((t.elapsed().as_secs_f64(), now));
        if now >= n {
            break;
        }
        if Instant::now() > deadline {
            bail!("only {now} of {n} agents back after a restart");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let back_s = t.elapsed().as_secs_f64();
    let at = |share: f64| {
        samples
            .iter()
            .find(|(_, k)| *k as f64 >= share * n as f64)
            .map_or(back_s, |(s, _)| *s)
    };
    let mut peak = 0usize;
    for (i, (s0, k0)) in samples.iter().enumerate() {
        let k1 = samples[i..]
            .iter()
            .take_while(|(s, _)| s - s0 <= 0.1)
            .map(|(_, k)| *k)
            .max()
            .unwrap_or(*k0);
        peak = peak.max(k1.saturating_sub(*k0));
    }
    Ok((
        c,
        Restart {
            clusters: n,
            back_s,
            peak_per_s: peak as f64 * 10.0,
            p50_s: at(0.5),
            p99_s: at(0.99),
        },
    ))
}

fn name(i: usize) -> String {
    format!("sim-{i:05}")
}

fn index(name: &str) -> Option<usize> {
    name.strip_prefix("sim-")?.parse().ok()
}

/// Every agent sends `reports` status reports at once: how many were
/// stored per second (each agent's last one read back), and how long it
/// took.
async fn burst(c: &Coord, fleet: &Fleet, n: usize, reports: u64) -> Result<(f64, f64)> {
    let t = Instant::now();
    let id = fleet.burst(reports);
    wait_for("every burst sent", Duration::from_secs(300), || async {
        (0..n)
            .all(|i| fleet.tally.burst_done[i].load(Ordering::Relaxed) >= id)
            .then_some(())
    })
    .await?;
    let last: Vec<u64> = (0..n)
        .map(|i| fleet.tally.sent_seq[i].load(Ordering::Relaxed))
        .collect();
    wait_for("every report stored", Duration::from_secs(300), || async {
        let list = all_clusters(&mut c.admin.clone(), 1000).await.ok()?;
        let stored = list
            .iter()
            .filter(|cl| {
                let (Some(i), Some(s)) = (index(&cl.name), cl.status.as_ref()) else {
                    return false;
                };
                i < n && s.drift_corrections >= last[i]
            })
            .count();
        (stored >= n).then_some(())
    })
    .await?;
    let burst_s = t.elapsed().as_secs_f64();
    Ok(((n as u64 * reports) as f64 / burst_s, burst_s))
}

/// A wave of a plan: `percent` % of the fleet, the wave's policy the plan's.
fn wave(name: &str, percent: u32) -> WavePlan {
    WavePlan {
        name: name.into(),
        select: Some(wave_plan::Select::Percent(percent)),
        policy: None,
    }
}

/// One sample of a coordinator's `/metrics`: the value of `series`.
async fn sample(c: &Coord, series: &str) -> Option<f64> {
    let (_, body) = ferry_integration::harness::http_get(c.metrics, "/metrics")
        .await
        .ok()?;
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

/// Pins after the first in the two-replica run.
const REPINS: usize = 3;

/// Two coordinators on one PostgreSQL, half the agents on each: how long a
/// pin made through one takes to reach the agents on either (the first
/// pin, then [`REPINS`] more), status reports stored per second through
/// both, and a three-wave rollout whose leader is killed (SIGKILL) once
/// its second wave has started.
async fn ha_bench(args: &Args, dir: &std::path::Path) -> Result<(Vec<(String, String)>, Value)> {
    let n = args.ha_clusters;
    let git = GitServer::start(&dir.join("git"))?;
    let mut commits = vec![];
    for i in 0..3 {
        commits.push(git.commit(
            &format!("c{i}"),
            &[("clusters/README", Some(&format!("revision {i}\n")))],
        )?);
    }
    let pg = ferry_integration::postgres::Scratch::durable()?;
    let dsn = pg.create("ferry").await?;
    let a = start_coordinator(&dir.join("a"), &git.url, Some(dsn.clone())).await?;
    // B: the same CA (as a Secret mounted on every replica would be).
    let ca = dir.join("ca");
    std::fs::create_dir_all(&ca)?;
    let a_data = dir.join("a").join("coordinator");
    std::fs::copy(a_data.join("ca.pem"), ca.join("tls.crt"))?;
    std::fs::copy(a_data.join("ca-key.pem"), ca.join("tls.key"))?;
    let token = std::fs::read_to_string(a_data.join("admin-token"))?;
    let b = spawn_coordinator(
        &dir.join("b"),
        &git.url,
        ferry_integration::world::free_port()?,
        ferry_integration::world::free_port()?,
        Some(dsn),
        &["--ca-dir".into(), ca.display().to_string()],
        Some((token, a.ca.clone())),
    )
    .await?;
    // Even agents dial A first, odd ones B; each fails over to the other.
    let (on_a, on_b) = (
        format!("{},{}", a.addr, b.addr),
        format!("{},{}", b.addr, a.addr),
    );
    let mut fleet = Fleet::new(n);
    eprintln!("two replicas: enrolling {n} clusters…");
    grow_dialing(&a, &mut fleet, 0, n, args, &|i| {
        if i % 2 == 0 {
            on_a.clone()
        } else {
            on_b.clone()
        }
    })
    .await?;
    wait_for(
        "every agent connected",
        Duration::from_secs(300),
        || async { (fleet.connected() >= n).then_some(()) },
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (sessions_a, sessions_b) = (
        sample(&a, "ferry_clusters_connected").await.unwrap_or(0.0),
        sample(&b, "ferry_clusters_connected").await.unwrap_or(0.0),
    );
    let (rss_a, rss_b) = (rss_mib(a.proc.0.id()), rss_mib(b.proc.0.id()));

    // A coordinator that has run a while holds the repository in its
    // cache, as the single-coordinator figures' do past their first
    // stage: a dry run fetches it, so the fan-out below times no clone.
    a.admin
        .clone()
        .start_rollout(StartRolloutRequest {
            dry_run: true,
            plan: Some(RolloutPlan {
                r#ref: commits[0].clone(),
                waves: vec![wave("all", 100)],
                defaults: None,
                auto_rollback: false,
            }),
        })
        .await?;
    eprintln!("two replicas: a pin through A to all {n}…");
    // The work a fan-out takes, steadier than its latencies on two cores
    // shared by both replicas, PostgreSQL and the simulated agents.
    let (a_pid, b_pid, pg_pid) = (a.proc.0.id(), b.proc.0.id(), pg.pid());
    // Seconds so far: A, B, PostgreSQL, the simulated agents (this process).
    let cpu_s = || {
        [
            cpu_ms(a_pid),
            cpu_ms(b_pid),
            tree_cpu_ms(pg_pid),
            cpu_ms(std::process::id()),
        ]
        .map(|ms| ms / 1000.0)
    };
    let before = cpu_s();
    let started = Instant::now();
    let (lat, pin_call_ms) = fan_out(&a, &fleet, n, &commits[0]).await?;
    let fan_out_s = started.elapsed().as_secs_f64();
    let after = cpu_s();
    let fan_out_cpu: [f64; 4] = std::array::from_fn(|i| after[i] - before[i]);
    let (mut lat_a, mut lat_b) = (vec![], vec![]);
    for (i, l) in lat.iter().enumerate() {
        if i % 2 == 0 {
            lat_a.push(*l)
        } else {
            lat_b.push(*l)
        }
    }
    let (all, here, there) = (spread(lat), spread(lat_a), spread(lat_b));
    all_synced(&a.admin, n, &commits[0]).await?;

    // More pins through A, each to every cluster, as most pins are in a
    // fleet that has run a while (every pin updated, none inserted): one
    // run shows how far a fan-out's p99 moves from one pin to the next.
    eprintln!("two replicas: {REPINS} more pins through A…");
    let mut repins = vec![];
    for k in 0..REPINS {
        let to = &commits[if k % 2 == 0 { 2 } else { 0 }];
        let (lat, _) = fan_out(&a, &fleet, n, to).await?;
        repins.push(spread(lat).1);
        all_synced(&a.admin, n, to).await?;
    }
    let repin_p99s: Vec<String> = repins
        .iter()
        .map(|v| format!("{:.0}", v["p99_ms"].as_f64().unwrap_or(0.0)))
        .collect();

    eprintln!("two replicas: status burst…");
    let (reports_per_s, _) = burst(&a, &fleet, n, args.burst_reports).await?;

    eprintln!("two replicas: a rollout, its leader (A) killed in wave two…");
    let t = Instant::now();
    let started = a
        .admin
        .clone()
        .start_rollout(StartRolloutRequest {
            dry_run: false,
            plan: Some(RolloutPlan {
                r#ref: commits[1].clone(),
                waves: vec![wave("canary", 1), wave("early", 10), wave("rest", 100)],
                defaults: Some(WavePolicy {
                    bake_seconds: Some(1),
                    deadline_seconds: Some(600),
                    ..WavePolicy::default()
                }),
                auto_rollback: false,
            }),
        })
        .await?
        .into_inner();
    let id = started.id.clone();
    let get = || {
        let (mut admin, id) = (b.admin.clone(), id.clone());
        async move {
            admin
                .get_rollout(GetRolloutRequest { id })
                .await
                .ok()
                .map(|r| r.into_inner())
        }
    };
    wait_for(
        "the rollout's second wave",
        Duration::from_secs(300),
        || async { get().await.filter(|r| r.current_wave >= 1) },
    )
    .await?;
    let pid = rustix::process::Pid::from_raw(a.proc.0.id() as i32).context("a pid")?;
    rustix::process::kill_process(pid, rustix::process::Signal::KILL)?;
    let killed = Instant::now();
    let killed_ms = ferry_proto::now_unix_ms();
    let took_over = wait_for("B's first transition", Duration::from_secs(60), || async {
        get()
            .await
            .filter(|r| r.updated_unix_ms > killed_ms)
            .map(|_| ())
    })
    .await
    .map(|()| killed.elapsed().as_secs_f64());
    let took_over = took_over?;
    let done = wait_for("the rollout's end", Duration::from_secs(600), || async {
        let r = get().await?;
        (r.phase != ferry_proto::v1::RolloutPhase::Running as i32
            && r.phase != ferry_proto::v1::RolloutPhase::AwaitingApproval as i32)
            .then_some(r)
    })
    .await?;
    let rollout_s = t.elapsed().as_secs_f64();
    let succeeded = done.phase == ferry_proto::v1::RolloutPhase::Succeeded as i32;
    wait_for("every agent back", Duration::from_secs(120), || async {
        (fleet.connected() >= n).then_some(())
    })
    .await?;
    // The ledger: one pin per cluster by the rollout, none twice or lost.
    let entries = b
        .admin
        .clone()
        .history(ferry_proto::v1::HistoryRequest {
            cluster: String::new(),
            limit: (n * 3) as u32,
        })
        .await?
        .into_inner()
        .entries;
    let mut pins: std::collections::HashMap<&str, usize> = Default::default();
    for e in entries.iter().filter(|e| e.rollout == id) {
        *pins.entry(e.cluster.as_str()).or_default() += 1;
    }
    let duplicated = pins.values().filter(|k| **k > 1).count();
    let pinned = pins.len();
    drop(pg);

    let rows = vec![
        (
            format!("{n} clusters: streams on A / on B"),
            format!("{sessions_a:.0} / {sessions_b:.0}"),
        ),
        (
            "RSS of A / of B".into(),
            format!("{rss_a:.1} / {rss_b:.1} MiB"),
        ),
        (
            "pin call through A (resolve, store, notify, push)".into(),
            format!("{pin_call_ms:.0} ms"),
        ),
        (
            "pin to assignment p50/p99/max, every agent".into(),
            all.0.clone(),
        ),
        (
            "  agents on A (the replica pinned through)".into(),
            here.0.clone(),
        ),
        ("  agents on B (told by A's NOTIFY)".into(), there.0.clone()),
        (
            format!("  CPU time in those {fan_out_s:.2} s: A / B / PostgreSQL / agents"),
            format!(
                "{:.2} / {:.2} / {:.2} / {:.2} s",
                fan_out_cpu[0], fan_out_cpu[1], fan_out_cpu[2], fan_out_cpu[3]
            ),
        ),
        (
            format!("{REPINS} repins through A (pins updated): p99 of each"),
            format!("{} ms", repin_p99s.join(" / ")),
        ),
        (
            format!(
                "status reports stored/s ({} x {n}, through both)",
                args.burst_reports
            ),
            format!("{reports_per_s:.0}/s"),
        ),
        (
            "rollout, leader A killed in wave two: end to end".into(),
            format!(
                "{rollout_s:.1} s ({})",
                if succeeded {
                    "succeeded"
                } else {
                    "did not succeed"
                }
            ),
        ),
        (
            "  kill to B's first transition (lease 5 s)".into(),
            format!("{took_over:.1} s"),
        ),
        (
            "  clusters pinned by it / pinned twice".into(),
            format!("{pinned} of {n} / {duplicated}"),
        ),
    ];
    let j = json!({
        "clusters": n, "sessions": [sessions_a, sessions_b], "rss_mib": [rss_a, rss_b],
        "pin_call_ms": pin_call_ms, "fan_out": all.1, "fan_out_same_replica": here.1,
        "fan_out_other_replica": there.1,
        "fan_out_s": fan_out_s, "repins": repins,
        "fan_out_cpu_s": {"a": fan_out_cpu[0], "b": fan_out_cpu[1], "postgres": fan_out_cpu[2],
                          "agents": fan_out_cpu[3]},
        "status_reports_per_s": reports_per_s,
        "rollout": {"seconds": rollout_s, "succeeded": succeeded, "takeover_s": took_over,
                    "pinned": pinned, "duplicated": duplicated},
    });
    Ok((rows, j))
}

/// A three-wave rollout over the whole fleet, end to end: seconds, and
/// each wave's fan-out (rows and JSON).
async fn rollout(
    c: &Coord,
    fleet: &Fleet,
    n: usize,
    target: &str,
) -> Result<(f64, Vec<(String, String)>, Vec<Value>)> {
    eprintln!("three-wave rollout over {n} clusters…");
    let target = target.to_string();
    let t0 = ferry_proto::now_unix_ms();
    let t = Instant::now();
    let rollout = c
        .admin
        .clone()
        .start_rollout(StartRolloutRequest {
            dry_run: false,
            plan: Some(RolloutPlan {
                r#ref: target.clone(),
                waves: vec![wave("canary", 1), wave("early", 10), wave("rest", 100)],
                defaults: Some(WavePolicy {
                    bake_seconds: Some(0),
                    deadline_seconds: Some(600),
                    ..WavePolicy::default()
                }),
                auto_rollback: true,
            }),
        })
        .await?
        .into_inner();
    // Follow the rollout's events: when each wave started, when it ended.
    let mut events = c
        .admin
        .clone()
        .watch_events(WatchEventsRequest {
            rollout: rollout.id.clone(),
            after_id: 0,
        })
        .await?
        .into_inner();
    let mut wave_started: std::collections::HashMap<String, i64> = Default::default();
    let mut wave_done: std::collections::HashMap<String, i64> = Default::default();
    let ended = tokio::time::timeout(Duration::from_secs(900), async {
        while let Some(e) = events.message().await? {
            if !e.cluster.is_empty() {
                continue;
            }
            if let Some(w) = e
                .message
                .strip_prefix("wave ")
                .and_then(|m| m.strip_suffix(" started"))
            {
                wave_started.insert(w.to_string(), e.at_unix_ms);
            }
            if let Some(w) = e
                .message
                .strip_prefix("wave ")
                .and_then(|m| m.strip_suffix(" done"))
            {
                wave_done.insert(w.to_string(), e.at_unix_ms);
            }
            if e.message.starts_with("every wave runs") {
                return Ok::<_, anyhow::Error>(true);
            }
            let m = e.message.to_lowercase();
            if m.contains("rolled back") || m.contains("aborted") || m.contains("failed") {
                return Ok(false);
            }
        }
        Ok(false)
    })
    .await
    .context("the rollout did not end within 900 s")??;
    let rollout_s = t.elapsed().as_secs_f64();
    let done = c
        .admin
        .clone()
        .get_rollout(GetRolloutRequest {
            id: rollout.id.clone(),
        })
        .await?
        .into_inner();
    if !ended || done.phase != ferry_proto::v1::RolloutPhase::Succeeded as i32 {
        bail!("the rollout ended {}: {}", done.phase, done.message);
    }
    let mut wave_rows = vec![];
    let mut wave_json = vec![];
    for w in &done.waves {
        let start = wave_started.get(&w.name).copied().unwrap_or(t0);
        let lat: Vec<f64> = w
            .clusters
            .iter()
            .filter_map(|cl| index(&cl.name))
            .map(|i| (fleet.tally.received_ms[i].load(Ordering::Relaxed) - start) as f64)
            .collect();
        let (cell, j) = spread(lat);
        // When the wave started, from the rollout's start: what the waves
        // before it took, gates included.
        let from_ms = start - t0;
        let done_ms = wave_done.get(&w.name).map(|d| d - t0);
        let done = done_ms.map_or("-".into(), |d| format!("+{d}"));
        wave_rows.push((
            format!(
                "  wave {} ({} clusters, +{from_ms} to done {done} ms): start to assignment p50/p99/max",
                w.name,
                w.clusters.len()
            ),
            cell,
        ));
        wave_json.push(
            json!({"wave": w.name, "clusters": w.clusters.len(), "started_ms": from_ms, "done_ms": done_ms, "fan_out": j}),
        );
    }
    Ok((rollout_s, wave_rows, wave_json))
}

/// 100 sites, every cluster in one (`site=sNN` from enrollment), each
/// mirror reported holding every commit; returns how long that took.
async fn with_sites(c: &Coord, commits: &[String]) -> Result<f64> {
    let t = Instant::now();
    let mut admin = c.admin.clone();
    for i in 0..SITES {
        let site = format!("s{i:02}");
        admin
            .add_site(ferry_proto::v1::AddSiteRequest {
                name: site.clone(),
                mirror_url: format!("git://mirror-{site}.invalid/fleet.git"),
                selector: format!("site={site}"),
            })
            .await?;
        admin
            .report_mirror(ferry_proto::v1::ReportMirrorRequest {
                site,
                refs: [(
                    "refs/heads/main".to_string(),
                    commits.last().expect("commits").clone(),
                )]
                .into(),
                commits: commits.iter().rev().cloned().collect(),
                how: "ferry-bench".into(),
            })
            .await?;
    }
    Ok(t.elapsed().as_secs_f64())
}

/// Sites in the bench's second rollout.
const SITES: usize = 100;

/// Enrolls clusters `from..to` through join tokens and starts their agents.
async fn grow(c: &Coord, fleet: &mut Fleet, from: usize, to: usize, args: &Args) -> Result<f64> {
    grow_dialing(c, fleet, from, to, args, &|_| c.addr.clone()).await
}

/// As [`grow`], each agent `i` then dialing `addrs(i)` (replicas' addresses).
async fn grow_dialing(
    c: &Coord,
    fleet: &mut Fleet,
    from: usize,
    to: usize,
    args: &Args,
    addrs: &dyn Fn(usize) -> String,
) -> Result<f64> {
    let t = Instant::now();
    let enroll_dial = DialConfig {
        addr: c.addr.clone(),
        ca: Some(c.ca.clone()),
        ..DialConfig::default()
    };
    let dials: Vec<Result<(usize, DialConfig)>> = futures::stream::iter(from..to)
        .map(|i| {
            let mut admin = c.admin.clone();
            let dial = enroll_dial.clone();
            async move {
                let d = ferry_integration::fleetsim::enroll(&mut admin, &dial, &name(i)).await?;
                Ok((i, d))
            }
        })
        .buffer_unordered(args.enroll_concurrency)
        .collect()
        .await;
    let mut dials = dials.into_iter().collect::<Result<Vec<_>>>()?;
    dials.sort_by_key(|(i, _)| *i);
    let enroll_s = t.elapsed().as_secs_f64();
    let sim = SimConfig {
        apply_time: Duration::from_millis(args.apply_ms),
        heartbeat: Duration::from_secs(args.heartbeat_seconds),
        ..SimConfig::default()
    };
    for (i, mut dial) in dials {
        dial.addr = addrs(i);
        fleet.spawn(name(i), dial, sim.clone());
    }
    Ok(enroll_s)
}

async fn connected_per_coordinator(admin: &Admin) -> Result<usize> {
    Ok(all_clusters(&mut admin.clone(), 1000)
        .await?
        .iter()
        .filter(|c| c.connected)
        .count())
}

/// Pins clusters `0..n` to `commit`; returns each agent's time from the
/// pin call to holding the assignment (ms) and the call's own duration.
async fn fan_out(c: &Coord, fleet: &Fleet, n: usize, commit: &str) -> Result<(Vec<f64>, f64)> {
    let before: Vec<u64> = (0..n)
        .map(|i| fleet.tally.generation[i].load(Ordering::Relaxed))
        .collect();
    let t0 = ferry_proto::now_unix_ms();
    let call = Instant::now();
    c.admin
        .clone()
        .pin(PinRequest {
            clusters: (0..n).map(name).collect(),
            r#ref: commit.into(),
            reason: "bench".into(),
            force: false,
            allow_mass_prune: false,
        })
        .await?;
    let call_ms = ms(call.elapsed());
    wait_for(
        "every agent's assignment",
        Duration::from_secs(120),
        || async {
            (0..n)
                .all(|i| fleet.tally.generation[i].load(Ordering::Relaxed) > before[i])
                .then_some(())
        },
    )
    .await?;
    let lat = (0..n)
        .map(|i| (fleet.tally.received_ms[i].load(Ordering::Relaxed) - t0) as f64)
        .collect();
    Ok((lat, call_ms))
}

/// Waits until the coordinator holds every cluster's report of `commit`.
async fn all_synced(admin: &Admin, n: usize, commit: &str) -> Result<()> {
    wait_for("every cluster Synced", Duration::from_secs(300), || async {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let list = all_clusters(&mut admin.clone(), 1000).await.ok()?;
        let done = list
            .iter()
            .filter(|c| {
                c.status
                    .as_ref()
                    .is_some_and(|s| s.applied_commit == commit)
            })
            .count();
        (done >= n).then_some(())
    })
    .await
}

struct Stage {
    clusters: usize,
    enroll_s: f64,
    connect_s: f64,
    connected: usize,
    sockets: usize,
    rss_mib: f64,
    fan_out: (String, Value),
    pin_call_ms: f64,
    synced_s: f64,
    /// One `/metrics` scrape: bytes, series, milliseconds.
    scrape: (usize, usize, f64),
}

/// Scrapes the coordinator's `/metrics` once: (bytes, series, ms).
async fn scrape(c: &Coord) -> Result<(usize, usize, f64)> {
    let t = Instant::now();
    let (code, body) = ferry_integration::harness::http_get(c.metrics, "/metrics").await?;
    if code != 200 {
        bail!("/metrics answered {code}");
    }
    let series = body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .count();
    Ok((body.len(), series, t.elapsed().as_secs_f64() * 1000.0))
}

async fn fleet_bench(args: &Args, dir: &std::path::Path) -> Result<(Vec<(String, String)>, Value)> {
    let git = GitServer::start(&dir.join("git"))?;
    let mut commits = vec![];
    for i in 0..(args.clusters.len() + 3) {
        commits.push(git.commit(
            &format!("c{i}"),
            &[("clusters/README", Some(&format!("revision {i}\n")))],
        )?);
    }
    // A throwaway PostgreSQL when asked for, kept until the end.
    let (_pg, store) = match args.store.as_str() {
        "sqlite" => (None, None),
        "postgres" => {
            let pg = ferry_integration::postgres::Scratch::durable()?;
            let dsn = pg.create("ferry").await?;
            (Some(pg), Some(dsn))
        }
        other => bail!("--store {other}: sqlite or postgres"),
    };
    let mut c = start_coordinator(dir, &git.url, store).await?;
    let mut pid = c.proc.0.id();
    let mut restarted: Option<Restart> = None;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let base_rss = rss_mib(pid);
    let max = *args.clusters.iter().max().context("no fleet size")?;
    let mut fleet = Fleet::new(max);
    let mut stages: Vec<Stage> = vec![];
    let mut have = 0;
    for (k, &n) in args.clusters.iter().enumerate() {
        if n <= have {
            bail!("fleet sizes must ascend: {:?}", args.clusters);
        }
        eprintln!("growing the fleet to {n} clusters…");
        let enroll_s = grow(&c, &mut fleet, have, n, args).await?;
        have = n;
        let t = Instant::now();
        wait_for(
            "every agent connected",
            Duration::from_secs(300),
            || async { (fleet.connected() >= n).then_some(()) },
        )
        .await?;
        let connect_s = t.elapsed().as_secs_f64();
        eprintln!("pinning {n} clusters…");
        let (lat, pin_call_ms) = fan_out(&c, &fleet, n, &commits[k]).await?;
        let t = Instant::now();
        all_synced(&c.admin, n, &commits[k]).await?;
        let synced_s = t.elapsed().as_secs_f64();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut stage = Stage {
            clusters: n,
            enroll_s,
            connect_s,
            connected: connected_per_coordinator(&c.admin).await?,
            sockets: sockets(pid),
            rss_mib: rss_mib(pid),
            fan_out: spread(lat),
            pin_call_ms,
            synced_s,
            scrape: scrape(&c).await?,
        };
        if k == 0 {
            eprintln!("restarting the coordinator under {n} agents…");
            let (next, r) = restart(c, &fleet, n, dir, &git.url).await?;
            c = next;
            pid = c.proc.0.id();
            restarted = Some(r);
            // The next stage's memory per stream counts from this process.
            tokio::time::sleep(Duration::from_secs(2)).await;
            stage.rss_mib = rss_mib(pid);
        }
        stages.push(stage);
    }

    // Saturation: every agent sends a burst of reports at once.
    let n = have;
    eprintln!(
        "status burst: {} reports from each of {n} agents…",
        args.burst_reports
    );
    // The coordinator's own CPU time over a stage: a steadier figure
    // than the stage's duration on two cores shared with the agents.
    let cpu = cpu_ms(pid);
    let (reports_per_s, burst_s) = burst(&c, &fleet, n, args.burst_reports).await?;
    let burst_cpu_s = (cpu_ms(pid) - cpu) / 1000.0;
    let rss_after_burst = rss_mib(pid);

    // A three-wave rollout over the whole fleet; then the same with 100
    // sites, each cluster in one, whose mirrors hold the target.
    let cpu = cpu_ms(pid);
    let (rollout_s, wave_rows, wave_json) =
        rollout(&c, &fleet, n, &commits[commits.len() - 2]).await?;
    let rollout_cpu_s = (cpu_ms(pid) - cpu) / 1000.0;
    eprintln!("100 sites, their mirrors reported…");
    let sites_s = with_sites(&c, &commits).await?;
    let (sites_rollout_s, _, sites_wave_json) =
        rollout(&c, &fleet, n, commits.last().expect("commits")).await?;
    let final_rss = rss_mib(pid);

    let mut rows = vec![(
        "coordinator RSS with no clusters".to_string(),
        format!("{base_rss:.1} MiB"),
    )];
    let mut stage_json = vec![];
    for (i, s) in stages.iter().enumerate() {
        let n = s.clusters;
        rows.push((
            format!("{n} clusters: enrolled (join token + CSR) in"),
            format!("{:.1} s", s.enroll_s),
        ));
        rows.push((
            format!("{n} clusters: streams connected (coordinator's count)"),
            format!("{}", s.connected),
        ));
        rows.push((
            format!("{n} clusters: coordinator sockets"),
            format!("{}", s.sockets),
        ));
        rows.push((
            format!("{n} clusters: coordinator RSS"),
            format!("{:.1} MiB", s.rss_mib),
        ));
        let per_stream = if i == 0 {
            (s.rss_mib - base_rss) * 1024.0 / n as f64
        } else {
            let p = &stages[i - 1];
            (s.rss_mib - p.rss_mib) * 1024.0 / (n - p.clusters) as f64
        };
        rows.push((
            format!("{n} clusters: memory per added stream"),
            format!("{per_stream:.1} KiB"),
        ));
        rows.push((
            format!("{n} clusters: pin call (resolve, store, push)"),
            format!("{:.0} ms", s.pin_call_ms),
        ));
        rows.push((
            format!("{n} clusters: pin to assignment p50/p99/max"),
            s.fan_out.0.clone(),
        ));
        rows.push((
            format!("{n} clusters: assignment to all Synced reports stored"),
            format!("{:.1} s", s.synced_s),
        ));
        rows.push((
            format!("{n} clusters: /metrics scrape (bytes, series, time)"),
            format!(
                "{:.1} KiB, {}, {:.0} ms",
                s.scrape.0 as f64 / 1024.0,
                s.scrape.1,
                s.scrape.2
            ),
        ));
        stage_json.push(json!({
            "scrape": {"bytes": s.scrape.0, "series": s.scrape.1, "ms": s.scrape.2},
            "clusters": n, "enroll_s": s.enroll_s, "connect_s": s.connect_s,
            "connected": s.connected, "sockets": s.sockets, "rss_mib": s.rss_mib,
            "per_stream_kib": per_stream, "pin_call_ms": s.pin_call_ms,
            "fan_out": s.fan_out.1, "synced_s": s.synced_s,
        }));
    }
    if let Some(r) = &restarted {
        rows.push((
            format!(
                "{} clusters: coordinator restart (SIGTERM) to every agent back",
                r.clusters
            ),
            format!("{:.1} s", r.back_s),
        ));
        rows.push((
            "  half / 99 % of the agents back".into(),
            format!("{:.1} / {:.1} s", r.p50_s, r.p99_s),
        ));
        rows.push((
            "  peak reconnects (most in any 100 ms, per second)".into(),
            format!("{:.0}/s", r.peak_per_s),
        ));
    }
    rows.push((
        format!(
            "status reports ingested/s ({} x {n}, stored)",
            args.burst_reports
        ),
        format!("{reports_per_s:.0}/s"),
    ));
    rows.push((
        "  coordinator CPU time during the burst".into(),
        format!("{burst_cpu_s:.2} s"),
    ));
    rows.push((
        "coordinator RSS after the burst".into(),
        format!("{rss_after_burst:.1} MiB"),
    ));
    rows.push((
        format!("three-wave rollout over {n} clusters, end to end"),
        format!("{rollout_s:.1} s"),
    ));
    rows.push((
        "  coordinator CPU time during the rollout".into(),
        format!("{rollout_cpu_s:.2} s"),
    ));
    rows.extend(wave_rows);
    rows.push((
        format!("  the same with {SITES} sites (mirrors reported; {sites_s:.1} s to add)"),
        format!("{sites_rollout_s:.1} s"),
    ));
    rows.push((
        "coordinator RSS at the end".into(),
        format!("{final_rss:.1} MiB"),
    ));
    let j = json!({
        "base_rss_mib": base_rss, "stages": stage_json,
        "restart": restarted.as_ref().map(|r| json!({
            "clusters": r.clusters, "back_s": r.back_s, "p50_s": r.p50_s,
            "p99_s": r.p99_s, "peak_reconnects_per_s": r.peak_per_s,
        })),
        "status_reports_per_s": reports_per_s, "burst_s": burst_s, "burst_cpu_s": burst_cpu_s,
        "rss_after_burst_mib": rss_after_burst,
        "rollout": {"clusters": n, "seconds": rollout_s, "cpu_s": rollout_cpu_s, "waves": wave_json},
        "rollout_with_sites": {"sites": SITES, "seconds": sites_rollout_s, "setup_s": sites_s, "waves": sites_wave_json},
        "final_rss_mib": final_rss,
        "simulated_reports_sent": fleet.tally.reports.load(Ordering::Relaxed),
    });
    drop(fleet);
    Ok((rows, j))
}

/// Runs `agent-bench` and relays its figures.
fn agent_bench(objects: usize, steady_seconds: u64) -> Result<(Vec<(String, String)>, Value)> {
    let bin = binary("agent-bench", BUILD)?;
    let out = Command::new(bin)
        .args(["--objects", &objects.to_string()])
        .args(["--steady-seconds", &steady_seconds.to_string()])
        .stderr(Stdio::inherit())
        .output()?;
    if !out.status.success() {
        bail!(
            "agent-bench failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    let text = String::from_utf8(out.stdout)?;
    let mut lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let j: Value = serde_json::from_str(lines.pop().context("agent-bench printed nothing")?)?;
    let rows = lines
        .iter()
        .filter_map(|l| {
            let (k, v) = l.trim_end().rsplit_once("  ")?;
            Some((k.trim().to_string(), v.trim().to_string()))
        })
        .collect();
    Ok((rows, j["agent_bench"].clone()))
}

fn git(dir: &std::path::Path, args: &[&str]) -> Result<String> {
    let out = Command::new("git").args(args).current_dir(dir).output()?;
    if !out.status.success() {
        bail!("git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8(out.stdout)?.trim().to_string())
}

/// Median time of `runs` calls of `f`, in ms.
fn median(runs: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    let mut v = vec![];
    for _ in 0..runs {
        let t = Instant::now();
        f()?;
        v.push(ms(t.elapsed()));
    }
    v.sort_by(f64::total_cmp);
    Ok(percentile(&v, 50.0))
}

/// The agent's Git code (gix) against the git CLI, on one repository served
/// by git daemon: 2,000 files, 20 commits.
fn git_bench(dir: &std::path::Path) -> Result<(Vec<(String, String)>, Value)> {
    let server = GitServer::start(&dir.join("git"))?;
    let mut head = String::new();
    for c in 0..20 {
        let files: Vec<(String, String)> = (0..100)
            .map(|i| {
                (
                    format!("clusters/c{}/f{i}.yaml", (c * 100 + i) % 20),
                    format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: f{i}}}\ndata: {{rev: \"{c}\", pad: \"{}\"}}\n", "x".repeat(200)),
                )
            })
            .collect();
        let refs: Vec<(&str, Option<&str>)> = files
            .iter()
            .map(|(p, d)| (p.as_str(), Some(d.as_str())))
            .collect();
        head = server.commit(&format!("c{c}"), &refs)?;
    }
    let url = server.url.clone();
    let commit = ferry_proto::Commit::parse(&head)?;
    let runs = 15;

    // Cold: the pinned commit into an empty cache.
    let mut k = 0;
    let gix_cold = median(runs, || {
        k += 1;
        let source = ferry_agent::source::Source::new(dir.join(format!("gix-cold-{k}")));
        source.ensure(&url, &commit)?;
        Ok(())
    })?;
    let git_cold = median(runs, || {
        k += 1;
        let d = dir.join(format!("git-cold-{k}"));
        std::fs::create_dir_all(&d)?;
        git(&d, &["init", "-q", "--bare"])?;
        git(&d, &["fetch", "-q", "--depth=1", &url, &head])?;
        Ok(())
    })?;

    // No-op: everything is there already.
    let source = ferry_agent::source::Source::new(dir.join("gix-warm"));
    source.ensure(&url, &commit)?;
    let gix_cached = median(runs, || {
        source.ensure(&url, &commit)?;
        Ok(())
    })?;
    source.fetch_refs(&url)?;
    let gix_noop = median(runs, || {
        source.fetch_refs(&url)?;
        Ok(())
    })?;
    let warm = dir.join("git-warm");
    std::fs::create_dir_all(&warm)?;
    git(&warm, &["init", "-q", "--bare"])?;
    git(&warm, &["remote", "add", "origin", &url])?;
    git(
        &warm,
        &["fetch", "-q", "origin", "+refs/heads/*:refs/heads/*"],
    )?;
    let git_noop = median(runs, || {
        git(
            &warm,
            &["fetch", "-q", "origin", "+refs/heads/*:refs/heads/*"],
        )?;
        Ok(())
    })?;
    let rows = vec![
        (
            "cold fetch of the pinned commit: gix (agent)".to_string(),
            format!("{gix_cold:.1} ms"),
        ),
        (
            "cold fetch of the pinned commit: git fetch --depth=1".to_string(),
            format!("{git_cold:.1} ms"),
        ),
        (
            "  ratio gix / git".to_string(),
            format!("{:.2}", gix_cold / git_cold),
        ),
        (
            "no-op fetch (up to date): gix".to_string(),
            format!("{gix_noop:.1} ms"),
        ),
        (
            "no-op fetch (up to date): git fetch".to_string(),
            format!("{git_noop:.1} ms"),
        ),
        (
            "  ratio gix / git".to_string(),
            format!("{:.2}", gix_noop / git_noop),
        ),
        (
            "agent sync of a cached pinned commit (no network)".to_string(),
            format!("{gix_cached:.2} ms"),
        ),
    ];
    Ok((
        rows,
        json!({
            "files": 2000, "commits": 20, "runs": runs,
            "gix_cold_ms": gix_cold, "git_cold_ms": git_cold,
            "gix_noop_ms": gix_noop, "git_noop_ms": git_noop,
            "noop_ratio": gix_noop / git_noop, "cold_ratio": gix_cold / git_cold,
            "agent_cached_ms": gix_cached,
        }),
    ))
}

/// Commits for the air-gap bench, through `git fast-import` into `repo`:
/// `commits` commits on main after `from` (or a first one adding `files`
/// files), each changing 10 files.
fn fast_import(
    repo: &std::path::Path,
    from: Option<&str>,
    files: usize,
    commits: usize,
    seed: usize,
) -> Result<()> {
    use std::io::Write;
    let mut input = String::new();
    let file = |i: usize, rev: usize| {
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: f{i}}}\ndata: {{rev: \"{rev}\", pad: \"{}\"}}\n",
            "x".repeat(120)
        )
    };
    for c in 0..commits {
        let n = seed + c;
        let msg = format!("commit {n}");
        input.push_str(&format!(
            "commit refs/heads/main\ncommitter Bench <bench@example.com> {} +0000\ndata {}\n{msg}\n",
            1_700_000_000 + n,
            msg.len()
        ));
        match (c, from) {
            (0, Some(f)) => input.push_str(&format!("from {f}\n")),
            (0, None) => {}
            _ => {}
        }
        let changed: Vec<usize> = if c == 0 && from.is_none() {
            (0..files).collect()
        } else {
            (0..10).map(|k| (n * 10 + k) % files).collect()
        };
        for i in changed {
            let data = file(i, n);
            input.push_str(&format!(
                "M 100644 inline clusters/c{}/f{i}.yaml\ndata {}\n{data}\n",
                i % 50,
                data.len()
            ));
        }
        input.push('\n');
    }
    let mut child = Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(["fast-import", "--quiet"])
        .stdin(Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(input.as_bytes())?;
    if !child.wait()?.success() {
        bail!("git fast-import failed");
    }
    Ok(())
}

/// Bundles across an air gap: `ferry bundle create` + `import` against
/// `git bundle create` + `git fetch` from the bundle, on a repository of
/// 10,000 files and 1,000 commits; then an incremental bundle.
fn airgap_bench(dir: &std::path::Path) -> Result<(Vec<(String, String)>, Value)> {
    let ferry = binary("ferry", BUILD)?;
    std::fs::create_dir_all(dir)?;
    let up = dir.join("up.git");
    git(
        dir,
        &[
            "init",
            "-q",
            "--bare",
            "-b",
            "main",
            up.to_str().context("utf-8")?,
        ],
    )?;
    fast_import(&up, None, 10_000, 1_000, 0)?;
    let run = |args: &[&str]| -> Result<()> {
        let out = Command::new(&ferry).args(args).output()?;
        if !out.status.success() {
            bail!("ferry {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    };
    let p = |x: &std::path::Path| x.display().to_string();
    let key = dir.join("bench.key");
    run(&["bundle", "keygen", "--out", &p(&key)])?;
    let trust = format!("{}.pub", p(&key));
    let runs = 3;
    let mut k = 0;
    let git_full = median(runs, || {
        k += 1;
        let b = dir.join(format!("git-{k}.bundle"));
        git(&up, &["bundle", "create", "-q", &p(&b), "main"])?;
        let m = dir.join(format!("git-mirror-{k}.git"));
        git(dir, &["init", "-q", "--bare", &p(&m)])?;
        git(&m, &["fetch", "-q", &p(&b), "refs/heads/*:refs/heads/*"])?;
        Ok(())
    })?;
    let ferry_full = median(runs, || {
        k += 1;
        let f = dir.join(format!("full-{k}.ferry"));
        run(&[
            "bundle",
            "create",
            "--repo",
            &p(&up),
            "--ref",
            "main",
            "--key",
            &p(&key),
            "--out",
            &p(&f),
        ])?;
        run(&[
            "bundle",
            "import",
            &p(&f),
            "--into",
            &p(&dir.join(format!("mirror-{k}.git"))),
            "--trust",
            &trust,
        ])?;
        Ok(())
    })?;
    // The last full bundle and its mirror, then ten more commits.
    let full = dir.join(format!("full-{k}.ferry"));
    let mirror = dir.join(format!("mirror-{k}.git"));
    let full_bytes = std::fs::metadata(&full)?.len();
    let head = git(&up, &["rev-parse", "main"])?;
    fast_import(&up, Some(&head), 10_000, 10, 1_000)?;
    let inc = dir.join("inc.ferry");
    let t = Instant::now();
    run(&[
        "bundle",
        "create",
        "--repo",
        &p(&up),
        "--ref",
        "main",
        "--since-bundle",
        &p(&full),
        "--key",
        &p(&key),
        "--out",
        &p(&inc),
    ])?;
    run(&[
        "bundle",
        "import",
        &p(&inc),
        "--into",
        &p(&mirror),
        "--trust",
        &trust,
    ])?;
    let inc_ms = ms(t.elapsed());
    let inc_bytes = std::fs::metadata(&inc)?.len();
    let rows = vec![
        (
            "repository".to_string(),
            "10,000 files, 1,000 commits".to_string(),
        ),
        (
            "git bundle create + git fetch from it (median of 3)".to_string(),
            format!("{git_full:.0} ms"),
        ),
        (
            "ferry bundle create + import (signed, verified; median of 3)".to_string(),
            format!("{ferry_full:.0} ms"),
        ),
        (
            "  ratio ferry / git".to_string(),
            format!("{:.2}", ferry_full / git_full),
        ),
        (
            "full bundle".to_string(),
            format!("{:.1} MiB", full_bytes as f64 / 1048576.0),
        ),
        (
            "incremental bundle: 10 commits, 100 files changed".to_string(),
            format!("{:.1} KiB", inc_bytes as f64 / 1024.0),
        ),
        (
            "  its create + import".to_string(),
            format!("{inc_ms:.0} ms"),
        ),
    ];
    Ok((
        rows,
        json!({
            "files": 10_000, "commits": 1_000, "runs": runs,
            "git_ms": git_full, "ferry_ms": ferry_full, "ratio": ferry_full / git_full,
            "full_bytes": full_bytes, "incremental_bytes": inc_bytes, "incremental_ms": inc_ms,
        }),
    ))
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    ferry_integration::harness::init_crypto();
    let nofile = raise_nofile();
    let tmp = tempfile::tempdir()?;
    let mut out = serde_json::Map::new();
    out.insert(
        "cores".into(),
        json!(std::thread::available_parallelism()?.get()),
    );
    out.insert("nofile".into(), json!(nofile));
    if !args.skip_fleet {
        // Each process (this one, the coordinator) holds one socket per cluster.
        let need = args.clusters.iter().max().copied().unwrap_or(0) as u64 + 512;
        if nofile < need {
            bail!("the open-file limit is {nofile}; {need} are needed (ulimit -n)");
        }
        let (rows, j) = fleet_bench(&args, &tmp.path().join("fleet")).await?;
        print_table(
            &format!(
                "Coordinator on {} (ferry serve, own process; simulated agents over mTLS)",
                if args.store == "postgres" {
                    "PostgreSQL"
                } else {
                    "SQLite"
                }
            ),
            &rows,
        );
        out.insert("coordinator".into(), j);
    }
    if args.ha_clusters > 0 {
        let (rows, j) = ha_bench(&args, &tmp.path().join("ha")).await?;
        print_table(
            "Two coordinators on PostgreSQL (own processes; simulated agents, half on each)",
            &rows,
        );
        out.insert("replicas".into(), j);
    }
    if !args.skip_git {
        let dir = tmp.path().join("gitbench");
        let (rows, j) = tokio::task::spawn_blocking(move || git_bench(&dir)).await??;
        print_table("Git (git daemon, 2,000 files; median of 15)", &rows);
        out.insert("git".into(), j);
    }
    if !args.skip_airgap {
        let dir = tmp.path().join("airgap");
        let (rows, j) = tokio::task::spawn_blocking(move || airgap_bench(&dir)).await??;
        print_table("Air gap (signed bundles into a mirror)", &rows);
        out.insert("airgap".into(), j);
    }
    if !args.skip_agent {
        let mut runs = vec![];
        for &objects in &args.agent_objects {
            let steady = args.agent_steady_seconds;
            let (rows, j) =
                tokio::task::spawn_blocking(move || agent_bench(objects, steady)).await??;
            print_table(
                &format!("Agent at {objects} objects (ferry-agent process, emulated API server)"),
                &rows,
            );
            runs.push(j);
        }
        out.insert("agent".into(), json!(runs));
    }
    println!("{}", json!({ "ferry_bench": out }));
    Ok(())
}
