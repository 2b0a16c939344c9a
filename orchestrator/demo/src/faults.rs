//! A fault plan carried out on the demo's own processes (`umbra demo --fault-plan`, and each
//! run of `umbra chaos campaign`). The demo's supervisor started every process, so besides the
//! instances' fault switch and pauses it can kill one and start it again after the plan's
//! delay, as systemd would, cut an orchestrator or an agent off the network or from one
//! orchestrator, drop a share of its packets or hold each of them a while (a slow link), fill
//! a region's data disk, which it mounted for the run, and step the wall clock of an
//! orchestrator or an agent, which it started under a clock file of the run's
//! (`umbra_chaos::inject`).
//!
//! Triggers count from the migration's request (`after_ms`) or fire once the migration has
//! reached a phase (`at_phase`, from the audit, so a phase shorter than one poll still fires
//! it). Each fault is undone by itself when its time is over, and every fault still in force
//! when the migration ends is undone then, before the demo judges what is left.
//!
//! Role names are resolved when a fault fires: `leader` is the orchestrator leading then,
//! `agent-source` and `agent-target` the migration's agents, and the regions `source` and
//! `target` the migration's.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;
use umbra_agent::sample::FaultSwitch;
use umbra_chaos::inject::{self, Ballast, Cut, Delay, InjectError, Link};
use umbra_chaos::plan::{Fault, FaultKind, FaultPlan, Scope, Trigger};
use umbra_orchestrator::api::{ClientError, Timestamp};

use crate::processes::Supervisor;
use crate::{Orchestrator, call_live, scenario, set_fault_switch, unix_ms};

/// What a plan may name in the demo: its regions and the migration's roles, its service, every
/// orchestrator and agent (to pause, kill, jump the clock of, or cut off: each agent's QUIC
/// traffic leaves from a port its config fixes); and the demo requested the migration, so it
/// may abort it. A generated partition, loss or delay between two processes names an
/// orchestrator as the peer, as agents talk only to orchestrators.
pub fn scope(regions: &[String], orchestrators: u64) -> Scope {
    let orchestrator_names: Vec<String> = (1..=orchestrators)
        .map(|id| format!("orchestrator-{id}"))
        .chain(["leader".to_owned()])
        .collect();
    let mut restartable: std::collections::BTreeSet<String> =
        orchestrator_names.iter().cloned().collect();
    restartable.extend(regions.iter().map(|r| format!("agent-{r}")));
    restartable.extend(["agent-source".to_owned(), "agent-target".to_owned()]);
    let regions: std::collections::BTreeSet<String> = regions
        .iter()
        .cloned()
        .chain(["source".to_owned(), "target".to_owned()])
        .collect();
    Scope {
        disks: regions.clone(),
        regions,
        services: [scenario::SERVICE.to_owned()].into(),
        processes: Default::default(),
        clocks: restartable.clone(),
        partitionable: restartable.clone(),
        restartable,
        orchestrators: orchestrator_names.into_iter().collect(),
        aborts: true,
    }
}

/// A plan's network fault in force on a [`Link`] (some UDP ports, or the packets between two
/// processes' ports): a [`Cut`] for a partition or a loss, a [`Delay`] for a delay. What both
/// runners of a plan, this module's and `umbra drill`, hold until the fault's time is over;
/// dropping it heals it too.
#[derive(Debug)]
pub enum NetworkFault {
    /// A partition or a packet loss.
    Cut(Cut),
    /// Each packet held a while.
    Delay(Delay),
}

impl NetworkFault {
    /// Injects `kind` on `link` when it is a partition, a loss or a delay (`None` for any
    /// other kind); with what it does to the packets, for the runner's report.
    pub fn inject(kind: &FaultKind, link: &Link) -> Option<Result<(Self, String), InjectError>> {
        Some(match kind {
            FaultKind::Partition { .. } => {
                Cut::partition(link).map(|cut| (Self::Cut(cut), "every packet dropped".to_owned()))
            }
            FaultKind::Loss { percent, .. } => Cut::loss(link, *percent).map(|cut| {
                (
                    Self::Cut(cut),
                    format!("{percent} % of the packets dropped"),
                )
            }),
            FaultKind::Delay { added_ms, .. } => {
                Delay::install(link, Duration::from_millis(*added_ms)).map(|delay| {
                    (
                        Self::Delay(delay),
                        format!("each packet held {added_ms} ms"),
                    )
                })
            }
            _ => return None,
        })
    }

