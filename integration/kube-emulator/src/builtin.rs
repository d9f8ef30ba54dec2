//! The built-in resource types of the Kubernetes version the emulator
//! claims (k8s-openapi's `v1_33`: every generally available type), and
//! what kube-apiserver checks of their objects before it stores them:
//! field types (by decoding into k8s-openapi's typed structs), unknown
//! fields (as `fieldValidation` says), names, labels and annotations,
//! immutable fields and sizes. Group, version, kind, plural and scope come
//! from the types themselves; discovery extras (short names, categories,
//! subresources) that k8s-openapi does not carry are listed here. Never
//! stores anything.

use crate::store::ApiError;
use k8s_openapi::api as k;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use std::any::TypeId;
use std::collections::HashMap;
use std::sync::OnceLock;

/// The largest object etcd stores.
pub const MAX_OBJECT_BYTES: usize = 1536 << 10;
/// The largest request body kube-apiserver reads.
pub const MAX_REQUEST_BYTES: usize = 3 << 20;
/// The most bytes of annotations an object may carry.
const MAX_ANNOTATIONS_BYTES: usize = 256 << 10;

/// One built-in type.
#[derive(Clone, Copy)]
pub struct Builtin {
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
    pub namespaced: bool,
    /// The object as k8s-openapi reads it and writes it back, or the type
    /// error (`spec.replicas: invalid type: ...`).
    decode: fn(&Value) -> Result<Value, String>,
}

fn decode<T: DeserializeOwned + Serialize>(v: &Value) -> Result<Value, String> {
    let typed: T = serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        if path == "." {
            e.inner().to_string()
        } else {
            format!("{path}: {}", e.inner())
        }
    })?;
    serde_json::to_value(&typed).map_err(|e| e.to_string())
}

fn entry<T>() -> Builtin
where
    T: k8s_openapi::Resource + DeserializeOwned + Serialize + 'static,
    T::Scope: 'static,
{
    Builtin {
        group: T::GROUP,
        version: T::VERSION,
        kind: T::KIND,
        plural: T::URL_PATH_SEGMENT,
        namespaced: TypeId::of::<T::Scope>() == TypeId::of::<k8s_openapi::NamespaceResourceScope>(),
        decode: decode::<T>,
    }
}

macro_rules! builtins {
    ($($t:ty),* $(,)?) => { vec![$(entry::<$t>()),*] };
}

/// Every generally available built-in type of Kubernetes 1.33.
pub fn all() -> &'static [Builtin] {
    static ALL: OnceLock<Vec<Builtin>> = OnceLock::new();
    ALL.get_or_init(|| {
        builtins![
            k::admissionregistration::v1::MutatingWebhookConfiguration,
            k::admissionregistration::v1::ValidatingAdmissionPolicy,
            k::admissionregistration::v1::ValidatingAdmissionPolicyBinding,
            k::admissionregistration::v1::ValidatingWebhookConfiguration,
            k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
            k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService,
            k::apps::v1::ControllerRevision,
            k::apps::v1::DaemonSet,
            k::apps::v1::Deployment,
            k::apps::v1::ReplicaSet,
            k::apps::v1::StatefulSet,
            k::authentication::v1::SelfSubjectReview,
            k::authentication::v1::TokenReview,
            k::authorization::v1::LocalSubjectAccessReview,
            k::authorization::v1::SelfSubjectAccessReview,
            k::authorization::v1::SelfSubjectRulesReview,
            k::authorization::v1::SubjectAccessReview,
            k::autoscaling::v2::HorizontalPodAutoscaler,
            k::batch::v1::CronJob,
            k::batch::v1::Job,
            k::certificates::v1::CertificateSigningRequest,
            k::coordination::v1::Lease,
            k::discovery::v1::EndpointSlice,
            k::events::v1::Event,
            k::flowcontrol::v1::FlowSchema,
            k::flowcontrol::v1::PriorityLevelConfiguration,
            k::networking::v1::IPAddress,
            k::networking::v1::Ingress,
            k::networking::v1::IngressClass,
            k::networking::v1::NetworkPolicy,
            k::networking::v1::ServiceCIDR,
            k::node::v1::RuntimeClass,
            k::policy::v1::PodDisruptionBudget,
            k::rbac::v1::ClusterRole,
            k::rbac::v1::ClusterRoleBinding,
            k::rbac::v1::Role,
            k::rbac::v1::RoleBinding,
            k::scheduling::v1::PriorityClass,
            k::storage::v1::CSIDriver,
            k::storage::v1::CSINode,
            k::storage::v1::CSIStorageCapacity,
            k::storage::v1::StorageClass,
            k::storage::v1::VolumeAttachment,
            k::core::v1::Binding,
            k::core::v1::ComponentStatus,
            k::core::v1::ConfigMap,
            k::core::v1::Endpoints,
            k::core::v1::Event,
            k::core::v1::LimitRange,
            k::core::v1::Namespace,
            k::core::v1::Node,
            k::core::v1::PersistentVolume,
            k::core::v1::PersistentVolumeClaim,
            k::core::v1::Pod,
            k::core::v1::PodTemplate,
            k::core::v1::ReplicationController,
            k::core::v1::ResourceQuota,
            k::core::v1::Secret,
            k::core::v1::Service,
            k::core::v1::ServiceAccount,
        ]
    })
}

