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

/// The wall clock in Unix ms, for what is recorded with a time a person or another process
/// reads (the traffic client's request log, the sample service's write stamps).
pub(crate) fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
