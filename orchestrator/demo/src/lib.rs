//! `umbra demo`: one real migration on one machine. Issues certificates into a temp dir,
//! writes two weeks of follow-the-sun demand history, starts three `umbra-orchestrator`
//! processes (Raft, operator API, agent gateway, embedded DNS for `umbra.test.`) and three
//! `umbra-agent` processes (us-east, eu-west, ap-south: process provider running
//! `umbra-sample`, the region front on 127.0.0.11/12/13 at one port), applies the plan through
//! the operator API, seeds data in the source primary, runs constant-rate traffic at
//! `shop.umbra.test` resolved through the orchestrators' DNS for the whole run, requests the
//! follow-the-sun migration on a compressed clock, prints every transition from the
//! replicated audit log as it happens, and builds the final [`report::DemoReport`].
//! `--inject-fault` flips the target's fault switch at the 50 % step (or, with
//! [`FaultAt::AfterWriterMoved`], once the single writer moved to the target); `--kill-leader`
//! SIGKILLs the leading orchestrator at that step; `--no-warm` skips the warm-up. With
//! `--dns bind` ([`DemoDns::Bind`]), `named` ([`bind`]) replaces the embedded servers as the
//! zone's one authority, and the traffic resolves through it. With `--data postgres`
//! ([`DemoData::Postgres`]), each region gets a PostgreSQL server ([`postgres`]) and the sample
//! instances keep their data there, replicating with PostgreSQL's logical replication.
//!
//! Everything it starts is registered with a [`processes::Supervisor`], which stops it on every
//! exit path. This module drives and observes; it must not make migration decisions (the
//! leader's executor does, from replicated state) nor change state except through the API.

pub mod bind;
pub mod faults;
pub mod history;
pub mod postgres;
pub mod processes;
pub mod prometheus;
pub mod report;
pub mod scenario;
pub mod traffic;
pub mod wals;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub use umbra_agent::agent::config::FrontKind;
use umbra_agent::loadgen::{ServiceTarget, Target};
/// The sample service's fault switch, which [`set_fault_switch`] sets.
pub use umbra_agent::sample::FaultSwitch;
use umbra_agent::warmer::MixSource;
use umbra_proto::certs::{self, Layout};
use umbra_proto::{Credentials, Identity, Role};

use umbra_dns::{WeightedAddress, WeightedRecordSet};
use umbra_orchestrator::api::{ApiClient, ApiConfig, BearerToken};
use umbra_orchestrator::api::{MigrationStatus, OverviewView, PoolStatus, Timestamp, Written};
use umbra_orchestrator::node::{
    AdminStatus, DnsSection, ExecutorSection, GatewaySection, NodeConfig, PeerConfig,
    StateMachineKind,
};
use umbra_orchestrator::state::{AuditEntry, Plan};

use self::processes::{ProcessError, Supervisor};
use self::report::{DemoReport, TrafficSegment};
use self::scenario::{DemoLoad, DemoTiming, DemoTopology};

/// The default demo must finish within three minutes (the bound); the run gives up
/// with an error a little before, leaving time to stop everything. A run asked for more
/// traffic than that fits gets longer: see [`DemoOptions::deadline`].
pub const DEMO_DEADLINE: Duration = Duration::from_secs(170);
/// Seconds of traffic [`DEMO_DEADLINE`] already holds beside the cluster's start and the
/// migration (the default 20,000 requests at 400/s take 50 s).
const TRAFFIC_SECS_IN_DEADLINE: f64 = 60.0;
/// Whether the agent on `state_dir` keeps a replication it drives.
fn replicating(state_dir: &Path) -> bool {
    std::fs::read(state_dir.join(umbra_agent::agent::executor::REPLICATIONS_FILE))
        .ok()
        .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
        .and_then(|kept| kept.as_object().map(|o| !o.is_empty()))
        .unwrap_or(false)
}

/// How long the target agent stays down under `--restart-target-agent`.
pub const AGENT_RESTART_AFTER: Duration = Duration::from_secs(5);
/// How long the cluster may take to start and elect a leader on a loaded laptop.
const STARTUP_DEADLINE: Duration = Duration::from_secs(40);
/// How often the demo polls the API for new audit entries.
const POLL_INTERVAL: Duration = Duration::from_millis(200);
/// Timeout of one API call from the demo: a live orchestrator answers in milliseconds; a
/// killed one must not stall the progress display.
const API_CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// Agents report every 250 ms so the leader judges a 5 s analysis window on fresh numbers
/// and sees a rollback's restored share within the 1 s rollback budget.
const AGENT_HEARTBEAT_MS: u64 = 250;
/// How long a rolled-back migration's shadows are kept (out of the front) before they are
/// stopped and removed: the demo's compressed timeline keeps them 2 s.
const SHADOW_KEEP_MS: u64 = 2_000;
/// How often the demo samples the serving pools from the leader.
const POOL_SAMPLE_INTERVAL: Duration = Duration::from_secs(1);
/// The operator certificate the demo uses.
const OPERATOR: &str = "demo";
/// Orchestrators the demo runs (`orchestrator-1` to `-3`).
const ORCHESTRATORS: u64 = 3;
/// Size of each region's instances' data disk when a fault plan may fill one: far more than
/// a run's logs take (a few MB), little enough to fill at once.
const DATA_DISK_BYTES: u64 = 64 << 20;

/// What `umbra demo` was asked to do.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Flip the target's fault switch, and when (the demo must roll back by itself).
    pub inject_fault: Option<FaultAt>,
    /// SIGKILL the leading orchestrator at the 50 % step.
    pub kill_leader: bool,
    /// SIGKILL the target region's agent once the migration warms, and start it again
    /// [`AGENT_RESTART_AFTER`] later, as a process manager would.
    pub restart_target_agent: bool,
    /// Skip the warm-up (the cold baseline).
    pub no_warm: bool,
    /// Directory holding `umbra-orchestrator`, `umbra-agent` and `umbra-sample`.
    pub bin_dir: PathBuf,
    /// Where to put certificates, configs, data and logs (a fresh temp dir when `None`).
    pub work_dir: Option<PathBuf>,
    /// Traffic before the migration is requested (the steady-state baseline).
    pub steady_secs: u64,
    /// Traffic after the migration ends.
    pub settle_secs: u64,
    /// Keep the traffic running until at least this many requests were sent.
    pub min_requests: u64,
    /// The compressed clock.
    pub timing: DemoTiming,
    /// Traffic and sizing.
    pub load: DemoLoad,
    /// Demand history the orchestrators read instead of the demo's two synthetic weeks: a
    /// directory of long-form CSV files and their slice width (seconds). The caller may write
    /// it while the cluster runs: every forecast reads it afresh.
    pub demand_history: Option<(PathBuf, u32)>,
    /// Slices in a row a smaller pool target must be asked for before a pool shrinks.
    pub pool_shrink_after_slices: u32,
    /// How much earlier than measured a pool moves ahead of a slice, ms.
    pub pool_lead_margin_ms: u64,
    /// How far past its lead time a pool's forecast reaches, seconds (`[executor]
    /// pool_forecast_reach_secs`).
    pub pool_forecast_reach_secs: u64,
    /// What each agent runs as its region's front (`[front] kind`).
    pub front: FrontKind,
    /// Who answers for the service zone.
    pub dns: DemoDns,
    /// DNS secondaries every orchestrator's embedded server sends NOTIFY to and serves zone
    /// transfers to (`[dns] secondaries`), signed with `dns_transfer_key_file`; embedded DNS
    /// only.
    pub dns_secondaries: Vec<SocketAddr>,
    /// The TSIG key file of zone transfers (`[dns] transfer_key_file`).
    pub dns_transfer_key_file: Option<PathBuf>,
    /// Where the cutover steps' SLO is read from (`umbra demo --slo-source`).
    pub slo_source: DemoSloSource,
    /// How the latency is judged (`umbra demo --slo-judgement`; `compare` needs Prometheus).
    pub slo_judgement: umbra_orchestrator::migration::SloJudgement,
    /// Faults to inject into the run's own processes while the migration runs
    /// (`umbra demo --fault-plan`, each run of `umbra chaos campaign`; [`faults`]).
    pub fault_plan: Option<umbra_chaos::plan::FaultPlan>,
    /// Where the sample instances keep their data (`umbra demo --data wal|postgres`).
    pub data: DemoData,
}

/// When `umbra demo --inject-fault` makes the target's instances fail every request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum FaultAt {
    /// At the 50 % step, while the source still holds the single writer: the rollback only
    /// moves traffic back.
    #[default]
    HalfWay,
    /// Once the leader recorded the single writer's move to the target (at the last step):
    /// the rollback must also hand the writer back to the source, losing no write the target
    /// acknowledged meanwhile.
    AfterWriterMoved,
}

/// Where the demo's sample instances keep their data (`umbra demo --data`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DemoData {
    /// Each instance's own write-ahead log, shipped to replicas over HTTP.
    #[default]
    Wal,
    /// A database each on its region's PostgreSQL server, which the demo starts
    /// ([`postgres`]); logical replication between regions.
    Postgres,
}

/// Where the demo's plan reads the SLO from (`umbra demo --slo-source fronts|prometheus`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DemoSloSource {
    /// The target front's counters as its agent reports them.
    #[default]
    Fronts,
    /// A real Prometheus the demo starts, scraping every agent's metrics ([`prometheus`]).
    Prometheus,
}

/// Who answers for `umbra.test.` in the demo (`umbra demo --dns embedded|bind`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DemoDns {
    /// Every orchestrator's embedded server (`[dns] provider = "embedded"`).
    #[default]
    Embedded,
    /// BIND 9's `named`, started by the demo on loopback (port 0: a free one), as the one
    /// authority, updated by the leader with RFC 2136 + TSIG (`provider = "rfc2136"`).
    /// `wrong_key` is a drill: the orchestrators hold a key of the right name with another
    /// secret, so every update is refused (NOTAUTH) and the migration must roll back.
    Bind { port: u16, wrong_key: bool },
}

