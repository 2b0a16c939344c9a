//! The judging core of `umbra drill evacuate`: the order services leave a region in, what the
//! region fronts' metrics say about failed requests and latency, the stop conditions, and the
//! verdict with its evidence (JSON and Markdown). Plain functions of their inputs: the CLI's
//! driver calls the operator API, scrapes the fronts and injects the faults; nothing here does
//! I/O or reads a clock (instants are passed in as Unix ms).

use std::fmt::Write as _;

use serde::Serialize;

/// Why services leave in the order they do.
pub const ORDER_REASON: &str = "smallest serving pool first (warm instances, then name): a \
     fault shows on the least traffic first, and each move leaves more room for the larger ones";

/// Fewest requests a stop condition judges on: the demo plan's SLO judges a step on at least
/// 100 requests (`min_samples`), and so does a drill.
pub const DEFAULT_MIN_REQUESTS: u64 = 100;

/// A service to move out of the region, and where to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Move {
    /// The service.
    pub service: String,
    /// The region it moves to.
    pub to: String,
    /// Warm instances of its serving pool in the evacuated region, as the leader reports them.
    pub warm_instances: u32,
}

/// The moves out of a region, in the drill's order ([`ORDER_REASON`]): `serving` is each
/// service with traffic there and its warm instances; each goes to `to` when given, else to
/// the region of `others` (region → services it serves) serving the fewest services, counting
/// those the drill already sent there, then by name. `None` when there is no other region.
pub fn plan_moves(
    serving: Vec<(String, u32)>,
    mut others: std::collections::BTreeMap<String, usize>,
    to: Option<&str>,
) -> Option<Vec<Move>> {
    let mut moves: Vec<Move> = serving
        .into_iter()
        .map(|(service, warm_instances)| Move {
            service,
            to: String::new(),
            warm_instances,
        })
        .collect();
    moves.sort_by(|a, b| (a.warm_instances, &a.service).cmp(&(b.warm_instances, &b.service)));
    for m in &mut moves {
        m.to = match to {
            Some(to) => to.to_owned(),
            None => {
                let least = others
                    .iter()
                    .min_by_key(|(name, n)| (**n, *name))
                    .map(|(name, _)| name.clone())?;
                *others.get_mut(&least).expect("just found") += 1;
                least
            }
        };
    }
    Some(moves)
}

/// One service's requests at the region fronts: counts and the latency histogram's
/// cumulative buckets (upper bound in seconds, count), summed over every front scraped.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FrontReading {
    /// Requests the fronts sent to their instances.
    pub requests: u64,
    /// Of which failed (connect failures, upstream errors, timeouts, 5xx).
    pub errors: u64,
    /// `umbra_front_request_duration_seconds` buckets, cumulative, by upper bound.
    pub buckets: Vec<(f64, u64)>,
}

