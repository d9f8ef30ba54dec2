//! Request bodies in Kubernetes' protobuf encoding, which kubectl sends for
//! built-in kinds (`kubectl create configmap|secret|namespace|deployment`).
//!
//! The body is `k8s\0` then a `runtime.Unknown` envelope holding the
//! object's own message. The object is decoded with k8s-pb's types and
//! turned into the JSON the rest of the emulator speaks by converters that
//! take each field they know; whatever is left set makes the request a 415
//! naming the field, so nothing is ever dropped silently. The kinds
//! converted are the ones `kubectl create` makes; others are refused (415)
//! with a clear message, and clients fall back to sending JSON.

use crate::store::ApiError;
use base64::Engine;
use k8s_pb::api::apps::v1 as apps;
use k8s_pb::api::core::v1 as core;
use k8s_pb::apimachinery::pkg::apis::meta::v1 as meta;
use prost::Message;
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// The media type kubectl and client-go send for built-in kinds.
pub const MEDIA_TYPE: &str = "application/vnd.kubernetes.protobuf";

const MAGIC: &[u8] = b"k8s\0";

/// Whether a request's content type is Kubernetes protobuf.
pub fn is_protobuf(content_type: Option<&str>) -> bool {
    content_type.is_some_and(|c| c.split(';').next().is_some_and(|m| m.trim() == MEDIA_TYPE))
}

fn unsupported(message: String) -> ApiError {
    ApiError::new(415, "UnsupportedMediaType", message)
}

/// The object in a protobuf request body, as JSON.
pub fn to_json(body: &[u8]) -> Result<Value, ApiError> {
    let bad = |m: String| ApiError::bad_request(format!("error decoding protobuf: {m}"));
    let rest = body
        .strip_prefix(MAGIC)
        .ok_or_else(|| bad("the body does not start with the k8s protobuf prefix".into()))?;
    let envelope = k8s_pb::apimachinery::pkg::runtime::Unknown::decode(rest)
        .map_err(|e| bad(e.to_string()))?;
    let type_meta = envelope.type_meta.unwrap_or_default();
    let api_version = type_meta.api_version.unwrap_or_default();
    let kind = type_meta.kind.unwrap_or_default();
    let raw = envelope.raw.unwrap_or_default();
    let decode_err = |e: prost::DecodeError| bad(format!("{kind} in {api_version}: {e}"));
    let mut object = match (api_version.as_str(), kind.as_str()) {
        ("v1", "ConfigMap") => config_map(core::ConfigMap::decode(raw.as_slice()).map_err(decode_err)?),
        ("v1", "Secret") => secret(core::Secret::decode(raw.as_slice()).map_err(decode_err)?),
        ("v1", "Namespace") => namespace(core::Namespace::decode(raw.as_slice()).map_err(decode_err)?),
        ("apps/v1", "Deployment") => {
            deployment(apps::Deployment::decode(raw.as_slice()).map_err(decode_err)?)
        }
        _ => {
            return Err(unsupported(format!(
                "the emulator reads protobuf bodies of ConfigMaps, Secrets, Namespaces and Deployments only, not {kind} in {api_version}: send application/json"
            )));
        }
    }
    .map_err(|field| {
        unsupported(format!(
            "{kind} in {api_version}: the emulator does not read {field} from protobuf: send application/json"
        ))
    })?;
    object["apiVersion"] = api_version.into();
    object["kind"] = kind.into();
    Ok(object)
}

/// Whether encoded protobuf holds zero values only (Go emits every
/// non-pointer field, zero or not; a zero value says nothing that omitting
/// it would not). Nested messages are looked into.
fn zero_only(mut b: &[u8]) -> bool {
    use prost::encoding::decode_varint;
    while !b.is_empty() {
        let Ok(key) = decode_varint(&mut b) else {
            return false;
        };
        match key & 7 {
            0 => {
                if decode_varint(&mut b) != Ok(0) {
                    return false;
                }
            }
            1 | 5 => {
                let n = if key & 7 == 1 { 8 } else { 4 };
                if b.len() < n || b[..n].iter().any(|x| *x != 0) {
                    return false;
                }
                b = &b[n..];
            }
            2 => {
                let Ok(len) = decode_varint(&mut b) else {
                    return false;
                };
                let Some((inner, tail)) = b.split_at_checked(len as usize) else {
                    return false;
                };
                if !inner.is_empty() && !zero_only(inner) {
                    return false;
                }
                b = tail;
            }
            _ => return false,
        }
    }
    true
}

