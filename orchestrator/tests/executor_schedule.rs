//! A follow-the-sun schedule moves the service by itself (`executor_support`: one Raft node,
//! gateway and executor, two real agents). The executor's clock is the system clock shifted
//! to two seconds before the 06:00 UTC leg, whose region (eu-west) is not where the service
//! lives: the leg is due (lead time 60 s), so the leader proposes `CreateMigration` with the
//! leg's schedule key, and the migration it creates runs to completion with the plan's own
//! (short) windows. The schedule fires once for the leg: no second migration appears while
//! and after the first runs.

use std::sync::Arc;

use umbra_orchestrator::migration::Phase;
use umbra_orchestrator::store::Clock;

mod executor_support;

use executor_support::{TARGET, World, now_ms};

const HOUR_MS: u64 = 3_600_000;
const DAY_MS: u64 = 24 * HOUR_MS;

/// The system clock plus a fixed offset.
struct ShiftedClock {
    offset_ms: u64,
}

impl Clock for ShiftedClock {
    fn now_ms(&self) -> u64 {
        now_ms() + self.offset_ms
    }
}

/// The schedule and the short windows a scheduled migration needs here: schedules take the
/// service's own analysis window, TTL (the drain) and lead time, not per-request overrides.
const SCHEDULE: &str = r#"
[[schedule]]
name = "sun"
service = "shop"
legs = [{ at_hour_utc = 6, region = "eu-west" }, { at_hour_utc = 18, region = "us-east" }]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follow_the_sun_leg_creates_its_migration_once_and_it_completes() -> anyhow::Result<()> {
    let now = now_ms();
    let next_six = {
        let six_today = now - now % DAY_MS + 6 * HOUR_MS;
        if six_today > now {
            six_today
        } else {
            six_today + DAY_MS
        }
    };
    let leg_at = next_six + DAY_MS; // a day ahead, so the shifted clock never goes backwards
    let clock = Arc::new(ShiftedClock {
        offset_ms: leg_at - 2_000 - now,
    });
    let times = executor_support::short_windows();
    let world = World::start_with(1, clock, &times, SCHEDULE).await?;
    // Cutover steps pass only once the SLO judged enough requests: users keep coming.
    world.wait_source_serving().await?;
    let client = executor_support::Client::start(world.regions[executor_support::SOURCE].front);
    // The leg is due at once: its migration appears without anyone asking.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let id = loop {
        let overview = world.overview().await?;
        if let Some(id) = overview.migrations.keys().next() {
            break id.clone();
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "no migration from the schedule in 60 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let phases = world.follow(&id, async |_| Ok(())).await?;
    let (total, failed) = client.stop().await;
    assert_eq!(phases.last(), Some(&Phase::Completed), "phases {phases:?}");
    assert_eq!(failed, 0, "no request failed ({total} sent)");
    let overview = world.overview().await?;
    assert_eq!(overview.migrations.len(), 1, "the leg fired once");
    let record = &overview.migrations[&id];
    assert_eq!(record.spec.to, TARGET);
    assert_eq!(record.spec.cutover_at_ms, leg_at);
    assert_eq!(overview.services["shop"].primary_region, TARGET);
    let audit = world.audit().await?;
    let created = audit
        .iter()
        .find(|e| e.subject == id && e.event.starts_with("created"))
        .expect("creation audited");
    assert_eq!(created.reason, format!("schedule sun/{leg_at}"));
    Ok(())
}
