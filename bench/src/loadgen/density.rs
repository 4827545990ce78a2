//! The density benchmark, unattended: for each scene and each server (ours
//! and the webrtc-rs baseline), steps of clients until delivery falls under
//! the healthy mark or a core saturates, each on a fresh server pinned to its
//! core; then empty instances (memory, idle CPU, the cost of creating one).

use std::path::PathBuf;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

use super::bot::{BotSpec, Workload};
use super::host::{self, CpuMeter};
use super::step::{self, StepOptions, StepReport};
use super::target::{self, Server, ServerKind, ServerSpec};

/// Users the benchmark puts in one instance.
pub const USERS_PER_INSTANCE_DEFAULT: usize = 10;
/// How long empty instances idle before their CPU is measured.
pub const EMPTY_SETTLE: Duration = Duration::from_secs(3);
/// Longest the benchmark waits for empty instances to fall asleep (their
/// worlds come to rest) before measuring anyway.
pub const EMPTY_ASLEEP_WAIT: Duration = Duration::from_secs(120);
/// The window over which the server's own idle CPU (no instances) is read.
pub const EMPTY_FLOOR_WINDOW: Duration = Duration::from_secs(3);

#[derive(Debug, Clone)]
pub struct DensityOptions {
    pub server: ServerSpec,
    pub baseline_binary: PathBuf,
    pub servers: Vec<ServerKind>,
    pub scenes: Vec<String>,
    pub steps: Vec<usize>,
    pub users_per_instance: usize,
    pub workload: Workload,
    pub step: StepOptions,
    /// (scene, instances) of the empty-instance measurements.
    pub empty: Vec<(String, usize)>,
    pub empty_window: Duration,
    /// Record a profile of our server at this many clients (first scene).
    pub perf_at: Option<usize>,
    pub perf_dir: PathBuf,
}

/// The cost of instances with nobody in them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EmptyReport {
    pub scene: String,
    pub instances: usize,
    pub create_s: f64,
    /// Server CPU spent creating, per instance.
    pub create_cpu_us_per_instance: f64,
    pub rss_before_mib: f64,
    pub rss_mib: f64,
    pub kib_per_instance: f64,
    /// Server cores kept busy by the idle instances.
    pub idle_cores: f64,
    pub idle_us_per_instance_s: f64,
    /// Cores the same server kept busy before any instance existed.
    pub floor_cores: f64,
    /// Instances asleep (not ticking) when the idle CPU was measured, and
    /// seconds from the last creation until they were.
    pub asleep: usize,
    pub asleep_after_s: f64,
}

/// Ours over the baseline at one step.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ratio {
    pub scene: String,
    pub clients: usize,
    pub cpu_ours_over_baseline: f64,
    pub memory_ours_over_baseline: f64,
    pub both_healthy: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DensityReport {
    pub steps: Vec<StepReport>,
    pub ratios: Vec<Ratio>,
    pub empty: Vec<EmptyReport>,
    pub rmem_max: Option<u64>,
    pub wmem_max: Option<u64>,
}

