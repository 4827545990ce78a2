//! Whether an RTP packet of a video stream starts a keyframe, from its
//! payload alone: what the node needs to switch a receiver from one
//! simulcast layer to another without a broken picture. Reads the payload
//! descriptors of VP8 (RFC 7741), VP9 (RFC 9628) and H.264 (RFC 6184);
//! never panics on any input (fuzzed: `fuzz/fuzz_targets/keyframe.rs`).

/// The video codecs whose keyframes the node recognises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VideoCodec {
    Vp8,
    Vp9,
    H264,
}

/// Whether `payload` (an RTP payload of `codec`) is the first packet of a
/// keyframe. False for anything it cannot read.
pub fn starts_keyframe(codec: VideoCodec, payload: &[u8]) -> bool {
    match codec {
        VideoCodec::Vp8 => vp8(payload),
        VideoCodec::Vp9 => vp9(payload),
        VideoCodec::H264 => h264(payload),
    }
}

/// VP8: the descriptor's S bit set and partition 0, then the frame header's
/// P bit clear (an intra frame).
fn vp8(p: &[u8]) -> bool {
    let Some(&first) = p.first() else {
        return false;
    };
    let extended = first & 0x80 != 0;
    let start = first & 0x10 != 0;
    let partition = first & 0x07;
    if !start || partition != 0 {
        return false;
    }
    let mut i = 1;
    if extended {
        let Some(&x) = p.get(i) else {
            return false;
        };
        i += 1;
        if x & 0x80 != 0 {
            // Picture id: 7 bits, or 15 when its M bit is set.
            let Some(&pid) = p.get(i) else {
                return false;
            };
            i += if pid & 0x80 != 0 { 2 } else { 1 };
        }
        if x & 0x40 != 0 {
            i += 1; // TL0PICIDX
        }
        if x & 0x30 != 0 {
            i += 1; // TID / Y / KEYIDX
        }
    }
    p.get(i).is_some_and(|header| header & 0x01 == 0)
}

/// VP9: the start of a frame (B) that is not inter-predicted (P clear), of
/// the lowest spatial layer when layer indices are present.
fn vp9(p: &[u8]) -> bool {
    let Some(&first) = p.first() else {
        return false;
    };
    let picture_id = first & 0x80 != 0;
    let predicted = first & 0x40 != 0;
    let layers = first & 0x20 != 0;
    let begins = first & 0x08 != 0;
    if predicted || !begins {
        return false;
    }
    if !layers {
        return true;
    }
    let mut i = 1;
    if picture_id {
        let Some(&pid) = p.get(i) else {
            return false;
        };
        i += if pid & 0x80 != 0 { 2 } else { 1 };
    }
    // Layer indices: TID(3) U SID(3) D.
    p.get(i).is_some_and(|l| (l >> 1) & 0x07 == 0)
}

/// Whether an H.264 NAL unit of `nal_type` whose slice header starts with
/// byte `slice` starts a keyframe: the sequence parameter set sent before
/// it, or the first slice of an IDR picture (`first_mb_in_slice` 0, coded
/// as a single 1 bit), not a later slice of it.
fn h264_key_nal(nal_type: u8, slice: Option<u8>) -> bool {
    match nal_type {
        7 => true,
        5 => slice.is_some_and(|b| b & 0x80 != 0),
        _ => false,
    }
}

