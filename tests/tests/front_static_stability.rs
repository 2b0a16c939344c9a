//! Static stability of the data plane, end to end through the real binaries: the demo's
//! three `umbra-orchestrator` and three `umbra-agent` processes (embedded fronts, each an
//! `umbra-agent front` process the agent started), the orchestrators' embedded DNS with a real
//! BIND `named` as its secondary (`[dns] secondaries`, transfers signed with a key made by
//! `tsig-keygen`), the demo plan applied, keys seeded, and a warm migration run to completion,
//! with pinned traffic at the source's front feeding the cutover's analysis.
//!
//! Then, for [`OUTAGE`], every orchestrator is SIGKILLed (each reaped, so its pid is gone)
//! while a pinned client sends reads of the seeded keys and writes of fresh keys to both
//! regions' fronts (the source's forwards everything to the target at the migration's 100 %
//! share; the target's serves from its own instances), and a DNS client reads the seeded keys
//! at `shop.umbra.test` resolved through BIND alone. During the outage the source's agent,
//! then the target's, is SIGKILLed, kept down, and started again: the front keeps serving with
//! no agent and no orchestrator, and the restarted agent adopts the very same front process
//! (same pid, no second one). Once the traffic ended, the source's front process itself is
//! SIGKILLed: its agent starts it again with no leader, and the new front's first answer
//! forwards to the target (the routing it kept in its file, which the agent, knowing its
//! instances and shares, also sets again). The clients count every non-2xx answer, timeout, reset and
//! failed resolution as failed and wait for their requests in flight before they report; the
//! test wants 0 failed, and then reads back every write made through the target's front.
//!
//! `named`, `dig` or `tsig-keygen` missing fails the test with the command that installs
//! them. Run `cargo build --workspace --bins` first.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, ensure};
use umbra_agent::loadgen::{RequestSpec, ServiceTarget, Target};
use umbra_agent::provider::process::ENV_PROVIDER_STATE;
use umbra_demo::report::TrafficSegment;
use umbra_demo::traffic::{TrafficRun, writes, written_key};
use umbra_demo::{IdleCluster, scenario};
use umbra_orchestrator::api::Written;
use umbra_testkit::bind::{NamedProcess, dig};
use umbra_testkit::installed;

/// How long every orchestrator stays down under traffic: the 60 s of the acceptance
/// ("every orchestrator SIGKILLed for 60 s under traffic").
const OUTAGE: Duration = Duration::from_secs(60);
/// How long each agent stays down during the outage: several heartbeats, so its front has to
/// serve on its own.
const AGENT_DOWN: Duration = Duration::from_secs(5);
/// Startup, the migration and each wait on a loaded 2-core machine.
const DEADLINE: Duration = Duration::from_secs(180);
/// Keys seeded in the source before the migration and read during the outage.
const KEYS: u64 = 100;
/// The pinned client's reads and writes per second.
const READ_RATE: f64 = 100.0;
const WRITE_RATE: f64 = 20.0;
/// The line an agent logs when it adopts the front a previous agent started.
const ADOPTED: &str = "adopting the front a previous agent started";

fn progress(line: &str) {
    eprintln!("{line}");
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The pids of `state_dir`'s agent's front processes: processes carrying the agent's marker
/// that run `umbra-agent front`.
fn front_pids(state_dir: &Path) -> BTreeSet<u32> {
    umbra_testkit::processes_marked(ENV_PROVIDER_STATE, state_dir)
        .into_iter()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|cmd| cmd.split(|b| *b == 0).nth(1) == Some(b"front".as_slice()))
        })
        .collect()
}

/// How often `region`'s agent has logged adopting its front.
fn adoptions(agent_log: &Path) -> usize {
    std::fs::read_to_string(agent_log)
        .unwrap_or_default()
        .matches(ADOPTED)
        .count()
}

/// (requests, failed) over `segments`, and each front's requests.
fn totals(segments: &[TrafficSegment]) -> (u64, u64, std::collections::BTreeMap<String, u64>) {
    let mut by_front = std::collections::BTreeMap::new();
    for s in segments {
        for (front, n) in &s.by_address {
            *by_front.entry(front.clone()).or_default() += n;
        }
    }
    (
        segments.iter().map(|s| s.counts.completed).sum(),
        segments.iter().map(|s| s.counts.failed()).sum(),
        by_front,
    )
}

fn urls(fronts: &[SocketAddr]) -> anyhow::Result<Target> {
    Ok(Target::Urls(
        fronts
            .iter()
            .map(|f| format!("http://{f}").parse())
            .collect::<Result<_, _>>()?,
    ))
}

/// Reads of the seeded keys, in turn.
fn reads() -> umbra_demo::traffic::Requests {
    Arc::new(|seq| RequestSpec::get(format!("/kv/key-{}", seq % KEYS)))
}

/// The A records BIND at `server` answers for the demo's service, asked once with `dig`.
fn bind_answer(server: SocketAddr) -> BTreeSet<std::net::IpAddr> {
    dig(
        server,
        &[format!("{} A +short +time=1 +tries=1", scenario::HOSTNAME)],
    )
    .map(|out| out.lines().filter_map(|l| l.trim().parse().ok()).collect())
    .unwrap_or_default()
}

