//! Applying a rendered directory to the cluster with server-side apply, in
//! named steps: resolve each kind (discovery), plan (pure, `plan`), read
//! what is live, diff (pure), dry-run every write, apply wave by wave,
//! prune. Any rejection in the dry-run means nothing is written. Objects
//! already as Git says cost no write. Pruning deletes only what is in the
//! inventory and still carries this cluster's owner label, never more than
//! a safe share of it in one sync: never anything the agent did not create.
//! Every wait inside a sync ends when the agent is told to stop.

use crate::health::Verdict;
use crate::plan::{self, Diff, MassPrune, OWNER_LABEL, PRUNE_ANNOTATION, Planned, Scope, Seen};
use crate::render::{Object, ObjectRef, Problem};
use crate::state::{InventoryEntry, MANAGER};
use kube::api::{Api, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::discovery::ApiResource;
use serde_json::Value;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Objects per page when the agent lists what it manages.
const LIST_PAGE: u32 = 500;

/// How long a CRD in the set may take to be Established and served.
const CRD_WAIT: Duration = Duration::from_secs(60);

/// Why a sync did not complete.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Objects failed validation or the dry-run; nothing was written.
    #[error("{} object(s) rejected; nothing was applied", .0.len())]
    Rejected(Vec<Problem>),
    /// A write failed part-way (after a clean dry-run).
    #[error("applying {object}: {}", api_text(source))]
    Write {
        object: String,
        #[source]
        source: kube::Error,
    },
    /// A wave's objects did not become healthy, or a CRD was never served.
    #[error("{object}: {message}")]
    NotReady { object: String, message: String },
    /// Objects differ from Git and self-heal is off: nothing was written.
    #[error("{} object(s) drifted from Git; self-heal is off", .0.len())]
    Drifted(Vec<Problem>),
    /// The prune safety valve held.
    #[error(transparent)]
    MassPrune(#[from] MassPrune),
    /// The Kubernetes API failed.
    #[error("{what}: {}", api_text(source))]
    Api {
        what: String,
        #[source]
        source: kube::Error,
    },
    /// The agent is stopping; the sync stopped between steps.
    #[error("interrupted: the agent is stopping")]
    Interrupted,
}

impl Error {
    /// The Kubernetes client's error behind this one, if any.
    pub fn kube(&self) -> Option<&kube::Error> {
        match self {
            Error::Api { source, .. } | Error::Write { source, .. } => Some(source),
            _ => None,
        }
    }

    /// Whether the API server may accept the same sync later without any
    /// change in Git (overload, unavailability, a dropped connection).
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Api { source, .. } | Error::Write { source, .. } => match source {
                kube::Error::Api(s) => s.code == 429 || s.code >= 500,
                _ => true,
            },
            _ => false,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What the API server said, for people: its message and reason.
pub fn api_text(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => format!("{} ({})", s.message, s.reason),
        other => other.to_string(),
    }
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

fn api(what: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
    let what = what.into();
    move |source| Error::Api { what, source }
}

/// The outcome of a sync.
#[derive(Debug, Default)]
pub struct Applied {
    /// The health of each object now applied, in apply order.
    pub health: Vec<(ObjectRef, Verdict)>,
    /// The inventory to keep; `None`: the one the sync was given.
    pub inventory: Option<Vec<InventoryEntry>>,
    pub writes: usize,
    pub pruned: usize,
}

/// What a sync would do (see [`Applier::preview`]).
#[derive(Debug, Default)]
pub struct Previewed {
    pub creates: Vec<String>,
    /// (object, [(field path, before, after)])
    pub updates: Vec<(String, Vec<crate::plan::FieldChange>)>,
    pub prunes: Vec<String>,
    pub unchanged: usize,
    pub prune_refused: Option<String>,
    pub rejected: Vec<Problem>,
}

/// A directory's objects as this applier will apply them, made once per
/// commit and kept while what the cluster serves stays as it was.
#[derive(Debug)]
pub struct Plan {
    pub objects: Vec<Planned>,
    /// The CRDs of the set: (group, kind) -> (namespaced, the CRD's name).
    crds: HashMap<(String, String), (bool, String)>,
    /// The applier's discovery generation it was made under.
    generation: u64,
}

impl Plan {
    /// The objects planned, decoded again (to plan them anew).
    fn rendered(&self) -> Vec<Object> {
        self.objects.iter().map(Planned::object).collect()
    }
}

/// One page of a LIST, its items left as text until they are needed.
#[derive(serde::Deserialize)]
struct Page<'a> {
    #[serde(default)]
    metadata: PageMeta,
    #[serde(default, borrow)]
    items: Vec<&'a serde_json::value::RawValue>,
}

/// What is read of every listed object: which one, and which version of it.
#[derive(serde::Deserialize)]
struct Head<'a> {
    #[serde(borrow)]
    metadata: HeadMeta<'a>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct HeadMeta<'a> {
    #[serde(borrow)]
    name: std::borrow::Cow<'a, str>,
    #[serde(default, borrow)]
    namespace: Option<std::borrow::Cow<'a, str>>,
    #[serde(default, borrow)]
    uid: std::borrow::Cow<'a, str>,
    #[serde(default, borrow)]
    resource_version: std::borrow::Cow<'a, str>,
}

/// What the last pass concluded of an object at one version of it, for
/// one planned content: a pass that finds the same version (and the same
/// plan) concludes the same without decoding the object again.
#[derive(Debug)]
struct Known {
    resource_version: String,
    hash: String,
    seen: Seen,
}

/// A listed object as JSON, without `metadata.managedFields`: often the
/// largest part of an object, never compared, and skipped while parsing
/// instead of decoded and dropped.
struct Listed(Value);

/// Decodes a JSON object, skipping the key `skip` and, under the key
/// `nested`, `managedFields`.
struct Skipping {
    skip: Option<&'static str>,
    nested: Option<&'static str>,
}

impl<'de> serde::de::DeserializeSeed<'de> for Skipping {
    type Value = Value;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Skipping {
    type Value = Value;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut m: A) -> Result<Value, A::Error> {
        let mut out = serde_json::Map::new();
        while let Some(k) = m.next_key::<String>()? {
            if Some(k.as_str()) == self.skip {
                m.next_value::<serde::de::IgnoredAny>()?;
                continue;
            }
            let v = if Some(k.as_str()) == self.nested {
                m.next_value_seed(Skipping {
                    skip: Some("managedFields"),
                    nested: None,
                })?
            } else {
                m.next_value::<Value>()?
            };
            out.insert(k, v);
        }
        Ok(Value::Object(out))
    }
}

impl<'de> serde::Deserialize<'de> for Listed {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        serde::de::DeserializeSeed::deserialize(
            Skipping {
                skip: None,
                nested: Some("metadata"),
            },
            d,
        )
        .map(Listed)
    }
}

