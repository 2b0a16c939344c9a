//! The agent's executor end to end, without the network: commands go through
//! `Agent::handle_command` (core + executor) against real `umbra-sample` processes — provision,
//! activate, replicate from a source, fence, lift the fence, lag 0, promote, warm — and bad input (an unknown
//! provider, a negative rate, another region, promotion before the fence) is refused with a
//! clear message and changes nothing.

use std::path::Path;
use std::process::Command;

mod common;

use umbra_agent::agent::Agent;
use umbra_agent::provider::{AnyProvider, InstanceState};
use umbra_proto::agent::{
    AgentAction, AgentCommand, CommandOutcome, CommandResult, ReadinessGate, Refusal, RequestMix,
    RequestTemplate, WarmupPhase, WarmupSpec,
};
use umbra_testkit::sample::SampleProcess;

/// A cold read's cost, for the source and the agent's instances alike.
const BACKING_LATENCY_MS: u64 = 5;

async fn agent(state: &Path) -> anyhow::Result<Agent> {
    let provider = common::sample_provider(state, BACKING_LATENCY_MS).await?;
    Ok(Agent::with_provider(
        "eu-west",
        state,
        AnyProvider::Process(provider),
    )?)
}

fn cmd(op: &str, action: AgentAction) -> AgentCommand {
    AgentCommand {
        op_id: op.into(),
        term: 1,
        region: "eu-west".into(),
        action,
    }
}

