//! The executor end to end on real parts (`executor_support::World`): one orchestrator node
//! started as a deployment starts it (`node::start`: Raft over QUIC with mutual TLS, the agent
//! gateway on that endpoint, the operator API, the executor), and two real region agents (the
//! agent library's session, process provider running `umbra-sample` instances, each with its
//! region front) connected over QUIC. The test drives it through the operator API, and an
//! honest client (`executor_support::Client`: its own seeded keys read back and checked, a
//! fresh key written every tenth request, every non-2xx, timeout and reset a failure) sends
//! to the source region's front the whole time.
//!
//! 1. A migration walks Planned → Completed on a compressed schedule (lead time 0, 1.5 s
//!    analysis windows): the shadow pool is sized from the demand history, provisioned,
//!    warmed, replicated, promoted; the source front ends forwarding 100 % to the target, the
//!    DNS weights end on the target with the normal TTL, and no request failed.
//! 2. The target's sample instances start failing at the 50 % step (their fault switch): the
//!    SLO breach rolls the migration back by itself, the source front's share is 0 again, the
//!    DNS weights are back on the source, the audit log says how long it took (`rollback_ms`,
//!    breach detected → share 0 confirmed), and requests sent afterwards all succeed. Then a
//!    second migration to the same region completes with no failed request, and every write
//!    acknowledged through both reads back through the new primary's front.
//! 3. There and back: a second migration moves the service home again. Its source pool is the
//!    first migration's shadow pool, the old source front's forwarding share is cleared
//!    before it becomes the target, and the service ends on the home region with DNS there.
//!
//! 4. There and back, the way back rolled back after its writer moved (its new shadows fail
//!    from the last step on): the away region's primary, promoted by the first migration, is
//!    promoted again by the rollback's own hand-back, and takes writes again.
//!
//! 5. A shadow instance SIGKILLed at the 50 % step is activated again under a fresh operation
//!    id (the agent would answer the old id from its ledger), resumes replicating on its new
//!    address, and the migration completes instead of stalling at the writer's move.
//!
//! Needs `umbra-sample` built next to the test binary: `cargo build --workspace --bins`.

use std::collections::BTreeMap;

use std::time::Duration;

use anyhow::Context;
use umbra_agent::agent::Agent;
use umbra_orchestrator::migration::{DEFAULT_STEPS_PERCENT, Phase};
use umbra_orchestrator::state::AuditEvent;
use umbra_proto::agent::InstanceState;
use umbra_testkit::wait_for;

mod executor_support;

