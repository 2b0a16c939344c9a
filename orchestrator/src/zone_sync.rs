//! The DNS controller of every orchestrator: keeps its embedded server's zone equal to the
//! replicated `dns` weights, so all orchestrators answer the same and a client may ask any.
//!
//! [`desired_zone`] is the sans-IO core: from a [`state::Overview`](crate::state::Overview) it
//! computes each service's weighted record set (one address per region with weight > 0, the
//! IP of the region's `front`, the replicated TTL). [`ZoneSync`] applies it to an
//! [`EmbeddedDns`] as one change through `WeightedZone::replace_all_at` (queries see the old zone
//! or the new one, never half of a change; records of services that disappeared go; applying
//! the same state again changes nothing), and [`spawn`] drives it from a `watch` of the latest
//! overview. [`verify_weights_served`] is what the executor calls after proposing
//! `SetDnsWeights`: it waits, bounded, until every orchestrator's server serves the weights.
//!
//! This module must not decide weights (the executor does, through the replicated log) and
//! must not change records anywhere but the local embedded zone.

use std::borrow::Borrow;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::rr::{LowerName, Name};
use prometheus::{GaugeVec, IntCounterVec, IntGauge, Opts, Registry};
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::state::{DnsWeights, Overview};
use umbra_dns::embedded::EmbeddedDns;
use umbra_dns::transfer::{NotifyOutcome, TransferOutcome, ZoneEvents};
use umbra_dns::verify::{ServerVerified, verify_served};
use umbra_dns::{DnsError, MAX_ADDRESS_WEIGHT, WeightedAddress, WeightedRecordSet};

/// Longest wait [`verify_weights_served`] accepts: a verification is one step of a cutover,
/// and a step that cannot be confirmed within a minute is a failure to report, not to wait
/// out.
pub const MAX_VERIFY_TIMEOUT: Duration = Duration::from_secs(60);

/// A service the zone cannot carry, and why (the others are still served).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SkippedService {
    pub service: String,
    pub reason: String,
}

/// What the zone should hold for one overview.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredZone {
    /// One record set per servable service, sorted by service name.
    pub sets: Vec<WeightedRecordSet>,
    /// Services left out, with the reason.
    pub skipped: Vec<SkippedService>,
}

/// The record set `service` should carry under `weights` (its replicated weights, or weights
/// about to be proposed): each region with weight > 0 becomes its front's IP. Regions whose
/// fronts share an IP are one address with their weights added (a DNS answer carries no port,
/// so clients could not tell them apart anyway). Weights are reduced by their greatest common
/// divisor and, only if still above DNS's 0..=255 range, scaled into it, so the usual shares
/// (90:10, 50:50) are served exactly.
pub fn record_set_for(
    overview: &Overview,
    service: &str,
    weights: &DnsWeights,
) -> Result<WeightedRecordSet, DnsError> {
    let state = overview.services.get(service).ok_or_else(|| {
        DnsError::Invalid(format!(
            "no service {service:?} in the replicated state; known services: {}",
            overview
                .services
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        ))
    })?;
    let mut by_ip: BTreeMap<IpAddr, u64> = BTreeMap::new();
    for (region, &weight) in &weights.weights {
        if weight == 0 {
            continue;
        }
        let spec = overview.regions.get(region).ok_or_else(|| {
            DnsError::Invalid(format!(
                "service {service:?} has DNS weight on region {region:?}, which is not declared"
            ))
        })?;
        let front: SocketAddr = spec.front.parse().map_err(|e| {
            DnsError::Invalid(format!(
                "region {region:?} front {:?} is not ip:port: {e}",
                spec.front
            ))
        })?;
        *by_ip.entry(front.ip()).or_default() += u64::from(weight);
    }
    if by_ip.is_empty() {
        return Err(DnsError::Invalid(format!(
            "service {service:?} has no region with a DNS weight above zero"
        )));
    }
    let addresses = dns_weights(&by_ip)
        .into_iter()
        .map(|(addr, weight)| WeightedAddress { addr, weight })
        .collect();
    Ok(WeightedRecordSet::new(
        state.spec.hostname.clone(),
        weights.ttl_secs,
        addresses,
    ))
}

