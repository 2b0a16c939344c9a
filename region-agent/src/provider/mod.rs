//! Instance providers: one lifecycle (dormant → warm → active, paused, stopped) over
//! interchangeable runtimes — local processes ([`process`], the default) and Docker containers
//! ([`docker`]). [`Provider`] owns the state machine, the per-instance records on disk, the
//! health wait and the transition timings the planner needs (dormant→serving, paused→serving);
//! a [`Runtime`] only knows how to create, start, freeze, thaw, stop and remove one instance,
//! and how to observe what is really running.
//!
//! After an agent restart the provider ADOPTS its instances: [`Provider::open`] reads the
//! records in its state directory, asks the runtime what is actually running (a process is
//! recognised by its pid *and* the instance marker in its environment, a container by its
//! labels), and takes each instance over in the state observed. Nothing keeps serving
//! unmanaged: an instance whose process or container is gone is reported `Stopped`, and
//! `stop`/`remove` work on adopted instances like on any other. Adoption rather than clean-up,
//! because an agent crash must not take a region's serving capacity down with it.
//!
//! It must not decide *which* instances should exist (the orchestrator does) nor touch the
//! load balancer (active/warm is the provider's bookkeeping; the LB follows reports).

pub mod docker;
pub mod process;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
pub use umbra_proto::agent::{InstanceLimits, InstanceReport, InstanceState, TransitionTiming};

/// How long a started or resumed instance may take to answer its health check: 20 s covers a
/// container start on a loaded 2-core machine with margin; a real deployment sets its own.
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(20);
/// Health-check poll interval: short, because the wait is what the transition timing measures.
pub const HEALTH_POLL_INTERVAL: Duration = Duration::from_millis(5);
/// Transitions remembered per instance (oldest dropped first).
pub const MAX_TRANSITIONS_KEPT: usize = 64;
/// Longest instance id: it becomes a directory and a container name.
pub const MAX_INSTANCE_ID_CHARS: usize = 63;

/// Which runtime a provider uses; parsed from configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    /// Local processes (default).
    Process,
    /// Docker containers.
    Docker,
}

impl std::str::FromStr for ProviderKind {
    type Err = ProviderError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "process" => Ok(ProviderKind::Process),
            "docker" => Ok(ProviderKind::Docker),
            other => Err(ProviderError::UnknownProvider(other.to_owned())),
        }
    }
}

/// Errors of providers and runtimes.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// Configuration named a provider that does not exist.
    #[error("unknown provider {0:?}: use \"process\" (local processes) or \"docker\"")]
    UnknownProvider(String),
    /// The instance id is not usable.
    #[error(
        "invalid instance id {0:?}: use 1 to {MAX_INSTANCE_ID_CHARS} lowercase letters, digits \
         or '-'"
    )]
    InvalidId(String),
    /// No such instance.
    #[error("no instance {0:?}")]
    NotFound(String),
    /// The instance exists already.
    #[error("instance {0:?} exists already")]
    AlreadyExists(String),
    /// The operation is not allowed in the instance's state.
    #[error("cannot {operation} instance {id:?} while it is {state:?}")]
    BadState {
        /// The instance.
        id: String,
        /// What was asked.
        operation: &'static str,
        /// Its state.
        state: InstanceState,
    },
    /// The instance did not become healthy in time.
    #[error("instance {id:?} did not answer its health check at {addr} within {timeout:?}")]
    Unhealthy {
        /// The instance.
        id: String,
        /// Where it was probed.
        addr: SocketAddr,
        /// How long we waited.
        timeout: Duration,
    },
    /// The runtime failed (spawn, signal, Docker API...).
    #[error("{runtime} runtime: {message}")]
    Runtime {
        /// Which runtime.
        runtime: &'static str,
        /// What failed.
        message: String,
    },
    /// The runtime cannot do this at all.
    #[error("the {runtime} provider cannot {what}; {advice}")]
    Unsupported {
        /// Which runtime.
        runtime: &'static str,
        /// What was asked.
        what: &'static str,
        /// What to do instead.
        advice: &'static str,
    },
    /// The state directory could not be used.
    #[error("provider state {path}: {message}")]
    State {
        /// The path.
        path: PathBuf,
        /// What failed.
        message: String,
    },
}

