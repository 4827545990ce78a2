//! The shard's behaviour on a virtual clock and an in-memory network with
//! loss, delay and reordering (see `instanceserver::harness`). A failure
//! prints the seed that replays it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use instanceserver::config::Config;
use instanceserver::harness::{Harness, Network};
use net::Channel;
use net::client::{ClientEvent, owned_update};
use net::messages::{Action, Cache, KickReason, OwnershipOp, OwnershipRefusal, Target};
use state::commands::{Command, EndReason, Event, JoinRefused, JoinRequest, LeaveReason, Topics};

fn joined(h: &Harness, client: usize) -> bool {
    h.client(client).welcome().is_some() && h.client(client).latest_tick().is_some()
}

/// Joins `users` to "room" and runs until each has its welcome and a snapshot.
fn join_all(h: &mut Harness, users: &[&str]) -> Vec<usize> {
    let clients: Vec<usize> = users.iter().map(|u| h.join("room", u).unwrap()).collect();
    let all_in = h.run_until(Duration::from_secs(5), |h| {
        clients.iter().all(|&c| joined(h, c))
    });
    assert!(all_in, "{users:?} did not all join");
    clients
}

fn left(h: &Harness, reason: LeaveReason) -> usize {
    h.events
        .iter()
        .filter(|e| matches!(e, Event::SessionLeft { reason: r, .. } if *r == reason))
        .count()
}

#[test]
fn clients_join_and_play_over_a_lossy_reordering_network() {
    // DTLS retransmits a lost flight after 1, 2, 4, 8 s...: at 5% loss a
    // handshake now and then needs longer than the default connect timeout.
    let mut config = Config::default();
    config.webrtc.connect_timeout_ms = 40_000;
    let mut h = Harness::new(config, Network::lossy(), 1);
    h.create_instance("room", 8);
    let clients: Vec<usize> = (0..4)
        .map(|i| h.join("room", &format!("user{i}")).unwrap())
        .collect();
    assert!(
        h.run_until(Duration::from_secs(40), |h| clients
            .iter()
            .all(|&c| joined(h, c))),
        "not everyone joined over the lossy network: joined {:?}, connect failures {}",
        clients.iter().map(|&c| joined(&h, c)).collect::<Vec<_>>(),
        left(&h, LeaveReason::ConnectFailed)
    );
    // Client 0 walks 4 m; client 1 sees it arrive despite loss and reordering.
    let avatar = h.client(0).welcome().unwrap().avatar;
    // The first snapshots fill the view within the byte budget; wait for the avatar.
    assert!(h.run_until(Duration::from_secs(10), |h| {
        h.client(1).position_of(avatar).is_some()
    }));
    let start = h.client(1).position_of(avatar).unwrap();
    let target = engine::Vec3::new(start.x + 4.0, start.y, start.z);
    let arrived = h.run_until(Duration::from_secs(5), |h| {
        h.client(1)
            .position_of(avatar)
            .is_some_and(|p| (p.x - target.x).abs() < 0.05 && (p.z - target.z).abs() < 0.05)
    });
    assert!(!arrived, "nothing was sent yet, so nothing should move");
    for _ in 0..60 {
        let now = h.now();
        h.client_mut(0)
            .send_input(vec![owned_update(avatar, target)], now)
            .unwrap();
        h.run_for(Duration::from_millis(17));
    }
    let arrived = h.run_until(Duration::from_secs(10), |h| {
        h.client(1)
            .position_of(avatar)
            .is_some_and(|p| (p.x - target.x).abs() < 0.05 && (p.z - target.z).abs() < 0.05)
    });
    let seen = h.client(1).position_of(avatar);
    assert!(
        arrived,
        "client 1 sees {seen:?}, expected {target:?}; shard {:?}",
        h.shard.metrics()
    );
    let (delivered, dropped) = h.network_counts();
    assert!(
        dropped > 0 && delivered > 1000,
        "delivered {delivered} dropped {dropped}"
    );
    let joins = h
        .events
        .iter()
        .filter(|e| matches!(e, Event::SessionJoined { .. }))
        .count();
    assert_eq!(joins, 4);
}

