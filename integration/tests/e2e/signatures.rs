//! Trust Git, not the coordinator: agents apply only commits their own
//! cluster's keys vouch for, whoever pinned them; the coordinator refuses
//! such pins early. Keys are `ssh-keygen` keys, signatures `git commit -S`.

use crate::fleet::{app, pin, setting};
use ferry_integration::harness::{eventually, init_tracing};
use ferry_integration::world::{World, WorldConfig};
use ferry_proto::v1::Phase;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// An SSH signing key: its private key path and its `allowed_signers` line.
fn key(dir: &Path, name: &str) -> (PathBuf, String) {
    let path = dir.join(name);
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let public = std::fs::read_to_string(path.with_extension("pub")).unwrap();
    (path, format!("{name}@example.com {}", public.trim()))
}

/// Git configuration that signs with `key`.
fn signing(key: &Path) -> Vec<String> {
    vec![
        "-c".into(),
        "gpg.format=ssh".into(),
        "-c".into(),
        format!("user.signingkey={}", key.display()),
    ]
}

/// The cluster's key Secret, as mounted: one `allowed_signers` file.
fn trust(dir: &Path, lines: &[&str]) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("allowed_signers"), lines.join("\n") + "\n").unwrap();
}

async fn failed_with(world: &World, name: &str, commit: &str, said: &str) -> String {
    let s = world.wait_failed_at(name, commit).await;
    assert!(s.message.contains(said), "{}", s.message);
    s.message
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn agents_apply_only_what_their_own_keys_vouch_for() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let cfg = WorldConfig {
        resync: Duration::from_secs(1),
        ..WorldConfig::default()
    };
    let mut world = World::start(dir.path(), cfg).await.unwrap();
    let (alice, alice_line) = key(dir.path(), "alice");
    let (mallory, mallory_line) = key(dir.path(), "mallory");
    let keys = dir.path().join("s1-keys");
    trust(&keys, &[&alice_line]);
    let i = world.add_cluster_without_agent("s1", &[]).await.unwrap();
    let mut cfg = world.agent_config(i);
    cfg.verify_keys = Some(keys.clone());
    world.start_agent_with(i, cfg);
    world.wait_connected(&["s1"]).await;

    let a = world
        .git
        .commit_signed(
            "A",
            &[("clusters/s1/app.yaml", Some(&app("s1", "1.0")))],
            &signing(&alice),
        )
        .unwrap();
    pin(&world, &["s1"], &a).await.unwrap();
    world.wait_healthy_at("s1", &a).await;
    let shown = world.ferry(&["cluster", "show", "s1"]).await.unwrap();
    assert!(
        shown.contains("Signed by:  SSH SHA256:") && shown.contains("(alice@example.com)"),
        "{shown}"
    );

    // Unsigned: refused, nothing written, the signed commit still enforced.
    let emulator = world.emulator("s1");
    emulator.reset_counters();
    let b = world
        .git
        .commit("B", &[("clusters/s1/app.yaml", Some(&app("s1", "2.0")))])
        .unwrap();
    pin(&world, &["s1"], &b).await.unwrap();
    failed_with(
        &world,
        "s1",
        &b,
        &format!("commit {} is not signed: nothing was applied", &b[..8]),
    )
    .await;
    assert_eq!(
        emulator.writes_except("ferry-system"),
        0,
        "{:?}",
        emulator.counters().requests
    );
    assert_eq!(setting(emulator).as_deref(), Some("1.0"));

    // Signed by a key the cluster does not trust.
    let c = world
        .git
        .commit_signed(
            "C",
            &[("clusters/s1/app.yaml", Some(&app("s1", "3.0")))],
            &signing(&mallory),
        )
        .unwrap();
    pin(&world, &["s1"], &c).await.unwrap();
    failed_with(&world, "s1", &c, "is signed by an untrusted key SHA256:").await;
    assert_eq!(setting(world.emulator("s1")).as_deref(), Some("1.0"));

    // The cluster's keys rotate (Mallory trusted too): the next sync
    // applies C, without a restart.
    trust(&keys, &[&alice_line, &mallory_line]);
    world.wait_healthy_at("s1", &c).await;
    assert_eq!(setting(world.emulator("s1")).as_deref(), Some("3.0"));

    // Alice's signature kept over another tree (B's): does not verify.
    let text = String::from_utf8(world.git.object("commit", &a).unwrap()).unwrap();
    let tree_of = |c: &str| {
        let data = String::from_utf8(world.git.object("commit", c).unwrap()).unwrap();
        data.lines().next().unwrap().to_string()
    };
    let forged = text.replacen(&tree_of(&a), &tree_of(&b), 1);
    let d = world.git.push_object(forged.as_bytes(), "forged").unwrap();
    pin(&world, &["s1"], &d).await.unwrap();
    failed_with(&world, "s1", &d, "does not verify").await;
    assert_eq!(setting(world.emulator("s1")).as_deref(), Some("3.0"));
}

