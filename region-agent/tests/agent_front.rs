//! The region front through agent commands, with real processes and real HTTP: two agents
//! (two "regions"), each with a front over its active `umbra-sample` instance, run once with
//! the embedded proxy and once with a real `haproxy` the agent starts (`[front] kind`).
//! `SetShare` on the source region sends exactly that share of new requests to the target
//! region's front; each front's report counts only what its own instances served; bad shares
//! are refused and change nothing. For both kinds, each a process of its own: the agent
//! restarts a front that died, a new agent adopts the running one, and the front keeps
//! forwarding with no agent at all.

use std::path::Path;
use std::time::Duration;

mod common;

use umbra_agent::agent::Agent;
use umbra_agent::agent::config::{FrontKind, FrontSection};
use umbra_agent::agent::front::Front;
use umbra_agent::loadgen::{LoadConfig, LoadGenerator, RequestSpec, Target};
use umbra_agent::provider::AnyProvider;
use umbra_proto::agent::{AgentAction, AgentCommand, CommandOutcome, CommandResult, Refusal};

/// A cold read's cost in the regions' instances: small, this test is about routing.
const BACKING_LATENCY_MS: u64 = 1;

/// The `[front]` section of a region of this test, on a fixed port, so a front started again
/// listens where it did; the embedded front is this package's `umbra-agent front`.
fn front_section(kind: FrontKind) -> anyhow::Result<FrontSection> {
    let port = umbra_testkit::free_port()?;
    let haproxy_binary = match kind {
        FrontKind::Embedded => None,
        // A missing haproxy fails the test with how to install it; it never skips.
        FrontKind::Haproxy => Some(umbra_testkit::installed("haproxy", "haproxy")?),
    };
    Ok(FrontSection {
        listen: format!("127.0.0.1:{port}").parse()?,
        kind: kind.to_string(),
        haproxy_binary,
        haproxy_dir: None,
        front_binary: (kind == FrontKind::Embedded)
            .then(|| env!("CARGO_BIN_EXE_umbra-agent").into()),
    })
}

async fn region(name: &str, dir: &Path, kind: FrontKind) -> anyhow::Result<Agent> {
    let state = dir.join(name);
    let provider = common::sample_provider(&state, BACKING_LATENCY_MS).await?;
    let front = Front::from_config(&front_section(kind)?, &state).await?;
    let agent = Agent::with_parts(name, &state, AnyProvider::Process(provider), Some(front))?;
    let instance = format!("{name}-1");
    for (op, action) in [
        (
            "p",
            AgentAction::Provision {
                instances: vec![instance.clone()],
            },
        ),
        (
            "a",
            AgentAction::Activate {
                instance: instance.clone(),
            },
        ),
    ] {
        let out = agent.handle_command(&cmd(name, op, action)).await;
        anyhow::ensure!(matches!(out, CommandOutcome::Done(_)), "{op}: {out:?}");
    }
    Ok(agent)
}

fn cmd(region: &str, op: &str, action: AgentAction) -> AgentCommand {
    AgentCommand {
        op_id: op.into(),
        term: 1,
        region: region.into(),
        action,
    }
}

