//! The emulated cluster's state: objects, the global resourceVersion counter,
//! the event log watches resume from, and the write path every verb shares
//! (validation, ownership, generation, no-op detection, cascades).
//! Owns no sockets; the server calls it under one lock.

use crate::builtin::Verb;
use crate::registry::{Registry, ResourceType};
use crate::ssa;
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::broadcast;

/// An API error, rendered as a `metav1.Status`.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub details: Option<Value>,
}

impl ApiError {
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }
    pub fn not_found(rt: &ResourceType, name: &str) -> Self {
        let what = if rt.group.is_empty() {
            rt.plural.clone()
        } else {
            format!("{}.{}", rt.plural, rt.group)
        };
        let mut e = Self::new(404, "NotFound", format!("{what} \"{name}\" not found"));
        e.details = Some(json!({"name": name, "group": rt.group, "kind": rt.plural}));
        e
    }
    pub fn invalid(rt: &ResourceType, name: &str, message: impl Into<String>) -> Self {
        Self::invalid_fields(&rt.group, &rt.kind, name, &[message.into()])
    }

    /// A 422 with one cause per `field: message` error, as kubectl shows them.
    pub fn invalid_fields(group: &str, kind: &str, name: &str, errors: &[String]) -> Self {
        let qualified = if group.is_empty() {
            kind.to_string()
        } else {
            format!("{kind}.{group}")
        };
        let mut e = Self::new(
            422,
            "Invalid",
            format!("{qualified} {name:?} is invalid: {}", errors.join(", ")),
        );
        let causes: Vec<Value> = errors
            .iter()
            .map(|m| match m.split_once(": ") {
                Some((field, rest)) if !field.contains(' ') => json!({
                    "reason": if rest.starts_with("Required") { "FieldValueRequired" } else { "FieldValueInvalid" },
                    "message": rest,
                    "field": field,
                }),
                _ => json!({"reason": "FieldValueInvalid", "message": m}),
            })
            .collect();
        e.details = Some(json!({"name": name, "group": group, "kind": kind, "causes": causes}));
        e
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    pub fn status(&self) -> Value {
        let mut s = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(d) = &self.details {
            s["details"] = d.clone();
        }
        s
    }
}

pub type Result<T, E = ApiError> = std::result::Result<T, E>;

/// A change, as watches deliver it.
#[derive(Debug, Clone)]
pub struct Event {
    pub rv: u64,
    pub type_key: String,
    pub namespace: String,
    pub kind: &'static str,
    pub object: Value,
    /// For a change of an object's labels or fields: the object before it,
    /// so a watch can tell an object entering or leaving its selector.
    pub previous: Option<Value>,
}

type Key = (String, String, String);

/// Settings of the simulated controllers.
#[derive(Clone, Debug)]
pub struct Controllers {
    /// How long a workload takes to become available, a Job to finish, a PVC to bind.
    pub ready_delay: Duration,
    /// How long a new CRD takes to become Established; its kind is not
    /// served until then. Zero: at once.
    pub crd_establish_delay: Duration,
}

impl Default for Controllers {
    fn default() -> Self {
        Controllers {
            ready_delay: Duration::from_millis(300),
            crd_establish_delay: Duration::ZERO,
        }
    }
}

/// The annotation (on a workload or its pod template) that makes it never
/// become available (or a Job fail). An image tag `:never-ready` does too.
pub const NEVER_READY: &str = "emulator.ferry.dev/never-ready";

struct Pending {
    due: Instant,
    key: Key,
    generation: i64,
}

pub struct Store {
    pub registry: Registry,
    objects: BTreeMap<Key, Value>,
    rv: u64,
    log: VecDeque<Arc<Event>>,
    compacted: u64,
    tx: broadcast::Sender<Arc<Event>>,
    pending: Vec<Pending>,
    pub controllers: Controllers,
    /// How many events watches can resume from before answering 410 Gone.
    pub event_history: usize,
}

/// Write options common to every verb.
#[derive(Debug, Default)]
pub struct WriteOpts {
    pub dry_run: bool,
    pub manager: String,
    /// What to do with fields the type's schema does not know.
    pub validation: crate::builtin::FieldValidation,
    /// What the response's `Warning` headers say.
    pub warnings: Mutex<Vec<String>>,
}

impl WriteOpts {
    pub fn new(dry_run: bool, manager: String) -> Self {
        WriteOpts {
            dry_run,
            manager,
            validation: Default::default(),
            warnings: Mutex::new(vec![]),
        }
    }
}

pub fn now_rfc3339() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    rfc3339(secs)
}

