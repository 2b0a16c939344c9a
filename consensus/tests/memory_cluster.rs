//! Layer-2 tests: whole Raft clusters in one process on the in-memory network, with real
//! raft-engine stores in temp dirs and faults from a pinned seed (printed on failure).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use umbra_consensus::kv::{KvAnswer, KvCommand, KvQuery, KvStateMachine};
use umbra_consensus::memory::MemoryNetwork;
use umbra_consensus::{
    Config, MembershipChange, NodeOptions, RaftNode, RequestError, RestoreError, Role,
    SnapshotEncoder, StateMachine, UnreadableEntry, mailbox,
};

/// What these tests' nodes tell an operator to do about a lost data directory; the failure
/// must end with it.
const LOST_LOG_ADVICE: &str = "Remove it, add it back and start it as a joining member.";

/// Short ticks keep elections fast in tests; the ratios stay those of the defaults.
fn test_config() -> Config {
    Config {
        tick_interval_ms: 20,
        snapshot_interval_entries: 50,
        request_timeout_ms: 3_000,
        ..Config::default()
    }
}

struct Cluster {
    network: MemoryNetwork,
    dir: tempfile::TempDir,
    nodes: BTreeMap<u64, RaftNode>,
    voters: Vec<u64>,
    config: Config,
}

/// A proposal its leader could not commit, whose entry both followers hold.
struct Stranded {
    /// The leader that took the proposal.
    old: u64,
    /// The followers.
    others: Vec<u64>,
    /// The proposer, waiting for its answer.
    task: tokio::task::JoinHandle<Result<Vec<u8>, RequestError>>,
}

impl Cluster {
    fn new(seed: u64, size: u64) -> anyhow::Result<Self> {
        Self::with_config(seed, size, test_config())
    }

    fn with_config(seed: u64, size: u64, config: Config) -> anyhow::Result<Self> {
        eprintln!("memory cluster seed: {seed} (set UMBRA_TEST_SEED to replay)");
        let mut cluster = Self {
            network: MemoryNetwork::new(seed),
            dir: tempfile::tempdir()?,
            nodes: BTreeMap::new(),
            voters: (1..=size).collect(),
            config,
        };
        for id in 1..=size {
            cluster.start(id, cluster.voters.clone())?;
        }
        Ok(cluster)
    }

    fn start(&mut self, id: u64, initial_voters: Vec<u64>) -> anyhow::Result<()> {
        self.start_with(id, initial_voters, KvStateMachine::new())
    }

    fn start_with(
        &mut self,
        id: u64,
        initial_voters: Vec<u64>,
        machine: impl StateMachine,
    ) -> anyhow::Result<()> {
        let (mailbox, inbox) = mailbox(4096);
        let transport = self.network.attach(id, mailbox);
        let node = RaftNode::start(
            NodeOptions {
                id,
                data_dir: self.dir.path().join(format!("node-{id}")),
                config: self.config.clone(),
                initial_voters,
                peers: BTreeMap::new(),
                lost_log_advice: LOST_LOG_ADVICE.into(),
            },
            machine,
            transport,
            inbox,
            &prometheus::Registry::new(),
        )?;
        self.nodes.insert(id, node);
        Ok(())
    }

    /// Stops node `id` and waits until its store is closed.
    async fn stop(&mut self, id: u64) -> anyhow::Result<()> {
        if let Some(node) = self.nodes.remove(&id) {
            node.shutdown();
            tokio::time::timeout(Duration::from_secs(10), node.stopped())
                .await
                .context("node did not stop within 10 s")?;
        }
        Ok(())
    }

