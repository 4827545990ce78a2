//! Node and instance state: the instance registry and lifecycle, users and
//! attendance, sessions, JWT auth, cached actions for late joiners, and the
//! commands and events exchanged between the control thread and the shards.
//!
//! Empty so far: the node issue builds it.
