//! Static stability of DNS, through the real binaries: three `umbra-orchestrator` processes
//! whose embedded DNS lists a real BIND `named` as secondary (`[dns] secondaries`, with a
//! `transfer_key_file` written by `tsig-keygen`), and that `named` configured as a secondary
//! of the zone with every orchestrator as a primary and the key.
//!
//! The plan puts `shop` on its primary region's front; BIND, asked with `dig`, answers it.
//! Then the operator moves that region's front to another IP (a plan applied again): the
//! orchestrators' zone changes, they NOTIFY BIND, and BIND answers the new address with the
//! serial the orchestrators serve (its SOA refresh is an hour, so only NOTIFY can make it
//! follow within the test's deadline). An unsigned AXFR, and one signed with another key, are
//! refused with no record of the zone; the signed one is served. Then every orchestrator is
//! SIGKILLed, and BIND still answers the last records.
//!
//! `named`, `dig` or `tsig-keygen` missing fails the test with the command that installs them.
//! Run `cargo build --workspace --bins` first; everything stays on 127.0.0.1.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, ensure};
use umbra_testkit::bind::{NamedProcess, dig, soa_serial};
use umbra_testkit::installed;
use umbra_tests::{
    Cluster, Options, ZONE, free_port, front_ip, transfer_key, unscheduled_plan, wait_for,
};

/// Election, plan and first transfer on a loaded 2-core machine.
const DEADLINE: Duration = Duration::from_secs(60);
const REGION: &str = "us-east";
/// The IP the operator moves `REGION`'s front to.
const MOVED_FRONT: &str = "127.0.0.21";

