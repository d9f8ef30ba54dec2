//! The audit records: pin changes (the ledger) and rollout events, and
//! their wire forms.

use crate::domain::Commit;
use crate::v1;

/// One pin change. The ledger is append-only.
#[derive(Clone, Debug, PartialEq)]
pub struct LedgerEntry {
    pub id: i64,
    pub at_ms: i64,
    pub actor: String,
    pub cluster: String,
    /// The pin before (`None`: the cluster had none).
    pub from: Option<Commit>,
    pub to: Commit,
    pub reason: String,
    /// The rollout that made it (`None`: a manual pin).
    pub rollout: Option<String>,
    /// Who signed `to`, as the coordinator's verify keys name the key
    /// (`None`: not verified).
    pub signer: Option<String>,
}

impl From<&LedgerEntry> for v1::LedgerEntry {
    fn from(e: &LedgerEntry) -> Self {
        v1::LedgerEntry {
            id: e.id,
            at_unix_ms: e.at_ms,
            actor: e.actor.clone(),
            cluster: e.cluster.clone(),
            from_commit: e.from.as_ref().map(Commit::to_string).unwrap_or_default(),
            to_commit: e.to.to_string(),
            reason: e.reason.clone(),
            rollout: e.rollout.clone().unwrap_or_default(),
            signer: e.signer.clone().unwrap_or_default(),
        }
    }
}

/// Something that happened in a rollout.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    pub id: i64,
    pub at_ms: i64,
    pub rollout: String,
    /// The cluster it is about ("" for the rollout as a whole).
    pub cluster: String,
    pub message: String,
    pub actor: String,
}

impl From<&Event> for v1::Event {
    fn from(e: &Event) -> Self {
        v1::Event {
            id: e.id,
            at_unix_ms: e.at_ms,
            rollout: e.rollout.clone(),
            cluster: e.cluster.clone(),
            message: e.message.clone(),
            actor: e.actor.clone(),
        }
    }
}