/// Seconds since the epoch as `YYYY-MM-DDTHH:MM:SSZ` (civil-from-days).
pub fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

fn uid() -> String {
    let a = fastrand::u128(..);
    let h = format!("{a:032x}");
    format!(
        "{}-{}-4{}-a{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    )
}

fn meta(obj: &Value, field: &str) -> Option<String> {
    obj.get("metadata")?
        .get(field)?
        .as_str()
        .map(str::to_string)
}

fn meta_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj.get("metadata").is_some_and(Value::is_object) {
        obj["metadata"] = json!({});
    }
    obj["metadata"].as_object_mut().expect("metadata is a map")
}

/// Everything but metadata and status: a change here bumps `generation`.
fn spec_of(obj: &Value) -> Value {
    let mut v = obj.clone();
    if let Some(m) = v.as_object_mut() {
        m.remove("metadata");
        m.remove("status");
        m.remove("apiVersion");
        m.remove("kind");
    }
    v
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
}

impl Default for Store {
    fn default() -> Self {
        Self::new()
    }
}

impl Store {
    pub fn new() -> Self {
        let (tx, _) = broadcast::channel(4096);
        let mut s = Store {
            registry: Registry::builtin(),
            objects: BTreeMap::new(),
            rv: 1,
            log: VecDeque::new(),
            compacted: 0,
            tx,
            pending: vec![],
            controllers: Controllers::default(),
            event_history: 50_000,
        };
        for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            let rt = s
                .registry
                .lookup("", "v1", "namespaces")
                .cloned()
                .expect("builtin");
            let body = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
            let opts = WriteOpts::new(false, "kube-apiserver".into());
            s.create(&rt, "v1", None, body, &opts).expect("fresh store");
        }
        s
    }

    pub fn resource_version(&self) -> u64 {
        self.rv
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.tx.subscribe()
    }

    fn emit(&mut self, rt: &ResourceType, ns: &str, kind: &'static str, object: Value) {
        self.emit_change(rt, ns, kind, object, None);
    }

    fn emit_change(
        &mut self,
        rt: &ResourceType,
        ns: &str,
        kind: &'static str,
        object: Value,
        previous: Option<Value>,
    ) {
        let ev = Arc::new(Event {
            rv: self.rv,
            type_key: rt.key(),
            namespace: ns.to_string(),
            kind,
            object,
            previous,
        });
        if self.log.len() >= self.event_history.max(1)
            && let Some(old) = self.log.pop_front()
        {
            self.compacted = old.rv;
        }
        self.log.push_back(ev.clone());
        let _ = self.tx.send(ev);
    }

    /// Events after `since` for one type (and namespace), or 410 Gone when
    /// the log no longer reaches back that far.
    pub fn events_since(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        since: u64,
    ) -> Result<Vec<Arc<Event>>> {
        if since < self.compacted {
            return Err(ApiError::new(
                410,
                "Expired",
                format!("too old resource version: {since} ({})", self.compacted + 1),
            ));
        }
        let key = rt.key();
        Ok(self
            .log
            .iter()
            .filter(|e| e.rv > since && e.type_key == key && ns.is_none_or(|n| n == e.namespace))
            .cloned()
            .collect())
    }

    pub fn get(&self, rt: &ResourceType, ns: Option<&str>, name: &str) -> Result<Value> {
        self.objects
            .get(&(rt.key(), ns.unwrap_or("").to_string(), name.to_string()))
            .cloned()
            .ok_or_else(|| ApiError::not_found(rt, name))
    }

    /// Objects of one type, optionally in one namespace, in (namespace,
    /// name) order, starting past `after` (a page's last object).
    pub fn list_after<'a>(
        &'a self,
        rt: &ResourceType,
        ns: Option<&'a str>,
        after: Option<&(String, String)>,
    ) -> impl Iterator<Item = &'a Value> + 'a {
        use std::ops::Bound;
        let key = rt.key();
        let start = match after {
            Some((n, name)) => Bound::Excluded((key.clone(), n.clone(), name.clone())),
            None => Bound::Included((key.clone(), String::new(), String::new())),
        };
        self.objects
            .range((start, Bound::Unbounded))
            .take_while(move |((k, _, _), _)| *k == key)
            .filter(move |((_, n, _), _)| ns.is_none_or(|ns| ns == n))
            .map(|(_, v)| v)
    }

    /// Objects of one type, optionally in one namespace, in name order.
    pub fn list(&self, rt: &ResourceType, ns: Option<&str>) -> Vec<&Value> {
        let key = rt.key();
        self.objects
            .range((key.clone(), String::new(), String::new())..)
            .take_while(|((k, _, _), _)| *k == key)
            .filter(|((_, n, _), _)| ns.is_none_or(|ns| ns == n))
            .map(|(_, v)| v)
            .collect()
    }

    fn check_namespace(&self, rt: &ResourceType, ns: Option<&str>) -> Result<()> {
        if !rt.namespaced {
            return Ok(());
        }
        let ns =
            ns.ok_or_else(|| ApiError::bad_request("the namespace of the object must be given"))?;
        let nst = self
            .registry
            .lookup("", "v1", "namespaces")
            .expect("builtin")
            .clone();
        match self
            .objects
            .get(&(nst.key(), String::new(), ns.to_string()))
        {
            Some(n) if n.pointer("/metadata/deletionTimestamp").is_none() => Ok(()),
            Some(_) => Err(ApiError::new(
                403,
                "Forbidden",
                format!(
                    "unable to create new content in namespace {ns} because it is being terminated"
                ),
            )),
            None => Err(ApiError::not_found(&nst, ns)),
        }
    }

    /// Checks apiVersion, kind, name and namespace of a body against its URL.
    fn validate(
        &self,
        rt: &ResourceType,
        version: &str,
        ns: Option<&str>,
        body: &mut Value,
    ) -> Result<String> {
        if !body.is_object() {
            return Err(ApiError::bad_request(
                "the body of the request must be an object",
            ));
        }
        let name = meta(body, "name").unwrap_or_default();
        let want = rt.api_version(version);
        match body.get("apiVersion").and_then(Value::as_str) {
            Some(v) if v == want => {}
            Some(v) => {
                return Err(ApiError::invalid(
                    rt,
                    &name,
                    format!("apiVersion: Invalid value: {v:?}: must be {want:?}"),
                ));
            }
            None => return Err(ApiError::invalid(rt, &name, "apiVersion: Required value")),
        }
        match body.get("kind").and_then(Value::as_str) {
            Some(k) if k == rt.kind => {}
            Some(k) => {
                return Err(ApiError::invalid(
                    rt,
                    &name,
                    format!("kind: Invalid value: {k:?}: must be {:?}", rt.kind),
                ));
            }
            None => return Err(ApiError::invalid(rt, &name, "kind: Required value")),
        }
        if name.is_empty() {
            return Err(ApiError::invalid(
                rt,
                "",
                "metadata.name: Required value: name or generateName is required",
            ));
        }
        if !valid_name(&name) {
            return Err(ApiError::invalid(
                rt,
                &name,
                format!(
                    "metadata.name: Invalid value: {name:?}: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.'"
                ),
            ));
        }
        if rt.namespaced {
            match (meta(body, "namespace"), ns) {
                (Some(b), Some(u)) if b != u => {
                    return Err(ApiError::bad_request(format!(
                        "the namespace of the provided object ({b}) does not match the namespace sent on the request ({u})"
                    )));
                }
                (_, Some(u)) => {
                    meta_mut(body).insert("namespace".into(), u.into());
                }
                _ => {}
            }
        } else {
            meta_mut(body).remove("namespace");
        }
        if rt.crd.is_none() && rt.kind == "CustomResourceDefinition" {
            Registry::type_from_crd(body).map_err(|m| ApiError::invalid(rt, &name, m))?;
        }
        Ok(name)
    }

    fn key(rt: &ResourceType, ns: Option<&str>, name: &str) -> Key {
        let ns = if rt.namespaced { ns.unwrap_or("") } else { "" };
        (rt.key(), ns.to_string(), name.to_string())
    }

    pub fn create(
        &mut self,
        rt: &ResourceType,
        version: &str,
        ns: Option<&str>,
        mut body: Value,
        opts: &WriteOpts,
    ) -> Result<Value> {
        if meta(&body, "name").is_none()
            && let Some(g) = meta(&body, "generateName")
        {
            let suffix: String = (0..5)
                .map(|_| fastrand::alphanumeric().to_ascii_lowercase())
                .collect();
            meta_mut(&mut body).insert("name".into(), format!("{g}{suffix}").into());
        }
        let name = self.validate(rt, version, ns, &mut body)?;
        self.check_namespace(rt, ns)?;
        let key = Self::key(rt, ns, &name);
        if self.objects.contains_key(&key) {
            let mut e = ApiError::new(
                409,
                "AlreadyExists",
                format!("{} \"{name}\" already exists", rt.plural),
            );
            e.details = Some(json!({"name": name, "group": rt.group, "kind": rt.plural}));
            return Err(e);
        }
        if rt.status
            && let Some(m) = body.as_object_mut()
        {
            m.remove("status");
        }
        let now = now_rfc3339();
        ssa::record_update(None, &mut body, &opts.manager, None, &now);
        self.insert_new(rt, version, key, body, &now, opts, Verb::Other)
    }

    /// What kube-apiserver checks before it stores an object.
    fn check(
        rt: &ResourceType,
        version: &str,
        obj: &mut Value,
        old: Option<&Value>,
        opts: &WriteOpts,
        verb: Verb,
    ) -> Result<()> {
        let mut warnings = vec![];
        let r = crate::builtin::check(
            &rt.group,
            version,
            &rt.kind,
            rt.crd.is_none(),
            obj,
            old,
            verb,
            opts.validation,
            &mut warnings,
        );
        opts.warnings
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(warnings);
        r
    }

    fn tracks_generation(rt: &ResourceType) -> bool {
        rt.crd.is_some() || crate::builtin::tracks_generation(&rt.group, &rt.kind)
    }

    #[allow(clippy::too_many_arguments)]
    fn insert_new(
        &mut self,
        rt: &ResourceType,
        version: &str,
        key: Key,
        mut body: Value,
        now: &str,
        opts: &WriteOpts,
        verb: Verb,
    ) -> Result<Value> {
        let dry_run = opts.dry_run;
        fold_string_data(rt, &mut body);
        Self::check(rt, version, &mut body, None, opts, verb)?;
        let m = meta_mut(&mut body);
        m.insert("uid".into(), uid().into());
        m.insert("creationTimestamp".into(), now.into());
        if Self::tracks_generation(rt) {
            m.insert("generation".into(), 1.into());
        } else {
            m.remove("generation");
        }
        for f in ["resourceVersion", "deletionTimestamp", "selfLink"] {
            m.remove(f);
        }
        if rt.kind == "Namespace" {
            body["spec"] = json!({"finalizers": ["kubernetes"]});
            body["status"] = json!({"phase": "Active"});
        }
        if dry_run {
            meta_mut(&mut body).insert("resourceVersion".into(), self.rv.to_string().into());
            if rt.kind == "CustomResourceDefinition" && rt.crd.is_none() {
                Self::crd_status(&mut body);
            }
            return Ok(body);
        }
        self.rv += 1;
        meta_mut(&mut body).insert("resourceVersion".into(), self.rv.to_string().into());
        if rt.kind == "CustomResourceDefinition" && rt.crd.is_none() {
            let delay = self.controllers.crd_establish_delay;
            if delay.is_zero() {
                Self::crd_status(&mut body);
                let t = Registry::type_from_crd(&body).expect("validated");
                self.registry.insert(t);
            } else {
                Self::crd_installing(&mut body);
                self.pending.push(Pending {
                    due: Instant::now() + delay,
                    key: key.clone(),
                    generation: body
                        .pointer("/metadata/generation")
                        .and_then(Value::as_i64)
                        .unwrap_or(1),
                });
            }
        }
        self.objects.insert(key.clone(), body.clone());
        self.emit(rt, &key.1, "ADDED", body.clone());
        self.schedule(rt, &key, &body);
        Ok(body)
    }

    /// A new CRD's status before it is Established.
    fn crd_installing(body: &mut Value) {
        let now = now_rfc3339();
        body["status"] = json!({
            "acceptedNames": body.pointer("/spec/names").cloned().unwrap_or(json!({})),
            "conditions": [
                {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found", "lastTransitionTime": now},
                {"type": "Established", "status": "False", "reason": "Installing", "message": "the initial names have been accepted", "lastTransitionTime": now},
            ],
        });
    }

    fn crd_status(body: &mut Value) {
        let names = body.pointer("/spec/names").cloned().unwrap_or(json!({}));
        let now = now_rfc3339();
        body["status"] = json!({
            "acceptedNames": names,
            "storedVersions": body.pointer("/spec/versions").and_then(Value::as_array)
                .map(|v| v.iter().filter(|v| v.get("storage").and_then(Value::as_bool) == Some(true)).filter_map(|v| v.get("name").cloned()).collect::<Vec<_>>())
                .unwrap_or_default(),
            "conditions": [
                {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found", "lastTransitionTime": now},
                {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted", "lastTransitionTime": now},
            ],
        });
    }

    /// Replaces an object (PUT), honouring a resourceVersion precondition.
    #[allow(clippy::too_many_arguments)]
    pub fn update(
        &mut self,
        rt: &ResourceType,
        version: &str,
        ns: Option<&str>,
        name: &str,
        mut body: Value,
        sub: Option<&str>,
        opts: &WriteOpts,
    ) -> Result<Value> {
        let old = self.get(rt, ns, name)?;
        self.validate(rt, version, ns, &mut body)?;
        if meta(&body, "name").as_deref() != Some(name) {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({}) does not match the name on the URL ({name})",
                meta(&body, "name").unwrap_or_default()
            )));
        }
        if let Some(rv) = meta(&body, "resourceVersion")
            && Some(rv) != meta(&old, "resourceVersion")
        {
            return Err(Self::conflict(rt, name));
        }
        let new = if sub == Some("status") {
            let mut n = old.clone();
            n["status"] = body.get("status").cloned().unwrap_or(Value::Null);
            n
        } else {
            if rt.status {
                match old.get("status") {
                    Some(s) => body["status"] = s.clone(),
                    None => {
                        if let Some(m) = body.as_object_mut() {
                            m.remove("status");
                        }
                    }
                }
            }
            body
        };
        self.write(
            rt,
            version,
            ns,
            old,
            new,
            Some((&opts.manager, sub)),
            opts,
            Verb::Other,
        )
    }

    fn conflict(rt: &ResourceType, name: &str) -> ApiError {
        let mut e = ApiError::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {}{} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                rt.plural,
                if rt.group.is_empty() {
                    String::new()
                } else {
                    format!(".{}", rt.group)
                }
            ),
        );
        e.details = Some(json!({"name": name, "group": rt.group, "kind": rt.plural}));
        e
    }

    /// A patch of any non-apply type: `f` turns the live object into the new one.
    #[allow(clippy::too_many_arguments)]
    pub fn patch(
        &mut self,
        rt: &ResourceType,
        version: &str,
        ns: Option<&str>,
        name: &str,
        sub: Option<&str>,
        opts: &WriteOpts,
        f: impl FnOnce(&mut Value) -> Result<()>,
    ) -> Result<Value> {
        let old = self.get(rt, ns, name)?;
        let mut new = old.clone();
        f(&mut new)?;
        self.validate(rt, version, ns, &mut new)?;
        if meta(&new, "name").as_deref() != Some(name) {
            return Err(ApiError::bad_request(
                "metadata.name cannot be changed by a patch",
            ));
        }
        if let Some(rv) = meta(&new, "resourceVersion")
            && Some(rv) != meta(&old, "resourceVersion")
        {
            return Err(Self::conflict(rt, name));
        }
        if sub != Some("status") && rt.status {
            match old.get("status") {
                Some(s) => new["status"] = s.clone(),
                None => {
                    if let Some(m) = new.as_object_mut() {
                        m.remove("status");
                    }
                }
            }
        }
        self.write(
            rt,
            version,
            ns,
            old,
            new,
            Some((&opts.manager, sub)),
            opts,
            Verb::Other,
        )
    }

    /// Server-side apply.
    #[allow(clippy::too_many_arguments)]
    pub fn apply(
        &mut self,
        rt: &ResourceType,
        version: &str,
        ns: Option<&str>,
        name: &str,
        mut body: Value,
        force: bool,
        opts: &WriteOpts,
    ) -> Result<Value> {
        let body_name = self.validate(rt, version, ns, &mut body)?;
        if body_name != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            )));
        }
        let old = self.objects.get(&Self::key(rt, ns, name)).cloned();
        let now = now_rfc3339();
        let merged = ssa::apply(old.as_ref(), &body, &opts.manager, force, &now).map_err(|conflicts| {
            let fields: Vec<String> = conflicts.iter().map(|c| format!("conflict with \"{}\": {}", c.manager, c.field)).collect();
            let mut e = ApiError::new(409, "Conflict", format!(
                "Apply failed with {} conflict{}: {}",
                conflicts.len(),
                if conflicts.len() == 1 { "" } else { "s" },
                fields.join("\n")
            ));
            e.details = Some(json!({
                "name": name, "group": rt.group, "kind": rt.plural,
                "causes": conflicts.iter().map(|c| json!({"type": "FieldManagerConflict", "message": format!("conflict with \"{}\"", c.manager), "field": c.field})).collect::<Vec<_>>(),
            }));
            e
        })?;
        match old {
            None => {
                self.check_namespace(rt, ns)?;
                let mut merged = merged;
                if rt.status
                    && let Some(m) = merged.as_object_mut()
                {
                    m.remove("status");
                }
                let key = Self::key(rt, ns, name);
                self.insert_new(rt, version, key, merged, &now, opts, Verb::Apply)
            }
            Some(old) => self.write(rt, version, ns, old, merged, None, opts, Verb::Apply),
        }
    }

    /// The shared tail of every change to an existing object.
    #[allow(clippy::too_many_arguments)]
    fn write(
        &mut self,
        rt: &ResourceType,
        version: &str,
        ns: Option<&str>,
        old: Value,
        mut new: Value,
        update_by: Option<(&str, Option<&str>)>,
        opts: &WriteOpts,
        verb: Verb,
    ) -> Result<Value> {
        let dry_run = opts.dry_run;
        fold_string_data(rt, &mut new);
        Self::check(rt, version, &mut new, Some(&old), opts, verb)?;
        let now = now_rfc3339();
        // Server-owned metadata survives whatever the client sent.
        {
            let om = old["metadata"].as_object().cloned().unwrap_or_default();
            let nm = meta_mut(&mut new);
            for f in [
                "uid",
                "creationTimestamp",
                "generation",
                "deletionTimestamp",
                "resourceVersion",
            ] {
                match om.get(f) {
                    Some(v) => nm.insert(f.into(), v.clone()),
                    None => nm.remove(f),
                };
            }
        }
        if let Some((manager, sub)) = update_by {
            ssa::record_update(Some(&old), &mut new, manager, sub, &now);
        }
        if spec_of(&new) != spec_of(&old) && Self::tracks_generation(rt) {
            let g = old
                .pointer("/metadata/generation")
                .and_then(Value::as_i64)
                .unwrap_or(1);
            meta_mut(&mut new).insert("generation".into(), (g + 1).into());
        }
        if new == old {
            return Ok(old);
        }
        if dry_run {
            return Ok(new);
        }
        let name = meta(&new, "name").unwrap_or_default();
        let key = Self::key(rt, ns, &name);
        let finalized = new.pointer("/metadata/deletionTimestamp").is_some()
            && new
                .pointer("/metadata/finalizers")
                .and_then(Value::as_array)
                .is_none_or(Vec::is_empty);
        self.rv += 1;
        meta_mut(&mut new).insert("resourceVersion".into(), self.rv.to_string().into());
        if finalized {
            self.objects.remove(&key);
            self.emit(rt, &key.1, "DELETED", new.clone());
            self.cascade(rt, &new);
            return Ok(new);
        }
        if rt.kind == "CustomResourceDefinition" && rt.crd.is_none() {
            Self::crd_status(&mut new);
            if let Ok(t) = Registry::type_from_crd(&new) {
                self.registry.insert(t);
            }
        }
        self.objects.insert(key.clone(), new.clone());
        self.emit_change(rt, &key.1, "MODIFIED", new.clone(), Some(old.clone()));
        if spec_of(&new) != spec_of(&old) {
            self.schedule(rt, &key, &new);
        }
        Ok(new)
    }

    /// DELETE: finalizers hold the object with a deletionTimestamp; otherwise
    /// it goes, with what it owns (unless orphaned).
    pub fn delete(
        &mut self,
        rt: &ResourceType,
        ns: Option<&str>,
        name: &str,
        propagation: Option<&str>,
        dry_run: bool,
    ) -> Result<Value> {
        let obj = self.get(rt, ns, name)?;
        if dry_run {
            return Ok(obj);
        }
        let key = Self::key(rt, ns, name);
        let has_finalizers = obj
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .is_some_and(|f| !f.is_empty());
        if has_finalizers {
            if obj.pointer("/metadata/deletionTimestamp").is_some() {
                return Ok(obj);
            }
            let mut o = obj;
            self.rv += 1;
            let m = meta_mut(&mut o);
            m.insert("deletionTimestamp".into(), now_rfc3339().into());
            m.insert("resourceVersion".into(), self.rv.to_string().into());
            self.objects.insert(key.clone(), o.clone());
            self.emit(rt, &key.1, "MODIFIED", o.clone());
            return Ok(o);
        }
        self.objects.remove(&key);
        self.rv += 1;
        let mut o = obj;
        meta_mut(&mut o).insert("resourceVersion".into(), self.rv.to_string().into());
        self.emit(rt, &key.1, "DELETED", o.clone());
        if propagation != Some("Orphan") {
            self.cascade(rt, &o);
        }
        Ok(o)
    }

    /// What goes with a deleted object: a namespace's contents, a CRD's
    /// objects and type, dependents by ownerReference.
    fn cascade(&mut self, rt: &ResourceType, gone: &Value) {
        let name = meta(gone, "name").unwrap_or_default();
        let mut doomed: Vec<Key> = Vec::new();
        if rt.kind == "Namespace" && rt.group.is_empty() {
            doomed.extend(
                self.objects
                    .keys()
                    .filter(|(_, ns, _)| *ns == name)
                    .cloned(),
            );
        }
        if rt.kind == "CustomResourceDefinition"
            && rt.crd.is_none()
            && let Ok(t) = Registry::type_from_crd(gone)
        {
            let k = t.key();
            doomed.extend(self.objects.keys().filter(|(tk, _, _)| *tk == k).cloned());
        }
        if let Some(uid) = meta(gone, "uid") {
            doomed.extend(
                self.objects
                    .iter()
                    .filter(|(_, o)| {
                        o.pointer("/metadata/ownerReferences")
                            .and_then(Value::as_array)
                            .is_some_and(|refs| {
                                refs.iter()
                                    .any(|r| r.get("uid").and_then(Value::as_str) == Some(&uid))
                            })
                    })
                    .map(|(k, _)| k.clone()),
            );
        }
        for (tk, ns, n) in doomed {
            let Some(t) = self.type_by_key(&tk) else {
                continue;
            };
            let ns = (!ns.is_empty()).then_some(ns);
            // Finalizers of contents are ignored: the emulator has no controllers to clear them.
            if let Some(m) = self
                .objects
                .get_mut(&(tk.clone(), ns.clone().unwrap_or_default(), n.clone()))
                .and_then(|o| o["metadata"].as_object_mut())
            {
                m.remove("finalizers");
            }
            let _ = self.delete(&t, ns.as_deref(), &n, None, false);
        }
        if rt.kind == "CustomResourceDefinition"
            && rt.crd.is_none()
            && let Ok(t) = Registry::type_from_crd(gone)
        {
            self.registry.remove(&t.key());
        }
    }

    fn type_by_key(&self, key: &str) -> Option<ResourceType> {
        let (g, p) = key.split_once('/')?;
        let t = self.registry.by_plural(g, p)?;
        Some(t.clone())
    }

    // --- simulated controllers -------------------------------------------

    fn schedule(&mut self, rt: &ResourceType, key: &Key, obj: &Value) {
        let simulated = matches!(
            (rt.group.as_str(), rt.kind.as_str()),
            (
                "apps",
                "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet"
            ) | ("batch", "Job")
                | ("", "PersistentVolumeClaim")
        ) || (rt.group.is_empty()
            && rt.kind == "Service"
            && obj.pointer("/spec/type").and_then(Value::as_str) == Some("LoadBalancer"));
        if !simulated {
            return;
        }
        let generation = obj
            .pointer("/metadata/generation")
            .and_then(Value::as_i64)
            .unwrap_or(1);
        self.pending.retain(|p| p.key != *key);
        self.pending.push(Pending {
            due: Instant::now() + self.controllers.ready_delay,
            key: key.clone(),
            generation,
        });
    }

    /// When the next simulated controller action is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.pending.iter().map(|p| p.due).min()
    }

    /// Runs the simulated controllers whose time has come.
    pub fn run_controllers(&mut self, now: Instant) {
        let (due, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|p| p.due <= now);
        self.pending = rest;
        for p in due {
            let Some(rt) = self.type_by_key(&p.key.0) else {
                continue;
            };
            let Some(mut obj) = self.objects.get(&p.key).cloned() else {
                continue;
            };
            // (Kinds without a generation count as generation 1.)
            let generation = obj
                .pointer("/metadata/generation")
                .and_then(Value::as_i64)
                .unwrap_or(1);
            if generation != p.generation {
                continue;
            }
            if rt.kind == "CustomResourceDefinition" && rt.crd.is_none() {
                Self::crd_status(&mut obj);
                if let Ok(t) = Registry::type_from_crd(&obj) {
                    self.registry.insert(t);
                }
                self.rv += 1;
                meta_mut(&mut obj).insert("resourceVersion".into(), self.rv.to_string().into());
                self.objects.insert(p.key.clone(), obj.clone());
                self.emit(&rt, &p.key.1, "MODIFIED", obj);
                continue;
            }
            let status = simulated_status(&rt.kind, &obj);
            if obj.get("status") == Some(&status) {
                continue;
            }
            obj["status"] = status;
            self.rv += 1;
            meta_mut(&mut obj).insert("resourceVersion".into(), self.rv.to_string().into());
            self.objects.insert(p.key.clone(), obj.clone());
            self.emit(&rt, &p.key.1, "MODIFIED", obj);
        }
    }
}

