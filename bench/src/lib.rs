//! Criterion benchmarks (`cargo bench -p bench`) and, later, the load
//! generator. The benchmarks live in `benches/`; this library holds what they
//! share: the ECS workloads, written once for each ECS compared, and the wire
//! formats snapshots are compared with.

pub mod wire;
pub mod workloads;