/// Positive weights reduced to 1..=255 keeping their ratios: exactly when the reduced
/// weights fit, else rounded (never below 1, so a region with weight keeps some share).
fn dns_weights(weights: &BTreeMap<IpAddr, u64>) -> Vec<(IpAddr, u8)> {
    let divisor = weights.values().copied().fold(0, gcd).max(1);
    let max = weights.values().copied().max().unwrap_or(1) / divisor;
    let cap = u64::from(MAX_ADDRESS_WEIGHT);
    weights
        .iter()
        .map(|(&addr, &weight)| {
            let reduced = weight / divisor;
            let scaled = if max <= cap {
                reduced
            } else {
                // Rounded to nearest: (reduced · cap + max / 2) / max, in u128 against overflow.
                ((u128::from(reduced) * u128::from(cap) + u128::from(max) / 2) / u128::from(max))
                    as u64
            };
            (addr, scaled.clamp(1, cap) as u8)
        })
        .collect()
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// What a zone with origin `zone` should hold for `overview`: every service with replicated
/// weights whose hostname lies inside the zone. A service that cannot be served (hostname
/// outside the zone, a hostname another service already has, weights the zone refuses) is
/// skipped with its reason and does not hold the others back.
pub fn desired_zone(overview: &Overview, zone: &Name) -> DesiredZone {
    let mut sets = Vec::with_capacity(overview.services.len());
    let mut skipped = Vec::new();
    let mut hostnames: BTreeMap<LowerName, &str> = BTreeMap::new();
    for (service, state) in &overview.services {
        let mut skip = |reason: String| {
            skipped.push(SkippedService {
                service: service.clone(),
                reason,
            })
        };
        let Some(weights) = overview.dns.get(service) else {
            skip("the replicated state has no DNS weights for it".to_owned());
            continue;
        };
        let set = match record_set_for(overview, service, weights) {
            Ok(set) => set,
            Err(e) => {
                skip(e.to_string());
                continue;
            }
        };
        let name = match set.validate(zone) {
            Ok(name) => LowerName::new(&name),
            Err(e) => {
                skip(format!(
                    "hostname {}: {e}; serve the zone that contains it or change the hostname",
                    state.spec.hostname
                ));
                continue;
            }
        };
        if let Some(owner) = hostnames.get(&name) {
            skip(format!(
                "hostname {} is already service {owner:?}'s; give each service its own",
                state.spec.hostname
            ));
            continue;
        }
        hostnames.insert(name, service);
        sets.push(set);
    }
    DesiredZone { sets, skipped }
}

/// What one [`ZoneSync::apply`] did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SyncReport {
    /// The overview's applied index.
    pub applied_index: u64,
    /// Whether the zone changed (false: it already held this content, or the overview was
    /// older than one already applied).
    pub changed: bool,
    /// The overview was older than one already applied and was ignored.
    pub stale: bool,
    /// Record sets served after the apply.
    pub record_sets: usize,
    /// SOA serial after the apply: the applied index of the overview that last changed the
    /// zone (modulo 2³²), so every orchestrator's serials come from one sequence and a
    /// secondary fed by several of them never takes older records for newer ones.
    pub serial: u32,
    /// Services left out, with the reason.
    pub skipped: Vec<SkippedService>,
}

/// The controller's Prometheus metrics.
#[derive(Clone)]
pub struct ZoneSyncMetrics {
    /// Applies by result: `changed`, `unchanged`, `stale`, `error`.
    pub applies: IntCounterVec,
    /// Record sets served.
    pub record_sets: IntGauge,
    /// Services left out of the zone (each also logged with its reason).
    pub skipped_services: IntGauge,
    /// Applied index of the last overview applied.
    pub applied_index: IntGauge,
    /// Each served service's regions and the share of its weight each has.
    pub weight_ratio: GaugeVec,
}

impl ZoneSyncMetrics {
    /// Creates the families and registers them in `registry`.
    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let metrics = Self {
            applies: IntCounterVec::new(
                Opts::new(
                    "umbra_dns_zone_applies_total",
                    "Replicated states applied to the embedded DNS zone, by result",
                ),
                &["result"],
            )?,
            record_sets: IntGauge::new(
                "umbra_dns_zone_record_sets",
                "Service record sets the embedded DNS zone serves",
            )?,
            skipped_services: IntGauge::new(
                "umbra_dns_zone_skipped_services",
                "Services with replicated DNS weights the embedded zone cannot serve",
            )?,
            applied_index: IntGauge::new(
                "umbra_dns_zone_applied_index",
                "Raft index of the replicated state the embedded DNS zone serves",
            )?,
            weight_ratio: GaugeVec::new(
                Opts::new(
                    "umbra_dns_weight_ratio",
                    "Share of a service's DNS weight each region has in the zone served, 0 to 1",
                ),
                &["service", "region"],
            )?,
        };
        registry.register(Box::new(metrics.applies.clone()))?;
        registry.register(Box::new(metrics.record_sets.clone()))?;
        registry.register(Box::new(metrics.skipped_services.clone()))?;
        registry.register(Box::new(metrics.applied_index.clone()))?;
        registry.register(Box::new(metrics.weight_ratio.clone()))?;
        Ok(metrics)
    }
}