#[test]
fn a_client_that_falls_silent_is_removed_after_the_idle_timeout_and_the_others_are_told() {
    let mut config = Config::default();
    config.webrtc.idle_timeout_ms = 3_000;
    let mut h = Harness::new(config, Network::perfect(), 2);
    h.create_instance("room", 8);
    let (a, b) = (
        h.join("room", "ann").unwrap(),
        h.join("room", "bob").unwrap(),
    );
    assert!(h.run_until(Duration::from_secs(5), |h| joined(h, a) && joined(h, b)));
    let ann_index = h.client(a).welcome().unwrap().user_index;
    h.clients[a].stopped = true;
    let silent_at = h.elapsed();
    assert!(
        h.run_until(Duration::from_secs(10), |h| left(h, LeaveReason::TimedOut)
            == 1)
    );
    let after = h.elapsed() - silent_at;
    assert!(
        after >= Duration::from_secs(3) && after < Duration::from_secs(4),
        "removed after {after:?}"
    );
    h.run_for(Duration::from_millis(100));
    assert!(
        h.clients[b]
            .events
            .iter()
            .any(|e| matches!(e, ClientEvent::PeerLeft { user_index } if *user_index == ann_index))
    );
    assert_eq!(h.shard.peers_len(), 1);
}

#[test]
fn a_peer_that_never_connects_is_removed_after_the_connect_timeout() {
    let mut config = Config::default();
    config.webrtc.connect_timeout_ms = 2_000;
    let mut h = Harness::new(config, Network::perfect(), 3);
    h.create_instance("room", 8);
    let c = h.join("room", "ghost").unwrap();
    h.clients[c].stopped = true;
    assert!(h.run_until(Duration::from_secs(5), |h| left(
        h,
        LeaveReason::ConnectFailed
    ) == 1));
    assert_eq!(h.shard.peers_len(), 0);
    assert!(
        !h.events
            .iter()
            .any(|e| matches!(e, Event::SessionJoined { .. }))
    );
}

#[test]
fn an_empty_instance_ends_after_its_empty_timeout() {
    let mut config = Config::default();
    config.instance.empty_timeout_ms = 5_000;
    let mut h = Harness::new(config, Network::perfect(), 4);
    h.create_instance("room", 8);
    let c = h.join("room", "ann").unwrap();
    assert!(h.run_until(Duration::from_secs(5), |h| joined(h, c)));
    let session = h.clients[c].session_id;
    h.command(Command::Leave { session });
    let left_at = h.elapsed();
    let ended = |h: &Harness| {
        h.events.iter().any(|e| {
            matches!(
                e,
                Event::InstanceEnded {
                    reason: EndReason::Empty,
                    ..
                }
            )
        })
    };
    assert!(h.run_until(Duration::from_secs(10), ended));
    let after = h.elapsed() - left_at;
    assert!(
        after >= Duration::from_secs(5) && after < Duration::from_millis(5_100),
        "ended after {after:?}"
    );
    assert_eq!(h.shard.instances_len(), 0);
}

#[test]
fn a_peer_sending_garbage_is_kicked_after_the_invalid_message_limit() {
    let mut config = Config::default();
    config.instance.invalid_messages_max = 5;
    let mut h = Harness::new(config, Network::perfect(), 5);
    h.create_instance("room", 8);
    let c = h.join("room", "mallory").unwrap();
    assert!(h.run_until(Duration::from_secs(5), |h| joined(h, c)));
    for i in 0..6u8 {
        let now = h.now();
        h.client_mut(c)
            .send_raw(Channel::Actions, &[1, 2, 3, i], now)
            .unwrap();
        h.run_for(Duration::from_millis(20));
    }
    assert!(h.run_until(Duration::from_secs(2), |h| left(
        h,
        LeaveReason::ProtocolViolation
    ) == 1));
    h.run_for(Duration::from_millis(200));
    assert!(
        h.clients[c].events.iter().any(|e| matches!(
            e,
            ClientEvent::Kicked {
                reason: KickReason::ProtocolViolation,
                ..
            }
        )),
        "{:?}",
        h.clients[c].events.iter().rev().take(5).collect::<Vec<_>>()
    );
    let m = h.shard.metrics();
    assert_eq!(m.invalid_messages.get("truncated"), Some(&6));
}

