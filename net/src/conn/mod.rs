//! The connection layer: the WebRTC peers of one UDP socket, as plain
//! state driven by calls with an explicit `now` (no socket, no clock).
//! It routes datagrams to connections (quinn-proto's `Endpoint`), runs
//! their timers and queues what they transmit; it knows nothing of
//! instances or users.
//!
//! ```text
//! let (key, answer) = conns.accept(&offer, now)?;      // signaling
//! conns.handle_datagram(source, &bytes, now);          // from the socket
//! conns.handle_timeout(now);                           // str0m, connect and idle timers
//! while let Some(e) = conns.poll_event() { … }         // Opened, Message, Closed
//! conns.send(key, Channel::Actions, &frame)?; conns.flush(now);
//! while let Some(t) = conns.poll_transmit() { socket.send_to(&t.contents, t.destination) }
//! ```
//!
//! Demux is O(1): remote address → connection, and for a new address the
//! ICE username fragment in its STUN request → connection.

mod dtls;
pub(crate) mod media;
mod peer;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use str0m::change::SdpOffer;
use str0m::net::{Protocol, Receive, Transmit};
use str0m::{Candidate, IceCreds, Input, Rtc, RtcConfig};

use crate::Channel;
use crate::messages::TrackKind;
use crate::slab::{Key, Slab};
use peer::Conn;

pub use media::{Layers, RtpDrop, SIMULCAST_LAYERS_MAX, track_stream_id};
pub use peer::{CONN_ADDRS_MAX, RtpIn};
pub use str0m::media::{Mid, Rid};

/// A connection's key: it goes stale when the connection is removed.
pub type ConnKey = Key;

/// Characters of the ICE username fragment we issue (RFC 8445 asks ≥ 4).
pub const ICE_UFRAG_LEN: usize = 16;
/// Characters of the ICE password we issue (RFC 8445 asks ≥ 22).
pub const ICE_PASSWORD_LEN: usize = 24;
/// Rounds of polling dirty connections in one [`Connections::flush`].
const FLUSH_ROUNDS_MAX: usize = 64;
/// Stale heap entries tolerated per live connection before the heap is rebuilt.
const TIMERS_PER_CONN_MAX: usize = 4;
/// Stale heap entries always tolerated.
const TIMERS_SLACK: usize = 1024;

/// What the connection layer needs to know.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnConfig {
    /// The address in our ICE candidate (and every `Receive::destination`).
    pub local: SocketAddr,
    /// ICE, DTLS, SCTP and both channels must be up this soon after the answer.
    pub connect_timeout: Duration,
    /// An open connection that sends nothing for this long is closed.
    pub idle_timeout: Duration,
    /// Datagrams waiting for the socket at most; more are dropped and counted.
    pub send_queue_len: usize,
    /// Connections at most.
    pub conns_max: usize,
    /// Whether clients may publish and receive audio and video (RTP mode);
    /// without it their offers' media sections are answered inactive.
    pub media: bool,
    /// Video packets kept per forwarded stream for retransmission (str0m
    /// also keeps at most 3 s of them).
    pub media_packet_cache: usize,
}

/// What the layer tells its user.
#[derive(Debug, PartialEq)]
pub enum ConnEvent {
    /// Both channels are open.
    Opened(ConnKey),
    /// A message arrived on an open channel (str0m's buffer, not a copy).
    Message(ConnKey, Channel, Vec<u8>),
    /// The connection is gone, and its key with it.
    Closed(ConnKey, CloseReason),
    /// The client publishes a track on `Mid` (its join offer or a later
    /// one), with its simulcast layers.
    Published(ConnKey, Mid, TrackKind, Layers),
    /// The client stopped publishing the track on `Mid`.
    Unpublished(ConnKey, Mid),
    /// An offer of the layer's that adds or removes tracks sent to the
    /// client ([`Connections::send_track`]): its user sends it over the
    /// `actions` channel and hands the answer to
    /// [`Connections::accept_media_answer`].
    Offer(ConnKey, String),
    /// The client asks for a keyframe (PLI or FIR) of instance track `u32`,
    /// which the layer sends it.
    KeyframeRequest(ConnKey, u32),
}

