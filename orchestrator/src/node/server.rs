//! Runs one orchestrator node: the Raft node (the orchestrator state machine, or the key-value
//! one in `kv` mode), one QUIC endpoint for peers (Raft streams), clients (store requests) and
//! agents (handed to the gateway), the services on top (`node::services`), and a loopback HTTP
//! endpoint for `/metrics` and `/status`. It wires parts together; Raft logic stays in
//! `umbra-consensus`, wire types in `umbra-proto`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use tokio::sync::{Semaphore, mpsc};
use umbra_consensus::kv::{KvAnswer, KvDigest, KvQuery, KvStateMachine};
use umbra_consensus::quic::{QuicTransport, SnapshotInbox, TrafficCut, serve_raft_stream};
use umbra_consensus::{MembershipChange, NodeOptions, NodeStatus, RaftNode, RequestError};
use umbra_proto::{
    ClientError, ClientErrorKind, ClientOutcome, ClientRequest, ClientRequestBody, ClientResponse,
    Credentials, Endpoint, FramedStream, Identity, LeaderHint, StreamKind, TransportConfig,
};

use super::clock::{ClockVerdict, ClockWatch, serve_clock_stream};
use super::config::{NodeConfig, StateMachineKind};
use super::services::{NodeEnvironment, NodeServices, SERVICES_STOP_GRACE};
use crate::gateway::AgentGateway;
use crate::state::OrchestratorState;
use crate::store::Clock;

/// Requests served at once on one client stream; more wait for a slot (backpressure). 256
/// matches `umbra-proto`'s stream limit per connection.
const MAX_REQUESTS_IN_FLIGHT_PER_STREAM: usize = 256;

/// What `/status` returns: Raft's view and the state machine's digest.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AdminStatus {
    /// Raft's view of this node: role, term, leader, indexes, voters.
    pub raft: NodeStatus,
    /// The key-value machine's digest (`kv` mode); `None` in orchestrator mode.
    pub digest: Option<KvDigest>,
    /// This node's QUIC address.
    pub listen: SocketAddr,
    /// This node's own replica of the orchestrator state (orchestrator mode), as last
    /// published after an apply: unlike the API, which reads through the leader, it shows what
    /// this node holds, so replicas can be compared.
    #[serde(default)]
    pub overview: Option<crate::state::Overview>,
    /// What this node concludes about its wall clock from its peers' (`node::clock`); `None`
    /// from a build before the clock watch.
    #[serde(default)]
    pub clock: Option<ClockVerdict>,
}

/// A running node: its Raft handle and endpoints. Dropping it does not stop it; call
/// `shutdown`.
pub struct RunningNode {
    /// The Raft node.
    pub raft: RaftNode,
    /// The QUIC endpoint peers, clients and agents connect to.
    pub endpoint: Endpoint,
    /// Where `/metrics` and `/status` are served, when `admin_listen` is set.
    pub admin_address: Option<SocketAddr>,
    /// API, gateway, DNS and executor (orchestrator mode only; see `node::services`).
    pub services: Option<NodeServices>,
}

impl RunningNode {
    /// Stops the services (the executor stands down, the API stops accepting), closes the
    /// QUIC endpoint and tells the Raft node to stop; returns at once.
    pub fn shutdown(&self) {
        if let Some(services) = &self.services {
            services.shutdown();
        }
        self.endpoint.close();
        self.raft.shutdown();
    }

    /// After `shutdown`: waits (bounded) for the services to stop.
    pub async fn services_stopped(&self) {
        if let Some(services) = &self.services {
            services.stopped(SERVICES_STOP_GRACE).await;
        }
    }
}

