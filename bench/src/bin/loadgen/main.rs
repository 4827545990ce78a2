//! `loadgen`: real WebRTC bots against a node, the density benchmark, and
//! the churn soak. `loadgen --help` lists the commands; docs/benchmarks.md
//! shows how they are used.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use bench::loadgen::bot::Workload;
use bench::loadgen::churn::{self, ChurnOptions};
use bench::loadgen::density::{self, DensityOptions, DensityReport};
use bench::loadgen::host;
use bench::loadgen::media::{self, MediaOptions};
use bench::loadgen::step::{self, Observed, StepOptions};
use bench::loadgen::target::{self, Server, ServerKind, ServerSpec};
use bench::loadgen::tokens::TokenSource;
use bench::loadgen::{fleet, report};
use clap::{Args, Parser, Subcommand};

/// Bots that speak real WebRTC (ICE, DTLS, SCTP) to a node, and the
/// benchmarks built on them.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Bots against a running node at any address: one measured step.
    Run(RunArgs),
    /// The density benchmark, unattended: steps of clients on fresh servers
    /// (ours and the webrtc-rs baseline) pinned to a core, both scenes, then
    /// empty instances.
    Density(DensityArgs),
    /// Bots join and leave (and vanish) continuously, then the server's
    /// sessions, peers, seats, timers and memory are compared with before.
    Churn(ChurnArgs),
    /// Audio forwarding: rooms of one Opus publisher and receivers on a
    /// fresh server pinned to a core; delivery and the server's CPU per
    /// audio consumer (the bots run in this process: pin it with taskset).
    Media(MediaArgs),
    /// (internal) A bot process driven by the orchestrator over stdin/stdout.
    Worker,
}

#[derive(Debug, Args, Clone)]
struct BotArgs {
    /// Inputs per second per bot (one datagram each, carrying the ack).
    #[arg(long, default_value_t = 30)]
    input_hz: u32,
    /// Walking speed of the avatars, m/s.
    #[arg(long, default_value_t = 2.0)]
    speed_mps: f32,
    /// Seconds between a bot's chat actions (0: none).
    #[arg(long, default_value_t = 10)]
    chat_interval_s: u64,
    /// Milliseconds an applied snapshot waits for an input to carry its ack
    /// (0: ack every snapshot at once with an empty input, the old client).
    #[arg(long, default_value_t = 50)]
    ack_delay_ms: u64,
    /// Bot processes; bots are split between them by instance.
    #[arg(long, default_value_t = 1)]
    processes: usize,
    /// Cores the bot processes are pinned to, round-robin (comma-separated;
    /// `none`: not pinned).
    #[arg(long, default_value = "1")]
    bot_cores: String,
    /// Joins started per second.
    #[arg(long, default_value_t = 100)]
    join_rate: u32,
    /// Seconds the joins may take before measuring starts anyway.
    #[arg(long, default_value_t = 60)]
    join_budget_s: u64,
    /// Seconds between the joins and the measurement window.
    #[arg(long, default_value_t = 5)]
    settle_s: u64,
    /// Seconds measured.
    #[arg(long, default_value_t = 10)]
    window_s: u64,
}

impl BotArgs {
    fn workload(&self, http: SocketAddr) -> Workload {
        Workload {
            http,
            input_hz: self.input_hz,
            speed_mps: self.speed_mps,
            chat_interval_ms: self.chat_interval_s * 1_000,
            ack_delay_ms: self.ack_delay_ms,
            ..Workload::default()
        }
    }

    fn step(&self, perf: Option<PathBuf>) -> anyhow::Result<StepOptions> {
        Ok(StepOptions {
            worker_binary: std::env::current_exe()?,
            processes: self.processes.max(1),
            bot_cores: parse_cores(&self.bot_cores)?,
            join_rate_per_s: self.join_rate,
            join_budget: Duration::from_secs(self.join_budget_s),
            settle: Duration::from_secs(self.settle_s),
            window: Duration::from_secs(self.window_s),
            perf,
        })
    }
}