impl DemoOptions {
    /// The defaults of `umbra demo`, with binaries in `bin_dir`.
    pub fn new(bin_dir: PathBuf) -> Self {
        Self {
            inject_fault: None,
            kill_leader: false,
            restart_target_agent: false,
            no_warm: false,
            bin_dir,
            work_dir: None,
            steady_secs: 10,
            settle_secs: 5,
            min_requests: 20_000,
            timing: DemoTiming::default(),
            load: DemoLoad::default(),
            demand_history: None,
            pool_shrink_after_slices: umbra_forecast::sizing::DEFAULT_HYSTERESIS
                .shrink_after_slices,
            pool_lead_margin_ms: umbra_orchestrator::executor::pools::DEFAULT_LEAD_MARGIN_MS,
            pool_forecast_reach_secs:
                umbra_orchestrator::executor::DEFAULT_POOL_FORECAST_REACH_SECS,
            front: FrontKind::default(),
            dns: DemoDns::Embedded,
            dns_secondaries: Vec::new(),
            dns_transfer_key_file: None,
            slo_source: DemoSloSource::Fronts,
            slo_judgement: Default::default(),
            fault_plan: None,
            data: DemoData::Wal,
        }
    }

    /// Checks the options fit together and the binaries exist.
    pub fn validate(&self) -> Result<(), DemoError> {
        if self.slo_judgement == umbra_orchestrator::migration::SloJudgement::Compare
            && self.slo_source != DemoSloSource::Prometheus
        {
            return Err(DemoError::Setup(
                "--slo-judgement compare needs --slo-source prometheus: it compares the target's \
                 latency samples with the source's, which only Prometheus holds"
                    .to_owned(),
            ));
        }
        if !self.dns_secondaries.is_empty() && self.dns != DemoDns::Embedded {
            return Err(DemoError::Setup(
                "DNS secondaries transfer the zone from the orchestrators' embedded DNS; with \
                 --dns bind, BIND is the zone's authority: leave the secondaries out"
                    .to_owned(),
            ));
        }
        if self.fault_plan.is_some() && self.data == DemoData::Postgres {
            return Err(DemoError::Setup(
                "a fault plan's run is judged from the sample instances' write-ahead logs \
                 (who took each write, and when); with --data postgres there are none: leave \
                 out --fault-plan or --data postgres"
                    .to_owned(),
            ));
        }
        if let Some(plan) = &self.fault_plan {
            let regions = DemoTopology::new(0).region_names();
            plan.check(&faults::scope(&regions, ORCHESTRATORS))
                .map_err(|e| DemoError::Setup(e.to_string()))?;
        }
        for binary in ["umbra-orchestrator", "umbra-agent", "umbra-sample"] {
            if !self.bin_dir.join(binary).is_file() {
                return Err(DemoError::Setup(format!(
                    "{} not found; build every binary with `cargo build --workspace --bins` \
                     (umbra demo looks next to itself)",
                    self.bin_dir.join(binary).display()
                )));
            }
        }
        if !(self.load.rate_per_sec > 0.0 && self.load.rate_per_sec <= 5_000.0) {
            return Err(DemoError::Setup(format!(
                "rate {} must be in (0, 5000] requests per second on one machine",
                self.load.rate_per_sec
            )));
        }
        if !(0.0..=1_000.0).contains(&self.load.write_rate_per_sec) {
            return Err(DemoError::Setup(format!(
                "write rate {} must be in [0, 1000] writes per second (0: reads only)",
                self.load.write_rate_per_sec
            )));
        }
        let migration_secs = self.timing.lead_time_secs
            + 3 * self.timing.analysis_window_secs
            + u64::from(self.timing.dns_ttl_secs) * 2;
        if self.steady_secs + migration_secs + self.settle_secs >= DEMO_DEADLINE.as_secs() - 30 {
            return Err(DemoError::Setup(format!(
                "steady {} s + migration ~{migration_secs} s + settle {} s does not fit the \
                 {} s demo",
                self.steady_secs,
                self.settle_secs,
                DEMO_DEADLINE.as_secs()
            )));
        }
        Ok(())
    }

    /// How long the whole run may take: [`DEMO_DEADLINE`], plus the time `min_requests`
    /// take at the read rate past what the default already holds, with half again for a
    /// traffic loop that falls behind its rate on a loaded machine.
    pub fn deadline(&self) -> Duration {
        let traffic_secs = self.min_requests as f64 / self.load.rate_per_sec;
        let extra = (1.5 * traffic_secs - TRAFFIC_SECS_IN_DEADLINE).max(0.0);
        DEMO_DEADLINE + Duration::from_secs_f64(extra.ceil())
    }
}

