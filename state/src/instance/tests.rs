//! An instance alone: members joining, messages, ticks, leaving, with a
//! recording outbox in place of connections (no str0m, no socket).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use engine::{Scene, UserIndex, Vec3};
use net::conn::{ConnKey, SendError};
use net::messages::{
    Action, ActionBroadcast, Cache, Input, KickReason, OwnedUpdate, OwnershipOp, OwnershipRefusal,
    OwnershipRequest, Target,
};
use net::slab::Slab;
use net::{Channel, Decoder, Encoder, MessageKind, split_frame};

use super::*;
use crate::commands::{EndReason, InstanceSpec, JoinRefused, LeaveReason, ShardMetrics, Topics};

/// Frames written, by connection, and what each connection has buffered.
#[derive(Default)]
struct Recorder {
    frames: Vec<(ConnKey, Channel, MessageKind, Vec<u8>)>,
    buffered: HashMap<ConnKey, usize>,
}

impl Outbox for Recorder {
    fn write(&mut self, to: ConnKey, channel: Channel, frame: &[u8]) -> Result<usize, SendError> {
        let (_, kind, _) = split_frame(frame).expect("the instance writes whole frames");
        self.frames.push((to, channel, kind, frame.to_vec()));
        Ok(frame.len())
    }

    fn buffered(&mut self, to: ConnKey, _channel: Channel) -> usize {
        self.buffered.get(&to).copied().unwrap_or(0)
    }
}

impl Recorder {
    /// Kinds written to `to`, in order, and forgets them. The scene names
    /// that follow a `Welcome` are left out (a test of their own checks them).
    fn take(&mut self, to: ConnKey) -> Vec<MessageKind> {
        let kinds = self
            .frames
            .iter()
            .filter(|f| f.0 == to && f.2 != MessageKind::EntityNames)
            .map(|f| f.2)
            .collect();
        self.frames.retain(|f| f.0 != to);
        kinds
    }
}

/// An instance, its outbox and the shard's shared parts, on a clock of its own.
struct Bench {
    inst: Instance,
    out: Recorder,
    encoder: Encoder,
    snapshots: net::snapshot::SnapshotEncoder,
    decoder: Decoder,
    metrics: ShardMetrics,
    removals: Vec<Removal>,
    now: Instant,
    links: Slab<()>,
}

fn config() -> RuntimeConfig {
    RuntimeConfig {
        tick_hz: 60,
        entities_max: 1024,
        avatar_speed_max_mps: 10.0,
        cached_actions_max: 4,
        cached_action_bytes_max: 1024,
        invalid_messages_max: 2,
        actions_per_second_max: 5,
        owned_entities_max: 4,
        media: crate::instance::MediaLimits::default(),
        silence_timeout: Some(Duration::from_secs(10)),
        reliable_buffer_bytes_max: 64 * 1024,
        snapshot: net::snapshot::SnapshotConfig::default(),
        input: net::input::InputLimits::default(),
    }
}

/// The demo scene and one networked prop that clients may take.
fn scene() -> Scene {
    let mut doc: serde_json::Value =
        serde_json::from_str(include_str!("../../../engine/scenes/demo.json")).unwrap();
    doc["entities"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "name": "lamp",
            "transform": { "position": [3, 0.5, 3] },
            "networked": true
        }));
    Scene::from_json(doc.to_string().as_bytes(), &engine::SceneLimits::default()).unwrap()
}

impl Bench {
    /// An instance ticking at 60 Hz with a snapshot every tick.
    fn new(max_users: u32) -> Bench {
        Bench::with_snapshot_hz(max_users, 60)
    }

    fn with_snapshot_hz(max_users: u32, snapshot_hz: u32) -> Bench {
        let now = Instant::now();
        let spec = InstanceSpec {
            id: "room".into(),
            kind: crate::commands::InstanceKind::World,
            location_id: "room".into(),
            scene: std::sync::Arc::new(engine::PreparedScene::new(scene()).unwrap()),
            max_users,
            snapshot_hz,
            labels: BTreeMap::new(),
            empty_timeout: Some(Duration::from_secs(5)),
        };
        let mut b = Bench {
            inst: Instance::new(spec, config(), now).unwrap(),
            out: Recorder::default(),
            encoder: Encoder::default(),
            snapshots: net::snapshot::SnapshotEncoder::default(),
            decoder: Decoder::default(),
            metrics: ShardMetrics::default(),
            removals: Vec::new(),
            now,
            links: Slab::default(),
        };
        // The first tick starts the instance's clock, as the router does.
        b.with(|i, io| i.tick(io));
        b
    }