fn by_gvk() -> &'static HashMap<(&'static str, &'static str, &'static str), Builtin> {
    static MAP: OnceLock<HashMap<(&str, &str, &str), Builtin>> = OnceLock::new();
    MAP.get_or_init(|| {
        all()
            .iter()
            .map(|b| ((b.group, b.version, b.kind), *b))
            .collect()
    })
}

/// What discovery says of a type beyond group, version, kind and scope.
pub struct Extras {
    pub short_names: &'static [&'static str],
    pub categories: &'static [&'static str],
    /// A `/status` subresource.
    pub status: bool,
    /// Only `create` (reviews, bindings) or only reads.
    pub verbs: &'static [&'static str],
}

pub const ALL_VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

/// Discovery extras, as kube-apiserver 1.33 serves them.
pub fn extras(plural: &str) -> Extras {
    let short: &'static [&'static str] = match plural {
        "namespaces" => &["ns"],
        "configmaps" => &["cm"],
        "services" => &["svc"],
        "serviceaccounts" => &["sa"],
        "persistentvolumeclaims" => &["pvc"],
        "persistentvolumes" => &["pv"],
        "events" => &["ev"],
        "pods" => &["po"],
        "nodes" => &["no"],
        "endpoints" => &["ep"],
        "limitranges" => &["limits"],
        "resourcequotas" => &["quota"],
        "replicationcontrollers" => &["rc"],
        "componentstatuses" => &["cs"],
        "deployments" => &["deploy"],
        "statefulsets" => &["sts"],
        "daemonsets" => &["ds"],
        "replicasets" => &["rs"],
        "cronjobs" => &["cj"],
        "ingresses" => &["ing"],
        "networkpolicies" => &["netpol"],
        "poddisruptionbudgets" => &["pdb"],
        "customresourcedefinitions" => &["crd", "crds"],
        "horizontalpodautoscalers" => &["hpa"],
        "priorityclasses" => &["pc"],
        "storageclasses" => &["sc"],
        "certificatesigningrequests" => &["csr"],
        "ipaddresses" => &["ip"],
        _ => &[],
    };
    let categories: &'static [&'static str] = match plural {
        "pods"
        | "replicationcontrollers"
        | "services"
        | "daemonsets"
        | "deployments"
        | "replicasets"
        | "statefulsets"
        | "horizontalpodautoscalers"
        | "cronjobs"
        | "jobs" => &["all"],
        "customresourcedefinitions"
        | "apiservices"
        | "mutatingwebhookconfigurations"
        | "validatingwebhookconfigurations"
        | "validatingadmissionpolicies"
        | "validatingadmissionpolicybindings" => &["api-extensions"],
        _ => &[],
    };
    let status = matches!(
        plural,
        "namespaces"
            | "services"
            | "persistentvolumeclaims"
            | "persistentvolumes"
            | "pods"
            | "nodes"
            | "replicationcontrollers"
            | "resourcequotas"
            | "deployments"
            | "statefulsets"
            | "daemonsets"
            | "replicasets"
            | "jobs"
            | "cronjobs"
            | "ingresses"
            | "poddisruptionbudgets"
            | "horizontalpodautoscalers"
            | "customresourcedefinitions"
            | "apiservices"
            | "certificatesigningrequests"
            | "validatingadmissionpolicies"
            | "flowschemas"
            | "prioritylevelconfigurations"
            | "volumeattachments"
            | "servicecidrs"
    );
    let verbs: &'static [&'static str] = match plural {
        "bindings"
        | "tokenreviews"
        | "selfsubjectreviews"
        | "subjectaccessreviews"
        | "selfsubjectaccessreviews"
        | "selfsubjectrulesreviews"
        | "localsubjectaccessreviews" => &["create"],
        "componentstatuses" => &["get", "list"],
        _ => ALL_VERBS,
    };
    Extras {
        short_names: short,
        categories,
        status,
        verbs,
    }
}