/// Why the demo stopped early.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// Something could not be prepared (binaries, ports, files).
    #[error("{0}")]
    Setup(String),
    /// A file could not be written.
    #[error("{what}: {source}")]
    Io {
        /// What was being written.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A process died.
    #[error(transparent)]
    Process(#[from] ProcessError),
    /// The operator API refused or failed.
    #[error("{0}")]
    Api(String),
    /// Something did not happen in time.
    #[error("{what} did not happen within {waited_secs} s; logs are in {dir}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long.
        waited_secs: u64,
        /// Where the logs are.
        dir: String,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> DemoError {
    let what = what.into();
    move |source| DemoError::Io { what, source }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// One orchestrator as the demo knows it.
struct Orchestrator {
    id: u64,
    quic: SocketAddr,
    admin: SocketAddr,
    /// Where its zone is answered: its embedded server, or the one authority (BIND).
    dns: SocketAddr,
    api: ApiClient,
    /// The API's URL, for the `umbra` CLI.
    api_url: String,
    killed: bool,
}

/// Runs the demo; `progress` receives one human line per event (the CLI prints them on
/// stderr). Everything started is stopped before this returns, also on error; a Ctrl-C is
/// the caller's to turn into dropping this future (the supervisor's drop stops the rest).
pub async fn run(
    options: &DemoOptions,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<DemoReport, DemoError> {
    options.validate()?;
    let started = Instant::now();
    let (dir, _temp) = work_dir(options)?;
    let mut supervisor = Supervisor::new();
    let deadline = options.deadline();
    let result = tokio::time::timeout(
        deadline,
        demo(options, &dir, &mut supervisor, started, progress),
    )
    .await
    .unwrap_or_else(|_| {
        Err(DemoError::Timeout {
            what: "the whole demo".into(),
            waited_secs: deadline.as_secs(),
            dir: dir.display().to_string(),
        })
    });
    let stop = Instant::now();
    supervisor.stop_all();
    progress(&format!(
        "stopped every process the demo started ({} ms)",
        stop.elapsed().as_millis()
    ));
    result
}

/// The run's directory: `options.work_dir`, or a fresh temp dir (removed when the returned
/// guard drops).
fn work_dir(options: &DemoOptions) -> Result<(PathBuf, Option<tempfile::TempDir>), DemoError> {
    match &options.work_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
            Ok((dir.clone(), None))
        }
        None => {
            let temp = tempfile::Builder::new()
                .prefix("umbra-demo-")
                .tempdir()
                .map_err(io("creating the demo's temp dir"))?;
            Ok((temp.path().to_owned(), Some(temp)))
        }
    }
}

/// How to reach a cluster `umbra demo --serve` keeps up: what `umbra drill` and the other
/// operator commands need.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Reach {
    /// The leading orchestrator's operator API (`--api`, `UMBRA_API`).
    pub api: String,
    /// The certificates directory (`--certs`).
    pub certs: PathBuf,
    /// The operator certificate's name (`--as`).
    pub operator: String,
    /// The API token file (`--token-file`).
    pub token_file: PathBuf,
    /// Each region agent's metrics endpoint, with its front's counters (`--front-metrics`).
    pub front_metrics: BTreeMap<String, String>,
    /// Each region agent's process-provider state directory (`--agent-dir`).
    pub agent_dirs: BTreeMap<String, PathBuf>,
    /// The pid of every process the demo runs (`--pid`).
    pub pids: BTreeMap<String, u32>,
    /// Each orchestrator's QUIC port and the port each agent's QUIC traffic leaves from
    /// (`--udp-port`), which a drill's `partition`, `loss` and `delay` faults act on.
    pub udp_ports: BTreeMap<String, u16>,
    /// A drill command that evacuates the demo's primary region.
    pub drill: String,
}

/// What the traffic client saw while `umbra demo --serve` kept the cluster up.
pub type ServeReport = report::TrafficSummary;

/// `umbra demo --serve`: starts the cluster, applies the plan, seeds the data and runs the
/// traffic as [`run`] does, hands `reach` how to reach it, and keeps it up until `stop`
/// completes; then stops everything and reports what the traffic client saw. It requests no
/// migration: that is for whoever reaches it (`umbra migrate`, `umbra drill`).
pub async fn serve(
    options: &DemoOptions,
    progress: &(dyn Fn(&str) + Sync),
    reach: &(dyn Fn(&Reach) + Sync),
    stop: impl std::future::Future<Output = ()>,
) -> Result<ServeReport, DemoError> {
    options.validate()?;
    let (dir, _temp) = work_dir(options)?;
    let mut supervisor = Supervisor::new();
    let served = serving(options, &dir, &mut supervisor, progress, reach, stop).await;
    supervisor.stop_all();
    progress("stopped every process the demo started");
    served
}

async fn serving(
    options: &DemoOptions,
    dir: &Path,
    supervisor: &mut Supervisor,
    progress: &(dyn Fn(&str) + Sync),
    reach: &(dyn Fn(&Reach) + Sync),
    stop: impl std::future::Future<Output = ()>,
) -> Result<ServeReport, DemoError> {
    let cluster = start_cluster(options, dir, supervisor, Instant::now(), progress).await?;
    let running = start_service(options, dir, supervisor, &cluster, progress).await?;
    let (leader, _) = leader_status(&cluster.orchestrators)
        .await
        .ok_or_else(|| DemoError::Api("no orchestrator leads".to_owned()))?;
    let front_metrics: BTreeMap<String, String> = cluster
        .agent_metrics
        .iter()
        .map(|(region, addr)| (region.clone(), format!("http://{addr}/metrics")))
        .collect();
    let mut drill = format!(
        "umbra drill evacuate --region {} --api {} --certs {} --as {OPERATOR} --token-file {}",
        cluster.regions[0],
        leader.api_url,
        cluster.certs_dir.display(),
        cluster.token_file.display()
    );
    for url in front_metrics.values() {
        drill.push_str(&format!(" --front-metrics {url}"));
    }
    for (region, state) in &cluster.agent_state_dirs {
        drill.push_str(&format!(" --agent-dir {region}={}", state.display()));
    }
    let mut udp_ports: BTreeMap<String, u16> = cluster
        .orchestrators
        .iter()
        .map(|o| (format!("orchestrator-{}", o.id), o.quic.port()))
        .collect();
    udp_ports.extend(
        cluster
            .agent_quic_ports
            .iter()
            .map(|(region, port)| (format!("agent-{region}"), *port)),
    );
    for (name, port) in &udp_ports {
        drill.push_str(&format!(" --udp-port {name}={port}"));
    }
    reach(&Reach {
        api: leader.api_url.clone(),
        certs: cluster.certs_dir.clone(),
        operator: OPERATOR.to_owned(),
        token_file: cluster.token_file.clone(),
        front_metrics,
        agent_dirs: cluster.agent_state_dirs.clone(),
        pids: supervisor.pids(),
        udp_ports,
        drill,
    });
    let mut stop = std::pin::pin!(stop);
    let checked: Result<(), DemoError> = loop {
        tokio::select! {
            _ = &mut stop => break Ok(()),
            _ = tokio::time::sleep(POLL_INTERVAL) => {
                if let Err(e) = supervisor.check() {
                    break Err(e.into());
                }
            }
        }
    };
    let reads = running.reads.finish().await;
    let writes = match running.writes {
        Some(writes) => writes.finish().await,
        None => Vec::new(),
    };
    checked?;
    let segments = report::merge_runs(reads, &writes);
    let summary = report::summarize(&segments, None, u64::MAX);
    say_failed_requests(&summary.failed_requests, progress);
    progress(&format!(
        "traffic: {} requests, {} failed {:?}",
        summary.requests_total, summary.requests_failed, summary.failures
    ));
    Ok(summary)
}

/// One progress line per failed request the report describes: when, what, where, and what
/// came back, so a failure can be placed on the phases printed above.
fn say_failed_requests(failed: &[report::FailedRequestSeen], progress: &(dyn Fn(&str) + Sync)) {
    for f in failed {
        let status = f
            .status
            .map_or_else(|| format!("{:?}", f.outcome), |s| s.to_string());
        progress(&format!(
            "failed: {} {} {} via {} → {status}: {}",
            Timestamp::from_unix_ms(f.at),
            f.method,
            f.path,
            f.front.as_deref().unwrap_or("-"),
            f.detail
        ));
    }
}

/// The traffic a cluster serves once [`start_service`] started it.
struct Running {
    reads: traffic::TrafficRun,
    writes: Option<traffic::TrafficRun>,
}

/// The processes of a demo, started and with a leader, before any plan.
struct Cluster {
    topology: DemoTopology,
    regions: Vec<String>,
    orchestrators: Vec<Orchestrator>,
    agent_state_dirs: BTreeMap<String, PathBuf>,
    /// The port each agent's QUIC traffic leaves from (its `quic_bind`), by region.
    agent_quic_ports: BTreeMap<String, u16>,
    /// Each agent's metrics endpoint (its front's counters), by region.
    agent_metrics: BTreeMap<String, SocketAddr>,
    demand: Vec<history::RegionDemand>,
    /// What the `umbra` CLI needs besides the API's URL: the certificates and token.
    certs_dir: PathBuf,
    token_file: PathBuf,
    /// The Prometheus judging the SLO (`--slo-source prometheus`), and how.
    prometheus: Option<(
        prometheus::DemoPrometheus,
        umbra_orchestrator::migration::SloJudgement,
    )>,
    /// Where the instances keep their data.
    data: DemoData,
    /// Each region's PostgreSQL server (`--data postgres`), as a conninfo.
    databases: BTreeMap<String, String>,
}

impl Cluster {
    /// The demo's plan, with the SLO source asked for.
    fn plan(&self, timing: &DemoTiming, load: &DemoLoad) -> String {
        let mut plan = scenario::plan_toml(&self.topology, timing, load);
        if self.data == DemoData::Postgres {
            plan = postgres::plan_on_postgres(&plan);
        }
        match &self.prometheus {
            Some((p, judgement)) => prometheus::plan_with_source(&plan, &p.url, *judgement),
            None => plan,
        }
    }
}

/// Certificates, demand history, three orchestrators and three agents, until one leads.
async fn start_cluster(
    options: &DemoOptions,
    dir: &Path,
    supervisor: &mut Supervisor,
    started: Instant,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<Cluster, DemoError> {
    let topology = DemoTopology::new(free_front_port()?);
    let regions = topology.region_names();
    let certs_dir = dir.join("certs");
    certs::init(
        &Layout {
            orchestrators: 3,
            regions: regions.clone(),
            operators: vec![OPERATOR.into()],
        },
        &certs_dir,
    )
    .map_err(|e| DemoError::Setup(format!("issuing certificates: {e}")))?;
    let token_file = dir.join("api-token");
    let token_value: String = {
        use rand::Rng;
        let mut rng = rand::rng();
        (0..32)
            .map(|_| format!("{:x}", rng.random_range(0..16u8)))
            .collect()
    };
    std::fs::write(&token_file, &token_value).map_err(io("writing the API token"))?;
    let token = BearerToken::new(&token_value).expect("32 hex digits are a usable token");
    let operator = Credentials::load(
        &certs_dir,
        &Identity::new(Role::Operator, OPERATOR).expect("a valid operator name"),
    )
    .map_err(|e| DemoError::Setup(format!("operator certificate: {e}")))?;

    // Demand history: two weeks per region, the daily peak following the sun, scaled so the
    // target's peak asks for about the offered rate.
    let demand = history::demo_regions(options.load.rate_per_sec / 4.0, options.load.rate_per_sec);
    let (demand_dir, demand_slice_secs) = match &options.demand_history {
        Some((dir, slice_secs)) => (dir.clone(), *slice_secs),
        None => {
            let now = chrono::Utc::now();
            let series = history::follow_the_sun(
                scenario::SERVICE,
                &demand,
                now,
                history::DEFAULT_HISTORY_DAYS,
                history::DEFAULT_SLICE_SECS,
                now.timestamp() as u64,
            );
            let demand_dir = dir.join("demand");
            history::write_csv(&demand_dir, &series).map_err(io("writing the demand history"))?;
            progress(&format!(
                "wrote {} days of demand history for {} regions (peaks: {})",
                history::DEFAULT_HISTORY_DAYS,
                demand.len(),
                demand
                    .iter()
                    .map(|d| format!("{} {:04.1} UTC", d.region, d.peak_hour_utc))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
            (demand_dir, history::DEFAULT_SLICE_SECS)
        }
    };

    // Orchestrators, each on a wall clock of its own when the fault plan may jump one (roles
    // such as `leader` resolve only when the fault fires, so every one of them).
    let jumps_clocks = options.fault_plan.as_ref().is_some_and(|plan| {
        plan.faults
            .iter()
            .any(|f| matches!(f.kind, umbra_chaos::plan::FaultKind::ClockJump { .. }))
    });
    let orchestrator_bin = options.bin_dir.join("umbra-orchestrator");
    let mut peers = Vec::new();
    for id in 1..=ORCHESTRATORS {
        peers.push(PeerConfig {
            id,
            address: SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()?)),
        });
    }
    let mut dns_addresses = Vec::new();
    for _ in &peers {
        dns_addresses.push(SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()?)));
    }
    // With BIND, its address is every orchestrator's DNS address: the one authority.
    let bind = match options.dns {
        DemoDns::Embedded => None,
        DemoDns::Bind { port, wrong_key } => {
            let port = if port == 0 { free_port()? } else { port };
            let primary = &topology.regions[0];
            let initial = format!(
                "{} {} IN A {}",
                scenario::HOSTNAME,
                options.timing.dns_ttl_secs,
                primary.front_ip
            );
            let bind = bind::start(
                &dir.join("bind"),
                bind::loopback(port),
                scenario::ZONE,
                &[initial],
                wrong_key,
                supervisor,
            )
            .await?;
            progress(&format!(
                "started named on {} as the authority for {} (TSIG key {}{})",
                bind.addr,
                scenario::ZONE,
                bind::KEY_NAME,
                if wrong_key {
                    "; the orchestrators hold a WRONG secret"
                } else {
                    ""
                }
            ));
            dns_addresses = vec![bind.addr; peers.len()];
            Some(bind)
        }
    };
    let mut orchestrators = Vec::new();
    for peer in &peers {
        let node_dir = dir.join(format!("orchestrator-{}", peer.id));
        std::fs::create_dir_all(&node_dir).map_err(io("creating a node dir"))?;
        let admin = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()?));
        let api_listen = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()?));
        let config = NodeConfig {
            id: peer.id,
            listen: peer.address,
            data_dir: node_dir.join("data"),
            certs_dir: certs_dir.clone(),
            admin_listen: Some(admin),
            join: false,
            peers: peers.clone(),
            fault_injection: false,
            state_machine: StateMachineKind::Orchestrator,
            raft: umbra_consensus::Config::default(),
            api: Some(ApiConfig::new(api_listen, token_file.clone())),
            gateway: GatewaySection::default(),
            dns: Some(match &bind {
                None => DnsSection {
                    secondaries: options.dns_secondaries.clone(),
                    transfer_key_file: options.dns_transfer_key_file.clone(),
                    ..DnsSection::embedded(dns_addresses[(peer.id - 1) as usize], scenario::ZONE)
                },
                Some(bind) => DnsSection::rfc2136(
                    bind.addr,
                    scenario::ZONE,
                    bind.orchestrator_key_file.clone(),
                ),
            }),
            executor: ExecutorSection {
                // BIND: the node checks its [dns] server.
                dns_servers: match &bind {
                    None => dns_addresses.clone(),
                    Some(_) => Vec::new(),
                },
                demand_csv_dir: Some(demand_dir.clone()),
                demand_slice_secs,
                shadow_keep_ms: SHADOW_KEEP_MS,
                pool_shrink_after_slices: options.pool_shrink_after_slices,
                pool_lead_margin_ms: options.pool_lead_margin_ms,
                pool_forecast_reach_secs: options.pool_forecast_reach_secs,
                ..ExecutorSection::default()
            },
        };
        let dns = dns_addresses[(peer.id - 1) as usize];
        let path = node_dir.join("node.toml");
        std::fs::write(&path, config.to_toml()).map_err(io("writing node.toml"))?;
        let mut command = Command::new(&orchestrator_bin);
        command.arg("--config").arg(&path).env("RUST_LOG", "info");
        let name = format!("orchestrator-{}", peer.id);
        let log = node_dir.join("node.log");
        if jumps_clocks {
            supervisor.spawn_under_clock(&name, command, &log, None, &node_dir.join("clock"))?;
        } else {
            supervisor.spawn(&name, command, &log, None)?;
        }
        let client = ApiClient::new(&format!("https://{api_listen}"), &operator, token.clone())
            .map_err(|e| DemoError::Setup(format!("API client: {e}")))?
            .with_timeout(API_CALL_TIMEOUT);
        orchestrators.push(Orchestrator {
            id: peer.id,
            quic: peer.address,
            admin,
            dns,
            api: client,
            api_url: format!("https://{api_listen}"),
            killed: false,
        });
        progress(&format!(
            "started orchestrator {} (raft/agents {}, api https://{api_listen}, dns {dns})",
            peer.id, peer.address
        ));
    }

    // Agents, one per region, each with its front; their instances on a data disk of their
    // own when the fault plan may fill one; the agents on a wall clock of their own when it
    // may jump one, their instances on the real clock all the same (through a launcher that
    // takes the agent's clock out of their environment): their write stamps judge the single
    // writer, and a jump names one process, not a machine.
    let fills_disks = options.fault_plan.as_ref().is_some_and(|plan| {
        plan.faults
            .iter()
            .any(|f| matches!(f.kind, umbra_chaos::plan::FaultKind::DiskFull { .. }))
    });
    let mut databases = BTreeMap::new();
    if options.data == DemoData::Postgres {
        for region in &regions {
            let port = free_port()?;
            let server = postgres::start(
                &dir.join(format!("postgres-{region}")),
                region,
                port,
                supervisor,
            )
            .await?;
            progress(&format!(
                "started PostgreSQL for {region} on 127.0.0.1:{port}: its instances keep their \
                 data there"
            ));
            databases.insert(region.clone(), server.conninfo);
        }
    }
    let agent_bin = options.bin_dir.join("umbra-agent");
    let mut agent_state_dirs = BTreeMap::new();
    let mut agent_metrics = BTreeMap::new();
    let mut agent_quic_ports = BTreeMap::new();
    for region in &regions {
        let agent_dir = dir.join(format!("agent-{region}"));
        let state_dir = agent_dir.join("state");
        std::fs::create_dir_all(&state_dir).map_err(io("creating an agent dir"))?;
        if fills_disks {
            supervisor
                .mount_data_disk(region, &state_dir, DATA_DISK_BYTES)
                .map_err(|e| DemoError::Setup(e.to_string()))?;
        }
        let front = topology.front(region).expect("a region of the topology");
        let path = agent_dir.join("agent.toml");
        let mut sample_binary = options.bin_dir.join("umbra-sample");
        if jumps_clocks {
            let launcher = agent_dir.join("umbra-sample-on-the-real-clock");
            umbra_chaos::inject::write_real_clock_launcher(&sample_binary, &launcher)
                .map_err(|e| DemoError::Setup(e.to_string()))?;
            sample_binary = launcher;
        }
        let metrics = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()?));
        agent_metrics.insert(region.clone(), metrics);
        // Its QUIC traffic leaves from a port of its own, so a fault plan can cut it off.
        let quic_bind = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()?));
        agent_quic_ports.insert(region.clone(), quic_bind.port());
        std::fs::write(
            &path,
            agent_toml(
                region,
                &state_dir,
                &orchestrators.iter().map(|o| o.quic).collect::<Vec<_>>(),
                &certs_dir,
                (front, metrics, quic_bind),
                options.front,
                (&sample_binary, databases.get(region).map(String::as_str)),
            ),
        )
        .map_err(io("writing agent.toml"))?;
        let mut command = Command::new(&agent_bin);
        command
            .arg("run")
            .arg("--config")
            .arg(&path)
            .env("RUST_LOG", "info");
        let name = format!("agent-{region}");
        let log = agent_dir.join("agent.log");
        if jumps_clocks {
            let clock = agent_dir.join("clock");
            supervisor.spawn_under_clock(&name, command, &log, Some(&state_dir), &clock)?;
        } else {
            supervisor.spawn(&name, command, &log, Some(&state_dir))?;
        }
        agent_state_dirs.insert(region.clone(), state_dir);
        progress(&format!(
            "started agent {region} ({} front http://{front})",
            options.front
        ));
    }

    let prometheus = match options.slo_source {
        DemoSloSource::Fronts => None,
        DemoSloSource::Prometheus => {
            let listen = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()?));
            let scraped: Vec<SocketAddr> = agent_metrics.values().copied().collect();
            let p =
                prometheus::start(&dir.join("prometheus"), listen, &scraped, supervisor).await?;
            progress(&format!(
                "started Prometheus on {} scraping the agents' metrics every {} s: it judges the SLO",
                p.url,
                prometheus::SCRAPE_INTERVAL_SECS
            ));
            Some((p, options.slo_judgement))
        }
    };

    // A leader, then the plan.
    let leader = wait_for(supervisor, dir, "a leader", STARTUP_DEADLINE, || async {
        for o in &orchestrators {
            if let Ok(health) = o.api.health().await
                && let Some(leader) = health.leader.leader
            {
                return Some((leader, health.leader.term));
            }
        }
        None
    })
    .await?;
    progress(&format!(
        "orchestrator {} leads term {} ({:.1} s after start)",
        leader.0,
        leader.1,
        started.elapsed().as_secs_f64()
    ));
    Ok(Cluster {
        topology,
        regions,
        orchestrators,
        agent_state_dirs,
        agent_quic_ports,
        agent_metrics,
        demand,
        certs_dir,
        token_file,
        prometheus,
        data: options.data,
        databases,
    })
}