#[test]
fn draining_tells_clients_then_ends_their_instance_after_the_grace() {
    let mut h = Harness::new(Config::default(), Network::perfect(), 6);
    h.create_instance("room", 8);
    let c = h.join("room", "ann").unwrap();
    assert!(h.run_until(Duration::from_secs(5), |h| joined(h, c)));
    h.command(Command::Drain {
        grace: Duration::from_secs(2),
    });
    h.run_for(Duration::from_millis(100));
    assert!(
        h.clients[c]
            .events
            .iter()
            .any(|e| matches!(e, ClientEvent::Draining { grace_ms: 2000 }))
    );
    assert!(h.shard.instances_len() == 1, "ended before the grace");
    let ended = |h: &Harness| {
        h.events.iter().any(|e| {
            matches!(
                e,
                Event::InstanceEnded {
                    reason: EndReason::Drained,
                    ..
                }
            )
        })
    };
    assert!(h.run_until(Duration::from_secs(3), ended));
    h.run_for(Duration::from_millis(100));
    assert!(h.clients[c].events.iter().any(|e| matches!(
        e,
        ClientEvent::Kicked {
            reason: KickReason::InstanceEnded,
            ..
        }
    )));
}

#[test]
fn a_shard_whose_ticks_run_late_for_seconds_reports_a_stall() {
    let mut config = Config::default();
    config.shard.stall_report_ms = 1_000;
    let mut h = Harness::new(config, Network::perfect(), 7);
    h.create_instance("room", 8);
    // Someone in it, so it keeps ticking (an empty one at rest sleeps).
    join_all(&mut h, &["alice"]);
    h.run_for(Duration::from_millis(500));
    let stalled = |h: &Harness| h.events.iter().any(|e| matches!(e, Event::Stalled { .. }));
    assert!(!stalled(&h));
    // The shard only gets the CPU every 100 ms: six ticks late each time.
    h.run_coarsely(Duration::from_millis(1_500), Duration::from_millis(100));
    assert!(stalled(&h), "no stall reported");
    assert_eq!(h.shard.metrics().stalls, 1, "one report per episode");
    assert!(h.shard.metrics().skipped_ticks > 0);
}

#[test]
fn an_empty_instance_at_rest_sleeps_until_someone_joins() {
    let mut config = Config::default();
    config.instance.empty_timeout_ms = 600_000;
    let mut h = Harness::new(config, Network::perfect(), 9);
    // The demo scene's boxes fall and settle first: it ticks until they sleep.
    h.create_instance("room", 8);
    h.run_for(Duration::from_millis(200));
    let tick = |h: &mut Harness| h.shard.instance_mut("room").unwrap().sim().world().tick().0;
    assert!(!h.shard.instance_mut("room").unwrap().is_asleep());
    assert!(
        h.run_until(Duration::from_secs(30), |h| h
            .shard
            .metrics()
            .instances_asleep
            == 1),
        "the demo world never came to rest"
    );
    let asleep_at = tick(&mut h);
    h.run_for(Duration::from_secs(10));
    assert_eq!(tick(&mut h), asleep_at, "a sleeping instance ticked");
    assert_eq!(h.shard.metrics().instances, 1);

    // A join wakes it: the client gets its welcome and snapshots.
    join_all(&mut h, &["alice"]);
    let woke_at = tick(&mut h);
    assert!(woke_at > asleep_at);
    h.run_for(Duration::from_secs(1));
    // 60 Hz from the wake-up on, none of the sleep caught up.
    let ran = tick(&mut h) - woke_at;
    assert!((55..=65).contains(&ran), "{ran} ticks in a second awake");

    // Alone again (kicked), it goes back to sleep once the world rests.
    h.command(Command::Kick {
        instance_id: "room".into(),
        user_id: "alice".into(),
        banned: false,
        message: "bye".into(),
    });
    assert!(
        h.run_until(Duration::from_secs(30), |h| h
            .shard
            .metrics()
            .instances_asleep
            == 1),
        "it did not sleep again after its last member left"
    );
}

/// Runs `d` of virtual time with the shard reporting `share` of its core
/// every 250 ms (as its shell does); returns the snapshots client `c` got.
fn run_loaded(h: &mut Harness, c: usize, share: f32, d: Duration) -> usize {
    let before = snapshots(h, c);
    let end = h.elapsed() + d;
    while h.elapsed() < end {
        h.run_for(Duration::from_millis(250));
        let now = h.now();
        h.shard.observe_load(share, now);
    }
    snapshots(h, c) - before
}

