//! `ferry diff` and `rollout start --preview`: each agent renders the
//! commit and asks its own API server (dry-runs); nothing is written.

use crate::fleet::{pin, setting};
use ferry_integration::harness::init_tracing;
use ferry_integration::world::{World, WorldConfig};
use serde_json::Value;

fn manifests(version: &str, replicas: u32, extra: &[&str], password: &str) -> String {
    let mut s = format!(
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
  version: "{version}"
---
apiVersion: v1
kind: Secret
metadata:
  name: creds
  namespace: shop
stringData:
  password: {password}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: shop
spec:
  replicas: {replicas}
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
    );
    for name in extra {
        s.push_str(&format!(
            "---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n  namespace: shop\ndata:\n  a: b\n"
        ));
    }
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn diff_shows_what_each_cluster_would_change_and_writes_nothing() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let mut world = World::start(dir.path(), WorldConfig::default())
        .await
        .unwrap();
    let files = |m: &str| -> Vec<(String, String)> {
        ["d1", "d2", "d3"]
            .iter()
            .map(|c| (format!("clusters/{c}/app.yaml"), m.to_string()))
            .collect()
    };
    let commit = |world: &World, msg: &str, m: &str| {
        let f = files(m);
        let refs: Vec<(&str, Option<&str>)> = f
            .iter()
            .map(|(p, c)| (p.as_str(), Some(c.as_str())))
            .collect();
        world.git.commit(msg, &refs).unwrap()
    };
    let a = commit(
        &world,
        "A",
        &manifests("1.0", 2, &["old", "keep"], "s3cret-one"),
    );
    world
        .add_cluster("d1", &[("ring", "canary")])
        .await
        .unwrap();
    world.add_cluster("d2", &[("ring", "main")]).await.unwrap();
    world.add_cluster("d3", &[("ring", "main")]).await.unwrap();
    world.wait_connected(&["d1", "d2", "d3"]).await;
    pin(&world, &["d1", "d2", "d3"], &a).await.unwrap();
    for c in ["d1", "d2", "d3"] {
        world.wait_healthy_at(c, &a).await;
    }
    // d3 goes offline.
    let i = world.index("d3");
    world.stop_agent(i).await.unwrap();

    let b = commit(
        &world,
        "B",
        &manifests("2.0", 3, &["keep", "fresh"], "s3cret-two"),
    );
    for c in ["d1", "d2"] {
        world.emulator(c).reset_counters();
    }
    let shown = world
        .ferry(&["diff", "d1", "d2", "d3", "--commit", &b, "--timeout", "5s"])
        .await
        .unwrap();
    assert!(
        shown.contains(&format!("Preview of {}", &b[..8])),
        "{shown}"
    );
    assert!(
        shown.contains("d1: 1 to create, 3 to change, 1 to prune"),
        "{shown}"
    );
    for expected in [
        "~ ConfigMap/shop/settings",
        "data.version: \"1.0\" -> \"2.0\"",
        "~ Deployment/shop/web",
        "spec.replicas: 2 -> 3",
        "spec.template.spec.containers[0].image: \"nginx:1.0\" -> \"nginx:2.0\"",
        "+ ConfigMap/shop/fresh",
        "- ConfigMap/shop/old",
        "~ Secret/shop/creds",
        "(hidden) -> (hidden)",
        "d3: not previewed: the cluster is not connected",
    ] {
        assert!(shown.contains(expected), "no {expected:?} in:\n{shown}");
    }
    // Secret values never leave the cluster, not even encoded.
    for secret in ["s3cret", "czNjcmV0"] {
        assert!(!shown.contains(secret), "{shown}");
    }
    // Nothing was written; the clusters still run A.
    for c in ["d1", "d2"] {
        let emu = world.emulator(c);
        assert_eq!(
            emu.writes_except("ferry-system"),
            0,
            "{c}: {:?}",
            emu.counters().requests
        );
        assert_eq!(setting(emu).as_deref(), Some("1.0"));
    }

    // For tools, and in one line per cluster.
    let json: Value = serde_json::from_str(
        &world
            .ferry(&[
                "-o",
                "json",
                "diff",
                "--selector",
                "ring=canary",
                "--commit",
                &b,
            ])
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(json["commit"], b);
    assert_eq!(json["clusters"].as_array().unwrap().len(), 1);
    let changes = json["clusters"][0]["changes"].as_array().unwrap();
    assert!(changes.iter().any(|c| c["action"] == "update"
        && c["object"] == "Deployment/shop/web"
        && c["fields"][0]["path"] == "spec.replicas"));
    let summary = world
        .ferry(&["diff", "d1", "d2", "--commit", &b, "--summary"])
        .await
        .unwrap();
    assert!(!summary.contains("spec.replicas"), "{summary}");
    assert!(
        summary.contains("d2: 1 to create, 3 to change, 1 to prune, 2 unchanged"),
        "{summary}"
    );

    // Most objects leave Git: the valve's verdict; a name the server refuses.
    let c = commit(
        &world,
        "C",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: typo\n  namespace: shop\ndta:\n  a: b\n",
    );
    let shown = world.ferry(&["diff", "d1", "--commit", &c]).await.unwrap();
    assert!(shown.contains("! refusing to prune"), "{shown}");
    assert!(
        shown.contains("x ConfigMap/shop/typo: the server would reject it")
            && shown.contains("dta"),
        "{shown}"
    );
    assert_eq!(world.emulator("d1").writes_except("ferry-system"), 0);

    // A rollout shows its waves and each cluster's preview, then starts.
    let refused = world
        .ferry(&[
            "rollout",
            "start",
            "--commit",
            &b,
            "--wave",
            "ring=canary",
            "--wave",
            "100%",
            "--preview",
        ])
        .await
        .unwrap_err()
        .to_string();
    assert!(refused.contains("give --yes"), "{refused}");
    let started = world
        .ferry(&[
            "rollout",
            "start",
            "--commit",
            &b,
            "--wave",
            "ring=canary",
            "--wave",
            "100%",
            "--preview",
            "--yes",
            "--offline",
            "skip",
        ])
        .await
        .unwrap();
    assert!(started.contains("wave-1 (ring=canary):"), "{started}");
    assert!(
        started.contains("d1: 1 to create, 3 to change"),
        "{started}"
    );
    assert!(started.contains("d3: not previewed"), "{started}");
    assert!(started.contains("started rollout"), "{started}");
    world.wait_healthy_at("d1", &b).await;
}
