//! The agent proper: its configuration ([`config`]) and the sans-IO command core that enforces
//! idempotency, term fencing and the region check ([`core`]).

pub mod config;
pub mod core;
