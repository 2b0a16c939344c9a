//! Turns admitted commands into provider, warmer and replication calls, and assembles the
//! heartbeat report (instances and their measured transitions, warm-up progress, replication
//! positions). It must not decide whether a command may run: [`super::core`] did that.
//!
//! Replication here is the sample service's log shipping: the target is one of this agent's
//! instances and the source is the URL the leader names. The replications driven are kept in
//! [`REPLICATIONS_FILE`] in the state directory: the instances outlive an agent restart and go
//! on following (or serving as promoted writers), so the next agent drives and reports the
//! same replications. Without it a restarted agent reported none, and the leader's repeated
//! command was answered from the ledger without acting: the migration waited for a catch-up
//! it could not see.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use umbra_proto::agent::{
    AgentAction, CommandOutcome, CommandResult, FrontReport, InstanceReport, Refusal,
    ReplicationReport, WarmupProgress,
};

use super::front::Front;
use crate::provider::{AnyProvider, Operation, ProviderError};
use crate::replication::{ReplicationDriver, ReplicationError, SampleLogShipping};
use crate::warmer::{self, WarmError, WarmupTelemetry, WarmupTracker};

/// Longest `WaitForZeroLag` accepted: a cutover holds writes while it waits, so a plan asking
/// for more than ten minutes is a mistake.
pub const MAX_LAG_WAIT_MS: u64 = 600_000;

/// The file in the agent's state directory that lists the replications it drives.
pub const REPLICATIONS_FILE: &str = "replications.json";

/// The file in the agent's state directory that lists the replication targets whose source's
/// fence a rollback lifted (a JSON array of instance ids).
pub const LIFTED_FILE: &str = "lifted.json";

/// One replication as [`REPLICATIONS_FILE`] keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct KeptReplication {
    source: String,
    target: String,
}

/// Executes commands for one region.
pub struct Executor {
    provider: AnyProvider,
    front: Option<Front>,
    replications: Mutex<BTreeMap<String, Arc<SampleLogShipping>>>,
    /// Where the replications are kept (`None`: in memory only, for tests of the parts).
    replications_file: Option<PathBuf>,
    /// Held while the replications file is written. Commands run concurrently, and two
    /// writers at once would share its temporary file (one truncating or renaming away what
    /// the other wrote, leaving a torn file or a failed command) or rename an older list over
    /// a newer one.
    keeping: Mutex<()>,
    /// One lock per replication target, held while its writer moves (fence, promote, lift
    /// the fence). A rollback's `UnfenceSource` may arrive while a `Promote` of the same
    /// instance still runs; taken in turn, the unfence sees the promotion's outcome (and is
    /// refused if the target became the writer) instead of racing it into two writers.
    writer_moves: Mutex<BTreeMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Replication targets whose source's fence a rollback lifted: no fence or promotion of
    /// them is taken after it (one still on its way from before the rollback would undo it).
    /// Shadow ids are never reused by a later migration. Kept in [`LIFTED_FILE`] beside the
    /// replications, so a restarted agent refuses them too (one id per rolled-back shadow,
    /// never forgotten: a replication started late would be fenced otherwise).
    lifted: Mutex<std::collections::BTreeSet<String>>,
    /// Where `lifted` is kept (`None`: in memory only, with `replications_file`).
    lifted_file: Option<PathBuf>,
    warmups: Mutex<BTreeMap<String, watch::Receiver<WarmupProgress>>>,
    warmup_telemetry: WarmupTelemetry,
    shutdown: CancellationToken,
}

fn refused(reason: impl Into<String>) -> CommandOutcome {
    CommandOutcome::Refused(Refusal::BadRequest {
        reason: reason.into(),
    })
}

fn failed(reason: impl std::fmt::Display) -> CommandOutcome {
    CommandOutcome::Failed {
        reason: reason.to_string(),
    }
}

/// Maps a provider error: mistakes in the command are refusals (nothing changed), the rest are
/// failures.
fn provider_outcome(e: ProviderError) -> CommandOutcome {
    match e {
        ProviderError::InvalidId(_)
        | ProviderError::NotFound(_)
        | ProviderError::AlreadyExists(_)
        | ProviderError::BadState { .. }
        | ProviderError::Unsupported { .. } => refused(e.to_string()),
        other => failed(other),
    }
}