/// Starts a node from a validated config. `environment` is what the node takes from the program
/// rather than the file (the executor's clock); a deployment passes
/// `NodeEnvironment::default()`. Ignored in `kv` mode, which runs no services.
pub async fn start(
    config: NodeConfig,
    environment: NodeEnvironment,
) -> anyhow::Result<RunningNode> {
    config.validate()?;
    let identity = Identity::orchestrator(config.id);
    let credentials = Credentials::load(&config.certs_dir, &identity).with_context(|| {
        format!(
            "loading {identity}'s certificate from {}",
            config.certs_dir.display()
        )
    })?;
    let endpoint = Endpoint::server(config.listen, &credentials, TransportConfig::default())
        .with_context(|| format!("listening on {}", config.listen))?;
    let (mailbox, inbox) = umbra_consensus::mailbox(umbra_consensus::transport::MAILBOX_CAPACITY);
    let cut = TrafficCut::default();
    let transport = QuicTransport::new(config.id, endpoint.clone(), mailbox.clone(), cut.clone());
    let registry = prometheus::Registry::new();
    let peers: BTreeMap<u64, String> = config
        .peers
        .iter()
        .map(|p| (p.id, p.address.to_string()))
        .collect();
    let options = NodeOptions {
        id: config.id,
        data_dir: config.data_dir.clone(),
        config: config.raft.clone(),
        initial_voters: config.initial_voters(),
        peers: peers.clone(),
        lost_log_advice: lost_log_advice(&config),
    };
    let raft = match config.state_machine {
        StateMachineKind::Orchestrator => RaftNode::start(
            options,
            OrchestratorState::default(),
            transport,
            inbox,
            &registry,
        ),
        StateMachineKind::Kv => {
            RaftNode::start(options, KvStateMachine::new(), transport, inbox, &registry)
        }
    }
    .context("starting the raft node")?;
    let addresses = Arc::new(std::sync::Mutex::new(
        peers
            .iter()
            .filter_map(|(id, a)| Some((*id, a.parse().ok()?)))
            .collect::<BTreeMap<u64, SocketAddr>>(),
    ));
    let clock = ClockWatch {
        id: config.id,
        raft: raft.clone(),
        endpoint: endpoint.clone(),
        addresses: addresses.clone(),
        clock: environment.clock().clone(),
        max_offset_ms: config.executor.max_clock_offset_ms,
    }
    .spawn(&registry)
    .context("starting the clock watch")?;
    let services = match config.state_machine {
        StateMachineKind::Orchestrator => Some(
            NodeServices::start(
                &config,
                &raft,
                &credentials,
                &registry,
                &environment,
                clock.agrees.clone(),
            )
            .await?,
        ),
        StateMachineKind::Kv => None,
    };
    let server = Server {
        id: config.id,
        raft: raft.clone(),
        snapshots: SnapshotInbox::new(config.id, mailbox.clone(), cut.clone()),
        mailbox,
        addresses,
        cut,
        agents: services.as_ref().map(|s| s.gateway().clone()),
        overviews: services.as_ref().map(NodeServices::overviews),
        clock: environment.clock().clone(),
        clock_verdicts: clock.verdicts,
    };
    tokio::spawn(server.clone().accept_loop(endpoint.clone()));
    let admin_address = match config.admin_listen {
        Some(address) => {
            let listener = tokio::net::TcpListener::bind(address)
                .await
                .with_context(|| format!("admin endpoint on {address}"))?;
            let bound = listener.local_addr()?;
            tokio::spawn(admin_loop(
                listener,
                server,
                registry,
                endpoint.local_addr()?,
                config.fault_injection,
            ));
            Some(bound)
        }
        None => None,
    };
    tracing::info!(id = config.id, listen = %config.listen, ?admin_address, "orchestrator node started");
    Ok(RunningNode {
        raft,
        endpoint,
        admin_address,
        services,
    })
}

/// The replace procedure, as a node that lost its data directory says it: the leader still
/// counts the entries the node acknowledged, so it must leave the group and come back as a new
/// member that catches up by snapshot.
fn lost_log_advice(config: &NodeConfig) -> String {
    let id = config.id;
    format!(
        "Replace its disk: run `umbra member remove {id} --node <a live member> --certs <dir>`, \
         then `umbra member add {id} {} --node <a live member> --certs <dir>`, then start this \
         node with `join = true` in its config (README, \"Replacing a node's disk\").",
        config.listen
    )
}

#[derive(Clone)]
struct Server {
    id: u64,
    raft: RaftNode,
    /// Where `StreamKind::RaftSnapshot` streams are reassembled and stepped into Raft.
    snapshots: SnapshotInbox,
    mailbox: umbra_consensus::Mailbox,
    /// Peer addresses, for leader hints. Members added later are learnt from their
    /// membership change.
    addresses: Arc<std::sync::Mutex<BTreeMap<u64, SocketAddr>>>,
    /// Peers whose Raft traffic is dropped (fault injection; empty otherwise).
    cut: TrafficCut,
    /// Where agent streams go (orchestrator mode); `None` refuses them.
    agents: Option<AgentGateway>,
    /// The latest applied orchestrator state (orchestrator mode), for `/status`.
    overviews: Option<tokio::sync::watch::Receiver<Arc<crate::state::Overview>>>,
    /// The clock peers read on `StreamKind::Clock` streams: the executor's.
    clock: Arc<dyn Clock>,
    /// What this node concludes about its clock from its peers' (`node::clock`).
    clock_verdicts: tokio::sync::watch::Receiver<ClockVerdict>,
}

impl Server {
    async fn accept_loop(self, endpoint: Endpoint) {
        while let Some(incoming) = endpoint.accept().await {
            let server = self.clone();
            tokio::spawn(async move {
                let remote = incoming.remote_address();
                let connection = match incoming.establish().await {
                    Ok(connection) => connection,
                    Err(error) => {
                        tracing::warn!(%remote, %error, "refused a connection");
                        return;
                    }
                };
                loop {
                    match connection.accept_stream().await {
                        Ok(stream) => {
                            tokio::spawn(server.clone().serve_stream(stream));
                        }
                        Err(error) => {
                            tracing::debug!(%remote, peer = %connection.peer(), %error, "connection ended");
                            return;
                        }
                    }
                }
            });
        }
    }

