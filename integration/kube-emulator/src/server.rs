//! The HTTP(S) front: routing Kubernetes REST paths to the store, auth,
//! watches as streamed JSON lines, faults and request counters.

use crate::builtin::{self, FieldValidation};
use crate::rbac::{self, ServiceAccount};
use crate::registry::ResourceType;
use crate::selector::{FieldSelector, LabelSelector, labels_match};
use crate::store::{ApiError, Event, Store, WriteOpts};
use crate::{Counters, Faults, events, patch, protobuf, table};
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, broadcast, mpsc};

pub type Body = BoxBody<Bytes, Infallible>;

/// State shared by every connection of one emulator.
pub struct Shared {
    pub store: Mutex<Store>,
    pub faults: Mutex<Faults>,
    pub counters: Mutex<Counters>,
    pub token: Option<String>,
    /// Wakes the simulated controllers after a write.
    pub wake: Notify,
    /// Service-account tokens, authorized by RBAC (`token` is an admin's).
    pub accounts: Mutex<HashMap<String, ServiceAccount>>,
}

/// A response body fed from a channel: the stream of a watch.
struct ChanBody(mpsc::Receiver<Bytes>);

impl http_body::Body for ChanBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|b| b.map(|b| Ok(http_body::Frame::data(b))))
    }
}

fn full(status: StatusCode, v: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(v.to_string())).boxed())
        .expect("valid response")
}

