//! Several coordinators on one PostgreSQL database: what an operator does
//! through one replica reaches agents connected to another.

use crate::fleet::{app, setting};
use ferry_integration::harness::{eventually, init_tracing};
use ferry_integration::postgres::Scratch;
use ferry_integration::world::{World, WorldConfig};
use std::time::Duration;

/// `ferry` run against another replica than the world's own.
async fn ferry_at(world: &World, addr: std::net::SocketAddr, args: &[&str]) -> String {
    let mut argv: Vec<String> = vec!["ferry".into()];
    let mut flags = world.cli_flags();
    flags[1] = format!("https://{addr}");
    argv.extend(flags);
    argv.extend(args.iter().map(|s| s.to_string()));
    let parsed = <ferry_coordinator::cli::Args as clap::Parser>::try_parse_from(argv).unwrap();
    ferry_coordinator::cli::execute(parsed).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pin_through_one_replica_reaches_an_agent_on_another() {
    init_tracing();
    let pg = Scratch::start().unwrap();
    let dsn = pg.create("fleet").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut world = World::start(
        dir.path(),
        WorldConfig {
            store: Some(dsn),
            ..WorldConfig::default()
        },
    )
    .await
    .unwrap();
    let path = "clusters/edge/app.yaml";
    let a = world
        .git
        .commit("A", &[(path, Some(&app("edge", "1.0")))])
        .unwrap();
    let b = world
        .git
        .commit("B", &[(path, Some(&app("edge", "2.0")))])
        .unwrap();
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

    // Pushed by the replica the agent is on, when the other one committed
    // it: the agent does not reconnect or poll for its assignment.
    ferry_at(&world, replica.addr, &["pin", "edge", "--commit", &b]).await;
    world.wait_healthy_at("edge", &b).await;
    let history = ferry_at(&world, replica.addr, &["history", "edge"]).await;
    assert!(history.contains("via b"), "{history}");

    // A revocation through the second replica ends the session on the
    // first at once, and the agent is refused when it comes back.
    ferry_at(&world, replica.addr, &["cluster", "revoke", "edge"]).await;
    let primary = world.coordinator.as_ref().unwrap().hub.clone();
    eventually("the revoked cluster's session ends", || async {
        (!primary.connected("edge")).then_some(())
    })
    .await;
    replica.stop(Duration::from_secs(5)).await.unwrap();
}
