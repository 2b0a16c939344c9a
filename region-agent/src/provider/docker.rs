//! The Docker runtime: each instance is a container of a locally built image (by default
//! `umbra-sample:local`, made `FROM scratch` from our static `umbra-sample` binary by
//! `region-agent/docker/build-image.sh`; nothing is pulled). Create = dormant, start,
//! pause/unpause (the cgroup freezer), stop, remove — all through the Docker Engine API
//! (bollard). The container's service port is published on 127.0.0.1 with a port Docker
//! picks, read back after start.
//!
//! Containers carry `UMBRA_INSTANCE_ID` (the name the sample service stamps on its writes)
//! and are labelled `umbra.provider=<owner>` and `umbra.instance=<id>`, which is how an
//! agent restarted on the same state directory recognises and adopts them. It must not touch
//! containers without its owner label.

use std::collections::HashMap;
use std::net::SocketAddr;

use bollard::Docker;
use bollard::models::{
    ContainerCreateBody, ContainerStateStatusEnum, ContainerUpdateBody, HostConfig, PortBinding,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, RemoveContainerOptionsBuilder, StopContainerOptionsBuilder,
};
use serde::{Deserialize, Serialize};

use super::process::ENV_INSTANCE_ID;
use super::{InstanceLimits, InstanceRecord, Observed, ProviderError, Runtime};

/// The image the build script produces.
pub const DEFAULT_IMAGE: &str = "umbra-sample:local";
/// The port the sample service listens on inside the container.
pub const CONTAINER_PORT: u16 = 8080;
/// Seconds Docker waits after SIGTERM before SIGKILL on stop (same as the process runtime).
pub const STOP_GRACE_SECS: i32 = 5;
/// Label carrying the owner (one agent's provider).
pub const LABEL_OWNER: &str = "umbra.provider";
/// Label carrying the instance id.
pub const LABEL_INSTANCE: &str = "umbra.instance";

/// What to run for each instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DockerConfig {
    /// The image (must exist locally).
    pub image: String,
    /// Owner label value; also the container-name prefix. Distinct per agent on one engine.
    pub owner: String,
    /// Backing-store latency passed to the sample service.
    pub backing_latency_ms: u64,
    /// The limits a new container starts with, until the leader sizes them from the
    /// forecast (small: grown before load arrives).
    #[serde(default = "default_limits")]
    pub initial_limits: InstanceLimits,
}

/// A new container's limits by default: a quarter core and 128 MiB.
pub const DEFAULT_INITIAL_LIMITS: InstanceLimits = InstanceLimits {
    cpu_millis: 250,
    memory_mib: 128,
};

fn default_limits() -> InstanceLimits {
    DEFAULT_INITIAL_LIMITS
}

/// Docker's CPU unit: 10⁻⁹ of a core.
fn nano_cpus(limits: InstanceLimits) -> i64 {
    i64::from(limits.cpu_millis) * 1_000_000
}

/// Memory in bytes.
fn memory_bytes(limits: InstanceLimits) -> i64 {
    i64::from(limits.memory_mib) * 1024 * 1024
}

impl DockerConfig {
    /// Checks the owner string (it becomes part of container names).
    pub fn validate(&self) -> Result<(), ProviderError> {
        let ok = !self.owner.is_empty()
            && self.owner.len() <= 40
            && self
                .owner
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !ok {
            return Err(ProviderError::Runtime {
                runtime: "docker",
                message: format!(
                    "owner {:?} must be 1 to 40 lowercase letters, digits or '-'",
                    self.owner
                ),
            });
        }
        check_limits(self.initial_limits)
    }
}

/// Docker refuses less than 6 MiB of memory; a limit must leave the service room to start.
pub const MIN_MEMORY_MIB: u32 = 16;

fn check_limits(limits: InstanceLimits) -> Result<(), ProviderError> {
    if limits.cpu_millis == 0 || limits.memory_mib < MIN_MEMORY_MIB {
        return Err(err(format!(
            "limits {} mCPU, {} MiB: need at least 1 mCPU and {MIN_MEMORY_MIB} MiB",
            limits.cpu_millis, limits.memory_mib
        )));
    }
    Ok(())
}

/// Instances as Docker containers.
pub struct DockerRuntime {
    docker: Docker,
    config: DockerConfig,
}

fn err(message: impl Into<String>) -> ProviderError {
    ProviderError::Runtime {
        runtime: "docker",
        message: message.into(),
    }
}

