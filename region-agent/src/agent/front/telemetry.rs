//! The region front's Prometheus families: requests and failed requests served by LOCAL
//! backends, their time to response headers as a histogram, and the share each service sends
//! to another region's front. Labels are bounded: the service (from the instance's id, see
//! [`service_of_instance`]) and, for shares, the target front's address; the region is a
//! constant label of the agent's registry. Never an instance, never a migration.
//!
//! Counts come from the balancer's own per-backend counters (the same ones the front's report
//! sums), turned into Prometheus counters by adding each backend's increase since the previous
//! look, so a balancer restart (haproxy's counters start again at 0) never makes one go down.
//! Latencies are observed per answered request, as the balancer measures them (the embedded
//! proxy in µs, haproxy's request log in whole ms). It must not do work on its own schedule.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use prometheus::core::Collector;
use prometheus::{GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, Opts};

use super::Share;

/// Histogram buckets of `umbra_front_request_duration_seconds`: 1 ms to 10 s, dense around
/// the tens of milliseconds an SLO's p99 bound usually sits at.
pub const DURATION_BUCKETS_SECONDS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The service label of a name the orchestrator gave an instance: its pool prefix
/// `{service}-{region}` or `{service}-{n}` (a migration's id) followed by `-{k}`
/// (`executor::reconcile::shadow_ids`, `pool_prefix`). A name of another shape is its own
/// service, which keeps the label bounded by the instances the orchestrator creates.
pub fn service_of_instance<'a>(id: &'a str, region: Option<&str>) -> &'a str {
    fn strip_number(s: &str) -> Option<&str> {
        let (head, tail) = s.rsplit_once('-')?;
        (!head.is_empty() && !tail.is_empty() && tail.bytes().all(|b| b.is_ascii_digit()))
            .then_some(head)
    }
    let Some(prefix) = strip_number(id) else {
        return id;
    };
    if let Some(region) = region
        && let Some(service) = prefix
            .strip_suffix(region)
            .and_then(|s| s.strip_suffix('-'))
        && !service.is_empty()
    {
        return service;
    }
    strip_number(prefix).unwrap_or(prefix)
}

/// One local backend's counters as the balancer keeps them.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalRow {
    /// What the counters belong to (the backend's name, or haproxy's slot).
    pub key: String,
    /// The instance the key serves now, when known (`None`: an empty haproxy slot).
    pub backend: Option<String>,
    /// Requests since the balancer started.
    pub requests: u64,
    /// Of which failed.
    pub errors: u64,
}

/// The front's metric families and what turns balancer counters into them.
pub struct FrontTelemetry {
    region: Mutex<Option<String>>,
    requests: IntCounterVec,
    errors: IntCounterVec,
    duration: HistogramVec,
    share: GaugeVec,
    /// Balancer key (backend name or haproxy slot) → service, as of the last reconcile.
    services: Mutex<BTreeMap<String, String>>,
    /// Each key's counters at the previous look.
    last: Mutex<BTreeMap<String, (u64, u64)>>,
}

impl Default for FrontTelemetry {
    fn default() -> Self {
        Self::new()
    }
}