/// An operation on an instance, for the transition table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// Start a dormant (or stopped) instance.
    Start,
    /// Put in service (starting it first if dormant or stopped).
    Activate,
    /// Take out of service, keep running.
    Deactivate,
    /// Freeze.
    Pause,
    /// Thaw.
    Resume,
    /// Stop.
    Stop,
}

impl Operation {
    fn name(self) -> &'static str {
        match self {
            Operation::Start => "start",
            Operation::Activate => "activate",
            Operation::Deactivate => "deactivate",
            Operation::Pause => "pause",
            Operation::Resume => "resume",
            Operation::Stop => "stop",
        }
    }
}

/// What a runtime must do for an operation, decided by [`plan`] from the state alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Nothing: the instance is already there (operations are idempotent).
    None,
    /// Start the process or container and wait for health, then enter the state.
    Start(InstanceState),
    /// Only bookkeeping: enter the state.
    Mark(InstanceState),
    /// Freeze it.
    Freeze,
    /// Thaw it, wait for health, then enter the state.
    Thaw(InstanceState),
    /// Stop it.
    Stop,
}

/// The lifecycle table: what `op` means for an instance in `state` (paused from
/// `paused_from`). Pure, so it is tested as a table.
pub fn plan(
    id: &str,
    state: InstanceState,
    paused_from: Option<InstanceState>,
    op: Operation,
) -> Result<Step, ProviderError> {
    use InstanceState::*;
    let step = match (op, state) {
        (Operation::Start, Dormant | Stopped) => Step::Start(Warm),
        (Operation::Start, Warm | Active) => Step::None,
        (Operation::Activate, Dormant | Stopped) => Step::Start(Active),
        (Operation::Activate, Warm) => Step::Mark(Active),
        (Operation::Activate, Active) => Step::None,
        (Operation::Deactivate, Active) => Step::Mark(Warm),
        (Operation::Deactivate, Warm) => Step::None,
        (Operation::Pause, Warm | Active) => Step::Freeze,
        (Operation::Pause, Paused) => Step::None,
        (Operation::Resume, Paused) => Step::Thaw(paused_from.unwrap_or(Warm)),
        (Operation::Resume, Warm | Active) => Step::None,
        (Operation::Stop, Stopped) => Step::None,
        (Operation::Stop, _) => Step::Stop,
        _ => {
            return Err(ProviderError::BadState {
                id: id.to_owned(),
                operation: op.name(),
                state,
            });
        }
    };
    Ok(step)
}

/// What a runtime sees when asked about an instance (used when adopting).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observed {
    /// Nothing exists for it (no process, no container).
    Absent,
    /// Created, never started (a container in `created`).
    Created,
    /// Running.
    Running,
    /// Frozen (SIGSTOP, docker pause).
    Frozen,
    /// Exited but not removed.
    Exited,
}

/// The durable record of one instance, kept as `<state_dir>/instances/<id>.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceRecord {
    /// The instance id.
    pub id: String,
    /// Its state.
    pub state: InstanceState,
    /// The state it was paused from.
    pub paused_from: Option<InstanceState>,
    /// Where it serves, once started.
    pub addr: Option<SocketAddr>,
    /// Process id (process runtime).
    pub pid: Option<u32>,
    /// Container id (docker runtime).
    pub container_id: Option<String>,
    /// Measured transitions, oldest first.
    pub transitions: Vec<TransitionTiming>,
    /// The CPU and memory limits the runtime enforces (`None`: it enforces none).
    #[serde(default)]
    pub limits: Option<InstanceLimits>,
}

