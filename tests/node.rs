//! End-to-end: a real node (glommio shards on io_uring UDP, str0m ICE-lite,
//! axum signaling) and real WebRTC clients on loopback.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use engine::Vec3;
use instanceserver::control::lock;
use net::client::{Client, ClientEvent, action, dev_token, owned_update};
use net::messages::{Cache, KickReason};

#[tokio::test(flavor = "current_thread")]
async fn two_clients_join_and_see_each_other_move() {
    let node = support::start(support::config(1));
    support::wait_running(&node, "demo").await;
    let http = node.http_addr;
    let mut clients = support::join_all(http, "demo", &["ann", "bob"]).await;
    support::until_welcomed(&mut clients, Duration::from_secs(10)).await;
    let ann_avatar = clients[0].session().welcome().unwrap().avatar;
    let bob_avatar = clients[1].session().welcome().unwrap().avatar;
    assert_ne!(ann_avatar, bob_avatar);
    // Both avatars stand on spawn points within each other's interest radius.
    support::drive(&mut clients, Duration::from_millis(200)).await;
    let start = clients[1]
        .session()
        .position_of(ann_avatar)
        .expect("bob sees ann's avatar");
    let target = Vec3::new(start.x + 3.0, start.y, start.z);

    let sent_at_tick = clients[0].session().latest_tick().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut first_seen_tick = None;
    let mut arrived = false;
    while Instant::now() < deadline && !arrived {
        clients[0]
            .session()
            .send_input(vec![owned_update(ann_avatar, target)], Instant::now())
            .unwrap();
        support::drive(&mut clients, Duration::from_millis(16)).await;
        let seen = clients[1].session().position_of(ann_avatar).unwrap();
        if first_seen_tick.is_none() && (seen.x - start.x).abs() > 0.01 {
            first_seen_tick = clients[1].session().latest_tick();
        }
        arrived = (seen.x - target.x).abs() < 0.05 && (seen.z - target.z).abs() < 0.05;
    }
    assert!(arrived, "bob never saw ann arrive at {target:?}");
    let delay = first_seen_tick.unwrap() - sent_at_tick;
    // One tick to apply the input and one to send it, plus loopback jitter.
    assert!(delay <= 6, "bob saw ann move {delay} ticks after her input");
}

