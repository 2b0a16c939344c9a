//! HAProxy driven through its runtime API: a real `haproxy` (Debian's 2.6) started by the test
//! with a config the test writes, the same weight sequence as the embedded proxy test under
//! 500 req/s, shares read back from `show stat`, drain, and the errors a user gets for a
//! server that is not in the config.

use std::net::SocketAddr;

mod common;

use anyhow::Result;
use umbra_agent::lb::haproxy::{Haproxy, HaproxyConfig};
use umbra_agent::lb::named_backend::{BACKEND_HEADER, NamedBackend};
use umbra_agent::lb::{BackendState, BackendWeight, LbError, LoadBalancer};
use umbra_testkit::haproxy::{HaproxyProcess, Server};

const RATE_PER_SEC: f64 = 500.0;

/// `haproxy` with backend `be` of a (weight 100), b (0) and a spare slot (0, on a port where
/// nothing listens), and the load balancer driving it through its admin socket.
async fn start_haproxy(a: SocketAddr, b: SocketAddr) -> Result<(HaproxyProcess, Haproxy)> {
    let process = HaproxyProcess::start(
        "be",
        &[
            Server {
                name: "a",
                addr: a,
                weight: 100,
            },
            Server {
                name: "b",
                addr: b,
                weight: 0,
            },
            Server {
                name: "spare",
                addr: "127.0.0.1:1".parse()?,
                weight: 0,
            },
        ],
    )
    .await?;
    let lb = Haproxy::new(HaproxyConfig::new(process.admin_socket().to_owned(), "be"))?;
    anyhow::ensure!(lb.servers().await?.len() == 3, "haproxy lists 3 servers");
    Ok((process, lb))
}

async fn requests_by_server(lb: &Haproxy) -> Result<(u64, u64)> {
    let stats = lb.stats().await?;
    let get = |n: &str| {
        stats
            .iter()
            .find(|s| s.name == n)
            .map(|s| s.requests)
            .unwrap_or(0)
    };
    Ok((get("a"), get("b")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_weight_steps_read_back_from_show_stat() -> Result<()> {
    let a = NamedBackend::start("a", "127.0.0.1:0".parse()?).await?;
    let b = NamedBackend::start("b", "127.0.0.1:0".parse()?).await?;
    let (haproxy, lb) = start_haproxy(a.local_addr(), b.local_addr()).await?;
    let report = common::weight_steps_under_load(
        &lb,
        haproxy.frontend(),
        (a.local_addr(), b.local_addr()),
        RATE_PER_SEC,
        "requests HAProxy's show stat counted",
        |_| requests_by_server(&lb),
    )
    .await?;
    println!("{report}");
    assert_eq!(report.counts.failed(), 0, "{report}");
    assert!(
        report.achieved_rate_per_sec >= 0.9 * RATE_PER_SEC,
        "{report}"
    );
    // What HAProxy counted is what the client received.
    let (a_total, b_total) = requests_by_server(&lb).await?;
    assert_eq!(a_total + b_total, report.counts.ok);
    assert_eq!(report.by_tally.get("b").copied().unwrap_or(0), b_total);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_drain_and_user_errors() -> Result<()> {
    let a = NamedBackend::start("a", "127.0.0.1:0".parse()?).await?;
    let b = NamedBackend::start("b", "127.0.0.1:0".parse()?).await?;
    let (haproxy, lb) = start_haproxy(a.local_addr(), b.local_addr()).await?;

    // Moving a server slot to a new address works through `set server ... addr`.
    let c = NamedBackend::start("c", "127.0.0.1:0".parse()?).await?;
    lb.set_backends(&[
        BackendWeight::new("a", a.local_addr(), 1),
        BackendWeight::new("spare", c.local_addr(), 1),
    ])
    .await?;
    let stats = lb.stats().await?;
    let spare = stats.iter().find(|s| s.name == "spare").unwrap();
    assert_eq!(
        (spare.addr, spare.weight),
        (Some(c.local_addr()), 1),
        "{stats:?}"
    );
    let b_row = stats.iter().find(|s| s.name == "b").unwrap();
    assert_eq!(
        (b_row.weight, b_row.state),
        (0, BackendState::Draining),
        "left-out servers get weight 0"
    );

    let client = reqwest::Client::new();
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..10 {
        let r = client
            .get(format!("http://{}/", haproxy.frontend()))
            .send()
            .await?;
        seen.insert(r.headers()[BACKEND_HEADER].to_str()?.to_string());
    }
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), vec!["a", "c"]);

    lb.drain("spare").await?;
    let stats = lb.stats().await?;
    assert_eq!(
        stats.iter().find(|s| s.name == "spare").unwrap().state,
        BackendState::Draining,
        "{stats:?}"
    );
    for _ in 0..10 {
        let r = client
            .get(format!("http://{}/", haproxy.frontend()))
            .send()
            .await?;
        assert_eq!(r.headers()[BACKEND_HEADER], "a");
    }

    let unknown = lb
        .set_backends(&[BackendWeight::new("zzz", a.local_addr(), 1)])
        .await;
    assert!(
        matches!(&unknown, Err(LbError::UnknownBackend(m)) if m.contains("declare it in haproxy.cfg")),
        "{unknown:?}"
    );
    assert!(matches!(
        lb.drain("zzz").await,
        Err(LbError::UnknownBackend(_))
    ));
    // The runtime API's own refusals surface with HAProxy's words.
    let refused = lb.command("set server be/nosuch weight 1").await?;
    assert!(!refused.trim().is_empty());
    Ok(())
}