impl InstanceRecord {
    fn report(&self) -> InstanceReport {
        InstanceReport {
            id: self.id.clone(),
            state: self.state,
            addr: self.addr.map(|a| a.to_string()),
            transitions: self.transitions.clone(),
            limits: self.limits,
        }
    }
}

/// What runs instances. Implementations do the I/O of one step for one instance; the
/// [`Provider`] decides which step, measures it and persists the result.
pub trait Runtime: Send + Sync + 'static {
    /// The runtime's name, for errors and logs.
    fn name(&self) -> &'static str;
    /// Create what a dormant instance needs (directories, a container). Sets ids on `rec`.
    fn create(
        &self,
        rec: &mut InstanceRecord,
    ) -> impl Future<Output = Result<(), ProviderError>> + Send;
    /// Start it; sets `rec.addr` (and `rec.pid`). Does not wait for health.
    fn start(
        &self,
        rec: &mut InstanceRecord,
    ) -> impl Future<Output = Result<(), ProviderError>> + Send;
    /// Freeze it: memory kept, no CPU. Returns once frozen.
    fn freeze(
        &self,
        rec: &InstanceRecord,
    ) -> impl Future<Output = Result<(), ProviderError>> + Send;
    /// Thaw it. Does not wait for health.
    fn thaw(&self, rec: &InstanceRecord) -> impl Future<Output = Result<(), ProviderError>> + Send;
    /// Stop it (gracefully, then by force), keeping its data.
    fn stop(
        &self,
        rec: &mut InstanceRecord,
    ) -> impl Future<Output = Result<(), ProviderError>> + Send;
    /// Delete it and its data (stopping it first if needed).
    fn remove(
        &self,
        rec: &InstanceRecord,
    ) -> impl Future<Output = Result<(), ProviderError>> + Send;
    /// What is really there for this record. May fill in what a crash kept from being
    /// recorded (a pid, a container id, an address) when it finds it by the instance's name.
    fn observe(
        &self,
        rec: &mut InstanceRecord,
    ) -> impl Future<Output = Result<Observed, ProviderError>> + Send;
    /// The limits a new instance gets (`None`: this runtime enforces none).
    fn initial_limits(&self) -> Option<InstanceLimits>;
    /// Sets a created instance's CPU and memory limits, running or not.
    fn set_limits(
        &self,
        rec: &InstanceRecord,
        limits: InstanceLimits,
    ) -> impl Future<Output = Result<(), ProviderError>> + Send;
}

type Slot = Arc<tokio::sync::Mutex<InstanceRecord>>;

/// A set of instances on one runtime, with their lifecycle.
pub struct Provider<R: Runtime> {
    runtime: R,
    state_dir: PathBuf,
    health_timeout: Duration,
    http: reqwest::Client,
    instances: Mutex<BTreeMap<String, Slot>>,
    transition_seconds: prometheus::HistogramVec,
}

/// The histogram of measured transition times, by `from` and `to` state (unregistered: the
/// agent's metrics endpoint registers it).
fn transition_histogram() -> prometheus::HistogramVec {
    prometheus::HistogramVec::new(
        prometheus::HistogramOpts::new(
            "umbra_agent_instance_transition_seconds",
            "Time from a lifecycle command to the new state holding (for a start or resume: \
             until the instance answered its health check), by from and to state.",
        )
        .buckets(vec![
            0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
        ]),
        &["from", "to"],
    )
    .expect("valid metric")
}

fn check_id(id: &str) -> Result<(), ProviderError> {
    let ok = !id.is_empty()
        && id.len() <= MAX_INSTANCE_ID_CHARS
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !id.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(ProviderError::InvalidId(id.to_owned()))
    }
}

