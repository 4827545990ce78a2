//! The media of one connection (str0m in RTP mode): the tracks its client
//! publishes, the tracks the node forwards to it, and the SDP exchanges
//! that add and remove the latter.
//!
//! The node offers when it has tracks to add or remove: one offer at a
//! time, carrying every change queued since the last one. The client
//! offers when it adds or removes tracks it publishes. When both offer at
//! once the node gives way: it drops its own offer, answers the client's,
//! and offers its changes again afterwards (the client may ignore an offer
//! that arrives while its own waits; `docs/media.md`).

use std::sync::Arc;
use std::time::Instant;

use str0m::Rtc;
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::format::PayloadParams;
use str0m::media::{Direction, MediaKind, Mid, Pt, Rid, Simulcast};
use str0m::rtp::{ExtensionValues, RtpWrite, SeqNo};

use super::peer::Said;
use crate::messages::TrackKind;

/// A track the node sends this connection.
#[derive(Debug)]
pub(super) struct SentTrack {
    /// The instance's track id.
    pub track: u32,
    pub kind: TrackKind,
    /// Its m-line.
    pub mid: Mid,
    pub state: SentState,
    /// Forwarded sequence numbers: the first packet's source number and
    /// the number it went out as; later ones keep their distance.
    seq_base: Option<(u64, u64)>,
    /// The last source payload type and the one it maps to here.
    pt_map: Option<(Pt, Pt)>,
    /// The simulcast layer forwarded last: a packet of another starts a
    /// new numbering (sequence and time continue from the last sent).
    source_rid: Option<Rid>,
    /// Added to the source's RTP time (non-zero after a layer switch).
    ts_offset: u32,
    /// The newest packet sent: its number, time and arrival.
    last_out: Option<(u64, u32, Instant)>,
    /// The next packet starts a new numbering (forwarding resumes after a
    /// pause: no gap the receiver would take for losses).
    rebase: bool,
}

/// Where a sent track's m-line stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SentState {
    /// In the node's offer, not answered yet.
    Offered,
    /// Answered: packets flow.
    Live,
    /// Stopped in the node's offer, not answered yet (no packets).
    Stopping,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    Add(u32, TrackKind),
    Remove(u32),
}

/// Simulcast layers a track may have.
pub const SIMULCAST_LAYERS_MAX: usize = 3;

/// The simulcast layers of a published track, lowest first: the order of
/// the publisher's `a=simulcast:send` line. Empty without simulcast.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Layers {
    rids: [Option<Rid>; SIMULCAST_LAYERS_MAX],
}

impl Layers {
    /// The first [`SIMULCAST_LAYERS_MAX`] of `rids`, lowest first.
    pub fn new(rids: impl IntoIterator<Item = Rid>) -> Layers {
        let mut layers = Layers::default();
        for (slot, rid) in layers.rids.iter_mut().zip(rids) {
            *slot = Some(rid);
        }
        layers
    }

    /// A publisher's layers from its m-line's simulcast (the layers the
    /// node receives).
    pub(super) fn of(simulcast: Option<&Simulcast>) -> Layers {
        Layers::new(
            simulcast
                .into_iter()
                .flat_map(|s| s.recv.iter().map(|l| l.rid)),
        )
    }

    pub fn len(&self) -> usize {
        self.rids.iter().flatten().count()
    }

    pub fn is_empty(&self) -> bool {
        self.rids[0].is_none()
    }

    /// The layer's place, 0 the lowest.
    pub fn index_of(&self, rid: Rid) -> Option<usize> {
        self.rids.iter().position(|r| *r == Some(rid))
    }

    pub fn get(&self, index: usize) -> Option<Rid> {
        self.rids.get(index).copied().flatten()
    }
}

#[derive(Debug, Default)]
pub(super) struct ConnMedia {
    /// Mids the client publishes on, with their kind.
    pub published: Vec<(Mid, TrackKind)>,
    /// The simulcast layers of every m-line the client offered to send on
    /// (kept when it stops, for when it sends again).
    layers: Vec<(Mid, Layers)>,
    pub sent: Vec<SentTrack>,
    queued: Vec<Change>,
    pending: Option<(SdpPendingOffer, Vec<Change>)>,
}

