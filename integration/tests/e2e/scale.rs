//! The fleet simulator that `ferry-bench` drives at 10,000 clusters, here
//! at 60 against a real coordinator: enrolled identities, one mTLS stream
//! each, the real protocol. Also what large waves do to event watches: a
//! watcher whose live buffer is far smaller than a wave's burst of events
//! catches up from the store and misses nothing.

use ferry_integration::fleetsim::{Fleet, SimConfig, enroll};
use ferry_integration::harness::{eventually, init_tracing};
use ferry_integration::world::{World, WorldConfig};
use ferry_proto::v1::{
    GetRolloutRequest, ListClustersRequest, PinRequest, RolloutPlan, StartRolloutRequest,
    WatchEventsRequest, WavePlan, wave_plan,
};
use std::sync::atomic::Ordering;
use std::time::Duration;

const N: usize = 60;

async fn clusters(admin: &ferry_coordinator::cli::Admin) -> Option<Vec<ferry_proto::v1::Cluster>> {
    let list = admin
        .clone()
        .list_clusters(ListClustersRequest::default())
        .await
        .ok()?;
    Some(list.into_inner().clusters)
}

/// Reads a watch until the rollout's final event; returns the event ids.
async fn drain(stream: &mut tonic::Streaming<ferry_proto::v1::Event>) -> Vec<i64> {
    let mut ids = vec![];
    tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(e) = stream.message().await.expect("the watch keeps going") {
            ids.push(e.id);
            if e.message.starts_with("every wave runs") {
                return;
            }
        }
        panic!("the watch ended early");
    })
    .await
    .expect("the final event arrives");
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn simulated_fleet_rolls_out_and_slow_watchers_miss_nothing() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let cfg = WorldConfig {
        event_buffer: 2,
        ..WorldConfig::default()
    };
    let world = World::start(dir.path(), cfg).await.unwrap();
    let a = world
        .git
        .commit("A", &[("clusters/README", Some("a\n"))])
        .unwrap();
    let b = world
        .git
        .commit("B", &[("clusters/README", Some("b\n"))])
        .unwrap();
    let mut admin = world.admin().await.unwrap();
    let dial = world.operator_dial();
    let mut fleet = Fleet::new(N);
    let names: Vec<String> = (0..N).map(|i| format!("sim-{i:02}")).collect();
    for n in &names {
        let d = enroll(&mut admin, &dial, n).await.unwrap();
        fleet.spawn(
            n.clone(),
            d,
            SimConfig {
                apply_time: Duration::from_millis(50),
                heartbeat: Duration::from_secs(15),
                ..SimConfig::default()
            },
        );
    }
    eventually("every simulated agent connected", || async {
        let list = clusters(&admin).await?;
        (list.iter().filter(|c| c.connected).count() == N).then_some(())
    })
    .await;

    // A pin reaches every simulated agent, and each reports it applied.
    admin
        .pin(PinRequest {
            clusters: names.clone(),
            r#ref: a.clone(),
            reason: "test".into(),
            force: false,
            allow_mass_prune: false,
        })
        .await
        .unwrap();
    eventually("every agent Synced at A", || async {
        clusters(&admin)
            .await?
            .iter()
            .all(|c| c.status.as_ref().is_some_and(|s| s.applied_commit == a))
            .then_some(())
    })
    .await;
    assert!((0..N).all(|i| fleet.tally.generation[i].load(Ordering::Relaxed) == 1));

    // A watcher that reads nothing until the end, with room for 2 live events.
    let mut slow = admin
        .clone()
        .watch_events(WatchEventsRequest {
            rollout: String::new(),
            after_id: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let id = admin
        .start_rollout(StartRolloutRequest {
            dry_run: false,
            plan: Some(RolloutPlan {
                r#ref: b.clone(),
                waves: vec![WavePlan {
                    name: "all".into(),
                    select: Some(wave_plan::Select::Percent(100)),
                    policy: None,
                }],
                defaults: None,
                auto_rollback: false,
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .id;
    eventually("the rollout succeeds", || async {
        let r = admin
            .clone()
            .get_rollout(GetRolloutRequest { id: id.clone() })
            .await
            .ok()?
            .into_inner();
        (r.phase == ferry_proto::v1::RolloutPhase::Succeeded as i32).then_some(())
    })
    .await;
    let seen = drain(&mut slow).await;
    let mut replay = admin
        .watch_events(WatchEventsRequest {
            rollout: id.clone(),
            after_id: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let stored = drain(&mut replay).await;
    // A pin and a Healthy event per cluster, plus the rollout's own.
    assert!(stored.len() >= 2 * N, "{} events stored", stored.len());
    assert_eq!(seen, stored, "the slow watcher missed or repeated events");
    assert!((0..N).all(|i| fleet.tally.generation[i].load(Ordering::Relaxed) == 2));
}