/// Fails naming `path` (and what is left there) unless everything not
/// taken holds zero values only.
fn rest<T: Message + std::fmt::Debug>(left: T, path: &str) -> Result<(), String> {
    if zero_only(&left.encode_to_vec()) {
        return Ok(());
    }
    let mut shown = format!("{left:?}");
    if shown.len() > 300 {
        shown.truncate(300);
        shown.push('…');
    }
    Err(format!("{path} ({shown})"))
}

/// Sets `key` unless `v` is unset or an empty string (what Go's
/// `omitempty` leaves out of JSON).
fn put(out: &mut Map<String, Value>, key: &str, v: Option<impl Into<Value>>) {
    if let Some(v) = v.map(Into::into)
        && v != Value::String(String::new())
    {
        out.insert(key.into(), v);
    }
}

fn strings(out: &mut Map<String, Value>, key: &str, v: Vec<String>) {
    if !v.is_empty() {
        out.insert(key.into(), v.into());
    }
}

fn string_map(out: &mut Map<String, Value>, key: &str, m: BTreeMap<String, String>) {
    if !m.is_empty() {
        out.insert(
            key.into(),
            Value::Object(m.into_iter().map(|(k, v)| (k, v.into())).collect()),
        );
    }
}

fn bytes_map(out: &mut Map<String, Value>, key: &str, m: BTreeMap<String, Vec<u8>>) {
    if !m.is_empty() {
        let b64 = base64::engine::general_purpose::STANDARD;
        out.insert(
            key.into(),
            Value::Object(
                m.into_iter()
                    .map(|(k, v)| (k, b64.encode(v).into()))
                    .collect(),
            ),
        );
    }
}

fn object_meta(m: Option<meta::ObjectMeta>, path: &str) -> Result<Value, String> {
    let mut m = m.unwrap_or_default();
    let mut out = Map::new();
    put(&mut out, "name", m.name.take());
    put(&mut out, "generateName", m.generate_name.take());
    put(&mut out, "namespace", m.namespace.take());
    string_map(&mut out, "labels", std::mem::take(&mut m.labels));
    string_map(&mut out, "annotations", std::mem::take(&mut m.annotations));
    strings(&mut out, "finalizers", std::mem::take(&mut m.finalizers));
    put(&mut out, "resourceVersion", m.resource_version.take());
    // Set by the server whatever a client says (Go always encodes it).
    m.creation_timestamp = None;
    m.uid = None;
    m.generation = None;
    rest(m, &format!("{path}.metadata"))?;
    Ok(Value::Object(out))
}

fn config_map(mut c: core::ConfigMap) -> Result<Value, String> {
    let mut out = Map::new();
    out.insert("metadata".into(), object_meta(c.metadata.take(), "")?);
    string_map(&mut out, "data", std::mem::take(&mut c.data));
    bytes_map(&mut out, "binaryData", std::mem::take(&mut c.binary_data));
    put(&mut out, "immutable", c.immutable.take());
    rest(c, "ConfigMap")?;
    Ok(Value::Object(out))
}

fn secret(mut s: core::Secret) -> Result<Value, String> {
    let mut out = Map::new();
    out.insert("metadata".into(), object_meta(s.metadata.take(), "")?);
    bytes_map(&mut out, "data", std::mem::take(&mut s.data));
    string_map(&mut out, "stringData", std::mem::take(&mut s.string_data));
    put(&mut out, "type", s.r#type.take());
    put(&mut out, "immutable", s.immutable.take());
    rest(s, "Secret")?;
    Ok(Value::Object(out))
}

fn namespace(mut n: core::Namespace) -> Result<Value, String> {
    let mut out = Map::new();
    out.insert("metadata".into(), object_meta(n.metadata.take(), "")?);
    if let Some(mut spec) = n.spec.take() {
        let mut s = Map::new();
        strings(&mut s, "finalizers", std::mem::take(&mut spec.finalizers));
        rest(spec, "spec")?;
        out.insert("spec".into(), Value::Object(s));
    }
    // Status is the server's.
    n.status = None;
    rest(n, "Namespace")?;
    Ok(Value::Object(out))
}

fn int_or_string(v: k8s_pb::apimachinery::pkg::util::intstr::IntOrString) -> Value {
    match v.r#type {
        Some(1) => v.str_val.unwrap_or_default().into(),
        _ => v.int_val.unwrap_or_default().into(),
    }
}

