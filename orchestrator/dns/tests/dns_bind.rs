//! RFC 2136 + TSIG against a real BIND 9.18 `named` started by the test on a loopback port,
//! with a zone and a key the test writes: a signed update is applied, verified through
//! hickory-resolver and read back; an unsigned update is REFUSED and one signed with a wrong
//! key gets NOTAUTH, and neither changes what is served.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Result;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::tsig::TsigAlgorithm;
use rand::RngCore;
use umbra_dns::rfc2136::{Rfc2136Config, Rfc2136Provider, TsigKey};
use umbra_dns::verify::verify_served;
use umbra_dns::{DnsError, DnsProvider, WeightedAddress, WeightedRecordSet};
use umbra_testkit::bind::{NamedProcess, TsigSecret, Updates, Zone};

const ZONE: &str = "umbra.test.";
const KEY_NAME: &str = "umbra-update";

fn random_key() -> TsigKey {
    let mut secret = vec![0_u8; 32];
    rand::rng().fill_bytes(&mut secret);
    TsigKey {
        name: KEY_NAME.to_string(),
        algorithm: TsigAlgorithm::HmacSha256,
        secret,
    }
}

/// `named` serving umbra.test (shop at 127.0.0.9), taking only updates signed with `key`.
async fn start_named(key: &TsigKey) -> Result<NamedProcess> {
    NamedProcess::start(&Zone {
        name: "umbra.test".into(),
        records: vec!["shop 300 IN A 127.0.0.9".into()],
        negative_ttl_secs: 30,
        updates: Updates::SignedWith(TsigSecret {
            name: KEY_NAME.into(),
            algorithm: "hmac-sha256".into(),
            secret_base64: key.secret_base64(),
        }),
    })
    .await
}

fn wa(addr: &str, weight: u8) -> WeightedAddress {
    WeightedAddress {
        addr: addr.parse().unwrap(),
        weight,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_update_is_applied_and_unsigned_or_wrong_key_is_refused() -> Result<()> {
    let key = random_key();
    let named = start_named(&key).await?;
    let provider = Rfc2136Provider::new(Rfc2136Config::new(named.addr(), ZONE, Some(key.clone())))?;

    let mut set = WeightedRecordSet::new(
        "shop.umbra.test.",
        60,
        vec![
            wa("127.0.0.2", 90),
            wa("127.0.0.3", 10),
            wa("127.0.0.4", 0),
            wa("::2", 5),
        ],
    );
    provider.set_record_set(&set).await?;
    let verified = verify_served(
        &provider.authoritative_servers(),
        &set,
        Duration::from_secs(10),
    )
    .await?;
    println!("verified: {verified:?}");
    set.addresses.sort();
    assert_eq!(
        provider.record_set("shop.umbra.test.").await?,
        Some(set.clone()),
        "read back exactly"
    );

    // Unsigned: BIND refuses (allow-update names only the key).
    let unsigned = Rfc2136Provider::new(Rfc2136Config::new(named.addr(), ZONE, None))?;
    let attack = WeightedRecordSet::new("shop.umbra.test.", 60, vec![wa("127.0.0.66", 1)]);
    assert_eq!(
        unsigned.send_update(&attack, false).await?,
        ResponseCode::Refused
    );
    let via_trait = unsigned.set_record_set(&attack).await;
    assert!(
        matches!(&via_trait, Err(DnsError::Rejected { rcode, .. }) if rcode.contains("REFUSED")),
        "{via_trait:?}"
    );

    // Same key name, wrong secret: BIND answers NOTAUTH (TSIG BADSIG).
    let wrong = Rfc2136Provider::new(Rfc2136Config::new(named.addr(), ZONE, Some(random_key())))?;
    assert_eq!(
        wrong.send_update(&attack, true).await?,
        ResponseCode::NotAuth
    );
    let via_trait = wrong.set_record_set(&attack).await;
    assert!(
        matches!(&via_trait, Err(DnsError::Rejected { rcode, .. }) if rcode.contains("NOTAUTH")),
        "{via_trait:?}"
    );

    // Neither refused update changed what is served.
    verify_served(&[named.addr()], &set, Duration::from_secs(5)).await?;
    assert_eq!(provider.record_set("shop.umbra.test.").await?, Some(set));

    // A second signed change replaces the whole set in one update.
    let moved = WeightedRecordSet::new("shop.umbra.test.", 30, vec![wa("127.0.0.3", 100)]);
    provider.set_record_set(&moved).await?;
    verify_served(&[named.addr()], &moved, Duration::from_secs(10)).await?;
    assert_eq!(provider.record_set("shop.umbra.test.").await?, Some(moved));
    Ok(())
}

#[test]
fn key_secrets_are_never_printed_and_short_keys_are_refused() {
    let key = TsigKey::from_base64(
        KEY_NAME,
        TsigAlgorithm::HmacSha256,
        "c2VjcmV0LXNlY3JldC1zZWNyZXQ=",
    )
    .unwrap();
    assert!(!format!("{key:?}").contains("c2Vj"));
    assert!(!format!("{key:?}").contains("secret-secret"));
    let short = TsigKey {
        secret: vec![1, 2, 3],
        ..key
    };
    let addr: SocketAddr = "127.0.0.1:53".parse().unwrap();
    assert!(matches!(
        Rfc2136Provider::new(Rfc2136Config::new(addr, ZONE, Some(short))),
        Err(DnsError::Invalid(m)) if m.contains("tsig-keygen")
    ));
    assert!(TsigKey::from_base64(KEY_NAME, TsigAlgorithm::HmacSha256, "not base64!").is_err());
}