impl Executor {
    /// An executor over `provider`, with the region front if this agent runs one.
    pub fn new(provider: AnyProvider, front: Option<Front>) -> Self {
        Executor {
            provider,
            front,
            replications: Mutex::new(BTreeMap::new()),
            replications_file: None,
            keeping: Mutex::new(()),
            writer_moves: Mutex::new(BTreeMap::new()),
            lifted: Mutex::new(std::collections::BTreeSet::new()),
            lifted_file: None,
            warmups: Mutex::new(BTreeMap::new()),
            warmup_telemetry: WarmupTelemetry::default(),
            shutdown: CancellationToken::new(),
        }
    }

    /// The metric families the executor's parts keep as they act (the front's, the
    /// instances' transition times, the warm-ups'), for the agent's metrics endpoint.
    pub fn collectors(&self) -> Vec<Box<dyn prometheus::core::Collector>> {
        let mut all = self.warmup_telemetry.collectors();
        all.push(Box::new(self.provider.transition_seconds().clone()));
        if let Some(front) = &self.front {
            all.extend(front.telemetry().collectors());
        }
        all
    }

    /// Keeps the replications in `state_dir`, and drives those a previous agent kept there.
    pub fn kept_in(mut self, state_dir: &Path) -> Result<Self, String> {
        let path = state_dir.join(REPLICATIONS_FILE);
        let kept: BTreeMap<String, KeptReplication> = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| format!("{}: {e}; move it away to start over", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        let mut drivers = BTreeMap::new();
        for (instance, k) in kept {
            let driver = SampleLogShipping::new(&k.source, &k.target)
                .map_err(|e| format!("{}: {instance}: {e}", path.display()))?;
            tracing::info!(%instance, source = %k.source, "driving the replication a previous agent started");
            drivers.insert(instance, Arc::new(driver));
        }
        self.replications = Mutex::new(drivers);
        self.replications_file = Some(path);
        let path = state_dir.join(LIFTED_FILE);
        let lifted: std::collections::BTreeSet<String> = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| format!("{}: {e}; move it away to start over", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Default::default(),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        self.lifted = Mutex::new(lifted);
        self.lifted_file = Some(path);
        Ok(self)
    }

    /// Writes the lifted fences to [`LIFTED_FILE`] (write, fsync, rename).
    fn keep_lifted(&self) -> std::io::Result<()> {
        let Some(path) = &self.lifted_file else {
            return Ok(());
        };
        let _keeping = self.keeping.lock().expect("keeping lock");
        let lifted = self.lifted.lock().expect("lifted lock").clone();
        write_durably(path, &serde_json::to_vec(&lifted)?)
    }

    /// Marks the fence into `id` lifted, durably: a fence or promotion of `id` is refused from
    /// now on, by this agent and by the next one on its state directory.
    fn mark_lifted(&self, id: &str) -> Result<(), CommandOutcome> {
        self.lifted
            .lock()
            .expect("lifted lock")
            .insert(id.to_owned());
        self.keep_lifted().map_err(|e| {
            failed(format!(
                "cannot keep the lifted fence in the state dir: {e}"
            ))
        })
    }

    /// Writes the replications driven to [`REPLICATIONS_FILE`] (write, fsync, rename), so a
    /// restarted agent drives the same ones.
    fn keep_replications(&self) -> std::io::Result<()> {
        let Some(path) = &self.replications_file else {
            return Ok(());
        };
        // The list is taken under this lock too, so the last file written holds every change
        // made before it.
        let _keeping = self.keeping.lock().expect("keeping lock");
        let kept: BTreeMap<String, KeptReplication> = self
            .replications
            .lock()
            .expect("replications lock")
            .iter()
            .map(|(id, d)| {
                let k = KeptReplication {
                    source: d.source().to_owned(),
                    target: d.target().to_owned(),
                };
                (id.clone(), k)
            })
            .collect();
        write_durably(path, &serde_json::to_vec(&kept)?)
    }

    /// The provider.
    pub fn provider(&self) -> &AnyProvider {
        &self.provider
    }

    /// The region front, if any.
    pub fn front(&self) -> Option<&Front> {
        self.front.as_ref()
    }

    /// Aligns the front's backends with the active instances and the shares, starting a front
    /// process that died again (logged, not fatal: the next round retries). Called after
    /// commands, before heartbeats, and on the agent's own schedule whether a leader answers
    /// or not (`agent::run`).
    pub async fn reconcile_front(&self) {
        if let Some(front) = &self.front
            && let Err(e) = front.reconcile(&self.provider.list().await).await
        {
            tracing::warn!(error = %e, "front backends not updated");
        }
    }

    /// The front's report for a heartbeat (reconciling first).
    pub async fn front_report(&self) -> Option<FrontReport> {
        let front = self.front.as_ref()?;
        self.reconcile_front().await;
        match front.report(true).await {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::warn!(error = %e, "front stats unavailable");
                None
            }
        }
    }

    /// Stops running warm-ups (between windows).
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }

