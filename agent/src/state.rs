//! The agent's durable state, kept in its own cluster (the
//! `ferry-agent-state` ConfigMap in its namespace): the assignment it works
//! on (kept as soon as it arrives), the one it last applied completely, and
//! the inventory of what it applied. A restarted agent reads it and keeps
//! converging without the coordinator, even one killed during its first
//! sync; pruning is driven by the inventory, so the agent only ever deletes
//! what it created. Writes only when the state changed (or was lost): a
//! steady state costs no write.

use crate::render::ObjectRef;
use ferry_proto::{Assignment, Commit, commit_or_empty};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, Patch, PatchParams};
use serde::{Deserialize, Serialize};
use serde_json::json;

/// The ConfigMap (in the agent's namespace) holding assignment and inventory.
pub const STATE_NAME: &str = "ferry-agent-state";

/// An inventory larger than this (as JSON) is kept in chunk ConfigMaps of
/// at most [`CHUNK_BYTES`] each, named after its digest, beside the state
/// ConfigMap that lists them: one object may hold at most 1 MiB of data
/// (etcd refuses requests over 1.5 MiB), and 10,000 entries take ~1.5 MiB.
pub const INLINE_BYTES: usize = 256 << 10;
pub const CHUNK_BYTES: usize = 512 << 10;
/// The label every inventory chunk carries (stale ones are found by it).
const CHUNK_LABEL: &str = "ferry.dev/inventory-of";

/// The field manager of every write the agent makes.
pub const MANAGER: &str = "ferry";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing the state ConfigMap failed.
    #[error("{what} configmap {namespace}/{STATE_NAME}: {source}")]
    Api {
        what: &'static str,
        namespace: String,
        #[source]
        source: kube::Error,
    },
    /// Writing an inventory chunk failed (the state still names the last
    /// complete inventory).
    #[error("writing configmap {namespace}/{name} (inventory chunk): {source}")]
    Chunk {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
}

/// The state as the ConfigMap keeps it: a large inventory moved out to
/// chunks.
#[derive(Serialize, Deserialize)]
struct Stored {
    #[serde(flatten)]
    state: State,
    /// Chunk ConfigMaps holding the inventory, in order (none: inline).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    inventory_chunks: Vec<String>,
    /// sha256 of the whole inventory's JSON, checked when read back.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    inventory_sha256: String,
}

fn sha256_hex(b: &[u8]) -> String {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, b)
        .as_ref()
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

/// Splits an inventory into JSON arrays of at most `max` bytes each.
fn split(inventory: &[InventoryEntry], max: usize) -> Vec<String> {
    let mut chunks = vec![];
    let mut cur: Vec<String> = vec![];
    let mut size = 2;
    for e in inventory {
        let j = serde_json::to_string(e).expect("an entry serializes");
        if !cur.is_empty() && size + j.len() + 1 > max {
            chunks.push(format!("[{}]", cur.join(",")));
            cur.clear();
            size = 2;
        }
        size += j.len() + 1;
        cur.push(j);
    }
    if !cur.is_empty() {
        chunks.push(format!("[{}]", cur.join(",")));
    }
    chunks
}