/// Why the layer closed a connection by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The remote closed the peer connection or one of our channels, ICE
    /// lost it, or str0m failed.
    Remote,
    /// Not open within the connect timeout.
    ConnectTimedOut,
    /// Open, but nothing heard for the idle timeout.
    IdleTimedOut,
}

/// Why an offer was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AcceptError {
    #[error("{0}")]
    BadOffer(String),
    #[error("the offer has no data channel (m=application) section")]
    NoDataChannel,
    #[error("the layer holds its maximum of {0} connections")]
    Full(usize),
}

/// Why a frame was not written.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("no such connection")]
    Gone,
    #[error("the {0:?} channel is not open")]
    NotOpen(Channel),
    #[error("the channel refused the message (buffer full)")]
    Refused,
    #[error("{0}")]
    Rtc(#[from] str0m::RtcError),
}

/// Datagrams and events dropped, by reason (a metrics label).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Drops(pub BTreeMap<&'static str, u64>);

impl Drops {
    pub fn count(&mut self, reason: &'static str) {
        *self.0.entry(reason).or_default() += 1;
    }
}

/// The layer's counters since it started.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConnStats {
    pub packets_in: u64,
    pub bytes_in: u64,
    pub packets_out: u64,
    pub bytes_out: u64,
    /// Datagrams not queued because the send queue was full.
    pub send_queue_full: u64,
}

/// How long one DTLS certificate serves new connections (dimpl makes them
/// valid for 365 days).
pub const DTLS_CERT_ROTATION: Duration = Duration::from_secs(30 * 24 * 3600);

/// The connections of one socket. See the module documentation.
#[derive(Debug)]
pub struct Connections {
    config: ConnConfig,
    /// What every connection's `Rtc` is built from: ICE-lite and one DTLS
    /// certificate for all of them, made once (str0m would otherwise
    /// generate a P-256 key and sign a certificate for every join). The
    /// key only authenticates the handshake, whose ECDHE keys are fresh per
    /// connection; the SDP answer carries its fingerprint.
    rtc_config: RtcConfig,
    /// When the certificate in `rtc_config` was made (at the first accept,
    /// then again every [`DTLS_CERT_ROTATION`]: dimpl's certificates are
    /// valid for a year).
    cert_made: Option<Instant>,
    rng: StdRng,
    /// Boxed: a connection is about 10 KiB inline (str0m's `Rtc`), so a
    /// slab of them would keep up to as much again in spare capacity,
    /// copy megabytes whenever it grows, and never give back the peak.
    conns: Slab<Box<Conn>>,
    by_addr: HashMap<SocketAddr, ConnKey>,
    by_ufrag: HashMap<String, ConnKey>,
    timers: BinaryHeap<Reverse<(Instant, ConnKey)>>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<ConnEvent>,
    /// RTP packets of published tracks, apart from the events: a queue of
    /// large entries whose capacity is reused (no allocation per packet).
    rtp_in: VecDeque<(ConnKey, Mid, RtpIn)>,
    dirty: Vec<ConnKey>,
    /// The buffer `dirty` is swapped into while it is polled (no allocation per flush).
    flushing: Vec<ConnKey>,
    stats: ConnStats,
    drops: Drops,
}

