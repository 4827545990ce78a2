#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Interop: a client on an independent WebRTC stack (webrtc-rs, built on the
//! sans-IO `rtc` crate) joins a real node over HTTP signaling, completes ICE
//! (against the server's ICE-lite agent), DTLS and SCTP, opens both protocol
//! channels, receives the `Welcome` and applies snapshots, acknowledging them
//! with `Input` frames as docs/protocol.md asks.

mod support;

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use net::client::{dev_token, http_request};
use net::messages::Input;
use net::snapshot::{ArchivedSnapshotBody, SnapshotReceiver};
use net::{Channel, Decoder, Encoder, MessageKind, ServerMessage};
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, timeout, timeout_at};
use webrtc::data_channel::{DataChannel, DataChannelEvent, RTCDataChannelInit};
use webrtc::peer_connection::{
    PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCConfigurationBuilder,
    RTCIceGatheringState, RTCPeerConnectionState, RTCSessionDescription,
};

/// The whole test, closing included; every await falls under it.
const TEST_BUDGET: Duration = Duration::from_secs(20);
/// From starting the node to the last snapshot: the waits that report what
/// they were waiting for when they time out.
const JOIN_BUDGET: Duration = Duration::from_secs(18);
/// Snapshots the client must apply before the test is satisfied.
const SNAPSHOTS_MIN: usize = 10;
/// Data channel events queued between the forwarding tasks and the test.
const EVENTS_QUEUED_MAX: usize = 1024;
/// Views the client keeps and entities per view (as `net::client`).
const HISTORY_LEN: usize = 32;
const ENTITIES_MAX: usize = 4096;

/// Publishes the peer connection's gathering and connection states.
///
/// `PeerConnectionEventHandler` is an `async_trait` trait; this crate does
/// not depend on `async-trait`, so the two callbacks are written out in the
/// form that macro expands to.
#[derive(Debug)]
struct Handler {
    gathering: watch::Sender<RTCIceGatheringState>,
    connection: watch::Sender<RTCPeerConnectionState>,
}

impl PeerConnectionEventHandler for Handler {
    fn on_ice_gathering_state_change<'life0, 'async_trait>(
        &'life0 self,
        state: RTCIceGatheringState,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + 'async_trait>>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        self.gathering.send_replace(state);
        Box::pin(async {})
    }

    fn on_connection_state_change<'life0, 'async_trait>(
        &'life0 self,
        state: RTCPeerConnectionState,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + 'async_trait>>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        self.connection.send_replace(state);
        Box::pin(async {})
    }
}