fn label_selector(s: Option<meta::LabelSelector>, path: &str) -> Result<Option<Value>, String> {
    let Some(mut s) = s else { return Ok(None) };
    let mut out = Map::new();
    string_map(&mut out, "matchLabels", std::mem::take(&mut s.match_labels));
    let mut exprs = vec![];
    for mut e in std::mem::take(&mut s.match_expressions) {
        let mut x = Map::new();
        put(&mut x, "key", e.key.take());
        put(&mut x, "operator", e.operator.take());
        strings(&mut x, "values", std::mem::take(&mut e.values));
        rest(e, &format!("{path}.matchExpressions"))?;
        exprs.push(Value::Object(x));
    }
    if !exprs.is_empty() {
        out.insert("matchExpressions".into(), exprs.into());
    }
    rest(s, path)?;
    Ok(Some(Value::Object(out)))
}

fn quantities(
    out: &mut Map<String, Value>,
    key: &str,
    m: BTreeMap<String, k8s_pb::apimachinery::pkg::api::resource::Quantity>,
) {
    if !m.is_empty() {
        out.insert(
            key.into(),
            Value::Object(
                m.into_iter()
                    .map(|(k, q)| (k, q.string.unwrap_or_default().into()))
                    .collect(),
            ),
        );
    }
}

fn container(mut c: core::Container, path: &str) -> Result<Value, String> {
    let mut out = Map::new();
    put(&mut out, "name", c.name.take());
    put(&mut out, "image", c.image.take());
    strings(&mut out, "command", std::mem::take(&mut c.command));
    strings(&mut out, "args", std::mem::take(&mut c.args));
    put(&mut out, "workingDir", c.working_dir.take());
    put(&mut out, "imagePullPolicy", c.image_pull_policy.take());
    put(
        &mut out,
        "terminationMessagePath",
        c.termination_message_path.take(),
    );
    put(
        &mut out,
        "terminationMessagePolicy",
        c.termination_message_policy.take(),
    );
    let mut ports = vec![];
    for mut p in std::mem::take(&mut c.ports) {
        let mut x = Map::new();
        put(&mut x, "name", p.name.take());
        put(&mut x, "containerPort", p.container_port.take());
        put(&mut x, "hostPort", p.host_port.take());
        put(&mut x, "protocol", p.protocol.take());
        rest(p, &format!("{path}.ports"))?;
        ports.push(Value::Object(x));
    }
    if !ports.is_empty() {
        out.insert("ports".into(), ports.into());
    }
    let mut env = vec![];
    for mut e in std::mem::take(&mut c.env) {
        let mut x = Map::new();
        put(&mut x, "name", e.name.take());
        put(&mut x, "value", e.value.take());
        rest(e, &format!("{path}.env"))?;
        env.push(Value::Object(x));
    }
    if !env.is_empty() {
        out.insert("env".into(), env.into());
    }
    if let Some(mut r) = c.resources.take() {
        let mut x = Map::new();
        quantities(&mut x, "limits", std::mem::take(&mut r.limits));
        quantities(&mut x, "requests", std::mem::take(&mut r.requests));
        rest(r, &format!("{path}.resources"))?;
        out.insert("resources".into(), Value::Object(x));
    }
    rest(c, path)?;
    Ok(Value::Object(out))
}

fn pod_template(t: Option<core::PodTemplateSpec>, path: &str) -> Result<Option<Value>, String> {
    let Some(mut t) = t else { return Ok(None) };
    let mut out = Map::new();
    out.insert("metadata".into(), object_meta(t.metadata.take(), path)?);
    if let Some(mut s) = t.spec.take() {
        let sp = format!("{path}.spec");
        let mut x = Map::new();
        let containers = std::mem::take(&mut s.containers)
            .into_iter()
            .map(|c| container(c, &format!("{sp}.containers")))
            .collect::<Result<Vec<_>, _>>()?;
        x.insert("containers".into(), containers.into());
        put(&mut x, "restartPolicy", s.restart_policy.take());
        put(
            &mut x,
            "terminationGracePeriodSeconds",
            s.termination_grace_period_seconds.take(),
        );
        put(&mut x, "dnsPolicy", s.dns_policy.take());
        put(&mut x, "serviceAccountName", s.service_account_name.take());
        put(&mut x, "schedulerName", s.scheduler_name.take());
        string_map(&mut x, "nodeSelector", std::mem::take(&mut s.node_selector));
        rest(s, &sp)?;
        out.insert("spec".into(), Value::Object(x));
    }
    rest(t, path)?;
    Ok(Some(Value::Object(out)))
}