/// The coordinator with keys refuses an unsigned pin, naming why; a
/// compromised coordinator (the pin written into its store directly)
/// still cannot make the agent apply it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_compromised_coordinator_cannot_make_a_cluster_run_an_unsigned_commit() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let (alice, alice_line) = key(dir.path(), "alice");
    let coordinator_keys = dir.path().join("coordinator-keys");
    trust(&coordinator_keys, &[&alice_line]);
    let cfg = WorldConfig {
        coordinator_verify_keys: Some(coordinator_keys),
        ..WorldConfig::default()
    };
    let mut world = World::start(dir.path(), cfg).await.unwrap();
    let keys = dir.path().join("c1-keys");
    trust(&keys, &[&alice_line]);
    let i = world.add_cluster_without_agent("c1", &[]).await.unwrap();
    let mut cfg = world.agent_config(i);
    cfg.verify_keys = Some(keys);
    world.start_agent_with(i, cfg);
    world.wait_connected(&["c1"]).await;
    let a = world
        .git
        .commit_signed(
            "A",
            &[("clusters/c1/app.yaml", Some(&app("c1", "1.0")))],
            &signing(&alice),
        )
        .unwrap();
    pin(&world, &["c1"], &a).await.unwrap();
    world.wait_healthy_at("c1", &a).await;
    let history = world.ferry(&["history", "c1"]).await.unwrap();
    assert!(
        history.contains("SSH SHA256:") && history.contains("alice@example.com"),
        "{history}"
    );

    let b = world
        .git
        .commit("B", &[("clusters/c1/app.yaml", Some(&app("c1", "2.0")))])
        .unwrap();
    let refused = world
        .ferry(&["pin", "c1", "--commit", &b, "--reason", "unsigned"])
        .await
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains(&format!("commit {} is not signed", &b[..8]))
            && refused.contains("--verify-keys"),
        "{refused}"
    );
    let refused = world
        .ferry(&["rollout", "start", "--commit", &b, "--wave", "100%"])
        .await
        .unwrap_err()
        .to_string();
    assert!(refused.contains("is not signed"), "{refused}");

    // The store says c1 runs B, as a compromised coordinator would.
    world.stop_coordinator().await.unwrap();
    let db = rusqlite::Connection::open(dir.path().join("coordinator/ferry.db")).unwrap();
    db.execute(
        "UPDATE pins SET commit_sha = ?1, generation = generation + 1 WHERE cluster = 'c1'",
        [&b],
    )
    .unwrap();
    drop(db);
    world.start_coordinator().await.unwrap();
    let s = world.wait_failed_at("c1", &b).await;
    assert!(
        s.message.contains("is not signed: nothing was applied"),
        "{}",
        s.message
    );
    assert_eq!(setting(world.emulator("c1")).as_deref(), Some("1.0"));
    assert_eq!(s.phase, Phase::Failed as i32);
}

/// Tag mode: an annotated tag signed by a trusted key vouches for the
/// commit it names; an unsigned tag does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn in_tag_mode_a_signed_tag_vouches_for_its_commit() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let mut world = World::start(dir.path(), WorldConfig::default())
        .await
        .unwrap();
    let (alice, alice_line) = key(dir.path(), "alice");
    let keys = dir.path().join("t1-keys");
    trust(&keys, &[&alice_line]);
    let i = world.add_cluster_without_agent("t1", &[]).await.unwrap();
    let mut cfg = world.agent_config(i);
    cfg.verify_keys = Some(keys);
    cfg.verify_mode = ferry_proto::verify::Mode::Tag;
    world.start_agent_with(i, cfg);
    world.wait_connected(&["t1"]).await;

    let a = world
        .git
        .commit("A", &[("clusters/t1/app.yaml", Some(&app("t1", "1.0")))])
        .unwrap();
    world
        .git
        .annotated_tag("v1.0", &a, Some(&signing(&alice)))
        .unwrap();
    pin(&world, &["t1"], "v1.0").await.unwrap();
    world.wait_healthy_at("t1", &a).await;
    eventually("the signer with its tag", || async {
        let s = world.cluster("t1").await.ok()?.status?;
        (s.signer.contains("alice@example.com") && s.signer.contains("on tag v1.0")).then_some(())
    })
    .await;

    let b = world
        .git
        .commit("B", &[("clusters/t1/app.yaml", Some(&app("t1", "2.0")))])
        .unwrap();
    world.git.annotated_tag("v2.0", &b, None).unwrap();
    pin(&world, &["t1"], "v2.0").await.unwrap();
    failed_with(
        &world,
        "t1",
        &b,
        &format!("no signed tag names commit {}", &b[..8]),
    )
    .await;
    assert_eq!(setting(world.emulator("t1")).as_deref(), Some("1.0"));
}