impl FrontTelemetry {
    /// Unregistered families (the agent registers them with its region label).
    pub fn new() -> Self {
        let requests = IntCounterVec::new(
            Opts::new(
                "umbra_front_requests_total",
                "Requests the region front sent to local instances.",
            ),
            &["service"],
        )
        .expect("valid metric");
        let errors = IntCounterVec::new(
            Opts::new(
                "umbra_front_request_errors_total",
                "Of those, failed: connect failures, upstream errors, timeouts and 5xx.",
            ),
            &["service"],
        )
        .expect("valid metric");
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "umbra_front_request_duration_seconds",
                "Time to response headers of requests answered by local instances.",
            )
            .buckets(DURATION_BUCKETS_SECONDS.to_vec()),
            &["service"],
        )
        .expect("valid metric");
        let share = GaugeVec::new(
            Opts::new(
                "umbra_front_share_ratio",
                "Share of a service's requests the front sends to another region's front (0..1).",
            ),
            &["service", "to"],
        )
        .expect("valid metric");
        FrontTelemetry {
            region: Mutex::new(None),
            requests,
            errors,
            duration,
            share,
            services: Mutex::new(BTreeMap::new()),
            last: Mutex::new(BTreeMap::new()),
        }
    }

    /// The families, for a registry.
    pub fn collectors(&self) -> Vec<Box<dyn Collector>> {
        vec![
            Box::new(self.requests.clone()),
            Box::new(self.errors.clone()),
            Box::new(self.duration.clone()),
            Box::new(self.share.clone()),
        ]
    }

    /// The region this front serves: instance names are `{service}-{region}-{k}`.
    pub fn set_region(&self, region: &str) {
        *self.region.lock().expect("region lock") = Some(region.to_owned());
    }

    fn service(&self, instance: &str) -> String {
        let region = self.region.lock().expect("region lock");
        service_of_instance(instance, region.as_deref()).to_owned()
    }

    /// Which service each balancer key serves now: `(key, instance)` pairs.
    pub fn set_backends(&self, keys: impl IntoIterator<Item = (String, String)>) {
        let map = keys
            .into_iter()
            .map(|(key, instance)| {
                let service = self.service(&instance);
                (key, service)
            })
            .collect();
        *self.services.lock().expect("services lock") = map;
    }

    /// One answered request of `key` (a backend or slot), `took` to response headers.
    pub fn observe(&self, key: &str, took: Duration) {
        let service = self
            .services
            .lock()
            .expect("services lock")
            .get(key)
            .cloned();
        if let Some(service) = service {
            self.duration
                .with_label_values(&[service.as_str()])
                .observe(took.as_secs_f64());
        }
    }

    /// Adds each local backend's increase since the previous call to its service's counters.
    pub fn count(&self, rows: &[LocalRow]) {
        let mut last = self.last.lock().expect("last lock");
        for row in rows {
            let (requests, errors) = match last.get(&row.key) {
                // Below the previous look: the balancer restarted and counts from 0.
                Some((r, e)) if row.requests >= *r && row.errors >= *e => {
                    (row.requests - r, row.errors - e)
                }
                _ => (row.requests, row.errors),
            };
            last.insert(row.key.clone(), (row.requests, row.errors));
            let Some(instance) = &row.backend else {
                continue;
            };
            let service = self.service(instance);
            if requests > 0 {
                self.requests
                    .with_label_values(&[service.as_str()])
                    .inc_by(requests);
            } else {
                // Present at 0, so a query over a front that served nothing yet has data.
                self.requests.with_label_values(&[service.as_str()]);
            }
            let counter = self.errors.with_label_values(&[service.as_str()]);
            counter.inc_by(errors);
        }
    }

    /// The shares in force, by service.
    pub fn set_shares(&self, shares: &BTreeMap<String, Share>) {
        self.share.reset();
        for (service, share) in shares {
            self.share
                .with_label_values(&[service.as_str(), &share.target_front.to_string()])
                .set(f64::from(share.percent) / 100.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_names_give_their_service() {
        let rows = [
            ("shop-eu-west-1", Some("eu-west"), "shop"),
            ("shop-eu-west-12", Some("eu-west"), "shop"),
            ("shop-3-2", Some("us-east"), "shop"),
            ("web-shop-3-2", Some("us-east"), "web-shop"),
            ("shop-eu-west-1", None, "shop-eu-west"),
            ("odd", Some("eu-west"), "odd"),
            ("odd-1", Some("eu-west"), "odd"),
        ];
        for (id, region, service) in rows {
            assert_eq!(service_of_instance(id, region), service, "{id}");
        }
    }

    #[test]
    fn counters_add_increases_and_survive_a_balancer_restart() {
        let t = FrontTelemetry::new();
        t.set_region("eu-west");
        let row = |requests, errors| LocalRow {
            key: "local-0".into(),
            backend: Some("shop-eu-west-1".into()),
            requests,
            errors,
        };
        t.count(&[row(10, 1)]);
        t.count(&[row(15, 1)]);
        // haproxy restarted: its counters begin again.
        t.count(&[row(4, 0)]);
        assert_eq!(t.requests.with_label_values(&["shop"]).get(), 19);
        assert_eq!(t.errors.with_label_values(&["shop"]).get(), 1);
    }
}
