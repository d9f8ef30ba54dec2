//! Watches that wake the sync loop when something the agent manages
//! changes in the cluster, so drift is repaired in about a second instead
//! of at the next resync. One watch per managed kind, on objects carrying
//! this cluster's owner label. Our own writes wake it too; that pass finds
//! nothing to do and writes nothing. Never writes anything itself.

use crate::plan::OWNER_LABEL;
use futures::StreamExt;
use kube::api::DynamicObject;
use kube::discovery::ApiResource;
use kube::runtime::{WatchStreamExt, watcher};
use std::sync::Arc;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

/// Runs until `stop`, watching the kinds `kinds` names (it changes as the
/// inventory does) and notifying `drift` on every change after a watch's
/// initial list.
pub async fn run(
    client: kube::Client,
    cluster: String,
    mut kinds: watch::Receiver<Vec<ApiResource>>,
    drift: Arc<Notify>,
    stop: CancellationToken,
) {
    // Dropping a handle aborts its watch: this task owns them all.
    let mut running: Vec<(ApiResource, AbortOnDropHandle<()>)> = vec![];
    loop {
        let want = kinds.borrow_and_update().clone();
        running.retain(|(r, _)| want.contains(r));
        for r in want {
            if running.iter().any(|(x, _)| *x == r) {
                continue;
            }
            let api: kube::Api<DynamicObject> = kube::Api::all_with(client.clone(), &r);
            let cfg = watcher::Config::default().labels(&format!("{OWNER_LABEL}={cluster}"));
            let drift = drift.clone();
            let kind = r.kind.clone();
            let h = tokio::spawn(async move {
                let mut events = watcher(api, cfg).default_backoff().boxed();
                while let Some(ev) = events.next().await {
                    match ev {
                        Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_)) => {
                            drift.notify_one()
                        }
                        Ok(_) => {}
                        Err(e) => tracing::debug!(kind = %kind, error = %e, "drift watch"),
                    }
                }
            });
            running.push((r, AbortOnDropHandle::new(h)));
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            r = kinds.changed() => if r.is_err() { break },
        }
    }
}
