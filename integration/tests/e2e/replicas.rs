//! Several coordinators on one PostgreSQL database: what an operator does
//! through one replica reaches agents connected to another.

use crate::fleet::{app, edge_commits, setting};
use ferry_integration::harness::{eventually, init_tracing};
use ferry_integration::postgres::Scratch;
use ferry_integration::world::{World, WorldConfig};
use std::time::Duration;

/// `ferry` run against another replica than the world's own.
async fn ferry_at(world: &World, addr: std::net::SocketAddr, args: &[&str]) -> String {
    try_ferry_at(world, addr, args).await.unwrap()
}

/// `ferry` against a replica, as it answers (refusals included).
async fn try_ferry_at(
    world: &World,
    addr: std::net::SocketAddr,
    args: &[&str],
) -> anyhow::Result<String> {
    try_ferry_via(world, &format!("https://{addr}"), args).await
}

/// `ferry --addr ADDR …` (one replica's address or several).
async fn try_ferry_via(world: &World, coordinator: &str, args: &[&str]) -> anyhow::Result<String> {
    let mut argv: Vec<String> = vec!["ferry".into()];
    let mut flags = world.cli_flags();
    flags[1] = coordinator.to_string();
    argv.extend(flags);
    argv.extend(args.iter().map(|s| s.to_string()));
    let parsed = <ferry_coordinator::cli::Args as clap::Parser>::try_parse_from(argv)?;
    ferry_coordinator::cli::execute(parsed).await
}

/// A world whose coordinator keeps its state in a throwaway PostgreSQL
/// (kept as long as the world).
async fn on_postgres(dir: &std::path::Path) -> (Scratch, World) {
    on_postgres_with(dir, WorldConfig::default()).await
}

/// As [`on_postgres`], the rest of the world as `cfg` says.
async fn on_postgres_with(dir: &std::path::Path, cfg: WorldConfig) -> (Scratch, World) {
    let pg = Scratch::start().unwrap();
    let dsn = pg.create("fleet").await.unwrap();
    let world = World::start(
        dir,
        WorldConfig {
            store: Some(dsn),
            ..cfg
        },
    )
    .await
    .unwrap();
    (pg, world)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pin_through_one_replica_reaches_an_agent_on_another() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let (_pg, mut world) = on_postgres(dir.path()).await;
    let (a, b) = edge_commits(&world);
    world.add_cluster("edge", &[]).await.unwrap();
    world.wait_connected(&["edge"]).await;
    // The agent is connected to the world's coordinator; the operator
    // talks to the second replica only.
    let replica = world.start_replica("replica-b").await.unwrap();
    assert!(!replica.hub.connected("edge"));
    ferry_at(
        &world,
        replica.addr,
        &["pin", "edge", "--commit", &a, "--reason", "via b"],
    )
    .await;
    world.wait_healthy_at("edge", &a).await;
    assert_eq!(setting(world.emulator("edge")).as_deref(), Some("1.0"));

    // A preview asked through the second replica is relayed to the agent
    // on the first, and its answer comes back.
    let diff = ferry_at(&world, replica.addr, &["diff", "edge", "--commit", &b]).await;
    assert!(diff.contains("edge: 0 to create, 2 to change"), "{diff}");
    assert!(diff.contains("\"1.0\" -> \"2.0\""), "{diff}");

    // Pushed by the replica the agent is on, when the other one committed
    // it: the agent does not reconnect or poll for its assignment.
    ferry_at(&world, replica.addr, &["pin", "edge", "--commit", &b]).await;
    world.wait_healthy_at("edge", &b).await;
    let history = ferry_at(&world, replica.addr, &["history", "edge"]).await;
    assert!(history.contains("via b"), "{history}");

    // A site added through the second replica is known to the first (its
    // assignments name the site's mirror).
    let primary = world.coordinator.as_ref().unwrap().hub.clone();
    assert!(!primary.has_sites());
    let mirror = world.git.url.clone();
    ferry_at(
        &world,
        replica.addr,
        &[
            "site",
            "add",
            "dock",
            "--mirror",
            &mirror,
            "--selector",
            "site=dock",
        ],
    )
    .await;
    eventually("the first replica knows the site", || async {
        primary.has_sites().then_some(())
    })
    .await;

    // A revocation through the second replica ends the session on the
    // first at once, and the agent is refused when it comes back.
    ferry_at(&world, replica.addr, &["cluster", "revoke", "edge"]).await;
    eventually("the revoked cluster's session ends", || async {
        (!primary.connected("edge")).then_some(())
    })
    .await;
    replica.stop(Duration::from_secs(5)).await.unwrap();
}