fn snapshots(h: &Harness, c: usize) -> usize {
    h.clients[c]
        .events
        .iter()
        .filter(|e| matches!(e, ClientEvent::Snapshot { .. }))
        .count()
}

#[test]
fn an_overloaded_shard_refuses_joins_and_slows_snapshots_until_it_recovers() {
    let mut config = Config::default();
    config.instance.snapshot_hz = Some(60);
    let mut h = Harness::new(config, Network::perfect(), 10);
    h.create_instance("room", 8);
    let c = join_all(&mut h, &["alice"])[0];
    let second = Duration::from_secs(1);
    // 60 Hz ticks, a snapshot each.
    let calm = run_loaded(&mut h, c, 0.3, second);
    assert!(
        (55..=61).contains(&calm),
        "{calm} snapshots in a calm second"
    );

    // Over the join limit (85%) and the degrade share (95%) for seconds:
    // after 2 s there, a step a second.
    run_loaded(&mut h, c, 0.97, Duration::from_secs(6));
    let m = h.shard.metrics();
    assert_eq!(m.load_percent, 97);
    assert_eq!(m.snapshot_divisor, 4, "one step a second up to the maximum");
    let busy = h.join("room", "bob");
    assert!(
        matches!(busy, Err(JoinRefused::Busy { load_percent: 97 })),
        "{busy:?}"
    );
    assert_eq!(h.shard.metrics().joins_refused_busy, 1);
    let loaded = run_loaded(&mut h, c, 0.97, second);
    assert!(
        (14..=16).contains(&loaded),
        "{loaded} snapshots in a loaded second"
    );
    // The joined client still moves and is still served: nothing else broke.
    assert!(joined(&h, c));

    // Calm again: the rate climbs back a step a second, joins are admitted.
    run_loaded(&mut h, c, 0.2, Duration::from_secs(5));
    assert_eq!(h.shard.metrics().snapshot_divisor, 1);
    let calm = run_loaded(&mut h, c, 0.2, second);
    assert!(
        (55..=61).contains(&calm),
        "{calm} snapshots after recovering"
    );
    join_all(&mut h, &["bob"]);
}

#[test]
fn a_late_shard_shedding_load_still_serves_every_member() {
    let mut config = Config::default();
    config.shard.overload_snapshot_divisor_max = 2;
    let mut h = Harness::new(config, Network::perfect(), 11);
    h.create_instance("room", 8);
    let clients = join_all(&mut h, &["alice", "bob"]);
    run_loaded(&mut h, clients[0], 0.97, Duration::from_secs(4));
    assert_eq!(h.shard.metrics().snapshot_divisor, 2);
    // The shard gets the CPU every two ticks: each call runs two ticks, so
    // pacing by tick number would starve one of the two users.
    let before: Vec<usize> = clients.iter().map(|&c| snapshots(&h, c)).collect();
    for _ in 0..60 {
        h.run_coarsely(Duration::from_micros(33_334), Duration::from_micros(33_334));
        let now = h.now();
        h.shard.observe_load(0.97, now);
    }
    for (i, &c) in clients.iter().enumerate() {
        let got = snapshots(&h, c) - before[i];
        // 60 rounds in 2 s, every other one for each user.
        assert!((25..=35).contains(&got), "client {c}: {got} snapshots");
    }
}

#[test]
fn draining_ends_an_empty_instance_at_once() {
    let mut h = Harness::new(Config::default(), Network::perfect(), 8);
    h.create_instance("room", 8);
    h.run_for(Duration::from_millis(100));
    h.command(Command::Drain {
        grace: Duration::from_secs(10),
    });
    assert_eq!(h.shard.instances_len(), 0);
    assert!(h.events.iter().any(|e| matches!(
        e,
        Event::InstanceEnded {
            reason: EndReason::Drained,
            ..
        }
    )));
}

