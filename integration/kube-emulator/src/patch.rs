//! The three non-apply patch formats: JSON merge patch (RFC 7386), JSON patch
//! (RFC 6902) and strategic merge patch. Pure functions over JSON values.

use serde_json::{Map, Value};

/// The merge key of a list field, as the built-in types' schemas declare it
/// (`x-kubernetes-patch-merge-key` / `x-kubernetes-list-map-keys`). Lists not
/// named here are atomic. Keyed by the field name, which is how the common
/// lists are recognised wherever they appear in a pod template; `item` tells
/// container ports (by `containerPort`) from Service ports (by `port`).
pub fn merge_key(field: &str, item: Option<&Value>) -> Option<&'static str> {
    match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "env"
        | "volumes"
        | "imagePullSecrets" => Some("name"),
        "hostAliases" => Some("ip"),
        "ports" if item.is_some_and(|i| i.get("containerPort").is_some()) => Some("containerPort"),
        "ports" => Some("port"),
        "volumeMounts" => Some("mountPath"),
        "volumeDevices" => Some("devicePath"),
        "conditions" => Some("type"),
        _ => None,
    }
}

/// RFC 7386.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = Value::Object(Map::new());
            }
            let t = target.as_object_mut().expect("just made an object");
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        other => *target = other.clone(),
    }
}

/// Strategic merge patch: like a merge patch, but lists with a merge key merge
/// item by item, and `$patch: delete` / `$patch: replace` directives apply.
pub fn strategic_merge(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if p.get("$patch").and_then(Value::as_str) == Some("replace") {
        let mut p = p.clone();
        p.remove("$patch");
        *target = Value::Object(p);
        return;
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let t = target.as_object_mut().expect("just made an object");
    for (k, v) in p {
        if k.starts_with('$') {
            continue;
        }
        if v.is_null() {
            t.remove(k);
            continue;
        }
        match (merge_key(k, v.get(0)), v) {
            (Some(key), Value::Array(items)) => {
                let existing = t.entry(k.clone()).or_insert_with(|| Value::Array(vec![]));
                if !existing.is_array() {
                    *existing = Value::Array(vec![]);
                }
                let list = existing.as_array_mut().expect("array");
                for item in items {
                    let id = item.get(key);
                    let pos = id.and_then(|id| list.iter().position(|e| e.get(key) == Some(id)));
                    let delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
                    match (pos, delete) {
                        (Some(i), true) => {
                            list.remove(i);
                        }
                        (None, true) => {}
                        (Some(i), false) => strategic_merge(&mut list[i], item),
                        (None, false) => {
                            let mut fresh = Value::Null;
                            strategic_merge(&mut fresh, item);
                            list.push(fresh);
                        }
                    }
                }
            }
            (_, Value::Object(_)) => strategic_merge(t.entry(k.clone()).or_insert(Value::Null), v),
            _ => {
                t.insert(k.clone(), v.clone());
            }
        }
    }
}

/// RFC 6902. Atomic: on any failure `target` is left as it was.
pub fn json_patch(target: &mut Value, ops: &Value) -> Result<(), String> {
    let ops = ops
        .as_array()
        .ok_or("a JSON patch must be an array of operations")?;
    let mut doc = target.clone();
    for (i, op) in ops.iter().enumerate() {
        let name = op.get("op").and_then(Value::as_str).unwrap_or("");
        let path = op
            .get("path")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("operation {i}: missing path"))?;
        let value = || {
            op.get("value")
                .cloned()
                .ok_or_else(|| format!("operation {i}: missing value"))
        };
        let from = || {
            op.get("from")
                .and_then(Value::as_str)
                .ok_or_else(|| format!("operation {i}: missing from"))
        };
        let res = match name {
            "add" => add(&mut doc, path, value()?),
            "remove" => remove(&mut doc, path).map(drop),
            "replace" => remove(&mut doc, path).and_then(|_| add(&mut doc, path, value()?)),
            "move" => {
                let v = remove(&mut doc, from()?)?;
                add(&mut doc, path, v)
            }
            "copy" => {
                let v = doc
                    .pointer(from()?)
                    .cloned()
                    .ok_or_else(|| format!("path {} does not exist", from().unwrap_or("")))?;
                add(&mut doc, path, v)
            }
            "test" => {
                if doc.pointer(path) == Some(&value()?) {
                    Ok(())
                } else {
                    Err(format!("test failed at {path}"))
                }
            }
            other => Err(format!("unknown operation {other:?}")),
        };
        res.map_err(|e| format!("operation {i} ({name} {path}): {e}"))?;
    }
    *target = doc;
    Ok(())
}

fn split(path: &str) -> Result<(String, String), String> {
    let idx = path
        .rfind('/')
        .ok_or_else(|| format!("invalid path {path:?}"))?;
    let last = path[idx + 1..].replace("~1", "/").replace("~0", "~");
    Ok((path[..idx].to_string(), last))
}

fn add(doc: &mut Value, path: &str, v: Value) -> Result<(), String> {
    if path.is_empty() {
        *doc = v;
        return Ok(());
    }
    let (parent, last) = split(path)?;
    match doc.pointer_mut(&parent) {
        Some(Value::Object(m)) => {
            m.insert(last, v);
            Ok(())
        }
        Some(Value::Array(a)) => {
            let i = if last == "-" {
                a.len()
            } else {
                last.parse::<usize>()
                    .map_err(|_| format!("bad index {last:?}"))?
            };
            if i > a.len() {
                return Err(format!("index {i} out of range"));
            }
            a.insert(i, v);
            Ok(())
        }
        _ => Err(format!("parent of {path} does not exist")),
    }
}

fn remove(doc: &mut Value, path: &str) -> Result<Value, String> {
    let (parent, last) = split(path)?;
    match doc.pointer_mut(&parent) {
        Some(Value::Object(m)) => m
            .remove(&last)
            .ok_or_else(|| format!("{path} does not exist")),
        Some(Value::Array(a)) => {
            let i = last
                .parse::<usize>()
                .map_err(|_| format!("bad index {last:?}"))?;
            if i >= a.len() {
                return Err(format!("index {i} out of range"));
            }
            Ok(a.remove(i))
        }
        _ => Err(format!("{path} does not exist")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_removes_nulls_and_merges_maps() {
        let mut t = json!({"a": 1, "b": {"c": 2, "d": 3}});
        merge_patch(&mut t, &json!({"a": null, "b": {"c": 5}}));
        assert_eq!(t, json!({"b": {"c": 5, "d": 3}}));
    }

    #[test]
    fn strategic_merge_merges_containers_by_name() {
        let mut t = json!({"spec": {"containers": [{"name": "a", "image": "x"}, {"name": "b", "image": "y"}]}});
        strategic_merge(
            &mut t,
            &json!({"spec": {"containers": [{"name": "b", "image": "z"}, {"name": "a", "$patch": "delete"}]}}),
        );
        assert_eq!(
            t,
            json!({"spec": {"containers": [{"name": "b", "image": "z"}]}})
        );
    }

    #[test]
    fn json_patch_is_atomic() {
        let mut t = json!({"a": [1, 2]});
        json_patch(&mut t, &json!([{"op": "add", "path": "/a/-", "value": 3}])).unwrap();
        assert_eq!(t, json!({"a": [1, 2, 3]}));
        let err = json_patch(
            &mut t,
            &json!([{"op": "remove", "path": "/a/0"}, {"op": "test", "path": "/a/0", "value": 9}]),
        )
        .unwrap_err();
        assert!(err.contains("test failed"), "{err}");
        assert_eq!(t, json!({"a": [1, 2, 3]}));
    }
}
