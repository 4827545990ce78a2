//! The SDK client against the fake SDK server over real gRPC on loopback,
//! and the local and required modes without one.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use agones::fake::{Call, FakeSdk, counters};
use agones::{Mode, Sdk, SdkConfig, SdkError};

fn config(port: u16) -> SdkConfig {
    let mut c = SdkConfig::new(Mode::Required, Some(&port.to_string()));
    c.connect_attempts = 3;
    c.backoff_initial = Duration::from_millis(20);
    c.call_timeout = Duration::from_secs(2);
    c
}

async fn connected() -> (FakeSdk, Sdk) {
    let fake = FakeSdk::start(&[("rooms", 10), ("players", 1000)], &[("players", 2)])
        .await
        .unwrap();
    let sdk = Sdk::connect(&config(fake.addr.port())).await.unwrap();
    assert!(sdk.is_remote());
    (fake, sdk)
}

#[tokio::test]
async fn lifecycle_calls_reach_the_sidecar_in_order() {
    let (fake, sdk) = connected().await;
    sdk.set_counter_capacity("rooms", 4).await.unwrap();
    sdk.ready().await.unwrap();
    sdk.set_label("shards", "2").await.unwrap();
    sdk.set_annotation("version", "0.1.0").await.unwrap();
    sdk.reserve(Duration::from_secs(30)).await.unwrap();
    sdk.allocate().await.unwrap();
    let gs = sdk.get_game_server().await.unwrap();
    assert_eq!(gs.status.as_ref().unwrap().state, "Allocated");
    let meta = gs.object_meta.unwrap();
    assert_eq!(
        meta.labels.get("agones.dev/sdk-shards").map(String::as_str),
        Some("2")
    );
    sdk.shutdown().await.unwrap();
    assert_eq!(
        fake.calls(),
        [
            Call::UpdateCounter("rooms".into(), None, Some(4), 0),
            Call::Ready,
            Call::SetLabel("shards".into(), "2".into()),
            Call::SetAnnotation("version".into(), "0.1.0".into()),
            Call::Reserve(30),
            Call::Allocate,
            Call::GetGameServer,
            Call::Shutdown,
        ]
    );
    assert_eq!(fake.game_server().status.unwrap().state, "Shutdown");
}

#[tokio::test]
async fn counters_move_within_their_capacity() {
    let (fake, sdk) = connected().await;
    sdk.set_counter_capacity("rooms", 3).await.unwrap();
    for _ in 0..3 {
        sdk.add_to_counter("rooms", 1).await.unwrap();
    }
    let over = sdk.add_to_counter("rooms", 1).await.unwrap_err();
    assert!(
        matches!(&over, SdkError::Call { call: "UpdateCounter", status } if status.code() == tonic::Code::OutOfRange),
        "{over}"
    );
    let c = sdk.add_to_counter("rooms", -2).await.unwrap();
    assert_eq!((c.count, c.capacity), (1, 3));
    assert_eq!(sdk.get_counter("rooms").await.unwrap().count, 1);
    assert_eq!(sdk.set_counter("rooms", 0).await.unwrap().count, 0);
    assert_eq!(counters(&fake.game_server())["rooms"], (0, 3));
    let missing = sdk.get_counter("nope").await.unwrap_err();
    assert!(
        matches!(missing, SdkError::Call { status, .. } if status.code() == tonic::Code::NotFound)
    );
}

#[tokio::test]
async fn lists_refuse_duplicates_and_overflow() {
    let (_fake, sdk) = connected().await;
    sdk.add_list_value("players", "ann").await.unwrap();
    let dup = sdk.add_list_value("players", "ann").await.unwrap_err();
    assert!(
        matches!(dup, SdkError::Call { status, .. } if status.code() == tonic::Code::AlreadyExists)
    );
    let l = sdk.add_list_value("players", "bob").await.unwrap();
    assert_eq!(l.values, ["ann", "bob"]);
    let full = sdk.add_list_value("players", "cy").await.unwrap_err();
    assert!(
        matches!(full, SdkError::Call { status, .. } if status.code() == tonic::Code::OutOfRange)
    );
    let l = sdk.remove_list_value("players", "ann").await.unwrap();
    assert_eq!(l.values, ["bob"]);
    let gone = sdk.remove_list_value("players", "ann").await.unwrap_err();
    assert!(
        matches!(gone, SdkError::Call { status, .. } if status.code() == tonic::Code::NotFound)
    );
    assert_eq!(sdk.get_list("players").await.unwrap().values, ["bob"]);
}

#[tokio::test]
async fn health_pings_arrive_on_one_stream() {
    let (fake, sdk) = connected().await;
    let health = sdk.health();
    for _ in 0..5 {
        assert!(health.ping());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while fake.health_pings().len() < 5 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(fake.health_pings().len(), 5);
}

#[tokio::test]
async fn a_watch_sees_the_game_server_change() {
    let (fake, sdk) = connected().await;
    let mut watch = sdk.watch_game_server().await.unwrap();
    let first = watch.next().await.unwrap().unwrap();
    assert_eq!(first.status.unwrap().state, "Scheduled");
    // An allocation carrying the room to create, as Agones applies it.
    fake.update(|gs| {
        let status = gs.status.as_mut().unwrap();
        status.state = "Allocated".into();
        let meta = gs.object_meta.as_mut().unwrap();
        meta.annotations
            .insert("instanceserver.dev/location".into(), "lobby".into());
    });
    let next = tokio::time::timeout(Duration::from_secs(2), watch.next())
        .await
        .expect("an update")
        .unwrap()
        .unwrap();
    assert_eq!(next.status.unwrap().state, "Allocated");
    assert_eq!(
        next.object_meta.unwrap().annotations["instanceserver.dev/location"],
        "lobby"
    );
}

#[tokio::test]
async fn required_mode_fails_fast_without_a_sidecar() {
    // A port nothing listens on: bind one, then free it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let started = std::time::Instant::now();
    let e = Sdk::connect(&config(port)).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(10));
    let text = e.to_string();
    assert!(
        matches!(e, SdkError::Unreachable { attempts: 3, .. }),
        "{text}"
    );
    assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
}

#[tokio::test]
async fn local_mode_logs_and_never_fails() {
    for config in [
        SdkConfig::new(Mode::Local, Some("1")),
        SdkConfig::new(Mode::Auto, None),
    ] {
        let sdk = Sdk::connect(&config).await.unwrap();
        assert!(!sdk.is_remote());
        sdk.ready().await.unwrap();
        assert!(sdk.health().ping());
        assert_eq!(sdk.add_to_counter("rooms", 1).await.unwrap().count, 1);
        sdk.add_list_value("players", "ann").await.unwrap();
        assert_eq!(
            sdk.get_game_server().await.unwrap().status.unwrap().state,
            "Ready"
        );
        let mut watch = sdk.watch_game_server().await.unwrap();
        let waited = tokio::time::timeout(Duration::from_millis(50), watch.next()).await;
        assert!(waited.is_err(), "nothing changes in local mode");
        sdk.shutdown().await.unwrap();
    }
}

#[test]
fn auto_mode_follows_the_environment_variable() {
    assert_eq!(SdkConfig::new(Mode::Auto, Some("9400")).port, Some(9400));
    assert_eq!(SdkConfig::new(Mode::Auto, None).port, None);
    assert_eq!(
        SdkConfig::new(Mode::Required, None).port,
        Some(agones::DEFAULT_GRPC_PORT)
    );
    assert_eq!(SdkConfig::new(Mode::Local, Some("9400")).port, None);
}
