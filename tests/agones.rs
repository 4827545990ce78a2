//! The node against a fake Agones SDK server over real gRPC on loopback:
//! start-up (capacities, Ready), health pings at the interval, withheld
//! while a shard is stuck, Counters and the List following instances and users, an
//! allocation creating an instance, Shutdown from the SDK draining the
//! node, and the SDK's Shutdown at stop.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use agones::fake::{Call, FakeSdk, counters};
use instanceserver::config::{AgonesMode, Config};
use instanceserver::control::agones::{
    ALLOCATION_ANNOTATION, LOCATION_ANNOTATION, SCENE_ANNOTATION,
};
use instanceserver::control::lock;
use instanceserver::io::monotonic_ms;
use instanceserver::node::Node;
use net::client::{Client, dev_token};

fn fake(lists: &[(&'static str, i64)]) -> FakeSdk {
    support::fake_sdk(lists)
}

fn config(fake: &FakeSdk) -> Config {
    let mut c = support::config(1);
    c.agones.mode = AgonesMode::Required;
    c.agones.port = Some(fake.addr.port());
    c.agones.health_interval_ms = 100;
    c.node.drain_grace_ms = 500;
    c
}

/// Waits up to 10 s for `done`.
async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn count(fake: &FakeSdk, name: &str) -> i64 {
    counters(&fake.game_server())[name].0
}

fn list(fake: &FakeSdk) -> Vec<String> {
    let gs = fake.game_server();
    gs.status.unwrap().lists["players"].values.clone()
}

#[tokio::test]
async fn the_node_reports_to_agones_and_drains_on_its_shutdown() {
    let fake = fake(&[("players", 10)]);
    let node = support::start(config(&fake));
    // Start-up: capacities, the GameServer, Ready.
    eventually("Ready", || fake.calls().contains(&Call::Ready)).await;
    assert_eq!(
        fake.calls()[..5],
        [
            // Before the shards start: the address and host ports.
            Call::GetGameServer,
            Call::UpdateCounter("rooms".into(), None, Some(4096), 0),
            Call::UpdateCounter("players".into(), None, Some(16384), 0),
            Call::GetGameServer,
            Call::Ready,
        ]
    );
    assert_eq!(counters(&fake.game_server())["rooms"].1, 4096);
    // Health at the interval.
    let pinged = fake.health_pings().len();
    tokio::time::sleep(Duration::from_millis(550)).await;
    let pings = fake.health_pings().len() - pinged;
    assert!(
        (3..=7).contains(&pings),
        "{pings} pings in 550 ms at 100 ms"
    );
    // The dev instance is a room.
    eventually("rooms = 1", || count(&fake, "rooms") == 1).await;

    // A user joins and leaves: the players Counter and List follow.
    let http = node.http_addr;
    let token = dev_token(http, "ann", "demo").await.unwrap();
    let mut clients = vec![Client::join(http, "demo", &token).await.unwrap()];
    support::until_welcomed(&mut clients, Duration::from_secs(10)).await;
    eventually("players = 1", || count(&fake, "players") == 1).await;
    // The List follows the Counter within the same sync.
    eventually("ann listed", || list(&fake) == ["ann"]).await;
    clients[0].leave().await.unwrap();
    drop(clients);
    eventually("players = 0", || count(&fake, "players") == 0).await;
    eventually("list empty", || list(&fake).is_empty()).await;

    // An allocation naming a location creates it.
    fake.update(|gs| {
        gs.status.as_mut().unwrap().state = "Allocated".into();
        let annotations = &mut gs.object_meta.as_mut().unwrap().annotations;
        annotations.insert(LOCATION_ANNOTATION.into(), "lobby".into());
        annotations.insert(SCENE_ANNOTATION.into(), "social".into());
    });
    eventually("lobby created", || {
        lock(node.control()).registry.get("lobby").is_some()
    })
    .await;
    eventually("rooms = 2", || count(&fake, "rooms") == 2).await;
    // The room ends; the Counter changes the GameServer again (same
    // allocation): the room is not created twice.
    lock(node.control()).end("lobby").unwrap();
    eventually("rooms = 1", || count(&fake, "rooms") == 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(lock(node.control()).registry.get("lobby").is_none());
    // A new allocation of the same location does create it again.
    fake.update(|gs| {
        let annotations = &mut gs.object_meta.as_mut().unwrap().annotations;
        annotations.insert(ALLOCATION_ANNOTATION.into(), "second".into());
    });
    eventually("lobby created again", || {
        lock(node.control()).registry.get("lobby").is_some()
    })
    .await;

    // Agones shuts the GameServer down: the node drains, every instance
    // ends within the grace, the Counters go back to zero.
    fake.update(|gs| gs.status.as_mut().unwrap().state = "Shutdown".into());
    eventually("drain requested", || node.agones_shutdown_requested()).await;
    assert!(lock(node.control()).draining);
    eventually("instances ended", || {
        lock(node.control()).registry.is_empty()
    })
    .await;
    eventually("rooms = 0", || count(&fake, "rooms") == 0).await;
    node.stop();
    assert_eq!(fake.calls().last(), Some(&Call::Shutdown));
}

#[tokio::test]
async fn health_pings_stop_while_a_shard_is_stuck_and_resume_after() {
    let fake = fake(&[("players", 10)]);
    let mut c = config(&fake);
    c.shard.stuck_ms = 3_000;
    let node = support::start(c);
    let healthz = || async {
        net::client::http_request(node.http_addr, "GET", "/healthz", &[], Vec::new())
            .await
            .expect("the node answers")
    };
    // The value of the metric sample whose line starts with `sample `.
    let metric = |sample: &str| {
        let text = instanceserver::control::metrics::render(&lock(node.control()));
        text.lines()
            .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' '))
            .map(str::to_string)
    };
    let stuck_gauge = || metric("instanceserver_shards_stuck");
    eventually("pings", || fake.health_pings().len() >= 3).await;
    assert_eq!(healthz().await.status, 200);
    assert_eq!(stuck_gauge().as_deref(), Some("0"));

    // The shard's loop stops coming round, as seen from the control
    // thread: its heartbeat no longer moves.
    let live = {
        let mut c = lock(node.control());
        let frozen = Arc::new(AtomicU64::new(monotonic_ms()));
        std::mem::replace(&mut c.shards[0].heartbeat, frozen)
    };
    eventually("health withheld", || {
        !lock(node.control()).stuck_shards().is_empty()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(250)).await;
    let withheld = fake.health_pings().len();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        fake.health_pings().len(),
        withheld,
        "pings went on while stuck"
    );
    let health = healthz().await;
    assert_eq!(health.status, 503, "{}", health.body);
    assert!(
        health.body.contains("\"stuck\"") && health.body.contains("\"stuck_shards\":[0]"),
        "{}",
        health.body
    );
    assert_eq!(stuck_gauge().as_deref(), Some("1"));
    let age: f64 = metric("instanceserver_shard_heartbeat_age_seconds{shard=\"0\"}")
        .expect("the heartbeat age is rendered")
        .parse()
        .expect("a number");
    assert!(age >= 3.0, "{age} s since the frozen heartbeat");

    // It comes round again: pings resume.
    lock(node.control()).shards[0].heartbeat = live;
    eventually("pings resume", || fake.health_pings().len() >= withheld + 2).await;
    assert_eq!(healthz().await.status, 200);
    node.stop();
}

#[test]
fn a_running_shard_is_never_taken_for_stuck() {
    // The real heartbeat moves with every round of the shard's loop, which
    // comes round every few milliseconds even when idle.
    let node = support::start(support::config(1));
    let beat = || {
        lock(node.control()).shards[0]
            .heartbeat
            .load(Ordering::Relaxed)
    };
    let first = beat();
    let deadline = Instant::now() + Duration::from_secs(10);
    while beat() <= first {
        assert!(Instant::now() < deadline, "the heartbeat never moved");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(lock(node.control()).stuck_shards().is_empty());
    node.stop();
}

#[test]
fn a_required_sidecar_that_is_absent_stops_the_start() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut c = support::config(1);
    c.agones.mode = AgonesMode::Required;
    c.agones.port = Some(port);
    c.agones.connect_attempts = 2;
    let e = Node::start(c).unwrap_err().to_string();
    assert!(e.contains("agones") && e.contains(&port.to_string()), "{e}");
}

#[test]
fn players_past_the_list_capacity_are_counted_not_listed() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let fake = fake(&[("players", 1)]);
        let node = support::start(config(&fake));
        let http = node.http_addr;
        let mut clients = support::join_all(http, "demo", &["ann", "bob"]).await;
        support::until_welcomed(&mut clients, Duration::from_secs(10)).await;
        eventually("players = 2", || count(&fake, "players") == 2).await;
        eventually("one listed", || list(&fake).len() == 1).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(list(&fake).len(), 1, "the List holds its capacity at most");
        node.stop();
    });
}

