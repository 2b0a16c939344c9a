//! The operator API over a real three-node Raft group running `OrchestratorState`
//! (raft-rs with raft-engine stores, on consensus's in-memory network), one API per node:
//! writes sent to a follower's API are forwarded to the leader over QUIC with mutual TLS,
//! and every node ends with the same state.
//!
//! The node wiring (`node::server`) still runs the key-value state machine, so this test
//! serves the store's client streams itself with the same few lines the node uses: propose
//! or read on the local Raft node, answer `NotLeader` with the leader's address.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use umbra_consensus::memory::MemoryNetwork;
use umbra_consensus::{Config, NodeOptions, RaftNode, RequestError, Role as RaftRole, mailbox};
use umbra_orchestrator::api::{self, ApiClient, ApiConfig, BearerToken, RunningApi};
use umbra_orchestrator::state::{
    Applied, MigrationRequest, OrchestratorState, Query, QueryAnswer, decode_answer, encode_query,
};
use umbra_orchestrator::store::{ObservationBoard, RaftReplicated};
use umbra_proto::certs::{self, Layout};
use umbra_proto::{
    ClientError, ClientErrorKind, ClientOutcome, ClientRequest, ClientRequestBody, ClientResponse,
    Credentials, Endpoint, Identity, LeaderHint, Role, StreamKind, TransportConfig,
};

const TOKEN: &str = "raft-api-token-0123456789abcdef";
const SEED: u64 = 0x00a9_1234;

const PLAN: &str = r#"
[[region]]
name = "us-east"
front = "127.0.0.11:8080"

[[region]]
name = "eu-west"
front = "127.0.0.12:8080"

[[service]]
name = "shop"
hostname = "shop.umbra.test."
primary_region = "us-east"
capacity_rps_per_instance = 100.0
max_instances = 4
tier = { probabilistic = { cost_miss = 4.0, cost_idle = 1.0 } }
replication = "sample-log-shipping"
slo = { max_error_rate = 0.01, max_p99_ms = 100.0, min_samples = 50 }

[service.warmup]
allow_writes = false
mix = { requests = [{ method = "GET", path = "/kv/{key}", weight = 1.0 }], key_count = 1000, zipf_exponent = 1.0, rate_per_sec = 200.0, max_duration_ms = 30000 }
gate = { reference_p99_ms = 5.0, p99_tolerance_pct = 50.0, max_error_rate = 0.01, min_requests = 200 }
"#;

/// Short ticks keep elections fast; the ratios stay those of the defaults.
fn raft_config() -> Config {
    Config {
        tick_interval_ms: 20,
        request_timeout_ms: 5_000,
        ..Config::default()
    }
}

struct Member {
    raft: RaftNode,
    endpoint: Endpoint,
    api: RunningApi,
}

struct Cluster {
    _dir: tempfile::TempDir,
    certs: std::path::PathBuf,
    members: BTreeMap<u64, Member>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for member in self.members.values() {
            member.api.shutdown();
            member.endpoint.close();
            member.raft.shutdown();
        }
    }
}

