//! The node as an Agones citizen (the high-density pattern: one
//! GameServer hosts many rooms). On the control thread's runtime, never on
//! a shard:
//!
//! - at start: the rooms Counter's capacity is set to the node's instance
//!   capacity, the players Counter's to its peer capacity, then `Ready`;
//! - every `agones.health_interval_ms`: a `Health` ping, skipped while a
//!   shard is stuck (its loop has not come round for `shard.stuck_ms`), so
//!   Agones replaces a pod whose shard stays stuck; a shard that is merely
//!   behind schedule (overloaded, catching up) keeps the pod healthy;
//! - after every instance or session event (and at each health tick): the
//!   rooms and players Counters are set to the registry's counts, and the
//!   players List follows the joined user ids while it has room;
//! - `WatchGameServer`: an allocation whose annotations name a location
//!   creates that instance; the state `Shutdown` drains the node;
//! - at stop: the Counters go to zero and `Shutdown` is called.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use agones::pb::sdk::GameServer;
use agones::{Sdk, SdkError};
use tokio::sync::{Notify, watch};

use super::{CreateRequest, SceneSource, Shared, load_scene, lock};
use crate::config::Config;

/// The annotation of an allocation that names the location to create.
pub const LOCATION_ANNOTATION: &str = "instanceserver.dev/location";
/// Optional: the built-in scene of that location (`demo` when absent).
pub const SCENE_ANNOTATION: &str = "instanceserver.dev/scene";
/// Optional: the instance id (the location when absent).
pub const INSTANCE_ANNOTATION: &str = "instanceserver.dev/instance";
/// Optional: an id of the allocation. A room is created once per instance id
/// and allocation id, so allocating a room that ended again on the same
/// GameServer needs a new allocation id.
pub const ALLOCATION_ANNOTATION: &str = "instanceserver.dev/allocation";

/// What the rest of the node and the Agones task tell each other.
#[derive(Debug, Default)]
pub struct AgonesSignals {
    /// Wakes the task to sync the Counters (instance and session events).
    pub changed: Notify,
    /// Set when Agones asked the node to shut down (the binary drains).
    pub shutdown_requested: AtomicBool,
}

/// How long the final Counter sync may take at stop before `Shutdown`.
const FINAL_SYNC_TIMEOUT: Duration = Duration::from_millis(300);
/// How long the node waits at start for Agones to fill in the GameServer's
/// address and ports (they come when it is scheduled).
pub const ADDRESS_WAIT: Duration = Duration::from_secs(30);
/// How often the GameServer is read while waiting for them.
const ADDRESS_POLL: Duration = Duration::from_millis(250);

/// The Agones task: runs until `stop` turns true, then syncs the Counters
/// (briefly) and calls `Shutdown`. Health pings run in a task of their own,
/// so a slow sync never delays them.
pub async fn run(
    sdk: Sdk,
    config: Config,
    shared: Shared,
    signals: Arc<AgonesSignals>,
    mut stop: watch::Receiver<bool>,
) {
    let pinger = tokio::spawn(ping(
        sdk.clone(),
        config.agones.health_interval(),
        shared.clone(),
    ));
    let mut ready = match start(&sdk, &config).await {
        Ok(()) => true,
        Err(e) => {
            tracing::error!("Agones start-up: {e} (Ready is retried)");
            false
        }
    };
    let mut watch = None;
    let mut ticker = tokio::time::interval(config.agones.health_interval());
    let mut synced = Synced::default();
    let mut created = HashSet::new();
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                if !ready {
                    ready = sdk.ready().await.map_err(|e| tracing::warn!("Agones: Ready: {e}")).is_ok();
                }
                if watch.is_none() {
                    // (Re)opens the watch; one attempt per tick.
                    match tokio::time::timeout(sdk.call_timeout(), sdk.watch_game_server()).await {
                        Ok(Ok(w)) => watch = Some(w),
                        Ok(Err(e)) => tracing::warn!("Agones: cannot watch the GameServer: {e}"),
                        Err(_) => tracing::warn!("Agones: the GameServer watch did not open in time"),
                    }
                }
                synced.sync(&sdk, &config, &shared).await;
            }
            () = signals.changed.notified() => synced.sync(&sdk, &config, &shared).await,
            update = next(&mut watch) => match update {
                Some(Ok(gs)) => on_game_server(&gs, &config, &shared, &signals, &mut created).await,
                Some(Err(e)) => {
                    tracing::warn!("Agones: the GameServer watch failed: {e}");
                    watch = None;
                }
                None => watch = None,
            },
            _ = stop.wait_for(|s| *s) => break,
        }
    }
    pinger.abort();
    let _ = tokio::time::timeout(FINAL_SYNC_TIMEOUT, synced.sync(&sdk, &config, &shared)).await;
    if let Err(e) = sdk.shutdown().await {
        tracing::warn!("Agones: Shutdown: {e}");
    }
}