    async fn wait_for<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut(&Self) -> Option<T>,
    ) -> anyhow::Result<T> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(value) = check(self) {
                return Ok(value);
            }
            if Instant::now() > deadline {
                let statuses: Vec<_> = self.nodes.values().map(|n| n.status()).collect();
                bail!(
                    "timed out waiting for {what} (seed {}): {statuses:#?}",
                    self.network.seed()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The one leader that every running voter agrees on.
    async fn leader(&self) -> anyhow::Result<u64> {
        self.wait_for("an agreed leader", Duration::from_secs(30), |c| {
            let statuses: Vec<_> = c.nodes.values().map(|n| n.status()).collect();
            let leaders: Vec<_> = statuses.iter().filter(|s| s.role == Role::Leader).collect();
            match leaders.as_slice() {
                [leader]
                    if statuses
                        .iter()
                        .filter(|s| leader.voters.contains(&s.id))
                        .all(|s| s.leader == Some(leader.id)) =>
                {
                    Some(leader.id)
                }
                _ => None,
            }
        })
        .await
    }

    async fn put(&self, key: &str, value: &str) -> anyhow::Result<u64> {
        let command = KvCommand::Put {
            key: key.into(),
            value: value.as_bytes().to_vec(),
        }
        .encode();
        for _attempt in 0..20 {
            let leader = self.leader().await?;
            match self.nodes[&leader].propose(command.clone()).await {
                Ok(answer) => match KvAnswer::decode(&answer)? {
                    KvAnswer::Written { index, .. } => return Ok(index),
                    other => bail!("unexpected answer {other:?}"),
                },
                Err(RequestError::NotLeader { .. } | RequestError::Dropped) => {
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
                Err(error) => return Err(error).context("propose"),
            }
        }
        bail!("no leader accepted {key} (seed {})", self.network.seed())
    }

    /// Waits until every running node applied the same commands in the same order, up to
    /// at least `index`.
    /// `key`'s value, read through node `id`.
    async fn get(&self, id: u64, key: &str) -> anyhow::Result<Option<Vec<u8>>> {
        let query = KvQuery::Get { key: key.into() }.encode();
        match KvAnswer::decode(&self.nodes[&id].read(query).await?)? {
            KvAnswer::Value(value) => Ok(value),
            other => bail!("a get answered {other:?}"),
        }
    }

    /// Cuts the leader's ears (the followers hear it, it hears nothing back, so it cannot
    /// commit), proposes `stranded` through it and waits until both followers hold the entry.
    async fn strand_on_followers(&self) -> anyhow::Result<Stranded> {
        self.put("before", "1").await?;
        let old = self.leader().await?;
        let others: Vec<u64> = self.nodes.keys().copied().filter(|id| *id != old).collect();
        for other in &others {
            self.network.cut_one_way(*other, old);
        }
        let before = self.nodes[&old].status().last_index;
        let proposer = self.nodes[&old].clone();
        let task = tokio::spawn(async move {
            let command = KvCommand::Put {
                key: "stranded".into(),
                value: b"x".to_vec(),
            };
            proposer.propose(command.encode()).await
        });
        self.wait_for(
            "the entry on both followers",
            Duration::from_secs(10),
            |c| {
                let last = c.nodes[&old].status().last_index;
                (last > before
                    && others
                        .iter()
                        .all(|id| c.nodes[id].status().last_index >= last))
                .then_some(())
            },
        )
        .await?;
        Ok(Stranded { old, others, task })
    }

    async fn wait_same_digest(&self, index: u64) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut digests = Vec::new();
            for node in self.nodes.values() {
                match KvAnswer::decode(&node.read_local(KvQuery::Digest.encode()).await?)? {
                    KvAnswer::Digest(digest) => digests.push(digest),
                    other => bail!("unexpected {other:?}"),
                }
            }
            if digests[0].last_index >= index && digests.iter().all(|d| *d == digests[0]) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "digests differ (seed {}): {digests:#?}",
                    self.network.seed()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn seed() -> u64 {
    std::env::var("UMBRA_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_0001)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_elect_and_replicate_in_order() -> anyhow::Result<()> {
    let cluster = Cluster::new(seed(), 3)?;
    let mut last = 0;
    for i in 0..120 {
        last = cluster.put(&format!("k{i}"), &format!("v{i}")).await?;
    }
    cluster.wait_same_digest(last).await?;
    // Snapshots were taken (interval 50) and the state is still right.
    let leader = cluster.leader().await?;
    let answer = cluster.nodes[&leader]
        .read(KvQuery::Get { key: "k7".into() }.encode())
        .await?;
    assert_eq!(
        KvAnswer::decode(&answer)?,
        KvAnswer::Value(Some(b"v7".to_vec()))
    );
    for node in cluster.nodes.values() {
        let proposers = node.status().term_proposers;
        assert!(proposers.values().all(|p| p.len() == 1), "{proposers:?}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolated_leader_cannot_commit_and_its_entry_is_discarded() -> anyhow::Result<()> {
    let cluster = Cluster::new(seed(), 3)?;
    let Stranded {
        old,
        others,
        task: stranded,
    } = cluster.strand_on_followers().await?;
    cluster.network.isolate(old);
    let new = cluster
        .wait_for(
            "a new leader among the others",
            Duration::from_secs(20),
            |c| {
                others
                    .iter()
                    .map(|id| c.nodes[id].status())
                    .find(|s| s.role == Role::Leader)
                    .map(|s| s.id)
            },
        )
        .await?;
    assert_eq!(
        cluster.get(new, "stranded").await?,
        Some(b"x".to_vec()),
        "the next leader commits the entry its follower held"
    );
    // Three snapshot intervals, so the new leader's log no longer holds what the old one
    // lacks and it sends a snapshot.
    for i in 0..150 {
        let command = KvCommand::Put {
            key: format!("k{i}"),
            value: b"v".to_vec(),
        };
        cluster.nodes[&new].propose(command.encode()).await?;
    }
    // A snapshot taken at a later interval than the first means the first was recorded and
    // the log compacted past the stranded entry (one snapshot is taken at a time).
    let snapshots = cluster
        .dir
        .path()
        .join(format!("node-{new}"))
        .join("snapshots");
    cluster
        .wait_for(
            "the new leader's second snapshot",
            Duration::from_secs(20),
            |_| {
                let names = std::fs::read_dir(&snapshots).ok()?;
                names
                    .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
                    .filter_map(|name| name.strip_suffix("-taken.snap")?.parse::<u64>().ok())
                    .any(|index| index >= 2 * test_config().snapshot_interval_entries)
                    .then_some(())
            },
        )
        .await?;
    cluster.network.heal();
    let outcome = tokio::time::timeout(Duration::from_secs(30), stranded).await??;
    assert_eq!(
        outcome,
        Err(RequestError::OutcomeUnknown),
        "applied by the next leader, and learnt by the old one from a snapshot"
    );
    Ok(())
}

/// A leader that stops while its entry waits to commit, on followers that hold it: the next
/// leader commits the entry, so its proposer must hear that the outcome is unknown, not that
/// the node stopped (which reads as "not applied" and invites a retry that applies twice).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proposal_pending_when_its_leader_stops_is_of_unknown_outcome() -> anyhow::Result<()> {
    let mut cluster = Cluster::with_config(
        seed(),
        3,
        Config {
            // The proposal must still be waiting when its leader stops.
            request_timeout_ms: 60_000,
            ..test_config()
        },
    )?;
    let Stranded { old, task, .. } = cluster.strand_on_followers().await?;
    cluster.stop(old).await?;
    let outcome = tokio::time::timeout(Duration::from_secs(10), task).await??;
    assert_eq!(outcome, Err(RequestError::OutcomeUnknown));
    cluster.network.heal();
    let new = cluster.leader().await?;
    assert_eq!(
        cluster.get(new, "stranded").await?,
        Some(b"x".to_vec()),
        "the next leader commits the entry its followers held"
    );
    Ok(())
}

/// A leader whose process is gone (its mailbox closed, as a killed process's port is) is
/// succeeded through the dead-leader campaign: the lowest surviving id campaigns at once. The
/// election timeout here is long (3 to 6 s) so the ordinary timer is not what elects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_leader_is_succeeded_by_the_survivors_campaign() -> anyhow::Result<()> {
    let mut cluster = Cluster::with_config(
        seed(),
        3,
        Config {
            tick_interval_ms: 10,
            election_ticks: 300,
            ..test_config()
        },
    )?;
    cluster.put("before", "1").await?;
    let old = cluster.leader().await?;
    let old_term = cluster.nodes[&old].status().term;
    cluster.stop(old).await?;
    let new = cluster
        .wait_for(
            "a new leader among the survivors",
            Duration::from_secs(30),
            |c| {
                c.nodes
                    .values()
                    .map(|n| n.status())
                    .find(|s| s.role == Role::Leader)
                    .map(|s| s.id)
            },
        )
        .await?;
    let first = *cluster.nodes.keys().next().expect("two survivors");
    let status = cluster.nodes[&first].status();
    assert!(
        status.dead_leader_campaigns >= 1,
        "node {first}, the lowest surviving id, campaigned on the dead leader: {status:?}"
    );
    assert!(cluster.nodes[&new].status().term > old_term);
    // The new leader commits, and the old one catches up when it comes back.
    cluster.start(old, cluster.voters.clone())?;
    let index = cluster.put("after", "2").await?;
    cluster.wait_same_digest(index).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_hands_leadership_to_the_voter_it_names() -> anyhow::Result<()> {
    let cluster = Cluster::new(seed(), 3)?;
    cluster.put("before", "1").await?;
    let old = cluster.leader().await?;
    let to = *cluster
        .voters
        .iter()
        .find(|&&v| v != old)
        .expect("three voters");
    let Err(RequestError::NotLeader { .. }) = cluster.nodes[&to].transfer_leader(old).await else {
        anyhow::bail!("a follower took a transfer it cannot make");
    };
    cluster.nodes[&old].transfer_leader(to).await?;
    cluster
        .wait_for("the named voter leading", Duration::from_secs(30), |c| {
            let status = c.nodes[&to].status();
            (status.role == Role::Leader).then_some(())
        })
        .await?;
    let index = cluster.put("after", "2").await?;
    cluster.wait_same_digest(index).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lossy_network_still_commits_and_restart_keeps_everything() -> anyhow::Result<()> {
    let mut cluster = Cluster::new(seed(), 3)?;
    cluster.network.set_drop_probability(0.1);
    cluster.network.set_delay_ms(0, 5);
    let mut last = 0;
    for i in 0..60 {
        last = cluster.put(&format!("k{i}"), "v").await?;
    }
    cluster.network.heal();
    cluster.wait_same_digest(last).await?;
    for id in 1..=3 {
        cluster.stop(id).await?;
    }
    for id in 1..=3 {
        cluster.start(id, vec![1, 2, 3])?;
    }
    let leader = cluster.leader().await?;
    for i in 0..60 {
        let answer = cluster.nodes[&leader]
            .read(
                KvQuery::Get {
                    key: format!("k{i}"),
                }
                .encode(),
            )
            .await?;
        assert_eq!(
            KvAnswer::decode(&answer)?,
            KvAnswer::Value(Some(b"v".to_vec())),
            "k{i}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_a_fourth_node_then_remove_one() -> anyhow::Result<()> {
    let mut cluster = Cluster::new(seed(), 3)?;
    for i in 0..80 {
        cluster.put(&format!("k{i}"), "v").await?;
    }
    cluster.start(4, Vec::new())?;
    let leader = cluster.leader().await?;
    let voters = cluster.nodes[&leader]
        .change_membership(MembershipChange::AddVoter {
            id: 4,
            address: "memory:4".into(),
        })
        .await?;
    assert_eq!(voters, vec![1, 2, 3, 4]);
    let index = cluster.put("with-four", "1").await?;
    // Node 4 caught up through a snapshot (the log was compacted at 50).
    cluster.wait_same_digest(index).await?;
    let leader = cluster.leader().await?;
    let removed = (1..=3).find(|id| *id != leader).expect("a follower");
    let voters = cluster.nodes[&leader]
        .change_membership(MembershipChange::Remove { id: removed })
        .await?;
    assert!(!voters.contains(&removed));
    cluster.stop(removed).await?;
    let index = cluster.put("after-remove", "1").await?;
    cluster.wait_same_digest(index).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_member_stops_with_advice_then_catches_up_once_removed_and_added_back()
-> anyhow::Result<()> {
    let mut cluster = Cluster::new(seed(), 3)?;
    for i in 0..80 {
        cluster.put(&format!("k{i}"), "v").await?;
    }
    let leader = cluster.leader().await?;
    let wiped = (1..=3).find(|id| *id != leader).expect("a follower");
    cluster.stop(wiped).await?;
    std::fs::remove_dir_all(cluster.dir.path().join(format!("node-{wiped}")))?;
    // Restarted as the founding member it was, it must stop on the leader's first heartbeat
    // (which counts entries the node no longer has) rather than panic or vote.
    cluster.start(wiped, cluster.voters.clone())?;
    let failure = cluster
        .wait_for("the wiped node to stop", Duration::from_secs(10), |c| {
            c.nodes[&wiped].status().failure
        })
        .await?;
    assert!(failure.contains("data directory was lost"), "{failure}");
    assert!(failure.ends_with(LOST_LOG_ADVICE), "{failure}");
    cluster.stop(wiped).await?;
    let leader = cluster.leader().await?;
    cluster.nodes[&leader]
        .change_membership(MembershipChange::Remove { id: wiped })
        .await?;
    let voters = cluster.nodes[&leader]
        .change_membership(MembershipChange::AddVoter {
            id: wiped,
            address: format!("memory:{wiped}"),
        })
        .await?;
    assert_eq!(voters, vec![1, 2, 3]);
    // As a joining member, on the data directory the refused start left behind.
    cluster.start(wiped, Vec::new())?;
    let index = cluster.put("after-replace", "1").await?;
    cluster.wait_same_digest(index).await?;
    assert_eq!(cluster.nodes[&wiped].status().failure, None);
    Ok(())
}

/// The key-value machine as an older build would run it: entries starting with 0xFF stand
/// for a newer version of its encoding, which it cannot read.
struct OlderBuild(KvStateMachine);

const NEWER: u8 = 0xFF;

impl StateMachine for OlderBuild {
    fn apply(&mut self, index: u64, command: &[u8]) -> Vec<u8> {
        self.0.apply(index, command)
    }
    fn query(&self, query: &[u8]) -> Vec<u8> {
        self.0.query(query)
    }
    fn capture(&self) -> SnapshotEncoder {
        self.0.capture()
    }
    fn restore(&mut self, snapshot: &[u8]) -> Result<(), RestoreError> {
        self.0.restore(snapshot)
    }
    fn readable(&self, command: &[u8]) -> Result<(), UnreadableEntry> {
        match command.first() {
            Some(&NEWER) => Err(UnreadableEntry(
                "written by a newer build; upgrade this node".to_owned(),
            )),
            _ => Ok(()),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_a_node_cannot_read_stops_it_and_the_upgraded_node_applies_it()
-> anyhow::Result<()> {
    let mut cluster = Cluster::new(seed(), 1)?;
    cluster.stop(1).await?;
    cluster.start_with(1, vec![1], OlderBuild(KvStateMachine::new()))?;
    let readable = cluster.put("a", "1").await?;
    let leader = cluster.leader().await?;
    let answer = cluster.nodes[&leader].propose(vec![NEWER, 1, 2]).await;
    assert!(
        answer.is_err(),
        "the entry is not applied, so it has no answer: {answer:?}"
    );
    let status = cluster
        .wait_for("the node to stop", Duration::from_secs(10), |c| {
            let status = c.nodes[&1].status();
            status.failure.is_some().then_some(status)
        })
        .await?;
    let failure = status.failure.unwrap_or_default();
    assert!(failure.contains("upgrade this node"), "{failure}");
    assert_eq!(status.applied_index, readable, "nothing after it applied");

    // The upgraded build reads the entry from the log and applies it: nothing was lost.
    cluster.stop(1).await?;
    cluster.start(1, vec![1])?;
    cluster.leader().await?;
    cluster.wait_same_digest(readable + 1).await?;
    Ok(())
}