/// Serves `Client` streams on `endpoint` against `raft`, as `node::server` does.
async fn serve_store(endpoint: Endpoint, raft: RaftNode, quic: Arc<BTreeMap<u64, SocketAddr>>) {
    while let Some(incoming) = endpoint.accept().await {
        let (raft, quic) = (raft.clone(), quic.clone());
        tokio::spawn(async move {
            let Ok(connection) = incoming.establish().await else {
                return;
            };
            while let Ok(mut stream) = connection.accept_stream().await {
                if stream.kind() != StreamKind::Client {
                    continue;
                }
                let (raft, quic) = (raft.clone(), quic.clone());
                tokio::spawn(async move {
                    while let Ok(Some(request)) = stream.recv::<ClientRequest>().await {
                        let (result, is_read) = match request.body {
                            ClientRequestBody::Propose { command } => {
                                (raft.propose(command).await, false)
                            }
                            ClientRequestBody::Read { query } => (raft.read(query).await, true),
                            _ => return,
                        };
                        let outcome = match result {
                            Ok(result) if is_read => ClientOutcome::ReadResult { result },
                            Ok(result) => ClientOutcome::Applied { result },
                            Err(RequestError::NotLeader { .. }) => {
                                let status = raft.status();
                                ClientOutcome::NotLeader(LeaderHint {
                                    leader_id: status.leader,
                                    leader_addr: status
                                        .leader
                                        .and_then(|id| quic.get(&id).copied()),
                                    term: status.term,
                                })
                            }
                            Err(error) => ClientOutcome::Failed(ClientError {
                                kind: ClientErrorKind::Dropped,
                                message: error.to_string(),
                            }),
                        };
                        let response = ClientResponse {
                            id: request.id,
                            outcome,
                        };
                        if stream.send(&response).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
    }
}

impl Cluster {
    async fn start() -> Cluster {
        eprintln!("memory network seed: {SEED}");
        let dir = tempfile::tempdir().unwrap();
        let certs = dir.path().join("certs");
        certs::init(&Layout::default(), &certs).unwrap();
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, TOKEN).unwrap();
        let network = MemoryNetwork::new(SEED);
        let ids = [1u64, 2, 3];
        let mut endpoints = BTreeMap::new();
        let mut quic = BTreeMap::new();
        for id in ids {
            let credentials = Credentials::load(&certs, &Identity::orchestrator(id)).unwrap();
            let endpoint = Endpoint::server(
                "127.0.0.1:0".parse().unwrap(),
                &credentials,
                TransportConfig::default(),
            )
            .unwrap();
            quic.insert(id, endpoint.local_addr().unwrap());
            endpoints.insert(id, (endpoint, credentials));
        }
        let quic = Arc::new(quic);
        let mut members = BTreeMap::new();
        for (id, (endpoint, credentials)) in endpoints {
            let (mailbox, inbox) = mailbox(4096);
            let raft = RaftNode::start(
                NodeOptions {
                    id,
                    data_dir: dir.path().join(format!("node-{id}")),
                    config: raft_config(),
                    initial_voters: ids.to_vec(),
                    peers: BTreeMap::new(),
                },
                OrchestratorState::default(),
                network.attach(id, mailbox),
                inbox,
                &prometheus::Registry::new(),
            )
            .unwrap();
            tokio::spawn(serve_store(endpoint.clone(), raft.clone(), quic.clone()));
            let store = RaftReplicated::new(
                raft.clone(),
                credentials.clone(),
                quic.values().copied().collect(),
                ObservationBoard::default(),
            );
            let config = ApiConfig::new("127.0.0.1:0".parse().unwrap(), token_file.clone());
            let api = api::serve(
                &config,
                &credentials,
                Arc::new(store),
                &prometheus::Registry::new(),
            )
            .await
            .unwrap();
            members.insert(
                id,
                Member {
                    raft,
                    endpoint,
                    api,
                },
            );
        }
        Cluster {
            _dir: dir,
            certs,
            members,
        }
    }

    async fn leader(&self) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let leaders: Vec<u64> = self
                .members
                .values()
                .map(|m| m.raft.status())
                .filter(|s| s.role == RaftRole::Leader)
                .map(|s| s.id)
                .collect();
            if let [leader] = leaders.as_slice()
                && self
                    .members
                    .values()
                    .all(|m| m.raft.status().leader == Some(*leader))
            {
                return *leader;
            }
            assert!(Instant::now() < deadline, "no agreed leader (seed {SEED})");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn client(&self, id: u64) -> ApiClient {
        let identity = Identity::new(Role::Operator, "admin").unwrap();
        let credentials = Credentials::load(&self.certs, &identity).unwrap();
        let url = format!("https://{}", self.members[&id].api.local_addr());
        ApiClient::new(&url, &credentials, BearerToken::new(TOKEN).unwrap())
            .unwrap()
            .with_timeout(Duration::from_secs(60))
    }

    /// Each member's own view of the state (not linearizable: straight from its copy).
    async fn local_overviews(&self) -> Vec<String> {
        let mut views = Vec::new();
        for member in self.members.values() {
            let bytes = member
                .raft
                .read_local(encode_query(&Query::Overview))
                .await
                .unwrap();
            let QueryAnswer::Overview(overview) = decode_answer(&bytes).unwrap() else {
                panic!("an overview");
            };
            views.push(serde_json::to_string(&overview).unwrap());
        }
        views
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_through_a_follower_are_forwarded_and_every_node_ends_the_same() {
    let cluster = Cluster::start().await;
    let leader = cluster.leader().await;
    let follower = *cluster.members.keys().find(|id| **id != leader).unwrap();
    let via_follower = cluster.client(follower);

    let applied = via_follower.apply_plan_toml(PLAN).await.expect("forwarded");
    assert!(
        matches!(applied, Applied::Plan { services: 1, .. }),
        "{applied:?}"
    );
    let request = MigrationRequest {
        service: "shop".to_owned(),
        from: Some("us-east".to_owned()),
        to: "eu-west".to_owned(),
        cutover_at_ms: 4_000_000_000_000,
        warm_up: true,
        lead_time_ms: None,
        analysis_window_ms: None,
        drain_ms: None,
        schedule_key: None,
    };
    let Applied::Migration { id } = via_follower.migrate(&request).await.expect("forwarded") else {
        panic!("a migration id");
    };

    // A refusal through the follower is the state's, and costs no entry.
    let bad = PLAN.replace("primary_region = \"us-east\"", "primary_region = \"mars\"");
    match via_follower.apply_plan_toml(&bad).await {
        Err(api::ClientError::Refused { status, message }) => {
            assert_eq!(status.as_u16(), 400);
            assert!(message.contains("\"mars\""), "{message}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }

    let report = cluster.client(leader).status().await.unwrap();
    assert_eq!(report.leader.leader, Some(leader));
    assert_eq!(report.migrations[0].id, id);
    assert_eq!(report.migrations[0].phase, "planned");
    let from_follower = via_follower.status().await.unwrap();
    assert_eq!(
        from_follower.overview, report.overview,
        "reads are linearizable"
    );

    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let views = cluster.local_overviews().await;
        if views.iter().all(|v| *v == views[0]) && views[0].contains(&id) {
            break;
        }
        assert!(Instant::now() < deadline, "states differ: {views:#?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
