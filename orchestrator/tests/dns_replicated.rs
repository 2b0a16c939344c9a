//! The DNS controller against the real replicated state and real servers: an
//! `OrchestratorState` takes `ApplyPlan` and `SetDnsWeights` in process, `ZoneSync` keeps
//! embedded servers on loopback equal to it, and hickory-resolver and `dig` (bind9-dnsutils)
//! see each region's front IP with the share its replicated weight gives, the replicated TTL,
//! one serial bump per change, services that disappear removed, services outside the zone
//! left out with a reason; three servers fed from `watch` channels (three orchestrators) are
//! verified together, and a server that has not applied the change fails verification within
//! its bound, naming itself.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use hickory_proto::rr::{RData, RecordType};
use tokio::sync::watch;
use umbra_dns::DnsError;
use umbra_dns::embedded::{EmbeddedDns, EmbeddedDnsConfig};
use umbra_dns::verify::resolver_for;
use umbra_orchestrator::state::{
    Command, DnsWeights, OrchestratorState, Overview, Plan, ReplicationKind,
};
use umbra_orchestrator::zone_sync::{
    SkippedService, ZoneSync, ZoneSyncMetrics, spawn, verify_weights_served,
};
use umbra_testkit::bind::dig;

const ZONE: &str = "umbra.test.";
const SHOP: &str = "shop.umbra.test.";
const US_EAST: &str = "127.0.0.11";
const EU_WEST: &str = "127.0.0.12";
const AP_SOUTH: &str = "fd00::13";
/// Queries per share measurement: 100 rounds of a 9:1 weighting.
const QUERIES: usize = 1000;
/// Share tolerance, percentage points. Smooth weighted round robin is exact per cycle, and
/// each measurement is a whole number of cycles; 1 point leaves room for nothing else.
const SHARE_TOLERANCE_PCT: f64 = 1.0;
/// Bound on waiting for a spawned controller to apply an overview.
const APPLY_DEADLINE: Duration = Duration::from_secs(10);

/// The example plan with a third region (an IPv6 front) and two more services: `api`, primary
/// in eu-west with a 60 s TTL, and `cart`, whose hostname lies outside the zone.
fn plan() -> Plan {
    let mut plan = Plan::example();
    plan.schedules.clear();
    let mut ap_south = plan.regions[0].clone();
    ap_south.name = "ap-south".to_owned();
    ap_south.front = "[fd00::13]:8080".to_owned();
    plan.regions.push(ap_south);
    let shop = plan.services[0].clone();
    let mut api = shop.clone();
    api.name = "api".to_owned();
    api.hostname = "api.umbra.test.".to_owned();
    api.primary_region = "eu-west".to_owned();
    api.dns_ttl_secs = 60;
    api.replication = ReplicationKind::None;
    let mut cart = shop;
    cart.name = "cart".to_owned();
    cart.hostname = "cart.elsewhere.test.".to_owned();
    cart.replication = ReplicationKind::None;
    plan.services.extend([api, cart]);
    plan
}

/// The replicated state as the log builds it: commands applied in order, indexes from 1.
struct Log {
    state: OrchestratorState,
    index: u64,
}

impl Log {
    fn planned() -> Result<Self> {
        let mut log = Self {
            state: OrchestratorState::default(),
            index: 0,
        };
        log.apply(Command::ApplyPlan {
            plan: plan(),
            at_ms: 1,
        })?;
        Ok(log)
    }

    fn apply(&mut self, command: Command) -> Result<()> {
        self.index += 1;
        self.state
            .apply_command(self.index, &command)
            .map_err(|e| anyhow::anyhow!("command {command:?} rejected: {e}"))?;
        Ok(())
    }

    /// Proposes `SetDnsWeights` as the executor does and returns the weights.
    fn set_weights(
        &mut self,
        service: &str,
        weights: &[(&str, u32)],
        ttl_secs: u32,
    ) -> Result<DnsWeights> {
        let dns = DnsWeights {
            weights: weights.iter().map(|&(r, w)| (r.to_owned(), w)).collect(),
            ttl_secs,
        };
        self.apply(Command::SetDnsWeights {
            service: service.to_owned(),
            dns: dns.clone(),
            reason: "test step".to_owned(),
            term: 1,
            at_ms: self.index * 10,
        })?;
        Ok(dns)
    }

