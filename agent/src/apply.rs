//! Applying a rendered directory to the cluster with server-side apply.
//!
//! Order: CRDs, Namespaces, other cluster-scoped objects, namespaced ones.
//! A server-side dry-run of every object that needs writing comes first; any
//! failure means nothing is written. Objects that are already as Git says
//! (same content hash as last applied, and the live object still carries
//! every field we set) cost no write. Pruning deletes only what is in the
//! inventory this agent keeps in the cluster and still carries its owner
//! label, and never more than a safe share of it in one sync.
//! Never deletes anything it did not create.

use crate::render::{Object, ObjectRef, Problem};
use kube::api::{Api, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::discovery::ApiResource;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

/// Objects per page when the agent lists what it manages.
const LIST_PAGE: u32 = 250;

/// The field manager of every apply.
pub const MANAGER: &str = "ferry";
/// Label on every object the agent applies: the cluster that owns it.
pub const OWNER_LABEL: &str = "ferry.dev/owner";
/// `ferry.dev/prune: "false"` keeps an object when it leaves Git.
pub const PRUNE_ANNOTATION: &str = "ferry.dev/prune";
/// `ferry.dev/wave: "N"` splits a directory into waves applied in order,
/// each once the earlier ones are healthy.
pub const WAVE_ANNOTATION: &str = "ferry.dev/wave";
/// The ConfigMap (in the agent's namespace) holding assignment and inventory.
pub const STATE_NAME: &str = "ferry-agent-state";

/// What the agent applied, as kept in the cluster.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct InventoryEntry {
    pub api_version: String,
    pub kind: String,
    pub namespace: Option<String>,
    pub name: String,
    pub uid: String,
    /// Content hash of what was applied.
    pub hash: String,
}

impl InventoryEntry {
    fn reference(&self) -> ObjectRef {
        ObjectRef {
            group: self
                .api_version
                .rsplit_once('/')
                .map_or("", |(g, _)| g)
                .to_string(),
            kind: self.kind.clone(),
            namespace: self.namespace.clone(),
            name: self.name.clone(),
        }
    }
}

/// The agent's durable state, in the `ferry-agent-state` ConfigMap.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    pub assignment: Option<SavedAssignment>,
    pub applied_commit: String,
    pub inventory: Vec<InventoryEntry>,
}

/// The last assignment, so a restarted agent converges without the coordinator.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SavedAssignment {
    pub repo_url: String,
    pub commit: String,
    pub path: String,
    pub generation: u64,
    pub allow_mass_prune: bool,
}

/// Why a sync did not complete.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Objects failed validation or the dry-run; nothing was written.
    #[error("{} object(s) rejected; nothing was applied", .0.len())]
    Rejected(Vec<Problem>),
    /// A write failed part-way (after a clean dry-run).
    #[error("applying {object}: {message}")]
    Apply { object: String, message: String },
    /// Objects differ from Git and self-heal is off: nothing was written.
    #[error("{} object(s) drifted from Git; self-heal is off", .0.len())]
    Drifted(Vec<Problem>),
    /// The prune safety valve held.
    #[error(
        "refusing to prune {count} of {total} managed objects in one sync (more than {share}%); the assignment must allow mass pruning"
    )]
    MassPrune {
        count: usize,
        total: usize,
        share: u32,
    },
    /// The Kubernetes API failed.
    #[error("{what}: {message}")]
    Api { what: String, message: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

fn api_message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => format!("{} ({})", s.message, s.reason),
        other => other.to_string(),
    }
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

/// The outcome of a sync: the live objects now applied, and the writes made.
#[derive(Debug, Default)]
pub struct Applied {
    pub live: Vec<Value>,
    pub writes: usize,
    pub pruned: usize,
}

/// A resolved kind.
#[derive(Clone, Debug)]
struct Kind {
    resource: ApiResource,
    namespaced: bool,
}

