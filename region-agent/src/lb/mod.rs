//! The region load balancer: one trait, two implementations — the embedded weighted HTTP/1.1
//! proxy (`proxy`, the default, needs nothing installed) and HAProxy driven through its
//! runtime API (`haproxy`; the agent's front runs one, `crate::agent::front::haproxy`). A cutover moves traffic here first
//! because a load balancer applies a weight change to the very next request, while DNS only
//! follows as client caches expire. This module defines what every load balancer must offer;
//! it must not know about migrations, steps or SLOs (the orchestrator decides the weights).

pub mod haproxy;
pub mod named_backend;
pub mod proxy;

use std::net::SocketAddr;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

/// Highest weight a backend may have. HAProxy's range is 0..=256; using the same range for
/// the embedded proxy lets the orchestrator send one plan to either.
pub const MAX_WEIGHT: u32 = 256;
/// Backends one balancer may hold; a region front rarely has more than a few dozen, and the
/// embedded proxy precomputes a schedule whose length is the sum of the weights.
pub const MAX_BACKENDS: usize = 64;

/// A backend and the share of new requests it should get, relative to the others' weights.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendWeight {
    /// Stable name (HAProxy server name; counters are kept per name).
    pub name: String,
    pub addr: SocketAddr,
    /// 0..=MAX_WEIGHT; 0 means no new requests (in-flight ones finish).
    pub weight: u32,
}

impl BackendWeight {
    pub fn new(name: impl Into<String>, addr: SocketAddr, weight: u32) -> Self {
        Self {
            name: name.into(),
            addr,
            weight,
        }
    }
}

/// Checks a backend set the way both implementations need it.
pub fn validate_backends(backends: &[BackendWeight]) -> Result<(), LbError> {
    if backends.len() > MAX_BACKENDS {
        return Err(LbError::InvalidBackends(format!(
            "{} backends given, at most {MAX_BACKENDS} are supported",
            backends.len()
        )));
    }
    for (i, b) in backends.iter().enumerate() {
        if b.name.is_empty()
            || !b
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(LbError::InvalidBackends(format!(
                "backend name {:?} must be non-empty ASCII letters, digits, '-', '_' or '.'",
                b.name
            )));
        }
        if b.weight > MAX_WEIGHT {
            return Err(LbError::InvalidBackends(format!(
                "backend {} has weight {}; weights are 0..={MAX_WEIGHT}",
                b.name, b.weight
            )));
        }
        if backends[..i].iter().any(|o| o.name == b.name) {
            return Err(LbError::InvalidBackends(format!(
                "backend name {} appears twice",
                b.name
            )));
        }
    }
    Ok(())
}

/// What a backend is doing, as the balancer sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendState {
    /// Taking new requests in proportion to its weight.
    Ready,
    /// Weight 0 or drain requested: no new requests, in-flight ones finish.
    Draining,
    /// Recently refused connections; skipped until its ejection ends or health checks pass.
    Down,
}

/// Per-backend counters, cumulative since the backend was first configured.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BackendStats {
    pub name: String,
    pub addr: Option<SocketAddr>,
    pub weight: u32,
    pub state: BackendState,
    /// Requests sent to this backend (including ones that then failed).
    pub requests: u64,
    /// Connect failures, upstream errors and 5xx responses.
    pub errors: u64,
    pub in_flight: u64,
    /// Mean time to response headers (HAProxy: over its last 1024 requests).
    pub latency_ms_mean: Option<f64>,
    /// Time to response headers; `None` until measured or when the balancer keeps no quantiles.
    pub latency_ms_p50: Option<f64>,
    pub latency_ms_p99: Option<f64>,
}

/// Failures of load balancer operations.
#[derive(Debug, thiserror::Error)]
pub enum LbError {
    #[error("invalid backend set: {0}")]
    InvalidBackends(String),
    #[error("unknown backend {0}; list it in set_backends first")]
    UnknownBackend(String),
    #[error("invalid load balancer config: {0}")]
    InvalidConfig(String),
    #[error("HAProxy runtime API refused {command:?}: {reply}")]
    Runtime { command: String, reply: String },
    #[error("could not parse HAProxy output: {0}")]
    Parse(String),
    /// The load balancer's own process (a haproxy the agent runs) could not run.
    #[error("{0}")]
    Process(String),
    #[error("{what} timed out after {timeout_ms} ms")]
    Timeout { what: String, timeout_ms: u64 },
    #[error("I/O error talking to {what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

/// A region's load balancer. Object-safe so the agent can hold `Box<dyn LoadBalancer>`.
pub trait LoadBalancer: Send + Sync {
    /// Makes `backends` the complete set with these weights. The change applies atomically to
    /// new requests; requests in flight finish where they are. Backends left out get weight 0.
    fn set_backends<'a>(
        &'a self,
        backends: &'a [BackendWeight],
    ) -> BoxFuture<'a, Result<(), LbError>>;

    /// Stops new requests to `name` and lets in-flight ones finish; `stats` shows `in_flight`
    /// falling to zero.
    fn drain<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), LbError>>;

    /// Per-backend counters.
    fn stats(&self) -> BoxFuture<'_, Result<Vec<BackendStats>, LbError>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_sets_are_checked() {
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let ok = vec![
            BackendWeight::new("a", a, 90),
            BackendWeight::new("b-2", a, 10),
        ];
        assert!(validate_backends(&ok).is_ok());
        let bad = [
            vec![BackendWeight::new("a", a, 257)],
            vec![BackendWeight::new("", a, 1)],
            vec![BackendWeight::new("a b", a, 1)],
            vec![BackendWeight::new("a", a, 1), BackendWeight::new("a", a, 2)],
            (0..=MAX_BACKENDS)
                .map(|i| BackendWeight::new(format!("b{i}"), a, 1))
                .collect(),
        ];
        for set in bad {
            assert!(
                matches!(validate_backends(&set), Err(LbError::InvalidBackends(_))),
                "{set:?}"
            );
        }
    }
}
