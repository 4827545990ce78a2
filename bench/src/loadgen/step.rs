//! One measured step: worker processes (pinned to the bot cores) join their
//! bots, the load settles, a window is measured (bots, server `/proc`,
//! socket drops, server counters), the bots leave, and everything becomes
//! one [`StepReport`].

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use indicatif::ProgressBar;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;

use super::bot::{BotResult, BotSpec, IoCounts, Workload};
use super::fleet::{FleetPlan, FleetResult};
use super::host::{self, CpuMeter};
use super::stats::{Histogram, quantile};
use super::target;

/// Snapshot delivery a step must hold to count as healthy.
pub const DELIVERY_HEALTHY: f64 = 0.95;
/// The server's socket counts as the limit once it drops more than this
/// share of the datagrams the bots sent in the window (a stray drop does not
/// end a series; a full receive buffer does).
pub const SOCKET_DROPS_LIMIT_RATIO: f64 = 0.001;
/// Longest `perf record` may take to write its profile after the window.
pub const PERF_WRITE_TIMEOUT: Duration = Duration::from_secs(120);
/// Lines a worker may write before the orchestrator reads them.
pub const WORKER_LINES_QUEUED: usize = 1024;
/// Longest a worker may take to report after `stop`.
pub const WORKER_STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the server's counters take to include the last second (its
/// shards report once a second).
pub const COUNTERS_SETTLE: Duration = Duration::from_millis(2_500);

/// How a step runs its bots.
#[derive(Debug, Clone)]
pub struct StepOptions {
    /// The `loadgen` binary to start workers from.
    pub worker_binary: PathBuf,
    /// Worker processes; bots are split between them by instance.
    pub processes: usize,
    /// Cores the workers are pinned to, round-robin (empty: not pinned).
    pub bot_cores: Vec<usize>,
    pub join_rate_per_s: u32,
    /// Longest the joins may take before the window starts anyway.
    pub join_budget: Duration,
    pub settle: Duration,
    pub window: Duration,
    /// Record a `perf` profile of the server during the window into this file.
    pub perf: Option<PathBuf>,
}

/// What a step measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepReport {
    pub server: String,
    pub scene: String,
    pub clients: usize,
    pub instances: usize,
    pub joined: usize,
    /// Joins that failed, those refused `busy` (the server shedding load
    /// as designed) excluded.
    pub join_failed: usize,
    /// Joins the server refused with 503 `busy`: it was over its load limit.
    pub join_refused_busy: usize,
    /// Bots whose connection ended during the run.
    pub ended_early: usize,
    pub join_ms_p50: Option<f64>,
    pub join_ms_p99: Option<f64>,
    pub join_ms_max: Option<f64>,
    /// Snapshots received / promised, over every joined bot.
    pub delivery_mean: f64,
    pub delivery_min: f64,
    /// Joined bots under the healthy delivery.
    pub bots_below_healthy: usize,
    pub interarrival_ms_p50: Option<f64>,
    pub interarrival_ms_p99: Option<f64>,
    pub latency_ms_p50: Option<f64>,
    pub latency_ms_p99: Option<f64>,
    pub latency_samples: u64,
    /// Per joined client, per second of the window.
    pub bytes_down_per_client_s: f64,
    pub bytes_up_per_client_s: f64,
    pub datagrams_down_per_client_s: f64,
    pub datagrams_up_per_client_s: f64,
    /// Input frames per client per second (movement inputs plus ack-only ones).
    pub inputs_per_client_s: f64,
    pub acks_only_per_client_s: f64,
    pub inputs_sent: u64,
    /// Input frames the server counted (whole run).
    pub inputs_received: u64,
    /// Sent minus received, as a share of sent.
    pub inputs_lost_ratio: f64,
    pub chats_sent: u64,
    pub chats_received: u64,
    pub window_s: f64,
    /// Server CPU over the window: cores busy, and microseconds per client-second.
    pub server_cores: f64,
    pub server_cpu_us_per_client_s: f64,
    pub server_rss_before_mib: f64,
    pub server_rss_mib: f64,
    pub server_kib_per_client: f64,
    /// The same without the instances' own memory: the growth from the
    /// step's start (instances created, nobody in them) to the window's end
    /// (the baseline creates its rooms as bots join, so there it is the same).
    pub server_kib_per_connection: f64,
    /// Cores the bot processes kept busy, and the share of their cores.
    pub bot_cores_used: f64,
    pub bot_cores_share: f64,
    pub server_socket_drops: u64,
    pub other_socket_drops: u64,
    /// The server's own drop counter and skipped ticks, over the run.
    pub server_dropped_datagrams: f64,
    pub server_skipped_ticks: f64,
    /// Audio packets received (no media forwarding exists yet: always 0).
    pub audio_packets: u64,
    /// What ran out first, when the step was not healthy.
    pub limit: Option<String>,
}

