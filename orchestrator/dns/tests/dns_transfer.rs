//! Zone transfers and NOTIFY of the embedded server, seen by real clients: `dig` gets a full
//! transfer (SOA, NS, every address with a share, SOA) only when it signs with the transfer
//! key, IXFR gets the full zone, unsigned or wrongly signed requests are refused with nothing
//! of the zone; a real BIND secondary copies the zone and follows each change by NOTIFY
//! (every outcome reported to `ZoneEvents`); a secondary that never answers is given up after
//! the policy's attempts and reported `unanswered`.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use hickory_proto::rr::rdata::tsig::TsigAlgorithm;
use rand::RngCore;
use umbra_dns::embedded::{EmbeddedDns, EmbeddedDnsConfig};
use umbra_dns::rfc2136::TsigKey;
use umbra_dns::transfer::{NotifyOutcome, NotifyPolicy, TransferOutcome, ZoneEvents};
use umbra_dns::{WeightedAddress, WeightedRecordSet};
use umbra_testkit::bind::{NamedProcess, TsigSecret, dig, soa_serial};
use umbra_testkit::{free_port, wait_for};

const ZONE: &str = "umbra.test.";
const DEADLINE: Duration = Duration::from_secs(30);

fn random_key(name: &str) -> TsigKey {
    let mut secret = vec![0_u8; 32];
    rand::rng().fill_bytes(&mut secret);
    TsigKey {
        name: name.into(),
        algorithm: TsigAlgorithm::HmacSha256,
        secret,
    }
}

fn dig_key(key: &TsigKey) -> String {
    format!("hmac-sha256:{}:{}", key.name, key.secret_base64())
}

fn shop(addresses: &[(&str, u8)]) -> WeightedRecordSet {
    WeightedRecordSet::new(
        "shop.umbra.test.",
        60,
        addresses
            .iter()
            .map(|(a, w)| WeightedAddress {
                addr: a.parse().unwrap(),
                weight: *w,
            })
            .collect(),
    )
}

#[derive(Default)]
struct Recorded {
    notify: Mutex<Vec<(SocketAddr, NotifyOutcome)>>,
    transfers: Mutex<Vec<TransferOutcome>>,
}

