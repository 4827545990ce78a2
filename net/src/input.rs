//! The server side of one peer: what a validated client message does to its
//! instance. Owned-entity updates are checked against ownership, the world
//! bounds and a speed limit; actions get the sender stamped by the server;
//! ownership requests are granted or refused; pings are answered.

use engine::{Motion, NetworkId, Owner, Simulation, Transform, UserIndex, Vec3};

use crate::codec::ClientMessage;
use crate::messages::{ActionBroadcast, ArchivedTarget, OwnershipChanged, Pong, Target};
use crate::snapshot::ClientSnapshots;

/// Limits on what one client may do.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct InputLimits {
    /// Fastest an owned entity that is not an avatar may be moved, m/s.
    /// Avatars use the simulation's own avatar speed limit.
    pub owned_speed_max_mps: f32,
    /// Ticks of unused movement an owned entity may catch up in one update
    /// (after the owner paused or packets were lost); bounds any jump to
    /// `owned_speed_max_mps * owned_catch_up_ticks_max / tick_hz`.
    pub owned_catch_up_ticks_max: u32,
}

impl Default for InputLimits {
    fn default() -> Self {
        InputLimits {
            owned_speed_max_mps: 20.0,
            owned_catch_up_ticks_max: 6,
        }
    }
}

/// Why one owned-entity update or request was refused. The message is
/// dropped (the rest of an input still applies); the caller counts these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InputError {
    #[error("entity {0} does not exist")]
    UnknownEntity(u32),
    #[error("entity {0} is owned by someone else")]
    NotOwner(u32),
    #[error("entity {0} is moved by physics and cannot be set by a client")]
    PhysicsDriven(u32),
    #[error("entity {0} is an avatar; its ownership cannot change")]
    Avatar(u32),
}

/// What handling a message produced for the caller to send or record.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// An input: updates applied, and updates refused (see [`InputError`]).
    Input {
        applied: u32,
        refused: u32,
    },
    /// An input older than one already handled (the `state` channel is unordered).
    StaleInput,
    /// Answer on `state`.
    Pong(Pong),
    /// Relay to the action's target (and cache it when `cached`).
    Broadcast(ActionBroadcast),
    /// An action for the server only.
    ServerAction(ActionBroadcast),
    /// Tell everyone; ownership changed.
    Ownership(OwnershipChanged),
    Refused(InputError),
}

/// The input state of one peer.
#[derive(Debug, Clone)]
pub struct PeerInput {
    user: UserIndex,
    limits: InputLimits,
    last_input_sequence: Option<u32>,
}

impl PeerInput {
    pub fn new(user: UserIndex, limits: InputLimits) -> Self {
        PeerInput {
            user,
            limits,
            last_input_sequence: None,
        }
    }

    pub fn user(&self) -> UserIndex {
        self.user
    }

    /// Applies one validated client message.
    pub fn handle(
        &mut self,
        sim: &mut Simulation,
        snapshots: &mut ClientSnapshots,
        msg: &ClientMessage<'_>,
    ) -> Outcome {
        match msg {
            ClientMessage::Input(header, input) => {
                let seq = header.sequence.get();
                if self
                    .last_input_sequence
                    .is_some_and(|last| seq.wrapping_sub(last) as i32 <= 0)
                {
                    return Outcome::StaleInput;
                }
                self.last_input_sequence = Some(seq);
                snapshots.ack(header.tick.get());
                let (mut applied, mut refused) = (0, 0);
                for u in input.owned.iter() {
                    let t = Transform {
                        position: Vec3::from(u.position.map(|v| v.to_native())),
                        rotation: u.rotation.map(|v| v.to_native()).into(),
                    };
                    match self.apply_owned(sim, u.network_id.to_native(), t) {
                        Ok(()) => applied += 1,
                        Err(_) => refused += 1,
                    }
                }
                Outcome::Input { applied, refused }
            }
            ClientMessage::Ping(_, ping) => Outcome::Pong(Pong {
                client_time_us: ping.client_time_us.to_native(),
                server_tick: sim.world().tick().0,
            }),
            ClientMessage::Action(_, a) => {
                let target = match a.target {
                    ArchivedTarget::Everyone => Target::Everyone,
                    ArchivedTarget::User(u) => Target::User(u.to_native()),
                    ArchivedTarget::Server => Target::Server,
                };
                let broadcast = ActionBroadcast {
                    // Stamped from the session: a client cannot speak for another.
                    sender: self.user.0,
                    action_type: a.action_type.as_str().to_owned(),
                    target,
                    cached: a.cached,
                    payload: a.payload.to_vec(),
                };
                if target == Target::Server {
                    Outcome::ServerAction(broadcast)
                } else {
                    Outcome::Broadcast(broadcast)
                }
            }
            ClientMessage::OwnershipRequest(_, r) => {
                match self.change_ownership(sim, r.network_id.to_native(), r.take) {
                    Ok(changed) => Outcome::Ownership(changed),
                    Err(e) => Outcome::Refused(e),
                }
            }
        }
    }