impl StepReport {
    pub fn healthy(&self) -> bool {
        self.limit.is_none()
    }
}

/// The server a step measures.
#[derive(Debug, Clone)]
pub struct Observed {
    pub name: String,
    pub http: std::net::SocketAddr,
    /// Its process, for CPU and memory (None: a remote node, not measured).
    pub pid: Option<u32>,
    /// Its UDP ports, for socket drops (besides the sockets its process
    /// holds, found through `pid`).
    pub udp_ports: Vec<u16>,
    /// Its resident memory before the step's instances were created (else
    /// it is read when the step starts).
    pub rss_before: Option<u64>,
}

struct Worker {
    child: Child,
    stdin: ChildStdin,
    pid: u32,
}

/// Runs one step against `server` with `bots` (already created instances).
pub async fn run(
    server: &Observed,
    scene: &str,
    bots: Vec<BotSpec>,
    workload: &Workload,
    secret: Option<&str>,
    options: &StepOptions,
    bar: &ProgressBar,
) -> anyhow::Result<StepReport> {
    let clients = bots.len();
    let instances = {
        let mut ids: Vec<&str> = bots.iter().map(|b| b.instance.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        ids.len()
    };
    let before = target::scrape(server.http).await?;
    let pids: Vec<u32> = server.pid.into_iter().collect();
    let rss = || server.pid.and_then(host::rss_bytes).unwrap_or(0);
    let rss_before = server.rss_before.unwrap_or_else(rss);
    let rss_start = rss();
    let (lines_tx, mut lines_rx) = mpsc::channel(WORKER_LINES_QUEUED);
    let mut workers = Vec::new();
    for (i, plan_bots) in split_by_instance(bots, options.processes)
        .into_iter()
        .enumerate()
    {
        let plan = FleetPlan {
            workload: workload.clone(),
            bots: plan_bots,
            join_rate_per_s: (options.join_rate_per_s / options.processes.max(1) as u32).max(1),
            secret: secret.map(str::to_string),
        };
        let core =
            (!options.bot_cores.is_empty()).then(|| options.bot_cores[i % options.bot_cores.len()]);
        workers.push(spawn_worker(&options.worker_binary, core, &plan, i, lines_tx.clone()).await?);
    }
    drop(lines_tx);

    // Joins.
    bar.set_length(clients as u64);
    bar.set_position(0);
    bar.set_message(format!("{clients} clients joining"));
    let mut progress = vec![(0usize, 0usize); workers.len()];
    let mut results = vec![None; workers.len()];
    let join_deadline = Instant::now() + options.join_budget;
    loop {
        let (joined, failed) = progress.iter().fold((0, 0), |a, p| (a.0 + p.0, a.1 + p.1));
        bar.set_position((joined + failed) as u64);
        if joined + failed >= clients || Instant::now() >= join_deadline {
            break;
        }
        match tokio::time::timeout_at(join_deadline.into(), lines_rx.recv()).await {
            Ok(Some((i, line))) => read_line(i, &line, &mut progress, &mut results),
            Ok(None) => anyhow::bail!("every worker exited during the joins"),
            Err(_) => break,
        }
    }

    // Settle, then the window.
    bar.set_message(format!("{clients} clients settling"));
    drain_for(options.settle, &mut lines_rx, &mut progress, &mut results).await;
    let worker_pids: Vec<u32> = workers.iter().map(|w| w.pid).collect();
    let server_cpu = CpuMeter::start(&pids);
    let bot_cpu = CpuMeter::start(&worker_pids);
    let sockets_before = host::udp_sockets();
    let mut server_sockets = server.pid.map(host::socket_inodes).unwrap_or_default();
    for w in &mut workers {
        // A worker that died is missing from the results; the others go on.
        let _ = w.stdin.write_all(b"measure\n").await;
        let _ = w.stdin.flush().await;
    }
    bar.set_message(format!("{clients} clients measured"));
    let perf = match (&options.perf, server.pid) {
        (Some(path), Some(pid)) => Some(start_perf(pid, path, options.window)?),
        _ => None,
    };
    drain_for(options.window, &mut lines_rx, &mut progress, &mut results).await;
    let (server_cpu_s, window_s) = server_cpu.read();
    let bot_cores_used = bot_cpu.cores_used();
    let sockets_after = host::udp_sockets();
    server_sockets.extend(server.pid.map(host::socket_inodes).unwrap_or_default());
    let drops = host::udp_drops_between(
        &sockets_before,
        &sockets_after,
        &server_sockets,
        &server.udp_ports,
    );
    let rss = rss();

    // Stop and collect (perf finishes its window meanwhile).
    bar.set_message(format!("{clients} clients leaving"));
    for w in &mut workers {
        let _ = w.stdin.write_all(b"stop\n").await;
        let _ = w.stdin.flush().await;
    }
    if let Some(mut p) = perf {
        match tokio::time::timeout(PERF_WRITE_TIMEOUT, p.wait()).await {
            Ok(Ok(status)) if status.success() => {}
            Ok(Ok(status)) => bar.println(format!("perf record failed: {status}")),
            Ok(Err(e)) => bar.println(format!("perf record failed: {e}")),
            Err(_) => bar.println(format!(
                "perf record did not finish within {PERF_WRITE_TIMEOUT:?}"
            )),
        }
    }
    let stop_deadline = Instant::now() + WORKER_STOP_TIMEOUT;
    while results.iter().any(Option::is_none) {
        match tokio::time::timeout_at(stop_deadline.into(), lines_rx.recv()).await {
            Ok(Some((i, line))) => read_line(i, &line, &mut progress, &mut results),
            Ok(None) | Err(_) => break,
        }
    }
    for mut w in workers {
        let _ = tokio::time::timeout(Duration::from_secs(5), w.child.wait()).await;
        let _ = w.child.start_kill();
    }
    tokio::time::sleep(COUNTERS_SETTLE).await;
    let after = target::scrape(server.http).await?;
    let missing_workers = results.iter().filter(|r| r.is_none()).count();
    if missing_workers > 0 {
        bar.println(format!(
            "{missing_workers} worker(s) sent no result: their bots count as failed"
        ));
    }
    let bots: Vec<BotResult> = results.into_iter().flatten().flat_map(|r| r.bots).collect();
    anyhow::ensure!(!bots.is_empty(), "no worker reported a result");
    let measured = Measured {
        window_s,
        server_cpu_s,
        rss_before,
        rss_start,
        rss,
        bot_cores_used,
        // The cores the workers can use: those they are pinned to (no more
        // than one per process), or every core when unpinned.
        bot_cores: if options.bot_cores.is_empty() {
            std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
        } else {
            let mut cores = options.bot_cores.clone();
            cores.truncate(options.processes.max(1));
            cores.sort_unstable();
            cores.dedup();
            cores.len()
        },
        drops,
        inputs_received: (after.get("instanceserver_inputs_total")
            - before.get("instanceserver_inputs_total")) as u64,
        server_dropped: after.get("instanceserver_dropped_datagrams_total")
            - before.get("instanceserver_dropped_datagrams_total"),
        skipped_ticks: after.get("instanceserver_skipped_ticks_total")
            - before.get("instanceserver_skipped_ticks_total"),
    };
    Ok(summarise(
        &server.name,
        scene,
        clients,
        instances,
        &bots,
        &measured,
    ))
}

/// Keeps the bots of one instance in one process (they share the latency
/// probe) and spreads instances over `processes`.
fn split_by_instance(bots: Vec<BotSpec>, processes: usize) -> Vec<Vec<BotSpec>> {
    let mut plans: Vec<Vec<BotSpec>> = vec![Vec::new(); processes.max(1)];
    let mut order: Vec<String> = Vec::new();
    for bot in bots {
        let slot = match order.iter().position(|i| *i == bot.instance) {
            Some(p) => p,
            None => {
                order.push(bot.instance.clone());
                order.len() - 1
            }
        };
        plans[slot % processes.max(1)].push(bot);
    }
    plans.retain(|p| !p.is_empty());
    plans
}

async fn spawn_worker(
    binary: &PathBuf,
    core: Option<usize>,
    plan: &FleetPlan,
    index: usize,
    lines: mpsc::Sender<(usize, String)>,
) -> anyhow::Result<Worker> {
    let mut command = match core {
        Some(c) => {
            let mut command = Command::new("taskset");
            command.arg("-c").arg(c.to_string()).arg(binary);
            command
        }
        None => Command::new(binary),
    };
    command
        .arg("worker")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    let mut child = command.spawn()?;
    let pid = child
        .id()
        .ok_or_else(|| anyhow::anyhow!("worker exited at once"))?;
    let mut stdin = child
        .stdin
        .take()
        .ok_or_else(|| anyhow::anyhow!("no worker stdin"))?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("no worker stdout"))?;
    let mut line = serde_json::to_string(plan)?;
    line.push('\n');
    stdin.write_all(line.as_bytes()).await?;
    stdin.flush().await?;
    tokio::spawn(async move {
        let mut reader = BufReader::new(stdout).lines();
        while let Ok(Some(l)) = reader.next_line().await {
            if lines.send((index, l)).await.is_err() {
                break;
            }
        }
    });
    Ok(Worker { child, stdin, pid })
}