/// NOTIFY and zone transfer outcomes of the embedded server, on the node's registry:
/// `umbra_dns_notify_total{outcome}` and `umbra_dns_zone_transfers_total{outcome}`, every
/// label value present from the start (at 0) so a rate over them is defined.
#[derive(Clone)]
pub struct ZoneTransferMetrics {
    pub notify: IntCounterVec,
    pub transfers: IntCounterVec,
}

impl ZoneTransferMetrics {
    /// Creates the families and registers them in `registry`.
    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let metrics = Self {
            notify: IntCounterVec::new(
                Opts::new(
                    "umbra_dns_notify_total",
                    "NOTIFY messages to DNS secondaries by final outcome, one per secondary \
                     and serial: answered, rejected, unanswered (after every retry), failed",
                ),
                &["outcome"],
            )?,
            transfers: IntCounterVec::new(
                Opts::new(
                    "umbra_dns_zone_transfers_total",
                    "AXFR/IXFR requests to the embedded DNS by outcome (served, or why refused)",
                ),
                &["outcome"],
            )?,
        };
        for outcome in NotifyOutcome::ALL {
            metrics.notify.with_label_values(&[outcome.as_str()]);
        }
        for outcome in TransferOutcome::ALL {
            metrics.transfers.with_label_values(&[outcome.as_str()]);
        }
        registry.register(Box::new(metrics.notify.clone()))?;
        registry.register(Box::new(metrics.transfers.clone()))?;
        Ok(metrics)
    }
}

impl ZoneEvents for ZoneTransferMetrics {
    fn notify(&self, _secondary: SocketAddr, outcome: NotifyOutcome) {
        self.notify.with_label_values(&[outcome.as_str()]).inc();
    }

    fn transfer(&self, _client: SocketAddr, outcome: TransferOutcome) {
        self.transfers.with_label_values(&[outcome.as_str()]).inc();
    }
}

/// Keeps one embedded server's zone equal to the replicated state.
pub struct ZoneSync {
    dns: Arc<EmbeddedDns>,
    last_index: Option<u64>,
    metrics: Option<ZoneSyncMetrics>,
}

impl ZoneSync {
    pub fn new(dns: Arc<EmbeddedDns>) -> Self {
        Self {
            dns,
            last_index: None,
            metrics: None,
        }
    }

