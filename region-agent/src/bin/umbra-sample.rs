//! The sample service: a small, honest HTTP key-value store used by the demo and the tests.

fn main() {}
