//! The zone's publisher when a standard server is its one authority (`[dns] provider =
//! "rfc2136"`, BIND 9): the leader sends the server each service's record set as the
//! replicated `dns` weights map them ([`zone_sync::desired_zone`]), one RFC 2136 update
//! signed with TSIG per changed set, and [`verify_published`] is the executor's check that
//! the server answers with the new set.
//!
//! What clients see: a standard server has no weighted answers, so each set is the front
//! addresses of the regions with a non-zero share, all in every answer (BIND rotates their
//! order); the exact shares are applied by the source front, which passes the target's share
//! on. During a migration from region S to T that is {S} before the cutover (with the cutover
//! TTL from the migration's TTL plan lowering time on), {S, T} at every step below 100 %, {T} from the
//! 100 % step on, and {T} with the service's normal TTL once completed ({S} again after a
//! rollback). The weights themselves ride along in TXT records (`umbra-weight ADDR W`).
//!
//! Only the Raft leader writes, so followers never race it; a new leader republishes every
//! set once (updates replace whole sets, so repeating one is harmless), and every
//! [`RECHECK_INTERVAL`] it reads the sets back and republishes any the server lost or that a
//! deposed leader's late update overwrote. Records of a service that left the replicated
//! state stay on the server (remove them with `nsupdate`). A refused update (REFUSED: the
//! server does not allow this key; NOTAUTH: wrong secret or key name) is logged with the
//! server's code, kept for [`verify_published`] to report, and retried with backoff up to
//! [`MAX_RETRY_DELAY`], in case the server's configuration is fixed.
//!
//! This module must not decide weights (the executor does, through the replicated log), and
//! must not write while this node does not lead.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_proto::rr::Name;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use umbra_consensus::{NodeStatus, Role as RaftRole};
use umbra_dns::verify::ServerVerified;
use umbra_dns::{DnsProvider, WeightedRecordSet};

use crate::state::{DnsWeights, Overview};
use crate::zone_sync;

/// First retry delay after a failed update: two executor rounds.
pub const MIN_RETRY_DELAY: Duration = Duration::from_millis(200);
/// Longest retry delay: a refused update is retried this often at most, so a fixed server is
/// caught up within seconds without flooding its log.
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(5);
/// How often the leader reads its sets back from the server: 10 s, shorter than any
/// cutover step worth having, so a lost update is put back within one step.
pub const RECHECK_INTERVAL: Duration = Duration::from_secs(10);

/// What the leader last tried to publish for each name, and how it went; shared with the
/// executor so a failed check can say why the server does not serve the new set.
#[derive(Clone, Default)]
pub struct PublishLog {
    by_name: Arc<Mutex<BTreeMap<String, Attempt>>>,
}

/// The last set sent for one name, and how the server answered.
type Attempt = (WeightedRecordSet, Result<(), String>);

impl PublishLog {
    fn record(&self, set: &WeightedRecordSet, result: Result<(), String>) {
        self.lock()
            .insert(set.name.to_ascii_lowercase(), (set.clone(), result));
    }

