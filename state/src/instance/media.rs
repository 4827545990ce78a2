//! The instance's side of its members' voice and video: which tracks are
//! published, by whom, and forwarding each packet of one to the other
//! members. The connection layer negotiates and writes (see
//! `net::conn`'s media); this decides who gets what.

use std::time::{Duration, Instant};

use engine::UserIndex;
use net::conn::{ConnKey, Layers, Mid, RtpDrop, RtpIn, SIMULCAST_LAYERS_MAX};
use net::keyframe::starts_keyframe;
use net::messages::{
    ActionBroadcast, Cache, Sdp, SdpKind, Target, TrackAdded, TrackKind, TrackRemoved,
};
use net::{Channel, MessageKind};
use serde::Deserialize;

use super::{Instance, Io, Member};

/// Keyframe requests relayed to a track's publisher at most this often
/// per layer (receivers' PLIs and FIRs in between are answered by the same
/// keyframe).
pub const KEYFRAME_REQUEST_INTERVAL: Duration = Duration::from_millis(500);

/// Users a moderator muted, kept per instance; beyond, the oldest mute
/// is forgotten.
pub const MODERATED_USERS_MAX: usize = 1_024;

/// A simulcast layer with no packet for this long is taken as stopped (a
/// publisher short of bandwidth drops its top layers): receivers on it go
/// to the next one down.
pub const LAYER_IDLE: Duration = Duration::from_secs(1);

/// The active speaker is chosen this often at most (4 a second).
pub const SPEAKER_INTERVAL: Duration = Duration::from_millis(250);

/// Audio louder than this (RFC 6464 level, -dBov: 0 the loudest, 127
/// silence) counts as speech.
pub const SPEECH_LEVEL_MAX: u8 = 50;

/// A new speaker replaces the current one only when this much louder
/// (dB), unless the current one went quiet.
const SPEAKER_MARGIN_DB: f32 = 6.0;

/// How much media an instance takes (`instance.media_*` in the node's
/// configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MediaLimits {
    /// Tracks one member may publish at once.
    pub tracks_per_member_max: u32,
    /// Members publishing audio at once.
    pub audio_publishers_max: u32,
    /// Members publishing video at once.
    pub video_publishers_max: u32,
    /// Bits per second one audio track may bring in.
    pub audio_bitrate_max: u32,
    /// Bits per second one video track may bring in, all its layers.
    pub video_bitrate_max: u32,
}

impl Default for MediaLimits {
    fn default() -> Self {
        MediaLimits {
            tracks_per_member_max: 4,
            audio_publishers_max: 50,
            video_publishers_max: 16,
            audio_bitrate_max: 256_000,
            video_bitrate_max: 4_000_000,
        }
    }
}

/// The topic of the server's media actions, and of members' media
/// requests to the server (`docs/media.md`).
pub const MEDIA_TOPIC: &str = "media";
/// Server → publisher: a track of its was refused (payload: the reason, UTF-8).
pub const TRACK_REFUSED: &str = "track_refused";
/// Server → member: a media request was refused (payload: JSON `type`,
/// `track`, `reason`).
pub const REQUEST_REFUSED: &str = "refused";
/// Server → members: a track's mute, pause and moderation (payload: JSON).
pub const TRACK_STATE: &str = "track_state";
/// Server → members: who speaks now (payload: JSON `user`, `track`, `level`).
pub const ACTIVE_SPEAKER: &str = "active_speaker";
/// Server → member: the simulcast layer it receives of a track changed.
pub const LAYER_SWITCHED: &str = "layer";
/// Server → publisher: a track is over its bitrate cap; packets beyond
/// are dropped.
pub const TRACK_LIMITED: &str = "track_limited";

/// A simulcast layer a receiver asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layer {
    Low,
    Mid,
    High,
}

impl Layer {
    fn parse(s: &str) -> Option<Layer> {
        match s {
            "low" => Some(Layer::Low),
            "mid" => Some(Layer::Mid),
            "high" => Some(Layer::High),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Layer::Low => "low",
            Layer::Mid => "mid",
            Layer::High => "high",
        }
    }

    /// Its index among `n` layers, lowest first.
    fn index(self, n: usize) -> usize {
        match self {
            Layer::Low => 0,
            Layer::Mid => 1.min(n.saturating_sub(1)),
            Layer::High => n.saturating_sub(1),
        }
    }

    /// The name of layer `index` of `n`.
    fn of_index(index: usize, n: usize) -> Layer {
        if index == 0 {
            Layer::Low
        } else if index + 1 >= n {
            Layer::High
        } else {
            Layer::Mid
        }
    }
}

/// A member sent a track.
#[derive(Debug, Clone, Copy)]
struct Subscriber {
    user: UserIndex,
    link: ConnKey,
    /// Subscribed (the default); unsubscribed members are sent nothing.
    on: bool,
    /// The simulcast layer it asked for.
    wanted: Layer,
    /// The layer it is sent now (simulcast tracks; `None` before the
    /// first keyframe of its layer).
    current: Option<u8>,
    /// A keyframe could not be written to it (its answer is not in, or
    /// left the codec out): no keyframe is asked for on its behalf until
    /// its next answer.
    stalled: bool,
}