impl DockerRuntime {
    /// Connects to the local engine (DOCKER_HOST or the default socket), negotiates the API
    /// version (the engine here may be older than bollard's default), and checks that the image
    /// exists, with the command to build it in the error.
    pub async fn connect(config: DockerConfig) -> Result<Self, ProviderError> {
        config.validate()?;
        let docker = Docker::connect_with_local_defaults()
            .map_err(|e| err(format!("no Docker engine: {e}")))?
            .negotiate_version()
            .await
            .map_err(|e| err(format!("no Docker engine answers: {e}")))?;
        docker.inspect_image(&config.image).await.map_err(|e| {
            err(format!(
                "image {} is not available ({e}); build it with \
                     region-agent/docker/build-image.sh",
                config.image
            ))
        })?;
        Ok(DockerRuntime { docker, config })
    }

    fn name_of(&self, id: &str) -> String {
        format!("umbra-{}-{id}", self.config.owner)
    }

    fn container<'a>(&self, rec: &'a InstanceRecord) -> Result<&'a str, ProviderError> {
        rec.container_id
            .as_deref()
            .ok_or_else(|| err(format!("instance {:?} has no container", rec.id)))
    }

    /// Ids of every container this owner has, running or not (used by tests and clean-up).
    pub async fn owned_containers(&self) -> Result<Vec<String>, ProviderError> {
        let filters: HashMap<&str, Vec<String>> = HashMap::from([(
            "label",
            vec![format!("{LABEL_OWNER}={}", self.config.owner)],
        )]);
        let opts = bollard::query_parameters::ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&filters)
            .build();
        let list = self
            .docker
            .list_containers(Some(opts))
            .await
            .map_err(|e| err(format!("listing containers: {e}")))?;
        Ok(list.into_iter().filter_map(|c| c.id).collect())
    }
}

/// The host port Docker published for the service port.
fn published_port(settings: Option<bollard::models::NetworkSettings>) -> Option<u16> {
    settings
        .and_then(|n| n.ports)
        .and_then(|p| p.get(&format!("{CONTAINER_PORT}/tcp")).cloned().flatten())
        .and_then(|b| b.into_iter().find_map(|b| b.host_port))
        .and_then(|p| p.parse::<u16>().ok())
}

