//! The region front on the region's front address, whose backends are this region's ACTIVE
//! instances plus — during a cutover away from this region — other regions' fronts with the
//! share the leader set (`SetShare`). A load-balancer share applies to the very next request,
//! which is why a cutover moves traffic here before DNS follows. Two kinds do the balancing
//! (`[front] kind`): the embedded weighted proxy (`crate::lb::proxy`, the default) in a
//! process of its own, `umbra-agent front`, which keeps its routing in a file and outlives the
//! agent ([`embedded`]), and a `haproxy` the agent runs and drives through its runtime API
//! ([`haproxy`]). Both are adopted by the next agent on the state directory, so an agent
//! restart or crash never stops the region's traffic. Everything above the balancer — shares,
//! weights, reconciling, the report's windows — is the same for both, so the executor does not
//! know which one runs.
//!
//! [`weights`] is the pure part (instances and shares → backend weights, exact percentages);
//! [`Front`] reconciles the balancer with it after every command and heartbeat, and reports
//! what the LOCAL backends served (the report of a target region measures its own instances).
//!
//! How each figure of the report is derived:
//! - `requests_total` / `errors_total`: requests sent to local backends since the balancer
//!   started, and those that failed. Embedded: its per-backend counters (a connect failure,
//!   an upstream error, a timeout or a 5xx is an error; a retried request counts once per
//!   backend tried). HAProxy: `show stat` of the `local-*` server slots, requests = the sum of
//!   `hrsp_1xx` to `hrsp_5xx`, `hrsp_other`, `econ` and `eresp`; errors = the sum of
//!   `hrsp_5xx`, `econ` and `eresp` (`lb::haproxy`). Both restart at 0 when haproxy does.
//! - `window_requests` / `window_errors` / `window_ms`: the deltas of the two totals since the
//!   previous heartbeat, and the time between the two heartbeats.
//! - `window_p99_ms`: the p99 time to response headers of all local backends' requests merged,
//!   over the recent-latency window ([`crate::lb::proxy::DEFAULT_LATENCY_WINDOW`], the last
//!   4–5 s), so a cutover step is judged on how the instances answer now. Embedded: measured by
//!   the front process in µs, over its own window, and returned with its counters on the
//!   control socket, so an agent restart loses no sample. HAProxy keeps no quantiles (`show stat` has only a mean over its last
//!   1024 requests), so haproxy logs one line per request to a socket of the agent's, and the
//!   agent puts `%Tw + %Tc + %Tr` (queue, connect and response-header times, whole ms as
//!   haproxy measures them) of the `local-*` slots into the same windowed histogram. A log
//!   line haproxy could not send (socket full) is a sample missing from the p99, never a
//!   request missing from the counts.
//!
//! The two windows differ in length: the latency one is fixed so that a p99 always has a few
//! seconds of samples behind it.

mod child;
pub mod embedded;
pub mod haproxy;
pub mod telemetry;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use umbra_proto::agent::{FrontReport, InstanceReport, InstanceState, ShareReport};

use self::embedded::EmbeddedFront;
use self::haproxy::HaproxyFront;
pub use self::telemetry::{FrontTelemetry, LocalRow};
use super::config::{ConfigError, FrontKind, FrontSection};
use crate::lb::proxy::LatencyObserver;
use crate::lb::{BackendWeight, LbError, MAX_WEIGHT};

/// Prefix of a remote front's backend name (followed by the service).
const REMOTE_PREFIX: &str = "front-";

/// The file in the agent's state directory holding the shares last set, so a restarted agent's
/// front forwards the same shares before any orchestrator answers (and the leader's repeated
/// `SetShare`, answered from the ledger, is true again).
pub const SHARES_FILE: &str = "front-shares.json";

/// A share as requested.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Share {
    /// The other region's front.
    pub target_front: SocketAddr,
    /// 0..=100.
    pub percent: u8,
}

