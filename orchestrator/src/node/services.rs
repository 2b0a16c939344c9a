//! The services an orchestrator node runs on top of its Raft node when it replicates
//! `state::OrchestratorState`: the agent gateway (agent streams on the node's QUIC endpoint),
//! the operator API, DNS (the embedded server kept equal to the replicated weights, or, with
//! `[dns] provider = "rfc2136"`, the leader's publisher to a standard server), and the
//! migration executor (which acts only while this node leads). Also the node's "applied state
//! changed" hook: a `watch` of the latest [`Overview`], refreshed by a local read whenever the
//! Raft node's applied index moves, so consensus never learns what the state means.
//!
//! What the services take from the program that starts them rather than from `node.toml` (the
//! executor's clock) comes in as a [`NodeEnvironment`]; a deployment passes the default.
//!
//! This file only starts, connects and stops those parts; it must not decide anything about
//! migrations, weights or requests (the executor, `zone_sync` and `api` do).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use umbra_consensus::RaftNode;
use umbra_proto::Credentials;

use super::config::NodeConfig;
use crate::api::{self, RunningApi};
use crate::executor::metrics::ExecutorMetrics;
use crate::executor::shadow_sizing::{CsvDirectory, DemandSource, MemoryDemand};
use crate::executor::{self, ExecutorContext};
use crate::gateway::AgentGateway;
use crate::state::{Overview, Query, QueryAnswer, decode_answer, encode_query};
use crate::store::{Clock, ObservationBoard, RaftReplicated, Replicated, SystemClock};
use crate::zone_publish::{self, PublishLog};
use crate::zone_sync::{self as dns_sync, ZoneSync, ZoneSyncMetrics, ZoneTransferMetrics};
use umbra_dns::DnsProvider;
use umbra_dns::embedded::EmbeddedDns;
use umbra_dns::rfc2136::Rfc2136Provider;

/// How long the services have to stop after a shutdown before the process gives up on them:
/// the DNS server's own graceful stop is bounded at 5 s, the executor's round by its store
/// call timeout; both are rarely reached.
pub const SERVICES_STOP_GRACE: Duration = Duration::from_secs(6);

/// What a node takes from the program that starts it rather than from `node.toml`: the clock
/// its executor plans by (migration deadlines, analysis windows, which schedule leg is due).
/// [`NodeEnvironment::default`], the system clock, is what `umbra-orchestrator` runs. The
/// executor tests start whole nodes on a shifted clock with [`NodeEnvironment::with_clock`],
/// e.g. to play the next follow-the-sun leg now. The operator API stamps commands with the
/// system clock either way.
#[derive(Clone)]
pub struct NodeEnvironment {
    clock: Arc<dyn Clock>,
}

impl Default for NodeEnvironment {
    fn default() -> Self {
        Self::with_clock(Arc::new(SystemClock))
    }
}

impl std::fmt::Debug for NodeEnvironment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeEnvironment").finish_non_exhaustive()
    }
}

impl NodeEnvironment {
    /// The environment of a node whose executor reads the time from `clock`.
    pub fn with_clock(clock: Arc<dyn Clock>) -> Self {
        Self { clock }
    }

    /// The clock the executor plans by.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }
}

/// The running services of an orchestrator-mode node. Dropping it does not stop them; call
/// [`NodeServices::shutdown`].
pub struct NodeServices {
    gateway: AgentGateway,
    board: ObservationBoard,
    api: Option<RunningApi>,
    dns: Option<Arc<EmbeddedDns>>,
    overviews: watch::Receiver<Arc<Overview>>,
    stop: watch::Sender<bool>,
    tasks: std::sync::Mutex<Vec<JoinHandle<()>>>,
}