/// A token bucket of bits: the track's bitrate cap.
#[derive(Debug, Clone, Copy)]
struct Budget {
    bits: f64,
    at: Option<Instant>,
    /// The publisher was told it is over the cap.
    told: bool,
}

/// A track a member publishes.
#[derive(Debug, Clone)]
pub struct Track {
    /// Instance-wide, never reused.
    pub id: u32,
    pub publisher: UserIndex,
    /// Its m-line in the publisher's connection.
    pub mid: Mid,
    pub kind: TrackKind,
    /// Its simulcast layers, lowest first (empty without simulcast).
    pub layers: Layers,
    /// Muted by its publisher (`mute`), paused (`pause`), muted by a
    /// moderator: any of them stops forwarding.
    pub muted: bool,
    pub paused: bool,
    pub moderated: bool,
    /// When a keyframe was last asked of the publisher, per layer (0
    /// without simulcast).
    keyframe_asked: [Option<Instant>; SIMULCAST_LAYERS_MAX],
    /// When each layer's last packet came, and the track's first.
    layer_seen: [Option<Instant>; SIMULCAST_LAYERS_MAX],
    first_packet: Option<Instant>,
    /// Told to the others (its publisher has joined).
    announced: bool,
    /// Over a limit: never announced nor forwarded; the publisher is told.
    refused: Option<&'static str>,
    budget: Budget,
    /// The loudest packet (audio; 127 minus the RFC 6464 level) since the
    /// active speaker was last chosen, and that of the window before (what
    /// the choice used).
    peak: f32,
    last_peak: f32,
    subscribers: Vec<Subscriber>,
}

impl Track {
    /// Announced to the others and within the limits.
    pub fn is_forwarded(&self) -> bool {
        self.announced && self.refused.is_none()
    }

    fn held(&self) -> bool {
        self.muted || self.paused || self.moderated
    }

    /// Members it is sent to and subscribed.
    pub fn subscribers(&self) -> usize {
        self.subscribers.iter().filter(|s| s.on).count()
    }

    /// The layer a receiver asking for `wanted` gets: the highest at or
    /// below it that is sending, else the lowest above it that is. In the
    /// track's first [`LAYER_IDLE`] a layer not seen yet counts as sending
    /// (its first packet may be on the way).
    fn target(&self, wanted: Layer, now: Instant) -> Option<u8> {
        let n = self.layers.len();
        let starting = self
            .first_packet
            .is_none_or(|at| now.saturating_duration_since(at) < LAYER_IDLE);
        let sending = |i: usize| match self.layer_seen[i] {
            Some(at) => now.saturating_duration_since(at) < LAYER_IDLE,
            None => starting,
        };
        let want = wanted.index(n);
        (0..=want)
            .rev()
            .find(|&i| sending(i))
            .or_else(|| (want + 1..n).find(|&i| sending(i)))
            .map(|i| i as u8)
    }
}

/// The published tracks of an instance.
#[derive(Debug, Default)]
pub struct Tracks {
    next_id: u32,
    list: Vec<Track>,
    /// Users a moderator muted (audio, video), kept for their later
    /// tracks and sessions while the instance lives.
    moderated: Vec<(String, bool, bool)>,
    speaker: Speaker,
}

/// The active speaker.
#[derive(Debug, Default)]
struct Speaker {
    track: Option<u32>,
    chosen_at: Option<Instant>,
}

impl Tracks {
    pub fn iter(&self) -> impl Iterator<Item = &Track> {
        self.list.iter()
    }

    fn position(&self, publisher: UserIndex, mid: Mid) -> Option<usize> {
        self.list
            .iter()
            .position(|t| t.publisher == publisher && t.mid == mid)
    }

    fn find(&self, publisher: UserIndex, mid: Mid) -> Option<&Track> {
        self.position(publisher, mid).map(|i| &self.list[i])
    }

    /// Whether a moderator muted `user_id`'s tracks of `kind`.
    fn is_moderated(&self, user_id: &str, kind: TrackKind) -> bool {
        self.moderated.iter().any(|(u, audio, video)| {
            u == user_id
                && match kind {
                    TrackKind::Audio => *audio,
                    TrackKind::Video => *video,
                }
        })
    }
}

/// A member's media request (the payload of its action on topic `media`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MediaRequest {
    /// The track; a publisher may name its own by `mid` instead.
    #[serde(default)]
    track: Option<u32>,
    #[serde(default)]
    mid: Option<String>,
    #[serde(default)]
    layer: Option<String>,
}

/// An action from the server on topic `media`.
fn server_action(action_type: &str, target: Target, payload: Vec<u8>) -> ActionBroadcast {
    ActionBroadcast {
        sender: u32::MAX,
        topic: MEDIA_TOPIC.into(),
        action_type: action_type.into(),
        target,
        cache: Cache::No,
        payload,
    }
}

fn track_state(t: &Track) -> ActionBroadcast {
    let payload = serde_json::json!({
        "track": t.id,
        "publisher": t.publisher.0,
        "muted": t.muted,
        "paused": t.paused,
        "moderated": t.moderated,
    });
    server_action(
        TRACK_STATE,
        Target::Everyone,
        payload.to_string().into_bytes(),
    )
}

impl Instance {
    pub fn tracks(&self) -> &Tracks {
        &self.tracks
    }

