//! Measures the Kubernetes API emulator: server-side applies per second from
//! one kube-rs client, sequential and with requests in flight. Prints a
//! table and one JSON line. Run with `cargo run --release --bin emulator-bench`.

use clap::Parser;
use ferry_integration::harness::kube_client;
use futures::StreamExt;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::discovery::ApiResource;
use kube_emulator::{Config, Emulator};
use serde_json::json;
use std::time::Instant;

/// Measure the emulator's server-side apply throughput.
#[derive(Parser)]
struct Args {
    /// Applies per scenario.
    #[arg(long, default_value_t = 5000)]
    applies: usize,
    /// Requests in flight for the concurrent scenario.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
}

fn cm(i: usize, round: usize) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": format!("cm-{i}"), "namespace": "default", "labels": {"app": "bench"}},
        "data": {"round": round.to_string(), "payload": "x".repeat(256)},
    }))
    .expect("valid object")
}

async fn run(api: &Api<DynamicObject>, n: usize, round: usize, concurrency: usize) -> f64 {
    let pp = PatchParams::apply("bench").force();
    let start = Instant::now();
    futures::stream::iter(0..n)
        .map(|i| {
            let api = api.clone();
            let pp = pp.clone();
            async move {
                api.patch(&format!("cm-{i}"), &pp, &Patch::Apply(cm(i, round)))
                    .await
                    .expect("apply succeeds")
            }
        })
        .buffer_unordered(concurrency)
        .for_each(|_| async {})
        .await;
    n as f64 / start.elapsed().as_secs_f64()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut rows = vec![];
    for tls in [true, false] {
        let emu = Emulator::start(Config {
            tls,
            ..Config::default()
        })
        .await?;
        let client = kube_client(&emu).await;
        let ar = ApiResource {
            group: String::new(),
            version: "v1".into(),
            api_version: "v1".into(),
            kind: "ConfigMap".into(),
            plural: "configmaps".into(),
        };
        let api: Api<DynamicObject> = Api::namespaced_with(client, "default", &ar);
        let transport = if tls { "https" } else { "http" };
        rows.push((
            transport,
            "create, 1 in flight",
            run(&api, args.applies, 0, 1).await,
        ));
        rows.push((
            transport,
            "change, 1 in flight",
            run(&api, args.applies, 1, 1).await,
        ));
        rows.push((
            transport,
            "no-op, 1 in flight",
            run(&api, args.applies, 1, 1).await,
        ));
        let c = args.concurrency;
        rows.push((
            transport,
            "change, concurrent",
            run(&api, args.applies, 2, c).await,
        ));
    }
    println!("{:<8} {:<22} {:>14}", "transport", "scenario", "applies/s");
    for (t, s, r) in &rows {
        println!("{t:<8} {s:<22} {r:>14.0}");
    }
    let j: Vec<_> = rows
        .iter()
        .map(|(t, s, r)| json!({"transport": t, "scenario": s, "applies_per_second": r.round()}))
        .collect();
    println!(
        "{}",
        json!({"emulator_ssa": j, "applies": args.applies, "concurrency": args.concurrency})
    );
    Ok(())
}
