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

mod charts {
    use super::*;
    use ferry_integration::harness::{eventually, helm, http_get, kubectl, workspace_binary};
    use kube_emulator::Emulator;
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command};

    /// The Kubernetes version the emulator serves.
    const KUBE: &str = "1.33.0";

    fn agent_values(address: &str) -> Value {
        json!({
            "cluster": {"name": "eu-1"},
            "coordinator": {"address": address, "ca": "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"},
            "joinToken": {"value": "ferry-join-abc"},
        })
    }

    fn merged(mut base: Value, over: Value) -> Value {
        if let (Some(b), Some(o)) = (base.as_object_mut(), over.as_object()) {
            for (k, v) in o {
                let next = match b.remove(k) {
                    Some(old) if old.is_object() && v.is_object() => merged(old, v.clone()),
                    _ => v.clone(),
                };
                b.insert(k.clone(), next);
            }
        }
        base
    }

    fn of_kind<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
        objects.iter().filter(|o| o["kind"] == kind).collect()
    }

    fn check_pod_hardening(pod: &Value, what: &str) {
        let sc = &pod["securityContext"];
        assert_eq!(sc["runAsNonRoot"], true, "{what}");
        assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault", "{what}");
        for c in pod["containers"].as_array().unwrap() {
            let csc = &c["securityContext"];
            assert_eq!(csc["readOnlyRootFilesystem"], true, "{what}");
            assert_eq!(csc["allowPrivilegeEscalation"], false, "{what}");
            assert_eq!(csc["capabilities"]["drop"], json!(["ALL"]), "{what}");
            assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz", "{what}");
            assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz", "{what}");
            assert!(c["resources"]["limits"]["memory"].is_string(), "{what}");
        }
    }

    #[test]
    fn charts_render_lint_and_validate_and_follow_the_workspace_version() {
        let agent_sets = [
            ("defaults", agent_values("https://ferry.example.com:7443")),
            (
                "tenant",
                merged(
                    agent_values("https://ferry.example.com:7443"),
                    json!({"rbac": {"scope": "namespaces", "namespaces": ["team-a", "team-b"]},
                           "git": {"credentials": {"username": "u", "password": "p"}, "cacheMiB": 1024},
                           "networkPolicy": {"enabled": true}, "selfHeal": false,
                           "verification": {"keysSecret": "release-keys", "mode": "tag"},
                           "joinToken": {"value": "", "existingSecret": "given"},
                           "coordinator": {"ca": "", "existingCaConfigMap": "ca"}}),
                ),
            ),
            (
                "coordinator replicas",
                agent_values("https://ferry-0.example.com:7443,https://ferry-1.example.com:7443"),
            ),
        ];
        for (what, values) in &agent_sets {
            let (objects, notes) =
                helm::render("ferry-agent", "ferry-agent", "ferry-system", values)
                    .unwrap_or_else(|e| panic!("{what}: {e}"));
            assert!(
                notes.contains("kubectl -n ferry-system get events"),
                "{notes}"
            );
            assert_eq!(
                helm::lint("ferry-agent", values).unwrap(),
                Vec::<String>::new(),
                "{what}"
            );
            assert_eq!(
                helm::validate(KUBE, &objects).unwrap(),
                Vec::<String>::new(),
                "{what}"
            );
            let deploy = of_kind(&objects, "Deployment")[0];
            let pod = &deploy["spec"]["template"]["spec"];
            check_pod_hardening(pod, what);
            let args: Vec<&str> = pod["containers"][0]["args"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(Value::as_str)
                .collect();
            let cache_mib = values["git"]["cacheMiB"].as_i64().unwrap_or(512);
            assert!(
                args.contains(&format!("--git-cache-mib={cache_mib}").as_str()),
                "{args:?}"
            );
            let cache = pod["volumes"]
                .as_array()
                .unwrap()
                .iter()
                .find(|v| v["name"] == "cache")
                .unwrap();
            assert_eq!(
                cache["emptyDir"]["sizeLimit"],
                format!("{}Mi", cache_mib + cache_mib / 4),
                "{what}"
            );
        }
        // The tenant: Roles in its namespaces and its own, nothing cluster-wide.
        let (tenant, _) = helm::render(
            "ferry-agent",
            "ferry-agent",
            "ferry-system",
            &agent_sets[1].1,
        )
        .unwrap();
        assert!(of_kind(&tenant, "ClusterRole").is_empty());
        let roles: Vec<&str> = of_kind(&tenant, "Role")
            .iter()
            .map(|r| r["metadata"]["namespace"].as_str().unwrap())
            .collect();
        assert_eq!(roles, ["team-a", "team-b", "ferry-system"]);
        assert_eq!(of_kind(&tenant, "NetworkPolicy").len(), 1);

        let coordinator_sets = [
            (
                "defaults",
                json!({"repo": "https://git.example.com/fleet.git"}),
            ),
            (
                "given secrets",
                json!({"repo": "ssh://git@git.example.com/fleet.git",
                       "tls": {"existingSecret": "serving", "extraSANs": ["ferry.example.com"]},
                       "ca": {"existingSecret": "ca"}, "bootstrapToken": {"existingSecret": "admin"},
                       "git": {"credentials": {"identity": "key", "known_hosts": "h"}},
                       "metrics": {"serviceMonitor": {"enabled": true}},
                       "verification": {"keysConfigMap": "release-keys"},
                       "service": {"type": "LoadBalancer"}}),
            ),
            (
                "replicas on PostgreSQL",
                json!({"repo": "https://git.example.com/fleet.git", "replicas": 3,
                       "store": {"postgres": {"existingSecret": "ferry-db", "caSecret": "ferry-db-ca"}}}),
            ),
        ];
        for (what, values) in &coordinator_sets {
            let (objects, notes) =
                helm::render("ferry-coordinator", "ferry", "ferry-system", values)
                    .unwrap_or_else(|e| panic!("{what}: {e}"));
            assert!(notes.contains("ferry cluster add"), "{notes}");
            assert_eq!(
                helm::lint("ferry-coordinator", values).unwrap(),
                Vec::<String>::new(),
                "{what}"
            );
            // (a ServiceMonitor is prometheus-operator's: no schema here)
            let core: Vec<Value> = objects
                .iter()
                .filter(|o| o["kind"] != "ServiceMonitor")
                .cloned()
                .collect();
            assert_eq!(
                helm::validate(KUBE, &core).unwrap(),
                Vec::<String>::new(),
                "{what}"
            );
            let sts = of_kind(&objects, "StatefulSet")[0];
            check_pod_hardening(&sts["spec"]["template"]["spec"], what);
            let args = sts["spec"]["template"]["spec"]["containers"][0]["args"].to_string();
            if *what == "replicas on PostgreSQL" {
                assert_eq!(sts["spec"]["replicas"], 3);
                assert!(args.contains("--store-file=/etc/ferry/store/dsn"), "{args}");
                assert!(
                    args.contains("--store-ca=/etc/ferry/store-ca/ca.crt"),
                    "{args}"
                );
            } else {
                assert_eq!(sts["spec"]["replicas"], 1);
                assert!(!args.contains("--store"), "{what}: {args}");
            }
            assert_eq!(of_kind(&objects, "PodDisruptionBudget").len(), 1);
        }

        // Every value is in the chart's README table.
        fn leaves(v: &Value, at: &str, out: &mut Vec<String>) {
            match v.as_object() {
                Some(m) if !m.is_empty() && at != "resources" => {
                    for (k, x) in m {
                        let next = if at.is_empty() {
                            k.clone()
                        } else {
                            format!("{at}.{k}")
                        };
                        leaves(x, &next, out);
                    }
                }
                _ => out.push(at.to_string()),
            }
        }
        for chart in ["ferry-agent", "ferry-coordinator"] {
            let dir = helm::chart(chart);
            let values: Value =
                serde_saphyr::from_str(&std::fs::read_to_string(dir.join("values.yaml")).unwrap())
                    .unwrap();
            let readme = std::fs::read_to_string(dir.join("README.md")).unwrap();
            let mut keys = vec![];
            leaves(&values, "", &mut keys);
            for k in keys {
                assert!(
                    readme.contains(&format!("| `{k}` |")),
                    "{chart}: README has no row for {k}"
                );
            }
        }

        // Chart versions follow the workspace's.
        for chart in ["ferry-agent", "ferry-coordinator"] {
            let text = std::fs::read_to_string(helm::chart(chart).join("Chart.yaml")).unwrap();
            let meta: Value = serde_saphyr::from_str(&text).unwrap();
            let version = env!("CARGO_PKG_VERSION");
            assert_eq!(
                meta["version"], version,
                "{chart}: version drifted from the workspace's"
            );
            assert_eq!(meta["appVersion"], version, "{chart}: appVersion drifted");
        }
    }

    #[test]
    fn bad_values_are_refused_by_the_schema_with_the_value_named() {
        let cases = [
            (
                "ferry-agent",
                json!({"cluster": {"name": "EU_1"}, "coordinator": {"address": "https://c:1"}}),
                "/cluster/name",
            ),
            (
                "ferry-agent",
                json!({"cluster": {"name": "eu-1"}, "coordinator": {"address": "http://c:1"}}),
                "/coordinator/address",
            ),
            (
                "ferry-agent",
                json!({"cluster": {"name": "eu-1"}, "coordinator": {"address": "https://c:1"}, "rbac": {"scope": "namespaces"}}),
                "/rbac/namespaces",
            ),
            (
                "ferry-agent",
                json!({"cluster": {"name": "eu-1"}, "coordinator": {"address": "https://c:1"}, "rbac": {"scope": "everything"}}),
                "/rbac/scope",
            ),
            (
                "ferry-agent",
                json!({"cluster": {"name": "eu-1"}, "coordinator": {"address": "https://c:1"}, "git": {"cacheMiB": 4}}),
                "/git/cacheMiB",
            ),
            (
                "ferry-agent",
                json!({"cluster": {"name": "eu-1"}, "coordinator": {"address": "https://c:1"}, "git": {"credentials": {"pasword": "x"}}}),
                "pasword",
            ),
            (
                "ferry-agent",
                json!({"coordinator": {"address": "https://c:1"}}),
                "cluster",
            ),
            (
                "ferry-agent",
                json!({"cluster": {"name": "eu-1"}, "coordinator": {"address": "https://c:1"}, "verification": {"mode": "signed"}}),
                "/verification/mode",
            ),
            ("ferry-coordinator", json!({}), "repo"),
            (
                "ferry-coordinator",
                json!({"repo": "https://bob:s3cret@git.example.com/fleet.git"}),
                "/repo",
            ),
            (
                "ferry-coordinator",
                json!({"repo": "https://g/f.git", "certLifetime": "a month"}),
                "/certLifetime",
            ),
            (
                "ferry-coordinator",
                json!({"repo": "https://g/f.git", "service": {"port": 0}}),
                "/service/port",
            ),
            // Several coordinators only on a shared PostgreSQL.
            (
                "ferry-coordinator",
                json!({"repo": "https://g/f.git", "replicas": 2}),
                "store",
            ),
            (
                "ferry-agent",
                json!({"cluster": {"name": "eu-1"}, "coordinator": {"address": "https://a:1, http://b:1"}}),
                "/coordinator/address",
            ),
        ];
        for (chart, values, named) in cases {
            let refused = helm::render(chart, "r", "ferry-system", &values)
                .err()
                .unwrap_or_else(|| panic!("{chart} accepted {values}"));
            assert!(refused.contains(named), "{chart} {values}: {refused}");
        }
    }

    /// A process killed when dropped.
    struct Running(Child);

    impl Drop for Running {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    /// The files a pod's volumes would hold, from the rendered objects,
    /// under `root`: (mount path, where it is here).
    fn materialize(pod: &Value, objects: &[Value], root: &Path) -> Vec<(String, PathBuf)> {
        let b64 = |s: &str| {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD.decode(s).unwrap()
        };
        let find = |kind: &str, name: &str| {
            objects
                .iter()
                .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
                .cloned()
        };
        let mut mounts = vec![];
        for m in pod["containers"][0]["volumeMounts"].as_array().unwrap() {
            let name = m["name"].as_str().unwrap();
            let here = root.join(name);
            std::fs::create_dir_all(&here).unwrap();
            let volume = pod["volumes"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|v| v["name"] == name);
            if let Some(v) = volume {
                if let Some(cm) = v["configMap"]["name"].as_str() {
                    let cm = find("ConfigMap", cm).expect("the ConfigMap is rendered");
                    for (k, d) in cm["data"].as_object().unwrap() {
                        std::fs::write(here.join(k), d.as_str().unwrap()).unwrap();
                    }
                }
                if let Some(s) = v["secret"]["secretName"].as_str()
                    && let Some(s) = find("Secret", s)
                {
                    for (k, d) in s["data"].as_object().into_iter().flatten() {
                        std::fs::write(here.join(k), b64(d.as_str().unwrap())).unwrap();
                    }
                    for (k, d) in s["stringData"].as_object().into_iter().flatten() {
                        std::fs::write(here.join(k), d.as_str().unwrap()).unwrap();
                    }
                }
            }
            mounts.push((m["mountPath"].as_str().unwrap().to_string(), here));
        }
        mounts
    }

    /// A container's args with its mount paths moved to where they are here.
    fn mapped_args(pod: &Value, mounts: &[(String, PathBuf)]) -> Vec<String> {
        pod["containers"][0]["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| {
                let a = a.as_str().unwrap();
                let (flag, value) = a.split_once('=').map_or(("", a), |(f, v)| (f, v));
                let within = |m: &str| value == m || value.starts_with(&format!("{m}/"));
                let Some((from, to)) = mounts
                    .iter()
                    .filter(|(m, _)| within(m))
                    .max_by_key(|(m, _)| m.len())
                else {
                    return a.to_string();
                };
                let value = format!("{}{}", to.display(), &value[from.len()..]);
                if flag.is_empty() {
                    value
                } else {
                    format!("{flag}={value}")
                }
            })
            .collect()
    }

    fn container_env(pod: &Value) -> Vec<(String, String)> {
        pod["containers"][0]["env"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| {
                Some((
                    e["name"].as_str()?.to_string(),
                    e["value"].as_str()?.to_string(),
                ))
            })
            .collect()
    }

    async fn kubectl_apply(kubeconfig: &Path, objects: &[Value]) {
        let file = kubeconfig.with_extension("objects.json");
        let list = json!({"apiVersion": "v1", "kind": "List", "items": objects});
        std::fs::write(&file, list.to_string()).unwrap();
        let out = tokio::process::Command::new(kubectl())
            .env("KUBECONFIG", kubeconfig)
            .args(["apply", "--server-side", "--field-manager=helm", "-f"])
            .arg(&file)
            .output()
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "kubectl apply: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Both charts as an operator installs them: the coordinator run with
    /// exactly the args its StatefulSet gives (the CA and admin token from
    /// the chart's Secrets), the agent chart applied to a cluster with
    /// `kubectl apply --server-side`, and `ferry-agent` run with exactly the
    /// args and env of its Deployment, authorized only by the chart's RBAC.
    /// It enrolls, converges, and its probes say so.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn an_agent_run_as_its_chart_says_enrolls_and_converges() {
        init_tracing();
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let git = ferry_integration::world::GitServer::start(&root.join("git")).unwrap();
        let app = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\n  namespace: shop\ndata:\n  a: b\n---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n";
        let commit = git
            .commit("A", &[("clusters/eu-1/app.yaml", Some(app))])
            .unwrap();

        // The coordinator, as its chart runs it.
        let (grpc, metrics) = (
            ferry_integration::world::free_port().unwrap(),
            ferry_integration::world::free_port().unwrap(),
        );
        let values =
            json!({"repo": git.url, "service": {"port": grpc}, "metrics": {"port": metrics}});
        let (objects, _) =
            helm::render("ferry-coordinator", "ferry", "ferry-system", &values).unwrap();
        let pod = &of_kind(&objects, "StatefulSet")[0]["spec"]["template"]["spec"];
        let mounts = materialize(pod, &objects, &root.join("coordinator"));
        let _coordinator = Running(
            Command::new(workspace_binary("ferry-coordinator", "ferry"))
                .args(mapped_args(pod, &mounts))
                .envs(container_env(pod))
                .spawn()
                .unwrap(),
        );
        let ca = mounts
            .iter()
            .find(|(m, _)| m == "/etc/ferry/ca")
            .unwrap()
            .1
            .join("tls.crt");
        let token = mounts
            .iter()
            .find(|(m, _)| m == "/etc/ferry/bootstrap")
            .unwrap()
            .1
            .join("token");
        let ready = ([127, 0, 0, 1], metrics).into();
        eventually("the coordinator ready", || async {
            (http_get(ready, "/readyz").await.ok()?.0 == 200).then_some(())
        })
        .await;
        let ferry = |args: Vec<String>| {
            let (ca, token) = (ca.clone(), token.clone());
            async move {
                let out =
                    tokio::process::Command::new(workspace_binary("ferry-coordinator", "ferry"))
                        .args(["--addr", &format!("https://127.0.0.1:{grpc}")])
                        .arg("--ca")
                        .arg(&ca)
                        .arg("--token-file")
                        .arg(&token)
                        .args(&args)
                        .output()
                        .await
                        .unwrap();
                assert!(
                    out.status.success(),
                    "ferry {args:?}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                String::from_utf8_lossy(&out.stdout).into_owned()
            }
        };
        let added: Value = serde_json::from_str(
            &ferry(
                ["-o", "json", "cluster", "add", "eu-1"]
                    .map(String::from)
                    .to_vec(),
            )
            .await,
        )
        .unwrap();

        // The cluster, with the agent chart applied.
        let emulator = Emulator::start(Default::default()).await.unwrap();
        let admin = root.join("admin.kubeconfig");
        emulator.write_kubeconfig(&admin).unwrap();
        let agent_metrics = ferry_integration::world::free_port().unwrap();
        let values = json!({
            "cluster": {"name": "eu-1"},
            "coordinator": {"address": format!("https://127.0.0.1:{grpc}"), "ca": std::fs::read_to_string(&ca).unwrap()},
            "joinToken": {"value": added["joinToken"]},
            "metrics": {"port": agent_metrics},
        });
        let (objects, _) =
            helm::render("ferry-agent", "ferry-agent", "ferry-system", &values).unwrap();
        kubectl_apply(
            &admin,
            &[json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "ferry-system"}})],
        )
        .await;
        kubectl_apply(&admin, &objects).await;

        // The agent, as its Deployment runs it, with its service account's
        // token where in-cluster credentials would be.
        let pod = &of_kind(&objects, "Deployment")[0]["spec"]["template"]["spec"];
        let sa = pod["serviceAccountName"].as_str().unwrap();
        let sa_token = emulator.service_account_token("ferry-system", sa);
        let in_cluster = root.join("in-cluster.kubeconfig");
        std::fs::write(&in_cluster, emulator.kubeconfig_with_token(&sa_token)).unwrap();
        let mounts = materialize(pod, &objects, &root.join("agent"));
        let tmp = mounts.iter().find(|(m, _)| m == "/tmp").unwrap().1.clone();
        let _agent = Running(
            Command::new(workspace_binary("ferry-agent", "ferry-agent"))
                .args(mapped_args(pod, &mounts))
                .envs(container_env(pod))
                .env("KUBECONFIG", &in_cluster)
                .env("TMPDIR", &tmp)
                .env("PATH", std::env::var("PATH").unwrap_or_default())
                .spawn()
                .unwrap(),
        );
        let probe = ([127, 0, 0, 1], agent_metrics).into();
        eventually("the agent ready (enrolled and connected)", || async {
            (http_get(probe, "/readyz").await.ok()?.0 == 200).then_some(())
        })
        .await;
        ferry(
            ["pin", "eu-1", "--commit", &commit, "--reason", "first sync"]
                .map(String::from)
                .to_vec(),
        )
        .await;
        eventually("the cluster to hold what Git says", || async {
            emulator.object("", "configmaps", Some("shop"), "settings")
        })
        .await;
        eventually("the coordinator to see it healthy", || async {
            let shown = ferry(["cluster", "show", "eu-1"].map(String::from).to_vec()).await;
            shown.contains("Healthy").then_some(())
        })
        .await;
        assert!(
            emulator
                .object("", "secrets", Some("ferry-system"), "ferry-agent-identity")
                .is_some(),
            "the identity is kept where the chart says"
        );
    }
}
