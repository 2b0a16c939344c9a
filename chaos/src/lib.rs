//! Fault injection that Umbra's transports and providers consult (drop, delay, duplicate,
//! partition, kill, pause, clock skew), drill scenarios, and a history checker. Nothing here
//! is compiled into a hot path unless a test or drill turns it on.

pub mod history;