    async fn serve_stream(self, stream: FramedStream) {
        let peer = stream.peer().clone();
        match stream.kind() {
            StreamKind::Raft => {
                if let Err(error) =
                    serve_raft_stream(stream, self.id, self.mailbox.clone(), self.cut.clone()).await
                {
                    tracing::warn!(%peer, %error, "raft stream closed");
                }
            }
            StreamKind::RaftSnapshot | StreamKind::RaftSnapshotResumable => {
                match self.snapshots.serve(stream).await {
                    Ok(received) => tracing::info!(
                        %peer,
                        bytes = received.bytes,
                        resumed_from = received.resumed_from,
                        "raft snapshot received"
                    ),
                    Err(error) => tracing::warn!(%peer, %error, "raft snapshot refused"),
                }
            }
            StreamKind::Client => self.serve_client_stream(stream).await,
            StreamKind::Clock => serve_clock_stream(stream, self.clock.clone()).await,
            StreamKind::Agent if self.agents.is_some() => {
                if let Some(gateway) = &self.agents {
                    gateway.serve_stream(stream).await;
                }
            }
            kind => {
                // umbra-proto let the role open it, but this node does not serve it yet.
                tracing::warn!(%peer, ?kind, "stream kind not served by this node");
                let mut stream = stream;
                stream.abort(umbra_proto::codes::STREAM_FAILED);
            }
        }
    }

    async fn serve_client_stream(self, stream: FramedStream) {
        let peer = stream.peer().clone();
        let (mut sender, mut receiver) = stream.split();
        let (responses_tx, mut responses_rx) =
            mpsc::channel::<ClientResponse>(MAX_REQUESTS_IN_FLIGHT_PER_STREAM);
        let writer = tokio::spawn(async move {
            while let Some(response) = responses_rx.recv().await {
                if sender.send(&response).await.is_err() {
                    return;
                }
            }
            sender.finish();
        });
        let slots = Arc::new(Semaphore::new(MAX_REQUESTS_IN_FLIGHT_PER_STREAM));
        loop {
            let request = match receiver.recv::<ClientRequest>().await {
                Ok(Some(request)) => request,
                Ok(None) => break,
                Err(error) => {
                    // A vanished client is routine; bad frames from a client are worth a warning.
                    if error.link_error().is_some() {
                        tracing::debug!(%peer, %error, "client connection ended");
                    } else {
                        tracing::warn!(%peer, %error, "client stream closed on bad input");
                    }
                    break;
                }
            };
            let Ok(slot) = slots.clone().acquire_owned().await else {
                break;
            };
            let server = self.clone();
            let responses = responses_tx.clone();
            tokio::spawn(async move {
                let outcome = server.answer(request.body).await;
                let _ = responses
                    .send(ClientResponse {
                        id: request.id,
                        outcome,
                    })
                    .await;
                drop(slot);
            });
        }
        drop(responses_tx);
        let _ = writer.await;
    }

