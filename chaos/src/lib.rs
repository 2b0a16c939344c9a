//! Chaos for Umbra's control plane, and what judges it. [`sim`] is a seeded, one-thread
//! simulation of a whole cluster: three Raft replicas of the orchestrator state (tikv raft-rs,
//! the product's codec), the executor's controller on whichever replica leads, two simulated
//! region agents and the clients, over a simulated network that drops, delays, duplicates and
//! partitions, with crashes, restarts and clock jumps, and invariants checked after every
//! event. [`history`] checks a history recorded from a real cluster for linearizability.
//! [`plan`] is a fault plan (TOML, by hand or from a seed) and [`drill`] the judging core of
//! `umbra drill evacuate`. Nothing here is compiled into the product's processes; `umbra chaos simulate` runs the
//! simulation and the tests run both.

pub mod campaign;
pub mod drill;
pub mod history;
pub mod inject;
pub mod plan;
pub mod sim;