impl Connections {
    /// `seed` feeds the generator of ICE credentials (the I/O shell passes
    /// OS entropy, tests a constant).
    pub fn new(config: ConnConfig, seed: u64) -> Connections {
        str0m::crypto::from_feature_flags().install_process_default();
        // str0m's providers, but DTLS from one dimpl configuration for all.
        let provider = Arc::new(str0m::crypto::CryptoProvider {
            dtls_provider: &dtls::SHARED_CONFIG_DTLS,
            ..str0m::crypto::from_feature_flags()
        });
        let rtc_config = Rtc::builder()
            .set_ice_lite(true)
            .set_rtp_mode(config.media)
            .set_send_buffer_video(config.media_packet_cache)
            .set_crypto_provider(provider);
        Connections {
            config,
            rtc_config,
            cert_made: None,
            rng: StdRng::seed_from_u64(seed),
            conns: Slab::default(),
            by_addr: HashMap::new(),
            by_ufrag: HashMap::new(),
            timers: BinaryHeap::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            rtp_in: VecDeque::new(),
            dirty: Vec::new(),
            flushing: Vec::new(),
            stats: ConnStats::default(),
            drops: Drops::default(),
        }
    }

    pub fn config(&self) -> &ConnConfig {
        &self.config
    }

    pub fn len(&self) -> usize {
        self.conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    pub fn stats(&self) -> &ConnStats {
        &self.stats
    }

    /// Datagrams and events dropped, by reason (`send_queue_full` included).
    pub fn drops(&self) -> Drops {
        let mut drops = self.drops.clone();
        if self.stats.send_queue_full > 0 {
            drops
                .0
                .insert("send_queue_full", self.stats.send_queue_full);
        }
        drops
    }

    /// Entries in the timer heap, stale ones included.
    pub fn timers_len(&self) -> usize {
        self.timers.len()
    }

    pub fn is_open(&self, key: ConnKey) -> bool {
        self.conns.get(key).is_some_and(|c| c.is_open())
    }

    /// Counts a datagram dropped outside the layer (too large, send failed).
    pub fn drop_datagram(&mut self, reason: &'static str) {
        self.drops.count(reason);
    }

    /// Answers an SDP offer with a new ICE-lite connection.
    pub fn accept(
        &mut self,
        offer_sdp: &str,
        now: Instant,
    ) -> Result<(ConnKey, String), AcceptError> {
        if self.conns.len() >= self.config.conns_max {
            return Err(AcceptError::Full(self.config.conns_max));
        }
        let offer = if self.config.media {
            SdpOffer::from_sdp_string(offer_sdp)
        } else {
            SdpOffer::from_sdp_string(&media_inactive(offer_sdp))
        }
        .map_err(|e| AcceptError::BadOffer(e.to_string()))?;
        let ufrag = self.random_token(ICE_UFRAG_LEN);
        let creds = IceCreds {
            ufrag: ufrag.clone(),
            pass: self.random_token(ICE_PASSWORD_LEN),
        };
        self.rotate_certificate(now);
        let mut rtc = self
            .rtc_config
            .clone()
            .set_local_ice_credentials(creds)
            .build(now);
        let candidate = Candidate::host(self.config.local, "udp")
            .map_err(|e| AcceptError::BadOffer(format!("server candidate: {e}")))?;
        rtc.add_local_candidate(candidate);
        let answer = rtc
            .sdp_api()
            .accept_offer(offer)
            .map_err(|e| AcceptError::BadOffer(e.to_string()))?
            .to_sdp_string();
        if !answer.contains("m=application") {
            return Err(AcceptError::NoDataChannel);
        }
        let key = self
            .conns
            .insert(Box::new(Conn::new(rtc, ufrag.clone(), now)));
        self.by_ufrag.insert(ufrag, key);
        self.mark_dirty(key);
        self.flush(now);
        Ok((key, answer))
    }

    /// Makes the layer's DTLS certificate at the first accept and anew
    /// every [`DTLS_CERT_ROTATION`]; open connections keep theirs.
    fn rotate_certificate(&mut self, now: Instant) {
        if self
            .cert_made
            .is_some_and(|t| now.saturating_duration_since(t) < DTLS_CERT_ROTATION)
        {
            return;
        }
        let cert =
            str0m::crypto::dtls::DtlsProvider::generate_certificate(&dtls::SHARED_CONFIG_DTLS);
        match cert {
            Some(cert) => {
                self.rtc_config = self.rtc_config.clone().set_dtls_cert(cert);
                self.cert_made = Some(now);
            }
            // Left to str0m, which then makes one per connection.
            None => tracing::warn!("cannot generate a DTLS certificate; one per connection"),
        }
    }

    fn random_token(&mut self, len: usize) -> String {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
        (0..len)
            .map(|_| ALPHABET[self.rng.random_range(0..ALPHABET.len())] as char)
            .collect()
    }

    /// Routes one datagram from `source` to its connection and polls it.
    pub fn handle_datagram(&mut self, source: SocketAddr, datagram: &[u8], now: Instant) {
        self.stats.packets_in += 1;
        self.stats.bytes_in += datagram.len() as u64;
        let key = match self.by_addr.get(&source) {
            Some(&key) => key,
            None => match crate::stun::local_ufrag(datagram).and_then(|u| self.by_ufrag.get(u)) {
                Some(&key) => key,
                None => return self.drops.count("unknown_source"),
            },
        };
        let Ok(receive) = Receive::new(Protocol::Udp, source, self.config.local, datagram) else {
            return self.drops.count("unparsable");
        };
        let Some(conn) = self.conns.get_mut(key) else {
            debug_assert!(false, "the demux maps only name live connections");
            return self.drops.count("unknown_source");
        };
        if let Err(e) = conn.rtc.handle_input(Input::Receive(now, receive)) {
            tracing::debug!("input refused: {e}");
            return self.drops.count("rejected");
        }
        conn.last_heard = now;
        if !conn.addrs.contains(&source) {
            if conn.addrs.len() >= CONN_ADDRS_MAX {
                let oldest = conn.addrs.remove(0);
                if self.by_addr.get(&oldest) == Some(&key) {
                    self.by_addr.remove(&oldest);
                }
            }
            conn.addrs.push(source);
            self.by_addr.insert(source, key);
        }
        self.mark_dirty(key);
        self.flush(now);
    }

    /// Runs every connection timer due at `now`: str0m's timeouts, connect
    /// and idle deadlines (a connection past its deadline is closed).
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(&Reverse((at, key))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            let Some(conn) = self.conns.get_mut(key) else {
                continue; // A timer of a connection already gone.
            };
            if conn.scheduled == Some(at) {
                conn.scheduled = None;
            }
            if now >= conn.deadline(&self.config) {
                let reason = if conn.is_open() {
                    CloseReason::IdleTimedOut
                } else {
                    CloseReason::ConnectTimedOut
                };
                self.remove(key, Some(reason));
                continue;
            }
            if conn.rtc_wake <= now
                && let Err(e) = conn.rtc.handle_input(Input::Timeout(now))
            {
                tracing::debug!("timeout failed: {e}");
            }
            // Polling reschedules at the earlier of str0m's wake and the deadline.
            self.mark_dirty(key);
        }
        self.flush(now);
        self.compact_timers();
    }