/// Why a forwarded packet was not written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RtpDrop {
    /// The connection is gone.
    Gone,
    /// The track is not (yet) negotiated with this client.
    NotNegotiated,
    /// The client's answer left out the packet's codec.
    NoCodec,
    /// Negotiated, but str0m has no send stream for it.
    NoStream,
    /// Older than the first packet forwarded to this receiver (reordered):
    /// its number would go before the receiver's first.
    BeforeFirst,
}

impl RtpDrop {
    pub fn label(self) -> &'static str {
        match self {
            RtpDrop::Gone => "rtp_conn_gone",
            RtpDrop::NotNegotiated => "rtp_not_negotiated",
            RtpDrop::NoCodec => "rtp_no_codec",
            RtpDrop::NoStream => "rtp_no_stream",
            RtpDrop::BeforeFirst => "rtp_before_first",
        }
    }
}

pub(super) fn track_kind(kind: MediaKind) -> TrackKind {
    match kind {
        MediaKind::Audio => TrackKind::Audio,
        MediaKind::Video => TrackKind::Video,
    }
}

pub(crate) fn media_kind(kind: TrackKind) -> MediaKind {
    match kind {
        TrackKind::Audio => MediaKind::Audio,
        TrackKind::Video => MediaKind::Video,
    }
}

/// Adds a `sendonly` m-line of `kind` whose `a=msid` names `stream`.
pub(crate) fn add_sendonly(
    api: &mut str0m::change::SdpApi<'_>,
    kind: TrackKind,
    stream: String,
) -> Mid {
    api.add_media(
        media_kind(kind),
        Direction::SendOnly,
        Some(stream.clone()),
        Some(stream),
        None,
    )
}

/// The `a=msid` stream id of the m-line that carries instance track `track`.
pub fn track_stream_id(track: u32) -> String {
    format!("track-{track}")
}

impl ConnMedia {
    /// A media section was added or its direction changed (str0m's
    /// `MediaAdded`, `MediaChanged`): says whether the client now publishes
    /// on it, or no longer does.
    /// `simulcast` is the m-line's, known when it is added.
    pub fn changed(
        &mut self,
        mid: Mid,
        kind: MediaKind,
        direction: Direction,
        simulcast: Option<&Simulcast>,
    ) -> Option<Said> {
        if self.sent.iter().any(|t| t.mid == mid) {
            return None;
        }
        if simulcast.is_some() && !self.layers.iter().any(|(m, _)| *m == mid) {
            self.layers.push((mid, Layers::of(simulcast)));
        }
        let receiving = matches!(direction, Direction::RecvOnly | Direction::SendRecv);
        let known = self.published.iter().position(|(m, _)| *m == mid);
        match (receiving, known) {
            (true, None) => {
                let kind = track_kind(kind);
                self.published.push((mid, kind));
                let layers = self
                    .layers
                    .iter()
                    .find(|(m, _)| *m == mid)
                    .map(|(_, l)| *l)
                    .unwrap_or_default();
                Some(Said::Published(mid, kind, layers))
            }
            (false, Some(i)) => {
                self.published.swap_remove(i);
                Some(Said::Unpublished(mid))
            }
            _ => None,
        }
    }

    /// The instance track a mid of this connection's sends.
    pub fn sent_track(&self, mid: Mid) -> Option<u32> {
        self.sent.iter().find(|t| t.mid == mid).map(|t| t.track)
    }

    /// Queues a track to add to what this connection is sent.
    pub fn send_track(&mut self, track: u32, kind: TrackKind) {
        let before = self.queued.len();
        self.queued.retain(|c| *c != Change::Remove(track));
        if self.queued.len() != before {
            return; // Its removal was still queued: it simply stays.
        }
        let known = self
            .sent
            .iter()
            .any(|t| t.track == track && t.state != SentState::Stopping)
            || self.queued.contains(&Change::Add(track, kind));
        if !known {
            self.queued.push(Change::Add(track, kind));
        }
    }

    /// The next packet forwarded on `track` continues the numbering from
    /// the last one sent, whatever its source number.
    pub fn restart_track(&mut self, track: u32) {
        if let Some(t) = self.sent.iter_mut().find(|t| t.track == track) {
            t.rebase = true;
        }
    }

