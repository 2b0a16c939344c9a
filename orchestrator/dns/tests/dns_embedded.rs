//! The embedded authoritative server seen by real clients: `dig` (bind9-dnsutils) and
//! hickory-resolver both get weighted answers whose shares over 1,000 queries match the
//! weights within ±5 %, the TTL is the one set, the SOA serial bumps on each change, and
//! verification waits for the new answer.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use hickory_proto::rr::{RData, RecordType};
use umbra_dns::embedded::{EmbeddedDns, EmbeddedDnsConfig};
use umbra_dns::verify::{resolver_for, verify_served};
use umbra_dns::{DnsError, DnsProvider, WeightedAddress, WeightedRecordSet};
use umbra_testkit::bind::{self, dig};

const QUERIES: usize = 1000;

fn wa(addr: &str, weight: u8) -> WeightedAddress {
    WeightedAddress {
        addr: addr.parse().unwrap(),
        weight,
    }
}

fn shares_within(
    counts: &BTreeMap<IpAddr, usize>,
    set: &WeightedRecordSet,
    v4: bool,
    tolerance_pct: f64,
) -> Result<()> {
    let family: Vec<&WeightedAddress> = set
        .addresses
        .iter()
        .filter(|a| a.addr.is_ipv4() == v4)
        .collect();
    let total_weight: f64 = family.iter().map(|a| f64::from(a.weight)).sum();
    let total: usize = counts.values().sum();
    ensure!(
        total == QUERIES,
        "expected {QUERIES} answers, got {total}: {counts:?}"
    );
    for a in family {
        let got = 100.0 * *counts.get(&a.addr).unwrap_or(&0) as f64 / total as f64;
        let want = 100.0 * f64::from(a.weight) / total_weight;
        println!("{}: {got:.1}% (weight says {want:.1}%)", a.addr);
        ensure!(
            (got - want).abs() <= tolerance_pct,
            "{} got {got:.1}%, weight says {want:.1}%",
            a.addr
        );
    }
    Ok(())
}

