//! The `instanceserver` binary: starts a node (shards, control thread,
//! HTTP signaling and gRPC control API) and runs it until SIGINT or SIGTERM,
//! then drains: clients are told, instances end after the grace period.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use instanceserver::config::{self, Config};
use instanceserver::control::lock;
use instanceserver::node::{DEV_INSTANCE_ID, Node};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A thread-per-core dedicated server for multiplayer virtual worlds.
///
/// Settings come from defaults, then the TOML file of --config, then
/// INSTANCESERVER_<SECTION>__<KEY> environment variables, then flags
/// (--set section.key=value and the shorthands below). Every setting is
/// listed in docs/configuration.md. With no settings at all the node runs in
/// dev mode on loopback with an instance "demo".
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
struct Args {
    /// TOML configuration file.
    #[arg(long, value_name = "PATH", env = "INSTANCESERVER_CONFIG")]
    config: Option<PathBuf>,

    /// Sets any setting: --set http.listen=0.0.0.0:8080 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,

    /// Scene of the dev instance "demo" (JSON, see docs/scene-format.md);
    /// without it the embedded demo scene is used. Same as --set node.dev_scene=PATH.
    #[arg(long, value_name = "PATH")]
    scene: Option<PathBuf>,

    /// Shards to run (0 = one per core). Same as --set node.shards=N.
    #[arg(long, value_name = "N")]
    shards: Option<usize>,

    /// HTTP address. Same as --set http.listen=ADDR.
    #[arg(long, value_name = "ADDR")]
    http_listen: Option<String>,

    /// gRPC address. Same as --set grpc.listen=ADDR.
    #[arg(long, value_name = "ADDR")]
    grpc_listen: Option<String>,

    /// First shard's UDP port. Same as --set webrtc.udp_port_base=PORT.
    #[arg(long, value_name = "PORT")]
    udp_port_base: Option<u16>,

    /// Address advertised to clients (NAT / Kubernetes). Same as --set webrtc.public_ip=IP.
    #[arg(long, value_name = "IP")]
    public_ip: Option<String>,

    /// Agones: local, auto (use the sidecar when AGONES_SDK_GRPC_PORT is set)
    /// or required (refuse to start without it). Same as --set agones.mode=MODE.
    #[arg(long, value_name = "MODE", value_parser = ["local", "auto", "required"])]
    agones: Option<String>,

    /// Print the resulting configuration as TOML and exit.
    #[arg(long)]
    print_config: bool,

    /// Milliseconds between status lines (0: none).
    #[arg(
        long,
        default_value_t = 1000,
        env = "INSTANCESERVER_STATUS_INTERVAL_MS"
    )]
    status_interval_ms: u64,

    /// Stop by itself after this many seconds (for scripted runs); 0 runs until interrupted.
    #[arg(long, default_value_t = 0, env = "INSTANCESERVER_EXIT_AFTER_S")]
    exit_after_s: u64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new("info,str0m=warn,dimpl=warn")
            }),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn settings(args: &Args) -> anyhow::Result<Vec<(String, String)>> {
    let mut sets = Vec::new();
    let shorthand = [
        (
            "node.dev_scene",
            args.scene.as_ref().map(|p| p.display().to_string()),
        ),
        ("node.shards", args.shards.map(|n| n.to_string())),
        ("http.listen", args.http_listen.clone()),
        ("grpc.listen", args.grpc_listen.clone()),
        (
            "webrtc.udp_port_base",
            args.udp_port_base.map(|p| p.to_string()),
        ),
        ("webrtc.public_ip", args.public_ip.clone()),
        ("agones.mode", args.agones.clone()),
    ];
    for (key, value) in shorthand {
        if let Some(v) = value {
            sets.push((key.to_string(), v));
        }
    }
    // Explicit --set comes last, so it wins over the shorthands.
    for s in &args.set {
        let (k, v) = s
            .split_once('=')
            .with_context(|| format!("--set {s}: expected KEY=VALUE"))?;
        sets.push((k.trim().to_string(), v.to_string()));
    }
    Ok(sets)
}