/// Why a share was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ShareError {
    /// The percentage is out of range.
    #[error("percent {0} must be between 0 and 100")]
    Percent(u8),
    /// The target is not `ip:port`.
    #[error("target_front {0:?} must be an ip:port address")]
    Target(String),
    /// The shares of all services would exceed 100 %.
    #[error("shares would add up to {0} %, above 100 %")]
    Total(u32),
    /// The service name cannot be a backend name.
    #[error("service {0:?} must be ASCII letters, digits, '-', '_' or '.'")]
    Service(String),
    /// The share could not be kept in the state directory (nothing changed).
    #[error("cannot keep the shares in {path}: {message}")]
    Keep {
        /// The shares file.
        path: String,
        /// What failed.
        message: String,
    },
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// Backend weights for `local` instances and `shares` (by service): with `p` the total share,
/// each remote front gets `percent × n` and each of the `n` local instances `100 − p`, so the
/// remote fraction is exactly `percent` %. Weights are reduced by their common divisor and, if
/// still above [`MAX_WEIGHT`], scaled down (rounding, at least 1 for a non-zero weight).
pub fn weights(
    local: &[(String, SocketAddr)],
    shares: &BTreeMap<String, Share>,
) -> Vec<BackendWeight> {
    let n = local.len() as u32;
    let total: u32 = shares.values().map(|s| u32::from(s.percent)).sum();
    let mut out: Vec<BackendWeight> = local
        .iter()
        .map(|(id, addr)| BackendWeight::new(id.clone(), *addr, 100u32.saturating_sub(total)))
        .collect();
    for (service, share) in shares {
        if share.percent == 0 {
            continue;
        }
        let w = u32::from(share.percent) * n.max(1);
        out.push(BackendWeight::new(
            format!("{REMOTE_PREFIX}{service}"),
            share.target_front,
            w,
        ));
    }
    let divisor = out.iter().map(|b| b.weight).filter(|w| *w > 0).fold(0, gcd);
    if divisor > 1 {
        for b in &mut out {
            b.weight /= divisor;
        }
    }
    let max = out.iter().map(|b| b.weight).max().unwrap_or(0);
    if max > MAX_WEIGHT {
        for b in &mut out {
            if b.weight > 0 {
                b.weight = ((u64::from(b.weight) * u64::from(MAX_WEIGHT) + u64::from(max) / 2)
                    / u64::from(max))
                .max(1) as u32;
            }
        }
    }
    out
}

struct FrontState {
    shares: BTreeMap<String, Share>,
    applied: Option<Vec<BackendWeight>>,
    last: Option<(Instant, u64, u64)>,
}

/// What balances the front's requests (module docs: how each reports).
enum Balancer {
    /// The proxy as `umbra-agent front` (`kind = "embedded"`).
    Embedded(Box<EmbeddedFront>),
    // Boxed: one front per agent, and the haproxy one is several times the proxy's size.
    Haproxy(Box<HaproxyFront>),
}

/// The counters of the local backends among `stats` (named after their instances).
fn local_backend_rows(stats: Vec<crate::lb::BackendStats>) -> Vec<LocalRow> {
    stats
        .into_iter()
        .filter(|s| !s.name.starts_with(REMOTE_PREFIX))
        .map(|s| LocalRow {
            key: s.name.clone(),
            backend: Some(s.name),
            requests: s.requests,
            errors: s.errors,
        })
        .collect()
}

impl Balancer {
    fn listen(&self) -> SocketAddr {
        match self {
            Balancer::Embedded(front) => front.listen(),
            Balancer::Haproxy(haproxy) => haproxy.listen(),
        }
    }

    async fn set_backends(&self, backends: &[BackendWeight]) -> Result<(), LbError> {
        match self {
            Balancer::Embedded(front) => front.set_backends(backends).await,
            Balancer::Haproxy(haproxy) => haproxy.set_backends(backends).await,
        }
    }

    /// Each local backend's requests and errors since the balancer started, and the p99 of
    /// the local backends' recent requests, ms (module docs).
    async fn local_reading(&self) -> Result<(Vec<LocalRow>, Option<f64>), LbError> {
        match self {
            Balancer::Embedded(front) => {
                let (stats, p99) = front.stats().await?;
                Ok((local_backend_rows(stats), p99))
            }
            Balancer::Haproxy(haproxy) => Ok((haproxy.local_rows().await?, haproxy.local_p99_ms())),
        }
    }

    /// (balancer key, instance) of each local backend in the balancer now.
    fn local_keys(&self, wanted: &[BackendWeight]) -> Vec<(String, String)> {
        match self {
            Balancer::Embedded(_) => wanted
                .iter()
                .filter(|b| !b.name.starts_with(REMOTE_PREFIX))
                .map(|b| (b.name.clone(), b.name.clone()))
                .collect(),
            Balancer::Haproxy(haproxy) => haproxy.slot_backends(),
        }
    }

    /// Restarts a balancer process that died; true when it did (its counters restarted, and
    /// the weights must be set again).
    async fn ensure_running(&self) -> Result<bool, LbError> {
        match self {
            Balancer::Embedded(front) => front.ensure_running().await,
            Balancer::Haproxy(haproxy) => haproxy.ensure_running().await,
        }
    }
}

