//! Verification that a record set change is served: hickory-resolver asks each authoritative
//! server (all at once), bypassing its cache, until the answers are exactly the new set (every served
//! address seen, nothing else, the new TTL), or a deadline passes with a clear error.
//!
//! A weighted server answers one address per query, so one round asks enough times to see
//! every address at least once given the weights; a standard server answers the whole RRset
//! at once. Rounds start over on any stale answer. This module must not change records.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use hickory_net::runtime::TokioRuntimeProvider;
use hickory_proto::rr::{RData, RecordType};
use hickory_resolver::TokioResolver;
use hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use serde::Serialize;

use super::{DnsError, WeightedRecordSet};

/// Pause between rounds unless configured: a primary usually serves an update within
/// milliseconds; secondaries follow NOTIFY within about a second.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Most queries in one round for one family, so extreme weight ratios cannot make a round
/// unbounded (a 255:1 split needs 256).
const MAX_QUERIES_PER_ROUND: u64 = 512;
/// Time for one query.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);

/// How one server was confirmed.
#[derive(Clone, Debug, Serialize)]
pub struct ServerVerified {
    pub server: SocketAddr,
    pub rounds: u32,
    pub queries: u64,
    pub elapsed_ms: u64,
}

/// Builds a resolver that asks exactly `server` (UDP, then TCP on truncation).
pub fn resolver_for(server: SocketAddr) -> Result<TokioResolver, DnsError> {
    let mut udp = ConnectionConfig::udp();
    udp.port = server.port();
    let mut tcp = ConnectionConfig::tcp();
    tcp.port = server.port();
    let mut config = ResolverConfig::default();
    config
        .name_servers
        .push(NameServerConfig::new(server.ip(), true, vec![udp, tcp]));
    let mut opts = ResolverOpts::default();
    opts.timeout = QUERY_TIMEOUT;
    opts.attempts = 2;
    opts.use_hosts_file = ResolveHosts::Never;
    opts.recursion_desired = false;
    TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
        .with_options(opts)
        .build()
        .map_err(|e| DnsError::Exchange {
            server,
            reason: format!("building the resolver: {e}"),
        })
}

/// Waits until every server serves `set`, at most `timeout` in total. The servers are asked
/// concurrently; the first one that runs out of time is the error (results in `servers`
/// order).
pub async fn verify_served(
    servers: &[SocketAddr],
    set: &WeightedRecordSet,
    timeout: Duration,
) -> Result<Vec<ServerVerified>, DnsError> {
    let started = Instant::now();
    futures::future::try_join_all(
        servers
            .iter()
            .map(|&server| verify_one(server, set, started + timeout, started)),
    )
    .await
}

async fn verify_one(
    server: SocketAddr,
    set: &WeightedRecordSet,
    deadline: Instant,
    started: Instant,
) -> Result<ServerVerified, DnsError> {
    let resolver = resolver_for(server)?;
    let expected: BTreeSet<IpAddr> = set.served_addresses().into_iter().collect();
    let mut rounds = 0_u32;
    let mut queries = 0_u64;
    let mut last_seen;
    loop {
        rounds += 1;
        // A silent server must not stretch the wait past the deadline (one query may take
        // QUERY_TIMEOUT per attempt).
        let answered = tokio::time::timeout_at(
            deadline.into(),
            round(&resolver, set, &expected, &mut queries),
        )
        .await
        .unwrap_or_else(|_| Err("no complete round of answers before the deadline".into()));
        match answered {
            Ok(()) => {
                return Ok(ServerVerified {
                    server,
                    rounds,
                    queries,
                    elapsed_ms: started.elapsed().as_millis() as u64,
                });
            }
            Err(seen) => last_seen = seen,
        }
        if Instant::now() + DEFAULT_POLL_INTERVAL > deadline {
            return Err(DnsError::NotServed {
                server,
                name: set.name.clone(),
                waited_ms: started.elapsed().as_millis() as u64,
                last_seen,
            });
        }
        tokio::time::sleep(DEFAULT_POLL_INTERVAL).await;
    }
}

/// One round: `Ok` if the answers are exactly the new set, else a description of what was seen.
async fn round(
    resolver: &TokioResolver,
    set: &WeightedRecordSet,
    expected: &BTreeSet<IpAddr>,
    queries: &mut u64,
) -> Result<(), String> {
    let mut seen = BTreeSet::new();
    for (rtype, v4) in [(RecordType::A, true), (RecordType::AAAA, false)] {
        let family: Vec<_> = set
            .addresses
            .iter()
            .filter(|a| a.weight > 0 && a.addr.is_ipv4() == v4)
            .collect();
        if family.is_empty() {
            continue;
        }
        let total: u64 = family.iter().map(|a| u64::from(a.weight)).sum();
        let min = family
            .iter()
            .map(|a| u64::from(a.weight))
            .min()
            .unwrap_or(1)
            .max(1);
        let needed = total.div_ceil(min).clamp(1, MAX_QUERIES_PER_ROUND);
        let want: BTreeSet<IpAddr> = family.iter().map(|a| a.addr).collect();
        let mut got = BTreeSet::new();
        for _ in 0..needed {
            // Each query must reach the server, not the resolver's cache.
            resolver.clear_cache();
            *queries += 1;
            let lookup = resolver
                .lookup(set.name.as_str(), rtype)
                .await
                .map_err(|e| format!("{rtype} query failed: {e}"))?;
            for record in lookup.answers() {
                let addr = match &record.data {
                    RData::A(a) => IpAddr::V4(a.0),
                    RData::AAAA(a) => IpAddr::V6(a.0),
                    _ => continue,
                };
                if !expected.contains(&addr) {
                    return Err(format!("stale address {addr}"));
                }
                // The cache is bypassed, so the TTL is the one the server holds.
                if record.ttl != set.ttl_secs {
                    return Err(format!(
                        "{addr} with TTL {} s instead of {} s",
                        record.ttl, set.ttl_secs
                    ));
                }
                got.insert(addr);
            }
            if got == want {
                break;
            }
        }
        if got != want {
            return Err(format!("only {got:?} of {want:?} after {needed} queries"));
        }
        seen.extend(got);
    }
    if &seen == expected {
        Ok(())
    } else {
        Err(format!("{seen:?} instead of {expected:?}"))
    }
}