    /// When [`Connections::handle_timeout`] should next run.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((at, _))| *at)
    }

    #[must_use]
    pub fn poll_event(&mut self) -> Option<ConnEvent> {
        self.events.pop_front()
    }

    /// The next RTP packet a client published: `(connection, mid, packet)`.
    #[must_use]
    pub fn poll_rtp(&mut self) -> Option<(ConnKey, Mid, RtpIn)> {
        self.rtp_in.pop_front()
    }

    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// Writes one frame on an open channel of `key`. It leaves with the
    /// next [`Connections::flush`].
    pub fn send(
        &mut self,
        key: ConnKey,
        channel: Channel,
        frame: &[u8],
    ) -> Result<usize, SendError> {
        let conn = self.conns.get_mut(key).ok_or(SendError::Gone)?;
        let was_dirty = conn.dirty;
        let written = conn.write(channel, frame);
        if !was_dirty && conn.dirty {
            self.dirty.push(key);
        }
        written
    }

    /// Adds instance track `track` to what `key` is sent: the layer offers
    /// it ([`ConnEvent::Offer`]) once the connection is open and no other
    /// offer of its waits, together with every change queued meanwhile.
    pub fn send_track(&mut self, key: ConnKey, track: u32, kind: TrackKind) {
        if let Some(conn) = self.conns.get_mut(key) {
            conn.media.send_track(track, kind);
            self.mark_dirty(key);
        }
    }

    /// Stops sending `track` to `key` (an offer that stops its m-line: port 0).
    pub fn stop_track(&mut self, key: ConnKey, track: u32) {
        if let Some(conn) = self.conns.get_mut(key) {
            conn.media.stop_track(track);
            self.mark_dirty(key);
        }
    }

    /// The client's answer to the layer's last offer to it.
    pub fn accept_media_answer(&mut self, key: ConnKey, answer: &str) -> Result<(), String> {
        let conn = self.conns.get_mut(key).ok_or("no such connection")?;
        let result = conn.media.accept_answer(&mut conn.rtc, answer);
        self.mark_dirty(key);
        result
    }

    /// A client's offer that adds or removes tracks it publishes; returns
    /// the answer. An offer of the layer's waiting for its answer is
    /// dropped and made again later.
    pub fn accept_media_offer(&mut self, key: ConnKey, offer: &str) -> Result<String, String> {
        if !self.config.media {
            return Err("media is off on this node (webrtc.media)".into());
        }
        let conn = self.conns.get_mut(key).ok_or("no such connection")?;
        let result = conn.media.accept_offer(&mut conn.rtc, offer);
        self.mark_dirty(key);
        result
    }

    /// Forwards a published packet on `track` to `key`: the payload is
    /// shared, not copied; the sequence numbers are renumbered from 1 for
    /// this receiver and the payload type mapped to its own.
    pub fn write_rtp(&mut self, key: ConnKey, track: u32, rtp: &RtpIn) -> Result<(), RtpDrop> {
        let conn = self.conns.get_mut(key).ok_or(RtpDrop::Gone)?;
        let p = &rtp.packet;
        conn.media.write_rtp(
            &mut conn.rtc,
            track,
            &rtp.params,
            rtp.rid,
            p.seq_no,
            p.header.timestamp,
            p.header.marker,
            &p.header.ext_vals,
            &p.payload,
            p.timestamp,
        )?;
        conn.rtp_written = true;
        self.mark_dirty(key);
        Ok(())
    }

    /// Forwarding of `track` to `key` resumes (after an unsubscribe or a
    /// mute): its next packet goes out numbered one more than the last
    /// sent, so the receiver sees no gap.
    pub fn restart_rtp(&mut self, key: ConnKey, track: u32) {
        if let Some(conn) = self.conns.get_mut(key) {
            conn.media.restart_track(track);
        }
    }

    /// Asks the client of `key` for a keyframe (a PLI) of the track it
    /// publishes on `mid`, of simulcast layer `rid`. False when there is no
    /// such stream (yet: a layer's stream exists once its first packet came).
    pub fn request_keyframe(&mut self, key: ConnKey, mid: Mid, rid: Option<Rid>) -> bool {
        let Some(conn) = self.conns.get_mut(key) else {
            return false;
        };
        let mut api = conn.rtc.direct_api();
        let Some(stream) = api.stream_rx_by_mid(mid, rid) else {
            return false;
        };
        stream.request_keyframe(str0m::media::KeyframeRequestKind::Pli);
        self.mark_dirty(key);
        true
    }

    /// Asks the client of `key` to send at most `bps` bits per second on
    /// the track it publishes on `mid` (layer `rid`): a REMB.
    pub fn request_bitrate(&mut self, key: ConnKey, mid: Mid, rid: Option<Rid>, bps: u32) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let mut api = conn.rtc.direct_api();
        if let Some(stream) = api.stream_rx_by_mid(mid, rid) {
            stream.request_remb(str0m::bwe::Bitrate::bps(u64::from(bps)));
            self.mark_dirty(key);
        }
    }

    /// Bytes waiting on a channel of `key` (0 when it is not open or gone).
    pub fn buffered(&mut self, key: ConnKey, channel: Channel) -> usize {
        self.conns.get_mut(key).map_or(0, |c| c.buffered(channel))
    }

    /// Closes `key` at its user's request: what was written to it leaves
    /// first (a `Kick`), then the close (SCTP shutdown, DTLS close_notify).
    /// No [`ConnEvent::Closed`] follows.
    pub fn close(&mut self, key: ConnKey) {
        self.remove(key, None);
    }

    /// Polls every connection written to or fed since the last flush.
    pub fn flush(&mut self, now: Instant) {
        let mut batch = std::mem::take(&mut self.flushing);
        for _round in 0..FLUSH_ROUNDS_MAX {
            if self.dirty.is_empty() {
                self.flushing = batch;
                return;
            }
            std::mem::swap(&mut batch, &mut self.dirty);
            for &key in &batch {
                self.poll(key, now);
            }
            batch.clear();
        }
        self.flushing = batch;
        tracing::warn!("connection flush cut at {FLUSH_ROUNDS_MAX} rounds");
    }

    fn mark_dirty(&mut self, key: ConnKey) {
        if let Some(conn) = self.conns.get_mut(key)
            && !conn.dirty
        {
            conn.dirty = true;
            self.dirty.push(key);
        }
    }

    fn poll(&mut self, key: ConnKey, now: Instant) {
        let Some(conn) = self.conns.get_mut(key) else {
            return; // Removed after it was marked.
        };
        if std::mem::take(&mut conn.rtp_written)
            && let Err(e) = conn.rtc.handle_input(Input::Timeout(now))
        {
            tracing::debug!("timeout failed: {e}");
        }
        let (transmits, stats, events) = (&mut self.transmits, &mut self.stats, &mut self.events);
        let rtp_in = &mut self.rtp_in;
        let queue_max = self.config.send_queue_len;
        let alive = conn.pump(
            |t| queue_transmit(transmits, stats, queue_max, t),
            |said| events.push_back(peer::event(key, said)),
            |mid, rtp| rtp_in.push_back((key, mid, rtp)),
            &mut self.drops,
        );
        if !alive {
            return self.remove(key, Some(CloseReason::Remote));
        }
        // An offer goes over `actions`: only once the channels are open.
        if conn.is_open()
            && conn.media.wants_offer()
            && let Some(offer) = conn.media.offer(&mut conn.rtc)
        {
            self.events.push_back(ConnEvent::Offer(key, offer));
        }
        let at = conn.wake_at(&self.config).max(now);
        if conn.scheduled.is_none_or(|s| at < s) {
            conn.scheduled = Some(at);
            self.timers.push(Reverse((at, key)));
        }
    }

    /// Removes `key`, sending what it still has; tells the user when the
    /// layer closed it by itself (`reason`).
    fn remove(&mut self, key: ConnKey, reason: Option<CloseReason>) {
        let Some(mut conn) = self.conns.remove(key) else {
            return;
        };
        self.by_ufrag.remove(&conn.ufrag);
        for a in &conn.addrs {
            if self.by_addr.get(a) == Some(&key) {
                self.by_addr.remove(a);
            }
        }
        let (transmits, stats) = (&mut self.transmits, &mut self.stats);
        let queue_max = self.config.send_queue_len;
        for close in [false, true] {
            if close {
                let _ = conn.rtc.close();
            }
            // What it says now is moot: its user is told it closed, or asked for it.
            conn.pump(
                |t| queue_transmit(transmits, stats, queue_max, t),
                |_| {},
                |_, _| {},
                &mut self.drops,
            );
        }
        if let Some(reason) = reason {
            self.events.push_back(ConnEvent::Closed(key, reason));
        }
    }

    /// Rebuilds the heap when stale entries pile up, keeping it bounded.
    fn compact_timers(&mut self) {
        if self.timers.len() <= TIMERS_PER_CONN_MAX * self.conns.len() + TIMERS_SLACK {
            return;
        }
        self.timers.clear();
        for (key, conn) in self.conns.iter_mut() {
            let at = conn.wake_at(&self.config);
            conn.scheduled = Some(at);
            self.timers.push(Reverse((at, key)));
        }
    }
}