impl FrontReading {
    /// Reads `service`'s series from one front's Prometheus text exposition and adds them.
    pub fn add_exposition(&mut self, text: &str, service: &str) {
        let wanted = format!("service=\"{service}\"");
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.parse::<f64>() else {
                continue;
            };
            let Some((name, labels)) = series.split_once('{') else {
                continue;
            };
            if !labels.split(',').any(|l| l.trim_end_matches('}') == wanted) {
                continue;
            }
            let value = value as u64;
            match name {
                "umbra_front_requests_total" => self.requests += value,
                "umbra_front_request_errors_total" => self.errors += value,
                "umbra_front_request_duration_seconds_bucket" => {
                    let le = labels
                        .split(',')
                        .find_map(|l| l.trim_end_matches('}').strip_prefix("le=\""))
                        .map(|v| v.trim_end_matches('"'))
                        .and_then(|v| v.parse::<f64>().ok());
                    if let Some(le) = le {
                        match self.buckets.iter_mut().find(|(b, _)| *b == le) {
                            Some((_, count)) => *count += value,
                            None => {
                                self.buckets.push((le, value));
                                self.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
                            }
                        }
                    }
                }
                _ => {}
            }
        }
    }

    /// What happened between `earlier` and this reading (a front whose counters restarted
    /// counts from zero).
    pub fn since(&self, earlier: &FrontReading) -> FrontReading {
        FrontReading {
            requests: self.requests.saturating_sub(earlier.requests),
            errors: self.errors.saturating_sub(earlier.errors),
            buckets: self
                .buckets
                .iter()
                .map(|&(le, count)| {
                    let before = earlier
                        .buckets
                        .iter()
                        .find(|(b, _)| *b == le)
                        .map_or(0, |(_, c)| *c);
                    (le, count.saturating_sub(before))
                })
                .collect(),
        }
    }

    /// Failed requests over requests (0 with no requests).
    pub fn failed_ratio(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors as f64 / self.requests as f64
        }
    }

    /// The 99th percentile latency in ms, as the upper bound of the bucket that holds it
    /// (Prometheus's `histogram_quantile` without interpolation: never below the truth);
    /// `None` without answered requests.
    pub fn p99_ms(&self) -> Option<f64> {
        let total = self.buckets.last().map(|(_, c)| *c)?;
        if total == 0 {
            return None;
        }
        let rank = (total as f64 * 0.99).ceil() as u64;
        self.buckets
            .iter()
            .find(|(_, count)| *count >= rank)
            .map(|(le, _)| le * 1_000.0)
    }
}

/// The stop conditions: the error budget and the p99 bound.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Budget {
    /// Highest failed-request ratio over the whole drill, 0..1.
    pub max_failed_ratio: f64,
    /// Highest p99 over the latest window, ms.
    pub max_p99_ms: f64,
    /// Fewest requests a condition judges on.
    pub min_requests: u64,
}

impl Budget {
    /// Why the drill must stop, if it must: `total` is everything since the drill started,
    /// `window` the latest few seconds.
    pub fn breach(&self, total: &FrontReading, window: &FrontReading) -> Option<String> {
        if total.requests >= self.min_requests && total.failed_ratio() > self.max_failed_ratio {
            return Some(format!(
                "error budget burnt: {} of {} requests failed ({:.2} %, budget {:.2} %)",
                total.errors,
                total.requests,
                total.failed_ratio() * 100.0,
                self.max_failed_ratio * 100.0
            ));
        }
        let answered = window.buckets.last().map_or(0, |(_, c)| *c);
        if answered >= self.min_requests
            && let Some(p99) = window.p99_ms()
            && p99 > self.max_p99_ms
        {
            return Some(format!(
                "p99 {p99:.0} ms over {answered} requests is above the {:.0} ms bound",
                self.max_p99_ms
            ));
        }
        None
    }
}

/// How one service's evacuation ended.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServiceOutcome {
    /// The service.
    pub service: String,
    /// The migration that moved it (absent when the drill stopped before it).
    pub migration: Option<String>,
    /// From the evacuated region to here.
    pub to: String,
    /// `completed`, `rolled_back`, `failed`, `moved_back` (completed, then moved back when the
    /// drill aborted), `error` (the API refused it or stopped answering) or `not_started`.
    pub outcome: String,
    /// When its migration was requested (RFC 3339).
    pub started: Option<String>,
    /// When it ended (RFC 3339).
    pub ended: Option<String>,
    /// From request to end, ms.
    pub duration_ms: Option<u64>,
}

impl ServiceOutcome {
    /// A move that started no migration, ending `outcome` (`not_started`, `error`).
    pub fn unstarted(m: &Move, outcome: &str) -> Self {
        Self {
            service: m.service.clone(),
            migration: None,
            to: m.to.clone(),
            outcome: outcome.to_owned(),
            started: None,
            ended: None,
            duration_ms: None,
        }
    }
}

