//! The traffic client following DNS: `loadgen` resolves the service name through
//! hickory-resolver against a real BIND `named` (started by the test), honours the record's
//! TTL, and moves to the new address after an RFC 2136 update made with `nsupdate`, with no
//! failed request. Two backends listen on the same port at 127.0.0.2 and 127.0.0.3, as two
//! regions' fronts would.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

mod common;

use anyhow::{Context, Result, ensure};
use umbra_agent::lb::named_backend::NamedBackend;
use umbra_agent::loadgen::{LoadGenerator, RequestSpec, ServiceTarget, Target};
use umbra_testkit::bind::{NamedProcess, Updates, Zone};

const TTL_SECS: u64 = 1;

/// `named` serving umbra.test with shop at 127.0.0.2 (TTL 1 s), open to unsigned updates
/// from loopback.
async fn start_named() -> Result<NamedProcess> {
    NamedProcess::start(&Zone {
        name: "umbra.test".into(),
        records: vec![format!("shop {TTL_SECS} IN A 127.0.0.2")],
        negative_ttl_secs: 1,
        updates: Updates::FromLoopback,
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_follows_a_dns_change_within_the_ttl() -> Result<()> {
    // Same port on two loopback addresses: the DNS answer alone decides where traffic goes.
    let (a_ip, b_ip): (IpAddr, IpAddr) = ("127.0.0.2".parse()?, "127.0.0.3".parse()?);
    let port = umbra_testkit::free_tcp_port_on(&[a_ip, b_ip])?;
    let a = NamedBackend::start("a", SocketAddr::new(a_ip, port)).await?;
    let b = NamedBackend::start("b", SocketAddr::new(b_ip, port))
        .await
        .context("binding 127.0.0.3 on the same port as 127.0.0.2")?;
    let named = start_named().await?;

    let target = Target::Service(ServiceTarget {
        name: "shop.umbra.test.".into(),
        port,
        dns_servers: vec![named.addr()],
    });
    // 1,200 requests at 200 per second.
    let config = common::tallied_load(target, 200.0, Duration::from_secs(6));
    let generator = LoadGenerator::new(config, |_| RequestSpec::get("/"))?;
    let mut progress = generator.progress();
    let run = tokio::spawn(generator.run());

    let before = common::snapshot_at(&mut progress, 2.0).await;
    ensure!(
        !before.by_tally.contains_key("b"),
        "b served before the change: {before:?}"
    );
    named
        .nsupdate("update delete shop.umbra.test. A\nupdate add shop.umbra.test. 1 A 127.0.0.3")?;
    // Every client cache expires within the TTL; one more second covers query and scheduling.
    let settled_at = before.elapsed_secs + TTL_SECS as f64 + 1.0;
    let settled = common::snapshot_at(&mut progress, settled_at).await;
    let report = run.await??;
    println!("{report}");
    let a_after = report.by_tally.get("a").copied().unwrap_or(0)
        - settled.by_tally.get("a").copied().unwrap_or(0);
    assert_eq!(
        a_after, 0,
        "a still served {a_after} requests more than TTL + 1 s after the change"
    );
    assert!(
        report.by_tally.get("b").copied().unwrap_or(0) > 200,
        "{report}"
    );
    assert_eq!(report.counts.failed(), 0, "{report}");
    assert_eq!(report.by_address.len(), 2, "{report}");
    // The servers agree with the client about who served what.
    assert_eq!(
        (a.requests(), b.requests()),
        (report.by_tally["a"], report.by_tally["b"])
    );
    Ok(())
}

/// A name server that never answers: a bound UDP socket nobody reads (a paused or cut-off
/// server), or a closed port (a killed one: an unconnected UDP client is not told).
fn silent_servers() -> Result<(Vec<std::net::UdpSocket>, Vec<SocketAddr>)> {
    let paused: Vec<std::net::UdpSocket> = (0..2)
        .map(|_| std::net::UdpSocket::bind("127.0.0.1:0"))
        .collect::<Result<_, _>>()?;
    let killed = std::net::UdpSocket::bind("127.0.0.1:0")?.local_addr()?;
    let mut addrs = paused
        .iter()
        .map(std::net::UdpSocket::local_addr)
        .collect::<Result<Vec<_>, _>>()?;
    addrs.push(killed);
    Ok((paused, addrs))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_resolves_while_all_but_one_of_its_name_servers_are_silent() -> Result<()> {
    // The demo's client asks the orchestrators' DNS, and a campaign kills or pauses two of
    // three at once: the one left must answer every lookup, whatever order the resolver
    // ranks its servers in. Each run is a fresh resolver (as each second of the demo's
    // traffic is), so each draws its own first ranking.
    let ip: IpAddr = "127.0.0.2".parse()?;
    let port = umbra_testkit::free_tcp_port_on(&[ip])?;
    let _backend = NamedBackend::start("a", SocketAddr::new(ip, port)).await?;
    let named = start_named().await?;
    let (_paused, mut servers) = silent_servers()?;
    servers.push(named.addr());
    for run in 0..5 {
        let target = Target::Service(ServiceTarget {
            name: "shop.umbra.test.".into(),
            port,
            dns_servers: servers.clone(),
        });
        let config = common::tallied_load(target, 50.0, Duration::from_millis(400));
        let report = LoadGenerator::new(config, |_| RequestSpec::get("/"))?
            .run()
            .await?;
        ensure!(report.counts.completed == 20, "run {run}: {report}");
        ensure!(report.counts.failed() == 0, "run {run}: {report}");
    }
    Ok(())
}
