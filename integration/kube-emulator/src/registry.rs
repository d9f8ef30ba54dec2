//! The resource types the emulator serves: the built-in ones and those that
//! CustomResourceDefinitions add. Owns discovery documents; never stores objects.

use serde_json::{Value, json};
use std::collections::BTreeMap;

/// One served resource type (one group/version/plural).
#[derive(Clone, Debug, PartialEq)]
pub struct ResourceType {
    /// API group; empty for the core group.
    pub group: String,
    /// Served versions; the first is the preferred one.
    pub versions: Vec<String>,
    pub kind: String,
    pub plural: String,
    pub singular: String,
    pub namespaced: bool,
    pub short_names: Vec<String>,
    /// Whether the type has a `/status` subresource.
    pub status: bool,
    /// Set for types that a CustomResourceDefinition added.
    pub crd: Option<String>,
}

impl ResourceType {
    /// `group/plural`, the key objects of this type are stored under.
    pub fn key(&self) -> String {
        format!("{}/{}", self.group, self.plural)
    }

    pub fn api_version(&self, version: &str) -> String {
        if self.group.is_empty() {
            version.to_string()
        } else {
            format!("{}/{}", self.group, version)
        }
    }

    pub fn list_kind(&self) -> String {
        format!("{}List", self.kind)
    }
}

