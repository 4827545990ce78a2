//! The server side of one peer: what a validated client message does to its
//! instance. Owned-entity updates are checked against ownership, the world
//! bounds and a speed limit; actions get the sender stamped by the server;
//! ownership requests are granted or refused ([`change_ownership`]); pings
//! are answered.

use engine::{
    BodyKind, EntityId, Motion, NetworkId, Owner, Simulation, Transform, UserIndex, Vec3,
};

use crate::codec::ClientMessage;
use crate::messages::{
    ActionBroadcast, ArchivedCache, ArchivedOwnershipOp, ArchivedTarget, Cache, OwnershipChanged,
    OwnershipOp, OwnershipRefusal, Pong, Target,
};
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

/// Why one owned-entity update was refused. The update is dropped (the
/// rest of an input still applies); the caller counts these by
/// [`InputError::reason`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InputError {
    #[error("entity {0} does not exist")]
    UnknownEntity(u32),
    #[error("entity {0} is not owned by this user")]
    NotOwner(u32),
}

impl InputError {
    /// The metrics label.
    pub fn reason(self) -> &'static str {
        match self {
            InputError::UnknownEntity(_) => "update_unknown_entity",
            InputError::NotOwner(_) => "update_not_owner",
        }
    }
}

/// Owned-entity updates of one input refused, by reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RefusedUpdates {
    pub unknown_entity: u32,
    pub not_owner: u32,
}

impl RefusedUpdates {
    fn count(&mut self, e: InputError) {
        match e {
            InputError::UnknownEntity(_) => self.unknown_entity += 1,
            InputError::NotOwner(_) => self.not_owner += 1,
        }
    }

    pub fn total(&self) -> u32 {
        self.unknown_entity + self.not_owner
    }
}

