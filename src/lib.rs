//! The instanceserver node: configuration, shards (glommio executors on
//! io_uring UDP sockets, each running [`shard::Shard`]), the control thread
//! (HTTP signaling, metrics, gRPC control API) and a Rust client.
//!
//! The binary (`src/main.rs`) wires them together; tests start the same
//! [`node::Node`] on loopback.

pub mod client;
pub mod config;
pub mod control;
pub mod harness;
pub mod node;
pub mod shard;