#[derive(Default, serde::Deserialize)]
struct PageMeta {
    #[serde(rename = "continue", default)]
    continue_: Option<String>,
}

/// What a sync keeps of a live object: its uid, whether it holds what `want`
/// sets, and its health.
fn seen(live: &Value, want: &Planned) -> Seen {
    Seen {
        uid: crate::health::at(live, "/metadata/uid")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string(),
        matches: plan::unchanged_text(live, want.body.get()),
        health: crate::health::judge(live),
    }
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
    /// The only namespaces the agent may read and write (`--namespaces`);
    /// empty: the whole cluster.
    pub namespaces: Vec<String>,
    kinds: HashMap<(String, String), Kind>,
    /// The largest share of the inventory one sync may prune.
    pub prune_share_percent: u32,
    /// How long one wave may take to become healthy before the sync fails.
    pub wave_timeout: Duration,
    /// Moves whenever what discovery said is forgotten (plans made before
    /// are made again).
    generation: u64,
    /// What the last pass saw of each object, by the version it saw, by
    /// its place in that pass's plan (checked against the planned content).
    known: Vec<Option<Known>>,
}

/// Sleeps `d`, unless the agent is told to stop first.
async fn pause(d: Duration, stop: &CancellationToken) -> Result<()> {
    tokio::select! {
        _ = stop.cancelled() => Err(Error::Interrupted),
        _ = tokio::time::sleep(d) => Ok(()),
    }
}

impl Applier {
    pub fn new(client: kube::Client, cluster: String) -> Self {
        Applier {
            client,
            cluster,
            namespaces: vec![],
            kinds: HashMap::new(),
            prune_share_percent: 50,
            wave_timeout: Duration::from_secs(300),
            generation: 0,
            known: Vec::new(),
        }
    }