impl Error {
    /// The API error underneath.
    pub fn source_error(&self) -> &kube::Error {
        match self {
            Error::Api { source, .. } | Error::Chunk { source, .. } => source,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

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

impl From<&InventoryEntry> for ObjectRef {
    fn from(e: &InventoryEntry) -> Self {
        ObjectRef {
            group: e
                .api_version
                .rsplit_once('/')
                .map_or("", |(g, _)| g)
                .to_string(),
            kind: e.kind.clone(),
            namespace: e.namespace.clone(),
            name: e.name.clone(),
        }
    }
}

/// The agent's durable state.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// The assignment the agent is working on, kept when it arrives.
    pub assignment: Option<Assignment>,
    /// The last commit applied completely.
    #[serde(default, with = "commit_or_empty")]
    pub applied_commit: Option<Commit>,
    /// The assignment last applied completely (what the agent enforces
    /// while a newer one cannot be read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied: Option<Assignment>,
    pub inventory: Vec<InventoryEntry>,
}

impl State {
    /// This state with another inventory (the rest copied).
    pub fn with_inventory(&self, inventory: Vec<InventoryEntry>) -> State {
        State {
            assignment: self.assignment.clone(),
            applied_commit: self.applied_commit.clone(),
            applied: self.applied.clone(),
            inventory,
        }
    }

    /// Fills in what older agents did not keep: they wrote the assignment
    /// only once it was applied.
    fn upgraded(mut self) -> Self {
        if self.applied.is_none()
            && let Some(a) = &self.assignment
            && self.applied_commit.as_ref() == Some(&a.commit)
        {
            self.applied = Some(a.clone());
        }
        self
    }
}

/// A state's digest, to tell whether it changed.
fn digest(state: &State) -> String {
    sha256_hex(
        serde_json::to_string(state)
            .expect("a state serializes")
            .as_bytes(),
    )
}

/// Reads and writes [`State`] in the cluster, remembering what it last
/// wrote so an unchanged state costs nothing.
pub struct StateStore {
    client: kube::Client,
    namespace: String,
    /// The digest of the state last read or written (not a copy of it: the
    /// inventory can be large).
    saved: Option<String>,
    /// Set when the ConfigMap is gone: the next save writes whatever it has.
    lost: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl StateStore {
    pub fn new(client: kube::Client, namespace: String) -> Self {
        StateStore {
            client,
            namespace,
            saved: None,
            lost: Default::default(),
        }
    }

    /// Uses another client from now on (the cluster's was rebuilt).
    pub fn set_client(&mut self, client: kube::Client) {
        self.client = client;
    }

    /// Whether the ConfigMap was lost (the next save writes).
    pub fn is_lost(&self) -> bool {
        self.lost.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The flag that says the ConfigMap was lost (the keeper sets it).
    pub fn lost_flag(&self) -> std::sync::Arc<std::sync::atomic::AtomicBool> {
        self.lost.clone()
    }

    fn api(&self) -> Api<ConfigMap> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    fn err(&self, what: &'static str) -> impl FnOnce(kube::Error) -> Error + '_ {
        move |source| Error::Api {
            what,
            namespace: self.namespace.clone(),
            source,
        }
    }

    /// Reads the state the agent kept in the cluster (empty when none; an
    /// unreadable one is logged and treated as none).
    pub async fn load(&mut self) -> Result<State> {
        let cm = self
            .api()
            .get_opt(STATE_NAME)
            .await
            .map_err(self.err("reading"))?;
        let text = cm
            .and_then(|cm| cm.data)
            .and_then(|d| d.get("state.json").cloned());
        let mut state = match text.map(|t| serde_json::from_str::<Stored>(&t)) {
            Some(Ok(s)) => s,
            Some(Err(e)) => {
                tracing::warn!(error = %e, "the kept state does not parse; starting from none");
                self.saved = Some(digest(&State::default()));
                return Ok(State::default());
            }
            None => {
                self.saved = Some(digest(&State::default()));
                return Ok(State::default());
            }
        };
        if !state.inventory_chunks.is_empty() {
            state.state.inventory = self.read_chunks(&state).await?.unwrap_or_else(|| {
                tracing::warn!(
                    chunks = state.inventory_chunks.len(),
                    "the kept inventory's chunks are missing or do not match its digest: starting with none (nothing is pruned until the next complete sync)"
                );
                vec![]
            });
        }
        let state = state.state.upgraded();
        self.saved = Some(digest(&state));
        Ok(state)
    }

    /// The inventory from its chunks; `None` when one is missing or the
    /// whole does not match its digest.
    async fn read_chunks(&self, stored: &Stored) -> Result<Option<Vec<InventoryEntry>>> {
        let mut parts = vec![];
        for name in &stored.inventory_chunks {
            let cm = self
                .api()
                .get_opt(name)
                .await
                .map_err(self.err("reading"))?;
            let Some(text) = cm
                .and_then(|c| c.data)
                .and_then(|mut d| d.remove("inventory.json"))
            else {
                return Ok(None);
            };
            let Ok(entries) = serde_json::from_str::<Vec<InventoryEntry>>(&text) else {
                return Ok(None);
            };
            parts.extend(entries);
        }
        let whole = serde_json::to_string(&parts).expect("entries serialize");
        Ok((sha256_hex(whole.as_bytes()) == stored.inventory_sha256).then_some(parts))
    }

    /// Writes the state, only when it changed. Returns whether it wrote.
    pub async fn save(&mut self, state: &State) -> Result<bool> {
        let lost = self.lost.swap(false, std::sync::atomic::Ordering::SeqCst);
        if self.saved.as_deref() == Some(digest(state).as_str()) && !lost {
            return Ok(false);
        }
        ensure_namespace(&self.client, &self.namespace)
            .await
            .map_err(self.err("writing"))?;
        // A large inventory goes to chunks first, named after its digest;
        // the state names them only once they are all written.
        let whole = serde_json::to_string(&state.inventory).expect("entries serialize");
        let mut stored = Stored {
            state: state.clone(),
            inventory_chunks: vec![],
            inventory_sha256: String::new(),
        };
        if whole.len() > INLINE_BYTES {
            let sha = sha256_hex(whole.as_bytes());
            for (i, chunk) in split(&state.inventory, CHUNK_BYTES).into_iter().enumerate() {
                let name = format!("{STATE_NAME}-inventory-{}-{i}", &sha[..12]);
                let cm = json!({
                    "apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": name, "namespace": self.namespace,
                        "labels": {"app.kubernetes.io/managed-by": "ferry-agent", CHUNK_LABEL: STATE_NAME}},
                    "data": {"inventory.json": chunk},
                });
                self.api()
                    .patch(
                        &name,
                        &PatchParams::apply(MANAGER).force(),
                        &Patch::Apply(&cm),
                    )
                    .await
                    .map_err(|source| Error::Chunk {
                        namespace: self.namespace.clone(),
                        name: name.clone(),
                        source,
                    })?;
                stored.inventory_chunks.push(name);
            }
            stored.inventory_sha256 = sha;
            stored.state.inventory.clear();
        }
        let cm = json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": STATE_NAME, "namespace": self.namespace,
                "labels": {"app.kubernetes.io/managed-by": "ferry-agent"}},
            "data": {"state.json": serde_json::to_string(&stored).expect("state serializes")},
        });
        self.api()
            .patch(
                STATE_NAME,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&cm),
            )
            .await
            .map_err(|e| {
                if lost {
                    self.lost.store(true, std::sync::atomic::Ordering::SeqCst);
                }
                self.err("writing")(e)
            })?;
        self.saved = Some(digest(state));
        self.remove_stale_chunks(&stored.inventory_chunks).await;
        Ok(true)
    }