    /// Removes it: the packets flow as before. Says what was undone.
    pub fn heal(self) -> Result<String, InjectError> {
        match self {
            Self::Cut(cut) => cut.heal().map(|()| "the cut healed".to_owned()),
            Self::Delay(delay) => delay
                .heal()
                .map(|held| format!("the delay healed ({held} packets were held)")),
        }
    }
}

/// One fault of the plan as the report shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FaultSeen {
    /// Its position in the plan, from 1.
    pub index: usize,
    /// What it does, as the plan says it.
    pub fault: String,
    /// When it was to fire.
    pub trigger: String,
    /// The process or region it hit, roles resolved (`orchestrator-2`, `eu-west`), or the
    /// migration an abort rolled back; `null` when it hit nothing (an abort the API refused).
    pub hit: Option<String>,
    /// The migration's phase when it fired.
    pub phase: Option<String>,
    /// When it fired (RFC 3339); `null`: its trigger never came.
    pub fired: Option<String>,
    /// When it was undone (RFC 3339).
    pub undone: Option<String>,
    /// What the injector did.
    pub detail: String,
    /// Why it could not be injected or undone (a broken injector fails the run's judgement).
    pub error: Option<String>,
}

/// How a fault in force is undone.
enum Undo {
    /// Switch the region's instances back to healthy.
    Switch(PathBuf),
    /// SIGCONT the process (and let the API calls reach it again).
    Resume { name: String, pid: u32 },
    /// Start the process again.
    Restart(String),
    /// Remove the cut's or the delay's rules (and let held packets go).
    Heal(NetworkFault),
    /// Remove the ballast from a region's data disk.
    Free(Ballast),
    /// Step the process's wall clock back by what the jump stepped it.
    StepBack { name: String, ms: i64 },
}

struct Armed {
    fault: Fault,
    seen: FaultSeen,
    /// In force: undone at this instant (or at the migration's end).
    active: Option<(Option<Instant>, Undo)>,
    fired: bool,
}

/// The faults of one run.
pub struct Faults {
    armed: Vec<Armed>,
    requested: Instant,
}

/// What firing a fault may touch.
pub(crate) struct Reach<'a> {
    pub supervisor: &'a mut Supervisor,
    pub orchestrators: &'a mut [Orchestrator],
    pub agent_state_dirs: &'a BTreeMap<String, PathBuf>,
    pub source: &'a str,
    pub target: &'a str,
    /// The migration's id.
    pub migration: &'a str,
}

fn now() -> String {
    Timestamp::from_unix_ms(unix_ms()).to_string()
}

impl Faults {
    /// Arms `plan`; triggers count from now (the migration's request).
    pub fn arm(plan: &FaultPlan) -> Self {
        let armed = plan
            .faults
            .iter()
            .enumerate()
            .map(|(i, fault)| Armed {
                seen: FaultSeen {
                    index: i + 1,
                    fault: fault.kind.to_string(),
                    trigger: fault.when.to_string(),
                    hit: None,
                    phase: None,
                    fired: None,
                    undone: None,
                    detail: String::new(),
                    error: None,
                },
                fault: fault.clone(),
                active: None,
                fired: false,
            })
            .collect();
        Self {
            armed,
            requested: Instant::now(),
        }
    }

    /// Fires every fault now due and undoes every one whose time is over. `reached` holds
    /// every phase the migration has been in, `phase` the current one. Returns one line per
    /// fault fired or undone, for the progress output.
    pub(crate) async fn step(
        &mut self,
        phase: &str,
        reached: &[&str],
        reach: &mut Reach<'_>,
    ) -> Vec<String> {
        let mut said = Vec::new();
        for i in 0..self.armed.len() {
            let expired = matches!(
                &self.armed[i].active,
                Some((Some(until), _)) if Instant::now() >= *until
            );
            if expired {
                said.push(self.undo(i, reach).await);
            }
            let a = &self.armed[i];
            let due = !a.fired
                && match &a.fault.when {
                    Trigger::AfterMs(ms) => self.requested.elapsed() >= Duration::from_millis(*ms),
                    Trigger::AtPhase(p) => reached.contains(&p.as_str()),
                };
            if due && let Some(line) = self.fire(i, phase, reach).await {
                said.push(line);
            }
        }
        said
    }

    /// Undoes every fault still in force (the migration ended).
    pub(crate) async fn undo_all(&mut self, reach: &mut Reach<'_>) -> Vec<String> {
        let mut said = Vec::new();
        for i in 0..self.armed.len() {
            if self.armed[i].active.is_some() {
                said.push(self.undo(i, reach).await);
            }
        }
        said
    }