/// A rollback the drill asked for.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Rollback {
    /// The service.
    pub service: String,
    /// The migration rolled back, or the one that moved the service back.
    pub migration: String,
    /// `rollback` (a live migration rolled back) or `move_back` (a completed one undone by
    /// a migration back into the region).
    pub kind: String,
    /// How it ended (`rolled_back`, `completed`, ...).
    pub outcome: String,
    /// When it was asked for (RFC 3339).
    pub requested: String,
    /// When it ended (RFC 3339).
    pub ended: Option<String>,
}

/// A fault of the plan and what became of it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FaultRecord {
    /// Its position in the plan, from 1.
    pub index: usize,
    /// What it does, in words.
    pub fault: String,
    /// When it was to fire, in words.
    pub trigger: String,
    /// When it fired (RFC 3339); absent when it never did.
    pub fired: Option<String>,
    /// What the injection reached, e.g. `2 instances switched`.
    pub detail: String,
    /// When the drill undid it (RFC 3339).
    pub undone: Option<String>,
}

/// The drill's verdict and its evidence.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Verdict {
    /// `pass` or `fail`.
    pub verdict: String,
    /// Why it failed (empty on a pass).
    pub reasons: Vec<String>,
    /// `evacuate`.
    pub drill: String,
    /// The region evacuated.
    pub region: String,
    /// Start and end (RFC 3339).
    pub started: String,
    /// End (RFC 3339).
    pub ended: String,
    /// From start until every service was out of the region, ms (absent unless all were).
    pub evacuate_ms: Option<u64>,
    /// The order the services were moved in, and why.
    pub order: Vec<Move>,
    /// Why that order.
    pub order_reason: String,
    /// Each service's outcome.
    pub services: Vec<ServiceOutcome>,
    /// The stop conditions.
    pub budget: Budget,
    /// Requests the fronts served during the drill.
    pub requests: u64,
    /// Of which failed.
    pub failed_requests: u64,
    /// Their ratio.
    pub failed_ratio: f64,
    /// The highest p99 of a window during the drill, ms.
    pub p99_ms_max: Option<f64>,
    /// The stop condition that tripped, and when (RFC 3339).
    pub stopped: Option<Stopped>,
    /// The rollbacks the drill asked for.
    pub rollbacks: Vec<Rollback>,
    /// The plan's faults.
    pub faults: Vec<FaultRecord>,
    /// The seed of a generated fault plan.
    pub seed: Option<u64>,
    /// The command that regenerates the fault plan from its seed.
    pub replay: Option<String>,
    /// Migrations of the drill still live at the end (empty once it cleaned up).
    pub live_migrations_left: Vec<String>,
    /// The id the cluster keeps this verdict under (`umbra status`, `GET /v1/drills`);
    /// absent when it could not be recorded.
    pub recorded: Option<String>,
    /// Why the verdict could not be recorded in the cluster.
    pub record_error: Option<String>,
}

/// A stop condition that tripped.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Stopped {
    /// Which and by how much.
    pub reason: String,
    /// When (RFC 3339).
    pub at: String,
}

impl Verdict {
    /// Decides pass or fail from the evidence: a pass needs every service completed out of the
    /// region, no stop condition tripped, failed requests within the budget and nothing the
    /// drill started still live.
    pub fn judge(&mut self) {
        let mut reasons = Vec::new();
        if let Some(stopped) = &self.stopped {
            reasons.push(format!("stopped at {}: {}", stopped.at, stopped.reason));
        }
        for s in &self.services {
            if s.outcome != "completed" {
                reasons.push(format!("{} ended {}", s.service, s.outcome));
            }
        }
        if self.failed_ratio > self.budget.max_failed_ratio {
            reasons.push(format!(
                "{} of {} requests failed, above the {:.2} % budget",
                self.failed_requests,
                self.requests,
                self.budget.max_failed_ratio * 100.0
            ));
        }
        if !self.live_migrations_left.is_empty() {
            reasons.push(format!(
                "migrations still live: {}",
                self.live_migrations_left.join(", ")
            ));
        }
        self.verdict = if reasons.is_empty() { "pass" } else { "fail" }.to_owned();
        self.reasons = reasons;
    }

