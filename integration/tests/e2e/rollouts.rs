//! Staged rollouts end to end, with eight emulated clusters.

use ferry_integration::harness::{eventually, init_tracing};
use ferry_integration::world::{World, WorldConfig};
use ferry_proto::v1::{
    GetRolloutRequest, HistoryRequest, Rollout, RolloutClusterPhase as Cp, RolloutPhase,
};
use std::collections::BTreeMap;
use std::time::Duration;

const FLEET: [(&str, &str, &str); 8] = [
    ("can-eu", "canary", "eu"),
    ("can-us", "canary", "us"),
    ("eu-1", "main", "eu"),
    ("eu-2", "main", "eu"),
    ("eu-3", "main", "eu"),
    ("us-1", "main", "us"),
    ("us-2", "main", "us"),
    ("us-3", "main", "us"),
];

fn deployment(image: &str) -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: app\n  namespace: default\nspec:\n  replicas: 1\n  selector:\n    matchLabels: {{app: app}}\n  template:\n    metadata:\n      labels: {{app: app}}\n    spec:\n      containers:\n      - name: app\n        image: {image}\n"
    )
}

fn commit_all(world: &World, msg: &str, image: &str) -> String {
    let files: Vec<(String, String)> = FLEET
        .iter()
        .map(|(c, _, _)| (format!("clusters/{c}/app.yaml"), deployment(image)))
        .collect();
    let refs: Vec<(&str, Option<&str>)> = files
        .iter()
        .map(|(p, c)| (p.as_str(), Some(c.as_str())))
        .collect();
    world.git.commit(msg, &refs).unwrap()
}

/// A fleet of eight clusters, all pinned and healthy at a first commit.
async fn fleet(dir: &std::path::Path) -> (World, String) {
    init_tracing();
    let mut world = World::start(
        dir,
        WorldConfig {
            ready_delay: Duration::from_millis(100),
            ..WorldConfig::default()
        },
    )
    .await
    .unwrap();
    let first = commit_all(&world, "v1", "app:1");
    for (name, ring, region) in FLEET {
        world
            .add_cluster(name, &[("ring", ring), ("region", region)])
            .await
            .unwrap();
    }
    let names: Vec<&str> = FLEET.iter().map(|c| c.0).collect();
    world.wait_connected(&names).await;
    let mut args = vec!["pin"];
    args.extend(&names);
    args.extend(["--commit", &first]);
    world.ferry(&args).await.unwrap();
    for n in &names {
        world.wait_healthy_at(n, &first).await;
    }
    (world, first)
}

async fn rollout(world: &World, id: &str) -> Rollout {
    world
        .admin()
        .await
        .unwrap()
        .get_rollout(GetRolloutRequest { id: id.into() })
        .await
        .unwrap()
        .into_inner()
}

async fn wait_phase(world: &World, id: &str, phase: RolloutPhase) -> Rollout {
    eventually(&format!("rollout {id} {phase}"), || async {
        let r = rollout(world, id).await;
        (r.phase == phase as i32).then_some(r)
    })
    .await
}

fn started_id(out: &str) -> String {
    out.split_whitespace().nth(2).unwrap().to_string()
}

fn pins_by_rollout(
    world_history: &[ferry_proto::v1::LedgerEntry],
    id: &str,
) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for e in world_history.iter().filter(|e| e.rollout == id) {
        *m.entry(e.cluster.clone()).or_default() += 1;
    }
    m
}

