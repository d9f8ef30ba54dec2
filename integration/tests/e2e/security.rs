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
        .list_clusters(ListClustersRequest {})
        .await
        .unwrap_err();
    assert_eq!(none.code(), Code::Unauthenticated);
    let made_up = world
        .admin_as("ferry-nope")
        .await
        .unwrap()
        .list_clusters(ListClustersRequest {})
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
        .list_clusters(ListClustersRequest {})
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
    let first = identity::load(&client, "ferry-system")
        .await
        .unwrap()
        .unwrap();
    // Renewed (at two thirds of three seconds), kept in the Secret, twice over.
    let mut seen = vec![first.not_after_ms];
    while seen.len() < 3 {
        let id = eventually("a renewed certificate", || async {
            let id = identity::load(&client, "ferry-system").await.ok()??;
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
