//! Helm charts as cluster sources: a vendored chart laid out like public
//! ones (a subchart, helpers, CRDs, hooks) rendered by the agent with a
//! `helm template`-compatible command (Helm's own engine here), values per
//! cluster, hooks in waves; a broken chart is a named error and writes
//! nothing.

use crate::fleet::pin;
use ferry_integration::harness::init_tracing;
use ferry_integration::world::{World, WorldConfig};
use std::path::Path;

/// The vendored chart's files, as `charts/addons/…` of the repository.
fn chart_files() -> Vec<(String, String)> {
    fn walk(dir: &Path, prefix: &str, out: &mut Vec<(String, String)>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let name = format!("{prefix}/{}", e.file_name().to_string_lossy());
            if e.file_type().unwrap().is_dir() {
                walk(&e.path(), &name, out);
            } else {
                out.push((name, std::fs::read_to_string(e.path()).unwrap()));
            }
        }
    }
    let mut out = vec![];
    let here = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/charts/addons");
    walk(&here, "charts/addons", &mut out);
    out
}

const FERRY_YAML: &str = r#"helm:
  chart: /charts/addons
  releaseName: edge
  namespace: addons
  createNamespace: true
  valuesFiles: ["/values/{label.region}.yaml"]
  values:
    cluster: "{cluster}"
    region: "{label.region}"
    global:
      cluster: "{cluster}"
"#;

fn commit(world: &World, msg: &str, files: &[(String, String)]) -> String {
    let refs: Vec<(&str, Option<&str>)> = files
        .iter()
        .map(|(p, c)| (p.as_str(), Some(c.as_str())))
        .collect();
    world.git.commit(msg, &refs).unwrap()
}

