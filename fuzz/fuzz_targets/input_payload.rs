//! `Input` payloads inside a well-formed frame: the archive and limit checks of that kind.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    net::fuzzing::client_payload(net::MessageKind::Input, data);
});