fn error(e: &ApiError) -> Response<Body> {
    full(
        StatusCode::from_u16(e.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        &e.status(),
    )
}

fn not_found_path() -> Response<Body> {
    error(&ApiError::new(
        404,
        "NotFound",
        "the server could not find the requested resource",
    ))
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match u8::from_str_radix(&s[i + 1..i + 3], 16) {
                Ok(b) => {
                    out.push(b);
                    i += 2;
                }
                Err(_) => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// An object's place in list order: (namespace, name).
fn object_key(o: &Value) -> (String, String) {
    let field = |f: &str| {
        o.pointer(&format!("/metadata/{f}"))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    (field("namespace"), field("name"))
}

/// A continue token: the last key given, hex-encoded.
fn encode_continue(key: &(String, String)) -> String {
    format!("{}\0{}", key.0, key.1)
        .bytes()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn decode_continue(token: &str) -> Option<(String, String)> {
    if !token.len().is_multiple_of(2) {
        return None;
    }
    let bytes = (0..token.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(token.get(i..i + 2)?, 16).ok())
        .collect::<Option<Vec<u8>>>()?;
    let text = String::from_utf8(bytes).ok()?;
    let (ns, name) = text.split_once('\0')?;
    Some((ns.to_string(), name.to_string()))
}

fn query(uri: &http::Uri) -> HashMap<String, String> {
    uri.query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (decode(k), decode(v)),
            None => (decode(p), String::new()),
        })
        .collect()
}

/// A parsed resource path.
struct Target {
    group: String,
    version: String,
    plural: String,
    namespace: Option<String>,
    name: Option<String>,
    sub: Option<String>,
}

enum Route {
    Version,
    Api,
    Apis,
    Group(String),
    ResourceList(String, String),
    Resource(Target),
}

fn route(path: &str) -> Option<Route> {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let (group, version, rest) = match segs.as_slice() {
        ["version"] => return Some(Route::Version),
        ["api"] => return Some(Route::Api),
        ["apis"] => return Some(Route::Apis),
        ["apis", g] => return Some(Route::Group(g.to_string())),
        ["api", v] => return Some(Route::ResourceList(String::new(), v.to_string())),
        ["apis", g, v] => return Some(Route::ResourceList(g.to_string(), v.to_string())),
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return None,
    };
    let namespaced = rest.len() >= 3
        && rest[0] == "namespaces"
        && !(rest.len() == 3 && matches!(rest[2], "status" | "finalize"));
    let (namespace, rest) = if namespaced {
        (Some(rest[1].to_string()), &rest[2..])
    } else {
        (None, rest)
    };
    let s = |i: usize| rest.get(i).map(|s| s.to_string());
    if rest.is_empty() || rest.len() > 3 {
        return None;
    }
    Some(Route::Resource(Target {
        group: group.into(),
        version: version.into(),
        plural: rest[0].into(),
        namespace,
        name: s(1),
        sub: s(2),
    }))
}

fn scalable(rt: &ResourceType) -> bool {
    rt.group == "apps"
        && matches!(
            rt.kind.as_str(),
            "Deployment" | "StatefulSet" | "ReplicaSet"
        )
}

/// Serves the object in the version the client asked for.
fn present(obj: Value, rt: &ResourceType, version: &str) -> Value {
    let mut obj = if events::is_view(&rt.group, &rt.plural) {
        events::to_view(obj)
    } else {
        obj
    };
    obj["apiVersion"] = rt.api_version(version).into();
    obj
}

impl Shared {
    pub async fn handle(
        self: Arc<Self>,
        req: Request<hyper::body::Incoming>,
    ) -> Result<Response<Body>, Infallible> {
        let faults = self.faults.lock().expect("faults lock").clone();
        if !faults.latency.is_zero() {
            tokio::time::sleep(faults.latency).await;
        }
        let got = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        // `None`: the admin (or no authentication configured).
        let user = match (&self.token, got) {
            (None, _) => None,
            (Some(admin), Some(got)) if admin == got => None,
            (_, Some(got)) => match self.accounts.lock().expect("accounts lock").get(got) {
                Some(sa) => Some(sa.clone()),
                None => return Ok(error(&ApiError::new(401, "Unauthorized", "Unauthorized"))),
            },
            (Some(_), None) => {
                return Ok(error(&ApiError::new(401, "Unauthorized", "Unauthorized")));
            }
        };
        if let Some(secs) = faults.throttle_retry_after {
            let mut r = error(&ApiError::new(
                429,
                "TooManyRequests",
                "the server has received too many requests and has asked us to try again later",
            ));
            r.headers_mut().insert(
                header::RETRY_AFTER,
                secs.to_string().parse().expect("number"),
            );
            return Ok(r);
        }
        if faults.error_500 > 0.0 && fastrand::f64() < faults.error_500 {
            return Ok(error(&ApiError::new(
                500,
                "InternalError",
                "an error on the server (injected) has prevented the request from succeeding",
            )));
        }
        if faults.error_503 > 0.0 && fastrand::f64() < faults.error_503 {
            return Ok(error(&ApiError::new(
                503,
                "ServiceUnavailable",
                "the server is currently unable to handle the request (injected)",
            )));
        }
        let (parts, body) = req.into_parts();
        let body = match body.collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => {
                return Ok(error(&ApiError::bad_request(
                    "could not read the request body",
                )));
            }
        };
        Ok(self.dispatch(parts, body, user.as_ref()).await)
    }

    fn count(&self, verb: &str, resource: &str, write: bool) {
        self.count_in(verb, resource, write, None);
    }

    /// Counts a request; a write also by the namespace it was in ("" for
    /// cluster-scoped objects).
    fn count_in(&self, verb: &str, resource: &str, write: bool, ns: Option<&str>) {
        let mut c = self.counters.lock().expect("counters lock");
        *c.requests
            .entry((verb.to_string(), resource.to_string()))
            .or_default() += 1;
        if write {
            c.writes += 1;
            *c.writes_by_namespace
                .entry(ns.unwrap_or("").to_string())
                .or_default() += 1;
        }
    }

    async fn dispatch(
        &self,
        parts: http::request::Parts,
        body: Bytes,
        user: Option<&ServiceAccount>,
    ) -> Response<Body> {
        let q = query(&parts.uri);
        // kubectl reads OpenAPI for client-side validation. An empty v2
        // document (zero protobuf bytes) and an empty v3 index say "no
        // schemas", so it validates nothing itself and the server decides.
        match parts.uri.path() {
            "/openapi/v2" => {
                return Response::builder()
                    .status(StatusCode::OK)
                    .header(
                        header::CONTENT_TYPE,
                        "application/com.github.proto-openapi.spec.v2.v1.0+protobuf",
                    )
                    .body(Full::new(Bytes::new()).boxed())
                    .expect("valid response");
            }
            "/openapi/v3" => return full(StatusCode::OK, &json!({"paths": {}})),
            _ => {}
        }
        let Some(route) = route(parts.uri.path()) else {
            self.count(
                &parts.method.as_str().to_lowercase(),
                parts.uri.path(),
                false,
            );
            return not_found_path();
        };
        let store = || self.store.lock().expect("store lock");
        let t = match route {
            Route::Version => {
                return full(
                    StatusCode::OK,
                    &json!({
                        "major": "1", "minor": "33", "gitVersion": "v1.33.0-ferry-emulator",
                        "gitCommit": "0000000000000000000000000000000000000000", "gitTreeState": "clean",
                        "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.24", "compiler": "gc",
                        "platform": "linux/amd64",
                    }),
                );
            }
            Route::Api => {
                return full(
                    StatusCode::OK,
                    &json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]}),
                );
            }
            Route::Apis => return full(StatusCode::OK, &store().registry.api_group_list()),
            Route::Group(g) => {
                return match store().registry.api_group(&g) {
                    Some(d) => full(StatusCode::OK, &d),
                    None => not_found_path(),
                };
            }
            Route::ResourceList(g, v) => {
                return match store().registry.resource_list(&g, &v) {
                    Some(d) => full(StatusCode::OK, &d),
                    None => not_found_path(),
                };
            }
            Route::Resource(t) => t,
        };
        let rt = match store().registry.lookup(&t.group, &t.version, &t.plural) {
            Some(rt) => rt.clone(),
            None => {
                self.count(&parts.method.as_str().to_lowercase(), &t.plural, false);
                return not_found_path();
            }
        };
        // What the client sees (`view`) and where objects live (`rt`):
        // the same but for events.k8s.io Events, stored as core Events.
        let converted = events::is_view(&rt.group, &rt.plural);
        let as_table = table::wanted(
            parts
                .headers
                .get(header::ACCEPT)
                .and_then(|v| v.to_str().ok()),
        );
        let crd_name = rt.crd.clone();
        let crd = |s: &Store| {
            let name = crd_name.as_ref()?;
            let crds = s
                .registry
                .lookup("apiextensions.k8s.io", "v1", "customresourcedefinitions")?
                .clone();
            s.get(&crds, None, name).ok()
        };
        let view = rt.clone();
        let rt = if converted {
            store()
                .registry
                .lookup("", "v1", "events")
                .expect("core events are built in")
                .clone()
        } else {
            rt
        };
        if t.namespace.is_some() && !rt.namespaced {
            return not_found_path();
        }
        match t.sub.as_deref() {
            None => {}
            Some("status") if rt.status => {}
            Some("scale") if scalable(&rt) => {}
            Some(_) => return not_found_path(),
        }
        let dry_run = q.get("dryRun").is_some_and(|v| v == "All");
        let manager = q.get("fieldManager").cloned().unwrap_or_else(|| {
            parts
                .headers
                .get(header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .and_then(|ua| ua.split('/').next())
                .unwrap_or("unknown")
                .to_string()
        });
        let mut opts = WriteOpts::new(dry_run, manager);
        opts.validation = match FieldValidation::parse(q.get("fieldValidation").map(String::as_str))
        {
            Ok(v) => v,
            Err(e) => return error(&e),
        };
        // The verbs this type serves (reviews are create-only).
        let watching = q.get("watch").is_some_and(|v| v == "true" || v == "1");
        let verb = match (&parts.method, t.name.is_some(), watching) {
            (&Method::POST, _, _) => "create",
            (&Method::GET, _, true) => "watch",
            (&Method::GET, true, _) => "get",
            (&Method::GET, false, _) => "list",
            (&Method::PUT, _, _) => "update",
            (&Method::PATCH, _, _) => "patch",
            (&Method::DELETE, true, _) => "delete",
            (&Method::DELETE, false, _) => "deletecollection",
            _ => "",
        };
        if t.sub.is_none() && !rt.verbs.iter().any(|v| v == verb) {
            self.count(verb, &rt.plural, false);
            return error(&ApiError::new(
                405,
                "MethodNotAllowed",
                "the server does not allow this method on the requested resource",
            ));
        }
        if let Some(sa) = user {
            let attributes = rbac::Attributes {
                verb,
                group: &view.group,
                resource: &view.plural,
                subresource: t.sub.as_deref(),
                namespace: t.namespace.as_deref(),
                name: t.name.as_deref(),
            };
            if !rbac::allowed(&store(), sa, &attributes) {
                self.count(verb, &rt.plural, false);
                return error(&rbac::forbidden(sa, &attributes));
            }
        }
        // Reviews and bindings answer a create; nothing is stored.
        if rt.verbs.iter().all(|v| v == "create") {
            opts.dry_run = true;
        }
        if body.len() > builtin::MAX_REQUEST_BYTES {
            return error(&ApiError::new(
                413,
                "RequestEntityTooLarge",
                format!(
                    "Request entity too large: limit is {}",
                    builtin::MAX_REQUEST_BYTES
                ),
            ));
        }
        let ns = t.namespace.as_deref();
        let name = t.name.as_deref();
        let sub = t.sub.as_deref();
        let present_ok = |r: Result<Value, ApiError>, created: bool| {
            let mut resp = match r {
                Ok(v) => full(
                    if created {
                        StatusCode::CREATED
                    } else {
                        StatusCode::OK
                    },
                    &present(v, &view, &t.version),
                ),
                Err(e) => error(&e),
            };
            for w in opts
                .warnings
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
            {
                if let Ok(v) = format!("299 - {w:?}").parse() {
                    resp.headers_mut().append("Warning", v);
                }
            }
            resp
        };
        let content_type = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let parse_body = |yaml_ok: bool| -> Result<Value, ApiError> {
            let stored = |v: Value| if converted { events::to_core(v) } else { v };
            if protobuf::is_protobuf(content_type.as_deref()) {
                return protobuf::to_json(&body).map(stored);
            }
            let parsed = match serde_json::from_slice::<Value>(&body) {
                Ok(v) => Ok(v),
                Err(je) if yaml_ok => {
                    let text = std::str::from_utf8(&body)
                        .map_err(|_| ApiError::bad_request("the body is not UTF-8"))?;
                    serde_saphyr::from_str::<Value>(text).map_err(|ye| {
                        ApiError::bad_request(format!("error decoding YAML: {ye} (as JSON: {je})"))
                    })
                }
                Err(e) => Err(ApiError::bad_request(format!("error decoding JSON: {e}"))),
            };
            parsed.map(stored)
        };
        let is_write = !dry_run;
        if let (Some("scale"), Some(name)) = (sub, name) {
            return self.scale(&parts, &rt, &t.version, ns, name, &body, &opts);
        }
        match (&parts.method, name) {
            (&Method::GET, Some(name)) if as_table => {
                self.count("get", &rt.plural, false);
                let s = store();
                match s.get(&rt, ns, name) {
                    Ok(o) => full(
                        StatusCode::OK,
                        &table::of(
                            &view,
                            &t.version,
                            crd(&s).as_ref(),
                            &[o],
                            s.resource_version(),
                        ),
                    ),
                    Err(e) => error(&e),
                }
            }
            (&Method::GET, Some(name)) => {
                self.count("get", &rt.plural, false);
                present_ok(store().get(&rt, ns, name), false)
            }
            (&Method::GET, None) => {
                let labels = match LabelSelector::parse(q.get("labelSelector").map_or("", |s| s)) {
                    Ok(s) => s,
                    Err(e) => return error(&ApiError::bad_request(selector_reason(e))),
                };
                let fields = match FieldSelector::parse(q.get("fieldSelector").map_or("", |s| s)) {
                    Ok(s) => s,
                    Err(e) => return error(&ApiError::bad_request(e)),
                };
                if q.get("watch").is_some_and(|v| v == "true" || v == "1") {
                    self.count("watch", &rt.plural, false);
                    // A version this server has not reached (a client of a
                    // server it replaced): kube-apiserver waits up to three
                    // seconds for its cache to get there, then refuses.
                    let asked: u64 = q
                        .get("resourceVersion")
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0);
                    let initial = q.get("sendInitialEvents").is_some_and(|v| v == "true");
                    if asked > 0 && !initial {
                        let deadline = Instant::now() + Duration::from_secs(3);
                        loop {
                            let current = store().resource_version();
                            if asked <= current {
                                break;
                            }
                            if Instant::now() >= deadline {
                                let mut e = ApiError::new(
                                    504,
                                    "Timeout",
                                    format!(
                                        "Too large resource version: {asked}, current: {current}"
                                    ),
                                );
                                e.details = Some(json!({
                                    "causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}],
                                    "retryAfterSeconds": 1,
                                }));
                                return error(&e);
                            }
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                    return self.watch(&rt, &view, &t.version, ns, &q, labels, fields);
                }
                self.count("list", &rt.plural, false);
                let s = store();
                // Pages: `limit`, and `continue` naming the last object
                // given (pages are not a snapshot, unlike the real server).
                let limit = q
                    .get("limit")
                    .and_then(|l| l.parse::<usize>().ok())
                    .filter(|l| *l > 0);
                let after = match q.get("continue").filter(|c| !c.is_empty()) {
                    Some(c) => match decode_continue(c) {
                        Some(k) => Some(k),
                        None => {
                            return error(&ApiError::bad_request(format!(
                                "invalid continue token {c:?}"
                            )));
                        }
                    },
                    None => None,
                };
                // A page starts where the last ended (not a scan from the
                // first object per page).
                let mut matching = s
                    .list_after(&rt, ns, after.as_ref())
                    .filter(|o| labels_match(&labels, o) && fields.matches(o));
                let page: Vec<Value> = matching
                    .by_ref()
                    .take(limit.unwrap_or(usize::MAX))
                    .cloned()
                    .collect();
                // As the real server: with a selector the count of what is
                // left is unknown, and only whether there is more is said.
                let selected = ["labelSelector", "fieldSelector"]
                    .iter()
                    .any(|k| q.get(*k).is_some_and(|v| !v.is_empty()));
                let remaining = if selected {
                    usize::from(matching.next().is_some())
                } else {
                    matching.count()
                };
                if as_table {
                    let mut table = table::of(
                        &view,
                        &t.version,
                        crd(&s).as_ref(),
                        &page,
                        s.resource_version(),
                    );
                    if remaining > 0
                        && let Some(last) = page.last()
                    {
                        table["metadata"]["continue"] = encode_continue(&object_key(last)).into();
                    }
                    return full(StatusCode::OK, &table);
                }
                let items: Vec<Value> = page
                    .into_iter()
                    .map(|o| present(o, &view, &t.version))
                    .collect();
                let mut metadata = json!({"resourceVersion": s.resource_version().to_string()});
                if remaining > 0
                    && let Some(last) = items.last()
                {
                    metadata["continue"] = encode_continue(&object_key(last)).into();
                    if !selected {
                        metadata["remainingItemCount"] = remaining.into();
                    }
                }
                full(
                    StatusCode::OK,
                    &json!({
                        "kind": view.list_kind(),
                        "apiVersion": view.api_version(&t.version),
                        "metadata": metadata,
                        "items": items,
                    }),
                )
            }
            (&Method::POST, None) => {
                self.count_in("create", &rt.plural, is_write, ns);
                let r =
                    parse_body(false).and_then(|b| store().create(&rt, &t.version, ns, b, &opts));
                self.wake.notify_one();
                present_ok(r, true)
            }
            (&Method::PUT, Some(name)) => {
                self.count_in("update", &rt.plural, is_write, ns);
                let r = parse_body(false)
                    .and_then(|b| store().update(&rt, &t.version, ns, name, b, sub, &opts));
                self.wake.notify_one();
                present_ok(r, false)
            }
            (&Method::PATCH, Some(name)) => {
                self.count_in("patch", &rt.plural, is_write, ns);
                let ct = parts
                    .headers
                    .get(header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_string();
                let r = match ct.as_str() {
                    "application/apply-patch+yaml" => {
                        let force = q.get("force").is_some_and(|v| v == "true");
                        if !q.contains_key("fieldManager") {
                            return error(&ApiError::bad_request(
                                "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch",
                            ));
                        }
                        parse_body(true)
                            .and_then(|b| store().apply(&rt, &t.version, ns, name, b, force, &opts))
                    }
                    "application/merge-patch+json" | "application/strategic-merge-patch+json" => {
                        let strategic = ct.starts_with("application/strategic");
                        parse_body(false).and_then(|p| {
                            store().patch(&rt, &t.version, ns, name, sub, &opts, |o| {
                                if strategic {
                                    patch::strategic_merge(o, &p)
                                } else {
                                    patch::merge_patch(o, &p)
                                }
                                Ok(())
                            })
                        })
                    }
                    "application/json-patch+json" => parse_body(false).and_then(|p| {
                        // (a JSON patch's paths are renamed, not its keys)
                        let p = if converted {
                            events::json_patch_to_core(p)
                        } else {
                            p
                        };
                        store().patch(&rt, &t.version, ns, name, sub, &opts, |o| {
                            patch::json_patch(o, &p).map_err(|e| {
                                ApiError::new(
                                    422,
                                    "Invalid",
                                    format!("the JSON patch could not be applied: {e}"),
                                )
                            })
                        })
                    }),
                    other => Err(ApiError::new(
                        415,
                        "UnsupportedMediaType",
                        format!(
                            "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json (got {other:?})"
                        ),
                    )),
                };
                self.wake.notify_one();
                present_ok(r, false)
            }
            (&Method::DELETE, Some(name)) => {
                self.count_in("delete", &rt.plural, is_write, ns);
                let body_opts: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                let propagation = q.get("propagationPolicy").cloned().or_else(|| {
                    body_opts
                        .get("propagationPolicy")
                        .and_then(Value::as_str)
                        .map(str::to_string)
                });
                let dry = dry_run
                    || body_opts
                        .get("dryRun")
                        .and_then(Value::as_array)
                        .is_some_and(|d| d.iter().any(|v| v == "All"));
                present_ok(
                    store().delete(&rt, ns, name, propagation.as_deref(), dry),
                    false,
                )
            }
            (&Method::DELETE, None) => {
                self.count_in("deletecollection", &rt.plural, is_write, ns);
                let labels = match LabelSelector::parse(q.get("labelSelector").map_or("", |s| s)) {
                    Ok(s) => s,
                    Err(e) => return error(&ApiError::bad_request(selector_reason(e))),
                };
                let mut s = store();
                let names: Vec<(Option<String>, String)> = s
                    .list(&rt, ns)
                    .into_iter()
                    .filter(|o| labels_match(&labels, o))
                    .map(|o| {
                        (
                            o.pointer("/metadata/namespace")
                                .and_then(Value::as_str)
                                .map(str::to_string),
                            o.pointer("/metadata/name")
                                .and_then(Value::as_str)
                                .unwrap_or("")
                                .to_string(),
                        )
                    })
                    .collect();
                let mut items = vec![];
                for (n_ns, n) in names {
                    match s.delete(&rt, n_ns.as_deref(), &n, None, dry_run) {
                        Ok(o) => items.push(present(o, &view, &t.version)),
                        Err(e) => return error(&e),
                    }
                }
                full(
                    StatusCode::OK,
                    &json!({"kind": view.list_kind(), "apiVersion": view.api_version(&t.version), "metadata": {"resourceVersion": s.resource_version().to_string()}, "items": items}),
                )
            }
            (m, _) => {
                self.count(&m.as_str().to_lowercase(), &rt.plural, false);
                error(&ApiError::new(
                    405,
                    "MethodNotAllowed",
                    format!(
                        "the server does not allow this method on the requested resource ({m})"
                    ),
                ))
            }
        }
    }

    /// `/scale` of a Deployment, StatefulSet or ReplicaSet: an
    /// `autoscaling/v1` Scale view of `spec.replicas`.
    #[allow(clippy::too_many_arguments)]
    fn scale(
        &self,
        parts: &http::request::Parts,
        rt: &ResourceType,
        version: &str,
        ns: Option<&str>,
        name: &str,
        body: &Bytes,
        opts: &WriteOpts,
    ) -> Response<Body> {
        let view = |o: &Value| {
            json!({
                "kind": "Scale", "apiVersion": "autoscaling/v1",
                "metadata": {
                    "name": o.pointer("/metadata/name"), "namespace": o.pointer("/metadata/namespace"),
                    "uid": o.pointer("/metadata/uid"), "resourceVersion": o.pointer("/metadata/resourceVersion"),
                    "creationTimestamp": o.pointer("/metadata/creationTimestamp"),
                },
                "spec": {"replicas": o.pointer("/spec/replicas").cloned().unwrap_or(json!(1))},
                "status": {"replicas": o.pointer("/status/replicas").cloned().unwrap_or(json!(0))},
            })
        };
        let mut store = self.store.lock().expect("store lock");
        if parts.method == Method::GET {
            self.count("get", &format!("{}/scale", rt.plural), false);
            return match store.get(rt, ns, name) {
                Ok(o) => full(StatusCode::OK, &view(&o)),
                Err(e) => error(&e),
            };
        }
        self.count("patch", &format!("{}/scale", rt.plural), !opts.dry_run);
        let input: Value = match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(e) => return error(&ApiError::bad_request(format!("error decoding JSON: {e}"))),
        };
        let r = store.patch(rt, version, ns, name, None, opts, |o| {
            let mut scale = view(o);
            if parts.method == Method::PUT {
                scale = input.clone();
            } else {
                patch::merge_patch(&mut scale, &input);
            }
            let replicas = scale
                .pointer("/spec/replicas")
                .and_then(Value::as_i64)
                .ok_or_else(|| ApiError::new(422, "Invalid", "spec.replicas: Required value"))?;
            o["spec"]["replicas"] = replicas.into();
            Ok(())
        });
        drop(store);
        self.wake.notify_one();
        match r {
            Ok(o) => full(StatusCode::OK, &view(&o)),
            Err(e) => error(&e),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn watch(
        &self,
        rt: &ResourceType,
        view: &ResourceType,
        version: &str,
        ns: Option<&str>,
        q: &HashMap<String, String>,
        labels: LabelSelector,
        fields: FieldSelector,
    ) -> Response<Body> {
        let since: u64 = q
            .get("resourceVersion")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let timeout = q
            .get("timeoutSeconds")
            .and_then(|v| v.parse::<u64>().ok())
            .map_or(Duration::from_secs(1800), Duration::from_secs);
        // A streaming list (sendInitialEvents) starts with the current state
        // and a bookmark marking its end, whatever the resourceVersion.
        let initial = q.get("sendInitialEvents").is_some_and(|v| v == "true");
        let (backlog, mut rx, mut last) = {
            let s = self.store.lock().expect("store lock");
            let rx = s.subscribe();
            let backlog: Result<Vec<(String, Value)>, ApiError> = if since == 0 || initial {
                Ok(s.list(rt, ns)
                    .into_iter()
                    .map(|o| ("ADDED".to_string(), o.clone()))
                    .collect())
            } else {
                s.events_since(rt, ns, since).map(|evs| {
                    evs.iter()
                        .map(|e| (e.kind.to_string(), e.object.clone()))
                        .collect()
                })
            };
            let mut backlog = backlog;
            if initial && let Ok(b) = backlog.as_mut() {
                b.push((
                    "BOOKMARK".to_string(),
                    json!({
                        "kind": view.kind,
                        "apiVersion": view.api_version(version),
                        "metadata": {
                            "resourceVersion": s.resource_version().to_string(),
                            "annotations": {"k8s.io/initial-events-end": "true"},
                        },
                    }),
                ));
            }
            (backlog, rx, s.resource_version())
        };
        let (tx, body_rx) = mpsc::channel::<Bytes>(256);
        let line = |kind: &str, obj: Value| {
            let mut s = json!({"type": kind, "object": obj}).to_string();
            s.push('\n');
            Bytes::from(s)
        };
        let key = rt.key();
        let rt = view.clone();
        let version = version.to_string();
        let ns = ns.map(str::to_string);
        tokio::spawn(async move {
            let backlog = match backlog {
                Ok(b) => b,
                Err(e) => {
                    let _ = tx.send(line("ERROR", e.status())).await;
                    return;
                }
            };
            let keep = |o: &Value| labels_match(&labels, o) && fields.matches(o);
            for (kind, obj) in backlog {
                if (kind == "BOOKMARK" || keep(&obj))
                    && tx
                        .send(line(&kind, present(obj, &rt, &version)))
                        .await
                        .is_err()
                {
                    return;
                }
            }
            let deadline = tokio::time::sleep(timeout);
            tokio::pin!(deadline);
            loop {
                let ev: Arc<Event> = tokio::select! {
                    _ = &mut deadline => return,
                    _ = tx.closed() => return,
                    r = rx.recv() => match r {
                        Ok(ev) => ev,
                        Err(broadcast::error::RecvError::Lagged(_)) => {
                            let e = ApiError::new(410, "Expired", "the watch fell behind; resume with a new list");
                            let _ = tx.send(line("ERROR", e.status())).await;
                            return;
                        }
                        Err(broadcast::error::RecvError::Closed) => return,
                    },
                };
                if ev.rv <= last
                    || ev.type_key != key
                    || ns.as_deref().is_some_and(|n| n != ev.namespace)
                {
                    continue;
                }
                // An object entering the selector is ADDED for this watch;
                // one leaving it is DELETED (as it was, at the new version).
                let before = ev.previous.as_ref().map(&keep);
                let (kind, object) = match (keep(&ev.object), before) {
                    (true, Some(false)) => ("ADDED", ev.object.clone()),
                    (true, _) => (ev.kind, ev.object.clone()),
                    (false, Some(true)) => {
                        let mut gone = ev.previous.clone().expect("checked");
                        gone["metadata"]["resourceVersion"] = ev.rv.to_string().into();
                        ("DELETED", gone)
                    }
                    (false, _) => continue,
                };
                last = ev.rv;
                if tx
                    .send(line(kind, present(object, &rt, &version)))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        });
        Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, "application/json")
            .body(ChanBody(body_rx).boxed())
            .expect("valid response")
    }
}

/// What kube-apiserver says of a bad label selector (the reason alone).
fn selector_reason(e: ferry_proto::Invalid) -> String {
    match e {
        ferry_proto::Invalid::Selector { reason, .. } => reason,
        other => other.to_string(),
    }
}