    /// Counts applies and exports the zone's size in `metrics`.
    pub fn with_metrics(mut self, metrics: ZoneSyncMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    pub fn dns(&self) -> &Arc<EmbeddedDns> {
        &self.dns
    }

    /// Makes the zone serve `overview`'s weights, in one change. An overview older than one
    /// already applied (a lower applied index) is ignored, so a late notification cannot put
    /// old weights back. Services that cannot be served are left out and reported.
    pub fn apply(&mut self, overview: &Overview) -> Result<SyncReport, DnsError> {
        let zone = self.dns.zone();
        if self
            .last_index
            .is_some_and(|last| overview.applied_index < last)
        {
            self.count("stale");
            return Ok(SyncReport {
                applied_index: overview.applied_index,
                changed: false,
                stale: true,
                record_sets: zone.record_sets().len(),
                serial: zone.serial(),
                skipped: Vec::new(),
            });
        }
        let desired = desired_zone(overview, zone.origin_name());
        for skipped in &desired.skipped {
            tracing::warn!(
                service = %skipped.service,
                reason = %skipped.reason,
                "service left out of the DNS zone"
            );
        }
        let changed = match zone.replace_all_at(&desired.sets, overview.applied_index) {
            Ok(changed) => changed,
            Err(e) => {
                // desired_zone validated every set, so this is a bug, not an input problem.
                self.count("error");
                return Err(e);
            }
        };
        self.last_index = Some(overview.applied_index);
        let report = SyncReport {
            applied_index: overview.applied_index,
            changed,
            stale: false,
            record_sets: desired.sets.len(),
            serial: zone.serial(),
            skipped: desired.skipped,
        };
        if changed {
            tracing::info!(
                applied_index = report.applied_index,
                serial = report.serial,
                record_sets = report.record_sets,
                "DNS zone now serves the replicated weights"
            );
        }
        self.count(if changed { "changed" } else { "unchanged" });
        if let Some(m) = &self.metrics {
            m.record_sets.set(report.record_sets as i64);
            m.skipped_services.set(report.skipped.len() as i64);
            m.applied_index
                .set(i64::try_from(report.applied_index).unwrap_or(i64::MAX));
            m.weight_ratio.reset();
            let skipped: Vec<&str> = report.skipped.iter().map(|s| s.service.as_str()).collect();
            for (service, dns) in &overview.dns {
                let total: u64 = dns.weights.values().map(|&w| u64::from(w)).sum();
                if total == 0 || skipped.contains(&service.as_str()) {
                    continue;
                }
                for (region, &weight) in &dns.weights {
                    m.weight_ratio
                        .with_label_values(&[service, region])
                        .set(f64::from(weight) / total as f64);
                }
            }
        }
        Ok(report)
    }

    fn count(&self, result: &str) {
        if let Some(m) = &self.metrics {
            m.applies.with_label_values(&[result]).inc();
        }
    }
}

/// Runs `sync` over every overview `overviews` announces (the current one first) until the
/// sender is dropped or the task is aborted. `T` is `Overview` or `Arc<Overview>`, as the
/// node publishes it. The channel's read lock is held only while the zone is computed and
/// swapped (microseconds, no await). Overviews announced while one is applied coalesce: the
/// zone jumps to the latest, which is all a DNS client can observe anyway.
pub fn spawn<T>(mut sync: ZoneSync, mut overviews: watch::Receiver<T>) -> JoinHandle<()>
where
    T: Borrow<Overview> + Send + Sync + 'static,
{
    tokio::spawn(async move {
        loop {
            {
                let overview = overviews.borrow_and_update();
                if let Err(error) = sync.apply((*overview).borrow()) {
                    tracing::error!(%error, "the DNS zone refused the replicated weights");
                }
            }
            if overviews.changed().await.is_err() {
                tracing::debug!("replicated state closed; the DNS zone keeps its last content");
                return;
            }
        }
    })
}

/// Waits until every server in `servers` (every orchestrator's embedded DNS) serves `weights`
/// for `service` as [`record_set_for`] maps them with `overview`'s regions, at most `timeout`
/// (≤ [`MAX_VERIFY_TIMEOUT`]). Call it after `SetDnsWeights` was applied; followers apply it
/// a moment later, which the wait covers. The error names the server that still serves
/// something else and what it served.
pub async fn verify_weights_served(
    servers: &[SocketAddr],
    overview: &Overview,
    service: &str,
    weights: &DnsWeights,
    timeout: Duration,
) -> Result<Vec<ServerVerified>, DnsError> {
    if servers.is_empty() {
        return Err(DnsError::Invalid(
            "no DNS server to verify against; list every orchestrator's DNS address".into(),
        ));
    }
    if timeout.is_zero() || timeout > MAX_VERIFY_TIMEOUT {
        return Err(DnsError::Invalid(format!(
            "verification timeout {timeout:?} is out of range; use 1 ms..={MAX_VERIFY_TIMEOUT:?}"
        )));
    }
    let distinct: BTreeSet<&SocketAddr> = servers.iter().collect();
    if distinct.len() != servers.len() {
        return Err(DnsError::Invalid(format!(
            "DNS servers {servers:?} name one server twice"
        )));
    }
    let set = record_set_for(overview, service, weights)?;
    verify_served(servers, &set, timeout).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn reduce(pairs: &[(&str, u64)]) -> Vec<(IpAddr, u8)> {
        dns_weights(&pairs.iter().map(|&(a, w)| (ip(a), w)).collect())
    }

    #[test]
    fn weights_keep_their_ratio_exactly_when_they_fit() {
        assert_eq!(
            reduce(&[("10.0.0.1", 90), ("10.0.0.2", 10)]),
            vec![(ip("10.0.0.1"), 9), (ip("10.0.0.2"), 1)]
        );
        assert_eq!(
            reduce(&[("10.0.0.1", 50), ("10.0.0.2", 50)]),
            vec![(ip("10.0.0.1"), 1), (ip("10.0.0.2"), 1)]
        );
        assert_eq!(reduce(&[("10.0.0.1", 7)]), vec![(ip("10.0.0.1"), 1)]);
        assert_eq!(
            reduce(&[("10.0.0.1", 254), ("10.0.0.2", 3)]),
            vec![(ip("10.0.0.1"), 254), (ip("10.0.0.2"), 3)]
        );
    }

    #[test]
    fn large_weights_are_scaled_and_none_drops_to_zero() {
        assert_eq!(
            reduce(&[("10.0.0.1", 1_000_000), ("10.0.0.2", 1)]),
            vec![(ip("10.0.0.1"), 255), (ip("10.0.0.2"), 1)]
        );
        assert_eq!(
            reduce(&[("10.0.0.1", 1021), ("10.0.0.2", 509)]),
            vec![(ip("10.0.0.1"), 255), (ip("10.0.0.2"), 127)]
        );
        assert_eq!(
            reduce(&[("10.0.0.1", u64::from(u32::MAX) * 3), ("10.0.0.2", 2)]),
            vec![(ip("10.0.0.1"), 255), (ip("10.0.0.2"), 1)]
        );
    }
}
