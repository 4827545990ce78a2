//! Snapshot payloads as a client applies them (with and without a baseline).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    net::fuzzing::snapshot(data);
});
