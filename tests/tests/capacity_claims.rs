//! Capacity claims through the real binaries (three `umbra-orchestrator`, three `umbra-agent`,
//! `umbra-sample` instances under the process provider) and the `umbra` CLI, as an operator
//! would use them: the demo's stateful `shop` in its home region, whose region allows 3
//! instances.
//!
//! A reservation for a window a minute ahead makes the pool provision dormant instances one
//! lead time before it; a request past the region's limit is refused with a message saying how
//! much fits, and changes nothing; once the reservation is released, a request for 3 serving
//! instances is served from the dormant ones (`umbra capacity request --wait --json` says which
//! instance was serving, dormant or launched cold, and when each served); `umbra predict`
//! shows the leader's forecast for the pool. Times are printed,
//! never bounded. A second test opts the service out of prediction (`pools = "reactive"`) and
//! drives load through its front: the pool grows to what the load needs, and falls back once
//! it stops. Run `cargo build --workspace --bins` first.

use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use umbra_demo::{DemoOptions, IdleCluster};
use umbra_orchestrator::api::Written;
use umbra_orchestrator::api::{CapacityReport, ClaimStatus, ForecastReport};
use umbra_orchestrator::capacity::MemberWas;

/// Longest any stage may take on a loaded 2-core machine (a liveness deadline, not a bound on
/// latency).
const DEADLINE: Duration = Duration::from_secs(120);

