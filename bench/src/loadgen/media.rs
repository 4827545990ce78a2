//! The audio forwarding benchmark over real sockets: rooms (media
//! instances) on a fresh server pinned to a core, each with one bot
//! publishing synthetic Opus (50 packets a second, 80 bytes) and bots that
//! receive it; every bot speaks real WebRTC (ICE, DTLS-SRTP, SCTP) over
//! loopback UDP. Measured over a window: the share of the published
//! packets each receiver got (delivery) and the server's CPU, from which
//! the audio consumers one core forwards to follows.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

use net::client::{Client, ClientEvent};
use net::messages::TrackKind;
use serde::{Deserialize, Serialize};

use super::host::{self, CpuMeter};
use super::target::{self, Server, ServerSpec};
use super::tokens::TokenSource;

/// Opus packets a second (20 ms each) and their payload size.
pub const PACKETS_PER_S: u64 = 50;
pub const PAYLOAD_BYTES: usize = 80;
/// How long a bot's loop waits for datagrams before it checks the clock.
const POLL: Duration = Duration::from_millis(5);

#[derive(Debug, Clone)]
pub struct MediaOptions {
    pub server: ServerSpec,
    pub rooms: usize,
    pub receivers_per_room: usize,
    /// Joins started per second.
    pub join_rate_per_s: u32,
    /// Seconds the joins and the offers may take before measuring starts
    /// anyway.
    pub join_budget: Duration,
    pub settle: Duration,
    pub window: Duration,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MediaReport {
    pub rooms: usize,
    pub receivers_per_room: usize,
    /// Receivers that joined and were offered their room's track.
    pub receivers_ready: usize,
    /// Publisher × receiver pairs measured (the consumers).
    pub consumers: usize,
    pub packets_published: u64,
    /// Packets the receivers should have got (published × receivers).
    pub packets_expected: u64,
    pub packets_received: u64,
    /// `packets_received / packets_expected`.
    pub delivery: f64,
    /// The worst receiver's share.
    pub delivery_min: f64,
    /// Server CPU over the window: cores, and µs per consumer-second (of
    /// the receivers ready).
    pub server_cores: f64,
    pub server_us_per_consumer_s: f64,
    /// Packets the server forwarded in the window (its metrics), and its
    /// CPU per forwarded packet.
    pub packets_forwarded: u64,
    pub server_us_per_packet: f64,
    /// Audio consumers one core would forward to at this cost per packet
    /// (50 packets a second each).
    pub consumers_per_core: f64,
    pub server_rss_mib: f64,
    /// The bots' own CPU (they share the other core).
    pub bot_cores: f64,
}

/// What one room's bots counted during the window.
#[derive(Debug, Default)]
struct Counts {
    published: Cell<u64>,
    received: RefCell<Vec<u64>>,
    ready: Cell<usize>,
}

/// Runs the benchmark on a fresh server.
pub async fn run(options: &MediaOptions) -> anyhow::Result<MediaReport> {
    let mut spec = options.server.clone();
    let users = options.receivers_per_room + 1;
    spec.settings
        .push(format!("shard.peers_max={}", options.rooms * users + 64));
    spec.settings
        .push(format!("shard.instances_max={}", options.rooms + 16));
    let server = Server::start(&spec).await?;
    let result = measure(options, &server, &spec).await;
    server.stop().await;
    result
}

async fn measure(
    options: &MediaOptions,
    server: &Server,
    spec: &ServerSpec,
) -> anyhow::Result<MediaReport> {
    let grpc = server
        .grpc
        .ok_or_else(|| anyhow::anyhow!("our server has a control API"))?;
    let ids: Vec<String> = (0..options.rooms).map(|i| format!("voice-{i}")).collect();
    let users = u32::try_from(options.receivers_per_room + 1)?;
    target::create_instances_of_kind(grpc, server.grpc_token.as_deref(), &ids, "", "media", users)
        .await?;
    let tokens = Rc::new(TokenSource::new(Some(&spec.secret)));
    let measuring = Rc::new(Cell::new(false));
    let stop = Rc::new(Cell::new(false));
    let rooms: Vec<Rc<Counts>> = (0..options.rooms).map(|_| Rc::default()).collect();
    let local = tokio::task::LocalSet::new();
    let http = server.http;
    let pid = server.pid;
    let report = local
        .run_until(async {
            let gap = Duration::from_secs_f64(1.0 / f64::from(options.join_rate_per_s.max(1)));
            let mut tasks = Vec::new();
            for (r, id) in ids.iter().enumerate() {
                // Receivers first: the publisher's track is offered to
                // each as it is announced.
                *rooms[r].received.borrow_mut() = vec![0; options.receivers_per_room];
                for k in 0..options.receivers_per_room {
                    let (tokens, id, counts) = (tokens.clone(), id.clone(), rooms[r].clone());
                    let (measuring, stop) = (measuring.clone(), stop.clone());
                    tasks.push(tokio::task::spawn_local(async move {
                        let user = format!("{id}-rx{k}");
                        receiver(http, &tokens, &id, &user, k, &counts, &measuring, &stop).await
                    }));
                    tokio::time::sleep(gap).await;
                }
                let (tokens, id, counts) = (tokens.clone(), id.clone(), rooms[r].clone());
                let (measuring, stop) = (measuring.clone(), stop.clone());
                tasks.push(tokio::task::spawn_local(async move {
                    publisher(http, &tokens, &id, &counts, &measuring, &stop).await
                }));
                tokio::time::sleep(gap).await;
            }
            let expected = options.rooms * options.receivers_per_room;
            let started = Instant::now();
            while rooms.iter().map(|c| c.ready.get()).sum::<usize>() < expected
                && started.elapsed() < options.join_budget
            {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            tokio::time::sleep(options.settle).await;
            let ready: usize = rooms.iter().map(|c| c.ready.get()).sum();
            let forwarded = || async {
                target::scrape(http)
                    .await
                    .map(|m| m.get("instanceserver_media_packets_forwarded_total") as u64)
            };
            let forwarded_before = forwarded().await?;
            let server_cpu = CpuMeter::start(&[pid]);
            let bots_cpu = CpuMeter::start(&[std::process::id()]);
            measuring.set(true);
            tokio::time::sleep(options.window).await;
            measuring.set(false);
            let server_cores = server_cpu.cores_used();
            let (server_cpu_s, _) = server_cpu.read();
            let packets_forwarded = forwarded().await?.saturating_sub(forwarded_before);
            let bot_cores = bots_cpu.cores_used();
            let rss = host::rss_bytes(pid).unwrap_or(0);
            stop.set(true);
            let mut failures = 0;
            for t in tasks {
                if let Ok(Err(e)) = t.await {
                    failures += 1;
                    if failures <= 3 {
                        eprintln!("media: a bot failed: {e:#}");
                    }
                }
            }
            if failures > 3 {
                eprintln!("media: {failures} bots failed in all");
            }
            let mut report = MediaReport {
                rooms: options.rooms,
                receivers_per_room: options.receivers_per_room,
                receivers_ready: ready,
                server_cores,
                bot_cores,
                packets_forwarded,
                server_rss_mib: rss as f64 / (1024.0 * 1024.0),
                delivery_min: 1.0,
                ..MediaReport::default()
            };
            for c in &rooms {
                let published = c.published.get();
                report.packets_published += published;
                for &got in c.received.borrow().iter() {
                    report.consumers += 1;
                    report.packets_expected += published;
                    report.packets_received += got.min(published);
                    let share = if published > 0 {
                        got.min(published) as f64 / published as f64
                    } else {
                        0.0
                    };
                    report.delivery_min = report.delivery_min.min(share);
                }
            }
            if report.packets_expected > 0 {
                report.delivery = report.packets_received as f64 / report.packets_expected as f64;
            }
            if ready > 0 {
                report.server_us_per_consumer_s = server_cores * 1e6 / ready as f64;
            }
            if packets_forwarded > 0 && server_cpu_s > 0.0 {
                report.server_us_per_packet = server_cpu_s * 1e6 / packets_forwarded as f64;
                report.consumers_per_core =
                    1e6 / (report.server_us_per_packet * PACKETS_PER_S as f64);
            }
            anyhow::Ok(report)
        })
        .await?;
    Ok(report)
}

/// Joins, waits to be offered the room's track, then counts its packets
/// while `measuring`.
#[allow(clippy::too_many_arguments)]
async fn receiver(
    http: std::net::SocketAddr,
    tokens: &TokenSource,
    instance: &str,
    user: &str,
    slot: usize,
    counts: &Counts,
    measuring: &Cell<bool>,
    stop: &Cell<bool>,
) -> anyhow::Result<()> {
    let token = tokens
        .token(http, user, instance)
        .await
        .map_err(anyhow::Error::msg)?;
    let mut client = Client::join(http, instance, &token).await?;
    let mut ready = false;
    while !stop.get() {
        client
            .run_until(POLL, |_, e| {
                match e {
                    ClientEvent::Receiving { .. } if !ready => {
                        ready = true;
                        counts.ready.set(counts.ready.get() + 1);
                    }
                    ClientEvent::Rtp { .. } if measuring.get() => {
                        counts.received.borrow_mut()[slot] += 1;
                    }
                    _ => {}
                }
                false
            })
            .await?;
    }
    let _ = client.leave().await;
    Ok(())
}

/// Joins publishing audio and sends a packet every 20 ms, counting those
/// sent while `measuring`.
async fn publisher(
    http: std::net::SocketAddr,
    tokens: &TokenSource,
    instance: &str,
    counts: &Counts,
    measuring: &Cell<bool>,
    stop: &Cell<bool>,
) -> anyhow::Result<()> {
    let user = format!("{instance}-tx");
    let token = tokens
        .token(http, &user, instance)
        .await
        .map_err(anyhow::Error::msg)?;
    let mut client = Client::join_publishing(http, instance, &token, &[TrackKind::Audio]).await?;
    let mid = client.session().published()[0].0;
    let payload = [0x5a_u8; PAYLOAD_BYTES];
    let every = Duration::from_micros(1_000_000 / PACKETS_PER_S);
    let mut next = Instant::now();
    let mut seq = 0u64;
    while !stop.get() {
        client.run_until(POLL, |_, _| false).await?;
        let now = Instant::now();
        if now < next {
            continue;
        }
        next += every;
        if !client.session().is_open() {
            continue;
        }
        seq += 1;
        let time = (seq as u32).wrapping_mul(960);
        if client
            .session()
            .write_rtp(mid, seq, time, false, &payload, now)
            .is_ok()
            && measuring.get()
        {
            counts.published.set(counts.published.get() + 1);
        }
        client.flush().await?;
    }
    let _ = client.leave().await;
    Ok(())
}
