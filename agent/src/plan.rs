//! The decisions of a sync, as pure functions: how each rendered object is
//! applied (namespace, owner label, content hash, wave, order), which
//! objects need a write, what leaves Git and may be pruned, and whether the
//! mass-prune valve holds. No I/O: `apply` reads the cluster, asks these
//! functions, and writes.

use crate::health::Verdict;
use crate::render::{Object, ObjectRef, Problem};
use crate::state::InventoryEntry;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use std::collections::{BTreeSet, HashMap};

/// Label on every object the agent applies: the cluster that owns it.
pub const OWNER_LABEL: &str = "ferry.dev/owner";
/// `ferry.dev/prune: "false"` keeps an object when it leaves Git.
pub const PRUNE_ANNOTATION: &str = "ferry.dev/prune";
/// `ferry.dev/wave: "N"` splits a directory into waves applied in order,
/// each once the earlier ones are healthy.
pub const WAVE_ANNOTATION: &str = "ferry.dev/wave";

/// How the cluster serves an object's kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Served now; namespaced or not.
    Served { namespaced: bool },
    /// Not served yet: a CRD in the same set defines it.
    FromCrd { namespaced: bool },
    /// Not served, and nothing in the set defines it.
    Unknown,
}

/// One object as it will be applied. Kept as JSON text, not decoded: a
/// decoded object takes several times the memory of its text, and a plan
/// lives as long as its commit is applied.
#[derive(Clone, Debug)]
pub struct Planned {
    /// `path/to/file.yaml#2`: the file and document it came from.
    pub source: String,
    pub api_version: String,
    pub reference: ObjectRef,
    /// The object with its namespace settled and the owner label set.
    pub body: Box<RawValue>,
    /// Content hash of what is applied.
    pub hash: String,
    pub wave: i64,
    pub namespaced: bool,
    /// Whether the cluster serves the kind already (false: its CRD is in
    /// this set and must be Established first).
    pub served: bool,
}

impl PartialEq for Planned {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
            && self.reference == other.reference
            && self.body.get() == other.body.get()
            && (self.wave, self.namespaced, self.served)
                == (other.wave, other.namespaced, other.served)
    }
}

impl Planned {
    /// The object applied, decoded (for the moment it is compared).
    pub fn value(&self) -> Value {
        serde_json::from_str(self.body.get()).expect("a plan holds JSON it wrote")
    }
    pub fn object(&self) -> Object {
        Object {
            source: self.source.clone(),
            value: self.value(),
        }
    }
    pub fn api_version(&self) -> &str {
        &self.api_version
    }
    pub fn kind(&self) -> &str {
        &self.reference.kind
    }
    pub fn group(&self) -> &str {
        &self.reference.group
    }
    pub fn name(&self) -> &str {
        &self.reference.name
    }
    pub fn namespace(&self) -> Option<&str> {
        self.reference.namespace.as_deref()
    }
}

/// An object's identity, borrowed: (group, kind, namespace, name).
pub type Key<'a> = (&'a str, &'a str, Option<&'a str>, &'a str);

impl ObjectRef {
    pub fn key(&self) -> Key<'_> {
        (
            &self.group,
            &self.kind,
            self.namespace.as_deref(),
            &self.name,
        )
    }
}

impl InventoryEntry {
    pub fn key(&self) -> Key<'_> {
        (
            self.api_version.rsplit_once('/').map_or("", |(g, _)| g),
            &self.kind,
            self.namespace.as_deref(),
            &self.name,
        )
    }
}

/// What a sync saw of one planned object in the cluster: only what it needs
/// past the moment it read it (never the object itself).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Seen {
    pub uid: String,
    /// It holds every field Git sets, as Git sets it.
    pub matches: bool,
    pub health: Verdict,
}

/// The CRDs of a set: (group, kind) -> (namespaced, the CRD's name).
pub fn crds_in(objects: &[Object]) -> HashMap<(String, String), (bool, String)> {
    objects
        .iter()
        .filter(|o| o.kind() == "CustomResourceDefinition")
        .map(|o| {
            let text = |p: &str| o.value.pointer(p).and_then(Value::as_str).unwrap_or("");
            let namespaced = text("/spec/scope") != "Cluster";
            (
                (
                    text("/spec/group").to_string(),
                    text("/spec/names/kind").to_string(),
                ),
                (namespaced, o.name().to_string()),
            )
        })
        .collect()
}