/// Runs `umbra args…` against the leader's API.
fn umbra(env: &[(&'static str, String)], args: &[&str]) -> anyhow::Result<Output> {
    let output = std::process::Command::new(umbra_tests::binary("umbra")?)
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env_remove("RUST_BACKTRACE")
        .output()?;
    eprintln!(
        "$ umbra {} → {}\n{}{}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(output)
}

fn json<T: serde::de::DeserializeOwned>(output: &Output) -> anyhow::Result<T> {
    anyhow::ensure!(output.status.success(), "umbra failed: {}", output.status);
    Ok(serde_json::from_slice(&output.stdout)?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capacity_request_is_served_from_dormant_and_claims_past_the_region_limit_are_refused()
-> anyhow::Result<()> {
    let bin_dir: PathBuf = umbra_tests::bin_dir()?;
    let cluster =
        IdleCluster::start(&DemoOptions::new(bin_dir), &|line| eprintln!("{line}")).await?;
    let region = cluster.regions()[0].clone();
    let service = umbra_demo::scenario::SERVICE;
    let plan = cluster.demo_plan().replacen(
        &format!("name = \"{region}\"\n"),
        &format!("name = \"{region}\"\nmax_instances = 3\n"),
        1,
    );
    assert!(plan.contains("max_instances = 3"), "{plan}");
    cluster
        .apply_plan_toml(&plan)
        .await
        .map_err(anyhow::Error::msg)?;
    let env =
        umbra_tests::wait_for("a leader's API", DEADLINE, || cluster.leader_cli_env()).await?;

    // A reservation of all 3 for a window opening in 45 s.
    let now = chrono::Utc::now();
    let start = (now + chrono::Duration::seconds(45)).to_rfc3339();
    let end = (now + chrono::Duration::minutes(10)).to_rfc3339();
    let reserved: Written = json(&umbra(
        &env,
        &[
            "capacity",
            "reserve",
            service,
            "--region",
            &region,
            "--instances",
            "3",
            "--start",
            &start,
            "--end",
            &end,
            "--json",
        ],
    )?)?;
    let Written::Capacity { id: reservation } = reserved else {
        anyhow::bail!("not a claim: {reserved:?}");
    };

    // Past the region's limit: refused, saying how much fits, and nothing changes.
    let refused = umbra(
        &env,
        &[
            "capacity",
            "request",
            service,
            "--region",
            &region,
            "--instances",
            "1",
        ],
    )?;
    assert!(
        !refused.status.success(),
        "a claim past the limit is refused"
    );
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains(&format!("region {region} holds at most 3"))
            && stderr.contains("claim at most 0"),
        "the refusal says why and what fits: {stderr}"
    );
    assert!(
        !stderr.contains("stack backtrace"),
        "no backtrace for a user error"
    );
    let listed: CapacityReport = json(&umbra(&env, &["capacity", "list", "--json"])?)?;
    let ids: Vec<&str> = listed.claims.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(
        ids,
        [reservation.as_str()],
        "the refused claim changed nothing"
    );

    // The leader's forecast for the serving pool, slice by slice (`umbra predict`).
    let predicted = umbra_tests::wait_for("the leader's pool forecast", DEADLINE, || async {
        let output = umbra(&env, &["predict", service, "--json"]).ok()?;
        let report: ForecastReport = json(&output).ok()?;
        (!report.slices.is_empty()).then_some(report)
    })
    .await?;
    assert_eq!(
        (predicted.service.as_str(), predicted.region.as_str()),
        (service, region.as_str())
    );
    eprintln!(
        "forecast ({}): {} slices, first {} mean {:.1} rps",
        predicted.model,
        predicted.slices.len(),
        predicted.slices[0].start,
        predicted.slices[0].mean
    );

    // One lead time before the window, the pool holds dormant instances for it.
    let dormant = umbra_tests::wait_for(
        "dormant instances for the reservation",
        DEADLINE,
        || async {
            let pool = cluster.pools().await.into_iter().next()?;
            (pool.actual.dormant >= 2).then_some(pool)
        },
    )
    .await?;
    eprintln!(
        "pool before the window: target {:?}, holds {:?}",
        dormant.target, dormant.actual
    );

    // Released before it opens; a request then takes the dormant instances.
    let released = umbra(&env, &["capacity", "release", &reservation])?;
    assert!(released.status.success());
    let served: ClaimStatus = json(&umbra(
        &env,
        &[
            "capacity",
            "request",
            service,
            "--region",
            &region,
            "--instances",
            "3",
            "--wait",
            "--wait-secs",
            "120",
            "--json",
        ],
    )?)?;
    let fulfilment = served.fulfilment.as_ref().expect("the leader tracked it");
    assert!(fulfilment.fulfilled, "{fulfilment:?}");
    let was: Vec<MemberWas> = fulfilment.members.iter().map(|m| m.was).collect();
    assert_eq!(
        was,
        [MemberWas::Serving, MemberWas::Dormant, MemberWas::Dormant],
        "the writer served already; the other two came from dormant: {fulfilment:?}"
    );
    for m in &fulfilment.members {
        eprintln!(
            "{} {:?}: serving {:.1} s after the request",
            m.instance,
            m.was,
            m.ready_after_ms.unwrap_or_default() as f64 / 1e3
        );
    }
    let pool = cluster.pools().await.into_iter().next().expect("a pool");
    assert!(pool.actual.warm >= 3, "3 serving: {pool:?}");
    Ok(())
}

/// Sends GETs of one seeded key to `front` at about `rps` until `stop` is set (at most
/// `max_secs`); returns (sent, failed).
async fn load(
    front: std::net::SocketAddr,
    rps: u64,
    max_secs: u64,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> (u64, u64) {
    use std::sync::atomic::Ordering;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("an HTTP client");
    let url = format!("http://{front}/kv/load-key");
    let seeded = umbra_tests::wait_for("the seed write", DEADLINE, || async {
        let put = http.put(&url).body("v").send().await.ok()?;
        put.status().is_success().then_some(())
    })
    .await;
    assert!(seeded.is_ok(), "{seeded:?}");
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rps));
    let mut requests = tokio::task::JoinSet::new();
    let (mut sent, mut failed) = (0u64, 0u64);
    for _ in 0..rps * max_secs {
        tick.tick().await;
        if stop.load(Ordering::Relaxed) {
            break;
        }
        sent += 1;
        let request = http.get(&url);
        requests.spawn(async move { request.send().await.is_ok_and(|r| r.status().is_success()) });
        while let Some(done) = requests.try_join_next() {
            failed += u64::from(!matches!(done, Ok(true)));
        }
    }
    while let Some(done) = requests.join_next().await {
        failed += u64::from(!matches!(done, Ok(true)));
    }
    (sent, failed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reactive_pool_follows_the_load_its_front_measured() -> anyhow::Result<()> {
    let mut options = umbra_tests::demo_options()?;
    // Shrink after one quiet minute (a reactive pool's hysteresis counts minutes).
    options.pool_shrink_after_slices = 1;
    let cluster = IdleCluster::start(&options, &|line| eprintln!("{line}")).await?;
    let region = cluster.regions()[0].clone();
    let front = cluster.front(&region).expect("the home region's front");
    // The demo's shop, opted out of prediction: 150 requests per second per instance.
    let plan =
        cluster
            .demo_plan()
            .replacen("replication = ", "pools = \"reactive\"\nreplication = ", 1);
    assert!(plan.contains("pools = \"reactive\""), "{plan}");
    cluster
        .apply_plan_toml(&plan)
        .await
        .map_err(anyhow::Error::msg)?;
    let pool = umbra_tests::wait_for("the home pool", DEADLINE, || async {
        cluster.pools().await.into_iter().next()
    })
    .await?;
    assert!(pool.forecast.starts_with("reactive"), "{}", pool.forecast);
    assert_eq!(pool.target.warm, 1, "no load, the floor: {pool:?}");

    // About 400 requests per second need 3 instances.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let traffic = tokio::spawn(load(front, 400, 150, stop.clone()));
    let grown = umbra_tests::wait_for("the pool to follow the load", DEADLINE, || async {
        let pool = cluster.pools().await.into_iter().next()?;
        (pool.target.warm >= 3 && pool.actual.warm >= 3).then_some(pool)
    })
    .await?;
    eprintln!(
        "under load: target {:?}, holds {:?}",
        grown.target, grown.actual
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (sent, failed) = traffic.await?;
    eprintln!("load: {sent} sent, {failed} failed");

    // Without load, back to the floor after the hysteresis.
    let fell = umbra_tests::wait_for("the pool to shrink without load", DEADLINE, || async {
        let pool = cluster.pools().await.into_iter().next()?;
        (pool.target.warm == 1 && pool.actual.warm == 1).then_some(pool)
    })
    .await?;
    eprintln!(
        "after the load: target {:?}, holds {:?}",
        fell.target, fell.actual
    );
    Ok(())
}
