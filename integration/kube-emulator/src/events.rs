//! `events.k8s.io/v1` Events are the core `v1` Events seen through other
//! field names, as in kube-apiserver: one storage, two views. An event
//! recorded through either API is listed and watched through both (so
//! `kubectl get events` shows what a controller recorded with the newer
//! API). Objects are stored in the core form.

use serde_json::{Map, Value};

/// (events.k8s.io/v1 name, core/v1 name) of the fields that differ.
const RENAMED: &[(&str, &str)] = &[
    ("note", "message"),
    ("regarding", "involvedObject"),
    ("reportingController", "reportingComponent"),
    ("deprecatedSource", "source"),
    ("deprecatedFirstTimestamp", "firstTimestamp"),
    ("deprecatedLastTimestamp", "lastTimestamp"),
    ("deprecatedCount", "count"),
];

/// Whether a type is the `events.k8s.io` view.
pub fn is_view(group: &str, plural: &str) -> bool {
    group == "events.k8s.io" && plural == "events"
}

fn rename(obj: Value, to_core: bool) -> Value {
    let Value::Object(fields) = obj else {
        return obj;
    };
    let mut out = Map::new();
    for (k, v) in fields {
        let k = RENAMED
            .iter()
            .find_map(|(view, core)| {
                if to_core {
                    (k == *view).then_some(*core)
                } else {
                    (k == *core).then_some(*view)
                }
            })
            .map_or(k, str::to_string);
        out.insert(k, v);
    }
    Value::Object(out)
}

/// An `events.k8s.io/v1` object (or patch) in the stored core form.
pub fn to_core(obj: Value) -> Value {
    let mut obj = rename(obj, true);
    if obj
        .get("apiVersion")
        .and_then(Value::as_str)
        .is_some_and(|v| v.starts_with("events.k8s.io/"))
    {
        obj["apiVersion"] = "v1".into();
    }
    obj
}

/// A stored event as `events.k8s.io/v1` shows it.
pub fn to_view(obj: Value) -> Value {
    rename(obj, false)
}

/// A JSON patch (RFC 6902) written against the view, against the core form.
pub fn json_patch_to_core(patch: Value) -> Value {
    let fix = |p: &str| -> String {
        let rest = p.strip_prefix('/').unwrap_or(p);
        let (first, tail) = rest.split_once('/').map_or((rest, ""), |(a, b)| (a, b));
        let first = RENAMED
            .iter()
            .find_map(|(view, core)| (first == *view).then_some(*core))
            .unwrap_or(first);
        if tail.is_empty() {
            format!("/{first}")
        } else {
            format!("/{first}/{tail}")
        }
    };
    match patch {
        Value::Array(ops) => Value::Array(
            ops.into_iter()
                .map(|mut op| {
                    for key in ["path", "from"] {
                        if let Some(p) = op.get(key).and_then(Value::as_str) {
                            op[key] = fix(p).into();
                        }
                    }
                    op
                })
                .collect(),
        ),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_two_views_round_trip() {
        let v = json!({"note": "applied", "regarding": {"kind": "ConfigMap"}, "reason": "Applied",
                       "reportingController": "ferry.dev/agent", "metadata": {"name": "e"}});
        let core = to_core(v.clone());
        assert_eq!(
            to_core(json!({"apiVersion": "events.k8s.io/v1"}))["apiVersion"],
            "v1"
        );
        assert_eq!(core["message"], "applied");
        assert_eq!(core["involvedObject"]["kind"], "ConfigMap");
        assert_eq!(core["reportingComponent"], "ferry.dev/agent");
        assert_eq!(to_view(core), v);
        let p = json_patch_to_core(json!([{"op": "replace", "path": "/note", "value": "x"}]));
        assert_eq!(p[0]["path"], "/message");
    }
}
