//! `umbra drill evacuate --region R`: moves every service with traffic in R to another region
//! through the operator API, one after another in an order it states, optionally under a
//! fault plan (`umbra_chaos::plan`), and stops when the error budget burns or the p99 bound
//! breaks: then it undoes its faults, rolls back what it moved (a live migration through
//! `POST /v1/migrations/{id}/rollback`, a completed one by a migration back into R) and waits
//! until those ended. It prints a verdict with its evidence (`umbra_chaos::drill::Verdict`):
//! Markdown, or one JSON object with `--json`; status 1 when the drill failed.
//!
//! Failed requests and latency come from the region fronts' own counters (each agent's
//! `/metrics`, `--front-metrics`), the numbers the product judges its cutover steps on. Faults
//! are injected only through mechanisms the product already has: the sample service's fault
//! switch (instances found in `--agent-dir`, the process provider's state directory),
//! SIGSTOP/SIGCONT of a process whose pid it was given (`--pid`), and a cut, a packet loss
//! or a delay on a process's UDP port it was given (`--udp-port`: an orchestrator's QUIC
//! port, its Raft peers' and agents' traffic), through `umbra_chaos::inject` on this machine,
//! healed when the fault's time is over. It changes the cluster only
//! through the API and leaves nothing of its own behind; Ctrl-C stops it the same way, with
//! the faults undone and its moves rolled back before it exits.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use umbra_chaos::drill::{
    Budget, DEFAULT_MIN_REQUESTS, FaultRecord, FrontReading, Move, ORDER_REASON, Rollback,
    ServiceOutcome, Stopped, Verdict, plan_moves,
};
use umbra_chaos::inject::Link;
use umbra_chaos::plan::{FaultKind, FaultPlan, Scope, Trigger};
use umbra_demo::FaultSwitch;
use umbra_demo::faults::NetworkFault;
use umbra_orchestrator::api::{
    ApiClient, DrillBody, DrillServiceView, DrillVerdict, MigrationStatus, StatusReport, Timestamp,
    Written,
};
use umbra_orchestrator::state::MigrationRequest;

use crate::operator::{ApiArgs, print_json};

/// How often the drill polls the API and the fronts: a quarter of a second sees every phase of
/// the demo's compressed migration (its shortest phase holds a few seconds).
const POLL_INTERVAL: Duration = Duration::from_millis(250);
/// The window the p99 bound is judged over: five seconds, the demo plan's analysis window.
const P99_WINDOW: Duration = Duration::from_secs(5);
/// Timeout of one call to the API, a front's metrics or an instance's fault switch.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Timeout of one scrape of a front's metrics: an agent answers in milliseconds, and a
/// paused or dead one must not hold the drill's loop (its faults' timing, its judgement) for
/// longer than a second.
const METRICS_TIMEOUT: Duration = Duration::from_secs(1);
/// Default longest wait for one migration (or rollback) to end: ten minutes, twice a
/// production plan's default lead time plus its cutover steps.
const DEFAULT_MIGRATION_TIMEOUT_SECS: u64 = 600;

/// Arguments of `umbra drill`.
#[derive(Debug, clap::Args)]
pub struct DrillArgs {
    #[command(subcommand)]
    command: DrillCommand,
}

#[derive(Debug, clap::Subcommand)]
enum DrillCommand {
    /// Move every service with traffic in a region out of it, under stop conditions, and
    /// judge how it went.
    Evacuate(EvacuateArgs),
}

/// Arguments of `umbra drill evacuate`.
#[derive(Debug, clap::Args)]
struct EvacuateArgs {
    /// The region to empty.
    #[arg(long)]
    region: String,
    /// Where the services go (default: for each, the other region serving the fewest
    /// services, then by name).
    #[arg(long)]
    to: Option<String>,
    /// A fault plan (TOML; `umbra chaos plan --seed S` prints one).
    #[arg(long)]
    fault_plan: Option<PathBuf>,
    /// The error budget: the highest share of failed requests, 0..1 (default: the strictest
    /// `slo.max_error_rate` of the services moved).
    #[arg(long)]
    max_failed_ratio: Option<f64>,
    /// The p99 bound over each 5 s window, ms (default: the strictest `slo.max_p99_ms` of the
    /// services moved).
    #[arg(long)]
    max_p99_ms: Option<f64>,
    /// A region agent's metrics endpoint (`metrics_listen`), e.g.
    /// http://127.0.0.1:9464/metrics; give every region's.
    #[arg(long = "front-metrics", required = true)]
    front_metrics: Vec<String>,
    /// REGION=DIR: a region agent's process-provider state directory, where `errors` and
    /// `latency` faults find the instances' fault switches.
    #[arg(long = "agent-dir", value_parser = parse_pair)]
    agent_dirs: Vec<(String, String)>,
    /// NAME=PID: a process `pause` faults may stop.
    #[arg(long = "pid", value_parser = parse_pair)]
    pids: Vec<(String, String)>,
    /// NAME=PORT: a process's UDP port on this machine (an orchestrator's QUIC `listen`
    /// port) that `partition`, `loss` and `delay` faults act on (needs root, nft and
    /// iptables).
    #[arg(long = "udp-port", value_parser = parse_pair)]
    udp_ports: Vec<(String, String)>,
    /// Longest wait for one migration or rollback to end, seconds.
    #[arg(long, default_value_t = DEFAULT_MIGRATION_TIMEOUT_SECS)]
    migration_timeout_secs: u64,
    /// Also write the verdict as Markdown to this file (without --json and without it, the
    /// Markdown goes to stdout).
    #[arg(long)]
    markdown: Option<PathBuf>,
    #[command(flatten)]
    api: ApiArgs,
}