/// Why the configured front could not start.
#[derive(Debug, thiserror::Error)]
pub enum FrontError {
    /// The `[front]` section is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The balancer could not start.
    #[error(transparent)]
    Lb(#[from] LbError),
}

/// The running front.
pub struct Front {
    balancer: Balancer,
    state: Mutex<FrontState>,
    /// Where the shares are kept ([`SHARES_FILE`]; `None`: in memory only).
    shares_file: Option<std::path::PathBuf>,
    telemetry: Arc<FrontTelemetry>,
}

fn observer(telemetry: &Arc<FrontTelemetry>) -> LatencyObserver {
    let telemetry = telemetry.clone();
    LatencyObserver(Arc::new(move |key, took| telemetry.observe(key, took)))
}

impl Front {
    /// Starts the front `section` configures, for the agent whose state directory is
    /// `state_dir` (a haproxy front keeps its files under it by default and carries its
    /// marker).
    pub async fn from_config(
        section: &FrontSection,
        state_dir: &Path,
    ) -> Result<Front, FrontError> {
        let mut front = match section.front_kind()? {
            FrontKind::Embedded => {
                let telemetry = Arc::new(FrontTelemetry::new());
                let embedded = EmbeddedFront::start(
                    section.listen,
                    &section.embedded(state_dir),
                    state_dir,
                    Some(observer(&telemetry)),
                )
                .await?;
                Front::with(Balancer::Embedded(Box::new(embedded)), telemetry)
            }
            FrontKind::Haproxy => {
                let settings = section.haproxy(state_dir);
                let telemetry = Arc::new(FrontTelemetry::new());
                let haproxy = HaproxyFront::start(
                    section.listen,
                    &settings,
                    state_dir,
                    Some(observer(&telemetry)),
                )
                .await?;
                Front::with(Balancer::Haproxy(Box::new(haproxy)), telemetry)
            }
        };
        let path = state_dir.join(SHARES_FILE);
        let shares: BTreeMap<String, Share> = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                FrontError::Config(ConfigError::Invalid(format!(
                    "{}: {e}; move it away to start with no shares",
                    path.display()
                )))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => {
                return Err(FrontError::Config(ConfigError::Invalid(format!(
                    "{}: {e}",
                    path.display()
                ))));
            }
        };
        if !shares.is_empty() {
            tracing::info!(?shares, "restoring the shares a previous agent set");
        }
        front.state.get_mut().expect("front lock").shares = shares;
        front.shares_file = Some(path);
        Ok(front)
    }

    fn with(balancer: Balancer, telemetry: Arc<FrontTelemetry>) -> Front {
        Front {
            balancer,
            telemetry,
            state: Mutex::new(FrontState {
                shares: BTreeMap::new(),
                applied: None,
                last: None,
            }),
            shares_file: None,
        }
    }

    /// The front's Prometheus families (the agent registers them).
    pub fn telemetry(&self) -> &FrontTelemetry {
        &self.telemetry
    }

    /// Writes `shares` to [`SHARES_FILE`] (write, fsync, rename).
    fn keep_shares(&self, shares: &BTreeMap<String, Share>) -> Result<(), ShareError> {
        let Some(path) = &self.shares_file else {
            return Ok(());
        };
        let keep = || -> std::io::Result<()> {
            let tmp = path.with_extension("json.tmp");
            let mut file = std::fs::File::create(&tmp)?;
            std::io::Write::write_all(&mut file, &serde_json::to_vec(shares)?)?;
            file.sync_all()?;
            std::fs::rename(&tmp, path)
        };
        keep().map_err(|e| ShareError::Keep {
            path: path.display().to_string(),
            message: e.to_string(),
        })
    }

    /// The address clients reach the front on.
    pub fn local_addr(&self) -> SocketAddr {
        self.balancer.listen()
    }