#[test]
fn a_faulty_instance_ends_alone() {
    use state::instance::Fault;
    let mut h = Harness::new(Config::default(), Network::perfect(), 9);
    h.create_instance("a", 8);
    h.create_instance("b", 8);
    h.create_instance("c", 8);
    let ann = h.join("a", "ann").unwrap();
    let bob = h.join("b", "bob").unwrap();
    let cy = h.join("c", "cy").unwrap();
    assert!(h.run_until(Duration::from_secs(10), |h| {
        [ann, bob, cy].iter().all(|&c| joined(h, c))
    }));
    let failed = |h: &Harness, id: &str| {
        h.events.iter().any(|e| {
            matches!(e, Event::InstanceEnded { instance_id, reason: EndReason::Failed(_), .. }
                if instance_id == id)
        })
    };
    let kicked = |h: &Harness, c: usize| {
        h.clients[c].events.iter().any(|e| {
            matches!(
                e,
                ClientEvent::Kicked {
                    reason: KickReason::ServerError,
                    ..
                }
            )
        })
    };

    // A bug in a's tick.
    h.shard.instance_mut("a").unwrap().inject_fault(Fault::Tick);
    assert!(h.run_until(Duration::from_secs(1), |h| failed(h, "a")));
    h.run_for(Duration::from_millis(200));
    assert!(kicked(&h, ann), "{:?}", h.clients[ann].events.last());
    assert_eq!(
        left(&h, LeaveReason::InstanceEnded),
        1,
        "ann's seat is given back"
    );

    // A bug in b's message handling.
    h.shard
        .instance_mut("b")
        .unwrap()
        .inject_fault(Fault::Message);
    let now = h.now();
    h.client_mut(bob).send_input(Vec::new(), now).unwrap();
    assert!(h.run_until(Duration::from_secs(1), |h| failed(h, "b")));
    h.run_for(Duration::from_millis(200));
    assert!(kicked(&h, bob));
    assert_eq!(left(&h, LeaveReason::InstanceEnded), 2);

    // c and the shard go on.
    assert_eq!(h.shard.instances_len(), 1);
    assert_eq!(h.shard.peers_len(), 1);
    let before = h.client(cy).latest_tick().unwrap();
    h.run_for(Duration::from_millis(500));
    assert!(h.client(cy).latest_tick().unwrap() >= before + 20);
    assert!(!kicked(&h, cy));
    assert!(h.join("c", "dee").is_ok());
}

/// Why client `c` was kicked, each time it was.
fn kicks(h: &Harness, c: usize) -> Vec<KickReason> {
    seen(h, c, |e| match e {
        ClientEvent::Kicked { reason, .. } => Some(*reason),
        _ => None,
    })
}

/// Every event client `c` has seen so far that `pick` picks.
fn seen<T>(h: &Harness, c: usize, pick: impl Fn(&ClientEvent) -> Option<T>) -> Vec<T> {
    h.clients[c].events.iter().filter_map(pick).collect()
}