/// Whether kube-apiserver keeps `metadata.generation` for a built-in kind
/// (its strategy sets it; ConfigMaps, Secrets and most core kinds have none).
pub fn tracks_generation(group: &str, kind: &str) -> bool {
    matches!(
        (group, kind),
        (
            "apps",
            "Deployment" | "DaemonSet" | "ReplicaSet" | "StatefulSet"
        ) | ("batch", "Job" | "CronJob")
            | ("autoscaling", "HorizontalPodAutoscaler")
            | ("policy", "PodDisruptionBudget")
            | ("networking.k8s.io", "Ingress" | "NetworkPolicy")
            | ("", "ReplicationController")
            | ("apiextensions.k8s.io", "CustomResourceDefinition")
            | (
                "admissionregistration.k8s.io",
                "MutatingWebhookConfiguration"
                    | "ValidatingWebhookConfiguration"
                    | "ValidatingAdmissionPolicy"
                    | "ValidatingAdmissionPolicyBinding"
            )
    )
}

/// `fieldValidation`: what to do with fields the schema does not know.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FieldValidation {
    /// Drop them silently.
    Ignore,
    /// Drop them and say so in a `Warning` header (the server's default).
    #[default]
    Warn,
    /// Refuse the request.
    Strict,
}

impl FieldValidation {
    pub fn parse(s: Option<&str>) -> Result<Self, ApiError> {
        match s {
            None | Some("") | Some("Warn") => Ok(Self::Warn),
            Some("Ignore") => Ok(Self::Ignore),
            Some("Strict") => Ok(Self::Strict),
            Some(other) => Err(ApiError::bad_request(format!(
                "fieldValidation: Invalid value: {other:?}: must be one of Ignore, Warn or Strict"
            ))),
        }
    }
}

/// Removes from `input` every field `known` lacks (nulls aside); returns
/// their paths (`spec.template.spec.containers[0].foo`).
fn prune(input: &mut Value, known: &Value, path: &str, out: &mut Vec<String>) {
    match (input, known) {
        (Value::Object(i), Value::Object(k)) => {
            let mut gone = vec![];
            for (key, iv) in i.iter_mut() {
                if iv.is_null() {
                    continue;
                }
                let p = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                match k.get(key) {
                    Some(kv) => prune(iv, kv, &p, out),
                    None => {
                        out.push(p);
                        gone.push(key.clone());
                    }
                }
            }
            for key in gone {
                i.remove(&key);
            }
        }
        (Value::Array(i), Value::Array(k)) => {
            for (n, (iv, kv)) in i.iter_mut().zip(k).enumerate() {
                prune(iv, kv, &format!("{path}[{n}]"), out);
            }
        }
        _ => {}
    }
}

