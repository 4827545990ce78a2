//! The density load generator: real WebRTC bots (the Rust client library:
//! ICE, DTLS, SCTP) that join a node's instances, move their avatars, chat,
//! and measure what users would notice; worker processes pinned to chosen
//! cores; the orchestration of a run, of the density benchmark and of the
//! churn soak, the audio forwarding benchmark; `/proc` and `/metrics`
//! readers. The `loadgen` binary is its
//! command line (`loadgen --help`); docs/benchmarks.md shows the commands.

pub mod bot;
pub mod churn;
pub mod density;
pub mod fleet;
pub mod host;
pub mod media;
pub mod report;
pub mod stats;
pub mod step;
pub mod target;
pub mod tokens;