/// One `Health` ping per interval while no shard is stuck; a stream that
/// ended is opened again.
async fn ping(sdk: Sdk, interval: Duration, shared: Shared) {
    let mut health = sdk.health();
    let mut ticker = tokio::time::interval(interval);
    let mut withheld = false;
    loop {
        ticker.tick().await;
        let stuck = lock(&shared).stuck_shards();
        if !stuck.is_empty() {
            if !withheld {
                tracing::error!(
                    ?stuck,
                    "Agones: a shard is stuck; health pings stop until it comes round \
                     (Agones replaces the pod past its failure threshold)"
                );
            }
            withheld = true;
            continue;
        }
        if std::mem::take(&mut withheld) {
            tracing::warn!("Agones: every shard comes round again; health pings resume");
        }
        if !health.ping() {
            tracing::warn!("Agones: the health stream ended; opening it again");
            health = sdk.health();
            let _ = health.ping();
        }
    }
}

async fn next(watch: &mut Option<agones::Watch>) -> Option<Result<GameServer, SdkError>> {
    match watch {
        Some(w) => w.next().await,
        None => std::future::pending().await,
    }
}

/// The name of shard `k`'s UDP port in the Fleet (`deploy/`).
pub fn shard_port_name(k: usize) -> String {
    format!("shard-{k}")
}

