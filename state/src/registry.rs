//! The control thread's record of the node's instances, sessions and bans.
//! Seats are reserved when a join is accepted for signaling and released
//! when the session ends, so `max_users` holds even while peers connect.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Instant;

use crate::commands::SessionId;

/// Where an instance is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifecycle {
    /// Created; its shard is loading the scene.
    Loading,
    Running,
    /// The node is draining: clients were told, the instance ends soon.
    Draining,
}

impl Lifecycle {
    pub fn label(self) -> &'static str {
        match self {
            Lifecycle::Loading => "loading",
            Lifecycle::Running => "running",
            Lifecycle::Draining => "draining",
        }
    }
}

/// One instance as the control thread sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceRecord {
    pub id: String,
    pub location_id: String,
    pub shard: usize,
    pub max_users: u32,
    /// Snapshots per second (0 until the creator sets it).
    pub snapshot_hz: u32,
    /// `world` or `media`.
    pub kind: &'static str,
    /// Ends after this long with nobody in it; `None`: runs until ended.
    pub empty_timeout_ms: Option<u64>,
    /// `Some`: private, only these users (and those who join with its room
    /// code, who are added) may join.
    pub allowed_users: Option<BTreeSet<String>>,
    /// Six digits that a token scoped to its location can join it by.
    pub room_code: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub lifecycle: Lifecycle,
    /// Seats reserved by joins in progress and joined sessions.
    pub seats: u32,
    /// Sessions fully joined.
    pub users: u32,
    pub entities: u32,
    pub tick_p99_us: u32,
    /// A world instance's scene (what `GET /v1/instances/{id}/scene`
    /// describes); `None` for media instances.
    pub scene: Option<std::sync::Arc<engine::PreparedScene>>,
}

impl InstanceRecord {
    pub fn new(
        id: String,
        location_id: String,
        shard: usize,
        max_users: u32,
        labels: BTreeMap<String, String>,
    ) -> Self {
        InstanceRecord {
            id,
            location_id,
            shard,
            max_users,
            snapshot_hz: 0,
            kind: "world",
            empty_timeout_ms: None,
            allowed_users: None,
            room_code: None,
            labels,
            lifecycle: Lifecycle::Loading,
            seats: 0,
            users: 0,
            entities: 0,
            tick_p99_us: 0,
            scene: None,
        }
    }
}

/// A session as the control thread sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    pub instance_id: String,
    pub user_id: String,
    pub joined: bool,
    /// When it joined (Unix ms), once it has.
    pub joined_at_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    #[error("instance {0} already exists")]
    Exists(String),
    #[error("room code {0} is taken by another instance")]
    RoomCodeTaken(String),
    #[error("the node hosts its maximum of {0} instances")]
    Full(usize),
    #[error("instance {0} does not exist")]
    Unknown(String),
    #[error("instance {0} is full")]
    InstanceFull(String),
    #[error("instance {0} is draining")]
    Draining(String),
    #[error("{0} bans are in force, the most the node keeps")]
    BansFull(usize),
}

/// Instances, sessions and bans of the node.
#[derive(Debug)]
pub struct Registry {
    instances_max: usize,
    instances: BTreeMap<String, InstanceRecord>,
    sessions: HashMap<SessionId, SessionRecord>,
    /// (instance, user) → banned until. Kept when the instance ends: a ban
    /// holds for an instance created again with the same id.
    bans: HashMap<(String, String), Instant>,
    /// Room code → instance id.
    room_codes: HashMap<String, String>,
    next_session: SessionId,
}

/// Most bans remembered; expired ones are pruned first when it is reached.
pub const BANS_MAX: usize = 65_536;

impl Registry {
    pub fn new(instances_max: usize) -> Self {
        Registry {
            instances_max,
            instances: BTreeMap::new(),
            sessions: HashMap::new(),
            bans: HashMap::new(),
            room_codes: HashMap::new(),
            next_session: 1,
        }
    }

    pub fn insert(&mut self, record: InstanceRecord) -> Result<(), RegistryError> {
        if self.instances.contains_key(&record.id) {
            return Err(RegistryError::Exists(record.id));
        }
        if self.instances.len() >= self.instances_max {
            return Err(RegistryError::Full(self.instances_max));
        }
        if let Some(code) = &record.room_code {
            if self.room_codes.contains_key(code) {
                return Err(RegistryError::RoomCodeTaken(code.clone()));
            }
            self.room_codes.insert(code.clone(), record.id.clone());
        }
        self.instances.insert(record.id.clone(), record);
        Ok(())
    }

    /// Whether a room code is in use.
    pub fn room_code_taken(&self, code: &str) -> bool {
        self.room_codes.contains_key(code)
    }

    /// The instance a room code names.
    pub fn by_room_code(&self, code: &str) -> Option<&InstanceRecord> {
        self.instances.get(self.room_codes.get(code)?)
    }

