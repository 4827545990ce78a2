//! One connection: a str0m `Rtc` in ICE-lite mode and the two data
//! channels of the protocol, as a state machine that knows nothing of the
//! other connections (quinn-proto's `Connection`).

use std::net::SocketAddr;
use std::time::Instant;

use str0m::channel::ChannelId;
use str0m::format::PayloadParams;
use str0m::media::{Mid, Rid};
use str0m::net::Transmit;
use str0m::rtp::RtpPacket;
use str0m::{Event, IceConnectionState, Output, Rtc};

use super::media::{ConnMedia, Layers};
use super::{ConnConfig, ConnKey, Drops, SendError};
use crate::Channel;
use crate::messages::TrackKind;

/// Remote addresses remembered per connection (ICE may try several
/// candidates); past it a connection keeps its newest.
pub const CONN_ADDRS_MAX: usize = 4;

/// Where a connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// The answer went out; ICE, DTLS, SCTP and the channels are coming up.
    Connecting {
        since: Instant,
        state: Option<ChannelId>,
        actions: Option<ChannelId>,
    },
    /// Both channels are open.
    Open {
        state: ChannelId,
        actions: ChannelId,
    },
}

/// What a connection said while it was polled.
#[derive(Debug, PartialEq)]
pub(super) enum Said {
    Opened,
    Message(Channel, Vec<u8>),
    Published(Mid, TrackKind, Layers),
    Unpublished(Mid),
    /// The client asks for a keyframe of the track the node sends it.
    KeyframeRequest(u32),
}

/// An RTP packet a client published, with its codec.
#[derive(Debug, PartialEq)]
pub struct RtpIn {
    pub packet: RtpPacket,
    /// The packet's payload type as this connection negotiated it.
    pub params: PayloadParams,
    /// Its simulcast layer (`None` without simulcast).
    pub rid: Option<Rid>,
}

impl RtpIn {
    /// Its codec, when it is video the node can find keyframes in.
    pub fn video_codec(&self) -> Option<crate::keyframe::VideoCodec> {
        use crate::keyframe::VideoCodec;
        use str0m::format::Codec;
        match self.params.spec().codec {
            Codec::Vp8 => Some(VideoCodec::Vp8),
            Codec::Vp9 => Some(VideoCodec::Vp9),
            Codec::H264 => Some(VideoCodec::H264),
            _ => None,
        }
    }
}

#[derive(Debug)]
pub(super) struct Conn {
    pub rtc: Rtc,
    pub ufrag: String,
    pub addrs: Vec<SocketAddr>,
    pub phase: Phase,
    pub last_heard: Instant,
    /// When str0m next wants a timeout.
    pub rtc_wake: Instant,
    /// The earliest timer queued for this connection, if any.
    pub scheduled: Option<Instant>,
    /// Written to or fed since it was last polled.
    pub dirty: bool,
    pub media: ConnMedia,
    /// RTP was written since the last poll: str0m sends it only once time
    /// moves (a timeout input), given once per poll however many packets.
    pub rtp_written: bool,
}

impl Conn {
    pub fn new(rtc: Rtc, ufrag: String, now: Instant) -> Conn {
        Conn {
            rtc,
            ufrag,
            addrs: Vec::with_capacity(CONN_ADDRS_MAX),
            phase: Phase::Connecting {
                since: now,
                state: None,
                actions: None,
            },
            last_heard: now,
            rtc_wake: now,
            scheduled: None,
            dirty: false,
            media: ConnMedia::default(),
            rtp_written: false,
        }
    }

    /// The connect deadline while connecting, the idle deadline once open.
    pub fn deadline(&self, config: &ConnConfig) -> Instant {
        match self.phase {
            Phase::Connecting { since, .. } => since + config.connect_timeout,
            Phase::Open { .. } => self.last_heard + config.idle_timeout,
        }
    }

    /// When this connection next needs attention.
    pub fn wake_at(&self, config: &ConnConfig) -> Instant {
        self.deadline(config).min(self.rtc_wake)
    }

    pub fn is_open(&self) -> bool {
        matches!(self.phase, Phase::Open { .. })
    }

    fn channel_id(&self, channel: Channel) -> Option<ChannelId> {
        match (self.phase, channel) {
            (Phase::Open { state, .. }, Channel::State) => Some(state),
            (Phase::Open { actions, .. }, Channel::Actions) => Some(actions),
            (Phase::Connecting { .. }, _) => None,
        }
    }

    fn channel_of(&self, id: ChannelId) -> Option<Channel> {
        let (state, actions) = match self.phase {
            Phase::Connecting { state, actions, .. } => (state, actions),
            Phase::Open { state, actions } => (Some(state), Some(actions)),
        };
        if Some(id) == state {
            Some(Channel::State)
        } else if Some(id) == actions {
            Some(Channel::Actions)
        } else {
            None
        }
    }