    /// Queues a track to stop sending.
    pub fn stop_track(&mut self, track: u32) {
        let before = self.queued.len();
        self.queued
            .retain(|c| !matches!(c, Change::Add(t, _) if *t == track));
        if self.queued.len() != before {
            return; // Never offered.
        }
        let sent = self
            .sent
            .iter()
            .any(|t| t.track == track && t.state != SentState::Stopping);
        if sent && !self.queued.contains(&Change::Remove(track)) {
            self.queued.push(Change::Remove(track));
        }
    }

    /// Whether an offer is due: changes queued and none waiting.
    pub fn wants_offer(&self) -> bool {
        self.pending.is_none() && !self.queued.is_empty()
    }

    /// Makes the offer carrying the queued changes, for the client (sent
    /// over `actions`). A stopped m-line is never used again (RFC 8843);
    /// the client may recycle it.
    pub fn offer(&mut self, rtc: &mut Rtc) -> Option<String> {
        if !self.wants_offer() {
            return None;
        }
        let changes = std::mem::take(&mut self.queued);
        let mut api = rtc.sdp_api();
        for &change in &changes {
            match change {
                Change::Add(track, kind) => {
                    let mid = add_sendonly(&mut api, kind, track_stream_id(track));
                    self.sent.push(SentTrack {
                        track,
                        kind,
                        mid,
                        state: SentState::Offered,
                        seq_base: None,
                        pt_map: None,
                        source_rid: None,
                        ts_offset: 0,
                        last_out: None,
                        rebase: false,
                    });
                }
                Change::Remove(track) => {
                    if let Some(t) = self.sent.iter_mut().find(|t| t.track == track) {
                        api.stop_media(t.mid);
                        t.state = SentState::Stopping;
                    }
                }
            }
        }
        let Some((offer, pending)) = api.apply() else {
            // Nothing to negotiate (stops of m-lines already stopped).
            self.sent.retain(|t| t.state != SentState::Stopping);
            return None;
        };
        self.pending = Some((pending, changes));
        Some(offer.to_sdp_string())
    }

    /// The client's answer to the node's offer. When str0m refuses it, the
    /// offer's changes are queued again.
    pub fn accept_answer(&mut self, rtc: &mut Rtc, answer: &str) -> Result<(), String> {
        if self.pending.is_none() {
            // Checked first: answers are not rate-limited, parsing is not free.
            return Err("no offer of the node's is waiting for an answer".into());
        }
        let answer = SdpAnswer::from_sdp_string(answer).map_err(|e| e.to_string())?;
        let (pending, changes) = self
            .pending
            .take()
            .ok_or_else(|| "no offer of the node's is waiting for an answer".to_owned())?;
        if let Err(e) = rtc.sdp_api().accept_answer(pending, answer) {
            self.requeue(changes);
            return Err(e.to_string());
        }
        // str0m announces no `MediaAdded` for m-lines of its own offer.
        for t in &mut self.sent {
            if t.state == SentState::Offered {
                t.state = SentState::Live;
            }
        }
        self.sent.retain(|t| t.state != SentState::Stopping);
        Ok(())
    }

    /// The client's offer: the node's own waiting offer, if any, is
    /// dropped and its changes queued again. Returns the answer.
    pub fn accept_offer(&mut self, rtc: &mut Rtc, offer: &str) -> Result<String, String> {
        let offer = SdpOffer::from_sdp_string(offer).map_err(|e| e.to_string())?;
        if let Some((_, changes)) = self.pending.take() {
            self.requeue(changes);
        }
        let answer = rtc
            .sdp_api()
            .accept_offer(offer)
            .map_err(|e| e.to_string())?;
        Ok(answer.to_sdp_string())
    }

    /// An offer of the node's that will not be answered: its additions go
    /// back in the queue (their m-lines were never agreed). Its stops
    /// stand: str0m keeps a stopped m-line stopped and says so in every
    /// later offer and answer.
    fn requeue(&mut self, changes: Vec<Change>) {
        let mut again = Vec::new();
        for change in changes {
            if let Change::Add(track, kind) = change {
                self.sent
                    .retain(|t| !(t.track == track && t.state == SentState::Offered));
                let before = self.queued.len();
                self.queued.retain(|c| *c != Change::Remove(track));
                if self.queued.len() == before {
                    again.push(Change::Add(track, kind));
                }
            }
        }
        self.sent.retain(|t| t.state != SentState::Stopping);
        again.append(&mut self.queued);
        self.queued = again;
    }

