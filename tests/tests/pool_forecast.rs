//! Forecast-driven pools through the real binaries (three `umbra-orchestrator`, three
//! `umbra-agent`, `umbra-sample` instances under the process provider): the demo's stateful
//! `shop` in its home region, with a demand history whose daily peak (60 s of 10-second slices)
//! starts a minute after the plan is applied. The pool must rise before the peak, at least one
//! instance going from dormant to serving ahead of it; an instance SIGKILLed at the peak is
//! replaced; after the peak the pool falls back to one.
//!
//! The history is written before the plan is applied, so the leader's first forecast sees the
//! peak, and it grows by one slice of actuals every 10 s while the test runs, as a history
//! source does: the leader scores its earlier forecasts against them, and its `/metrics`
//! shows each pool's forecast error (`umbra_forecast_mase`), the 90 % interval's coverage,
//! the chosen model and how its forecasts were refitted (`umbra_forecast_refits_total`). A
//! pool's forecast reaches `REACH` past its lead time here (`[executor]
//! pool_forecast_reach_secs`), so the pool is forecast again every few slices while the test
//! runs: the first forecast is a full refit, the later ones incremental (the slices that
//! arrived since, on the full refit's seasons). Times are measured and printed, never
//! bounded: every wait has a generous deadline. Run `cargo build --workspace --bins` first.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use umbra_agent::provider::InstanceRecord;
use umbra_demo::IdleCluster;
use umbra_orchestrator::api::PoolStatus;
use umbra_proto::agent::InstanceState;

const SLICE_SECS: u32 = 10;
/// Quiet and peak demand, requests per second. The demo serves 150 per instance, so the
/// peak's pool is 3 and the quiet one 1.
const QUIET_RPS: f64 = 20.0;
const PEAK_RPS: f64 = 350.0;
/// The peak starts this long after the history is written and lasts `PEAK`.
const PEAK_IN: Duration = Duration::from_secs(70);
const PEAK: Duration = Duration::from_secs(60);
/// Longest any stage may take on a loaded 2-core machine (a liveness deadline, not a bound
/// on latency).
const DEADLINE: Duration = Duration::from_secs(120);
/// How far past its lead time a pool's forecast reaches: three slices, so the pool is
/// forecast again, incrementally, several times while the test runs.
const REACH: Duration = Duration::from_secs(3 * SLICE_SECS as u64);

/// The demand history a test writes: quiet except for a daily peak.
struct History {
    dir: PathBuf,
    region: String,
    /// Unix seconds of the first slice, of the peak's start, and of the end (exclusive).
    start: i64,
    peak_start: i64,
    end: i64,
}

impl History {
    /// Two days of `SLICE_SECS` slices ending now, with the peak `PEAK_IN` from now.
    fn new(dir: &Path, region: &str) -> Self {
        let slice = i64::from(SLICE_SECS);
        let now = chrono::Utc::now().timestamp();
        let end = now - now.rem_euclid(slice);
        Self {
            dir: dir.to_owned(),
            region: region.to_owned(),
            start: end - 2 * 86_400,
            peak_start: end + PEAK_IN.as_secs() as i64,
            end,
        }
    }

    fn peak_start(&self) -> chrono::DateTime<chrono::Utc> {
        chrono::DateTime::from_timestamp(self.peak_start, 0).expect("a valid time")
    }

    /// Adds the slices that ended since the last write (their actuals follow the same daily
    /// pattern) and writes the file again; false when no slice ended.
    fn catch_up(&mut self) -> anyhow::Result<bool> {
        let now = chrono::Utc::now().timestamp();
        let slice = i64::from(SLICE_SECS);
        let end = now - now.rem_euclid(slice);
        if end <= self.end {
            return Ok(false);
        }
        self.end = end;
        self.write()?;
        Ok(true)
    }

    /// Writes the whole history to a temporary file and renames it over `demand.csv`, so a
    /// reader never sees half a file.
    fn write(&self) -> anyhow::Result<()> {
        let csv = history_csv(&self.region, self.start, self.end, self.peak_start);
        let tmp = self.dir.join("demand.csv.tmp");
        std::fs::write(&tmp, csv)?;
        std::fs::rename(&tmp, self.dir.join("demand.csv"))?;
        Ok(())
    }
}

/// Relative noise on every slice's demand: real demand is never exactly periodic, and a
/// forecast's error is measured against the seasonal naive's, which would be 0.
const NOISE: f64 = 0.05;

/// A fixed pseudo-random number in [-1, 1] for slice `t` (splitmix64 of the time).
fn noise(t: i64) -> f64 {
    let mut z = (t as u64).wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 52) as f64 - 1.0
}

