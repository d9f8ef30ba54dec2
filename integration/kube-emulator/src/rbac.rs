//! Who may do what: service-account tokens authenticate as
//! `system:serviceaccount:NS:NAME`, and their requests are authorized by
//! the RBAC objects stored in the emulator (Roles and ClusterRoles bound by
//! RoleBindings and ClusterRoleBindings), as kube-apiserver's RBAC
//! authorizer does. The emulator's own token is a cluster admin. Discovery
//! and `/version` are open to every authenticated user (the
//! `system:discovery` role). `cluster-admin` exists without being stored.
//! Not modelled: aggregated ClusterRoles, escalation checks on writing RBAC
//! objects, impersonation.

use crate::store::{ApiError, Store};
use serde_json::{Value, json};

/// A service account a token speaks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceAccount {
    pub namespace: String,
    pub name: String,
}

impl ServiceAccount {
    pub fn user(&self) -> String {
        format!("system:serviceaccount:{}:{}", self.namespace, self.name)
    }

    fn groups(&self) -> [String; 3] {
        [
            "system:serviceaccounts".into(),
            format!("system:serviceaccounts:{}", self.namespace),
            "system:authenticated".into(),
        ]
    }
}

/// What a request asks to do.
#[derive(Clone, Debug)]
pub struct Attributes<'a> {
    pub verb: &'a str,
    pub group: &'a str,
    pub resource: &'a str,
    pub subresource: Option<&'a str>,
    pub namespace: Option<&'a str>,
    pub name: Option<&'a str>,
}