    /// Whether it passed.
    pub fn passed(&self) -> bool {
        self.verdict == "pass"
    }

    /// The verdict as a Markdown report.
    pub fn to_markdown(&self) -> String {
        let mut md = String::new();
        let _ = writeln!(
            md,
            "# Drill: evacuate {} — {}\n",
            self.region,
            self.verdict.to_uppercase()
        );
        let _ = writeln!(md, "- started {}, ended {}", self.started, self.ended);
        if let Some(ms) = self.evacuate_ms {
            let _ = writeln!(md, "- time to evacuate: {:.1} s", ms as f64 / 1_000.0);
        }
        let _ = writeln!(
            md,
            "- requests: {}, failed {} ({:.3} %; budget {:.2} %); highest window p99 {} (bound {:.0} ms)",
            self.requests,
            self.failed_requests,
            self.failed_ratio * 100.0,
            self.budget.max_failed_ratio * 100.0,
            self.p99_ms_max
                .map_or_else(|| "n/a".to_owned(), |p| format!("{p:.0} ms")),
            self.budget.max_p99_ms
        );
        if let Some(stopped) = &self.stopped {
            let _ = writeln!(md, "- stopped at {}: {}", stopped.at, stopped.reason);
        }
        match (self.seed, &self.replay) {
            (Some(seed), Some(replay)) => {
                let _ = writeln!(md, "- fault plan seed {seed}: `{replay}`");
            }
            _ => {
                let _ = writeln!(
                    md,
                    "- fault plan: {}",
                    if self.faults.is_empty() {
                        "none"
                    } else {
                        "written by hand"
                    }
                );
            }
        }
        match (&self.recorded, &self.record_error) {
            (Some(id), _) => {
                let _ = writeln!(md, "- recorded in the cluster as {id} (`umbra status`)");
            }
            (None, Some(error)) => {
                let _ = writeln!(md, "- **not recorded in the cluster**: {error}");
            }
            (None, None) => {}
        }
        for reason in &self.reasons {
            let _ = writeln!(md, "- **fail**: {reason}");
        }
        let _ = writeln!(md, "\nOrder: {}.\n", self.order_reason);
        let _ = writeln!(
            md,
            "| # | service | to | migration | outcome | started | ended | took |"
        );
        let _ = writeln!(md, "|---|---|---|---|---|---|---|---|");
        for (i, s) in self.services.iter().enumerate() {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                i + 1,
                s.service,
                s.to,
                s.migration.as_deref().unwrap_or("-"),
                s.outcome,
                s.started.as_deref().unwrap_or("-"),
                s.ended.as_deref().unwrap_or("-"),
                s.duration_ms.map_or_else(
                    || "-".to_owned(),
                    |ms| format!("{:.1} s", ms as f64 / 1_000.0)
                )
            );
        }
        if !self.rollbacks.is_empty() {
            let _ = writeln!(
                md,
                "\n| rollback | service | migration | outcome | requested | ended |"
            );
            let _ = writeln!(md, "|---|---|---|---|---|---|");
            for r in &self.rollbacks {
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {} | {} | {} |",
                    r.kind,
                    r.service,
                    r.migration,
                    r.outcome,
                    r.requested,
                    r.ended.as_deref().unwrap_or("-")
                );
            }
        }
        if !self.faults.is_empty() {
            let _ = writeln!(md, "\n| fault | what | when | fired | reached | undone |");
            let _ = writeln!(md, "|---|---|---|---|---|---|");
            for f in &self.faults {
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {} | {} | {} |",
                    f.index,
                    f.fault,
                    f.trigger,
                    f.fired.as_deref().unwrap_or("never"),
                    f.detail,
                    f.undone.as_deref().unwrap_or("-")
                );
            }
        }
        md
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXPOSITION: &str = "\
# HELP umbra_front_requests_total Requests the region front sent to local instances.
# TYPE umbra_front_requests_total counter
umbra_front_requests_total{region=\"us-east\",service=\"shop\"} 1000
umbra_front_requests_total{region=\"us-east\",service=\"cart\"} 7
umbra_front_request_errors_total{region=\"us-east\",service=\"shop\"} 4
umbra_front_request_duration_seconds_bucket{region=\"us-east\",service=\"shop\",le=\"0.005\"} 900
umbra_front_request_duration_seconds_bucket{region=\"us-east\",service=\"shop\",le=\"0.01\"} 985
umbra_front_request_duration_seconds_bucket{region=\"us-east\",service=\"shop\",le=\"0.25\"} 996
umbra_front_request_duration_seconds_bucket{region=\"us-east\",service=\"shop\",le=\"+Inf\"} 996
umbra_front_request_duration_seconds_count{region=\"us-east\",service=\"shop\"} 996
";

    fn reading(requests: u64, errors: u64, buckets: &[(f64, u64)]) -> FrontReading {
        FrontReading {
            requests,
            errors,
            buckets: buckets.to_vec(),
        }
    }

    #[test]
    fn fronts_are_read_summed_and_differenced() {
        let mut total = FrontReading::default();
        total.add_exposition(EXPOSITION, "shop");
        total.add_exposition(&EXPOSITION.replace("us-east", "eu-west"), "shop");
        assert_eq!(total.requests, 2000);
        assert_eq!(total.errors, 8);
        assert_eq!(
            total.buckets,
            vec![
                (0.005, 1800),
                (0.01, 1970),
                (0.25, 1992),
                (f64::INFINITY, 1992)
            ]
        );
        // 99 % of 1992 is rank 1973 (rounded up): inside the 250 ms bucket.
        assert_eq!(total.p99_ms(), Some(250.0));
        let mut earlier = FrontReading::default();
        earlier.add_exposition(EXPOSITION, "shop");
        let delta = total.since(&earlier);
        assert_eq!((delta.requests, delta.errors), (1000, 4));
        assert_eq!(FrontReading::default().p99_ms(), None);
        let mut cart = FrontReading::default();
        cart.add_exposition(EXPOSITION, "cart");
        assert_eq!((cart.requests, cart.errors), (7, 0));
    }

    #[test]
    fn stop_conditions_trip_on_the_budget_and_the_p99_bound_only_with_enough_requests() {
        let budget = Budget {
            max_failed_ratio: 0.01,
            max_p99_ms: 300.0,
            min_requests: 100,
        };
        let fast = [(0.01, 200), (0.5, 200)];
        let slow = [(0.01, 100), (0.5, 200)];
        let table: [(FrontReading, FrontReading, Option<&str>); 5] = [
            (reading(1000, 10, &fast), reading(200, 0, &fast), None),
            (
                reading(1000, 11, &fast),
                reading(200, 0, &fast),
                Some("error budget burnt: 11 of 1000 requests failed (1.10 %, budget 1.00 %)"),
            ),
            (reading(50, 50, &fast), reading(50, 50, &fast), None),
            (
                reading(1000, 0, &slow),
                reading(200, 0, &slow),
                Some("p99 500 ms over 200 requests is above the 300 ms bound"),
            ),
            (reading(1000, 0, &slow), reading(90, 0, &[(0.5, 90)]), None),
        ];
        for (total, window, expected) in table {
            assert_eq!(
                budget.breach(&total, &window).as_deref(),
                expected,
                "{total:?} {window:?}"
            );
        }
    }

    #[test]
    fn services_leave_smallest_pool_first_for_the_least_busy_region() {
        let serving = vec![("shop".into(), 3), ("cart".into(), 1), ("auth".into(), 3)];
        let others = [("eu-west".to_owned(), 1), ("ap-south".to_owned(), 0)].into();
        let moves = plan_moves(serving.clone(), others, None).unwrap();
        let got: Vec<(&str, &str)> = moves
            .iter()
            .map(|m| (m.service.as_str(), m.to.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("cart", "ap-south"),
                ("auth", "ap-south"),
                ("shop", "eu-west")
            ]
        );
        let pinned = plan_moves(serving.clone(), Default::default(), Some("eu-west")).unwrap();
        assert!(pinned.iter().all(|m| m.to == "eu-west"));
        assert_eq!(plan_moves(serving, Default::default(), None), None);
        assert_eq!(
            plan_moves(Vec::new(), Default::default(), None),
            Some(Vec::new())
        );
    }

    fn verdict() -> Verdict {
        Verdict {
            verdict: String::new(),
            reasons: Vec::new(),
            drill: "evacuate".into(),
            region: "us-east".into(),
            started: "2026-12-02T10:00:00.000Z".into(),
            ended: "2026-12-02T10:01:00.000Z".into(),
            evacuate_ms: Some(60_000),
            order: Vec::new(),
            order_reason: ORDER_REASON.into(),
            services: vec![ServiceOutcome {
                service: "shop".into(),
                migration: Some("shop-1".into()),
                to: "eu-west".into(),
                outcome: "completed".into(),
                started: Some("2026-12-02T10:00:00.000Z".into()),
                ended: Some("2026-12-02T10:01:00.000Z".into()),
                duration_ms: Some(60_000),
            }],
            budget: Budget {
                max_failed_ratio: 0.01,
                max_p99_ms: 300.0,
                min_requests: 100,
            },
            requests: 10_000,
            failed_requests: 0,
            failed_ratio: 0.0,
            p99_ms_max: Some(5.0),
            stopped: None,
            rollbacks: Vec::new(),
            faults: Vec::new(),
            seed: None,
            replay: None,
            live_migrations_left: Vec::new(),
            recorded: None,
            record_error: None,
        }
    }

    #[test]
    fn the_verdict_passes_only_on_a_clean_evacuation() {
        let mut v = verdict();
        v.judge();
        assert!(v.passed(), "{:?}", v.reasons);
        assert!(
            v.to_markdown()
                .starts_with("# Drill: evacuate us-east — PASS")
        );

        let mut v = verdict();
        v.failed_requests = 200;
        v.failed_ratio = 0.02;
        v.judge();
        assert_eq!(
            v.reasons,
            ["200 of 10000 requests failed, above the 1.00 % budget"]
        );

        let mut v = verdict();
        v.services[0].outcome = "rolled_back".into();
        v.stopped = Some(Stopped {
            reason: "error budget burnt".into(),
            at: "2026-12-02T10:00:30.000Z".into(),
        });
        v.live_migrations_left = vec!["shop-1".into()];
        v.judge();
        assert!(!v.passed());
        assert_eq!(
            v.reasons,
            [
                "stopped at 2026-12-02T10:00:30.000Z: error budget burnt",
                "shop ended rolled_back",
                "migrations still live: shop-1"
            ]
        );
        let md = v.to_markdown();
        assert!(
            md.contains("| 1 | shop | eu-west | shop-1 | rolled_back |"),
            "{md}"
        );
        assert!(md.contains("**fail**: shop ended rolled_back"), "{md}");
        assert!(!md.contains("recorded"), "{md}");
        v.record_error = Some("no leader".into());
        assert!(
            v.to_markdown()
                .contains("**not recorded in the cluster**: no leader")
        );
        v.recorded = Some("drill-4".into());
        assert!(
            v.to_markdown()
                .contains("recorded in the cluster as drill-4 (`umbra status`)")
        );
    }
}