fn parse_pair(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((name, value)) if !name.is_empty() && !value.is_empty() => {
            Ok((name.to_owned(), value.to_owned()))
        }
        _ => Err(format!("{text:?} is not NAME=VALUE")),
    }
}

/// Runs `umbra drill`.
pub fn run(args: DrillArgs) -> anyhow::Result<()> {
    match args.command {
        DrillCommand::Evacuate(args) => evacuate(args),
    }
}

fn evacuate(args: EvacuateArgs) -> anyhow::Result<()> {
    let plan = match &args.fault_plan {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading the fault plan {}", path.display()))?;
            FaultPlan::from_toml(&text).with_context(|| format!("in {}", path.display()))?
        }
        None => FaultPlan {
            seed: None,
            faults: Vec::new(),
        },
    };
    let verdict = args.api.run(async |client| {
        // Checked here, so that with --json a mistake is answered as JSON too.
        let mut pids = BTreeMap::new();
        for (name, pid) in &args.pids {
            let pid: i32 = pid
                .parse()
                .with_context(|| format!("--pid {name}={pid}: the pid is not a number"))?;
            pids.insert(name.clone(), Pid::from_raw(pid));
        }
        let mut udp_ports = BTreeMap::new();
        for (name, port) in &args.udp_ports {
            let port: u16 =
                port.parse().ok().filter(|p| *p != 0).with_context(|| {
                    format!("--udp-port {name}={port}: the port is not 1 to 65535")
                })?;
            udp_ports.insert(name.clone(), port);
        }
        if let Some(ratio) = args.max_failed_ratio {
            anyhow::ensure!(
                (0.0..1.0).contains(&ratio),
                "--max-failed-ratio {ratio} must be at least 0 and below 1"
            );
        }
        let client = client.with_timeout(CALL_TIMEOUT);
        let mut drill = Drill::prepare(&args, client, plan, pids, udp_ports).await?;
        let mut verdict = drill.execute().await?;
        drill.record(&mut verdict).await;
        Ok(verdict)
    })?;
    if args.api.json {
        print_json(&verdict)?;
    }
    if let Some(path) = &args.markdown {
        std::fs::write(path, verdict.to_markdown())
            .with_context(|| format!("writing {}", path.display()))?;
    } else if !args.api.json {
        print!("{}", verdict.to_markdown());
    }
    if !verdict.passed() {
        bail!("the drill failed: {}", verdict.reasons.join("; "));
    }
    Ok(())
}

/// The verdict as the cluster keeps it: the evidence's figures and each service's outcome.
fn drill_body(verdict: &Verdict) -> anyhow::Result<DrillBody> {
    let instant = |what: &str, text: &str| -> anyhow::Result<Timestamp> {
        serde_json::from_value(serde_json::Value::String(text.to_owned()))
            .with_context(|| format!("the verdict's {what} time {text:?}"))
    };
    Ok(DrillBody {
        drill: verdict.drill.clone(),
        region: verdict.region.clone(),
        verdict: if verdict.passed() {
            DrillVerdict::Pass
        } else {
            DrillVerdict::Fail
        },
        reasons: verdict.reasons.clone(),
        started: instant("start", &verdict.started)?,
        ended: instant("end", &verdict.ended)?,
        evacuate_ms: verdict.evacuate_ms,
        services: verdict
            .services
            .iter()
            .map(|s| DrillServiceView {
                service: s.service.clone(),
                to: s.to.clone(),
                migration: s.migration.clone(),
                outcome: s.outcome.clone(),
            })
            .collect(),
        requests: verdict.requests,
        failed_requests: verdict.failed_requests,
        max_failed_ratio: verdict.budget.max_failed_ratio,
        max_p99_ms: verdict.budget.max_p99_ms,
        p99_ms_max: verdict.p99_ms_max,
        stopped: verdict
            .stopped
            .as_ref()
            .map(|s| format!("{} (at {})", s.reason, s.at)),
        rollbacks: verdict.rollbacks.len() as u64,
        faults_fired: verdict.faults.iter().filter(|f| f.fired.is_some()).count() as u64,
        faults_planned: verdict.faults.len() as u64,
        seed: verdict.seed,
    })
}

