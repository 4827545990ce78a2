//! Criterion benchmarks (`cargo bench -p bench`), the density load generator
//! (`loadgen`) and the webrtc-rs baseline server (`baseline`). The benchmarks
//! live in `benches/`; this library holds what they share (the ECS
//! workloads, written once for each ECS compared, and the wire formats
//! snapshots are compared with) and the load generator's parts.
#![forbid(unsafe_code)]

pub mod loadgen;
pub mod wire;
pub mod workloads;