    async fn instance_url(&self, id: &str) -> Result<String, CommandOutcome> {
        let rec = self.provider.get(id).await.map_err(provider_outcome)?;
        match rec.addr {
            Some(addr) => Ok(format!("http://{addr}")),
            None => Err(refused(format!(
                "instance {id:?} has not been started; start it first"
            ))),
        }
    }

    /// The replication into `id`. An instance restarted since the replication started (it
    /// died and was activated again) serves on a new address and resumes following its
    /// source by itself (its mode is on disk), so the driver is re-pointed at the address the
    /// provider knows now.
    async fn driver(&self, id: &str) -> Result<Arc<SampleLogShipping>, CommandOutcome> {
        let driver = self
            .replications
            .lock()
            .expect("replications lock")
            .get(id)
            .cloned()
            .ok_or_else(|| refused(format!("no replication into {id:?}; start one first")))?;
        let Ok(url) = self.instance_url(id).await else {
            return Ok(driver);
        };
        if url == driver.target() {
            return Ok(driver);
        }
        let moved = Arc::new(SampleLogShipping::new(driver.source(), &url).map_err(failed)?);
        tracing::info!(instance = id, %url, "replication target restarted on a new address; following it");
        self.replications
            .lock()
            .expect("replications lock")
            .insert(id.to_owned(), moved.clone());
        if let Err(e) = self.keep_replications() {
            tracing::warn!(error = %e, "the replication's new address is not kept");
        }
        Ok(moved)
    }

    /// Refuses a fence or promotion of `id` once a rollback lifted its source's fence.
    fn check_not_lifted(&self, id: &str) -> Result<(), CommandOutcome> {
        if self.lifted.lock().expect("lifted lock").contains(id) {
            return Err(refused(format!(
                "the replication into {id:?} was rolled back (its source's fence lifted); a new \
                 migration moves the writer with new shadow instances"
            )));
        }
        Ok(())
    }

    /// The lock that orders the writer moves of replication target `id`.
    fn writer_move(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.writer_moves
            .lock()
            .expect("writer moves lock")
            .entry(id.to_owned())
            .or_default()
            .clone()
    }

    async fn replication_result(&self, id: &str, driver: &SampleLogShipping) -> CommandOutcome {
        match driver.positions().await {
            Ok(p) => CommandOutcome::Done(CommandResult::Replication(ReplicationReport {
                instance: id.to_owned(),
                source: driver.source().to_owned(),
                source_position: p.source,
                target_position: p.target,
                source_fenced: p.source_fenced,
                promoted: p.target_promoted,
            })),
            Err(e) => failed(e),
        }
    }

    async fn instances(&self, ids: &[&str]) -> CommandOutcome {
        let all = self.provider.list().await;
        let picked: Vec<InstanceReport> = all
            .into_iter()
            .filter(|r| ids.contains(&r.id.as_str()))
            .collect();
        CommandOutcome::Done(CommandResult::Instances(picked))
    }