fn read_line(
    worker: usize,
    line: &str,
    progress: &mut [(usize, usize)],
    results: &mut [Option<FleetResult>],
) {
    if let Some(rest) = line.strip_prefix("progress ") {
        let mut it = rest.split_whitespace().filter_map(|n| n.parse().ok());
        if let (Some(j), Some(f)) = (it.next(), it.next()) {
            progress[worker] = (j, f);
        }
    } else if let Some(json) = line.strip_prefix("result ") {
        match serde_json::from_str(json) {
            Ok(r) => results[worker] = Some(r),
            Err(e) => eprintln!("worker {worker}: unreadable result: {e}"),
        }
    }
}

/// Reads worker lines for `d` (so their pipes never fill).
async fn drain_for(
    d: Duration,
    lines: &mut mpsc::Receiver<(usize, String)>,
    progress: &mut [(usize, usize)],
    results: &mut [Option<FleetResult>],
) {
    let deadline = tokio::time::Instant::now() + d;
    while let Ok(Some((i, line))) = tokio::time::timeout_at(deadline, lines.recv()).await {
        read_line(i, &line, progress, results);
    }
    tokio::time::sleep_until(deadline).await;
}

fn start_perf(pid: u32, path: &PathBuf, window: Duration) -> anyhow::Result<Child> {
    Command::new("perf")
        .args(["record", "--call-graph", "dwarf,16384", "-F", "499", "-o"])
        .arg(path)
        .arg("-p")
        .arg(pid.to_string())
        .arg("--")
        .arg("sleep")
        .arg(window.as_secs_f64().to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| anyhow::anyhow!("cannot start perf (linux-perf installed?): {e}"))
}

