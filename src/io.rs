//! The thin shell that runs a [`Shard`] (the router) on a pinned glommio executor with an
//! io_uring UDP socket. It only moves bytes, commands, events and
//! timestamps; every decision is the shard's.
//!
//! Datagrams move in batches ([`batch`]: `recvmmsg`/`sendmmsg` that never
//! wait); glommio's io_uring receive parks the thread when nothing is
//! queued, and its send waits when the socket's buffer is full.

mod batch;

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use glommio::{GlommioError, LocalExecutorBuilder, Placement};
use state::commands::{Command, Event};

use crate::config::Config;
use crate::router::Shard;

/// Longest the shell sleeps in the socket before it looks at its command
/// queue again (commands have no wakeup of their own across threads).
pub const COMMAND_POLL_INTERVAL: Duration = Duration::from_millis(2);
/// Commands a shard handles per round of its loop; the rest wait for the
/// next round (a round takes at most a few milliseconds when idle).
pub const COMMANDS_PER_ROUND_MAX: usize = 64;
/// Datagrams read back to back before the shell runs timers and commands.
pub const RECV_BATCH_MAX: usize = 64;
/// How often the shell measures the share of its core its thread uses (or
/// waits for; `shard.overload_counts_cpu_wait`).
pub const LOAD_SAMPLE_INTERVAL: Duration = Duration::from_millis(250);
/// Receive calls (of up to [`batch::BATCH_MAX`] datagrams each) per round.
const RECV_CALLS_MAX: usize = RECV_BATCH_MAX / batch::BATCH_MAX;

/// A running shard thread.
#[derive(Debug)]
pub struct ShardHandle {
    pub index: usize,
    /// The address the socket is bound to.
    pub bound: SocketAddr,
    /// The address advertised in SDP answers.
    pub advertised: SocketAddr,
    pub commands: Sender<Command>,
    pub thread: JoinHandle<()>,
    /// Datagrams the shard's socket received, updated as they arrive (the
    /// per-second `Stats` event is too coarse for throughput benchmarks).
    pub datagrams_in: Arc<AtomicU64>,
    /// When the shard's loop last came round ([`monotonic_ms`]): a shard
    /// whose loop stops coming round is stuck.
    pub heartbeat: Arc<AtomicU64>,
}

/// Milliseconds since the process first asked: the clock of shard
/// heartbeats (monotonic, shared by every thread).
pub fn monotonic_ms() -> u64 {
    monotonic_ms_at(Instant::now())
}

/// [`monotonic_ms`] at `at` (for a caller that has just read the clock).
pub fn monotonic_ms_at(at: Instant) -> u64 {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    u64::try_from(at.saturating_duration_since(epoch).as_millis()).unwrap_or(u64::MAX)
}

#[derive(Debug, thiserror::Error)]
pub enum ShardStartError {
    #[error("shard {index}: cannot start its executor: {message}")]
    Executor { index: usize, message: String },
    #[error("shard {index}: cannot bind UDP {addr}: {message}")]
    Bind {
        index: usize,
        addr: SocketAddr,
        message: String,
    },
}