#[test]
fn actions_go_by_topic_and_target_with_the_real_sender_and_cached_ones_reach_late_joiners() {
    // DTLS retransmits a lost flight after 1, 2, 4, 8 s: at 5% loss a
    // handshake now and then needs longer than the default connect timeout.
    let mut config = Config::default();
    config.webrtc.connect_timeout_ms = 40_000;
    let mut h = Harness::new(config, Network::lossy(), 11);
    h.create_instance("room", 8);
    let ann = h.join("room", "ann").unwrap();
    let bob = h
        .join_with("room", "bob", Topics::parse("chat").unwrap())
        .unwrap();
    assert!(h.run_until(Duration::from_secs(40), |h| joined(h, ann)
        && joined(h, bob)));
    let bob_index = h.client(bob).welcome().unwrap().user_index;
    let ann_index = h.client(ann).welcome().unwrap().user_index;
    let now = h.now();
    let send = |h: &mut Harness, topic: &str, kind: &str, target: Target, cache: Cache| {
        let a = Action {
            topic: topic.into(),
            action_type: kind.into(),
            target,
            cache,
            payload: kind.as_bytes().to_vec(),
        };
        h.client_mut(ann).send_action(&a, now).unwrap();
    };
    send(&mut h, "world", "door.open", Target::Everyone, Cache::Keep);
    send(
        &mut h,
        "chat",
        "chat.message",
        Target::Everyone,
        Cache::Keep,
    );
    send(
        &mut h,
        "chat",
        "chat.whisper",
        Target::User(bob_index),
        Cache::No,
    );
    send(
        &mut h,
        "world",
        "avatar.model",
        Target::Everyone,
        Cache::ReplaceOwn,
    );
    send(
        &mut h,
        "world",
        "avatar.model",
        Target::Everyone,
        Cache::ReplaceOwn,
    );
    let actions = |h: &Harness, c| {
        seen(h, c, |e| match e {
            ClientEvent::Action(a) => Some((a.sender, a.action_type.clone())),
            _ => None,
        })
    };
    assert!(h.run_until(Duration::from_secs(40), |h| actions(h, bob).len() >= 2));
    h.run_for(Duration::from_millis(500));
    assert_eq!(
        actions(&h, bob),
        [
            (ann_index, "chat.message".to_string()),
            (ann_index, "chat.whisper".to_string())
        ],
        "bob hears the chat topic only, the sender stamped by the server"
    );
    assert!(actions(&h, ann).is_empty(), "nothing echoed to the sender");
    // A late joiner on every topic gets the cached ones, the replaced model
    // once; one on `chat` gets the chat line only.
    let cy = h.join("room", "cy").unwrap();
    let dee = h
        .join_with("room", "dee", Topics::parse("chat").unwrap())
        .unwrap();
    assert!(h.run_until(Duration::from_secs(40), |h| joined(h, cy) && joined(h, dee)));
    let cached = |h: &Harness, c| -> Vec<String> {
        h.client(c)
            .welcome()
            .unwrap()
            .cached_actions
            .iter()
            .map(|a| a.action_type.clone())
            .collect()
    };
    assert_eq!(
        cached(&h, cy),
        ["door.open", "chat.message", "avatar.model"]
    );
    assert_eq!(cached(&h, dee), ["chat.message"]);
}

#[test]
fn a_late_joiner_learns_which_network_ids_are_avatars_and_whose() {
    let mut h = Harness::new(Config::default(), Network::perfect(), 12);
    h.create_instance("room", 8);
    let clients = join_all(&mut h, &["ann", "bob"]);
    let avatars: Vec<(u32, u32)> = clients
        .iter()
        .map(|&c| {
            let w = h.client(c).welcome().unwrap();
            (w.user_index, w.avatar)
        })
        .collect();
    let cy = h.join("room", "cy").unwrap();
    assert!(h.run_until(Duration::from_secs(5), |h| {
        joined(h, cy)
            && seen(h, cy, |e| {
                matches!(e, ClientEvent::PeerJoined { .. }).then_some(())
            })
            .len()
                == 2
    }));
    let mut told = seen(&h, cy, |e| match e {
        ClientEvent::PeerJoined {
            user_index, avatar, ..
        } => Some((*user_index, *avatar)),
        _ => None,
    });
    told.sort();
    assert_eq!(told, avatars);
    // Those ids are in its snapshots: it can tell avatars from the rest,
    // and the rest are scene objects it knows by name.
    assert!(h.run_until(Duration::from_secs(5), |h| {
        avatars
            .iter()
            .all(|&(_, a)| h.client(cy).position_of(a).is_some())
    }));
    let ids: Vec<u32> = h
        .client(cy)
        .entities()
        .unwrap()
        .iter()
        .map(|e| e.id)
        .collect();
    let others: Vec<u32> = ids
        .iter()
        .copied()
        .filter(|id| avatars.iter().all(|&(_, a)| a != *id))
        .filter(|&id| id != h.client(cy).welcome().unwrap().avatar)
        .collect();
    assert!(!others.is_empty(), "the demo scene's boxes are in view");
    for id in others {
        assert!(
            h.client(cy).scene_name(id).is_some(),
            "entity {id} in view is neither an avatar nor a named scene object"
        );
    }
}