impl<R: Runtime> Provider<R> {
    /// Opens the provider on `state_dir` and adopts the instances recorded there (see the
    /// module docs): each record is reconciled with what the runtime observes.
    pub async fn open(runtime: R, state_dir: &Path) -> Result<Self, ProviderError> {
        let dir = state_dir.join("instances");
        std::fs::create_dir_all(&dir).map_err(|e| ProviderError::State {
            path: dir.clone(),
            message: e.to_string(),
        })?;
        let provider = Provider {
            runtime,
            state_dir: state_dir.to_owned(),
            health_timeout: DEFAULT_HEALTH_TIMEOUT,
            http: reqwest::Client::builder()
                .timeout(Duration::from_millis(500))
                .build()
                .map_err(|e| ProviderError::State {
                    path: dir.clone(),
                    message: format!("HTTP client: {e}"),
                })?,
            instances: Mutex::new(BTreeMap::new()),
            transition_seconds: transition_histogram(),
        };
        let entries = std::fs::read_dir(&dir).map_err(|e| ProviderError::State {
            path: dir.clone(),
            message: e.to_string(),
        })?;
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            let rec: InstanceRecord = std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
                .map_err(|message| ProviderError::State {
                    path: path.clone(),
                    message,
                })?;
            let adopted = provider.adopt(rec).await?;
            tracing::info!(
                runtime = provider.runtime.name(),
                id = %adopted.id,
                state = ?adopted.state,
                "adopted instance after restart"
            );
            provider.persist(&adopted)?;
            provider.instances.lock().expect("instances lock").insert(
                adopted.id.clone(),
                Arc::new(tokio::sync::Mutex::new(adopted)),
            );
        }
        Ok(provider)
    }

    /// The runtime.
    pub fn runtime(&self) -> &R {
        &self.runtime
    }

    async fn adopt(&self, mut rec: InstanceRecord) -> Result<InstanceRecord, ProviderError> {
        use InstanceState::*;
        let observed = self.runtime.observe(&mut rec).await?;
        let running_state = match rec.state {
            Active => Active,
            Paused => rec.paused_from.unwrap_or(Warm),
            _ => Warm,
        };
        rec.state = match (observed, rec.state) {
            (Observed::Running, _) => running_state,
            (Observed::Frozen, _) => {
                rec.paused_from = Some(running_state);
                Paused
            }
            (Observed::Created, _) => Dormant,
            // A dormant process instance has nothing running by design.
            (Observed::Absent, Dormant) => Dormant,
            (Observed::Absent | Observed::Exited, _) => Stopped,
        };
        if rec.state != Paused {
            rec.paused_from = None;
        }
        Ok(rec)
    }

    fn record_path(&self, id: &str) -> PathBuf {
        self.state_dir.join("instances").join(format!("{id}.json"))
    }

    /// Writes a record atomically (temp file + rename).
    fn persist(&self, rec: &InstanceRecord) -> Result<(), ProviderError> {
        let path = self.record_path(&rec.id);
        let tmp = path.with_extension("json.tmp");
        let err = |e: std::io::Error| ProviderError::State {
            path: path.clone(),
            message: e.to_string(),
        };
        std::fs::write(
            &tmp,
            serde_json::to_vec_pretty(rec).expect("records serialize"),
        )
        .map_err(err)?;
        std::fs::rename(&tmp, &path).map_err(err)
    }

    fn slot(&self, id: &str) -> Result<Slot, ProviderError> {
        self.instances
            .lock()
            .expect("instances lock")
            .get(id)
            .cloned()
            .ok_or_else(|| ProviderError::NotFound(id.to_owned()))
    }

    /// Creates dormant instances. Ids are checked all first: on a bad or duplicate id nothing
    /// is created.
    pub async fn provision(&self, ids: &[String]) -> Result<Vec<InstanceReport>, ProviderError> {
        {
            let map = self.instances.lock().expect("instances lock");
            for (i, id) in ids.iter().enumerate() {
                check_id(id)?;
                if map.contains_key(id) || ids[..i].contains(id) {
                    return Err(ProviderError::AlreadyExists(id.clone()));
                }
            }
        }
        let mut out = Vec::new();
        for id in ids {
            let started = Instant::now();
            let mut rec = InstanceRecord {
                id: id.clone(),
                state: InstanceState::Dormant,
                paused_from: None,
                addr: None,
                pid: None,
                container_id: None,
                transitions: Vec::new(),
                limits: self.runtime.initial_limits(),
            };
            // Recorded before the runtime acts, so an agent killed half-way leaves a record that
            // the next agent reconciles (and adopts what was created) instead of an orphan.
            self.persist(&rec)?;
            if let Err(e) = self.runtime.create(&mut rec).await {
                let _ = std::fs::remove_file(self.record_path(id));
                return Err(e);
            }
            self.push_timing(&mut rec, InstanceState::Stopped, started);
            // "Created" is recorded as a transition from Stopped (nothing) to Dormant.
            rec.state = InstanceState::Dormant;
            self.persist(&rec)?;
            out.push(rec.report());
            self.instances
                .lock()
                .expect("instances lock")
                .insert(id.clone(), Arc::new(tokio::sync::Mutex::new(rec)));
        }
        Ok(out)
    }

    /// The measured transition times (see [`transition_histogram`]).
    pub fn transition_seconds(&self) -> &prometheus::HistogramVec {
        &self.transition_seconds
    }

    /// Keeps a transition's measured time on the record (the newest ones) and observes it.
    fn push_timing(&self, rec: &mut InstanceRecord, from: InstanceState, started: Instant) {
        let elapsed = started.elapsed();
        if rec.transitions.len() >= MAX_TRANSITIONS_KEPT {
            rec.transitions.remove(0);
        }
        rec.transitions.push(TransitionTiming {
            from,
            to: rec.state,
            millis: elapsed.as_millis() as u64,
        });
        self.transition_seconds
            .with_label_values(&[from.name(), rec.state.name()])
            .observe(elapsed.as_secs_f64());
    }

    /// Applies an operation to an instance, measuring it. Idempotent: an instance already in
    /// the target state is left alone.
    pub async fn apply(&self, id: &str, op: Operation) -> Result<InstanceReport, ProviderError> {
        let slot = self.slot(id)?;
        let mut rec = slot.lock().await;
        let step = plan(id, rec.state, rec.paused_from, op)?;
        let from = rec.state;
        let started = Instant::now();
        match step {
            Step::None => return Ok(rec.report()),
            Step::Mark(to) => rec.state = to,
            Step::Start(to) => {
                self.runtime.start(&mut rec).await?;
                let addr = rec.addr.ok_or_else(|| ProviderError::Runtime {
                    runtime: self.runtime.name(),
                    message: format!("instance {id:?} started without an address"),
                })?;
                // Record the pid/container before waiting, so a failed health wait still
                // leaves a record that `stop` can act on.
                rec.state = to;
                self.persist(&rec)?;
                self.wait_healthy(id, addr).await?;
            }
            Step::Freeze => {
                self.runtime.freeze(&rec).await?;
                rec.paused_from = Some(from);
                rec.state = InstanceState::Paused;
            }
            Step::Thaw(to) => {
                self.runtime.thaw(&rec).await?;
                rec.state = to;
                rec.paused_from = None;
                if let Some(addr) = rec.addr {
                    self.wait_healthy(id, addr).await?;
                }
            }
            Step::Stop => {
                self.runtime.stop(&mut rec).await?;
                rec.state = InstanceState::Stopped;
                rec.paused_from = None;
            }
        }
        self.push_timing(&mut rec, from, started);
        self.persist(&rec)?;
        tracing::info!(id, ?from, to = ?rec.state, ms = started.elapsed().as_millis() as u64, "instance transition");
        Ok(rec.report())
    }

    /// Sets an instance's CPU and memory limits (see [`Runtime::set_limits`]); the record
    /// keeps them. Idempotent.
    pub async fn set_limits(
        &self,
        id: &str,
        limits: InstanceLimits,
    ) -> Result<InstanceReport, ProviderError> {
        let slot = self.slot(id)?;
        let mut rec = slot.lock().await;
        if rec.limits == Some(limits) {
            return Ok(rec.report());
        }
        self.runtime.set_limits(&rec, limits).await?;
        rec.limits = Some(limits);
        self.persist(&rec)?;
        tracing::info!(
            id,
            cpu_millis = limits.cpu_millis,
            memory_mib = limits.memory_mib,
            "instance limits set"
        );
        Ok(rec.report())
    }

    /// Stops (if needed) and deletes an instance and its record.
    pub async fn remove(&self, id: &str) -> Result<(), ProviderError> {
        let slot = self.slot(id)?;
        let rec = slot.lock().await;
        self.runtime.remove(&rec).await?;
        let path = self.record_path(id);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(ProviderError::State {
                    path,
                    message: e.to_string(),
                });
            }
        }
        self.instances.lock().expect("instances lock").remove(id);
        Ok(())
    }

    fn slots(&self) -> Vec<Slot> {
        self.instances
            .lock()
            .expect("instances lock")
            .values()
            .cloned()
            .collect()
    }

    /// Every instance, as last recorded (ordered by id).
    pub async fn list(&self) -> Vec<InstanceReport> {
        let slots = self.slots();
        let mut out = Vec::with_capacity(slots.len());
        for s in slots {
            out.push(s.lock().await.report());
        }
        out
    }

    /// Asks the runtime about every running instance: one whose process or container is gone
    /// (it crashed, or was killed) is recorded as it is, `Stopped`, so the leader can start it
    /// again, rather than left in the state it last reached. Once per heartbeat, not on every
    /// [`Provider::list`] (a Docker runtime answers each question with an API call).
    pub async fn notice_exits(&self) {
        for s in self.slots() {
            self.notice_exit(&mut *s.lock().await).await;
        }
    }

    async fn notice_exit(&self, rec: &mut InstanceRecord) {
        use InstanceState::*;
        if !matches!(rec.state, Active | Warm) {
            return;
        }
        if !matches!(
            self.runtime.observe(rec).await,
            Ok(Observed::Exited | Observed::Absent)
        ) {
            return;
        }
        tracing::warn!(id = %rec.id, was = ?rec.state, "instance exited on its own; reporting it stopped");
        // Clean up what is left of it (a zombie to reap, a container to stop).
        if let Err(error) = self.runtime.stop(rec).await {
            tracing::debug!(id = %rec.id, %error, "cleaning up an exited instance");
        }
        rec.state = Stopped;
        rec.paused_from = None;
        if let Err(error) = self.persist(rec) {
            tracing::warn!(id = %rec.id, %error, "recording an exited instance");
        }
    }

    /// One instance's record.
    pub async fn get(&self, id: &str) -> Result<InstanceRecord, ProviderError> {
        Ok(self.slot(id)?.lock().await.clone())
    }

    async fn wait_healthy(&self, id: &str, addr: SocketAddr) -> Result<(), ProviderError> {
        let deadline = Instant::now() + self.health_timeout;
        let url = format!("http://{addr}/healthz");
        loop {
            if let Ok(resp) = self.http.get(&url).send().await
                && resp.status().is_success()
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(ProviderError::Unhealthy {
                    id: id.to_owned(),
                    addr,
                    timeout: self.health_timeout,
                });
            }
            tokio::time::sleep(HEALTH_POLL_INTERVAL).await;
        }
    }
}