/// Apply order within a wave: CRDs, Namespaces, other cluster-scoped
/// objects, namespaced ones.
pub fn rank(kind: &str, group: &str, namespaced: bool) -> u8 {
    match (group, kind) {
        ("apiextensions.k8s.io", "CustomResourceDefinition") => 0,
        ("", "Namespace") => 1,
        _ if !namespaced => 2,
        _ => 3,
    }
}

/// Content hash of an object as it will be applied (its JSON text).
pub fn hash(text: &str) -> String {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, text.as_bytes());
    d.as_ref()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Settles every object: its kind's scope (namespace defaulted or dropped;
/// with `namespaces`, the agent's only ones, an object outside them is a
/// problem and a missing namespace is the first of them),
/// the owner label, the hash and the wave; sorted in apply order. Every
/// problem is reported at once; on any, nothing is planned.
pub fn plan(
    objects: &[Object],
    scope: impl Fn(&Object) -> Scope,
    cluster: &str,
    namespaces: &[String],
) -> Result<Vec<Planned>, Vec<Problem>> {
    let allowed = || namespaces.join(", ");
    let mut planned = vec![];
    let mut problems = vec![];
    for o in objects {
        let problem = |message: String| Problem {
            source: o.source.clone(),
            object: o.reference().to_string(),
            message,
        };
        let (namespaced, served) = match scope(o) {
            Scope::Served { namespaced } => (namespaced, true),
            Scope::FromCrd { namespaced } => (namespaced, false),
            Scope::Unknown => {
                problems.push(problem(format!(
                    "the cluster does not serve kind {} in {}",
                    o.kind(),
                    o.api_version()
                )));
                continue;
            }
        };
        let annotation = format!(
            "/metadata/annotations/{}",
            WAVE_ANNOTATION.replace('/', "~1")
        );
        let wave = match o.value.pointer(&annotation) {
            None => 0,
            Some(v) => match v.as_str().and_then(|s| s.trim().parse::<i64>().ok()) {
                Some(w) => w,
                None => {
                    problems.push(problem(format!(
                        "{WAVE_ANNOTATION} must be a whole number, not {v}"
                    )));
                    continue;
                }
            },
        };
        let mut value = o.value.clone();
        let meta = value["metadata"]
            .as_object_mut()
            .expect("render validated metadata");
        if namespaced {
            let default = namespaces.first().map_or("default", String::as_str);
            let ns = meta.entry("namespace").or_insert_with(|| default.into());
            let ns = ns.as_str().unwrap_or("");
            if !namespaces.is_empty() && !namespaces.iter().any(|n| n == ns) {
                problems.push(problem(format!(
                    "namespace {ns} is outside this agent's namespaces ({}): it may only write there (--namespaces)",
                    allowed()
                )));
                continue;
            }
        } else {
            if !namespaces.is_empty() {
                problems.push(problem(format!(
                    "{} is cluster-scoped, and this agent may only write in namespaces {} (--namespaces)",
                    o.kind(),
                    allowed()
                )));
                continue;
            }
            meta.remove("namespace");
        }
        let labels = meta.entry("labels").or_insert_with(|| json!({}));
        labels[OWNER_LABEL] = cluster.into();
        let object = Object {
            source: o.source.clone(),
            value,
        };
        let text = object.value.to_string();
        planned.push(Planned {
            reference: object.reference(),
            hash: hash(&text),
            api_version: object.api_version().to_string(),
            source: object.source,
            body: RawValue::from_string(text).expect("serde_json wrote JSON"),
            wave,
            namespaced,
            served,
        });
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    planned.sort_by_key(|p| (p.wave, rank(p.kind(), p.group(), p.namespaced)));
    Ok(planned)
}

/// Whether `live` still holds what `want` (JSON text) sets: every field of
/// `want` is in `live` with the same value (numbers by value), so server
/// defaults and other managers' fields are fine; `status` is not compared,
/// and of `metadata` only name, namespace, labels and annotations. `want`
/// is read as it is compared: no decoded copy of the object is made (a sync
/// compares every object it manages on every pass).
pub fn unchanged_text(live: &Value, want: &str) -> bool {
    use serde::de::DeserializeSeed;
    let mut d = serde_json::Deserializer::from_str(want);
    Holds {
        live: Some(live),
        level: Level::Top,
    }
    .deserialize(&mut d)
    .unwrap_or(false)
}

/// Where in the object a value being compared is.
#[derive(Clone, Copy, PartialEq)]
enum Level {
    /// The object: `status` is not compared, `metadata` only in part.
    Top,
    /// `metadata`: only name, namespace, labels and annotations count.
    Metadata,
    /// Anything below: every field counts.
    Field,
}

/// Whether the value being read is within `live`.
struct Holds<'a> {
    live: Option<&'a Value>,
    level: Level,
}