/// A fault of the plan as the drill carries it out.
struct ArmedFault {
    kind: FaultKind,
    when: Trigger,
    record: FaultRecord,
    /// A pause's or a network fault's timer: sends SIGCONT, or heals the cut or the delay,
    /// when the fault's time is over, whatever the drill's loop is waiting on, and answers
    /// when it did. A network fault's injector lives in the timer: aborting it heals.
    resume: Option<tokio::task::JoinHandle<Timestamp>>,
    fired: bool,
    undone: bool,
}

/// One drill in progress.
struct Drill {
    client: ApiClient,
    http: reqwest::Client,
    region: String,
    fronts: Vec<String>,
    agent_dirs: BTreeMap<String, PathBuf>,
    pids: BTreeMap<String, Pid>,
    udp_ports: BTreeMap<String, u16>,
    faults: Vec<ArmedFault>,
    seed: Option<u64>,
    replay: Option<String>,
    moves: Vec<Move>,
    /// Lead time of each service, to request its cutover that far ahead.
    lead_secs: BTreeMap<String, u64>,
    budget: Budget,
    migration_timeout: Duration,
    started: Instant,
    started_at: Timestamp,
    baseline: FrontReading,
    window: VecDeque<(Instant, FrontReading)>,
    latest: FrontReading,
    p99_ms_max: Option<f64>,
    stopped: Option<Stopped>,
    outcomes: Vec<ServiceOutcome>,
    rollbacks: Vec<Rollback>,
    started_ids: BTreeSet<String>,
    seen_phases: BTreeSet<String>,
    /// Set on Ctrl-C: the drill stops as if a condition tripped, so its faults are undone and
    /// what it moved is rolled back before it exits.
    interrupted: Arc<AtomicBool>,
}

fn now() -> Timestamp {
    Timestamp::from_unix_ms(chrono::Utc::now().timestamp_millis().max(0) as u64)
}