#[test]
fn authority_is_granted_refused_transferred_and_returned_when_the_owner_leaves() {
    let mut h = Harness::new(Config::default(), Network::perfect(), 13);
    h.create_instance("room", 8);
    let c = join_all(&mut h, &["ann", "bob"]);
    let (ann, bob) = (c[0], c[1]);
    let (ann_index, bob_index) = (
        h.client(ann).welcome().unwrap().user_index,
        h.client(bob).welcome().unwrap().user_index,
    );
    let avatars = [
        h.client(ann).welcome().unwrap().avatar,
        h.client(bob).welcome().unwrap().avatar,
    ];
    // A box of the demo scene: a dynamic body, in ann's view.
    let world = h.shard.instance_mut("room").unwrap().sim().world();
    let boxes: Vec<u32> = world
        .optional
        .bodies
        .iter()
        .filter(|(_, l)| l.kind == engine::BodyKind::Dynamic)
        .filter_map(|(e, _)| world.network_id(e).ok().map(|n| n.0))
        .collect();
    let prop = h
        .client(ann)
        .entities()
        .unwrap()
        .iter()
        .map(|e| e.id)
        .find(|id| boxes.contains(id) && !avatars.contains(id))
        .expect("the demo scene has boxes in view");
    let held = |h: &mut Harness| {
        let world = h.shard.instance_mut("room").unwrap().sim().world();
        let e = world.by_network_id(engine::NetworkId(prop)).unwrap();
        world.optional.owners.get(e).map(|o| o.user.0)
    };
    let changes = |h: &Harness, c| {
        seen(h, c, |e| match e {
            ClientEvent::OwnershipChanged { network_id, owner } if *network_id == prop => {
                Some(*owner)
            }
            _ => None,
        })
    };
    let now = h.now();
    h.client_mut(ann)
        .request_ownership(prop, OwnershipOp::Take, now)
        .unwrap();
    assert!(h.run_until(Duration::from_secs(5), |h| changes(h, bob)
        == [Some(ann_index)]));
    assert_eq!(held(&mut h), Some(ann_index));
    let now = h.now();
    h.client_mut(bob)
        .request_ownership(prop, OwnershipOp::Take, now)
        .unwrap();
    let asked = |h: &Harness| {
        seen(h, ann, |e| match e {
            ClientEvent::OwnershipRequested { network_id, by } if *network_id == prop => Some(*by),
            _ => None,
        })
    };
    let refused = |h: &Harness| {
        seen(h, bob, |e| match e {
            ClientEvent::OwnershipRefused { reason, .. } => Some(*reason),
            _ => None,
        })
    };
    assert!(h.run_until(Duration::from_secs(5), |h| {
        !asked(h).is_empty() && !refused(h).is_empty()
    }));
    assert_eq!(asked(&h), [bob_index], "ann is asked to hand it over");
    assert_eq!(refused(&h), [OwnershipRefusal::OwnedBy(ann_index)]);
    // Ann hands it over; then bob leaves and it returns to the server.
    let now = h.now();
    h.client_mut(ann)
        .request_ownership(prop, OwnershipOp::Transfer { to: bob_index }, now)
        .unwrap();
    assert!(h.run_until(Duration::from_secs(5), |h| changes(h, ann).len() == 2));
    assert_eq!(changes(&h, ann)[1], Some(bob_index));
    let now = h.now();
    h.client_mut(bob).close(now);
    let gone = h.run_until(Duration::from_secs(5), |h| changes(h, ann).len() == 3);
    assert!(gone, "{:?} {:?}", changes(&h, ann), h.events);
    assert_eq!(changes(&h, ann)[2], None);
    assert_eq!(held(&mut h), None);
}

#[test]
fn a_user_who_joins_twice_replaces_the_older_session() {
    let mut h = Harness::new(Config::default(), Network::perfect(), 14);
    h.create_instance("room", 2);
    let c = join_all(&mut h, &["ann", "bob"]);
    // A second join that fails (an offer that does not parse) leaves the
    // first session alone.
    let (tx, mut rx) = tokio::sync::oneshot::channel();
    h.command(Command::Join(JoinRequest {
        instance_id: "room".into(),
        session: 999,
        user_id: "ann".into(),
        name: "ann".into(),
        topics: Topics::All,
        offer_sdp: "v=0\r\nnot an offer".into(),
        reply: tx,
    }));
    assert!(matches!(rx.try_recv(), Ok(Err(JoinRefused::BadOffer(_)))));
    h.run_for(Duration::from_millis(500));
    assert_eq!(left(&h, LeaveReason::Replaced), 0);
    assert!(!h.client(c[0]).is_closed());
    // The instance is full, but ann's second session takes her first one's seat.
    let again = h.join("room", "ann").unwrap();
    assert!(h.run_until(Duration::from_secs(5), |h| joined(h, again)));
    assert_eq!(kicks(&h, c[0]), [KickReason::Replaced]);
    assert_eq!(left(&h, LeaveReason::Replaced), 1);
    let bob_heard: Vec<_> = seen(&h, c[1], |e| match e {
        ClientEvent::PeerLeft { user_index } => Some(("left", *user_index)),
        ClientEvent::PeerJoined { user_index, .. } => Some(("joined", *user_index)),
        _ => None,
    });
    let old = h.client(c[0]).welcome().unwrap().user_index;
    let new = h.client(again).welcome().unwrap().user_index;
    assert_ne!(old, new, "a new session, a new peer index");
    assert!(
        bob_heard.ends_with(&[("left", old), ("joined", new)]),
        "{bob_heard:?}"
    );
}