async fn send(front: std::net::SocketAddr, requests: u64) -> anyhow::Result<()> {
    let config = LoadConfig::new(
        Target::Urls(vec![format!("http://{front}").parse()?]),
        400.0,
        requests,
        Duration::from_secs(30),
    );
    let report = LoadGenerator::new(config, |_| RequestSpec::get("/kv/some-key"))?
        .run()
        .await?;
    // 404 (no such key) is a served answer; anything else is a failure.
    let served_404 = report.by_status.get(&404).copied().unwrap_or(0);
    anyhow::ensure!(
        served_404 == requests,
        "not all served: {:?}",
        report.counts
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_share_moves_exactly_that_part_of_the_traffic() -> anyhow::Result<()> {
    shares_move_traffic(FrontKind::Embedded).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_share_moves_exactly_that_part_of_the_traffic_through_haproxy() -> anyhow::Result<()> {
    shares_move_traffic(FrontKind::Haproxy).await
}

async fn shares_move_traffic(kind: FrontKind) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    // The reapers also stop the haproxy fronts: they carry the agents' marker.
    let _reapers = [
        common::reaper(&dir.path().join("us-east")),
        common::reaper(&dir.path().join("eu-west")),
    ];
    let east = region("us-east", dir.path(), kind).await?;
    let west = region("eu-west", dir.path(), kind).await?;
    let east_front = east.executor().front().unwrap().local_addr();
    let west_front = west.executor().front().unwrap().local_addr();
    // Each front's report, which also starts its next window.
    let windows = || async {
        (
            east.report().await.front.unwrap(),
            west.report().await.front.unwrap(),
        )
    };
    // Start both windows now.
    windows().await;

    send(east_front, 200).await?;
    let (e, w) = windows().await;
    assert_eq!(
        (e.window_requests, w.window_requests),
        (200, 0),
        "no share: all local"
    );
    // The p99 covers the recent requests of local backends: east's, none at west.
    assert!(e.window_p99_ms.is_some_and(|p99| p99 > 0.0), "{e:?}");
    assert_eq!(w.window_p99_ms, None, "{w:?}");

    let share = AgentAction::SetShare {
        service: "shop".into(),
        target_front: west_front.to_string(),
        percent: 30,
    };
    let out = east
        .handle_command(&cmd("us-east", "share-30", share))
        .await;
    let CommandOutcome::Done(CommandResult::Front(f)) = &out else {
        panic!("{out:?}");
    };
    assert_eq!(f.shares.len(), 1);
    send(east_front, 1_000).await?;
    let (e, w) = windows().await;
    println!(
        "30 % share: east served {}, west served {}",
        e.window_requests, w.window_requests
    );
    assert_eq!(e.window_requests + w.window_requests, 1_000);
    assert!(
        (280..=320).contains(&w.window_requests),
        "west got {}",
        w.window_requests
    );
    assert_eq!(e.window_errors + w.window_errors, 0);

    // Bad shares: refused, the applied share stays.
    for (op, service, target, percent, want) in [
        (
            "bad-1",
            "shop",
            west_front.to_string(),
            150u8,
            "between 0 and 100",
        ),
        (
            "bad-2",
            "shop",
            "eu-west.example:80".to_string(),
            10,
            "ip:port",
        ),
        ("bad-3", "shop cart", west_front.to_string(), 10, "service"),
    ] {
        let action = AgentAction::SetShare {
            service: service.into(),
            target_front: target,
            percent,
        };
        match east.handle_command(&cmd("us-east", op, action)).await {
            CommandOutcome::Refused(Refusal::BadRequest { reason }) => {
                assert!(reason.contains(want), "{reason}")
            }
            other => panic!("{op}: {other:?}"),
        }
    }
    assert_eq!(east.report().await.front.unwrap().shares[0].percent, 30);

    // Share 0: all local again.
    let back = AgentAction::SetShare {
        service: "shop".into(),
        target_front: west_front.to_string(),
        percent: 0,
    };
    east.handle_command(&cmd("us-east", "share-0", back)).await;
    windows().await;
    send(east_front, 200).await?;
    let (e, w) = windows().await;
    assert_eq!((e.window_requests, w.window_requests), (200, 0));

    for (agent, id) in [(&east, "us-east-1"), (&west, "eu-west-1")] {
        agent.executor().provider().remove(id).await?;
    }
    Ok(())
}

/// The pid of the front process the agent recorded in its state directory.
fn front_pid(state: &Path, kind: FrontKind) -> anyhow::Result<i32> {
    let file = match kind {
        FrontKind::Embedded => "front-embedded/front.pid",
        FrontKind::Haproxy => "front-haproxy/haproxy.pid",
    };
    Ok(std::fs::read_to_string(state.join(file))?.trim().parse()?)
}

fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_haproxy_is_restarted_and_a_new_agent_adopts_a_live_one() -> anyhow::Result<()> {
    front_process_lifetime(FrontKind::Haproxy).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_embedded_front_is_restarted_and_a_new_agent_adopts_a_live_one() -> anyhow::Result<()>
{
    front_process_lifetime(FrontKind::Embedded).await
}

async fn front_process_lifetime(kind: FrontKind) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let state = dir.path().join("us-east");
    let _reaper = common::reaper(&state);
    let section = front_section(kind)?;
    let agent = region("us-east", dir.path(), kind).await?;
    // `region` drew its own port: use the agent's.
    let front = agent.executor().front().unwrap().local_addr();
    let section = FrontSection {
        listen: front,
        ..section
    };
    agent.report().await;
    send(front, 100).await?;
    let first = front_pid(&state, kind)?;

    // The front dies: the next heartbeat starts it again with every weight.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(first),
        nix::sys::signal::Signal::SIGKILL,
    )?;
    umbra_testkit::wait_for("the front to die", Duration::from_secs(10), || async {
        (!alive(first)).then_some(())
    })
    .await?;
    // A heartbeat notices and starts a new one. /proc shows the killed front as a zombie
    // while its other threads are still exiting, before its parent can wait for it, so this
    // may take a heartbeat more.
    let report = umbra_testkit::wait_for(
        "the agent to start the front again",
        Duration::from_secs(30),
        || async { agent.report().await.front },
    )
    .await?;
    assert_eq!(report.requests_total, 0, "a new front counts afresh");
    let second = front_pid(&state, kind)?;
    assert_ne!(first, second);
    send(front, 100).await?;
    assert_eq!(agent.report().await.front.unwrap().window_requests, 100);

    // The agent goes away; the front keeps serving and the next agent adopts it.
    drop(agent);
    send(front, 100).await?;
    let provider = common::sample_provider(&state, BACKING_LATENCY_MS).await?;
    let adopted = Front::from_config(&section, &state).await?;
    let agent = Agent::with_parts(
        "us-east",
        &state,
        AnyProvider::Process(provider),
        Some(adopted),
    )?;
    assert_eq!(front_pid(&state, kind)?, second, "adopted, not restarted");
    let report = agent.report().await.front.unwrap();
    assert_eq!(report.requests_total, 200, "its counters went on");
    send(front, 100).await?;

    // An agent configured differently replaces it.
    drop(agent);
    let moved = FrontSection {
        listen: format!("127.0.0.1:{}", umbra_testkit::free_port()?).parse()?,
        ..section
    };
    let provider = common::sample_provider(&state, BACKING_LATENCY_MS).await?;
    let replaced = Front::from_config(&moved, &state).await?;
    let agent = Agent::with_parts(
        "us-east",
        &state,
        AnyProvider::Process(provider),
        Some(replaced),
    )?;
    assert!(!alive(second), "the old front was stopped");
    agent.report().await;
    send(moved.listen, 100).await?;
    agent.executor().provider().remove("us-east-1").await?;
    Ok(())
}

#[tokio::test]
async fn an_agent_without_a_front_refuses_shares() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let state = dir.path().join("a");
    let provider = common::sample_provider(&state, BACKING_LATENCY_MS).await?;
    let agent = Agent::with_provider("us-east", &state, AnyProvider::Process(provider))?;
    let action = AgentAction::SetShare {
        service: "shop".into(),
        target_front: "127.0.0.1:1".into(),
        percent: 10,
    };
    match agent.handle_command(&cmd("us-east", "s", action)).await {
        CommandOutcome::Refused(Refusal::BadRequest { reason }) => {
            assert!(reason.contains("[front]"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    assert!(agent.report().await.front.is_none());
    Ok(())
}

#[tokio::test]
async fn a_haproxy_front_without_haproxy_says_how_to_get_it() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let section = FrontSection {
        haproxy_binary: Some("/nonexistent/haproxy".into()),
        ..front_section(FrontKind::Haproxy)?
    };
    let err = match Front::from_config(&section, dir.path()).await {
        Ok(_) => panic!("a front started without its program"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("apt-get install haproxy"), "{err}");
    assert!(err.contains("front.haproxy_binary"), "{err}");
    Ok(())
}

/// A restarted agent forwards the shares it had set before any orchestrator answers: the
/// embedded front, a process of its own, kept forwarding while no agent ran, the new agent
/// adopts it, and the shares are kept in the state directory, not only in memory. Without that,
/// a restarted source agent after a cutover answered every request with 503 until the leader
/// sent a new command, and the leader's repeated `SetShare` was answered from the ledger
/// without acting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_agent_forwards_the_shares_it_had_before_any_leader_answers()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let _reapers = [
        common::reaper(&dir.path().join("us-east")),
        common::reaper(&dir.path().join("eu-west")),
    ];
    let west = region("eu-west", dir.path(), FrontKind::Embedded).await?;
    let west_front = west.executor().front().unwrap().local_addr();
    // The source's front on a port of its own, so the restarted agent listens where it did.
    let section = FrontSection {
        listen: format!("127.0.0.1:{}", umbra_testkit::free_port()?).parse()?,
        ..front_section(FrontKind::Embedded)?
    };
    let state = dir.path().join("us-east");
    let provider = common::sample_provider(&state, BACKING_LATENCY_MS).await?;
    let east = Agent::with_parts(
        "us-east",
        &state,
        AnyProvider::Process(provider),
        Some(Front::from_config(&section, &state).await?),
    )?;
    let all = AgentAction::SetShare {
        service: "shop".into(),
        target_front: west_front.to_string(),
        percent: 100,
    };
    let out = east
        .handle_command(&cmd("us-east", "share-100", all.clone()))
        .await;
    assert!(matches!(out, CommandOutcome::Done(_)), "{out:?}");
    west.report().await;
    send(section.listen, 100).await?;
    assert_eq!(west.report().await.front.unwrap().window_requests, 100);

    // The agent stops; its front goes on forwarding with no agent, and a new agent on the same
    // state directory adopts it.
    let front = front_pid(&state, FrontKind::Embedded)?;
    drop(east);
    send(section.listen, 100).await?;
    assert_eq!(west.report().await.front.unwrap().window_requests, 100);
    let provider = common::sample_provider(&state, BACKING_LATENCY_MS).await?;
    let east = Agent::with_parts(
        "us-east",
        &state,
        AnyProvider::Process(provider),
        Some(Front::from_config(&section, &state).await?),
    )?;
    assert_eq!(front_pid(&state, FrontKind::Embedded)?, front, "adopted");
    let report = east.report().await.front.unwrap();
    assert_eq!(report.shares.len(), 1, "{report:?}");
    assert_eq!(report.shares[0].percent, 100);
    send(section.listen, 100).await?;
    assert_eq!(
        west.report().await.front.unwrap().window_requests,
        100,
        "every request reached the target region with no command sent"
    );
    // The leader's repeated command is answered from the ledger, and now that is the truth.
    let again = east.handle_command(&cmd("us-east", "share-100", all)).await;
    assert!(matches!(again, CommandOutcome::Done(_)), "{again:?}");
    west.executor().provider().remove("eu-west-1").await?;
    Ok(())
}
