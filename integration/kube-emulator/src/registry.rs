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
    /// Discovery categories (`all`: what `kubectl get all` lists).
    pub categories: Vec<String>,
    /// The verbs the type serves.
    pub verbs: Vec<String>,
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

/// All served types, by `group/plural`.
#[derive(Clone, Debug, Default)]
pub struct Registry {
    types: BTreeMap<String, ResourceType>,
}

impl Registry {
    /// Every generally available built-in type of the Kubernetes version
    /// the emulator claims, from k8s-openapi's types.
    pub fn builtin() -> Self {
        let mut r = Registry::default();
        for b in crate::builtin::all() {
            let extras = crate::builtin::extras(b.plural);
            let t = ResourceType {
                group: b.group.into(),
                versions: vec![b.version.into()],
                kind: b.kind.into(),
                plural: b.plural.into(),
                singular: b.kind.to_lowercase(),
                namespaced: b.namespaced,
                short_names: extras.short_names.iter().map(|s| s.to_string()).collect(),
                status: extras.status,
                crd: None,
                categories: extras.categories.iter().map(|s| s.to_string()).collect(),
                verbs: extras.verbs.iter().map(|s| s.to_string()).collect(),
            };
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
                "verbs": t.verbs,
                "shortNames": t.short_names,
                "categories": t.categories,
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
        let categories = names
            .get("categories")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
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
            categories,
            verbs: crate::builtin::ALL_VERBS
                .iter()
                .map(|s| s.to_string())
                .collect(),
        })
    }
}