/// The replica driving a rollout dies while it waits for approval: the
/// other takes over within 10 s (a command asked meanwhile waits for it),
/// finishes it, and the ledger has exactly one pin per cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rollout_survives_its_leader() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let (_pg, mut world) = on_postgres(dir.path()).await;
    let names = ["c1", "c2"];
    let (_, v2, plan) = two_clusters_and_a_plan(&mut world, dir.path()).await;

    // Replica B takes the lead once the first coordinator is gone; the
    // first comes back (agents reconnect to it) and follows.
    let b = world.start_replica("replica-b").await.unwrap();
    world.stop_coordinator().await.unwrap();
    let started = eventually("replica B leads and starts the rollout", || async {
        try_ferry_at(&world, b.addr, &["rollout", "start", "-f", &plan])
            .await
            .ok()
    })
    .await;
    let id = started.split_whitespace().nth(2).unwrap().to_string();
    world.start_coordinator().await.unwrap();
    // Events the leader (B) writes reach a watch on the other replica.
    let mut watch = world
        .admin()
        .await
        .unwrap()
        .watch_events(ferry_proto::v1::WatchEventsRequest {
            rollout: id.clone(),
            after_id: 0,
        })
        .await
        .unwrap()
        .into_inner();
    world.wait_connected(&names).await;
    world.wait_healthy_at("c1", &v2).await;
    eventually("the rollout waits for approval", || async {
        let out = world.ferry(&["rollout", "status", &id]).await.ok()?;
        out.contains("AwaitingApproval").then_some(())
    })
    .await;

    let seen = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(e) = watch.message().await.unwrap() {
            if e.message.contains("waits for approval") {
                return e;
            }
        }
        panic!("the watch ended");
    })
    .await
    .expect("B's events reach a watch on the first coordinator");
    assert_eq!(seen.rollout, id);

    // B dies. An approval through the first coordinator, asked while B's
    // lease still runs, is relayed and waits: whichever replica leads next
    // (here the first itself, once the lease has run out) carries it out.
    let killed = std::time::Instant::now();
    b.stop(Duration::from_secs(5)).await.unwrap();
    let approved = world.ferry(&["rollout", "approve", &id]).await.unwrap();
    let took = killed.elapsed();
    assert!(approved.contains("Running"), "{approved}");
    assert!(took < Duration::from_secs(10), "took over after {took:?}");
    world.wait_healthy_at("c2", &v2).await;
    eventually("the rollout succeeds", || async {
        let out = world.ferry(&["rollout", "status", &id]).await.ok()?;
        out.contains("Succeeded").then_some(())
    })
    .await;
    one_pin_each(&world, &names, &id).await;
}

/// Rollout commands through a replica that does not drive rollouts are
/// carried out by the one that does, refusals included, as if asked of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rollout_commands_through_any_replica() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let (_pg, mut world) = on_postgres(dir.path()).await;
    let names = ["c1", "c2"];
    let (_, v2, plan) = two_clusters_and_a_plan(&mut world, dir.path()).await;
    // The first coordinator drives rollouts (it was there first); B only
    // relays.
    let b = world.start_replica("replica-b").await.unwrap();
    let started = ferry_at(&world, b.addr, &["rollout", "start", "-f", &plan]).await;
    let id = started.split_whitespace().nth(2).unwrap().to_string();
    assert!(id.starts_with('r'), "{started}");
    world.wait_healthy_at("c1", &v2).await;
    eventually("the rollout waits for approval", || async {
        let out = ferry_at(&world, b.addr, &["rollout", "status", &id]).await;
        out.contains("AwaitingApproval").then_some(())
    })
    .await;

    // A refusal comes back as the leader said it.
    let refused = try_ferry_at(&world, b.addr, &["rollout", "resume", &id])
        .await
        .expect_err("resuming a rollout that is not paused");
    assert!(refused.to_string().contains("cannot resume"), "{refused}");
    let paused = ferry_at(&world, b.addr, &["rollout", "pause", &id]).await;
    assert!(paused.contains("Paused"), "{paused}");
    let out = world.ferry(&["rollout", "status", &id]).await.unwrap();
    assert!(out.contains("Paused"), "the leader holds it paused: {out}");
    ferry_at(&world, b.addr, &["rollout", "resume", &id]).await;
    ferry_at(&world, b.addr, &["rollout", "approve", &id]).await;
    world.wait_healthy_at("c2", &v2).await;
    eventually("the rollout succeeds", || async {
        let out = world.ferry(&["rollout", "status", &id]).await.ok()?;
        out.contains("Succeeded").then_some(())
    })
    .await;
    // Each command was carried out once: one pin per cluster.
    one_pin_each(&world, &names, &id).await;
}