/// Starts shard `index`: binds `udp_bind_ip:udp_port_base+index` inside a
/// new executor thread and returns once the socket is bound.
pub fn spawn(
    index: usize,
    config: &Config,
    events: Sender<Event>,
) -> Result<ShardHandle, ShardStartError> {
    let (commands_tx, commands_rx) = crossbeam_channel::bounded(config.shard.command_queue_len);
    let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
    let port = match config.webrtc.udp_port_base {
        0 => 0,
        base => base.saturating_add(index as u16),
    };
    let bind = SocketAddr::new(config.webrtc.udp_bind_ip, port);
    let placement = if config.node.pin_cores {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        Placement::Fixed(index % cpus)
    } else {
        Placement::Unbound
    };
    let shard_config = config.clone();
    let datagrams_in = Arc::new(AtomicU64::new(0));
    let counter = datagrams_in.clone();
    let heartbeat = Arc::new(AtomicU64::new(monotonic_ms()));
    let beat = heartbeat.clone();
    let builder = LocalExecutorBuilder::new(placement)
        .name(&format!("shard-{index}"))
        .io_memory(config.shard.io_memory_bytes)
        .spin_before_park(Duration::ZERO);
    let buffers = SocketBuffers {
        recv: config.shard.socket_recv_bytes,
        send: config.shard.socket_send_bytes,
    };
    let handle = builder
        .spawn(move || async move {
            let socket = match bind_socket(bind, buffers, index) {
                Ok(s) => s,
                Err(e) => {
                    let _ = ready_tx.send(Err(e.to_string()));
                    return;
                }
            };
            let bound = match socket.local_addr() {
                Ok(a) => a,
                Err(e) => {
                    let _ = ready_tx.send(Err(e.to_string()));
                    return;
                }
            };
            let advertised = advertised_addr(&shard_config, index, bound);
            let _ = ready_tx.send(Ok((bound, advertised)));
            let seed = rand::random::<u64>();
            let router = shard_config.router(advertised);
            let shard = Shard::new(index, router, seed, Instant::now, Instant::now());
            let datagram_bytes_max = shard_config.shard.datagram_bytes_max;
            let meter =
                LoadMeter::start(Instant::now(), shard_config.shard.overload_counts_cpu_wait);
            run(
                shard,
                socket,
                commands_rx,
                events,
                Beats {
                    datagrams_in: counter,
                    heartbeat: beat,
                },
                datagram_bytes_max,
                meter,
            )
            .await;
        })
        .map_err(|e| ShardStartError::Executor {
            index,
            message: e.to_string(),
        })?;
    let thread = std::thread::Builder::new()
        .name(format!("shard-{index}-join"))
        .spawn(move || {
            if let Err(e) = handle.join() {
                tracing::error!(shard = index, "shard thread failed: {e}");
            }
        })
        .map_err(|e| ShardStartError::Executor {
            index,
            message: e.to_string(),
        })?;
    match ready_rx.recv() {
        Ok(Ok((bound, advertised))) => Ok(ShardHandle {
            index,
            bound,
            advertised,
            commands: commands_tx,
            thread,
            datagrams_in,
            heartbeat,
        }),
        Ok(Err(message)) => Err(ShardStartError::Bind {
            index,
            addr: bind,
            message,
        }),
        Err(_) => Err(ShardStartError::Executor {
            index,
            message: "the executor thread exited before binding".into(),
        }),
    }
}

/// The kernel buffers a shard's socket asks for (0: the kernel's default).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct SocketBuffers {
    recv: usize,
    send: usize,
}

/// Binds a shard's UDP socket with the buffers asked for. A receive buffer
/// that is too small drops datagrams in bursts (the kernel's default, about
/// 208 KiB, overflows near 85% of a core at 400 clients); a send buffer
/// that is too small makes a tick's burst of snapshots wait for room.
fn bind_socket(
    addr: SocketAddr,
    asked: SocketBuffers,
    index: usize,
) -> std::io::Result<glommio::net::UdpSocket> {
    Ok(glommio::net::UdpSocket::from(
        sized_socket(addr, asked, index)?.0,
    ))
}

/// The bound socket of [`bind_socket`], with the buffers granted. Shard 0
/// warns when the kernel grants less than asked (every shard gets the
/// same), naming the sysctl to raise.
fn sized_socket(
    addr: SocketAddr,
    asked: SocketBuffers,
    index: usize,
) -> std::io::Result<(socket2::Socket, SocketBuffers)> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    // As glommio's own bind.
    socket.set_reuse_port(true)?;
    if asked.recv > 0 {
        socket.set_recv_buffer_size(asked.recv)?;
    }
    if asked.send > 0 {
        socket.set_send_buffer_size(asked.send)?;
    }
    // Linux reports twice what it grants once asked (bookkeeping
    // included); an untouched buffer is reported as it is.
    let granted_of =
        |asked: usize, reported: usize| if asked > 0 { reported / 2 } else { reported };
    let granted = SocketBuffers {
        recv: granted_of(asked.recv, socket.recv_buffer_size()?),
        send: granted_of(asked.send, socket.send_buffer_size()?),
    };
    socket.bind(&addr.into())?;
    if index == 0 {
        for (what, asked, granted, sysctl, key) in [
            (
                "receive",
                asked.recv,
                granted.recv,
                "net.core.rmem_max",
                "shard.socket_recv_bytes",
            ),
            (
                "send",
                asked.send,
                granted.send,
                "net.core.wmem_max",
                "shard.socket_send_bytes",
            ),
        ] {
            if asked > 0 && granted < asked {
                tracing::warn!(
                    asked,
                    granted,
                    "the kernel capped each shard socket's {what} buffer: raise {sysctl} to at \
                     least {key} ({asked}) on the host"
                );
            }
        }
        tracing::info!(
            recv = granted.recv,
            send = granted.send,
            "shard socket buffers granted"
        );
    }
    Ok((socket, granted))
}

