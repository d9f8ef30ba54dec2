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

/// Reads and writes [`State`] in the cluster, remembering what it last
/// wrote so an unchanged state costs nothing.
pub struct StateStore {
    client: kube::Client,
    namespace: String,
    saved: Option<State>,
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
        let state = match text.map(|t| serde_json::from_str::<State>(&t)) {
            Some(Ok(s)) => s.upgraded(),
            Some(Err(e)) => {
                tracing::warn!(error = %e, "the kept state does not parse; starting from none");
                State::default()
            }
            None => State::default(),
        };
        self.saved = Some(state.clone());
        Ok(state)
    }

    /// Writes the state, only when it changed. Returns whether it wrote.
    pub async fn save(&mut self, state: &State) -> Result<bool> {
        let lost = self.lost.swap(false, std::sync::atomic::Ordering::SeqCst);
        if self.saved.as_ref() == Some(state) && !lost {
            return Ok(false);
        }
        ensure_namespace(&self.client, &self.namespace)
            .await
            .map_err(self.err("writing"))?;
        let cm = json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": STATE_NAME, "namespace": self.namespace,
                "labels": {"app.kubernetes.io/managed-by": "ferry-agent"}},
            "data": {"state.json": serde_json::to_string(state).expect("state serializes")},
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
        self.saved = Some(state.clone());
        Ok(true)
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