    /// Every fault as the report shows it.
    pub fn seen(&self) -> Vec<FaultSeen> {
        self.armed.iter().map(|a| a.seen.clone()).collect()
    }

    /// Fires fault `i`; `None` while a role it names cannot be resolved yet (no leader).
    async fn fire(&mut self, i: usize, phase: &str, reach: &mut Reach<'_>) -> Option<String> {
        let kind = self.armed[i].fault.kind.clone();
        let lasts = kind.lasts_ms().map(Duration::from_millis);
        let result: Result<(String, String, Option<Undo>), String> = match &kind {
            FaultKind::Errors { region, rate, .. } => {
                let switch = FaultSwitch {
                    error_rate: *rate,
                    added_latency_ms: 0,
                };
                Ok(switch_region(reach, region, &switch).await)
            }
            FaultKind::Abort => abort(reach, self.armed[i].seen.index).await,
            FaultKind::Latency {
                region, added_ms, ..
            } => {
                let switch = FaultSwitch {
                    error_rate: 0.0,
                    added_latency_ms: *added_ms,
                };
                Ok(switch_region(reach, region, &switch).await)
            }
            FaultKind::Pause { process, .. } => {
                let name = resolve_process(reach, process).await?;
                let Some(pid) = reach.supervisor.pids().get(&name).copied() else {
                    return None; // down (killed by another fault): fire once it runs
                };
                inject::pause(pid)
                    .map(|()| {
                        skip_orchestrator(reach, &name, true);
                        (
                            name.clone(),
                            format!("SIGSTOP to {name} (pid {pid}), seen stopped"),
                            Some(Undo::Resume { name, pid }),
                        )
                    })
                    .map_err(|e| e.to_string())
            }
            FaultKind::Kill { process, .. } => {
                let name = resolve_process(reach, process).await?;
                if !reach.supervisor.pids().contains_key(&name) {
                    return None;
                }
                reach
                    .supervisor
                    .kill(&name)
                    .map(|pid| {
                        skip_orchestrator(reach, &name, true);
                        (
                            name.clone(),
                            format!("SIGKILLed {name} (pid {pid})"),
                            Some(Undo::Restart(name)),
                        )
                    })
                    .map_err(|e| e.to_string())
            }
            FaultKind::DiskFull { region, .. } => {
                let region = resolve_region(reach, region).to_owned();
                match reach.supervisor.data_disk(&region) {
                    None => Err(format!("{region} has no data disk the demo mounted")),
                    Some(disk) => disk
                        .fill()
                        .map(|ballast| {
                            (
                                region.clone(),
                                format!(
                                    "{region}'s data disk {} filled with {} bytes of ballast",
                                    disk.dir().display(),
                                    ballast.bytes()
                                ),
                                Some(Undo::Free(ballast)),
                            )
                        })
                        .map_err(|e| e.to_string()),
                }
            }
            FaultKind::ClockJump { process, ms, .. } => {
                let name = resolve_process(reach, process).await?;
                jump_clock(reach, &name, *ms).map(|detail| {
                    (
                        name.clone(),
                        detail,
                        Some(Undo::StepBack {
                            name: name.clone(),
                            ms: -*ms,
                        }),
                    )
                })
            }
            FaultKind::Partition { process, peer, .. }
            | FaultKind::Loss { process, peer, .. }
            | FaultKind::Delay { process, peer, .. } => {
                let name = resolve_process(reach, process).await?;
                let peer = match peer {
                    Some(peer) => Some((peer, resolve_process(reach, peer).await?)),
                    None => None,
                };
                network_fault(reach, &kind, process, name, peer)
            }
        };
        let a = &mut self.armed[i];
        a.fired = true;
        a.seen.fired = Some(now());
        a.seen.phase = Some(phase.to_owned());
        Some(match result {
            Ok((hit, detail, undo)) => {
                a.seen.hit = (!hit.is_empty()).then_some(hit);
                a.seen.detail = detail;
                a.active = undo.map(|undo| (lasts.map(|d| Instant::now() + d), undo));
                format!("fault {} fired: {} ({})", a.seen.index, kind, a.seen.detail)
            }
            Err(error) => {
                a.seen.error = Some(error.clone());
                format!(
                    "fault {} could NOT be injected: {kind}: {error}",
                    a.seen.index
                )
            }
        })
    }

