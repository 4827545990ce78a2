//! RTP video payloads: the keyframe check of simulcast layer switching
//! (`net::keyframe`) reads VP8, VP9 and H.264 descriptors from untrusted
//! packets. The first byte picks the codec.
#![no_main]

use net::keyframe::{VideoCodec, starts_keyframe};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&pick, payload)) = data.split_first() else {
        return;
    };
    let codec = match pick % 3 {
        0 => VideoCodec::Vp8,
        1 => VideoCodec::Vp9,
        _ => VideoCodec::H264,
    };
    let _ = starts_keyframe(codec, payload);
});
