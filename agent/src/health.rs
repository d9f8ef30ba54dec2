//! Health of applied objects, kstatus-style: each rule reads only the
//! object's own status, and respects observedGeneration so a stale status
//! never reads as healthy. Pure functions.

use ferry_proto::v1::Health;
use serde_json::Value;

/// One object's health and, when not healthy, why.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Verdict {
    pub health: Health,
    pub reason: String,
}

fn verdict(health: Health, reason: impl Into<String>) -> Verdict {
    Verdict {
        health,
        reason: reason.into(),
    }
}

fn healthy() -> Verdict {
    verdict(Health::Healthy, "")
}

/// The value at a JSON pointer of plain names (no `~` escapes): what
/// `Value::pointer` finds, without an allocation per step (health is judged
/// for every object on every pass).
pub fn at<'a>(v: &'a Value, pointer: &str) -> Option<&'a Value> {
    pointer
        .strip_prefix('/')?
        .split('/')
        .try_fold(v, |v, k| match v {
            Value::Object(m) => m.get(k),
            Value::Array(a) => a.get(k.parse::<usize>().ok()?),
            _ => None,
        })
}

fn int(v: &Value, p: &str) -> i64 {
    at(v, p).and_then(Value::as_i64).unwrap_or(0)
}

fn condition<'a>(v: &'a Value, kind: &str) -> Option<&'a Value> {
    at(v, "/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)
}

fn is_true(c: Option<&Value>) -> Option<bool> {
    c.map(|c| c["status"] == "True")
}

/// The health of one live object.
pub fn judge(obj: &Value) -> Verdict {
    let kind = obj["kind"].as_str().unwrap_or("");
    let group = obj["apiVersion"]
        .as_str()
        .and_then(|a| a.rsplit_once('/'))
        .map_or("", |(g, _)| g);
    let generation = int(obj, "/metadata/generation");
    let observed = at(obj, "/status/observedGeneration").and_then(Value::as_i64);
    let stale = |what: &str| {
        verdict(
            Health::Progressing,
            format!("waiting for the {what} controller to observe generation {generation}"),
        )
    };
    match (group, kind) {
        ("apps", "Deployment") => {
            if observed.is_none_or(|o| o < generation) {
                return stale("deployment");
            }
            let progressing = condition(obj, "Progressing");
            if progressing.is_some_and(|c| c["reason"] == "ProgressDeadlineExceeded") {
                let msg = progressing
                    .and_then(|c| c["message"].as_str())
                    .unwrap_or("");
                return verdict(
                    Health::Degraded,
                    format!("progress deadline exceeded: {msg}"),
                );
            }
            let want = at(obj, "/spec/replicas")
                .and_then(Value::as_i64)
                .unwrap_or(1);
            let updated = int(obj, "/status/updatedReplicas");
            let available = int(obj, "/status/availableReplicas");
            if updated < want {
                return verdict(
                    Health::Progressing,
                    format!("{updated} of {want} replicas updated"),
                );
            }
            if available < want {
                return verdict(
                    Health::Progressing,
                    format!("{available} of {want} replicas available"),
                );
            }
            healthy()
        }
        ("apps", "StatefulSet") | ("apps", "ReplicaSet") => {
            if observed.is_none_or(|o| o < generation) {
                return stale(&kind.to_lowercase());
            }
            let want = at(obj, "/spec/replicas")
                .and_then(Value::as_i64)
                .unwrap_or(1);
            let ready = int(obj, "/status/readyReplicas");
            if ready < want {
                return verdict(
                    Health::Progressing,
                    format!("{ready} of {want} replicas ready"),
                );
            }
            healthy()
        }
        ("apps", "DaemonSet") => {
            if observed.is_none_or(|o| o < generation) {
                return stale("daemonset");
            }
            let want = int(obj, "/status/desiredNumberScheduled");
            let available = int(obj, "/status/numberAvailable");
            let updated = int(obj, "/status/updatedNumberScheduled");
            if updated < want || available < want {
                return verdict(
                    Health::Progressing,
                    format!("{available} of {want} pods available"),
                );
            }
            healthy()
        }
        ("batch", "Job") => {
            if is_true(condition(obj, "Failed")) == Some(true) {
                let msg = condition(obj, "Failed")
                    .and_then(|c| c["message"].as_str())
                    .unwrap_or("");
                return verdict(Health::Degraded, format!("job failed: {msg}"));
            }
            if is_true(condition(obj, "Complete")) == Some(true) {
                return healthy();
            }
            verdict(Health::Progressing, "job running")
        }
        ("", "Service") => {
            let lb = at(obj, "/spec/type").and_then(Value::as_str) == Some("LoadBalancer");
            let ingress = at(obj, "/status/loadBalancer/ingress")
                .and_then(Value::as_array)
                .is_some_and(|i| !i.is_empty());
            if lb && !ingress {
                verdict(Health::Progressing, "waiting for a load balancer address")
            } else {
                healthy()
            }
        }
        ("", "Namespace") => match at(obj, "/status/phase").and_then(Value::as_str) {
            Some("Terminating") => verdict(Health::Degraded, "namespace is terminating"),
            _ => healthy(),
        },
        ("", "PersistentVolumeClaim") => match at(obj, "/status/phase").and_then(Value::as_str) {
            Some("Bound") => healthy(),
            Some("Lost") => verdict(Health::Degraded, "claim lost its volume"),
            other => verdict(
                Health::Progressing,
                format!("claim is {}", other.unwrap_or("pending")),
            ),
        },
        ("apiextensions.k8s.io", "CustomResourceDefinition") => {
            match is_true(condition(obj, "Established")) {
                Some(true) => healthy(),
                _ => verdict(Health::Progressing, "not established yet"),
            }
        }
        _ => {
            if let Some(o) = observed
                && o < generation
            {
                return stale(kind);
            }
            if is_true(condition(obj, "Stalled")) == Some(true) {
                return verdict(Health::Degraded, "stalled");
            }
            for ready in ["Ready", "Available"] {
                if let Some(c) = condition(obj, ready)
                    && c["status"] != "True"
                {
                    let msg = c["message"].as_str().unwrap_or("");
                    return verdict(
                        Health::Progressing,
                        format!("{ready} is {}: {msg}", c["status"]),
                    );
                }
            }
            healthy()
        }
    }
}

