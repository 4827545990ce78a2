//! Every client message as the server decodes it (the first byte picks the data channel).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    net::fuzzing::client_message(data);
});
