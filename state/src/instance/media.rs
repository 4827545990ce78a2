//! The instance's side of its members' voice and video: which tracks are
//! published, by whom, and forwarding each packet of one to the other
//! members. The connection layer negotiates and writes (see
//! `net::conn`'s media); this decides who gets what.

use std::time::{Duration, Instant};

use engine::UserIndex;
use net::conn::{Mid, RtpDrop, RtpIn};
use net::messages::{
    ActionBroadcast, Cache, Sdp, SdpKind, Target, TrackAdded, TrackKind, TrackRemoved,
};
use net::{Channel, MessageKind};

use super::{Instance, Io, Member};

/// Keyframe requests relayed to a track's publisher at most this often
/// (receivers' PLIs and FIRs in between are answered by the same keyframe).
pub const KEYFRAME_REQUEST_INTERVAL: Duration = Duration::from_millis(500);

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
}

impl Default for MediaLimits {
    fn default() -> Self {
        MediaLimits {
            tracks_per_member_max: 4,
            audio_publishers_max: 50,
            video_publishers_max: 16,
        }
    }
}

/// The topic and type of the server's action telling a member a track of
/// its was refused (payload: the reason, UTF-8).
pub const MEDIA_TOPIC: &str = "media";
pub const TRACK_REFUSED: &str = "track_refused";

/// A track a member publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Track {
    /// Instance-wide, never reused.
    pub id: u32,
    pub publisher: UserIndex,
    /// Its m-line in the publisher's connection.
    pub mid: Mid,
    pub kind: TrackKind,
    /// When a keyframe was last asked of the publisher.
    keyframe_asked: Option<Instant>,
    /// Told to the others (its publisher has joined).
    announced: bool,
    /// Over a limit: never announced nor forwarded; the publisher is told.
    refused: Option<&'static str>,
}

/// The published tracks of an instance.
#[derive(Debug, Default)]
pub struct Tracks {
    next_id: u32,
    list: Vec<Track>,
}

impl Tracks {
    pub fn iter(&self) -> impl Iterator<Item = &Track> {
        self.list.iter()
    }

    fn find(&self, publisher: UserIndex, mid: Mid) -> Option<&Track> {
        self.list
            .iter()
            .find(|t| t.publisher == publisher && t.mid == mid)
    }
}

impl Instance {
    pub fn tracks(&self) -> &Tracks {
        &self.tracks
    }

    /// Member `user` publishes a track on `mid`: it is announced to the
    /// others (`TrackAdded`) and offered to each of them.
    /// A track over a limit is refused: not forwarded, and its publisher
    /// told with an action (topic `media`, type `track_refused`).
    pub fn publish(&mut self, user: UserIndex, mid: Mid, kind: TrackKind, io: &mut Io<'_>) {
        let Some(member) = self.member(user) else {
            return;
        };
        if self.tracks.find(user, mid).is_some() {
            return;
        }
        let joined = member.is_listening();
        let refused = self.over_limit(user, kind);
        let track = Track {
            id: self.tracks.next_id,
            publisher: user,
            mid,
            kind,
            keyframe_asked: None,
            announced: false,
            refused,
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
                let refusal = ActionBroadcast {
                    sender: u32::MAX,
                    topic: MEDIA_TOPIC.into(),
                    action_type: TRACK_REFUSED.into(),
                    target: Target::User(user.0),
                    cache: Cache::No,
                    payload: format!("the track on mid {}: over instance.{reason}", t.mid)
                        .into_bytes(),
                };
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
        }
    }

    /// Member `user` stopped publishing the track on `mid`.
    pub fn unpublish(&mut self, user: UserIndex, mid: Mid, io: &mut Io<'_>) {
        self.remove_tracks(|t| t.publisher == user && t.mid == mid, io);
    }

    /// Every track of a member who left.
    pub(super) fn unpublish_all(&mut self, user: UserIndex, io: &mut Io<'_>) {
        self.remove_tracks(|t| t.publisher == user, io);
    }