    /// Writes one forwarded packet on `track`'s stream. `source` is the
    /// packet's codec at its publisher, `rid` its simulcast layer: a
    /// packet of another layer than the last continues the numbering and
    /// the RTP time (so the receiver sees one stream).
    #[allow(clippy::too_many_arguments)]
    pub fn write_rtp(
        &mut self,
        rtc: &mut Rtc,
        track: u32,
        source: &PayloadParams,
        rid: Option<Rid>,
        seq_no: SeqNo,
        time: u32,
        marker: bool,
        ext_vals: &ExtensionValues,
        payload: &Arc<[u8]>,
        wallclock: Instant,
    ) -> Result<(), RtpDrop> {
        let sent = self
            .sent
            .iter_mut()
            .find(|t| t.track == track && t.state == SentState::Live)
            .ok_or(RtpDrop::NotNegotiated)?;
        let mid = sent.mid;
        let pt = match sent.pt_map {
            Some((from, to)) if from == source.pt() => to,
            _ => {
                // Among the payload types the receiver accepted on this
                // m-line: the same codec and settings, else the same codec
                // and clock.
                let spec = source.spec();
                let accepted = rtc
                    .media(mid)
                    .map(|m| m.remote_pts().to_vec())
                    .unwrap_or_default();
                let codecs = rtc.codec_config();
                let candidates = || codecs.iter().filter(|p| accepted.contains(&p.pt()));
                let to = candidates()
                    .find(|p| p.spec() == spec)
                    .or_else(|| {
                        candidates().find(|p| {
                            p.spec().codec == spec.codec && p.spec().clock_rate == spec.clock_rate
                        })
                    })
                    .map(|p| p.pt())
                    .ok_or(RtpDrop::NoCodec)?;
                sent.pt_map = Some((source.pt(), to));
                to
            }
        };
        // Found before any numbering changes: a packet that cannot go
        // leaves no gap.
        let mut api = rtc.direct_api();
        let stream = api.stream_tx_by_mid(mid, None).ok_or(RtpDrop::NoStream)?;
        if (sent.source_rid != rid || sent.rebase)
            && let Some((last_seq, last_time, last_at)) = sent.last_out
        {
            // A layer switch (at a keyframe of the new layer) or a resume:
            // the first packet follows the last sent, later in RTP time
            // by the wall-clock gap (at least 1).
            let clock = u64::from(source.spec().clock_rate.get());
            let gap = wallclock.saturating_duration_since(last_at).as_micros() as u64;
            let step = ((gap * clock) / 1_000_000).clamp(1, u64::from(u32::MAX / 2)) as u32;
            sent.seq_base = Some((*seq_no, last_seq + 1));
            sent.ts_offset = last_time.wrapping_add(step).wrapping_sub(time);
        }
        sent.source_rid = rid;
        sent.rebase = false;
        let (from, to) = *sent.seq_base.get_or_insert((*seq_no, 1));
        if *seq_no < from {
            return Err(RtpDrop::BeforeFirst);
        }
        let out = to + (*seq_no - from);
        let time = time.wrapping_add(sent.ts_offset);
        if sent.last_out.is_none_or(|(last, _, _)| out > last) {
            sent.last_out = Some((out, time, wallclock));
        }
        let out: SeqNo = out.into();
        let nackable = sent.kind == TrackKind::Video;
        // What describes the media goes on; what describes the publisher's
        // transport (its mid and rids, its congestion-control numbers) is
        // this connection's own, which str0m writes.
        let ext = ExtensionValues {
            audio_level: ext_vals.audio_level,
            voice_activity: ext_vals.voice_activity,
            video_orientation: ext_vals.video_orientation,
            video_content_type: ext_vals.video_content_type,
            abs_capture_time: ext_vals.abs_capture_time,
            ..ExtensionValues::default()
        };
        let write = RtpWrite::new(pt, out, time, wallclock, payload.clone())
            .marker(marker)
            .nackable(nackable)
            .ext_vals(ext);
        stream.write_rtp(write);
        Ok(())
    }
}
