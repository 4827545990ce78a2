//! A Rust client of the node, used by the tests, the harness and the load
//! generator: [`Session`] is the sans-IO client (str0m in full-ICE mode,
//! both data channels, the protocol codec, snapshot views); [`Client`]
//! drives one over a tokio UDP socket after joining over HTTP.
//!
//! ```no_run
//! # async fn demo(http: std::net::SocketAddr) -> Result<(), net::client::ClientError> {
//! use net::client::{Client, ClientEvent, dev_token};
//! let token = dev_token(http, "ann", "demo").await?;
//! let mut client = Client::join(http, "demo", &token).await?;
//! client.run_until(std::time::Duration::from_secs(5), |_, e| matches!(e, ClientEvent::Snapshot { .. })).await?;
//! # Ok(()) }
//! ```

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use engine::Vec3;
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::channel::{ChannelConfig, ChannelId, Reliability};
use str0m::format::Codec;
use str0m::media::{Direction, MediaKind, Mid, Rid, Simulcast, SimulcastLayer};
use str0m::net::{Protocol, Receive, Transmit};
use str0m::rtp::{ExtensionValues, RtpWrite};
use str0m::{Candidate, Event, Input as RtcInput, Output, Rtc};

use crate::conn::media::add_sendonly;
use crate::messages::{
    Action, ActionBroadcast, EntityName, EntityOwner, Input, KickReason, OwnedUpdate, OwnershipOp,
    OwnershipRefusal, OwnershipRequest, Ping, Sdp, SdpKind, TrackKind,
};
use crate::quant::Quantizer;
use crate::snapshot::{EntityState, SnapshotReceiver};
use crate::{Channel, Decoder, Encoder, MessageKind, ServerMessage};

#[cfg(feature = "client")]
mod driver;
#[cfg(feature = "client")]
pub use driver::{
    Client, ClientIo, HTTP_BODY_BYTES_MAX, HttpResponse, action, dev_token, http_request,
    owned_update,
};

/// Snapshot views a client keeps (must match the server's history).
pub const CLIENT_HISTORY_LEN: usize = 32;
/// Entities a client's view holds at most.
pub const CLIENT_ENTITIES_MAX: usize = 4096;
/// Events queued before the oldest are dropped (a client that never polls).
pub const CLIENT_EVENTS_MAX: usize = 4096;
/// How long an applied snapshot waits for an input to carry its
/// acknowledgement before an empty input is sent for it alone: longer than
/// one input period at 30 Hz, so a client that sends inputs sends one
/// datagram per tick, and short enough that the server's delta baselines stay
/// fresh for a client that sends none.
pub const ACK_DELAY_DEFAULT: Duration = Duration::from_millis(50);
/// A session that has sent nothing for this long once welcomed sends a
/// `Ping`: the server removes members it hears nothing from for its silence
/// timeout (10 s by default).
pub const HEARTBEAT_DEFAULT: Duration = Duration::from_secs(1);
/// Set in the `client_time_us` of heartbeat pings, whose Pongs are not
/// reported: application pings leave this bit clear.
pub const HEARTBEAT_PING_TAG: u64 = 1 << 63;
/// The shortest heartbeat period [`Session::set_heartbeat`] takes.
pub const HEARTBEAT_MIN: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("http: {0}")]
    Http(String),
    /// The server answered a join with an error status.
    #[error("join refused with {status}: {body}")]
    Refused { status: u16, body: String },
    #[error("webrtc: {0}")]
    Rtc(String),
    #[error("protocol: {0}")]
    Protocol(#[from] crate::ProtocolError),
    #[error("the channels are not open yet")]
    NotOpen,
    #[error("the message was refused by the channel (buffer full)")]
    Refused2,
}

/// What the welcome told this client.
#[derive(Debug, Clone, PartialEq)]
pub struct WelcomeInfo {
    pub user_id: String,
    pub user_index: u32,
    pub avatar: u32,
    pub tick_hz: u16,
    /// Snapshots per second (they arrive `tick_hz / snapshot_hz` ticks apart).
    pub snapshot_hz: u16,
    pub bounds_min: Vec3,
    pub bounds_max: Vec3,
    pub cached_actions: Vec<ActionBroadcast>,
    /// Entities other than avatars owned when this client joined.
    pub owners: Vec<EntityOwner>,
}