/// A key, borrowed from the text when it has no escapes.
struct Name;

impl<'de> serde::de::DeserializeSeed<'de> for Name {
    type Value = std::borrow::Cow<'de, str>;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Name {
    type Value = std::borrow::Cow<'de, str>;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a key")
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(v.to_string().into())
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for Holds<'_> {
    type Value = bool;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Holds<'_> {
    type Value = bool;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("JSON")
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut m: A) -> Result<bool, A::Error> {
        let live = self.live.and_then(Value::as_object);
        let mut holds = live.is_some();
        while let Some(k) = m.next_key_seed(Name)? {
            let (compared, level) = match (self.level, k.as_ref()) {
                (Level::Top, "status") => (false, Level::Field),
                (Level::Top, "metadata") => (true, Level::Metadata),
                (Level::Metadata, "name" | "namespace" | "labels" | "annotations") => {
                    (true, Level::Field)
                }
                (Level::Metadata, _) => (false, Level::Field),
                _ => (true, Level::Field),
            };
            if !compared {
                m.next_value::<serde::de::IgnoredAny>()?;
                continue;
            }
            // Read on past a difference: the text must be consumed whole.
            let within = live.and_then(|l| l.get(k.as_ref()));
            holds &= m.next_value_seed(Holds {
                live: within,
                level,
            })? && within.is_some();
        }
        Ok(holds)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut s: A) -> Result<bool, A::Error> {
        let live = self.live.and_then(Value::as_array);
        let mut holds = live.is_some();
        let mut n = 0;
        loop {
            let within = live.and_then(|l| l.get(n));
            match s.next_element_seed(Holds {
                live: within,
                level: Level::Field,
            })? {
                Some(h) => holds &= h && within.is_some(),
                None => break,
            }
            n += 1;
        }
        Ok(holds && live.is_some_and(|l| l.len() == n))
    }
    fn visit_str<E>(self, v: &str) -> Result<bool, E> {
        Ok(self.live.and_then(Value::as_str) == Some(v))
    }
    fn visit_bool<E>(self, v: bool) -> Result<bool, E> {
        Ok(self.live.and_then(Value::as_bool) == Some(v))
    }
    fn visit_unit<E>(self) -> Result<bool, E> {
        Ok(self.live.is_some_and(Value::is_null))
    }
    fn visit_i64<E>(self, v: i64) -> Result<bool, E> {
        Ok(self.live.and_then(Value::as_f64) == Some(v as f64))
    }
    fn visit_u64<E>(self, v: u64) -> Result<bool, E> {
        Ok(self.live.and_then(Value::as_f64) == Some(v as f64))
    }
    fn visit_f64<E>(self, v: f64) -> Result<bool, E> {
        Ok(self.live.and_then(Value::as_f64) == Some(v))
    }
}

/// Metadata the server keeps for itself: never a change worth showing.
const SERVER_METADATA: &[&str] = &[
    "managedFields",
    "resourceVersion",
    "generation",
    "uid",
    "creationTimestamp",
    "selfLink",
];

/// The longest value a field change shows.
const SHOWN_VALUE: usize = 120;