    pub fn get(&self, id: &str) -> Option<&InstanceRecord> {
        self.instances.get(id)
    }

    pub fn get_mut(&mut self, id: &str) -> Option<&mut InstanceRecord> {
        self.instances.get_mut(id)
    }

    pub fn instances(&self) -> impl Iterator<Item = &InstanceRecord> {
        self.instances.values()
    }

    pub fn len(&self) -> usize {
        self.instances.len()
    }

    pub fn is_empty(&self) -> bool {
        self.instances.is_empty()
    }

    /// Forgets an instance, its sessions and its room code (not its bans).
    pub fn remove(&mut self, id: &str) -> Option<InstanceRecord> {
        self.sessions.retain(|_, s| s.instance_id != id);
        let record = self.instances.remove(id)?;
        if let Some(code) = &record.room_code {
            self.room_codes.remove(code);
        }
        Some(record)
    }

    /// Reserves a seat; returns the seats now taken.
    pub fn reserve_seat(&mut self, id: &str) -> Result<u32, RegistryError> {
        self.reserve_seat_for(id, false)
    }

    /// Reserves a seat; `replacing`: the user has a session in the instance
    /// that this one replaces (the shard removes the older one first), so
    /// a full instance takes it all the same.
    pub fn reserve_seat_for(&mut self, id: &str, replacing: bool) -> Result<u32, RegistryError> {
        let r = self
            .instances
            .get_mut(id)
            .ok_or_else(|| RegistryError::Unknown(id.to_string()))?;
        if r.lifecycle == Lifecycle::Draining {
            return Err(RegistryError::Draining(id.to_string()));
        }
        if r.seats >= r.max_users && !replacing {
            return Err(RegistryError::InstanceFull(id.to_string()));
        }
        r.seats += 1;
        Ok(r.seats)
    }

    pub fn release_seat(&mut self, id: &str) {
        if let Some(r) = self.instances.get_mut(id) {
            r.seats = r.seats.saturating_sub(1);
        }
    }

    /// A new session id (never reused by this node).
    pub fn open_session(&mut self, instance_id: &str, user_id: &str) -> SessionId {
        let id = self.next_session;
        self.next_session += 1;
        self.sessions.insert(
            id,
            SessionRecord {
                instance_id: instance_id.to_string(),
                user_id: user_id.to_string(),
                joined: false,
                joined_at_ms: None,
            },
        );
        id
    }

    /// Every open session.
    pub fn sessions(&self) -> impl Iterator<Item = &SessionRecord> {
        self.sessions.values()
    }

    pub fn session(&self, id: SessionId) -> Option<&SessionRecord> {
        self.sessions.get(&id)
    }

    /// The session joined at `now_ms` (Unix ms).
    pub fn session_joined(&mut self, id: SessionId, now_ms: u64) {
        if let Some(s) = self.sessions.get_mut(&id)
            && !s.joined
        {
            s.joined = true;
            s.joined_at_ms = Some(now_ms);
            if let Some(r) = self.instances.get_mut(&s.instance_id) {
                r.users += 1;
            }
        }
    }

    /// Ends a session: releases its seat (and its user count when joined).
    pub fn close_session(&mut self, id: SessionId) -> Option<SessionRecord> {
        let s = self.sessions.remove(&id)?;
        if let Some(r) = self.instances.get_mut(&s.instance_id) {
            r.seats = r.seats.saturating_sub(1);
            if s.joined {
                r.users = r.users.saturating_sub(1);
            }
        }
        Some(s)
    }

    /// Sessions of `user_id` in `instance_id`.
    pub fn sessions_of(&self, instance_id: &str, user_id: &str) -> u32 {
        self.sessions
            .values()
            .filter(|s| s.instance_id == instance_id && s.user_id == user_id)
            .count() as u32
    }

    pub fn sessions_len(&self) -> usize {
        self.sessions.len()
    }

    /// Bans `user_id` from `instance_id` until `until`. Fails when
    /// [`BANS_MAX`] bans are in force.
    pub fn ban(
        &mut self,
        instance_id: &str,
        user_id: &str,
        until: Instant,
        now: Instant,
    ) -> Result<(), RegistryError> {
        let key = (instance_id.to_string(), user_id.to_string());
        if self.bans.len() >= BANS_MAX && !self.bans.contains_key(&key) {
            self.bans.retain(|_, t| *t > now);
            if self.bans.len() >= BANS_MAX {
                return Err(RegistryError::BansFull(BANS_MAX));
            }
        }
        self.bans.insert(key, until);
        Ok(())
    }

    pub fn is_banned(&self, instance_id: &str, user_id: &str, now: Instant) -> bool {
        self.bans
            .get(&(instance_id.to_string(), user_id.to_string()))
            .is_some_and(|t| *t > now)
    }

    /// Every instance is draining from now on.
    pub fn drain_all(&mut self) {
        for r in self.instances.values_mut() {
            r.lifecycle = Lifecycle::Draining;
        }
    }
}
