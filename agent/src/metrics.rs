//! What the agent counts, for Prometheus (`/metrics` on `--metrics-listen`).
//! Every label takes a few fixed values: nothing per object or per commit.

use futures::future::BoxFuture;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;
use std::task::{Context, Poll};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum SyncResult {
    success,
    failure,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SyncLabels {
    pub result: SyncResult,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// get, list, watch, create, update, patch, delete, deletecollection,
    /// discovery.
    pub verb: &'static str,
    /// The HTTP status, or `error` when no answer came.
    pub code: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// The agent's metrics. Cloning shares them.
#[derive(Clone, Debug)]
pub struct Metrics {
    pub syncs: Family<SyncLabels, Counter>,
    pub sync_duration: Histogram,
    pub fetch_duration: Histogram,
    pub managed_objects: Gauge,
    pub drift_corrections: Counter,
    pub prune_refusals: Counter,
    pub signature_refusals: Counter,
    pub api_requests: Family<RequestLabels, Counter>,
    pub last_success: FloatGauge,
    pub certificate_expiry: FloatGauge,
    pub connected: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            syncs: Family::default(),
            // 10 ms to about 80 s.
            sync_duration: Histogram::new(exponential_buckets(0.01, 2.0, 14)),
            fetch_duration: Histogram::new(exponential_buckets(0.01, 2.0, 14)),
            managed_objects: Gauge::default(),
            drift_corrections: Counter::default(),
            prune_refusals: Counter::default(),
            signature_refusals: Counter::default(),
            api_requests: Family::default(),
            last_success: FloatGauge::default(),
            certificate_expiry: FloatGauge::default(),
            connected: Gauge::default(),
        }
    }
}

impl Metrics {
    /// A registry holding these metrics.
    pub fn registry(&self) -> Registry {
        let mut r = Registry::default();
        r.register(
            "ferry_agent_syncs",
            "Sync passes by result",
            self.syncs.clone(),
        );
        r.register(
            "ferry_agent_sync_duration_seconds",
            "Time a sync pass took: read, render, apply, judge health",
            self.sync_duration.clone(),
        );
        r.register(
            "ferry_agent_fetch_duration_seconds",
            "Time a Git fetch of a pinned commit took (cached commits are not fetched)",
            self.fetch_duration.clone(),
        );
        r.register(
            "ferry_agent_managed_objects",
            "Objects the agent manages (its inventory)",
            self.managed_objects.clone(),
        );
        r.register(
            "ferry_agent_drift_corrections",
            "Writes that put drifted objects back as Git says",
            self.drift_corrections.clone(),
        );
        r.register(
            "ferry_agent_prune_refusals",
            "Syncs whose prune the mass-prune valve refused",
            self.prune_refusals.clone(),
        );
        r.register(
            "ferry_agent_signature_refusals",
            "Syncs refused because the commit did not verify against the cluster's keys",
            self.signature_refusals.clone(),
        );
        r.register(
            "ferry_agent_kubernetes_requests",
            "Requests to the cluster's API server by verb and status code",
            self.api_requests.clone(),
        );
        r.register(
            "ferry_agent_last_successful_sync_timestamp_seconds",
            "When the last sync pass succeeded (Unix time)",
            self.last_success.clone(),
        );
        r.register(
            "ferry_agent_certificate_expiry_timestamp_seconds",
            "When the agent's client certificate expires (Unix time)",
            self.certificate_expiry.clone(),
        );
        r.register(
            "ferry_agent_connected",
            "1 while the agent holds a session with the coordinator",
            self.connected.clone(),
        );
        r
    }
}