impl Drill {
    /// Reads the cluster, checks the region, the fault plan and the fronts, and states the
    /// order; changes nothing.
    async fn prepare(
        args: &EvacuateArgs,
        client: ApiClient,
        plan: FaultPlan,
        pids: BTreeMap<String, Pid>,
        udp_ports: BTreeMap<String, u16>,
    ) -> anyhow::Result<Self> {
        let status = client.status().await?;
        let overview = &status.overview;
        let known = || {
            overview
                .regions
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        };
        if !overview.regions.contains_key(&args.region) {
            bail!(
                "region {:?} is not in the cluster (regions: {}); pass one of them to --region",
                args.region,
                known()
            );
        }
        if let Some(to) = &args.to
            && (!overview.regions.contains_key(to) || *to == args.region)
        {
            bail!(
                "--to {to:?} must be another region of the cluster than --region (regions: {})",
                known()
            );
        }
        let scope = Scope {
            regions: overview.regions.keys().cloned().collect(),
            services: overview.services.keys().cloned().collect(),
            processes: pids.keys().cloned().collect(),
            partitionable: udp_ports.keys().cloned().collect(),
            ..Scope::default()
        };
        plan.check(&scope)?;
        let agent_dirs: BTreeMap<String, PathBuf> = args
            .agent_dirs
            .iter()
            .map(|(region, dir)| (region.clone(), PathBuf::from(dir)))
            .collect();
        for fault in &plan.faults {
            if let FaultKind::Errors { region, .. } | FaultKind::Latency { region, .. } =
                &fault.kind
                && !agent_dirs.contains_key(region)
            {
                bail!(
                    "the fault plan switches faults in {region}'s instances: give its agent's \
                     state directory with --agent-dir {region}=DIR"
                );
            }
        }
        let Some(moves) = evacuation(&status, &args.region, args.to.as_deref()) else {
            bail!(
                "the cluster has no region but {} to move its services to; add one to the plan",
                args.region
            );
        };
        let moved: Vec<_> = moves
            .iter()
            .filter_map(|m| overview.services.get(&m.service))
            .collect();
        let budget = Budget {
            max_failed_ratio: args.max_failed_ratio.unwrap_or_else(|| {
                moved
                    .iter()
                    .map(|s| s.spec.slo.max_error_rate)
                    .fold(1.0, f64::min)
            }),
            max_p99_ms: args.max_p99_ms.unwrap_or_else(|| {
                moved
                    .iter()
                    .map(|s| s.spec.slo.max_p99_ms)
                    .fold(f64::INFINITY, f64::min)
            }),
            min_requests: DEFAULT_MIN_REQUESTS,
        };
        let lead_secs = moved
            .iter()
            .map(|s| (s.spec.name.clone(), s.spec.lead_time_secs))
            .collect();
        let http = reqwest::Client::builder()
            .timeout(CALL_TIMEOUT)
            .build()
            .context("HTTP client")?;
        let fronts: Vec<String> = args
            .front_metrics
            .iter()
            .map(|f| {
                if f.starts_with("http://") || f.starts_with("https://") {
                    f.clone()
                } else {
                    format!("http://{f}/metrics")
                }
            })
            .collect();
        let replay = plan.seed.map(|seed| {
            let mut command = format!("umbra chaos plan --seed {seed}");
            for r in &scope.regions {
                command.push_str(&format!(" --region {r}"));
            }
            for s in &scope.services {
                command.push_str(&format!(" --service {s}"));
            }
            for p in &scope.processes {
                command.push_str(&format!(" --process {p}"));
            }
            command
        });
        let faults = plan
            .faults
            .into_iter()
            .enumerate()
            .map(|(i, f)| ArmedFault {
                record: FaultRecord {
                    index: i + 1,
                    fault: f.kind.to_string(),
                    trigger: f.when.to_string(),
                    fired: None,
                    detail: "not fired".to_owned(),
                    undone: None,
                },
                kind: f.kind,
                when: f.when,
                resume: None,
                fired: false,
                undone: false,
            })
            .collect();
        let mut drill = Self {
            client,
            http,
            region: args.region.clone(),
            fronts,
            agent_dirs,
            pids,
            udp_ports,
            faults,
            seed: plan.seed,
            replay,
            moves,
            lead_secs,
            budget,
            migration_timeout: Duration::from_secs(args.migration_timeout_secs),
            started: Instant::now(),
            started_at: now(),
            baseline: FrontReading::default(),
            window: VecDeque::new(),
            latest: FrontReading::default(),
            p99_ms_max: None,
            stopped: None,
            outcomes: Vec::new(),
            rollbacks: Vec::new(),
            started_ids: BTreeSet::new(),
            seen_phases: BTreeSet::new(),
            interrupted: Arc::new(AtomicBool::new(false)),
        };
        drill.baseline = drill.read_fronts().await?;
        Ok(drill)
    }

