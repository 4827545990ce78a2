//! One instance on a shard: its simulation, the snapshot frame shared by its
//! clients, its peers and the actions cached for late joiners.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use engine::{Scene, SimConfig, SimError, Simulation, TickTimes, WorldConfig};
use net::messages::ActionBroadcast;
use net::quant::Quantizer;
use net::snapshot::WorldFrame;

use super::slab::Key;
use crate::config::InstanceConfig;

/// Peer slots allocated when an instance starts; more grow on demand.
pub const PEERS_PREALLOCATED_MAX: usize = 64;

#[derive(Debug)]
pub struct Instance {
    pub id: String,
    pub location_id: String,
    pub labels: BTreeMap<String, String>,
    pub max_users: u32,
    pub sim: Simulation,
    pub frame: WorldFrame,
    pub quantizer: Quantizer,
    /// Every peer of the instance, joined or still connecting.
    pub peers: Vec<Key>,
    pub cached_actions: VecDeque<ActionBroadcast>,
    pub cached_actions_max: usize,
    /// User indices are never reused within an instance, so ownership
    /// recorded for a user who left can never pass to a newcomer.
    pub next_user_index: u32,
    pub empty_since: Option<Instant>,
    /// `None`: the instance runs until ended, even when empty.
    pub empty_timeout: Option<Duration>,
    pub drain_until: Option<Instant>,
    pub tick_times: TickTimes,
    pub last_tick_p50_us: u32,
    pub last_tick_p99_us: u32,
    /// The earliest timer queued for this instance, if any.
    pub scheduled: Option<Instant>,
}

impl Instance {
    pub fn new(
        spec: state::commands::InstanceSpec,
        config: &InstanceConfig,
        now: Instant,
    ) -> Result<Instance, SimError> {
        let sim_config = SimConfig {
            tick_hz: config.tick_hz,
            world: WorldConfig {
                entities_max: config.entities_max,
                ..WorldConfig::default()
            },
            avatar: engine::AvatarConfig {
                speed_max_mps: config.avatar_speed_max_mps,
                ..SimConfig::default().avatar
            },
            ..SimConfig::default()
        };
        let scene: &Scene = &spec.scene;
        let sim = Simulation::new(scene, sim_config)?;
        let quantizer = Quantizer::new(sim.bounds());
        Ok(Instance {
            id: spec.id,
            location_id: spec.location_id,
            labels: spec.labels,
            max_users: spec.max_users,
            frame: WorldFrame::with_capacity(sim.world().len()),
            sim,
            quantizer,
            peers: Vec::with_capacity((spec.max_users as usize).min(PEERS_PREALLOCATED_MAX)),
            cached_actions: VecDeque::new(),
            cached_actions_max: config.cached_actions_max,
            next_user_index: 0,
            empty_since: Some(now),
            empty_timeout: spec.empty_timeout,
            drain_until: None,
            tick_times: TickTimes::new(4 * config.tick_hz as usize),
            last_tick_p50_us: 0,
            last_tick_p99_us: 0,
            scheduled: None,
        })
    }

    /// Keeps a cached action for late joiners, dropping the oldest at the limit.
    pub fn cache(&mut self, action: ActionBroadcast) {
        if self.cached_actions_max == 0 {
            return;
        }
        if self.cached_actions.len() >= self.cached_actions_max {
            self.cached_actions.pop_front();
        }
        self.cached_actions.push_back(action);
    }

    /// When the instance ends if nobody joins.
    pub fn empty_deadline(&self) -> Option<Instant> {
        Some(self.empty_since? + self.empty_timeout?)
    }

    /// When this instance next needs the shard's attention.
    pub fn wake_at(&self) -> Option<Instant> {
        let tick = self.sim.next_tick_due();
        let empty = self.empty_deadline();
        [tick, empty, self.drain_until].into_iter().flatten().min()
    }
}