    async fn undo(&mut self, i: usize, reach: &mut Reach<'_>) -> String {
        let Some((_, undo)) = self.armed[i].active.take() else {
            return String::new();
        };
        let result = match undo {
            Undo::Switch(dir) => {
                let n = set_fault_switch(&dir, "", &FaultSwitch::default()).await;
                Ok(format!("{n} instances switched back"))
            }
            Undo::Resume { name, pid } => {
                skip_orchestrator(reach, &name, false);
                inject::resume(pid)
                    .map(|()| format!("SIGCONT to {name}"))
                    .map_err(|e| e.to_string())
            }
            Undo::Restart(name) => reach
                .supervisor
                .restart(&name)
                .map(|pid| {
                    skip_orchestrator(reach, &name, false);
                    format!("started {name} again (pid {pid})")
                })
                .map_err(|e| e.to_string()),
            Undo::Heal(network) => network.heal().map_err(|e| e.to_string()),
            Undo::Free(ballast) => ballast
                .remove()
                .map(|()| "the ballast removed: the disk has room again".to_owned())
                .map_err(|e| e.to_string()),
            Undo::StepBack { name, ms } => jump_clock(reach, &name, ms),
        };
        let a = &mut self.armed[i];
        a.seen.undone = Some(now());
        match result {
            Ok(line) => format!("fault {} undone: {line}", a.seen.index),
            Err(error) => {
                a.seen.error = Some(format!("undoing: {error}"));
                format!("fault {} could NOT be undone: {error}", a.seen.index)
            }
        }
    }
}

/// Steps `name`'s wall clock by `ms`; what was done. A process that runs must show
/// libfaketime loaded, or the jump could not reach it; one that is down (killed by another
/// fault) reads the new offset when it starts again.
fn jump_clock(reach: &mut Reach<'_>, name: &str, ms: i64) -> Result<String, String> {
    let Some((clock, pid)) = reach.supervisor.clock(name) else {
        return Err(format!(
            "{name} was not started under a clock the demo controls"
        ));
    };
    if let Some(pid) = pid {
        inject::check_preloaded(pid).map_err(|e| e.to_string())?;
    }
    clock.jump(ms).map_err(|e| e.to_string())?;
    let offset_ms = clock.offset_ms();
    Ok(match pid {
        Some(pid) => format!(
            "{name}'s wall clock stepped {ms:+} ms (pid {pid}; now {offset_ms:+} ms from the real clock)"
        ),
        None => format!(
            "{name}'s wall clock stepped {ms:+} ms while it is down (now {offset_ms:+} ms from the real clock)"
        ),
    })
}

/// How long an abort keeps asking while no orchestrator takes the request (an election, a
/// paused or cut-off leader).
const ABORT_WITHIN: Duration = Duration::from_secs(15);