fn shown(v: Option<&Value>, hide: bool) -> String {
    match v {
        None => "(none)".into(),
        Some(_) if hide => "(hidden)".into(),
        Some(v) => {
            let s = v.to_string();
            if s.chars().count() <= SHOWN_VALUE {
                s
            } else {
                format!("{}…", s.chars().take(SHOWN_VALUE).collect::<String>())
            }
        }
    }
}

fn leaves(v: &Value, at: &str, out: &mut Vec<(String, Value)>) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, x) in m {
                let next = if at.is_empty() {
                    k.clone()
                } else {
                    format!("{at}.{k}")
                };
                leaves(x, &next, out);
            }
        }
        Value::Array(a) if !a.is_empty() => {
            for (i, x) in a.iter().enumerate() {
                leaves(x, &format!("{at}[{i}]"), out);
            }
        }
        _ => out.push((at.to_string(), v.clone())),
    }
}

/// One changed field: (path, before, after), values shown as JSON.
pub type FieldChange = (String, String, String);

/// The fields that differ between an object as it is and as it would be
/// (a server-side dry-run's answer: it holds the server's defaults and
/// other managers' fields too, which therefore do not show): (path, before,
/// after). Status and server-kept metadata are left out; with `hide` (a
/// Secret's), values are never shown, only that they change.
pub fn field_changes(before: &Value, after: &Value) -> Vec<FieldChange> {
    let hide_data = |path: &str, kind: &str| {
        kind == "Secret" && (path.starts_with("data.") || path.starts_with("stringData."))
    };
    let kind = after["kind"]
        .as_str()
        .or(before["kind"].as_str())
        .unwrap_or("");
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(m) = v.as_object_mut() {
            m.remove("status");
            if let Some(meta) = m.get_mut("metadata").and_then(Value::as_object_mut) {
                for k in SERVER_METADATA {
                    meta.remove(*k);
                }
            }
        }
        v
    };
    let (mut b, mut a) = (vec![], vec![]);
    leaves(&strip(before), "", &mut b);
    leaves(&strip(after), "", &mut a);
    let b: std::collections::BTreeMap<String, Value> = b.into_iter().collect();
    let a: std::collections::BTreeMap<String, Value> = a.into_iter().collect();
    let paths: BTreeSet<&String> = b.keys().chain(a.keys()).collect();
    paths
        .into_iter()
        .filter(|p| b.get(*p) != a.get(*p))
        .map(|p| {
            let hide = hide_data(p, kind);
            (p.clone(), shown(b.get(p), hide), shown(a.get(p), hide))
        })
        .collect()
}

/// Pruning would remove more of the inventory than one sync may.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error(
    "refusing to prune {count} of {total} managed objects in one sync (more than {share}%); the assignment must allow mass pruning"
)]
pub struct MassPrune {
    pub count: usize,
    pub total: usize,
    pub share: u32,
}

/// What a sync must do.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Diff {
    /// Indexes (into the plan) of the objects to write, in apply order.
    pub writes: Vec<usize>,
    /// Inventory entries that left Git, in prune order (namespaced objects
    /// first, CRDs last).
    pub prune: Vec<InventoryEntry>,
}

impl Diff {
    pub fn is_empty(&self) -> bool {
        self.writes.is_empty() && self.prune.is_empty()
    }
}

