//! Every server message as clients and bots decode it (the first byte picks the data channel).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    net::fuzzing::server_message(data);
});
