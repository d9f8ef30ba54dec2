//! One store suite, run on every backend: SQLite in a temp dir and a
//! throwaway PostgreSQL (`initdb` + `postgres` on a random port). Each
//! test is written once against the `Store` trait; `suite!` makes it a
//! test per backend.

use ferry_coordinator::store::postgres::Postgres;
use ferry_coordinator::store::sqlite::Sqlite;
use ferry_coordinator::store::{
    Advance, Change, Error, Fence, Lease, PinChange, SiteRecord, Store,
};
use ferry_integration::postgres::Scratch;
use ferry_proto::Commit;
use ferry_proto::rollout::{
    ClusterPhase, ClusterProgress, Policy, RolloutPhase, Selector, Spec, State, WaveSpec,
};
use ferry_proto::v1::StatusReport;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// Where a test's store lives; `open` may be called again (a restart, or
/// a second replica on the same database).
enum Backend {
    Sqlite(tempfile::TempDir),
    Postgres { _server: Scratch, dsn: String },
}

impl Backend {
    async fn sqlite() -> Backend {
        Backend::Sqlite(tempfile::tempdir().unwrap())
    }

    async fn postgres() -> Backend {
        let server = Scratch::start().expect("a scratch PostgreSQL (test.sh installs it)");
        let dsn = server.create("ferry").await.unwrap();
        Backend::Postgres {
            _server: server,
            dsn,
        }
    }

    async fn open(&self) -> Arc<dyn Store> {
        match self {
            Backend::Sqlite(dir) => Arc::new(Sqlite::open(dir.path()).await.unwrap()),
            Backend::Postgres { dsn, .. } => Arc::new(Postgres::open(dsn).await.unwrap()),
        }
    }
}

macro_rules! suite {
    ($($test:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $test() {
                    super::$test(super::Backend::sqlite().await).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $test() {
                    super::$test(super::Backend::postgres().await).await
                }
            )*
        }
    };
}

suite!(
    pins_and_ledger_survive_reopen,
    pin_is_all_or_nothing,
    membership_refuses_overlaps_and_unforced_pins,
    a_rollout_advances_with_its_pins_and_events,
    sites_and_what_their_mirrors_hold,
    identity_tokens_and_revocation,
    status_reports_and_heartbeats,
    a_thousand_reports_at_once,
    a_round_of_reports_in_one_batch,
    listing_paging_and_counting,
);

fn commit(c: char) -> Commit {
    Commit::parse(&c.to_string().repeat(40)).unwrap()
}

fn change(names: &[&str], c: &Commit) -> PinChange {
    PinChange {
        clusters: names.iter().map(|s| s.to_string()).collect(),
        commit: c.clone(),
        actor: "me".into(),
        reason: "why".into(),
        rollout: None,
        force: false,
        allow_mass_prune: false,
    }
}

async fn with_clusters(b: &Backend, names: &[&str]) -> Arc<dyn Store> {
    let s = b.open().await;
    for n in names {
        s.hello(n, None, Some(BTreeMap::new()), "v", None, 1)
            .await
            .unwrap();
    }
    s
}

fn spec() -> Spec {
    Spec {
        reference: "main".into(),
        commit: commit('c'),
        waves: vec![WaveSpec {
            name: "w".into(),
            selector: Selector::Percent(100),
            policy: Policy::default(),
        }],
        auto_rollback: false,
    }
}

fn state(names: &[&str]) -> State {
    State {
        phase: RolloutPhase::Running,
        wave: 0,
        wave_started_ms: 0,
        baked_since_ms: 0,
        approved: BTreeSet::new(),
        clusters: names
            .iter()
            .map(|n| ClusterProgress {
                name: n.to_string(),
                wave: 0,
                previous: None,
                phase: ClusterPhase::Waiting,
                pinned_ms: 0,
                reason: String::new(),
            })
            .collect(),
        message: String::new(),
    }
}

fn status(phase: i32, commit: &str) -> StatusReport {
    StatusReport {
        phase,
        health: 1,
        applied_commit: commit.into(),
        ..StatusReport::default()
    }
}

