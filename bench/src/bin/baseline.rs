//! The webrtc-rs baseline server (built in a later step).
fn main() {}
