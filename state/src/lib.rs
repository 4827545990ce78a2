//! The instance runtime ([`instance`]: an instance as a state machine over
//! its members) and the node state shared by the control thread and the
//! shards: JWT auth ([`auth`]), the commands the control thread sends a
//! shard and the events a shard sends back ([`commands`]), and the
//! instance registry the control thread keeps ([`registry`]).
//!
//! Nothing here touches a socket or reads the clock: callers pass `now`.
//!
//! ```
//! use state::registry::{Registry, InstanceRecord};
//! use std::collections::BTreeMap;
//!
//! let mut reg = Registry::new(16);
//! reg.insert(InstanceRecord::new("demo".into(), "lobby".into(), 0, 8, BTreeMap::new())).unwrap();
//! assert_eq!(reg.reserve_seat("demo").unwrap(), 1);
//! ```
#![forbid(unsafe_code)]

pub mod attendance;
pub mod auth;
pub mod commands;
pub mod instance;
pub mod registry;
