//! Identity and access: every refusal an auditor asks about, and rotation.

use ferry_agent::identity;
use ferry_integration::harness::{eventually, init_tracing};
use ferry_integration::world::{World, WorldConfig};
use ferry_proto::DialConfig;
use ferry_proto::v1::agent_link_client::AgentLinkClient;
use ferry_proto::v1::{
    AddClusterRequest, AgentMessage, CreateTokenRequest, Hello, ListClustersRequest, PinRequest,
    agent_message,
};
use std::time::Duration;
use tonic::Code;

async fn add(world: &World, name: &str, ttl: i64) -> String {
    world
        .admin()
        .await
        .unwrap()
        .add_cluster(AddClusterRequest {
            name: name.into(),
            labels: Default::default(),
            token_ttl_seconds: ttl,
        })
        .await
        .unwrap()
        .into_inner()
        .join_token
}

fn dial(world: &World) -> DialConfig {
    DialConfig {
        addr: world.addr(),
        ca: Some(world.ca_file.clone()),
        ..DialConfig::default()
    }
}

/// Opens an AgentLink session with `id` (or no certificate) saying Hello as `claim`.
async fn hello_as(
    world: &World,
    id: Option<&identity::Identity>,
    claim: &str,
) -> Result<(), tonic::Status> {
    let mut d = dial(world);
    d.identity = id.map(|i| (i.cert_pem.clone(), i.key_pem.clone()));
    let channel = d
        .endpoint()
        .unwrap()
        .connect()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(AgentMessage {
        msg: Some(agent_message::Msg::Hello(Hello {
            cluster: claim.into(),
            ..Default::default()
        })),
    })
    .await
    .unwrap();
    let mut stream = AgentLinkClient::new(channel)
        .session(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    // Accepted sessions stay open; a refusal may also arrive as the first message.
    match tokio::time::timeout(Duration::from_millis(500), stream.message()).await {
        Ok(Err(s)) => Err(s),
        _ => Ok(()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_refusal() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let world = World::start(dir.path(), WorldConfig::default())
        .await
        .unwrap();

    // A join token works once.
    let token = add(&world, "alpha", 600).await;
    let alpha = identity::enroll(&dial(&world), "alpha", &token)
        .await
        .unwrap();
    let reused = identity::enroll(&dial(&world), "alpha", &token)
        .await
        .unwrap_err();
    assert!(reused.to_string().contains("already used"), "{reused}");
    let unknown = identity::enroll(&dial(&world), "alpha", "ferry-join-made-up")
        .await
        .unwrap_err();
    assert!(unknown.to_string().contains("unknown"), "{unknown}");

    // An expired token.
    let short = add(&world, "beta", 1).await;
    tokio::time::sleep(Duration::from_millis(1100)).await; // let the token's one second pass
    let expired = identity::enroll(&dial(&world), "beta", &short)
        .await
        .unwrap_err();
    assert!(expired.to_string().contains("expired"), "{expired}");

    // The wrong CA: the agent does not trust an impostor coordinator.
    let other = kube_emulator::tls::Ca::new("someone else").unwrap();
    let wrong_ca = dir.path().join("wrong-ca.pem");
    std::fs::write(&wrong_ca, other.cert_pem()).unwrap();
    let mut bad_dial = dial(&world);
    bad_dial.ca = Some(wrong_ca);
    let token = add(&world, "gamma", 600).await;
    let err = identity::enroll(&bad_dial, "gamma", &token)
        .await
        .unwrap_err();
    assert!(matches!(err, identity::Error::Unreachable(_)), "{err}");

    // A certificate for alpha cannot speak for gamma.
    let denied = hello_as(&world, Some(&alpha), "gamma").await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    hello_as(&world, Some(&alpha), "alpha")
        .await
        .expect("alpha as itself");
    // No certificate at all.
    let anon = hello_as(&world, None, "alpha").await.unwrap_err();
    assert_eq!(anon.code(), Code::Unauthenticated, "{anon:?}");

    // A revoked cluster's certificate is refused, and so is its renewal.
    world.ferry(&["cluster", "revoke", "alpha"]).await.unwrap();
    let revoked = hello_as(&world, Some(&alpha), "alpha").await.unwrap_err();
    assert_eq!(revoked.code(), Code::Unauthenticated, "{revoked:?}");
    let renewal = identity::renew(&dial(&world), "alpha", &alpha)
        .await
        .unwrap_err();
    assert!(renewal.to_string().contains("revoked"), "{renewal}");

    // Operators: no token, an unknown token, a viewer trying to pin.
    let none = world
        .admin_as("")
        .await
        .unwrap()
        .list_clusters(ListClustersRequest::default())
        .await
        .unwrap_err();
    assert_eq!(none.code(), Code::Unauthenticated);
    let made_up = world
        .admin_as("ferry-nope")
        .await
        .unwrap()
        .list_clusters(ListClustersRequest::default())
        .await
        .unwrap_err();
    assert_eq!(made_up.code(), Code::Unauthenticated);
    let viewer = world
        .admin()
        .await
        .unwrap()
        .create_token(CreateTokenRequest {
            role: "viewer".into(),
            name: "dashboard".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .token;
    let mut as_viewer = world.admin_as(&viewer).await.unwrap();
    as_viewer
        .list_clusters(ListClustersRequest::default())
        .await
        .expect("viewers read");
    let pin = as_viewer
        .pin(PinRequest {
            clusters: vec!["gamma".into()],
            r#ref: "main".into(),
            reason: String::new(),
            force: false,
            allow_mass_prune: false,
        })
        .await
        .unwrap_err();
    assert_eq!(pin.code(), Code::PermissionDenied);
    assert!(
        pin.message().contains("dashboard") && pin.message().contains("operator"),
        "{}",
        pin.message()
    );
    let escalate = as_viewer
        .create_token(CreateTokenRequest {
            role: "admin".into(),
            name: "me".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(escalate.code(), Code::PermissionDenied);

    // The bootstrap admin token is owner-only.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for f in ["admin-token", "ca-key.pem"] {
            let mode = std::fs::metadata(dir.path().join("coordinator").join(f))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "{f} is readable by others: {mode:o}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn certificates_rotate_without_dropping_the_sync() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let cfg = WorldConfig {
        cert_lifetime: Duration::from_secs(3),
        ..WorldConfig::default()
    };
    let mut world = World::start(dir.path(), cfg).await.unwrap();
    let app = |v: &str| {
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\n  namespace: default\ndata:\n  v: \"{v}\"\n"
        )
    };
    let a = world
        .git
        .commit("A", &[("clusters/rot/app.yaml", Some(&app("1")))])
        .unwrap();
    world.add_cluster("rot", &[]).await.unwrap();
    world.wait_connected(&["rot"]).await;
    world.ferry(&["pin", "rot", "--commit", &a]).await.unwrap();
    world.wait_healthy_at("rot", &a).await;

    let client = ferry_integration::harness::kube_client(world.emulator("rot")).await;
    let first = identity::load(&client, &ferry_agent::identity::Place::new("ferry-system"))
        .await
        .unwrap()
        .unwrap();
    // Renewed (at two thirds of three seconds), kept in the Secret, twice over.
    let mut seen = vec![first.not_after_ms];
    while seen.len() < 3 {
        let id = eventually("a renewed certificate", || async {
            let id = identity::load(&client, &ferry_agent::identity::Place::new("ferry-system"))
                .await
                .ok()??;
            (id.not_after_ms > *seen.last().unwrap()).then_some(id)
        })
        .await;
        seen.push(id.not_after_ms);
    }
    // Renewal waits for two thirds of the lifetime: no renewal storm.
    for pair in seen.windows(2) {
        assert!(pair[1] - pair[0] >= 1500, "renewed too early: {seen:?}");
    }
    // The first certificate has long expired; the agent still syncs.
    let b = world
        .git
        .commit("B", &[("clusters/rot/app.yaml", Some(&app("2")))])
        .unwrap();
    world.ferry(&["pin", "rot", "--commit", &b]).await.unwrap();
    world.wait_healthy_at("rot", &b).await;
    // And it reconnects with the current certificate after a coordinator restart.
    world.stop_coordinator().await.unwrap();
    world.start_coordinator().await.unwrap();
    world.wait_connected(&["rot"]).await;
}

/// Opens a session as `id` for `cluster` (its Hello sent) and returns the
/// sender for what follows and the coordinator's stream.
pub(crate) async fn session_as(
    world: &World,
    id: &identity::Identity,
    cluster: &str,
) -> (
    tokio::sync::mpsc::Sender<AgentMessage>,
    tonic::Streaming<ferry_proto::v1::CoordinatorMessage>,
) {
    let mut d = dial(world);
    d.identity = Some((id.cert_pem.clone(), id.key_pem.clone()));
    let channel = d.endpoint().unwrap().connect().await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(AgentMessage {
        msg: Some(agent_message::Msg::Hello(Hello {
            cluster: cluster.into(),
            ..Default::default()
        })),
    })
    .await
    .unwrap();
    let stream = AgentLinkClient::new(channel)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20)
        .session(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    (tx, stream)
}

pub(crate) async fn enrolled(world: &World, name: &str) -> identity::Identity {
    let token = add(world, name, 600).await;
    identity::enroll(&dial(world), name, &token).await.unwrap()
}

pub(crate) fn status(report: ferry_proto::v1::StatusReport) -> AgentMessage {
    AgentMessage {
        msg: Some(agent_message::Msg::Status(report)),
    }
}

/// A stolen certificate never comes back: revoking and re-adding a cluster
/// leaves every certificate issued before refused, for sessions and renewal.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn revocation_binds_to_certificates() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let world = World::start(dir.path(), WorldConfig::default())
        .await
        .unwrap();
    let stolen = enrolled(&world, "b").await;
    hello_as(&world, Some(&stolen), "b")
        .await
        .expect("b as itself");
    world.ferry(&["cluster", "revoke", "b"]).await.unwrap();
    // The only way back in: add it again, which issues a fresh join token.
    let fresh = enrolled(&world, "b").await;
    let refused = hello_as(&world, Some(&stolen), "b").await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    assert!(
        refused.message().contains("enroll with a new join token"),
        "{refused:?}"
    );
    let renewal = identity::renew(&dial(&world), "b", &stolen)
        .await
        .unwrap_err();
    assert!(matches!(renewal, identity::Error::Refused(_)), "{renewal}");
    // The new identity works, and renews into one that works.
    hello_as(&world, Some(&fresh), "b")
        .await
        .expect("the new identity");
    let renewed = identity::renew(&dial(&world), "b", &fresh).await.unwrap();
    hello_as(&world, Some(&renewed), "b")
        .await
        .expect("its renewal");
    // Re-adding without revoking also retires the earlier certificates.
    let again = enrolled(&world, "b").await;
    let old = hello_as(&world, Some(&renewed), "b").await.unwrap_err();
    assert_eq!(old.code(), Code::Unauthenticated, "{old:?}");
    hello_as(&world, Some(&again), "b")
        .await
        .expect("the newest identity");
}

/// One cluster filling its status to the message cap cannot blind
/// operators: what one report may store is bounded, listings are paged.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_cluster_cannot_blind_operators() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let world = World::start(dir.path(), WorldConfig::default())
        .await
        .unwrap();
    let loud = enrolled(&world, "loud").await;
    for n in ["quiet-1", "quiet-2", "quiet-3", "quiet-4"] {
        add(&world, n, 600).await;
    }
    let (tx, _stream) = session_as(&world, &loud, "loud").await;
    let problems: Vec<ferry_proto::v1::ObjectProblem> = (0..100_000)
        .map(|i| ferry_proto::v1::ObjectProblem {
            object: format!("ConfigMap/x/c{i}"),
            source: String::new(),
            message: "no".into(),
        })
        .collect();
    // Just under the 4 MiB message cap, so that anything wrapping it (a
    // Cluster, a listing) would be over what a client accepts.
    let mut report = ferry_proto::v1::StatusReport {
        problems,
        ..Default::default()
    };
    let cap = ferry_coordinator::service::MAX_AGENT_MESSAGE;
    let room = cap - 64 - prost::Message::encoded_len(&status(report.clone()));
    report.message = "m".repeat(room);
    assert!(prost::Message::encoded_len(&status(report.clone())) < cap);
    tx.send(status(report)).await.unwrap();
    let shown = eventually("the loud status stored", || async {
        let c = world.cluster("loud").await.ok()?;
        c.status.filter(|s| !s.problems.is_empty())
    })
    .await;
    assert!(shown.message.len() <= ferry_proto::status::MAX_MESSAGE);
    assert_eq!(shown.problems.len(), ferry_proto::status::MAX_PROBLEMS + 1);
    assert!(
        shown
            .problems
            .last()
            .unwrap()
            .message
            .contains("99900 more")
    );
    // The whole fleet still lists, and the loud cluster still shows.
    let list = world.ferry(&["clusters"]).await.unwrap();
    for n in ["loud", "quiet-1", "quiet-4"] {
        assert!(list.contains(n), "{list}");
    }
    let show = world.ferry(&["cluster", "show", "loud"]).await.unwrap();
    assert!(show.contains("99900 more"), "{show}");
    // Pages: the API hands out at most page_size, and the CLI follows.
    let page = world
        .admin()
        .await
        .unwrap()
        .list_clusters(ListClustersRequest {
            page_size: 2,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.clusters.len(), 2);
    assert_eq!(page.next_page_token, page.clusters[1].name);
    let paged = world
        .ferry(&["clusters", "--page-size", "2", "-o", "json"])
        .await
        .unwrap();
    let names: Vec<String> = serde_json::from_str::<Vec<serde_json::Value>>(&paged)
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["loud", "quiet-1", "quiet-2", "quiet-3", "quiet-4"]);
}

/// A report over the message cap ends the session with RESOURCE_EXHAUSTED
/// (the agent learns why), not a silent OK.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_oversized_report_is_refused_as_such() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let world = World::start(dir.path(), WorldConfig::default())
        .await
        .unwrap();
    let big = enrolled(&world, "big").await;
    let (tx, mut stream) = session_as(&world, &big, "big").await;
    tx.send(status(ferry_proto::v1::StatusReport {
        message: "x".repeat(5 << 20),
        ..Default::default()
    }))
    .await
    .unwrap();
    let end = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("the session ends");
    let e = end.expect_err("an error, not a quiet end");
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    // The coordinator is fine, and still holds nothing of it.
    let c = world.cluster("big").await.unwrap();
    assert!(c.status.is_none_or(|s| s.message.len() < 1024));
}

/// What agents say reaches operators' terminals escaped; what cannot be a
/// commit id is not stored as one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn agent_text_never_reaches_a_terminal_raw() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let world = World::start(dir.path(), WorldConfig::default())
        .await
        .unwrap();
    let rogue = enrolled(&world, "rogue").await;
    let (tx, _stream) = session_as(&world, &rogue, "rogue").await;
    let nasty = "\u{1b}]0;pwned\u{7}\u{1b}[2J\nNAME  FAKE";
    // A commit id that is not one: the report is dropped whole.
    tx.send(status(ferry_proto::v1::StatusReport {
        applied_commit: nasty.into(),
        message: "first".into(),
        ..Default::default()
    }))
    .await
    .unwrap();
    tx.send(status(ferry_proto::v1::StatusReport {
        message: format!("hello {nasty}"),
        problems: vec![ferry_proto::v1::ObjectProblem {
            object: nasty.into(),
            source: nasty.into(),
            message: nasty.into(),
        }],
        ..Default::default()
    }))
    .await
    .unwrap();
    let s = eventually("the rogue status", || async {
        world
            .cluster("rogue")
            .await
            .ok()?
            .status
            .filter(|s| s.message.starts_with("hello"))
    })
    .await;
    assert_eq!(s.applied_commit, "", "the bad commit id was never stored");
    for out in [
        world.ferry(&["cluster", "show", "rogue"]).await.unwrap(),
        world.ferry(&["clusters"]).await.unwrap(),
    ] {
        assert!(!out.contains('\u{1b}') && !out.contains('\u{7}'), "{out:?}");
        assert!(!out.contains("\nNAME  FAKE"), "a forged line: {out}");
    }
    let show = world.ferry(&["cluster", "show", "rogue"]).await.unwrap();
    assert!(show.contains("\\u{1b}]0;pwned"), "{show}");
}

/// `ferry --addr http://…` would send the token in the clear: refused
/// unless --insecure says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_refuses_plaintext_unless_told() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let world = World::start(dir.path(), WorldConfig::default())
        .await
        .unwrap();
    let addr = format!("http://{}", world.coordinator_addr);
    let run = |extra: &[&str]| {
        let mut argv = vec!["ferry", "--addr", &addr, "--token", &world.admin_token];
        argv.extend(extra);
        argv.push("clusters");
        let args = <ferry_coordinator::cli::Args as clap::Parser>::try_parse_from(argv).unwrap();
        ferry_coordinator::cli::execute(args)
    };
    let e = run(&[]).await.unwrap_err();
    assert!(format!("{e:#}").contains("refusing plaintext"), "{e:#}");
    // Told, it tries (and this TLS coordinator does not speak plaintext).
    let e = run(&["--insecure"]).await.unwrap_err();
    assert!(!format!("{e:#}").contains("refusing plaintext"), "{e:#}");
}