/// The verb of a Kubernetes API request, from its method and path.
pub fn verb(method: &http::Method, uri: &http::Uri) -> &'static str {
    let segments: Vec<&str> = uri.path().split('/').filter(|s| !s.is_empty()).collect();
    let rest = match segments.first() {
        Some(&"api") if segments.len() >= 2 => &segments[2..],
        Some(&"apis") if segments.len() >= 3 => &segments[3..],
        _ => return "discovery",
    };
    if rest.is_empty() {
        return "discovery";
    }
    let rest = if rest[0] == "namespaces" && rest.len() >= 3 {
        &rest[2..]
    } else {
        rest
    };
    let named = rest.len() >= 2;
    let watching = uri
        .query()
        .is_some_and(|q| q.split('&').any(|kv| kv == "watch=true" || kv == "watch=1"));
    match *method {
        http::Method::GET if watching => "watch",
        http::Method::GET if named => "get",
        http::Method::GET => "list",
        http::Method::POST => "create",
        http::Method::PUT => "update",
        http::Method::PATCH => "patch",
        http::Method::DELETE if named => "delete",
        http::Method::DELETE => "deletecollection",
        _ => "other",
    }
}

/// A tower layer counting the requests a kube client makes.
#[derive(Clone)]
pub struct CountRequests(pub Metrics);

impl<S> tower::Layer<S> for CountRequests {
    type Service = Counted<S>;
    fn layer(&self, inner: S) -> Counted<S> {
        Counted {
            inner,
            metrics: self.0.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Counted<S> {
    inner: S,
    metrics: Metrics,
}

impl<S, B, R> tower::Service<http::Request<B>> for Counted<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let verb = verb(req.method(), req.uri());
        let family = self.metrics.api_requests.clone();
        let answer = self.inner.call(req);
        Box::pin(async move {
            let r = answer.await;
            let code = match &r {
                Ok(resp) => resp.status().as_u16().to_string(),
                Err(_) => "error".to_string(),
            };
            family.get_or_create(&RequestLabels { verb, code }).inc();
            r
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verbs_from_paths() {
        let v = |m: &str, u: &str| verb(&m.parse().unwrap(), &u.parse().unwrap());
        assert_eq!(v("GET", "/api/v1"), "discovery");
        assert_eq!(v("GET", "/apis"), "discovery");
        assert_eq!(v("GET", "/version"), "discovery");
        assert_eq!(v("GET", "/api/v1/namespaces"), "list");
        assert_eq!(v("GET", "/api/v1/namespaces/shop"), "get");
        assert_eq!(v("GET", "/api/v1/namespaces/shop/configmaps"), "list");
        assert_eq!(v("GET", "/api/v1/namespaces/shop/configmaps/a"), "get");
        assert_eq!(
            v(
                "GET",
                "/apis/apps/v1/deployments?labelSelector=x&watch=true"
            ),
            "watch"
        );
        assert_eq!(
            v("PATCH", "/apis/apps/v1/namespaces/s/deployments/d"),
            "patch"
        );
        assert_eq!(v("POST", "/api/v1/namespaces/s/configmaps"), "create");
        assert_eq!(v("DELETE", "/api/v1/namespaces/s/configmaps/a"), "delete");
        assert_eq!(
            v("DELETE", "/api/v1/namespaces/s/configmaps"),
            "deletecollection"
        );
        assert_eq!(v("PUT", "/api/v1/namespaces/s/configmaps/a"), "update");
    }

    #[test]
    fn encodes_with_conventional_names() {
        let m = Metrics::default();
        m.syncs
            .get_or_create(&SyncLabels {
                result: SyncResult::success,
            })
            .inc();
        m.api_requests
            .get_or_create(&RequestLabels {
                verb: "patch",
                code: "200".into(),
            })
            .inc();
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &m.registry()).unwrap();
        assert!(
            out.contains("ferry_agent_syncs_total{result=\"success\"} 1"),
            "{out}"
        );
        assert!(
            out.contains("ferry_agent_kubernetes_requests_total{verb=\"patch\",code=\"200\"} 1"),
            "{out}"
        );
        assert!(out.contains("# TYPE ferry_agent_sync_duration_seconds histogram"));
    }
}