async fn pins_and_ledger_survive_reopen(b: Backend) {
    {
        let s = with_clusters(&b, &["a"]).await;
        assert_eq!(
            s.pin(change(&["a"], &commit('a')), 2).await.unwrap().len(),
            1
        );
        assert!(
            s.pin(change(&["a"], &commit('a')), 3)
                .await
                .unwrap()
                .is_empty(),
            "same commit: no entry"
        );
        assert_eq!(
            s.pin(change(&["a"], &commit('b')), 4).await.unwrap()[0].from,
            Some(commit('a'))
        );
    }
    let s = b.open().await;
    let c = s.cluster("a").await.unwrap().unwrap();
    assert_eq!(c.pin, Some((commit('b'), 2)));
    let history = s.history(Some("a"), 10).await.unwrap();
    assert_eq!(history.len(), 2);
    assert!(history[0].id > history[1].id, "newest first");
    assert_eq!(history[0].to, commit('b'));
    // One pin moving a pinned cluster and pinning a new one: each gets
    // its next generation, and its own ledger entry.
    s.hello("n", None, Some(BTreeMap::new()), "v", None, 5)
        .await
        .unwrap();
    let moved = s.pin(change(&["a", "n"], &commit('c')), 6).await.unwrap();
    let froms: Vec<_> = moved
        .iter()
        .map(|e| (e.cluster.as_str(), e.from.clone()))
        .collect();
    assert_eq!(froms, [("a", Some(commit('b'))), ("n", None)]);
    assert_eq!(
        s.cluster("a").await.unwrap().unwrap().pin,
        Some((commit('c'), 3))
    );
    assert_eq!(
        s.cluster("n").await.unwrap().unwrap().pin,
        Some((commit('c'), 1))
    );
}

async fn pin_is_all_or_nothing(b: Backend) {
    let s = with_clusters(&b, &["a"]).await;
    let err = s
        .pin(change(&["a", "ghost"], &commit('a')), 2)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::UnknownCluster(ref c) if c == "ghost"));
    assert_eq!(s.cluster("a").await.unwrap().unwrap().pin, None);
    assert!(s.history(None, 10).await.unwrap().is_empty());
}

async fn membership_refuses_overlaps_and_unforced_pins(b: Backend) {
    let s = with_clusters(&b, &["a", "b", "c"]).await;
    let r = s
        .create_rollout(spec(), state(&["a", "b"]), "me", 5)
        .await
        .unwrap();
    let e = s
        .create_rollout(spec(), state(&["b", "c"]), "me", 6)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, Error::Overlap { rollout, clusters } if *rollout == r.id && clusters == &["b"]),
        "{e}"
    );
    let e = s
        .pin(change(&["c", "a"], &commit('d')), 7)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, Error::InRollout { cluster, .. } if cluster == "a"),
        "{e}"
    );
    assert_eq!(
        s.cluster("c").await.unwrap().unwrap().pin,
        None,
        "all or nothing"
    );
    let mut forced = change(&["a"], &commit('d'));
    forced.force = true;
    let entries = s.pin(forced, 8).await.unwrap();
    assert_eq!(
        entries[0].reason,
        format!("why [forced during rollout {}]", r.id)
    );
    // A finished rollout holds nobody.
    let mut done = r.state.clone();
    done.phase = RolloutPhase::Succeeded;
    s.advance(
        Advance {
            id: r.id.clone(),
            state: done,
            changed: vec![],
            actor: "me".into(),
            pins: vec![],
            events: vec![],
            fence: None,
        },
        9,
    )
    .await
    .unwrap();
    s.pin(change(&["a"], &commit('e')), 10).await.unwrap();
    assert_eq!(s.rollouts(true).await.unwrap().len(), 0);
    let back = s.rollout(&r.id).await.unwrap();
    assert_eq!(back.state.phase, RolloutPhase::Succeeded);
    assert_eq!(back.state.clusters.len(), 2);
    assert!(matches!(
        s.rollout("r999").await,
        Err(Error::UnknownRollout(_))
    ));
}