#[derive(Debug, Args)]
struct RunArgs {
    /// The node's HTTP address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    http: SocketAddr,
    /// The node's gRPC address, to create the instances first (with --create).
    #[arg(long, default_value = "127.0.0.1:7777")]
    grpc: SocketAddr,
    /// Create the instances through the control API before joining.
    #[arg(long)]
    create: bool,
    /// A file holding the control API's bearer token (the node's
    /// grpc.token_file), for --create against a node outside dev mode.
    #[arg(long, value_name = "PATH")]
    grpc_token_file: Option<PathBuf>,
    /// The node's HS256 secret to mint tokens with (else its dev endpoint).
    #[arg(long, env = "LOADGEN_SECRET")]
    secret: Option<String>,
    /// Instances to join (`<prefix>-0` …); with --create, made with --scene.
    #[arg(long, default_value_t = 1)]
    instances: usize,
    #[arg(long, default_value = "load")]
    instance_prefix: String,
    #[arg(long, default_value_t = 10)]
    users_per_instance: usize,
    #[arg(long, default_value = "social")]
    scene: String,
    /// The server's process id, to measure its CPU and memory.
    #[arg(long)]
    server_pid: Option<u32>,
    /// The server's UDP port(s), for socket drops.
    #[arg(long, value_delimiter = ',')]
    udp_ports: Vec<u16>,
    /// Record a perf profile of --server-pid during the window.
    #[arg(long)]
    perf: Option<PathBuf>,
    /// Write the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    #[command(flatten)]
    bots: BotArgs,
}

#[derive(Debug, Args)]
struct DensityArgs {
    /// Client counts to step through, in order, until one is unhealthy.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "50,100,200,400,800,1600,3200"
    )]
    steps: Vec<usize>,
    #[arg(long, value_delimiter = ',', default_value = "social,demo")]
    scenes: Vec<String>,
    /// Servers measured: ours, baseline.
    #[arg(long, value_delimiter = ',', default_value = "ours,baseline")]
    servers: Vec<String>,
    #[arg(long, default_value_t = density::USERS_PER_INSTANCE_DEFAULT)]
    users_per_instance: usize,
    /// Snapshot (and tick) rate of the servers.
    #[arg(long, default_value_t = 30)]
    tick_hz: u32,
    /// Empty-instance measurements, `scene:count` (comma-separated; `none` for none).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "social:1000,social:10000,demo:1000"
    )]
    empty: Vec<String>,
    /// Seconds the idle CPU of empty instances is measured.
    #[arg(long, default_value_t = 10)]
    empty_window_s: u64,
    /// Record a perf profile of our server at this many clients (first scene).
    #[arg(long)]
    perf_at: Option<usize>,
    /// Where the JSON report (and profiles) go.
    #[arg(long, default_value = "target/density")]
    out: PathBuf,
    /// The baseline binary (default: next to this one).
    #[arg(long)]
    baseline_binary: Option<PathBuf>,
    #[command(flatten)]
    server: ServerArgs,
    #[command(flatten)]
    bots: BotArgs,
}

/// A fresh server of ours that a command starts, pinned to a core.
#[derive(Debug, Args, Clone)]
struct ServerArgs {
    /// The core the server is pinned to.
    #[arg(long, default_value_t = 0)]
    server_core: usize,
    /// Our server binary (default: next to this one).
    #[arg(long)]
    server_binary: Option<PathBuf>,
    #[arg(long, default_value = "127.0.0.1:18080")]
    http: SocketAddr,
    #[arg(long, default_value = "127.0.0.1:17777")]
    grpc: SocketAddr,
    #[arg(long, default_value_t = 41000)]
    udp_port_base: u16,
}

impl ServerArgs {
    /// The server to start, with the benchmark's secret.
    fn spec(
        &self,
        tick_hz: u32,
        members_max: usize,
        scene: &str,
        settings: Vec<String>,
    ) -> anyhow::Result<ServerSpec> {
        Ok(ServerSpec {
            kind: ServerKind::Ours,
            binary: match &self.server_binary {
                Some(p) => p.clone(),
                None => sibling("instanceserver")?,
            },
            core: Some(self.server_core),
            http: self.http,
            grpc: self.grpc,
            udp_port_base: self.udp_port_base,
            secret: BENCH_SECRET.into(),
            tick_hz,
            members_max,
            scene: scene.to_string(),
            settings,
        })
    }
}

