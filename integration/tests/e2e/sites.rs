//! Sites: clusters that read a local Git mirror, fed by `ferry mirror sync`
//! (fast-forward only); rollouts that wait for a site's mirror to hold
//! their commit; pins refused until it does.

use crate::fleet::{app, pin, setting};
use ferry_integration::harness::init_tracing;
use ferry_integration::world::{GitServer, World, WorldConfig};

fn files(clusters: &[&str], version: &str) -> Vec<(String, String)> {
    clusters
        .iter()
        .map(|c| (format!("clusters/{c}/app.yaml"), app(c, version)))
        .collect()
}

fn commit(world: &World, msg: &str, f: &[(String, String)]) -> String {
    let refs: Vec<(&str, Option<&str>)> = f
        .iter()
        .map(|(p, c)| (p.as_str(), Some(c.as_str())))
        .collect();
    world.git.commit(msg, &refs).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_semi_connected_site_is_rolled_out_through_its_mirror() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let mut world = World::start(dir.path(), WorldConfig::default())
        .await
        .unwrap();
    // The site's mirror: its own git daemon over its own bare repository.
    let mirror = GitServer::start(&dir.path().join("dmz")).unwrap();
    let upstream = world.git.bare.display().to_string();
    let mirror_repo = mirror.bare.display().to_string();
    let all = ["c1", "s1", "s2"];
    let a = commit(&world, "A", &files(&all, "1.0"));

    // A feeder token can report mirrors and do nothing else.
    let feeder = world
        .ferry(&[
            "token",
            "create",
            "--role",
            "mirror",
            "--name",
            "dmz-feeder",
        ])
        .await
        .unwrap();
    let feeder = feeder.trim();
    let refused = world
        .ferry_as(feeder, &["clusters"])
        .await
        .unwrap_err()
        .to_string();
    assert!(refused.contains("has role mirror"), "{refused}");

    world.add_cluster("c1", &[("site", "hq")]).await.unwrap();
    world.add_cluster("s1", &[("site", "dmz")]).await.unwrap();
    world.add_cluster("s2", &[("site", "dmz")]).await.unwrap();
    world.wait_connected(&all).await;
    let added = world
        .ferry(&[
            "site",
            "add",
            "dmz",
            "--mirror",
            &mirror.url,
            "--selector",
            "site=dmz",
        ])
        .await
        .unwrap();
    assert!(added.contains("2 cluster(s) now fetch from"), "{added}");
    // A second site over the same clusters is refused by name.
    let overlap = world
        .ferry(&[
            "site",
            "add",
            "dmz2",
            "--mirror",
            &mirror.url,
            "--selector",
            "site in (dmz,hq)",
        ])
        .await
        .unwrap_err()
        .to_string();
    assert!(
        overlap.contains("would be in sites dmz and dmz2"),
        "{overlap}"
    );

    // Not fed yet: a pin of the site's clusters is refused, naming the mirror.
    let lacking = pin(&world, &["s1"], &a).await.unwrap_err().to_string();
    assert!(
        lacking.contains("the mirror of s1 (site dmz) does not hold")
            && lacking.contains("--force"),
        "{lacking}"
    );
    let fed = world
        .ferry_as(
            feeder,
            &[
                "mirror",
                "sync",
                "--from",
                &upstream,
                "--to",
                &mirror_repo,
                "--site",
                "dmz",
            ],
        )
        .await
        .unwrap();
    assert!(fed.contains("refs/heads/main  -"), "{fed}");
    assert!(
        fed.contains("site dmz holds 1 commit(s), 2 cluster(s)"),
        "{fed}"
    );
    pin(&world, &all, &a).await.unwrap();
    for c in all {
        world.wait_healthy_at(c, &a).await;
    }
    let sites = world.ferry(&["sites"]).await.unwrap();
    assert!(
        sites.contains("dmz")
            && sites.contains(&format!("main@{}", &a[..8]))
            && sites.contains("in step"),
        "{sites}"
    );

    // B upstream only: the site's wave waits for the mirror.
    let b = commit(&world, "B", &files(&all, "2.0"));
    world
        .ferry(&[
            "rollout", "start", "--commit", "main", "--wave", "names:c1", "--wave", "names:s1",
        ])
        .await
        .unwrap();
    world.wait_healthy_at("c1", &b).await;
    let waiting = format!(
        "waiting for mirror dmz to hold {} (mirror at {}, 1 commit(s) behind)",
        &b[..8],
        &a[..8]
    );
    ferry_integration::harness::eventually("the site's wave waits for its mirror", || async {
        let s = world.ferry(&["rollout", "status"]).await.ok()?;
        s.contains(&waiting).then_some(())
    })
    .await;
    let sites = world.ferry(&["sites"]).await.unwrap();
    assert!(
        sites.contains(&format!("1 commit(s) behind (upstream at {})", &b[..8])),
        "{sites}"
    );
    // Forced past the refusal, a cluster waits for its mirror as its own
    // state, not as a failure, and keeps running what it has.
    let forced = world
        .ferry(&["pin", "s2", "--commit", &b, "--force", "--reason", "hotfix"])
        .await
        .unwrap();
    assert!(forced.contains("s2"), "{forced}");
    ferry_integration::harness::eventually("s2 waits for the mirror", || async {
        let s = world.cluster("s2").await.ok()?.status?;
        (s.target_commit == b
            && s.phase == ferry_proto::v1::Phase::Pending as i32
            && s.message.contains("waiting for mirror dmz to hold"))
        .then_some(())
    })
    .await;
    assert_eq!(setting(world.emulator("s2")).as_deref(), Some("1.0"));
    let ledger = world.ferry(&["history", "s2"]).await.unwrap();
    assert!(
        ledger.contains("hotfix [forced: the mirror of s2 (site dmz) lacked it]"),
        "{ledger}"
    );

    // The upstream server goes away for good: the site never needed it.
    world.git.stop();
    let fed = world
        .ferry_as(
            feeder,
            &[
                "mirror",
                "sync",
                "--from",
                &upstream,
                "--to",
                &mirror_repo,
                "--site",
                "dmz",
            ],
        )
        .await
        .unwrap();
    assert!(
        fed.contains(&format!("refs/heads/main  {} -> {}", &a[..8], &b[..8])),
        "{fed}"
    );
    world.wait_healthy_at("s1", &b).await;
    world.wait_healthy_at("s2", &b).await;
    ferry_integration::harness::eventually("the rollout succeeds", || async {
        let s = world.ferry(&["rollout", "status"]).await.ok()?;
        s.contains("Succeeded").then_some(())
    })
    .await;

    // A restarted coordinator still knows the site and its mirror.
    world.stop_coordinator().await.unwrap();
    world.start_coordinator().await.unwrap();
    let shown = world.ferry(&["site", "show", "dmz"]).await.unwrap();
    for expected in [
        "Clusters:  s1, s2",
        "Commits:   2",
        &format!("{}  refs/heads/main", &b[..8]),
        "mirror sync from",
        "by dmz-feeder",
    ] {
        assert!(shown.contains(expected), "no {expected:?} in:\n{shown}");
    }
}

