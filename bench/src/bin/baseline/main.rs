//! The webrtc-rs baseline: what a Rust developer would build instead of
//! instanceserver, to measure ours against in the same run (the density
//! benchmark, `docs/benchmarks.md`). Never used by the product.
//!
//! It does the same job as simply as it honestly can: the same HTTP join
//! endpoint and tokens, the same two data channels and wire protocol, the
//! same simulation and snapshot encoder (so snapshots are the same size at
//! the same rate), inputs applied and actions relayed; but on the `webrtc`
//! crate (webrtc-rs) with tokio: one peer connection with its own UDP socket
//! and driver per client, one tokio task per room, rooms created by the
//! first join and ended when empty.
//!
//! ```text
//! baseline --http-listen 127.0.0.1:8090 --secret S --scene social --tick-hz 30
//! ```

mod http;
mod room;

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use engine::{Scene, SceneLimits};

/// Command-line settings; every limit is named here.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "baseline",
    about = "webrtc-rs baseline server for the density benchmark"
)]
pub struct Args {
    /// Where the HTTP API listens (join, leave, /healthz, /metrics).
    #[arg(long, default_value = "127.0.0.1:8090")]
    pub http_listen: SocketAddr,
    /// The HS256 secret tokens are signed with (as the node's `auth.hs256_secret`).
    #[arg(long, env = "BASELINE_SECRET")]
    pub secret: String,
    /// Simulation ticks and snapshots per second.
    #[arg(long, default_value_t = 30)]
    pub tick_hz: u32,
    /// A built-in scene (`demo`, `social`) or the path of a scene JSON file.
    #[arg(long, default_value = "demo")]
    pub scene: String,
    /// The address peers' UDP sockets bind to (each peer gets its own port).
    #[arg(long, default_value = "127.0.0.1")]
    pub udp_ip: IpAddr,
    /// Exit by itself after this many seconds (0: run until killed).
    #[arg(long, default_value_t = 0)]
    pub exit_after_s: u64,
    /// Most rooms at once; a join that would create one more gets 503.
    #[arg(long, default_value_t = 10_000)]
    pub rooms_max: usize,
    /// Most members of one room; a join over it gets 409.
    #[arg(long, default_value_t = 10)]
    pub members_max: usize,
    /// A room with no members ends after this long.
    #[arg(long, default_value_t = 10_000)]
    pub room_empty_timeout_ms: u64,
    /// A member whose channels are not both open after this long is dropped.
    #[arg(long, default_value_t = 15_000)]
    pub join_timeout_ms: u64,
    /// Largest SDP offer accepted, bytes.
    #[arg(long, default_value_t = 16 * 1024)]
    pub offer_bytes_max: usize,
    /// Tokio worker threads (default: the cores this process may run on).
    #[arg(long)]
    pub threads: Option<usize>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "error,baseline=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    anyhow::ensure!(!args.secret.is_empty(), "--secret must not be empty");
    anyhow::ensure!(
        (1..=1000).contains(&args.tick_hz),
        "--tick-hz must be 1..=1000, got {}",
        args.tick_hz
    );
    anyhow::ensure!(args.members_max >= 1, "--members-max must be at least 1");
    let scene = load_scene(&args.scene)?;
    let threads = args.threads.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    });
    anyhow::ensure!(threads >= 1, "--threads must be at least 1");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()?;
    runtime.block_on(serve(args, Arc::new(scene)))
}

fn load_scene(name: &str) -> anyhow::Result<Scene> {
    if let Some(scene) = Scene::builtin(name) {
        return Ok(scene);
    }
    Scene::load(Path::new(name), &SceneLimits::default()).map_err(|e| {
        anyhow::anyhow!(
            "--scene {name}: not a built-in scene ({}) and not a loadable file: {e}",
            engine::scene::BUILTIN_SCENES.join(", ")
        )
    })
}

async fn serve(args: Args, scene: Arc<Scene>) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(args.http_listen).await?;
    let local = listener.local_addr()?;
    let exit_after = args.exit_after_s;
    let hub = room::Hub::new(args, scene);
    let app = http::router(hub);
    println!("baseline listening on http://{local}");
    let shutdown = async move {
        let ctrl_c = async {
            let _ = tokio::signal::ctrl_c().await;
        };
        if exit_after == 0 {
            ctrl_c.await;
        } else {
            tokio::select! {
                _ = ctrl_c => {}
                _ = tokio::time::sleep(Duration::from_secs(exit_after)) => {}
            }
        }
    };
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}