fn with(files: &[(String, String)], path: &str, text: &str) -> Vec<(String, String)> {
    let mut out: Vec<_> = files.iter().filter(|(p, _)| p != path).cloned().collect();
    out.push((path.to_string(), text.to_string()));
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_chart_renders_per_cluster_with_crds_and_hooks_first() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let mut world = World::start(dir.path(), WorldConfig::default())
        .await
        .unwrap();
    let mut files = chart_files();
    files.push(("clusters/h1/ferry.yaml".into(), FERRY_YAML.into()));
    files.push(("clusters/h2/ferry.yaml".into(), FERRY_YAML.into()));
    files.push(("values/eu.yaml".into(), "replicas: 2\n".into()));
    files.push((
        "values/us.yaml".into(),
        "replicas: 3\nwidget:\n  size: large\n".into(),
    ));
    let a = commit(&world, "A: the addons chart", &files);
    world.add_cluster("h1", &[("region", "eu")]).await.unwrap();
    world.add_cluster("h2", &[("region", "us")]).await.unwrap();
    world.wait_connected(&["h1", "h2"]).await;
    pin(&world, &["h1", "h2"], &a).await.unwrap();
    world.wait_healthy_at("h1", &a).await;
    world.wait_healthy_at("h2", &a).await;

    for (c, region, replicas, size) in [("h1", "eu", 2, "small"), ("h2", "us", 3, "large")] {
        let emu = world.emulator(c);
        let settings = emu
            .object("", "configmaps", Some("addons"), "edge-addons-settings")
            .unwrap_or_else(|| panic!("{c}: no settings ConfigMap"));
        assert_eq!(settings["data"]["cluster"], c);
        assert_eq!(settings["data"]["region"], region);
        assert_eq!(settings["data"]["namespace"], "addons");
        assert_eq!(
            settings["metadata"]["labels"]["helm.sh/chart"],
            "addons-0.3.0"
        );
        let deploy = emu
            .object("apps", "deployments", Some("addons"), "edge-addons")
            .unwrap();
        assert_eq!(deploy["spec"]["replicas"], replicas);
        let widget = emu
            .object("example.com", "widgets", Some("addons"), "edge-addons")
            .unwrap();
        assert_eq!(widget["spec"]["size"], size);
        // The subchart, with its parent's values and the global.
        let greeter = emu
            .object("", "configmaps", Some("addons"), "edge-greeter")
            .unwrap();
        assert_eq!(greeter["data"]["message"], "hello");
        assert_eq!(greeter["data"]["cluster"], c);
        // The pre-install hook ran (its Job is there) before the chart's
        // objects; the test hook is `helm test`'s, not applied.
        let rv = |o: &serde_json::Value| {
            o["metadata"]["resourceVersion"]
                .as_str()
                .unwrap()
                .parse::<u64>()
                .unwrap()
        };
        let job = emu
            .object("batch", "jobs", Some("addons"), "edge-addons-migrate")
            .unwrap();
        let crd = emu
            .object(
                "apiextensions.k8s.io",
                "customresourcedefinitions",
                None,
                "widgets.example.com",
            )
            .unwrap();
        assert!(rv(&crd) < rv(&job), "{c}: the CRD came after the hook");
        assert!(rv(&job) < rv(&deploy), "{c}: the hook came after the chart");
        assert!(
            emu.object("", "pods", Some("addons"), "edge-addons-smoke")
                .is_none()
        );
    }

    // The next commit changes values: `ferry diff` renders the chart in
    // the cluster, with the cluster's labels, and writes nothing.
    let b = commit(
        &world,
        "B: more replicas in eu",
        &with(&files, "values/eu.yaml", "replicas: 4\n"),
    );
    world.emulator("h1").reset_counters();
    let shown = world
        .ferry(&["diff", "h1", "h2", "--commit", &b])
        .await
        .unwrap();
    assert!(shown.contains("spec.replicas: 2 -> 4"), "{shown}");
    assert!(
        shown.contains("h2: 0 to create, 0 to change, 0 to prune, 7 unchanged"),
        "{shown}"
    );
    assert_eq!(world.emulator("h1").writes_except("ferry-system"), 0);
    pin(&world, &["h1"], &b).await.unwrap();
    world.wait_healthy_at("h1", &b).await;
    let deploy = world
        .emulator("h1")
        .object("apps", "deployments", Some("addons"), "edge-addons")
        .unwrap();
    assert_eq!(deploy["spec"]["replicas"], 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_broken_chart_is_named_and_changes_nothing() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let mut world = World::start(dir.path(), WorldConfig::default())
        .await
        .unwrap();
    let mut files = chart_files();
    files.push(("clusters/b1/ferry.yaml".into(), FERRY_YAML.into()));
    files.push(("values/eu.yaml".into(), "replicas: 1\n".into()));
    let a = commit(&world, "A", &files);
    world.add_cluster("b1", &[("region", "eu")]).await.unwrap();
    world.wait_connected(&["b1"]).await;
    pin(&world, &["b1"], &a).await.unwrap();
    world.wait_healthy_at("b1", &a).await;

    let widget = "charts/addons/templates/widget.yaml";
    let hooks = "charts/addons/templates/hooks.yaml";
    let original = |p: &str| files.iter().find(|(f, _)| f == p).unwrap().1.clone();
    type Case<'a> = (&'a str, Vec<(String, String)>, Vec<&'a str>);
    let cases: Vec<Case> = vec![
        (
            "a template that does not parse",
            with(
                &files,
                widget,
                &format!("{}\n{{{{ if }}}}\n", original(widget)),
            ),
            vec!["parse error", "addons/templates/widget.yaml"],
        ),
        (
            "a value the chart requires is missing",
            with(
                &files,
                "clusters/b1/ferry.yaml",
                &FERRY_YAML.replace("    cluster: \"{cluster}\"\n", ""),
            ),
            vec!["values.cluster is required"],
        ),
        (
            "a hook Ferry cannot honour",
            with(
                &files,
                hooks,
                &original(hooks).replace("test\n", "pre-delete\n"),
            ),
            vec![
                "Pod/addons/edge-addons-smoke",
                "Helm hook pre-delete is not supported",
                "ignoreHooks",
            ],
        ),
        (
            "a label the values need",
            with(
                &files,
                "clusters/b1/ferry.yaml",
                &FERRY_YAML.replace("{label.region}\"\n", "{label.zone}\"\n"),
            ),
            vec!["ferry.yaml", "values.region", "zone", "b1"],
        ),
        (
            "a chart outside the repository",
            with(
                &files,
                "clusters/b1/ferry.yaml",
                &FERRY_YAML.replace("/charts/addons", "../../../elsewhere"),
            ),
            vec!["clusters/b1/ferry.yaml", "leaves the repository"],
        ),
        (
            "a subchart missing from charts/",
            files.clone(),
            vec!["missing in charts/ directory: greeter"],
        ),
    ];
    for (what, tree, expected) in cases {
        // Each commit restores every file, then makes its one change.
        let mut changes: Vec<(&str, Option<&str>)> = tree
            .iter()
            .map(|(p, c)| (p.as_str(), Some(c.as_str())))
            .collect();
        if what.contains("subchart") {
            for (p, _) in files.iter().filter(|(p, _)| p.contains("/charts/greeter/")) {
                changes.retain(|(q, _)| q != p);
                changes.push((p.as_str(), None));
            }
        }
        let c = world.git.commit(what, &changes).unwrap();
        world.emulator("b1").reset_counters();
        pin(&world, &["b1"], &c).await.unwrap();
        let status = world.wait_failed_at("b1", &c).await;
        let said = format!(
            "{} {}",
            status.message,
            status
                .problems
                .iter()
                .map(|p| format!("{} ({}): {}", p.source, p.object, p.message))
                .collect::<Vec<_>>()
                .join("; ")
        );
        for e in &expected {
            assert!(said.contains(e), "{what}: no {e:?} in {said}");
        }
        assert!(said.contains("nothing was applied"), "{what}: {said}");
        assert_eq!(status.applied_commit, a, "{what}");
        assert_eq!(
            world.emulator("b1").writes_except("ferry-system"),
            0,
            "{what}: {:?}",
            world.emulator("b1").counters().requests
        );
    }
}
