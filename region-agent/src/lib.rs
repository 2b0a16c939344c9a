//! Umbra's hands in one region: instance providers (local processes, Docker), the warmer that
//! drives synthetic traffic at shadow instances, replication drivers, the region's load
//! balancer, and the sample service used by the demo and the tests.

pub mod lb;
pub mod loadgen;

pub mod agent;
pub mod provider;
pub mod replication;
pub mod sample;
pub mod warmer;