/// The worst of several healths: Degraded, then Progressing, then Unknown.
pub fn aggregate(hs: impl IntoIterator<Item = Health>) -> Health {
    let rank = |h: Health| match h {
        Health::Degraded => 3,
        Health::Progressing => 2,
        Health::Unknown => 1,
        Health::Healthy => 0,
    };
    hs.into_iter()
        .max_by_key(|h| rank(*h))
        .unwrap_or(Health::Healthy)
}

#[cfg(test)]
mod tests {
    #[test]
    fn at_finds_what_pointer_finds() {
        let v = serde_json::json!({"status": {"conditions": [{"type": "Ready"}], "n": 3}});
        for p in [
            "/status/conditions/0/type",
            "/status/n",
            "/status",
            "/nope/x",
            "/status/conditions/9",
            "",
        ] {
            assert_eq!(at(&v, p), v.pointer(p).filter(|_| !p.is_empty()), "{p}");
        }
    }

    use super::*;
    use serde_json::json;

    #[test]
    fn deployment_rules() {
        let d = |status: Value| json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"generation": 2}, "spec": {"replicas": 2}, "status": status});
        assert_eq!(
            judge(&d(json!({"observedGeneration": 1}))).health,
            Health::Progressing
        );
        assert_eq!(
            judge(&d(
                json!({"observedGeneration": 2, "updatedReplicas": 2, "availableReplicas": 1})
            ))
            .health,
            Health::Progressing
        );
        assert_eq!(
            judge(&d(
                json!({"observedGeneration": 2, "updatedReplicas": 2, "availableReplicas": 2})
            ))
            .health,
            Health::Healthy
        );
        let stuck = d(
            json!({"observedGeneration": 2, "conditions": [{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}]}),
        );
        assert_eq!(judge(&stuck).health, Health::Degraded);
    }

    #[test]
    fn services_and_namespaces() {
        let lb = |status: Value| json!({"apiVersion": "v1", "kind": "Service", "spec": {"type": "LoadBalancer"}, "status": status});
        assert_eq!(judge(&lb(json!({}))).health, Health::Progressing);
        assert_eq!(
            judge(&lb(
                json!({"loadBalancer": {"ingress": [{"ip": "10.0.0.1"}]}})
            ))
            .health,
            Health::Healthy
        );
        assert_eq!(
            judge(&json!({"apiVersion": "v1", "kind": "Service", "spec": {"type": "ClusterIP"}}))
                .health,
            Health::Healthy
        );
        assert_eq!(judge(&json!({"apiVersion": "v1", "kind": "Namespace", "status": {"phase": "Terminating"}})).health, Health::Degraded);
    }

    #[test]
    fn generic_conditions_and_aggregation() {
        let o = json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"generation": 1}, "status": {"conditions": [{"type": "Ready", "status": "False"}]}});
        assert_eq!(judge(&o).health, Health::Progressing);
        assert_eq!(
            judge(&json!({"apiVersion": "v1", "kind": "ConfigMap"})).health,
            Health::Healthy
        );
        assert_eq!(
            aggregate([Health::Healthy, Health::Progressing, Health::Degraded]),
            Health::Degraded
        );
        assert_eq!(aggregate([]), Health::Healthy);
    }
}