/// Queues a datagram for the socket, or drops and counts it at the limit.
fn queue_transmit(
    transmits: &mut VecDeque<Transmit>,
    stats: &mut ConnStats,
    queue_max: usize,
    t: Transmit,
) {
    if transmits.len() < queue_max {
        stats.packets_out += 1;
        stats.bytes_out += t.contents.len() as u64;
        transmits.push_back(t);
    } else {
        stats.send_queue_full += 1;
    }
}

/// The offer with each audio and video section made `inactive`: the node
/// forwards no media yet, so it answers them inactive and no media flows
/// (rather than accepting tracks it would drop packet by packet). The data
/// channels' section is left alone. Direction attributes of a media
/// section are dropped and `a=inactive` takes the place of the first.
fn media_inactive(offer: &str) -> std::borrow::Cow<'_, str> {
    if !offer.contains("m=audio") && !offer.contains("m=video") {
        return std::borrow::Cow::Borrowed(offer);
    }
    let mut out = String::with_capacity(offer.len() + 64);
    let mut media = false;
    let mut placed = false;
    for line in offer.split_inclusive('\n') {
        // Trailing blanks too: `a=sendrecv \r\n` is still a direction.
        let text = line.trim_end();
        if let Some(rest) = text.strip_prefix("m=") {
            if media && !placed {
                out.push_str("a=inactive\r\n");
            }
            media = rest.starts_with("audio ") || rest.starts_with("video ");
            placed = false;
        } else if media
            && matches!(
                text,
                "a=sendrecv" | "a=sendonly" | "a=recvonly" | "a=inactive"
            )
        {
            if !placed {
                out.push_str("a=inactive\r\n");
                placed = true;
            }
            continue;
        }
        out.push_str(line);
    }
    if media && !placed {
        if !out.ends_with('\n') {
            out.push_str("\r\n");
        }
        out.push_str("a=inactive\r\n");
    }
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod media_inactive_tests {
    use super::media_inactive;

    fn directions(sdp: &str) -> Vec<(String, Vec<String>)> {
        let mut out: Vec<(String, Vec<String>)> = Vec::new();
        for line in sdp.lines() {
            if let Some(m) = line.strip_prefix("m=") {
                out.push((m.split(' ').next().unwrap().to_owned(), Vec::new()));
            } else if let Some(last) = out.last_mut() {
                let l = line.trim_end();
                if matches!(l, "a=sendrecv" | "a=sendonly" | "a=recvonly" | "a=inactive") {
                    last.1.push(l.to_owned());
                }
            }
        }
        out
    }

    #[test]
    fn every_media_section_gets_exactly_one_inactive_and_data_is_left_alone() {
        let offer = "v=0\r\no=- 1 2 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n\
m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=sendrecv \r\na=rtpmap:111 opus/48000/2\r\n\
m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:1\r\na=sendrecv\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:2\r\na=rtpmap:96 VP8/90000";
        let out = media_inactive(offer);
        assert_eq!(
            directions(&out),
            vec![
                ("audio".to_owned(), vec!["a=inactive".to_owned()]),
                ("application".to_owned(), vec!["a=sendrecv".to_owned()]),
                // The last section had no direction and no final newline.
                ("video".to_owned(), vec!["a=inactive".to_owned()]),
            ]
        );
        assert!(out.contains("a=rtpmap:96 VP8/90000\r\na=inactive\r\n"));
        // Nothing to change: the offer is borrowed as it is.
        let data_only = "v=0\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n";
        assert!(matches!(
            media_inactive(data_only),
            std::borrow::Cow::Borrowed(_)
        ));
    }
}
