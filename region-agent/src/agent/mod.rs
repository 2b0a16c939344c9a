//! The agent proper: its configuration ([`config`]), the sans-IO command core that enforces
//! idempotency, term fencing and the region check ([`core`]), the executor that turns commands
//! into provider, warmer and replication calls ([`executor`]), and the QUIC session that
//! follows the orchestrators' leader ([`session`]).

pub mod config;