    pub fn client(&self) -> &kube::Client {
        &self.client
    }

    /// Uses another client from now on (the cluster's was rebuilt).
    pub fn set_client(&mut self, client: kube::Client) {
        self.client = client;
        self.forget_kinds();
    }

    /// Forgets what discovery said: after a failure the cluster may serve
    /// other kinds (a rebuilt cluster lost its CRDs).
    pub fn forget_kinds(&mut self) {
        self.kinds.clear();
        self.known.clear();
        self.generation += 1;
    }

    /// `plan` made anew if what it was made of may have changed: discovery
    /// was forgotten since, or some kind was not served yet (its CRD in the
    /// set is applied by now). Otherwise `None`: it stands.
    pub async fn refresh(&mut self, plan: &Plan) -> Option<Result<Plan>> {
        if plan.generation == self.generation && plan.objects.iter().all(|p| p.served) {
            return None;
        }
        Some(self.plan(&plan.rendered()).await)
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
            Err(e) => Err(api(format!("discovering {kind} in {api_version}"))(e)),
        }
    }

    fn api(&self, kind: &Kind, namespace: Option<&str>) -> Api<DynamicObject> {
        match (kind.namespaced, namespace) {
            (true, Some(ns)) => Api::namespaced_with(self.client.clone(), ns, &kind.resource),
            _ => Api::all_with(self.client.clone(), &kind.resource),
        }
    }

    /// Brings the cluster to `objects`, pruning what left Git since
    /// `inventory`. On any rejection nothing is written. With `detect_only`
    /// drift is reported, not repaired.
    pub async fn sync(
        &mut self,
        plan: &Plan,
        inventory: &[InventoryEntry],
        allow_mass_prune: bool,
        detect_only: bool,
        stop: &CancellationToken,
    ) -> Result<Applied> {
        // Step 1 (planning, with each kind resolved) is done: `plan`.
        let (planned, crds) = (&plan.objects, &plan.crds);

        // Step 2: read what is live, then diff.
        let (mut live, _) = self.read_live(planned, false).await?;
        let diff = plan::diff(
            planned,
            &live,
            inventory,
            allow_mass_prune,
            self.prune_share_percent,
        )?;
        if detect_only && !diff.writes.is_empty() {
            return Err(Error::Drifted(
                diff.writes
                    .iter()
                    .map(|&i| Problem {
                        source: planned[i].source.clone(),
                        object: planned[i].reference.to_string(),
                        message: "differs from Git (self-heal is off)".into(),
                    })
                    .collect(),
            ));
        }
        let (mut writes, mut pruned) = (0, 0);
        if !diff.is_empty() {
            // Steps 3 to 5: dry-run, apply, prune.
            self.dry_run(planned, &diff, &live).await?;
            writes = self
                .apply_waves(planned, &diff, crds, &mut live, stop)
                .await?;
            pruned = self.prune(&diff.prune).await?;
        }
        Ok(Applied {
            inventory: plan::inventory(planned, &live, inventory),
            health: planned
                .iter()
                .zip(live)
                .filter_map(|(p, l)| Some((p.reference.clone(), l?.health)))
                .collect(),
            writes: writes + pruned,
            pruned,
        })
    }

    /// Settles every object (namespace, owner label, wave, order), each
    /// kind resolved by discovery or by a CRD of the same set.
    pub async fn plan(&mut self, objects: &[Object]) -> Result<Plan> {
        let crds = plan::crds_in(objects);
        let mut scopes = HashMap::new();
        for o in objects {
            let key = (o.api_version().to_string(), o.kind().to_string());
            if scopes.contains_key(&key) {
                continue;
            }
            let scope = match self.kind(o.api_version(), o.kind()).await? {
                Some(k) => Scope::Served {
                    namespaced: k.namespaced,
                },
                None => match crds.get(&(o.group().to_string(), o.kind().to_string())) {
                    Some((namespaced, _)) => Scope::FromCrd {
                        namespaced: *namespaced,
                    },
                    None => Scope::Unknown,
                },
            };
            scopes.insert(key, scope);
        }
        let planned = plan::plan(
            objects,
            |o| scopes[&(o.api_version().to_string(), o.kind().to_string())],
            &self.cluster,
            &self.namespaces,
        )
        .map_err(Error::Rejected)?;
        Ok(Plan {
            objects: planned,
            crds,
            generation: self.generation,
        })
    }

    /// What syncing to `objects` would change, asked of the API server
    /// (server-side dry-runs) and never written: creations, per-field
    /// changes (against what the server would make of the object, so its
    /// defaults and other managers' fields do not show), prunes, the
    /// prune valve's verdict and the server's rejections.
    pub async fn preview(
        &mut self,
        objects: &[Object],
        inventory: &[InventoryEntry],
        allow_mass_prune: bool,
    ) -> Result<Previewed> {
        let planned = match self.plan(objects).await {
            Ok(p) => p.objects,
            Err(Error::Rejected(problems)) => {
                return Ok(Previewed {
                    rejected: problems,
                    ..Previewed::default()
                });
            }
            Err(e) => return Err(e),
        };
        let (live, before) = self.read_live(&planned, true).await?;
        let everything = plan::diff(&planned, &live, inventory, true, self.prune_share_percent)?;
        let prune_refused = plan::diff(
            &planned,
            &live,
            inventory,
            allow_mass_prune,
            self.prune_share_percent,
        )
        .err()
        .map(|e| e.to_string());
        let dry = PatchParams::apply(MANAGER)
            .force()
            .dry_run()
            .validation_strict();
        let mut out = Previewed {
            unchanged: planned.len() - everything.writes.len(),
            prune_refused,
            ..Previewed::default()
        };
        for &i in &everything.writes {
            let p = &planned[i];
            let before = before.get(&p.reference);
            let answer = match (p.served, self.kind(p.api_version(), p.kind()).await?) {
                (true, Some(kind)) => Some(
                    self.api(&kind, p.namespace())
                        .patch(p.name(), &dry, &Patch::Apply(&p.body))
                        .await,
                ),
                // A kind its CRD in this set will define: nothing to ask yet.
                _ => None,
            };
            match (answer, before) {
                (Some(Err(e)), _) if !matches!(&e, kube::Error::Api(s) if s.code == 404) => {
                    out.rejected.push(Problem {
                        source: p.source.clone(),
                        object: p.reference.to_string(),
                        message: api_text(&e),
                    })
                }
                (_, None) => out.creates.push(p.reference.to_string()),
                (Some(Ok(after)), Some(before)) => {
                    let after = serde_json::to_value(&after).expect("object serializes");
                    out.updates
                        .push((p.reference.to_string(), plan::field_changes(before, &after)));
                }
                (_, Some(_)) => out.updates.push((p.reference.to_string(), vec![])),
            }
        }
        out.prunes = everything
            .prune
            .iter()
            .map(|e| ObjectRef::from(e).to_string())
            .collect();
        Ok(out)
    }

    /// What is live of the planned objects: one LIST per kind (by this
    /// cluster's owner label, a page at a time) instead of a GET per
    /// object; Namespaces, few and often pre-existing, are read by name.
    /// Each object is compared and judged as its page arrives and only what
    /// was seen of it is kept, so a sync holds one page of objects at a
    /// time, never the cluster's copy of them all. With `keep`, the objects
    /// themselves are kept too (a preview shows their fields).
    async fn read_live(
        &mut self,
        planned: &[Planned],
        keep: bool,
    ) -> Result<(Vec<Option<Seen>>, HashMap<ObjectRef, Value>)> {
        let index: HashMap<plan::Key, usize> = planned
            .iter()
            .enumerate()
            .map(|(i, p)| (p.reference.key(), i))
            .collect();
        let mut live: Vec<Option<Seen>> = vec![None; planned.len()];
        let mut kept: HashMap<ObjectRef, Value> = HashMap::new();
        let mut known: Vec<Option<Known>> = Vec::new();
        known.resize_with(planned.len(), || None);
        let mut kinds_listed: Vec<ApiResource> = vec![];
        for (at, p) in planned.iter().enumerate().filter(|(_, p)| p.served) {
            let Some(kind) = self.kind(p.api_version(), p.kind()).await? else {
                continue;
            };
            if p.kind() == "Namespace" && p.group().is_empty() {
                if let Some(ns) = self
                    .api(&kind, None)
                    .get_opt(p.name())
                    .await
                    .map_err(api(format!("reading {}", p.reference)))?
                {
                    let v = serde_json::to_value(&ns).expect("object serializes");
                    live[at] = Some(seen(&v, p));
                    if keep {
                        kept.insert(p.reference.clone(), v);
                    }
                }
                continue;
            }
            if kinds_listed.contains(&kind.resource) {
                continue;
            }
            kinds_listed.push(kind.resource.clone());
            // A namespaced agent lists in its namespaces, one by one.
            let paths: Vec<String> = if self.namespaces.is_empty() {
                vec![<DynamicObject as kube::Resource>::url_path(
                    &kind.resource,
                    None,
                )]
            } else {
                self.namespaces
                    .iter()
                    .map(|ns| <DynamicObject as kube::Resource>::url_path(&kind.resource, Some(ns)))
                    .collect()
            };
            let what = || {
                format!(
                    "listing {} in {}",
                    kind.resource.kind, kind.resource.api_version
                )
            };
            for path in paths {
                let mut lp = kube::api::ListParams::default()
                    .labels(&format!("{OWNER_LABEL}={}", self.cluster))
                    .limit(LIST_PAGE);
                loop {
                    let request = kube::core::Request::new(&path)
                        .list(&lp)
                        .map_err(|e| api(what())(kube::Error::BuildRequest(e)))?;
                    let text = self
                        .client
                        .request_text(request)
                        .await
                        .map_err(api(what()))?;
                    let bad = |e| api(what())(kube::Error::SerdeError(e));
                    let page: Page = serde_json::from_str(&text).map_err(bad)?;
                    for item in page.items {
                        let Head { metadata: m } = serde_json::from_str(item.get()).map_err(bad)?;
                        let key = (
                            kind.resource.group.as_str(),
                            kind.resource.kind.as_str(),
                            m.namespace.as_deref(),
                            &*m.name,
                        );
                        let Some(&i) = index.get(&key) else {
                            continue;
                        };
                        let p = &planned[i];
                        // The same version of the object as last pass, for
                        // the same planned content: the same conclusion.
                        let same = self.known.get(i).and_then(Option::as_ref).filter(|k| {
                            !keep
                                && k.resource_version == m.resource_version
                                && k.seen.uid == m.uid
                                && k.hash == p.hash
                        });
                        let s = match same {
                            Some(k) => k.seen.clone(),
                            None => {
                                let Listed(mut v) =
                                    serde_json::from_str(item.get()).map_err(bad)?;
                                // List items may come without their type.
                                v["apiVersion"] = kind.resource.api_version.clone().into();
                                v["kind"] = kind.resource.kind.clone().into();
                                let s = seen(&v, p);
                                if keep {
                                    kept.insert(p.reference.clone(), v);
                                }
                                s
                            }
                        };
                        known[i] = Some(Known {
                            resource_version: m.resource_version.into(),
                            hash: p.hash.clone(),
                            seen: s.clone(),
                        });
                        live[i] = Some(s);
                    }
                    match page.metadata.continue_.filter(|c| !c.is_empty()) {
                        Some(c) => lp = lp.continue_token(&c),
                        None => break,
                    }
                }
            }
        }
        if !keep {
            self.known = known;
        }
        Ok((live, kept))
    }

    /// Dry-runs everything that will be written. Objects in a namespace this
    /// sync creates, or of a kind a CRD in this sync defines, cannot be
    /// checked by the server yet; they were validated locally.
    async fn dry_run(
        &mut self,
        planned: &[Planned],
        diff: &Diff,
        live: &[Option<Seen>],
    ) -> Result<()> {
        let new_namespaces: std::collections::BTreeSet<&str> = diff
            .writes
            .iter()
            .filter(|&&i| live[i].is_none())
            .map(|&i| &planned[i])
            .filter(|p| p.kind() == "Namespace" && p.group().is_empty())
            .map(|p| p.name())
            .collect();
        // Strict: a field the type does not have is a named rejection, as with
        // `kubectl apply`, not a field the server drops (and the agent would
        // re-apply every pass).
        let dry = PatchParams::apply(MANAGER)
            .force()
            .dry_run()
            .validation_strict();
        let mut rejected = vec![];
        for &i in &diff.writes {
            let p = &planned[i];
            if !p.served || p.namespace().is_some_and(|ns| new_namespaces.contains(ns)) {
                continue;
            }
            let Some(kind) = self.kind(p.api_version(), p.kind()).await? else {
                continue;
            };
            if let Err(e) = self
                .api(&kind, p.namespace())
                .patch(p.name(), &dry, &Patch::Apply(&p.body))
                .await
            {
                rejected.push(Problem {
                    source: p.source.clone(),
                    object: p.reference.to_string(),
                    message: api_text(&e),
                });
            }
        }
        if rejected.is_empty() {
            Ok(())
        } else {
            Err(Error::Rejected(rejected))
        }
    }

    /// Applies the writes in order; a wave starts once every object of the
    /// earlier waves is healthy; custom objects wait for their CRD to be
    /// Established. Returns the number of writes.
    async fn apply_waves(
        &mut self,
        planned: &[Planned],
        diff: &Diff,
        crds: &HashMap<(String, String), (bool, String)>,
        live: &mut [Option<Seen>],
        stop: &CancellationToken,
    ) -> Result<usize> {
        let mut writes = 0;
        let pp = PatchParams::apply(MANAGER).force().validation_strict();
        let mut current_wave = None;
        for &i in &diff.writes {
            let p = &planned[i];
            if stop.is_cancelled() {
                return Err(Error::Interrupted);
            }
            if current_wave.is_some_and(|w| w != p.wave)
                || (current_wave.is_none() && planned.iter().any(|q| q.wave < p.wave))
            {
                let earlier: Vec<&Planned> = planned.iter().filter(|q| q.wave < p.wave).collect();
                self.wait_healthy(&earlier, p.wave, stop).await?;
            }
            current_wave = Some(p.wave);
            let kind = match self.kind(p.api_version(), p.kind()).await? {
                Some(k) => k,
                None => {
                    let key = (p.group().to_string(), p.kind().to_string());
                    if let Some((_, crd)) = crds.get(&key) {
                        self.wait_established(crd, p, stop).await?;
                    }
                    self.wait_for_kind(p, stop).await?
                }
            };
            let applied = self
                .api(&kind, p.namespace())
                .patch(p.name(), &pp, &Patch::Apply(&p.body))
                .await
                .map_err(|source| Error::Write {
                    object: format!("{} ({})", p.reference, p.source),
                    source,
                })?;
            writes += 1;
            tracing::debug!(object = %p.reference, "applied");
            let applied = serde_json::to_value(&applied).expect("object serializes");
            live[i] = Some(seen(&applied, p));
        }
        Ok(writes)
    }

    /// Waits until every object in `objects` is Healthy; a Degraded one, or
    /// the wave timeout, fails the sync.
    async fn wait_healthy(
        &mut self,
        objects: &[&Planned],
        wave: i64,
        stop: &CancellationToken,
    ) -> Result<()> {
        let deadline = Instant::now() + self.wave_timeout;
        loop {
            let mut waiting = vec![];
            for p in objects {
                let r = &p.reference;
                let Some(kind) = self.kind(p.api_version(), p.kind()).await? else {
                    continue;
                };
                let found = self
                    .api(&kind, r.namespace.as_deref())
                    .get_opt(&r.name)
                    .await
                    .map_err(api(format!("reading {r}")))?;
                let Some(found) = found else {
                    waiting.push(format!("{r}: not created yet"));
                    continue;
                };
                let v =
                    crate::health::judge(&serde_json::to_value(&found).expect("object serializes"));
                match v.health {
                    ferry_proto::v1::Health::Healthy => {}
                    ferry_proto::v1::Health::Degraded => {
                        return Err(Error::NotReady {
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
                return Err(Error::NotReady {
                    object: waiting.join("; "),
                    message: format!(
                        "not healthy within {}s; wave {wave} not started",
                        self.wave_timeout.as_secs()
                    ),
                });
            }
            pause(Duration::from_millis(250), stop).await?;
        }
    }

    /// Waits until the CRD named `crd` is Established (a custom object of
    /// its kind is refused until then).
    async fn wait_established(
        &mut self,
        crd: &str,
        o: &Planned,
        stop: &CancellationToken,
    ) -> Result<()> {
        let crds: Api<DynamicObject> = Api::all_with(
            self.client.clone(),
            &ApiResource {
                group: "apiextensions.k8s.io".into(),
                version: "v1".into(),
                api_version: "apiextensions.k8s.io/v1".into(),
                kind: "CustomResourceDefinition".into(),
                plural: "customresourcedefinitions".into(),
            },
        );
        let deadline = Instant::now() + CRD_WAIT;
        loop {
            let found = crds
                .get_opt(crd)
                .await
                .map_err(api(format!("reading CustomResourceDefinition {crd}")))?;
            let established = found
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
                return Err(Error::NotReady {
                    object: format!("{} ({})", o.reference, o.source),
                    message: format!(
                        "CustomResourceDefinition {crd} was not Established within {}s",
                        CRD_WAIT.as_secs()
                    ),
                });
            }
            pause(Duration::from_millis(200), stop).await?;
        }
    }

    async fn wait_for_kind(&mut self, o: &Planned, stop: &CancellationToken) -> Result<Kind> {
        let deadline = Instant::now() + CRD_WAIT;
        loop {
            if let Some(k) = self.kind(o.api_version(), o.kind()).await? {
                return Ok(k);
            }
            if Instant::now() > deadline {
                return Err(Error::NotReady {
                    object: format!("{} ({})", o.reference, o.source),
                    message: format!(
                        "kind {} in {} was not served within {}s of applying its CRD",
                        o.kind(),
                        o.api_version(),
                        CRD_WAIT.as_secs()
                    ),
                });
            }
            pause(Duration::from_millis(200), stop).await?;
        }
    }

    /// Deletes what left Git, if still ours; returns how many went.
    async fn prune(&mut self, entries: &[InventoryEntry]) -> Result<usize> {
        let mut pruned = 0;
        for e in entries {
            if self.prune_one(e).await? {
                pruned += 1;
            }
        }
        Ok(pruned)
    }

    /// Deletes one inventory entry if it is still ours. Returns whether it went.
    async fn prune_one(&mut self, e: &InventoryEntry) -> Result<bool> {
        let Some(kind) = self.kind(&e.api_version, &e.kind).await? else {
            return Ok(false);
        };
        let objects = self.api(&kind, e.namespace.as_deref());
        let r = ObjectRef::from(e);
        let Some(current) = objects
            .get_opt(&e.name)
            .await
            .map_err(api(format!("reading {r} to prune it")))?
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
        match objects.delete(&e.name, &DeleteParams::background()).await {
            Ok(_) => {
                tracing::info!(object = %r, "pruned");
                Ok(true)
            }
            Err(x) if is_not_found(&x) => Ok(false),
            Err(source) => Err(Error::Write {
                object: format!("{r} (pruning)"),
                source,
            }),
        }
    }

    /// The API resources of the kinds in the inventory, for drift watches.
    /// `false` with them: some kind could not be resolved now (ask again).
    pub async fn resources(&mut self, inventory: &[InventoryEntry]) -> (Vec<ApiResource>, bool) {
        let mut out: Vec<ApiResource> = vec![];
        let mut complete = true;
        for e in inventory {
            match self.kind(&e.api_version, &e.kind).await {
                Ok(Some(k)) if !out.contains(&k.resource) => out.push(k.resource),
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => complete = false,
            }
        }
        (out, complete)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn listed_objects_come_without_managed_fields_only() {
        let page = json!({"metadata": {"continue": "c1"}, "items": [{
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "a", "uid": "u1", "resourceVersion": "7", "labels": {"managedFields": "kept"},
                "managedFields": [{"manager": "ferry", "fieldsV1": {"f:data": {"f:k": {}}}}]},
            "data": {"k": "v", "managedFields": "kept"},
        }]})
        .to_string();
        let page: Page = serde_json::from_str(&page).unwrap();
        assert_eq!(page.metadata.continue_.as_deref(), Some("c1"));
        let head: Head = serde_json::from_str(page.items[0].get()).unwrap();
        assert_eq!(
            (
                &*head.metadata.name,
                head.metadata.namespace,
                &*head.metadata.uid,
                &*head.metadata.resource_version
            ),
            ("a", None, "u1", "7")
        );
        let Listed(v) = serde_json::from_str(page.items[0].get()).unwrap();
        assert_eq!(
            v,
            json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "a", "uid": "u1", "resourceVersion": "7", "labels": {"managedFields": "kept"}},
                "data": {"k": "v", "managedFields": "kept"}})
        );
        assert!(serde_json::from_str::<Listed>("[3]").is_err());
    }
}