/// What the request was, for the wording of errors (an apply's differ).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verb {
    Apply,
    Other,
}

fn dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && s.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric())
}

fn dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(dns_label)
}

fn name_error(kind: &str, name: &str) -> Option<String> {
    match kind {
        "Namespace" if !dns_label(name) => Some(format!(
            "metadata.name: Invalid value: {name:?}: a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
        )),
        "Service"
            if !(dns_label(name)
                && name.bytes().next().is_some_and(|b| b.is_ascii_lowercase())) =>
        {
            Some(format!(
                "metadata.name: Invalid value: {name:?}: a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')"
            ))
        }
        _ if !dns_subdomain(name) => Some(format!(
            "metadata.name: Invalid value: {name:?}: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
        )),
        _ => None,
    }
}

/// Field errors of labels and annotations.
fn metadata_errors(obj: &Value) -> Vec<String> {
    let mut errors = vec![];
    if let Some(labels) = obj.pointer("/metadata/labels").and_then(Value::as_object) {
        for (k, v) in labels {
            let v = v.as_str().unwrap_or_default();
            if let Err(ferry_proto::Invalid::LabelSyntax { why, .. }) =
                ferry_proto::validate_label(k, v)
            {
                errors.push(format!(
                    "metadata.labels: Invalid value: {k:?}={v:?}: {why}"
                ));
            }
        }
    }
    if let Some(ann) = obj
        .pointer("/metadata/annotations")
        .and_then(Value::as_object)
    {
        let mut total = 0;
        for (k, v) in ann {
            total += k.len() + v.as_str().map_or(0, str::len);
            if let Err(ferry_proto::Invalid::LabelSyntax { why, .. }) =
                ferry_proto::validate_label(k, "")
            {
                errors.push(format!("metadata.annotations: Invalid value: {k:?}: {why}"));
            }
        }
        if total > MAX_ANNOTATIONS_BYTES {
            errors.push(format!(
                "metadata.annotations: Too long: must have at most {MAX_ANNOTATIONS_BYTES} bytes"
            ));
        }
    }
    errors
}

fn at<'a>(v: &'a Value, p: &str) -> &'a Value {
    v.pointer(p).unwrap_or(&Value::Null)
}

