//! What the agent refuses to read: oversized files and documents, and
//! symbolic links (which could otherwise point a kustomize generator at the
//! agent's own service-account token). Each refusal names the file and
//! writes nothing.

use crate::fleet::{app, pin};
use ferry_integration::harness::init_tracing;
use ferry_integration::world::{World, WorldConfig};

async fn world_with(dir: &std::path::Path, name: &str) -> (World, String) {
    let mut world = World::start(dir, WorldConfig::default()).await.unwrap();
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn oversized_files_and_documents_are_refused_by_name() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let (world, a) = world_with(dir.path(), "big").await;
    let emu = world.emulator("big");

    // A 17 MiB manifest (the limit is 16): refused before it is read, nothing written.
    let huge = format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: huge, namespace: shop}}\ndata:\n  x: \"{}\"\n",
        "z".repeat(17 << 20)
    );
    let b = world
        .git
        .commit("B", &[("clusters/big/huge.yaml", Some(&huge))])
        .unwrap();
    let writes = emu.writes_except("ferry-system");
    pin(&world, &["big"], &b).await.unwrap();
    let s = world.wait_failed_at("big", &b).await;
    assert!(
        s.message.contains("clusters/big/huge.yaml") && s.message.contains("over the limit"),
        "{s:?}"
    );
    assert_eq!(s.applied_commit, a);

    // One 4 MiB document in a small file set: named by file and document.
    let doc = format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: doc, namespace: shop}}\ndata:\n  x: \"{}\"\n",
        "z".repeat(4 << 20)
    );
    let c = world
        .git
        .commit(
            "C",
            &[
                ("clusters/big/huge.yaml", None),
                ("clusters/big/doc.yaml", Some(&format!("---\n{doc}"))),
            ],
        )
        .unwrap();
    pin(&world, &["big"], &c).await.unwrap();
    let s = world.wait_failed_at("big", &c).await;
    let problem = s
        .problems
        .iter()
        .find(|p| p.source == "doc.yaml#2")
        .unwrap_or_else(|| panic!("{s:?}"));
    assert!(problem.message.contains("over the"), "{problem:?}");
    assert_eq!(
        emu.writes_except("ferry-system"),
        writes,
        "nothing was written"
    );

    // Files that are not manifests are not read at all: a large binary
    // beside the manifests does not stop the sync.
    let d = world
        .git
        .commit(
            "D",
            &[
                ("clusters/big/doc.yaml", None),
                ("clusters/big/blob.bin", Some(&"b".repeat(17 << 20))),
            ],
        )
        .unwrap();
    pin(&world, &["big"], &d).await.unwrap();
    world.wait_healthy_at("big", &d).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn symbolic_links_are_never_followed() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let (world, _) = world_with(dir.path(), "sl").await;
    let emu = world.emulator("sl");
    // A file standing for the agent's service-account token.
    let secrets = dir.path().join("serviceaccount");
    std::fs::create_dir_all(&secrets).unwrap();
    let token = secrets.join("token");
    std::fs::write(&token, "SA-TOKEN-DO-NOT-LEAK").unwrap();
    let link = |at: &str| {
        let p = world.git.work.join(at);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(&token, &p).unwrap();
    };

    // A symbolic link among the manifests: refused by name.
    link("clusters/sl/token.yaml");
    let b = world.git.commit("B", &[]).unwrap();
    let writes = emu.writes_except("ferry-system");
    pin(&world, &["sl"], &b).await.unwrap();
    let s = world.wait_failed_at("sl", &b).await;
    assert!(
        s.message.contains("clusters/sl/token.yaml") && s.message.contains("symbolic link"),
        "{s:?}"
    );
    std::fs::remove_file(world.git.work.join("clusters/sl/token.yaml")).unwrap();

    // A kustomization whose generator reads a link to the token.
    let kustomization = "resources: [app.yaml]\nconfigMapGenerator:\n- name: stolen\n  namespace: shop\n  files: [token]\n";
    link("clusters/sl/token");
    let c = world
        .git
        .commit(
            "C",
            &[("clusters/sl/kustomization.yaml", Some(kustomization))],
        )
        .unwrap();
    pin(&world, &["sl"], &c).await.unwrap();
    let s = world.wait_failed_at("sl", &c).await;
    assert!(
        s.message.contains("clusters/sl/token") && s.message.contains("symbolic link"),
        "{s:?}"
    );

    // The same through a link elsewhere in the repository.
    std::fs::remove_file(world.git.work.join("clusters/sl/token")).unwrap();
    link("shared/token");
    let elsewhere = "resources: [app.yaml]\nconfigMapGenerator:\n- name: stolen\n  namespace: shop\n  files: [../../shared/token]\n";
    let d = world
        .git
        .commit("D", &[("clusters/sl/kustomization.yaml", Some(elsewhere))])
        .unwrap();
    pin(&world, &["sl"], &d).await.unwrap();
    let s = world.wait_failed_at("sl", &d).await;
    assert!(s.message.contains("kustomize"), "{s:?}");

    // Nothing of the token reached the cluster, and nothing was written.
    assert_eq!(emu.writes_except("ferry-system"), writes);
    for cm in emu.objects("", "configmaps") {
        assert!(
            !cm.to_string().contains("SA-TOKEN-DO-NOT-LEAK"),
            "the token leaked: {cm}"
        );
    }
}

/// What only the API server can refuse (field types, unknown fields,
/// immutable fields) is refused at the dry-run, named by object, and
/// nothing is written: not even the objects the server would have taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_servers_refusals_name_the_object_and_nothing_is_written() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let (world, a) = world_with(dir.path(), "rf").await;
    let emu = world.emulator("rf");
    let writes = emu.writes_except("ferry-system");
    let with = |replicas: &str, extra: &str, app: &str| app_with(replicas, extra, app);
    for (what, yaml, needle) in [
        (
            "a string for a number",
            with("\"two\"", "", "web"),
            "spec.replicas",
        ),
        (
            "a misspelt field",
            with("2", "  replicaz: 3\n", "web"),
            "replicaz",
        ),
        (
            "a changed selector",
            with("2", "", "other"),
            "field is immutable",
        ),
    ] {
        let c = world
            .git
            .commit(what, &[("clusters/rf/app.yaml", Some(&yaml))])
            .unwrap();
        pin(&world, &["rf"], &c).await.unwrap();
        let s = world.wait_failed_at("rf", &c).await;
        let p = s
            .problems
            .iter()
            .find(|p| p.object == "Deployment/shop/web")
            .unwrap_or_else(|| panic!("{what}: {s:?}"));
        assert!(p.message.contains(needle), "{what}: {p:?}");
        assert!(s.message.contains("nothing was applied"), "{what}: {s:?}");
        assert_eq!(s.applied_commit, a, "{what}");
    }
    assert_eq!(
        emu.writes_except("ferry-system"),
        writes,
        "nothing was written"
    );
}

/// `app` with the Deployment's replicas, extra spec lines and app label.
fn app_with(replicas: &str, extra: &str, label: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\n  namespace: shop\ndata:\n  version: \"2.0\"\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n  namespace: shop\nspec:\n  replicas: {replicas}\n{extra}  selector:\n    matchLabels: {{app: {label}}}\n  template:\n    metadata:\n      labels: {{app: {label}}}\n    spec:\n      containers:\n      - name: web\n        image: nginx:1.0\n"
    )
}
