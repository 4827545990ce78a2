//! The gRPC control API end to end: a tonic client against a running node,
//! with a real WebRTC client in the instance it manages.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use instanceserver::control::grpc::pb;
use instanceserver::control::grpc::pb::control_client::ControlClient;
use net::client::{Client, ClientEvent, dev_token};
use net::messages::KickReason;
use tonic::Code;

/// A gRPC client of the node's control API.
async fn control_api(
    node: &instanceserver::node::Node,
) -> ControlClient<tonic::transport::Channel> {
    ControlClient::connect(format!("http://{}", node.grpc_addr.unwrap()))
        .await
        .unwrap()
}

#[tokio::test(flavor = "current_thread")]
async fn create_list_kick_ban_end_and_drain_through_grpc() {
    let node = support::start(support::config(2));
    let http = node.http_addr;
    let mut api = control_api(&node).await;

    let created = api
        .create_instance(pb::CreateInstanceRequest {
            instance_id: "arena".into(),
            location_id: "loc-arena".into(),
            scene: "demo".into(),
            max_users: 4,
            labels: [("mode".to_string(), "ffa".to_string())].into(),
            snapshot_hz: 20,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (
            created.instance_id.as_str(),
            created.lifecycle.as_str(),
            created.max_users
        ),
        ("arena", "running", 4)
    );
    assert_eq!(created.labels["mode"], "ffa");
    assert_eq!(created.snapshot_hz, 20);
    assert!(created.entities > 200, "{created:?}");

    // Errors: a duplicate id, a scene with a bad field (named by its JSON path), an unknown instance.
    let dup = api
        .create_instance(pb::CreateInstanceRequest {
            instance_id: "arena".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(dup.code(), Code::AlreadyExists, "{dup:?}");
    let bad = api
        .create_instance(pb::CreateInstanceRequest {
            scene_json: r#"{"version": 1, "bounds": {"min": [0, 0, 0], "max": [1, 1]}}"#.into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(bad.message().contains("bounds.max"), "{}", bad.message());
    let greedy = api
        .create_instance(pb::CreateInstanceRequest {
            max_users: 4_000_000_000,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(greedy.code(), Code::InvalidArgument);
    assert!(
        greedy.message().contains("shard.peers_max"),
        "{}",
        greedy.message()
    );
    // A snapshot rate the tick rate (60) cannot be divided into.
    let odd = api
        .create_instance(pb::CreateInstanceRequest {
            snapshot_hz: 25,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(odd.code(), Code::InvalidArgument);
    assert!(
        odd.message().contains("snapshot_hz 25"),
        "{}",
        odd.message()
    );
    let missing = api
        .get_instance(pb::GetInstanceRequest {
            instance_id: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);

    // A user joins; the list shows them once the shard reports the join.
    let token = dev_token(http, "eve", "arena").await.unwrap();
    let mut eve = vec![Client::join(http, "arena", &token).await.unwrap()];
    support::until_welcomed(&mut eve, Duration::from_secs(10)).await;
    let listed = api
        .list_instances(pb::ListInstancesRequest {})
        .await
        .unwrap()
        .into_inner();
    let arena = listed
        .instances
        .iter()
        .find(|i| i.instance_id == "arena")
        .unwrap();
    assert_eq!(arena.users, 1);
    assert!(listed.instances.iter().any(|i| i.instance_id == "demo"));

    // A moderator's mute: it names the tracks, and an instance that exists.
    let muted = api
        .mute_user(pb::MuteUserRequest {
            instance_id: "arena".into(),
            user_id: "eve".into(),
            audio: true,
            video: true,
            muted: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(muted.sessions, 1);
    let unnamed = api
        .mute_user(pb::MuteUserRequest {
            instance_id: "arena".into(),
            user_id: "eve".into(),
            muted: true,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(unnamed.code(), Code::InvalidArgument);
    assert!(unnamed.message().contains("audio, video or both"));
    let nowhere = api
        .mute_user(pb::MuteUserRequest {
            instance_id: "nope".into(),
            user_id: "eve".into(),
            audio: true,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(nowhere.code(), Code::NotFound);

    // Kick with a ban: the client is told why, and cannot come back.
    let kicked = api
        .kick_user(pb::KickUserRequest {
            instance_id: "arena".into(),
            user_id: "eve".into(),
            ban_seconds: 600,
            message: "griefing".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(kicked.sessions, 1);
    let mut told = None;
    eve[0]
        .run_until(Duration::from_secs(5), |_, e| {
            if let ClientEvent::Kicked { reason, message } = e {
                told = Some((*reason, message.clone()));
                true
            } else {
                false
            }
        })
        .await
        .unwrap();
    assert_eq!(told, Some((KickReason::Banned, "griefing".to_string())));
    let again = Client::join(
        http,
        "arena",
        &dev_token(http, "eve", "arena").await.unwrap(),
    )
    .await;
    assert!(
        matches!(
            &again,
            Err(net::client::ClientError::Refused { status: 403, .. })
        ),
        "{again:?}"
    );

    // Ending an instance tells its users and removes it.
    let token = dev_token(http, "fay", "arena").await.unwrap();
    let mut fay = vec![Client::join(http, "arena", &token).await.unwrap()];
    support::until_welcomed(&mut fay, Duration::from_secs(10)).await;
    api.end_instance(pb::EndInstanceRequest {
        instance_id: "arena".into(),
    })
    .await
    .unwrap();
    let ended = fay[0]
        .run_until(Duration::from_secs(5), |_, e| {
            matches!(
                e,
                ClientEvent::Kicked {
                    reason: KickReason::InstanceEnded,
                    ..
                }
            )
        })
        .await
        .unwrap();
    assert!(ended, "fay was not told the instance ended");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let r = api
            .get_instance(pb::GetInstanceRequest {
                instance_id: "arena".into(),
            })
            .await;
        if matches!(&r, Err(s) if s.code() == Code::NotFound) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "arena still listed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A grace that would overflow the clock is refused, not a shard panic.
    let huge = api
        .drain(pb::DrainRequest { grace_ms: u64::MAX })
        .await
        .unwrap_err();
    assert_eq!(huge.code(), Code::InvalidArgument);

    // Drain: instances end after the grace, creating is refused meanwhile.
    let drained = api
        .drain(pb::DrainRequest { grace_ms: 200 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(drained.instances, 1, "only demo is left");
    let refused = api
        .create_instance(pb::CreateInstanceRequest {
            instance_id: "late".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !api
        .list_instances(pb::ListInstancesRequest {})
        .await
        .unwrap()
        .into_inner()
        .instances
        .is_empty()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "instances outlived the drain grace"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A node outside dev mode whose control API takes `token` from a file.
fn secured(token: &str, dir: &std::path::Path) -> instanceserver::config::Config {
    let path = dir.join("grpc.token");
    std::fs::write(&path, format!("{token}\n")).unwrap();
    let mut c = support::config(1);
    c.node.dev = false;
    c.auth.hs256_secret = Some("an-hs256-secret-of-at-least-32-bytes".into());
    c.grpc.token_file = Some(path);
    c
}

#[tokio::test]
async fn outside_dev_mode_every_call_needs_the_bearer_token() {
    let dir = tempfile::tempdir().unwrap();
    let token = "a-control-api-token-of-48-bytes-0123456789abcdef";
    let node = support::start(secured(token, dir.path()));
    let mut client = control_api(&node).await;
    let call = |bearer: Option<&str>| {
        let mut r = tonic::Request::new(pb::ListInstancesRequest::default());
        if let Some(b) = bearer {
            r.metadata_mut()
                .insert("authorization", format!("Bearer {b}").parse().unwrap());
        }
        r
    };
    for bearer in [None, Some("wrong"), Some(&token[..47])] {
        let e = client.list_instances(call(bearer)).await.unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated, "{bearer:?}");
    }
    let listed = client.list_instances(call(Some(token))).await.unwrap();
    assert!(listed.into_inner().instances.is_empty());
    // The HTTP routes that name users take the same token.
    let http = node.http_addr;
    let path = "/v1/instances/any/attendance";
    for bearer in [None, Some("wrong")] {
        let auth = bearer.map(|b| format!("Bearer {b}"));
        let headers: Vec<(&str, &str)> =
            auth.iter().map(|a| ("authorization", a.as_str())).collect();
        let r = net::client::http_request(http, "GET", path, &headers, Vec::new())
            .await
            .unwrap();
        assert_eq!(r.status, 401, "{bearer:?}: {}", r.body);
    }
    let auth = format!("Bearer {token}");
    let r = net::client::http_request(http, "GET", path, &[("authorization", &auth)], Vec::new())
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    node.stop();
}

#[test]
fn outside_dev_mode_the_control_api_needs_a_token_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = secured("unused", dir.path());
    c.grpc.token_file = None;
    let e = instanceserver::node::Node::start(c)
        .unwrap_err()
        .to_string();
    assert!(e.contains("grpc.token_file"), "{e}");

    let short = secured("too-short", dir.path());
    let e = instanceserver::node::Node::start(short)
        .unwrap_err()
        .to_string();
    assert!(e.contains("at least 32 bytes"), "{e}");

    let mut off = secured("unused", dir.path());
    off.grpc.token_file = None;
    off.grpc.enabled = false;
    instanceserver::node::Node::start(off).unwrap().stop();
}

#[tokio::test(flavor = "current_thread")]
async fn an_instance_takes_its_own_empty_timeout_and_attendance_records_who_came_and_went() {
    let mut config = support::config(1);
    // The node's default: instances without their own end after 1 s empty.
    config.instance.empty_timeout_ms = 1_000;
    let node = support::start(config);
    let http = node.http_addr;
    let mut api = control_api(&node).await;
    for (ms, persistent) in [(10, false), (u64::MAX, false), (5_000, true)] {
        let bad = api
            .create_instance(pb::CreateInstanceRequest {
                empty_timeout_ms: ms,
                persistent,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(
            bad.code(),
            Code::InvalidArgument,
            "{ms} {persistent}: {bad:?}"
        );
    }
    // A media instance: no scene, nothing simulated.
    let party = api
        .create_instance(pb::CreateInstanceRequest {
            instance_id: "party".into(),
            kind: "media".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((party.kind.as_str(), party.entities), ("media", 0));
    for (kind, scene) in [("media", "social"), ("chat", "")] {
        let bad = api
            .create_instance(pb::CreateInstanceRequest {
                kind: kind.into(),
                scene: scene.into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(bad.code(), Code::InvalidArgument, "{kind}: {bad:?}");
    }
    let short = api
        .create_instance(pb::CreateInstanceRequest {
            instance_id: "short".into(),
            empty_timeout_ms: 4_000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let short_created = std::time::Instant::now();
    assert_eq!(short.empty_timeout_ms, 4_000);
    let kept = api
        .create_instance(pb::CreateInstanceRequest {
            instance_id: "kept".into(),
            persistent: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(kept.empty_timeout_ms, 0, "runs until ended");

    // Ann joins "kept", is listed as present, leaves; her record says so.
    let token = dev_token(http, "ann", "kept").await.unwrap();
    let mut ann = vec![Client::join(http, "kept", &token).await.unwrap()];
    support::until_welcomed(&mut ann, Duration::from_secs(10)).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let r = net::client::http_request(http, "GET", "/v1/instances/kept", &[], Vec::new())
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        let body: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        if body["users_present"][0]["user_id"] == "ann" {
            assert!(body["users_present"][0]["joined_at_ms"].as_u64().unwrap() > 0);
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{body}");
        support::drive(&mut ann, Duration::from_millis(50)).await;
    }
    assert_eq!(ann[0].leave().await.unwrap(), 200);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let record = loop {
        let listed = api
            .list_attendance(pb::ListAttendanceRequest {
                instance_id: "kept".into(),
                user_id: "ann".into(),
                limit: 10,
            })
            .await
            .unwrap()
            .into_inner();
        if let Some(r) = listed.records.first().filter(|r| r.left_at_ms > 0) {
            break r.clone();
        }
        assert!(std::time::Instant::now() < deadline, "{listed:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        (record.user_id.as_str(), record.leave_reason.as_str()),
        ("ann", "left")
    );
    assert!(record.left_at_ms >= record.joined_at_ms);
    let r = net::client::http_request(
        http,
        "GET",
        "/v1/instances/kept/attendance",
        &[],
        Vec::new(),
    )
    .await
    .unwrap();
    let body: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(body["records"][0]["leave_reason"], "left", "{body}");
    let r = net::client::http_request(http, "GET", "/v1/instances/nope", &[], Vec::new())
        .await
        .unwrap();
    assert_eq!(r.status, 404);

    // "short" outlives the node's 1 s default, and ends about 4 s after it
    // was created with nobody in it; "kept" stays.
    tokio::time::sleep(Duration::from_millis(2_000).saturating_sub(short_created.elapsed())).await;
    assert!(
        api.get_instance(pb::GetInstanceRequest {
            instance_id: "short".into(),
        })
        .await
        .is_ok(),
        "short ended at the node's default, not its own timeout"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = api
            .get_instance(pb::GetInstanceRequest {
                instance_id: "short".into(),
            })
            .await;
        if matches!(&r, Err(s) if s.code() == Code::NotFound) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "short outlived its empty timeout"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        api.get_instance(pb::GetInstanceRequest {
            instance_id: "kept".into(),
        })
        .await
        .is_ok()
    );
}

/// A dev token for `sub` scoped to a location.
async fn location_token(http: std::net::SocketAddr, sub: &str, location: &str) -> String {
    let body = serde_json::json!({ "sub": sub, "location": location }).to_string();
    let r = net::client::http_request(
        http,
        "POST",
        "/v1/dev/token",
        &[("content-type", "application/json")],
        body.into_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    v["token"].as_str().unwrap().to_string()
}

fn refused(r: Result<Client, net::client::ClientError>) -> (u16, String) {
    match r {
        Err(net::client::ClientError::Refused { status, body }) => (status, body),
        Err(e) => panic!("expected a refusal, got {e}"),
        Ok(_) => panic!("expected a refusal, got a session"),
    }
}

#[tokio::test(flavor = "current_thread")]
async fn private_instances_room_codes_and_bans_that_outlive_the_instance() {
    let node = support::start(support::config(1));
    let http = node.http_addr;
    let mut api = control_api(&node).await;
    let vip = api
        .create_instance(pb::CreateInstanceRequest {
            instance_id: "vip".into(),
            location_id: "club".into(),
            private: true,
            allowed_user_ids: vec!["ann".into()],
            room_code: "424242".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (vip.private, vip.allowed_users, vip.room_code.as_str()),
        (true, 1, "424242")
    );
    // Refusals: bad codes, a taken code, a list on a public instance.
    for (room_code, generate, private, allowed) in [
        ("12345", false, false, vec![]),
        ("abcdef", false, false, vec![]),
        ("123456", true, false, vec![]),
        ("", false, false, vec!["bob".to_string()]),
    ] {
        let bad = api
            .create_instance(pb::CreateInstanceRequest {
                room_code: room_code.into(),
                generate_room_code: generate,
                private,
                allowed_user_ids: allowed,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(bad.code(), Code::InvalidArgument, "{room_code}: {bad:?}");
    }
    let taken = api
        .create_instance(pb::CreateInstanceRequest {
            location_id: "club".into(),
            room_code: "424242".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(taken.code(), Code::AlreadyExists, "{taken:?}");
    let generated = api
        .create_instance(pb::CreateInstanceRequest {
            instance_id: "open".into(),
            location_id: "club".into(),
            generate_room_code: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        generated.room_code.len() == 6 && generated.room_code.bytes().all(|b| b.is_ascii_digit()),
        "{generated:?}"
    );

    // Bob is not on the list: refused by id, admitted by the room code with
    // a token for the location, and then on the list.
    let bob_vip = dev_token(http, "bob", "vip").await.unwrap();
    let (status, body) = refused(Client::join(http, "vip", &bob_vip).await);
    assert_eq!(status, 403);
    assert!(body.contains("not_allowed"), "{body}");
    let bob_club = location_token(http, "bob", "club").await;
    let (status, _) = refused(Client::join_room(http, "000000", &bob_club).await);
    assert_eq!(status, 404, "no instance has that code");
    let mut clients = vec![
        Client::join(http, "vip", &dev_token(http, "ann", "vip").await.unwrap())
            .await
            .unwrap(),
        Client::join_room(http, "424242", &bob_club).await.unwrap(),
    ];
    support::until_welcomed(&mut clients, Duration::from_secs(10)).await;
    let vip = api
        .get_instance(pb::GetInstanceRequest {
            instance_id: "vip".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(vip.allowed_users, 2, "bob was added by the room code");
    // A token for another location cannot use the code, nor learn it exists.
    let eve_elsewhere = location_token(http, "eve", "other").await;
    let (status, body) = refused(Client::join_room(http, "424242", &eve_elsewhere).await);
    assert_eq!(status, 404, "{body}");
    assert!(!body.contains("vip"), "{body}");
    // A room-code join that fails puts nobody on the list.
    let cy_club = location_token(http, "cy", "club").await;
    let auth = format!("Bearer {cy_club}");
    let r = net::client::http_request(
        http,
        "POST",
        "/v1/rooms/424242/join",
        &[
            ("content-type", "application/sdp"),
            ("authorization", &auth),
        ],
        b"v=0\r\nnot an offer".to_vec(),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 400, "{}", r.body);
    let vip = api
        .get_instance(pb::GetInstanceRequest {
            instance_id: "vip".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(vip.allowed_users, 2, "cy's failed join did not add her");

    // A ban outlives the instance: "vip" ends and is created again, and bob
    // is still refused.
    api.kick_user(pb::KickUserRequest {
        instance_id: "vip".into(),
        user_id: "bob".into(),
        ban_seconds: 600,
        message: "rude".into(),
    })
    .await
    .unwrap();
    api.end_instance(pb::EndInstanceRequest {
        instance_id: "vip".into(),
    })
    .await
    .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while api
        .get_instance(pb::GetInstanceRequest {
            instance_id: "vip".into(),
        })
        .await
        .is_ok()
    {
        assert!(std::time::Instant::now() < deadline, "vip did not end");
        support::drive(&mut clients, Duration::from_millis(20)).await;
    }
    api.create_instance(pb::CreateInstanceRequest {
        instance_id: "vip".into(),
        location_id: "club".into(),
        room_code: "424242".into(),
        ..Default::default()
    })
    .await
    .expect("the room code is free again once vip ended");
    let (status, body) = refused(Client::join(http, "vip", &bob_vip).await);
    assert_eq!(status, 403);
    assert!(body.contains("banned"), "{body}");
}
