//! Watches that wake the sync loop when something the agent manages
//! changes in the cluster, so drift is repaired in about a second instead
//! of at the next resync. One watch per managed kind, on objects carrying
//! this cluster's owner label. Our own writes wake it too; that pass finds
//! nothing to do and writes nothing. A watch that had to list again (its
//! connection broke: the API server restarted, or was replaced by an empty
//! one) wakes the loop too, since what vanished meanwhile sends no event.
//! Never writes anything itself.

use crate::plan::OWNER_LABEL;
use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use kube::api::DynamicObject;
use kube::discovery::ApiResource;
use kube::runtime::watcher;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

/// kube's watcher, started over with a fresh list after any error. kube's
/// watcher resumes a broken watch from its last resourceVersion without
/// listing; but the server behind a broken connection may be a new one (a
/// cluster rebuilt from scratch), whose versions start low again: resumed,
/// such a watch misses that everything is gone, or is refused for being
/// ahead ("Too large resource version") and retried forever. Restarts wait
/// a backoff (up to 30 s) that resets on the first good event.
pub fn relisting<K>(
    api: kube::Api<K>,
    cfg: watcher::Config,
) -> impl Stream<Item = watcher::Result<watcher::Event<K>>> + Send
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    type Watch<K> = BoxStream<'static, watcher::Result<watcher::Event<K>>>;
    let backoff = Duration::from_millis(500)..=Duration::from_secs(30);
    futures::stream::unfold(
        (None::<Watch<K>>, Duration::ZERO),
        move |(current, wait)| {
            let (api, cfg, backoff) = (api.clone(), cfg.clone(), backoff.clone());
            async move {
                let mut stream = match current {
                    Some(s) => s,
                    None => {
                        tokio::time::sleep(wait).await;
                        watcher(api, cfg).boxed()
                    }
                };
                let item = stream.next().await?;
                let next = match &item {
                    Err(e) => {
                        tracing::debug!(error = %e, "a watch failed: listing again");
                        let wait = (wait * 2).clamp(*backoff.start(), *backoff.end());
                        (None, wait)
                    }
                    Ok(_) => (Some(stream), Duration::ZERO),
                };
                Some((item, next))
            }
        },
    )
}

/// Runs until `stop`, watching the kinds `kinds` names (it changes as the
/// inventory does) and notifying `drift` on every change after a watch's
/// initial list.
pub async fn run(
    mut clients: watch::Receiver<kube::Client>,
    cluster: String,
    namespaces: Vec<String>,
    mut kinds: watch::Receiver<Vec<ApiResource>>,
    drift: Arc<Notify>,
    stop: CancellationToken,
) {
    // Dropping a handle aborts its watch: this task owns them all.
    let mut running: Vec<(ApiResource, Vec<AbortOnDropHandle<()>>)> = vec![];
    loop {
        let client = clients.borrow_and_update().clone();
        let want = kinds.borrow_and_update().clone();
        running.retain(|(r, _)| want.contains(r));
        for r in want {
            if running.iter().any(|(x, _)| *x == r) {
                continue;
            }
            // A namespaced agent watches in its namespaces, one by one.
            let apis: Vec<kube::Api<DynamicObject>> = if namespaces.is_empty() {
                vec![kube::Api::all_with(client.clone(), &r)]
            } else {
                namespaces
                    .iter()
                    .map(|ns| kube::Api::namespaced_with(client.clone(), ns, &r))
                    .collect()
            };
            let mut handles = vec![];
            for api in apis {
                let cfg = watcher::Config::default().labels(&format!("{OWNER_LABEL}={cluster}"));
                let drift = drift.clone();
                let kind = r.kind.clone();
                let h = tokio::spawn(async move {
                    let mut events = relisting(api, cfg).boxed();
                    let mut lists = 0u64;
                    while let Some(ev) = events.next().await {
                        match ev {
                            Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_)) => {
                                drift.notify_one()
                            }
                            // The first list is the watch starting; any later
                            // one is a reconnect, after which anything may be
                            // gone.
                            Ok(watcher::Event::InitDone) => {
                                lists += 1;
                                if lists > 1 {
                                    tracing::debug!(kind = %kind, "drift watch listed again");
                                    drift.notify_one();
                                }
                            }
                            Ok(_) => {}
                            Err(e) => tracing::debug!(kind = %kind, error = %e, "drift watch"),
                        }
                    }
                });
                handles.push(AbortOnDropHandle::new(h));
            }
            running.push((r, handles));
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            r = kinds.changed() => if r.is_err() { break },
            // A rebuilt client: every watch starts again with it.
            r = clients.changed() => if r.is_err() { break } else { running.clear() },
        }
    }
}