/// What the orchestrator measured around the bots.
struct Measured {
    window_s: f64,
    server_cpu_s: f64,
    rss_before: u64,
    rss_start: u64,
    rss: u64,
    bot_cores_used: f64,
    bot_cores: usize,
    drops: (u64, u64),
    inputs_received: u64,
    server_dropped: f64,
    skipped_ticks: f64,
}

fn summarise(
    server: &str,
    scene: &str,
    clients: usize,
    instances: usize,
    bots: &[BotResult],
    m: &Measured,
) -> StepReport {
    let joined: Vec<&BotResult> = bots.iter().filter(|b| b.joined).collect();
    let n = joined.len().max(1) as f64;
    let join_ms: Vec<f64> = joined.iter().filter_map(|b| b.join_ms).collect();
    let deliveries: Vec<f64> = joined.iter().filter_map(|b| b.delivery()).collect();
    let delivery_mean = if deliveries.is_empty() {
        0.0
    } else {
        deliveries.iter().sum::<f64>() / deliveries.len() as f64
    };
    let delivery_min = deliveries.iter().copied().fold(f64::INFINITY, f64::min);
    let mut interarrival = Histogram::default();
    let mut latency = Histogram::default();
    let mut io = IoCounts::default();
    let mut window_s = 0.0;
    for b in &joined {
        interarrival.merge(&b.interarrival);
        latency.merge(&b.latency);
        io.add(&b.window_io);
        window_s += b.window_s;
    }
    // Client-seconds actually measured (each bot's own window).
    let client_s = window_s.max(f64::MIN_POSITIVE);
    let inputs_sent: u64 = bots.iter().map(|b| b.inputs_sent + b.acks_sent).sum();
    let server_cores = m.server_cpu_s / m.window_s.max(f64::MIN_POSITIVE);
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let refused_busy = bots
        .iter()
        .filter(|b| b.join_error.as_deref().is_some_and(refused_busy))
        .count();
    let report = StepReport {
        server: server.to_string(),
        scene: scene.to_string(),
        clients,
        instances,
        joined: joined.len(),
        // Bots of a worker that never reported count as failed too.
        join_failed: clients.saturating_sub(joined.len() + refused_busy),
        join_refused_busy: refused_busy,
        ended_early: bots.iter().filter(|b| b.ended_early.is_some()).count(),
        join_ms_p50: quantile(&join_ms, 0.5),
        join_ms_p99: quantile(&join_ms, 0.99),
        join_ms_max: quantile(&join_ms, 1.0),
        delivery_mean,
        delivery_min: if delivery_min.is_finite() {
            delivery_min
        } else {
            0.0
        },
        bots_below_healthy: deliveries.iter().filter(|&&d| d < DELIVERY_HEALTHY).count(),
        interarrival_ms_p50: interarrival.quantile_ms(0.5),
        interarrival_ms_p99: interarrival.quantile_ms(0.99),
        latency_ms_p50: latency.quantile_ms(0.5),
        latency_ms_p99: latency.quantile_ms(0.99),
        latency_samples: latency.count(),
        bytes_down_per_client_s: io.bytes_in as f64 / client_s,
        bytes_up_per_client_s: io.bytes_out as f64 / client_s,
        datagrams_down_per_client_s: io.datagrams_in as f64 / client_s,
        datagrams_up_per_client_s: io.datagrams_out as f64 / client_s,
        inputs_per_client_s: joined
            .iter()
            .map(|b| b.window_inputs + b.window_acks)
            .sum::<u64>() as f64
            / client_s,
        acks_only_per_client_s: joined.iter().map(|b| b.window_acks).sum::<u64>() as f64 / client_s,
        inputs_sent,
        inputs_received: m.inputs_received,
        inputs_lost_ratio: if inputs_sent > 0 {
            (inputs_sent as f64 - m.inputs_received as f64).max(0.0) / inputs_sent as f64
        } else {
            0.0
        },
        chats_sent: bots.iter().map(|b| b.chats_sent).sum(),
        chats_received: bots.iter().map(|b| b.chats_received).sum(),
        window_s: m.window_s,
        server_cores,
        server_cpu_us_per_client_s: server_cores * 1e6 / n,
        server_rss_before_mib: mib(m.rss_before),
        server_rss_mib: mib(m.rss),
        server_kib_per_client: (m.rss.saturating_sub(m.rss_before)) as f64 / 1024.0 / n,
        server_kib_per_connection: (m.rss.saturating_sub(m.rss_start)) as f64 / 1024.0 / n,
        bot_cores_used: m.bot_cores_used,
        bot_cores_share: m.bot_cores_used / m.bot_cores as f64,
        server_socket_drops: m.drops.0,
        other_socket_drops: m.drops.1,
        server_dropped_datagrams: m.server_dropped,
        server_skipped_ticks: m.skipped_ticks,
        audio_packets: 0,
        limit: None,
    };
    StepReport {
        limit: limit(&report),
        ..report
    }
}