impl ZoneEvents for Recorded {
    fn notify(&self, secondary: SocketAddr, outcome: NotifyOutcome) {
        self.notify.lock().unwrap().push((secondary, outcome));
    }
    fn transfer(&self, _client: SocketAddr, outcome: TransferOutcome) {
        self.transfers.lock().unwrap().push(outcome);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfers_are_served_only_when_signed_and_ixfr_gets_the_full_zone() -> Result<()> {
    let key = random_key("umbra-xfr");
    let events = Arc::new(Recorded::default());
    let mut config = EmbeddedDnsConfig::new(ZONE, "127.0.0.1:0".parse()?);
    config.transfer_key = Some(key.clone());
    let dns = EmbeddedDns::start_with_events(config, events.clone()).await?;
    let server = dns.local_addr();
    dns.zone().replace_all(&[shop(&[
        ("127.0.0.11", 9),
        ("127.0.0.12", 1),
        ("127.0.0.13", 0),
    ])])?;

    let signed = dig(server, &[format!("-y {} {ZONE} AXFR", dig_key(&key))])?;
    println!("signed AXFR:\n{signed}");
    let records: Vec<&str> = signed
        .lines()
        .filter(|l| !l.starts_with(';') && !l.trim().is_empty())
        .collect();
    let types: Vec<&str> = records
        .iter()
        .filter_map(|l| l.split_whitespace().nth(3))
        .filter(|t| *t != "TSIG")
        .collect();
    ensure!(
        types == ["SOA", "NS", "A", "A", "SOA"],
        "the transfer is SOA, NS, the addresses with a share, SOA: {types:?}"
    );
    ensure!(signed.contains("127.0.0.11") && signed.contains("127.0.0.12"));
    ensure!(!signed.contains("127.0.0.13"), "weight 0 is not served");
    ensure!(
        !signed.contains("tsig verify failure") && !signed.contains("Transfer failed"),
        "dig verifies our signature: {signed}"
    );

    let ixfr = dig(
        server,
        &[format!("-y {} {ZONE} IXFR=1 +tcp", dig_key(&key))],
    )?;
    ensure!(
        ixfr.contains("127.0.0.11") && ixfr.matches("\tSOA\t").count() == 2,
        "IXFR is answered with the full zone: {ixfr}"
    );

    let unsigned = dig(server, &[format!("{ZONE} AXFR")])?;
    ensure!(
        unsigned.contains("Transfer failed") && !unsigned.contains("127.0.0.11"),
        "{unsigned}"
    );
    let other = random_key("umbra-xfr");
    let wrong = dig(server, &[format!("-y {} {ZONE} AXFR", dig_key(&other))])?;
    ensure!(!wrong.contains("127.0.0.11"), "{wrong}");
    let unknown = random_key("someone-else");
    let unknown = dig(server, &[format!("-y {} {ZONE} AXFR", dig_key(&unknown))])?;
    ensure!(!unknown.contains("127.0.0.11"), "{unknown}");

    // Ordinary queries are unchanged, and a signed one gets a signed answer.
    let a = dig(server, &["shop.umbra.test. A +short"])?;
    ensure!(a.trim() == "127.0.0.11" || a.trim() == "127.0.0.12", "{a}");
    let signed_soa = dig(server, &[format!("-y {} {ZONE} SOA", dig_key(&key))])?;
    ensure!(
        signed_soa.contains("status: NOERROR")
            && !signed_soa.contains("tsig verify failure")
            && !signed_soa.contains("Couldn't verify"),
        "{signed_soa}"
    );

    let transfers = events.transfers.lock().unwrap().clone();
    println!("transfer outcomes: {transfers:?}");
    ensure!(
        transfers
            == [
                TransferOutcome::Axfr,
                TransferOutcome::IxfrFull,
                TransferOutcome::RefusedUnsigned,
                TransferOutcome::RefusedBadTsig,
                TransferOutcome::RefusedBadTsig,
            ],
        "{transfers:?}"
    );
    dns.shutdown().await;

    // Without a transfer key, nothing is transferred, signed or not.
    let closed = EmbeddedDns::start(EmbeddedDnsConfig::new(ZONE, "127.0.0.1:0".parse()?)).await?;
    closed.zone().replace_all(&[shop(&[("127.0.0.11", 1)])])?;
    let refused = dig(
        closed.local_addr(),
        &[format!("-y {} {ZONE} AXFR", dig_key(&key))],
    )?;
    ensure!(!refused.contains("127.0.0.11"), "{refused}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bind_secondary_copies_the_zone_and_follows_each_change_by_notify() -> Result<()> {
    let key = random_key("umbra-xfr");
    let events = Arc::new(Recorded::default());
    let bind_port = free_port()?;
    let bind_addr = SocketAddr::from(([127, 0, 0, 1], bind_port));
    let config = EmbeddedDnsConfig::new(ZONE, "127.0.0.1:0".parse()?)
        .with_secondaries(vec![bind_addr], key.clone());
    let dns = EmbeddedDns::start_with_events(config, events.clone()).await?;
    dns.zone()
        .replace_all_at(&[shop(&[("127.0.0.11", 1)])], 40)?;
    ensure!(dns.zone().serial() == 40, "the serial is the version given");

    let secret = TsigSecret {
        name: key.name.clone(),
        algorithm: "hmac-sha256".into(),
        secret_base64: key.secret_base64(),
    };
    let bind = NamedProcess::start_secondary("umbra.test", bind_port, &[dns.local_addr()], &secret)
        .await?;
    ensure!(soa_serial(bind.addr(), ZONE)? == 40);

    // Each change reaches BIND by NOTIFY (its SOA refresh is an hour away).
    for (version, addresses) in [
        (45, vec![("127.0.0.11", 9), ("127.0.0.12", 1)]),
        (50, vec![("127.0.0.11", 0), ("127.0.0.12", 1)]),
    ] {
        dns.zone().replace_all_at(&[shop(&addresses)], version)?;
        let expected: Vec<&str> = addresses
            .iter()
            .filter(|(_, w)| *w > 0)
            .map(|(a, _)| *a)
            .collect();
        wait_for(
            &format!("BIND to serve serial {version}"),
            DEADLINE,
            || async {
                let serial = soa_serial(bind.addr(), ZONE).ok()?;
                (serial == version as u32).then_some(())
            },
        )
        .await
        .with_context(|| bind.log_tail())?;
        let answer = dig(bind.addr(), &["shop.umbra.test. A +short"])?;
        let mut served: Vec<&str> = answer.lines().map(str::trim).collect();
        served.sort();
        ensure!(
            served == expected,
            "BIND serves {served:?}, expected {expected:?}"
        );
    }
    let transfers = events.transfers.lock().unwrap().clone();
    println!("BIND's transfers: {transfers:?}");
    ensure!(
        transfers.len() >= 3
            && transfers
                .iter()
                .all(|t| matches!(t, TransferOutcome::Axfr | TransferOutcome::IxfrFull)),
        "one signed transfer per version at least, none refused: {transfers:?}"
    );
    // An older version cannot lower the serial (a restarted primary, or a late state).
    dns.zone()
        .replace_all_at(&[shop(&[("127.0.0.13", 1)])], 7)?;
    ensure!(dns.zone().serial() == 51, "{}", dns.zone().serial());

    wait_for("the NOTIFY outcomes", DEADLINE, || async {
        let notify = events.notify.lock().unwrap().clone();
        (notify
            .iter()
            .filter(|(_, o)| *o == NotifyOutcome::Answered)
            .count()
            >= 2)
            .then_some(())
    })
    .await?;
    let notify = events.notify.lock().unwrap().clone();
    ensure!(
        notify
            .iter()
            .all(|(s, o)| *s == bind_addr && *o == NotifyOutcome::Answered),
        "{notify:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_secondary_is_given_up_after_the_attempts_and_reported() -> Result<()> {
    // A socket that takes NOTIFYs and never answers, counting them.
    let silent = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
    let silent_addr = silent.local_addr()?;
    let received = Arc::new(Mutex::new(0_u32));
    let listener = tokio::spawn({
        let received = received.clone();
        async move {
            let mut buf = [0_u8; 4096];
            while silent.recv(&mut buf).await.is_ok() {
                *received.lock().unwrap() += 1;
            }
        }
    });
    let events = Arc::new(Recorded::default());
    let mut config = EmbeddedDnsConfig::new(ZONE, "127.0.0.1:0".parse()?)
        .with_secondaries(vec![silent_addr], random_key("umbra-xfr"));
    config.notify = NotifyPolicy {
        attempts: 3,
        first_timeout: Duration::from_millis(50),
        max_timeout: Duration::from_millis(100),
    };
    let dns = EmbeddedDns::start_with_events(config, events.clone()).await?;
    dns.zone().replace_all(&[shop(&[("127.0.0.11", 1)])])?;
    wait_for("the NOTIFY to be given up", DEADLINE, || async {
        (!events.notify.lock().unwrap().is_empty()).then_some(())
    })
    .await?;
    let notify = events.notify.lock().unwrap().clone();
    ensure!(
        notify == [(silent_addr, NotifyOutcome::Unanswered)],
        "{notify:?}"
    );
    // One send per attempt (waited for: the listener may not have read the last one yet).
    wait_for("the three NOTIFY sends to arrive", DEADLINE, || async {
        (*received.lock().unwrap() == 3).then_some(())
    })
    .await?;
    listener.abort();

    // Secondaries without a key, or listed twice, are refused with what to fix.
    let no_key = EmbeddedDnsConfig {
        secondaries: vec![silent_addr],
        ..EmbeddedDnsConfig::new(ZONE, "127.0.0.1:0".parse()?)
    };
    let error = no_key.validate().expect_err("no key").to_string();
    ensure!(error.contains("transfer key"), "{error}");
    let twice = EmbeddedDnsConfig::new(ZONE, "127.0.0.1:0".parse()?)
        .with_secondaries(vec![silent_addr, silent_addr], random_key("k"));
    let error = twice.validate().expect_err("twice").to_string();
    ensure!(error.contains("listed twice"), "{error}");
    Ok(())
}