    /// Records a share (checked first: on error nothing changes). Call [`Front::reconcile`]
    /// afterwards to apply it.
    pub fn set_share(
        &self,
        service: &str,
        target_front: &str,
        percent: u8,
    ) -> Result<(), ShareError> {
        if percent > 100 {
            return Err(ShareError::Percent(percent));
        }
        if service.is_empty()
            || !service
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(ShareError::Service(service.to_owned()));
        }
        let target: SocketAddr = target_front
            .parse()
            .map_err(|_| ShareError::Target(target_front.to_owned()))?;
        let mut state = self.state.lock().expect("front lock");
        let others: u32 = state
            .shares
            .iter()
            .filter(|(s, _)| s.as_str() != service)
            .map(|(_, s)| u32::from(s.percent))
            .sum();
        if others + u32::from(percent) > 100 {
            return Err(ShareError::Total(others + u32::from(percent)));
        }
        let mut shares = state.shares.clone();
        if percent == 0 {
            shares.remove(service);
        } else {
            shares.insert(
                service.to_owned(),
                Share {
                    target_front: target,
                    percent,
                },
            );
        }
        if shares != state.shares {
            self.keep_shares(&shares)?;
            state.shares = shares;
        }
        Ok(())
    }

    /// Makes the balancer's backends match the active instances and the shares (no-op when
    /// nothing changed and the balancer did not have to be restarted).
    pub async fn reconcile(&self, instances: &[InstanceReport]) -> Result<(), LbError> {
        if self.balancer.ensure_running().await? {
            let mut state = self.state.lock().expect("front lock");
            state.applied = None;
            // The counters restarted at 0: the next window starts from them.
            state.last = None;
        }
        let local: Vec<(String, SocketAddr)> = instances
            .iter()
            .filter(|i| i.state == InstanceState::Active)
            .filter_map(|i| Some((i.id.clone(), i.addr.as_deref()?.parse().ok()?)))
            .collect();
        let wanted = {
            let state = self.state.lock().expect("front lock");
            let wanted = weights(&local, &state.shares);
            if state.applied.as_ref() == Some(&wanted) {
                return Ok(());
            }
            wanted
        };
        self.balancer.set_backends(&wanted).await?;
        self.telemetry
            .set_backends(self.balancer.local_keys(&wanted));
        tracing::info!(backends = ?wanted, "front backends set");
        self.state.lock().expect("front lock").applied = Some(wanted);
        Ok(())
    }

    /// What the local backends served. With `advance`, the window runs from the previous
    /// advancing call to now and the next window starts here (heartbeats); without, the window
    /// is reported but not restarted (command outcomes).
    pub async fn report(&self, advance: bool) -> Result<FrontReport, LbError> {
        let (rows, p99) = self.balancer.local_reading().await?;
        self.telemetry.count(&rows);
        let (requests_total, errors_total) = rows
            .iter()
            .fold((0, 0), |(r, e), row| (r + row.requests, e + row.errors));
        let now = Instant::now();
        let mut state = self.state.lock().expect("front lock");
        let (window_ms, window_requests, window_errors) = match state.last {
            Some((at, r, e)) => (
                now.duration_since(at).as_millis() as u64,
                requests_total.saturating_sub(r),
                errors_total.saturating_sub(e),
            ),
            None => (0, requests_total, errors_total),
        };
        if advance {
            state.last = Some((now, requests_total, errors_total));
        }
        self.telemetry.set_shares(&state.shares);
        Ok(FrontReport {
            listen: self.local_addr().to_string(),
            requests_total,
            errors_total,
            window_ms,
            window_requests,
            window_errors,
            window_p99_ms: p99,
            shares: state
                .shares
                .iter()
                .map(|(service, s)| ShareReport {
                    service: service.clone(),
                    target_front: s.target_front.to_string(),
                    percent: s.percent,
                })
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(p: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], p))
    }

    fn share(percent: u8) -> BTreeMap<String, Share> {
        BTreeMap::from([(
            "shop".to_string(),
            Share {
                target_front: addr(9),
                percent,
            },
        )])
    }

    fn remote_fraction(ws: &[BackendWeight]) -> f64 {
        let total: u32 = ws.iter().map(|b| b.weight).sum();
        let remote: u32 = ws
            .iter()
            .filter(|b| b.name.starts_with(REMOTE_PREFIX))
            .map(|b| b.weight)
            .sum();
        f64::from(remote) / f64::from(total)
    }

    #[test]
    fn shares_are_exact_percentages() {
        let local: Vec<_> = (1..=3).map(|i| (format!("i-{i}"), addr(i))).collect();
        for (percent, n) in [(0u8, 3usize), (10, 3), (50, 3), (100, 3), (10, 1), (37, 2)] {
            let ws = weights(&local[..n], &share(percent));
            assert!(ws.iter().all(|b| b.weight <= MAX_WEIGHT), "{ws:?}");
            assert!(
                (remote_fraction(&ws) - f64::from(percent) / 100.0).abs() < 1e-9,
                "{percent} % over {n}: {ws:?}"
            );
        }
        // No local instance: all traffic to the remote front, or none at all.
        assert_eq!(remote_fraction(&weights(&[], &share(30))), 1.0);
        assert!(weights(&[], &share(0)).is_empty());
    }

    #[test]
    fn large_sets_are_scaled_into_range() {
        let local: Vec<_> = (1..=7).map(|i| (format!("i-{i}"), addr(i))).collect();
        let ws = weights(&local, &share(49));
        assert!(ws.iter().all(|b| b.weight <= MAX_WEIGHT && b.weight > 0));
        assert!((remote_fraction(&ws) - 0.49).abs() < 0.01, "{ws:?}");
    }
}