/// Before the shards start: where Agones says clients reach this pod. Once
/// the GameServer is scheduled and has an address (this waits up to
/// [`ADDRESS_WAIT`]), an IP of its `addresses`
/// (`ExternalIP`, then `InternalIP`, then `address` when it is an IP)
/// becomes `webrtc.public_ip` and the host port of each `shard-{k}` port
/// becomes `webrtc.public_ports[k]`, so SDP candidates carry what Agones
/// assigned. Nothing changes in local mode, or when no ports come.
pub async fn apply_public_address(sdk: &Sdk, config: &mut Config) -> Result<(), String> {
    if !sdk.is_remote() {
        return Ok(());
    }
    let deadline = tokio::time::Instant::now() + ADDRESS_WAIT;
    let status = loop {
        let gs = sdk.get_game_server().await.map_err(|e| e.to_string())?;
        let status = gs.status.unwrap_or_default();
        // Agones fills in the address and ports when it schedules the pod.
        let scheduled = !matches!(
            status.state.as_str(),
            "" | "PortAllocation" | "Creating" | "Starting"
        );
        let has_address = !status.address.is_empty() || !status.addresses.is_empty();
        if (scheduled && has_address) || tokio::time::Instant::now() >= deadline {
            break status;
        }
        tokio::time::sleep(ADDRESS_POLL).await;
    };
    if status.ports.is_empty() {
        tracing::warn!("Agones: the GameServer has no ports; advertising the configured address");
        return Ok(());
    }
    let shards = config.shard_count();
    let mut ports = Vec::with_capacity(shards);
    for k in 0..shards {
        let name = shard_port_name(k);
        let p = status
            .ports
            .iter()
            .find(|p| p.name == name)
            .ok_or_else(|| {
                format!(
                    "the GameServer has no port named {name} for shard {k} of {shards} \
                 (the Fleet needs one UDP port per shard)"
                )
            })?;
        ports.push(
            u16::try_from(p.port).map_err(|_| format!("port {name}: {} is not a port", p.port))?,
        );
    }
    let ip = ["ExternalIP", "InternalIP"]
        .iter()
        .find_map(|kind| {
            status
                .addresses
                .iter()
                .filter(|a| a.r#type == *kind)
                .find_map(|a| a.address.parse::<std::net::IpAddr>().ok())
        })
        .or_else(|| status.address.parse().ok());
    match ip {
        Some(ip) => config.webrtc.public_ip = Some(ip),
        None => tracing::warn!(
            address = %status.address,
            "Agones: no IP among the GameServer's addresses; advertising the configured one"
        ),
    }
    tracing::info!(
        ?ip,
        ?ports,
        "Agones: advertising the GameServer's address and host ports"
    );
    config.webrtc.public_ports = ports;
    Ok(())
}

/// Capacities, then `Ready`.
async fn start(sdk: &Sdk, config: &Config) -> Result<(), SdkError> {
    let a = &config.agones;
    let shards = config.shard_count();
    let rooms = (shards * config.shard.instances_max) as i64;
    let players = (shards * config.shard.peers_max) as i64;
    for (name, capacity) in [(&a.rooms_counter, rooms), (&a.players_counter, players)] {
        if let Err(e) = sdk.set_counter_capacity(name, capacity).await {
            tracing::warn!("Agones: counter {name}: {e} (is it in the Fleet's counters?)");
        }
    }
    match sdk.get_game_server().await {
        Ok(gs) => {
            let status = gs.status.unwrap_or_default();
            let ports: Vec<String> = status
                .ports
                .iter()
                .map(|p| format!("{}={}", p.name, p.port))
                .collect();
            tracing::info!(address = %status.address, ports = ?ports, "Agones: GameServer");
        }
        Err(e) => tracing::warn!("Agones: GetGameServer: {e}"),
    }
    sdk.ready().await
}

/// What the Counters and the List were last set to.
#[derive(Debug, Default)]
struct Synced {
    rooms: Option<i64>,
    players: Option<i64>,
    listed: BTreeSet<String>,
    list_full: bool,
}

impl Synced {
    async fn sync(&mut self, sdk: &Sdk, config: &Config, shared: &Shared) {
        let a = &config.agones;
        let (rooms, players, users) = {
            let c = lock(shared);
            let users: BTreeSet<String> = c
                .registry
                .sessions()
                .filter(|s| s.joined)
                .map(|s| s.user_id.clone())
                .collect();
            let players: u32 = c.registry.instances().map(|r| r.users).sum();
            (c.registry.len() as i64, i64::from(players), users)
        };
        for (name, now, last) in [
            (&a.rooms_counter, rooms, &mut self.rooms),
            (&a.players_counter, players, &mut self.players),
        ] {
            if *last != Some(now) {
                match sdk.set_counter(name, now).await {
                    Ok(_) => *last = Some(now),
                    Err(e) => tracing::warn!("Agones: counter {name} = {now}: {e}"),
                }
            }
        }
        // The sidecar's errors carry no reliable codes: after a failed call
        // the List itself says what happened.
        let gone: Vec<String> = self.listed.difference(&users).cloned().collect();
        for user in gone {
            if let Err(e) = sdk.remove_list_value(&a.players_list, &user).await {
                tracing::debug!("Agones: list {}: remove {user}: {e}", a.players_list);
                match sdk.get_list(&a.players_list).await {
                    Ok(list) if list.values.contains(&user) => continue, // retried next sync
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
            self.listed.remove(&user);
            self.list_full = false;
        }
        if self.list_full {
            return;
        }
        let new: Vec<String> = users.difference(&self.listed).cloned().collect();
        for user in new {
            let Err(e) = sdk.add_list_value(&a.players_list, &user).await else {
                self.listed.insert(user);
                continue;
            };
            tracing::debug!("Agones: list {}: add {user}: {e}", a.players_list);
            let Ok(list) = sdk.get_list(&a.players_list).await else {
                return;
            };
            if list.values.contains(&user) {
                self.listed.insert(user); // It was added after all.
            } else if list.values.len() as i64 >= list.capacity {
                // Past the list's capacity the players Counter still counts.
                self.list_full = true;
                return;
            }
        }
    }
}

/// Acts on a GameServer update. `created` remembers the allocations already
/// acted on (instance id, allocation annotation): an update of the same
/// allocation (a Counter change, say) never brings back a room that ended.
async fn on_game_server(
    gs: &GameServer,
    config: &Config,
    shared: &Shared,
    signals: &AgonesSignals,
    created: &mut HashSet<(String, String)>,
) {
    let state = gs.status.as_ref().map_or("", |s| s.state.as_str());
    if state == "Shutdown" && !signals.shutdown_requested.swap(true, Ordering::SeqCst) {
        tracing::info!("Agones: the GameServer is shutting down; draining");
        let (queues, grace) = {
            let mut c = lock(shared);
            let grace = std::time::Duration::from_millis(c.config.node.drain_grace_ms);
            (c.begin_drain(grace).0, grace)
        };
        // It may block a second per shard on a full queue: not on this runtime.
        let delivered =
            tokio::task::spawn_blocking(move || super::deliver_drain(&queues, grace)).await;
        if let Err(e) = delivered {
            tracing::error!("Agones: drain not delivered: {e}");
        }
        return;
    }
    if state != "Allocated" {
        return;
    }
    let empty = std::collections::HashMap::new();
    let annotations = gs.object_meta.as_ref().map_or(&empty, |m| &m.annotations);
    let Some(location) = annotations
        .get(LOCATION_ANNOTATION)
        .filter(|l| !l.is_empty())
    else {
        return;
    };
    let id = annotations
        .get(INSTANCE_ANNOTATION)
        .filter(|i| !i.is_empty())
        .unwrap_or(location);
    let allocation = annotations
        .get(ALLOCATION_ANNOTATION)
        .cloned()
        .unwrap_or_default();
    if !created.insert((id.clone(), allocation)) {
        return; // Acted on at an earlier update of the same allocation.
    }
    if lock(shared).registry.get(id).is_some() {
        return; // Already running (created another way).
    }
    let scene = annotations
        .get(SCENE_ANNOTATION)
        .map_or("demo", String::as_str);
    let Some(builtin) = engine::scene::BUILTIN_SCENES.iter().find(|s| **s == scene) else {
        tracing::warn!(scene, "Agones: the allocation names an unknown scene");
        return;
    };
    let request = CreateRequest {
        instance_id: Some(id.clone()),
        kind: state::commands::InstanceKind::World,
        location_id: location.clone(),
        scene: SceneSource::Builtin(builtin),
        max_users: None,
        snapshot_hz: None,
        labels: BTreeMap::from([("allocated".into(), "agones".into())]),
        empty_timeout_ms: None,
        private: false,
        allowed_user_ids: Vec::new(),
        room_code: None,
        generate_room_code: false,
        persistent: false,
    };
    let created = load_scene(config, &request.scene)
        .map_err(|e| e.to_string())
        .and_then(|scene| {
            lock(shared)
                .create(request, scene)
                .map_err(|e| e.to_string())
        });
    match created {
        Ok(_) => {
            tracing::info!(instance = %id, %location, "Agones: allocation created an instance")
        }
        Err(e) => tracing::warn!(instance = %id, "Agones: the allocation's instance: {e}"),
    }
}