impl NodeServices {
    /// Starts every service `config` names around `raft` (which must run
    /// `OrchestratorState`). `credentials` are this orchestrator's; metrics go to `registry`;
    /// the executor's clock comes from `environment`. Agent streams are not accepted here: the
    /// node's accept loop hands them to [`NodeServices::gateway`].
    pub async fn start(
        config: &NodeConfig,
        raft: &RaftNode,
        credentials: &Credentials,
        registry: &prometheus::Registry,
        environment: &NodeEnvironment,
        clock_agrees: watch::Receiver<bool>,
    ) -> anyhow::Result<Self> {
        let (stop, stopped) = watch::channel(false);
        let mut tasks = Vec::new();
        let gateway = AgentGateway::new(
            config.gateway.gateway_config(config.id, &config.peers),
            raft.watch_status(),
        )
        .context("starting the agent gateway")?;

        let (overview_tx, overviews) = watch::channel(Arc::new(empty_overview()));
        tasks.push(tokio::spawn(publish_overviews(
            raft.clone(),
            overview_tx,
            stopped.clone(),
        )));

        let board = ObservationBoard::default();
        let store: Arc<dyn Replicated> = Arc::new(RaftReplicated::new(
            raft.clone(),
            credentials.clone(),
            config.peers.iter().map(|p| p.address).collect(),
            board.clone(),
        ));

        let api = match &config.api {
            Some(api_config) => {
                let running = api::serve(api_config, credentials, store.clone(), registry)
                    .await
                    .with_context(|| {
                        format!("starting the operator API on {}", api_config.listen)
                    })?;
                Some(running)
            }
            None => None,
        };

        let mut executor_config = config.executor.executor_config();
        let mut dns_published = None;
        let dns = match &config.dns {
            Some(section) => match section.rfc2136_config()? {
                // One authority: the standard server. This node serves no DNS; while it
                // leads, it publishes the replicated weights there, and its executor's steps
                // wait until the server answers with them.
                Some(update) => {
                    let provider = Arc::new(Rfc2136Provider::new(update.clone())?);
                    let zone = umbra_dns::parse_fqdn(&section.zone)?;
                    if executor_config.dns_servers.is_empty() {
                        executor_config.dns_servers = provider.authoritative_servers();
                    }
                    executor_config.dns_authority = true;
                    let log = PublishLog::default();
                    tasks.push(zone_publish::spawn(
                        provider,
                        zone,
                        overviews.clone(),
                        raft.watch_status(),
                        log.clone(),
                        stopped.clone(),
                    ));
                    dns_published = Some(log);
                    tracing::info!(server = %update.server, zone = %section.zone, key = ?update.key, "DNS: the leader publishes the replicated weights to this server by RFC 2136; no embedded DNS server runs");
                    None
                }
                None => {
                    let embedded = section
                        .embedded_config()?
                        .context("[dns] is the embedded provider here")?;
                    let listen = embedded.listen;
                    let events = Arc::new(
                        ZoneTransferMetrics::new(registry).context("DNS transfer metrics")?,
                    );
                    let server = EmbeddedDns::start_with_events(embedded, events)
                        .await
                        .with_context(|| {
                            format!("starting the DNS server for {} on {listen}", section.zone)
                        })?;
                    let server = Arc::new(server);
                    let sync = ZoneSync::new(server.clone())
                        .with_metrics(ZoneSyncMetrics::new(registry).context("DNS zone metrics")?);
                    tasks.push(dns_sync::spawn(sync, overviews.clone()));
                    tracing::info!(dns = %server.local_addr(), zone = %section.zone, secondaries = ?section.secondaries, "DNS server started; it serves the replicated weights");
                    Some(server)
                }
            },
            None => None,
        };

        if config.executor.enabled {
            let demand: Arc<dyn DemandSource> = match &config.executor.demand_csv_dir {
                Some(dir) => Arc::new(CsvDirectory {
                    dir: dir.clone(),
                    history: config.executor.history_config(),
                }),
                None => Arc::new(MemoryDemand::default()),
            };
            let handle = executor::spawn(
                ExecutorContext {
                    store: store.clone(),
                    status: raft.watch_status(),
                    clock_agrees,
                    gateway: gateway.clone(),
                    board: board.clone(),
                    demand,
                    clock: environment.clock.clone(),
                    metrics: ExecutorMetrics::new(registry).context("executor metrics")?,
                    config: executor_config,
                    dns_published,
                },
                stopped,
            )
            .context("starting the executor")?;
            tasks.push(handle);
        }

        Ok(Self {
            gateway,
            board,
            api,
            dns,
            overviews,
            stop,
            tasks: std::sync::Mutex::new(tasks),
        })
    }