/// Something the server said or did.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum ClientEvent {
    /// Both channels are open.
    Connected,
    Welcome(WelcomeInfo),
    /// A snapshot was applied; [`Session::entities`] holds the new view.
    Snapshot {
        tick: u32,
        entities: usize,
    },
    Action(ActionBroadcast),
    PeerJoined {
        user_index: u32,
        user_id: String,
        name: String,
        /// Network id of its avatar.
        avatar: u32,
    },
    PeerLeft {
        user_index: u32,
    },
    OwnershipChanged {
        network_id: u32,
        owner: Option<u32>,
    },
    /// This client's ownership request was refused.
    OwnershipRefused {
        network_id: u32,
        op: OwnershipOp,
        reason: OwnershipRefusal,
    },
    /// Scene entities' names (after the `Welcome`); also in
    /// [`Session::scene_name`].
    EntityNames(Vec<EntityName>),
    /// Another user asks for an entity this client owns (it may transfer it).
    OwnershipRequested {
        network_id: u32,
        by: u32,
    },
    Draining {
        grace_ms: u32,
    },
    Kicked {
        reason: KickReason,
        message: String,
    },
    Pong {
        client_time_us: u64,
        server_tick: u32,
    },
    VersionMismatch {
        server_version: u8,
    },
    /// A member publishes a track (replayed after the `Welcome` for the
    /// tracks published before this client joined).
    TrackAdded {
        track: u32,
        publisher: u32,
        kind: TrackKind,
    },
    TrackRemoved {
        track: u32,
    },
    /// The server's offer added a track this client now receives on `mid`.
    Receiving {
        track: u32,
        mid: Mid,
    },
    /// An RTP packet of a track this client receives (`track` from the
    /// m-line's `a=msid` stream id).
    Rtp {
        track: Option<u32>,
        mid: Mid,
        seq_no: u64,
        time: u32,
        marker: bool,
        payload: std::sync::Arc<[u8]>,
    },
    /// The node asks for a keyframe of the track this client publishes on
    /// `mid` (of simulcast layer `rid`).
    KeyframeRequested {
        mid: Mid,
        rid: Option<Rid>,
    },
    /// A message the client could not decode (counted, dropped).
    Invalid(String),
    /// The peer connection closed.
    Closed,
}

/// The sans-IO client.
#[derive(Debug)]
pub struct Session {
    rtc: Rtc,
    local: SocketAddr,
    pending: Option<SdpPendingOffer>,
    /// This client's offer of a track it added after joining, waiting for
    /// the server's answer.
    media_pending: Option<SdpPendingOffer>,
    /// Mids of the tracks this client publishes.
    published: Vec<(Mid, TrackKind)>,
    /// Mids of the tracks it receives, with their instance track ids.
    receiving: Vec<(Mid, u32)>,
    /// Server offers ignored because one of this client's own was waiting.
    pub offers_ignored: u64,
    /// The server's offers and answers received, not yet handled.
    server_sdps: VecDeque<(SdpKind, String)>,
    state: Option<ChannelId>,
    actions: Option<ChannelId>,
    encoder: Encoder,
    decoder: Decoder,
    receiver: SnapshotReceiver,
    welcome: Option<WelcomeInfo>,
    quantizer: Option<Quantizer>,
    events: VecDeque<ClientEvent>,
    transmits: VecDeque<Transmit>,
    state_sequence: u32,
    actions_sequence: u32,
    wake: Instant,
    closed: bool,
    /// A snapshot was applied and no input has acknowledged it yet: an empty
    /// input goes out at this time unless one carries the ack before.
    ack_due: Option<Instant>,
    ack_delay: Duration,
    /// Scene entity names by network id.
    scene_names: std::collections::HashMap<u32, String>,
    /// `None`: no heartbeat (a test of the server's silence timeout).
    heartbeat: Option<Duration>,
    /// When the application or the session last sent a frame.
    last_sent: Option<Instant>,
    created: Instant,
    stats: SessionStats,
}

/// What a session has sent and applied so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionStats {
    /// `Input` frames sent by the application (each also carries an ack).
    pub inputs_sent: u64,
    /// Empty `Input` frames sent only to acknowledge snapshots.
    pub acks_sent: u64,
    pub snapshots_applied: u64,
    /// Snapshots against a baseline this client no longer holds (skipped).
    pub snapshots_skipped: u64,
}

impl Session {
    /// A client whose UDP socket is `local`; returns it with its SDP offer.
    pub fn new(local: SocketAddr, now: Instant) -> Result<(Session, String), ClientError> {
        Session::with_tracks(local, &[], now)
    }