    fn overview(&self) -> Overview {
        self.state.overview()
    }
}

async fn start_dns() -> Result<Arc<EmbeddedDns>> {
    Ok(Arc::new(
        EmbeddedDns::start(EmbeddedDnsConfig::new(ZONE, "127.0.0.1:0".parse()?)).await?,
    ))
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

/// Asks `server` `QUERIES` times through hickory-resolver (cache bypassed): answers by
/// address, checking each carries `ttl_secs`.
async fn resolver_counts(
    server: SocketAddr,
    rtype: RecordType,
    ttl_secs: u32,
) -> Result<BTreeMap<IpAddr, usize>> {
    let resolver = resolver_for(server)?;
    let mut counts = BTreeMap::new();
    for _ in 0..QUERIES {
        resolver.clear_cache();
        let lookup = resolver.lookup(SHOP, rtype).await?;
        let answers: Vec<_> = lookup.answers().iter().collect();
        ensure!(answers.len() == 1, "one address per answer: {answers:?}");
        ensure!(
            answers[0].ttl == ttl_secs,
            "TTL {} instead of the replicated {ttl_secs}",
            answers[0].ttl
        );
        let addr = match &answers[0].data {
            RData::A(a) => IpAddr::V4(a.0),
            RData::AAAA(a) => IpAddr::V6(a.0),
            other => anyhow::bail!("unexpected answer {other:?}"),
        };
        *counts.entry(addr).or_default() += 1;
    }
    Ok(counts)
}

/// `dig +short` answers by address.
fn dig_counts(server: SocketAddr, rtype: &str) -> Result<BTreeMap<IpAddr, usize>> {
    let out = dig(server, &vec![format!("{SHOP} {rtype} +short"); QUERIES])?;
    let mut counts = BTreeMap::new();
    for line in out.lines().filter(|l| !l.trim().is_empty()) {
        let addr: IpAddr = line
            .trim()
            .parse()
            .with_context(|| format!("dig printed {line:?}"))?;
        *counts.entry(addr).or_default() += 1;
    }
    Ok(counts)
}

/// Checks that the answers split as `want` (address, replicated weight) says.
fn shares_follow(what: &str, counts: &BTreeMap<IpAddr, usize>, want: &[(&str, u32)]) -> Result<()> {
    let total: usize = counts.values().sum();
    ensure!(
        total == QUERIES,
        "{what}: {total} answers of {QUERIES}: {counts:?}"
    );
    let weight_total: f64 = want.iter().map(|&(_, w)| f64::from(w)).sum();
    for &(addr, weight) in want {
        let got = 100.0 * *counts.get(&ip(addr)).unwrap_or(&0) as f64 / total as f64;
        let expected = 100.0 * f64::from(weight) / weight_total;
        println!("{what}: {addr} {got:.1}% (replicated weight says {expected:.1}%)");
        ensure!(
            (got - expected).abs() <= SHARE_TOLERANCE_PCT,
            "{what}: {addr} got {got:.1}%, the replicated weight says {expected:.1}%"
        );
    }
    let listed: Vec<IpAddr> = want.iter().map(|&(a, _)| ip(a)).collect();
    ensure!(
        counts.keys().all(|a| listed.contains(a)),
        "{what}: answers outside the replicated regions: {counts:?}"
    );
    Ok(())
}

fn soa_serial(server: SocketAddr) -> Result<u32> {
    umbra_testkit::bind::soa_serial(server, ZONE)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_zone_serves_the_replicated_weights_and_shares_follow_them() -> Result<()> {
    let mut log = Log::planned()?;
    let dns = start_dns().await?;
    let server = dns.local_addr();
    let registry = prometheus::Registry::new();
    let mut sync = ZoneSync::new(dns.clone()).with_metrics(ZoneSyncMetrics::new(&registry)?);

    // The plan: each service all on its primary region, normal TTL; cart is outside the zone.
    let report = sync.apply(&log.overview())?;
    println!("plan applied: {report:?}");
    ensure!(report.changed && report.record_sets == 2, "{report:?}");
    ensure!(
        report.skipped.len() == 1 && report.skipped[0].service == "cart",
        "{report:?}"
    );
    let SkippedService { reason, .. } = &report.skipped[0];
    ensure!(
        reason.contains("cart.elsewhere.test") && reason.contains("zone"),
        "{reason}"
    );
    shares_follow(
        "plan",
        &resolver_counts(server, RecordType::A, 300).await?,
        &[(US_EAST, 1)],
    )?;
    let api = dig(server, &["api.umbra.test. A +noall +answer"])?;
    ensure!(api.contains("60\tIN\tA\t127.0.0.12"), "api answer: {api}");
    ensure!(dig(server, &["cart.elsewhere.test. A"])?.contains("status: REFUSED"));

    // A cutover step at 10 %: TTL lowered, 90:10 between the fronts' IPs.
    let serial = soa_serial(server)?;
    log.set_weights("shop", &[("us-east", 90), ("eu-west", 10)], 5)?;
    let report = sync.apply(&log.overview())?;
    ensure!(report.changed, "{report:?}");
    // The serial is the change's applied index once that is above the serial served (so every
    // orchestrator's come from one sequence), else one more than the serial served.
    ensure!(
        soa_serial(server)? == report.serial
            && report.serial == (report.applied_index as u32).max(serial + 1),
        "the serial follows the change's applied index: {report:?}"
    );
    let step_10 = [(US_EAST, 90), (EU_WEST, 10)];
    shares_follow(
        "10% resolver",
        &resolver_counts(server, RecordType::A, 5).await?,
        &step_10,
    )?;
    shares_follow("10% dig", &dig_counts(server, "A")?, &step_10)?;

    // Idempotent: the same state again changes nothing, not even the round-robin position.
    let serial = soa_serial(server)?;
    let again = sync.apply(&log.overview())?;
    ensure!(!again.changed && soa_serial(server)? == serial, "{again:?}");
    shares_follow("10% again", &dig_counts(server, "A")?, &step_10)?;

    // 50 %: half and half, through dig.
    log.set_weights("shop", &[("us-east", 50), ("eu-west", 50)], 5)?;
    let at_50 = log.overview();
    sync.apply(&at_50)?;
    shares_follow(
        "50% dig",
        &dig_counts(server, "A")?,
        &[(US_EAST, 50), (EU_WEST, 50)],
    )?;

    // Weights on three regions, one of them with an IPv6 front, one at zero: A answers come
    // from the IPv4 fronts with weight, AAAA from the IPv6 one, the zero-weight region never.
    log.set_weights(
        "shop",
        &[("us-east", 0), ("eu-west", 3), ("ap-south", 1)],
        5,
    )?;
    sync.apply(&log.overview())?;
    shares_follow(
        "A",
        &resolver_counts(server, RecordType::A, 5).await?,
        &[(EU_WEST, 3)],
    )?;
    shares_follow("AAAA", &dig_counts(server, "AAAA")?, &[(AP_SOUTH, 1)])?;

    // A late notification of an older state must not put old weights back.
    let serial = soa_serial(server)?;
    let stale = sync.apply(&at_50)?;
    ensure!(stale.stale && !stale.changed, "{stale:?}");
    ensure!(soa_serial(server)? == serial);
    shares_follow("after stale", &dig_counts(server, "A")?, &[(EU_WEST, 3)])?;

    // Two services change in one overview: one change, one serial bump.
    log.set_weights("shop", &[("us-east", 1)], 300)?;
    log.set_weights("api", &[("us-east", 1), ("eu-west", 1)], 30)?;
    let serial = soa_serial(server)?;
    let both = sync.apply(&log.overview())?;
    ensure!(
        both.changed
            && soa_serial(server)? == both.serial
            && both.serial == (both.applied_index as u32).max(serial + 1),
        "both services in one change, at its applied index: {both:?}"
    );

    let exported = prometheus::TextEncoder::new().encode_to_string(&registry.gather())?;
    for line in [
        "umbra_dns_zone_applies_total{result=\"changed\"} 5",
        "umbra_dns_zone_applies_total{result=\"unchanged\"} 1",
        "umbra_dns_zone_applies_total{result=\"stale\"} 1",
        "umbra_dns_zone_record_sets 2",
        "umbra_dns_zone_skipped_services 1",
        "umbra_dns_weight_ratio{region=\"us-east\",service=\"shop\"} 1",
    ] {
        ensure!(exported.contains(line), "missing {line:?} in\n{exported}");
    }
    dns.shutdown().await;
    Ok(())
}

/// Waits (bounded) until `condition` holds.
async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) -> Result<()> {
    umbra_testkit::wait_for(what, APPLY_DEADLINE, || {
        let held = condition();
        async move { held.then_some(()) }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_orchestrator_serves_the_same_and_verify_waits_for_each() -> Result<()> {
    let mut log = Log::planned()?;
    // Three orchestrators: each its own server, fed by its own watch of the applied state.
    let mut nodes = Vec::new();
    for _ in 0..3 {
        let dns = start_dns().await?;
        let (tx, rx) = watch::channel(Arc::new(log.overview()));
        let task = spawn(ZoneSync::new(dns.clone()), rx);
        nodes.push((dns, tx, task));
    }
    let servers: Vec<SocketAddr> = nodes.iter().map(|(dns, ..)| dns.local_addr()).collect();
    let timeout = Duration::from_secs(10);
    let plan_weights = log.overview().dns["shop"].clone();
    let verified =
        verify_weights_served(&servers, &log.overview(), "shop", &plan_weights, timeout).await?;
    println!("plan served everywhere: {verified:?}");

    // The executor proposes 90:10; two followers have applied it, the third has not yet.
    let weights = log.set_weights("shop", &[("us-east", 90), ("eu-west", 10)], 5)?;
    let step = Arc::new(log.overview());
    nodes[0].1.send_replace(step.clone());
    nodes[1].1.send_replace(step.clone());
    let bound = Duration::from_millis(800);
    let started = Instant::now();
    let err = verify_weights_served(&servers, &step, "shop", &weights, bound)
        .await
        .expect_err("the third server still serves the plan");
    let waited = started.elapsed();
    println!("laggard: {err} (after {waited:?})");
    ensure!(
        waited < bound + Duration::from_secs(3),
        "bounded wait, took {waited:?}"
    );
    ensure!(
        matches!(&err, DnsError::NotServed { server, .. } if *server == servers[2]),
        "the error names the lagging server: {err}"
    );
    ensure!(err.to_string().contains("shop.umbra.test."), "{err}");

    // It catches up: verification passes on all three, and all serve the same shares.
    nodes[2].1.send_replace(step.clone());
    let verified = verify_weights_served(&servers, &step, "shop", &weights, timeout).await?;
    println!("10% served everywhere: {verified:?}");
    for &server in &servers {
        shares_follow(
            &format!("{server}"),
            &dig_counts(server, "A")?,
            &[(US_EAST, 90), (EU_WEST, 10)],
        )?;
    }

    // A service that disappears from the replicated state disappears from every zone.
    let mut without_api = log.overview();
    without_api.services.remove("api");
    without_api.dns.remove("api");
    without_api.applied_index += 1;
    let without_api = Arc::new(without_api);
    for (_, tx, _) in &nodes {
        tx.send_replace(without_api.clone());
    }
    for (dns, ..) in &nodes {
        wait_until("api removed", || {
            dns.zone().get("api.umbra.test.").is_ok_and(|s| s.is_none())
        })
        .await?;
        let answer = dig(dns.local_addr(), &["api.umbra.test. A"])?;
        ensure!(answer.contains("status: NXDOMAIN"), "{answer}");
        ensure!(dns.zone().get(SHOP)?.is_some(), "shop stays");
    }

    // Clear refusals: an unknown service, no servers, an unbounded wait.
    let err = verify_weights_served(&servers, &step, "nope", &weights, timeout)
        .await
        .expect_err("unknown service");
    ensure!(
        err.to_string().contains("\"nope\"") && err.to_string().contains("shop"),
        "{err}"
    );
    ensure!(
        verify_weights_served(&[], &step, "shop", &weights, timeout)
            .await
            .is_err_and(|e| e.to_string().contains("every orchestrator's DNS address"))
    );
    ensure!(
        verify_weights_served(&servers, &step, "shop", &weights, Duration::from_secs(3600))
            .await
            .is_err_and(|e| matches!(e, DnsError::Invalid(_)))
    );

    // Dropping the state's sender ends each controller; the zone keeps its last content.
    for (dns, tx, task) in nodes {
        drop(tx);
        tokio::time::timeout(APPLY_DEADLINE, task)
            .await
            .context("the controller ends when the state closes")??;
        ensure!(dns.zone().get(SHOP)?.is_some());
        dns.shutdown().await;
    }
    Ok(())
}