fn strings(v: &Value, key: &str) -> Vec<String> {
    v.get(key)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

fn rule_allows(rule: &Value, a: &Attributes<'_>) -> bool {
    let has = |key: &str, want: &str| strings(rule, key).iter().any(|v| v == "*" || v == want);
    let resource = match a.subresource {
        Some(sub) => format!("{}/{sub}", a.resource),
        None => a.resource.to_string(),
    };
    let resource_ok = strings(rule, "resources").iter().any(|r| {
        r == "*"
            || *r == resource
            || (a.subresource.is_some() && *r == format!("*/{}", a.subresource.unwrap_or("")))
    });
    let names = strings(rule, "resourceNames");
    let name_ok = names.is_empty() || a.name.is_some_and(|n| names.iter().any(|x| x == n));
    has("verbs", a.verb) && has("apiGroups", a.group) && resource_ok && name_ok
}

fn binds(binding: &Value, sa: &ServiceAccount) -> bool {
    let groups = sa.groups();
    binding
        .get("subjects")
        .and_then(Value::as_array)
        .is_some_and(|subjects| {
            subjects.iter().any(|s| {
                let text = |k: &str| s.get(k).and_then(Value::as_str).unwrap_or("");
                match text("kind") {
                    "ServiceAccount" => {
                        text("name") == sa.name && text("namespace") == sa.namespace
                    }
                    "User" => text("name") == sa.user(),
                    "Group" => groups.iter().any(|g| g == text("name")),
                    _ => false,
                }
            })
        })
}

/// The rules of the role a binding refers to (`namespace`: a RoleBinding's).
fn rules_of(store: &Store, role_ref: &Value, namespace: Option<&str>) -> Vec<Value> {
    let kind = role_ref.get("kind").and_then(Value::as_str).unwrap_or("");
    let name = role_ref.get("name").and_then(Value::as_str).unwrap_or("");
    let (plural, ns) = match kind {
        "ClusterRole" => ("clusterroles", None),
        "Role" => ("roles", namespace),
        _ => return vec![],
    };
    let Some(rt) = store
        .registry
        .lookup("rbac.authorization.k8s.io", "v1", plural)
        .cloned()
    else {
        return vec![];
    };
    match store.get(&rt, ns, name) {
        Ok(role) => role
            .get("rules")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default(),
        Err(_) if kind == "ClusterRole" && name == "cluster-admin" => {
            vec![json!({"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]})]
        }
        Err(_) => vec![],
    }
}

fn bindings(store: &Store, plural: &str, namespace: Option<&str>) -> Vec<Value> {
    store
        .registry
        .lookup("rbac.authorization.k8s.io", "v1", plural)
        .cloned()
        .map(|rt| store.list(&rt, namespace).into_iter().cloned().collect())
        .unwrap_or_default()
}

/// Whether the service account may do it.
pub fn allowed(store: &Store, sa: &ServiceAccount, a: &Attributes<'_>) -> bool {
    let cluster_wide = bindings(store, "clusterrolebindings", None)
        .iter()
        .filter(|b| binds(b, sa))
        .any(|b| {
            rules_of(store, &b["roleRef"], None)
                .iter()
                .any(|r| rule_allows(r, a))
        });
    if cluster_wide {
        return true;
    }
    let Some(ns) = a.namespace else {
        return false;
    };
    bindings(store, "rolebindings", Some(ns))
        .iter()
        .filter(|b| binds(b, sa))
        .any(|b| {
            rules_of(store, &b["roleRef"], Some(ns))
                .iter()
                .any(|r| rule_allows(r, a))
        })
}

/// The 403 kube-apiserver answers.
pub fn forbidden(sa: &ServiceAccount, a: &Attributes<'_>) -> ApiError {
    let resource = match a.subresource {
        Some(sub) => format!("{}/{sub}", a.resource),
        None => a.resource.to_string(),
    };
    let shown = if a.group.is_empty() {
        resource.clone()
    } else {
        format!("{resource}.{}", a.group)
    };
    let subject = match a.name {
        Some(n) => format!("{shown} {n:?} is forbidden"),
        None => format!("{shown} is forbidden"),
    };
    let scope = match a.namespace {
        Some(ns) => format!("in the namespace {ns:?}"),
        None => "at the cluster scope".to_string(),
    };
    let mut e = ApiError::new(
        403,
        "Forbidden",
        format!(
            "{subject}: User {:?} cannot {} resource {resource:?} in API group {:?} {scope}",
            sa.user(),
            a.verb,
            a.group
        ),
    );
    e.details = Some(json!({"name": a.name.unwrap_or(""), "group": a.group, "kind": a.resource}));
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_match_as_rbac_does() {
        let a = Attributes {
            verb: "list",
            group: "apps",
            resource: "deployments",
            subresource: None,
            namespace: Some("shop"),
            name: None,
        };
        assert!(rule_allows(
            &json!({"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["get", "list"]}),
            &a
        ));
        assert!(rule_allows(
            &json!({"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}),
            &a
        ));
        assert!(!rule_allows(
            &json!({"apiGroups": [""], "resources": ["deployments"], "verbs": ["list"]}),
            &a
        ));
        assert!(!rule_allows(
            &json!({"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["list"], "resourceNames": ["web"]}),
            &a
        ));
        let status = Attributes {
            subresource: Some("status"),
            verb: "patch",
            ..a
        };
        assert!(!rule_allows(
            &json!({"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["patch"]}),
            &status
        ));
        assert!(rule_allows(
            &json!({"apiGroups": ["apps"], "resources": ["deployments/status"], "verbs": ["patch"]}),
            &status
        ));
    }

    #[test]
    fn the_message_is_kube_apiservers() {
        let sa = ServiceAccount {
            namespace: "ferry-system".into(),
            name: "ferry-agent".into(),
        };
        let e = forbidden(
            &sa,
            &Attributes {
                verb: "list",
                group: "",
                resource: "configmaps",
                subresource: None,
                namespace: None,
                name: None,
            },
        );
        assert_eq!(
            e.message,
            "configmaps is forbidden: User \"system:serviceaccount:ferry-system:ferry-agent\" cannot list resource \"configmaps\" in API group \"\" at the cluster scope"
        );
    }
}
