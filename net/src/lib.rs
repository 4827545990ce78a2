//! The wire protocol and the network path of a shard: zerocopy frame
//! headers, rkyv messages, quantised delta snapshots, the str0m peer state
//! machine, demux, SFU forwarding and the io_uring UDP shell.
//!
//! Empty so far: the protocol and node issues build it on top of `engine`.
