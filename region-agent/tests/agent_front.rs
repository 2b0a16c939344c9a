//! The region front through agent commands, with real processes and real HTTP: two agents
//! (two "regions"), each with a front (the embedded proxy) over its active `umbra-sample`
//! instance. `SetShare` on the source region sends exactly that share of new requests to the
//! target region's front; each front's report counts only what its own instances served; bad
//! shares are refused and change nothing.

use std::path::Path;
use std::time::Duration;

mod common;

use umbra_agent::agent::Agent;
use umbra_agent::agent::front::Front;
use umbra_agent::loadgen::{LoadConfig, LoadGenerator, RequestSpec, Target};
use umbra_agent::provider::AnyProvider;
use umbra_proto::agent::{AgentAction, AgentCommand, CommandOutcome, CommandResult, Refusal};

/// A cold read's cost in the regions' instances: small, this test is about routing.
const BACKING_LATENCY_MS: u64 = 1;

async fn region(name: &str, dir: &Path) -> anyhow::Result<Agent> {
    let state = dir.join(name);
    let provider = common::sample_provider(&state, BACKING_LATENCY_MS).await?;
    let front = Front::start("127.0.0.1:0".parse()?).await?;
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
    let dir = tempfile::tempdir()?;
    let _reapers = [
        common::reaper(&dir.path().join("us-east")),
        common::reaper(&dir.path().join("eu-west")),
    ];
    let east = region("us-east", dir.path()).await?;
    let west = region("eu-west", dir.path()).await?;
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