    /// Member `user` publishes a track on `mid` (with simulcast `layers`,
    /// lowest first): it is announced to the others (`TrackAdded`) and
    /// offered to each of them. A track over a limit is refused: not
    /// forwarded, and its publisher told with an action (topic `media`,
    /// type `track_refused`).
    pub fn publish(
        &mut self,
        user: UserIndex,
        mid: Mid,
        kind: TrackKind,
        layers: Layers,
        io: &mut Io<'_>,
    ) {
        let Some(member) = self.member(user) else {
            return;
        };
        if self.tracks.find(user, mid).is_some() {
            return;
        }
        let joined = member.is_listening();
        let moderated = self.tracks.is_moderated(&member.user_id, kind);
        let refused = self.over_limit(user, kind);
        let track = Track {
            id: self.tracks.next_id,
            publisher: user,
            mid,
            kind,
            layers: if kind == TrackKind::Video {
                layers
            } else {
                Layers::default()
            },
            muted: false,
            paused: false,
            moderated,
            keyframe_asked: [None; SIMULCAST_LAYERS_MAX],
            layer_seen: [None; SIMULCAST_LAYERS_MAX],
            first_packet: None,
            announced: false,
            refused,
            budget: Budget {
                bits: 0.0,
                at: None,
                told: false,
            },
            peak: 0.0,
            last_peak: 0.0,
            subscribers: Vec::new(),
        };
        self.tracks.next_id += 1;
        self.tracks.list.push(track);
        match refused {
            Some(reason) => *io.metrics.refused_messages.entry(reason).or_default() += 1,
            None => io.metrics.media_tracks_published += 1,
        }
        // A member still connecting is announced once it joins (it may
        // never).
        if joined {
            self.announce_tracks_of(user, io);
        }
    }

