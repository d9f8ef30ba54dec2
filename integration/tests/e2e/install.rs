//! Installing the agent as an operator would: with the rights a chart gives
//! it (RBAC, enforced by the emulator), including a tenant agent limited to
//! its namespaces.

use crate::fleet::pin;
use ferry_integration::harness::{init_tracing, kube_client};
use ferry_integration::world::{World, WorldConfig};
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use serde_json::{Value, json};

/// Applies objects as the cluster's admin.
pub(crate) async fn admin_apply(client: &kube::Client, objects: &[Value]) {
    let discovery = kube::Discovery::new(client.clone()).run().await.unwrap();
    for o in objects {
        let (group, version) = o["apiVersion"]
            .as_str()
            .unwrap()
            .rsplit_once('/')
            .unwrap_or(("", o["apiVersion"].as_str().unwrap()));
        let gvk = kube::api::GroupVersionKind::gvk(group, version, o["kind"].as_str().unwrap());
        let (ar, caps) = discovery.resolve_gvk(&gvk).expect("a served kind");
        let name = o["metadata"]["name"].as_str().unwrap();
        let api: Api<DynamicObject> = match o["metadata"]["namespace"].as_str() {
            Some(ns) if caps.scope == kube::discovery::Scope::Namespaced => {
                Api::namespaced_with(client.clone(), ns, &ar)
            }
            _ => Api::all_with(client.clone(), &ar),
        };
        api.patch(name, &PatchParams::apply("test").force(), &Patch::Apply(o))
            .await
            .unwrap_or_else(|e| panic!("applying {name}: {e}"));
    }
}

/// A Role with every right in `ns`, bound to the agent's service account.
fn tenant_rights(ns: &str) -> [Value; 2] {
    [
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
               "metadata": {"name": "ferry-agent", "namespace": ns},
               "rules": [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}]}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
               "metadata": {"name": "ferry-agent", "namespace": ns},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "ferry-agent"},
               "subjects": [{"kind": "ServiceAccount", "name": "ferry-agent", "namespace": "ferry-system"}]}),
    ]
}

/// A tenant agent, with Roles in its own namespace and `team-a` only (no
/// cluster-wide right at all), converges there; an object outside is
/// refused by name before anything is written, not met with a 403 halfway.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_namespaced_agent_keeps_to_its_namespaces_under_rbac() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let mut world = World::start(dir.path(), WorldConfig::default())
        .await
        .unwrap();
    let cm = |name: &str, ns: &str| {
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n  namespace: {ns}\ndata:\n  a: b\n"
        )
    };
    let app = format!(
        "{}---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: defaulted\ndata:\n  a: b\n",
        cm("settings", "team-a")
    );
    let a = world
        .git
        .commit("A", &[("clusters/t1/app.yaml", Some(&app))])
        .unwrap();
    let i = world.add_cluster_without_agent("t1", &[]).await.unwrap();
    let emulator = world.emulator("t1");
    let admin = kube_client(emulator).await;
    let mut objects = vec![
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "ferry-system"}}),
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team-a"}}),
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team-b"}}),
    ];
    objects.extend(tenant_rights("ferry-system"));
    objects.extend(tenant_rights("team-a"));
    admin_apply(&admin, &objects).await;
    let token = emulator.service_account_token("ferry-system", "ferry-agent");
    let kubeconfig = dir.path().join("t1-agent.kubeconfig");
    std::fs::write(&kubeconfig, emulator.kubeconfig_with_token(&token)).unwrap();

    let mut cfg = world.agent_config(i);
    cfg.kubeconfig = Some(kubeconfig);
    cfg.namespaces = vec!["team-a".into()];
    world.start_agent_with(i, cfg);
    world.wait_connected(&["t1"]).await;
    pin(&world, &["t1"], &a).await.unwrap();
    world.wait_healthy_at("t1", &a).await;
    let emulator = world.emulator("t1");
    assert!(
        emulator
            .object("", "configmaps", Some("team-a"), "defaulted")
            .is_some(),
        "an object without a namespace goes to the agent's first"
    );

    // An object in another namespace: refused by name, nothing written.
    let b = world
        .git
        .commit(
            "B",
            &[
                (
                    "clusters/t1/app.yaml",
                    Some(&cm("settings", "team-a").replace("a: b", "a: c")),
                ),
                ("clusters/t1/other.yaml", Some(&cm("intruder", "team-b"))),
            ],
        )
        .unwrap();
    emulator.reset_counters();
    pin(&world, &["t1"], &b).await.unwrap();
    let failed = world.wait_failed_at("t1", &b).await;
    let problem = failed
        .problems
        .iter()
        .find(|p| p.object.contains("intruder"))
        .unwrap_or_else(|| panic!("{failed:?}"));
    assert!(
        problem
            .message
            .contains("outside this agent's namespaces (team-a)"),
        "{problem:?}"
    );
    assert_eq!(
        emulator.writes_except("ferry-system"),
        0,
        "{:?}",
        emulator.counters().requests
    );
    assert_eq!(
        emulator
            .object("", "configmaps", Some("team-a"), "settings")
            .unwrap()["data"]["a"],
        "b"
    );
}