/// The CSV of `SLICE_SECS` slices from `start` to `end` (Unix seconds), quiet except for a
/// daily peak that starts at `peak_start`'s time of day, each slice off by up to `NOISE`.
fn history_csv(region: &str, start: i64, end: i64, peak_start: i64) -> String {
    let slice = i64::from(SLICE_SECS);
    let peak_secs = PEAK.as_secs() as i64;
    let mut csv = String::from("timestamp,service,region,value\n");
    let mut t = start;
    while t < end {
        let into_peak = (t - peak_start).rem_euclid(86_400);
        let level = if into_peak < peak_secs {
            PEAK_RPS
        } else {
            QUIET_RPS
        };
        let value = level * (1.0 + NOISE * noise(t));
        let at = chrono::DateTime::from_timestamp(t, 0).expect("a valid time");
        csv.push_str(&format!(
            "{},{},{region},{value}\n",
            at.to_rfc3339(),
            umbra_demo::scenario::SERVICE
        ));
        t += slice;
    }
    csv
}

/// The first line of `metrics` whose series starts with `name{` and has `label` (e.g.
/// `service="shop"`): its value.
fn metric_value(metrics: &str, name: &str, label: &str) -> Option<f64> {
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .find(|l| l.contains(label))
        .and_then(|l| l.rsplit_once(' '))
        .and_then(|(_, v)| v.parse().ok())
}

/// The `/metrics` text of the orchestrator that exports forecast errors (the leader), once
/// it has refitted a forecast incrementally too.
async fn forecast_metrics(cluster: &IdleCluster) -> Option<String> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .ok()?;
    for admin in cluster.orchestrator_admins() {
        let Ok(response) = http.get(format!("http://{admin}/metrics")).send().await else {
            continue;
        };
        let Ok(text) = response.text().await else {
            continue;
        };
        if text.contains("umbra_forecast_mase{")
            && text.contains("umbra_forecast_refits_total{kind=\"incremental\"}")
        {
            return Some(text);
        }
    }
    None
}

/// The records of the pool's instances (`{service}-{region}-{k}`), by id.
fn records(state_dir: &Path, prefix: &str) -> Vec<InstanceRecord> {
    let Ok(entries) = std::fs::read_dir(state_dir.join("instances")) else {
        return Vec::new();
    };
    let mut out: Vec<InstanceRecord> = entries
        .flatten()
        .filter_map(|e| serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok())
        .filter(|r: &InstanceRecord| r.id.starts_with(prefix))
        .collect();
    out.sort_by(|a, b| a.id.cmp(&b.id));
    out
}

/// Whether `record` ever went from dormant (or stopped) to running.
fn activated_from_dormant(record: &InstanceRecord) -> bool {
    record.transitions.iter().any(|t| {
        matches!(t.from, InstanceState::Dormant | InstanceState::Stopped)
            && matches!(t.to, InstanceState::Warm | InstanceState::Active)
    })
}

async fn pool(cluster: &IdleCluster) -> Option<PoolStatus> {
    cluster.pools().await.into_iter().next()
}