/// A provider on either runtime, chosen by configuration.
pub enum AnyProvider {
    /// Local processes.
    Process(Provider<process::ProcessRuntime>),
    /// Docker containers.
    Docker(Provider<docker::DockerRuntime>),
}

macro_rules! dispatch {
    ($self:ident, $p:ident => $e:expr) => {
        match $self {
            AnyProvider::Process($p) => $e,
            AnyProvider::Docker($p) => $e,
        }
    };
}

impl AnyProvider {
    /// Which runtime.
    pub fn kind(&self) -> ProviderKind {
        match self {
            AnyProvider::Process(_) => ProviderKind::Process,
            AnyProvider::Docker(_) => ProviderKind::Docker,
        }
    }
    /// See [`Provider::transition_seconds`].
    pub fn transition_seconds(&self) -> &prometheus::HistogramVec {
        dispatch!(self, p => p.transition_seconds())
    }
    /// See [`Provider::provision`].
    pub async fn provision(&self, ids: &[String]) -> Result<Vec<InstanceReport>, ProviderError> {
        dispatch!(self, p => p.provision(ids).await)
    }
    /// See [`Provider::apply`].
    pub async fn apply(&self, id: &str, op: Operation) -> Result<InstanceReport, ProviderError> {
        dispatch!(self, p => p.apply(id, op).await)
    }
    /// See [`Provider::remove`].
    pub async fn remove(&self, id: &str) -> Result<(), ProviderError> {
        dispatch!(self, p => p.remove(id).await)
    }
    /// See [`Provider::set_limits`].
    pub async fn set_limits(
        &self,
        id: &str,
        limits: InstanceLimits,
    ) -> Result<InstanceReport, ProviderError> {
        dispatch!(self, p => p.set_limits(id, limits).await)
    }
    /// See [`Provider::list`].
    pub async fn list(&self) -> Vec<InstanceReport> {
        dispatch!(self, p => p.list().await)
    }
    /// See [`Provider::notice_exits`].
    pub async fn notice_exits(&self) {
        dispatch!(self, p => p.notice_exits().await)
    }
    /// See [`Provider::get`].
    pub async fn get(&self, id: &str) -> Result<InstanceRecord, ProviderError> {
        dispatch!(self, p => p.get(id).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use InstanceState::*;

    #[test]
    fn the_lifecycle_table() {
        let table = [
            (Dormant, None, Operation::Start, Some(Step::Start(Warm))),
            (
                Dormant,
                None,
                Operation::Activate,
                Some(Step::Start(Active)),
            ),
            (Warm, None, Operation::Activate, Some(Step::Mark(Active))),
            (Active, None, Operation::Activate, Some(Step::None)),
            (Active, None, Operation::Deactivate, Some(Step::Mark(Warm))),
            (Active, None, Operation::Pause, Some(Step::Freeze)),
            (
                Paused,
                Some(Active),
                Operation::Resume,
                Some(Step::Thaw(Active)),
            ),
            (Paused, None, Operation::Activate, None),
            (Dormant, None, Operation::Pause, None),
            (Dormant, None, Operation::Resume, None),
            (Stopped, None, Operation::Deactivate, None),
            (Paused, Some(Warm), Operation::Stop, Some(Step::Stop)),
            (Stopped, None, Operation::Stop, Some(Step::None)),
            (Stopped, None, Operation::Start, Some(Step::Start(Warm))),
        ];
        for (state, from, op, want) in table {
            assert_eq!(plan("i", state, from, op).ok(), want, "{op:?} in {state:?}");
        }
    }

    #[test]
    fn unknown_provider_names_the_choices() {
        let err = "kubernetes".parse::<ProviderKind>().unwrap_err();
        assert!(err.to_string().contains("\"process\""), "{err}");
        assert_eq!(
            "docker".parse::<ProviderKind>().unwrap(),
            ProviderKind::Docker
        );
    }

    #[test]
    fn ids_are_checked() {
        assert!(check_id("shop-1").is_ok());
        for bad in ["", "Shop", "a/b", "-x", &"a".repeat(64)] {
            assert!(check_id(bad).is_err(), "{bad:?}");
        }
    }
}
