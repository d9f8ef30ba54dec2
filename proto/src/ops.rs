//! The operations endpoint both binaries serve on a separate plain-HTTP
//! port (`--metrics-listen`), for kubelet probes and Prometheus:
//!
//! - `GET /metrics`: the process's registry, encoded by `prometheus-client`
//!   in the OpenMetrics text format for scrapers that ask for it (Prometheus
//!   does), else in the classic Prometheus text format (0.0.4) that
//!   `curl`, `promtool check metrics` and older tools read;
//! - `GET /healthz`: 200 while the process serves at all (liveness);
//! - `GET /readyz`: 200 when the process's own readiness check passes, 503
//!   with the reason otherwise.
//!
//! Nothing here is secret (no per-cluster or per-object labels), so the port
//! carries no TLS; keep it inside the cluster network.

use futures::future::BoxFuture;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Request, Response, StatusCode};
use prometheus_client::registry::Registry;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Says whether the process is ready, and if not why.
pub type Readiness = Arc<dyn Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// Brings scrape-time figures up to date just before an encode (figures
/// read from a store, say), so they cost nothing between scrapes.
pub type Refresh = Arc<dyn Fn() -> BoxFuture<'static, ()> + Send + Sync>;

/// What the endpoint serves.
#[derive(Clone)]
pub struct Ops {
    pub registry: Arc<Registry>,
    pub ready: Readiness,
    pub refresh: Option<Refresh>,
}

/// The media type of the OpenMetrics text format.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The media type of the classic Prometheus text format.
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The classic text format of an OpenMetrics exposition as
/// `prometheus-client` writes it: a counter's family is named with its
/// `_total` suffix, and `# UNIT` and `# EOF` lines go (older parsers take a
/// counter family `x` and its sample `x_total` for two metrics).
pub fn classic_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| line.strip_prefix(p).map(|rest| (p, rest)));
        match meta {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                let tail = match tail {
                    "info" | "stateset" => "gauge",
                    "unknown" | "gaugehistogram" => "untyped",
                    t => t,
                };
                let total = if counters.contains(name) {
                    "_total"
                } else {
                    ""
                };
                out.push_str(&format!("{prefix}{name}{total} {tail}\n"));
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

/// Binds `addr`, naming it in the error.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("binding the metrics port {addr}: {e}")))
}

/// Serves until `stop`; every connection ends with it.
pub async fn serve(listener: TcpListener, ops: Ops, stop: CancellationToken) {
    loop {
        let (stream, _) = tokio::select! {
            _ = stop.cancelled() => return,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    tracing::debug!(error = %e, "accepting on the metrics port");
                    continue;
                }
            },
        };
        let ops = ops.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let ops = ops.clone();
                async move { Ok::<_, std::convert::Infallible>(answer(&ops, req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = conn => {}
            }
        });
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(hyper::header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Full::new(body.into()))
        .expect("a valid response")
}

async fn answer<B>(ops: &Ops, req: Request<B>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n");
    }
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => match (ops.ready)().await {
            Ok(()) => text(StatusCode::OK, "ok\n"),
            Err(why) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {why}\n"),
            ),
        },
        "/metrics" => {
            if let Some(refresh) = &ops.refresh {
                refresh().await;
            }
            let mut body = String::new();
            let openmetrics = req
                .headers()
                .get_all(hyper::header::ACCEPT)
                .iter()
                .any(|v| {
                    v.to_str()
                        .is_ok_and(|v| v.contains("application/openmetrics-text"))
                });
            match prometheus_client::encoding::text::encode(&mut body, &ops.registry) {
                Ok(()) => {
                    let (kind, body) = if openmetrics {
                        (OPENMETRICS, body)
                    } else {
                        (PROMETHEUS_TEXT, classic_text(&body))
                    };
                    Response::builder()
                        .header(hyper::header::CONTENT_TYPE, kind)
                        .body(Full::new(body.into()))
                        .expect("a valid response")
                }
                Err(e) => text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("encoding metrics: {e}\n"),
                ),
            }
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: /metrics, /healthz, /readyz\n",
        ),
    }
}

/// Seconds since the Unix epoch, for `_timestamp_seconds` gauges.
pub fn unix_seconds(unix_ms: i64) -> f64 {
    unix_ms as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_classic_text_names_counter_families_with_their_total() {
        let om = "# HELP a_syncs Syncs.\n# TYPE a_syncs counter\na_syncs_total{r=\"x\"} 1\n\
                  # HELP a_up Up.\n# TYPE a_up gauge\na_up 1\n# UNIT a_up seconds\n# EOF\n";
        assert_eq!(
            classic_text(om),
            "# HELP a_syncs_total Syncs.\n# TYPE a_syncs_total counter\na_syncs_total{r=\"x\"} 1\n\
             # HELP a_up Up.\n# TYPE a_up gauge\na_up 1\n"
        );
    }
}
