//! Real faults: a cluster rebuilt from scratch (same CA, then a new one),
//! coordinator restarts in quick succession, an agent killed during its
//! first sync while the coordinator is down.

use crate::fleet::{app, pin, setting};
use ferry_integration::harness::{eventually, init_tracing, kube_client};
use ferry_integration::world::{World, WorldConfig};
use ferry_proto::v1::Phase;
use std::time::{Duration, Instant};

/// One cluster, healthy at a first commit.
async fn one(dir: &std::path::Path, name: &str, cfg: WorldConfig) -> (World, String) {
    let mut world = World::start(dir, cfg).await.unwrap();
    let a = world
        .git
        .commit(
            "A",
            &[(
                &format!("clusters/{name}/app.yaml"),
                Some(&app(name, "1.0")),
            )],
        )
        .unwrap();
    world.add_cluster(name, &[]).await.unwrap();
    world.wait_connected(&[name]).await;
    pin(&world, &[name], &a).await.unwrap();
    world.wait_healthy_at(name, &a).await;
    (world, a)
}

/// A cluster whose API server is replaced by an empty one is noticed at
/// once (not at the next resync), put back, and keeps the agent's identity
/// so the agent's next restart still connects.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cluster_rebuilt_empty_is_put_back_at_once_with_the_agents_identity() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let cfg = WorldConfig {
        // Only the watches can notice in time.
        resync: Duration::from_secs(300),
        ..WorldConfig::default()
    };
    let (mut world, a) = one(dir.path(), "rb", cfg).await;
    let t = Instant::now();
    world.rebuild_cluster("rb", false, false).await.unwrap();
    assert!(
        setting(world.emulator("rb")).is_none(),
        "the new server is empty"
    );
    eventually("the objects back in the rebuilt cluster", || async {
        setting(world.emulator("rb"))
    })
    .await;
    assert!(
        t.elapsed() < Duration::from_secs(15),
        "noticed only after {:?}",
        t.elapsed()
    );
    world.wait_healthy_at("rb", &a).await;
    let client = kube_client(world.emulator("rb")).await;
    eventually("the identity Secret written again", || async {
        ferry_agent::identity::load(&client, &ferry_agent::identity::Place::new("ferry-system"))
            .await
            .ok()
            .flatten()
    })
    .await;
    eventually("the state ConfigMap written again", || async {
        world
            .emulator("rb")
            .object("", "configmaps", Some("ferry-system"), "ferry-agent-state")
    })
    .await;
    // A restart needs that identity: its join token is long used.
    let i = world.index("rb");
    world.stop_agent(i).await.unwrap();
    let mut cfg = world.agent_config(i);
    cfg.join_token = None;
    world.start_agent_with(i, cfg);
    world.wait_connected(&["rb"]).await;
    world.wait_healthy_at("rb", &a).await;
}

/// A rebuilt API server with a new CA: the agent says the certificate is
/// the problem, and picks up the new CA from its kubeconfig without a
/// restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_api_server_certificate_is_named_and_learned_from_the_kubeconfig() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let cfg = WorldConfig {
        resync: Duration::from_secs(1),
        ..WorldConfig::default()
    };
    let (mut world, a) = one(dir.path(), "ca", cfg).await;
    world.rebuild_cluster("ca", true, false).await.unwrap();
    let s = eventually("the agent to name the certificate", || async {
        let s = world.cluster("ca").await.ok()?.status?;
        s.message
            .contains("certificate is not trusted")
            .then_some(s)
    })
    .await;
    assert_eq!(s.phase, Phase::Failed as i32, "{s:?}");
    // The operator fixes the kubeconfig (as a new cluster's would be).
    let i = world.index("ca");
    world.clusters[i]
        .emulator
        .write_kubeconfig(&world.clusters[i].kubeconfig)
        .unwrap();
    eventually("the objects in the new cluster", || async {
        setting(world.emulator("ca"))
    })
    .await;
    world.wait_healthy_at("ca", &a).await;
}

/// Coordinator restarts in quick succession: the agent's backoff starts
/// over with every session it gets, so it is back within seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn agents_are_back_within_seconds_after_coordinator_restarts() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let mut world = World::start(dir.path(), WorldConfig::default())
        .await
        .unwrap();
    let i = world.add_cluster_without_agent("bo", &[]).await.unwrap();
    // The agent's own backoff bounds (200 ms to 30 s).
    let mut cfg = world.agent_config(i);
    let defaults = ferry_agent::Config::new("x", Default::default(), Default::default());
    cfg.min_backoff = defaults.min_backoff;
    cfg.max_backoff = defaults.max_backoff;
    world.start_agent_with(i, cfg);
    world.wait_connected(&["bo"]).await;
    // A long outage climbs the backoff: 0.2, 0.4, 0.8, ... 12.8 s.
    world.stop_coordinator().await.unwrap();
    tokio::time::sleep(Duration::from_secs(8)).await; // the outage itself
    world.start_coordinator().await.unwrap();
    world.wait_connected(&["bo"]).await;
    // At once another restart: the session it just had starts the backoff over.
    world.stop_coordinator().await.unwrap();
    world.start_coordinator().await.unwrap();
    let t = Instant::now();
    world.wait_connected(&["bo"]).await;
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "back only after {:?}",
        t.elapsed()
    );
}

/// An agent killed during its first sync, with the coordinator down,
/// resumes that sync when it starts again: it kept the assignment when it
/// arrived.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_during_its_first_sync_an_agent_resumes_without_the_coordinator() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let mut world = World::start(
        dir.path(),
        WorldConfig {
            // Wave 0 takes a while to become ready: time to kill the agent.
            ready_delay: Duration::from_secs(4),
            ..WorldConfig::default()
        },
    )
    .await
    .unwrap();
    let first = "apiVersion: apps/v1\nkind: StatefulSet\nmetadata:\n  name: db\n  namespace: default\nspec:\n  replicas: 1\n  serviceName: db\n  selector: {matchLabels: {app: db}}\n  template:\n    metadata: {labels: {app: db}}\n    spec: {containers: [{name: db, image: 'db:1'}]}\n";
    let second = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: after-db\n  namespace: default\n  annotations: {ferry.dev/wave: '1'}\ndata: {a: b}\n";
    let b = world
        .git
        .commit(
            "B",
            &[
                ("clusters/k1/db.yaml", Some(first)),
                ("clusters/k1/after.yaml", Some(second)),
            ],
        )
        .unwrap();
    let i = world.add_cluster("k1", &[]).await.unwrap();
    world.wait_connected(&["k1"]).await;
    pin(&world, &["k1"], &b).await.unwrap();
    eventually("wave 0 applied", || async {
        world
            .emulator("k1")
            .object("apps", "statefulsets", Some("default"), "db")
    })
    .await;
    // Killed outright (no drain), and the coordinator goes down too.
    let (_, task) = world.clusters[i].agent.take().unwrap();
    task.abort();
    let _ = task.await;
    world.stop_coordinator().await.unwrap();
    assert!(
        world
            .emulator("k1")
            .object("", "configmaps", Some("default"), "after-db")
            .is_none(),
        "killed before wave 1"
    );
    world.start_agent(i);
    eventually("wave 1 applied by the restarted agent", || async {
        world
            .emulator("k1")
            .object("", "configmaps", Some("default"), "after-db")
    })
    .await;
}