#[derive(Debug, Args)]
struct MediaArgs {
    /// Rooms (media instances), each with one publisher.
    #[arg(long, default_value_t = 20)]
    rooms: usize,
    /// Receivers per room: consumers = rooms × receivers.
    #[arg(long, default_value_t = 10)]
    receivers: usize,
    /// Joins started per second.
    #[arg(long, default_value_t = 50)]
    join_rate: u32,
    #[arg(long, default_value_t = 60)]
    join_budget_s: u64,
    #[arg(long, default_value_t = 3)]
    settle_s: u64,
    #[arg(long, default_value_t = 10)]
    window_s: u64,
    #[command(flatten)]
    server: ServerArgs,
    /// Write the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct ChurnArgs {
    /// Seconds of churn.
    #[arg(long, default_value_t = 60)]
    duration_s: u64,
    /// Bots alive at once.
    #[arg(long, default_value_t = 50)]
    concurrent: usize,
    #[arg(long, default_value_t = 5)]
    instances: usize,
    #[arg(long, default_value = "social")]
    scene: String,
    /// A session lives between these many milliseconds.
    #[arg(long, default_value_t = 1_000)]
    lifetime_min_ms: u64,
    #[arg(long, default_value_t = 6_000)]
    lifetime_max_ms: u64,
    /// Share of sessions that vanish without a leave.
    #[arg(long, default_value_t = 0.2)]
    vanish_ratio: f64,
    /// The server's idle timeout (how soon it notices the vanished), ms.
    #[arg(long, default_value_t = 10_000)]
    idle_timeout_ms: u64,
    #[command(flatten)]
    server: ServerArgs,
    /// Write the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// The secret the benchmark's servers are started with (they run on
/// loopback for the length of a run).
const BENCH_SECRET: &str = "loadgen-density-benchmark-secret-0123456789abcdef";

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,str0m=error")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Cmd::Worker => runtime.block_on(fleet::worker()),
        Cmd::Run(args) => runtime.block_on(run(args)),
        Cmd::Density(args) => runtime.block_on(density(args)),
        Cmd::Churn(args) => {
            let local = tokio::task::LocalSet::new();
            runtime.block_on(local.run_until(churn(args)))
        }
        Cmd::Media(args) => runtime.block_on(media(args)),
    }
}

async fn media(args: MediaArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.rooms >= 1 && args.receivers >= 1,
        "--rooms and --receivers must be at least 1"
    );
    // The node's metrics are snapshots a second apart: a shorter window
    // would count forwarded packets too coarsely.
    anyhow::ensure!(args.window_s >= 5, "--window-s must be at least 5");
    let options = MediaOptions {
        server: args.server.spec(
            30,
            args.receivers + 1,
            "",
            vec!["instance.empty_timeout_ms=3600000".into()],
        )?,
        rooms: args.rooms,
        receivers_per_room: args.receivers,
        join_rate_per_s: args.join_rate,
        join_budget: Duration::from_secs(args.join_budget_s),
        settle: Duration::from_secs(args.settle_s),
        window: Duration::from_secs(args.window_s),
    };
    eprintln!(
        "media: {} rooms of 1 publisher and {} receivers (server on core {}; the bots run in \
         this process: pin it with taskset)",
        args.rooms, args.receivers, args.server.server_core
    );
    let r = media::run(&options).await?;
    println!(
        "| consumers | ready | packets published | delivery | worst receiver | server cores | µs per consumer-s | packets forwarded | µs per packet | consumers per core | server RSS MiB | bot cores |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    println!(
        "| {} | {} | {} | {:.2}% | {:.2}% | {:.3} | {:.1} | {} | {:.2} | {:.0} | {:.1} | {:.2} |",
        r.consumers,
        r.receivers_ready,
        r.packets_published,
        r.delivery * 100.0,
        r.delivery_min * 100.0,
        r.server_cores,
        r.server_us_per_consumer_s,
        r.packets_forwarded,
        r.server_us_per_packet,
        r.consumers_per_core,
        r.server_rss_mib,
        r.bot_cores
    );
    if let Some(path) = &args.json {
        write_json(path, &r)?;
    }
    Ok(())
}

