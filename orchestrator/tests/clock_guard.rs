//! A leader whose wall clock steps away from its peers' hands leadership over
//! (`node::clock`): three orchestrators started by `node::start`, each on a clock of its own
//! (the executor's clock, which is also the one its peers read). The leader's clock steps back
//! 470 s, as an NTP step or a VM resumed from a snapshot would: its peers' clocks read 470 s
//! ahead of its own, so it stops executing and asks Raft to hand leadership to one of them;
//! the cluster keeps a leader whose clock agrees with the majority.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use umbra_orchestrator::node::NodeEnvironment;
use umbra_orchestrator::store::Clock;

mod executor_support;

use executor_support::{CLUSTER_DEADLINE, Cluster, now_ms};

/// The system clock, stepped by what the test sets.
#[derive(Default)]
struct SteppedClock {
    step_ms: AtomicI64,
}

impl Clock for SteppedClock {
    fn now_ms(&self) -> u64 {
        now_ms().saturating_add_signed(self.step_ms.load(Ordering::SeqCst))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_whose_wall_clock_steps_back_hands_leadership_to_a_peer_that_agrees()
-> anyhow::Result<()> {
    let clocks: BTreeMap<u64, Arc<SteppedClock>> = (1..=3).map(|id| (id, Arc::default())).collect();
    let cluster = Cluster::start_each(3, |id| {
        NodeEnvironment::with_clock(clocks[&id].clone() as Arc<dyn Clock>)
    })
    .await?;
    let stepped = cluster.leader().await?;
    clocks[&stepped].step_ms.store(-470_000, Ordering::SeqCst);
    let next = umbra_testkit::wait_for(
        "a leader other than the node whose clock stepped back",
        CLUSTER_DEADLINE,
        || {
            let leader = cluster.agreed_leader().filter(|l| *l != stepped);
            async move { leader }
        },
    )
    .await?;
    eprintln!("node {stepped}'s clock stepped back 470 s; node {next} leads");
    // Its clock back in step, the node is an ordinary member again; the group still commits.
    clocks[&stepped].step_ms.store(0, Ordering::SeqCst);
    cluster.overview().await?;
    Ok(())
}