fn with_ports(fake: &FakeSdk, ports: &[(&str, i32)]) {
    use agones::pb::sdk::game_server::status::Port;
    fake.update(|gs| {
        let status = gs.status.as_mut().unwrap();
        status.address = "127.0.0.1".into();
        status.ports = ports
            .iter()
            .map(|&(name, port)| Port {
                name: name.into(),
                port,
            })
            .collect();
    });
}

#[test]
fn shards_advertise_the_host_ports_agones_assigned() {
    let fake = fake(&[("players", 10)]);
    with_ports(
        &fake,
        &[("http", 31000), ("shard-0", 31001), ("shard-1", 31007)],
    );
    let mut c = config(&fake);
    c.node.shards = 2;
    let node = support::start(c);
    let advertised: Vec<String> = node
        .shard_addrs
        .iter()
        .map(|(_, a)| a.to_string())
        .collect();
    assert_eq!(advertised, ["127.0.0.1:31001", "127.0.0.1:31007"]);
    node.stop();

    // A Fleet with fewer shard ports than shards is refused at start.
    let fake = self::fake(&[("players", 10)]);
    with_ports(&fake, &[("shard-0", 31001)]);
    let mut c = config(&fake);
    c.node.shards = 2;
    let e = Node::start(c).unwrap_err().to_string();
    assert!(e.contains("shard-1"), "{e}");
}
