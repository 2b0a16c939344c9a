//! A leader dies mid-cutover and the next one finishes the migration (`executor_support::World`:
//! three orchestrator nodes started by `node::start`, Raft over QUIC with mutual TLS, each with
//! its agent gateway, API and executor; two real agents with sample instances). At the 50 %
//! step the leader is killed the way a SIGKILL would stop it (executor, endpoint and Raft node
//! stop); the agents follow the new leader through NotLeader hints, its executor resumes from
//! the replicated state, re-reads what the agents report instead of repeating actions, and
//! completes the migration. The audit log holds each phase transition exactly once, no client
//! request failed, and the surviving members hold the same state.

use std::collections::BTreeMap;

use umbra_orchestrator::migration::Phase;

mod executor_support;

use executor_support::{Client, SOURCE, TARGET, World, happy_transitions, transitions};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_leader_resumes_a_migration_whose_leader_died_mid_cutover() -> anyhow::Result<()> {
    let world = World::start(3).await?;
    world.wait_source_serving().await?;
    let client = Client::start(world.regions[SOURCE].front);
    let id = world.migrate().await?;
    let first_leader = world.leader().await?;
    let mut killed = None;
    let phases = world
        .follow(&id, async |phase| {
            if phase == (Phase::CuttingOver { step: 1 }) {
                let leader = world.leader().await?;
                eprintln!("killing leader {leader}");
                world.kill(leader);
                killed = Some(leader);
            }
            Ok(())
        })
        .await?;
    let (total, failed) = client.stop().await;
    eprintln!("requests {total}, failed {failed}");

    assert_eq!(
        killed,
        Some(first_leader),
        "the first leader died mid-cutover"
    );
    let new_leader = world.leader().await?;
    assert_ne!(new_leader, first_leader);
    assert_eq!(phases.last(), Some(&Phase::Completed), "phases {phases:?}");
    let audit = world.audit().await?;
    assert_eq!(
        transitions(&audit, &id),
        happy_transitions(),
        "each provisioning and cutover step exactly once"
    );
    let terms: Vec<u64> = audit
        .iter()
        .filter(|e| e.subject == id && e.term > 0)
        .map(|e| e.term)
        .collect();
    assert!(
        terms.first() < terms.last(),
        "the second leader (a later term) finished what the first began: {terms:?}"
    );
    assert_eq!(failed, 0, "no request failed across the leader's death");
    assert!(total >= 500, "{total}");
    // The survivors hold the same state: the service moved, DNS with it.
    let state = world
        .replicas_agree(|o| o.migrations.get(&id).is_some_and(|m| m.phase.is_terminal()))
        .await?;
    assert_eq!(world.live().len(), 2, "two survivors compared");
    assert_eq!(state.services["shop"].primary_region, TARGET);
    assert_eq!(
        state.dns["shop"].weights,
        BTreeMap::from([(TARGET.to_owned(), 100)])
    );
    Ok(())
}