    /// A client that publishes `tracks` from the start (their m-lines are
    /// in the join offer): see [`Session::write_rtp`].
    pub fn with_tracks(
        local: SocketAddr,
        tracks: &[TrackKind],
        now: Instant,
    ) -> Result<(Session, String), ClientError> {
        str0m::crypto::from_feature_flags().install_process_default();
        let mut rtc = Rtc::builder().set_rtp_mode(true).build(now);
        let candidate =
            Candidate::host(local, "udp").map_err(|e| ClientError::Rtc(e.to_string()))?;
        rtc.add_local_candidate(candidate);
        let mut api = rtc.sdp_api();
        api.add_channel_with_config(ChannelConfig {
            label: "state".into(),
            ordered: false,
            reliability: Reliability::MaxRetransmits { retransmits: 0 },
            ..ChannelConfig::default()
        });
        api.add_channel("actions".into());
        let published: Vec<(Mid, TrackKind)> = tracks
            .iter()
            .enumerate()
            .map(|(i, &kind)| (add_sendonly(&mut api, kind, format!("publish-{i}")), kind))
            .collect();
        let (offer, pending) = api
            .apply()
            .ok_or_else(|| ClientError::Rtc("no offer to make".into()))?;
        let session = Session {
            rtc,
            local,
            pending: Some(pending),
            media_pending: None,
            published,
            receiving: Vec::new(),
            offers_ignored: 0,
            server_sdps: VecDeque::new(),
            state: None,
            actions: None,
            encoder: Encoder::default(),
            decoder: Decoder::default(),
            receiver: SnapshotReceiver::new(CLIENT_HISTORY_LEN, CLIENT_ENTITIES_MAX),
            welcome: None,
            quantizer: None,
            events: VecDeque::new(),
            transmits: VecDeque::new(),
            state_sequence: 0,
            actions_sequence: 0,
            wake: now,
            closed: false,
            ack_due: None,
            ack_delay: ACK_DELAY_DEFAULT,
            scene_names: std::collections::HashMap::new(),
            heartbeat: Some(HEARTBEAT_DEFAULT),
            last_sent: None,
            created: now,
            stats: SessionStats::default(),
        };
        Ok((session, offer.to_sdp_string()))
    }

    /// Applies the server's SDP answer.
    pub fn accept_answer(&mut self, answer: &str, now: Instant) -> Result<(), ClientError> {
        let answer =
            SdpAnswer::from_sdp_string(answer).map_err(|e| ClientError::Rtc(e.to_string()))?;
        let pending = self
            .pending
            .take()
            .ok_or_else(|| ClientError::Rtc("answer already applied".into()))?;
        self.rtc
            .sdp_api()
            .accept_answer(pending, answer)
            .map_err(|e| ClientError::Rtc(e.to_string()))?;
        self.pump(now);
        Ok(())
    }

    pub fn handle_datagram(&mut self, source: SocketAddr, datagram: &[u8], now: Instant) {
        let acked_before = self.stats.snapshots_applied;
        let Ok(receive) = Receive::new(Protocol::Udp, source, self.local, datagram) else {
            return;
        };
        if self
            .rtc
            .handle_input(RtcInput::Receive(now, receive))
            .is_err()
        {
            self.close_now();
        }
        self.pump(now);
        if self.ack_due.is_none() && self.stats.snapshots_applied > acked_before {
            self.ack_due = Some(now + self.ack_delay);
        }
    }

    /// The server deltas snapshots against what a client acknowledged, and
    /// acknowledgements ride on inputs. When the application sends no input
    /// within the ack delay after a snapshot, an empty one carries the ack.
    pub fn set_ack_delay(&mut self, delay: Duration) {
        self.ack_delay = delay;
    }

    /// Sets (or, with `None`, stops) the heartbeat: a `Ping` after this
    /// long without sending anything, once welcomed (at least
    /// [`HEARTBEAT_MIN`]). Its `Pong`s are not reported as events.
    pub fn set_heartbeat(&mut self, every: Option<Duration>) {
        self.heartbeat = every.map(|d| d.max(HEARTBEAT_MIN));
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if now >= self.wake && self.rtc.handle_input(RtcInput::Timeout(now)).is_err() {
            self.close_now();
        }
        self.pump(now);
        if self.ack_due.is_some_and(|due| now >= due)
            && self.is_open()
            && self.send_input_frame(Vec::new(), now).is_ok()
        {
            self.stats.acks_sent += 1;
        }
        if self.heartbeat_due().is_some_and(|due| now >= due) && self.is_open() {
            let us = now.saturating_duration_since(self.created).as_micros() as u64;
            if self.send_ping(us | HEARTBEAT_PING_TAG, now).is_err() {
                // The channel refused it (its buffer is full): try again a
                // heartbeat later rather than on every call.
                self.last_sent = Some(now);
            }
        }
    }

    /// When the next heartbeat goes out, if one is due at all.
    fn heartbeat_due(&self) -> Option<Instant> {
        let every = self.heartbeat?;
        self.welcome.as_ref()?;
        if !self.is_open() {
            return None;
        }
        Some(self.last_sent.unwrap_or(self.created) + every)
    }

    pub fn poll_timeout(&self) -> Instant {
        [Some(self.wake), self.ack_due, self.heartbeat_due()]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(self.wake)
    }