fn secs_to(at: chrono::DateTime<chrono::Utc>) -> f64 {
    (at - chrono::Utc::now()).num_milliseconds() as f64 / 1_000.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_rises_before_its_forecast_peak_heals_a_killed_instance_and_falls_after()
-> anyhow::Result<()> {
    let history = tempfile::tempdir()?;
    let mut options = umbra_tests::demo_options()?;
    options.demand_history = Some((history.path().to_owned(), SLICE_SECS));
    options.pool_shrink_after_slices = 1;
    options.pool_forecast_reach_secs = REACH.as_secs();
    // Move 10 s earlier than the agent measured: on a loaded machine a follower's start,
    // catch-up and activation take a few heartbeats.
    options.pool_lead_margin_ms = 10_000;
    let cluster = IdleCluster::start(&options, &|line| eprintln!("{line}")).await?;
    let region = cluster.regions()[0].clone();
    let state_dir = cluster
        .agent_state_dir(&region)
        .expect("the home region has an agent")
        .to_owned();
    let prefix = format!("{}-{region}-", umbra_demo::scenario::SERVICE);

    let mut demand = History::new(history.path(), &region);
    demand.write()?;
    let peak_start = demand.peak_start();
    let peak_end = peak_start + chrono::Duration::from_std(PEAK)?;
    // Actuals arrive as the test runs: a slice a slice width after it ended.
    let appender = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if let Err(e) = demand.catch_up() {
                eprintln!("cannot extend the demand history: {e}");
            }
        }
    });
    cluster
        .apply_plan_toml(&cluster.demo_plan())
        .await
        .map_err(anyhow::Error::msg)?;
    eprintln!(
        "plan applied; the forecast peak starts in {:.1} s",
        secs_to(peak_start)
    );

    // Before the peak: dormant capacity first, then more than one serving, one of them
    // activated from dormant (instance 1, the writer, was dormant once too: left out).
    let dormant_seen = AtomicU32::new(0);
    let rose = umbra_tests::wait_for("the pool to rise", DEADLINE, || {
        let (seen, cluster) = (&dormant_seen, &cluster);
        async move {
            let view = pool(cluster).await?;
            seen.fetch_max(view.actual.dormant, Ordering::Relaxed);
            (view.actual.warm >= 2).then_some(view)
        }
    })
    .await?;
    let dormant_seen = dormant_seen.into_inner();
    let ahead = secs_to(peak_start);
    let writer = format!("{prefix}1");
    let from_dormant: Vec<String> = records(&state_dir, &prefix)
        .iter()
        .filter(|r| r.id != writer && activated_from_dormant(r))
        .map(|r| r.id.clone())
        .collect();
    eprintln!("dormant instances held before the rise: {dormant_seen}");
    assert!(dormant_seen >= 1, "dormant capacity came before the rise");
    eprintln!(
        "pool serving {} (target {:?}) {ahead:.1} s before the peak; activated from dormant: {from_dormant:?}",
        rose.actual.warm, rose.target
    );
    assert!(
        ahead > 0.0,
        "the pool rose {:.1} s after the peak started",
        -ahead
    );
    assert!(
        !from_dormant.is_empty(),
        "a dormant instance was activated ahead of the peak"
    );
    let slice = rose.slice.as_ref().expect("the pool has a forecast");
    eprintln!(
        "forecast ({}): q {:.0} rps for the slice at {}",
        rose.forecast, slice.quantile, slice.start
    );
    // The pool shows the chosen model and why it was chosen.
    assert!(
        rose.forecast.contains("MASE over its last")
            || rose.forecast.contains("order of preference"),
        "{}",
        rose.forecast
    );

    // At the peak: SIGKILL a serving follower; it is replaced and the pool is back at target.
    let full = umbra_tests::wait_for("the pool to reach its peak target", DEADLINE, || async {
        let view = pool(&cluster).await?;
        (view.target.warm >= 2 && view.actual.warm == view.target.warm).then_some(view)
    })
    .await?;
    let victim = records(&state_dir, &prefix)
        .into_iter()
        .rfind(|r| r.state == InstanceState::Active && r.pid.is_some())
        .expect("a serving instance with a process");
    let old_pid = victim.pid.expect("checked");
    kill(Pid::from_raw(old_pid as i32), Signal::SIGKILL)?;
    let killed_at = Instant::now();
    eprintln!(
        "SIGKILLed {} (pid {old_pid}) with the pool at {:?}",
        victim.id, full.actual
    );
    umbra_tests::wait_for("the killed instance to be replaced", DEADLINE, || async {
        let view = pool(&cluster).await?;
        let back = records(&state_dir, &prefix).into_iter().any(|r| {
            r.id == victim.id && r.state == InstanceState::Active && r.pid != Some(old_pid)
        });
        (back && view.actual.warm >= view.target.warm).then_some(())
    })
    .await?;
    eprintln!(
        "replaced and back at target {:.1} s after the SIGKILL",
        killed_at.elapsed().as_secs_f64()
    );

    // After the peak: back to one serving instance.
    let fell = umbra_tests::wait_for(
        "the pool to fall after the peak",
        DEADLINE + PEAK,
        || async {
            let view = pool(&cluster).await?;
            (secs_to(peak_end) < 0.0 && view.target.warm == 1 && view.actual.warm == 1)
                .then_some(view)
        },
    )
    .await?;
    eprintln!(
        "pool back to {:?} {:.1} s after the peak ended",
        fell.actual,
        -secs_to(peak_end)
    );

    // The feedback loop: the leader scored its forecasts against the actuals that arrived.
    let service = umbra_demo::scenario::SERVICE;
    let metrics = umbra_tests::wait_for("the leader's forecast error metrics", DEADLINE, || {
        forecast_metrics(&cluster)
    })
    .await?;
    appender.abort();
    let pool = format!("service=\"{service}\"");
    let mase = metric_value(&metrics, "umbra_forecast_mase", &pool).expect("a MASE");
    let coverage = metric_value(&metrics, "umbra_forecast_interval_coverage_ratio", &pool)
        .expect("a coverage");
    let scored = metric_value(&metrics, "umbra_forecast_scored_forecasts", &pool)
        .expect("a count of scored forecasts");
    let refits = |kind: &str| {
        metric_value(
            &metrics,
            "umbra_forecast_refits_total",
            &format!("kind=\"{kind}\""),
        )
    };
    let (full_refits, incremental_refits) = (refits("full"), refits("incremental"));
    let model = metrics
        .lines()
        .find(|l| l.starts_with("umbra_forecast_model_info{") && l.ends_with(" 1"))
        .expect("the chosen model");
    eprintln!(
        "forecast error: MASE {mase:.3}, 90 % coverage {coverage:.2} over {scored} scored forecasts; {model}; refits: full {full_refits:?}, incremental {incremental_refits:?}"
    );
    // Against the seasonal naive's error on 5 % noise: a sane forecast is far from 100.
    assert!(
        mase.is_finite() && mase > 0.0 && mase < 100.0,
        "MASE {mase}"
    );
    assert!((0.0..=1.0).contains(&coverage), "coverage {coverage}");
    assert!(scored >= 1.0, "scored {scored}");
    assert!(model.contains(&pool), "{model}");
    // The pool's first forecast refitted in full, a later one incrementally.
    assert!(
        full_refits.is_some_and(|n| n >= 1.0),
        "full refits {full_refits:?}"
    );
    assert!(
        incremental_refits.is_some_and(|n| n >= 1.0),
        "incremental refits {incremental_refits:?}"
    );
    Ok(())
}