fn run(args: &Args) -> anyhow::Result<()> {
    let sets = settings(args)?;
    let config: Config = config::load(args.config.as_deref(), std::env::vars(), &sets)?;
    if args.print_config {
        let mut shown = config.clone();
        if shown.auth.hs256_secret.is_some() {
            shown.auth.hs256_secret = Some("[redacted]".into());
        }
        print!(
            "{}",
            toml::to_string(&shown).context("cannot print the configuration")?
        );
        return Ok(());
    }
    if config.node.dev
        && (config.auth.hs256_secret.is_some() || !config.auth.public_keys.is_empty())
    {
        tracing::warn!(
            "node.dev is on: the configured auth keys are ignored in favour of a random dev secret"
        );
    }
    let drain_grace = Duration::from_millis(config.node.drain_grace_ms);
    let node = Node::start(config.clone())?;
    println!(
        "instanceserver {}: {} shard(s) on UDP {}; HTTP http://{}; gRPC {}",
        env!("CARGO_PKG_VERSION"),
        node.shard_addrs.len(),
        node.shard_addrs
            .iter()
            .map(|(_, a)| a.to_string())
            .collect::<Vec<_>>()
            .join(","),
        node.http_addr,
        node.grpc_addr.map_or("off".to_string(), |a| a.to_string()),
    );
    if let Some(secret) = &node.dev_secret {
        println!(
            "dev mode: HS256 secret {secret}; instance \"{DEV_INSTANCE_ID}\"; get a token with\n  curl -s -X POST http://{}/v1/dev/token -d '{{\"sub\":\"me\",\"instance\":\"{DEV_INSTANCE_ID}\"}}'",
            node.http_addr
        );
    }
    let (signal_tx, signal_rx) = mpsc::channel();
    ctrlc::set_handler(move || {
        let _ = signal_tx.send(());
    })
    .context("cannot install the signal handler")?;
    let started = Instant::now();
    let exit_at = (args.exit_after_s > 0).then(|| started + Duration::from_secs(args.exit_after_s));
    let interval = Duration::from_millis(args.status_interval_ms.max(10));
    loop {
        let wait = exit_at.map_or(interval, |t| {
            t.saturating_duration_since(Instant::now()).min(interval)
        });
        if node.draining().is_some() {
            // Agones or the gRPC `Drain` started it: wait for it, then stop.
            break;
        }
        match signal_rx.recv_timeout(wait) {
            Ok(()) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        if exit_at.is_some_and(|t| Instant::now() >= t) {
            break;
        }
        if args.status_interval_ms > 0 {
            print_status(&node, started);
        }
    }
    let grace = match node.draining() {
        Some(grace) => grace,
        None => {
            node.drain(drain_grace);
            drain_grace
        }
    };
    println!("draining: instances end within {grace:?} (interrupt again to stop now)");
    let deadline = Instant::now() + grace + Duration::from_secs(1);
    while Instant::now() < deadline && !lock(node.control()).registry.is_empty() {
        if signal_rx.recv_timeout(Duration::from_millis(50)).is_ok() {
            break;
        }
    }
    node.stop();
    println!("stopped");
    Ok(())
}

fn print_status(node: &Node, started: Instant) {
    let c = lock(node.control());
    let peers: u32 = c.shards.iter().map(|s| s.metrics.peers).sum();
    let ticks: u64 = c.shards.iter().map(|s| s.metrics.ticks).sum();
    let p99 = c
        .registry
        .instances()
        .map(|r| r.tick_p99_us)
        .max()
        .unwrap_or(0);
    println!(
        "t={:.0}s instances={} sessions={} peers={} ticks={} tick_p99_max={}us",
        started.elapsed().as_secs_f64(),
        c.registry.len(),
        c.registry.sessions_len(),
        peers,
        ticks,
        p99,
    );
}