    /// Runs one action to its end.
    pub async fn execute(&self, action: &AgentAction) -> CommandOutcome {
        let lifecycle = |instance: &String, op| (instance.clone(), op);
        let op = match action {
            AgentAction::Provision { instances } => {
                return match self.provider.provision(instances).await {
                    Ok(reports) => CommandOutcome::Done(CommandResult::Instances(reports)),
                    Err(e) => provider_outcome(e),
                };
            }
            AgentAction::SetLimits { instance, limits } => {
                return match self.provider.set_limits(instance, *limits).await {
                    Ok(report) => CommandOutcome::Done(CommandResult::Instances(vec![report])),
                    Err(e) => provider_outcome(e),
                };
            }
            AgentAction::Remove { instance } => {
                let outcome = match self.provider.remove(instance).await {
                    Ok(()) => CommandOutcome::Done(CommandResult::Instances(vec![])),
                    Err(e) => provider_outcome(e),
                };
                self.reconcile_front().await;
                return outcome;
            }
            AgentAction::Start { instance } => lifecycle(instance, Operation::Start),
            AgentAction::Activate { instance } => lifecycle(instance, Operation::Activate),
            AgentAction::Deactivate { instance } => lifecycle(instance, Operation::Deactivate),
            AgentAction::Pause { instance } => lifecycle(instance, Operation::Pause),
            AgentAction::Resume { instance } => lifecycle(instance, Operation::Resume),
            AgentAction::Stop { instance } => lifecycle(instance, Operation::Stop),
            AgentAction::Warm { instance, plan } => {
                if let Err(e) = warmer::check_plan(plan) {
                    return refused(e.to_string());
                }
                let url = match self.instance_url(instance).await {
                    Ok(u) => u,
                    Err(o) => return o,
                };
                let (tx, rx) =
                    watch::channel(WarmupTracker::new(instance, plan).progress().clone());
                self.warmups
                    .lock()
                    .expect("warmups lock")
                    .insert(instance.clone(), rx);
                return match warmer::warm(
                    instance,
                    &url,
                    plan,
                    &tx,
                    &self.warmup_telemetry,
                    &self.shutdown,
                )
                .await
                {
                    Ok(p) => CommandOutcome::Done(CommandResult::Warmup(p)),
                    Err(WarmError::Plan(e)) => refused(e.to_string()),
                    Err(e) => failed(e),
                };
            }
            AgentAction::StartReplication { instance, source } => {
                let url = match self.instance_url(instance).await {
                    Ok(u) => u,
                    Err(o) => return o,
                };
                let driver = match SampleLogShipping::new(source, &url) {
                    Ok(d) => Arc::new(d),
                    Err(e) => return refused(e.to_string()),
                };
                if let Err(e) = driver.start().await {
                    return failed(e);
                }
                self.replications
                    .lock()
                    .expect("replications lock")
                    .insert(instance.clone(), driver.clone());
                if let Err(e) = self.keep_replications() {
                    return failed(format!("cannot keep the replication in the state dir: {e}"));
                }
                return self.replication_result(instance, &driver).await;
            }
            AgentAction::FenceSource { instance } => {
                let driver = match self.driver(instance).await {
                    Ok(d) => d,
                    Err(o) => return o,
                };
                let moving = self.writer_move(instance);
                let _moving = moving.lock().await;
                if let Err(o) = self.check_not_lifted(instance) {
                    return o;
                }
                if let Err(e) = driver.fence_source().await {
                    return failed(e);
                }
                return self.replication_result(instance, &driver).await;
            }
            AgentAction::WaitForZeroLag {
                instance,
                timeout_ms,
            } => {
                if *timeout_ms == 0 || *timeout_ms > MAX_LAG_WAIT_MS {
                    return refused(format!(
                        "timeout_ms {timeout_ms} must be between 1 and {MAX_LAG_WAIT_MS}"
                    ));
                }
                let driver = match self.driver(instance).await {
                    Ok(d) => d,
                    Err(o) => return o,
                };
                return match driver
                    .wait_for_zero_lag(Duration::from_millis(*timeout_ms))
                    .await
                {
                    Ok(_) => self.replication_result(instance, &driver).await,
                    Err(e) => failed(e),
                };
            }
            AgentAction::Promote { instance } => {
                let driver = match self.driver(instance).await {
                    Ok(d) => d,
                    Err(o) => return o,
                };
                let moving = self.writer_move(instance);
                let _moving = moving.lock().await;
                if let Err(o) = self.check_not_lifted(instance) {
                    return o;
                }
                return match driver.promote().await {
                    Ok(()) => self.replication_result(instance, &driver).await,
                    Err(e @ ReplicationError::UnsafePromote(_)) => refused(e.to_string()),
                    Err(e) => failed(e),
                };
            }
            AgentAction::UnfenceSource { instance } => {
                let moving = self.writer_move(instance);
                let _moving = moving.lock().await;
                let known = self
                    .replications
                    .lock()
                    .expect("replications lock")
                    .contains_key(instance);
                if !known {
                    // No replication into it (never started, or stopped): nothing this agent
                    // fenced through it; none will be after this (a replication started late
                    // by a command from before the rollback is never fenced or promoted).
                    if let Err(o) = self.mark_lifted(instance) {
                        return o;
                    }
                    return CommandOutcome::Done(CommandResult::Instances(Vec::new()));
                }
                let driver = match self.driver(instance).await {
                    Ok(d) => d,
                    Err(o) => return o,
                };
                return match driver.unfence_source().await {
                    Ok(()) => match self.mark_lifted(instance) {
                        Ok(()) => self.replication_result(instance, &driver).await,
                        Err(o) => o,
                    },
                    Err(e @ ReplicationError::UnsafeUnfence(_)) => refused(e.to_string()),
                    Err(e) => failed(e),
                };
            }
            AgentAction::SetShare {
                service,
                target_front,
                percent,
            } => {
                let Some(front) = &self.front else {
                    return refused(
                        "this agent runs no region front; set [front] listen in its config",
                    );
                };
                if let Err(e) = front.set_share(service, target_front, *percent) {
                    return refused(e.to_string());
                }
                if let Err(e) = front.reconcile(&self.provider.list().await).await {
                    return failed(e);
                }
                return match front.report(false).await {
                    Ok(r) => CommandOutcome::Done(CommandResult::Front(r)),
                    Err(e) => failed(e),
                };
            }
            AgentAction::StopReplication { instance } => {
                let driver = match self.driver(instance).await {
                    Ok(d) => d,
                    Err(o) => return o,
                };
                if let Err(e) = driver.stop().await {
                    return failed(e);
                }
                let out = self.replication_result(instance, &driver).await;
                self.replications
                    .lock()
                    .expect("replications lock")
                    .remove(instance);
                if let Err(e) = self.keep_replications() {
                    return failed(format!(
                        "cannot keep the replications in the state dir: {e}"
                    ));
                }
                return out;
            }
        };
        let (instance, op) = op;
        let outcome = match self.provider.apply(&instance, op).await {
            Ok(_) => self.instances(&[instance.as_str()]).await,
            Err(e) => provider_outcome(e),
        };
        // An instance entering or leaving Active changes the front's backends now, not at the
        // next heartbeat.
        self.reconcile_front().await;
        outcome
    }