/// The demo's processes started with nothing applied (three orchestrators with a leader, three
/// agents), for checking what the operator API answers against real processes. Dropping it
/// stops everything it started.
pub struct IdleCluster {
    cluster: Cluster,
    supervisor: Supervisor,
    timing: DemoTiming,
    load: DemoLoad,
    _dir: tempfile::TempDir,
}

impl IdleCluster {
    /// Starts the processes of `options` in a fresh temp dir and waits for a leader.
    pub async fn start(
        options: &DemoOptions,
        progress: &(dyn Fn(&str) + Sync),
    ) -> Result<Self, DemoError> {
        options.validate()?;
        let dir = tempfile::Builder::new()
            .prefix("umbra-demo-")
            .tempdir()
            .map_err(io("creating the demo's temp dir"))?;
        let mut supervisor = Supervisor::new();
        let cluster = start_cluster(
            options,
            dir.path(),
            &mut supervisor,
            Instant::now(),
            progress,
        )
        .await?;
        Ok(Self {
            cluster,
            supervisor,
            timing: options.timing.clone(),
            load: options.load.clone(),
            _dir: dir,
        })
    }

    /// The plan `umbra demo` would apply to this cluster.
    pub fn demo_plan(&self) -> String {
        self.cluster.plan(&self.timing, &self.load)
    }

    /// The sum over the live orchestrators of `umbra_executor_slo_queries_total{result}`.
    pub async fn slo_queries(&self, result: &str) -> u64 {
        prometheus::slo_queries(&self.orchestrator_admins(), result).await
    }

    /// Each orchestrator's embedded DNS server, killed ones included.
    pub fn orchestrator_dns(&self) -> Vec<SocketAddr> {
        self.cluster.orchestrators.iter().map(|o| o.dns).collect()
    }

    /// Each orchestrator's admin endpoint (`/metrics`, `/status`), killed ones included.
    pub fn orchestrator_admins(&self) -> Vec<SocketAddr> {
        self.cluster.orchestrators.iter().map(|o| o.admin).collect()
    }

    /// `POST /v1/plan` through any live orchestrator; the error is the API's message.
    pub async fn apply_plan_toml(&self, text: &str) -> Result<Written, String> {
        call_any(&self.cluster.orchestrators, |api| {
            let text = text.to_owned();
            async move { api.apply_plan_toml(&text).await }
        })
        .await
    }