fn is_not_found(e: &bollard::errors::Error) -> bool {
    matches!(
        e,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

impl Runtime for DockerRuntime {
    fn name(&self) -> &'static str {
        "docker"
    }

    fn initial_limits(&self) -> Option<InstanceLimits> {
        Some(self.config.initial_limits)
    }

    /// Through the engine's update API, on the running or stopped container: the cgroup
    /// limits change in place, the process keeps running. Swap is held at the memory limit
    /// (no swap).
    async fn set_limits(
        &self,
        rec: &InstanceRecord,
        limits: InstanceLimits,
    ) -> Result<(), ProviderError> {
        check_limits(limits)?;
        let body = ContainerUpdateBody {
            nano_cpus: Some(nano_cpus(limits)),
            memory: Some(memory_bytes(limits)),
            memory_swap: Some(memory_bytes(limits)),
            ..Default::default()
        };
        self.docker
            .update_container(self.container(rec)?, body)
            .await
            .map_err(|e| err(format!("updating the limits of {:?}: {e}", rec.id)))
    }

    async fn create(&self, rec: &mut InstanceRecord) -> Result<(), ProviderError> {
        let port_key = format!("{CONTAINER_PORT}/tcp");
        let body = ContainerCreateBody {
            image: Some(self.config.image.clone()),
            cmd: Some(vec![
                "--listen".into(),
                format!("0.0.0.0:{CONTAINER_PORT}"),
                "--data-dir".into(),
                "/data".into(),
                "--backing-latency-ms".into(),
                self.config.backing_latency_ms.to_string(),
            ]),
            // The name the sample service stamps on the writes it accepts, as the process
            // runtime passes it.
            env: Some(vec![format!("{ENV_INSTANCE_ID}={}", rec.id)]),
            exposed_ports: Some(vec![port_key.clone()]),
            labels: Some(HashMap::from([
                (LABEL_OWNER.to_owned(), self.config.owner.clone()),
                (LABEL_INSTANCE.to_owned(), rec.id.clone()),
            ])),
            host_config: Some(HostConfig {
                port_bindings: Some(HashMap::from([(
                    port_key,
                    Some(vec![PortBinding {
                        host_ip: Some("127.0.0.1".into()),
                        // Empty: Docker picks a free host port.
                        host_port: Some(String::new()),
                    }]),
                )])),
                nano_cpus: Some(nano_cpus(self.config.initial_limits)),
                memory: Some(memory_bytes(self.config.initial_limits)),
                memory_swap: Some(memory_bytes(self.config.initial_limits)),
                ..Default::default()
            }),
            ..Default::default()
        };
        let opts = CreateContainerOptionsBuilder::new()
            .name(&self.name_of(&rec.id))
            .build();
        let created = self
            .docker
            .create_container(Some(opts), body)
            .await
            .map_err(|e| err(format!("creating container for {:?}: {e}", rec.id)))?;
        rec.container_id = Some(created.id);
        Ok(())
    }

    async fn start(&self, rec: &mut InstanceRecord) -> Result<(), ProviderError> {
        if rec.container_id.is_none() {
            // Recorded but never created (the agent died in between): create it now.
            self.create(rec).await?;
        }
        let id = self.container(rec)?.to_owned();
        self.docker
            .start_container(&id, None)
            .await
            .map_err(|e| err(format!("starting {:?}: {e}", rec.id)))?;
        let info = self
            .docker
            .inspect_container(&id, None)
            .await
            .map_err(|e| err(format!("inspecting {:?}: {e}", rec.id)))?;
        let port = published_port(info.network_settings)
            .ok_or_else(|| err(format!("container of {:?} has no published port", rec.id)))?;
        rec.addr = Some(SocketAddr::from(([127, 0, 0, 1], port)));
        Ok(())
    }

    async fn freeze(&self, rec: &InstanceRecord) -> Result<(), ProviderError> {
        self.docker
            .pause_container(self.container(rec)?)
            .await
            .map_err(|e| err(format!("pausing {:?}: {e}", rec.id)))
    }

    async fn thaw(&self, rec: &InstanceRecord) -> Result<(), ProviderError> {
        self.docker
            .unpause_container(self.container(rec)?)
            .await
            .map_err(|e| err(format!("unpausing {:?}: {e}", rec.id)))
    }

    async fn stop(&self, rec: &mut InstanceRecord) -> Result<(), ProviderError> {
        let id = self.container(rec)?.to_owned();
        // A paused container cannot take SIGTERM: thaw first (ignore "not paused").
        if matches!(self.observe(rec).await?, Observed::Frozen) {
            self.thaw(rec).await?;
        }
        let opts = StopContainerOptionsBuilder::new()
            .t(STOP_GRACE_SECS)
            .build();
        match self.docker.stop_container(&id, Some(opts)).await {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            // 304: already stopped.
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 304, ..
            }) => Ok(()),
            Err(e) => Err(err(format!("stopping {:?}: {e}", rec.id))),
        }
    }

    async fn remove(&self, rec: &InstanceRecord) -> Result<(), ProviderError> {
        let Some(id) = rec.container_id.as_deref() else {
            return Ok(());
        };
        let opts = RemoveContainerOptionsBuilder::new()
            .force(true)
            .v(true)
            .build();
        match self.docker.remove_container(id, Some(opts)).await {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(err(format!("removing {:?}: {e}", rec.id))),
        }
    }

    async fn observe(&self, rec: &mut InstanceRecord) -> Result<Observed, ProviderError> {
        // Without a recorded id (the agent died between creating the container and recording
        // it), look the container up by its name.
        let key = rec
            .container_id
            .clone()
            .unwrap_or_else(|| self.name_of(&rec.id));
        let info = match self.docker.inspect_container(&key, None).await {
            Ok(info) => info,
            Err(e) if is_not_found(&e) => return Ok(Observed::Absent),
            Err(e) => return Err(err(format!("inspecting {:?}: {e}", rec.id))),
        };
        let owned = info
            .config
            .as_ref()
            .and_then(|c| c.labels.as_ref())
            .and_then(|l| l.get(LABEL_OWNER))
            .is_some_and(|o| *o == self.config.owner);
        if !owned {
            return Ok(Observed::Absent);
        }
        if rec.container_id.is_none() {
            rec.container_id = info.id.clone();
        }
        if rec.addr.is_none()
            && let Some(port) = published_port(info.network_settings.clone())
        {
            rec.addr = Some(SocketAddr::from(([127, 0, 0, 1], port)));
        }
        Ok(match info.state.and_then(|s| s.status) {
            Some(ContainerStateStatusEnum::CREATED) => Observed::Created,
            Some(ContainerStateStatusEnum::RUNNING | ContainerStateStatusEnum::RESTARTING) => {
                Observed::Running
            }
            Some(ContainerStateStatusEnum::PAUSED) => Observed::Frozen,
            _ => Observed::Exited,
        })
    }
}