#[tokio::test(flavor = "current_thread")]
async fn actions_are_relayed_with_the_sender_stamped_and_cached_for_late_joiners() {
    let node = support::start(support::config(1));
    support::wait_running(&node, "demo").await;
    let http = node.http_addr;
    let token = dev_token(http, "ann", "demo").await.unwrap();
    let mut clients = vec![Client::join(http, "demo", &token).await.unwrap()];
    let token = dev_token(http, "bob", "demo").await.unwrap();
    clients.push(Client::join(http, "demo", &token).await.unwrap());
    support::until_welcomed(&mut clients, Duration::from_secs(10)).await;
    let ann_index = clients[0].session().welcome().unwrap().user_index;
    clients[0]
        .session()
        .send_action(
            &action("chat", "chat.message", b"hello", Cache::Keep),
            Instant::now(),
        )
        .unwrap();
    let mut got = false;
    for _ in 0..100 {
        let events = support::drive(&mut clients, Duration::from_millis(50)).await;
        if let Some(a) = events[1].iter().find_map(|e| match e {
            ClientEvent::Action(a) => Some(a.clone()),
            _ => None,
        }) {
            assert_eq!(
                (a.sender, a.action_type.as_str(), &a.payload[..]),
                (ann_index, "chat.message", &b"hello"[..])
            );
            got = true;
            break;
        }
    }
    assert!(got, "bob never got ann's chat");

    // A late joiner finds the cached action in its welcome, and learns who is here.
    let token = dev_token(http, "cid", "demo").await.unwrap();
    let mut late = vec![Client::join(http, "demo", &token).await.unwrap()];
    support::until_welcomed(&mut late, Duration::from_secs(10)).await;
    let welcome = late[0].session().welcome().unwrap().clone();
    assert_eq!(welcome.cached_actions.len(), 1);
    assert_eq!(welcome.cached_actions[0].sender, ann_index);
    assert_eq!(welcome.cached_actions[0].payload, b"hello");

    // Leaving with DELETE: the others are told, the registry forgets the user.
    let status = clients[0].leave().await.unwrap();
    assert_eq!(status, 200);
    let mut bob = clients.pop().unwrap();
    let told = bob
        .run_until(
            Duration::from_secs(5),
            |_, e| matches!(e, ClientEvent::PeerLeft { user_index } if *user_index == ann_index),
        )
        .await
        .unwrap();
    assert!(told, "bob was not told that ann left");
    let deadline = Instant::now() + Duration::from_secs(5);
    while lock(node.control()).registry.get("demo").unwrap().users != 2 {
        assert!(Instant::now() < deadline, "the registry still counts ann");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_client_subscribes_to_topics_at_join_and_a_bad_list_is_refused() {
    let node = support::start(support::config(1));
    support::wait_running(&node, "demo").await;
    let http = node.http_addr;
    let token = dev_token(http, "ann", "demo").await.unwrap();
    let mut clients = vec![Client::join(http, "demo", &token).await.unwrap()];
    let token = dev_token(http, "bob", "demo").await.unwrap();
    let bad = Client::join_with(http, "demo", &token, Some("Chat!")).await;
    match bad {
        Err(net::client::ClientError::Refused { status, body }) => {
            assert_eq!(status, 400);
            assert!(
                body.contains("bad_query") && body.contains("Chat!"),
                "{body}"
            );
        }
        other => panic!("expected a 400, got {:?}", other.map(|_| ())),
    }
    clients.push(
        Client::join_with(http, "demo", &token, Some("chat"))
            .await
            .unwrap(),
    );
    support::until_welcomed(&mut clients, Duration::from_secs(10)).await;
    let now = Instant::now();
    let world = action("world", "door.open", b"", Cache::No);
    let chat = action("chat", "chat.message", b"hi", Cache::No);
    clients[0].session().send_action(&world, now).unwrap();
    clients[0].session().send_action(&chat, now).unwrap();
    let mut heard = Vec::new();
    for _ in 0..100 {
        let events = support::drive(&mut clients, Duration::from_millis(50)).await;
        heard.extend(events[1].iter().filter_map(|e| match e {
            ClientEvent::Action(a) => Some(a.action_type.clone()),
            _ => None,
        }));
        if !heard.is_empty() {
            break;
        }
    }
    // Anything else sent to bob would have arrived by now.
    let events = support::drive(&mut clients, Duration::from_millis(300)).await;
    heard.extend(events[1].iter().filter_map(|e| match e {
        ClientEvent::Action(a) => Some(a.action_type.clone()),
        _ => None,
    }));
    assert_eq!(heard, ["chat.message"], "bob is on `chat` only");
}

#[tokio::test(flavor = "current_thread")]
async fn a_user_joining_a_full_instance_again_replaces_its_session_and_keeps_one_seat() {
    let node = support::start(support::config(1));
    support::create(&node, "duo", Some(2)).await;
    let http = node.http_addr;
    let ann_token = dev_token(http, "ann", "duo").await.unwrap();
    let bob_token = dev_token(http, "bob", "duo").await.unwrap();
    let mut first = vec![
        Client::join(http, "duo", &ann_token).await.unwrap(),
        Client::join(http, "duo", &bob_token).await.unwrap(),
    ];
    support::until_welcomed(&mut first, Duration::from_secs(10)).await;
    let cy_token = dev_token(http, "cy", "duo").await.unwrap();
    assert!(
        matches!(
            Client::join(http, "duo", &cy_token).await,
            Err(net::client::ClientError::Refused { status: 409, .. })
        ),
        "the instance is full"
    );
    // Ann again, from a second client: admitted, and her first session goes.
    let mut again = vec![Client::join(http, "duo", &ann_token).await.unwrap()];
    support::until_welcomed(&mut again, Duration::from_secs(10)).await;
    let mut kicked = None;
    for _ in 0..100 {
        let events = support::drive(&mut first, Duration::from_millis(50)).await;
        kicked = kicked.or(events[0].iter().find_map(|e| match e {
            ClientEvent::Kicked { reason, .. } => Some(*reason),
            _ => None,
        }));
        if kicked.is_some() {
            break;
        }
    }
    assert_eq!(kicked, Some(KickReason::Replaced));
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (seats, users) = {
            let c = lock(node.control());
            let r = c.registry.get("duo").unwrap();
            (r.seats, r.users)
        };
        if (seats, users) == (2, 2) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the registry holds {seats} seats and {users} users, not 2 and 2"
        );
        support::drive(&mut again, Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "current_thread")]
async fn fifty_clients_on_ten_instances_on_two_shards_receive_snapshots_at_the_tick_rate() {
    let mut config = support::config(2);
    // A snapshot every tick, so the snapshot rate is the tick rate.
    config.instance.snapshot_hz = Some(config.instance.tick_hz);
    let node = support::start(config);
    let http = node.http_addr;
    let mut shards = Vec::new();
    for i in 0..10 {
        shards.push(support::create(&node, &format!("room{i}"), Some(8)).await);
    }
    assert!(
        shards.contains(&0) && shards.contains(&1),
        "placement used one shard only: {shards:?}"
    );
    let mut clients = Vec::new();
    let mut join_times = Vec::new();
    let mut pending = Vec::new();
    for n in 0..50 {
        let instance = format!("room{}", n % 10);
        let token = dev_token(http, &format!("user{n}"), &instance)
            .await
            .unwrap();
        let posted = Instant::now();
        clients.push(Client::join(http, &instance, &token).await.unwrap());
        pending.push(posted);
    }
    // Join time: POST to first snapshot, every client driven side by side.
    let futures = clients
        .iter_mut()
        .zip(&pending)
        .map(|(c, &posted)| async move {
            let ok = c
                .run_until(Duration::from_secs(20), |_, e| {
                    matches!(e, ClientEvent::Snapshot { .. })
                })
                .await
                .unwrap();
            assert!(ok, "a client got no snapshot");
            posted.elapsed()
        });
    join_times.extend(futures::future::join_all(futures).await);
    join_times.sort();
    eprintln!(
        "join time (POST to first snapshot), 50 clients joined back to back: p50 {:?} p99 {:?} max {:?}",
        join_times[join_times.len() / 2],
        join_times[join_times.len() * 99 / 100],
        join_times[join_times.len() - 1]
    );

    let window = Duration::from_secs(3);
    let events = support::drive(&mut clients, window).await;
    let tick_hz = 60.0;
    let expected = tick_hz * window.as_secs_f64();
    let mut rates: Vec<f64> = events
        .iter()
        .map(|ev| {
            ev.iter()
                .filter(|e| matches!(e, ClientEvent::Snapshot { .. }))
                .count() as f64
                / expected
        })
        .collect();
    rates.sort_by(f64::total_cmp);
    eprintln!(
        "snapshot rate / tick rate over {window:?}: min {:.2} median {:.2}",
        rates[0], rates[25]
    );
    // Snapshots ride an unordered, unreliable channel; on a shared 2-core
    // machine some are lost or late, but every client must see most ticks.
    assert!(
        rates[0] > 0.8,
        "a client got only {:.0}% of the snapshots",
        rates[0] * 100.0
    );
    {
        let c = lock(node.control());
        let users: u32 = c.registry.instances().map(|r| r.users).sum();
        assert_eq!(users, 50);
    }
    // The shards' figures reach /metrics (within a stats period).
    let metrics = net::client::http_request(http, "GET", "/metrics", &[], Vec::new())
        .await
        .unwrap()
        .body;
    let peers: u64 = metrics
        .lines()
        .filter(|l| l.starts_with("instanceserver_shard_peers{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(peers, 50, "{metrics}");
    let excerpt: Vec<&str> = metrics
        .lines()
        .filter(|l| {
            !l.starts_with('#')
                && (l.starts_with("instanceserver_instances ")
                    || l.starts_with("instanceserver_shard_")
                    || l.starts_with("instanceserver_packets_")
                    || l.starts_with("instanceserver_bytes_")
                    || l.starts_with("instanceserver_snapshot")
                    || l.contains("tick_duration_seconds_bucket{shard=\"0\",le=\"0.001\"")
                    || l.contains("tick_duration_seconds_count")
                    || l.starts_with("instanceserver_joins_total"))
        })
        .collect();
    eprintln!("/metrics excerpt:\n{}", excerpt.join("\n"));
}
