//! The density load generator (built in a later step).
fn main() {}