/// Asserts the ledger holds exactly one pin of each cluster by rollout `id`.
async fn one_pin_each(world: &World, names: &[&str], id: &str) {
    let history = world
        .admin()
        .await
        .unwrap()
        .history(ferry_proto::v1::HistoryRequest {
            cluster: String::new(),
            limit: 1000,
        })
        .await
        .unwrap()
        .into_inner()
        .entries;
    for n in names {
        let pins = history
            .iter()
            .filter(|e| e.cluster == *n && e.rollout == id)
            .count();
        assert_eq!(pins, 1, "{n}: one pin by {id}: {history:?}");
    }
}

/// "Connected" through any replica means a session with a live replica:
/// an agent that goes away, or whose coordinator stops, is said so by the
/// other replicas within seconds, not after its heartbeats lapse.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connected_means_a_live_session_on_some_replica() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let (_pg, mut world) = on_postgres(dir.path()).await;
    world.add_cluster("c1", &[]).await.unwrap();
    world.wait_connected(&["c1"]).await;
    let b = world.start_replica("replica-b").await.unwrap();
    assert!(
        connected_via(&world, b.addr, "c1").await,
        "B knows the session on A"
    );

    // The agent goes: B says so within seconds (heartbeats are 15 s apart).
    let i = world.index("c1");
    world.stop_agent(i).await.unwrap();
    let gone = std::time::Instant::now();
    eventually("B sees the session ended", || async {
        (!connected_via(&world, b.addr, "c1").await).then_some(())
    })
    .await;
    assert!(
        gone.elapsed() < Duration::from_secs(10),
        "{:?}",
        gone.elapsed()
    );
    world.start_agent(i);
    eventually("B sees the new session", || async {
        connected_via(&world, b.addr, "c1").await.then_some(())
    })
    .await;

    // Its coordinator stops (the agent knows no other): B says so too.
    world.stop_coordinator().await.unwrap();
    let gone = std::time::Instant::now();
    eventually("B sees A gone with its sessions", || async {
        (!connected_via(&world, b.addr, "c1").await).then_some(())
    })
    .await;
    assert!(
        gone.elapsed() < Duration::from_secs(10),
        "{:?}",
        gone.elapsed()
    );
}

/// A database that stalls holds up neither the agents' sessions nor the
/// coordinator's memory: reports arriving meanwhile wait as one per
/// cluster (each supersedes the last), and the newest is stored once the
/// database moves again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reports_wait_for_a_stalled_database_one_per_cluster() {
    use crate::operations::{metrics, sample};
    use crate::security::{enrolled, session_as, status};
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let metrics_on = WorldConfig {
        metrics: true,
        ..WorldConfig::default()
    };
    let (pg, world) = on_postgres_with(dir.path(), metrics_on).await;
    let loud = enrolled(&world, "loud").await;
    let (tx, _stream) = session_as(&world, &loud, "loud").await;
    eventually("the session is up", || async {
        world.cluster("loud").await.ok()?.connected.then_some(())
    })
    .await;

    // Writes to clusters wait until this transaction ends.
    let (stall, connection) =
        tokio_postgres::connect(&pg.socket_dsn("fleet"), tokio_postgres::NoTls)
            .await
            .unwrap();
    tokio::spawn(connection);
    stall
        .batch_execute("BEGIN; LOCK TABLE clusters IN SHARE MODE")
        .await
        .unwrap();
    let report = |n: u64| {
        status(ferry_proto::v1::StatusReport {
            drift_corrections: n,
            ..Default::default()
        })
    };
    for n in 1..=20 {
        tx.send(report(n)).await.unwrap();
    }
    let c = world.coordinator_metrics().unwrap();
    let superseded = r#"ferry_status_reports_total{result="superseded"}"#;
    eventually(
        "the reports after the first supersede each other",
        || async { (sample(&metrics(c).await, superseded) >= Some(18.0)).then_some(()) },
    )
    .await;
    stall.batch_execute("COMMIT").await.unwrap();
    eventually("the newest report stored", || async {
        let s = world.cluster("loud").await.ok()?.status?;
        (s.drift_corrections == 20).then_some(())
    })
    .await;
    let body = metrics(c).await;
    let stored = sample(&body, r#"ferry_status_reports_total{result="stored"}"#).unwrap();
    let superseded = sample(&body, superseded).unwrap();
    assert_eq!(stored + superseded, 20.0, "{body}");
    assert!(stored <= 2.0, "one write per round: {body}");
}

/// Whether a replica says a cluster is connected.
async fn connected_via(world: &World, addr: std::net::SocketAddr, cluster: &str) -> bool {
    let out = ferry_at(world, addr, &["-o", "json", "cluster", "show", cluster]).await;
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["connected"].as_bool().unwrap()
}

