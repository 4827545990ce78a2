//! Criterion benchmarks (`cargo bench -p bench`) and, later, the load
//! generator. The benchmarks live in `benches/`; this library holds what they
//! share: the workloads, written once for each ECS compared.

pub mod workloads;
