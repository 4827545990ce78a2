//! The 16-byte frame header: version, kind, flags and length checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    net::fuzzing::frame_header(data);
});
