//! Server-side printing: a `get` or `list` asked for `as=Table` (as
//! `kubectl get` does) is answered with a `meta.k8s.io/v1` Table whose
//! columns are kube-apiserver's for the common kinds (its printers in
//! `pkg/printers/internalversion`), a CRD's `additionalPrinterColumns`, and
//! Name and Age otherwise. Columns of priority 1 are what `-o wide` adds.

use crate::registry::ResourceType;
use k8s_openapi::jiff::Timestamp;
use serde_json::{Value, json};

/// Whether an `Accept` header asks for a Table.
pub fn wanted(accept: Option<&str>) -> bool {
    accept.is_some_and(|a| {
        a.split(',')
            .next()
            .is_some_and(|first| first.contains("as=Table"))
    })
}

fn s<'a>(o: &'a Value, pointer: &str) -> &'a str {
    o.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

fn n(o: &Value, pointer: &str) -> i64 {
    o.pointer(pointer).and_then(Value::as_i64).unwrap_or(0)
}

/// A duration as kubectl prints ages: `45s`, `3m20s`, `5h`, `2d3h`, `40d`.
pub fn human(secs: i64) -> String {
    let secs = secs.max(0);
    match secs {
        0..120 => format!("{secs}s"),
        120..600 => format!("{}m{}s", secs / 60, secs % 60),
        600..10_800 => format!("{}m", secs / 60),
        10_800..28_800 => format!("{}h{}m", secs / 3600, (secs % 3600) / 60),
        28_800..172_800 => format!("{}h", secs / 3600),
        172_800..691_200 => format!("{}d{}h", secs / 86_400, (secs % 86_400) / 3600),
        _ => format!("{}d", secs / 86_400),
    }
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn since(timestamp: &str) -> String {
    match timestamp.parse::<Timestamp>() {
        Ok(t) => human(now_secs() - t.as_second()),
        Err(_) => "<unknown>".into(),
    }
}

fn age(o: &Value) -> String {
    since(s(o, "/metadata/creationTimestamp"))
}

fn column(name: &str, kind: &str, priority: u8) -> Value {
    json!({"name": name, "type": kind, "format": if name == "Name" { "name" } else { "" },
           "description": "", "priority": priority})
}

type Cells = Vec<Value>;

/// Columns and a row printer for a kind.
#[allow(clippy::type_complexity)]
fn printer(
    rt: &ResourceType,
    crd: Option<&Value>,
    version: &str,
) -> (Vec<Value>, Box<dyn Fn(&Value) -> Cells>) {
    let name = |o: &Value| Value::from(s(o, "/metadata/name"));
    match (rt.group.as_str(), rt.kind.as_str()) {
        ("apps", "Deployment") => (
            vec![
                column("Name", "string", 0),
                column("Ready", "string", 0),
                column("Up-to-date", "integer", 0),
                column("Available", "integer", 0),
                column("Age", "string", 0),
                column("Containers", "string", 1),
                column("Images", "string", 1),
            ],
            Box::new(move |o| {
                let containers = o
                    .pointer("/spec/template/spec/containers")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                let names: Vec<&str> = containers.iter().map(|c| s(c, "/name")).collect();
                let images: Vec<&str> = containers.iter().map(|c| s(c, "/image")).collect();
                vec![
                    name(o),
                    format!(
                        "{}/{}",
                        n(o, "/status/readyReplicas"),
                        n(o, "/spec/replicas")
                    )
                    .into(),
                    n(o, "/status/updatedReplicas").into(),
                    n(o, "/status/availableReplicas").into(),
                    age(o).into(),
                    names.join(",").into(),
                    images.join(",").into(),
                ]
            }),
        ),
        ("apps", "StatefulSet") => (
            vec![
                column("Name", "string", 0),
                column("Ready", "string", 0),
                column("Age", "string", 0),
            ],
            Box::new(move |o| {
                vec![
                    name(o),
                    format!(
                        "{}/{}",
                        n(o, "/status/readyReplicas"),
                        n(o, "/spec/replicas")
                    )
                    .into(),
                    age(o).into(),
                ]
            }),
        ),
        ("apps", "ReplicaSet") => (
            vec![
                column("Name", "string", 0),
                column("Desired", "integer", 0),
                column("Current", "integer", 0),
                column("Ready", "integer", 0),
                column("Age", "string", 0),
            ],
            Box::new(move |o| {
                vec![
                    name(o),
                    n(o, "/spec/replicas").into(),
                    n(o, "/status/replicas").into(),
                    n(o, "/status/readyReplicas").into(),
                    age(o).into(),
                ]
            }),
        ),
        ("apps", "DaemonSet") => (
            vec![
                column("Name", "string", 0),
                column("Desired", "integer", 0),
                column("Current", "integer", 0),
                column("Ready", "integer", 0),
                column("Up-to-date", "integer", 0),
                column("Available", "integer", 0),
                column("Age", "string", 0),
            ],
            Box::new(move |o| {
                vec![
                    name(o),
                    n(o, "/status/desiredNumberScheduled").into(),
                    n(o, "/status/currentNumberScheduled").into(),
                    n(o, "/status/numberReady").into(),
                    n(o, "/status/updatedNumberScheduled").into(),
                    n(o, "/status/numberAvailable").into(),
                    age(o).into(),
                ]
            }),
        ),
        ("", "Service") => (
            vec![
                column("Name", "string", 0),
                column("Type", "string", 0),
                column("Cluster-IP", "string", 0),
                column("External-IP", "string", 0),
                column("Port(s)", "string", 0),
                column("Age", "string", 0),
            ],
            Box::new(move |o| {
                let ports: Vec<String> = o
                    .pointer("/spec/ports")
                    .and_then(Value::as_array)
                    .map(|ps| {
                        ps.iter()
                            .map(|p| {
                                let proto = match s(p, "/protocol") {
                                    "" => "TCP",
                                    other => other,
                                };
                                format!("{}/{proto}", n(p, "/port"))
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                let kind = match s(o, "/spec/type") {
                    "" => "ClusterIP",
                    t => t,
                };
                let ip = match s(o, "/spec/clusterIP") {
                    "" => "<none>",
                    ip => ip,
                };
                vec![
                    name(o),
                    kind.into(),
                    ip.into(),
                    "<none>".into(),
                    if ports.is_empty() {
                        "<none>".into()
                    } else {
                        ports.join(",").into()
                    },
                    age(o).into(),
                ]
            }),
        ),
        ("", "ConfigMap") => (
            vec![
                column("Name", "string", 0),
                column("Data", "integer", 0),
                column("Age", "string", 0),
            ],
            Box::new(move |o| {
                let count = |k: &str| o.get(k).and_then(Value::as_object).map_or(0, |m| m.len());
                vec![
                    name(o),
                    (count("data") + count("binaryData")).into(),
                    age(o).into(),
                ]
            }),
        ),
        ("", "Secret") => (
            vec![
                column("Name", "string", 0),
                column("Type", "string", 0),
                column("Data", "integer", 0),
                column("Age", "string", 0),
            ],
            Box::new(move |o| {
                let data = o
                    .get("data")
                    .and_then(Value::as_object)
                    .map_or(0, |m| m.len());
                vec![name(o), s(o, "/type").into(), data.into(), age(o).into()]
            }),
        ),
        ("", "Namespace") => (
            vec![
                column("Name", "string", 0),
                column("Status", "string", 0),
                column("Age", "string", 0),
            ],
            Box::new(move |o| {
                let phase = match s(o, "/status/phase") {
                    "" => "Active",
                    p => p,
                };
                vec![name(o), phase.into(), age(o).into()]
            }),
        ),
        ("", "Pod") => (
            vec![
                column("Name", "string", 0),
                column("Ready", "string", 0),
                column("Status", "string", 0),
                column("Restarts", "string", 0),
                column("Age", "string", 0),
            ],
            Box::new(move |o| {
                let total = o
                    .pointer("/spec/containers")
                    .and_then(Value::as_array)
                    .map_or(0, Vec::len);
                let ready = o
                    .pointer("/status/containerStatuses")
                    .and_then(Value::as_array)
                    .map_or(0, |cs| {
                        cs.iter()
                            .filter(|c| c["ready"].as_bool() == Some(true))
                            .count()
                    });
                let phase = match s(o, "/status/phase") {
                    "" => "Pending",
                    p => p,
                };
                vec![
                    name(o),
                    format!("{ready}/{total}").into(),
                    phase.into(),
                    "0".into(),
                    age(o).into(),
                ]
            }),
        ),
        ("", "Event") => (
            vec![
                column("Last Seen", "string", 0),
                column("Type", "string", 0),
                column("Reason", "string", 0),
                column("Object", "string", 0),
                column("Message", "string", 0),
                column("Source", "string", 1),
                column("Count", "integer", 1),
                column("Name", "string", 1),
            ],
            Box::new(move |o| {
                let last = [
                    "/series/lastObservedTime",
                    "/lastTimestamp",
                    "/eventTime",
                    "/metadata/creationTimestamp",
                ]
                .iter()
                .map(|p| s(o, p))
                .find(|t| !t.is_empty())
                .unwrap_or("");
                let object = format!(
                    "{}/{}",
                    s(o, "/involvedObject/kind").to_lowercase(),
                    s(o, "/involvedObject/name")
                );
                let count = o
                    .pointer("/series/count")
                    .or_else(|| o.pointer("/count"))
                    .and_then(Value::as_i64)
                    .unwrap_or(1);
                let source = match s(o, "/source/component") {
                    "" => s(o, "/reportingComponent"),
                    c => c,
                };
                vec![
                    since(last).into(),
                    s(o, "/type").into(),
                    s(o, "/reason").into(),
                    object.into(),
                    s(o, "/message").into(),
                    source.into(),
                    count.into(),
                    name(o),
                ]
            }),
        ),
        _ => match crd {
            Some(crd) => crd_printer(crd, version),
            None => (
                vec![column("Name", "string", 0), column("Age", "string", 0)],
                Box::new(move |o| vec![name(o), age(o).into()]),
            ),
        },
    }
}

/// A CRD's printer: Name, its `additionalPrinterColumns` (simple
/// `.a.b` paths), and Age unless the CRD defines columns of its own.
#[allow(clippy::type_complexity)]
fn crd_printer(crd: &Value, version: &str) -> (Vec<Value>, Box<dyn Fn(&Value) -> Cells>) {
    let extra: Vec<Value> = crd
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .and_then(|vs| vs.iter().find(|v| v["name"] == version))
        .and_then(|v| v.get("additionalPrinterColumns"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut columns = vec![column("Name", "string", 0)];
    let mut paths = vec![];
    for c in &extra {
        columns.push(json!({
            "name": c["name"], "type": c.get("type").cloned().unwrap_or("string".into()),
            "format": c.get("format").cloned().unwrap_or("".into()),
            "description": c.get("description").cloned().unwrap_or("".into()),
            "priority": c.get("priority").cloned().unwrap_or(0.into()),
        }));
        paths.push(
            c["jsonPath"]
                .as_str()
                .unwrap_or("")
                .trim_start_matches('.')
                .replace('.', "/"),
        );
    }
    let age_column = extra.is_empty();
    if age_column {
        columns.push(column("Age", "string", 0));
    }
    (
        columns,
        Box::new(move |o| {
            let mut cells = vec![Value::from(s(o, "/metadata/name"))];
            for p in &paths {
                let v = o.pointer(&format!("/{p}")).cloned().unwrap_or(Value::Null);
                // A date column prints as an age, as kubectl does.
                cells.push(match v.as_str().and_then(|t| t.parse::<Timestamp>().ok()) {
                    Some(t) => human(now_secs() - t.as_second()).into(),
                    None => v,
                });
            }
            if age_column {
                cells.push(age(o).into());
            }
            cells
        }),
    )
}

/// A Table of objects (stored form), for the client's `view` of the type
/// at `version` (`crd`: the definition of a custom type).
pub fn of(
    view: &ResourceType,
    version: &str,
    crd: Option<&Value>,
    objects: &[Value],
    resource_version: u64,
) -> Value {
    let (columns, print) = printer(view, crd, version);
    let rows: Vec<Value> = objects
        .iter()
        .map(|o| {
            json!({
                "cells": print(o),
                "object": {
                    "kind": "PartialObjectMetadata",
                    "apiVersion": "meta.k8s.io/v1",
                    "metadata": o.get("metadata").cloned().unwrap_or(Value::Null),
                },
            })
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": resource_version.to_string()},
        "columnDefinitions": columns,
        "rows": rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_print_as_kubectl_prints_them() {
        assert_eq!(human(45), "45s");
        assert_eq!(human(200), "3m20s");
        assert_eq!(human(3000), "50m");
        assert_eq!(human(4 * 3600 + 120), "4h2m");
        assert_eq!(human(86_400 * 3 + 3600), "3d1h");
        assert_eq!(human(86_400 * 40), "40d");
    }

    #[test]
    fn the_accept_header_decides() {
        assert!(wanted(Some(
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"
        )));
        assert!(!wanted(Some("application/json")));
        assert!(!wanted(None));
    }
}