/// Field errors of an update that changes what may not change.
fn immutable_errors(group: &str, kind: &str, old: &Value, new: &Value) -> Vec<String> {
    let mut errors = vec![];
    let changed = |p: &str| at(old, p) != at(new, p);
    let immutable = |p: &str, field: &str, errors: &mut Vec<String>| {
        if changed(p) {
            errors.push(format!(
                "{field}: Invalid value: {}: field is immutable",
                at(new, p)
            ));
        }
    };
    match (group, kind) {
        ("apps", "Deployment" | "ReplicaSet" | "DaemonSet") => {
            immutable("/spec/selector", "spec.selector", &mut errors);
        }
        ("apps", "StatefulSet") => {
            let mutable = [
                "replicas",
                "ordinals",
                "template",
                "updateStrategy",
                "persistentVolumeClaimRetentionPolicy",
                "minReadySeconds",
            ];
            let strip = |v: &Value| -> Map<String, Value> {
                at(v, "/spec")
                    .as_object()
                    .cloned()
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|(k, _)| !mutable.contains(&k.as_str()))
                    .collect()
            };
            if strip(old) != strip(new) {
                errors.push("spec: Forbidden: updates to statefulset spec for fields other than 'replicas', 'ordinals', 'template', 'updateStrategy', 'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden".into());
            }
        }
        ("batch", "Job") => {
            immutable("/spec/selector", "spec.selector", &mut errors);
            immutable("/spec/template", "spec.template", &mut errors);
            immutable("/spec/completionMode", "spec.completionMode", &mut errors);
        }
        ("", "Service") => {
            let old_ip = at(old, "/spec/clusterIP");
            if old_ip.as_str().is_some_and(|s| !s.is_empty()) && changed("/spec/clusterIP") {
                errors.push(format!(
                    "spec.clusterIPs[0]: Invalid value: {}: may not change once set",
                    at(new, "/spec/clusterIP")
                ));
            }
        }
        ("", "PersistentVolumeClaim") => {
            let strip = |v: &Value| {
                let mut s = at(v, "/spec").clone();
                if let Some(m) = s.as_object_mut() {
                    m.remove("volumeAttributesClassName");
                    if let Some(r) = m.get_mut("resources").and_then(Value::as_object_mut) {
                        r.remove("requests");
                    }
                    // Bound by the server.
                    m.remove("volumeName");
                }
                s
            };
            if strip(old) != strip(new) {
                errors.push("spec: Forbidden: spec is immutable after creation except resources.requests and volumeAttributesClassName for bound claims".into());
            }
        }
        ("", "ConfigMap" | "Secret") => {
            if at(old, "/immutable").as_bool() == Some(true) {
                if at(new, "/immutable").as_bool() != Some(true) {
                    errors.push(
                        "immutable: Forbidden: field is immutable when `immutable` is set".into(),
                    );
                }
                for f in ["data", "binaryData"] {
                    if changed(&format!("/{f}")) {
                        errors.push(format!(
                            "{f}: Forbidden: field is immutable when `immutable` is set"
                        ));
                    }
                }
            }
            if kind == "Secret" && changed("/type") && !at(old, "/type").is_null() {
                immutable("/type", "type", &mut errors);
            }
        }
        _ => {}
    }
    errors
}