    /// The agent gateway; the node's accept loop hands it every `StreamKind::Agent` stream.
    pub fn gateway(&self) -> &AgentGateway {
        &self.gateway
    }

    /// Where the executor publishes what it observes (shown by `GET /v1/status`).
    pub fn observation_board(&self) -> &ObservationBoard {
        &self.board
    }

    /// The operator API's address, when it runs.
    pub fn api_address(&self) -> Option<SocketAddr> {
        self.api.as_ref().map(RunningApi::local_addr)
    }

    /// The latest applied state, republished after every applied entry (coalesced).
    pub fn overviews(&self) -> watch::Receiver<Arc<Overview>> {
        self.overviews.clone()
    }

    /// Stops accepting API connections and tells the executor and the state watcher to stop.
    /// Idempotent; [`NodeServices::stopped`] waits for them.
    pub fn shutdown(&self) {
        let _ = self.stop.send(true);
        if let Some(api) = &self.api {
            api.shutdown();
        }
    }

    /// After [`NodeServices::shutdown`]: waits, at most `grace`, for the executor to stand
    /// down and the DNS server to stop; tasks still running then are aborted.
    pub async fn stopped(&self, grace: Duration) {
        let tasks: Vec<JoinHandle<()>> =
            std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        let aborts: Vec<_> = tasks.iter().map(JoinHandle::abort_handle).collect();
        let wait = async {
            if let Some(dns) = &self.dns {
                dns.shutdown().await;
            }
            for task in tasks {
                let _ = task.await;
            }
        };
        if tokio::time::timeout(grace, wait).await.is_err() {
            tracing::warn!(?grace, "node services did not stop in time; aborting them");
        }
        // The zone sync only ends when its overview sender goes; abort what is left.
        for abort in aborts {
            abort.abort();
        }
    }
}

/// The "applied state changed" hook: whenever the Raft node's applied index moves, reads the
/// overview locally (no Raft round) and publishes it. Changes that arrive while a read is in
/// flight coalesce into the next read, so subscribers always converge on the latest state.
/// The overview holds only what is current (no audit log, no archived migrations), so a read
/// costs the same however long the history grows (`apply_bench` measures it).
async fn publish_overviews(
    raft: RaftNode,
    overviews: watch::Sender<Arc<Overview>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut status = raft.watch_status();
    let mut published: Option<u64> = None;
    let query = encode_query(&Query::Overview);
    loop {
        let applied = status.borrow_and_update().applied_index;
        if published != Some(applied) {
            match raft.read_local(query.clone()).await {
                Ok(bytes) => match decode_answer(&bytes) {
                    Ok(QueryAnswer::Overview(overview)) => {
                        published = Some(applied);
                        overviews.send_replace(Arc::new(*overview));
                    }
                    Ok(other) => {
                        tracing::error!(
                            ?other,
                            "the state machine answered an overview query with something else; is this node running state_machine = \"kv\"?"
                        );
                        return;
                    }
                    Err(error) => {
                        tracing::error!(%error, "undecodable overview from the local state machine");
                        return;
                    }
                },
                // The driver is stopping or busy; the next status change retries.
                Err(error) => tracing::debug!(%error, "local overview read failed"),
            }
        }
        tokio::select! {
            changed = status.changed() => if changed.is_err() { return },
            _ = stop.changed() => return,
        }
    }
}

/// What a node publishes before its first local read: nothing declared yet.
fn empty_overview() -> Overview {
    Overview {
        regions: Default::default(),
        services: Default::default(),
        migrations: Default::default(),
        schedules: Default::default(),
        dns: Default::default(),
        capacity: Default::default(),
        game_days: Default::default(),
        applied_index: 0,
    }
}