fn advertised_addr(config: &Config, index: usize, bound: SocketAddr) -> SocketAddr {
    let ip = config.webrtc.public_ip.unwrap_or(bound.ip());
    let port = match config.webrtc.public_ports.get(index) {
        Some(&port) => port,
        None => config
            .webrtc
            .public_port_base
            .map_or(bound.port(), |base| base.saturating_add(index as u16)),
    };
    SocketAddr::new(ip, port)
}

/// What a shard's loop publishes to other threads as it goes.
struct Beats {
    /// Datagrams received so far.
    datagrams_in: Arc<AtomicU64>,
    /// When the loop last came round ([`monotonic_ms`]).
    heartbeat: Arc<AtomicU64>,
}

async fn run(
    mut shard: Shard,
    socket: glommio::net::UdpSocket,
    commands: Receiver<Command>,
    events: Sender<Event>,
    beats: Beats,
    datagram_bytes_max: usize,
    mut meter: LoadMeter,
) {
    let Beats {
        datagrams_in,
        heartbeat,
    } = beats;
    // One byte more than the limit, so a longer datagram shows as filling it.
    let mut buf = vec![0u8; datagram_bytes_max + 1];
    let mut recv = batch::RecvBatch::new(datagram_bytes_max);
    let mut send = batch::SendBatch::default();
    let mut out = Vec::with_capacity(batch::BATCH_MAX);
    let fd = socket.as_raw_fd();
    loop {
        let now = Instant::now();
        heartbeat.store(monotonic_ms_at(now), Ordering::Relaxed);
        if let Some(share) = meter.sample(now) {
            shard.observe_load(share, now);
        }
        // At most so many a round: a burst (a thousand instances created at
        // once) must not starve the ticks and datagrams of everyone already
        // in, nor hold the heartbeat still.
        for _ in 0..COMMANDS_PER_ROUND_MAX {
            let Ok(command) = commands.try_recv() else {
                break;
            };
            if !shard.handle_command(command, Instant::now()) {
                flush(&mut shard, &socket, &mut send, &mut out, &events).await;
                return;
            }
        }
        shard.handle_timeout(Instant::now());
        flush(&mut shard, &socket, &mut send, &mut out, &events).await;
        // What is already queued, many datagrams per call.
        let mut received = 0;
        for _ in 0..RECV_CALLS_MAX {
            let n = match recv.recv(fd) {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(shard = shard.index(), "recvmmsg: {e}");
                    0
                }
            };
            let now = Instant::now();
            for i in 0..n {
                match recv.get(i) {
                    batch::Received::Datagram(source, bytes) => {
                        shard.handle_datagram(source, bytes, now);
                    }
                    batch::Received::TooLarge => shard.drop_datagram("too_large"),
                    batch::Received::UnknownSource => shard.drop_datagram("unknown_family"),
                }
            }
            received += n;
            if n < batch::BATCH_MAX {
                break;
            }
        }
        datagrams_in.fetch_add(received as u64, Ordering::Relaxed);
        if received == 0 {
            // Nothing queued: park in io_uring until a datagram arrives or
            // the next timer (or command poll) is due.
            let wait = shard
                .poll_timeout()
                .saturating_duration_since(Instant::now())
                .clamp(Duration::from_micros(100), COMMAND_POLL_INTERVAL);
            if let Err(e) = socket.set_read_timeout(Some(wait)) {
                tracing::error!(shard = shard.index(), "set_read_timeout: {e}");
            }
            match socket.recv_from(&mut buf).await {
                Ok((n, source)) if n < buf.len() => {
                    datagrams_in.fetch_add(1, Ordering::Relaxed);
                    shard.handle_datagram(source, &buf[..n], Instant::now());
                }
                Ok(_) => {
                    datagrams_in.fetch_add(1, Ordering::Relaxed);
                    shard.drop_datagram("too_large");
                }
                Err(GlommioError::TimedOut(_)) => {}
                Err(GlommioError::IoError(e)) if e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(e) => tracing::warn!(shard = shard.index(), "recv_from: {e}"),
            }
        }
        flush(&mut shard, &socket, &mut send, &mut out, &events).await;
    }
}

