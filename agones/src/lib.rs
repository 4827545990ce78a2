//! The Agones SDK client (gRPC over tonic), a local mode for runs outside
//! Kubernetes, and an in-process fake SDK server for tests.
//!
//! Empty so far: the Agones issue builds it.
