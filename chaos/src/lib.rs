//! Chaos for Umbra's control plane. [`sim`] is a seeded, one-thread simulation of a whole
//! cluster: three Raft replicas of the orchestrator state (tikv raft-rs, the product's codec),
//! the executor's controller on whichever replica leads, two simulated region agents and the
//! clients, over a simulated network that drops, delays, duplicates and partitions, with
//! crashes, restarts and clock jumps, and invariants checked after every event. Nothing here
//! is compiled into the product; `umbra chaos simulate` runs it.

pub mod sim;