/// The share of a core the calling thread uses, from the time it spent on a
/// CPU, and by default the time it waited for one
/// (`/proc/thread-self/schedstat`, nanoseconds), over wall time.
#[derive(Debug)]
struct LoadMeter {
    last: Option<(Instant, u64)>,
    next: Instant,
    counts_wait: bool,
}

impl LoadMeter {
    /// `counts_wait`: the thread's waits for its CPU count as load (see
    /// [`thread_demand_ns`]).
    fn start(now: Instant, counts_wait: bool) -> LoadMeter {
        LoadMeter {
            last: thread_demand_ns(counts_wait).map(|ns| (now, ns)),
            next: now + LOAD_SAMPLE_INTERVAL,
            counts_wait,
        }
    }

    /// The share since the last sample, once per [`LOAD_SAMPLE_INTERVAL`];
    /// `None` between samples or where the kernel does not say.
    fn sample(&mut self, now: Instant) -> Option<f32> {
        if now < self.next {
            return None;
        }
        self.next = now + LOAD_SAMPLE_INTERVAL;
        let ns = thread_demand_ns(self.counts_wait)?;
        let share = self.last.map(|(at, before)| {
            let wall = now.saturating_duration_since(at).as_nanos().max(1) as f64;
            (ns.saturating_sub(before) as f64 / wall) as f32
        });
        self.last = Some((now, ns));
        share
    }
}

/// What the calling thread asked of its CPU: the time it ran plus, with
/// `counts_wait`, the time it was ready to run but waited for the CPU
/// (nanoseconds, the first two fields of `schedstat`). The waiting counts because a shard shares its
/// core with whatever else the node runs there (the control thread's HTTP,
/// JWT and SDP work for a wave of joins, kernel work): its own CPU time
/// alone stays under the join limit while the core is full, and joins kept
/// coming in. Where the kernel keeps no `schedstat`: user + system clock
/// ticks (10 ms) from `stat`, CPU time only.
fn thread_demand_ns(counts_wait: bool) -> Option<u64> {
    if let Some(ns) = std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| parse_schedstat(&s, counts_wait))
    {
        return Some(ns);
    }
    let stat = std::fs::read_to_string("/proc/thread-self/stat").ok()?;
    // Fields after the command name (which may hold spaces), from field 3.
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    const NS_PER_CLOCK_TICK: u64 = 10_000_000;
    Some((utime + stime) * NS_PER_CLOCK_TICK)
}

/// Run time, plus run-queue wait with `counts_wait`, from a `schedstat` line.
fn parse_schedstat(line: &str, counts_wait: bool) -> Option<u64> {
    let mut fields = line.split_whitespace();
    let ran: u64 = fields.next()?.parse().ok()?;
    let waited: u64 = fields.next()?.parse().ok()?;
    Some(if counts_wait {
        ran.saturating_add(waited)
    } else {
        ran
    })
}

