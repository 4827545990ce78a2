//! The wire protocol of instanceserver (specified in `docs/protocol.md`):
//! the frame header, every message kind in both directions, and the codec
//! that encodes into reused buffers and decodes untrusted bytes in place
//! after validation. No I/O here: the node, the bots and the tests all call
//! these functions with byte slices.
//!
//! With the `rtc` feature (default) it also holds the connection layer
//! ([`conn`]: WebRTC peers over str0m, demux, timers, transmit queue) and
//! the sans-IO client session ([`client`]); with `client` (default), the
//! client's tokio driver. The fuzz targets build it without features.
//!
//! ```
//! use net::{Channel, Decoder, Encoder, MessageKind, ClientMessage};
//! use net::messages::{Input, OwnedUpdate};
//!
//! let mut enc = Encoder::default();
//! let input = Input { owned: vec![OwnedUpdate { network_id: 7, position: [1.0, 2.0, 3.0], rotation: [0.0, 0.0, 0.0, 1.0] }] };
//! let bytes = enc.encode(MessageKind::Input, 1, 42, &input).unwrap().to_vec();
//!
//! let mut dec = Decoder::default();
//! match dec.decode_client(&bytes, Channel::State).unwrap() {
//!     ClientMessage::Input(header, input) => {
//!         assert_eq!(header.tick.get(), 42); // the client's last snapshot tick
//!         assert_eq!(input.owned[0].network_id.to_native(), 7);
//!     }
//!     other => panic!("{other:?}"),
//! }
//! ```
#![forbid(unsafe_code)]

#[cfg(feature = "rtc")]
pub mod client;
pub mod codec;
#[cfg(feature = "rtc")]
pub mod conn;
pub mod error;
pub mod frame;
pub mod fuzzing;
pub mod input;
pub mod keyframe;
pub mod messages;
pub mod quant;
pub mod slab;
pub mod snapshot;
pub mod stun;

pub use codec::{ClientMessage, Decoder, Encoder, ServerMessage};
pub use error::ProtocolError;
pub use frame::{
    Channel, FRAME_HEADER_LEN, FrameHeader, MessageKind, PROTOCOL_VERSION, split_frame,
};

/// The largest snapshot datagram: one SCTP data chunk inside a typical
/// 1,200-byte WebRTC path MTU, so a snapshot is never fragmented.
pub const SNAPSHOT_DATAGRAM_BYTES_MAX: usize = 1150;