/// The A records `server` answers for `name`, asked once with `dig` (empty on no answer).
fn answer(server: SocketAddr, name: &str) -> BTreeSet<IpAddr> {
    dig(server, &[format!("{name} A +short +time=1 +tries=1")])
        .map(|out| out.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

/// Waits until `server` answers `name` with exactly `expected`.
async fn wait_for_answer(
    what: &str,
    server: SocketAddr,
    name: &str,
    expected: &BTreeSet<IpAddr>,
) -> anyhow::Result<()> {
    wait_for(what, DEADLINE, || {
        let name = name.to_owned();
        async move {
            let found = tokio::task::spawn_blocking(move || answer(server, &name))
                .await
                .ok()?;
            (found == *expected).then_some(())
        }
    })
    .await
    .with_context(|| format!("last answer of {server}: {:?}", answer(server, name)))
}

/// Each orchestrator's SOA serial (the ones that answer).
fn primary_serials(cluster: &Cluster) -> Vec<u32> {
    cluster
        .nodes
        .values()
        .filter_map(|node| soa_serial(node.dns(), ZONE).ok())
        .collect()
}

/// Waits until BIND's serial is one an orchestrator serves and BIND answers `expected`:
/// BIND then holds the orchestrators' current zone.
async fn wait_for_bind_to_follow(
    what: &str,
    cluster: &Cluster,
    bind: &NamedProcess,
    hostname: &str,
    expected: &BTreeSet<IpAddr>,
) -> anyhow::Result<u32> {
    wait_for_answer(what, bind.addr(), hostname, expected)
        .await
        .with_context(|| format!("named's log: {}", bind.log_tail()))?;
    let serial = soa_serial(bind.addr(), ZONE)?;
    let primaries = primary_serials(cluster);
    println!("{what}: BIND serial {serial}, the orchestrators' {primaries:?}");
    ensure!(
        primaries.contains(&serial),
        "BIND's serial {serial} is none of the orchestrators' {primaries:?}"
    );
    Ok(serial)
}

/// A counter of node `id`'s `/metrics`, e.g. `umbra_dns_notify_total{outcome="answered"}`.
async fn counter(cluster: &Cluster, id: u64, series: &str) -> anyhow::Result<f64> {
    let text = reqwest::get(format!("http://{}/metrics", cluster.nodes[&id].admin()))
        .await?
        .error_for_status()?
        .text()
        .await?;
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .with_context(|| format!("node {id}'s /metrics has no {series}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bind_secondary_follows_by_notify_and_answers_with_every_orchestrator_down()
-> anyhow::Result<()> {
    installed("named", "bind9")?;
    installed("dig", "bind9-dnsutils")?;

    // The transfer key, as an operator makes it.
    let dir = tempfile::tempdir()?;
    let (key_file, secret) = transfer_key(dir.path())?;

    // BIND's port first, so the orchestrators can be told where to send NOTIFY.
    let bind_addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let mut cluster = Cluster::launch(Options {
        dns_secondaries: vec![bind_addr],
        dns_transfer_key_file: Some(key_file.clone()),
        ..Options::orchestrator(3)
    })
    .await?;
    let all: Vec<u64> = cluster.nodes.keys().copied().collect();
    let leader = cluster.wait_for_api_leader(1, &all, DEADLINE).await?;

    let mut plan = unscheduled_plan();
    let shop = plan.services[0].clone();
    assert_eq!(shop.primary_region, REGION);
    let first = BTreeSet::from([front_ip(&plan, REGION)?]);
    cluster
        .api(leader)?
        .apply_plan_toml(&toml::to_string(&plan)?)
        .await
        .context("applying the plan")?;
    for id in &all {
        let server = cluster.nodes[id].dns();
        wait_for_answer(
            &format!("node {id}'s DNS to serve the plan"),
            server,
            &shop.hostname,
            &first,
        )
        .await?;
    }

    // BIND, a secondary of every orchestrator; it answers once it has transferred the zone.
    let primaries: Vec<SocketAddr> = cluster.nodes.values().map(|n| n.dns()).collect();
    let zone = ZONE.trim_end_matches('.');
    let bind = NamedProcess::start_secondary(zone, bind_addr.port(), &primaries, &secret).await?;
    let serial_before = wait_for_bind_to_follow(
        "BIND to answer the plan's records",
        &cluster,
        &bind,
        &shop.hostname,
        &first,
    )
    .await?;

    // The operator moves the region's front: the zone changes, BIND follows through NOTIFY.
    let region = plan
        .regions
        .iter_mut()
        .find(|r| r.name == REGION)
        .context("the plan declares the region")?;
    let port = region.front.parse::<SocketAddr>()?.port();
    region.front = format!("{MOVED_FRONT}:{port}");
    let moved = BTreeSet::from([MOVED_FRONT.parse::<IpAddr>()?]);
    cluster
        .api(leader)?
        .apply_plan_toml(&toml::to_string(&plan)?)
        .await
        .context("applying the plan with the moved front")?;
    let serial_after = wait_for_bind_to_follow(
        "BIND to answer the moved front",
        &cluster,
        &bind,
        &shop.hostname,
        &moved,
    )
    .await?;
    ensure!(
        serial_after > serial_before,
        "the serial went from {serial_before} to {serial_after}"
    );

    // Every orchestrator counted answered NOTIFYs; together they served transfers.
    let mut transfers = 0.0;
    for id in &all {
        let answered = counter(
            &cluster,
            *id,
            "umbra_dns_notify_total{outcome=\"answered\"}",
        )
        .await?;
        ensure!(answered >= 1.0, "node {id} has {answered} answered NOTIFYs");
        for outcome in ["axfr", "ixfr_full"] {
            transfers += counter(
                &cluster,
                *id,
                &format!("umbra_dns_zone_transfers_total{{outcome=\"{outcome}\"}}"),
            )
            .await?;
        }
    }
    ensure!(
        transfers >= 2.0,
        "{transfers} transfers served, expected one per change at least"
    );

    // Transfers: refused unsigned and with another key (no record of the zone in the answer),
    // served when signed with the key.
    let node = cluster.nodes[&leader].dns();
    let moved_ip = MOVED_FRONT.to_string();
    let unsigned = dig(node, &[format!("{ZONE} AXFR +time=2 +tries=1")])?;
    println!("unsigned AXFR:\n{unsigned}");
    ensure!(
        unsigned.contains("Transfer failed") && !unsigned.contains(&moved_ip),
        "an unsigned AXFR must be refused with nothing of the zone: {unsigned}"
    );
    let unsigned_ixfr = dig(node, &[format!("{ZONE} IXFR=1 +tcp +time=2 +tries=1")])?;
    ensure!(
        !unsigned_ixfr.contains(&moved_ip),
        "an unsigned IXFR must be refused: {unsigned_ixfr}"
    );
    let other_key = "hmac-sha256:umbra-xfr:c2VjcmV0LXRoYXQtaXMtbm90LXRoZS1rZXktMTIzNDU=";
    let wrong = dig(
        node,
        &[format!("-y {other_key} {ZONE} AXFR +time=2 +tries=1")],
    )?;
    ensure!(
        !wrong.contains(&moved_ip),
        "an AXFR signed with another secret must be refused: {wrong}"
    );
    let right_key = format!("hmac-sha256:{}:{}", secret.name, secret.secret_base64);
    let signed = dig(
        node,
        &[format!("-y {right_key} {ZONE} AXFR +time=2 +tries=1")],
    )?;
    ensure!(
        signed.contains(&moved_ip) && signed.matches("\tSOA\t").count() == 2,
        "a signed AXFR is the zone between two SOAs: {signed}"
    );
    let refused = counter(
        &cluster,
        leader,
        "umbra_dns_zone_transfers_total{outcome=\"refused_unsigned\"}",
    )
    .await?;
    ensure!(
        refused >= 1.0,
        "the unsigned AXFR was not counted: {refused}"
    );

    // Every orchestrator SIGKILLed: their DNS is gone, BIND still answers the last records.
    for id in &all {
        cluster.kill(*id)?;
    }
    for server in &primaries {
        let server = *server;
        let gone = tokio::task::spawn_blocking(move || answer(server, "shop.umbra.test.")).await?;
        ensure!(
            gone.is_empty(),
            "killed orchestrator {server} still answers {gone:?}"
        );
    }
    for round in 0..20 {
        let found = {
            let (addr, name) = (bind.addr(), shop.hostname.clone());
            tokio::task::spawn_blocking(move || answer(addr, &name)).await?
        };
        ensure!(
            found == moved,
            "round {round}: with every orchestrator down BIND answered {found:?}, expected {moved:?}"
        );
    }
    ensure!(
        soa_serial(bind.addr(), ZONE)? == serial_after,
        "BIND's serial changed with every primary down"
    );
    println!(
        "with every orchestrator down, BIND answered {moved:?} 20 times at serial {serial_after}"
    );
    Ok(())
}