/// Writes the shard's datagrams, a batch per call, and forwards its events.
async fn flush(
    shard: &mut Shard,
    socket: &glommio::net::UdpSocket,
    send: &mut batch::SendBatch,
    out: &mut Vec<str0m::net::Transmit>,
    events: &Sender<Event>,
) {
    let fd = socket.as_raw_fd();
    loop {
        out.clear();
        while out.len() < batch::BATCH_MAX {
            match shard.poll_transmit() {
                Some(t) => out.push(t),
                None => break,
            }
        }
        if out.is_empty() {
            break;
        }
        let mut at = 0;
        while at < out.len() {
            let pending = out[at..].iter().map(|t| (t.destination, &t.contents[..]));
            match send.send(fd, pending) {
                batch::Sent::Some(n) => at += n,
                batch::Sent::Full => {
                    // The send buffer is full: wait for room through io_uring.
                    let t = &out[at];
                    if let Err(e) = socket.send_to(&t.contents, t.destination).await {
                        tracing::debug!(shard = shard.index(), "send_to {}: {e}", t.destination);
                        shard.drop_datagram("send_failed");
                    }
                    at += 1;
                }
                batch::Sent::Failed => {
                    shard.drop_datagram("send_failed");
                    at += 1;
                }
            }
        }
    }
    while let Some(event) = shard.poll_event() {
        match events.try_send(event) {
            Ok(()) => {}
            Err(TrySendError::Full(event)) => {
                // The control thread is behind; block rather than lose a
                // session or instance event (seats would leak).
                if events.send(event).is_err() {
                    return;
                }
            }
            Err(TrySendError::Disconnected(_)) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `net.core` buffer setting of the kernel.
    fn sysctl(name: &str) -> usize {
        std::fs::read_to_string(format!("/proc/sys/net/core/{name}"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or_else(|| panic!("/proc/sys/net/core/{name} is readable"))
    }

    #[test]
    fn the_load_meter_sees_a_busy_thread() {
        let t0 = Instant::now();
        let mut meter = LoadMeter::start(t0, false);
        assert_eq!(meter.sample(t0), None, "not before the interval");
        // Spin for the interval: the thread is on a CPU most of it.
        let mut x = 0u64;
        while t0.elapsed() < LOAD_SAMPLE_INTERVAL {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        let share = meter.sample(Instant::now()).expect("schedstat is readable");
        assert!(share > 0.2 && share <= 1.2, "{share}");
        // Sleeping for the next one: mostly idle.
        std::thread::sleep(LOAD_SAMPLE_INTERVAL);
        let share = meter.sample(Instant::now()).expect("schedstat is readable");
        assert!(share < 0.5, "{share}");
    }

    #[test]
    fn the_load_meter_counts_waiting_for_a_busy_cpu_as_load() {
        assert_eq!(parse_schedstat("4000 600 12\n", true), Some(4600));
        assert_eq!(parse_schedstat("4000 600 12\n", false), Some(4000));
        assert_eq!(parse_schedstat("4000", true), None);
        // Twice as many spinners as CPUs, this thread among them: each runs
        // about a third of the time and waits the rest.
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let spinners: Vec<_> = (0..2 * cpus)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut x = 0u64;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        x = std::hint::black_box(x.wrapping_add(1));
                    }
                })
            })
            .collect();
        let t0 = Instant::now();
        let mut demand = LoadMeter::start(t0, true);
        let mut ran = LoadMeter::start(t0, false);
        let mut x = 0u64;
        while t0.elapsed() < LOAD_SAMPLE_INTERVAL * 2 {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        let now = Instant::now();
        let demand = demand.sample(now).expect("schedstat is readable");
        let ran = ran.sample(now).expect("schedstat is readable");
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for s in spinners {
            let _ = s.join();
        }
        assert!(
            demand > 0.9,
            "a thread that never stops asking is fully loaded: {demand}"
        );
        assert!(ran < 0.75, "while it ran only part of the time: {ran}");
    }

    #[test]
    fn a_shard_socket_gets_the_buffers_asked_up_to_the_kernel_caps() {
        let addr: SocketAddr = "127.0.0.1:0".parse().expect("an address");
        let asked = SocketBuffers {
            recv: 1024 * 1024,
            send: 512 * 1024,
        };
        let (_socket, granted) = sized_socket(addr, asked, 0).expect("binds");
        assert_eq!(granted.recv, asked.recv.min(sysctl("rmem_max")));
        assert_eq!(granted.send, asked.send.min(sysctl("wmem_max")));
        let defaults = SocketBuffers { recv: 0, send: 0 };
        let (_socket, default) = sized_socket(addr, defaults, 0).expect("binds");
        assert_eq!(
            default.recv,
            sysctl("rmem_default"),
            "the kernel's, untouched"
        );
        assert_eq!(default.send, sysctl("wmem_default"));
        // Each is asked for on its own: a larger receive buffer alone
        // leaves the send buffer at the kernel's default.
        let recv_only = SocketBuffers {
            recv: asked.recv,
            send: 0,
        };
        let (_socket, granted) = sized_socket(addr, recv_only, 0).expect("binds");
        assert_eq!(granted.recv, asked.recv.min(sysctl("rmem_max")));
        assert_eq!(granted.send, default.send);
    }
}
