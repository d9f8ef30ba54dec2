//! Server-side apply and field ownership (`metadata.managedFields`).
//!
//! A field set is the set of leaf paths an object sets, in the FieldsV1
//! vocabulary: `f:name` steps into a map key, `k:{"name":"x"}` into the item
//! of a keyed list, `.` names such an item itself. Lists without a merge key
//! are atomic leaves. Pure functions; the store decides what gets written.

use crate::patch::merge_key;
use serde_json::{Map, Value, json};
use std::collections::BTreeSet;

pub type Path = Vec<String>;
pub type FieldSet = BTreeSet<Path>;

/// One `metadata.managedFields` entry.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub manager: String,
    /// `Apply` or `Update`.
    pub operation: String,
    pub api_version: String,
    pub time: String,
    pub subresource: Option<String>,
    pub fields: FieldSet,
}

/// A field that another manager owns with a different value.
#[derive(Clone, Debug, PartialEq)]
pub struct Conflict {
    pub manager: String,
    pub field: String,
}

/// The leaf paths of `obj` that ownership tracks: everything but `apiVersion`,
/// `kind`, `status` and server-owned metadata.
pub fn fieldset(obj: &Value) -> FieldSet {
    let mut out = FieldSet::new();
    if let Value::Object(m) = obj {
        for (k, v) in m {
            match k.as_str() {
                "apiVersion" | "kind" | "status" => {}
                "metadata" => {
                    for mk in ["labels", "annotations", "finalizers", "ownerReferences"] {
                        if let Some(v) = v.get(mk) {
                            walk(
                                v,
                                &mut vec!["f:metadata".into(), format!("f:{mk}")],
                                mk,
                                &mut out,
                            );
                        }
                    }
                }
                _ => walk(v, &mut vec![format!("f:{k}")], k, &mut out),
            }
        }
    }
    out
}

fn item_key(key: &str, item: &Value) -> Option<String> {
    let id = item.get(key)?;
    Some(format!("k:{}", json!({ key: id })))
}

fn walk(v: &Value, path: &mut Path, field: &str, out: &mut FieldSet) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, v) in m {
                path.push(format!("f:{k}"));
                walk(v, path, k, out);
                path.pop();
            }
        }
        Value::Array(items) if !items.is_empty() => {
            let key = merge_key(field, items.first());
            let keyed: Option<Vec<String>> = key.and_then(|key| {
                items
                    .iter()
                    .map(|i| item_key(key, i))
                    .collect::<Option<Vec<_>>>()
            });
            match keyed {
                Some(keys) => {
                    for (k, item) in keys.into_iter().zip(items) {
                        path.push(k);
                        path.push(".".into());
                        out.insert(path.clone());
                        path.pop();
                        walk_item(item, path, out);
                        path.pop();
                    }
                }
                None => {
                    out.insert(path.clone());
                }
            }
        }
        _ => {
            out.insert(path.clone());
        }
    }
}

fn walk_item(item: &Value, path: &mut Path, out: &mut FieldSet) {
    if let Value::Object(m) = item {
        for (k, v) in m {
            path.push(format!("f:{k}"));
            walk(v, path, k, out);
            path.pop();
        }
    }
}

fn find_item(items: &[Value], step: &str) -> Option<usize> {
    let sel: Map<String, Value> = serde_json::from_str(step.strip_prefix("k:")?).ok()?;
    items
        .iter()
        .position(|i| sel.iter().all(|(k, v)| i.get(k) == Some(v)))
}

/// The value at `path`, or `None` when it is absent.
pub fn value_at<'a>(obj: &'a Value, path: &[String]) -> Option<&'a Value> {
    let mut cur = obj;
    for step in path {
        if step == "." {
            return Some(cur);
        }
        cur = if let Some(f) = step.strip_prefix("f:") {
            cur.get(f)?
        } else {
            let items = cur.as_array()?;
            &items[find_item(items, step)?]
        };
    }
    Some(cur)
}