/// Which objects need a write (missing, changed in Git since last applied,
/// or drifted in the cluster) and which inventory entries left Git. `live`
/// is what was seen of each planned object, by its place in the plan. The
/// valve: pruning more than `share_percent` of the inventory (and more than
/// one object) needs `allow_mass_prune`.
pub fn diff(
    planned: &[Planned],
    live: &[Option<Seen>],
    inventory: &[InventoryEntry],
    allow_mass_prune: bool,
    share_percent: u32,
) -> Result<Diff, MassPrune> {
    let previous: HashMap<Key, &InventoryEntry> = inventory.iter().map(|e| (e.key(), e)).collect();
    let writes = planned
        .iter()
        .zip(live)
        .enumerate()
        .filter(|(_, (p, l))| {
            let fresh = previous
                .get(&p.reference.key())
                .is_some_and(|e| e.hash == p.hash);
            !(fresh && l.as_ref().is_some_and(|l| l.matches))
        })
        .map(|(i, _)| i)
        .collect();
    let desired: std::collections::HashSet<Key> =
        planned.iter().map(|p| p.reference.key()).collect();
    let mut prune: Vec<InventoryEntry> = inventory
        .iter()
        .filter(|e| !desired.contains(&e.key()))
        .cloned()
        .collect();
    let total = inventory.len();
    if !allow_mass_prune && prune.len() > 1 && prune.len() * 100 > total * share_percent as usize {
        return Err(MassPrune {
            count: prune.len(),
            total,
            share: share_percent,
        });
    }
    prune.sort_by_key(|e| {
        let r = ObjectRef::from(e);
        std::cmp::Reverse(rank(&e.kind, &r.group, e.namespace.is_some()))
    });
    Ok(Diff { writes, prune })
}