    /// `POST /v1/migrations` through any live orchestrator; the error is the API's message.
    pub async fn migrate(
        &self,
        request: &umbra_orchestrator::state::MigrationRequest,
    ) -> Result<Written, String> {
        call_any(&self.cluster.orchestrators, |api| {
            let request = request.clone();
            async move { api.migrate(&request).await }
        })
        .await
    }

    /// The replicated state, as `GET /v1/status` shows it.
    pub async fn overview(&self) -> Result<OverviewView, String> {
        call_live(&self.cluster.orchestrators, |api| async move {
            api.status().await
        })
        .await
        .map(|status| status.overview)
    }

    /// Every migration, newest first, as `GET /v1/status` shows them.
    pub async fn migrations(&self) -> Result<Vec<MigrationStatus>, String> {
        call_live(&self.cluster.orchestrators, |api| async move {
            api.status().await
        })
        .await
        .map(|status| status.migrations)
    }

    /// The serving pools as the leading orchestrator's `GET /v1/status` shows them (a node
    /// that does not lead shows none); empty while no node leads.
    pub async fn pools(&self) -> Vec<PoolStatus> {
        leader_pools(&self.cluster.orchestrators).await
    }

    /// The state directory of `region`'s agent (its instances' records are `instances/*.json`).
    pub fn agent_state_dir(&self, region: &str) -> Option<&Path> {
        self.cluster
            .agent_state_dirs
            .get(region)
            .map(PathBuf::as_path)
    }

    /// The environment that points the `umbra` CLI at the leading orchestrator's API
    /// (`UMBRA_API`, `UMBRA_CERTS`, `UMBRA_OPERATOR`, `UMBRA_TOKEN_FILE`); `None` while no node
    /// leads.
    pub async fn leader_cli_env(&self) -> Option<Vec<(&'static str, String)>> {
        let (o, _) = leader_status(&self.cluster.orchestrators).await?;
        Some(vec![
            ("UMBRA_API", o.api_url.clone()),
            ("UMBRA_CERTS", self.cluster.certs_dir.display().to_string()),
            ("UMBRA_OPERATOR", OPERATOR.to_owned()),
            (
                "UMBRA_TOKEN_FILE",
                self.cluster.token_file.display().to_string(),
            ),
        ])
    }

    /// The load-balancer front of `region`, where its clients send requests.
    pub fn front(&self, region: &str) -> Option<SocketAddr> {
        self.cluster.topology.front(region)
    }

    /// The regions, the first one being the demo plan's primary.
    pub fn regions(&self) -> &[String] {
        &self.cluster.regions
    }

    /// Processes still running (all seven unless one died).
    pub fn running(&mut self) -> Vec<String> {
        self.supervisor.running()
    }

    /// The names of the orchestrator processes (`orchestrator-N`); the agents' are
    /// `agent-REGION`.
    pub fn orchestrator_names(&self) -> Vec<String> {
        self.cluster
            .orchestrators
            .iter()
            .map(|o| format!("orchestrator-{}", o.id))
            .collect()
    }

    /// SIGKILLs the process `name` and reaps it, so it is gone when this returns; its pid.
    pub fn kill(&mut self, name: &str) -> Result<u32, DemoError> {
        let pid = self.supervisor.kill(name)?;
        self.mark_killed(name, true);
        Ok(pid)
    }

    /// Starts `name`, killed with [`Self::kill`], again as it was first started; its pid.
    pub fn restart(&mut self, name: &str) -> Result<u32, DemoError> {
        let pid = self.supervisor.restart(name)?;
        self.mark_killed(name, false);
        Ok(pid)
    }

    /// Whether the API calls skip orchestrator `name` (not an orchestrator: nothing).
    fn mark_killed(&mut self, name: &str, killed: bool) {
        for o in &mut self.cluster.orchestrators {
            if format!("orchestrator-{}", o.id) == name {
                o.killed = killed;
            }
        }
    }
}