/// What kube-apiserver checks of an object it is about to store: sizes,
/// names, labels and annotations, and for built-in kinds the field types,
/// unknown fields (dropped, warned of or refused as `validation` says) and
/// immutable fields. `warnings` gets what a `Warning` header says.
#[allow(clippy::too_many_arguments)]
pub fn check(
    group: &str,
    version: &str,
    kind: &str,
    builtin: bool,
    obj: &mut Value,
    old: Option<&Value>,
    verb: Verb,
    validation: FieldValidation,
    warnings: &mut Vec<String>,
) -> Result<(), ApiError> {
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let invalid = |errors: Vec<String>| ApiError::invalid_fields(group, kind, &name, &errors);
    let size = serde_json::to_vec(&*obj).map_or(0, |b| b.len());
    if size > MAX_OBJECT_BYTES {
        return Err(ApiError::new(
            413,
            "RequestEntityTooLarge",
            "etcdserver: request is too large",
        ));
    }
    let mut errors = metadata_errors(obj);
    if builtin && let Some(e) = name_error(kind, &name) {
        errors.push(e);
    }
    if builtin && let Some(b) = by_gvk().get(&(group, version, kind)) {
        let known = (b.decode)(obj).map_err(|e| {
            ApiError::bad_request(match verb {
                Verb::Apply => format!(
                    "failed to create typed patch object ({name}; {}, Kind={kind}): {e}",
                    if group.is_empty() {
                        version.to_string()
                    } else {
                        format!("{group}/{version}")
                    }
                ),
                Verb::Other => {
                    format!("{kind} in version {version:?} cannot be handled as a {kind}: {e}")
                }
            })
        })?;
        let mut unknown = vec![];
        let mut pruned = obj.clone();
        prune(&mut pruned, &known, "", &mut unknown);
        if !unknown.is_empty() {
            match validation {
                FieldValidation::Strict => {
                    return Err(ApiError::bad_request(match verb {
                        Verb::Apply => unknown
                            .iter()
                            .map(|u| format!(".{u}: field not declared in schema"))
                            .collect::<Vec<_>>()
                            .join(", "),
                        Verb::Other => format!(
                            "strict decoding error: {}",
                            unknown
                                .iter()
                                .map(|u| format!("unknown field {u:?}"))
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    }));
                }
                FieldValidation::Warn => {
                    warnings.extend(unknown.iter().map(|u| format!("unknown field {u:?}")));
                    *obj = pruned;
                }
                FieldValidation::Ignore => *obj = pruned,
            }
        }
    }
    if let Some(old) = old
        && builtin
    {
        errors.extend(immutable_errors(group, kind, old, obj));
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(invalid(errors))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deployment(replicas: Value) -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "d"},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "w", "image": "nginx"}]}}}})
    }

    fn run(
        obj: &mut Value,
        old: Option<&Value>,
        v: FieldValidation,
    ) -> Result<Vec<String>, ApiError> {
        let mut w = vec![];
        let kind = obj["kind"].as_str().unwrap().to_string();
        let av = obj["apiVersion"].as_str().unwrap().to_string();
        let (g, ver) = av.rsplit_once('/').unwrap_or(("", &av));
        check(g, ver, &kind, true, obj, old, Verb::Other, v, &mut w).map(|()| w)
    }

    #[test]
    fn types_unknown_fields_names_and_immutables() {
        let mut ok = deployment(json!(2));
        run(&mut ok, None, FieldValidation::Strict).unwrap();
        let e = run(&mut deployment(json!("one")), None, FieldValidation::Strict).unwrap_err();
        assert_eq!(e.code, 400);
        assert!(e.message.contains("spec.replicas"), "{}", e.message);
        let mut typo = deployment(json!(1));
        typo["spec"]["replicaz"] = json!(3);
        let e = run(&mut typo.clone(), None, FieldValidation::Strict).unwrap_err();
        assert!(
            e.message.contains("unknown field \"spec.replicaz\""),
            "{}",
            e.message
        );
        let w = run(&mut typo, None, FieldValidation::Warn).unwrap();
        assert_eq!(w, ["unknown field \"spec.replicaz\""]);
        assert!(typo["spec"].get("replicaz").is_none(), "dropped");
        let mut bad = deployment(json!(1));
        bad["metadata"]["name"] = json!("Web_1");
        bad["metadata"]["labels"] = json!({"app": "../../x"});
        let e = run(&mut bad, None, FieldValidation::Strict).unwrap_err();
        assert_eq!(e.code, 422);
        assert!(
            e.message.contains("metadata.name") && e.message.contains("metadata.labels"),
            "{}",
            e.message
        );
        let old = deployment(json!(1));
        let mut moved = deployment(json!(1));
        moved["spec"]["selector"]["matchLabels"]["app"] = json!("other");
        moved["spec"]["template"]["metadata"]["labels"]["app"] = json!("other");
        let e = run(&mut moved, Some(&old), FieldValidation::Strict).unwrap_err();
        assert!(
            e.message.contains("spec.selector") && e.message.contains("immutable"),
            "{}",
            e.message
        );
    }

    #[test]
    fn secrets_must_be_base64_and_quantities_may_be_numbers() {
        let mut s = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "data": {"k": "not base64!"}});
        let e = run(&mut s, None, FieldValidation::Strict).unwrap_err();
        assert!(e.message.contains("data.k"), "{}", e.message);
        let mut d = deployment(json!(1));
        d["spec"]["template"]["spec"]["containers"][0]["resources"] =
            json!({"limits": {"cpu": 1, "memory": "64Mi"}});
        run(&mut d, None, FieldValidation::Strict).unwrap();
        assert_eq!(
            d["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"], 1,
            "stored as sent"
        );
    }

    #[test]
    fn every_type_comes_from_k8s_openapi() {
        let names: Vec<&str> = all().iter().map(|b| b.plural).collect();
        for p in [
            "validatingadmissionpolicies",
            "deployments",
            "configmaps",
            "customresourcedefinitions",
            "leases",
        ] {
            assert!(names.contains(&p), "{p}");
        }
        let ns = all().iter().find(|b| b.plural == "namespaces").unwrap();
        assert!(!ns.namespaced);
    }
}
