//! The real binaries as processes: exit codes, fatal start-up errors, and
//! a SIGTERM that drains instead of killing.

use crate::fleet::{app, pin};
use ferry_integration::harness::{eventually, init_tracing, workspace_binary};
use ferry_integration::world::{World, WorldConfig};
use ferry_proto::v1::Phase;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn agent_bin() -> std::path::PathBuf {
    workspace_binary("ferry-agent", "ferry-agent")
}

fn ferry_bin() -> std::path::PathBuf {
    workspace_binary("ferry-coordinator", "ferry")
}

fn run(bin: &std::path::Path, args: &[&str]) -> Output {
    Command::new(bin)
        .args(args)
        .env_remove("FERRY_COORDINATOR")
        .env_remove("FERRY_CLUSTER")
        .output()
        .expect("the binary runs")
}

/// Waits for a child to exit, at most `limit`; kills it past that.
fn wait_exit(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Some(s) = child.try_wait().expect("waiting on the child") {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

fn sigterm(child: &Child) {
    let pid = rustix::process::Pid::from_raw(child.id() as i32).expect("a pid");
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).expect("signal sent");
}

#[test]
fn help_version_and_usage_errors_exit_as_documented() {
    let agent = agent_bin();
    let help = run(&agent, &["--help"]);
    assert_eq!(help.status.code(), Some(0), "{help:?}");
    assert!(String::from_utf8_lossy(&help.stdout).contains("--coordinator"));
    assert_eq!(run(&agent, &["--version"]).status.code(), Some(0));
    let bad = run(&agent, &["--no-such-flag"]);
    assert_eq!(bad.status.code(), Some(64), "{bad:?}");
    assert_eq!(
        run(&agent, &[]).status.code(),
        Some(64),
        "missing required flags"
    );
    let bad_name = run(
        &agent,
        &["--coordinator", "https://x:1", "--cluster", "Not_A_Name"],
    );
    assert_eq!(bad_name.status.code(), Some(64), "{bad_name:?}");
    assert!(String::from_utf8_lossy(&bad_name.stderr).contains("Not_A_Name"));

    let ferry = ferry_bin();
    assert_eq!(run(&ferry, &["--help"]).status.code(), Some(0));
    assert_eq!(run(&ferry, &["rollout", "--help"]).status.code(), Some(0));
    assert_eq!(run(&ferry, &["no-such-command"]).status.code(), Some(64));
    let completion = run(&ferry, &["completion", "bash"]);
    assert_eq!(completion.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&completion.stdout).contains("rollout"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fatal_start_up_error_exits_non_zero_at_once() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let mut world = World::start(dir.path(), WorldConfig::default())
        .await
        .unwrap();
    let i = world.add_cluster_without_agent("lost", &[]).await.unwrap();
    // No identity in the cluster and no join token: nothing to wait for.
    let mut args = world.agent_args(i);
    let at = args.iter().position(|a| a == "--join-token").unwrap();
    args.drain(at..at + 2);
    args.extend(["--log-format".to_string(), "json".to_string()]);
    let mut child = Command::new(agent_bin())
        .args(&args)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_exit(&mut child, Duration::from_secs(20)).expect("the agent exited");
    assert_eq!(status.code(), Some(1));
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(err.contains("has no identity yet"), "{err}");
    let logged: Vec<serde_json::Value> = err
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert!(
        logged.iter().any(|l| l["level"] == "ERROR"),
        "--log-format json logs JSON lines: {err}"
    );

    // A kubeconfig that is not there.
    let missing = dir.path().join("nope.kubeconfig");
    let mut args = world.agent_args(i);
    let at = args.iter().position(|a| a == "--kubeconfig").unwrap();
    args[at + 1] = missing.display().to_string();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(agent_bin()).args(&args).output().unwrap()
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("nope.kubeconfig"),
        "{out:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_drains_a_sync_in_progress_and_says_goodbye() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let mut world = World::start(dir.path(), WorldConfig::default())
        .await
        .unwrap();
    let a = world
        .git
        .commit("A", &[("clusters/p1/app.yaml", Some(&app("p1", "1.0")))])
        .unwrap();
    let i = world.add_cluster_without_agent("p1", &[]).await.unwrap();
    let log_path = dir.path().join("agent.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut child = Command::new(agent_bin())
        .args(world.agent_args(i))
        .env("FERRY_LOG", "info,ferry_agent=debug")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let agent_log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    world.wait_connected(&["p1"]).await;
    pin(&world, &["p1"], &a).await.unwrap();
    world.wait_healthy_at("p1", &a).await;

    // B: a workload that stays Progressing in wave 0, so the agent sits in
    // its wait before wave 1 (up to five minutes).
    let stuck = "apiVersion: apps/v1\nkind: StatefulSet\nmetadata:\n  name: stuck\n  namespace: shop\nspec:\n  replicas: 1\n  serviceName: stuck\n  selector: {matchLabels: {app: stuck}}\n  template:\n    metadata: {labels: {app: stuck}}\n    spec: {containers: [{name: s, image: 'busybox:never-ready'}]}\n";
    let later = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: later\n  namespace: shop\n  annotations: {ferry.dev/wave: '1'}\ndata: {a: b}\n";
    let b = world
        .git
        .commit(
            "B",
            &[
                ("clusters/p1/stuck.yaml", Some(stuck)),
                ("clusters/p1/later.yaml", Some(later)),
            ],
        )
        .unwrap();
    pin(&world, &["p1"], &b).await.unwrap();
    let emu = world.emulator("p1");
    eventually("the agent waiting on wave 0", || async {
        emu.object("apps", "statefulsets", Some("shop"), "stuck")
            .map(|_| ())
    })
    .await;

    let t = Instant::now();
    sigterm(&child);
    let status = tokio::task::spawn_blocking(move || {
        let s = wait_exit(&mut child, Duration::from_secs(15));
        (s, child)
    })
    .await
    .unwrap()
    .0
    .expect("the agent stopped within its grace period");
    assert_eq!(status.code(), Some(0), "a drained stop exits 0");
    assert!(
        t.elapsed() < Duration::from_secs(8),
        "the wave wait ignored the stop: {:?}",
        t.elapsed()
    );
    let c = eventually("the coordinator to see the agent go", || async {
        world.cluster("p1").await.ok().filter(|c| !c.connected)
    })
    .await;
    assert!(
        !agent_log().contains('\x1b'),
        "no colour codes in logs that do not go to a terminal"
    );
    let s = c.status.expect("a last status");
    assert!(
        s.message.contains("the agent stopped"),
        "{s:?}\nagent log:\n{}",
        agent_log()
    );
    assert_ne!(
        s.phase,
        Phase::Failed as i32,
        "a stop is not a failed sync: {s:?}"
    );
    assert!(
        emu.object("", "configmaps", Some("shop"), "later")
            .is_none(),
        "wave 1 must not start during a stop"
    );
}

/// The README's first command, `ferry-sandbox`, reaches its end (a staged
/// rollout across six clusters), and every command it then tells a newcomer
/// to try works as printed: the CLI against its coordinator, `kubectl`
/// against an emulated cluster, `git` on the fleet repository.
#[test]
fn the_sandbox_finishes_and_every_command_it_prints_works() {
    ferry_bin(); // what `cargo run --bin ferry` would run, next to the sandbox
    let sandbox = workspace_binary("ferry-integration", "ferry-sandbox");
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(&sandbox)
        .args(["--exit-when-done", "--run-suggestions", "--dir"])
        .arg(dir.path())
        .env_remove("KUBECONFIG")
        .stdin(Stdio::null())
        .output()
        .expect("ferry-sandbox runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for expected in [
        "succeeded: every cluster runs",
        // what 2.0 would change, before the rollout, and going back to 1.0
        "canary-eu: 0 to create, 2 to change, 0 to prune, 2 unchanged",
        "spec.template.spec.containers[0].image: \"example.com/storefront:1.0\" -> \"example.com/storefront:2.0\"",
        "us-2: 0 to create, 2 to change, 0 to prune, 2 unchanged",
        // the ship: its mirror lags, its wave waits, a bundle crosses
        "ship-1: not previewed: waiting for mirror ship to hold",
        "waiting for mirror ship to hold",
        "crossed and was imported",
        "site ship holds 2 commit(s)",
        "Preview of ",
        "export FERRY_ADDR=",
        // `ferry clusters`, `rollout status --watch`, `pin`, `kubectl get
        // all`, `git log`: each one's own output.
        "canary-eu",
        "Signed by:  SSH SHA256:",
        "Succeeded",
        "eu-1: ",
        "deployment.apps/storefront",
        "service/storefront",
        // the agent's events, its status ConfigMap, the coordinator's metrics
        "Applied",
        "appliedCommit:",
        "ferry_clusters{phase=\"synced\",health=\"healthy\"}",
        "storefront 2.0",
        "Every suggested command ran.",
    ] {
        assert!(stdout.contains(expected), "no {expected:?} in:\n{stdout}");
    }
}

/// `ferry-sandbox --ha`: two coordinators on PostgreSQL; the one driving
/// rollouts stops, its agents move to the other, which takes the rollouts
/// lease over and runs the staged rollout to the end.
#[test]
fn the_sandbox_in_ha_mode_survives_its_first_coordinator() {
    let sandbox = workspace_binary("ferry-integration", "ferry-sandbox");
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(&sandbox)
        .args(["--ha", "--exit-when-done", "--dir"])
        .arg(dir.path())
        .env_remove("KUBECONFIG")
        .stdin(Stdio::null())
        .output()
        .expect("ferry-sandbox runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    for expected in [
        "sharing PostgreSQL",
        "coordinator A stops",
        "B took over driving rollouts",
        "succeeded: every cluster runs",
    ] {
        assert!(stdout.contains(expected), "{expected:?} missing:\n{stdout}");
    }
    assert!(!stderr.contains("ERROR"), "{stderr}");
}