    /// Clears the owner of every entity this user owned except its avatar
    /// (the user is leaving); returns what everyone must be told. Ownership
    /// is granted by [`PeerInput::handle`] and released here, nowhere else.
    pub fn release_all(&self, sim: &mut Simulation) -> Vec<OwnershipChanged> {
        let world = sim.world_mut();
        let owned: Vec<_> = world
            .optional
            .owners
            .iter()
            .filter(|(id, o)| o.user == self.user && !world.optional.avatars.contains(*id))
            .map(|(id, _)| id)
            .collect();
        let mut released = Vec::with_capacity(owned.len());
        for id in owned {
            let _ = world.remove(id, |c| &mut c.owners);
            if let Ok(NetworkId(network_id)) = world.network_id(id) {
                released.push(OwnershipChanged {
                    network_id,
                    owner: None,
                });
            }
        }
        released
    }

    fn apply_owned(
        &self,
        sim: &mut Simulation,
        network_id: u32,
        target: Transform,
    ) -> Result<(), InputError> {
        let world = sim.world();
        let entity = world
            .by_network_id(NetworkId(network_id))
            .ok_or(InputError::UnknownEntity(network_id))?;
        if world.optional.owners.get(entity).map(|o| o.user) != Some(self.user) {
            return Err(InputError::NotOwner(network_id));
        }
        if world.optional.avatars.contains(entity) {
            // The avatar controller enforces its speed limit and the bounds.
            return sim
                .set_avatar_target(entity, target)
                .map_err(|_| InputError::UnknownEntity(network_id));
        }
        if world.motion(entity) == Ok(Motion::Physics) {
            return Err(InputError::PhysicsDriven(network_id));
        }
        let current = world
            .transform(entity)
            .map_err(|_| InputError::UnknownEntity(network_id))?;
        let elapsed_ticks = world
            .tick()
            .0
            .saturating_sub(world.changed_at(entity).map_or(0, |t| t.0))
            .clamp(1, self.limits.owned_catch_up_ticks_max.max(1));
        let step_max =
            self.limits.owned_speed_max_mps * elapsed_ticks as f32 / sim.config().tick_hz as f32;
        let position = clamp_step(current.position, target.position, step_max);
        let b = sim.bounds();
        let position = Vec3::new(
            position.x.clamp(b.min.x, b.max.x),
            position.y.clamp(b.min.y, b.max.y),
            position.z.clamp(b.min.z, b.max.z),
        );
        let len = target.rotation.length();
        let rotation = if len > 1e-6 && len.is_finite() {
            let q = target.rotation;
            engine::Quat::new(q.x / len, q.y / len, q.z / len, q.w / len)
        } else {
            current.rotation
        };
        sim.world_mut()
            .set_transform(entity, Transform { position, rotation })
            .map_err(|_| InputError::UnknownEntity(network_id))
    }

    fn change_ownership(
        &self,
        sim: &mut Simulation,
        network_id: u32,
        take: bool,
    ) -> Result<OwnershipChanged, InputError> {
        let world = sim.world_mut();
        let entity = world
            .by_network_id(NetworkId(network_id))
            .ok_or(InputError::UnknownEntity(network_id))?;
        if world.optional.avatars.contains(entity) {
            return Err(InputError::Avatar(network_id));
        }
        let owner = world.optional.owners.get(entity).map(|o| o.user);
        match (take, owner) {
            (true, None) => {
                if world.motion(entity) == Ok(Motion::Physics) {
                    return Err(InputError::PhysicsDriven(network_id));
                }
                let _ = world.insert(entity, Owner { user: self.user }, |c| &mut c.owners);
            }
            (true, Some(u)) | (false, Some(u)) if u != self.user => {
                return Err(InputError::NotOwner(network_id));
            }
            (true, Some(_)) => {}
            (false, Some(_)) => {
                let _ = world.remove(entity, |c| &mut c.owners);
            }
            (false, None) => return Err(InputError::NotOwner(network_id)),
        }
        Ok(OwnershipChanged {
            network_id,
            owner: take.then_some(self.user.0),
        })
    }
}

/// `from` moved toward `to` by at most `step_max`.
fn clamp_step(from: Vec3, to: Vec3, step_max: f32) -> Vec3 {
    let d = to.minus(from);
    let len = d.length();
    if len <= step_max || len == 0.0 {
        to
    } else {
        from.add_scaled(d, step_max / len)
    }
}