fn sibling(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("the loadgen binary has no folder")?;
    Ok(dir.join(name))
}

fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, serde_json::to_string_pretty(value)?)
        .with_context(|| format!("writing {}", path.display()))
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let clients = args.instances * args.users_per_instance;
    let (instances, bots) = density::bots(&args.instance_prefix, clients, args.users_per_instance);
    // Memory per client counts the instances too: read it before they exist.
    let rss_before = args.server_pid.and_then(host::rss_bytes);
    if args.create {
        let max_users = u32::try_from(args.users_per_instance).unwrap_or(u32::MAX);
        let token = match &args.grpc_token_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .with_context(|| format!("--grpc-token-file {}", path.display()))?
                    .trim()
                    .to_owned(),
            ),
            None => None,
        };
        target::create_instances(
            args.grpc,
            token.as_deref(),
            &instances,
            &args.scene,
            max_users,
        )
        .await?;
    }
    let observed = Observed {
        name: "node".into(),
        http: args.http,
        pid: args.server_pid,
        udp_ports: args.udp_ports.clone(),
        rss_before,
    };
    let bar = density::bar();
    let r = step::run(
        &observed,
        &args.scene,
        bots,
        &args.bots.workload(args.http),
        args.secret.as_deref(),
        &args.bots.step(args.perf.clone())?,
        &bar,
    )
    .await?;
    bar.finish_and_clear();
    println!("{}", report::steps_table(std::slice::from_ref(&r)));
    if let Some(path) = &args.json {
        write_json(path, &r)?;
    }
    Ok(())
}

fn parse_servers(names: &[String]) -> anyhow::Result<Vec<ServerKind>> {
    names
        .iter()
        .map(|n| match n.as_str() {
            "ours" => Ok(ServerKind::Ours),
            "baseline" => Ok(ServerKind::Baseline),
            other => anyhow::bail!("--servers: unknown server {other:?} (ours, baseline)"),
        })
        .collect()
}

fn parse_cores(text: &str) -> anyhow::Result<Vec<usize>> {
    if text.trim() == "none" {
        return Ok(Vec::new());
    }
    text.split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(|c| {
            c.parse()
                .with_context(|| format!("--bot-cores: {c:?} is not a core number"))
        })
        .collect()
}

fn parse_empty(items: &[String]) -> anyhow::Result<Vec<(String, usize)>> {
    items
        .iter()
        .filter(|i| i.as_str() != "none")
        .map(|i| {
            let (scene, count) = i
                .split_once(':')
                .with_context(|| format!("--empty: {i:?} is not scene:count"))?;
            Ok((
                scene.to_string(),
                count.parse().with_context(|| format!("--empty: {i:?}"))?,
            ))
        })
        .collect()
}

async fn density(args: DensityArgs) -> anyhow::Result<()> {
    // The report and any profile go here, from the first step on.
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let options = DensityOptions {
        server: args
            .server
            .spec(args.tick_hz, args.users_per_instance, "", Vec::new())?,
        baseline_binary: match &args.baseline_binary {
            Some(p) => p.clone(),
            None => sibling("baseline")?,
        },
        servers: parse_servers(&args.servers)?,
        scenes: args.scenes.clone(),
        steps: args.steps.clone(),
        users_per_instance: args.users_per_instance,
        workload: args.bots.workload(args.server.http),
        step: args.bots.step(None)?,
        empty: parse_empty(&args.empty)?,
        empty_window: Duration::from_secs(args.empty_window_s),
        perf_at: args.perf_at,
        perf_dir: args.out.clone(),
    };
    let json = args.out.join("density.json");
    let report = density::run(&options, |partial| {
        // Written after every step, so an interrupted run keeps its figures.
        if let Err(e) = write_json(&json, partial) {
            eprintln!("{e:#}");
        }
    })
    .await?;
    print_density(&report);
    println!("JSON: {}", json.display());
    Ok(())
}