#[test]
fn a_mirror_only_moves_forward() {
    let dir = tempfile::tempdir().unwrap();
    let up = GitServer::start(&dir.path().join("up")).unwrap();
    let a = up.commit("A", &[("x", Some("1"))]).unwrap();
    let mirror = dir.path().join("mirror.git");
    let sync = |extra: &[&str]| -> anyhow::Result<String> {
        let out = std::process::Command::new(ferry_integration::harness::workspace_binary(
            "ferry-coordinator",
            "ferry",
        ))
        .args(["mirror", "sync", "--from"])
        .arg(&up.bare)
        .arg("--to")
        .arg(&mirror)
        .args(extra)
        .output()?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            anyhow::bail!("{}", String::from_utf8_lossy(&out.stderr))
        }
    };
    // The mirror need not exist: it is created.
    assert!(sync(&[]).unwrap().contains("1 ref(s), 1 commit(s)"));
    // Upstream rewritten (main reset to a sibling of A): refused by name,
    // nothing moves.
    let git = |args: &[&str]| {
        let ok = std::process::Command::new("git")
            .arg("-C")
            .arg(&up.work)
            .args(args)
            .status()
            .unwrap()
            .success();
        assert!(ok, "git {args:?}");
    };
    git(&["checkout", "-q", "--orphan", "other"]);
    git(&["commit", "-q", "--allow-empty", "-m", "B, not after A"]);
    git(&["push", "-q", "-f", "origin", "HEAD:main"]);
    let err = sync(&[]).unwrap_err().to_string();
    assert!(
        err.contains("not a fast-forward") && err.contains("main") && err.contains("unchanged"),
        "{err}"
    );
    let head = |r: &str| {
        let out = std::process::Command::new("git")
            .arg("-C")
            .arg(&mirror)
            .args(["rev-parse", r])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(head("refs/heads/main"), a);
    // Told to, it follows.
    assert!(
        sync(&["--allow-rewrite"])
            .unwrap()
            .contains("refs/heads/main")
    );
    assert_ne!(head("refs/heads/main"), a);
}