    /// Which limit a new track of `user` would break, if any.
    fn over_limit(&self, user: UserIndex, kind: TrackKind) -> Option<&'static str> {
        let limits = self.config.media;
        let live = || self.tracks.list.iter().filter(|t| t.refused.is_none());
        if live().filter(|t| t.publisher == user).count() >= limits.tracks_per_member_max as usize {
            return Some("media_tracks_per_member_max");
        }
        let mut publishers: Vec<UserIndex> = live()
            .filter(|t| t.kind == kind && t.publisher != user)
            .map(|t| t.publisher)
            .collect();
        publishers.sort_unstable();
        publishers.dedup();
        let max = match kind {
            TrackKind::Audio => limits.audio_publishers_max,
            TrackKind::Video => limits.video_publishers_max,
        };
        let already = live().any(|t| t.kind == kind && t.publisher == user);
        if !already && publishers.len() >= max as usize {
            return Some(match kind {
                TrackKind::Audio => "media_audio_publishers_max",
                TrackKind::Video => "media_video_publishers_max",
            });
        }
        None
    }

    /// Tells the others of `user`'s tracks not yet announced and offers
    /// them; tells `user` of its refused ones.
    pub(super) fn announce_tracks_of(&mut self, user: UserIndex, io: &mut Io<'_>) {
        let tick = self.tick_now();
        for t in self
            .tracks
            .list
            .iter_mut()
            .filter(|t| t.publisher == user && !t.announced)
        {
            t.announced = true;
            if let Some(reason) = t.refused {
                let refusal = server_action(
                    TRACK_REFUSED,
                    Target::User(user.0),
                    format!("the track on mid {}: over instance.{reason}", t.mid).into_bytes(),
                );
                if let Some(m) = self.members.iter_mut().find(|m| m.user == user) {
                    let _ = m.send(
                        io,
                        Channel::Actions,
                        MessageKind::ActionBroadcast,
                        tick,
                        &refusal,
                    );
                }
                continue;
            }
            for m in &mut self.members {
                // Members still connecting are offered it when they open.
                if m.user != user && m.is_listening() {
                    offer_track(m, t, io, tick);
                }
            }
            if t.moderated {
                // Everyone, its publisher too, learns it is held.
                let state = track_state(t);
                for m in self.members.iter_mut().filter(|m| m.is_listening()) {
                    if m.topics.wants(MEDIA_TOPIC) {
                        let _ = m.send(
                            io,
                            Channel::Actions,
                            MessageKind::ActionBroadcast,
                            tick,
                            &state,
                        );
                    }
                }
            }
        }
    }

    /// Member `user` stopped publishing the track on `mid`.
    pub fn unpublish(&mut self, user: UserIndex, mid: Mid, io: &mut Io<'_>) {
        self.remove_tracks(|t| t.publisher == user && t.mid == mid, io);
    }

    /// Every track of a member who left, and what it was sent.
    pub(super) fn unpublish_all(&mut self, user: UserIndex, io: &mut Io<'_>) {
        self.remove_tracks(|t| t.publisher == user, io);
        for t in &mut self.tracks.list {
            t.subscribers.retain(|s| s.user != user);
        }
    }

    fn remove_tracks(&mut self, which: impl Fn(&Track) -> bool, io: &mut Io<'_>) {
        while let Some(i) = self.tracks.list.iter().position(&which) {
            let track = self.tracks.list.remove(i);
            if self.tracks.speaker.track == Some(track.id) {
                self.tracks.speaker.track = None;
            }
            self.track_gone(track, io);
        }
    }

    fn track_gone(&mut self, track: Track, io: &mut Io<'_>) {
        if !track.is_forwarded() {
            return;
        }
        let tick = self.tick_now();
        let removed = TrackRemoved { track: track.id };
        for m in &mut self.members {
            if m.user == track.publisher || !m.is_listening() {
                continue;
            }
            let _ = m.send(
                io,
                Channel::Actions,
                MessageKind::TrackRemoved,
                tick,
                &removed,
            );
            io.out.stop_track(m.link, track.id);
        }
    }

    /// A joiner learns of the tracks published before it came (and of
    /// their mute, pause and moderation) and is offered them.
    pub(super) fn introduce_tracks(&mut self, i: usize, io: &mut Io<'_>) {
        let tick = self.tick_now();
        let speaker = self.speaker_action();
        let member = &mut self.members[i];
        let me = member.user;
        for t in self
            .tracks
            .list
            .iter_mut()
            .filter(|t| t.publisher != me && t.is_forwarded())
        {
            offer_track(member, t, io, tick);
            if t.held() && member.topics.wants(MEDIA_TOPIC) {
                let state = track_state(t);
                let _ = member.send(
                    io,
                    Channel::Actions,
                    MessageKind::ActionBroadcast,
                    tick,
                    &state,
                );
            }
        }
        if let Some(speaker) = speaker
            && member.topics.wants(MEDIA_TOPIC)
        {
            let _ = member.send(
                io,
                Channel::Actions,
                MessageKind::ActionBroadcast,
                tick,
                &speaker,
            );
        }
    }

    /// One packet of the track member `user` publishes on `mid`: written to
    /// each subscriber of the track (its payload shared, not copied), of a
    /// simulcast track only to those on the packet's layer.
    pub fn forward_rtp(&mut self, user: UserIndex, mid: Mid, rtp: &RtpIn, io: &mut Io<'_>) {
        let Some(ti) = self.tracks.position(user, mid) else {
            *io.metrics.dropped.entry("rtp_no_track").or_default() += 1;
            return;
        };
        let limits = self.config.media;
        let now = io.now;
        let tick = self.tick_now();
        let track = &mut self.tracks.list[ti];
        if track.refused.is_some() {
            *io.metrics.dropped.entry("rtp_track_refused").or_default() += 1;
            return;
        }
        io.metrics.media_packets_in += 1;
        let bytes = rtp.packet.payload.len() as u64;
        if track.held() {
            *io.metrics.dropped.entry("rtp_track_held").or_default() += 1;
            return;
        }
        if !take_budget(track, &limits, bytes, now) {
            *io.metrics.dropped.entry("rtp_over_bitrate").or_default() += 1;
            if !track.budget.told {
                track.budget.told = true;
                self.bitrate_capped(ti, io);
            }
            return;
        }
        if track.kind == TrackKind::Audio
            && let Some(level) = rtp.packet.header.ext_vals.audio_level
        {
            // RFC 6464: 0 is the loudest, -127 silence (str0m gives -dBov
            // negated).
            let loud = 127.0 - f32::from(level.unsigned_abs().min(127));
            track.peak = track.peak.max(loud);
        }
        // The packet's layer: its place among the track's layers.
        let layer = match (rtp.rid, track.layers.is_empty()) {
            (None, true) => None,
            (Some(rid), false) => match track.layers.index_of(rid) {
                Some(i) => Some(i as u8),
                None => {
                    *io.metrics.dropped.entry("rtp_unknown_layer").or_default() += 1;
                    return;
                }
            },
            // A layer of a track not announced as simulcast, or a packet
            // without one of a simulcast track: mixing them would shuffle
            // the receivers' streams.
            _ => {
                *io.metrics.dropped.entry("rtp_unknown_layer").or_default() += 1;
                return;
            }
        };
        if let Some(l) = layer {
            track.layer_seen[usize::from(l)] = Some(now);
            track.first_packet.get_or_insert(now);
        }
        let mut keyframe: Option<bool> = None;
        // Layers some receiver waits for a keyframe of.
        let mut waiting = [false; SIMULCAST_LAYERS_MAX];
        let track_id = track.id;
        let layer_count = track.layers.len();
        for si in 0..track.subscribers.len() {
            let s = track.subscribers[si];
            if !s.on {
                continue;
            }
            if let Some(l) = layer {
                let target = track.target(s.wanted, now);
                if s.current == Some(l) {
                    // The layer it is on, until its next one starts.
                    if let Some(t) = target.filter(|t| Some(*t) != s.current) {
                        waiting[usize::from(t)] = true;
                    }
                } else if target == Some(l) {
                    // A codec whose keyframes the node cannot find (AV1,
                    // H.265) switches at once; the receiver asks for a
                    // keyframe itself.
                    let key = *keyframe.get_or_insert_with(|| {
                        rtp.video_codec()
                            .is_none_or(|c| starts_keyframe(c, &rtp.packet.payload))
                    });
                    if !key {
                        waiting[usize::from(l)] |= !s.stalled;
                        continue;
                    }
                    // The receiver's m-line may not be agreed yet: the
                    // switch holds only once a packet of it went out.
                    if let Err(e) = io.out.write_rtp(s.link, track_id, rtp) {
                        *io.metrics.dropped.entry(e.label()).or_default() += 1;
                        track.subscribers[si].stalled = true;
                        continue;
                    }
                    io.metrics.media_packets_forwarded += 1;
                    io.metrics.media_bytes_forwarded += bytes;
                    track.subscribers[si].current = Some(l);
                    if s.current.is_some() {
                        io.metrics.media_layer_switches += 1;
                    }
                    let switched = serde_json::json!({
                        "track": track_id,
                        "layer": Layer::of_index(usize::from(l), layer_count).name(),
                    });
                    if let Some(m) = self.members.iter_mut().find(|m| m.user == s.user)
                        && m.topics.wants(MEDIA_TOPIC)
                    {
                        let action = server_action(
                            LAYER_SWITCHED,
                            Target::User(s.user.0),
                            switched.to_string().into_bytes(),
                        );
                        let _ = m.send(
                            io,
                            Channel::Actions,
                            MessageKind::ActionBroadcast,
                            tick,
                            &action,
                        );
                    }
                    continue;
                } else {
                    continue;
                }
            }
            match io.out.write_rtp(s.link, track_id, rtp) {
                Ok(()) => {
                    io.metrics.media_packets_forwarded += 1;
                    io.metrics.media_bytes_forwarded += bytes;
                }
                Err(e) => *io.metrics.dropped.entry(e.label()).or_default() += 1,
            }
        }
        // Receivers wait for a keyframe of the layer they go to: ask for
        // one of each such layer (at most every 500 ms a layer).
        for (l, _) in waiting.iter().enumerate().filter(|(_, w)| **w) {
            self.ask_keyframe(ti, Some(l as u8), false, io);
        }
        if self.tracks.list[ti].kind == TrackKind::Audio {
            self.choose_speaker(io);
        }
    }

    /// Asks the publisher of track `ti` for a keyframe of `layer`, at most
    /// once per [`KEYFRAME_REQUEST_INTERVAL`] a layer (a receiver's request
    /// within it counts as coalesced). True when relayed.
    fn ask_keyframe(
        &mut self,
        ti: usize,
        layer: Option<u8>,
        for_receiver: bool,
        io: &mut Io<'_>,
    ) -> bool {
        let t = &mut self.tracks.list[ti];
        let slot = usize::from(layer.unwrap_or(0));
        if t.keyframe_asked[slot]
            .is_some_and(|at| io.now.saturating_duration_since(at) < KEYFRAME_REQUEST_INTERVAL)
        {
            if for_receiver {
                io.metrics.media_keyframe_requests_coalesced += 1;
            }
            return false;
        }
        let rid = layer.and_then(|l| t.layers.get(usize::from(l)));
        let Ok(p) = self.members.binary_search_by_key(&t.publisher, |m| m.user) else {
            return false;
        };
        if io.out.request_keyframe(self.members[p].link, t.mid, rid) {
            t.keyframe_asked[slot] = Some(io.now);
            io.metrics.media_keyframe_requests += 1;
            return true;
        }
        false
    }

    /// Member `user` answered an offer: simulcast tracks it could not be
    /// switched onto (no m-line agreed yet) are asked for a keyframe of
    /// its layer again.
    fn unstall(&mut self, user: UserIndex, io: &mut Io<'_>) {
        let now = io.now;
        for ti in 0..self.tracks.list.len() {
            let t = &mut self.tracks.list[ti];
            let Some(s) = t.subscribers.iter_mut().find(|s| s.user == user) else {
                continue;
            };
            if !std::mem::take(&mut s.stalled) || !s.on {
                continue;
            }
            let (wanted, current) = (s.wanted, s.current);
            if let Some(l) = t.target(wanted, now).filter(|l| current != Some(*l)) {
                self.ask_keyframe(ti, Some(l), false, io);
            }
        }
    }

    /// Asks for a keyframe of every layer of video track `ti`.
    fn ask_keyframes(&mut self, ti: usize, io: &mut Io<'_>) {
        let layers = self.tracks.list[ti].layers.len();
        if layers == 0 {
            self.ask_keyframe(ti, None, false, io);
        }
        for l in 0..layers {
            self.ask_keyframe(ti, Some(l as u8), false, io);
        }
    }

    /// Receiver `from` asks for a keyframe of `track`: relayed to its
    /// publisher as a PLI (of the layer `from` is sent or going to), at
    /// most once per [`KEYFRAME_REQUEST_INTERVAL`].
    pub fn keyframe_request(&mut self, from: UserIndex, track: u32, io: &mut Io<'_>) {
        let Some(ti) = self
            .tracks
            .list
            .iter()
            .position(|t| t.id == track && t.refused.is_none())
        else {
            return;
        };
        let t = &self.tracks.list[ti];
        let layer = if t.layers.is_empty() {
            None
        } else {
            let Some(s) = t.subscribers.iter().find(|s| s.user == from) else {
                return;
            };
            match t.target(s.wanted, io.now).or(s.current) {
                Some(l) => Some(l),
                None => return, // No layer sends: nothing to ask.
            }
        };
        self.ask_keyframe(ti, layer, true, io);
    }

    /// A member's request on topic `media` (an action to the server):
    /// subscribe, unsubscribe, layer, mute, unmute, pause, resume. A bad
    /// one is refused with an action back (type `refused`).
    pub(super) fn media_request(
        &mut self,
        user: UserIndex,
        action_type: &str,
        payload: &[u8],
        io: &mut Io<'_>,
    ) {
        if let Err(reason) = self.try_media_request(user, action_type, payload, io) {
            *io.metrics
                .refused_messages
                .entry("media_request")
                .or_default() += 1;
            let track = serde_json::from_slice::<serde_json::Value>(payload)
                .ok()
                .and_then(|v| v.get("track").and_then(|t| t.as_u64()));
            let refusal = serde_json::json!({
                "type": action_type,
                "track": track,
                "reason": reason,
            });
            let action = server_action(
                REQUEST_REFUSED,
                Target::User(user.0),
                refusal.to_string().into_bytes(),
            );
            let tick = self.tick_now();
            self.tell(io, user, MessageKind::ActionBroadcast, tick, &action);
        }
    }

    fn try_media_request(
        &mut self,
        user: UserIndex,
        action_type: &str,
        payload: &[u8],
        io: &mut Io<'_>,
    ) -> Result<(), String> {
        let request: MediaRequest = serde_json::from_slice(payload).map_err(|e| {
            format!("the payload must be JSON {{\"track\": id}} or {{\"mid\": mid}}: {e}")
        })?;
        let ti = match (request.track, &request.mid) {
            (Some(_), Some(_)) => {
                return Err("name the track by \"track\" or by \"mid\", not both".into());
            }
            (Some(id), None) => self
                .tracks
                .list
                .iter()
                .position(|t| t.id == id && t.is_forwarded())
                .ok_or_else(|| format!("no track {id} in this instance"))?,
            (None, Some(mid)) => self
                .tracks
                .list
                .iter()
                .position(|t| t.publisher == user && t.mid.to_string() == *mid)
                .ok_or_else(|| format!("you publish no track on mid {mid:?}"))?,
            (None, None) => return Err("name a track (\"track\") or your mid (\"mid\")".into()),
        };
        if !self.tracks.list[ti].is_forwarded() {
            return Err(format!(
                "track {} is not forwarded: over a limit, or not announced yet (your channels \
                 are still opening)",
                self.tracks.list[ti].id
            ));
        }
        let request_track = self.tracks.list[ti].id;
        let now = io.now;
        match action_type {
            "subscribe" | "unsubscribe" | "layer" => {
                let t = &mut self.tracks.list[ti];
                let s = t
                    .subscribers
                    .iter_mut()
                    .find(|s| s.user == user)
                    .ok_or_else(|| format!("track {request_track} is not sent to you"))?;
                let mut keyframe = false;
                match action_type {
                    "subscribe" => {
                        if !s.on {
                            keyframe = t.kind == TrackKind::Video;
                            s.current = None;
                            io.out.restart_rtp(s.link, t.id);
                        }
                        s.on = true;
                    }
                    "unsubscribe" => s.on = false,
                    _ => {
                        if t.layers.is_empty() {
                            return Err(format!("track {} has no simulcast layers", t.id));
                        }
                        let name = request.layer.as_deref().unwrap_or("");
                        s.wanted = Layer::parse(name).ok_or_else(|| {
                            format!("layer {name:?}: one of \"low\", \"mid\", \"high\"")
                        })?;
                        keyframe = s.on;
                    }
                }
                if keyframe {
                    let layer = if t.layers.is_empty() {
                        None
                    } else {
                        let wanted = s.wanted;
                        let current = s.current;
                        t.target(wanted, now).filter(|l| current != Some(*l))
                    };
                    if layer.is_some() || t.layers.is_empty() {
                        self.ask_keyframe(ti, layer, false, io);
                    }
                }
                Ok(())
            }
            "mute" | "unmute" | "pause" | "resume" => {
                let t = &mut self.tracks.list[ti];
                if t.publisher != user {
                    return Err(format!("track {} is not yours", t.id));
                }
                let on = matches!(action_type, "mute" | "pause");
                if !on && action_type == "unmute" && t.moderated {
                    return Err(format!("track {} is muted by a moderator", t.id));
                }
                let flag = if matches!(action_type, "mute" | "unmute") {
                    &mut t.muted
                } else {
                    &mut t.paused
                };
                if *flag == on {
                    return Ok(());
                }
                *flag = on;
                let resumed = !t.held();
                if resumed {
                    // Receivers go on from the last packet sent; the
                    // publisher is asked for a video keyframe (simulcast
                    // receivers wait for it).
                    for s in &mut t.subscribers {
                        s.current = None;
                        io.out.restart_rtp(s.link, t.id);
                    }
                }
                let resumed = resumed && t.kind == TrackKind::Video;
                self.tell_track_state(ti, io);
                if resumed {
                    self.ask_keyframes(ti, io);
                }
                Ok(())
            }
            other => Err(format!(
                "unknown media request {other:?}: subscribe, unsubscribe, layer, mute, unmute, \
                 pause or resume"
            )),
        }
    }

    /// Tells every member (topic `media`) of track `ti`'s mute, pause and
    /// moderation.
    fn tell_track_state(&mut self, ti: usize, io: &mut Io<'_>) {
        let action = track_state(&self.tracks.list[ti]);
        self.tell_media(&action, io);
    }

    /// Sends a server action to every member subscribed to topic `media`.
    fn tell_media(&mut self, action: &ActionBroadcast, io: &mut Io<'_>) {
        let tick = self.tick_now();
        self.broadcast(
            io,
            None,
            Target::Everyone,
            Some(MEDIA_TOPIC),
            MessageKind::ActionBroadcast,
            tick,
            action,
        );
    }

    /// A moderator mutes (or unmutes) `user_id`'s audio and/or video: its
    /// tracks stop being forwarded, now and in later sessions while the
    /// instance lives; everyone is told. Returns the tracks changed.
    pub fn moderate(
        &mut self,
        user_id: &str,
        audio: bool,
        video: bool,
        muted: bool,
        io: &mut Io<'_>,
    ) -> u32 {
        let entry = self
            .tracks
            .moderated
            .iter()
            .position(|(u, _, _)| u == user_id);
        let (was_audio, was_video) = entry.map_or((false, false), |i| {
            let (_, a, v) = self.tracks.moderated[i];
            (a, v)
        });
        let now_audio = if audio { muted } else { was_audio };
        let now_video = if video { muted } else { was_video };
        if let Some(i) = entry {
            self.tracks.moderated.remove(i);
        }
        if now_audio || now_video {
            if self.tracks.moderated.len() >= MODERATED_USERS_MAX {
                // The oldest mute goes first.
                self.tracks.moderated.remove(0);
            }
            self.tracks
                .moderated
                .push((user_id.to_owned(), now_audio, now_video));
        }
        let publishers: Vec<UserIndex> = self
            .members
            .iter()
            .filter(|m| m.user_id == user_id)
            .map(|m| m.user)
            .collect();
        let mut changed = 0;
        for ti in 0..self.tracks.list.len() {
            let t = &mut self.tracks.list[ti];
            if !publishers.contains(&t.publisher) {
                continue;
            }
            let held = match t.kind {
                TrackKind::Audio => now_audio,
                TrackKind::Video => now_video,
            };
            if t.moderated == held {
                continue;
            }
            t.moderated = held;
            changed += 1;
            let resumed = !t.held();
            if resumed {
                for s in &mut t.subscribers {
                    s.current = None;
                    io.out.restart_rtp(s.link, t.id);
                }
            }
            let video = t.kind == TrackKind::Video;
            if t.is_forwarded() {
                self.tell_track_state(ti, io);
            }
            if resumed && video {
                self.ask_keyframes(ti, io);
            }
        }
        changed
    }

    /// Track `ti` went over its bitrate cap: its publisher is told (once a
    /// track) and asked to slow down (REMB at the cap).
    fn bitrate_capped(&mut self, ti: usize, io: &mut Io<'_>) {
        let t = &self.tracks.list[ti];
        let (key, cap) = match t.kind {
            TrackKind::Audio => (
                "media_audio_bitrate_max",
                self.config.media.audio_bitrate_max,
            ),
            TrackKind::Video => (
                "media_video_bitrate_max",
                self.config.media.video_bitrate_max,
            ),
        };
        let payload = serde_json::json!({
            "track": t.id,
            "reason": format!("over instance.{key} ({cap} bit/s): packets beyond are dropped"),
        });
        let action = server_action(
            TRACK_LIMITED,
            Target::User(t.publisher.0),
            payload.to_string().into_bytes(),
        );
        let (publisher, mid) = (t.publisher, t.mid);
        let video = t.kind == TrackKind::Video;
        let rids: Vec<_> = (0..t.layers.len())
            .filter_map(|l| t.layers.get(l))
            .collect();
        *io.metrics
            .refused_messages
            .entry(match t.kind {
                TrackKind::Audio => "media_audio_bitrate_max",
                TrackKind::Video => "media_video_bitrate_max",
            })
            .or_default() += 1;
        let tick = self.tick_now();
        self.tell(io, publisher, MessageKind::ActionBroadcast, tick, &action);
        // A REMB caps the publisher's whole connection: only a video cap
        // (the larger) is worth asking for; an audio track is only cut.
        if video && let Ok(p) = self.members.binary_search_by_key(&publisher, |m| m.user) {
            let link = self.members[p].link;
            if rids.is_empty() {
                io.out.request_bitrate(link, mid, None, cap);
            }
            for rid in rids {
                io.out.request_bitrate(link, mid, Some(rid), cap);
            }
        }
    }

    /// Picks the active speaker from the audio tracks' levels, at most
    /// every [`SPEAKER_INTERVAL`]; a change is announced to everyone.
    fn choose_speaker(&mut self, io: &mut Io<'_>) {
        let now = io.now;
        let speaker = &self.tracks.speaker;
        if speaker
            .chosen_at
            .is_some_and(|at| now.saturating_duration_since(at) < SPEAKER_INTERVAL)
        {
            return;
        }
        self.tracks.speaker.chosen_at = Some(now);
        // Each track's loudest packet since the last choice: a short word
        // counts as much as a long one.
        for t in &mut self.tracks.list {
            t.last_peak = std::mem::take(&mut t.peak);
        }
        let speech = f32::from(127 - SPEECH_LEVEL_MAX);
        let speaking = |t: &&Track| {
            t.kind == TrackKind::Audio && t.is_forwarded() && !t.held() && t.last_peak >= speech
        };
        let Some(loudest) = self
            .tracks
            .list
            .iter()
            .filter(speaking)
            .max_by(|a, b| a.last_peak.total_cmp(&b.last_peak))
        else {
            return;
        };
        let current = self
            .tracks
            .speaker
            .track
            .and_then(|id| self.tracks.list.iter().find(|t| t.id == id))
            .filter(speaking);
        let change = match current {
            None => true,
            Some(c) => c.id != loudest.id && loudest.last_peak >= c.last_peak + SPEAKER_MARGIN_DB,
        };
        if !change {
            return;
        }
        self.tracks.speaker.track = Some(loudest.id);
        io.metrics.media_speaker_changes += 1;
        if let Some(action) = self.speaker_action() {
            self.tell_media(&action, io);
        }
    }

    /// The action announcing the current active speaker, if any.
    fn speaker_action(&self) -> Option<ActionBroadcast> {
        let id = self.tracks.speaker.track?;
        let t = self.tracks.list.iter().find(|t| t.id == id)?;
        let payload = serde_json::json!({
            "user": t.publisher.0,
            "track": t.id,
            "level": -(127.0 - t.last_peak).round(),
        });
        Some(server_action(
            ACTIVE_SPEAKER,
            Target::Everyone,
            payload.to_string().into_bytes(),
        ))
    }

    /// The connection layer's offer for member `user` (tracks added or
    /// removed): sent over `actions`.
    pub fn send_offer(&mut self, user: UserIndex, sdp: String, io: &mut Io<'_>) {
        let tick = self.tick_now();
        let Some(i) = self.members.binary_search_by_key(&user, |m| m.user).ok() else {
            return;
        };
        let offer = Sdp {
            kind: SdpKind::Offer,
            sdp,
        };
        if self.members[i]
            .send(io, Channel::Actions, MessageKind::ServerSdp, tick, &offer)
            .is_err()
        {
            // Its answer will never come: this member's media changes stop
            // until it offers itself (which drops the node's offer).
            *io.metrics.dropped.entry("sdp_offer_unsent").or_default() += 1;
        }
    }

    /// A member's offer or answer.
    pub(super) fn member_sdp(&mut self, i: usize, sdp: Sdp, io: &mut Io<'_>) {
        let tick = self.tick_now();
        let link = self.members[i].link;
        match sdp.kind {
            SdpKind::Offer => match io.out.accept_media_offer(link, &sdp.sdp) {
                Ok(answer) => {
                    let answer = Sdp {
                        kind: SdpKind::Answer,
                        sdp: answer,
                    };
                    let _ = self.members[i].send(
                        io,
                        Channel::Actions,
                        MessageKind::ServerSdp,
                        tick,
                        &answer,
                    );
                }
                Err(e) => {
                    tracing::debug!(instance = %self.id, "a member's offer refused: {e}");
                    *io.metrics.refused_messages.entry("sdp_offer").or_default() += 1;
                }
            },
            SdpKind::Answer => match io.out.accept_media_answer(link, &sdp.sdp) {
                Ok(()) => self.unstall(self.members[i].user, io),
                Err(e) => {
                    tracing::debug!(instance = %self.id, "a member's answer refused: {e}");
                    *io.metrics.refused_messages.entry("sdp_answer").or_default() += 1;
                }
            },
        }
    }
}

