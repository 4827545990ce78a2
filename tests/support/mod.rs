//! Shared by the end-to-end tests: a node on loopback with free ports, and
//! clients driven side by side.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use instanceserver::config::Config;
use instanceserver::control::{CreateRequest, SceneSource, lock};
use instanceserver::node::Node;
use net::client::{Client, ClientEvent};

/// A dev-mode node on loopback with free ports.
pub fn config(shards: usize) -> Config {
    let mut c = Config::default();
    c.http.listen = "127.0.0.1:0".parse().unwrap();
    c.grpc.listen = "127.0.0.1:0".parse().unwrap();
    c.webrtc.udp_port_base = 0;
    c.node.shards = shards;
    // The test's clients share this machine's cores with the node: a shard
    // waiting for a CPU they hold is the test's doing, not the node's load,
    // and must not turn joins away as `busy`.
    c.shard.overload_counts_cpu_wait = false;
    c
}

pub fn start(config: Config) -> Node {
    // RUST_LOG=debug shows what the node and clients do.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    Node::start(config).expect("node starts")
}

/// Creates an instance of the demo scene and waits until it runs.
pub async fn create(node: &Node, id: &str, max_users: Option<u32>) -> usize {
    let (_, shard, started) = lock(node.control())
        .create(
            CreateRequest {
                instance_id: Some(id.into()),
                kind: state::commands::InstanceKind::World,
                location_id: format!("loc-{id}"),
                scene: SceneSource::Builtin("demo"),
                max_users,
                snapshot_hz: None,
                labels: BTreeMap::new(),
                empty_timeout_ms: None,
                private: false,
                allowed_user_ids: Vec::new(),
                room_code: None,
                generate_room_code: false,
                persistent: false,
            },
            engine::Scene::demo(),
        )
        .expect("create accepted");
    tokio::time::timeout(Duration::from_secs(20), started)
        .await
        .expect("instance starts in time")
        .expect("reply")
        .expect("scene loads");
    shard
}

/// Waits until the dev instance `demo` runs.
pub async fn wait_running(node: &Node, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let running = lock(node.control())
            .registry
            .get(id)
            .is_some_and(|r| r.lifecycle == state::registry::Lifecycle::Running);
        if running {
            return;
        }
        assert!(Instant::now() < deadline, "instance {id} never ran");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Drives every client for `d`, collecting their events.
pub async fn drive(clients: &mut [Client], d: Duration) -> Vec<Vec<ClientEvent>> {
    let futures = clients.iter_mut().map(|c| async move {
        let mut events = Vec::new();
        c.run_until(d, |_, e| {
            events.push(e.clone());
            false
        })
        .await
        .expect("client runs");
        events
    });
    futures::future::join_all(futures).await
}

/// Drives every client until each has seen a welcome and a snapshot.
pub async fn until_welcomed(clients: &mut [Client], limit: Duration) {
    let futures = clients.iter_mut().map(|c| async move {
        let ok = c
            .run_until(limit, |s, e| {
                matches!(e, ClientEvent::Snapshot { .. }) && s.welcome().is_some()
            })
            .await
            .expect("client runs");
        assert!(ok, "no welcome and snapshot within {limit:?}");
    });
    futures::future::join_all(futures).await;
}

/// A fake Agones SDK server on a thread of its own (a node's control thread,
/// or the binary, connects to it while the test blocks), with the `rooms`
/// and `players` Counters and the given Lists (name, capacity).
pub fn fake_sdk(lists: &[(&'static str, i64)]) -> agones::fake::FakeSdk {
    let lists = lists.to_vec();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let f = agones::fake::FakeSdk::start(&[("rooms", 0), ("players", 0)], &lists)
                .await
                .unwrap();
            tx.send(f).unwrap();
            std::future::pending::<()>().await
        });
    });
    rx.recv().unwrap()
}

/// Joins each of `users` to `instance` with a dev token.
pub async fn join_all(http: std::net::SocketAddr, instance: &str, users: &[&str]) -> Vec<Client> {
    let mut clients = Vec::new();
    for user in users {
        let token = net::client::dev_token(http, user, instance).await.unwrap();
        clients.push(Client::join(http, instance, &token).await.unwrap());
    }
    clients
}