    fn hint(&self) -> LeaderHint {
        let status = self.raft.status();
        let leader_addr = status.leader.and_then(|id| {
            self.addresses
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&id)
                .copied()
        });
        LeaderHint {
            leader_id: status.leader,
            leader_addr,
            term: status.term,
        }
    }

    fn failure(&self, error: RequestError) -> ClientOutcome {
        let kind = match &error {
            RequestError::NotLeader { .. } => return ClientOutcome::NotLeader(self.hint()),
            RequestError::Dropped => ClientErrorKind::Dropped,
            // The wire's Timeout says what a client needs to know: it may have applied.
            RequestError::Timeout { .. } | RequestError::OutcomeUnknown => ClientErrorKind::Timeout,
            RequestError::Busy => ClientErrorKind::Dropped,
            RequestError::TooLarge { .. } | RequestError::Membership(_) => ClientErrorKind::Invalid,
            RequestError::Stopped => ClientErrorKind::ShuttingDown,
        };
        ClientOutcome::Failed(ClientError {
            kind,
            message: error.to_string(),
        })
    }

    async fn answer(&self, body: ClientRequestBody) -> ClientOutcome {
        match body {
            ClientRequestBody::Propose { command } => match self.raft.propose(command).await {
                Ok(result) => ClientOutcome::Applied { result },
                Err(error) => self.failure(error),
            },
            ClientRequestBody::Read { query } => match self.raft.read(query).await {
                Ok(result) => ClientOutcome::ReadResult { result },
                Err(error) => self.failure(error),
            },
            ClientRequestBody::LeaderInfo => ClientOutcome::Leader(self.hint()),
            ClientRequestBody::ChangeMembership(change) => {
                if let Some(refusal) = self.membership_refusal(&change) {
                    return ClientOutcome::Failed(ClientError {
                        kind: ClientErrorKind::Invalid,
                        message: refusal,
                    });
                }
                let (change, added) = match change {
                    umbra_proto::MembershipChange::AddNode { node_id, addr } => (
                        MembershipChange::AddVoter {
                            id: node_id,
                            address: addr.to_string(),
                        },
                        Some((node_id, addr)),
                    ),
                    umbra_proto::MembershipChange::RemoveNode { node_id } => {
                        (MembershipChange::Remove { id: node_id }, None)
                    }
                };
                match self.raft.change_membership(change).await {
                    Ok(voters) => {
                        if let Some((id, addr)) = added {
                            self.addresses
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .insert(id, addr);
                        }
                        ClientOutcome::Applied {
                            result: postcard::to_stdvec(&voters)
                                .expect("a list of ids always encodes"),
                        }
                    }
                    Err(error) => self.failure(error),
                }
            }
        }
    }

    /// Why the leader refuses `change` before proposing it (it would change nothing or break
    /// the group). Followers pass the change on to Raft, which answers with the leader.
    fn membership_refusal(&self, change: &umbra_proto::MembershipChange) -> Option<String> {
        let status = self.raft.status();
        if status.role != umbra_consensus::Role::Leader {
            return None;
        }
        let voters = &status.voters;
        match *change {
            umbra_proto::MembershipChange::AddNode { node_id: 0, .. }
            | umbra_proto::MembershipChange::RemoveNode { node_id: 0 } => {
                Some("node ids start at 1; nothing changed".to_owned())
            }
            umbra_proto::MembershipChange::AddNode { node_id, .. } if voters.contains(&node_id) => {
                Some(format!(
                    "node {node_id} is already a member (members: {voters:?}); to replace its disk, remove it first; nothing changed"
                ))
            }
            umbra_proto::MembershipChange::RemoveNode { node_id } if !voters.contains(&node_id) => {
                Some(format!(
                    "node {node_id} is not a member (members: {voters:?}); nothing changed"
                ))
            }
            umbra_proto::MembershipChange::RemoveNode { .. } if voters.len() == 1 => {
                Some("the last member cannot be removed; nothing changed".to_owned())
            }
            _ => None,
        }
    }

    async fn admin_status(&self, listen: SocketAddr) -> AdminStatus {
        let digest = match self.raft.read_local(KvQuery::Digest.encode()).await {
            Ok(bytes) => match KvAnswer::decode(&bytes) {
                Ok(KvAnswer::Digest(digest)) => Some(digest),
                _ => None,
            },
            Err(_) => None,
        };
        AdminStatus {
            raft: self.raft.status(),
            digest,
            listen,
            overview: self
                .overviews
                .as_ref()
                .map(|o| crate::state::Overview::clone(&o.borrow())),
            clock: Some(self.clock_verdicts.borrow().clone()),
        }
    }
}

/// Body of `POST /faults/cut`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CutRequest {
    /// Peers whose Raft traffic this node drops, both ways.
    pub peers: Vec<u64>,
}

/// Serves `/metrics` (Prometheus text) and `/status` (JSON) over HTTP on loopback, and with
/// `faults` the fault-injection routes.
async fn admin_loop(
    listener: tokio::net::TcpListener,
    server: Server,
    registry: prometheus::Registry,
    listen: SocketAddr,
    faults: bool,
) {
    use axum::routing::{get, post};
    let metrics = move || {
        let registry = registry.clone();
        async move {
            let mut text = String::new();
            match prometheus::TextEncoder::new().encode_utf8(&registry.gather(), &mut text) {
                Ok(()) => (axum::http::StatusCode::OK, text),
                Err(e) => (axum::http::StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
            }
        }
    };
    let cut = server.cut.clone();
    let status = move || {
        let server = server.clone();
        async move { axum::Json(server.admin_status(listen).await) }
    };
    let mut app = axum::Router::new()
        .route("/metrics", get(metrics))
        .route("/status", get(status));
    if faults {
        let heal = cut.clone();
        app = app
            .route(
                "/faults/cut",
                post(move |axum::Json(request): axum::Json<CutRequest>| async move {
                    tracing::warn!(peers = ?request.peers, "fault injection: dropping raft traffic");
                    cut.cut(request.peers);
                    axum::Json(cut.peers())
                }),
            )
            .route(
                "/faults/heal",
                post(move || async move {
                    tracing::warn!("fault injection: raft traffic restored");
                    heal.heal();
                    axum::Json(heal.peers())
                }),
            );
    }
    if let Err(error) = axum::serve(listener, app).await {
        tracing::error!(%error, "admin endpoint stopped");
    }
}
