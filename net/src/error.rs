//! Errors from decoding untrusted bytes. Every one is counted by the caller
//! and the message dropped; a peer that keeps sending them is disconnected.

use crate::frame::MessageKind;

#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
#[non_exhaustive]
pub enum ProtocolError {
    #[error("frame of {len} bytes is shorter than its 16-byte header")]
    Truncated { len: usize },
    #[error(
        "peer speaks protocol version {theirs}, this server speaks {}",
        crate::PROTOCOL_VERSION
    )]
    VersionMismatch { theirs: u8 },
    #[error("unknown message kind {0}")]
    UnknownKind(u8),
    #[error("reserved header flags set: {0:#06x}")]
    ReservedFlags(u16),
    #[error("header declares {declared} payload bytes but {actual} follow")]
    LengthMismatch { declared: usize, actual: usize },
    #[error("{kind:?} payload of {len} bytes exceeds its limit of {max}")]
    TooLarge {
        kind: MessageKind,
        len: usize,
        max: usize,
    },
    #[error("{0:?} is not a message a client may send")]
    WrongDirection(MessageKind),
    #[error("{kind:?} arrived on the wrong data channel")]
    WrongChannel { kind: MessageKind },
    #[error("invalid {kind:?} archive: {reason}")]
    InvalidArchive { kind: MessageKind, reason: String },
    #[error("{what}: {count} exceeds the limit of {max}")]
    CountExceeded {
        what: &'static str,
        count: usize,
        max: usize,
    },
    #[error("{what} is not a finite number")]
    NotFinite { what: &'static str },
    #[error(
        "topic {0:?} is not 1 to {max} bytes of a-z, 0-9, '.', '_' and '-'",
        max = crate::messages::TOPIC_BYTES_MAX
    )]
    InvalidTopic(String),
}

impl ProtocolError {
    /// A stable snake_case label for metrics (`invalid_messages{reason=...}`).
    pub fn reason(&self) -> &'static str {
        match self {
            ProtocolError::Truncated { .. } => "truncated",
            ProtocolError::VersionMismatch { .. } => "version_mismatch",
            ProtocolError::UnknownKind(_) => "unknown_kind",
            ProtocolError::ReservedFlags(_) => "reserved_flags",
            ProtocolError::LengthMismatch { .. } => "length_mismatch",
            ProtocolError::TooLarge { .. } => "too_large",
            ProtocolError::WrongDirection(_) => "wrong_direction",
            ProtocolError::WrongChannel { .. } => "wrong_channel",
            ProtocolError::InvalidArchive { .. } => "invalid_archive",
            ProtocolError::CountExceeded { .. } => "count_exceeded",
            ProtocolError::NotFinite { .. } => "not_finite",
            ProtocolError::InvalidTopic(_) => "invalid_topic",
        }
    }

    /// Every label [`ProtocolError::reason`] returns, for metrics that list
    /// zero counts too.
    pub const REASONS: [&'static str; 12] = [
        "truncated",
        "version_mismatch",
        "unknown_kind",
        "reserved_flags",
        "length_mismatch",
        "too_large",
        "wrong_direction",
        "wrong_channel",
        "invalid_archive",
        "count_exceeded",
        "not_finite",
        "invalid_topic",
    ];
}
