//! The `instanceserver` binary.
//!
//! Today it loads one scene into one instance and runs its simulation at a
//! fixed tick, printing a status line every second until Ctrl-C. Shards,
//! WebRTC and the control plane build on this loop.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use engine::{Scene, SceneLimits, SimConfig, Simulation, TickTimes, WorldConfig};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A thread-per-core dedicated server for multiplayer virtual worlds.
///
/// Loads a scene into an instance and runs its physics at a fixed tick,
/// printing one status line per status interval until interrupted (Ctrl-C).
/// Every flag can also be set through the environment variable shown.
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
struct Args {
    /// Scene file (JSON, see docs/scene-format.md). Without it the embedded
    /// demo scene is used.
    #[arg(long, value_name = "PATH", env = "INSTANCESERVER_SCENE")]
    scene: Option<PathBuf>,

    /// Simulation ticks per second (1..=1000).
    #[arg(long, default_value_t = 60, env = "INSTANCESERVER_TICK_HZ")]
    tick_hz: u32,

    /// Physics steps per tick (1..=16).
    #[arg(long, default_value_t = 1, env = "INSTANCESERVER_SUBSTEPS")]
    substeps: u32,

    /// Most ticks run back to back to catch up after a stall; later ones are skipped.
    #[arg(long, default_value_t = 4, env = "INSTANCESERVER_CATCH_UP_STEPS_MAX")]
    catch_up_steps_max: u32,

    /// Most entities alive in one instance.
    #[arg(long, default_value_t = 65_536, env = "INSTANCESERVER_ENTITIES_MAX")]
    entities_max: u32,

    /// Most entities a scene file may declare.
    #[arg(
        long,
        default_value_t = 20_000,
        env = "INSTANCESERVER_SCENE_ENTITIES_MAX"
    )]
    scene_entities_max: u32,

    /// Largest scene file accepted, in bytes.
    #[arg(long, default_value_t = 16 * 1024 * 1024, env = "INSTANCESERVER_SCENE_FILE_BYTES_MAX")]
    scene_file_bytes_max: u64,

    /// Milliseconds between status lines.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(10..), env = "INSTANCESERVER_STATUS_INTERVAL_MS")]
    status_interval_ms: u64,

    /// Stop by itself after this many seconds (for scripted runs); 0 runs until interrupted.
    #[arg(long, default_value_t = 0, env = "INSTANCESERVER_EXIT_AFTER_S")]
    exit_after_s: u64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> anyhow::Result<()> {
    let limits = SceneLimits {
        file_bytes_max: args.scene_file_bytes_max,
        entities_max: args.scene_entities_max,
        ..SceneLimits::default()
    };
    let scene = match &args.scene {
        Some(path) => Scene::load(path, &limits)
            .with_context(|| format!("cannot load scene {}", path.display()))?,
        None => Scene::demo(),
    };
    let config = SimConfig {
        tick_hz: args.tick_hz,
        substeps: args.substeps,
        catch_up_steps_max: args.catch_up_steps_max,
        world: WorldConfig {
            entities_max: args.entities_max,
            ..WorldConfig::default()
        },
        ..SimConfig::default()
    };
    let mut sim = Simulation::new(&scene, config)
        .with_context(|| format!("cannot start scene \"{}\"", scene.name))?;
    println!(
        "instanceserver {}: scene \"{}\" with {} entities ({} dynamic bodies), {} Hz, {} substep(s)",
        env!("CARGO_PKG_VERSION"),
        scene.name,
        sim.world().len(),
        scene.dynamic_bodies(),
        config.tick_hz,
        config.substeps
    );

    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    ctrlc::set_handler(move || flag.store(true, Ordering::Relaxed))
        .context("cannot install the Ctrl-C handler")?;

    let started = Instant::now();
    let interval = Duration::from_millis(args.status_interval_ms);
    let exit_at = (args.exit_after_s > 0).then(|| started + Duration::from_secs(args.exit_after_s));
    let mut next_status = started + interval;
    // Room for every tick of a status window, catch-up included.
    let window_ticks = (u64::from(config.tick_hz) * args.status_interval_ms / 1000 + 1) as usize;
    let mut times = TickTimes::new(window_ticks * 2 + 16);
    let mut skipped_reported = 0;
    let mut total_ticks = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if exit_at.is_some_and(|t| now >= t) {
            break;
        }
        let due = sim.due_ticks(now);
        for _ in 0..due.steps {
            let t = Instant::now();
            sim.step();
            times.record(t.elapsed());
        }
        total_ticks += u64::from(due.steps);
        if now >= next_status {
            let s = times.take();
            let skipped = sim.skipped_ticks() - skipped_reported;
            skipped_reported = sim.skipped_ticks();
            println!(
                "t={:.0}s instances=1 entities={} awake_bodies={} ticks={} skipped={} tick_p50={:.3}ms tick_p99={:.3}ms tick_max={:.3}ms",
                now.duration_since(started).as_secs_f64(),
                sim.world().len(),
                sim.physics().awake_bodies(),
                s.ticks,
                skipped,
                s.p50.as_secs_f64() * 1e3,
                s.p99.as_secs_f64() * 1e3,
                s.max.as_secs_f64() * 1e3,
            );
            next_status += interval;
            if next_status <= now {
                next_status = now + interval;
            }
        }
        let wake = sim
            .next_tick_due()
            .map_or(next_status, |t| t.min(next_status));
        let wake = exit_at.map_or(wake, |e| wake.min(e));
        // Short sleeps keep Ctrl-C responsive even with a slow tick rate.
        let nap = wake
            .saturating_duration_since(Instant::now())
            .min(Duration::from_millis(50));
        std::thread::sleep(nap);
    }
    println!("stopped after {total_ticks} ticks");
    Ok(())
}