/// SIGKILLs `region`'s agent, keeps it down for [`AGENT_DOWN`] while its front serves alone,
/// starts it again, and checks that the new agent adopted the same front process.
async fn restart_agent(
    cluster: &mut IdleCluster,
    region: &str,
    state_dir: &Path,
) -> anyhow::Result<()> {
    let agent_log = state_dir
        .parent()
        .context("the agent's dir")?
        .join("agent.log");
    let before = front_pids(state_dir);
    ensure!(before.len() == 1, "{region} runs fronts {before:?}");
    let adopted_before = adoptions(&agent_log);
    let pid = cluster.kill(&format!("agent-{region}"))?;
    ensure!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "agent {pid} still runs"
    );
    progress(&format!(
        "SIGKILLed the {region} agent (pid {pid}); its front {before:?} serves alone"
    ));
    tokio::time::sleep(AGENT_DOWN).await;
    ensure!(
        front_pids(state_dir) == before,
        "{region}'s front did not outlive its agent"
    );
    let pid = cluster.restart(&format!("agent-{region}"))?;
    umbra_tests::wait_for(
        &format!("the restarted {region} agent to adopt its front"),
        DEADLINE,
        || async { (adoptions(&agent_log) > adopted_before).then_some(()) },
    )
    .await?;
    let after = front_pids(state_dir);
    ensure!(
        after == before,
        "{region}: fronts {before:?} before the agent restart, {after:?} after"
    );
    progress(&format!(
        "restarted the {region} agent (pid {pid}) with no orchestrator up; it adopted front {after:?}"
    ));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fronts_serve_through_a_control_plane_outage_and_agent_restarts() -> anyhow::Result<()>
{
    installed("named", "bind9")?;
    installed("dig", "bind9-dnsutils")?;
    let dir = tempfile::tempdir()?;
    let (key_file, secret) = umbra_tests::transfer_key(dir.path())?;
    // BIND's port first, so the orchestrators can be told where to send NOTIFY.
    let bind_addr = SocketAddr::from(([127, 0, 0, 1], umbra_tests::free_port()?));
    let mut options = umbra_tests::demo_options()?;
    options.dns_secondaries = vec![bind_addr];
    options.dns_transfer_key_file = Some(key_file);
    let mut cluster = IdleCluster::start(&options, &progress).await?;
    let regions = cluster.regions().to_vec();
    let (source, target) = (regions[0].clone(), regions[1].clone());
    let source_front = cluster.front(&source).context("source front")?;
    let target_front = cluster.front(&target).context("target front")?;
    let state_dir = |region: &str| -> anyhow::Result<PathBuf> {
        Ok(std::fs::canonicalize(
            cluster.agent_state_dir(region).context("agent state dir")?,
        )?)
    };
    let (source_state, target_state) = (state_dir(&source)?, state_dir(&target)?);
    cluster
        .apply_plan_toml(&cluster.demo_plan())
        .await
        .map_err(anyhow::Error::msg)?;

    // Seed keys once the source serves.
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    umbra_tests::wait_for("the source front to serve", DEADLINE, || async {
        let url = format!("http://{source_front}/kv/key-0");
        let response = http.put(url).body("value-0").send().await.ok()?;
        response.status().is_success().then_some(())
    })
    .await?;
    for k in 0..KEYS {
        let response = http
            .put(format!("http://{source_front}/kv/key-{k}"))
            .body(format!("value-{k}"))
            .send()
            .await?;
        ensure!(
            response.status().is_success(),
            "seeding key-{k}: {}",
            response.status()
        );
    }

    // A warm migration to completion; pinned reads at the source's front feed its analysis.
    let feed = TrafficRun::start(urls(&[source_front])?, READ_RATE, reads());
    let request = scenario::migration_request(&source, &target, unix_ms(), &options.timing, true);
    let Written::Migration { id } = cluster
        .migrate(&request)
        .await
        .map_err(anyhow::Error::msg)?
    else {
        anyhow::bail!("the migration request was not answered with a migration");
    };
    progress(&format!("migration {id}: {source} → {target}"));
    let done = umbra_tests::wait_for(&format!("{id} to finish"), DEADLINE, || async {
        cluster
            .migrations()
            .await
            .ok()?
            .into_iter()
            .find(|m| m.id == id && m.terminal)
    })
    .await?;
    ensure!(done.phase == "completed", "{id} ended {}", done.phase);

    // BIND, a secondary of every orchestrator, answers with the target's front alone.
    let zone = scenario::ZONE.trim_end_matches('.');
    let bind =
        NamedProcess::start_secondary(zone, bind_addr.port(), &cluster.orchestrator_dns(), &secret)
            .await?;
    let target_only = BTreeSet::from([target_front.ip()]);
    umbra_tests::wait_for("BIND to answer the target's front", DEADLINE, || async {
        let found = tokio::task::spawn_blocking(move || bind_answer(bind_addr))
            .await
            .ok()?;
        (found == target_only).then_some(())
    })
    .await
    .with_context(|| format!("named's log: {}", bind.log_tail()))?;
    let (fed, fed_failed, _) = totals(&feed.finish().await);
    progress(&format!(
        "{id} completed; {fed} requests during it, {fed_failed} failed"
    ));

    // The outage: pinned reads and writes at both fronts, every orchestrator SIGKILLed.
    let fronts = [source_front, target_front];
    let read_run = TrafficRun::start(urls(&fronts)?, READ_RATE, reads());
    let write_run = TrafficRun::start(urls(&fronts)?, WRITE_RATE, writes());
    let by_name = Target::Service(ServiceTarget {
        name: scenario::HOSTNAME.to_owned(),
        port: target_front.port(),
        dns_servers: vec![bind_addr],
    });
    let dns_run = TrafficRun::start(by_name, READ_RATE, reads());
    let outage_started = Instant::now();
    for name in cluster.orchestrator_names() {
        let pid = cluster.kill(&name)?;
        ensure!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "{name} ({pid}) still runs"
        );
    }
    progress(&format!(
        "every orchestrator SIGKILLed; {} s of outage under traffic",
        OUTAGE.as_secs()
    ));

    // Each agent crashes and comes back while no orchestrator is up.
    tokio::time::sleep(OUTAGE / 4).await;
    restart_agent(&mut cluster, &source, &source_state).await?;
    restart_agent(&mut cluster, &target, &target_state).await?;
    let left = OUTAGE.saturating_sub(outage_started.elapsed());
    tokio::time::sleep(left).await;
    ensure!(
        cluster
            .running()
            .iter()
            .all(|n| !n.starts_with("orchestrator-")),
        "an orchestrator came back"
    );

    let (reads, reads_failed, read_fronts) = totals(&read_run.finish().await);
    let write_segments = write_run.finish().await;
    let (resolved, resolved_failed, resolved_fronts) = totals(&dns_run.finish().await);
    let (written, writes_failed, write_fronts) = totals(&write_segments);
    let outage_secs = outage_started.elapsed().as_secs_f64();
    println!(
        "{outage_secs:.1} s with every orchestrator down: {reads} reads ({reads_failed} failed, \
         by front {read_fronts:?}), {written} writes ({writes_failed} failed, by front \
         {write_fronts:?}), {resolved} reads through BIND ({resolved_failed} failed, by front \
         {resolved_fronts:?})"
    );
    ensure!(
        reads_failed == 0 && writes_failed == 0 && resolved_failed == 0,
        "failed requests"
    );
    ensure!(
        resolved as f64 >= OUTAGE.as_secs_f64() * READ_RATE / 2.0,
        "{resolved} requests through BIND"
    );
    // At least half the offered rate answered, at both fronts: the client really ran.
    let offered = OUTAGE.as_secs_f64() * (READ_RATE + WRITE_RATE);
    ensure!(
        (reads + written) as f64 >= offered / 2.0,
        "{} requests, {offered} offered",
        reads + written
    );
    for front in fronts {
        ensure!(
            read_fronts.get(&front.to_string()).is_some_and(|n| *n > 0),
            "no reads reached {front}: {read_fronts:?}"
        );
    }

    // The source's front process itself dies, every orchestrator still down: its agent starts
    // it again on its own schedule, and the new front's very first answer forwards to the
    // target (it restored its kept routing before it listened; the agent sets the same again).
    let old = front_pids(&source_state);
    for pid in &old {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(*pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        )?;
    }
    let new = umbra_tests::wait_for(
        "the source agent to start its front again",
        DEADLINE,
        || async {
            let now = front_pids(&source_state);
            (!now.is_empty() && now.is_disjoint(&old)).then_some(now)
        },
    )
    .await?;
    umbra_tests::wait_for("the new front to listen", DEADLINE, || async {
        tokio::net::TcpStream::connect(source_front).await.ok()
    })
    .await?;
    let first = http
        .get(format!("http://{source_front}/kv/key-0"))
        .send()
        .await?;
    ensure!(
        first.status().is_success(),
        "the restarted front's first answer: {}",
        first.status()
    );
    progress(&format!(
        "front {old:?} SIGKILLed; its agent started {new:?}, whose first answer was served"
    ));

    // Every write made during the outage is there, read through the target's front.
    let sent: Vec<u64> = write_segments
        .iter()
        .flat_map(|s| s.first_seq..s.first_seq + s.counts.scheduled)
        .collect();
    ensure!(
        sent.len() as u64 == written,
        "{} writes scheduled, {written} completed",
        sent.len()
    );
    for &seq in &sent {
        let url = format!("http://{target_front}/kv/{}", written_key(seq));
        let response = http.get(&url).send().await?;
        ensure!(
            response.status().is_success(),
            "{url}: {} after it was acknowledged",
            response.status()
        );
        ensure!(
            response.text().await? == format!("v{seq}"),
            "{url}: another value"
        );
    }
    println!("all {} writes read back through {target_front}", sent.len());
    Ok(())
}