/// What handling a message produced for the caller to send or record.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// An input: updates applied, and updates refused (see [`InputError`]).
    Input {
        applied: u32,
        refused: RefusedUpdates,
    },
    /// An input older than one already handled (the `state` channel is unordered).
    StaleInput,
    /// Answer on `state`.
    Pong(Pong),
    /// Relay to the action's target (and cache it when `cached`).
    Broadcast(ActionBroadcast),
    /// An action for the server only.
    ServerAction(ActionBroadcast),
    /// An ownership request, for the instance to decide with
    /// [`change_ownership`] (a transfer needs to know who is a member).
    Ownership { network_id: u32, op: OwnershipOp },
    /// An SDP offer or answer renegotiating the member's media, for the
    /// instance and the connection layer.
    Sdp(crate::messages::Sdp),
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
                let (mut applied, mut refused) = (0, RefusedUpdates::default());
                for u in input.owned.iter() {
                    let t = Transform {
                        position: Vec3::from(u.position.map(|v| v.to_native())),
                        rotation: u.rotation.map(|v| v.to_native()).into(),
                    };
                    match self.apply_owned(sim, u.network_id.to_native(), t) {
                        Ok(()) => applied += 1,
                        Err(e) => refused.count(e),
                    }
                }
                Outcome::Input { applied, refused }
            }
            ClientMessage::Sdp(_, sdp) => Outcome::Sdp(crate::messages::Sdp {
                kind: match sdp.kind {
                    crate::messages::ArchivedSdpKind::Offer => crate::messages::SdpKind::Offer,
                    crate::messages::ArchivedSdpKind::Answer => crate::messages::SdpKind::Answer,
                },
                sdp: sdp.sdp.as_str().to_owned(),
            }),
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
                let cache = match a.cache {
                    ArchivedCache::No => Cache::No,
                    ArchivedCache::Keep => Cache::Keep,
                    ArchivedCache::ReplaceOwn => Cache::ReplaceOwn,
                };
                let broadcast = ActionBroadcast {
                    // Stamped from the session: a client cannot speak for another.
                    sender: self.user.0,
                    topic: a.topic.as_str().to_owned(),
                    action_type: a.action_type.as_str().to_owned(),
                    target,
                    cache,
                    payload: a.payload.to_vec(),
                };
                if target == Target::Server {
                    Outcome::ServerAction(broadcast)
                } else {
                    Outcome::Broadcast(broadcast)
                }
            }
            ClientMessage::OwnershipRequest(_, r) => Outcome::Ownership {
                network_id: r.network_id.to_native(),
                op: match r.op {
                    ArchivedOwnershipOp::Take => OwnershipOp::Take,
                    ArchivedOwnershipOp::Release => OwnershipOp::Release,
                    ArchivedOwnershipOp::Transfer { to } => {
                        OwnershipOp::Transfer { to: to.to_native() }
                    }
                },
            },
        }
    }

    /// Returns every entity this user owned except its avatar to the server
    /// (the user is leaving): held bodies fall again. Returns what everyone
    /// must be told.
    pub fn release_all(&self, sim: &mut Simulation) -> Vec<OwnershipChanged> {
        let world = sim.world();
        let owned: Vec<_> = world
            .optional
            .owners
            .iter()
            .filter(|(id, o)| o.user == self.user && !world.optional.avatars.contains(*id))
            .map(|(id, _)| id)
            .collect();
        let mut released = Vec::with_capacity(owned.len());
        for id in owned {
            if let Some(network_id) = unown(sim, id) {
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
        let held = world.motion(entity) == Ok(Motion::Physics);
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
        let to = Transform { position, rotation };
        if held {
            // A held body: physics moves it there in the next step (pushing
            // what is in its way) and writes it back.
            sim.move_held(entity, to)
        } else {
            sim.world_mut().set_transform(entity, to)
        }
        .map_err(|_| InputError::UnknownEntity(network_id))
    }
}

/// Clears an entity's owner; a held body falls again. Returns its network
/// id when it had an owner.
fn unown(sim: &mut Simulation, id: EntityId) -> Option<u32> {
    sim.world_mut().remove(id, |c| &mut c.owners).ok()??;
    let _ = sim.release(id);
    Some(sim.world().network_id(id).ok()?.0)
}

/// Decides `user`'s ownership request for `network_id` and applies it;
/// `Ok(None)` when it was granted but changes nothing (taking what one
/// owns, transferring to oneself): nobody needs telling.
///
/// - `Take`: granted when nobody owns the entity, it is neither an avatar
///   nor a fixed or kinematic scene body (which the scene places), and the
///   user owns fewer than `owned_max` entities
///   (its avatar aside). A dynamic body is then held (kinematic, moved by
///   its owner's updates) until released. Refused with
///   [`OwnershipRefusal::OwnedBy`] when someone else owns it (the caller
///   asks that owner to hand it over).
/// - `Release`: by the owner; a held body falls again.
/// - `Transfer { to }`: by the owner, to a user `is_member` knows, within
///   that user's `owned_max`; the body stays held, by its new owner.
pub fn change_ownership(
    sim: &mut Simulation,
    user: UserIndex,
    network_id: u32,
    op: OwnershipOp,
    owned_max: u32,
    is_member: impl Fn(u32) -> bool,
) -> Result<Option<OwnershipChanged>, OwnershipRefusal> {
    let world = sim.world();
    let entity = world
        .by_network_id(NetworkId(network_id))
        .ok_or(OwnershipRefusal::UnknownEntity)?;
    if world.optional.avatars.contains(entity) {
        return Err(OwnershipRefusal::Avatar);
    }
    if world
        .optional
        .bodies
        .get(entity)
        .is_some_and(|l| l.kind != BodyKind::Dynamic)
    {
        return Err(OwnershipRefusal::SceneBody);
    }
    let owned_by = |u: UserIndex| {
        world
            .optional
            .owners
            .iter()
            .filter(|(id, o)| o.user == u && !world.optional.avatars.contains(*id))
            .count()
    };
    let owner = world.optional.owners.get(entity).map(|o| o.user);
    let new_owner = match (op, owner) {
        (OwnershipOp::Take, Some(u)) if u == user => return Ok(None),
        (OwnershipOp::Transfer { to }, Some(u)) if u == user && to == user.0 => return Ok(None),
        (OwnershipOp::Take, None) => {
            if owned_by(user) >= owned_max as usize {
                return Err(OwnershipRefusal::TooMany(owned_max));
            }
            let world = sim.world_mut();
            world
                .insert(entity, Owner { user }, |c| &mut c.owners)
                .map_err(|_| OwnershipRefusal::UnknownEntity)?;
            let _ = sim.hold(entity);
            Some(user.0)
        }
        (OwnershipOp::Take, Some(u)) => return Err(OwnershipRefusal::OwnedBy(u.0)),
        (_, u) if u != Some(user) => return Err(OwnershipRefusal::NotOwner),
        (OwnershipOp::Release, _) => {
            unown(sim, entity);
            None
        }
        (OwnershipOp::Transfer { to }, _) => {
            if !is_member(to) {
                return Err(OwnershipRefusal::UnknownUser(to));
            }
            if owned_by(UserIndex(to)) >= owned_max as usize {
                return Err(OwnershipRefusal::TooMany(owned_max));
            }
            let world = sim.world_mut();
            world
                .insert(
                    entity,
                    Owner {
                        user: UserIndex(to),
                    },
                    |c| &mut c.owners,
                )
                .map_err(|_| OwnershipRefusal::UnknownEntity)?;
            Some(to)
        }
    };
    Ok(Some(OwnershipChanged {
        network_id,
        owner: new_owner,
    }))
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
