//! Umbra's domain: regions, services, pools and migrations as a replicated state machine;
//! demand forecasting and pool sizing; the controllers that turn replicated state into side
//! effects; DNS providers; the operator API. The binaries `umbra-orchestrator` and `umbra`
//! are thin shells over this library.

pub mod api;
pub mod demand;
pub mod demo;
pub mod dns;
pub mod executor;
pub mod forecast;
pub mod gateway;
pub mod migration;
pub mod node;
pub mod simulate;
pub mod sizing;
pub mod state;
pub mod ttl_plan;
