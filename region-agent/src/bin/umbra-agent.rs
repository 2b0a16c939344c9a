//! The region agent process.

fn main() {}
