//! The Agones SDK client (gRPC over tonic), a local mode for runs outside
//! Kubernetes, and an in-process fake SDK server for tests.
//!
//! The node's control thread holds one [`Sdk`]. With a sidecar it speaks to
//! `localhost:$AGONES_SDK_GRPC_PORT` (9357 by default): `Ready`, `Health`
//! pings on a client stream, `Shutdown`, `Reserve`, `Allocate`, labels and
//! annotations, `GetGameServer` / `WatchGameServer`, and the beta Counters &
//! Lists. Without one ([`Mode::Local`], or [`Mode::Auto`] when the variable is
//! unset) every call is logged and succeeds, so `cargo run` needs nothing.
//!
//! ```no_run
//! # async fn demo() -> Result<(), agones::SdkError> {
//! use agones::{Mode, Sdk, SdkConfig};
//! let sdk = Sdk::connect(&SdkConfig::from_env(Mode::Auto)).await?;
//! sdk.set_counter_capacity("rooms", 4096).await?;
//! sdk.ready().await?;
//! let health = sdk.health();
//! health.ping();
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

pub mod fake;
mod sdk;

pub use sdk::{DEFAULT_GRPC_PORT, GRPC_PORT_ENV, Health, Mode, Sdk, SdkConfig, SdkError, Watch};

/// The generated protobuf types and service traits.
#[allow(clippy::all, missing_debug_implementations)]
pub mod pb {
    /// The stable SDK (`agones.dev.sdk`).
    pub mod sdk {
        tonic::include_proto!("agones.dev.sdk");
    }
    /// Counters & Lists (`agones.dev.sdk.beta`).
    pub mod beta {
        tonic::include_proto!("agones.dev.sdk.beta");
    }
}