    /// Writes one frame on an open channel.
    pub fn write(&mut self, channel: Channel, frame: &[u8]) -> Result<usize, SendError> {
        let id = self
            .channel_id(channel)
            .ok_or(SendError::NotOpen(channel))?;
        let mut ch = self.rtc.channel(id).ok_or(SendError::NotOpen(channel))?;
        if ch.write(true, frame)? {
            self.dirty = true;
            Ok(frame.len())
        } else {
            Err(SendError::Refused)
        }
    }

    /// Bytes waiting to be sent on `channel` (0 while it is not open).
    pub fn buffered(&mut self, channel: Channel) -> usize {
        match self.channel_id(channel).and_then(|id| self.rtc.channel(id)) {
            Some(mut ch) => ch.buffered_amount(),
            None => 0,
        }
    }

    /// Polls str0m until it only has a timeout left: datagrams go to
    /// `transmit`, what the connection said to `said`. Returns false when
    /// the connection is dead (closed by the remote, ICE lost, or failed).
    pub fn pump(
        &mut self,
        mut transmit: impl FnMut(Transmit),
        mut said: impl FnMut(Said),
        mut rtp: impl FnMut(Mid, RtpIn),
        drops: &mut Drops,
    ) -> bool {
        self.dirty = false;
        loop {
            if !self.rtc.is_alive() {
                return false;
            }
            let event = match self.rtc.poll_output() {
                Ok(Output::Timeout(t)) => {
                    self.rtc_wake = t;
                    return true;
                }
                Ok(Output::Transmit(t)) => {
                    transmit(t);
                    continue;
                }
                Ok(Output::Event(e)) => e,
                Err(e) => {
                    tracing::debug!("connection failed: {e}");
                    return false;
                }
            };
            match event {
                Event::ChannelOpen(id, label) if self.channel_opened(id, &label, drops) => {
                    said(Said::Opened);
                }
                Event::ChannelData(d) => match self.channel_of(d.id) {
                    Some(channel) if self.is_open() => said(Said::Message(channel, d.data)),
                    _ => drops.count("message_before_join"),
                },
                Event::ChannelClose(id) if self.channel_of(id).is_some() => return false,
                Event::MediaAdded(m) => {
                    let simulcast = m.simulcast.as_ref();
                    if let Some(s) = self.media.changed(m.mid, m.kind, m.direction, simulcast) {
                        said(s);
                    }
                }
                Event::MediaChanged(m) => {
                    let kind = self.rtc.media(m.mid).map(|x| x.kind());
                    if let Some(s) =
                        kind.and_then(|k| self.media.changed(m.mid, k, m.direction, None))
                    {
                        said(s);
                    }
                }
                Event::KeyframeRequest(r) => match self.media.sent_track(r.mid) {
                    Some(track) => said(Said::KeyframeRequest(track)),
                    None => drops.count("keyframe_request_unknown_mid"),
                },
                Event::RtpPacket(packet) => {
                    let ssrc = packet.header.ssrc;
                    let pt = packet.header.payload_type;
                    let mut api = self.rtc.direct_api();
                    let Some((mid, rid)) = api.stream_rx(&ssrc).map(|s| (s.mid(), s.rid())) else {
                        drops.count("rtp_unknown_stream");
                        continue;
                    };
                    if !self.is_open() || !self.media.published.iter().any(|(m, _)| *m == mid) {
                        drops.count("rtp_not_published");
                        continue;
                    }
                    let Some(params) = self
                        .rtc
                        .codec_config()
                        .iter()
                        .find(|p| p.pt() == pt)
                        .copied()
                    else {
                        drops.count("rtp_unknown_pt");
                        continue;
                    };
                    rtp(
                        mid,
                        RtpIn {
                            packet,
                            params,
                            rid,
                        },
                    );
                }
                Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                    return false;
                }
                // Media, statistics and the other state changes are not
                // used by the data-channel protocol.
                _ => {}
            }
        }
    }

    /// Records an opened channel; true when it completes the pair.
    fn channel_opened(&mut self, id: ChannelId, label: &str, drops: &mut Drops) -> bool {
        let Phase::Connecting { state, actions, .. } = &mut self.phase else {
            drops.count("unknown_channel");
            return false;
        };
        match label {
            "state" => *state = Some(id),
            "actions" => *actions = Some(id),
            _ => {
                drops.count("unknown_channel");
                return false;
            }
        }
        if let (Some(state), Some(actions)) = (*state, *actions) {
            self.phase = Phase::Open { state, actions };
            return true;
        }
        false
    }
}

/// A key and what its connection said, as the layer queues it.
pub(super) fn event(key: ConnKey, said: Said) -> super::ConnEvent {
    use super::ConnEvent;
    match said {
        Said::Opened => ConnEvent::Opened(key),
        Said::Message(channel, data) => ConnEvent::Message(key, channel, data),
        Said::Published(mid, kind, layers) => ConnEvent::Published(key, mid, kind, layers),
        Said::Unpublished(mid) => ConnEvent::Unpublished(key, mid),
        Said::KeyframeRequest(track) => ConnEvent::KeyframeRequest(key, track),
    }
}
