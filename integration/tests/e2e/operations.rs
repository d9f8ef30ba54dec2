//! What an operator's tooling sees: `/metrics` that `promtool` accepts,
//! probes that say when a process is alive and ready, and why not.

use crate::fleet::{app, edge_commits, pin};
use ferry_integration::harness::{eventually, http_get, init_tracing, promtool_check};
use ferry_integration::world::{World, WorldConfig};
use std::net::SocketAddr;

/// The value of one series (`name{labels}` exactly as exposed), if present.
pub(crate) fn sample(exposition: &str, series: &str) -> Option<f64> {
    exposition.lines().find_map(|l| {
        let (s, v) = l.rsplit_once(' ')?;
        (s == series).then(|| v.parse().ok())?
    })
}

pub(crate) async fn metrics(addr: SocketAddr) -> String {
    let (code, body) = http_get(addr, "/metrics").await.expect("scraping");
    assert_eq!(code, 200, "{body}");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_pass_promtool_and_count_the_fleet_and_probes_tell_readiness() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let cfg = WorldConfig {
        metrics: true,
        ..WorldConfig::default()
    };
    let mut world = World::start(dir.path(), cfg).await.unwrap();
    let files: Vec<(String, String)> = ["m1", "m2"]
        .iter()
        .map(|c| (format!("clusters/{c}/app.yaml"), app(c, "1.0")))
        .collect();
    let refs: Vec<(&str, Option<&str>)> = files
        .iter()
        .map(|(p, c)| (p.as_str(), Some(c.as_str())))
        .collect();
    let a = world.git.commit("A", &refs).unwrap();
    world.add_cluster("m1", &[]).await.unwrap();
    world.add_cluster("m2", &[]).await.unwrap();
    world.wait_connected(&["m1", "m2"]).await;
    pin(&world, &["m1", "m2"], &a).await.unwrap();
    world.wait_healthy_at("m1", &a).await;
    world.wait_healthy_at("m2", &a).await;

    // The coordinator.
    let c = world
        .coordinator_metrics()
        .expect("the coordinator serves metrics");
    assert_eq!(http_get(c, "/healthz").await.unwrap().0, 200);
    assert_eq!(http_get(c, "/readyz").await.unwrap().0, 200);
    let body = eventually("the fleet counted healthy", || async {
        let body = metrics(c).await;
        (sample(&body, r#"ferry_clusters{phase="synced",health="healthy"}"#) == Some(2.0))
            .then_some(body)
    })
    .await;
    promtool_check(&body).unwrap_or_else(|e| panic!("promtool: {e}\n{body}"));
    assert_eq!(
        sample(&body, "ferry_clusters_connected"),
        Some(2.0),
        "{body}"
    );
    assert_eq!(sample(&body, "ferry_pins_total"), Some(2.0), "{body}");
    assert!(
        sample(&body, r#"ferry_status_reports_total{result="stored"}"#).unwrap_or(0.0) >= 2.0,
        "{body}"
    );
    assert_eq!(
        sample(&body, r#"ferry_clusters{phase="failed",health="unknown"}"#),
        Some(0.0),
        "every phase and health has a series, zero or not:\n{body}"
    );
    assert!(
        body.contains(r#"ferry_store_operation_duration_seconds_count{operation="report_many"}"#),
        "{body}"
    );
    // No series names a cluster.
    assert!(!body.contains("m1") && !body.contains("m2"), "{body}");

    // An agent.
    let m = world.clusters[world.index("m1")].metrics.unwrap();
    assert_eq!(http_get(m, "/healthz").await.unwrap().0, 200);
    assert_eq!(http_get(m, "/readyz").await.unwrap().0, 200);
    let body = metrics(m).await;
    promtool_check(&body).unwrap_or_else(|e| panic!("promtool: {e}\n{body}"));
    assert!(
        sample(&body, r#"ferry_agent_syncs_total{result="success"}"#).unwrap_or(0.0) >= 1.0,
        "{body}"
    );
    assert_eq!(
        sample(&body, "ferry_agent_managed_objects"),
        Some(3.0),
        "{body}"
    );
    assert_eq!(sample(&body, "ferry_agent_connected"), Some(1.0), "{body}");
    assert!(
        sample(
            &body,
            r#"ferry_agent_kubernetes_requests_total{verb="patch",code="200"}"#
        )
        .unwrap_or(0.0)
            >= 3.0,
        "{body}"
    );
    let now = ferry_proto::now_unix_ms() as f64 / 1000.0;
    let expiry = sample(&body, "ferry_agent_certificate_expiry_timestamp_seconds").unwrap();
    assert!(expiry > now + 86_400.0, "{expiry} vs {now}");
    let last = sample(&body, "ferry_agent_last_successful_sync_timestamp_seconds").unwrap();
    assert!((now - last).abs() < 120.0, "{last} vs {now}");
    assert!(
        body.contains("ferry_agent_sync_duration_seconds_bucket"),
        "{body}"
    );

    // An agent that cannot enroll (the coordinator is down) is alive, not
    // ready, and says why; once enrolled and connected it is ready.
    let i = world.add_cluster_without_agent("m3", &[]).await.unwrap();
    world.stop_coordinator().await.unwrap();
    world.start_agent(i);
    let m = world.clusters[i].metrics.unwrap();
    let (code, why) = eventually("the probe port", || async {
        http_get(m, "/readyz").await.ok()
    })
    .await;
    assert_eq!(code, 503, "{why}");
    assert!(why.contains("no identity yet"), "{why}");
    assert_eq!(http_get(m, "/healthz").await.unwrap().0, 200);
    world.start_coordinator().await.unwrap();
    eventually("the enrolled agent to be ready", || async {
        (http_get(m, "/readyz").await.ok()?.0 == 200).then_some(())
    })
    .await;
}

/// The cluster's own operators, with `kubectl` only, see what the agent
/// did and could not do: events for a commit applied, drift put back, a
/// sync refused and a prune refused, and a status ConfigMap that says what
/// runs and what is wrong.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kubectl_shows_the_agents_events_and_status() {
    use crate::emulator::kubectl_at;
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let mut world = World::start(dir.path(), WorldConfig::default())
        .await
        .unwrap();
    let cm = |n: &str| {
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {n}\n  namespace: default\ndata:\n  a: b\n"
        )
    };
    let (c1, c2, c3) = (cm("one"), cm("two"), cm("three"));
    let a = world
        .git
        .commit(
            "A",
            &[
                ("clusters/k1/1.yaml", Some(&c1)),
                ("clusters/k1/2.yaml", Some(&c2)),
                ("clusters/k1/3.yaml", Some(&c3)),
            ],
        )
        .unwrap();
    world.add_cluster("k1", &[]).await.unwrap();
    world.wait_connected(&["k1"]).await;
    pin(&world, &["k1"], &a).await.unwrap();
    world.wait_healthy_at("k1", &a).await;
    let kubeconfig = world.clusters[world.index("k1")].kubeconfig.clone();
    let kubectl = |args: Vec<String>| {
        let kubeconfig = kubeconfig.clone();
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let (ok, out, err) = kubectl_at(&kubeconfig, &args).await;
            assert!(ok, "kubectl {args:?}: {err}");
            out
        }
    };
    // (empty until the ConfigMap exists)
    let status = |key: &'static str| {
        let kubeconfig = kubeconfig.clone();
        async move {
            let path = format!("jsonpath={{.data.{key}}}");
            let args = [
                "get",
                "configmap",
                "ferry-agent-status",
                "-n",
                "ferry-system",
                "-o",
                &path,
            ];
            kubectl_at(&kubeconfig, &args).await.1
        }
    };
    let events = || async move {
        kubectl(
            ["get", "events", "-n", "ferry-system"]
                .map(String::from)
                .to_vec(),
        )
        .await
    };
    eventually("the status ConfigMap to say Healthy", || async {
        (status("health").await == "Healthy").then_some(())
    })
    .await;
    assert_eq!(status("appliedCommit").await, a);
    assert_eq!(status("phase").await, "Synced");
    let shown = eventually("an Applied event", || async {
        let e = events().await;
        e.contains("Applied").then_some(e)
    })
    .await;
    assert!(shown.contains(&format!("applied {}", &a[..8])), "{shown}");

    // Drift, put back.
    let client = ferry_integration::harness::kube_client(world.emulator("k1")).await;
    let cms: kube::Api<k8s_openapi::api::core::v1::ConfigMap> =
        kube::Api::namespaced(client, "default");
    cms.delete("two", &Default::default()).await.unwrap();
    eventually("a DriftRepaired event", || async {
        events().await.contains("DriftRepaired").then_some(())
    })
    .await;

    // A commit the server refuses: a warning naming the object, and the
    // status says what is wrong.
    let bad =
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: Bad_Name\n  namespace: default\n";
    let b = world
        .git
        .commit("B", &[("clusters/k1/4.yaml", Some(bad))])
        .unwrap();
    pin(&world, &["k1"], &b).await.unwrap();
    world.wait_failed_at("k1", &b).await;
    let shown = eventually("a SyncFailed event", || async {
        let e = events().await;
        e.contains("SyncFailed").then_some(e)
    })
    .await;
    assert!(shown.contains("Warning"), "{shown}");
    eventually("the status ConfigMap to say Failed", || async {
        (status("phase").await == "Failed").then_some(())
    })
    .await;
    let problems = status("problems").await;
    assert!(problems.contains("Bad_Name"), "{problems}");

    // Two of three objects leave Git: the prune valve holds.
    let c = world
        .git
        .commit(
            "C",
            &[
                ("clusters/k1/4.yaml", None),
                ("clusters/k1/2.yaml", None),
                ("clusters/k1/3.yaml", None),
            ],
        )
        .unwrap();
    pin(&world, &["k1"], &c).await.unwrap();
    world.wait_failed_at("k1", &c).await;
    let shown = eventually("a PruneRefused event", || async {
        let e = events().await;
        e.contains("PruneRefused").then_some(e)
    })
    .await;
    assert!(shown.contains("refusing to prune"), "{shown}");
    // The newer API shows the same events, with its own field names.
    let json = kubectl(
        [
            "get",
            "events.v1.events.k8s.io",
            "-n",
            "ferry-system",
            "-o",
            "json",
        ]
        .map(String::from)
        .to_vec(),
    )
    .await;
    let list: serde_json::Value = serde_json::from_str(&json).unwrap();
    let items = list["items"].as_array().unwrap();
    assert!(
        items.iter().any(|e| e["reason"] == "PruneRefused"
            && e["reportingController"] == "ferry.dev/agent"
            && e["regarding"]["name"] == "ferry-agent-status"
            && e["note"]
                .as_str()
                .is_some_and(|n| n.contains("refusing to prune"))),
        "{json}"
    );
}

/// `ferry store backup` while the coordinator runs and keeps writing; the
/// copy, put back in place of the database, brings back the state it
/// held: the pin and ledger of before the backup, nothing of after.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_online_backup_restores_the_state_it_copied() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let mut world = World::start(dir.path(), WorldConfig::default())
        .await
        .unwrap();
    let (a, b) = edge_commits(&world);
    world.add_cluster_without_agent("edge", &[]).await.unwrap();
    pin(&world, &["edge"], &a).await.unwrap();
    let data = dir.path().join("coordinator");
    let copy = dir.path().join("backup.db");
    let data_arg = data.display().to_string();
    let copy_arg = copy.display().to_string();
    let backup = [
        "store",
        "backup",
        "--data-dir",
        &data_arg,
        "--to",
        &copy_arg,
    ];
    let out = world.ferry(&backup).await.unwrap();
    assert!(out.contains("backed up"), "{out}");
    let again = world
        .ferry(&backup)
        .await
        .expect_err("an existing file is not overwritten");
    assert!(again.to_string().contains("exists"), "{again}");
    pin(&world, &["edge"], &b).await.unwrap();

    // Restored (a data dir holding the copy as its ferry.db), the store
    // opens with what the copy held.
    let restored = dir.path().join("restored");
    std::fs::create_dir_all(&restored).unwrap();
    std::fs::copy(&copy, restored.join("ferry.db")).unwrap();
    let store = ferry_coordinator::store::sqlite::Sqlite::open(&restored)
        .await
        .unwrap();
    use ferry_coordinator::store::Store;
    let c = store.cluster("edge").await.unwrap().unwrap();
    assert_eq!(
        c.pin.map(|p| p.0.to_string()),
        Some(a.clone()),
        "the state the backup copied"
    );
    let history = store.history(Some("edge"), 10).await.unwrap();
    assert_eq!(history.len(), 1, "{history:?}");
    assert!(
        store.token_count().await.unwrap() > 0,
        "tokens are in the copy"
    );
    // The live coordinator went on to B meanwhile.
    assert_eq!(world.cluster("edge").await.unwrap().pinned_commit, b);
}
