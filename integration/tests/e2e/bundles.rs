//! Signed bundles across an air gap: made from the upstream repository,
//! imported into a site's mirror only forward, all refs at once; every
//! refusal names its reason and leaves the mirror as it was. A site fed
//! only by bundles is rolled out: its wave waits for the import.

use crate::fleet::{app, pin};
use ferry_integration::harness::init_tracing;
use ferry_integration::world::{GitServer, World, WorldConfig};
use std::path::{Path, PathBuf};

/// `ferry ARGS` in-process (no coordinator needed unless it reports).
async fn ferry(args: &[&str]) -> anyhow::Result<String> {
    let mut argv = vec!["ferry"];
    argv.extend(args);
    let parsed = <ferry_coordinator::cli::Args as clap::Parser>::try_parse_from(argv)?;
    ferry_coordinator::cli::execute(parsed).await
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// Every ref of a repository, as `git for-each-ref` prints them.
fn all_refs(repo: &Path) -> String {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(["for-each-ref", "--format=%(refname) %(objectname)"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bundles_cross_the_gap_and_every_refusal_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let up = GitServer::start(&d.join("up")).unwrap();
    let a = up.commit("A", &[("x", Some("1"))]).unwrap();
    let key = d.join("release.key");
    let said = ferry(&["bundle", "keygen", "--out", &s(&key)])
        .await
        .unwrap();
    assert!(said.contains("SHA256:"), "{said}");
    let trust = format!("{}.pub", s(&key));
    let other = d.join("other.key");
    ferry(&["bundle", "keygen", "--out", &s(&other)])
        .await
        .unwrap();
    let other_pub = format!("{}.pub", s(&other));
    // A key is never overwritten.
    let again = ferry(&["bundle", "keygen", "--out", &s(&key)])
        .await
        .unwrap_err()
        .to_string();
    assert!(again.contains("not overwriting"), "{again}");

    let b1 = d.join("b1.ferry");
    let made = ferry(&[
        "bundle",
        "create",
        "--repo",
        &s(&up.bare),
        "--ref",
        "main",
        "--key",
        &s(&key),
        "--out",
        &s(&b1),
    ])
    .await
    .unwrap();
    assert!(
        made.contains(&format!("{}  refs/heads/main", &a[..8])),
        "{made}"
    );
    let shown = ferry(&["bundle", "verify", &s(&b1), "--trust", &trust])
        .await
        .unwrap();
    assert!(shown.starts_with("verified: bundle "), "{shown}");
    let b1_id = shown
        .split_whitespace()
        .nth(2)
        .unwrap()
        .trim_end_matches(':')
        .to_string();

    let mirror = d.join("mirror.git");
    let imported = ferry(&[
        "bundle",
        "import",
        &s(&b1),
        "--into",
        &s(&mirror),
        "--trust",
        &trust,
    ])
    .await
    .unwrap();
    assert!(
        imported.contains(&format!("refs/heads/main  - -> {}", &a[..8])),
        "{imported}"
    );

    // An incremental bundle carries only what is new.
    up.commit("B", &[("x", Some("2"))]).unwrap();
    let c = up.commit("C", &[("y", Some("3"))]).unwrap();
    let b2 = d.join("b2.ferry");
    let made = ferry(&[
        "bundle",
        "create",
        "--repo",
        &s(&up.bare),
        "--ref",
        "main",
        "--since-bundle",
        &s(&b1),
        "--key",
        &s(&key),
        "--out",
        &s(&b2),
    ])
    .await
    .unwrap();
    assert!(made.contains("needs 1 commit(s)"), "{made}");
    // Nothing new: said so, no file.
    let none = ferry(&[
        "bundle",
        "create",
        "--repo",
        &s(&up.bare),
        "--ref",
        "main",
        "--since",
        &c,
        "--key",
        &s(&key),
        "--out",
        &s(&d.join("empty.ferry")),
    ])
    .await
    .unwrap_err()
    .to_string();
    assert!(none.contains("nothing to carry"), "{none}");

    // Into a mirror without A: the prerequisite and the bundle carrying it
    // are named; nothing is imported.
    let fresh = d.join("fresh.git");
    let missing = ferry(&[
        "bundle",
        "import",
        &s(&b2),
        "--into",
        &s(&fresh),
        "--trust",
        &trust,
    ])
    .await
    .unwrap_err()
    .to_string();
    assert!(
        missing.contains(&format!("lacks prerequisite commit(s) {a}"))
            && missing.contains(&format!("import bundle {b1_id}")),
        "{missing}"
    );
    assert_eq!(all_refs(&fresh), "");

    let imported = ferry(&[
        "bundle",
        "import",
        &s(&b2),
        "--into",
        &s(&mirror),
        "--trust",
        &trust,
    ])
    .await
    .unwrap();
    assert!(
        imported.contains(&format!("refs/heads/main  {} -> {}", &a[..8], &c[..8])),
        "{imported}"
    );
    let settled = all_refs(&mirror);
    assert!(settled.contains(&c), "{settled}");

    // Each refusal names its reason; the mirror's refs stay as they were.
    let good = std::fs::read(&b2).unwrap();
    let variant = |name: &str, bytes: Vec<u8>| -> PathBuf {
        let p = d.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    };
    let mut flipped = good.clone();
    let at = flipped.len() - 7;
    flipped[at] ^= 0x20;
    let mut forged = good.clone();
    let at = good.windows(10).position(|w| w == b"createdBy\"").unwrap() + 13;
    forged[at] ^= 0x01;
    // The upstream rewritten: a bundle moving main sideways.
    let git = |args: &[&str]| {
        assert!(
            std::process::Command::new("git")
                .arg("-C")
                .arg(&up.work)
                .args(args)
                .status()
                .unwrap()
                .success()
        )
    };
    git(&["checkout", "-q", "--orphan", "rewrite"]);
    git(&["commit", "-q", "--allow-empty", "-m", "D"]);
    git(&["push", "-q", "-f", "origin", "HEAD:main"]);
    let sideways = d.join("sideways.ferry");
    ferry(&[
        "bundle",
        "create",
        "--repo",
        &s(&up.bare),
        "--ref",
        "main",
        "--key",
        &s(&key),
        "--out",
        &s(&sideways),
    ])
    .await
    .unwrap();
    let cases: Vec<(&str, PathBuf, &str, &str)> = vec![
        (
            "a flipped byte",
            variant("flipped.ferry", flipped),
            &trust,
            "sha256",
        ),
        (
            "a forged manifest",
            variant("forged.ferry", forged),
            &trust,
            "signature does not verify",
        ),
        (
            "an untrusted key",
            b2.clone(),
            &other_pub,
            "not among the trusted keys",
        ),
        (
            "a truncated file",
            variant("cut.ferry", good[..good.len() / 2].to_vec()),
            &trust,
            "truncated",
        ),
        (
            "not a bundle",
            variant("junk.ferry", b"PK\x03\x04".to_vec()),
            &trust,
            "not a Ferry bundle",
        ),
        (
            "an older bundle",
            b1.clone(),
            &trust,
            "backwards or sideways",
        ),
        ("a rewritten upstream", sideways, &trust, "refs/heads/main"),
    ];
    for (what, file, key, expected) in cases {
        let err = ferry(&[
            "bundle",
            "import",
            &s(&file),
            "--into",
            &s(&mirror),
            "--trust",
            key,
        ])
        .await
        .unwrap_err()
        .to_string();
        assert!(err.contains(expected), "{what}: no {expected:?} in {err}");
        assert!(
            err.contains(&s(&file)) || err.contains(&s(&mirror)),
            "{what}: the file is not named: {err}"
        );
        assert_eq!(all_refs(&mirror), settled, "{what}: the mirror changed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_disconnected_site_fed_by_bundles_is_rolled_out() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let mut world = World::start(dir.path(), WorldConfig::default())
        .await
        .unwrap();
    let ship = GitServer::start(&dir.path().join("ship")).unwrap();
    let key = dir.path().join("release.key");
    ferry(&["bundle", "keygen", "--out", &s(&key)])
        .await
        .unwrap();
    let trust = format!("{}.pub", s(&key));
    let feeder = world
        .ferry(&["token", "create", "--role", "mirror", "--name", "ship-crew"])
        .await
        .unwrap();
    let feeder = feeder.trim().to_string();
    let commit = |world: &World, v: &str| {
        world
            .git
            .commit(v, &[("clusters/s1/app.yaml", Some(app("s1", v).as_str()))])
            .unwrap()
    };
    let a = commit(&world, "1.0");
    world.add_cluster("s1", &[("site", "ship")]).await.unwrap();
    world.wait_connected(&["s1"]).await;
    world
        .ferry(&[
            "site",
            "add",
            "ship",
            "--mirror",
            &ship.url,
            "--selector",
            "site=ship",
        ])
        .await
        .unwrap();
    // Ashore: a bundle of everything. Aboard: imported, reported.
    let b1 = dir.path().join("b1.ferry");
    ferry(&[
        "bundle",
        "create",
        "--repo",
        &s(&world.git.bare),
        "--ref",
        "main",
        "--key",
        &s(&key),
        "--out",
        &s(&b1),
    ])
    .await
    .unwrap();
    let import = |file: PathBuf| {
        let (world, feeder, trust, mirror) = (&world, feeder.clone(), trust.clone(), s(&ship.bare));
        async move {
            world
                .ferry_as(
                    &feeder,
                    &[
                        "bundle",
                        "import",
                        &s(&file),
                        "--into",
                        &mirror,
                        "--trust",
                        &trust,
                        "--site",
                        "ship",
                    ],
                )
                .await
        }
    };
    let said = import(b1.clone()).await.unwrap();
    assert!(said.contains("site ship holds"), "{said}");
    pin(&world, &["s1"], &a).await.unwrap();
    world.wait_healthy_at("s1", &a).await;

    // A new commit: the rollout waits for the ship's mirror ...
    let b = commit(&world, "2.0");
    world
        .ferry(&[
            "rollout",
            "start",
            "--commit",
            "main",
            "--wave",
            "site=ship",
        ])
        .await
        .unwrap();
    ferry_integration::harness::eventually("the ship's wave waits", || async {
        let st = world.ferry(&["rollout", "status"]).await.ok()?;
        st.contains(&format!("waiting for mirror ship to hold {}", &b[..8]))
            .then_some(())
    })
    .await;
    // ... until the next bundle crosses and is imported.
    let b2 = dir.path().join("b2.ferry");
    ferry(&[
        "bundle",
        "create",
        "--repo",
        &s(&world.git.bare),
        "--ref",
        "main",
        "--since-bundle",
        &s(&b1),
        "--key",
        &s(&key),
        "--out",
        &s(&b2),
    ])
    .await
    .unwrap();
    import(b2).await.unwrap();
    world.wait_healthy_at("s1", &b).await;
    ferry_integration::harness::eventually("the rollout succeeds", || async {
        let st = world.ferry(&["rollout", "status"]).await.ok()?;
        st.contains("Succeeded").then_some(())
    })
    .await;
    let shown = world.ferry(&["site", "show", "ship"]).await.unwrap();
    assert!(
        shown.contains("bundle import b2.ferry by ship-crew"),
        "{shown}"
    );
}

/// A site with no link at all: its own coordinator, fed a bundle carrying
/// commits and a rollout plan; its clusters' status and ledger carried
/// back in a signed file show up centrally, with their age.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fully_disconnected_site_runs_a_carried_plan_and_reports_back() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let central = World::start(&dir.path().join("central"), WorldConfig::default())
        .await
        .unwrap();
    // Aboard: a coordinator of its own, whose repository is the mirror.
    let mut aboard = World::start(&dir.path().join("aboard"), WorldConfig::default())
        .await
        .unwrap();
    aboard.add_cluster("s1", &[("ring", "ship")]).await.unwrap();
    aboard.wait_connected(&["s1"]).await;

    let key = dir.path().join("release.key");
    ferry(&["bundle", "keygen", "--out", &s(&key)])
        .await
        .unwrap();
    let trust = format!("{}.pub", s(&key));
    let a = central
        .git
        .commit(
            "A",
            &[("clusters/s1/app.yaml", Some(app("s1", "1.0").as_str()))],
        )
        .unwrap();
    let plan = dir.path().join("plan.yaml");
    std::fs::write(&plan, "ref: main\nwaves:\n  - selector: ring=ship\n").unwrap();
    let b1 = dir.path().join("b1.ferry");
    let made = ferry(&[
        "bundle",
        "create",
        "--repo",
        &s(&central.git.bare),
        "--ref",
        "main",
        "--plan",
        &s(&plan),
        "--key",
        &s(&key),
        "--out",
        &s(&b1),
    ])
    .await
    .unwrap();
    assert!(made.contains("carries a rollout plan"), "{made}");
    let applied = aboard
        .ferry(&[
            "bundle",
            "import",
            &s(&b1),
            "--into",
            &s(&aboard.git.bare),
            "--trust",
            &trust,
            "--apply",
        ])
        .await
        .unwrap();
    assert!(
        applied.contains(&format!("started rollout r1 of {}", &a[..8])),
        "{applied}"
    );
    aboard.wait_healthy_at("s1", &a).await;

    // Back ashore: the site's status, signed.
    let st = dir.path().join("ship-status.ferry");
    let exported = aboard
        .ferry(&[
            "bundle",
            "status-export",
            "--site",
            "ship",
            "--key",
            &s(&key),
            "--out",
            &s(&st),
        ])
        .await
        .unwrap();
    assert!(
        exported.contains("1 cluster(s), 1 ledger entries"),
        "{exported}"
    );
    central
        .ferry(&[
            "site",
            "add",
            "ship",
            "--mirror",
            "file:///ship/fleet.git",
            "--selector",
            "site=ship",
        ])
        .await
        .unwrap();
    let mut tampered = std::fs::read(&st).unwrap();
    let last = tampered.len() - 3;
    tampered[last] ^= 0x10;
    let bad = dir.path().join("bad-status.ferry");
    std::fs::write(&bad, tampered).unwrap();
    let refused = central
        .ferry(&["bundle", "status-import", &s(&bad), "--trust", &trust])
        .await
        .unwrap_err()
        .to_string();
    assert!(refused.contains("sha256"), "{refused}");
    let imported = central
        .ferry(&["bundle", "status-import", &s(&st), "--trust", &trust])
        .await
        .unwrap();
    assert!(
        imported.contains("site ship: 1 cluster(s) and 1 ledger entries"),
        "{imported}"
    );
    let again = central
        .ferry(&["bundle", "status-import", &s(&st), "--trust", &trust])
        .await
        .unwrap_err()
        .to_string();
    assert!(again.contains("at least as new"), "{again}");
    let clusters = central.ferry(&["clusters"]).await.unwrap();
    let row = clusters
        .lines()
        .find(|l| l.starts_with("ship/s1"))
        .unwrap_or_else(|| panic!("no ship/s1 in:\n{clusters}"));
    // Last seen (by the site's coordinator) is the age of what is shown.
    assert!(
        row.contains(&a[..8]) && row.contains("Healthy") && row.contains(" ago"),
        "{row}"
    );
    let shown = central.ferry(&["site", "show", "ship"]).await.unwrap();
    assert!(
        shown.contains("Status:    1 cluster(s) as of") && shown.contains("s1"),
        "{shown}"
    );
}