/// The inventory after a sync: every planned object with its live uid;
/// `None` when it is `before` already (the common case: nothing to copy,
/// compare or keep again).
pub fn inventory(
    planned: &[Planned],
    live: &[Option<Seen>],
    before: &[InventoryEntry],
) -> Option<Vec<InventoryEntry>> {
    fn uid(l: &Option<Seen>) -> &str {
        l.as_ref().map_or("", |l| l.uid.as_str())
    }
    let same = before.len() == planned.len()
        && planned.iter().zip(live).zip(before).all(|((p, l), e)| {
            e.hash == p.hash
                && e.uid == uid(l)
                && e.api_version == p.api_version
                && e.kind == p.reference.kind
                && e.namespace == p.reference.namespace
                && e.name == p.reference.name
        });
    if same {
        return None;
    }
    Some(
        planned
            .iter()
            .zip(live)
            .map(|(p, l)| {
                let r = &p.reference;
                InventoryEntry {
                    api_version: p.api_version.clone(),
                    kind: r.kind.clone(),
                    namespace: r.namespace.clone(),
                    name: r.name.clone(),
                    uid: uid(l).to_string(),
                    hash: p.hash.clone(),
                }
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether every field of `want` is in `live` with the same value. Server
    /// defaults in `live` are fine; only what Git sets is compared.
    fn contains(live: &Value, want: &Value) -> bool {
        match (live, want) {
            (Value::Object(l), Value::Object(w)) => w
                .iter()
                .all(|(k, wv)| l.get(k).is_some_and(|lv| contains(lv, wv))),
            (Value::Array(l), Value::Array(w)) => {
                l.len() == w.len() && l.iter().zip(w).all(|(a, b)| contains(a, b))
            }
            (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
            (a, b) => a == b,
        }
    }

    /// `unchanged_text` over decoded objects: the reference it is checked
    /// against. Whether `live` still holds what `want` sets, ignoring status and
    /// server-owned metadata (only name, namespace, labels and annotations of
    /// `metadata` are compared).
    fn unchanged(live: &Value, want: &Value) -> bool {
        let (Some(l), Some(w)) = (live.as_object(), want.as_object()) else {
            return contains(live, want);
        };
        w.iter().all(|(k, wv)| match k.as_str() {
            "status" => true,
            "metadata" => wv.as_object().is_none_or(|wm| {
                wm.iter()
                    .filter(|(mk, _)| {
                        matches!(mk.as_str(), "name" | "namespace" | "labels" | "annotations")
                    })
                    .all(|(mk, mv)| {
                        l.get("metadata")
                            .and_then(|lm| lm.get(mk))
                            .is_some_and(|lv| contains(lv, mv))
                    })
            }),
            _ => l.get(k).is_some_and(|lv| contains(lv, wv)),
        })
    }

    fn obj(kind: &str, name: &str, extra: Value) -> Object {
        let api_version = match kind {
            "Deployment" => "apps/v1",
            "CustomResourceDefinition" => "apiextensions.k8s.io/v1",
            "ClusterRole" => "rbac.authorization.k8s.io/v1",
            _ => "v1",
        };
        let mut v = json!({"apiVersion": api_version, "kind": kind, "metadata": {"name": name}});
        if let (Some(m), Some(e)) = (v.as_object_mut(), extra.as_object()) {
            for (k, x) in e {
                if k == "metadata" {
                    for (mk, mv) in x.as_object().unwrap() {
                        m["metadata"][mk] = mv.clone();
                    }
                } else {
                    m.insert(k.clone(), x.clone());
                }
            }
        }
        Object {
            source: format!("{name}.yaml#1"),
            value: v,
        }
    }

    fn scope(o: &Object) -> Scope {
        let namespaced = !matches!(
            o.kind(),
            "Namespace" | "ClusterRole" | "CustomResourceDefinition"
        );
        if o.kind() == "Widget" {
            return Scope::Unknown;
        }
        Scope::Served { namespaced }
    }

    #[test]
    fn comparing_the_text_agrees_with_comparing_the_object() {
        let want = json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "shop", "labels": {"app": "web"}, "annotations": {"a": "1"}},
            "spec": {"replicas": 2, "paused": false, "x": null, "ratio": 0.5,
                "template": {"spec": {"containers": [{"name": "a", "image": "x", "args": ["-v", "q\"uote"]}]}}},
            "status": {"readyReplicas": 9}});
        let live = {
            let mut l = want.clone();
            l["metadata"]["uid"] = "u".into();
            l["metadata"]["managedFields"] = json!([{"manager": "m"}]);
            l["metadata"]["labels"]["extra"] = "server".into();
            l["spec"]["strategy"] = json!({"type": "RollingUpdate"});
            l["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] = "Always".into();
            l["status"] = json!({"readyReplicas": 0});
            l
        };
        type Edit = fn(&mut Value);
        let edits: [Edit; 12] = [
            |_| {},
            |l| l["spec"]["replicas"] = 3.into(),
            |l| l["spec"]["replicas"] = 2.0.into(),
            |l| l["spec"]["paused"] = true.into(),
            |l| l["spec"]["x"] = "now set".into(),
            |l| l["spec"]["ratio"] = 0.25.into(),
            |l| l["spec"]["template"]["spec"]["containers"][0]["args"][1] = "other".into(),
            |l| l["spec"]["template"]["spec"]["containers"][0]["args"] = json!(["-v"]),
            |l| l["spec"]["template"]["spec"]["containers"] = json!({}),
            |l| l["metadata"]["annotations"] = json!({}),
            |l| l["metadata"]["name"] = "other".into(),
            |l| {
                l.as_object_mut().unwrap().remove("spec");
            },
        ];
        for (i, edit) in edits.iter().enumerate() {
            let mut l = live.clone();
            edit(&mut l);
            assert_eq!(
                unchanged_text(&l, &want.to_string()),
                unchanged(&l, &want),
                "edit {i}"
            );
        }
        assert!(unchanged_text(&live, &want.to_string()));
        assert!(!unchanged_text(&json!("not an object"), &want.to_string()));
    }

    #[test]
    fn contains_ignores_server_defaults() {
        let live = json!({"spec": {"replicas": 2, "strategy": {"type": "RollingUpdate"}, "template": {"spec": {"containers": [{"name": "a", "image": "x", "imagePullPolicy": "IfNotPresent"}]}}}});
        let want = json!({"spec": {"replicas": 2, "template": {"spec": {"containers": [{"name": "a", "image": "x"}]}}}});
        assert!(contains(&live, &want));
        let drifted = json!({"spec": {"replicas": 3, "template": {"spec": {"containers": [{"name": "a", "image": "x"}]}}}});
        assert!(!contains(&drifted, &want));
    }

    #[test]
    fn plans_settle_namespaces_labels_waves_and_order() {
        let objects = [
            obj(
                "ConfigMap",
                "late",
                json!({"metadata": {"annotations": {WAVE_ANNOTATION: "1"}}}),
            ),
            obj("Deployment", "web", json!({})),
            obj(
                "Namespace",
                "shop",
                json!({"metadata": {"namespace": "ignored"}}),
            ),
            obj("ClusterRole", "r", json!({})),
            obj("CustomResourceDefinition", "widgets.x.io", json!({})),
        ];
        let p = plan(&objects, scope, "c1", &[]).unwrap();
        let order: Vec<_> = p.iter().map(|p| p.name()).collect();
        assert_eq!(order, ["widgets.x.io", "shop", "r", "web", "late"]);
        let web = &p[3];
        assert_eq!(web.namespace(), Some("default"));
        assert_eq!(web.value()["metadata"]["namespace"], "default");
        assert_eq!(web.value()["metadata"]["labels"][OWNER_LABEL], "c1");
        assert_eq!(web.hash, hash(web.body.get()));
        assert_eq!(p[1].namespace(), None, "cluster-scoped: namespace dropped");
        assert_eq!(p[4].wave, 1);
        let bad = [
            obj("Widget", "w", json!({})),
            obj(
                "ConfigMap",
                "x",
                json!({"metadata": {"annotations": {WAVE_ANNOTATION: "soon"}}}),
            ),
        ];
        let problems = plan(&bad, scope, "c1", &[]).unwrap_err();
        assert_eq!(problems.len(), 2, "all problems at once: {problems:?}");
        assert!(problems[0].message.contains("does not serve kind Widget"));
        assert!(problems[1].message.contains("whole number"));
    }

    fn entry(p: &Planned, uid: &str) -> InventoryEntry {
        inventory(std::slice::from_ref(p), &[None], &[])
            .unwrap()
            .pop()
            .map(|mut e| {
                e.uid = uid.into();
                e
            })
            .unwrap()
    }

    fn live_of(p: &Planned) -> Value {
        let mut v = p.value();
        v["metadata"]["uid"] = "u".into();
        v["metadata"]["resourceVersion"] = "7".into();
        v["status"] = json!({"ready": true});
        v
    }

    fn seen(p: &Planned, live: &Value) -> Seen {
        Seen {
            uid: live["metadata"]["uid"].as_str().unwrap_or("").into(),
            matches: unchanged(live, &p.value()),
            health: Verdict::default(),
        }
    }

    #[test]
    fn only_missing_changed_or_drifted_objects_are_written() {
        let objects: Vec<Object> = ["a", "b", "c", "d"]
            .iter()
            .map(|n| obj("ConfigMap", n, json!({"data": {"k": "v"}})))
            .collect();
        let p = plan(&objects, scope, "c1", &[]).unwrap();
        // a: unchanged; b: drifted live; c: changed in Git since last
        // applied (old hash); d: missing from the cluster.
        let mut live: Vec<Option<Seen>> = p.iter().map(|x| Some(seen(x, &live_of(x)))).collect();
        let mut edited = live_of(&p[1]);
        edited["data"]["k"] = "edited".into();
        live[1] = Some(seen(&p[1], &edited));
        live[3] = None;
        let mut inv: Vec<InventoryEntry> = p.iter().map(|x| entry(x, "u")).collect();
        inv[2].hash = "old".into();
        let d = diff(&p, &live, &inv, false, 50).unwrap();
        assert_eq!(d.writes, [1, 2, 3]);
        assert!(d.prune.is_empty());
        // Nothing to do at all when everything matches.
        let all: Vec<Option<Seen>> = p.iter().map(|x| Some(seen(x, &live_of(x)))).collect();
        assert_eq!(inventory(&p, &all, &inv).map(|i| i.len()), Some(4));
        inv[2].hash = p[2].hash.clone();
        assert!(diff(&p, &all, &inv, false, 50).unwrap().is_empty());
        assert_eq!(inventory(&p, &all, &inv), None, "unchanged: nothing new");
    }

    #[test]
    fn the_valve_holds_past_the_share_unless_allowed() {
        let objects: Vec<Object> = (0..4)
            .map(|i| obj("ConfigMap", &format!("o{i}"), json!({})))
            .collect();
        let p = plan(&objects, scope, "c1", &[]).unwrap();
        let inv: Vec<InventoryEntry> = p.iter().map(|x| entry(x, "u")).collect();
        // Two of four leave Git: 50% is the share, allowed.
        let d = diff(&p[..2], &[None, None], &inv, false, 50).unwrap();
        assert_eq!(d.prune.len(), 2);
        // Three of four: over it.
        let e = diff(&p[..1], &[None], &inv, false, 50).unwrap_err();
        assert_eq!(
            e,
            MassPrune {
                count: 3,
                total: 4,
                share: 50
            }
        );
        assert!(e.to_string().contains("refusing to prune 3 of 4"));
        // Unless the assignment allows it.
        assert_eq!(
            diff(&p[..1], &[None], &inv, true, 50).unwrap().prune.len(),
            3
        );
        // A single object always may go, even if it is all there is.
        let one = diff(&[], &[], &inv[..1], false, 50).unwrap();
        assert_eq!(one.prune.len(), 1);
    }

    #[test]
    fn pruning_goes_in_reverse_apply_order() {
        let objects = [
            obj("CustomResourceDefinition", "w.x.io", json!({})),
            obj("Namespace", "shop", json!({})),
            obj("ConfigMap", "cm", json!({})),
        ];
        let p = plan(&objects, scope, "c1", &[]).unwrap();
        let inv: Vec<InventoryEntry> = p.iter().map(|x| entry(x, "u")).collect();
        let d = diff(&[], &[], &inv, true, 50).unwrap();
        let kinds: Vec<_> = d.prune.iter().map(|e| e.kind.as_str()).collect();
        assert_eq!(
            kinds,
            ["ConfigMap", "Namespace", "CustomResourceDefinition"]
        );
    }

    #[test]
    fn a_namespaced_agent_refuses_what_lies_outside_its_namespaces() {
        let objects = vec![
            obj(
                "ConfigMap",
                "a",
                json!({"metadata": {"namespace": "team-a"}}),
            ),
            obj("ConfigMap", "b", json!({})),
            obj(
                "ConfigMap",
                "c",
                json!({"metadata": {"namespace": "team-b"}}),
            ),
            obj("Namespace", "team-c", json!({})),
        ];
        let scope = |o: &Object| Scope::Served {
            namespaced: o.kind() != "Namespace",
        };
        let mine = vec!["team-a".to_string()];
        let problems = plan(&objects, scope, "c1", &mine).unwrap_err();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(
            problems[0]
                .message
                .contains("namespace team-b is outside this agent's namespaces (team-a)")
        );
        assert!(problems[1].message.contains("Namespace is cluster-scoped"));
        let p = plan(&objects[..2], scope, "c1", &mine).unwrap();
        assert!(
            p.iter().all(|p| p.namespace() == Some("team-a")),
            "the first is the default"
        );
    }

    #[test]
    fn field_changes_show_what_differs_and_never_a_secret() {
        let live = json!({"kind": "Deployment", "metadata": {"name": "web", "resourceVersion": "7",
            "managedFields": [{"manager": "x"}], "labels": {"app": "web"}},
            "spec": {"replicas": 2, "template": {"spec": {"containers": [{"name": "web", "image": "nginx:1"}]}}},
            "status": {"readyReplicas": 2}});
        let dry = json!({"kind": "Deployment", "metadata": {"name": "web", "resourceVersion": "8",
            "labels": {"app": "web", "tier": "front"}},
            "spec": {"replicas": 3, "template": {"spec": {"containers": [{"name": "web", "image": "nginx:2"}]}}},
            "status": {"readyReplicas": 0}});
        let c = field_changes(&live, &dry);
        let paths: Vec<&str> = c.iter().map(|(p, _, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            [
                "metadata.labels.tier",
                "spec.replicas",
                "spec.template.spec.containers[0].image"
            ]
        );
        assert_eq!(
            c[0],
            (
                "metadata.labels.tier".into(),
                "(none)".into(),
                "\"front\"".into()
            )
        );
        assert_eq!(c[1].1, "2");
        assert_eq!(c[1].2, "3");
        let secret =
            |v: &str| json!({"kind": "Secret", "metadata": {"name": "s"}, "data": {"password": v}});
        let c = field_changes(&secret("b2xk"), &secret("bmV3"));
        assert_eq!(
            c,
            vec![("data.password".into(), "(hidden)".into(), "(hidden)".into())]
        );
        assert!(field_changes(&live, &live).is_empty());
    }
}