fn print_density(r: &DensityReport) {
    println!("{}", report::steps_table(&r.steps));
    if !r.ratios.is_empty() {
        println!(
            "| scene | clients | CPU per client-s, ours / baseline | memory per client, ours / baseline | both healthy |"
        );
        println!("|---|---|---|---|---|");
        for x in &r.ratios {
            println!(
                "| {} | {} | {:.2} | {:.2} | {} |",
                x.scene,
                x.clients,
                x.cpu_ours_over_baseline,
                x.memory_ours_over_baseline,
                x.both_healthy
            );
        }
        println!();
    }
    if !r.empty.is_empty() {
        println!(
            "| scene | empty instances | create (s) | create CPU per instance | KiB per instance | asleep (after s) | idle CPU (cores) | server alone (cores) | idle µs per instance-s |"
        );
        println!("|---|---|---|---|---|---|---|---|---|");
        for e in &r.empty {
            println!(
                "| {} | {} | {:.1} | {:.0} µs | {:.1} | {} ({:.0}) | {:.3} | {:.3} | {:.2} |",
                e.scene,
                e.instances,
                e.create_s,
                e.create_cpu_us_per_instance,
                e.kib_per_instance,
                e.asleep,
                e.asleep_after_s,
                e.idle_cores,
                e.floor_cores,
                e.idle_us_per_instance_s
            );
        }
        println!();
    }
    let show = |v: Option<u64>| v.map_or_else(|| "unknown".into(), |b| format!("{} KiB", b / 1024));
    println!(
        "host socket buffer maxima: rmem_max {}, wmem_max {}",
        show(r.rmem_max),
        show(r.wmem_max)
    );
}

/// Seats of each churn instance (bots spread over them at random).
const CHURN_USERS_PER_INSTANCE_MAX: u32 = 64;

async fn churn(args: ChurnArgs) -> anyhow::Result<()> {
    let spec = args.server.spec(
        30,
        CHURN_USERS_PER_INSTANCE_MAX as usize,
        &args.scene,
        vec![
            format!("webrtc.idle_timeout_ms={}", args.idle_timeout_ms),
            "instance.empty_timeout_ms=3600000".into(),
        ],
    )?;
    anyhow::ensure!(args.instances >= 1, "--instances must be at least 1");
    let server = Server::start(&spec).await?;
    let result = async {
        let (instances, _) = density::bots("churn", args.instances, 1);
        let grpc = server.grpc.context("our server has a control API")?;
        let token = server.grpc_token.as_deref();
        target::create_instances(
            grpc,
            token,
            &instances,
            &args.scene,
            CHURN_USERS_PER_INSTANCE_MAX,
        )
        .await?;
        let options = ChurnOptions {
            http: server.http,
            server_pid: Some(server.pid),
            instances,
            concurrent: args.concurrent,
            duration: Duration::from_secs(args.duration_s),
            lifetime_min: Duration::from_millis(args.lifetime_min_ms),
            lifetime_max: Duration::from_millis(args.lifetime_max_ms.max(args.lifetime_min_ms)),
            vanish_ratio: args.vanish_ratio,
            settle_max: Duration::from_millis(args.idle_timeout_ms) * 3,
            input_hz: 30,
        };
        eprintln!(
            "churn: {} bots at once over {} instances for {} s (server on core {}; the bots run \
             in this process: pin it with taskset)",
            args.concurrent, args.instances, args.duration_s, args.server.server_core
        );
        churn::run(&options, TokenSource::new(Some(BENCH_SECRET))).await
    }
    .await;
    server.stop().await;
    let r = result?;
    println!("| | sessions | peers | seats | instances | timers | RSS MiB |");
    println!("|---|---|---|---|---|---|---|");
    for (name, g) in [("before", &r.before), ("after", &r.after)] {
        println!(
            "| {name} | {} | {} | {} | {} | {} | {:.1} |",
            g.sessions, g.peers, g.seats, g.instances, g.timers, g.rss_mib
        );
    }
    println!(
        "joins {} (failed {}), leaves {}, vanished {}, peak RSS {:.1} MiB; {}",
        r.joins,
        r.join_failures,
        r.leaves,
        r.vanished,
        r.peak_rss_mib,
        match r.settled_after_s {
            Some(s) => format!("back to the baseline {s:.1} s after the soak"),
            None => "NOT back to the baseline".into(),
        }
    );
    if let Some(path) = &args.json {
        write_json(path, &r)?;
    }
    anyhow::ensure!(r.settled(), "the server did not return to its baseline");
    Ok(())
}