async fn a_rollout_advances_with_its_pins_and_events(b: Backend) {
    let s = with_clusters(&b, &["a", "b", "c"]).await;
    let r = s
        .create_rollout(spec(), state(&["a", "b", "c"]), "op", 1)
        .await
        .unwrap();
    assert_eq!(r.id, "r1");
    let mut next = r.state.clone();
    next.wave_started_ms = 2;
    next.approved.insert(0);
    next.message = "wave w started".into();
    let mut changed = vec![];
    for m in next.clusters.iter_mut().take(2) {
        m.phase = ClusterPhase::Pinned;
        m.pinned_ms = 2;
        changed.push(m.clone());
    }
    let (entries, events) = s
        .advance(
            Advance {
                id: r.id.clone(),
                state: next.clone(),
                changed,
                actor: "rollout-driver".into(),
                pins: vec![
                    ("a".into(), commit('c'), "wave w".into()),
                    ("b".into(), commit('c'), "wave w".into()),
                ],
                events: vec![
                    ("".into(), "wave w started".into()),
                    ("a".into(), "pinned".into()),
                    ("b".into(), "pinned".into()),
                ],
                fence: None,
            },
            2,
        )
        .await
        .unwrap();
    assert_eq!(entries.len(), 2);
    assert!(entries.iter().all(|e| e.rollout.as_deref() == Some("r1")));
    let ids: Vec<i64> = events.iter().map(|e| e.id).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    assert_eq!(events[1].cluster, "a");
    let back = s.rollout("r1").await.unwrap();
    assert_eq!(back.state, next, "state and members as advanced");
    assert_eq!(back.updated_ms, 2);
    let a = s.cluster("a").await.unwrap().unwrap();
    assert_eq!(a.pin, Some((commit('c'), 1)));
    assert_eq!(a.pin_rollout.as_deref(), Some("r1"));
    assert_eq!(s.cluster("c").await.unwrap().unwrap().pin, None);
    // Events page by id, per rollout or all.
    let first = s.events(Some("r1"), 0, 2).await.unwrap();
    assert_eq!(first.len(), 2);
    let rest = s.events(None, first[1].id, 10).await.unwrap();
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].message, "pinned");
    assert!(s.events(Some("r2"), 0, 10).await.unwrap().is_empty());
    assert!(matches!(
        s.advance(
            Advance {
                id: "r7".into(),
                state: next,
                changed: vec![],
                actor: "x".into(),
                pins: vec![],
                events: vec![],
                fence: None,
            },
            3
        )
        .await,
        Err(Error::UnknownRollout(_))
    ));
}

async fn sites_and_what_their_mirrors_hold(b: Backend) {
    let s = b.open().await;
    let site = SiteRecord {
        name: "dmz".into(),
        mirror_url: "git://mirror/fleet.git".into(),
        selector: "site=dmz".into(),
        ..SiteRecord::default()
    };
    s.add_site(site.clone(), 1).await.unwrap();
    assert!(matches!(
        s.add_site(site.clone(), 2).await,
        Err(Error::SiteExists(_))
    ));
    assert!(matches!(
        s.report_mirror("nope", BTreeMap::new(), vec![], "x", 3)
            .await,
        Err(Error::UnknownSite(_))
    ));
    let refs: BTreeMap<_, _> = [("refs/heads/main".to_string(), "b".repeat(40))].into();
    let r = s
        .report_mirror(
            "dmz",
            refs.clone(),
            vec!["b".repeat(40), "a".repeat(40)],
            "sync",
            4,
        )
        .await
        .unwrap();
    assert_eq!((r.commits, r.reported_ms, r.refs), (2, 4, refs));
    assert_eq!(s.sites_holding(&commit('a')).await.unwrap(), ["dmz"]);
    assert!(s.sites_holding(&commit('c')).await.unwrap().is_empty());
    // A later report replaces the earlier one (a rewrite drops commits).
    s.report_mirror("dmz", BTreeMap::new(), vec!["c".repeat(40)], "sync", 5)
        .await
        .unwrap();
    assert!(s.sites_holding(&commit('a')).await.unwrap().is_empty());
    // A site's exported status is kept unless an older one comes after.
    assert!(s.import_site_status("dmz", 10, vec![1], 6).await.unwrap());
    assert!(!s.import_site_status("dmz", 9, vec![2], 7).await.unwrap());
    assert_eq!(
        s.site_statuses().await.unwrap(),
        [("dmz".to_string(), 6, vec![1])]
    );
    drop(s);
    let s = b.open().await;
    assert_eq!(s.sites().await.unwrap()[0].commits, 1);
    assert_eq!(s.remove_site("dmz").await.unwrap().name, "dmz");
    assert!(s.sites_holding(&commit('c')).await.unwrap().is_empty());
    assert!(s.site_statuses().await.unwrap().is_empty());
    assert!(matches!(
        s.remove_site("dmz").await,
        Err(Error::UnknownSite(_))
    ));
}