    /// Warm-up progress of every warm-up started (latest value).
    pub fn warmups(&self) -> Vec<WarmupProgress> {
        self.warmups
            .lock()
            .expect("warmups lock")
            .values()
            .map(|rx| rx.borrow().clone())
            .collect()
    }

    /// Replication positions of every replication driven (ones that cannot be read now are
    /// left out of this report).
    pub async fn replication(&self) -> Vec<ReplicationReport> {
        let ids: Vec<String> = self
            .replications
            .lock()
            .expect("replications lock")
            .keys()
            .cloned()
            .collect();
        let mut out = Vec::new();
        for id in ids {
            let Ok(driver) = self.driver(&id).await else {
                continue;
            };
            if let CommandOutcome::Done(CommandResult::Replication(r)) =
                self.replication_result(&id, &driver).await
            {
                out.push(r);
            }
        }
        out
    }
}

/// Writes `bytes` to `path` so that a crash leaves the old file or the new one, whole: to a
/// temporary file beside it, fsynced, then renamed over it.
fn write_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    let mut file = std::fs::File::create(&tmp)?;
    std::io::Write::write_all(&mut file, bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::Provider;
    use crate::provider::process::{ProcessConfig, ProcessRuntime};

    /// Commands keep replications from several threads at once: every write succeeds and the
    /// file ends up holding every replication, as a restarted agent reads it.
    #[tokio::test]
    async fn concurrent_commands_keep_every_replication_in_a_whole_file() {
        let dir = tempfile::tempdir().unwrap();
        let runtime = ProcessRuntime::new(
            ProcessConfig::sample("/bin/true".into(), 1, None),
            dir.path(),
        )
        .unwrap();
        let provider = AnyProvider::Process(Provider::open(runtime, dir.path()).await.unwrap());
        let executor = Executor::new(provider, None).kept_in(dir.path()).unwrap();
        const THREADS: usize = 8;
        const EACH: usize = 40;
        std::thread::scope(|scope| {
            for t in 0..THREADS {
                let executor = &executor;
                scope.spawn(move || {
                    for i in 0..EACH {
                        let target = format!("http://127.0.0.1:{}", 2_000 + t * EACH + i);
                        let driver = SampleLogShipping::new("http://127.0.0.1:1", &target).unwrap();
                        executor
                            .replications
                            .lock()
                            .expect("replications lock")
                            .insert(format!("i-{t}-{i}"), Arc::new(driver));
                        executor.keep_replications().expect("the replications kept");
                    }
                });
            }
        });
        let bytes = std::fs::read(dir.path().join(REPLICATIONS_FILE)).unwrap();
        let kept: BTreeMap<String, KeptReplication> = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(kept.len(), THREADS * EACH);
    }
}