/// H.264: a single NAL unit, an aggregate (STAP-A) holding one, or the
/// first fragment (FU-A) of one.
fn h264(p: &[u8]) -> bool {
    let Some(&first) = p.first() else {
        return false;
    };
    match first & 0x1F {
        24 => {
            // STAP-A: 16-bit sizes, each followed by its NAL unit.
            let mut i = 1;
            while let (Some(&hi), Some(&lo)) = (p.get(i), p.get(i + 1)) {
                let size = usize::from(u16::from_be_bytes([hi, lo]));
                let Some(&nal) = p.get(i + 2) else {
                    return false;
                };
                if size == 0 {
                    return false;
                }
                let slice = (size >= 2).then(|| p.get(i + 3).copied()).flatten();
                if h264_key_nal(nal & 0x1F, slice) {
                    return true;
                }
                i += 2 + size;
            }
            false
        }
        28 => p
            .get(1)
            .is_some_and(|fu| fu & 0x80 != 0 && h264_key_nal(fu & 0x1F, p.get(2).copied())),
        nal => h264_key_nal(nal, p.get(1).copied()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vp8_keyframes_are_told_from_delta_frames_and_continuations() {
        // S=1, PID=0, no extension; frame header P=0.
        assert!(starts_keyframe(VideoCodec::Vp8, &[0x10, 0x00, 0x00, 0x9d]));
        // P=1: a delta frame.
        assert!(!starts_keyframe(VideoCodec::Vp8, &[0x10, 0x01]));
        // Not the start of the frame.
        assert!(!starts_keyframe(VideoCodec::Vp8, &[0x00, 0x00]));
        // Extended: I with a 15-bit picture id, L, T; then P=0.
        assert!(starts_keyframe(
            VideoCodec::Vp8,
            &[0x90, 0xE0, 0x81, 0x23, 0x05, 0x40, 0x00]
        ));
        // The same with P=1.
        assert!(!starts_keyframe(
            VideoCodec::Vp8,
            &[0x90, 0xE0, 0x81, 0x23, 0x05, 0x40, 0x01]
        ));
        // Cut short.
        assert!(!starts_keyframe(VideoCodec::Vp8, &[0x90, 0xE0, 0x81]));
        assert!(!starts_keyframe(VideoCodec::Vp8, &[]));
    }

    #[test]
    fn vp9_and_h264_keyframes_are_recognised() {
        // VP9: B set, P clear, no layer indices.
        assert!(starts_keyframe(VideoCodec::Vp9, &[0x08]));
        assert!(!starts_keyframe(VideoCodec::Vp9, &[0x48]));
        // With a 7-bit picture id and layer indices of spatial layer 1: no.
        assert!(!starts_keyframe(VideoCodec::Vp9, &[0xA8, 0x01, 0x02]));
        assert!(starts_keyframe(VideoCodec::Vp9, &[0xA8, 0x01, 0x00]));
        // H.264: the first slice of an IDR picture, a later one, an SPS, a
        // non-IDR slice.
        assert!(starts_keyframe(VideoCodec::H264, &[0x65, 0x88]));
        assert!(!starts_keyframe(VideoCodec::H264, &[0x65, 0x40]));
        assert!(starts_keyframe(VideoCodec::H264, &[0x67]));
        assert!(!starts_keyframe(VideoCodec::H264, &[0x41]));
        // STAP-A holding an SPS after a 1-byte NAL.
        assert!(starts_keyframe(
            VideoCodec::H264,
            &[0x78, 0x00, 0x01, 0x09, 0x00, 0x02, 0x67, 0x42]
        ));
        // A STAP-A holding a 1-byte IDR unit: no slice header to read (the
        // next unit's size is not one).
        assert!(!starts_keyframe(
            VideoCodec::H264,
            &[0x78, 0x00, 0x01, 0x65, 0x80, 0x02, 0x41]
        ));
        // A STAP-A whose size runs past the end.
        assert!(!starts_keyframe(
            VideoCodec::H264,
            &[0x78, 0xFF, 0xFF, 0x41]
        ));
        // FU-A: the first fragment of an IDR slice, then a later one.
        assert!(starts_keyframe(VideoCodec::H264, &[0x7C, 0x85, 0x88]));
        assert!(!starts_keyframe(VideoCodec::H264, &[0x7C, 0x85, 0x40]));
        assert!(!starts_keyframe(VideoCodec::H264, &[0x7C, 0x05, 0x88]));
    }
}
