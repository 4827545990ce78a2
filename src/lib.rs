//! The instanceserver node: configuration, shards (glommio executors on
//! io_uring UDP sockets, each running a [`router::Shard`] over the
//! connection layer of `net` and the instance runtime of `state`), and the
//! control thread (HTTP signaling, metrics, gRPC control API). The Rust
//! client is `net::client`.
//!
//! The binary (`src/main.rs`) wires them together; tests start the same
//! [`node::Node`] on loopback.

pub mod config;
pub mod control;
pub mod harness;
pub mod io;
pub mod node;
pub mod router;