async fn demo(
    options: &DemoOptions,
    dir: &Path,
    supervisor: &mut Supervisor,
    started: Instant,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<DemoReport, DemoError> {
    let cluster = start_cluster(options, dir, supervisor, started, progress).await?;
    let running = start_service(options, dir, supervisor, &cluster, progress).await?;
    let Cluster {
        topology,
        regions,
        mut orchestrators,
        agent_state_dirs,
        demand,
        databases,
        ..
    } = cluster;
    let source = regions[0].clone();
    let outcome = migrate(
        options,
        dir,
        supervisor,
        &mut orchestrators,
        &demand,
        &source,
        &agent_state_dirs,
        &databases,
        &running.reads,
        started,
        progress,
    )
    .await;
    let segments = running.reads.finish().await;
    let write_segments = match running.writes {
        Some(writes) => writes.finish().await,
        None => Vec::new(),
    };
    let mut watched = outcome?;
    // The last writes, once the traffic stopped.
    watched.wals.read(&agent_state_dirs);
    finish(
        options,
        &orchestrators,
        &topology,
        watched,
        Traffic {
            reads: segments,
            writes: write_segments,
        },
        started,
        progress,
    )
    .await
}

/// Applies the demo plan, waits until the source front serves, seeds the data and starts the
/// traffic for the rest of the run.
async fn start_service(
    options: &DemoOptions,
    dir: &Path,
    supervisor: &mut Supervisor,
    cluster: &Cluster,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<Running, DemoError> {
    let plan_text = cluster.plan(&options.timing, &options.load);
    let Cluster {
        topology,
        regions,
        orchestrators,
        ..
    } = cluster;
    std::fs::write(dir.join("plan.toml"), &plan_text).map_err(io("writing plan.toml"))?;
    Plan::from_toml(&plan_text).map_err(|e| DemoError::Setup(format!("demo plan: {e}")))?;
    let applied = call_any(orchestrators, |api| {
        let text = plan_text.clone();
        async move { api.apply_plan_toml(&text).await }
    })
    .await
    .map_err(|e| DemoError::Api(format!("applying the demo plan: {e}")))?;
    progress(&format!("applied the plan: {applied:?}"));

    // The source serves once the leader's executor started its home pool; then seed data.
    let source = regions[0].clone();
    let source_front = topology.front(&source).expect("source front");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| DemoError::Setup(format!("HTTP client: {e}")))?;
    wait_for(
        supervisor,
        dir,
        "the source front serving",
        STARTUP_DEADLINE,
        || {
            let http = http.clone();
            async move {
                let url = format!("http://{source_front}/kv/key-0");
                let response = http.put(url).body("value-0").send().await.ok()?;
                response.status().is_success().then_some(())
            }
        },
    )
    .await?;
    let seeded = Instant::now();
    for k in 0..scenario::KEYS {
        let response = http
            .put(format!("http://{source_front}/kv/key-{k}"))
            .body(format!("value-{k}"))
            .send()
            .await
            .map_err(|e| DemoError::Setup(format!("seeding key-{k}: {e}")))?;
        if !response.status().is_success() {
            return Err(DemoError::Setup(format!(
                "seeding key-{k}: the source answered {}",
                response.status()
            )));
        }
    }
    progress(&format!(
        "seeded {} keys in the {source} primary ({} ms)",
        scenario::KEYS,
        seeded.elapsed().as_millis()
    ));

    // Traffic for the rest of the run, by name through every orchestrator's DNS.
    let service_spec = Plan::from_toml(&plan_text)
        .expect("checked above")
        .services
        .remove(0);
    let mix = MixSource::new(service_spec.warmup.mix.clone(), 7)
        .map_err(|e| DemoError::Setup(format!("traffic mix: {e}")))?;
    let target = Target::Service(ServiceTarget {
        name: scenario::HOSTNAME.to_owned(),
        port: topology.front_port,
        dns_servers: distinct_dns(orchestrators.iter()),
    });
    let mix = Arc::new(mix);
    let traffic = traffic::TrafficRun::start(
        target.clone(),
        options.load.rate_per_sec,
        Arc::new(move |seq| mix.request(seq)),
    );
    let writes = (options.load.write_rate_per_sec > 0.0).then(|| {
        traffic::TrafficRun::start(target, options.load.write_rate_per_sec, traffic::writes())
    });
    progress(&format!(
        "traffic: {} reads/s of the seeded keys and {} writes/s of fresh keys at http://{}:{} via {}",
        options.load.rate_per_sec,
        options.load.write_rate_per_sec,
        scenario::HOSTNAME.trim_end_matches('.'),
        topology.front_port,
        match options.dns {
            DemoDns::Embedded => "the orchestrators' DNS",
            DemoDns::Bind { .. } => "BIND",
        }
    ));
    Ok(Running {
        reads: traffic,
        writes,
    })
}

/// Every traffic segment of the run.
struct Traffic {
    reads: Vec<TrafficSegment>,
    writes: Vec<TrafficSegment>,
}

/// What watching the migration found.
struct Watched {
    id: String,
    from: String,
    to: String,
    audit: Vec<AuditEntry>,
    overview: OverviewView,
    /// The migration as the final status showed it.
    migration: Option<MigrationStatus>,
    killed_leader: Option<u64>,
    restarted_agent: Option<String>,
    instances_left: BTreeMap<String, usize>,
    shadow_instances_left: usize,
    pools: Vec<report::PoolSample>,
    faults: Vec<faults::FaultSeen>,
    /// The instances' write-ahead logs, read while the migration ran.
    wals: wals::WalReader,
    /// `--data postgres`: instance databases by region and idle replication slots at the end.
    postgres_left: Option<(BTreeMap<String, usize>, usize)>,
}

#[allow(clippy::too_many_arguments)] // One call site; a struct would only rename them.
async fn migrate(
    options: &DemoOptions,
    dir: &Path,
    supervisor: &mut Supervisor,
    orchestrators: &mut [Orchestrator],
    demand: &[history::RegionDemand],
    source: &str,
    agent_state_dirs: &BTreeMap<String, PathBuf>,
    databases: &BTreeMap<String, String>,
    traffic: &traffic::TrafficRun,
    started: Instant,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<Watched, DemoError> {
    let steady_until = Instant::now() + Duration::from_secs(options.steady_secs);
    while Instant::now() < steady_until {
        supervisor.check()?;
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    let totals = traffic.totals();
    progress(&format!(
        "steady state: {} requests, {} failed",
        totals.requests, totals.failed
    ));
    let to = scenario::next_sun_region(demand, source, chrono::Utc::now());
    let request =
        scenario::migration_request(source, &to, unix_ms(), &options.timing, !options.no_warm);
    let applied = call_any(orchestrators, |api| {
        let request = request.clone();
        async move { api.migrate(&request).await }
    })
    .await
    .map_err(|e| DemoError::Api(format!("requesting the migration: {e}")))?;
    let Written::Migration { id } = applied else {
        return Err(DemoError::Api(format!(
            "the API answered {applied:?} to a migration request"
        )));
    };
    progress(&format!(
        "migration {id}: {} {source} → {to}, cutover in {} s{}",
        scenario::SERVICE,
        options.timing.lead_time_secs,
        if options.no_warm { " (no warm-up)" } else { "" }
    ));

    let mut audit: Vec<AuditEntry> = Vec::new();
    let mut fault_injected = false;
    let mut killed_leader = None;
    let mut agent_killed_at: Option<Instant> = None;
    let mut replicating_since: Option<Instant> = None;
    let mut restarted_agent = None;
    let mut terminal_since: Option<Instant> = None;
    let watch_deadline = started + options.deadline() - Duration::from_secs(10);
    let mut pools: Vec<report::PoolSample> = Vec::new();
    let mut pools_sampled: Option<Instant> = None;
    let mut plan_faults = options.fault_plan.as_ref().map(faults::Faults::arm);
    let mut faults_undone = false;
    let mut logs = wals::WalReader::default();
    loop {
        supervisor.check()?;
        // Before the agents remove what they release, with its log.
        logs.read(agent_state_dirs);
        if pools_sampled.is_none_or(|at| at.elapsed() >= POOL_SAMPLE_INTERVAL) {
            pools_sampled = Some(Instant::now());
            for view in leader_pools(orchestrators).await {
                let sample = report::PoolSample::of(&view);
                match pools.iter_mut().find(|p| {
                    (p.region.as_str(), &p.slice_start)
                        == (sample.region.as_str(), &sample.slice_start)
                }) {
                    Some(slot) => *slot = sample,
                    None => pools.push(sample),
                }
            }
        }
        let after = audit.last().map_or(0, |e| e.index);
        let fresh = call_live(
            orchestrators,
            |api| async move { api.audit(after, 500).await },
        )
        .await
        .unwrap_or_default();
        for entry in fresh {
            if entry.index <= after {
                continue;
            }
            if entry.subject == id || entry.subject == scenario::SERVICE {
                progress(&format!(
                    "[{:6.1} s] {:<8} {}  ({}{})",
                    started.elapsed().as_secs_f64(),
                    entry.subject,
                    entry.event,
                    entry.reason,
                    if entry.term > 0 {
                        format!(", term {}", entry.term)
                    } else {
                        String::new()
                    }
                ));
            }
            audit.push(entry);
        }
        let phases = report::phases_from_audit(&audit, &id);
        let phase = phases.last().map(|p| p.name.as_str()).unwrap_or("planned");
        let terminal = matches!(phase, "completed" | "rolled_back" | "failed");
        if let Some(plan_faults) = &mut plan_faults
            && !faults_undone
        {
            let mut reach = faults::Reach {
                supervisor,
                orchestrators,
                agent_state_dirs,
                source,
                target: &to,
                migration: &id,
            };
            let said = if terminal {
                faults_undone = true;
                plan_faults.undo_all(&mut reach).await
            } else {
                let reached: Vec<&str> = phases.iter().map(|p| p.name.as_str()).collect();
                plan_faults.step(phase, &reached, &mut reach).await
            };
            for line in said {
                progress(&format!(
                    "[{:6.1} s] {line}",
                    started.elapsed().as_secs_f64()
                ));
            }
        }
        if options.restart_target_agent {
            let agent = format!("agent-{to}");
            if replicating_since.is_none() && replicating(&agent_state_dirs[&to]) {
                replicating_since = Some(Instant::now());
            }
            match agent_killed_at {
                // Once it has driven the replication (started with the warm-up) for a second,
                // so the leader holds its success and will not ask again: what a restart
                // must not lose.
                None if matches!(phase, "warming" | "replicating")
                    && replicating_since
                        .is_some_and(|since| since.elapsed() >= Duration::from_secs(1)) =>
                {
                    supervisor.kill(&agent)?;
                    agent_killed_at = Some(Instant::now());
                    progress(&format!(
                        "SIGKILLed {agent} while the migration is {phase} and its replication \
                         runs; it starts again in {} s",
                        AGENT_RESTART_AFTER.as_secs()
                    ));
                }
                Some(at) if restarted_agent.is_none() && at.elapsed() >= AGENT_RESTART_AFTER => {
                    let pid = supervisor.restart(&agent)?;
                    restarted_agent = Some(to.clone());
                    progress(&format!("started {agent} again (pid {pid})"));
                }
                _ => {}
            }
        }
        let fault_due = match options.inject_fault {
            Some(FaultAt::HalfWay) => phase == "cutting_over[1]",
            Some(FaultAt::AfterWriterMoved) => {
                !terminal && report::writer_move(&audit, &id).is_some()
            }
            None => false,
        };
        if fault_due && !fault_injected {
            let failing = FaultSwitch {
                error_rate: 1.0,
                added_latency_ms: 0,
            };
            let flipped = set_fault_switch(&agent_state_dirs[&to], "", &failing).await;
            progress(&format!(
                "fault injected: {to}'s sample instances now fail every request ({flipped} \
                 switched, {phase})"
            ));
            fault_injected = true;
        }
        if phase == "cutting_over[1]" && options.kill_leader && killed_leader.is_none() {
            let leader = call_live(orchestrators, |api| async move { api.health().await })
                .await
                .ok()
                .and_then(|h| h.leader.leader);
            if let Some(leader) = leader {
                supervisor.kill(&format!("orchestrator-{leader}"))?;
                if let Some(o) = orchestrators.iter_mut().find(|o| o.id == leader) {
                    o.killed = true;
                }
                killed_leader = Some(leader);
                progress(&format!(
                    "SIGKILLed orchestrator {leader}, the leader, mid-cutover"
                ));
            }
        }
        if terminal {
            let since = *terminal_since.get_or_insert_with(Instant::now);
            let enough = traffic.totals().requests >= options.min_requests;
            // What the migration leaves behind is released: the old source's pool after a
            // completion, the shadow pool after a rollback (once the keep time passed).
            // On PostgreSQL, their databases are dropped with them and the slot kept for a
            // way back that can no longer be taken is dropped too: no slot stays idle.
            let released = match phase {
                "completed" => instances_left(&agent_state_dirs[source]) == 0,
                "rolled_back" => instances_left(&agent_state_dirs[&to]) == 0,
                _ => true,
            } && (databases.is_empty() || postgres_held(databases).await.1 == 0);
            if since.elapsed() >= Duration::from_secs(options.settle_secs) && enough && released {
                break;
            }
        }
        if Instant::now() > watch_deadline {
            let sent = traffic.totals().requests;
            let what = if terminal_since.is_none() {
                format!("migration {id} reaching an end (it is {phase})")
            } else if sent < options.min_requests {
                format!(
                    "the traffic reaching {} requests after migration {id} ended {phase} \
                     (it sent {sent}; lower --min-requests or raise --rate)",
                    options.min_requests
                )
            } else {
                format!("migration {id}'s leftover instances being released (it ended {phase})")
            };
            return Err(DemoError::Timeout {
                what,
                waited_secs: watch_deadline.duration_since(started).as_secs(),
                dir: dir.display().to_string(),
            });
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    let status = call_live(orchestrators, |api| async move { api.status().await })
        .await
        .map_err(|e| DemoError::Api(format!("reading the final status: {e}")))?;
    let instances_left = agent_state_dirs
        .iter()
        .map(|(region, dir)| (region.clone(), instances_left(dir)))
        .collect();
    let shadow_prefix = format!("{id}-");
    let shadow_instances_left = std::fs::read_dir(agent_state_dirs[&to].join("processes"))
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with(&shadow_prefix))
                .count()
        })
        .unwrap_or(0);
    let migration = status.migrations.iter().find(|m| m.id == id).cloned();
    let postgres_left = (!databases.is_empty()).then_some(postgres_held(databases).await);
    Ok(Watched {
        id,
        from: source.to_owned(),
        to,
        audit,
        migration,
        overview: status.overview,
        killed_leader,
        restarted_agent,
        instances_left,
        shadow_instances_left,
        pools,
        faults: plan_faults.map(|f| f.seen()).unwrap_or_default(),
        wals: logs,
        postgres_left,
    })
}

async fn finish(
    options: &DemoOptions,
    orchestrators: &[Orchestrator],
    topology: &DemoTopology,
    watched: Watched,
    traffic: Traffic,
    started: Instant,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<DemoReport, DemoError> {
    // Every write and read counts: the report's totals, failures and timeline are over both.
    let segments = report::merge_runs(traffic.reads, &traffic.writes);
    let phases = report::phases_from_audit(&watched.audit, &watched.id);
    let outcome = phases
        .last()
        .map(|p| p.name.clone())
        .unwrap_or_else(|| "planned".into());
    let steps = watched
        .migration
        .as_ref()
        .map_or(3, |m| m.steps_percent.len());
    let cutover = report::cutover_start(&phases);
    // Where the traffic ended up: once the migration ended and cached DNS answers expired.
    let settled_at_ms = phases
        .last()
        .map_or(u64::MAX, |p| p.start)
        .saturating_add(u64::from(options.timing.cutover_ttl_secs) * 1000);
    let summary = report::summarize(&segments, cutover, settled_at_ms);
    say_failed_requests(&summary.failed_requests, progress);
    // Every write sent is read back where the service ended up.
    let home = if outcome == "completed" {
        &watched.to
    } else {
        &watched.from
    };
    let front = topology
        .regions
        .iter()
        .find(|r| &r.name == home)
        .map(|r| SocketAddr::from((r.front_ip, topology.front_port)));
    let writes = match front {
        Some(front) => read_back(front, &traffic.writes).await,
        None => report::WriteCheck::default(),
    };
    progress(&format!(
        "writes: {} sent, {} acknowledged, {} found in {home} at the end ({} acknowledged \
         and missing)",
        writes.sent, writes.acknowledged, writes.found, writes.acknowledged_missing
    ));
    let wals = watched.wals.wals();
    progress(&format!(
        "write-ahead logs: {} records read from {} log files",
        watched.wals.records(),
        wals.len()
    ));
    let identical_state = same_state_everywhere(orchestrators, &watched.overview, topology).await;
    progress(&format!(
        "every live orchestrator holds the same state: {}",
        if identical_state { "yes" } else { "NO" }
    ));
    let (slo_source, slo_queries_with_data, slo_queries_no_data) = match options.slo_source {
        DemoSloSource::Fronts => ("fronts", 0, 0),
        DemoSloSource::Prometheus => {
            let admins: Vec<SocketAddr> = orchestrators.iter().map(|o| o.admin).collect();
            let ok = prometheus::slo_queries(&admins, "ok").await;
            let no_data = prometheus::slo_queries(&admins, "no_data").await;
            progress(&format!(
                "Prometheus SLO queries: {ok} with data, {no_data} without (live orchestrators)"
            ));
            ("prometheus", ok, no_data)
        }
    };
    let timeline = report::timeline(&segments);
    // The window the leader measured, or when leaders changed during the move the one the
    // instances' logs show. Failures are counted over the wider of the two: a leader that
    // took over a move half done measures only its own part (seed 12 of the campaign: the
    // old leader fenced and was paused, the new one fenced again and promoted 140 ms later,
    // while the logs show 4.4 s without a writer).
    let measured = report::writer_move(&watched.audit, &watched.id);
    let logged = report::logged_writer_move(&wals, &watched.id);
    let fence_window_ms =
        measured.map(|(_, window)| window.or(logged.map(|(_, l)| l)).unwrap_or(0));
    // A rollback from the last step before the writer moved may have found the source fenced
    // (an abort while the move waited on a paused leader): its writes paused until the
    // rollback lifted the fence. The leader records no move then; the logs show the pause.
    let lifted = match (measured, phases.as_slice()) {
        (None, [.., last_step, rolling_back, ended])
            if last_step.name == format!("cutting_over[{}]", steps.saturating_sub(1))
                && rolling_back.name == "rolling_back" =>
        {
            report::logged_source_pause(&wals, &watched.id, (last_step.start, ended.start))
        }
        _ => None,
    };
    let writes_held = match (measured, lifted) {
        (Some((at, window)), _) => Some(report::widest((at, window.unwrap_or(0)), logged)),
        (None, lifted) => lifted,
    };
    let (failed_in_fence_window, writes_refused_while_fenced) =
        writes_held.map_or((0, 0), |(end, len)| {
            (
                report::failed_in_window(&timeline, end, len),
                report::failed_due_in_window(
                    &traffic.writes,
                    options.load.write_rate_per_sec,
                    end,
                    len,
                ),
            )
        });
    let completed = outcome == "completed";
    Ok(DemoReport {
        outcome,
        migration: watched.id.clone(),
        from: watched.from,
        to: watched.to,
        warm_up: !options.no_warm,
        requests_total: summary.requests_total,
        requests_failed: summary.requests_failed,
        failures: summary.failures,
        rate_per_sec: options.load.rate_per_sec,
        traffic_secs: segments.len() as f64 * traffic::SEGMENT.as_secs_f64(),
        p99_ms_steady: summary.p99_ms_steady,
        p99_ms_first_10s_after_cutover: summary.p99_ms_first_10s_after_cutover,
        shadow_instances: watched.migration.as_ref().map_or(0, |m| m.shadow_instances),
        rollback_ms: report::rollback_ms(&phases),
        fence_window_ms,
        failed_in_fence_window,
        writes_acknowledged: writes.acknowledged,
        writes_found_on_target: completed.then_some(writes.found),
        writes_found_on_source: (!completed).then_some(writes.found),
        writes_acknowledged_missing: writes.acknowledged_missing,
        writes_refused_while_fenced,
        phases,
        by_front: summary.by_front,
        by_front_at_end: summary.by_front_at_end,
        failed_requests: summary.failed_requests,
        audit_step_counts: report::step_counts(&watched.audit, &watched.id, steps),
        killed_leader: watched.killed_leader,
        restarted_agent: watched.restarted_agent,
        instances_left: watched.instances_left,
        shadow_instances_left: watched.shadow_instances_left,
        pools: watched.pools,
        faults: watched.faults,
        postgres_databases_left: watched.postgres_left.as_ref().map(|(d, _)| d.clone()),
        postgres_idle_slots_left: watched.postgres_left.map(|(_, s)| s),
        wals,
        writes,
        identical_state,
        demo_secs: started.elapsed().as_secs_f64(),
        timeline,
        slo_source: slo_source.to_owned(),
        slo_queries_with_data,
        slo_queries_no_data,
    })
}

/// Whether every live orchestrator applied the same log (equal applied index, polled until
/// they agree for up to 10 s) and its own DNS server serves the weights the state holds.
async fn same_state_everywhere(
    orchestrators: &[Orchestrator],
    overview: &OverviewView,
    topology: &DemoTopology,
) -> bool {
    let http = match reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
    {
        Ok(http) => http,
        Err(_) => return false,
    };
    let live: Vec<&Orchestrator> = orchestrators.iter().filter(|o| !o.killed).collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    let applied_agree = loop {
        let mut indexes = Vec::new();
        for o in &live {
            let status: Option<AdminStatus> =
                match http.get(format!("http://{}/status", o.admin)).send().await {
                    Ok(r) => r.json().await.ok(),
                    Err(_) => None,
                };
            indexes.push(status.map(|s| s.raft.applied_index));
        }
        if indexes.iter().all(|i| i.is_some() && *i == indexes[0]) {
            break true;
        }
        if Instant::now() > deadline {
            break false;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    };
    let Some(dns) = overview.dns.get(scenario::SERVICE) else {
        return false;
    };
    let addresses = dns
        .weights
        .iter()
        .filter(|(_, w)| **w > 0)
        .filter_map(|(region, _)| topology.front(region))
        .map(|front| WeightedAddress {
            addr: front.ip(),
            weight: 1,
        })
        .collect();
    let set = WeightedRecordSet::new(scenario::HOSTNAME, dns.ttl_secs, addresses);
    let servers = distinct_dns(live.iter().copied());
    let dns_agree = umbra_dns::verify::verify_served(&servers, &set, Duration::from_secs(10))
        .await
        .is_ok();
    applied_agree && dns_agree
}

/// Sets the fault switch (`POST /admin/fault`) of every live sample instance in an agent's
/// process-provider state directory whose id starts with `prefix` (`""`: all of them);
/// returns how many were switched. The instances' ports come from the port files the process
/// provider keeps. `umbra demo --inject-fault` and `umbra drill`'s `errors` and `latency`
/// faults flip it.
pub async fn set_fault_switch(state_dir: &Path, prefix: &str, switch: &FaultSwitch) -> usize {
    let http = reqwest::Client::new();
    let mut flipped = 0;
    let Ok(entries) = std::fs::read_dir(state_dir.join("processes")) else {
        return 0;
    };
    for entry in entries.flatten() {
        if !entry.file_name().to_string_lossy().starts_with(prefix) {
            continue;
        }
        let Ok(port) = std::fs::read_to_string(entry.path().join("port")) else {
            continue;
        };
        let Ok(port) = port.trim().parse::<u16>() else {
            continue;
        };
        let answered = http
            .post(format!("http://127.0.0.1:{port}/admin/fault"))
            .json(switch)
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if answered {
            flipped += 1;
        }
    }
    flipped
}

/// Reads every key the write traffic sent back through `front` (16 at a time), and counts
/// the acknowledged ones (every write but those the traffic client saw fail) not found.
async fn read_back(front: SocketAddr, segments: &[TrafficSegment]) -> report::WriteCheck {
    let sent: Vec<u64> = segments
        .iter()
        .flat_map(|s| s.first_seq..s.first_seq + s.counts.scheduled)
        .collect();
    let not_acknowledged: std::collections::HashSet<u64> = segments
        .iter()
        .flat_map(|s| s.failed_seqs.iter().copied())
        .collect();
    let acknowledged = segments.iter().map(|s| s.counts.ok).sum();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap_or_default();
    let mut found = 0;
    let mut missing = Vec::new();
    let mut reads = tokio::task::JoinSet::new();
    let mut pending = sent.iter().copied();
    loop {
        while reads.len() < 16
            && let Some(seq) = pending.next()
        {
            let http = http.clone();
            reads.spawn(async move {
                let url = format!("http://{front}/kv/{}", traffic::written_key(seq));
                let value = match http.get(url).send().await {
                    Ok(r) if r.status().is_success() => r.text().await.ok(),
                    _ => None,
                };
                (seq, value == Some(format!("v{seq}")))
            });
        }
        let Some(done) = reads.join_next().await else {
            break;
        };
        match done {
            Ok((_, true)) => found += 1,
            Ok((seq, false)) => missing.push(seq),
            Err(_) => {}
        }
    }
    missing.sort_unstable();
    let acknowledged_missing = missing
        .iter()
        .filter(|seq| !not_acknowledged.contains(seq))
        .count() as u64;
    missing.truncate(20);
    report::WriteCheck {
        sent: sent.len() as u64,
        acknowledged,
        found,
        first_missing: missing,
        acknowledged_missing,
    }
}

/// What the regions' PostgreSQL servers hold for Umbra: instance databases by region, and
/// replication slots no subscriber reads, on all of them (a server that does not answer counts as holding one of
/// each, so a wait on it does not end on an error).
async fn postgres_held(databases: &BTreeMap<String, String>) -> (BTreeMap<String, usize>, usize) {
    let mut held = BTreeMap::new();
    let mut slots = 0;
    for (region, conninfo) in databases {
        let (dbs, region_slots) = umbra_agent::sample::postgres::holdings(conninfo)
            .await
            .map_or((1, 1), |(d, s)| (d.len(), s.len()));
        held.insert(region.clone(), dbs);
        slots += region_slots;
    }
    (held, slots)
}

/// Instances an agent's process provider still keeps (one directory each; removing an
/// instance deletes its directory).
fn instances_left(state_dir: &Path) -> usize {
    std::fs::read_dir(state_dir.join("processes"))
        .map(|entries| entries.flatten().filter(|e| e.path().is_dir()).count())
        .unwrap_or(0)
}

/// Polls `check` until it gives a value, a supervised process dies, or `limit` passes.
async fn wait_for<T, F, Fut>(
    supervisor: &mut Supervisor,
    dir: &Path,
    what: &str,
    limit: Duration,
    mut check: F,
) -> Result<T, DemoError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return Ok(value);
        }
        supervisor.check()?;
        if Instant::now() > deadline {
            return Err(DemoError::Timeout {
                what: what.to_owned(),
                waited_secs: limit.as_secs(),
                dir: dir.display().to_string(),
            });
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// A write through whichever orchestrator answers first (any of them forwards to the leader),
/// retried for a few seconds while there is no leader.
async fn call_any<T, F, Fut>(orchestrators: &[Orchestrator], call: F) -> Result<T, String>
where
    F: Fn(ApiClient) -> Fut,
    Fut: std::future::Future<Output = Result<T, umbra_orchestrator::api::ClientError>>,
{
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut last = String::from("no orchestrator is alive");
    loop {
        for o in orchestrators.iter().filter(|o| !o.killed) {
            match call(o.api.clone()).await {
                Ok(value) => return Ok(value),
                Err(e) => last = e.to_string(),
            }
            // A refusal (bad plan, unknown region) is final; only unavailability is retried.
            if !last.contains("no leader") && !last.contains("unreachable") {
                return Err(last);
            }
        }
        if Instant::now() > deadline {
            return Err(last);
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// A read from the first live orchestrator that answers.
/// The pools the leading orchestrator publishes (its `GET /v1/status`), or none.
async fn leader_pools(orchestrators: &[Orchestrator]) -> Vec<PoolStatus> {
    leader_status(orchestrators)
        .await
        .map(|(_, status)| status.pools)
        .unwrap_or_default()
}

/// The leading orchestrator and its `GET /v1/status`, if one leads.
async fn leader_status(
    orchestrators: &[Orchestrator],
) -> Option<(&Orchestrator, umbra_orchestrator::api::StatusReport)> {
    for o in orchestrators.iter().filter(|o| !o.killed) {
        if let Ok(status) = o.api.status().await
            && status.leader.this_node.is_some()
            && status.leader.this_node == status.leader.leader
        {
            return Some((o, status));
        }
    }
    None
}

async fn call_live<T, F, Fut>(orchestrators: &[Orchestrator], call: F) -> Result<T, String>
where
    F: Fn(ApiClient) -> Fut,
    Fut: std::future::Future<Output = Result<T, umbra_orchestrator::api::ClientError>>,
{
    let mut last = String::from("no orchestrator is alive");
    for o in orchestrators.iter().filter(|o| !o.killed) {
        match call(o.api.clone()).await {
            Ok(value) => return Ok(value),
            Err(e) => last = e.to_string(),
        }
    }
    Err(last)
}

/// An agent's config: its region, the orchestrators' QUIC addresses, the front (and its
/// metrics endpoint's address, and the address its QUIC traffic leaves from) and its kind,
/// and the process provider running `umbra-sample`.
fn agent_toml(
    region: &str,
    state_dir: &Path,
    orchestrators: &[SocketAddr],
    certs_dir: &Path,
    (front, metrics_listen, quic_bind): (SocketAddr, SocketAddr, SocketAddr),
    front_kind: FrontKind,
    (sample_binary, postgres): (&Path, Option<&str>),
) -> String {
    let list: Vec<String> = orchestrators.iter().map(|a| format!("\"{a}\"")).collect();
    let postgres = postgres
        .map(|conninfo| format!("postgres = \"{conninfo}\"\n"))
        .unwrap_or_default();
    format!(
        "region = \"{region}\"\nstate_dir = \"{}\"\norchestrators = [{}]\ncerts_dir = \"{}\"\n\
         quic_bind = \"{quic_bind}\"\nheartbeat_ms = {AGENT_HEARTBEAT_MS}\nmetrics_listen = \"{metrics_listen}\"\n\n[front]\nlisten = \"{front}\"\n\
         kind = \"{front_kind}\"\n\n[provider]\n\
         kind = \"process\"\nsample_binary = \"{}\"\n{postgres}",
        state_dir.display(),
        list.join(", "),
        certs_dir.display(),
        sample_binary.display()
    )
}

/// The DNS servers clients ask: each orchestrator's own, or the one authority once.
fn distinct_dns<'a>(orchestrators: impl Iterator<Item = &'a Orchestrator>) -> Vec<SocketAddr> {
    let mut servers: Vec<SocketAddr> = orchestrators.map(|o| o.dns).collect();
    servers.dedup();
    servers
}

/// A loopback port free for both UDP and TCP (QUIC, the admin and API endpoints, DNS), drawn
/// below the ephemeral range (`umbra_proto::ports`).
fn free_port() -> Result<u16, DemoError> {
    umbra_proto::ports::free_loopback_port().map_err(io("finding a free loopback port"))
}

/// A TCP port free on all three front addresses (127.0.0.11/12/13), below the ephemeral
/// range so the demo's own client connections cannot take it first.
fn free_front_port() -> Result<u16, DemoError> {
    let ips = [11, 12, 13].map(|last| IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)));
    umbra_proto::ports::free_tcp_port_on(&ips).map_err(|e| {
        DemoError::Setup(format!(
            "no port free on 127.0.0.11, .12 and .13: {e}; the demo's fronts need them (all of \
             127.0.0.0/8 is loopback on Linux)"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agent_config_is_what_the_agent_reads() {
        let dir = tempfile::tempdir().unwrap();
        let agent = agent_toml(
            "eu-west",
            &dir.path().join("state"),
            &["127.0.0.1:7001".parse().unwrap()],
            dir.path(),
            (
                "127.0.0.12:18080".parse().unwrap(),
                "127.0.0.1:9464".parse().unwrap(),
                "127.0.0.1:7201".parse().unwrap(),
            ),
            FrontKind::Haproxy,
            (
                Path::new("/bin/umbra-sample"),
                Some("host=127.0.0.1 port=5433 user=postgres"),
            ),
        );
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, agent).unwrap();
        let parsed = umbra_agent::agent::config::AgentConfig::load(&path).unwrap();
        assert_eq!(parsed.region, "eu-west");
        assert_eq!(parsed.heartbeat_ms, AGENT_HEARTBEAT_MS);
        assert_eq!(
            parsed.metrics_listen,
            Some("127.0.0.1:9464".parse().unwrap())
        );
        assert_eq!(parsed.quic_bind, Some("127.0.0.1:7201".parse().unwrap()));
        let front = parsed.front.unwrap();
        assert_eq!(front.listen, "127.0.0.12:18080".parse().unwrap());
        assert_eq!(front.front_kind().unwrap(), FrontKind::Haproxy);
        assert_eq!(
            parsed.provider.postgres.as_deref(),
            Some("host=127.0.0.1 port=5433 user=postgres")
        );
    }

    #[test]
    fn ports_are_found_and_options_checked() {
        let port = free_front_port().unwrap();
        assert!(port > 0);
        assert!(free_port().unwrap() > 0);
        let mut options = DemoOptions::new(PathBuf::from("/nonexistent"));
        let error = options.validate().unwrap_err().to_string();
        assert!(error.contains("cargo build --workspace --bins"), "{error}");
        let bin = tempfile::tempdir().unwrap();
        for name in ["umbra-orchestrator", "umbra-agent", "umbra-sample"] {
            std::fs::write(bin.path().join(name), "").unwrap();
        }
        options.bin_dir = bin.path().to_owned();
        options.validate().unwrap();
        // A fault plan is judged from the instances' WALs, which PostgreSQL mode has not.
        options.data = DemoData::Postgres;
        options.validate().unwrap();
        options.fault_plan = Some(umbra_chaos::plan::FaultPlan {
            seed: None,
            faults: Vec::new(),
        });
        let error = options.validate().unwrap_err().to_string();
        assert!(error.contains("--data postgres"), "{error}");
        options.fault_plan = None;
        options.data = DemoData::Wal;
        options.steady_secs = 200;
        assert!(options.validate().is_err());
    }
}