fn soa_serial(server: SocketAddr) -> Result<u32> {
    bind::soa_serial(server, "umbra.test.")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dig_and_resolver_see_weighted_answers() -> Result<()> {
    let dns = EmbeddedDns::start(EmbeddedDnsConfig::new(
        "umbra.test.",
        "127.0.0.1:0".parse()?,
    ))
    .await?;
    let server = dns.local_addr();
    let set = WeightedRecordSet::new(
        "shop.umbra.test.",
        30,
        vec![
            wa("127.0.0.2", 70),
            wa("127.0.0.3", 30),
            wa("127.0.0.4", 0),
            wa("::2", 1),
        ],
    );
    let serial_before = soa_serial(server)?;
    dns.set_record_set(&set).await?;
    let verified =
        verify_served(&dns.authoritative_servers(), &set, Duration::from_secs(10)).await?;
    println!("verified: {verified:?}");
    assert_eq!(
        soa_serial(server)?,
        serial_before + 1,
        "the serial bumps on a change"
    );
    assert_eq!(dns.record_set("shop.umbra.test").await?, Some(set.clone()));

    // hickory-resolver, cache bypassed so every query reaches the server.
    let resolver = resolver_for(server)?;
    let mut counts: BTreeMap<IpAddr, usize> = BTreeMap::new();
    for _ in 0..QUERIES {
        resolver.clear_cache();
        let lookup = resolver.lookup("shop.umbra.test.", RecordType::A).await?;
        let answers: Vec<_> = lookup.answers().iter().collect();
        assert_eq!(answers.len(), 1, "one address per answer");
        assert_eq!(answers[0].ttl, 30);
        if let RData::A(a) = &answers[0].data {
            *counts.entry(IpAddr::V4(a.0)).or_default() += 1;
        }
    }
    shares_within(&counts, &set, true, 5.0)?;
    assert!(
        !counts.contains_key(&"127.0.0.4".parse::<IpAddr>()?),
        "weight 0 is never served"
    );

    // dig, 1,000 queries in one batch process.
    let lines: Vec<String> = (0..QUERIES)
        .map(|_| "shop.umbra.test. A +short".to_string())
        .collect();
    let out = dig(server, &lines)?;
    let mut dig_counts: BTreeMap<IpAddr, usize> = BTreeMap::new();
    for line in out.lines().filter(|l| !l.trim().is_empty()) {
        *dig_counts
            .entry(
                line.trim()
                    .parse()
                    .with_context(|| format!("dig printed {line:?}"))?,
            )
            .or_default() += 1;
    }
    shares_within(&dig_counts, &set, true, 5.0)?;

    // AAAA answers come from the IPv6 addresses only; TTL as set.
    let aaaa = dig(server, &["shop.umbra.test. AAAA +noall +answer"])?;
    assert!(aaaa.contains("30\tIN\tAAAA\t::2"), "{aaaa}");

    // Names outside the data: NXDOMAIN inside the zone, REFUSED outside it.
    assert!(dig(server, &["nope.umbra.test. A"])?.contains("status: NXDOMAIN"));
    assert!(dig(server, &["example.com. A"])?.contains("status: REFUSED"));
    // A name with only A records answers NODATA (NOERROR, empty) for TXT.
    assert!(dig(server, &["shop.umbra.test. TXT"])?.contains("status: NOERROR"));

    // The cutover's last step: everything to the new address, verified, serial bumped again.
    let moved = WeightedRecordSet::new(
        "shop.umbra.test.",
        30,
        vec![wa("127.0.0.2", 0), wa("127.0.0.3", 100)],
    );
    dns.set_record_set(&moved).await?;
    verify_served(&[server], &moved, Duration::from_secs(10)).await?;
    assert_eq!(soa_serial(server)?, serial_before + 2);
    let out = dig(server, &["shop.umbra.test. A +short"; 50])?;
    assert!(
        out.lines()
            .filter(|l| !l.is_empty())
            .all(|l| l.trim() == "127.0.0.3"),
        "{out}"
    );
    dns.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verification_times_out_with_a_clear_error_and_bad_sets_are_refused() -> Result<()> {
    let dns = EmbeddedDns::start(EmbeddedDnsConfig::new(
        "umbra.test.",
        "127.0.0.1:0".parse()?,
    ))
    .await?;
    let served = WeightedRecordSet::new("api.umbra.test.", 60, vec![wa("127.0.0.5", 1)]);
    dns.set_record_set(&served).await?;
    // Verifying a set that was never published must fail within the bound, naming the server.
    let never = WeightedRecordSet::new("api.umbra.test.", 60, vec![wa("127.0.0.6", 1)]);
    // The outer timeout only catches a verification that never ends; it is no latency claim.
    let err = tokio::time::timeout(
        Duration::from_secs(60),
        verify_served(&[dns.local_addr()], &never, Duration::from_millis(800)),
    )
    .await
    .expect("verification ends at its own bound")
    .unwrap_err();
    assert!(
        matches!(&err, DnsError::NotServed { server, .. } if *server == dns.local_addr()),
        "{err}"
    );
    assert!(err.to_string().contains("stale address 127.0.0.5"), "{err}");

    for bad in [
        WeightedRecordSet::new("shop.other.test.", 60, vec![wa("127.0.0.5", 1)]),
        WeightedRecordSet::new("umbra.test.", 60, vec![wa("127.0.0.5", 1)]),
        WeightedRecordSet::new("api.umbra.test.", 0, vec![wa("127.0.0.5", 1)]),
        WeightedRecordSet::new("api.umbra.test.", 60, vec![wa("127.0.0.5", 0)]),
        WeightedRecordSet::new("api.umbra.test.", 60, vec![]),
        WeightedRecordSet::new(
            "api.umbra.test.",
            60,
            vec![wa("127.0.0.5", 1), wa("127.0.0.5", 2)],
        ),
    ] {
        let result = dns.set_record_set(&bad).await;
        assert!(
            matches!(result, Err(DnsError::Invalid(_))),
            "{bad:?} should be refused: {result:?}"
        );
    }
    // Nothing changed.
    assert_eq!(dns.record_set("api.umbra.test.").await?, Some(served));
    dns.shutdown().await;
    Ok(())
}