#[test]
fn a_client_that_stops_sending_messages_is_removed_though_its_transport_lives() {
    let mut h = Harness::new(Config::default(), Network::perfect(), 15);
    h.create_instance("room", 8);
    let c = join_all(&mut h, &["ann", "bob"]);
    // Neither acknowledges snapshots any more; ann's application is frozen
    // (no heartbeat), bob's client still sends its ping a second.
    let an_hour = Duration::from_secs(3600);
    h.client_mut(c[0]).set_ack_delay(an_hour);
    h.client_mut(c[0]).set_heartbeat(None);
    h.client_mut(c[1]).set_ack_delay(an_hour);
    h.run_for(Duration::from_secs(12));
    assert_eq!(kicks(&h, c[0]), [KickReason::Silent]);
    assert_eq!(left(&h, LeaveReason::Silent), 1);
    assert!(kicks(&h, c[1]).is_empty(), "bob's heartbeat keeps him in");
    assert!(!h.client(c[1]).is_closed());
}

#[test]
fn a_media_instance_relays_actions_between_members_and_never_ticks() {
    let mut h = Harness::new(Config::default(), Network::perfect(), 16);
    h.create_media_instance("party", 8);
    let (ann, bob) = (
        h.join("party", "ann").unwrap(),
        h.join("party", "bob").unwrap(),
    );
    assert!(h.run_until(Duration::from_secs(5), |h| {
        h.client(ann).welcome().is_some() && h.client(bob).welcome().is_some()
    }));
    let w = h.client(ann).welcome().unwrap().clone();
    assert_eq!(w.avatar, 0, "no avatar in a media instance");
    let now = h.now();
    let mute = Action {
        topic: "presence".into(),
        action_type: "presence.mute".into(),
        target: Target::Everyone,
        cache: Cache::ReplaceOwn,
        payload: b"{\"audio\":true}".to_vec(),
    };
    h.client_mut(ann).send_action(&mute, now).unwrap();
    let heard = |h: &Harness| {
        seen(h, bob, |e| match e {
            ClientEvent::Action(a) => Some((a.sender, a.action_type.clone())),
            _ => None,
        })
    };
    assert!(h.run_until(Duration::from_secs(5), |h| !heard(h).is_empty()));
    assert_eq!(heard(&h), [(w.user_index, "presence.mute".to_string())]);
    h.run_for(Duration::from_secs(2));
    // Seconds later: not one tick, no snapshot, no physics.
    assert!(h.client(bob).latest_tick().is_none(), "no snapshot");
    let party = h.shard.instance_mut("party").unwrap();
    assert!(party.is_asleep());
    assert_eq!(party.sim().world().tick().0, 0);
    assert!(party.sim().physics().is_none());
    assert_eq!(party.members().len(), 2);
    assert_eq!(h.shard.metrics().ticks, 0);
    // A member that falls silent is removed all the same.
    h.client_mut(bob).set_heartbeat(None);
    h.run_for(Duration::from_secs(12));
    assert_eq!(kicks(&h, bob), [KickReason::Silent]);
    assert!(
        seen(&h, ann, |e| matches!(e, ClientEvent::Kicked { .. })
            .then_some(()))
        .is_empty()
    );
    assert_eq!(h.shard.metrics().ticks, 0, "still not one tick");
}