    /// Moves the services, stopping and rolling back when a condition trips; then the verdict.
    async fn execute(&mut self) -> anyhow::Result<Verdict> {
        let interrupted = self.interrupted.clone();
        let ctrl_c = tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                interrupted.store(true, Ordering::SeqCst);
            }
        });
        let verdict = self.evacuate().await;
        ctrl_c.abort();
        verdict
    }

    async fn evacuate(&mut self) -> anyhow::Result<Verdict> {
        self.started = Instant::now();
        self.started_at = now();
        let services: Vec<String> = self.moves.iter().map(|m| m.service.clone()).collect();
        self.say(&format!(
            "evacuating {}: {} in this order ({ORDER_REASON}); budget {:.2} % failed, p99 ≤ {:.0} ms",
            self.region,
            if services.is_empty() {
                "no service has traffic there".to_owned()
            } else {
                services.join(", ")
            },
            self.budget.max_failed_ratio * 100.0,
            self.budget.max_p99_ms
        ));
        let mut evacuated_at = None;
        for m in self.moves.clone() {
            self.check_interrupted();
            if self.stopped.is_some() {
                self.outcomes
                    .push(ServiceOutcome::unstarted(&m, "not_started"));
                continue;
            }
            let outcome = match self.move_service(&m).await {
                Ok(outcome) => outcome,
                // The API refused the move or stopped answering while it ran: the drill stops
                // and cleans up what it can (a refused move started nothing).
                Err(error) => {
                    let reason = format!("moving {}: {error:#}", m.service);
                    self.say(&format!("STOP: {reason}"));
                    self.stopped.get_or_insert_with(|| Stopped {
                        reason,
                        at: now().to_string(),
                    });
                    ServiceOutcome::unstarted(&m, "error")
                }
            };
            let completed = outcome.outcome == "completed";
            self.outcomes.push(outcome);
            if !completed && self.stopped.is_none() {
                self.stopped = Some(Stopped {
                    reason: format!("{}'s migration did not complete", m.service),
                    at: now().to_string(),
                });
            }
        }
        if self.stopped.is_none() {
            evacuated_at = Some(self.started.elapsed());
        } else {
            self.abort().await?;
        }
        self.undo_faults().await;
        let live = self
            .live_migrations()
            .await?
            .into_iter()
            .map(|m| m.id)
            .collect();
        let total = self.latest.since(&self.baseline);
        let mut verdict = Verdict {
            verdict: String::new(),
            reasons: Vec::new(),
            drill: "evacuate".to_owned(),
            region: self.region.clone(),
            started: self.started_at.to_string(),
            ended: now().to_string(),
            evacuate_ms: evacuated_at.map(|d| d.as_millis() as u64),
            order: self.moves.clone(),
            order_reason: ORDER_REASON.to_owned(),
            services: self.outcomes.clone(),
            budget: self.budget.clone(),
            requests: total.requests,
            failed_requests: total.errors,
            failed_ratio: total.failed_ratio(),
            p99_ms_max: self.p99_ms_max,
            stopped: self.stopped.clone(),
            rollbacks: self.rollbacks.clone(),
            faults: self.faults.iter().map(|f| f.record.clone()).collect(),
            seed: self.seed,
            replay: self.replay.clone(),
            live_migrations_left: live,
            recorded: None,
            record_error: None,
        };
        verdict.judge();
        Ok(verdict)
    }

    /// Records the verdict in the cluster (`POST /v1/drills`), so `umbra status` shows it to
    /// every operator; says so in the verdict, or why it could not.
    async fn record(&mut self, verdict: &mut Verdict) {
        let answer = match drill_body(verdict) {
            Ok(body) => self
                .client
                .record_drill(&body)
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(format!("{e:#}")),
        };
        let error = match answer {
            Ok(Written::Drill { id }) => {
                self.say(&format!("verdict recorded in the cluster as {id}"));
                verdict.recorded = Some(id);
                return;
            }
            Ok(other) => format!("unexpected answer {other:?}"),
            Err(error) => error,
        };
        self.say(&format!(
            "the verdict was not recorded in the cluster: {error}"
        ));
        verdict.record_error = Some(error);
    }

    /// Requests one service's move and watches it to its end, firing faults and judging the
    /// stop conditions on the way; a tripped condition rolls it back here.
    async fn move_service(&mut self, m: &Move) -> anyhow::Result<ServiceOutcome> {
        let lead_ms = self.lead_secs.get(&m.service).copied().unwrap_or(0) * 1_000;
        let started_at = now();
        let request = MigrationRequest {
            from: Some(self.region.clone()),
            ..MigrationRequest::new(&m.service, &m.to, started_at.unix_ms() + lead_ms)
        };
        let id = match self.client.migrate(&request).await? {
            Written::Migration { id } => id,
            other => bail!("the API answered {other:?} to a migration request"),
        };
        self.started_ids.insert(id.clone());
        self.say(&format!(
            "{}: migration {id} {} → {}",
            m.service, self.region, m.to
        ));
        let finished = self.watch(&id, true).await?;
        let ended = now();
        Ok(ServiceOutcome {
            service: m.service.clone(),
            migration: Some(id),
            to: m.to.clone(),
            outcome: finished.phase,
            started: Some(started_at.to_string()),
            ended: Some(ended.to_string()),
            duration_ms: Some(ended.unix_ms().saturating_sub(started_at.unix_ms())),
        })
    }

    /// Polls migration `id` until it ends, firing due faults; with `judged`, a tripped stop
    /// condition undoes the faults and rolls it back (and the wait goes on to its end).
    async fn watch(&mut self, id: &str, judged: bool) -> anyhow::Result<MigrationStatus> {
        let deadline = Instant::now() + self.migration_timeout;
        let mut rolled_back = false;
        loop {
            let status = self.client.status().await?;
            let Some(migration) = status.migrations.into_iter().find(|m| m.id == id) else {
                bail!("migration {id} is no longer listed by the API's status");
            };
            if self.seen_phases.insert(format!("{id}/{}", migration.phase)) {
                self.say(&format!("{id}: {}", migration.phase));
            }
            self.fire_faults(&migration.phase).await;
            self.judge().await;
            self.check_interrupted();
            if migration.terminal {
                return Ok(migration);
            }
            if judged && self.stopped.is_some() && !rolled_back {
                self.undo_faults().await;
                self.roll_back(id, &migration.service).await?;
                rolled_back = true;
            }
            if Instant::now() > deadline {
                if !rolled_back {
                    self.stopped.get_or_insert_with(|| Stopped {
                        reason: format!(
                            "migration {id} did not end within {} s (it is {})",
                            self.migration_timeout.as_secs(),
                            migration.phase
                        ),
                        at: now().to_string(),
                    });
                    self.roll_back(id, &migration.service).await?;
                    rolled_back = true;
                    continue;
                }
                bail!(
                    "migration {id} did not end within {} s of its rollback (it is {}); see `umbra status`",
                    self.migration_timeout.as_secs(),
                    migration.phase
                );
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Asks the API to roll migration `id` back, recorded as evidence.
    async fn roll_back(&mut self, id: &str, service: &str) -> anyhow::Result<()> {
        let reason = format!(
            "umbra drill evacuate {}: {}",
            self.region,
            self.stopped
                .as_ref()
                .map_or("stopped", |s| s.reason.as_str())
        );
        self.client.rollback(id, &reason).await?;
        self.say(&format!("{id}: rollback requested ({reason})"));
        self.rollbacks.push(Rollback {
            service: service.to_owned(),
            migration: id.to_owned(),
            kind: "rollback".to_owned(),
            outcome: "requested".to_owned(),
            requested: now().to_string(),
            ended: None,
        });
        Ok(())
    }

    /// After a stop: the live migration was rolled back in [`Drill::watch`]; every service
    /// already moved out goes back by a migration into the region, watched to its end.
    async fn abort(&mut self) -> anyhow::Result<()> {
        self.undo_faults().await;
        // A migration of the drill's still live (its watch ended in an error) is rolled back
        // and watched to its end here.
        for live in self.live_migrations().await? {
            if !self.rollbacks.iter().any(|r| r.migration == live.id) {
                self.roll_back(&live.id, &live.service).await?;
            }
            self.watch(&live.id, false).await?;
        }
        for rollback in &mut self.rollbacks {
            let status = self.client.status().await?;
            if let Some(m) = status
                .migrations
                .iter()
                .find(|m| m.id == rollback.migration)
            {
                rollback.outcome.clone_from(&m.phase);
                rollback.ended = m.terminal.then(|| m.phase_since.to_string());
            }
        }
        let moved: Vec<(usize, ServiceOutcome)> = self
            .outcomes
            .iter()
            .enumerate()
            .filter(|(_, o)| o.outcome == "completed")
            .map(|(i, o)| (i, o.clone()))
            .collect();
        for (i, outcome) in moved {
            let lead_ms = self.lead_secs.get(&outcome.service).copied().unwrap_or(0) * 1_000;
            let requested = now();
            let request = MigrationRequest {
                from: Some(outcome.to.clone()),
                ..MigrationRequest::new(
                    &outcome.service,
                    &self.region,
                    requested.unix_ms() + lead_ms,
                )
            };
            let Written::Migration { id } = self.client.migrate(&request).await? else {
                bail!(
                    "the API did not answer a migration to move {} back",
                    outcome.service
                );
            };
            self.started_ids.insert(id.clone());
            self.say(&format!(
                "{}: moving back to {} (migration {id})",
                outcome.service, self.region
            ));
            let finished = self.watch(&id, false).await?;
            self.rollbacks.push(Rollback {
                service: outcome.service.clone(),
                migration: id,
                kind: "move_back".to_owned(),
                outcome: finished.phase.clone(),
                requested: requested.to_string(),
                ended: Some(now().to_string()),
            });
            if finished.phase == "completed" {
                self.outcomes[i].outcome = "moved_back".to_owned();
            }
        }
        Ok(())
    }

    /// Migrations the drill started that are still live.
    async fn live_migrations(&self) -> anyhow::Result<Vec<MigrationStatus>> {
        let status = self.client.status().await?;
        Ok(status
            .migrations
            .into_iter()
            .filter(|m| !m.terminal && self.started_ids.contains(&m.id))
            .collect())
    }

    /// Scrapes every front at once and sums the moved services' series.
    async fn read_fronts(&self) -> anyhow::Result<FrontReading> {
        let scrapes = self.fronts.iter().map(|url| async move {
            let text = self
                .http
                .get(url)
                .timeout(METRICS_TIMEOUT)
                .send()
                .await
                .and_then(|r| r.error_for_status())
                .with_context(|| format!("reading the front's metrics at {url}"))?
                .text()
                .await
                .with_context(|| format!("reading the front's metrics at {url}"))?;
            anyhow::Ok(text)
        });
        let mut reading = FrontReading::default();
        for text in futures::future::join_all(scrapes).await {
            let text = text?;
            for m in &self.moves {
                reading.add_exposition(&text, &m.service);
            }
        }
        Ok(reading)
    }

    /// Reads the fronts and, unless already stopped, judges the stop conditions. A front that
    /// cannot be read keeps the last reading: the drill judges on what it saw.
    async fn judge(&mut self) {
        let Ok(reading) = self.read_fronts().await else {
            return;
        };
        let at = Instant::now();
        self.window.push_back((at, reading.clone()));
        while self
            .window
            .front()
            .is_some_and(|(t, _)| at.duration_since(*t) > P99_WINDOW)
        {
            self.window.pop_front();
        }
        let oldest = self
            .window
            .front()
            .map_or(&self.baseline, |(_, r)| r)
            .clone();
        let window = reading.since(&oldest);
        if window.buckets.last().map_or(0, |(_, c)| *c) >= self.budget.min_requests
            && let Some(p99) = window.p99_ms()
        {
            self.p99_ms_max = Some(self.p99_ms_max.map_or(p99, |m: f64| m.max(p99)));
        }
        let total = reading.since(&self.baseline);
        self.latest = reading;
        if self.stopped.is_none()
            && let Some(reason) = self.budget.breach(&total, &window)
        {
            self.say(&format!("STOP: {reason}"));
            self.stopped = Some(Stopped {
                reason,
                at: now().to_string(),
            });
        }
    }

    /// Fires every fault now due (not after a stop), and continues paused processes whose
    /// pause is over.
    async fn fire_faults(&mut self, phase: &str) {
        let elapsed = self.started.elapsed();
        for i in 0..self.faults.len() {
            let fault = &mut self.faults[i];
            if fault.fired {
                if let Some(resume) = fault.resume.take_if(|r| r.is_finished()) {
                    let resumed = resume.await.ok().unwrap_or_else(now);
                    fault.undone = true;
                    fault.record.undone = Some(resumed.to_string());
                }
                continue;
            }
            let due = match &fault.when {
                Trigger::AfterMs(ms) => elapsed >= Duration::from_millis(*ms),
                Trigger::AtPhase(p) => p == phase,
            };
            if due && self.stopped.is_none() {
                self.inject(i).await;
            }
        }
    }

    async fn inject(&mut self, i: usize) {
        let kind = self.faults[i].kind.clone();
        let detail = match &kind {
            FaultKind::Errors {
                region,
                service,
                rate,
            } => {
                let switch = FaultSwitch {
                    error_rate: *rate,
                    added_latency_ms: 0,
                };
                self.switch(region, service, &switch).await
            }
            FaultKind::Latency {
                region,
                service,
                added_ms,
            } => {
                let switch = FaultSwitch {
                    error_rate: 0.0,
                    added_latency_ms: *added_ms,
                };
                self.switch(region, service, &switch).await
            }
            FaultKind::Pause { process, for_ms } => {
                let pid = self.pids[process];
                // Returns once the kernel shows it stopped: the pause counts from there.
                match umbra_chaos::inject::pause(pid.as_raw() as u32) {
                    Ok(()) => {
                        let pause = Duration::from_millis(*for_ms);
                        self.faults[i].resume = Some(tokio::spawn(async move {
                            tokio::time::sleep(pause).await;
                            let _ = kill(pid, Signal::SIGCONT);
                            now()
                        }));
                        format!("SIGSTOP to {process} (pid {pid})")
                    }
                    Err(e) => format!("SIGSTOP to {process} (pid {pid}) failed: {e}"),
                }
            }
            FaultKind::Partition {
                process,
                peer,
                for_ms,
            }
            | FaultKind::Loss {
                process,
                peer,
                for_ms,
                ..
            }
            | FaultKind::Delay {
                process,
                peer,
                for_ms,
                ..
            } => {
                let port = self.udp_ports[process];
                let lasts = Duration::from_millis(*for_ms);
                let (link, what) = match peer {
                    Some(peer) => {
                        let peer_port = self.udp_ports[peer];
                        (
                            Link::between(&[port], &[peer_port]),
                            format!("{process}'s UDP port {port} with {peer}'s port {peer_port}"),
                        )
                    }
                    None => (Link::all(&[port]), format!("{process}'s UDP port {port}")),
                };
                let injected = link.and_then(|link| {
                    NetworkFault::inject(&kind, &link).expect("a partition, a loss or a delay")
                });
                match injected {
                    Ok((network, effect)) => {
                        self.faults[i].resume = Some(tokio::spawn(async move {
                            tokio::time::sleep(lasts).await;
                            let _ = tokio::task::spawn_blocking(move || network.heal()).await;
                            now()
                        }));
                        format!("{what}: {effect}")
                    }
                    Err(e) => format!("{what} could not be reached: {e}"),
                }
            }
            // `prepare` refused them: the drill's scope names no process it could start again
            // or that it started under a clock of its own, no data disk it mounted, and no
            // abort (it rolls back on its own stop conditions).
            FaultKind::Kill { .. }
            | FaultKind::DiskFull { .. }
            | FaultKind::ClockJump { .. }
            | FaultKind::Abort => {
                format!("not injected: {kind} needs Umbra's own supervisor")
            }
        };
        let fault = &mut self.faults[i];
        fault.fired = true;
        fault.record.fired = Some(now().to_string());
        fault.record.detail = detail;
        let line = format!(
            "fault {} fired: {} ({})",
            fault.record.index, kind, fault.record.detail
        );
        self.say(&line);
    }

    /// Sets the fault switch of `service`'s instances in `region`; says how many it reached.
    async fn switch(&self, region: &str, service: &str, switch: &FaultSwitch) -> String {
        let dir = &self.agent_dirs[region];
        let n = umbra_demo::set_fault_switch(dir, &format!("{service}-"), switch).await;
        format!("{n} instances of {service} in {region} switched")
    }

    /// Undoes fault `i`: the switch back to healthy, SIGCONT after a pause.
    async fn undo(&mut self, i: usize) {
        let kind = self.faults[i].kind.clone();
        match &kind {
            FaultKind::Errors {
                region, service, ..
            }
            | FaultKind::Latency {
                region, service, ..
            } => {
                self.switch(region, service, &FaultSwitch::default()).await;
            }
            FaultKind::Pause { process, .. } => {
                if let Some(resume) = self.faults[i].resume.take() {
                    resume.abort();
                }
                let _ = kill(self.pids[process], Signal::SIGCONT);
            }
            FaultKind::Partition { .. } | FaultKind::Loss { .. } | FaultKind::Delay { .. } => {
                // Cancelling the timer drops its injector, which heals; the join returns once
                // it was dropped.
                if let Some(timer) = self.faults[i].resume.take() {
                    timer.abort();
                    let _ = timer.await;
                }
            }
            FaultKind::Kill { .. }
            | FaultKind::DiskFull { .. }
            | FaultKind::ClockJump { .. }
            | FaultKind::Abort => {}
        }
        let fault = &mut self.faults[i];
        fault.undone = true;
        fault.record.undone = Some(now().to_string());
    }

    /// Undoes every fault that fired and is still in force.
    async fn undo_faults(&mut self) {
        for i in 0..self.faults.len() {
            if self.faults[i].fired && !self.faults[i].undone {
                self.undo(i).await;
            }
        }
    }

    /// Stops the drill once Ctrl-C was pressed.
    fn check_interrupted(&mut self) {
        if self.interrupted.load(Ordering::SeqCst) && self.stopped.is_none() {
            self.say("STOP: interrupted (Ctrl-C); undoing the faults and rolling back");
            self.stopped = Some(Stopped {
                reason: "interrupted by the operator (Ctrl-C)".to_owned(),
                at: now().to_string(),
            });
        }
    }

    /// A progress line on stderr (stdout is the verdict's).
    fn say(&self, line: &str) {
        eprintln!("[{:6.1} s] {line}", self.started.elapsed().as_secs_f64());
    }
}

/// Every service with DNS weight in `region`, each with where it goes, in the drill's order
/// (`None`: no other region to go to).
fn evacuation(status: &StatusReport, region: &str, to: Option<&str>) -> Option<Vec<Move>> {
    let overview = &status.overview;
    let serving = |service: &str, r: &str| {
        overview
            .dns
            .get(service)
            .and_then(|d| d.weights.get(r))
            .is_some_and(|w| *w > 0)
    };
    let others = overview
        .regions
        .keys()
        .filter(|r| r.as_str() != region)
        .map(|r| {
            let n = overview.services.keys().filter(|s| serving(s, r)).count();
            (r.clone(), n)
        })
        .collect();
    let leaving = overview
        .services
        .keys()
        .filter(|s| serving(s, region))
        .map(|service| {
            let warm: u32 = status
                .pools
                .iter()
                .filter(|p| p.service == *service && p.region == region)
                .map(|p| p.actual.warm)
                .sum();
            (service.clone(), warm)
        })
        .collect();
    plan_moves(leaving, others, to)
}
