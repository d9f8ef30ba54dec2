//! The agent's kept state at fleet scale: an inventory of 15,000 objects
//! does not fit one ConfigMap (etcd refuses requests over 1.5 MiB), so it is
//! kept in chunks named after its digest; read back whole, replaced and
//! cleaned up, and a damaged chunk is never taken for a smaller inventory.

use ferry_agent::state::{InventoryEntry, STATE_NAME, State, StateStore};
use ferry_integration::harness::kube_client;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube_emulator::{Config, Emulator};

fn inventory(n: usize) -> Vec<InventoryEntry> {
    (0..n)
        .map(|i| InventoryEntry {
            api_version: "v1".into(),
            kind: "ConfigMap".into(),
            namespace: Some("bench".into()),
            name: format!("cm-{i:05}"),
            uid: format!("{:08x}-0000-4000-8000-{i:012x}", i * 7919),
            hash: format!("{:032x}", i * 104_729),
        })
        .collect()
}

async fn chunks(api: &Api<ConfigMap>) -> Vec<String> {
    api.list(&ListParams::default().labels("ferry.dev/inventory-of=ferry-agent-state"))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|c| c.metadata.name)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inventory_of_15000_objects_is_kept_in_chunks() {
    let emu = Emulator::start(Config::default()).await.unwrap();
    let client = kube_client(&emu).await;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "ferry-system");
    let big = State {
        inventory: inventory(15_000),
        ..State::default()
    };
    let mut store = StateStore::new(client.clone(), "ferry-system".into());
    assert!(store.save(&big).await.unwrap(), "the state is written");
    let first = chunks(&api).await;
    assert!(first.len() >= 3, "{first:?}");
    // A restarted agent reads it back whole.
    let mut fresh = StateStore::new(client.clone(), "ferry-system".into());
    assert_eq!(fresh.load().await.unwrap(), big);

    // A different inventory replaces it; the old chunks go.
    let mut bigger = big.clone();
    bigger.inventory.truncate(14_000);
    store.save(&bigger).await.unwrap();
    let second = chunks(&api).await;
    assert!(second.iter().all(|c| !first.contains(c)), "{second:?}");
    assert_eq!(fresh.load().await.unwrap(), bigger);

    // A damaged chunk: the inventory is not trusted (never a silently
    // shorter one, which would hide objects from pruning).
    let cm = serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": second[0], "namespace": "ferry-system"},
        "data": {"inventory.json": "[]"}});
    api.patch(
        &second[0],
        &PatchParams::apply("someone").force(),
        &Patch::Apply(&cm),
    )
    .await
    .unwrap();
    let loaded = fresh.load().await.unwrap();
    assert!(loaded.inventory.is_empty());

    // Small again: inline, no chunks left.
    let small = State {
        inventory: inventory(10),
        ..State::default()
    };
    store.save(&small).await.unwrap();
    assert!(chunks(&api).await.is_empty());
    assert_eq!(fresh.load().await.unwrap(), small);
    assert!(api.get_opt(STATE_NAME).await.unwrap().is_some());
}