pub struct Applier {
    client: kube::Client,
    cluster: String,
    state_namespace: String,
    kinds: HashMap<(String, String), Kind>,
    saved: Option<State>,
    /// The largest share of the inventory one sync may prune.
    pub prune_share_percent: u32,
    /// How long one wave may take to become healthy before the sync fails.
    pub wave_timeout: Duration,
}

fn rank(kind: &str, group: &str, namespaced: bool) -> u8 {
    match (group, kind) {
        ("apiextensions.k8s.io", "CustomResourceDefinition") => 0,
        ("", "Namespace") => 1,
        _ if !namespaced => 2,
        _ => 3,
    }
}

/// Content hash of an object as it will be applied.
pub fn hash(v: &Value) -> String {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, v.to_string().as_bytes());
    d.as_ref()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Whether every field of `want` is in `live` with the same value. Server
/// defaults in `live` are fine; only what Git sets is compared.
pub fn contains(live: &Value, want: &Value) -> bool {
    match (live, want) {
        (Value::Object(l), Value::Object(w)) => w
            .iter()
            .all(|(k, wv)| l.get(k).is_some_and(|lv| contains(lv, wv))),
        (Value::Array(l), Value::Array(w)) => {
            l.len() == w.len() && l.iter().zip(w).all(|(a, b)| contains(a, b))
        }
        (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
        (a, b) => a == b,
    }
}

/// What of an object is compared for drift: everything but status and
/// server-owned metadata.
fn comparable(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(m) = v.as_object_mut() {
        m.remove("status");
        if let Some(meta) = m.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.retain(|k, _| {
                matches!(k.as_str(), "name" | "namespace" | "labels" | "annotations")
            });
        }
    }
    v
}

impl Applier {
    pub fn new(client: kube::Client, cluster: String, state_namespace: String) -> Self {
        Applier {
            client,
            cluster,
            state_namespace,
            kinds: HashMap::new(),
            saved: None,
            prune_share_percent: 50,
            wave_timeout: Duration::from_secs(300),
        }
    }

    pub fn client(&self) -> &kube::Client {
        &self.client
    }

    async fn kind(&mut self, api_version: &str, kind: &str) -> Result<Option<Kind>> {
        let key = (api_version.to_string(), kind.to_string());
        if let Some(k) = self.kinds.get(&key) {
            return Ok(Some(k.clone()));
        }
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        let gvk = GroupVersionKind::gvk(group, version, kind);
        match kube::discovery::pinned_kind(&self.client, &gvk).await {
            Ok((resource, caps)) => {
                let k = Kind {
                    resource,
                    namespaced: caps.scope == kube::discovery::Scope::Namespaced,
                };
                self.kinds.insert(key, k.clone());
                Ok(Some(k))
            }
            Err(e) if is_not_found(&e) || matches!(e, kube::Error::Discovery(_)) => Ok(None),
            Err(e) => Err(Error::Api {
                what: format!("discovering {kind} in {api_version}"),
                message: api_message(&e),
            }),
        }
    }

    fn api(&self, kind: &Kind, namespace: Option<&str>) -> Api<DynamicObject> {
        match (kind.namespaced, namespace) {
            (true, Some(ns)) => Api::namespaced_with(self.client.clone(), ns, &kind.resource),
            _ => Api::all_with(self.client.clone(), &kind.resource),
        }
    }

    // --- state ------------------------------------------------------------

    fn state_api(&self) -> Api<k8s_openapi::api::core::v1::ConfigMap> {
        Api::namespaced(self.client.clone(), &self.state_namespace)
    }

    /// Reads the state the agent kept in the cluster (empty when none).
    pub async fn load_state(&mut self) -> Result<State> {
        let cm = self
            .state_api()
            .get_opt(STATE_NAME)
            .await
            .map_err(|e| Error::Api {
                what: format!("reading configmap {}/{STATE_NAME}", self.state_namespace),
                message: api_message(&e),
            })?;
        let state: State = cm
            .and_then(|cm| cm.data)
            .and_then(|d| d.get("state.json").cloned())
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or_default();
        self.saved = Some(state.clone());
        Ok(state)
    }

