//! Keeps the agent's own objects in its cluster: the identity Secret and
//! the state ConfigMap. A cluster rebuilt from scratch (or an operator's
//! `kubectl delete`) loses them; without the Secret the agent's next
//! restart could not connect, without the ConfigMap it could not resume or
//! prune. The keeper watches both by name and writes them back from what
//! the agent holds: the Secret at once, the state at the loop's next pass.

use crate::drift::relisting;
use crate::identity::{self, Identity};
use crate::state::STATE_NAME;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::Api;
use kube::runtime::watcher;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

/// What one watch saw of its object since its last (re)list, and whether
/// it ever existed (on a fresh cluster, not finding it yet is no loss).
#[derive(Default)]
struct Seen {
    listing: bool,
    found: bool,
    ever: bool,
}

impl Seen {
    /// Whether this event says the object is gone.
    fn gone<K>(&mut self, ev: &watcher::Event<K>) -> bool {
        match ev {
            watcher::Event::Init => {
                self.listing = true;
                self.found = false;
                false
            }
            watcher::Event::InitApply(_) => {
                self.found = true;
                self.ever = true;
                false
            }
            watcher::Event::InitDone => {
                self.listing = false;
                self.ever && !self.found
            }
            watcher::Event::Apply(_) => {
                self.ever = true;
                false
            }
            watcher::Event::Delete(_) => true,
        }
    }
}

/// Runs until `stop`. `identity` is the identity the agent holds now (it
/// changes at renewal); `state_lost` tells the state store to write again
/// whatever it last wrote, and `wake` starts a pass to do it.
pub async fn run(
    mut clients: watch::Receiver<kube::Client>,
    place: identity::Place,
    identity: watch::Receiver<Option<Identity>>,
    state_lost: Arc<AtomicBool>,
    wake: Arc<Notify>,
    stop: CancellationToken,
) {
    // Kept across client rebuilds: a cluster replaced by an empty one
    // lists nothing where the objects were.
    let (mut seen_secret, mut seen_state) = (Seen::default(), Seen::default());
    loop {
        let client = clients.borrow_and_update().clone();
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &place.namespace);
        let maps: Api<ConfigMap> = Api::namespaced(client.clone(), &place.namespace);
        let by_name = |n: &str| watcher::Config::default().fields(&format!("metadata.name={n}"));
        let mut secret = relisting(secrets, by_name(&place.secret)).boxed();
        let mut state = relisting(maps, by_name(STATE_NAME)).boxed();
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                r = clients.changed() => if r.is_err() { return } else { break },
                ev = secret.next() => match ev {
                    Some(Ok(ev)) if seen_secret.gone(&ev) => {
                        let held = identity.borrow().clone();
                        // Pre-provisioned files (no expiry known) are not ours to keep.
                        if let Some(id) = held.filter(|i| i.not_after_ms > 0) {
                            match identity::save(&client, &place, &id).await {
                                Ok(()) => tracing::warn!("the identity Secret was gone: written again from the identity the agent holds"),
                                Err(e) => tracing::warn!(error = %e, "writing the identity Secret again"),
                            }
                        }
                    }
                    Some(_) => {}
                    None => return,
                },
                ev = state.next() => match ev {
                    Some(Ok(ev)) if seen_state.gone(&ev) => {
                        tracing::warn!("the state ConfigMap was gone: the next pass writes it again");
                        state_lost.store(true, Ordering::SeqCst);
                        wake.notify_one();
                    }
                    Some(_) => {}
                    None => return,
                },
            }
        }
    }
}