async fn identity_tokens_and_revocation(b: Backend) {
    let s = b.open().await;
    let labels: BTreeMap<String, String> = [("env".to_string(), "prod".to_string())].into();
    s.add_cluster("edge", labels.clone(), "h1", 100, 1)
        .await
        .unwrap();
    assert!(matches!(
        s.redeem("nope", 2).await,
        Err(Error::JoinToken("unknown"))
    ));
    assert_eq!(s.redeem("h1", 2).await.unwrap(), ("edge".to_string(), 1));
    assert!(matches!(
        s.redeem("h1", 3).await,
        Err(Error::JoinToken("already used"))
    ));
    assert_eq!(s.check_certificate("edge", Some(1)).await.unwrap(), 1);
    s.hello("edge", Some(1), None, "0.9", None, 4)
        .await
        .unwrap();
    let c = s.cluster("edge").await.unwrap().unwrap();
    assert_eq!((c.agent_version.as_str(), c.last_seen_ms), ("0.9", 4));
    assert_eq!(c.labels, labels, "labels are the operator's");
    s.revoke("edge", 5).await.unwrap();
    assert!(matches!(
        s.hello("edge", Some(1), None, "0.9", None, 6).await,
        Err(Error::Revoked(_))
    ));
    assert!(matches!(
        s.check_certificate("edge", Some(2)).await,
        Err(Error::Revoked(_))
    ));
    assert!(matches!(
        s.revoke("ghost", 6).await,
        Err(Error::UnknownCluster(_))
    ));
    // Added again: a new token and generation; the old certificate is
    // stale, and so is an unused token that expired.
    s.add_cluster("edge", labels.clone(), "h2", 100, 7)
        .await
        .unwrap();
    assert_eq!(s.redeem("h2", 8).await.unwrap(), ("edge".to_string(), 3));
    assert!(matches!(
        s.hello("edge", Some(1), None, "1.0", None, 9).await,
        Err(Error::StaleCertificate { .. })
    ));
    s.hello("edge", Some(3), None, "1.0", None, 9)
        .await
        .unwrap();
    s.add_cluster("late", BTreeMap::new(), "h3", 10, 9)
        .await
        .unwrap();
    assert!(matches!(
        s.redeem("h3", 11).await,
        Err(Error::JoinToken("expired"))
    ));
    assert!(matches!(
        s.hello("ghost", Some(1), None, "1", None, 9).await,
        Err(Error::UnknownCluster(_))
    ));
    // API tokens.
    assert_eq!(s.token_count().await.unwrap(), 0);
    s.create_token("t1", "alice", "admin", 1).await.unwrap();
    assert_eq!(
        s.token("t1").await.unwrap(),
        Some(("alice".to_string(), "admin".to_string()))
    );
    assert_eq!(s.token("t2").await.unwrap(), None);
    assert_eq!(s.token_count().await.unwrap(), 1);
}

async fn status_reports_and_heartbeats(b: Backend) {
    let s = with_clusters(&b, &["a"]).await;
    s.report("a", status(2, "x"), 10).await.unwrap();
    s.seen("a", 12).await.unwrap();
    let c = s.cluster("a").await.unwrap().unwrap();
    assert_eq!(c.last_seen_ms, 12);
    assert_eq!(
        c.status,
        Some(status(2, "x")),
        "a heartbeat keeps the status"
    );
    assert!(matches!(
        s.report("ghost", status(2, "x"), 13).await,
        Err(Error::UnknownCluster(ref c)) if c == "ghost"
    ));
    // A heartbeat from nobody changes nothing and is no error.
    s.seen("ghost", 13).await.unwrap();
    assert!(s.cluster("ghost").await.unwrap().is_none());
    s.set_path_override("a", Some("special/a".into()))
        .await
        .unwrap();
    assert_eq!(
        s.cluster("a")
            .await
            .unwrap()
            .unwrap()
            .path_override
            .as_deref(),
        Some("special/a")
    );
    assert!(matches!(
        s.set_path_override("ghost", None).await,
        Err(Error::UnknownCluster(_))
    ));
    let summary = s.summary().await.unwrap();
    assert_eq!(summary.clusters, [(2, 1, 1)]);
}