/// Clusters c1 and c2 healthy at v1 of an app, and a plan (a file under
/// `dir`) rolling them to v2 in two waves, the second awaiting approval:
/// (v1, v2, the plan's path).
async fn two_clusters_and_a_plan(
    world: &mut World,
    dir: &std::path::Path,
) -> (String, String, String) {
    let names = ["c1", "c2"];
    let commit = |msg: &str, v: &str| {
        let files: Vec<(String, String)> = names
            .iter()
            .map(|n| (format!("clusters/{n}/app.yaml"), app(n, v)))
            .collect();
        let refs: Vec<(&str, Option<&str>)> = files
            .iter()
            .map(|(p, c)| (p.as_str(), Some(c.as_str())))
            .collect();
        world.git.commit(msg, &refs).unwrap()
    };
    let (v1, v2) = (commit("v1", "1.0"), commit("v2", "2.0"));
    for n in names {
        world.add_cluster(n, &[]).await.unwrap();
    }
    world.wait_connected(&names).await;
    world
        .ferry(&["pin", "c1", "c2", "--commit", &v1])
        .await
        .unwrap();
    for n in names {
        world.wait_healthy_at(n, &v1).await;
    }
    let plan = dir.join("plan.yaml");
    std::fs::write(
        &plan,
        format!(
            "ref: {v2}\ndefaults:\n  bake: 0s\nwaves:\n  - name: one\n    names: [c1]\n  - name: two\n    names: [c2]\n    approval: true\n"
        ),
    )
    .unwrap();
    (v1, v2, plan.to_str().unwrap().to_string())
}

/// An agent given two replicas' addresses: its coordinator goes away and
/// it carries on with the other by itself (a full resync there), taking
/// new pins from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_agent_fails_over_to_another_replica() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let (_pg, mut world) = on_postgres(dir.path()).await;
    let (a, b) = edge_commits(&world);
    let replica = world.start_replica("replica-b").await.unwrap();
    world.replicas.push(replica.addr);
    world.add_cluster("edge", &[]).await.unwrap();
    eventually("the agent connects to a replica", || async {
        (world.coordinator.as_ref().unwrap().hub.connected("edge") || replica.hub.connected("edge"))
            .then_some(())
    })
    .await;
    ferry_at(&world, replica.addr, &["pin", "edge", "--commit", &a]).await;
    world.wait_healthy_at("edge", &a).await;

    // Whichever replica it is on goes away; it moves to the other.
    let (survivor, addr, gone) = if replica.hub.connected("edge") {
        let gone = replica.addr;
        replica.stop(Duration::from_secs(5)).await.unwrap();
        (
            world.coordinator.as_ref().unwrap().hub.clone(),
            world.coordinator_addr,
            gone,
        )
    } else {
        world.stop_coordinator().await.unwrap();
        (replica.hub.clone(), replica.addr, world.coordinator_addr)
    };
    eventually("the agent reconnects to the other replica", || async {
        survivor.connected("edge").then_some(())
    })
    .await;
    // The operator's CLI, given both replicas, gets past the one gone.
    let both = format!("https://{gone},https://{addr}");
    try_ferry_via(&world, &both, &["pin", "edge", "--commit", &b])
        .await
        .unwrap();
    let refused = try_ferry_via(&world, &format!("https://{gone}"), &["clusters"])
        .await
        .expect_err("no coordinator there");
    assert!(
        refused.to_string().contains(&gone.to_string()),
        "{refused:#}"
    );
    eventually("the agent applies B", || async {
        (setting(world.emulator("edge")).as_deref() == Some("2.0")).then_some(())
    })
    .await;
}

/// The database goes away: the coordinator keeps its agents' sessions,
/// refuses a pin with an error that says why, and carries on once the
/// database is back, without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_coordinator_outlives_its_database() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let (mut pg, mut world) = on_postgres(dir.path()).await;
    let (a, b) = edge_commits(&world);
    world.add_cluster("edge", &[]).await.unwrap();
    world.wait_connected(&["edge"]).await;
    world.ferry(&["pin", "edge", "--commit", &a]).await.unwrap();
    world.wait_healthy_at("edge", &a).await;

    pg.kill();
    let e = world
        .ferry(&["pin", "edge", "--commit", &b])
        .await
        .expect_err("no database, no pin");
    let text = format!("{e:#}");
    assert!(text.contains("database"), "{text}");
    assert!(text.contains("PostgreSQL"), "{text}");
    let hub = world.coordinator.as_ref().unwrap().hub.clone();
    assert!(hub.connected("edge"), "the agent's session is kept");
    assert_eq!(setting(world.emulator("edge")).as_deref(), Some("1.0"));

    pg.restart().unwrap();
    eventually("a pin goes through once the database is back", || async {
        world.ferry(&["pin", "edge", "--commit", &b]).await.ok()
    })
    .await;
    world.wait_healthy_at("edge", &b).await;
    assert!(hub.connected("edge"));
}
