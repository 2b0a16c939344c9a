//! The Docker provider against the real Docker engine with the locally built
//! `umbra-sample:local` image (built by `region-agent/docker/build-image.sh` when missing):
//! provision 5 dormant, activate 3, pause and resume 1, stop all, with measured transitions;
//! a second provider on the same state directory adopts the containers; nothing is left.
//! Fails, saying so, where no Docker engine answers: a missing engine is never a pass.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use umbra_agent::provider::docker::{
    DEFAULT_IMAGE, DEFAULT_INITIAL_LIMITS, DockerConfig, DockerRuntime,
};
use umbra_agent::provider::{InstanceLimits, InstanceState, Operation, Provider};

async fn engine_answers() -> bool {
    let Ok(docker) = bollard::Docker::connect_with_local_defaults() else {
        return false;
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(5), docker.ping()).await,
        Ok(Ok(_))
    )
}

async fn ensure_image() -> anyhow::Result<()> {
    let docker = bollard::Docker::connect_with_local_defaults()?
        .negotiate_version()
        .await?;
    if docker.inspect_image(DEFAULT_IMAGE).await.is_ok() {
        return Ok(());
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("docker/build-image.sh");
    let status = tokio::time::timeout(
        Duration::from_secs(900),
        tokio::process::Command::new(&script).status(),
    )
    .await??;
    anyhow::ensure!(status.success(), "{} failed: {status}", script.display());
    Ok(())
}

async fn healthz(addr: &str) -> bool {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    matches!(client.get(format!("http://{addr}/healthz")).send().await, Ok(r) if r.status() == 200)
}

#[tokio::test]
async fn docker_lifecycle_with_timings_and_adoption() -> anyhow::Result<()> {
    anyhow::ensure!(
        engine_answers().await,
        "no Docker engine answers (DOCKER_HOST or /var/run/docker.sock): the Docker provider is \
         tested against a real engine; install docker.io and start it, then run the test again"
    );
    ensure_image().await?;
    let dir = tempfile::tempdir()?;
    let owner = format!("test-{}", std::process::id());
    let config = DockerConfig {
        image: DEFAULT_IMAGE.into(),
        owner: owner.clone(),
        backing_latency_ms: 30,
        initial_limits: DEFAULT_INITIAL_LIMITS,
    };
    let provider =
        Provider::open(DockerRuntime::connect(config.clone()).await?, dir.path()).await?;
    let ids: Vec<String> = (1..=5).map(|i| format!("d-{i}")).collect();
    let result = async {
        let created = provider.provision(&ids).await?;
        assert!(created.iter().all(|r| r.state == InstanceState::Dormant));
        assert_eq!(provider.runtime().owned_containers().await?.len(), 5);
        for id in &ids[..3] {
            let r = provider.apply(id, Operation::Activate).await?;
            assert_eq!(r.state, InstanceState::Active);
            assert!(healthz(r.addr.as_deref().unwrap()).await);
            println!(
                "{id}: dormant→serving {} ms",
                r.transitions.last().unwrap().millis
            );
        }
        let paused = provider.apply(&ids[0], Operation::Pause).await?;
        assert_eq!(paused.state, InstanceState::Paused);
        assert!(
            !healthz(paused.addr.as_deref().unwrap()).await,
            "a paused container answers"
        );
        println!(
            "{}: active→paused {} ms",
            ids[0],
            paused.transitions.last().unwrap().millis
        );

        // Adoption: a new provider on the same state directory sees the same states.
        let again =
            Provider::open(DockerRuntime::connect(config.clone()).await?, dir.path()).await?;
        let states: Vec<_> = again.list().await.into_iter().map(|r| r.state).collect();
        use InstanceState::*;
        assert_eq!(states, vec![Paused, Active, Active, Dormant, Dormant]);

        let resumed = again.apply(&ids[0], Operation::Resume).await?;
        assert_eq!(resumed.state, Active);
        println!(
            "{}: paused→serving {} ms",
            ids[0],
            resumed.transitions.last().unwrap().millis
        );
        assert!(healthz(resumed.addr.as_deref().unwrap()).await);

        // Limits: created small, then grown in place on the running container.
        let docker = bollard::Docker::connect_with_local_defaults()?;
        let limits_of = async |id: &str| -> anyhow::Result<(i64, i64)> {
            let name = format!("umbra-{owner}-{id}");
            let host = docker.inspect_container(&name, None).await?.host_config;
            let host = host.context("no host config")?;
            Ok((
                host.nano_cpus.unwrap_or_default(),
                host.memory.unwrap_or_default(),
            ))
        };
        let mib = 1024 * 1024;
        assert_eq!(
            limits_of(&ids[1]).await?,
            (
                i64::from(DEFAULT_INITIAL_LIMITS.cpu_millis) * 1_000_000,
                i64::from(DEFAULT_INITIAL_LIMITS.memory_mib) * mib
            )
        );
        let grown = InstanceLimits {
            cpu_millis: 750,
            memory_mib: 192,
        };
        let started = std::time::Instant::now();
        let report = again.set_limits(&ids[1], grown).await?;
        println!(
            "{}: limits {:?} → {grown:?} in {} ms",
            ids[1],
            DEFAULT_INITIAL_LIMITS,
            started.elapsed().as_millis()
        );
        assert_eq!(report.limits, Some(grown));
        assert_eq!(report.state, Active, "the limits change in place");
        assert_eq!(limits_of(&ids[1]).await?, (750_000_000, 192 * mib));
        assert!(healthz(report.addr.as_deref().unwrap()).await);
        for id in &ids {
            assert_eq!(again.apply(id, Operation::Stop).await?.state, Stopped);
        }
        for id in &ids {
            again.remove(id).await?;
        }
        assert!(
            again.runtime().owned_containers().await?.is_empty(),
            "containers left behind"
        );
        anyhow::Ok(())
    }
    .await;
    if result.is_err() {
        // Leave no containers behind even when an assertion failed.
        for id in &ids {
            let _ = provider.remove(id).await;
        }
    }
    result
}
