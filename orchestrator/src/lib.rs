//! Umbra's product library: regions, services, pools and migrations as a replicated state
//! machine (`state`, `migration`); the controllers that turn replicated state into side
//! effects (`executor`, `gateway`, `zone_sync`); the replicated store they share (`store`);
//! the operator API (`api`); and the process wiring of one orchestrator (`node`). The binary
//! `umbra-orchestrator` is a thin shell over this library.
//!
//! Forecasting and sizing live in `umbra-forecast`, DNS providers in `umbra-dns`, the demo in
//! `umbra-demo`, and the `umbra` CLI in `umbra-cli`: this library depends on none of the
//! agent's crates.

pub mod api;
pub mod capacity;
pub mod executor;
pub mod gateway;
pub mod migration;
pub mod node;
pub mod state;
pub mod store;
pub mod zone_publish;
pub mod zone_sync;