/// Many reports in flight at once (as thousands of agents send them):
/// each caller is answered, and each cluster ends with its last report.
async fn a_thousand_reports_at_once(b: Backend) {
    let names: Vec<String> = (0..250).map(|i| format!("c{i:04}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let s = with_clusters(&b, &refs).await;
    let mut tasks = tokio::task::JoinSet::new();
    for round in 0..4i64 {
        for n in &names {
            let (s, n) = (s.clone(), n.clone());
            tasks.spawn(async move {
                s.report(&n, status(2, &format!("{n}-{round}")), 100 + round)
                    .await
            });
        }
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap().unwrap();
    }
    for c in s.clusters().await.unwrap() {
        assert_eq!(c.last_seen_ms, 103, "{}", c.name);
        let applied = c.status.unwrap().applied_commit;
        assert!(applied.starts_with(&c.name), "{applied}");
    }
}

/// A round of reports and heartbeats stored at once, as the hub stores
/// them (more than SQLite's 512 a job): each is answered in order, an
/// unknown cluster's report is refused alone, and a heartbeat keeps the
/// status it does not carry.
async fn a_round_of_reports_in_one_batch(b: Backend) {
    let names: Vec<String> = (0..1200).map(|i| format!("c{i:04}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let s = with_clusters(&b, &refs).await;
    s.report("c0001", status(2, "before"), 5).await.unwrap();
    let mut beats: Vec<_> = names
        .iter()
        .map(|n| (n.clone(), Some(status(2, &format!("{n}-new"))), 10))
        .collect();
    beats[1] = ("c0001".into(), None, 11);
    beats.insert(700, ("ghost".into(), Some(status(2, "g")), 10));
    let answers = s.report_many(beats).await;
    assert_eq!(answers.len(), 1201);
    for (i, a) in answers.iter().enumerate() {
        match i {
            700 => assert!(
                matches!(a, Err(Error::UnknownCluster(c)) if c == "ghost"),
                "{a:?}"
            ),
            _ => assert!(a.is_ok(), "answer {i}: {a:?}"),
        }
    }
    let clusters = s.clusters().await.unwrap();
    assert_eq!(clusters.len(), 1200, "the unknown cluster was not added");
    for c in clusters {
        let applied = c.status.unwrap().applied_commit;
        if c.name == "c0001" {
            assert_eq!((applied.as_str(), c.last_seen_ms), ("before", 11));
        } else {
            assert_eq!(applied, format!("{}-new", c.name));
            assert_eq!(c.last_seen_ms, 10, "{}", c.name);
        }
    }
}

async fn listing_paging_and_counting(b: Backend) {
    // Names sort bytewise on every backend ("B" before "a").
    let s = with_clusters(&b, &["b", "a", "B", "c"]).await;
    let names = |v: Vec<ferry_coordinator::store::ClusterRecord>| {
        v.into_iter().map(|c| c.name).collect::<Vec<_>>()
    };
    assert_eq!(names(s.clusters().await.unwrap()), ["B", "a", "b", "c"]);
    assert_eq!(names(s.clusters_page("", 2).await.unwrap()), ["B", "a"]);
    assert_eq!(names(s.clusters_page("a", 2).await.unwrap()), ["b", "c"]);
    s.pin(change(&["a", "c"], &commit('a')), 2).await.unwrap();
    let pinned = s
        .pinned(vec!["c".into(), "a".into(), "ghost".into()])
        .await
        .unwrap();
    let mut got: Vec<_> = pinned
        .iter()
        .map(|p| (p.name.as_str(), p.pin.clone()))
        .collect();
    got.sort();
    assert_eq!(
        got,
        [("a", Some((commit('a'), 1))), ("c", Some((commit('a'), 1)))]
    );
    let mut named: Vec<_> = s
        .clusters_named(vec!["c".into(), "ghost".into(), "b".into()])
        .await
        .unwrap()
        .into_iter()
        .map(|c| (c.name, c.pin.map(|p| p.1)))
        .collect();
    named.sort();
    assert_eq!(
        named,
        [("b".to_string(), None), ("c".to_string(), Some(1))],
        "by name, unknown names left out"
    );
    s.revoke("B", 3).await.unwrap();
    let labels: Vec<String> = s
        .cluster_labels()
        .await
        .unwrap()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(labels, ["a", "b", "c"], "revoked clusters are left out");
    s.record_signer(&commit('a'), "ops@example.com", 4)
        .await
        .unwrap();
    let h = s.history(Some("a"), 10).await.unwrap();
    assert_eq!(h[0].signer.as_deref(), Some("ops@example.com"));
    s.create_rollout(spec(), state(&["b"]), "me", 5)
        .await
        .unwrap();
    let summary = s.summary().await.unwrap();
    assert_eq!(summary.rollouts, [("running".to_string(), 1)]);
    assert_eq!(summary.clusters.iter().map(|c| c.2).sum::<u64>(), 3);
}

/// A wrong address: a clear error naming where it tried, never the
/// password.
#[tokio::test]
async fn postgres_a_wrong_dsn_is_a_clear_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let e = Postgres::open(&format!(
        "postgres://ferry:hunter2secret@127.0.0.1:{port}/fleet"
    ))
    .await
    .err()
    .expect("nothing listens there");
    let text = format!("{e}");
    assert!(
        text.contains(&format!("ferry@127.0.0.1:{port}/fleet")),
        "{text}"
    );
    assert!(!text.contains("hunter2"), "{text}");
    assert!(e.is_transient(), "a database that is down may come back");
    let e = Postgres::open("postgres://ferry:hunter2secret@[::1/x")
        .await
        .err()
        .expect("not an address");
    let text = format!("{e}");
    assert!(text.contains("--store"), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
}

/// A database a newer coordinator migrated is refused, untouched; a
/// migration that fails half-way leaves nothing behind and names itself.
#[tokio::test]
async fn postgres_newer_schema_and_interrupted_migration() {
    use ferry_coordinator::store::postgres::{MIGRATIONS, Options};
    let server = Scratch::start().unwrap();
    let dsn = server.create("newer").await.unwrap();
    Postgres::open(&dsn).await.unwrap();
    server
        .execute("newer", "UPDATE ferry_schema SET version = 99")
        .await
        .unwrap();
    let e = Postgres::open(&dsn).await.err().expect("refused");
    assert!(matches!(e, Error::TooNew { found: 99, .. }), "{e}");

    let dsn = server.create("broken").await.unwrap();
    let mut broken = MIGRATIONS.to_vec();
    broken.push("CREATE TABLE half (x INTEGER); INSERT INTO nowhere VALUES (1);");
    let e = Postgres::open_with(&dsn, &Options::default(), &broken)
        .await
        .err()
        .expect("the last migration fails");
    let last = format!("migration {}", MIGRATIONS.len() + 1);
    assert!(e.to_string().contains(&last), "{e}");
    // Nothing of any migration is there: not the table the broken one
    // made, not the earlier ones', and no recorded version.
    server
        .execute(
            "broken",
            "DO $$ BEGIN
                IF EXISTS (SELECT 1 FROM pg_tables WHERE tablename IN ('half', 'clusters', 'leases', 'ferry_schema'))
                THEN RAISE EXCEPTION 'half-migrated'; END IF;
             END $$",
        )
        .await
        .unwrap();
    // The real migrations apply afterwards.
    let s = Postgres::open(&dsn).await.unwrap();
    assert_eq!(s.token_count().await.unwrap(), 0);
}

/// Two coordinators on one database: what one writes the other reads at
/// once, and pins made through both at the same time neither duplicate
/// nor lose a ledger entry or a generation.
#[tokio::test]
async fn postgres_two_replicas_share_pins_and_the_ledger() {
    let b = Backend::postgres().await;
    let names: Vec<String> = (0..20).map(|i| format!("c{i:02}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let one = with_clusters(&b, &refs).await;
    let two = b.open().await;
    let mut tasks = tokio::task::JoinSet::new();
    for (i, c) in ['a', 'b', 'c', 'd', 'e', 'f'].into_iter().enumerate() {
        let s = if i % 2 == 0 { one.clone() } else { two.clone() };
        let names = names.clone();
        tasks.spawn(async move {
            let refs: Vec<&str> = names.iter().map(String::as_str).collect();
            s.pin(change(&refs, &commit(c)), i as i64).await
        });
    }
    let mut written = 0;
    while let Some(r) = tasks.join_next().await {
        written += r.unwrap().unwrap().len();
    }
    assert_eq!(written, 6 * 20, "every pin moved every cluster once");
    let history = two.history(None, 1000).await.unwrap();
    assert_eq!(history.len(), 120);
    let ids: BTreeSet<i64> = history.iter().map(|e| e.id).collect();
    assert_eq!(ids.len(), 120, "no duplicate ledger ids");
    for c in one.clusters().await.unwrap() {
        let (commit, generation) = c.pin.unwrap();
        assert_eq!(generation, 6, "{}: one generation per pin", c.name);
        // Each cluster's ledger is a chain: every entry moves from the
        // commit the one before moved to.
        let mut chain = two.history(Some(&c.name), 10).await.unwrap();
        chain.reverse();
        assert_eq!(chain[0].from, None);
        for w in chain.windows(2) {
            assert_eq!(w[1].from.as_ref(), Some(&w[0].to), "{}", c.name);
        }
        assert_eq!(chain[5].to, commit);
    }
    // A rollout created through one is seen, and refused again, by the other.
    let r = one
        .create_rollout(spec(), state(&["c00"]), "me", 9)
        .await
        .unwrap();
    assert_eq!(two.rollouts(true).await.unwrap()[0].id, r.id);
    assert!(matches!(
        two.create_rollout(spec(), state(&["c00"]), "me", 10).await,
        Err(Error::Overlap { .. })
    ));
}

/// The next change a replica is told of that `pick` takes, within 10 s.
async fn next_change<T>(
    told: &mut tokio::sync::broadcast::Receiver<Change>,
    mut pick: impl FnMut(Change) -> Option<T>,
) -> T {
    tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            if let Some(t) = pick(told.recv().await.unwrap()) {
                return t;
            }
        }
    })
    .await
    .expect("told within 10 s")
}

/// What rollouts read of a cluster, changed through one replica (its
/// report stored, its session opened or ended), is told to the others once
/// stored, so their rollouts read just that cluster again; a heartbeat,
/// which changes nothing they read, is not told.
#[tokio::test]
async fn postgres_replicas_are_told_what_changed_through_another() {
    let b = Backend::postgres().await;
    let one = with_clusters(&b, &["probe", "a", "b"]).await;
    let two = b.open().await;
    let mut told = two.changes().expect("replicas follow each other");
    let mut next_touched = async || {
        next_change(&mut told, |c| match c {
            Change::Touched(names) if names != ["probe"] => Some(names),
            _ => None,
        })
        .await
    };
    // Once the other listens (probes),
    let mut probes = two.changes().unwrap();
    loop {
        one.report("probe", status(2, "p"), 1).await.unwrap();
        let heard = tokio::time::timeout(std::time::Duration::from_millis(200), probes.recv());
        if matches!(heard.await, Ok(Ok(Change::Touched(_)))) {
            break;
        }
    }
    // a round of reports is told by the clusters that reported, and what
    // it stored is there to read when told;
    let answers = one
        .report_many(vec![
            ("a".into(), Some(status(2, "new")), 10),
            ("b".into(), None, 10),
        ])
        .await;
    assert!(answers.iter().all(Result::is_ok), "{answers:?}");
    assert_eq!(next_touched().await, ["a"]);
    let a = two.cluster("a").await.unwrap().unwrap();
    assert_eq!(a.status.unwrap().applied_commit, "new");
    // a session opened, and one ended, are told too.
    one.hello("b", None, None, "v2", None, 20).await.unwrap();
    assert_eq!(next_touched().await, ["b"]);
    assert!(two.cluster("b").await.unwrap().unwrap().live_session);
    one.session_ended("b", 20).await.unwrap();
    assert_eq!(next_touched().await, ["b"]);
    assert!(!two.cluster("b").await.unwrap().unwrap().live_session);
}

/// One lease, two replicas: the holder renews it, the other is told who
/// holds it; once it runs out the other takes it with a new token, and the
/// old holder's fenced transition is refused and writes nothing.
#[tokio::test]
async fn postgres_a_lease_fences_an_ex_leader() {
    let b = Backend::postgres().await;
    let one = with_clusters(&b, &["a"]).await;
    let two = b.open().await;
    let r = one
        .create_rollout(spec(), state(&["a"]), "me", 1)
        .await
        .unwrap();
    let Lease::Held(first) = one.lease("rollouts", "one", 300).await.unwrap() else {
        panic!("a free lease is taken");
    };
    assert_eq!(
        one.lease("rollouts", "one", 300).await.unwrap(),
        Lease::Held(first)
    );
    assert_eq!(
        two.lease("rollouts", "two", 300).await.unwrap(),
        Lease::Elsewhere("one".into())
    );
    let fenced = |holder: &str, token: i64, c: char| Advance {
        id: r.id.clone(),
        state: r.state.clone(),
        changed: vec![],
        actor: holder.into(),
        pins: vec![("a".into(), commit(c), "wave w".into())],
        events: vec![("a".into(), format!("pinned by {holder}"))],
        fence: Some(Fence {
            lease: "rollouts".into(),
            holder: holder.into(),
            token,
        }),
    };
    one.advance(fenced("one", first, 'a'), 2).await.unwrap();
    // Unrenewed, it runs out (by the database's clock) and is taken over.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let second = loop {
        if let Lease::Held(t) = two.lease("rollouts", "two", 60_000).await.unwrap() {
            break t;
        }
        assert!(std::time::Instant::now() < deadline, "never taken over");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert!(second > first, "a takeover moves the token on");
    let e = one.advance(fenced("one", first, 'b'), 3).await.unwrap_err();
    assert!(matches!(e, Error::Fenced { .. }), "{e}");
    assert_eq!(
        one.lease("rollouts", "one", 300).await.unwrap(),
        Lease::Elsewhere("two".into())
    );
    two.advance(fenced("two", second, 'c'), 4).await.unwrap();
    let ledger: Vec<Commit> = one
        .history(Some("a"), 10)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.to)
        .collect();
    assert_eq!(
        ledger,
        [commit('c'), commit('a')],
        "the fenced pin wrote nothing"
    );
    let events: Vec<String> = one
        .events(Some(&r.id), 0, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.message)
        .collect();
    assert_eq!(events, ["pinned by one", "pinned by two"]);
}

/// A rollout command relayed between replicas is carried out at most
/// once: taken by one, never by a second; an asker that withdraws an
/// untaken command stops it for good, and learns when it was too late.
#[tokio::test]
async fn postgres_a_relayed_command_is_taken_once() {
    let b = Backend::postgres().await;
    let asker = b.open().await;
    let leader = b.open().await;
    let mut told = leader.changes().expect("replicas follow each other");
    let mut next_told = async || {
        next_change(&mut told, |c| match c {
            Change::Command(c) if !c.starts_with("probe") => Some(c),
            _ => None,
        })
        .await
    };
    // Once the leader listens (probes, withdrawn),
    let mut probes = leader.changes().unwrap();
    for n in 0.. {
        let probe = format!("probe{n}");
        asker.relay_command(&probe, vec![]).await.unwrap();
        assert!(asker.withdraw_command(&probe).await.unwrap());
        let heard = tokio::time::timeout(std::time::Duration::from_millis(200), probes.recv());
        if matches!(heard.await, Ok(Ok(Change::Command(_)))) {
            break;
        }
    }
    // it is told of every command, in order.
    assert!(asker.relay_command("c1", b"start".to_vec()).await.unwrap());
    asker.relay_command("c2", b"pause".to_vec()).await.unwrap();
    assert_eq!(next_told().await, "c1");
    assert_eq!(next_told().await, "c2");
    assert_eq!(leader.untaken_commands(60_000).await.unwrap(), ["c1", "c2"]);
    assert_eq!(
        leader
            .take_command("c1", "leader")
            .await
            .unwrap()
            .as_deref(),
        Some(&b"start"[..])
    );
    assert_eq!(asker.take_command("c1", "ex-leader").await.unwrap(), None);
    assert!(
        !asker.withdraw_command("c1").await.unwrap(),
        "taken already"
    );
    assert_eq!(asker.command_answer("c1").await.unwrap(), None);
    leader.answer_command("c1", b"r1".to_vec()).await.unwrap();
    assert_eq!(
        asker.command_answer("c1").await.unwrap().as_deref(),
        Some(&b"r1"[..])
    );
    assert_eq!(
        asker.command_answer("c1").await.unwrap(),
        None,
        "taken once"
    );
    // Withdrawn before anyone took it: never carried out.
    assert!(asker.withdraw_command("c2").await.unwrap());
    assert_eq!(leader.take_command("c2", "leader").await.unwrap(), None);
    assert!(leader.untaken_commands(60_000).await.unwrap().is_empty());
}

/// TLS to PostgreSQL: verified against the CA given, required off this
/// machine. The server here takes TCP connections over TLS only.
#[tokio::test]
async fn postgres_over_verified_tls() {
    use ferry_coordinator::store::postgres::{MIGRATIONS, Options};
    use kube_emulator::tls::Ca;
    let ca = Ca::new("db ca").unwrap();
    let leaf = ca.issue("db", &["127.0.0.1", "localhost"], false).unwrap();
    let server = Scratch::start_tls(&leaf.cert_pem, &leaf.key_pem).unwrap();
    server.create("fleet").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.cert_pem()).unwrap();
    let at = format!("postgres://ferry@127.0.0.1:{}/fleet", server.port());
    let verified = Options {
        ca: Some(ca_file),
        insecure: false,
    };
    let s = Postgres::open_with(&format!("{at}?sslmode=require"), &verified, MIGRATIONS)
        .await
        .unwrap();
    assert_eq!(s.token_count().await.unwrap(), 0);
    // On this machine TLS is only used when asked for: this server
    // refuses the plaintext attempt.
    assert!(Postgres::open(&at).await.is_err());
    // Another CA's certificate is not trusted.
    let other = dir.path().join("other.pem");
    std::fs::write(&other, Ca::new("other").unwrap().cert_pem()).unwrap();
    let e = Postgres::open_with(
        &format!("{at}?sslmode=require"),
        &Options {
            ca: Some(other),
            insecure: false,
        },
        MIGRATIONS,
    )
    .await
    .err()
    .expect("an untrusted certificate");
    let text = e.to_string();
    assert!(text.contains("certificate"), "{text}");
    // Off this machine: plaintext is refused before any connection is
    // tried, unless --insecure says so.
    let remote = "postgres://ferry:secret@db.example.invalid:5432/fleet?sslmode=disable";
    let e = Postgres::open_with(remote, &Options::default(), MIGRATIONS)
        .await
        .err()
        .expect("plaintext off this machine");
    let text = e.to_string();
    assert!(
        text.contains("--insecure") && text.contains("db.example.invalid"),
        "{text}"
    );
    assert!(!text.contains("secret"), "{text}");
}