const VERBS: [&str; 8] = [
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

/// All served types, by `group/plural`.
#[derive(Clone, Debug, Default)]
pub struct Registry {
    types: BTreeMap<String, ResourceType>,
}

fn builtin(
    group: &str,
    version: &str,
    kind: &str,
    plural: &str,
    namespaced: bool,
    short: &[&str],
    status: bool,
) -> ResourceType {
    ResourceType {
        group: group.into(),
        versions: vec![version.into()],
        kind: kind.into(),
        plural: plural.into(),
        singular: kind.to_lowercase(),
        namespaced,
        short_names: short.iter().map(|s| s.to_string()).collect(),
        status,
        crd: None,
    }
}

impl Registry {
    /// The built-in types of a current Kubernetes API server that a GitOps agent touches.
    pub fn builtin() -> Self {
        let list = [
            builtin("", "v1", "Namespace", "namespaces", false, &["ns"], true),
            builtin("", "v1", "ConfigMap", "configmaps", true, &["cm"], false),
            builtin("", "v1", "Secret", "secrets", true, &[], false),
            builtin("", "v1", "Service", "services", true, &["svc"], true),
            builtin(
                "",
                "v1",
                "ServiceAccount",
                "serviceaccounts",
                true,
                &["sa"],
                false,
            ),
            builtin(
                "",
                "v1",
                "PersistentVolumeClaim",
                "persistentvolumeclaims",
                true,
                &["pvc"],
                true,
            ),
            builtin("", "v1", "Event", "events", true, &["ev"], false),
            builtin("", "v1", "Pod", "pods", true, &["po"], true),
            builtin(
                "apps",
                "v1",
                "Deployment",
                "deployments",
                true,
                &["deploy"],
                true,
            ),
            builtin(
                "apps",
                "v1",
                "StatefulSet",
                "statefulsets",
                true,
                &["sts"],
                true,
            ),
            builtin("apps", "v1", "DaemonSet", "daemonsets", true, &["ds"], true),
            builtin(
                "apps",
                "v1",
                "ReplicaSet",
                "replicasets",
                true,
                &["rs"],
                true,
            ),
            builtin("batch", "v1", "Job", "jobs", true, &[], true),
            builtin("batch", "v1", "CronJob", "cronjobs", true, &["cj"], true),
            builtin(
                "rbac.authorization.k8s.io",
                "v1",
                "Role",
                "roles",
                true,
                &[],
                false,
            ),
            builtin(
                "rbac.authorization.k8s.io",
                "v1",
                "RoleBinding",
                "rolebindings",
                true,
                &[],
                false,
            ),
            builtin(
                "rbac.authorization.k8s.io",
                "v1",
                "ClusterRole",
                "clusterroles",
                false,
                &[],
                false,
            ),
            builtin(
                "rbac.authorization.k8s.io",
                "v1",
                "ClusterRoleBinding",
                "clusterrolebindings",
                false,
                &[],
                false,
            ),
            builtin(
                "networking.k8s.io",
                "v1",
                "Ingress",
                "ingresses",
                true,
                &["ing"],
                true,
            ),
            builtin(
                "networking.k8s.io",
                "v1",
                "NetworkPolicy",
                "networkpolicies",
                true,
                &["netpol"],
                false,
            ),
            builtin(
                "policy",
                "v1",
                "PodDisruptionBudget",
                "poddisruptionbudgets",
                true,
                &["pdb"],
                true,
            ),
            builtin(
                "apiextensions.k8s.io",
                "v1",
                "CustomResourceDefinition",
                "customresourcedefinitions",
                false,
                &["crd", "crds"],
                true,
            ),
            builtin(
                "coordination.k8s.io",
                "v1",
                "Lease",
                "leases",
                true,
                &[],
                false,
            ),
        ];
        let mut r = Registry::default();
        for t in list {
            r.types.insert(t.key(), t);
        }
        r
    }

    /// The type served at `group/version/plural`, if any.
    pub fn lookup(&self, group: &str, version: &str, plural: &str) -> Option<&ResourceType> {
        self.types
            .get(&format!("{group}/{plural}"))
            .filter(|t| t.versions.iter().any(|v| v == version))
    }

    /// The type stored under `group/plural`, whatever its versions.
    pub fn by_plural(&self, group: &str, plural: &str) -> Option<&ResourceType> {
        self.types.get(&format!("{group}/{plural}"))
    }

    pub fn insert(&mut self, t: ResourceType) {
        self.types.insert(t.key(), t);
    }

    pub fn remove(&mut self, key: &str) -> Option<ResourceType> {
        self.types.remove(key)
    }

    fn groups(&self) -> BTreeMap<String, Vec<String>> {
        let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for t in self.types.values().filter(|t| !t.group.is_empty()) {
            let versions = groups.entry(t.group.clone()).or_default();
            for v in &t.versions {
                if !versions.contains(v) {
                    versions.push(v.clone());
                }
            }
        }
        groups
    }

    fn group_doc(group: &str, versions: &[String]) -> Value {
        let vs: Vec<Value> = versions
            .iter()
            .map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v}))
            .collect();
        json!({
            "name": group,
            "versions": vs,
            "preferredVersion": vs.first().cloned().unwrap_or(Value::Null),
        })
    }

    /// `/apis`
    pub fn api_group_list(&self) -> Value {
        let groups: Vec<Value> = self
            .groups()
            .iter()
            .map(|(g, vs)| Self::group_doc(g, vs))
            .collect();
        json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
    }

    /// `/apis/{group}`
    pub fn api_group(&self, group: &str) -> Option<Value> {
        let groups = self.groups();
        let vs = groups.get(group)?;
        let mut doc = Self::group_doc(group, vs);
        doc["kind"] = "APIGroup".into();
        doc["apiVersion"] = "v1".into();
        Some(doc)
    }

    /// `/api/v1` or `/apis/{group}/{version}`
    pub fn resource_list(&self, group: &str, version: &str) -> Option<Value> {
        let mut resources = Vec::new();
        for t in self
            .types
            .values()
            .filter(|t| t.group == group && t.versions.iter().any(|v| v == version))
        {
            resources.push(json!({
                "name": t.plural,
                "singularName": t.singular,
                "namespaced": t.namespaced,
                "kind": t.kind,
                "verbs": VERBS,
                "shortNames": t.short_names,
                "storageVersionHash": "",
            }));
            if t.group == "apps"
                && matches!(t.kind.as_str(), "Deployment" | "StatefulSet" | "ReplicaSet")
            {
                resources.push(json!({
                    "name": format!("{}/scale", t.plural),
                    "singularName": "",
                    "namespaced": true,
                    "group": "autoscaling",
                    "version": "v1",
                    "kind": "Scale",
                    "verbs": ["get", "patch", "update"],
                }));
            }
            if t.status {
                resources.push(json!({
                    "name": format!("{}/status", t.plural),
                    "singularName": "",
                    "namespaced": t.namespaced,
                    "kind": t.kind,
                    "verbs": ["get", "patch", "update"],
                }));
            }
        }
        if resources.is_empty() {
            return None;
        }
        let gv = if group.is_empty() {
            version.to_string()
        } else {
            format!("{group}/{version}")
        };
        Some(json!({
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": gv,
            "resources": resources,
        }))
    }

    /// Reads a CustomResourceDefinition into the type it serves.
    pub fn type_from_crd(crd: &Value) -> Result<ResourceType, String> {
        let spec = crd.get("spec").ok_or("spec is required")?;
        let s = |v: Option<&Value>, what: &str| -> Result<String, String> {
            v.and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .ok_or_else(|| format!("{what} is required"))
        };
        let group = s(spec.get("group"), "spec.group")?;
        let names = spec.get("names").ok_or("spec.names is required")?;
        let plural = s(names.get("plural"), "spec.names.plural")?;
        let kind = s(names.get("kind"), "spec.names.kind")?;
        let singular = names
            .get("singular")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| kind.to_lowercase());
        let short_names = names
            .get("shortNames")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let scope = s(spec.get("scope"), "spec.scope")?;
        let namespaced = match scope.as_str() {
            "Namespaced" => true,
            "Cluster" => false,
            other => return Err(format!("spec.scope: Unsupported value: {other:?}")),
        };
        let mut versions = Vec::new();
        let mut status = false;
        for v in spec
            .get("versions")
            .and_then(Value::as_array)
            .ok_or("spec.versions is required")?
        {
            let name = s(v.get("name"), "spec.versions[].name")?;
            if v.get("served").and_then(Value::as_bool).unwrap_or(true) {
                // The storage version is preferred.
                if v.get("storage").and_then(Value::as_bool).unwrap_or(false) {
                    versions.insert(0, name);
                } else {
                    versions.push(name);
                }
            }
            status |= v.pointer("/subresources/status").is_some();
        }
        if versions.is_empty() {
            return Err("spec.versions: at least one version must be served".into());
        }
        let expected = format!("{plural}.{group}");
        let name = crd.pointer("/metadata/name").and_then(Value::as_str);
        if name != Some(expected.as_str()) {
            return Err(format!(
                "metadata.name: Invalid value: {name:?}: must be spec.names.plural+\".\"+spec.group ({expected})"
            ));
        }
        Ok(ResourceType {
            group,
            versions,
            kind,
            plural,
            singular,
            namespaced,
            short_names,
            status,
            crd: Some(expected),
        })
    }
}
