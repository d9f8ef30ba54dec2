//! Git access from agents: HTTPS with basic credentials and a private CA,
//! SSH with a key and strict known_hosts, against real servers (git
//! http-backend, OpenSSH sshd), fetching only the pinned commit where the
//! server allows it. Credentials come from a secret directory
//! the agent reads again before each fetch, so rotating them needs no
//! restart; a refusal is a named authentication or host-key failure and
//! leaves the cluster as it was.

use crate::fleet::{app, pin, setting};
use ferry_integration::harness::init_tracing;
use ferry_integration::world::{GIT_BEARER, GIT_PASSWORD, Transport, World, WorldConfig};

/// A world on `transport` whose cluster g1 runs version 1.0 from it.
///
/// `v2`: whether the server speaks protocol v2 and so hands out the pinned
/// commit alone. Our sshd does not accept `GIT_PROTOCOL` (Debian's default),
/// so SSH runs protocol v0, refuses an unadvertised commit, and the agent
/// falls back to fetching branches and tags.
async fn converged(transport: Transport, scheme: &str, dir: &std::path::Path, v2: bool) -> World {
    let cfg = WorldConfig {
        transport,
        ..WorldConfig::default()
    };
    let mut world = World::start(dir, cfg).await.unwrap();
    assert!(world.repo_url.starts_with(scheme), "{}", world.repo_url);
    let a = commit(&world, "1.0");
    // A later commit is on the server before the agent fetches its pin.
    let later = world
        .git
        .commit("later", &[("clusters/other/note.yaml", Some("{}\n"))])
        .unwrap();
    world.add_cluster("g1", &[]).await.unwrap();
    world.wait_connected(&["g1"]).await;
    pin(&world, &["g1"], &a).await.unwrap();
    world.wait_healthy_at("g1", &a).await;
    assert_eq!(setting(world.emulator("g1")).as_deref(), Some("1.0"));

    // The agent fetched its pinned commit alone.
    let cache = std::fs::read_dir(dir.join("cache/g1"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "git"))
        .expect("the agent's cache repository");
    let cached = |c: &str| {
        std::process::Command::new("git")
            .arg("--git-dir")
            .arg(&cache)
            .args(["cat-file", "-e", &format!("{c}^{{commit}}")])
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap()
            .success()
    };
    assert!(cached(&a), "the pinned commit is not cached");
    if v2 {
        assert!(
            !cached(&later),
            "the agent fetched a commit it was not pinned to"
        );
    } else {
        assert!(cached(&later), "the fallback fetch of branches did not run");
    }
    world
}

fn commit(world: &World, version: &str) -> String {
    world
        .git
        .commit(
            version,
            &[("clusters/g1/app.yaml", Some(&app("g1", version)))],
        )
        .unwrap()
}

fn secret(world: &World, name: &str) -> std::path::PathBuf {
    world.git_secret.as_ref().expect("a git secret").join(name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn https_with_credentials_and_a_private_ca() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let world = converged(Transport::HttpsAuth, "https://", dir.path(), true).await;

    // A revoked token: a named authentication failure, nothing changes.
    std::fs::write(secret(&world, "password"), "revoked").unwrap();
    let b = commit(&world, "2.0");
    pin(&world, &["g1"], &b).await.unwrap();
    let s = world.wait_failed_at("g1", &b).await;
    assert!(
        s.message.contains("authentication to https://127.0.0.1") && s.message.contains("failed"),
        "{}",
        s.message
    );
    assert_eq!(setting(world.emulator("g1")).as_deref(), Some("1.0"));

    // The rotated Secret is picked up without a restart.
    std::fs::write(secret(&world, "password"), GIT_PASSWORD).unwrap();
    world.wait_healthy_at("g1", &b).await;
    assert_eq!(setting(world.emulator("g1")).as_deref(), Some("2.0"));

    // A bearer token instead of basic credentials.
    std::fs::remove_file(secret(&world, "username")).unwrap();
    std::fs::remove_file(secret(&world, "password")).unwrap();
    std::fs::write(secret(&world, "bearerToken"), GIT_BEARER).unwrap();
    let b2 = commit(&world, "2.1");
    pin(&world, &["g1"], &b2).await.unwrap();
    world.wait_healthy_at("g1", &b2).await;
    assert_eq!(setting(world.emulator("g1")).as_deref(), Some("2.1"));

    // No CA: the server is not trusted, and that is not called an auth failure.
    std::fs::remove_file(secret(&world, "ca.crt")).unwrap();
    let c = commit(&world, "3.0");
    pin(&world, &["g1"], &c).await.unwrap();
    let s = world.wait_failed_at("g1", &c).await;
    assert!(s.message.starts_with("fetching https://"), "{}", s.message);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ssh_with_a_key_and_strict_known_hosts() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let world = converged(Transport::Ssh, "ssh://", dir.path(), false).await;

    // A server whose host key is not the known one is refused by default.
    let known = std::fs::read_to_string(secret(&world, "known_hosts")).unwrap();
    let other = dir.path().join("other_host_key");
    let out = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&other)
        .output()
        .unwrap();
    assert!(out.status.success());
    let other_pub = std::fs::read_to_string(other.with_extension("pub")).unwrap();
    let host = known.split_whitespace().next().unwrap();
    let other_pub: Vec<&str> = other_pub.split_whitespace().take(2).collect();
    std::fs::write(
        secret(&world, "known_hosts"),
        format!("{host} {} {}\n", other_pub[0], other_pub[1]),
    )
    .unwrap();
    let b = commit(&world, "2.0");
    pin(&world, &["g1"], &b).await.unwrap();
    let s = world.wait_failed_at("g1", &b).await;
    assert!(
        s.message.contains("host key of ssh://") && s.message.contains("not verified"),
        "{}",
        s.message
    );
    assert_eq!(setting(world.emulator("g1")).as_deref(), Some("1.0"));

    // The right host, the wrong key: an authentication failure.
    std::fs::write(secret(&world, "known_hosts"), &known).unwrap();
    let identity = std::fs::read(secret(&world, "identity")).unwrap();
    std::fs::copy(&other, secret(&world, "identity")).unwrap();
    let s = eventually_message(&world, &b, "authentication to ssh://").await;
    assert!(s.contains("Permission denied"), "{s}");
    assert_eq!(setting(world.emulator("g1")).as_deref(), Some("1.0"));

    // Restored: it converges without a restart.
    std::fs::write(secret(&world, "identity"), identity).unwrap();
    world.wait_healthy_at("g1", &b).await;
    assert_eq!(setting(world.emulator("g1")).as_deref(), Some("2.0"));
}

/// Waits until the cluster's failure at `commit` says `needle`.
async fn eventually_message(world: &World, commit: &str, needle: &str) -> String {
    ferry_integration::harness::eventually(&format!("a failure saying {needle:?}"), || async {
        let s = world.cluster("g1").await.ok()?.status?;
        (s.target_commit == commit && s.message.contains(needle)).then_some(s.message)
    })
    .await
}