fn plan(rate_per_sec: f64) -> WarmupSpec {
    WarmupSpec {
        mix: RequestMix {
            requests: vec![RequestTemplate {
                method: "GET".into(),
                path: "/kv/{key}".into(),
                weight: 1.0,
            }],
            key_count: 50,
            zipf_exponent: 0.8,
            rate_per_sec,
            max_duration_ms: 20_000,
        },
        gate: ReadinessGate {
            // Generous: this test is about the command path; the gate's numbers are measured
            // in warmup_sample.rs.
            reference_p99_ms: 20.0,
            p99_tolerance_pct: 100.0,
            max_error_rate: 0.01,
            min_requests: 300,
        },
        allow_writes: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicate_fence_promote_and_warm_through_commands() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let source = SampleProcess::start(
        common::sample_binary(),
        &dir.path().join("source"),
        BACKING_LATENCY_MS,
    )
    .await?;
    let src_url = source.url();
    let http = reqwest::Client::new();
    for i in 0..50 {
        http.put(format!("{src_url}/kv/key-{i}"))
            .body(format!("v{i}"))
            .send()
            .await?
            .error_for_status()?;
    }
    let state = dir.path().join("agent");
    let _reaper = common::reaper(&state);
    let agent = agent(&state).await?;
    let run = |op: &'static str, a: AgentAction| {
        let agent = &agent;
        async move { agent.handle_command(&cmd(op, a)).await }
    };
    let t = || "t-1".to_string();
    run(
        "p",
        AgentAction::Provision {
            instances: vec![t()],
        },
    )
    .await;
    // The process provider enforces no limits: a SetLimits is refused, saying what to use.
    let limits = run(
        "l",
        AgentAction::SetLimits {
            instance: t(),
            limits: umbra_proto::agent::InstanceLimits {
                cpu_millis: 500,
                memory_mib: 128,
            },
        },
    )
    .await;
    match &limits {
        CommandOutcome::Refused(Refusal::BadRequest { reason }) => {
            assert!(reason.contains("docker provider"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    let out = run("a", AgentAction::Activate { instance: t() }).await;
    assert!(
        matches!(&out, CommandOutcome::Done(CommandResult::Instances(v)) if v[0].state == InstanceState::Active),
        "{out:?}"
    );

    // Promote before anything: refused, nothing changes.
    let early = run("pr0", AgentAction::Promote { instance: t() }).await;
    assert!(
        matches!(early, CommandOutcome::Refused(Refusal::BadRequest { .. })),
        "{early:?}"
    );

    let started = run(
        "r",
        AgentAction::StartReplication {
            instance: t(),
            source: src_url.clone(),
        },
    )
    .await;
    assert!(
        matches!(started, CommandOutcome::Done(CommandResult::Replication(_))),
        "{started:?}"
    );
    let unfenced = run("pr1", AgentAction::Promote { instance: t() }).await;
    match &unfenced {
        CommandOutcome::Refused(Refusal::BadRequest { reason }) => {
            assert!(reason.contains("fence it first"), "{reason}")
        }
        other => panic!("promotion before the fence must be refused: {other:?}"),
    }
    run("f", AgentAction::FenceSource { instance: t() }).await;
    let zero = run(
        "w0",
        AgentAction::WaitForZeroLag {
            instance: t(),
            timeout_ms: 30_000,
        },
    )
    .await;
    let CommandOutcome::Done(CommandResult::Replication(r)) = &zero else {
        panic!("lag did not reach 0: {zero:?}");
    };
    assert_eq!(
        (r.source_position, r.target_position, r.source_fenced),
        (50, 50, true)
    );
    // A rollback before the promotion lifts the fence (here through a second target of the
    // same source): the source takes writes itself again, and no fence or promotion of that
    // target is taken after it (one still on its way would undo the rollback).
    let u = || "t-2".to_string();
    run(
        "p2",
        AgentAction::Provision {
            instances: vec![u()],
        },
    )
    .await;
    run("a2", AgentAction::Activate { instance: u() }).await;
    let replicate = AgentAction::StartReplication {
        instance: u(),
        source: src_url.clone(),
    };
    run("r2", replicate).await;
    run("f-u", AgentAction::FenceSource { instance: u() }).await;
    let lifted = run("u0", AgentAction::UnfenceSource { instance: u() }).await;
    let CommandOutcome::Done(CommandResult::Replication(r)) = &lifted else {
        panic!("the fence was not lifted: {lifted:?}");
    };
    assert_eq!((r.source_fenced, r.promoted), (false, false));
    http.put(format!("{src_url}/kv/after-unfence"))
        .body("kept")
        .send()
        .await?
        .error_for_status()?;
    for (op, late) in [
        ("f-late", AgentAction::FenceSource { instance: u() }),
        ("pr-late", AgentAction::Promote { instance: u() }),
    ] {
        match run(op, late).await {
            CommandOutcome::Refused(Refusal::BadRequest { reason }) => {
                assert!(reason.contains("rolled back"), "{reason}")
            }
            other => panic!("{op} after the fence was lifted: {other:?}"),
        }
    }
    // No replication into an instance: nothing fenced through it, done at once.
    let never = run(
        "u-none",
        AgentAction::UnfenceSource {
            instance: "t-9".into(),
        },
    )
    .await;
    assert!(
        matches!(never, CommandOutcome::Done(CommandResult::Instances(ref v)) if v.is_empty()),
        "{never:?}"
    );
    run("f2", AgentAction::FenceSource { instance: t() }).await;
    let zero = run(
        "w1",
        AgentAction::WaitForZeroLag {
            instance: t(),
            timeout_ms: 30_000,
        },
    )
    .await;
    let CommandOutcome::Done(CommandResult::Replication(r)) = &zero else {
        panic!("lag did not reach 0: {zero:?}");
    };
    assert_eq!((r.source_position, r.target_position), (51, 51));
    let promoted = run("pr2", AgentAction::Promote { instance: t() }).await;
    let CommandOutcome::Done(CommandResult::Replication(r)) = &promoted else {
        panic!("promote failed: {promoted:?}");
    };
    assert!(r.promoted);
    // Once the target is the writer, lifting the source's fence would make two writers:
    // refused, and the source stays fenced (the writer must be handed back instead).
    let late = run("u1", AgentAction::UnfenceSource { instance: t() }).await;
    match &late {
        CommandOutcome::Refused(Refusal::BadRequest { reason }) => {
            assert!(reason.contains("hand the writer back"), "{reason}")
        }
        other => panic!("a fence lifted beside a promoted target: {other:?}"),
    }
    let after = run(
        "w2",
        AgentAction::WaitForZeroLag {
            instance: t(),
            timeout_ms: 30_000,
        },
    )
    .await;
    assert!(
        matches!(&after, CommandOutcome::Done(CommandResult::Replication(r)) if r.source_fenced && r.promoted),
        "{after:?}"
    );

    // Bad warm plans are refused before any traffic.
    let negative = run(
        "warm-bad",
        AgentAction::Warm {
            instance: t(),
            plan: plan(-10.0),
        },
    )
    .await;
    match &negative {
        CommandOutcome::Refused(Refusal::BadRequest { reason }) => {
            assert!(reason.contains("rate_per_sec -10"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    let warmed = run(
        "warm",
        AgentAction::Warm {
            instance: t(),
            plan: plan(300.0),
        },
    )
    .await;
    let CommandOutcome::Done(CommandResult::Warmup(p)) = &warmed else {
        panic!("warm-up failed: {warmed:?}");
    };
    println!("warm-up through a command: {p:?}");
    assert_eq!(p.phase, WarmupPhase::Ready);
    let report = agent.report().await;
    assert_eq!(report.warmups.len(), 1);
    assert_eq!(
        report.replication.len(),
        2,
        "t-1's and the rolled-back t-2's"
    );

    run("stop", AgentAction::Stop { instance: t() }).await;
    agent.executor().provider().remove("t-1").await?;
    Ok(())
}

/// A restarted agent drives and reports the replications it had started, before any command:
/// the instance kept following its source, and the leader's repeated `StartReplication` is
/// answered from the ledger. Without the kept list, the restarted agent reported no
/// replication and the migration waited for a catch-up it could never see; the writer's move
/// (fence, lag 0, promote) then had no driver. A fence a rollback lifted stays lifted across
/// the restart: a fence or promotion of that target from before the rollback is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_agent_drives_the_replications_it_started() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let source = SampleProcess::start(
        common::sample_binary(),
        &dir.path().join("source"),
        BACKING_LATENCY_MS,
    )
    .await?;
    let src_url = source.url();
    let http = reqwest::Client::new();
    let write = |i: u32| {
        let http = http.clone();
        let url = format!("{src_url}/kv/key-{i}");
        async move {
            http.put(url)
                .body(format!("v{i}"))
                .send()
                .await?
                .error_for_status()?;
            anyhow::Ok(())
        }
    };
    for i in 0..20 {
        write(i).await?;
    }
    let state = dir.path().join("agent");
    let _reaper = common::reaper(&state);
    let t = || "t-1".to_string();
    let start = AgentAction::StartReplication {
        instance: t(),
        source: src_url.clone(),
    };
    {
        let agent = agent(&state).await?;
        for (op, action) in [
            (
                "p",
                AgentAction::Provision {
                    instances: vec![t()],
                },
            ),
            ("a", AgentAction::Activate { instance: t() }),
            ("r", start.clone()),
        ] {
            let out = agent.handle_command(&cmd(op, action)).await;
            assert!(matches!(out, CommandOutcome::Done(_)), "{op}: {out:?}");
        }
        assert_eq!(agent.report().await.replication.len(), 1);
    }

    // A new agent on the same state directory: the replication is reported at once.
    let restarted = agent(&state).await?;
    let report = restarted.report().await;
    assert_eq!(report.replication.len(), 1, "{report:?}");
    assert_eq!(report.replication[0].instance, t());
    assert_eq!(report.replication[0].source, src_url);
    // The instance went on following: writes after the restart reach it.
    for i in 20..40 {
        write(i).await?;
    }
    umbra_testkit::wait_for(
        "the target to hold every write",
        std::time::Duration::from_secs(30),
        || async {
            let r = restarted.report().await.replication.pop()?;
            (r.target_position == 40 && r.source_position == 40).then_some(())
        },
    )
    .await?;
    let repeated = restarted.handle_command(&cmd("r", start)).await;
    assert!(
        matches!(
            repeated,
            CommandOutcome::Done(CommandResult::Replication(_))
        ),
        "{repeated:?}"
    );
    // The writer's move works on the kept driver.
    for (op, action) in [
        ("f", AgentAction::FenceSource { instance: t() }),
        (
            "w0",
            AgentAction::WaitForZeroLag {
                instance: t(),
                timeout_ms: 30_000,
            },
        ),
        ("pr", AgentAction::Promote { instance: t() }),
    ] {
        let out = restarted.handle_command(&cmd(op, action)).await;
        assert!(
            matches!(out, CommandOutcome::Done(CommandResult::Replication(_))),
            "{op}: {out:?}"
        );
    }
    // A second replication of the same source, fenced, then rolled back: the fence lifted.
    let u = || "t-2".to_string();
    for (op, action) in [
        (
            "p2",
            AgentAction::Provision {
                instances: vec![u()],
            },
        ),
        ("a2", AgentAction::Activate { instance: u() }),
        (
            "r2",
            AgentAction::StartReplication {
                instance: u(),
                source: src_url.clone(),
            },
        ),
        ("f2", AgentAction::FenceSource { instance: u() }),
        ("u2", AgentAction::UnfenceSource { instance: u() }),
    ] {
        let out = restarted.handle_command(&cmd(op, action)).await;
        assert!(matches!(out, CommandOutcome::Done(_)), "{op}: {out:?}");
    }
    drop(restarted);
    let again = agent(&state).await?;
    let report = again.report().await;
    let promoted = report.replication.iter().find(|r| r.instance == t());
    assert!(promoted.is_some_and(|r| r.promoted), "{report:?}");
    // The restarted agent still refuses a fence or promotion from before that rollback.
    for (op, late) in [
        ("f2-late", AgentAction::FenceSource { instance: u() }),
        ("pr2-late", AgentAction::Promote { instance: u() }),
    ] {
        match again.handle_command(&cmd(op, late)).await {
            CommandOutcome::Refused(Refusal::BadRequest { reason }) => {
                assert!(reason.contains("rolled back"), "{reason}")
            }
            other => panic!("{op} after the fence was lifted and the agent restarted: {other:?}"),
        }
    }
    for id in ["t-1", "t-2"] {
        again.executor().provider().remove(id).await?;
    }
    Ok(())
}

#[test]
fn an_unknown_provider_stops_the_agent_before_it_creates_anything() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let state = dir.path().join("state");
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "region = \"eu-west\"\nstate_dir = {:?}\n[provider]\nkind = \"lambda\"\n",
            state.display().to_string()
        ),
    )?;
    let out = Command::new(env!("CARGO_BIN_EXE_umbra-agent"))
        .args(["run", "--config"])
        .arg(&config)
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("unknown provider \"lambda\"") && stderr.contains("\"process\""),
        "{stderr}"
    );
    assert!(!state.exists(), "nothing may be created");
    let out = Command::new(env!("CARGO_BIN_EXE_umbra-agent"))
        .args(["local", "--provider", "kubernetes", "--state-dir"])
        .arg(&state)
        .args(["--provision", "x"])
        .output()?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown provider \"kubernetes\""));
    assert!(!state.exists(), "nothing may be created");
    Ok(())
}