    /// Writes the state, only when it changed: a steady state costs no write.
    pub async fn save_state(&mut self, state: &State) -> Result<bool> {
        if self.saved.as_ref() == Some(state) {
            return Ok(false);
        }
        let err = |e: kube::Error| Error::Api {
            what: format!("writing configmap {}/{STATE_NAME}", self.state_namespace),
            message: api_message(&e),
        };
        let ns_api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(self.client.clone());
        if ns_api
            .get_opt(&self.state_namespace)
            .await
            .map_err(err)?
            .is_none()
        {
            let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": self.state_namespace}});
            ns_api
                .patch(
                    &self.state_namespace,
                    &PatchParams::apply(MANAGER),
                    &Patch::Apply(&ns),
                )
                .await
                .map_err(err)?;
        }
        let cm = json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": STATE_NAME, "namespace": self.state_namespace,
                "labels": {"app.kubernetes.io/managed-by": "ferry-agent"}},
            "data": {"state.json": serde_json::to_string(state).expect("state serializes")},
        });
        self.state_api()
            .patch(
                STATE_NAME,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&cm),
            )
            .await
            .map_err(err)?;
        self.saved = Some(state.clone());
        Ok(true)
    }

    // --- sync -------------------------------------------------------------

    /// Brings the cluster to `objects`, pruning what left Git. On any
    /// rejection nothing is written.
    pub async fn sync(
        &mut self,
        objects: &[Object],
        state: &mut State,
        allow_mass_prune: bool,
        detect_only: bool,
    ) -> Result<Applied> {
        // CRDs in this set define kinds that discovery cannot know yet.
        // (group, kind) -> (namespaced, the CRD's name)
        let mut pending_crds: HashMap<(String, String), (bool, String)> = HashMap::new();
        for o in objects
            .iter()
            .filter(|o| o.kind() == "CustomResourceDefinition")
        {
            let g = o
                .value
                .pointer("/spec/group")
                .and_then(Value::as_str)
                .unwrap_or("");
            let k = o
                .value
                .pointer("/spec/names/kind")
                .and_then(Value::as_str)
                .unwrap_or("");
            let namespaced =
                o.value.pointer("/spec/scope").and_then(Value::as_str) != Some("Cluster");
            pending_crds.insert(
                (g.to_string(), k.to_string()),
                (namespaced, o.name().to_string()),
            );
        }

        // Resolve kinds and normalise: namespaces, owner label, hash.
        struct Planned {
            obj: Object,
            value: Value,
            kind: Option<Kind>,
            namespaced: bool,
            hash: String,
            wave: i64,
        }
        let mut planned = vec![];
        let mut problems = vec![];
        for o in objects {
            let kind = self.kind(o.api_version(), o.kind()).await?;
            let namespaced = match (
                &kind,
                pending_crds.get(&(o.group().to_string(), o.kind().to_string())),
            ) {
                (Some(k), _) => k.namespaced,
                (None, Some((ns, _))) => *ns,
                (None, None) => {
                    problems.push(Problem {
                        source: o.source.clone(),
                        object: o.reference().to_string(),
                        message: format!(
                            "the cluster does not serve kind {} in {}",
                            o.kind(),
                            o.api_version()
                        ),
                    });
                    continue;
                }
            };
            let wave = match o.value.pointer(&format!(
                "/metadata/annotations/{}",
                WAVE_ANNOTATION.replace('/', "~1")
            )) {
                None => 0,
                Some(v) => match v.as_str().and_then(|s| s.trim().parse::<i64>().ok()) {
                    Some(w) => w,
                    None => {
                        problems.push(Problem {
                            source: o.source.clone(),
                            object: o.reference().to_string(),
                            message: format!("{WAVE_ANNOTATION} must be a whole number, not {v}"),
                        });
                        continue;
                    }
                },
            };
            let mut value = o.value.clone();
            let meta = value["metadata"]
                .as_object_mut()
                .expect("validated metadata");
            if namespaced {
                if !meta.contains_key("namespace") {
                    meta.insert("namespace".into(), "default".into());
                }
            } else {
                meta.remove("namespace");
            }
            let labels = meta.entry("labels").or_insert_with(|| json!({}));
            labels[OWNER_LABEL] = self.cluster.clone().into();
            let hash = hash(&value);
            let obj = Object {
                source: o.source.clone(),
                value: value.clone(),
            };
            planned.push(Planned {
                obj,
                value,
                kind,
                namespaced,
                hash,
                wave,
            });
        }
        if !problems.is_empty() {
            return Err(Error::Rejected(problems));
        }
        planned.sort_by_key(|p| (p.wave, rank(p.obj.kind(), p.obj.group(), p.namespaced)));

        // Which objects need a write; read the others for health. One LIST
        // per kind (by this cluster's owner label) instead of a GET per
        // object; Namespaces, few and often pre-existing, are read by name.
        let previous: HashMap<ObjectRef, &InventoryEntry> =
            state.inventory.iter().map(|e| (e.reference(), e)).collect();
        let mut listed: HashMap<ObjectRef, Value> = HashMap::new();
        let mut kinds_listed: Vec<ApiResource> = vec![];
        for p in &planned {
            let Some(kind) = &p.kind else { continue };
            if p.obj.kind() == "Namespace" || kinds_listed.contains(&kind.resource) {
                continue;
            }
            kinds_listed.push(kind.resource.clone());
            let api: Api<DynamicObject> = Api::all_with(self.client.clone(), &kind.resource);
            // In pages, so a large directory is never decoded all at once.
            let mut lp = kube::api::ListParams::default()
                .labels(&format!("{OWNER_LABEL}={}", self.cluster))
                .limit(LIST_PAGE);
            loop {
                let page = api.list(&lp).await.map_err(|e| Error::Api {
                    what: format!(
                        "listing {} in {}",
                        kind.resource.kind, kind.resource.api_version
                    ),
                    message: api_message(&e),
                })?;
                let next = page.metadata.continue_.clone().filter(|c| !c.is_empty());
                for o in page.items {
                    let mut v = serde_json::to_value(&o).expect("object serializes");
                    // List items may come without their type.
                    v["apiVersion"] = kind.resource.api_version.clone().into();
                    v["kind"] = kind.resource.kind.clone().into();
                    let r = ObjectRef {
                        group: kind.resource.group.clone(),
                        kind: kind.resource.kind.clone(),
                        namespace: o.metadata.namespace,
                        name: o.metadata.name.unwrap_or_default(),
                    };
                    listed.insert(r, v);
                }
                match next {
                    Some(c) => lp = lp.continue_token(&c),
                    None => break,
                }
            }
        }
        let mut live: HashMap<ObjectRef, Value> = HashMap::new();
        let mut todo = vec![];
        for (i, p) in planned.iter().enumerate() {
            let r = p.obj.reference();
            let Some(kind) = &p.kind else {
                todo.push(i);
                continue;
            };
            let current = if p.obj.kind() == "Namespace" {
                self.api(kind, None)
                    .get_opt(p.obj.name())
                    .await
                    .map_err(|e| Error::Api {
                        what: format!("reading {r}"),
                        message: api_message(&e),
                    })?
                    .map(|c| serde_json::to_value(&c).expect("object serializes"))
            } else {
                listed.remove(&r)
            };
            let fresh = previous.get(&r).is_some_and(|e| e.hash == p.hash);
            match current {
                Some(c) => {
                    let same = fresh && contains(&comparable(&c), &comparable(&p.value));
                    if !same {
                        todo.push(i);
                    }
                    live.insert(r, c);
                }
                None => todo.push(i),
            }
        }

        // What leaves Git, and the safety valve, before any write.
        let desired: BTreeSet<ObjectRef> = planned.iter().map(|p| p.obj.reference()).collect();
        let mut prune: Vec<&InventoryEntry> = state
            .inventory
            .iter()
            .filter(|e| !desired.contains(&e.reference()))
            .collect();
        let total = state.inventory.len();
        if !allow_mass_prune
            && total > 0
            && prune.len() * 100 > total * self.prune_share_percent as usize
            && prune.len() > 1
        {
            return Err(Error::MassPrune {
                count: prune.len(),
                total,
                share: self.prune_share_percent,
            });
        }

        if detect_only && !todo.is_empty() {
            return Err(Error::Drifted(
                todo.iter()
                    .map(|&i| Problem {
                        source: planned[i].obj.source.clone(),
                        object: planned[i].obj.reference().to_string(),
                        message: "differs from Git (self-heal is off)".into(),
                    })
                    .collect(),
            ));
        }
        if todo.is_empty() && prune.is_empty() {
            return Ok(Applied {
                live: planned
                    .iter()
                    .filter_map(|p| live.remove(&p.obj.reference()))
                    .collect(),
                writes: 0,
                pruned: 0,
            });
        }

        // Dry-run everything that will be written. Objects in a namespace this
        // sync creates, or of a kind a CRD in this sync defines, cannot be
        // checked by the server yet; they were validated locally.
        let new_namespaces: BTreeSet<String> = todo
            .iter()
            .map(|&i| &planned[i])
            .filter(|p| {
                p.obj.kind() == "Namespace"
                    && p.obj.group().is_empty()
                    && !live.contains_key(&p.obj.reference())
            })
            .map(|p| p.obj.name().to_string())
            .collect();
        let dry = PatchParams::apply(MANAGER).force().dry_run();
        let mut rejected = vec![];
        for &i in &todo {
            let p = &planned[i];
            let Some(kind) = &p.kind else { continue };
            if p.obj
                .namespace()
                .is_some_and(|ns| new_namespaces.contains(ns))
            {
                continue;
            }
            if let Err(e) = self
                .api(kind, p.obj.namespace())
                .patch(p.obj.name(), &dry, &Patch::Apply(&p.value))
                .await
            {
                rejected.push(Problem {
                    source: p.obj.source.clone(),
                    object: p.obj.reference().to_string(),
                    message: api_message(&e),
                });
            }
        }
        if !rejected.is_empty() {
            return Err(Error::Rejected(rejected));
        }

        // Apply in order; custom objects wait for their CRD to be established.
        let mut writes = 0;
        let pp = PatchParams::apply(MANAGER).force();
        let mut current_wave = None;
        for &i in &todo {
            let p = &planned[i];
            let r = p.obj.reference();
            // A new wave starts once every object of the earlier waves is healthy.
            if current_wave.is_some_and(|w| w != p.wave)
                || (current_wave.is_none() && planned.iter().any(|q| q.wave < p.wave))
            {
                let earlier: Vec<ObjectRef> = planned
                    .iter()
                    .filter(|q| q.wave < p.wave)
                    .map(|q| q.obj.reference())
                    .collect();
                self.wait_healthy(
                    &earlier,
                    &planned
                        .iter()
                        .map(|q| (q.obj.reference(), q.kind.clone()))
                        .collect(),
                    p.wave,
                )
                .await?;
            }
            current_wave = Some(p.wave);
            let kind = match &p.kind {
                Some(k) => k.clone(),
                None => {
                    let key = (p.obj.group().to_string(), p.obj.kind().to_string());
                    if let Some((_, crd)) = pending_crds.get(&key) {
                        self.wait_established(crd, &p.obj).await?;
                    }
                    self.wait_for_kind(&p.obj).await?
                }
            };
            let applied = self
                .api(&kind, p.obj.namespace())
                .patch(p.obj.name(), &pp, &Patch::Apply(&p.value))
                .await
                .map_err(|e| Error::Apply {
                    object: format!("{r} ({})", p.obj.source),
                    message: api_message(&e),
                })?;
            writes += 1;
            tracing::debug!(object = %r, "applied");
            live.insert(
                r,
                serde_json::to_value(&applied).expect("object serializes"),
            );
        }

        // Prune in reverse order: namespaced objects first, CRDs last.
        prune.sort_by_key(|e| {
            std::cmp::Reverse(rank(&e.kind, &e.reference().group, e.namespace.is_some()))
        });
        let mut pruned = 0;
        let mut kept = vec![];
        for e in prune {
            if self.prune_one(e).await? {
                pruned += 1;
                writes += 1;
            } else {
                kept.push(e.clone());
            }
        }

        state.inventory = planned
            .iter()
            .map(|p| {
                let r = p.obj.reference();
                InventoryEntry {
                    api_version: p.obj.api_version().to_string(),
                    kind: r.kind.clone(),
                    namespace: r.namespace.clone(),
                    uid: live
                        .get(&r)
                        .and_then(|l| l.pointer("/metadata/uid"))
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string(),
                    name: r.name,
                    hash: p.hash.clone(),
                }
            })
            .collect();
        // Kept for their prune annotation: no longer ours to manage.
        let _ = kept;
        Ok(Applied {
            live: planned
                .iter()
                .filter_map(|p| live.remove(&p.obj.reference()))
                .collect(),
            writes,
            pruned,
        })
    }

    /// Waits until every object in `refs` is Healthy; a Degraded one, or the
    /// wave timeout, fails the sync.
    async fn wait_healthy(
        &mut self,
        refs: &[ObjectRef],
        kinds: &HashMap<ObjectRef, Option<Kind>>,
        wave: i64,
    ) -> Result<()> {
        let deadline = Instant::now() + self.wave_timeout;
        loop {
            let mut waiting = vec![];
            for r in refs {
                let Some(Some(kind)) = kinds.get(r) else {
                    continue;
                };
                let live = self
                    .api(kind, r.namespace.as_deref())
                    .get_opt(&r.name)
                    .await
                    .map_err(|e| Error::Api {
                        what: format!("reading {r}"),
                        message: api_message(&e),
                    })?;
                let Some(live) = live else {
                    waiting.push(format!("{r}: not created yet"));
                    continue;
                };
                let v =
                    crate::health::judge(&serde_json::to_value(&live).expect("object serializes"));
                match v.health {
                    ferry_proto::v1::Health::Healthy => {}
                    ferry_proto::v1::Health::Degraded => {
                        return Err(Error::Apply {
                            object: r.to_string(),
                            message: format!("Degraded ({}); wave {wave} not started", v.reason),
                        });
                    }
                    _ => waiting.push(format!("{r}: {}", v.reason)),
                }
            }
            if waiting.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(Error::Apply {
                    object: waiting.join("; "),
                    message: format!(
                        "not healthy within {}s; wave {wave} not started",
                        self.wave_timeout.as_secs()
                    ),
                });
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Waits until the CRD named `crd` is Established (a custom object of
    /// its kind is refused until then).
    async fn wait_established(&mut self, crd: &str, o: &Object) -> Result<()> {
        let api: Api<DynamicObject> = Api::all_with(
            self.client.clone(),
            &ApiResource {
                group: "apiextensions.k8s.io".into(),
                version: "v1".into(),
                api_version: "apiextensions.k8s.io/v1".into(),
                kind: "CustomResourceDefinition".into(),
                plural: "customresourcedefinitions".into(),
            },
        );
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let live = api.get_opt(crd).await.map_err(|e| Error::Api {
                what: format!("reading CustomResourceDefinition {crd}"),
                message: api_message(&e),
            })?;
            let established = live
                .as_ref()
                .and_then(|l| l.data.pointer("/status/conditions"))
                .and_then(Value::as_array)
                .is_some_and(|cs| {
                    cs.iter().any(|c| {
                        c.get("type").and_then(Value::as_str) == Some("Established")
                            && c.get("status").and_then(Value::as_str) == Some("True")
                    })
                });
            if established {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(Error::Apply {
                    object: format!("{} ({})", o.reference(), o.source),
                    message: format!(
                        "CustomResourceDefinition {crd} was not Established within 60s"
                    ),
                });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn wait_for_kind(&mut self, o: &Object) -> Result<Kind> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(k) = self.kind(o.api_version(), o.kind()).await? {
                return Ok(k);
            }
            if Instant::now() > deadline {
                return Err(Error::Apply {
                    object: format!("{} ({})", o.reference(), o.source),
                    message: format!(
                        "kind {} in {} was not served within 60s of applying its CRD",
                        o.kind(),
                        o.api_version()
                    ),
                });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Deletes one inventory entry if it is still ours. Returns whether it went.
    async fn prune_one(&mut self, e: &InventoryEntry) -> Result<bool> {
        let Some(kind) = self.kind(&e.api_version, &e.kind).await? else {
            return Ok(false);
        };
        let api = self.api(&kind, e.namespace.as_deref());
        let r = e.reference();
        let Some(current) = api.get_opt(&e.name).await.map_err(|x| Error::Api {
            what: format!("reading {r} to prune it"),
            message: api_message(&x),
        })?
        else {
            return Ok(false);
        };
        let owner = current
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(OWNER_LABEL));
        let keep = current
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(PRUNE_ANNOTATION))
            .is_some_and(|v| v == "false");
        let same = current.metadata.uid.as_deref() == Some(e.uid.as_str()) || e.uid.is_empty();
        if owner != Some(&self.cluster) || !same || keep {
            tracing::info!(object = %r, "not pruning: no longer ours, replaced, or marked ferry.dev/prune=false");
            return Ok(false);
        }
        match api.delete(&e.name, &DeleteParams::background()).await {
            Ok(_) => {
                tracing::info!(object = %r, "pruned");
                Ok(true)
            }
            Err(x) if is_not_found(&x) => Ok(false),
            Err(x) => Err(Error::Apply {
                object: r.to_string(),
                message: format!("pruning: {}", api_message(&x)),
            }),
        }
    }

    /// The API resources of the kinds in the inventory, for drift watches.
    pub async fn resources(&mut self, inventory: &[InventoryEntry]) -> Vec<ApiResource> {
        let mut out: Vec<ApiResource> = vec![];
        for e in inventory {
            if let Ok(Some(k)) = self.kind(&e.api_version, &e.kind).await
                && !out.contains(&k.resource)
            {
                out.push(k.resource);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contains_ignores_server_defaults() {
        let live = json!({"spec": {"replicas": 2, "strategy": {"type": "RollingUpdate"}, "template": {"spec": {"containers": [{"name": "a", "image": "x", "imagePullPolicy": "IfNotPresent"}]}}}});
        let want = json!({"spec": {"replicas": 2, "template": {"spec": {"containers": [{"name": "a", "image": "x"}]}}}});
        assert!(contains(&live, &want));
        let drifted = json!({"spec": {"replicas": 3, "template": {"spec": {"containers": [{"name": "a", "image": "x"}]}}}});
        assert!(!contains(&drifted, &want));
    }

    #[test]
    fn order_is_crds_namespaces_cluster_then_namespaced() {
        let mut v = [
            ("Deployment", "apps", true),
            ("Namespace", "", false),
            ("ClusterRole", "rbac.authorization.k8s.io", false),
            ("CustomResourceDefinition", "apiextensions.k8s.io", false),
        ];
        v.sort_by_key(|(k, g, n)| rank(k, g, *n));
        let kinds: Vec<_> = v.iter().map(|x| x.0).collect();
        assert_eq!(
            kinds,
            [
                "CustomResourceDefinition",
                "Namespace",
                "ClusterRole",
                "Deployment"
            ]
        );
    }
}