/// A Secret's write-only `stringData` is folded into `data` (base64), as
/// the real API server does.
fn fold_string_data(rt: &ResourceType, obj: &mut Value) {
    use base64::Engine;
    if !(rt.group.is_empty() && rt.kind == "Secret") {
        return;
    }
    let Some(m) = obj.as_object_mut() else { return };
    let Some(Value::Object(sd)) = m.remove("stringData") else {
        return;
    };
    let data = m.entry("data").or_insert_with(|| json!({}));
    if !data.is_object() {
        *data = json!({});
    }
    for (k, v) in sd {
        let text = v.as_str().unwrap_or_default().to_string();
        data[k] = base64::engine::general_purpose::STANDARD
            .encode(text)
            .into();
    }
}

fn never_ready(obj: &Value) -> bool {
    let annotated = |p: &str| {
        obj.pointer(p)
            .and_then(|a| a.get(NEVER_READY))
            .and_then(Value::as_str)
            == Some("true")
    };
    if annotated("/metadata/annotations") || annotated("/spec/template/metadata/annotations") {
        return true;
    }
    obj.pointer("/spec/template/spec/containers")
        .and_then(Value::as_array)
        .is_some_and(|cs| {
            cs.iter().any(|c| {
                c.get("image")
                    .and_then(Value::as_str)
                    .is_some_and(|i| i.ends_with(":never-ready"))
            })
        })
}