    pub fn stats(&self) -> SessionStats {
        self.stats
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    pub fn is_open(&self) -> bool {
        self.state.is_some() && self.actions.is_some() && !self.closed
    }

    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// The scene name of a network id, if it is a named scene entity.
    pub fn scene_name(&self, network_id: u32) -> Option<&str> {
        self.scene_names.get(&network_id).map(String::as_str)
    }

    pub fn welcome(&self) -> Option<&WelcomeInfo> {
        self.welcome.as_ref()
    }

    /// The newest snapshot view (quantised states), if any.
    pub fn entities(&self) -> Option<&[EntityState]> {
        self.receiver.latest()?;
        Some(self.receiver.entities())
    }

    /// The tick of the newest applied snapshot.
    pub fn latest_tick(&self) -> Option<u32> {
        self.receiver.latest()
    }

    /// Where the newest snapshot puts entity `network_id`, in metres.
    pub fn position_of(&self, network_id: u32) -> Option<Vec3> {
        let q = self.quantizer.as_ref()?;
        let e = self.entities()?.iter().find(|e| e.id == network_id)?;
        Some(q.dequantize_position(e.position))
    }

    /// Sends owned-entity updates (acknowledging the newest snapshot).
    pub fn send_input(&mut self, owned: Vec<OwnedUpdate>, now: Instant) -> Result<(), ClientError> {
        self.send_input_frame(owned, now)?;
        self.stats.inputs_sent += 1;
        Ok(())
    }

    fn send_input_frame(
        &mut self,
        owned: Vec<OwnedUpdate>,
        now: Instant,
    ) -> Result<(), ClientError> {
        self.ack_due = None;
        let ack = self.receiver.latest().unwrap_or(0);
        self.send(
            Channel::State,
            MessageKind::Input,
            ack,
            &Input { owned },
            now,
        )
    }

    pub fn send_action(&mut self, action: &Action, now: Instant) -> Result<(), ClientError> {
        self.send(Channel::Actions, MessageKind::Action, 0, action, now)
    }

    pub fn request_ownership(
        &mut self,
        network_id: u32,
        op: OwnershipOp,
        now: Instant,
    ) -> Result<(), ClientError> {
        let msg = OwnershipRequest { network_id, op };
        self.send(
            Channel::Actions,
            MessageKind::OwnershipRequest,
            0,
            &msg,
            now,
        )
    }

    pub fn send_ping(&mut self, client_time_us: u64, now: Instant) -> Result<(), ClientError> {
        let ack = self.receiver.latest().unwrap_or(0);
        self.send(
            Channel::State,
            MessageKind::Ping,
            ack,
            &Ping { client_time_us },
            now,
        )
    }

    /// Sends raw bytes on a channel (for tests of the server's validation).
    pub fn send_raw(
        &mut self,
        channel: Channel,
        bytes: &[u8],
        now: Instant,
    ) -> Result<(), ClientError> {
        let id = match channel {
            Channel::State => self.state,
            Channel::Actions => self.actions,
        }
        .ok_or(ClientError::NotOpen)?;
        let mut ch = self.rtc.channel(id).ok_or(ClientError::NotOpen)?;
        let accepted = ch
            .write(true, bytes)
            .map_err(|e| ClientError::Rtc(e.to_string()))?;
        self.pump(now);
        if accepted {
            self.last_sent = Some(now);
            Ok(())
        } else {
            Err(ClientError::Refused2)
        }
    }

    fn send<T>(
        &mut self,
        channel: Channel,
        kind: MessageKind,
        tick: u32,
        msg: &T,
        now: Instant,
    ) -> Result<(), ClientError>
    where
        T: for<'a, 'b> rkyv::Serialize<crate::codec::FrameSerializer<'a, 'b>>,
    {
        let sequence = match channel {
            Channel::State => &mut self.state_sequence,
            Channel::Actions => &mut self.actions_sequence,
        };
        *sequence = sequence.wrapping_add(1);
        let bytes = self.encoder.encode(kind, *sequence, tick, msg)?.to_vec();
        self.send_raw(channel, &bytes, now)
    }

    /// Mids of the tracks this client publishes, in the order added.
    pub fn published(&self) -> &[(Mid, TrackKind)] {
        &self.published
    }

    /// Adds a track to publish after joining: the offer goes to the server
    /// over `actions`; packets flow once its answer is applied.
    pub fn add_track(&mut self, kind: TrackKind, now: Instant) -> Result<Mid, ClientError> {
        let stream = format!("publish-{}", self.published.len());
        let (mid, offer) = self.media_offer(|api| add_sendonly(api, kind, stream))?;
        self.published.push((mid, kind));
        self.send_media_offer(offer, now)?;
        Ok(mid)
    }

    /// Adds a video track sent as simulcast layers `rids`, lowest first
    /// (the order the node ranks them `low`, `mid`, `high`): write each
    /// layer's packets with [`Session::write_rtp_layer`].
    pub fn add_simulcast_track(&mut self, rids: &[&str], now: Instant) -> Result<Mid, ClientError> {
        if rids.is_empty() || rids.len() > crate::conn::SIMULCAST_LAYERS_MAX {
            return Err(ClientError::Rtc(format!(
                "1 to {} simulcast layers",
                crate::conn::SIMULCAST_LAYERS_MAX
            )));
        }
        let stream = format!("publish-{}", self.published.len());
        let mut simulcast = Simulcast::new();
        for rid in rids {
            simulcast.add_send_layer(SimulcastLayer::new(rid));
        }
        let (mid, offer) = self.media_offer(|api| {
            api.add_media(
                MediaKind::Video,
                Direction::SendOnly,
                Some(stream.clone()),
                Some(stream),
                Some(simulcast),
            )
        })?;
        self.published.push((mid, TrackKind::Video));
        self.send_media_offer(offer, now)?;
        Ok(mid)
    }

    /// Sends a media request to the node (an action on topic `media`):
    /// `subscribe`, `unsubscribe`, `layer` (with `layer` `low`, `mid` or
    /// `high`), `mute`, `unmute`, `pause`, `resume`.
    pub fn media_request(
        &mut self,
        request: &str,
        track: u32,
        layer: Option<&str>,
        now: Instant,
    ) -> Result<(), ClientError> {
        // Layer names are plain words: Rust's quoting is JSON's for them.
        let payload = match layer {
            Some(layer) => format!(r#"{{"track":{track},"layer":{layer:?}}}"#),
            None => format!(r#"{{"track":{track}}}"#),
        };
        let action = Action {
            topic: "media".into(),
            action_type: request.into(),
            target: crate::messages::Target::Server,
            cache: crate::messages::Cache::No,
            payload: payload.into_bytes(),
        };
        self.send_action(&action, now)
    }

    /// Stops publishing the track on `mid` (an offer making it inactive).
    pub fn remove_track(&mut self, mid: Mid, now: Instant) -> Result<(), ClientError> {
        let i = self
            .published
            .iter()
            .position(|(m, _)| *m == mid)
            .ok_or_else(|| ClientError::Rtc(format!("{mid} is not published")))?;
        let ((), offer) = self.media_offer(|api| api.set_direction(mid, Direction::Inactive))?;
        self.published.remove(i);
        self.send_media_offer(offer, now)
    }

    /// Makes this client's offer of a change to what it publishes (one at
    /// a time: refused while another waits for its answer) and keeps it
    /// pending; returns what `change` returned and the offer to send.
    fn media_offer<R>(
        &mut self,
        change: impl FnOnce(&mut str0m::change::SdpApi<'_>) -> R,
    ) -> Result<(R, String), ClientError> {
        if self.media_pending.is_some() {
            return Err(ClientError::Rtc(
                "an offer is already waiting for its answer".into(),
            ));
        }
        let mut api = self.rtc.sdp_api();
        let r = change(&mut api);
        let (offer, pending) = api
            .apply()
            .ok_or_else(|| ClientError::Rtc("no offer to make".into()))?;
        self.media_pending = Some(pending);
        Ok((r, offer.to_sdp_string()))
    }

    fn send_media_offer(&mut self, sdp: String, now: Instant) -> Result<(), ClientError> {
        let msg = Sdp {
            kind: SdpKind::Offer,
            sdp,
        };
        let sent = self.send(Channel::Actions, MessageKind::Sdp, 0, &msg, now);
        if sent.is_err() {
            // No answer will come: later offers must not wait for one.
            self.media_pending = None;
        }
        sent
    }

    /// Sends one RTP packet on a published track: Opus for audio, VP8 for
    /// video, `seq_no` counting up from 1, `time` in the codec's clock.
    pub fn write_rtp(
        &mut self,
        mid: Mid,
        seq_no: u64,
        time: u32,
        marker: bool,
        payload: &[u8],
        now: Instant,
    ) -> Result<(), ClientError> {
        self.write_rtp_layer(mid, None, seq_no, time, marker, payload, now)
    }

    /// [`Session::write_rtp`] on simulcast layer `rid` of a track added
    /// with [`Session::add_simulcast_track`] (each layer numbers its own
    /// packets).
    #[allow(clippy::too_many_arguments)]
    pub fn write_rtp_layer(
        &mut self,
        mid: Mid,
        rid: Option<&str>,
        seq_no: u64,
        time: u32,
        marker: bool,
        payload: &[u8],
        now: Instant,
    ) -> Result<(), ClientError> {
        let ext = ExtensionValues::default();
        self.write_packet(mid, rid, seq_no, time, marker, payload, ext, now)
    }

    /// [`Session::write_rtp`] of audio with its level (RFC 6464: `level`
    /// dB below full scale, 0 the loudest, 127 silence), from which the
    /// node picks the active speaker.
    pub fn write_audio(
        &mut self,
        mid: Mid,
        seq_no: u64,
        time: u32,
        level: u8,
        payload: &[u8],
        now: Instant,
    ) -> Result<(), ClientError> {
        let ext = ExtensionValues {
            audio_level: Some(-(level.min(127) as i8)),
            voice_activity: Some(level <= 50),
            ..ExtensionValues::default()
        };
        self.write_packet(mid, None, seq_no, time, false, payload, ext, now)
    }

    #[allow(clippy::too_many_arguments)]
    fn write_packet(
        &mut self,
        mid: Mid,
        rid: Option<&str>,
        seq_no: u64,
        time: u32,
        marker: bool,
        payload: &[u8],
        ext: ExtensionValues,
        now: Instant,
    ) -> Result<(), ClientError> {
        let kind = self
            .published
            .iter()
            .find(|(m, _)| *m == mid)
            .map(|(_, k)| *k)
            .ok_or_else(|| ClientError::Rtc(format!("{mid} is not published")))?;
        let codec = match kind {
            TrackKind::Audio => Codec::Opus,
            TrackKind::Video => Codec::Vp8,
        };
        let pt = self
            .rtc
            .codec_config()
            .iter()
            .find(|p| p.spec().codec == codec)
            .map(|p| p.pt())
            .ok_or_else(|| ClientError::Rtc(format!("no {codec:?} negotiated")))?;
        let mut api = self.rtc.direct_api();
        let stream = api
            .stream_tx_by_mid(mid, rid.map(Rid::from))
            .ok_or_else(|| ClientError::Rtc(format!("{mid} {rid:?} has no stream yet")))?;
        stream.write_rtp(
            RtpWrite::new(pt, seq_no.into(), time, now, payload.to_vec())
                .marker(marker)
                .ext_vals(ext)
                .nackable(kind == TrackKind::Video),
        );
        // str0m sends what was written once time moves: now, not at its
        // next timer (which may be 100 ms away).
        if self.rtc.handle_input(RtcInput::Timeout(now)).is_err() {
            self.close_now();
        }
        self.pump(now);
        Ok(())
    }

    /// Asks for a keyframe (a PLI) of a track this client receives.
    pub fn request_keyframe(&mut self, mid: Mid, now: Instant) -> Result<(), ClientError> {
        let mut api = self.rtc.direct_api();
        let stream = api
            .stream_rx_by_mid(mid, None)
            .ok_or_else(|| ClientError::Rtc(format!("nothing received on {mid}")))?;
        stream.request_keyframe(str0m::media::KeyframeRequestKind::Pli);
        self.pump(now);
        Ok(())
    }

    fn server_sdp(&mut self, kind: SdpKind, sdp: &str, now: Instant) -> Result<(), String> {
        match kind {
            SdpKind::Offer => {
                if self.media_pending.is_some() {
                    // Both offered: the server gives way and offers again.
                    self.offers_ignored += 1;
                    return Ok(());
                }
                let offer = SdpOffer::from_sdp_string(sdp).map_err(|e| e.to_string())?;
                let answer = self
                    .rtc
                    .sdp_api()
                    .accept_offer(offer)
                    .map_err(|e| e.to_string())?;
                let msg = Sdp {
                    kind: SdpKind::Answer,
                    sdp: answer.to_sdp_string(),
                };
                self.send(Channel::Actions, MessageKind::Sdp, 0, &msg, now)
                    .map_err(|e| e.to_string())
            }
            SdpKind::Answer => {
                let pending = self
                    .media_pending
                    .take()
                    .ok_or("an answer with no offer waiting")?;
                let answer = SdpAnswer::from_sdp_string(sdp).map_err(|e| e.to_string())?;
                self.rtc
                    .sdp_api()
                    .accept_answer(pending, answer)
                    .map_err(|e| e.to_string())
            }
        }
    }

    /// Closes the peer connection (the server sees the channels close).
    pub fn close(&mut self, now: Instant) {
        let _ = self.rtc.close();
        self.pump(now);
    }

    fn close_now(&mut self) {
        // Nothing can carry an ack any more; keep the wake time in the future.
        self.ack_due = None;
        if !self.closed {
            self.closed = true;
            self.push_event(ClientEvent::Closed);
        }
    }

    fn push_event(&mut self, event: ClientEvent) {
        if self.events.len() >= CLIENT_EVENTS_MAX {
            self.events.pop_front();
        }
        self.events.push_back(event);
    }

    fn pump(&mut self, now: Instant) {
        loop {
            if !self.rtc.is_alive() {
                self.close_now();
                self.wake = now + Duration::from_secs(3600);
                return;
            }
            match self.rtc.poll_output() {
                Ok(Output::Timeout(t)) => {
                    self.wake = t;
                    if self.server_sdps.is_empty() {
                        return;
                    }
                    while let Some((kind, sdp)) = self.server_sdps.pop_front() {
                        if let Err(e) = self.server_sdp(kind, &sdp, now) {
                            self.push_event(ClientEvent::Invalid(format!("server {kind:?}: {e}")));
                        }
                    }
                    // What applying them changed (new media) is polled next.
                }
                Ok(Output::Transmit(t)) => self.transmits.push_back(t),
                Ok(Output::Event(e)) => self.rtc_event(e),
                Err(_) => {
                    self.close_now();
                    self.wake = now + Duration::from_secs(3600);
                    return;
                }
            }
        }
    }

    fn rtc_event(&mut self, event: Event) {
        match event {
            Event::ChannelOpen(id, label) => {
                match label.as_str() {
                    "state" => self.state = Some(id),
                    "actions" => self.actions = Some(id),
                    _ => {}
                }
                if self.state.is_some() && self.actions.is_some() {
                    self.push_event(ClientEvent::Connected);
                }
            }
            Event::ChannelData(d) => {
                let channel = if Some(d.id) == self.state {
                    Channel::State
                } else {
                    Channel::Actions
                };
                self.message(channel, &d.data);
            }
            Event::ChannelClose(_) => self.close_now(),
            Event::MediaAdded(m)
                if matches!(m.direction, Direction::RecvOnly | Direction::SendRecv)
                    && !self.published.iter().any(|(p, _)| *p == m.mid) =>
            {
                let track = self.rtc.media(m.mid).and_then(|x| {
                    x.stream_id()
                        .strip_prefix("track-")
                        .and_then(|n| n.parse::<u32>().ok())
                });
                if let Some(track) = track {
                    self.receiving.push((m.mid, track));
                    self.push_event(ClientEvent::Receiving { track, mid: m.mid });
                }
            }
            Event::KeyframeRequest(r) => {
                self.push_event(ClientEvent::KeyframeRequested {
                    mid: r.mid,
                    rid: r.rid,
                });
            }
            Event::RtpPacket(p) => {
                let Some(mid) = self
                    .rtc
                    .direct_api()
                    .stream_rx(&p.header.ssrc)
                    .map(|s| s.mid())
                else {
                    return;
                };
                let track = self
                    .receiving
                    .iter()
                    .find(|(m, _)| *m == mid)
                    .map(|(_, t)| *t);
                self.push_event(ClientEvent::Rtp {
                    track,
                    mid,
                    seq_no: *p.seq_no,
                    time: p.header.timestamp,
                    marker: p.header.marker,
                    payload: p.payload,
                });
            }
            Event::IceConnectionStateChange(str0m::IceConnectionState::Disconnected) => {
                self.close_now()
            }
            _ => {}
        }
    }

    fn message(&mut self, channel: Channel, data: &[u8]) {
        let event = match self.decoder.decode_server(data, channel) {
            Err(e) => ClientEvent::Invalid(e.to_string()),
            Ok(ServerMessage::Snapshot(header, payload)) => {
                let tick = header.tick.get();
                match self.receiver.apply(tick, payload) {
                    Ok(entities) => {
                        let entities = entities.len();
                        self.stats.snapshots_applied += 1;
                        ClientEvent::Snapshot { tick, entities }
                    }
                    // A snapshot against a baseline this client dropped: skip it.
                    Err(e) => {
                        self.stats.snapshots_skipped += 1;
                        ClientEvent::Invalid(e.to_string())
                    }
                }
            }
            Ok(ServerMessage::Welcome(_, w)) => {
                let v3 = |a: &[rkyv::rend::f32_le; 3]| {
                    Vec3::new(a[0].to_native(), a[1].to_native(), a[2].to_native())
                };
                let info = WelcomeInfo {
                    user_id: w.user_id.as_str().to_string(),
                    user_index: w.user_index.to_native(),
                    avatar: w.avatar.to_native(),
                    tick_hz: w.tick_hz.to_native(),
                    // 0 (a server that predates the field): every tick.
                    snapshot_hz: match w.snapshot_hz.to_native() {
                        0 => w.tick_hz.to_native(),
                        hz => hz,
                    },
                    bounds_min: v3(&w.bounds_min),
                    bounds_max: v3(&w.bounds_max),
                    cached_actions: w
                        .cached_actions
                        .iter()
                        .filter_map(|a| {
                            rkyv::deserialize::<ActionBroadcast, rkyv::rancor::Error>(a).ok()
                        })
                        .collect(),
                    owners: w
                        .owners
                        .iter()
                        .map(|o| EntityOwner {
                            network_id: o.network_id.to_native(),
                            owner: o.owner.to_native(),
                        })
                        .collect(),
                };
                self.quantizer = Some(Quantizer::new(&engine::Aabb {
                    min: info.bounds_min,
                    max: info.bounds_max,
                }));
                self.welcome = Some(info.clone());
                ClientEvent::Welcome(info)
            }
            Ok(ServerMessage::ActionBroadcast(_, a)) => {
                match rkyv::deserialize::<ActionBroadcast, rkyv::rancor::Error>(a) {
                    Ok(a) => ClientEvent::Action(a),
                    Err(e) => ClientEvent::Invalid(e.to_string()),
                }
            }
            Ok(ServerMessage::PeerJoined(_, p)) => ClientEvent::PeerJoined {
                user_index: p.user_index.to_native(),
                user_id: p.user_id.as_str().to_string(),
                name: p.name.as_str().to_string(),
                avatar: p.avatar.to_native(),
            },
            Ok(ServerMessage::PeerLeft(_, p)) => ClientEvent::PeerLeft {
                user_index: p.user_index.to_native(),
            },
            Ok(ServerMessage::OwnershipChanged(_, o)) => ClientEvent::OwnershipChanged {
                network_id: o.network_id.to_native(),
                owner: o.owner.as_ref().map(|u| u.to_native()),
            },
            Ok(ServerMessage::OwnershipRefused(_, r)) => {
                let op = rkyv::deserialize::<OwnershipOp, rkyv::rancor::Error>(&r.op);
                let reason = rkyv::deserialize::<OwnershipRefusal, rkyv::rancor::Error>(&r.reason);
                match (op, reason) {
                    (Ok(op), Ok(reason)) => ClientEvent::OwnershipRefused {
                        network_id: r.network_id.to_native(),
                        op,
                        reason,
                    },
                    (Err(e), _) | (_, Err(e)) => ClientEvent::Invalid(e.to_string()),
                }
            }
            Ok(ServerMessage::EntityNames(_, n)) => {
                let entities: Vec<EntityName> = n
                    .entities
                    .iter()
                    .map(|e| EntityName {
                        network_id: e.network_id.to_native(),
                        name: e.name.as_str().to_owned(),
                    })
                    .collect();
                for e in &entities {
                    self.scene_names.insert(e.network_id, e.name.clone());
                }
                ClientEvent::EntityNames(entities)
            }
            Ok(ServerMessage::OwnershipRequested(_, r)) => ClientEvent::OwnershipRequested {
                network_id: r.network_id.to_native(),
                by: r.by.to_native(),
            },
            Ok(ServerMessage::Draining(_, d)) => ClientEvent::Draining {
                grace_ms: d.grace_ms.to_native(),
            },
            Ok(ServerMessage::Kick(_, k)) => ClientEvent::Kicked {
                reason: rkyv::deserialize::<KickReason, rkyv::rancor::Error>(&k.reason)
                    .unwrap_or(KickReason::Operator),
                message: k.message.as_str().to_string(),
            },
            Ok(ServerMessage::Pong(_, p)) => {
                let client_time_us = p.client_time_us.to_native();
                if client_time_us & HEARTBEAT_PING_TAG != 0 {
                    // The answer to a heartbeat, not to the application.
                    return;
                }
                ClientEvent::Pong {
                    client_time_us,
                    server_tick: p.server_tick.to_native(),
                }
            }
            Ok(ServerMessage::VersionMismatch(_, v)) => ClientEvent::VersionMismatch {
                server_version: v.server_version,
            },
            Ok(ServerMessage::TrackAdded(_, t)) => ClientEvent::TrackAdded {
                track: t.track.to_native(),
                publisher: t.publisher.to_native(),
                kind: rkyv::deserialize::<TrackKind, rkyv::rancor::Error>(&t.kind)
                    .unwrap_or(TrackKind::Audio),
            },
            Ok(ServerMessage::TrackRemoved(_, t)) => ClientEvent::TrackRemoved {
                track: t.track.to_native(),
            },
            Ok(ServerMessage::Sdp(_, s)) => {
                let kind = match s.kind {
                    crate::messages::ArchivedSdpKind::Offer => SdpKind::Offer,
                    crate::messages::ArchivedSdpKind::Answer => SdpKind::Answer,
                };
                // Handled once polling is done (answering sends a frame).
                self.server_sdps
                    .push_back((kind, s.sdp.as_str().to_owned()));
                return;
            }
        };
        self.push_event(event);
    }
}
