//! Entry points for the fuzz targets in `fuzz/` and the corpus replay test.
//! Each takes arbitrary bytes and must never panic.

use crate::codec::Decoder;
use crate::frame::{Channel, split_frame};

/// The frame header alone.
pub fn frame_header(data: &[u8]) {
    let _ = split_frame(data);
}

/// A client message on either channel, as the server decodes it. The first
/// byte picks the channel.
pub fn client_message(data: &[u8]) {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let channel = if pick & 1 == 0 {
        Channel::State
    } else {
        Channel::Actions
    };
    let mut decoder = Decoder::default();
    let _ = decoder.decode_client(rest, channel);
}

/// A server message, as clients and bots decode it.
pub fn server_message(data: &[u8]) {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let channel = if pick & 1 == 0 {
        Channel::State
    } else {
        Channel::Actions
    };
    let mut decoder = Decoder::default();
    let _ = decoder.decode_server(rest, channel);
}