pub fn bar() -> ProgressBar {
    let bar = ProgressBar::new(0);
    if let Ok(style) =
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// The bots of a step: `clients` users, `per_instance` to an instance, the
/// first of each instance its latency probe.
pub fn bots(prefix: &str, clients: usize, per_instance: usize) -> (Vec<String>, Vec<BotSpec>) {
    let per = per_instance.max(1);
    let instances: Vec<String> = (0..clients.div_ceil(per))
        .map(|i| format!("{prefix}-{i}"))
        .collect();
    let bots = (0..clients)
        .map(|c| BotSpec {
            instance: instances[c / per].clone(),
            user: format!("bot-{c}"),
            probe: c % per == 0,
        })
        .collect();
    (instances, bots)
}

pub async fn run(
    options: &DensityOptions,
    on_step: impl Fn(&DensityReport),
) -> anyhow::Result<DensityReport> {
    let (rmem_max, wmem_max) = host::socket_buffer_max();
    let mut report = DensityReport {
        rmem_max,
        wmem_max,
        ..DensityReport::default()
    };
    let bar = bar();
    for (scene_index, scene) in options.scenes.iter().enumerate() {
        for &kind in &options.servers {
            for &clients in &options.steps {
                say(
                    &bar,
                    format!("{} / {scene} / {clients} clients", kind.name()),
                );
                let perf = (kind == ServerKind::Ours
                    && scene_index == 0
                    && options.perf_at == Some(clients))
                .then(|| {
                    options
                        .perf_dir
                        .join(format!("perf-{scene}-{clients}.data"))
                });
                let r = step_on_fresh_server(options, kind, scene, clients, perf, &bar).await?;
                let healthy = r.healthy();
                say(&bar, step::summary_line(&r));
                report.steps.push(r);
                on_step(&report);
                if !healthy {
                    break;
                }
            }
        }
        report.ratios = ratios(&report.steps);
    }
    for (scene, count) in &options.empty {
        say(&bar, format!("{count} empty {scene} instances"));
        let r = empty_instances(options, scene, *count, &bar).await?;
        report.empty.push(r);
        on_step(&report);
    }
    bar.finish_and_clear();
    Ok(report)
}

async fn step_on_fresh_server(
    options: &DensityOptions,
    kind: ServerKind,
    scene: &str,
    clients: usize,
    perf: Option<PathBuf>,
    bar: &ProgressBar,
) -> anyhow::Result<StepReport> {
    let mut spec = options.server.clone();
    spec.kind = kind;
    spec.scene = scene.to_string();
    if kind == ServerKind::Baseline {
        spec.binary = options.baseline_binary.clone();
    }
    let server = Server::start(&spec).await?;
    let (instances, bots) = bots(
        &format!("load-{scene}"),
        clients,
        options.users_per_instance,
    );
    // Memory per client counts the instances (the baseline makes its rooms
    // as the bots join): read it before ours are created.
    let mut observed = server.observed();
    observed.rss_before = host::rss_bytes(server.pid);
    if let Some(grpc) = server.grpc {
        let max_users = u32::try_from(options.users_per_instance).unwrap_or(u32::MAX);
        let token = server.grpc_token.as_deref();
        target::create_instances(grpc, token, &instances, scene, max_users).await?;
    }
    let mut step_options = options.step.clone();
    step_options.perf = perf;
    let mut workload = options.workload.clone();
    workload.http = server.http;
    let result = step::run(
        &observed,
        scene,
        bots,
        &workload,
        Some(&spec.secret),
        &step_options,
        bar,
    )
    .await;
    server.stop().await;
    result
}

/// Creates `count` empty instances of `scene` on a fresh server of ours and
/// measures their memory, their idle CPU and the CPU spent creating them.
pub async fn empty_instances(
    options: &DensityOptions,
    scene: &str,
    count: usize,
    bar: &ProgressBar,
) -> anyhow::Result<EmptyReport> {
    let mut spec = options.server.clone();
    spec.kind = ServerKind::Ours;
    spec.settings
        .push(format!("shard.instances_max={}", count + 16));
    spec.settings
        .push("instance.empty_timeout_ms=3600000".into());
    let server = Server::start(&spec).await?;
    let grpc = server
        .grpc
        .ok_or_else(|| anyhow::anyhow!("our server has a control API"))?;
    let result = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let rss_before = host::rss_bytes(server.pid).unwrap_or(0);
        let floor = CpuMeter::start(&[server.pid]);
        tokio::time::sleep(EMPTY_FLOOR_WINDOW).await;
        let floor_cores = floor.cores_used();
        let (ids, _) = bots(&format!("empty-{scene}"), count, 1);
        bar.set_length(0);
        bar.set_message(format!("creating {count} {scene} instances"));
        let cpu = CpuMeter::start(&[server.pid]);
        let token = server.grpc_token.as_deref();
        let took = target::create_instances(grpc, token, &ids, scene, 10).await?;
        let (create_cpu_s, _) = cpu.read();
        bar.set_message(format!("{count} {scene} instances coming to rest"));
        let created = std::time::Instant::now();
        let asleep = loop {
            let asleep = target::scrape(server.http)
                .await?
                .get("instanceserver_shard_instances_asleep") as usize;
            if asleep >= count || created.elapsed() >= EMPTY_ASLEEP_WAIT {
                break asleep;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        let asleep_after_s = created.elapsed().as_secs_f64();
        bar.set_message(format!("{count} {scene} instances idling"));
        tokio::time::sleep(EMPTY_SETTLE).await;
        let idle = CpuMeter::start(&[server.pid]);
        tokio::time::sleep(options.empty_window).await;
        let idle_cores = idle.cores_used();
        let rss = host::rss_bytes(server.pid).unwrap_or(0);
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        anyhow::Ok(EmptyReport {
            scene: scene.to_string(),
            instances: count,
            create_s: took.as_secs_f64(),
            create_cpu_us_per_instance: create_cpu_s * 1e6 / count as f64,
            rss_before_mib: mib(rss_before),
            rss_mib: mib(rss),
            kib_per_instance: rss.saturating_sub(rss_before) as f64 / 1024.0 / count as f64,
            idle_cores,
            idle_us_per_instance_s: idle_cores * 1e6 / count as f64,
            floor_cores,
            asleep,
            asleep_after_s,
        })
    }
    .await;
    server.stop().await;
    result
}

/// A line above the progress bar, or on stderr when there is no terminal
/// to draw the bar on (an unattended run still shows its steps).
pub fn say(bar: &ProgressBar, line: String) {
    if bar.is_hidden() {
        eprintln!("{line}");
    } else {
        bar.println(line);
    }
}

/// Ours over the baseline wherever both measured the same step.
pub fn ratios(steps: &[StepReport]) -> Vec<Ratio> {
    let ours = ServerKind::Ours.name();
    let theirs = ServerKind::Baseline.name();
    let mut out = Vec::new();
    for a in steps.iter().filter(|s| s.server == ours) {
        if let Some(b) = steps
            .iter()
            .find(|s| s.server == theirs && s.scene == a.scene && s.clients == a.clients)
        {
            out.push(Ratio {
                scene: a.scene.clone(),
                clients: a.clients,
                cpu_ours_over_baseline: a.server_cpu_us_per_client_s / b.server_cpu_us_per_client_s,
                memory_ours_over_baseline: a.server_kib_per_client / b.server_kib_per_client,
                both_healthy: a.healthy() && b.healthy(),
            });
        }
    }
    out
}