use executor_support::{
    CLIENT_RPS, Client, SOURCE, TARGET, World, happy_transitions, missing_writes, transitions,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_migration_walks_from_planned_to_completed_without_a_failed_request() -> anyhow::Result<()>
{
    let world = World::start(1).await?;
    world.wait_source_serving().await?;
    let client = Client::start(world.regions[SOURCE].front);
    let id = world.migrate().await?;
    let phases = world.follow(&id, async |_| Ok(())).await?;
    let (total, failed) = client.stop().await;
    eprintln!("requests {total}, failed {failed}");

    assert_eq!(phases.last(), Some(&Phase::Completed), "phases {phases:?}");
    let audit = world.audit().await?;
    let moves = transitions(&audit, &id);
    assert_eq!(
        moves,
        happy_transitions(),
        "each transition exactly once, in order"
    );
    let overview = world.overview().await?;
    let record = &overview.migrations[&id];
    assert_eq!(record.shadow_instances, 2, "sized from the 150 rps history");
    assert!(record.promoted, "the target is the single writer");
    assert_eq!(overview.services["shop"].primary_region, TARGET);
    let dns = &overview.dns["shop"];
    assert_eq!(dns.weights, BTreeMap::from([(TARGET.to_owned(), 100)]));
    assert_eq!(dns.ttl_secs, 60, "normal TTL once completed");
    // The source front forwards everything to the target (clients with old DNS answers).
    let front = world.regions[SOURCE]
        .agent
        .executor()
        .front_report()
        .await
        .context("source front")?;
    assert_eq!(front.shares.len(), 1);
    assert_eq!(front.shares[0].percent, 100);
    assert!(total >= 500, "the client ran the whole migration: {total}");
    assert_eq!(failed, 0, "no request failed during the migration");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_target_at_the_50_percent_step_rolls_back() -> anyhow::Result<()> {
    let world = World::start(1).await?;
    world.wait_source_serving().await?;
    let client = Client::start(world.regions[SOURCE].front);
    let id = world.migrate().await?;
    let target = world.regions[TARGET].agent.clone();
    let phases = world
        .follow(&id, async |phase| {
            if phase == (Phase::CuttingOver { step: 1 }) {
                // The target's sample instances start failing every request.
                fail_every_request(&target, "").await?;
            }
            Ok(())
        })
        .await?;
    let first = client.stop_and_report().await;
    let failed = first.failed;
    eprintln!("requests {}, failed {failed}", first.total);

    assert_eq!(phases.last(), Some(&Phase::RolledBack), "phases {phases:?}");
    let audit = world.audit().await?;
    let breach = audit
        .iter()
        .find(|e| e.subject == id && e.event.to_string() == "cutting_over[1] → rolling_back")
        .context("the rollback started at the 50 % step")?;
    assert!(
        breach.reason.starts_with("SLO breach at 50%"),
        "{}",
        breach.reason
    );
    let done = audit
        .iter()
        .find(|e| e.subject == id && e.event.to_string() == "rolling_back → rolled_back")
        .context("the rollback finished")?;
    let AuditEvent::Transition {
        rollback_ms: Some(rollback_ms),
        ..
    } = done.event
    else {
        anyhow::bail!("no rollback_ms in {:?}", done.event);
    };
    // How long it took is reported, not judged here: no latency bound in a test.
    eprintln!("rollback_ms {rollback_ms}");

    served_at_home(&world).await?;
    // The shadows leave the target's front at once (they no longer replicate, so anything
    // they answered would be stale) and are kept, out of service, for the keep time.
    let shadows = wait_for(
        "the rolled-back shadows to leave the target's front",
        Duration::from_secs(30),
        || async {
            let listed = target.executor().provider().list().await;
            let shadows: Vec<_> = listed
                .into_iter()
                .filter(|i| i.id.starts_with(&format!("{id}-")))
                .collect();
            shadows
                .iter()
                .all(|i| i.state != InstanceState::Active)
                .then_some(shadows)
        },
    )
    .await?;
    assert!(
        !shadows.is_empty(),
        "kept for the keep time, not removed yet"
    );
    // Requests sent to the failing target between the fault and the rollback fail; none
    // after it: a second's worth of traffic sent now all lands on the healthy source.
    let before = failed;
    let (after_total, after_failed) = Client::sending(world.regions[SOURCE].front, CLIENT_RPS)
        .finish()
        .await;
    assert_eq!(after_total, CLIENT_RPS);
    assert_eq!(
        after_failed, 0,
        "after the rollback nothing fails ({before} did before)"
    );

    // A second migration to the same region, the rolled-back shadows still kept there: it
    // completes without a failed request, and every write acknowledged since the first
    // migration began reads back through the new primary's front (a leftover shadow in that
    // front would answer stale reads).
    let client = Client::start(world.regions[SOURCE].front);
    let again = world.migrate().await?;
    let phases = world.follow(&again, async |_| Ok(())).await?;
    let second = client.stop_and_report().await;
    eprintln!(
        "second migration: requests {}, failed {}",
        second.total, second.failed
    );
    assert_eq!(phases.last(), Some(&Phase::Completed), "again: {phases:?}");
    assert_eq!(
        second.failed, 0,
        "no request failed in the second migration"
    );
    let written: Vec<(String, String)> = first.written.into_iter().chain(second.written).collect();
    let missing = missing_writes(world.regions[TARGET].front, &written).await;
    eprintln!(
        "{} acknowledged writes read back through the new primary's front, {} missing",
        written.len() - missing.len(),
        missing.len()
    );
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged writes do not read back, first {:?}",
        missing.len(),
        written.len(),
        missing.first()
    );
    Ok(())
}

/// The service is home: primary in the source region, all DNS weight there, and the source's
/// front forwards none of its traffic anywhere.
async fn served_at_home(world: &World) -> anyhow::Result<()> {
    let overview = world.overview().await?;
    assert_eq!(overview.services["shop"].primary_region, SOURCE);
    assert_eq!(
        overview.dns["shop"].weights,
        BTreeMap::from([(SOURCE.to_owned(), 100)])
    );
    let home = world.regions[SOURCE]
        .agent
        .executor()
        .front_report()
        .await
        .context("source front")?;
    assert!(
        home.shares.iter().all(|s| s.percent == 0),
        "the source's front still forwards: {:?}",
        home.shares
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_migration_brings_the_service_back_home() -> anyhow::Result<()> {
    let world = World::start(1).await?;
    world.wait_source_serving().await?;
    // A step passes only once the SLO judged enough requests, so the way there needs traffic
    // at the source's front too.
    let outbound = Client::start(world.regions[SOURCE].front);
    let there = world.migrate().await?;
    let phases = world.follow(&there, async |_| Ok(())).await?;
    let (out_total, out_failed) = outbound.stop().await;
    assert_eq!(phases.last(), Some(&Phase::Completed), "there: {phases:?}");
    assert_eq!(
        out_failed, 0,
        "no request failed on the way there ({out_total} sent)"
    );

    // Clients now reach the service through the target's front (DNS points there).
    let client = Client::start(world.regions[TARGET].front);
    let back = world.migrate_between(TARGET, SOURCE).await?;
    let phases = world.follow(&back, async |_| Ok(())).await?;
    let (total, failed) = client.stop().await;
    eprintln!("requests {total}, failed {failed}");
    assert_eq!(phases.last(), Some(&Phase::Completed), "back: {phases:?}");

    served_at_home(&world).await?;
    // The target's front forwards it all home.
    let away = world.regions[TARGET]
        .agent
        .executor()
        .front_report()
        .await
        .context("target front")?;
    assert_eq!(away.shares.len(), 1);
    assert_eq!(away.shares[0].percent, 100);
    assert_eq!(failed, 0, "no request failed on the way back");
    // The way back replicated from the first migration's shadow (its pool in the target).
    let audit = world.audit().await?;
    assert_eq!(transitions(&audit, &back), happy_transitions());
    Ok(())
}

/// There and back, the way back rolled back after its writer moved: the home region's new
/// shadows fail every request from the last step on, after the writer moved to them. The
/// away region's primary, which the first migration promoted, still reports itself promoted;
/// the rollback must promote it again by its own hand-back, not take that earlier promotion
/// for it, or the away region would stay fenced and refuse every write. After the rollback
/// every request through the away region's front succeeds, writes included, and every write
/// acknowledged on the way there and back reads back through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_way_back_rolled_back_after_its_writer_moved_hands_the_writer_back() -> anyhow::Result<()>
{
    hand_the_writer_back(World::start(1).await?).await
}

/// The same way back with the data in PostgreSQL (a server per region, the sample's
/// PostgreSQL mode): the writer moves to the target by logical replication, and back through
/// the slot the target made at its promotion; every acknowledged write reads back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_a_way_back_rolled_back_after_its_writer_moved_loses_no_write()
-> anyhow::Result<()> {
    hand_the_writer_back(World::start_on_postgres(1).await?).await
}

/// Completes a migration to the target under traffic, then a way back whose shadows (the
/// source's new instances) fail every request from its last step: it rolls back after the
/// writer moved, the writer is handed back to the target, which takes writes again, and
/// every acknowledged write of all three stretches reads back.
async fn hand_the_writer_back(world: World) -> anyhow::Result<()> {
    world.wait_source_serving().await?;
    let outbound = Client::start(world.regions[SOURCE].front);
    let there = world.migrate().await?;
    let phases = world.follow(&there, async |_| Ok(())).await?;
    let first = outbound.stop_and_report().await;
    assert_eq!(phases.last(), Some(&Phase::Completed), "there: {phases:?}");

    let client = Client::start(world.regions[TARGET].front);
    let back = world.migrate_between(TARGET, SOURCE).await?;
    let home = world.regions[SOURCE].agent.clone();
    let last = Phase::CuttingOver {
        step: DEFAULT_STEPS_PERCENT.len() - 1,
    };
    let phases = world
        .follow(&back, async |phase| {
            if phase == last {
                fail_every_request(&home, &back).await?;
            }
            Ok(())
        })
        .await?;
    let second = client.stop_and_report().await;
    eprintln!(
        "way back: requests {}, failed {} (at the failing shadows before the rollback)",
        second.total, second.failed
    );
    assert_eq!(phases.last(), Some(&Phase::RolledBack), "back: {phases:?}");
    let audit = world.audit().await?;
    ensure_rolled_back_at_the_last_step(&transitions(&audit, &back))?;
    // The shadows' fault only fails requests: the writer moved to them at the last step
    // before its share was judged, and was handed back.
    let moves: Vec<bool> = audit
        .iter()
        .filter(|e| e.subject == back)
        .filter_map(|e| match e.event {
            AuditEvent::WriterMoved { to_target, .. } => Some(to_target),
            _ => None,
        })
        .collect();
    assert_eq!(moves, [true, false], "the way back's writer moves");
    let overview = world.overview().await?;
    assert_eq!(overview.services["shop"].primary_region, TARGET);

    // The away region's primary writes again: a second of traffic, a write every tenth
    // request, all of it succeeds.
    let after = Client::sending(world.regions[TARGET].front, CLIENT_RPS)
        .finish_and_report()
        .await;
    assert_eq!(
        (after.total, after.failed),
        (CLIENT_RPS, 0),
        "after the rollback every request through the away region's front succeeds"
    );
    let written: Vec<(String, String)> = first
        .written
        .into_iter()
        .chain(second.written)
        .chain(after.written)
        .collect();
    let missing = missing_writes(world.regions[TARGET].front, &written).await;
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged writes do not read back, first {:?}",
        missing.len(),
        written.len(),
        missing.first()
    );
    Ok(())
}

/// Makes every sample instance of `agent` whose id starts with `prefix` fail every request
/// (its fault switch).
async fn fail_every_request(agent: &Agent, prefix: &str) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    for instance in agent.executor().provider().list().await {
        if let (true, Some(addr)) = (instance.id.starts_with(prefix), instance.addr) {
            http.post(format!("http://{addr}/admin/fault"))
                .json(&serde_json::json!({ "error_rate": 1.0 }))
                .send()
                .await?
                .error_for_status()?;
        }
    }
    Ok(())
}

/// The way back reached its last step (the writer's move) and rolled back from there.
fn ensure_rolled_back_at_the_last_step(transitions: &[String]) -> anyhow::Result<()> {
    let last = format!(
        "cutting_over[{}] → rolling_back",
        DEFAULT_STEPS_PERCENT.len() - 1
    );
    anyhow::ensure!(
        transitions.contains(&last),
        "no rollback from the last step in {transitions:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_shadow_killed_mid_cutover_is_replaced_or_the_migration_rolls_back() -> anyhow::Result<()>
{
    let world = World::start(1).await?;
    world.wait_source_serving().await?;
    let client = Client::start(world.regions[SOURCE].front);
    let id = world.migrate().await?;
    let shadow = format!("{id}-1");
    let pid_file = world
        .dir()
        .join(TARGET)
        .join("processes")
        .join(&shadow)
        .join("pid");
    let target = world.regions[TARGET].agent.clone();
    let killed = std::sync::Mutex::new(None);
    let phases = world
        .follow(&id, async |phase| {
            if phase == (Phase::CuttingOver { step: 1 }) {
                let pid: i32 = std::fs::read_to_string(&pid_file)?.trim().parse()?;
                nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                )?;
                eprintln!("SIGKILLed shadow {shadow} (pid {pid})");
                *killed.lock().expect("lock") = Some(pid);
            }
            Ok(())
        })
        .await?;
    let (total, failed) = client.stop().await;
    eprintln!("requests {total}, failed {failed}");
    let killed = killed
        .into_inner()
        .expect("lock")
        .context("the shadow was killed")?;

    let audit = world.audit().await?;
    // The errors of requests in flight to the killed process may breach the SLO on a loaded
    // machine: rolling back is then the right answer, and it must end there, writer home.
    if phases.last() == Some(&Phase::RolledBack) {
        eprintln!("rolled back: {:?}", transitions(&audit, &id));
        let overview = world.overview().await?;
        assert!(
            !overview.migrations[&id].promoted,
            "the writer is back on the source"
        );
        return Ok(());
    }
    assert_eq!(phases.last(), Some(&Phase::Completed), "phases {phases:?}");
    assert_eq!(transitions(&audit, &id), happy_transitions());
    // The shadow runs again, as a new process, and serves as the writer.
    let listed = target.executor().provider().list().await;
    let replaced = listed
        .iter()
        .find(|i| i.id == shadow)
        .context("the shadow is listed")?;
    assert_eq!(replaced.state, InstanceState::Active, "{replaced:?}");
    let pid: i32 = std::fs::read_to_string(&pid_file)?.trim().parse()?;
    assert_ne!(pid, killed, "a new process");
    let overview = world.overview().await?;
    assert!(overview.migrations[&id].promoted);
    Ok(())
}