/// The status a real controller would have written by now.
fn simulated_status(kind: &str, obj: &Value) -> Value {
    let generation = obj
        .pointer("/metadata/generation")
        .and_then(Value::as_i64)
        .unwrap_or(1);
    let replicas = obj
        .pointer("/spec/replicas")
        .and_then(Value::as_i64)
        .unwrap_or(1);
    let now = now_rfc3339();
    let bad = never_ready(obj);
    let cond = |t: &str, s: bool, reason: &str, msg: &str| json!({"type": t, "status": if s { "True" } else { "False" }, "reason": reason, "message": msg, "lastUpdateTime": now, "lastTransitionTime": now});
    let name = meta(obj, "name").unwrap_or_default();
    match kind {
        "Deployment" if bad => json!({
            "observedGeneration": generation, "replicas": replicas, "updatedReplicas": replicas,
            "readyReplicas": 0, "availableReplicas": 0, "unavailableReplicas": replicas,
            "conditions": [
                cond("Available", false, "MinimumReplicasUnavailable", "Deployment does not have minimum availability."),
                cond("Progressing", false, "ProgressDeadlineExceeded", &format!("ReplicaSet \"{name}\" has timed out progressing.")),
            ],
        }),
        "Deployment" => json!({
            "observedGeneration": generation, "replicas": replicas, "updatedReplicas": replicas,
            "readyReplicas": replicas, "availableReplicas": replicas,
            "conditions": [
                cond("Available", true, "MinimumReplicasAvailable", "Deployment has minimum availability."),
                cond("Progressing", true, "NewReplicaSetAvailable", &format!("ReplicaSet \"{name}\" has successfully progressed.")),
            ],
        }),
        "StatefulSet" | "ReplicaSet" => {
            let ready = if bad { 0 } else { replicas };
            json!({
                "observedGeneration": generation, "replicas": replicas, "updatedReplicas": replicas,
                "readyReplicas": ready, "availableReplicas": ready, "currentReplicas": replicas,
                "fullyLabeledReplicas": replicas,
            })
        }
        "DaemonSet" => {
            let ready = if bad { 0 } else { 1 };
            json!({
                "observedGeneration": generation, "desiredNumberScheduled": 1, "currentNumberScheduled": 1,
                "updatedNumberScheduled": 1, "numberReady": ready, "numberAvailable": ready,
                "numberUnavailable": 1 - ready, "numberMisscheduled": 0,
            })
        }
        "Job" if bad => json!({
            "failed": 1, "startTime": now,
            "conditions": [cond("Failed", true, "BackoffLimitExceeded", "Job has reached the specified backoff limit")],
        }),
        "Job" => json!({
            "succeeded": 1, "startTime": now, "completionTime": now,
            "conditions": [cond("Complete", true, "", "")],
        }),
        "Service" if obj.pointer("/spec/type").and_then(Value::as_str) == Some("LoadBalancer") => {
            json!({"loadBalancer": {"ingress": [{"ip": "127.0.0.1"}]}})
        }
        "PersistentVolumeClaim" => {
            json!({"phase": "Bound", "accessModes": obj.pointer("/spec/accessModes").cloned().unwrap_or(json!(["ReadWriteOnce"]))})
        }
        _ => obj.get("status").cloned().unwrap_or(Value::Null),
    }
}