/// Moves one channel's events onto the shared queue until the channel ends.
fn forward(
    channel: Channel,
    dc: Arc<dyn DataChannel>,
    tx: mpsc::Sender<(Channel, DataChannelEvent)>,
) {
    tokio::spawn(async move {
        while let Some(event) = dc.poll().await {
            if tx.send((channel, event)).await.is_err() {
                return;
            }
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webrtc_rs_client_joins_gets_welcomed_and_applies_snapshots() {
    timeout(TEST_BUDGET, join_and_play())
        .await
        .expect("the test finishes within its budget");
}

async fn join_and_play() {
    let started = Instant::now();
    let deadline = started + JOIN_BUDGET;
    let node = support::start(support::config(1));
    timeout_at(deadline, support::wait_running(&node, "demo"))
        .await
        .expect("demo runs in time");
    let http = node.http_addr;
    let token = timeout_at(deadline, dev_token(http, "wrs", "demo"))
        .await
        .expect("token in time")
        .expect("dev token");

    // Host candidates on loopback only: no ICE servers, one socket on
    // 127.0.0.1. (mDNS stays in webrtc-rs's default query-only mode, which
    // gathers plain IP host candidates; turning it off needs a type from
    // the `rtc` crate that `webrtc` does not re-export.)
    let (gathering, mut gathering_rx) = watch::channel(RTCIceGatheringState::New);
    let (connection, connection_rx) = watch::channel(RTCPeerConnectionState::New);
    let pc = PeerConnectionBuilder::new()
        .with_configuration(RTCConfigurationBuilder::new().build())
        .with_handler(Arc::new(Handler {
            gathering,
            connection,
        }))
        .with_udp_addrs(vec!["127.0.0.1:0".to_string()])
        .build()
        .await
        .expect("peer connection builds");

    let state = pc
        .create_data_channel(
            "state",
            Some(RTCDataChannelInit {
                ordered: false,
                max_retransmits: Some(0),
                ..RTCDataChannelInit::default()
            }),
        )
        .await
        .expect("state channel");
    let actions = pc
        .create_data_channel("actions", Some(RTCDataChannelInit::default()))
        .await
        .expect("actions channel");
    let (events_tx, mut events) = mpsc::channel(EVENTS_QUEUED_MAX);
    forward(Channel::State, state.clone(), events_tx.clone());
    forward(Channel::Actions, actions.clone(), events_tx);

    // No trickle: the offer goes out with every candidate in it.
    let offer = pc.create_offer(None).await.expect("offer");
    pc.set_local_description(offer)
        .await
        .expect("local description");
    timeout_at(
        deadline,
        gathering_rx.wait_for(|s| *s == RTCIceGatheringState::Complete),
    )
    .await
    .expect("ICE gathering completes in time")
    .expect("handler alive");
    let offer_sdp = pc.local_description().await.expect("local description").sdp;
    assert!(
        offer_sdp.contains("a=candidate:") && offer_sdp.contains("127.0.0.1"),
        "the offer carries no loopback host candidate:\n{offer_sdp}"
    );

    let auth = format!("Bearer {token}");
    let response = timeout_at(
        deadline,
        http_request(
            http,
            "POST",
            "/v1/instances/demo/join",
            &[
                ("content-type", "application/sdp"),
                ("authorization", auth.as_str()),
            ],
            offer_sdp.into_bytes(),
        ),
    )
    .await
    .expect("join answered in time")
    .expect("join request");
    assert_eq!(response.status, 201, "join refused: {}", response.body);
    let answer = RTCSessionDescription::answer(response.body).expect("the answer parses");
    pc.set_remote_description(answer)
        .await
        .expect("remote description");

    // Drive the protocol: the Welcome on `actions`, snapshots on `state`,
    // each applied snapshot acknowledged by an empty Input.
    let mut decoder = Decoder::default();
    let mut encoder = Encoder::default();
    let mut receiver = SnapshotReceiver::new(HISTORY_LEN, ENTITIES_MAX);
    let mut open = (false, false);
    let mut welcome_avatar = None;
    let mut actions_messages = 0usize;
    let mut applied = 0usize;
    let mut stale = 0usize;
    let mut acks_sent = 0usize;
    let mut acked_ticks = BTreeSet::new();
    let mut deltas_on_acks = 0usize;
    let mut input_sequence = 0u32;
    let mut last_view = 0usize;
    let mut avatar_seen = false;
    while !(applied >= SNAPSHOTS_MIN && avatar_seen && deltas_on_acks > 0) {
        let Ok(next) = timeout_at(deadline, events.recv()).await else {
            panic!(
                "timed out after {:?}: connection {:?}, channels open {open:?}, \
                 welcome avatar {welcome_avatar:?}, {applied} snapshots applied \
                 ({stale} stale, {deltas_on_acks} deltas on acked ticks), {acks_sent} acks \
                 sent, last view {last_view} entities",
                started.elapsed(),
                *connection_rx.borrow(),
            );
        };
        let (channel, event) = next.expect("data channel events end early");
        let message = match event {
            DataChannelEvent::OnOpen => {
                match channel {
                    Channel::State => open.0 = true,
                    Channel::Actions => open.1 = true,
                }
                continue;
            }
            DataChannelEvent::OnClose | DataChannelEvent::OnClosing => {
                panic!("the server closed {channel:?}")
            }
            DataChannelEvent::OnMessage(message) => message,
            _ => continue,
        };
        assert!(!message.is_string, "a text message on {channel:?}");
        let decoded = decoder
            .decode_server(&message.data, channel)
            .unwrap_or_else(|e| panic!("an invalid frame on {channel:?}: {e}"));
        match decoded {
            ServerMessage::Welcome(_, w) => {
                assert_eq!(actions_messages, 0, "the Welcome was not first on actions");
                assert!(welcome_avatar.is_none(), "a second Welcome");
                assert_eq!(w.user_id.as_str(), "wrs");
                welcome_avatar = Some(w.avatar.to_native());
            }
            ServerMessage::Snapshot(header, payload) => {
                let tick = header.tick.get();
                // The server deltas only against ticks the client acknowledged,
                // so a delta on one of ours proves our Input frames arrived.
                let body = rkyv::access::<ArchivedSnapshotBody, rkyv::rancor::Error>(payload)
                    .expect("snapshot body");
                let baselines: Vec<u32> = body
                    .baselines
                    .iter()
                    .map(|b| b.to_native())
                    .filter(|&b| b != 0)
                    .collect();
                for &baseline in &baselines {
                    assert!(
                        acked_ticks.contains(&baseline),
                        "snapshot {tick} is a delta against {baseline}, which was never acked"
                    );
                }
                if !baselines.is_empty() {
                    deltas_on_acks += 1;
                }
                match receiver.apply(tick, payload) {
                    Ok(view) => {
                        applied += 1;
                        last_view = view.len();
                        avatar_seen |= acks_sent > 0
                            && welcome_avatar.is_some_and(|a| view.iter().any(|e| e.id == a));
                    }
                    // Unordered and unreliable: a snapshot may name a baseline
                    // this client no longer keeps (or never got). Skip it.
                    Err(_) => stale += 1,
                }
                // Acknowledge the newest applied snapshot.
                if let (Some(newest), (true, true)) = (receiver.latest(), open) {
                    input_sequence = input_sequence.wrapping_add(1);
                    let frame = encoder
                        .encode(
                            MessageKind::Input,
                            input_sequence,
                            newest,
                            &Input { owned: vec![] },
                        )
                        .expect("input encodes");
                    state
                        .send(BytesMut::from(frame))
                        .await
                        .expect("input sent on state");
                    acks_sent += 1;
                    acked_ticks.insert(newest);
                }
            }
            _ => {}
        }
        if channel == Channel::Actions {
            actions_messages += 1;
        }
    }

    assert!(open.0 && open.1, "both channels opened");
    assert!(last_view > 0, "the view holds entities");
    assert_eq!(
        *connection_rx.borrow(),
        RTCPeerConnectionState::Connected,
        "connection state"
    );
    eprintln!(
        "webrtc-rs client: {applied} snapshots applied ({stale} skipped, {deltas_on_acks} deltas \
         on acked ticks), {acks_sent} acks, view of {last_view} entities, avatar {welcome_avatar:?}, in {:?}",
        started.elapsed()
    );
    pc.close().await.expect("close");
}