    fn with<R>(&mut self, f: impl FnOnce(&mut Instance, &mut Io<'_>) -> R) -> R {
        let mut io = Io {
            out: &mut self.out,
            encoder: &mut self.encoder,
            snapshots: &mut self.snapshots,
            snapshot_divisor: 1,
            decoder: &mut self.decoder,
            metrics: &mut self.metrics,
            removals: &mut self.removals,
            now: self.now,
            clock: Instant::now,
        };
        f(&mut self.inst, &mut io)
    }

    /// Joins and opens a member; returns its index and link.
    fn member(&mut self, name: &str) -> (UserIndex, ConnKey) {
        self.member_with(name, Topics::All)
    }

    /// Joins and opens a member subscribed to `topics`.
    fn member_with(&mut self, name: &str, topics: Topics) -> (UserIndex, ConnKey) {
        let link = self.links.insert(());
        let session = self.links.len() as u64;
        let user = self
            .inst
            .join(session, name.into(), name.into(), topics, link, self.now)
            .unwrap();
        assert!(self.with(|i, io| i.open(user, io)));
        (user, link)
    }

    fn message<T>(
        &mut self,
        user: UserIndex,
        channel: Channel,
        kind: MessageKind,
        tick: u32,
        msg: &T,
    ) where
        T: for<'a, 'b> rkyv::Serialize<net::codec::FrameSerializer<'a, 'b>>,
    {
        let bytes = Encoder::default()
            .encode(kind, 1, tick, msg)
            .unwrap()
            .to_vec();
        self.with(|i, io| i.handle_message(user, channel, &bytes, io));
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
    }

    /// The frames of `kind` written to `to`, decoded by `decode`, and forgets
    /// every frame written to `to`.
    fn decoded<T>(
        &mut self,
        to: ConnKey,
        kind: MessageKind,
        decode: impl Fn(net::ServerMessage<'_>) -> Option<T>,
    ) -> Vec<T> {
        let frames: Vec<Vec<u8>> = self
            .out
            .frames
            .iter()
            .filter(|f| f.0 == to && f.2 == kind)
            .map(|f| f.3.clone())
            .collect();
        self.out.take(to);
        frames
            .iter()
            .filter_map(|f| decode(self.decoder.decode_server(f, Channel::Actions).unwrap()))
            .collect()
    }

    /// The actions relayed to `to` (and forgets what it was sent).
    fn actions_to(&mut self, to: ConnKey) -> Vec<ActionBroadcast> {
        self.decoded(to, MessageKind::ActionBroadcast, |m| match m {
            net::ServerMessage::ActionBroadcast(_, a) => {
                rkyv::deserialize::<ActionBroadcast, rkyv::rancor::Error>(a).ok()
            }
            _ => None,
        })
    }

    /// The cached actions in the `Welcome` sent to `to`.
    fn welcome_actions(&mut self, to: ConnKey) -> Vec<ActionBroadcast> {
        self.decoded(to, MessageKind::Welcome, |m| match m {
            net::ServerMessage::Welcome(_, w) => Some(
                w.cached_actions
                    .iter()
                    .map(|a| rkyv::deserialize::<ActionBroadcast, rkyv::rancor::Error>(a).unwrap())
                    .collect::<Vec<_>>(),
            ),
            _ => None,
        })
        .pop()
        .expect("a Welcome")
    }

    /// Sends an ownership request from `user`.
    fn own(&mut self, user: UserIndex, network_id: u32, op: OwnershipOp) {
        let req = OwnershipRequest { network_id, op };
        self.message(
            user,
            Channel::Actions,
            MessageKind::OwnershipRequest,
            0,
            &req,
        );
    }
}

fn act(topic: &str, action_type: &str, target: Target, cache: Cache, payload: &[u8]) -> Action {
    Action {
        topic: topic.into(),
        action_type: action_type.into(),
        target,
        cache,
        payload: payload.to_vec(),
    }
}

/// A networked scene entity that physics does not move and nobody owns.
fn free_prop(b: &Bench) -> u32 {
    let world = b.inst.sim().world();
    (0..world.len() as u32 * 4)
        .filter_map(|n| world.by_network_id(engine::NetworkId(n)).map(|e| (n, e)))
        .find(|(_, e)| {
            world.motion(*e) != Ok(engine::Motion::Physics)
                && !world.optional.avatars.contains(*e)
                && world.optional.owners.get(*e).is_none()
        })
        .expect("the scene has an entity a client may own")
        .0
}

#[test]
fn actions_reach_the_subscribers_of_their_topic_and_the_user_they_target() {
    let mut b = Bench::new(4);
    let (ann, ann_link) = b.member("ann");
    let (bob, bob_link) = b.member_with("bob", Topics::parse("chat").unwrap());
    let (_, cy_link) = b.member_with("cy", Topics::parse("").unwrap());
    for link in [ann_link, bob_link, cy_link] {
        b.out.take(link);
    }
    let chat = act("chat", "chat.message", Target::Everyone, Cache::No, b"hi");
    let world = act("world", "door.open", Target::Everyone, Cache::No, b"");
    b.message(ann, Channel::Actions, MessageKind::Action, 0, &chat);
    b.message(ann, Channel::Actions, MessageKind::Action, 0, &world);
    let got = b.actions_to(bob_link);
    assert_eq!(got.len(), 1, "bob hears chat only");
    assert_eq!(
        (got[0].sender, got[0].topic.as_str(), &got[0].payload[..]),
        (ann.0, "chat", &b"hi"[..]),
        "the sender is the session's user, stamped by the server"
    );
    assert!(b.actions_to(cy_link).is_empty(), "cy subscribed to nothing");
    // A whisper reaches its target only; one to nobody is refused.
    let whisper = act(
        "chat",
        "chat.whisper",
        Target::User(bob.0),
        Cache::No,
        b"psst",
    );
    b.message(ann, Channel::Actions, MessageKind::Action, 0, &whisper);
    assert_eq!(b.actions_to(bob_link).len(), 1);
    assert!(b.actions_to(cy_link).is_empty());
    assert!(
        b.actions_to(ann_link).is_empty(),
        "never echoed to the sender"
    );
    let lost = act("chat", "chat.whisper", Target::User(99), Cache::No, b"?");
    b.message(ann, Channel::Actions, MessageKind::Action, 0, &lost);
    assert_eq!(
        b.metrics.refused_messages.get("action_unknown_user"),
        Some(&1)
    );
}

#[test]
fn cached_actions_are_replaced_per_type_and_sender_bounded_and_filtered_by_topic() {
    let mut b = Bench::new(8);
    let (ann, _) = b.member("ann");
    let (bob, bob_link) = b.member("bob");
    let model = |url: &[u8]| {
        act(
            "world",
            "avatar.model",
            Target::Everyone,
            Cache::ReplaceOwn,
            url,
        )
    };
    b.message(ann, Channel::Actions, MessageKind::Action, 0, &model(b"a1"));
    b.message(bob, Channel::Actions, MessageKind::Action, 0, &model(b"b1"));
    b.message(ann, Channel::Actions, MessageKind::Action, 0, &model(b"a2"));
    let line = act(
        "chat",
        "chat.message",
        Target::Everyone,
        Cache::Keep,
        b"hello",
    );
    b.message(ann, Channel::Actions, MessageKind::Action, 0, &line);
    let (_, cy_link) = b.member("cy");
    let cached: Vec<_> = b
        .welcome_actions(cy_link)
        .into_iter()
        .map(|a| (a.sender, a.payload))
        .collect();
    assert_eq!(
        cached,
        [
            (bob.0, b"b1".to_vec()),
            (ann.0, b"a2".to_vec()),
            (ann.0, b"hello".to_vec())
        ],
        "ann's second model replaced her first; bob's stays"
    );
    // A joiner on `chat` only gets the chat line.
    let (_, dee_link) = b.member_with("dee", Topics::parse("chat").unwrap());
    let cached = b.welcome_actions(dee_link);
    assert_eq!(cached.len(), 1);
    assert_eq!(cached[0].topic, "chat");
    // Bob leaves: his state goes, ann's chat line stays.
    b.out.take(bob_link);
    b.with(|i, io| i.leave(bob, io));
    let left: Vec<_> = b.inst.cached_actions().map(|a| a.payload.clone()).collect();
    assert_eq!(left, [b"a2".to_vec(), b"hello".to_vec()]);
    // Bounded: 1,024 bytes (the test config) keeps the newest lines only.
    let big = act(
        "chat",
        "chat.message",
        Target::Everyone,
        Cache::Keep,
        &[7; 300],
    );
    for _ in 0..5 {
        b.advance(Duration::from_secs(1));
        b.message(ann, Channel::Actions, MessageKind::Action, 0, &big);
    }
    let bytes: usize = b
        .inst
        .cached_actions()
        .map(|a| a.topic.len() + a.action_type.len() + a.payload.len())
        .sum();
    assert!(bytes <= 1024, "{bytes} bytes cached");
    assert_eq!(
        b.inst.cached_actions().count(),
        3,
        "three 316-byte lines fit"
    );
}

#[test]
fn authority_is_granted_refused_requested_transferred_and_returned_on_leave() {
    let mut b = Bench::new(4);
    let (ann, ann_link) = b.member("ann");
    let (bob, bob_link) = b.member("bob");
    let prop = free_prop(&b);
    let id = b
        .inst
        .sim()
        .world()
        .by_network_id(engine::NetworkId(prop))
        .unwrap();
    let owner = |b: &Bench| b.inst.sim().world().optional.owners.get(id).map(|o| o.user);
    b.out.take(ann_link);
    b.out.take(bob_link);
    b.own(ann, prop, OwnershipOp::Take);
    assert_eq!(owner(&b), Some(ann));
    assert_eq!(b.out.take(bob_link), [MessageKind::OwnershipChanged]);
    b.out.take(ann_link);
    // Bob asks: refused with the owner named, and ann is asked.
    b.own(bob, prop, OwnershipOp::Take);
    let refusals = b.decoded(bob_link, MessageKind::OwnershipRefused, |m| match m {
        net::ServerMessage::OwnershipRefused(_, r) => {
            rkyv::deserialize::<OwnershipRefusal, rkyv::rancor::Error>(&r.reason).ok()
        }
        _ => None,
    });
    assert_eq!(refusals, [OwnershipRefusal::OwnedBy(ann.0)]);
    let asked = b.decoded(ann_link, MessageKind::OwnershipRequested, |m| match m {
        net::ServerMessage::OwnershipRequested(_, r) => {
            Some((r.network_id.to_native(), r.by.to_native()))
        }
        _ => None,
    });
    assert_eq!(asked, [(prop, bob.0)]);
    assert_eq!(
        b.metrics.refused_messages.get("ownership_owned_by_other"),
        Some(&1)
    );
    // Bob's updates of it are refused and counted; ann hands it over.
    let update = Input {
        owned: vec![OwnedUpdate {
            network_id: prop,
            position: [0.0, 1.0, 0.0],
            rotation: [0.0, 0.0, 0.0, 1.0],
        }],
    };
    b.message(bob, Channel::State, MessageKind::Input, 0, &update);
    assert_eq!(b.metrics.refused_messages.get("update_not_owner"), Some(&1));
    b.own(ann, prop, OwnershipOp::Transfer { to: bob.0 });
    assert_eq!(owner(&b), Some(bob));
    assert_eq!(b.out.take(ann_link), [MessageKind::OwnershipChanged]);
    b.out.take(bob_link);
    // A late joiner learns who owns it from its Welcome.
    let (_, cy_link) = b.member("cy");
    let owners = b.decoded(cy_link, MessageKind::Welcome, |m| match m {
        net::ServerMessage::Welcome(_, w) => Some(
            w.owners
                .iter()
                .map(|o| (o.network_id.to_native(), o.owner.to_native()))
                .collect::<Vec<_>>(),
        ),
        _ => None,
    });
    assert_eq!(owners, [vec![(prop, bob.0)]]);
    b.out.take(ann_link);
    // Bob leaves: it returns to the server and everyone is told.
    b.with(|i, io| i.leave(bob, io));
    assert_eq!(owner(&b), None);
    assert_eq!(
        b.out.take(ann_link),
        [MessageKind::PeerLeft, MessageKind::OwnershipChanged]
    );
}

#[test]
fn a_user_joining_again_replaces_the_older_session() {
    let mut b = Bench::new(2);
    let (ann, ann_link) = b.member("ann");
    let (_, bob_link) = b.member("bob");
    b.out.take(ann_link);
    b.out.take(bob_link);
    assert_eq!(b.with(|i, io| i.replace_user("ann", io)), 1);
    let kicks = b.decoded(ann_link, MessageKind::Kick, |m| match m {
        net::ServerMessage::Kick(_, k) => {
            rkyv::deserialize::<KickReason, rkyv::rancor::Error>(&k.reason).ok()
        }
        _ => None,
    });
    assert_eq!(kicks, [KickReason::Replaced]);
    assert_eq!(
        b.removals,
        [Removal {
            user: ann,
            link: ann_link,
            reason: LeaveReason::Replaced
        }]
    );
}

#[test]
fn a_member_is_welcomed_and_introduced_both_ways() {
    let mut b = Bench::new(4);
    let (ann, ann_link) = b.member("ann");
    assert_eq!(b.out.take(ann_link), [MessageKind::Welcome]);
    let (bob, bob_link) = b.member("bob");
    assert_eq!(b.out.take(ann_link), [MessageKind::PeerJoined]);
    assert_eq!(
        b.out.take(bob_link),
        [MessageKind::Welcome, MessageKind::PeerJoined]
    );
    assert!(b.inst.member(ann).unwrap().is_joined());
    assert!(b.inst.member(bob).unwrap().avatar().is_some());
    assert_eq!(b.inst.stats().users, 2);
}

#[test]
fn a_connecting_member_holds_a_seat_but_hears_nothing() {
    let mut b = Bench::new(2);
    let (_, ann_link) = b.member("ann");
    let link = b.links.insert(());
    let bob = b
        .inst
        .join(9, "bob".into(), "bob".into(), Topics::All, link, b.now)
        .unwrap();
    let full = b.inst.join(
        10,
        "cy".into(),
        "cy".into(),
        Topics::All,
        b.links.insert(()),
        b.now,
    );
    assert_eq!(full, Err(JoinRefused::InstanceFull("room".into())));
    b.out.take(ann_link);
    b.advance(Duration::from_millis(50));
    b.with(|i, io| i.tick(io));
    assert_eq!(b.out.take(ann_link), [MessageKind::Snapshot]);
    assert!(b.out.take(link).is_empty(), "no snapshot before it joins");
    // It leaves before joining: nobody is told, its seat is free again.
    let gone = b.with(|i, io| i.leave(bob, io)).unwrap();
    assert!(!gone.joined);
    assert!(b.out.take(ann_link).is_empty());
    assert!(b.inst.can_join().is_ok());
}

#[test]
fn every_tick_sends_each_joined_member_a_snapshot_unless_backed_up() {
    let mut b = Bench::new(4);
    let (_, ann_link) = b.member("ann");
    let (_, bob_link) = b.member("bob");
    b.out.take(ann_link);
    b.out.take(bob_link);
    b.out.buffered.insert(bob_link, STATE_BACKLOG_BYTES_MAX + 1);
    b.advance(Duration::from_millis(100));
    let report = b.with(|i, io| i.tick(io));
    assert!(report.steps >= 2, "{report:?}");
    assert_eq!(b.out.take(ann_link), [MessageKind::Snapshot]);
    assert!(b.out.take(bob_link).is_empty());
    assert_eq!(b.metrics.dropped.get("snapshot_backlog"), Some(&1));
    assert_eq!(b.metrics.snapshots_sent, 1);
}

#[test]
fn inputs_move_the_avatar_and_acks_are_counted() {
    let mut b = Bench::new(4);
    let (ann, _) = b.member("ann");
    let avatar = b.inst.member(ann).unwrap().avatar().unwrap();
    let net_id = b.inst.sim().world().network_id(avatar).unwrap().0;
    let start = b.inst.sim().world().transform(avatar).unwrap().position;
    let target = Vec3::new(start.x + 1.0, start.y, start.z);
    for seq in 0..30u32 {
        let input = Input {
            owned: vec![OwnedUpdate {
                network_id: net_id,
                position: [target.x, target.y, target.z],
                rotation: [0.0, 0.0, 0.0, 1.0],
            }],
        };
        let bytes = Encoder::default()
            .encode(MessageKind::Input, seq + 1, 0, &input)
            .unwrap()
            .to_vec();
        b.with(|i, io| i.handle_message(ann, Channel::State, &bytes, io));
        b.advance(Duration::from_millis(17));
        b.with(|i, io| i.tick(io));
    }
    let moved = b.inst.sim().world().transform(avatar).unwrap().position;
    assert!((moved.x - target.x).abs() < 0.05, "{moved:?} → {target:?}");
    assert_eq!(b.metrics.inputs, 30);
}

#[test]
fn actions_are_relayed_cached_for_late_joiners_and_rate_limited() {
    let mut b = Bench::new(4);
    let (ann, ann_link) = b.member("ann");
    let (_, bob_link) = b.member("bob");
    b.out.take(ann_link);
    b.out.take(bob_link);
    let chat = Action {
        topic: "chat".into(),
        action_type: "chat.message".into(),
        target: Target::Everyone,
        cache: Cache::Keep,
        payload: b"hi".to_vec(),
    };
    for _ in 0..7 {
        b.message(ann, Channel::Actions, MessageKind::Action, 0, &chat);
    }
    // A burst of five (actions_per_second_max), the rest refused.
    assert_eq!(b.out.take(bob_link), [MessageKind::ActionBroadcast; 5]);
    assert!(b.out.take(ann_link).is_empty(), "not echoed to the sender");
    assert_eq!(b.metrics.refused_messages.get("action_rate"), Some(&2));
    let (_, cy_link) = b.member("cy");
    let welcome = b
        .out
        .frames
        .iter()
        .find(|f| f.0 == cy_link)
        .unwrap()
        .3
        .clone();
    match b.decoder.decode_server(&welcome, Channel::Actions).unwrap() {
        net::ServerMessage::Welcome(_, w) => assert_eq!(w.cached_actions.len(), 4),
        other => panic!("{other:?}"),
    }
}

#[test]
fn leaving_releases_ownership_and_tells_the_others() {
    let mut b = Bench::new(4);
    let (ann, ann_link) = b.member("ann");
    let (bob, bob_link) = b.member("bob");
    // Take a scene entity that physics does not move and nobody owns.
    let world = b.inst.sim().world();
    let (entity, id) = (0..world.len() as u32 * 4)
        .filter_map(|n| world.by_network_id(engine::NetworkId(n)).map(|e| (n, e)))
        .find(|(_, e)| {
            world.motion(*e) != Ok(engine::Motion::Physics)
                && !world.optional.avatars.contains(*e)
                && world.optional.owners.get(*e).is_none()
        })
        .expect("the scene has an entity a client may own");
    let take = OwnershipRequest {
        network_id: entity,
        op: OwnershipOp::Take,
    };
    b.message(
        ann,
        Channel::Actions,
        MessageKind::OwnershipRequest,
        0,
        &take,
    );
    let owner = |b: &Bench| b.inst.sim().world().optional.owners.get(id).map(|o| o.user);
    assert_eq!(owner(&b), Some(ann));
    b.out.take(ann_link);
    b.out.take(bob_link);
    let gone = b.with(|i, io| i.leave(ann, io)).unwrap();
    assert!(gone.joined);
    assert_eq!(
        b.out.take(bob_link),
        [MessageKind::PeerLeft, MessageKind::OwnershipChanged]
    );
    assert_eq!(owner(&b), None);
    assert!(b.inst.member(ann).is_none() && b.inst.member(bob).is_some());
}

#[test]
fn invalid_messages_past_the_limit_get_a_kick_and_a_removal() {
    let mut b = Bench::new(4);
    let (ann, ann_link) = b.member("ann");
    b.out.take(ann_link);
    for _ in 0..3 {
        b.with(|i, io| i.handle_message(ann, Channel::State, &[1, 2, 3], io));
    }
    assert_eq!(b.metrics.invalid_messages.get("truncated"), Some(&3));
    assert_eq!(b.out.take(ann_link), [MessageKind::Kick]);
    assert_eq!(
        b.removals,
        [Removal {
            user: ann,
            link: ann_link,
            reason: LeaveReason::ProtocolViolation
        }]
    );
    // Asked once: what it sends on its way out changes nothing.
    b.with(|i, io| i.handle_message(ann, Channel::State, &[1, 2, 3], io));
    assert_eq!(b.removals.len(), 1);
}

#[test]
fn a_backed_up_reliable_channel_is_removed_as_congested() {
    let mut b = Bench::new(4);
    let (ann, _) = b.member("ann");
    let (bob, bob_link) = b.member("bob");
    b.out.buffered.insert(bob_link, 64 * 1024 + 1);
    let chat = Action {
        topic: "chat".into(),
        action_type: "chat.message".into(),
        target: Target::Everyone,
        cache: Cache::No,
        payload: Vec::new(),
    };
    b.message(ann, Channel::Actions, MessageKind::Action, 0, &chat);
    assert_eq!(b.removals.len(), 1);
    assert_eq!(
        (b.removals[0].user, b.removals[0].reason),
        (bob, LeaveReason::Congested)
    );
}

#[test]
fn draining_warns_refuses_joins_then_expires() {
    let mut b = Bench::new(4);
    let (_, ann_link) = b.member("ann");
    b.out.take(ann_link);
    b.with(|i, io| i.drain(Duration::from_secs(2), io));
    assert_eq!(b.out.take(ann_link), [MessageKind::Draining]);
    assert_eq!(b.inst.can_join(), Err(JoinRefused::Draining));
    assert_eq!(b.inst.expired(b.now + Duration::from_secs(1)), None);
    assert_eq!(
        b.inst.expired(b.now + Duration::from_secs(2)),
        Some(EndReason::Drained)
    );
    b.with(|i, io| i.kick_all(KickReason::InstanceEnded, "bye", io));
    assert_eq!(b.out.take(ann_link), [MessageKind::Kick]);
    assert_eq!(b.removals[0].reason, LeaveReason::InstanceEnded);
}

#[test]
fn an_empty_instance_expires_after_its_empty_timeout() {
    let mut b = Bench::new(4);
    let start = b.now;
    assert_eq!(
        b.inst.expired(start + Duration::from_secs(5)),
        Some(EndReason::Empty)
    );
    let (ann, _) = b.member("ann");
    assert_eq!(b.inst.expired(start + Duration::from_secs(60)), None);
    b.advance(Duration::from_secs(10));
    b.with(|i, io| i.leave(ann, io));
    assert_eq!(b.inst.expired(b.now + Duration::from_secs(4)), None);
    assert_eq!(
        b.inst.expired(b.now + Duration::from_secs(5)),
        Some(EndReason::Empty)
    );
}

/// Network ids a snapshot frame carries an entry for, and those it tells
/// the client to drop (LEB128 id gaps; an entry whose baseline index is 7
/// has its baseline's age after its gap).
fn snapshot_entries(frame: &[u8]) -> (Vec<u32>, Vec<u32>) {
    let (_, kind, payload) = split_frame(frame).unwrap();
    assert_eq!(kind, MessageKind::Snapshot);
    let mut aligned = rkyv::util::AlignedVec::<16>::new();
    aligned.extend_from_slice(payload);
    let body =
        rkyv::access::<net::snapshot::ArchivedSnapshotBody, rkyv::rancor::Error>(&aligned).unwrap();
    // LEB128 values, in order.
    let varints = |bytes: &[u8]| {
        let (mut out, mut v, mut shift) = (Vec::new(), 0u32, 0);
        for &byte in bytes {
            v |= u32::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                out.push(v);
                (v, shift) = (0, 0);
            } else {
                shift += 7;
            }
        }
        out
    };
    let ids_section = varints(&body.ids);
    let mut values = ids_section.iter();
    let mut id = 0;
    let mut entries = Vec::new();
    for mask in body.masks.iter() {
        id += values.next().unwrap();
        entries.push(id);
        // Baseline index 7: the baseline's age follows the id gap.
        if mask >> 5 == 7 {
            values.next().unwrap();
        }
    }
    let removed = varints(&body.removed)
        .into_iter()
        .scan(0, |id, gap| {
            *id += gap;
            Some(*id)
        })
        .collect();
    (entries, removed)
}

#[test]
fn a_resting_avatar_costs_no_snapshot_bytes_once_it_settles() {
    let mut b = Bench::new(4);
    let (ann, _) = b.member("ann");
    let (bob, bob_link) = b.member("bob");
    let avatar = b.inst.member(ann).unwrap().avatar().unwrap();
    let net_id = b.inst.sim().world().network_id(avatar).unwrap().0;
    let start = b.inst.sim().world().transform(avatar).unwrap().position;
    let target = Vec3::new(start.x + 1.0, start.y, start.z - 0.5);
    let mut carried = Vec::new();
    for seq in 1..=90u32 {
        // Ann sends where she wants to stand every tick, as a client does,
        // long after she got there; Bob acknowledges every snapshot.
        let tick = b.inst.sim().world().tick().0;
        let input = Input {
            owned: vec![OwnedUpdate {
                network_id: net_id,
                position: [target.x, target.y, target.z],
                rotation: [0.0, 0.0, 0.0, 1.0],
            }],
        };
        let ack = Input { owned: Vec::new() };
        for (user, msg) in [(ann, &input), (bob, &ack)] {
            let bytes = Encoder::default()
                .encode(MessageKind::Input, seq, tick, msg)
                .unwrap()
                .to_vec();
            b.with(|i, io| i.handle_message(user, Channel::State, &bytes, io));
        }
        b.advance(Duration::from_millis(17));
        b.with(|i, io| i.tick(io));
        let frames: Vec<Vec<u8>> = b
            .out
            .frames
            .iter()
            .filter(|f| f.0 == bob_link && f.2 == MessageKind::Snapshot)
            .map(|f| f.3.clone())
            .collect();
        b.out.take(bob_link);
        for frame in frames {
            let (entries, removed) = snapshot_entries(&frame);
            assert!(!removed.contains(&net_id), "Ann stays in Bob's view");
            carried.push(entries.contains(&net_id));
        }
    }
    let p = b.inst.sim().world().transform(avatar).unwrap().position;
    assert_eq!(p, target, "Ann stands exactly on her target");
    assert!(
        carried.len() >= 80,
        "Bob got a snapshot a tick: {}",
        carried.len()
    );
    assert!(
        carried[1..10].iter().any(|&c| c),
        "after the first (full) snapshot, Bob saw Ann walk: {carried:?}"
    );
    let last = carried.len() - 60;
    assert!(
        carried[last..].iter().all(|&c| !c),
        "once she stands still her avatar takes no bytes in Bob's snapshots: {carried:?}"
    );
}

#[test]
fn snapshots_go_out_at_their_own_rate_while_physics_ticks_at_60_hz() {
    let mut b = Bench::with_snapshot_hz(4, 30);
    let (_, link) = b.member("ann");
    let welcome = b
        .out
        .frames
        .iter()
        .find(|f| f.0 == link && f.2 == MessageKind::Welcome)
        .map(|f| f.3.clone())
        .unwrap();
    let (_, kind, payload) = split_frame(&welcome).unwrap();
    assert_eq!(kind, MessageKind::Welcome);
    let mut aligned = rkyv::util::AlignedVec::<16>::new();
    aligned.extend_from_slice(payload);
    let w = rkyv::access::<net::messages::ArchivedWelcome, rkyv::rancor::Error>(&aligned).unwrap();
    assert_eq!((w.tick_hz.to_native(), w.snapshot_hz.to_native()), (60, 30));
    b.out.take(link);
    let snapshots = |b: &mut Bench| {
        let n = b
            .out
            .frames
            .iter()
            .filter(|f| f.0 == link && f.2 == MessageKind::Snapshot)
            .count();
        b.out.take(link);
        n
    };
    // One second, one tick at a time: 60 ticks, 30 snapshots on even ticks.
    let start = b.inst.sim().world().tick().0;
    let mut sent_on = Vec::new();
    for _ in 0..60 {
        b.advance(Duration::from_nanos(16_666_667));
        b.with(|i, io| i.tick(io));
        if snapshots(&mut b) == 1 {
            sent_on.push(b.inst.sim().world().tick().0);
        }
    }
    assert_eq!(b.inst.sim().world().tick().0 - start, 60);
    assert_eq!(sent_on.len(), 30, "{sent_on:?}");
    assert!(sent_on.iter().all(|t| t % 2 == 0), "{sent_on:?}");
    // A late call that runs several ticks at once sends one snapshot.
    b.advance(Duration::from_millis(60));
    b.with(|i, io| i.tick(io));
    assert!(b.inst.sim().world().tick().0 - start >= 62);
    assert_eq!(snapshots(&mut b), 1);
    // A rate that does not divide the tick rate is refused at creation.
    let spec = InstanceSpec {
        id: "odd".into(),
        kind: crate::commands::InstanceKind::World,
        location_id: "odd".into(),
        scene: std::sync::Arc::new(engine::PreparedScene::new(scene()).unwrap()),
        max_users: 4,
        snapshot_hz: 25,
        labels: BTreeMap::new(),
        empty_timeout: None,
    };
    let err = Instance::new(spec, config(), b.now).unwrap_err();
    assert!(err.to_string().contains("snapshot_hz 25"), "{err}");
}

#[test]
fn snapshot_rates_are_checked_against_the_tick_rate() {
    use crate::instance::{default_snapshot_hz, snapshot_hz_error};
    assert_eq!(snapshot_hz_error(30, 60), None);
    assert_eq!(snapshot_hz_error(10, 60), None);
    assert_eq!(snapshot_hz_error(45, 45), None, "the tick rate itself");
    assert!(
        snapshot_hz_error(25, 50)
            .unwrap()
            .contains("not the tick rate")
    );
    assert!(
        snapshot_hz_error(20, 30)
            .unwrap()
            .contains("does not divide")
    );
    assert!(snapshot_hz_error(10, 120).unwrap().contains("ticks apart"));
    assert_eq!(default_snapshot_hz(60), 30);
    assert_eq!(default_snapshot_hz(45), 45);
    assert_eq!(default_snapshot_hz(240), 240, "30 would be 8 ticks apart");
}

#[test]
fn a_member_heard_from_stays_and_a_silent_one_is_told_and_removed() {
    let mut b = Bench::new(4);
    let (ann, ann_link) = b.member("ann");
    let (bob, bob_link) = b.member("bob");
    // Eleven seconds of ticks: bob pings every second, ann says nothing.
    for t in 0..11 * 60 {
        if t == 9 * 60 {
            assert!(b.removals.is_empty(), "nobody is removed before 10 s");
        }
        b.advance(Duration::from_micros(16_667));
        b.with(|i, io| i.tick(io));
        if b.inst.sim().world().tick().0.is_multiple_of(60) {
            b.message(
                bob,
                Channel::State,
                MessageKind::Ping,
                0,
                &net::messages::Ping { client_time_us: 1 },
            );
        }
    }
    let kicks = b.decoded(ann_link, MessageKind::Kick, |m| match m {
        net::ServerMessage::Kick(_, k) => {
            rkyv::deserialize::<KickReason, rkyv::rancor::Error>(&k.reason).ok()
        }
        _ => None,
    });
    assert_eq!(kicks, [KickReason::Silent]);
    assert_eq!(
        b.removals,
        [Removal {
            user: ann,
            link: ann_link,
            reason: LeaveReason::Silent
        }]
    );
    assert!(
        b.decoded(bob_link, MessageKind::Kick, |_| Some(()))
            .is_empty()
    );
}

#[test]
fn a_joiner_is_told_the_names_of_the_scene_entities() {
    let mut b = Bench::new(4);
    let (_, link) = b.member("ann");
    let names: Vec<(u32, String)> = b
        .decoded(link, MessageKind::EntityNames, |m| match m {
            net::ServerMessage::EntityNames(_, n) => Some(
                n.entities
                    .iter()
                    .map(|e| (e.network_id.to_native(), e.name.as_str().to_owned()))
                    .collect::<Vec<_>>(),
            ),
            _ => None,
        })
        .concat();
    let expected: Vec<(u32, String)> = b
        .inst
        .sim()
        .scene_names()
        .map(|(id, name)| (id.0, name.to_owned()))
        .collect();
    assert!(!expected.is_empty(), "the demo scene names its entities");
    assert_eq!(names, expected);
    let world = b.inst.sim().world();
    for (id, _) in &names {
        let e = world.by_network_id(engine::NetworkId(*id)).unwrap();
        assert!(
            !world.optional.avatars.contains(e),
            "a name is never an avatar's"
        );
    }
}
