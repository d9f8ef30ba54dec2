//! End to end: a coordinator on SQLite with mTLS, a real git daemon, and
//! agents applying to emulated clusters.

use ferry_integration::harness::{eventually, init_tracing};
use ferry_integration::world::{Transport, World, WorldConfig};
use ferry_proto::v1::{Health, Phase, PinRequest};
use kube_emulator::Emulator;
use serde_json::Value;

pub(crate) fn app(cluster: &str, version: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Namespace
metadata:
  name: shop
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: settings
  namespace: shop
data:
  cluster: {cluster}
  version: "{version}"
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: shop
spec:
  replicas: 2
  selector:
    matchLabels: {{app: web}}
  template:
    metadata:
      labels: {{app: web}}
    spec:
      containers:
      - name: web
        image: nginx:{version}
"#
    )
}

const EXTRA: &str =
    "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: extra\n  namespace: shop\ndata:\n  a: b\n";

pub(crate) fn setting(emu: &Emulator) -> Option<String> {
    emu.object("", "configmaps", Some("shop"), "settings")
        .and_then(|o| o["data"]["version"].as_str().map(str::to_string))
}

/// Two commits of cluster `edge`'s directory: A (version 1.0), then B (2.0).
pub(crate) fn edge_commits(world: &World) -> (String, String) {
    let path = "clusters/edge/app.yaml";
    let a = world
        .git
        .commit("A", &[(path, Some(&app("edge", "1.0")))])
        .unwrap();
    let b = world
        .git
        .commit("B", &[(path, Some(&app("edge", "2.0")))])
        .unwrap();
    (a, b)
}

/// A world with one cluster, `name`, healthy at commit A (version 1.0).
async fn one_cluster(dir: &std::path::Path, name: &str) -> (World, String) {
    let mut world = World::start(dir, WorldConfig::default()).await.unwrap();
    let path = format!("clusters/{name}/app.yaml");
    let a = world
        .git
        .commit("A", &[(path.as_str(), Some(&app(name, "1.0")))])
        .unwrap();
    world.add_cluster(name, &[]).await.unwrap();
    world.wait_connected(&[name]).await;
    pin(&world, &[name], &a).await.unwrap();
    world.wait_healthy_at(name, &a).await;
    (world, a)
}

