//! Datagrams per second through a shard's io_uring UDP socket.
//!
//! - `unknown_source`: datagrams from an address no peer has (the demux
//!   drop path: recv, one hash lookup, a STUN check, counted and dropped).
//!   This is the ceiling of the socket loop itself.
//! - `connected_inputs`: `Input` frames from connected WebRTC clients (the
//!   full path: recv, demux by address, DTLS decrypt, SCTP, frame decode and
//!   validation, input handling), while the instance ticks at 60 Hz and
//!   sends every client its snapshots.
//!
//! Each iteration sends datagrams and waits until the shard has received
//! them (its live `datagrams_in` counter, which also counts the clients'
//! SCTP acknowledgements and ICE consent checks in `connected_inputs`);
//! criterion reports datagrams per second. One shard, loopback.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use instanceserver::config::Config;
use instanceserver::node::Node;
use net::client::{Client, ClientEvent, dev_token};

const BATCH: u64 = 2_048;
/// Datagrams in flight at most (well inside the default socket buffer).
const WINDOW: u64 = 256;

fn node() -> Node {
    let mut c = Config::default();
    c.http.listen = "127.0.0.1:0".parse().unwrap();
    c.grpc.enabled = false;
    c.webrtc.udp_port_base = 0;
    c.node.shards = 1;
    // The bench's clients share the machine's cores with the node: their
    // CPU is not the shard's load.
    c.shard.overload_counts_cpu_wait = false;
    Node::start(c).unwrap()
}

/// Sends `iters` batches to `to`, in windows the receiver must take before
/// the next (loopback drops datagrams when the receive buffer is full).
fn blast(iters: u64, to: SocketAddr, received: impl Fn() -> u64) -> Duration {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let payload = [0x17u8; 100]; // a DTLS application-data record header and noise
    let start = Instant::now();
    for _ in 0..iters {
        let base = received();
        let mut sent = 0;
        while sent < BATCH {
            let chunk = WINDOW.min(BATCH - sent);
            for _ in 0..chunk {
                socket.send_to(&payload, to).unwrap();
            }
            sent += chunk;
            let deadline = Instant::now() + Duration::from_secs(10);
            while received() < base + sent {
                assert!(Instant::now() < deadline, "the receiver stopped receiving");
                std::hint::spin_loop();
            }
        }
    }
    start.elapsed()
}

fn unknown_source(c: &mut Criterion) {
    let node = node();
    let shard = node.shard_addrs[0].0;
    // Baseline in the same run: a blocking std socket on a plain thread that
    // only counts what it receives.
    let raw = UdpSocket::bind("127.0.0.1:0").unwrap();
    let raw_addr = raw.local_addr().unwrap();
    let raw_count = Arc::new(AtomicU64::new(0));
    let counter = raw_count.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while raw.recv_from(&mut buf).is_ok() {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    });
    let mut group = c.benchmark_group("shard_socket");
    group.throughput(Throughput::Elements(BATCH));
    group.bench_function("baseline_std_recv_loop", |b| {
        b.iter_custom(|iters| blast(iters, raw_addr, || raw_count.load(Ordering::Relaxed)))
    });
    group.bench_function("unknown_source", |b| {
        b.iter_custom(|iters| blast(iters, shard, || node.datagrams_in(0)))
    });
    group.finish();
}

fn connected_inputs(c: &mut Criterion) {
    let node = node();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let http = node.http_addr;
    let clients_len = 8;
    let mut clients: Vec<Client> = runtime.block_on(async {
        let mut clients = Vec::new();
        for i in 0..clients_len {
            let token = dev_token(http, &format!("bot{i}"), "demo").await.unwrap();
            clients.push(Client::join(http, "demo", &token).await.unwrap());
        }
        for c in clients.iter_mut() {
            let ok = c
                .run_until(Duration::from_secs(20), |s, e| {
                    matches!(e, ClientEvent::Snapshot { .. }) && s.welcome().is_some()
                })
                .await
                .unwrap();
            assert!(ok);
        }
        clients
    });
    let avatars: Vec<u32> = clients
        .iter_mut()
        .map(|c| c.session().welcome().unwrap().avatar)
        .collect();
    let mut group = c.benchmark_group("shard_socket");
    let per_iter = 256u64;
    group.throughput(Throughput::Elements(per_iter));
    group.bench_function("connected_inputs", |b| {
        b.iter_custom(|iters| {
            runtime.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let before = node.datagrams_in(0);
                    for n in 0..per_iter as usize {
                        let i = n % clients_len;
                        let pos = engine::Vec3::new(0.0, 1.0, 8.0);
                        let update = net::client::owned_update(avatars[i], pos);
                        let now = Instant::now();
                        clients[i].session().send_input(vec![update], now).unwrap();
                        clients[i].flush().await.unwrap();
                    }
                    // Keep the clients' own receive side moving (snapshots, SACKs).
                    let deadline = Instant::now() + Duration::from_secs(10);
                    while node.datagrams_in(0) < before + per_iter {
                        assert!(Instant::now() < deadline, "inputs were lost");
                        for c in clients.iter_mut() {
                            c.run_until(Duration::from_micros(50), |_, _| false)
                                .await
                                .unwrap();
                        }
                    }
                }
                start.elapsed()
            })
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(Duration::from_secs(5));
    targets = unknown_source, connected_inputs
}
criterion_main!(benches);
