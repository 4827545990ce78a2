//! The STUN USERNAME parse that routes datagrams from new addresses to peers.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    net::fuzzing::stun_username(data);
});