pub(crate) async fn pin(
    world: &World,
    clusters: &[&str],
    reference: &str,
) -> anyhow::Result<String> {
    let r = world
        .admin()
        .await?
        .pin(PinRequest {
            clusters: clusters.iter().map(|s| s.to_string()).collect(),
            r#ref: reference.into(),
            reason: "test".into(),
            force: false,
            allow_mass_prune: false,
        })
        .await?;
    Ok(r.into_inner().commit)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pins_move_each_cluster_to_exactly_its_commit() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let mut world = World::start(dir.path(), WorldConfig::default())
        .await
        .unwrap();
    let names = ["c1", "c2", "c3"];
    let mut files: Vec<(String, Option<String>)> = vec![];
    for n in names {
        files.push((format!("clusters/{n}/app.yaml"), Some(app(n, "1.0"))));
        files.push((format!("clusters/{n}/extra.yaml"), Some(EXTRA.into())));
    }
    fn commit(
        git: &ferry_integration::world::GitServer,
        msg: &str,
        f: Vec<(String, Option<String>)>,
    ) -> String {
        let borrowed: Vec<(&str, Option<&str>)> =
            f.iter().map(|(p, c)| (p.as_str(), c.as_deref())).collect();
        git.commit(msg, &borrowed).unwrap()
    }
    let a = commit(&world.git, "A", files.clone());
    for n in names {
        world.add_cluster(n, &[("ring", "canary")]).await.unwrap();
    }
    world.wait_connected(&names).await;
    assert_eq!(
        pin(&world, &names, "main").await.unwrap(),
        a,
        "a branch resolves to its commit"
    );
    for n in names {
        world.wait_healthy_at(n, &a).await;
        assert_eq!(setting(world.emulator(n)).as_deref(), Some("1.0"));
        assert!(
            world
                .emulator(n)
                .object("", "configmaps", Some("shop"), "extra")
                .is_some()
        );
    }

    // B: every cluster's app changes in Git; only c1 is pinned to it.
    let b = commit(
        &world.git,
        "B",
        names
            .iter()
            .map(|n| (format!("clusters/{n}/app.yaml"), Some(app(n, "2.0"))))
            .collect(),
    );
    let short_b = &b[..10];
    assert_eq!(
        pin(&world, &["c1"], short_b).await.unwrap(),
        b,
        "a short commit resolves"
    );
    world.wait_healthy_at("c1", &b).await;
    assert_eq!(setting(world.emulator("c1")).as_deref(), Some("2.0"));
    for n in ["c2", "c3"] {
        assert_eq!(
            setting(world.emulator(n)).as_deref(),
            Some("1.0"),
            "{n} stays on A"
        );
        assert_eq!(
            world
                .cluster(n)
                .await
                .unwrap()
                .status
                .unwrap()
                .applied_commit,
            a
        );
    }

    // C: extra.yaml leaves Git; pinned on c1 only, so only c1 prunes it.
    let c = commit(
        &world.git,
        "C",
        names
            .iter()
            .map(|n| (format!("clusters/{n}/extra.yaml"), None))
            .collect(),
    );
    pin(&world, &["c1"], &c).await.unwrap();
    world.wait_healthy_at("c1", &c).await;
    assert!(
        world
            .emulator("c1")
            .object("", "configmaps", Some("shop"), "extra")
            .is_none(),
        "pruned on c1"
    );
    for n in ["c2", "c3"] {
        assert!(
            world
                .emulator(n)
                .object("", "configmaps", Some("shop"), "extra")
                .is_some(),
            "{n} keeps extra"
        );
    }

    // D: invalid YAML on c1: Failed, naming file and document; nothing changes.
    let broken = app("c1", "3.0").replace("kind: ConfigMap", "kind: [ConfigMap");
    let d = commit(
        &world.git,
        "D",
        vec![("clusters/c1/app.yaml".into(), Some(broken))],
    );
    let writes_before = world.emulator("c1").writes_except("ferry-system");
    let object_rv = |world: &World| {
        world
            .emulator("c1")
            .object("", "configmaps", Some("shop"), "settings")
            .and_then(|o| {
                o["metadata"]["resourceVersion"]
                    .as_str()
                    .map(str::to_string)
            })
    };
    let rv_before = object_rv(&world);
    pin(&world, &["c1"], &d).await.unwrap();
    let failed = world.wait_failed_at("c1", &d).await;
    assert_eq!(failed.applied_commit, c, "the applied commit stays C");
    assert!(
        failed
            .problems
            .iter()
            .any(|p| p.source == "app.yaml#2" && p.message.contains("YAML")),
        "{:?}",
        failed.problems
    );
    assert_eq!(
        world.emulator("c1").writes_except("ferry-system"),
        writes_before,
        "no write for a bad commit"
    );
    assert_eq!(
        object_rv(&world),
        rv_before,
        "the managed objects are untouched"
    );
    assert_eq!(setting(world.emulator("c1")).as_deref(), Some("2.0"));

    // An unknown ref is rejected and pins nothing.
    let err = pin(&world, &["c2"], "no-such-branch").await.unwrap_err();
    assert!(err.to_string().contains("unknown ref"), "{err}");
    assert_eq!(world.cluster("c2").await.unwrap().pinned_commit, a);

    // The ledger has one entry per change, with its actor and reason.
    let history = world.ferry(&["history", "c1", "-o", "json"]).await.unwrap();
    let entries: Vec<Value> = serde_json::from_str(&history).unwrap();
    let tos: Vec<&str> = entries.iter().map(|e| e["to"].as_str().unwrap()).collect();
    assert_eq!(tos, [d.as_str(), c.as_str(), b.as_str(), a.as_str()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn coordinator_restart_keeps_state_and_agents_resync() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let mut world = World::start(dir.path(), WorldConfig::default())
        .await
        .unwrap();
    let a = world
        .git
        .commit(
            "A",
            &[
                ("clusters/r1/app.yaml", Some(&app("r1", "1.0"))),
                ("clusters/r2/app.yaml", Some(&app("r2", "1.0"))),
            ],
        )
        .unwrap();
    world.add_cluster("r1", &[("region", "eu")]).await.unwrap();
    world.add_cluster("r2", &[("region", "us")]).await.unwrap();
    world.wait_connected(&["r1", "r2"]).await;
    pin(&world, &["r1", "r2"], &a).await.unwrap();
    world.wait_healthy_at("r1", &a).await;
    world.wait_healthy_at("r2", &a).await;

    world.stop_coordinator().await.unwrap();
    let b = world
        .git
        .commit(
            "B",
            &[
                ("clusters/r1/app.yaml", Some(&app("r1", "2.0"))),
                ("clusters/r2/app.yaml", Some(&app("r2", "2.0"))),
            ],
        )
        .unwrap();
    world.start_coordinator().await.unwrap();

    // Pins, ledger and clusters survived; agents came back by themselves.
    let r1 = world.cluster("r1").await.unwrap();
    assert_eq!(r1.pinned_commit, a);
    assert_eq!(r1.labels.get("region").map(String::as_str), Some("eu"));
    assert_eq!(
        world
            .admin()
            .await
            .unwrap()
            .history(ferry_proto::v1::HistoryRequest {
                cluster: String::new(),
                limit: 10
            })
            .await
            .unwrap()
            .into_inner()
            .entries
            .len(),
        2
    );
    world.wait_connected(&["r1", "r2"]).await;
    pin(&world, &["r1", "r2"], &b).await.unwrap();
    world.wait_healthy_at("r1", &b).await;
    world.wait_healthy_at("r2", &b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restarted_agent_converges_with_zero_writes_even_without_coordinator() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let (mut world, _) = one_cluster(dir.path(), "z1").await;

    // Restart the agent with nothing changed: zero writes.
    world.stop_agent(0).await.unwrap();
    world.emulator("z1").reset_counters();
    let restarted = ferry_proto::now_unix_ms();
    world.start_agent(0);
    eventually("the restarted agent reports", || async {
        let s = world.cluster("z1").await.ok()?.status?;
        (s.reported_unix_ms >= restarted
            && s.phase == Phase::Synced as i32
            && s.health == Health::Healthy as i32)
            .then_some(())
    })
    .await;
    assert_eq!(
        world.emulator("z1").writes(),
        0,
        "{:?}",
        world.emulator("z1").counters().requests
    );

    // With the coordinator down, a restarted agent still repairs drift from its kept state.
    world.stop_agent(0).await.unwrap();
    world.stop_coordinator().await.unwrap();
    let client = ferry_integration::harness::kube_client(world.emulator("z1")).await;
    let cms: kube::Api<k8s_openapi::api::core::v1::ConfigMap> =
        kube::Api::namespaced(client, "shop");
    cms.delete("settings", &Default::default()).await.unwrap();
    world.start_agent(0);
    eventually("the deleted configmap is back", || async {
        setting(world.emulator("z1"))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cli_lists_clusters_and_path_templates_use_labels() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let cfg = WorldConfig {
        path_template: "clusters/{label.region}/{cluster}".into(),
        ..WorldConfig::default()
    };
    let mut world = World::start(dir.path(), cfg).await.unwrap();
    let a = world
        .git
        .commit("A", &[("clusters/eu/p1/app.yaml", Some(&app("p1", "1.0")))])
        .unwrap();
    world.add_cluster("p1", &[("region", "eu")]).await.unwrap();
    // A cluster the template cannot place is refused when it is added.
    let refused = world.add_cluster("p2", &[]).await.unwrap_err();
    let refused = format!("{refused:#}");
    assert!(
        refused.contains("needs label") && refused.contains("region"),
        "{refused}"
    );
    world.wait_connected(&["p1"]).await;
    world
        .ferry(&["pin", "p1", "--commit", "main", "--reason", "first"])
        .await
        .unwrap();
    world.wait_healthy_at("p1", &a).await;

    let table = world.ferry(&["clusters"]).await.unwrap();
    let header = table.lines().next().unwrap();
    assert_eq!(
        header.split_whitespace().collect::<Vec<_>>(),
        [
            "NAME",
            "LABELS",
            "CONNECTED",
            "PINNED",
            "APPLIED",
            "PHASE",
            "HEALTH",
            "LAST",
            "SEEN"
        ]
    );
    let p1 = table.lines().find(|l| l.starts_with("p1")).unwrap();
    assert!(
        p1.contains("region=eu")
            && p1.contains(&a[..8])
            && p1.contains("Synced")
            && p1.contains("Healthy"),
        "{table}"
    );

    let json: Value = serde_json::from_str(
        &world
            .ferry(&["cluster", "show", "p1", "-o", "json"])
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(json["path"], "clusters/eu/p1");
    assert_eq!(json["status"]["appliedCommit"], a.as_str());

    let err = world
        .ferry(&["pin", "ghost", "--commit", "main"])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("ghost"), "{err}");

    // A template changed under existing clusters: shown as unresolved.
    world.stop_coordinator().await.unwrap();
    world.cfg.path_template = "clusters/{label.zone}/{cluster}".into();
    world.start_coordinator().await.unwrap();
    let shown = world.ferry(&["cluster", "show", "p1"]).await.unwrap();
    assert!(
        shown.contains("unresolved") && shown.contains("zone"),
        "p1 has no zone label: {shown}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn grpcurl_lists_and_calls_the_coordinator() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let world = World::start(dir.path(), WorldConfig::default())
        .await
        .unwrap();
    let grpcurl = |args: Vec<String>| {
        let mut all = vec![
            "-cacert".to_string(),
            world.ca_file.display().to_string(),
            "-H".into(),
            format!("authorization: Bearer {}", world.admin_token),
        ];
        all.extend(args);
        let out = std::process::Command::new(ferry_integration::harness::tool("grpcurl"))
            .args(&all)
            .output()
            .expect("grpcurl runs");
        assert!(
            out.status.success(),
            "grpcurl {all:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let addr = world.coordinator_addr.to_string();
    let services = grpcurl(vec![addr.clone(), "list".into()]);
    for s in [
        "ferry.v1.Admin",
        "ferry.v1.AgentLink",
        "grpc.health.v1.Health",
    ] {
        assert!(services.contains(s), "{s} not listed: {services}");
    }
    let health = grpcurl(vec![addr.clone(), "grpc.health.v1.Health/Check".into()]);
    assert!(health.contains("SERVING"), "{health}");
    let clusters = grpcurl(vec![
        "-d".into(),
        "{}".into(),
        addr,
        "ferry.v1.Admin/ListClusters".into(),
    ]);
    assert_eq!(clusters.trim(), "{\n  \n}", "no clusters yet: {clusters}");
}

/// Agents (and the coordinator) read the fleet repository over every
/// transport: git:// is covered above; here http:// (git http-backend),
/// file:// and a plain local path.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_git_transport_works() {
    init_tracing();
    for transport in [Transport::Http, Transport::File, Transport::Path] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = WorldConfig {
            transport,
            ..WorldConfig::default()
        };
        let mut world = World::start(dir.path(), cfg).await.unwrap();
        let a = world
            .git
            .commit("A", &[("clusters/t1/app.yaml", Some(&app("t1", "1.0")))])
            .unwrap();
        world.add_cluster("t1", &[]).await.unwrap();
        world.wait_connected(&["t1"]).await;
        assert_eq!(
            pin(&world, &["t1"], "main").await.unwrap(),
            a,
            "{transport:?}: the coordinator resolves"
        );
        world.wait_healthy_at("t1", &a).await;
        assert_eq!(
            setting(world.emulator("t1")).as_deref(),
            Some("1.0"),
            "{transport:?}"
        );
        // A commit the agent has not cached yet is fetched.
        let b = world
            .git
            .commit("B", &[("clusters/t1/app.yaml", Some(&app("t1", "2.0")))])
            .unwrap();
        pin(&world, &["t1"], &b).await.unwrap();
        world.wait_healthy_at("t1", &b).await;
        assert!(world.repo_url.contains("http://") || transport != Transport::Http);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kustomize_overlays_are_built_and_failures_named() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let mut world = World::start(dir.path(), WorldConfig::default())
        .await
        .unwrap();
    let cm = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\n  namespace: default\ndata:\n  version: \"1\"\n";
    let a = world
        .git
        .commit(
            "A",
            &[
                ("base/kustomization.yaml", Some("resources:\n- cm.yaml\n")),
                ("base/cm.yaml", Some(cm)),
                ("clusters/k1/kustomization.yaml", Some("resources:\n- ../../base\nnamePrefix: k1-\nlabels:\n- pairs:\n    cluster: k1\n")),
                ("clusters/k2/kustomization.yaml", Some("resources:\n- ../../base\n")),
            ],
        )
        .unwrap();
    world.add_cluster("k1", &[]).await.unwrap();
    // k2's agent has no kustomize binary: a clear error, not a silent skip.
    world.add_cluster("k2", &[]).await.unwrap();
    world.stop_agent(1).await.unwrap();
    let mut k2 = world.agent_config(1);
    k2.kustomize = vec!["/nonexistent/kustomize".into(), "build".into()];
    world.start_agent_with(1, k2);
    world.wait_connected(&["k1", "k2"]).await;
    pin(&world, &["k1", "k2"], &a).await.unwrap();
    world.wait_healthy_at("k1", &a).await;
    let built = world
        .emulator("k1")
        .object("", "configmaps", Some("default"), "k1-settings")
        .expect("the overlay's object");
    assert_eq!(built["metadata"]["labels"]["cluster"], "k1");
    let k2_status = eventually("k2 fails without kustomize", || async {
        let s = world.cluster("k2").await.ok()?.status?;
        (s.phase == Phase::Failed as i32).then_some(s)
    })
    .await;
    assert!(
        k2_status.message.contains("kustomize") && k2_status.message.contains("not found"),
        "{}",
        k2_status.message
    );

    // A broken overlay fails, naming the build, and changes nothing.
    let b = world
        .git
        .commit(
            "B",
            &[(
                "clusters/k1/kustomization.yaml",
                Some("resources:\n- ../../missing\n"),
            )],
        )
        .unwrap();
    let writes = world.emulator("k1").writes_except("ferry-system");
    pin(&world, &["k1"], &b).await.unwrap();
    let failed = world.wait_failed_at("k1", &b).await;
    assert!(
        failed
            .problems
            .iter()
            .any(|p| p.source == "kustomize build clusters/k1"),
        "{:?}",
        failed.problems
    );
    assert_eq!(world.emulator("k1").writes_except("ferry-system"), writes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn waves_wait_for_the_earlier_ones_to_be_healthy() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let mut world = World::start(dir.path(), WorldConfig::default())
        .await
        .unwrap();
    let db = |image: &str| {
        format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: db\n  namespace: default\n  annotations:\n    ferry.dev/wave: \"0\"\nspec:\n  selector:\n    matchLabels: {{app: db}}\n  template:\n    metadata:\n      labels: {{app: db}}\n    spec:\n      containers:\n      - name: db\n        image: {image}\n"
        )
    };
    let app = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: app\n  namespace: default\n  annotations:\n    ferry.dev/wave: \"1\"\ndata:\n  a: b\n";
    let a = world
        .git
        .commit(
            "A",
            &[
                ("clusters/w1/db.yaml", Some(&db("db:1"))),
                ("clusters/w1/app.yaml", Some(app)),
            ],
        )
        .unwrap();
    world.add_cluster("w1", &[]).await.unwrap();
    world.wait_connected(&["w1"]).await;
    pin(&world, &["w1"], &a).await.unwrap();
    world.wait_healthy_at("w1", &a).await;
    let emu = world.emulator("w1");
    let rv = |o: Value| {
        o["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
    };
    let deploy = emu
        .object("apps", "deployments", Some("default"), "db")
        .unwrap();
    let cm = emu
        .object("", "configmaps", Some("default"), "app")
        .unwrap();
    assert_eq!(deploy["status"]["availableReplicas"], 1);
    assert!(
        rv(cm) > rv(deploy),
        "wave 1 was written after wave 0 became available"
    );

    // A wave 0 that never becomes healthy holds wave 1 back.
    let app2 = app.replace("a: b", "a: c");
    let b = world
        .git
        .commit(
            "B",
            &[
                ("clusters/w1/db.yaml", Some(&db("db:never-ready"))),
                ("clusters/w1/app.yaml", Some(&app2)),
            ],
        )
        .unwrap();
    pin(&world, &["w1"], &b).await.unwrap();
    let failed = world.wait_failed_at("w1", &b).await;
    assert!(
        failed.message.contains("wave 1 not started"),
        "{}",
        failed.message
    );
    assert_eq!(
        emu.object("", "configmaps", Some("default"), "app")
            .unwrap()["data"]["a"],
        "b"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn drift_is_repaired_from_watches_or_only_reported() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    // The periodic resync is far away: only the watches can notice drift in time.
    let cfg = WorldConfig {
        resync: std::time::Duration::from_secs(300),
        ..WorldConfig::default()
    };
    let mut world = World::start(dir.path(), cfg).await.unwrap();
    let a = world
        .git
        .commit(
            "A",
            &[
                ("clusters/d1/app.yaml", Some(&app("d1", "1.0"))),
                ("clusters/d2/app.yaml", Some(&app("d2", "1.0"))),
            ],
        )
        .unwrap();
    world.add_cluster("d1", &[]).await.unwrap();
    world.add_cluster("d2", &[]).await.unwrap();
    world.stop_agent(1).await.unwrap();
    let mut d2 = world.agent_config(1);
    d2.self_heal = false;
    world.start_agent_with(1, d2);
    world.wait_connected(&["d1", "d2"]).await;
    pin(&world, &["d1", "d2"], &a).await.unwrap();
    world.wait_healthy_at("d1", &a).await;
    world.wait_healthy_at("d2", &a).await;

    async fn cms(emu: &Emulator) -> kube::Api<k8s_openapi::api::core::v1::ConfigMap> {
        kube::Api::namespaced(ferry_integration::harness::kube_client(emu).await, "shop")
    }
    // Another writer changes a field ferry owns, then deletes the object.
    let d1 = cms(world.emulator("d1")).await;
    let edit = kube::api::Patch::Merge(serde_json::json!({"data": {"version": "hacked"}}));
    d1.patch("settings", &kube::api::PatchParams::default(), &edit)
        .await
        .unwrap();
    eventually("the edit is reverted", || async {
        (setting(world.emulator("d1")).as_deref() == Some("1.0")).then_some(())
    })
    .await;
    d1.delete("settings", &Default::default()).await.unwrap();
    eventually("the deleted object is back", || async {
        setting(world.emulator("d1"))
    })
    .await;
    // Taking the owner label away moves the object out of the agent's
    // label-filtered watch (a DELETED event there): it is put back too.
    let unlabel = kube::api::Patch::Merge(
        serde_json::json!({"metadata": {"labels": {"ferry.dev/owner": null}}}),
    );
    d1.patch("settings", &kube::api::PatchParams::default(), &unlabel)
        .await
        .unwrap();
    eventually("the owner label is back", || async {
        let o = world
            .emulator("d1")
            .object("", "configmaps", Some("shop"), "settings")?;
        (o["metadata"]["labels"]["ferry.dev/owner"] == "d1").then_some(())
    })
    .await;
    let s = eventually("drift corrections reported", || async {
        let s = world.cluster("d1").await.ok()?.status?;
        (s.drift_corrections >= 3 && s.last_correction_unix_ms > 0).then_some(s)
    })
    .await;
    assert_eq!(s.health, Health::Healthy as i32);

    // With self-heal off, drift is reported, not repaired.
    cms(world.emulator("d2"))
        .await
        .delete("settings", &Default::default())
        .await
        .unwrap();
    let s = eventually("d2 reports drift", || async {
        let s = world.cluster("d2").await.ok()?.status?;
        (s.health == Health::Degraded as i32).then_some(s)
    })
    .await;
    assert!(
        s.problems.iter().any(
            |p| p.object == "ConfigMap/shop/settings" && p.message.contains("self-heal is off")
        ),
        "{:?}",
        s.problems
    );
    assert!(
        world
            .emulator("d2")
            .object("", "configmaps", Some("shop"), "settings")
            .is_none()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mass_prune_is_refused_unless_the_pin_allows_it() {
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
    let (c1, c2, c3, c4) = (cm("one"), cm("two"), cm("three"), cm("four"));
    let a = world
        .git
        .commit(
            "A",
            &[
                ("clusters/m1/1.yaml", Some(&c1)),
                ("clusters/m1/2.yaml", Some(&c2)),
                ("clusters/m1/3.yaml", Some(&c3)),
                ("clusters/m1/4.yaml", Some(&c4)),
            ],
        )
        .unwrap();
    world.add_cluster("m1", &[]).await.unwrap();
    world.wait_connected(&["m1"]).await;
    pin(&world, &["m1"], &a).await.unwrap();
    world.wait_healthy_at("m1", &a).await;
    // Three of four objects leave Git: over the 50% valve.
    let b = world
        .git
        .commit(
            "B",
            &[
                ("clusters/m1/2.yaml", None),
                ("clusters/m1/3.yaml", None),
                ("clusters/m1/4.yaml", None),
            ],
        )
        .unwrap();
    pin(&world, &["m1"], &b).await.unwrap();
    let refused = world.wait_failed_at("m1", &b).await;
    assert!(
        refused.message.contains("refusing to prune 3 of 4"),
        "{}",
        refused.message
    );
    assert!(
        world
            .emulator("m1")
            .object("", "configmaps", Some("default"), "four")
            .is_some()
    );
    // The operator says it is meant: the same commit, allowed.
    world
        .ferry(&[
            "pin",
            "m1",
            "--commit",
            &b,
            "--allow-mass-prune",
            "--reason",
            "retire three apps",
        ])
        .await
        .unwrap();
    world.wait_healthy_at("m1", &b).await;
    assert!(
        world
            .emulator("m1")
            .object("", "configmaps", Some("default"), "four")
            .is_none()
    );
    assert!(
        world
            .emulator("m1")
            .object("", "configmaps", Some("default"), "one")
            .is_some()
    );
    let history = world.ferry(&["history", "m1"]).await.unwrap();
    assert!(history.contains("mass prune allowed"), "{history}");
}

/// A CRD and objects of its kind in one commit: the objects wait until the
/// CRD is Established (the emulator takes 1.5 s here, and refuses the kind
/// until then), instead of failing the sync.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn custom_objects_wait_for_their_crd_to_be_established() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let cfg = WorldConfig {
        crd_establish_delay: std::time::Duration::from_millis(1500),
        ..WorldConfig::default()
    };
    let mut world = World::start(dir.path(), cfg).await.unwrap();
    let crd = r#"apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.example.com}
spec:
  group: example.com
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget}
  versions:
  - name: v1
    served: true
    storage: true
    schema: {openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}}
"#;
    let widget = "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w1, namespace: default}\nspec: {size: 3}\n";
    // The widget sorts before the CRD by file name; order comes from kinds.
    let a = world
        .git
        .commit(
            "A",
            &[
                ("clusters/x1/a-widget.yaml", Some(widget)),
                ("clusters/x1/crd.yaml", Some(crd)),
            ],
        )
        .unwrap();
    world.add_cluster("x1", &[]).await.unwrap();
    world.wait_connected(&["x1"]).await;
    pin(&world, &["x1"], &a).await.unwrap();
    world.wait_healthy_at("x1", &a).await;
    let emu = world.emulator("x1");
    let crd = emu
        .object(
            "apiextensions.k8s.io",
            "customresourcedefinitions",
            None,
            "widgets.example.com",
        )
        .expect("the CRD");
    assert_eq!(crd["status"]["conditions"][1]["type"], "Established");
    assert_eq!(crd["status"]["conditions"][1]["status"], "True");
    let w = emu
        .object("example.com", "widgets", Some("default"), "w1")
        .expect("the widget, applied once its CRD was Established");
    assert_eq!(w["spec"]["size"], 3);
}

/// A bad day: the Git server is down. Moving a branch cannot be resolved
/// (a clear error naming the repository), but rolling a cluster back to a
/// commit it ran before still works end to end: the coordinator and the
/// agent both have that commit cached, and a commit never changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rollback_to_a_known_commit_works_while_git_is_down() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let (mut world, a) = one_cluster(dir.path(), "o1").await;
    let b = world
        .git
        .commit("B", &[("clusters/o1/app.yaml", Some(&app("o1", "2.0")))])
        .unwrap();
    pin(&world, &["o1"], &b).await.unwrap();
    world.wait_healthy_at("o1", &b).await;

    world.git.stop();
    let e = pin(&world, &["o1"], "main").await.unwrap_err();
    assert!(
        format!("{e:#}").contains(&format!("fetching {}", world.git.url)),
        "{e:#}"
    );
    assert_eq!(pin(&world, &["o1"], &a).await.unwrap(), a);
    world.wait_healthy_at("o1", &a).await;
    assert_eq!(setting(world.emulator("o1")).as_deref(), Some("1.0"));
}

/// A Git outage right after a new pin: the agent cannot fetch the new
/// commit and says so, but keeps enforcing the commit it applied last, from
/// its cache: drift is still repaired.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn during_a_git_outage_the_last_applied_commit_is_still_enforced() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let mut world = World::start(dir.path(), WorldConfig::default())
        .await
        .unwrap();
    let files = |v: &str| {
        vec![
            ("clusters/h1/app.yaml".to_string(), app("h1", v)),
            ("clusters/h2/app.yaml".to_string(), app("h2", v)),
        ]
    };
    let commit = |world: &World, v: &str| {
        let f = files(v);
        let refs: Vec<(&str, Option<&str>)> = f
            .iter()
            .map(|(p, d)| (p.as_str(), Some(d.as_str())))
            .collect();
        world.git.commit(v, &refs).unwrap()
    };
    let a = commit(&world, "1.0");
    world.add_cluster("h1", &[]).await.unwrap();
    world.add_cluster("h2", &[]).await.unwrap();
    world.wait_connected(&["h1", "h2"]).await;
    pin(&world, &["h1", "h2"], &a).await.unwrap();
    world.wait_healthy_at("h1", &a).await;
    // B reaches the coordinator (through h2's pin), then Git goes down.
    let b = commit(&world, "2.0");
    assert_eq!(pin(&world, &["h2"], "main").await.unwrap(), b);
    world.wait_healthy_at("h2", &b).await;
    world.git.stop();

    pin(&world, &["h1"], &b).await.unwrap();
    let s = world.wait_failed_at("h1", &b).await;
    assert!(
        s.message.contains("fetching git://")
            && s.message.contains(&format!("still enforcing {}", &a[..8])),
        "{}",
        s.message
    );
    assert_eq!(s.applied_commit, a);
    assert_eq!(setting(world.emulator("h1")).as_deref(), Some("1.0"));

    let cms: kube::Api<k8s_openapi::api::core::v1::ConfigMap> = kube::Api::namespaced(
        ferry_integration::harness::kube_client(world.emulator("h1")).await,
        "shop",
    );
    let edit = kube::api::Patch::Merge(serde_json::json!({"data": {"version": "hacked"}}));
    cms.patch("settings", &kube::api::PatchParams::default(), &edit)
        .await
        .unwrap();
    eventually("drift repaired against A while Git is down", || async {
        (setting(world.emulator("h1")).as_deref() == Some("1.0")).then_some(())
    })
    .await;
    // Between retries the agent reports Syncing; the outcome stays Failed.
    let s = eventually("the repair counted, the target still Failed", || async {
        let s = world.cluster("h1").await.ok()?.status?;
        (s.drift_corrections >= 1 && s.phase == Phase::Failed as i32).then_some(s)
    })
    .await;
    assert_eq!(s.applied_commit, a, "{}", s.message);
}