/// Whether a join error is the server's 503 `busy` (load shedding).
fn refused_busy(error: &str) -> bool {
    error.starts_with("join refused with 503") && error.contains(r#""error":"busy""#)
}

/// Which resource ran out first, if any: delivery fell, the server's core or
/// the bots' cores were saturated, or sockets dropped.
pub fn limit(r: &StepReport) -> Option<String> {
    let mut reasons = Vec::new();
    if r.join_failed > 0 {
        reasons.push(format!("{} joins failed", r.join_failed));
    }
    if r.ended_early > 0 {
        reasons.push(format!("{} clients dropped", r.ended_early));
    }
    if r.delivery_mean < DELIVERY_HEALTHY {
        reasons.push(format!("delivery {:.1}%", r.delivery_mean * 100.0));
    }
    if r.server_cores >= 0.95 {
        reasons.push(format!("server core {:.0}% busy", r.server_cores * 100.0));
    }
    if r.bot_cores_share >= 0.90 {
        reasons.push(format!("bot cores {:.0}% busy", r.bot_cores_share * 100.0));
    }
    let datagrams_up = r.datagrams_up_per_client_s * r.clients as f64 * r.window_s;
    if r.server_socket_drops as f64 > SOCKET_DROPS_LIMIT_RATIO * datagrams_up {
        reasons.push(format!("{} server socket drops", r.server_socket_drops));
    }
    (!reasons.is_empty()).then(|| reasons.join(", "))
}

/// One line for the progress output.
pub fn summary_line(r: &StepReport) -> String {
    format!(
        "  {} clients{}: delivery {:.1}%, server {:.0}% of a core ({:.0} µs per client-s, {:.0} KiB per client, {:.0} without instances), bots {:.0}%: {}",
        r.clients,
        if r.join_refused_busy > 0 {
            format!(" ({} refused busy)", r.join_refused_busy)
        } else {
            String::new()
        },
        r.delivery_mean * 100.0,
        r.server_cores * 100.0,
        r.server_cpu_us_per_client_s,
        r.server_kib_per_client,
        r.server_kib_per_connection,
        r.bot_cores_share * 100.0,
        r.limit.as_deref().unwrap_or("healthy"),
    )
}