    /// Why the last update of exactly `set` failed, if it did.
    pub fn failure_of(&self, set: &WeightedRecordSet) -> Option<String> {
        match self.lock().get(&set.name.to_ascii_lowercase()) {
            Some((tried, Err(why))) if tried == set => Some(why.clone()),
            _ => None,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Attempt>> {
        self.by_name.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Runs the publisher until `stop` turns true: idle while this node follows, publishing
/// while it leads (see the module docs).
pub fn spawn(
    provider: Arc<dyn DnsProvider>,
    zone: Name,
    overviews: watch::Receiver<Arc<Overview>>,
    status: watch::Receiver<NodeStatus>,
    log: PublishLog,
    stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut publisher = Publisher {
            provider,
            zone,
            overviews,
            status,
            log,
            stop,
        };
        while let Some(term) = publisher.wait_for_leadership().await {
            tracing::info!(term, "leading: publishing the DNS zone to its authority");
            if !publisher.lead(term).await {
                return;
            }
            tracing::info!(term, "no longer leading: DNS publishing stops");
        }
    })
}

struct Publisher {
    provider: Arc<dyn DnsProvider>,
    zone: Name,
    overviews: watch::Receiver<Arc<Overview>>,
    status: watch::Receiver<NodeStatus>,
    log: PublishLog,
    stop: watch::Receiver<bool>,
}

impl Publisher {
    /// This node's term once it leads; `None` when the node stops.
    async fn wait_for_leadership(&mut self) -> Option<u64> {
        loop {
            if *self.stop.borrow() {
                return None;
            }
            {
                let s = self.status.borrow_and_update();
                if s.role == RaftRole::Leader {
                    return Some(s.term);
                }
            }
            tokio::select! {
                changed = self.status.changed() => changed.ok()?,
                _ = self.stop.changed() => return None,
            }
        }
    }

    /// Whether this node still leads in `term`. Marks the status seen, so the next
    /// `status.changed()` waits for a new change instead of returning at once.
    fn leads(&mut self, term: u64) -> bool {
        let leads = {
            let s = self.status.borrow_and_update();
            s.role == RaftRole::Leader && s.term == term
        };
        leads && !*self.stop.borrow()
    }

    /// Publishes while this node leads in `term`; `false` when the node stops.
    async fn lead(&mut self, term: u64) -> bool {
        // What this leadership saw the server accept; empty at first, so everything is
        // published once (a deposed leader may have left anything).
        let mut accepted: BTreeMap<String, WeightedRecordSet> = BTreeMap::new();
        let mut retry_delay = MIN_RETRY_DELAY;
        let mut recheck_at = Instant::now() + RECHECK_INTERVAL;
        loop {
            if !self.leads(term) {
                return !*self.stop.borrow();
            }
            let overview = self.overviews.borrow_and_update().clone();
            let desired = zone_sync::desired_zone(&overview, &self.zone);
            let mut failed = false;
            for set in &desired.sets {
                if accepted.get(&set.name) == Some(set) {
                    continue;
                }
                if !self.leads(term) {
                    break;
                }
                match self.provider.set_record_set(set).await {
                    Ok(()) => {
                        self.log.record(set, Ok(()));
                        accepted.insert(set.name.clone(), set.clone());
                    }
                    Err(error) => {
                        let repeated =
                            self.log.failure_of(set).as_deref() == Some(error.to_string().as_str());
                        if !repeated {
                            tracing::error!(%error, name = %set.name, "the DNS authority did not take the update");
                        }
                        self.log.record(set, Err(error.to_string()));
                        failed = true;
                    }
                }
            }
            let retry_at = if failed {
                let at = Instant::now() + retry_delay;
                retry_delay = (retry_delay * 2).min(MAX_RETRY_DELAY);
                Some(at)
            } else {
                retry_delay = MIN_RETRY_DELAY;
                None
            };
            let wake = retry_at.map_or(recheck_at, |at| at.min(recheck_at));
            tokio::select! {
                changed = self.overviews.changed() => if changed.is_err() { return false },
                changed = self.status.changed() => if changed.is_err() { return false },
                _ = self.stop.changed() => return false,
                _ = tokio::time::sleep_until(wake) => {}
            }
            if Instant::now() >= recheck_at {
                self.recheck(&mut accepted).await;
                recheck_at = Instant::now() + RECHECK_INTERVAL;
            }
        }
    }

    /// Reads every accepted set back; one the server no longer holds as published is
    /// forgotten, so the next pass publishes it again.
    async fn recheck(&self, accepted: &mut BTreeMap<String, WeightedRecordSet>) {
        let mut lost = Vec::new();
        for (name, set) in accepted.iter() {
            match self.provider.record_set(name).await {
                Ok(Some(held)) if same_set(&held, set) => {}
                Ok(held) => {
                    tracing::warn!(%name, ?held, "the DNS authority no longer holds the published set; publishing it again");
                    lost.push(name.clone());
                }
                // Unreachable now: the next recheck asks again, and verification reports it.
                Err(error) => {
                    tracing::warn!(%error, %name, "reading the published set back failed")
                }
            }
        }
        for name in lost {
            accepted.remove(&name);
        }
    }
}

/// Equal record sets, whatever the order of their addresses and the case of their names.
fn same_set(a: &WeightedRecordSet, b: &WeightedRecordSet) -> bool {
    let sorted = |s: &WeightedRecordSet| {
        let mut v = s.addresses.clone();
        v.sort();
        v
    };
    a.name.eq_ignore_ascii_case(&b.name) && a.ttl_secs == b.ttl_secs && sorted(a) == sorted(b)
}

/// Waits until every server in `servers` (the authority, and any secondaries listed) answers
/// with `weights` for `service` as [`zone_sync::record_set_for`] maps them, at most
/// `timeout`. When they do not, the error says so and adds why the leader's last update of
/// that set failed (the server's response code), if it did.
pub async fn verify_published(
    servers: &[SocketAddr],
    log: &PublishLog,
    overview: &Overview,
    service: &str,
    weights: &DnsWeights,
    timeout: Duration,
) -> Result<Vec<ServerVerified>, String> {
    let set = zone_sync::record_set_for(overview, service, weights).map_err(|e| e.to_string())?;
    match zone_sync::verify_weights_served(servers, overview, service, weights, timeout).await {
        Ok(verified) => Ok(verified),
        Err(not_served) => Err(match log.failure_of(&set) {
            Some(refused) => format!("{refused}; so {not_served}"),
            None => not_served.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use umbra_dns::WeightedAddress;

    fn set(ttl_secs: u32, addresses: &[(&str, u8)]) -> WeightedRecordSet {
        WeightedRecordSet::new(
            "shop.umbra.test.",
            ttl_secs,
            addresses
                .iter()
                .map(|&(a, weight)| WeightedAddress {
                    addr: a.parse().unwrap(),
                    weight,
                })
                .collect(),
        )
    }

    #[test]
    fn sets_compare_whatever_the_order_and_failures_are_kept_per_exact_set() {
        let a = set(30, &[("127.0.0.11", 9), ("127.0.0.12", 1)]);
        let b = set(30, &[("127.0.0.12", 1), ("127.0.0.11", 9)]);
        assert!(same_set(&a, &b));
        assert!(!same_set(
            &a,
            &set(300, &[("127.0.0.11", 9), ("127.0.0.12", 1)])
        ));
        assert!(!same_set(
            &a,
            &set(30, &[("127.0.0.11", 1), ("127.0.0.12", 1)])
        ));

        let log = PublishLog::default();
        log.record(&a, Err("NOTAUTH (Not authorized)".into()));
        assert_eq!(
            log.failure_of(&a).as_deref(),
            Some("NOTAUTH (Not authorized)")
        );
        assert_eq!(
            log.failure_of(&set(30, &[("127.0.0.12", 1)])),
            None,
            "another set"
        );
        log.record(&a, Ok(()));
        assert_eq!(log.failure_of(&a), None, "a later success clears it");
    }

    /// An authority in memory: what it holds, how many updates it took, and a switch that
    /// makes it refuse every update as BIND refuses a wrong key.
    #[derive(Default)]
    struct MemoryAuthority {
        held: Mutex<BTreeMap<String, WeightedRecordSet>>,
        updates: std::sync::atomic::AtomicU32,
        refuse: std::sync::atomic::AtomicBool,
    }

    impl MemoryAuthority {
        fn updates(&self) -> u32 {
            self.updates.load(std::sync::atomic::Ordering::SeqCst)
        }

        fn held(&self) -> Option<WeightedRecordSet> {
            self.held.lock().unwrap().get("shop.umbra.test.").cloned()
        }
    }

    impl DnsProvider for MemoryAuthority {
        fn set_record_set<'a>(
            &'a self,
            set: &'a WeightedRecordSet,
        ) -> futures::future::BoxFuture<'a, Result<(), umbra_dns::DnsError>> {
            Box::pin(async move {
                if self.refuse.load(std::sync::atomic::Ordering::SeqCst) {
                    return Err(umbra_dns::DnsError::Rejected {
                        server: "127.0.0.1:53".parse().unwrap(),
                        what: format!("the update of {}", set.name),
                        rcode: "NOTAUTH (Not authorized)".into(),
                    });
                }
                self.updates
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                self.held
                    .lock()
                    .unwrap()
                    .insert(set.name.clone(), set.clone());
                Ok(())
            })
        }

        fn record_set<'a>(
            &'a self,
            name: &'a str,
        ) -> futures::future::BoxFuture<'a, Result<Option<WeightedRecordSet>, umbra_dns::DnsError>>
        {
            Box::pin(async move { Ok(self.held.lock().unwrap().get(name).cloned()) })
        }

        fn authoritative_servers(&self) -> Vec<SocketAddr> {
            vec!["127.0.0.1:53".parse().unwrap()]
        }
    }

    fn status(role: RaftRole, term: u64) -> NodeStatus {
        NodeStatus {
            id: 1,
            role,
            term,
            leader: None,
            commit_index: 0,
            applied_index: 0,
            last_index: 0,
            voters: vec![1, 2, 3],
            led_terms: Vec::new(),
            term_proposers: BTreeMap::new(),
            failure: None,
            dead_leader_campaigns: 0,
        }
    }

    /// The example plan with `shop`'s weights set to `weights` (region → weight).
    fn overview(weights: &[(&str, u32)], index: u64) -> Arc<Overview> {
        let mut state = crate::state::OrchestratorState::default();
        state
            .apply_command(
                1,
                &crate::state::Command::ApplyPlan {
                    plan: crate::state::Plan::example(),
                    at_ms: 1,
                },
            )
            .expect("the example plan applies");
        let mut overview = state.overview();
        overview.dns.insert(
            "shop".to_owned(),
            DnsWeights {
                weights: weights.iter().map(|&(r, w)| (r.to_owned(), w)).collect(),
                ttl_secs: 30,
            },
        );
        overview.applied_index = index;
        Arc::new(overview)
    }

    fn served(set: Option<WeightedRecordSet>) -> Vec<String> {
        set.map(|s| s.served_addresses().iter().map(|a| a.to_string()).collect())
            .unwrap_or_default()
    }

    /// Time is tokio's paused clock: each `settle` lets the publisher run until it waits.
    async fn settle(ms: u64) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn only_the_leader_writes_and_a_new_leader_republishes_what_the_server_lost() {
        let authority = Arc::new(MemoryAuthority::default());
        let (overview_tx, overviews) = watch::channel(overview(&[("us-east", 100)], 1));
        let (status_tx, statuses) = watch::channel(status(RaftRole::Follower, 1));
        let (stop_tx, stop) = watch::channel(false);
        let log = PublishLog::default();
        let task = spawn(
            authority.clone(),
            umbra_dns::parse_fqdn("umbra.test.").unwrap(),
            overviews,
            statuses,
            log.clone(),
            stop,
        );
        settle(1_000).await;
        assert_eq!(authority.updates(), 0, "a follower never writes");

        status_tx.send_replace(status(RaftRole::Leader, 2));
        settle(50).await;
        assert_eq!(served(authority.held()), ["127.0.0.11"]);
        assert_eq!(authority.updates(), 1);
        // Status changes of the same leadership (every applied entry) write nothing again.
        for applied in 1..20 {
            status_tx.send_modify(|s| s.applied_index = applied);
            settle(10).await;
        }
        assert_eq!(authority.updates(), 1, "an unchanged set is not sent again");

        overview_tx.send_replace(overview(&[("us-east", 90), ("eu-west", 10)], 2));
        settle(50).await;
        assert_eq!(served(authority.held()), ["127.0.0.11", "127.0.0.12"]);

        // The server lost the set (restarted without its journal): the next read-back puts it
        // back.
        authority.held.lock().unwrap().clear();
        settle(RECHECK_INTERVAL.as_millis() as u64 + 500).await;
        assert_eq!(served(authority.held()), ["127.0.0.11", "127.0.0.12"]);

        // A refusal is kept for the executor's check, then retried until the server takes it.
        authority
            .refuse
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let moved = overview(&[("eu-west", 100)], 3);
        overview_tx.send_replace(moved.clone());
        settle(50).await;
        let set = zone_sync::record_set_for(&moved, "shop", &moved.dns["shop"]).unwrap();
        let refused = log.failure_of(&set).expect("the refusal is kept");
        assert!(refused.contains("NOTAUTH"), "{refused}");
        assert_eq!(served(authority.held()), ["127.0.0.11", "127.0.0.12"]);
        authority
            .refuse
            .store(false, std::sync::atomic::Ordering::SeqCst);
        settle(MAX_RETRY_DELAY.as_millis() as u64 + 500).await;
        assert_eq!(served(authority.held()), ["127.0.0.12"]);
        assert_eq!(log.failure_of(&set), None);

        // Deposed: a newer state is not written by this node.
        status_tx.send_replace(status(RaftRole::Follower, 3));
        overview_tx.send_replace(overview(&[("us-east", 100)], 4));
        settle(RECHECK_INTERVAL.as_millis() as u64 * 2).await;
        assert_eq!(
            served(authority.held()),
            ["127.0.0.12"],
            "a follower never writes"
        );

        // Leading again: everything is published once, whatever the server holds.
        let before = authority.updates();
        status_tx.send_replace(status(RaftRole::Leader, 5));
        settle(50).await;
        assert_eq!(served(authority.held()), ["127.0.0.11"]);
        assert_eq!(authority.updates(), before + 1);

        stop_tx.send_replace(true);
        tokio::time::timeout(Duration::from_secs(1), task)
            .await
            .expect("the publisher stops when told")
            .unwrap();
    }
}
