//! A whole node: shards, the control thread and the event pump, with an
//! explicit start and stop. The binary runs one; tests start several on
//! loopback with free ports.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use rand::Rng;
use state::auth::{AuthConfigError, Verifier};
use state::commands::Command;
use tokio::sync::watch;

use crate::config::Config;
use crate::control::agones::AgonesSignals;
use crate::control::{self, Control, CreateRequest, SceneSource, ShardSlot, Shared, lock};
use crate::io::{self as shard_io, ShardHandle, ShardStartError};

/// How long the HTTP and gRPC servers wait for open connections at stop.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// The id (and location) of the instance dev mode creates at start.
pub const DEV_INSTANCE_ID: &str = "demo";

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    #[error("{0}")]
    Auth(#[from] AuthConfigError),
    #[error("{0}")]
    Shard(#[from] ShardStartError),
    #[error("control thread: {0}")]
    Control(String),
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
}

/// A running node.
#[derive(Debug)]
pub struct Node {
    pub http_addr: SocketAddr,
    pub grpc_addr: Option<SocketAddr>,
    /// Per shard: (bound, advertised) UDP address.
    pub shard_addrs: Vec<(SocketAddr, SocketAddr)>,
    /// The HS256 secret of dev mode (printed by the binary).
    pub dev_secret: Option<String>,
    shared: Shared,
    shards: Vec<ShardHandle>,
    control: Option<JoinHandle<()>>,
    pump: Option<JoinHandle<()>>,
    stop: watch::Sender<bool>,
    agones: Arc<AgonesSignals>,
}

impl Node {
    /// Starts every shard, the control thread and the event pump; returns
    /// once all sockets are bound.
    pub fn start(mut config: Config) -> Result<Node, NodeError> {
        agones_address(&mut config)?;
        if config.webrtc.udp_bind_ip.is_unspecified() && config.webrtc.public_ip.is_none() {
            return Err(NodeError::Control(
                "webrtc.udp_bind_ip is a wildcard address and no address to advertise is known: \
                 set webrtc.public_ip (Agones gave none)"
                    .into(),
            ));
        }
        let (verifier, dev_secret) = if config.node.dev {
            let secret: String = {
                let mut rng = rand::rng();
                (0..32)
                    .map(|_| format!("{:02x}", rng.random::<u8>()))
                    .collect()
            };
            (Verifier::dev(&config.auth, &secret), Some(secret))
        } else {
            (Verifier::from_config(&config.auth)?, None)
        };
        let grpc_token = config.grpc.token(config.node.dev)?;
        let (events_tx, events_rx) = crossbeam_channel::bounded(config.shard.event_queue_len);
        let mut shards = Vec::new();
        for index in 0..config.shard_count() {
            shards.push(shard_io::spawn(index, &config, events_tx.clone())?);
        }
        drop(events_tx);
        let slots = shards
            .iter()
            .map(|s| ShardSlot::new(s.commands.clone(), s.advertised, s.heartbeat.clone()))
            .collect();
        let shard_addrs = shards.iter().map(|s| (s.bound, s.advertised)).collect();
        let dev = config.node.dev;
        let node_config = config.clone();
        let config_dev_scene = config.node.dev_scene.clone();
        let shared: Shared = Arc::new(Mutex::new(Control::new(config.clone(), slots, verifier)));
        let pump_shared = shared.clone();
        let agones = Arc::new(AgonesSignals::default());
        let pump_agones = agones.clone();
        let pump = std::thread::Builder::new()
            .name("event-pump".into())
            .spawn(move || {
                // Ends when every shard has dropped its sender.
                while let Ok(event) = events_rx.recv() {
                    let counted = !matches!(event, state::commands::Event::Stats { .. });
                    lock(&pump_shared).apply(event);
                    if counted {
                        pump_agones.changed.notify_one();
                    }
                }
            })
            .map_err(|e| NodeError::Control(e.to_string()))?;
        let (stop, stop_rx) = watch::channel(false);
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
        let control_shared = shared.clone();
        let control_agones = agones.clone();
        let control = std::thread::Builder::new()
            .name("control".into())
            .spawn(move || {
                control_thread(
                    config,
                    grpc_token,
                    control_shared,
                    control_agones,
                    stop_rx,
                    ready_tx,
                )
            })
            .map_err(|e| NodeError::Control(e.to_string()))?;
        let (http_addr, grpc_addr) = ready_rx
            .recv()
            .map_err(|_| NodeError::Control("exited before binding".into()))?
            .map_err(NodeError::Control)?;
        let node = Node {
            http_addr,
            grpc_addr,
            shard_addrs,
            dev_secret,
            shared,
            shards,
            control: Some(control),
            pump: Some(pump),
            stop,
            agones,
        };
        if dev {
            let request = CreateRequest {
                instance_id: Some(DEV_INSTANCE_ID.into()),
                kind: state::commands::InstanceKind::World,
                location_id: DEV_INSTANCE_ID.into(),
                scene: match config_dev_scene.as_str() {
                    "" => SceneSource::Builtin("demo"),
                    path => SceneSource::Path(path.into()),
                },
                max_users: None,
                snapshot_hz: None,
                labels: BTreeMap::new(),
                empty_timeout_ms: None,
                private: false,
                allowed_user_ids: Vec::new(),
                room_code: None,
                generate_room_code: false,
                persistent: true,
            };
            let failed = |e| NodeError::Control(format!("cannot create the demo instance: {e}"));
            let scene = control::load_scene(&node_config, &request.scene).map_err(failed)?;
            lock(&node.shared).create(request, scene).map_err(failed)?;
        }
        Ok(node)
    }

    /// The control state (registry, metrics), for tests and the binary.
    pub fn control(&self) -> &Shared {
        &self.shared
    }

    /// Datagrams shard `index` has received so far (live, not per second).
    pub fn datagrams_in(&self, index: usize) -> u64 {
        self.shards.get(index).map_or(0, |s| {
            s.datagrams_in.load(std::sync::atomic::Ordering::Relaxed)
        })
    }

    /// The grace of the drain under way (SIGTERM, gRPC `Drain` or Agones),
    /// or `None` while the node is not draining.
    pub fn draining(&self) -> Option<Duration> {
        let c = lock(&self.shared);
        if c.draining { c.drain_grace } else { None }
    }

    /// Whether Agones asked the node to shut down (it is draining then).
    pub fn agones_shutdown_requested(&self) -> bool {
        self.agones
            .shutdown_requested
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Stops admitting users and ends every instance after `grace`.
    pub fn drain(&self, grace: Duration) {
        let (queues, _) = lock(&self.shared).begin_drain(grace);
        control::deliver_drain(&queues, grace);
    }

    /// Stops everything and waits for the threads.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        let _ = self.stop.send(true);
        for s in &self.shards {
            // A full queue means the shard is stuck; the send blocks briefly.
            let _ = s
                .commands
                .send_timeout(Command::Shutdown, Duration::from_secs(1));
        }
        for s in self.shards.drain(..) {
            let _ = s.thread.join();
        }
        // Dropping the shards' command senders held by the control state is
        // not needed for the pump: it ends when the shards' event senders drop.
        if let Some(pump) = self.pump.take() {
            let _ = pump.join();
        }
        if let Some(control) = self.control.take() {
            let _ = control.join();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// With an Agones sidecar: the address and host ports the shards advertise,
/// read from the GameServer before they start (a short-lived runtime; the
/// control thread keeps its own connection).
fn agones_address(config: &mut Config) -> Result<(), NodeError> {
    let port_env = std::env::var(agones::GRPC_PORT_ENV).ok();
    let sdk_config = config.agones.sdk(port_env.as_deref());
    if sdk_config.port.is_none() {
        return Ok(());
    }
    // A thread of its own: `Node::start` may be called inside a runtime.
    let mut scratch = config.clone();
    let read = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        runtime.block_on(async {
            let sdk = agones::Sdk::connect(&sdk_config)
                .await
                .map_err(|e| e.to_string())?;
            control::agones::apply_public_address(&sdk, &mut scratch).await
        })?;
        Ok::<_, String>(scratch)
    });
    let read = read
        .join()
        .map_err(|_| NodeError::Control("agones: the address lookup panicked".into()))?;
    *config = read.map_err(|e| NodeError::Control(format!("agones: {e}")))?;
    Ok(())
}

type Ready = std::sync::mpsc::SyncSender<Result<(SocketAddr, Option<SocketAddr>), String>>;

fn control_thread(
    config: Config,
    grpc_token: Option<String>,
    shared: Shared,
    agones: Arc<AgonesSignals>,
    stop: watch::Receiver<bool>,
    ready: Ready,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            let _ = ready.send(Err(format!("cannot start tokio: {e}")));
            return;
        }
    };
    runtime.block_on(async move {
        let port_env = std::env::var(agones::GRPC_PORT_ENV).ok();
        let sdk = match agones::Sdk::connect(&config.agones.sdk(port_env.as_deref())).await {
            Ok(sdk) => sdk,
            Err(e) => {
                let _ = ready.send(Err(format!("agones: {e}")));
                return;
            }
        };
        let http = match tokio::net::TcpListener::bind(config.http.listen).await {
            Ok(l) => l,
            Err(e) => {
                let _ = ready.send(Err(format!("cannot bind HTTP {}: {e}", config.http.listen)));
                return;
            }
        };
        let grpc = if config.grpc.enabled {
            match tokio::net::TcpListener::bind(config.grpc.listen).await {
                Ok(l) => Some(l),
                Err(e) => {
                    let _ =
                        ready.send(Err(format!("cannot bind gRPC {}: {e}", config.grpc.listen)));
                    return;
                }
            }
        } else {
            None
        };
        let http_addr = http.local_addr().unwrap_or(config.http.listen);
        let grpc_addr = grpc.as_ref().and_then(|l| l.local_addr().ok());
        let _ = ready.send(Ok((http_addr, grpc_addr)));
        let agones_task =
            control::agones::run(sdk, config.clone(), shared.clone(), agones, stop.clone());
        let app = control::http::router(shared.clone())
            .into_make_service_with_connect_info::<SocketAddr>();
        let mut http_stop = stop.clone();
        let stop_for_deadline = stop.clone();
        let http_server = axum::serve(http, app).with_graceful_shutdown(async move {
            let _ = http_stop.wait_for(|s| *s).await;
        });
        let grpc_server = async move {
            let Some(listener) = grpc else { return };
            let mut grpc_stop = stop.clone();
            let incoming = tonic::transport::server::TcpIncoming::from(listener);
            let result = tonic::transport::Server::builder()
                .add_service(control::grpc::ControlService::new(shared).server(grpc_token))
                .serve_with_incoming_shutdown(incoming, async move {
                    let _ = grpc_stop.wait_for(|s| *s).await;
                })
                .await;
            if let Err(e) = result {
                tracing::error!("gRPC server: {e}");
            }
        };
        let mut deadline_stop = stop_for_deadline;
        let shutdown_deadline = async move {
            let _ = deadline_stop.wait_for(|s| *s).await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        };
        tokio::select! {
            (http_result, (), ()) = async { tokio::join!(http_server, grpc_server, agones_task) } => {
                if let Err(e) = http_result {
                    tracing::error!("HTTP server: {e}");
                }
            }
            () = shutdown_deadline => {
                tracing::warn!("connections still open {SHUTDOWN_GRACE:?} after stop; closing them");
            }
        }
    });
}