/// Labels a path template uses are checked when the cluster is added.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn labels_that_break_the_path_are_refused_at_add() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let world = World::start(
        dir.path(),
        WorldConfig {
            path_template: "clusters/{label.region}/{cluster}".into(),
            ..WorldConfig::default()
        },
    )
    .await
    .unwrap();
    let e = world
        .ferry(&["cluster", "add", "x", "--label", "region=../../secrets"])
        .await
        .unwrap_err();
    assert!(format!("{e:#}").contains("region"), "{e:#}");
    let e = world.ferry(&["cluster", "add", "y"]).await.unwrap_err();
    assert!(format!("{e:#}").contains("needs label \"region\""), "{e:#}");
    // Straight to the API as well (the CLI checks syntax first).
    let mut labels = std::collections::HashMap::new();
    labels.insert("region".to_string(), "..".to_string());
    let e = world
        .admin()
        .await
        .unwrap()
        .add_cluster(AddClusterRequest {
            name: "z".into(),
            labels,
            token_ttl_seconds: 60,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    world
        .ferry(&["cluster", "add", "ok", "--label", "region=eu-west"])
        .await
        .expect("a good label");
}

/// Credentials never leave the Secret they came from: a repository URL with
/// a password is refused (it would be handed to every agent and kept in
/// each cluster), without printing the password; the coordinator reads a
/// private repository with its own credentials directory instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_password_in_a_repository_url() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let cfg = ferry_coordinator::Config::new(
        "127.0.0.1:0".parse().unwrap(),
        dir.path().join("c"),
        "https://bot:s3cret-pw@git.example.com/fleet.git".into(),
    );
    let e = match ferry_coordinator::Coordinator::start(cfg).await {
        Ok(_) => panic!("a password in --repo was accepted"),
        Err(e) => e.to_string(),
    };
    assert!(e.contains("--repo") && e.contains("***"), "{e}");
    assert!(!e.contains("s3cret-pw"), "{e}");

    // The coordinator resolves refs of an HTTPS repository behind basic
    // auth and a private CA with --git-secret-dir.
    let world = World::start(
        &dir.path().join("w"),
        WorldConfig {
            transport: ferry_integration::world::Transport::HttpsAuth,
            coordinator_uses_git_secret: true,
            ..WorldConfig::default()
        },
    )
    .await
    .unwrap();
    let head = world
        .git
        .commit("A", &[("clusters/a/x.yaml", Some("{}"))])
        .unwrap();
    add(&world, "a", 600).await;
    let out = world
        .ferry(&["pin", "a", "--commit", "main"])
        .await
        .unwrap();
    assert!(out.contains(&head), "{out}");
}