async fn history(world: &World) -> Vec<ferry_proto::v1::LedgerEntry> {
    world
        .admin()
        .await
        .unwrap()
        .history(HistoryRequest {
            cluster: String::new(),
            limit: 1000,
        })
        .await
        .unwrap()
        .into_inner()
        .entries
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_waves_complete_with_one_pin_per_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let (world, _) = fleet(dir.path()).await;
    let second = commit_all(&world, "v2", "app:2");
    let out = world
        .ferry(&[
            "rollout",
            "start",
            "--commit",
            "main",
            "--wave",
            "ring=canary",
            "--wave",
            "region=eu",
            "--wave",
            "100%",
            "--bake",
            "1s",
        ])
        .await
        .unwrap();
    let id = started_id(&out);
    // The canaries move first; nobody else until they are healthy and baked.
    let r = eventually("the canary wave runs", || async {
        let r = rollout(&world, &id).await;
        (r.waves[0]
            .clusters
            .iter()
            .all(|c| c.phase == Cp::Healthy as i32))
        .then_some(r)
    })
    .await;
    assert!(
        r.waves[2]
            .clusters
            .iter()
            .all(|c| c.phase == Cp::Waiting as i32),
        "{r:?}"
    );
    let done = wait_phase(&world, &id, RolloutPhase::Succeeded).await;
    let sizes: Vec<usize> = done.waves.iter().map(|w| w.clusters.len()).collect();
    assert_eq!(sizes, [2, 3, 3]);
    for (name, _, _) in FLEET {
        world.wait_healthy_at(name, &second).await;
    }
    let pins = pins_by_rollout(&history(&world).await, &id);
    assert_eq!(pins.len(), 8);
    assert!(pins.values().all(|n| *n == 1), "{pins:?}");
    let status = world.ferry(&["rollout", "status", &id]).await.unwrap();
    assert!(
        status.contains("Succeeded") && status.contains("eu-3"),
        "{status}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bad_commit_halts_in_the_canary_wave_and_rolls_back() {
    let dir = tempfile::tempdir().unwrap();
    let (world, first) = fleet(dir.path()).await;
    let bad = commit_all(&world, "bad", "app:never-ready");
    let out = world
        .ferry(&[
            "rollout",
            "start",
            "--commit",
            &bad,
            "--wave",
            "ring=canary",
            "--wave",
            "100%",
            "--auto-rollback",
        ])
        .await
        .unwrap();
    let id = started_id(&out);
    let r = wait_phase(&world, &id, RolloutPhase::RolledBack).await;
    assert!(
        r.message.contains("canary") || r.message.contains("wave-1"),
        "{}",
        r.message
    );
    for c in ["can-eu", "can-us"] {
        world.wait_healthy_at(c, &first).await;
        assert_eq!(world.cluster(c).await.unwrap().pinned_commit, first);
    }
    for (name, ring, _) in FLEET {
        if ring == "main" {
            assert_eq!(
                world.cluster(name).await.unwrap().pinned_commit,
                first,
                "{name} untouched"
            );
        }
    }
    let h = history(&world).await;
    assert!(
        h.iter()
            .any(|e| e.rollout == id && e.to_commit == first && e.reason.starts_with("rollback")),
        "the ledger says so"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn offline_clusters_under_each_policy() {
    let dir = tempfile::tempdir().unwrap();
    let (mut world, _) = fleet(dir.path()).await;
    let us1 = world.index("us-1");
    world.stop_agent(us1).await.unwrap();
    eventually("us-1 offline", || async {
        (!world.cluster("us-1").await.ok()?.connected).then_some(())
    })
    .await;

    // skip: the rollout completes without it.
    let v2 = commit_all(&world, "v2", "app:2");
    let id = started_id(
        &world
            .ferry(&[
                "rollout",
                "start",
                "--commit",
                &v2,
                "--wave",
                "region=us",
                "--offline",
                "skip",
            ])
            .await
            .unwrap(),
    );
    let r = wait_phase(&world, &id, RolloutPhase::Succeeded).await;
    let us1_state = r.waves[0]
        .clusters
        .iter()
        .find(|c| c.name == "us-1")
        .unwrap();
    assert_eq!(us1_state.phase, Cp::Skipped as i32);

    // fail: it counts against a zero budget, so the rollout fails.
    let v3 = commit_all(&world, "v3", "app:3");
    let id = started_id(
        &world
            .ferry(&[
                "rollout",
                "start",
                "--commit",
                &v3,
                "--wave",
                "region=us",
                "--offline",
                "fail",
            ])
            .await
            .unwrap(),
    );
    wait_phase(&world, &id, RolloutPhase::Failed).await;

    // wait: it holds the wave until the cluster is back.
    let v4 = commit_all(&world, "v4", "app:4");
    let id = started_id(
        &world
            .ferry(&[
                "rollout",
                "start",
                "--commit",
                &v4,
                "--wave",
                "names:us-1,us-2",
                "--offline",
                "wait",
            ])
            .await
            .unwrap(),
    );
    eventually("us-2 done while us-1 waits", || async {
        let r = rollout(&world, &id).await;
        let by: BTreeMap<_, _> = r.waves[0]
            .clusters
            .iter()
            .map(|c| (c.name.clone(), c.phase))
            .collect();
        (by["us-2"] == Cp::Healthy as i32
            && by["us-1"] == Cp::Waiting as i32
            && r.phase == RolloutPhase::Running as i32)
            .then_some(())
    })
    .await;
    world.start_agent(us1);
    wait_phase(&world, &id, RolloutPhase::Succeeded).await;
    world.wait_healthy_at("us-1", &v4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pause_resume_abort_and_overlap() {
    let dir = tempfile::tempdir().unwrap();
    let (world, first) = fleet(dir.path()).await;
    let v2 = commit_all(&world, "v2", "app:2");
    let id = started_id(
        &world
            .ferry(&[
                "rollout",
                "start",
                "--commit",
                &v2,
                "--wave",
                "ring=canary",
                "--wave",
                "region=eu",
                "--wave",
                "region=us",
                "--bake",
                "2s",
            ])
            .await
            .unwrap(),
    );
    // An overlapping rollout is rejected, naming the clusters.
    let err = world
        .ferry(&["rollout", "start", "--commit", &v2, "--wave", "region=us"])
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains(&id) && err.to_string().contains("us-1"),
        "{err}"
    );
    // A manual pin inside the rollout needs --force, which the ledger records.
    let err = world
        .ferry(&["pin", "us-3", "--commit", &first])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("--force"), "{err}");

    world.ferry(&["rollout", "pause", &id]).await.unwrap();
    let paused = rollout(&world, &id).await;
    assert_eq!(paused.phase, RolloutPhase::Paused as i32);
    // While paused, no later wave starts, however long the bake.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let still = rollout(&world, &id).await;
    assert!(
        still.waves[1]
            .clusters
            .iter()
            .all(|c| c.phase == Cp::Waiting as i32),
        "{still:?}"
    );
    world.ferry(&["rollout", "resume", &id]).await.unwrap();
    eventually("the eu wave starts after resume", || async {
        let r = rollout(&world, &id).await;
        r.waves[1]
            .clusters
            .iter()
            .any(|c| c.phase != Cp::Waiting as i32)
            .then_some(())
    })
    .await;
    world.ferry(&["rollout", "abort", &id]).await.unwrap();
    let aborted = rollout(&world, &id).await;
    assert_eq!(aborted.phase, RolloutPhase::Aborted as i32);
    tokio::time::sleep(Duration::from_secs(1)).await;
    for c in ["us-1", "us-2", "us-3"] {
        assert_eq!(
            world.cluster(c).await.unwrap().pinned_commit,
            first,
            "{c}: no pins after abort"
        );
    }
    world
        .ferry(&[
            "pin", "us-3", "--commit", &v2, "--force", "--reason", "hotfix",
        ])
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restarted_coordinator_resumes_mid_wave_without_duplicate_pins() {
    let dir = tempfile::tempdir().unwrap();
    let (mut world, _) = fleet(dir.path()).await;
    let v2 = commit_all(&world, "v2", "app:2");
    let id = started_id(
        &world
            .ferry(&[
                "rollout",
                "start",
                "--commit",
                &v2,
                "--wave",
                "ring=canary",
                "--wave",
                "100%",
                "--bake",
                "2s",
                "--max-parallel",
                "2",
            ])
            .await
            .unwrap(),
    );
    eventually("the second wave is moving", || async {
        let r = rollout(&world, &id).await;
        r.waves[1]
            .clusters
            .iter()
            .any(|c| c.phase != Cp::Waiting as i32)
            .then_some(())
    })
    .await;
    world.stop_coordinator().await.unwrap();
    world.start_coordinator().await.unwrap();
    wait_phase(&world, &id, RolloutPhase::Succeeded).await;
    let pins = pins_by_rollout(&history(&world).await, &id);
    assert_eq!(pins.len(), 8, "{pins:?}");
    assert!(
        pins.values().all(|n| *n == 1),
        "no duplicate pins: {pins:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn plan_files_promote_and_the_event_stream() {
    let dir = tempfile::tempdir().unwrap();
    let (world, _) = fleet(dir.path()).await;
    let v2 = commit_all(&world, "v2", "app:2");
    world.git.tag("v2.0").unwrap();
    let plan = dir.path().join("plan.yaml");
    std::fs::write(
        &plan,
        "ref: v2.0\nautoRollback: true\ndefaults:\n  bake: 1s\n  maxFailures: 0\nwaves:\n  - name: canaries\n    selector: ring=canary\n  - name: eu\n    selector: region=eu\n    approval: true\n",
    )
    .unwrap();
    let id = started_id(
        &world
            .ferry(&["rollout", "start", "-f", plan.to_str().unwrap()])
            .await
            .unwrap(),
    );
    let r = wait_phase(&world, &id, RolloutPhase::AwaitingApproval).await;
    assert_eq!(r.commit, v2, "a tag resolves to its commit");
    assert!(
        r.waves[1]
            .clusters
            .iter()
            .all(|c| c.phase == Cp::Waiting as i32)
    );

    // The event stream replays what happened, then follows live.
    let mut events = world
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
    let mut seen = vec![];
    while !seen
        .iter()
        .any(|m: &String| m.contains("waits for approval"))
    {
        let e = tokio::time::timeout(Duration::from_secs(10), events.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        seen.push(e.message);
    }
    assert!(seen.iter().any(|m| m.contains("pinned to")), "{seen:?}");
    world.ferry(&["rollout", "approve", &id]).await.unwrap();
    let live = loop {
        let e = tokio::time::timeout(Duration::from_secs(10), events.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if e.message.contains("approved") {
            break e;
        }
    };
    assert!(!live.actor.is_empty());
    wait_phase(&world, &id, RolloutPhase::Succeeded).await;

    // promote: a one-wave rollout to a selector.
    let v3 = commit_all(&world, "v3", "app:3");
    let id = started_id(
        &world
            .ferry(&["promote", &v3, "--to", "region=us,ring=main"])
            .await
            .unwrap(),
    );
    let r = wait_phase(&world, &id, RolloutPhase::Succeeded).await;
    let names: Vec<&str> = r.waves[0]
        .clusters
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(names, ["us-1", "us-2", "us-3"]);
    let list = world.ferry(&["rollout", "list"]).await.unwrap();
    assert_eq!(list.lines().count(), 3, "{list}");
}

/// A manual pin racing a rollout that takes the same cluster: either the
/// pin lands first (and the rollout records it as the cluster's previous
/// commit) or it is refused. It never lands inside the rollout unforced.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pin_never_slips_into_a_rollout_starting_at_the_same_time() {
    use ferry_proto::v1::{
        ClusterNames, ControlRolloutRequest, PinRequest, RolloutControl, RolloutPlan,
        StartRolloutRequest, WavePlan, WavePolicy, wave_plan,
    };
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let mut world = World::start(dir.path(), WorldConfig::default())
        .await
        .unwrap();
    world
        .git
        .commit("v0", &[("clusters/a/app.yaml", Some(&deployment("app:0")))])
        .unwrap();
    world.add_cluster("a", &[]).await.unwrap();
    world.wait_connected(&["a"]).await;
    let (mut refused, mut first) = (0, 0);
    for round in 0..12 {
        let commit = world
            .git
            .commit(
                &format!("v{round}"),
                &[(
                    "clusters/a/app.yaml",
                    Some(&deployment(&format!("app:{round}"))),
                )],
            )
            .unwrap();
        // Both resolve `main` (a fetch each) before acting: the window.
        let plan = RolloutPlan {
            r#ref: "main".into(),
            waves: vec![WavePlan {
                name: "only".into(),
                select: Some(wave_plan::Select::Names(ClusterNames {
                    names: vec!["a".into()],
                })),
                // Waits for approval: the rollout itself pins nothing.
                policy: Some(WavePolicy {
                    approval: Some(true),
                    ..Default::default()
                }),
            }],
            defaults: None,
            auto_rollback: false,
        };
        let (mut pinner, mut starter) =
            (world.admin().await.unwrap(), world.admin().await.unwrap());
        let pin = async move {
            pinner
                .pin(PinRequest {
                    clusters: vec!["a".into()],
                    r#ref: "main".into(),
                    reason: "race".into(),
                    force: false,
                    allow_mass_prune: false,
                })
                .await
        };
        let start = async move {
            starter
                .start_rollout(StartRolloutRequest {
                    plan: Some(plan),
                    dry_run: false,
                })
                .await
        };
        let (pinned, started) = tokio::join!(pin, start);
        let r = started.expect("the rollout starts").into_inner();
        let previous = r.waves[0].clusters[0].previous_commit.clone();
        match pinned {
            Ok(_) => {
                first += 1;
                assert_eq!(
                    previous, commit,
                    "round {round}: the pin succeeded unforced, so it must have come before the rollout froze the cluster's previous commit"
                );
            }
            Err(s) => {
                refused += 1;
                assert_eq!(s.code(), tonic::Code::FailedPrecondition, "{s:?}");
                assert!(s.message().contains(&r.id), "{s:?}");
            }
        }
        world
            .admin()
            .await
            .unwrap()
            .control_rollout(ControlRolloutRequest {
                id: r.id.clone(),
                control: RolloutControl::Abort as i32,
            })
            .await
            .unwrap();
    }
    tracing::info!(refused, first, "race outcomes");
    // The ledger agrees: no manual pin of a is dated inside a rollout.
    let history = world
        .admin()
        .await
        .unwrap()
        .history(HistoryRequest {
            cluster: "a".into(),
            limit: 100,
        })
        .await
        .unwrap()
        .into_inner()
        .entries;
    assert_eq!(history.len(), first, "one ledger entry per pin that won");
}
