//! The process provider against real `umbra-sample` processes: the lifecycle with measured
//! transitions, and adoption after the owning agent process is SIGKILLed (no process is left
//! behind: the restarted provider adopts every instance and stops them all).

use std::process::Command;
use std::time::Duration;

mod common;

use common::{processes_of, reaper, sample_binary, sample_provider};
use umbra_agent::provider::{InstanceState, Operation};
use umbra_testkit::{Process, wait_for};

async fn get(addr: &str, path: &str) -> reqwest::Result<reqwest::StatusCode> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()?;
    Ok(client
        .get(format!("http://{addr}{path}"))
        .send()
        .await?
        .status())
}

#[tokio::test]
async fn provision_activate_pause_resume_stop_with_timings() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let _reaper = reaper(dir.path());
    let provider = sample_provider(dir.path(), 30).await?;
    let ids: Vec<String> = (1..=5).map(|i| format!("shop-{i}")).collect();
    let reports = provider.provision(&ids).await?;
    assert!(reports.iter().all(|r| r.state == InstanceState::Dormant));
    assert!(
        processes_of(dir.path()).is_empty(),
        "dormant means no process"
    );

    for id in &ids[..3] {
        let r = provider.apply(id, Operation::Activate).await?;
        assert_eq!(r.state, InstanceState::Active);
        let addr = r.addr.clone().expect("an active instance has an address");
        assert_eq!(get(&addr, "/healthz").await?, 200);
        let t = r.transitions.last().unwrap();
        assert_eq!(
            (t.from, t.to),
            (InstanceState::Dormant, InstanceState::Active)
        );
        println!("{id}: dormant→serving {} ms", t.millis);
    }
    assert_eq!(processes_of(dir.path()).len(), 3);

    let paused = provider.apply(&ids[0], Operation::Pause).await?;
    assert_eq!(paused.state, InstanceState::Paused);
    let addr = paused.addr.clone().unwrap();
    assert!(
        get(&addr, "/healthz").await.is_err(),
        "a SIGSTOPped instance must not answer"
    );
    let resumed = provider.apply(&ids[0], Operation::Resume).await?;
    assert_eq!(
        resumed.state,
        InstanceState::Active,
        "resume returns to the paused-from state"
    );
    let t = resumed.transitions.last().unwrap();
    assert_eq!(
        (t.from, t.to),
        (InstanceState::Paused, InstanceState::Active)
    );
    println!("{}: paused→serving {} ms", ids[0], t.millis);
    assert_eq!(get(&addr, "/healthz").await?, 200);

    // Bad transitions change nothing.
    let err = provider.apply(&ids[4], Operation::Pause).await.unwrap_err();
    assert!(err.to_string().contains("Dormant"), "{err}");
    assert_eq!(provider.get(&ids[4]).await?.state, InstanceState::Dormant);

    for id in &ids {
        assert_eq!(
            provider.apply(id, Operation::Stop).await?.state,
            InstanceState::Stopped
        );
    }
    let listed = provider.list().await;
    assert_eq!(listed.len(), 5);
    assert!(listed.iter().all(|r| r.state == InstanceState::Stopped));
    assert!(
        listed[..3].iter().all(|r| r.transitions.len() >= 3),
        "create, activate and stop are all measured: {listed:?}"
    );
    assert!(processes_of(dir.path()).is_empty());
    Ok(())
}

#[tokio::test]
async fn a_killed_agent_is_replaced_by_one_that_adopts_its_instances() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let _reaper = reaper(dir.path());
    // The "agent" is a real process: umbra-agent's local mode provisions, activates 2 of 3
    // instances, pauses one, and holds; we SIGKILL it.
    let mut command = Command::new(env!("CARGO_BIN_EXE_umbra-agent"));
    command
        .args(["local", "--state-dir"])
        .arg(dir.path())
        .args(["--sample-binary"])
        .arg(sample_binary())
        .args([
            "--provision",
            "a-1,a-2,a-3",
            "--activate",
            "a-1,a-2",
            "--pause",
            "a-2",
            "--hold",
        ]);
    // Its log beside the state directory, not in it.
    let logs = tempfile::tempdir()?;
    let log = logs.path().join("agent.log");
    let mut agent = Process::spawn("umbra-agent local", command, &log)?;
    agent
        .wait_for(
            "the agent to set up its instances",
            Duration::from_secs(60),
            || {
                let ready =
                    processes_of(dir.path()).len() >= 2 && dir.path().join("local-ready").exists();
                async move { ready.then_some(()) }
            },
        )
        .await?;
    agent.kill()?; // SIGKILL
    let orphans = processes_of(dir.path());
    assert_eq!(orphans.len(), 2, "instances outlive a killed agent");

    let provider = sample_provider(dir.path(), 30).await?;
    let states: Vec<_> = provider
        .list()
        .await
        .into_iter()
        .map(|r| (r.id, r.state))
        .collect();
    assert_eq!(
        states,
        vec![
            ("a-1".to_string(), InstanceState::Active),
            ("a-2".to_string(), InstanceState::Paused),
            ("a-3".to_string(), InstanceState::Dormant),
        ]
    );
    // The adopted paused instance resumes to where it was.
    assert_eq!(
        provider.apply("a-2", Operation::Resume).await?.state,
        InstanceState::Active
    );
    for id in ["a-1", "a-2", "a-3"] {
        provider.remove(id).await?;
    }
    let left = wait_for(
        "every instance process to be gone",
        Duration::from_secs(10),
        || {
            let left = processes_of(dir.path());
            async move { left.is_empty().then_some(()) }
        },
    )
    .await;
    assert!(
        left.is_ok(),
        "processes left behind: {:?}",
        processes_of(dir.path())
    );
    assert!(provider.list().await.is_empty());
    Ok(())
}

#[tokio::test]
async fn a_process_started_but_not_yet_recorded_is_still_adopted() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let _reaper = reaper(dir.path());
    let provider = sample_provider(dir.path(), 5).await?;
    provider.provision(&["c-1".to_string()]).await?;
    provider.apply("c-1", Operation::Start).await?;
    drop(provider);
    // Simulate an agent killed after spawning but before recording: the record says dormant,
    // with no pid and no address.
    let record = dir.path().join("instances/c-1.json");
    let mut json: serde_json::Value = serde_json::from_slice(&std::fs::read(&record)?)?;
    json["state"] = "Dormant".into();
    json["pid"] = serde_json::Value::Null;
    json["addr"] = serde_json::Value::Null;
    std::fs::write(&record, serde_json::to_vec(&json)?)?;

    let provider = sample_provider(dir.path(), 5).await?;
    let rec = provider.get("c-1").await?;
    assert_eq!(rec.state, InstanceState::Warm, "found through its pid file");
    assert_eq!(get(&rec.addr.unwrap().to_string(), "/healthz").await?, 200);
    provider.remove("c-1").await?;
    assert!(processes_of(dir.path()).is_empty());
    Ok(())
}