fn deployment(mut d: apps::Deployment) -> Result<Value, String> {
    let mut out = Map::new();
    out.insert("metadata".into(), object_meta(d.metadata.take(), "")?);
    if let Some(mut s) = d.spec.take() {
        let mut x = Map::new();
        put(&mut x, "replicas", s.replicas.take());
        if let Some(sel) = label_selector(s.selector.take(), "spec.selector")? {
            x.insert("selector".into(), sel);
        }
        if let Some(t) = pod_template(s.template.take(), "spec.template")? {
            x.insert("template".into(), t);
        }
        if let Some(mut st) = s.strategy.take() {
            let mut y = Map::new();
            put(&mut y, "type", st.r#type.take());
            if let Some(mut ru) = st.rolling_update.take() {
                let mut z = Map::new();
                if let Some(v) = ru.max_unavailable.take() {
                    z.insert("maxUnavailable".into(), int_or_string(v));
                }
                if let Some(v) = ru.max_surge.take() {
                    z.insert("maxSurge".into(), int_or_string(v));
                }
                rest(ru, "spec.strategy.rollingUpdate")?;
                y.insert("rollingUpdate".into(), Value::Object(z));
            }
            rest(st, "spec.strategy")?;
            x.insert("strategy".into(), Value::Object(y));
        }
        // Not pointers in Go: zero is unset (JSON's omitempty drops it).
        put(
            &mut x,
            "minReadySeconds",
            s.min_ready_seconds.take().filter(|v| *v != 0),
        );
        put(
            &mut x,
            "revisionHistoryLimit",
            s.revision_history_limit.take(),
        );
        put(&mut x, "paused", s.paused.take().filter(|p| *p));
        put(
            &mut x,
            "progressDeadlineSeconds",
            s.progress_deadline_seconds.take(),
        );
        rest(s, "spec")?;
        out.insert("spec".into(), Value::Object(x));
    }
    d.status = None;
    rest(d, "Deployment")?;
    Ok(Value::Object(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn wrap(api_version: &str, kind: &str, raw: Vec<u8>) -> Vec<u8> {
        let mut body = MAGIC.to_vec();
        k8s_pb::apimachinery::pkg::runtime::Unknown {
            type_meta: Some(k8s_pb::apimachinery::pkg::runtime::TypeMeta {
                api_version: Some(api_version.into()),
                kind: Some(kind.into()),
            }),
            raw: Some(raw),
            content_encoding: Some(String::new()),
            content_type: Some(String::new()),
        }
        .encode(&mut body)
        .unwrap();
        body
    }

    #[test]
    fn reads_what_kubectl_create_sends_and_refuses_what_it_cannot_read() {
        let cm = core::ConfigMap {
            metadata: Some(meta::ObjectMeta {
                name: Some("x".into()),
                creation_timestamp: Some(Default::default()),
                ..Default::default()
            }),
            data: [("a".to_string(), "b".to_string())].into(),
            ..Default::default()
        };
        let v = to_json(&wrap("v1", "ConfigMap", cm.encode_to_vec())).unwrap();
        assert_eq!(
            v,
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "data": {"a": "b"}})
        );
        let s = core::Secret {
            metadata: Some(meta::ObjectMeta {
                name: Some("s".into()),
                ..Default::default()
            }),
            data: [("k".to_string(), b"v".to_vec())].into(),
            r#type: Some("Opaque".into()),
            ..Default::default()
        };
        let v = to_json(&wrap("v1", "Secret", s.encode_to_vec())).unwrap();
        assert_eq!(v["data"]["k"], "dg==");
        // A field no converter takes: refused, named.
        let owned = core::ConfigMap {
            metadata: Some(meta::ObjectMeta {
                name: Some("x".into()),
                owner_references: vec![meta::OwnerReference {
                    name: Some("owner".into()),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        let e = to_json(&wrap("v1", "ConfigMap", owned.encode_to_vec())).unwrap_err();
        assert_eq!(e.code, 415);
        assert!(e.message.contains("metadata"), "{}", e.message);
        let e = to_json(&wrap("v1", "Pod", vec![])).unwrap_err();
        assert_eq!(e.code, 415);
        assert_eq!(to_json(b"{}").unwrap_err().code, 400);
    }
}