    fn remove_tracks(&mut self, which: impl Fn(&Track) -> bool, io: &mut Io<'_>) {
        while let Some(i) = self.tracks.list.iter().position(&which) {
            let track = self.tracks.list.remove(i);
            self.track_gone(track, io);
        }
    }

    fn track_gone(&mut self, track: Track, io: &mut Io<'_>) {
        if !track.announced || track.refused.is_some() {
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

    /// A joiner learns of the tracks published before it came and is
    /// offered them.
    pub(super) fn introduce_tracks(&mut self, i: usize, io: &mut Io<'_>) {
        let tick = self.tick_now();
        let member = &mut self.members[i];
        let me = member.user;
        for t in self
            .tracks
            .list
            .iter()
            .filter(|t| t.publisher != me && t.announced && t.refused.is_none())
        {
            offer_track(member, t, io, tick);
        }
    }

    /// One packet of the track member `user` publishes on `mid`: written to
    /// every other listening member (its payload shared, not copied).
    pub fn forward_rtp(&mut self, user: UserIndex, mid: Mid, rtp: &RtpIn, io: &mut Io<'_>) {
        let Some(track) = self.tracks.find(user, mid).copied() else {
            *io.metrics.dropped.entry("rtp_no_track").or_default() += 1;
            return;
        };
        if track.refused.is_some() {
            *io.metrics.dropped.entry("rtp_track_refused").or_default() += 1;
            return;
        }
        io.metrics.media_packets_in += 1;
        let bytes = rtp.packet.payload.len() as u64;
        for m in &self.members {
            if m.user == user || !m.is_listening() {
                continue;
            }
            match io.out.write_rtp(m.link, track.id, rtp) {
                Ok(()) => {
                    io.metrics.media_packets_forwarded += 1;
                    io.metrics.media_bytes_forwarded += bytes;
                }
                Err(e) => *io.metrics.dropped.entry(e.label()).or_default() += 1,
            }
        }
    }

    /// A receiver asks for a keyframe of `track`: relayed to its publisher
    /// as a PLI, at most once per [`KEYFRAME_REQUEST_INTERVAL`].
    pub fn keyframe_request(&mut self, track: u32, io: &mut Io<'_>) {
        let Some(t) = self
            .tracks
            .list
            .iter_mut()
            .find(|t| t.id == track && t.refused.is_none())
        else {
            return;
        };
        if t.keyframe_asked
            .is_some_and(|at| io.now.saturating_duration_since(at) < KEYFRAME_REQUEST_INTERVAL)
        {
            io.metrics.media_keyframe_requests_coalesced += 1;
            return;
        }
        let Some(publisher) = self.members.iter().find(|m| m.user == t.publisher) else {
            return;
        };
        if io.out.request_keyframe(publisher.link, t.mid) {
            t.keyframe_asked = Some(io.now);
            io.metrics.media_keyframe_requests += 1;
        }
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
            SdpKind::Answer => {
                if let Err(e) = io.out.accept_media_answer(link, &sdp.sdp) {
                    tracing::debug!(instance = %self.id, "a member's answer refused: {e}");
                    *io.metrics.refused_messages.entry("sdp_answer").or_default() += 1;
                }
            }
        }
    }
}

/// Tells member `m` of track `t` and has the connection layer offer it.
fn offer_track(m: &mut Member, t: &Track, io: &mut Io<'_>, tick: u32) {
    let added = TrackAdded {
        track: t.id,
        publisher: t.publisher.0,
        kind: t.kind,
    };
    let _ = m.send(io, Channel::Actions, MessageKind::TrackAdded, tick, &added);
    io.out.send_track(m.link, t.id, t.kind);
}

/// What the [`super::Outbox`] does with media when it is not the
/// connection layer (tests that record frames): nothing.
pub(super) fn no_media<T>() -> Result<T, String> {
    Err("this outbox carries no media".into())
}

pub(super) fn no_rtp() -> Result<(), RtpDrop> {
    Err(RtpDrop::Gone)
}