/// Removes the field or list item at `path`; absent paths are fine.
fn remove_path(obj: &mut Value, path: &[String]) {
    let (last, parent) = match path.split_last() {
        Some((l, p)) if l == "." => match p.split_last() {
            Some((item, parent)) => (item, parent),
            None => return,
        },
        Some(x) => x,
        None => return,
    };
    let mut cur = obj;
    for step in parent {
        let next = if let Some(f) = step.strip_prefix("f:") {
            cur.get_mut(f)
        } else {
            match cur.as_array_mut() {
                Some(items) => match find_item(items, step) {
                    Some(i) => items.get_mut(i),
                    None => None,
                },
                None => None,
            }
        };
        match next {
            Some(n) => cur = n,
            None => return,
        }
    }
    if let Some(f) = last.strip_prefix("f:") {
        if let Some(m) = cur.as_object_mut() {
            m.remove(f);
        }
    } else if let Some(items) = cur.as_array_mut()
        && let Some(i) = find_item(items, last)
    {
        items.remove(i);
    }
}

/// Merges an applied configuration into the live object.
fn merge(live: &mut Value, cfg: &Value, field: &str) {
    match (live, cfg) {
        (Value::Object(l), Value::Object(c)) => {
            for (k, v) in c {
                match l.get_mut(k) {
                    Some(lv) => merge(lv, v, k),
                    None => {
                        l.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (Value::Array(l), Value::Array(c)) if !c.is_empty() => {
            let Some(key) = merge_key(field, c.first()) else {
                *l = c.clone();
                return;
            };
            for item in c {
                let pos = item
                    .get(key)
                    .and_then(|id| l.iter().position(|e| e.get(key) == Some(id)));
                match pos {
                    Some(i) => merge(&mut l[i], item, ""),
                    None => l.push(item.clone()),
                }
            }
        }
        (l, c) => *l = c.clone(),
    }
}

/// Dotted form of a path, as the API server names fields in conflicts.
pub fn display(path: &[String]) -> String {
    let mut s = String::new();
    for step in path {
        if let Some(f) = step.strip_prefix("f:") {
            s.push('.');
            s.push_str(f);
        } else if let Some(k) = step.strip_prefix("k:") {
            s.push('[');
            s.push_str(&k.replace(['{', '}'], "").replace(':', "="));
            s.push(']');
        }
    }
    s
}

fn set_to_tree(set: &FieldSet) -> Value {
    let mut root = Map::new();
    for path in set {
        let mut cur = &mut root;
        for step in path {
            cur = cur
                .entry(step.clone())
                .or_insert_with(|| Value::Object(Map::new()))
                .as_object_mut()
                .expect("fieldsV1 nodes are maps");
        }
    }
    Value::Object(root)
}

fn tree_to_set(tree: &Value, path: &mut Path, out: &mut FieldSet) {
    match tree.as_object() {
        Some(m) if !m.is_empty() => {
            for (k, v) in m {
                path.push(k.clone());
                tree_to_set(v, path, out);
                path.pop();
            }
        }
        _ => {
            if !path.is_empty() {
                out.insert(path.clone());
            }
        }
    }
}

/// Reads `metadata.managedFields`.
pub fn entries(obj: &Value) -> Vec<Entry> {
    let Some(list) = obj
        .pointer("/metadata/managedFields")
        .and_then(Value::as_array)
    else {
        return vec![];
    };
    list.iter()
        .map(|e| {
            let s = |k: &str| e.get(k).and_then(Value::as_str).unwrap_or("").to_string();
            let mut fields = FieldSet::new();
            if let Some(t) = e.get("fieldsV1") {
                tree_to_set(t, &mut vec![], &mut fields);
            }
            Entry {
                manager: s("manager"),
                operation: s("operation"),
                api_version: s("apiVersion"),
                time: s("time"),
                subresource: e
                    .get("subresource")
                    .and_then(Value::as_str)
                    .map(str::to_string),
                fields,
            }
        })
        .collect()
}

/// Writes `metadata.managedFields`, dropping entries that own nothing.
pub fn set_entries(obj: &mut Value, entries: &[Entry]) {
    let list: Vec<Value> = entries
        .iter()
        .filter(|e| !e.fields.is_empty())
        .map(|e| {
            let mut v = json!({
                "manager": e.manager,
                "operation": e.operation,
                "apiVersion": e.api_version,
                "time": e.time,
                "fieldsType": "FieldsV1",
                "fieldsV1": set_to_tree(&e.fields),
            });
            if let Some(s) = &e.subresource {
                v["subresource"] = s.clone().into();
            }
            v
        })
        .collect();
    if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        if list.is_empty() {
            m.remove("managedFields");
        } else {
            m.insert("managedFields".into(), Value::Array(list));
        }
    }
}

/// Server-side apply of `config` by `manager` onto `live` (absent: create).
/// Returns the merged object with its managed fields.
pub fn apply(
    live: Option<&Value>,
    config: &Value,
    manager: &str,
    force: bool,
    now: &str,
) -> Result<Value, Vec<Conflict>> {
    let api_version = config
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let new_set = fieldset(config);
    let Some(live) = live else {
        let mut obj = config.clone();
        set_entries(
            &mut obj,
            &[Entry {
                manager: manager.into(),
                operation: "Apply".into(),
                api_version,
                time: now.into(),
                subresource: None,
                fields: new_set,
            }],
        );
        return Ok(obj);
    };
    let mut managers = entries(live);
    let mine =
        |e: &Entry| e.manager == manager && e.operation == "Apply" && e.subresource.is_none();

    let mut conflicts = Vec::new();
    for e in managers
        .iter_mut()
        .filter(|e| !mine(e) && e.subresource.is_none())
    {
        let lost: Vec<Path> = e
            .fields
            .iter()
            .filter(|p| {
                p.last().is_some_and(|s| s != ".")
                    && new_set.contains(*p)
                    && value_at(live, p) != value_at(config, p)
            })
            .cloned()
            .collect();
        for p in lost {
            if force {
                e.fields.remove(&p);
            } else {
                conflicts.push(Conflict {
                    manager: e.manager.clone(),
                    field: display(&p),
                });
            }
        }
    }
    if !conflicts.is_empty() {
        return Err(conflicts);
    }

    let old_set = managers
        .iter()
        .find(|e| mine(e))
        .map(|e| e.fields.clone())
        .unwrap_or_default();
    let mut obj = live.clone();
    for p in old_set.difference(&new_set) {
        let owned_elsewhere = managers
            .iter()
            .filter(|e| !mine(e))
            .any(|e| e.fields.iter().any(|q| q.starts_with(strip_dot(p))));
        if !owned_elsewhere {
            remove_path(&mut obj, p);
        }
    }
    if let Some(m) = obj.get_mut("metadata") {
        for mk in ["labels", "annotations"] {
            if m.get(mk)
                .and_then(Value::as_object)
                .is_some_and(Map::is_empty)
            {
                m.as_object_mut().expect("metadata is a map").remove(mk);
            }
        }
    }
    let mut body = config.clone();
    if let Some(m) = body.as_object_mut() {
        m.remove("status");
        if let Some(meta) = m.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.retain(|k, _| {
                matches!(
                    k.as_str(),
                    "labels" | "annotations" | "finalizers" | "ownerReferences"
                )
            });
        }
    }
    merge(&mut obj, &body, "");

    let changed_content = strip_managed(&obj) != strip_managed(live);
    match managers.iter_mut().find(|e| mine(e)) {
        Some(e) => {
            if e.fields != new_set || changed_content || e.api_version != api_version {
                e.time = now.into();
            }
            e.fields = new_set;
            e.api_version = api_version;
        }
        None => managers.push(Entry {
            manager: manager.into(),
            operation: "Apply".into(),
            api_version,
            time: now.into(),
            subresource: None,
            fields: new_set,
        }),
    }
    set_entries(&mut obj, &managers);
    Ok(obj)
}

fn strip_dot(p: &Path) -> &[String] {
    match p.last() {
        Some(l) if l == "." => &p[..p.len() - 1],
        _ => p,
    }
}

fn strip_managed(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("managedFields");
    }
    v
}

/// Records a non-apply write (create, update, patch) by `manager`: it takes
/// the fields it changed, and every other manager loses them.
pub fn record_update(
    old: Option<&Value>,
    new: &mut Value,
    manager: &str,
    subresource: Option<&str>,
    now: &str,
) {
    let new_set = fieldset(new);
    let mut managers = old.map(entries).unwrap_or_default();
    let changed: FieldSet = match old {
        None => new_set.clone(),
        Some(old) => {
            let old_set = fieldset(old);
            new_set
                .iter()
                .filter(|p| value_at(old, p) != value_at(new, p))
                .chain(old_set.difference(&new_set))
                .cloned()
                .collect()
        }
    };
    if changed.is_empty() {
        set_entries(new, &managers);
        return;
    }
    let api_version = new
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    for e in managers.iter_mut() {
        if !(e.manager == manager && e.operation == "Update") {
            e.fields.retain(|p| !changed.contains(p));
        }
    }
    let gained: FieldSet = changed.intersection(&new_set).cloned().collect();
    match managers.iter_mut().find(|e| {
        e.manager == manager && e.operation == "Update" && e.subresource.as_deref() == subresource
    }) {
        Some(e) => {
            e.fields.extend(gained);
            e.time = now.into();
        }
        None => managers.push(Entry {
            manager: manager.into(),
            operation: "Update".into(),
            api_version,
            time: now.into(),
            subresource: subresource.map(str::to_string),
            fields: gained,
        }),
    }
    set_entries(new, &managers);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cm(data: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": "d"}, "data": data})
    }

    #[test]
    fn fieldset_keys_containers_by_name() {
        let d = json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "image": "x"}]}}}});
        let set = fieldset(&d);
        assert!(set.contains(&vec![
            "f:spec".to_string(),
            "f:template".into(),
            "f:spec".into(),
            "f:containers".into(),
            r#"k:{"name":"app"}"#.into(),
            "f:image".into()
        ]));
    }

    #[test]
    fn field_no_longer_applied_is_removed() {
        let live = apply(None, &cm(json!({"a": "1", "b": "2"})), "m", false, "t").unwrap();
        let next = apply(Some(&live), &cm(json!({"a": "1"})), "m", false, "t").unwrap();
        assert_eq!(next["data"], json!({"a": "1"}));
    }

    #[test]
    fn conflict_unless_forced() {
        let live = apply(None, &cm(json!({"a": "1"})), "one", false, "t").unwrap();
        let err = apply(Some(&live), &cm(json!({"a": "2"})), "two", false, "t").unwrap_err();
        assert_eq!(
            err,
            vec![Conflict {
                manager: "one".into(),
                field: ".data.a".into()
            }]
        );
        // Same value: shared ownership, no conflict.
        apply(Some(&live), &cm(json!({"a": "1"})), "two", false, "t").unwrap();
        let forced = apply(Some(&live), &cm(json!({"a": "2"})), "two", true, "t").unwrap();
        let owners = entries(&forced);
        assert!(owners.iter().all(|e| e.manager == "two"), "{owners:?}");
    }

    #[test]
    fn noop_apply_keeps_the_object_identical() {
        let live = apply(None, &cm(json!({"a": "1"})), "m", false, "t1").unwrap();
        let again = apply(Some(&live), &cm(json!({"a": "1"})), "m", false, "t2").unwrap();
        assert_eq!(live, again);
    }
}
