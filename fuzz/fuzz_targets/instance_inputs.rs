//! Stateful: sequences of client messages from two users into one small instance, stepping it after each.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    net::fuzzing::instance_inputs(data);
});