/// Asks the migration to roll back, as its operator would: through the first live
/// orchestrator that takes the request, asking again while none does (up to
/// [`ABORT_WITHIN`]). A 409 Conflict is the truth about an earlier attempt whose answer was
/// lost (the migration is rolling back for it: the audit holds this abort's reason) or says
/// the abort came too late (rolling back or ended for another reason): no injector's
/// failure, and it hits nothing.
async fn abort(reach: &Reach<'_>, index: usize) -> Result<(String, String, Option<Undo>), String> {
    let id = reach.migration.to_owned();
    let reason = format!("chaos: fault {index}, the operator aborts the migration");
    let deadline = Instant::now() + ABORT_WITHIN;
    let mut last = String::from("no orchestrator is alive");
    loop {
        for o in reach.orchestrators.iter().filter(|o| !o.killed) {
            match o.api.rollback(&id, &reason).await {
                Ok(_) => {
                    let detail = format!("the operator asked {id} to roll back");
                    return Ok((id, detail, None));
                }
                Err(ClientError::Refused { status, message }) if status.as_u16() == 409 => {
                    if audit_holds(reach, &id, &reason).await {
                        let detail = format!(
                            "the operator asked {id} to roll back (an earlier attempt took; \
                             its answer was lost)"
                        );
                        return Ok((id, detail, None));
                    }
                    let detail = format!("the API refused the abort: {message}");
                    return Ok((String::new(), detail, None));
                }
                Err(e) => last = e.to_string(),
            }
        }
        if Instant::now() >= deadline {
            return Err(last);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Whether the replicated audit holds an entry about migration `id` with `reason`.
async fn audit_holds(reach: &Reach<'_>, id: &str, reason: &str) -> bool {
    let mut after = 0;
    // Bounded: a demo run's audit is a few hundred entries.
    for _ in 0..100 {
        let Ok(page) = call_live(reach.orchestrators, |api| async move {
            api.audit(after, 500).await
        })
        .await
        else {
            return false;
        };
        if page
            .iter()
            .any(|e| e.subject == id && e.reason.contains(reason))
        {
            return true;
        }
        match page.last() {
            Some(entry) => after = entry.index,
            None => return false,
        }
    }
    false
}

/// The region a fault names, roles resolved.
fn resolve_region<'a>(reach: &'a Reach<'_>, region: &'a str) -> &'a str {
    match region {
        "source" => reach.source,
        "target" => reach.target,
        other => other,
    }
}

/// The process a fault names, roles resolved; `None` while no orchestrator leads.
async fn resolve_process(reach: &Reach<'_>, process: &str) -> Option<String> {
    Some(match process {
        "leader" => {
            let health = call_live(reach.orchestrators, |api| async move { api.health().await })
                .await
                .ok()?;
            format!("orchestrator-{}", health.leader.leader?)
        }
        "agent-source" => format!("agent-{}", reach.source),
        "agent-target" => format!("agent-{}", reach.target),
        other => other.to_owned(),
    })
}

/// Injects a partition, a loss or a delay on the QUIC port of `name`, an orchestrator or an
/// agent (`process` as the plan names it), or only on its link with `peer` (as the plan names
/// it, and resolved).
fn network_fault(
    reach: &Reach<'_>,
    kind: &FaultKind,
    process: &str,
    name: String,
    peer: Option<(&String, String)>,
) -> Result<(String, String, Option<Undo>), String> {
    let port_of = |name: &str| {
        reach
            .orchestrators
            .iter()
            .find(|o| format!("orchestrator-{}", o.id) == name)
            .map(|o| o.quic.port())
            .or_else(|| agent_quic_port(reach, name.strip_prefix("agent-")?))
            .ok_or_else(|| format!("{name} has no QUIC port the demo knows"))
    };
    let port = port_of(&name)?;
    let (link, what) = match &peer {
        // A role resolved to the other end (`leader` when the peer leads): no link to act on,
        // so the fault hit nothing.
        Some((planned, peer)) if *peer == name => {
            return Ok((
                String::new(),
                format!(
                    "{process} and {planned} are both {name} now: a process has no link with \
                     itself, nothing done"
                ),
                None,
            ));
        }
        Some((_, peer)) => {
            let peer_port = port_of(peer)?;
            (
                Link::between(&[port], &[peer_port]),
                format!("{name}'s UDP port {port} with {peer}'s port {peer_port}"),
            )
        }
        None => (Link::all(&[port]), format!("{name}'s UDP port {port}")),
    };
    link.and_then(|link| NetworkFault::inject(kind, &link).expect("a partition, a loss or a delay"))
        .map(|(network, effect)| (name, format!("{what}: {effect}"), Some(Undo::Heal(network))))
        .map_err(|e| e.to_string())
}

/// The port region agent `region`'s QUIC traffic leaves from: its config's `quic_bind` (the
/// demo's agent configs sit beside their state directories).
fn agent_quic_port(reach: &Reach<'_>, region: &str) -> Option<u16> {
    let config = reach
        .agent_state_dirs
        .get(region)?
        .parent()?
        .join("agent.toml");
    let config = umbra_agent::agent::config::AgentConfig::load(&config).ok()?;
    config.quic_bind.map(|bind| bind.port())
}

/// Sets the fault switch of every instance in a region; the undo switches it back.
async fn switch_region(
    reach: &Reach<'_>,
    region: &str,
    switch: &FaultSwitch,
) -> (String, String, Option<Undo>) {
    let region = resolve_region(reach, region).to_owned();
    let dir = reach.agent_state_dirs[&region].clone();
    let n = set_fault_switch(&dir, "", switch).await;
    (
        region.clone(),
        format!("{n} instances in {region} switched"),
        Some(Undo::Switch(dir)),
    )
}

/// Whether the demo's API calls skip orchestrator `name` (killed or paused); not an
/// orchestrator: nothing.
fn skip_orchestrator(reach: &mut Reach<'_>, name: &str, skip: bool) {
    for o in reach.orchestrators.iter_mut() {
        if format!("orchestrator-{}", o.id) == name {
            o.killed = skip;
        }
    }
}
