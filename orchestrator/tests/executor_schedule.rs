//! A follow-the-sun schedule moves the service by itself (`executor_support::World`: one
//! orchestrator node started by `node::start`, two real agents). The example plan's schedule
//! makes eu-west primary at 00:00 UTC and us-east at 12:00. The node's executor runs on the
//! system clock shifted to two seconds before a 00:00 leg (through `node::NodeEnvironment`, the
//! one thing the tests inject), whose region is not where the service lives: the leg is due
//! (lead time 60 s), so the leader proposes `CreateMigration` with the leg's schedule key, and
//! the migration it creates runs to completion with the plan's own (short) windows. The
//! schedule fires once for the leg: no second migration appears while and after the first runs.

use std::sync::Arc;

use umbra_orchestrator::migration::Phase;
use umbra_orchestrator::node::NodeEnvironment;
use umbra_orchestrator::state::{AuditEvent, Plan};
use umbra_orchestrator::store::Clock;

mod executor_support;

use executor_support::{CLUSTER_DEADLINE, Client, SOURCE, TARGET, World, now_ms, short_windows};

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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follow_the_sun_leg_creates_its_migration_once_and_it_completes() -> anyhow::Result<()> {
    let schedule = Plan::example().schedules;
    let leg = &schedule[0].legs[0];
    assert_eq!(
        (leg.at_hour_utc, leg.region.as_str()),
        (0, TARGET),
        "the example plan's first leg takes shop to the target at midnight"
    );
    let now = now_ms();
    // The midnight a day after the next one, so the shifted clock never goes backwards.
    let leg_at = now - now % DAY_MS + 2 * DAY_MS;
    let clock = Arc::new(ShiftedClock {
        offset_ms: leg_at - 2_000 - now,
    });
    let world = World::start_with(1, NodeEnvironment::with_clock(clock), |plan| {
        // Schedules take the service's own analysis window, TTL (the drain) and lead time,
        // not per-request overrides: make them short.
        plan.schedules = schedule;
        short_windows(&mut plan.services[0]);
    })
    .await?;
    // Cutover steps pass only once the SLO judged enough requests: users keep coming.
    world.wait_source_serving().await?;
    let client = Client::start(world.regions[SOURCE].front);
    // The leg is due at once: its migration appears without anyone asking.
    let id = umbra_testkit::wait_for("the schedule's migration", CLUSTER_DEADLINE, || async {
        world.overview().await.ok()?.migrations.into_keys().next()
    })
    .await?;
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
        .find(|e| e.subject == id && matches!(e.event, AuditEvent::MigrationCreated { .. }))
        .expect("creation audited");
    assert_eq!(created.reason, format!("schedule sun/{leg_at}"));
    Ok(())
}