/// Takes a packet's bits from its track's bucket: refilled at the track's
/// cap, holding at most one second of it. False when the track is over.
fn take_budget(t: &mut Track, limits: &MediaLimits, bytes: u64, now: Instant) -> bool {
    let cap = f64::from(match t.kind {
        TrackKind::Audio => limits.audio_bitrate_max,
        TrackKind::Video => limits.video_bitrate_max,
    });
    let b = &mut t.budget;
    b.bits = match b.at {
        None => cap,
        Some(at) => (b.bits + now.saturating_duration_since(at).as_secs_f64() * cap).min(cap),
    };
    b.at = Some(now);
    let need = (bytes * 8) as f64;
    if b.bits < need {
        return false;
    }
    b.bits -= need;
    true
}

/// Tells member `m` of track `t`, has the connection layer offer it, and
/// makes `m` a subscriber (until it unsubscribes).
fn offer_track(m: &mut Member, t: &mut Track, io: &mut Io<'_>, tick: u32) {
    let added = TrackAdded {
        track: t.id,
        publisher: t.publisher.0,
        kind: t.kind,
    };
    let _ = m.send(io, Channel::Actions, MessageKind::TrackAdded, tick, &added);
    io.out.send_track(m.link, t.id, t.kind);
    if !t.subscribers.iter().any(|s| s.user == m.user) {
        t.subscribers.push(Subscriber {
            user: m.user,
            link: m.link,
            on: true,
            wanted: Layer::High,
            current: None,
            stalled: false,
        });
    }
}

/// What the [`super::Outbox`] does with media when it is not the
/// connection layer (tests that record frames): nothing.
pub(super) fn no_media<T>() -> Result<T, String> {
    Err("this outbox carries no media".into())
}

pub(super) fn no_rtp() -> Result<(), RtpDrop> {
    Err(RtpDrop::Gone)
}