    /// Deletes inventory chunks the state no longer names (an older
    /// inventory's, or one a crash left half-written). Best effort.
    async fn remove_stale_chunks(&self, keep: &[String]) {
        let lp = kube::api::ListParams::default().labels(&format!("{CHUNK_LABEL}={STATE_NAME}"));
        let Ok(list) = self.api().list_metadata(&lp).await else {
            return;
        };
        for cm in list.items {
            let Some(name) = cm.metadata.name else {
                continue;
            };
            if !keep.contains(&name)
                && let Err(e) = self.api().delete(&name, &Default::default()).await
            {
                tracing::debug!(chunk = %name, error = %e, "could not delete a stale inventory chunk");
            }
        }
    }
}

/// Creates the agent's namespace if it is missing. An agent that may not
/// read namespaces (a namespaced agent) takes it as there: whoever
/// installed it made it.
pub async fn ensure_namespace(client: &kube::Client, ns: &str) -> kube::Result<()> {
    let api: Api<Namespace> = Api::all(client.clone());
    let found = match api.get_opt(ns).await {
        Err(kube::Error::Api(s)) if s.code == 403 => return Ok(()),
        other => other?,
    };
    if found.is_none() {
        let body = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
        api.patch(ns, &PatchParams::apply(MANAGER), &Patch::Apply(&body))
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inventories_split_into_bounded_chunks_in_order() {
        let entries: Vec<InventoryEntry> = (0..1000)
            .map(|i| InventoryEntry {
                api_version: "v1".into(),
                kind: "ConfigMap".into(),
                namespace: Some("ns".into()),
                name: format!("cm-{i:05}"),
                uid: format!("{i:036}"),
                hash: "h".repeat(32),
            })
            .collect();
        let chunks = split(&entries, 10_000);
        assert!(chunks.len() > 10);
        assert!(chunks.iter().all(|c| c.len() <= 10_000));
        let back: Vec<InventoryEntry> = chunks
            .iter()
            .flat_map(|c| serde_json::from_str::<Vec<InventoryEntry>>(c).unwrap())
            .collect();
        assert_eq!(back, entries);
        assert_eq!(split(&[], 10).len(), 0);
    }

    #[test]
    fn reads_what_older_agents_kept() {
        let c = "c".repeat(40);
        let old = format!(
            r#"{{"assignment":{{"repo_url":"git://h/r","commit":"{c}","path":"p","generation":1,"allow_mass_prune":false}},"applied_commit":"{c}","inventory":[{{"api_version":"v1","kind":"ConfigMap","namespace":"ns","name":"x","uid":"u","hash":"h"}}]}}"#
        );
        let s: State = serde_json::from_str(&old).unwrap();
        assert_eq!(
            s.applied_commit.as_ref().map(Commit::as_str),
            Some(c.as_str())
        );
        assert_eq!(serde_json::to_string(&s).unwrap(), old);
        let empty: State =
            serde_json::from_str(r#"{"assignment":null,"applied_commit":"","inventory":[]}"#)
                .unwrap();
        assert_eq!(empty, State::default());
    }
}
