//! A client of the replicated store over QUIC: sends `ClientRequest`s on a `Client` stream and
//! follows `NotLeader` hints to the leader. Used by `umbra kv`, `umbra demo`, the end-to-end
//! tests and the benchmark. One request at a time per client; open several clients for
//! concurrency. It retries only when the request certainly was not applied.
//!
//! Every wait on a node (handshake, answer) is raced against a liveness probe of its port
//! (`umbra_proto::liveness`): a node whose process is gone is given up on within a probe
//! interval, not after the QUIC handshake or response timeout, so a client follows a killed
//! leader's successor as soon as the election ends.

use std::net::SocketAddr;
use std::time::Duration;

use umbra_proto::liveness;
use umbra_proto::{
    ClientErrorKind, ClientOutcome, ClientRequest, ClientRequestBody, ClientResponse, Credentials,
    Endpoint, FramedStream, LeaderHint, MembershipChange, Role, StreamKind, TransportConfig,
};

/// Attempts per request across redirects and unreachable nodes: enough to walk a 5-node
/// cluster twice during an election.
pub const MAX_ATTEMPTS: u32 = 12;
/// Wait for one answer: longer than the node's own 5 s request timeout, so the node's
/// verdict (applied, dropped, timed out) arrives before the client gives up.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(8);
/// Pause between attempts, multiplied by the attempt number (bounded linear backoff): an
/// election takes about one election timeout (1 s by default).
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// Why an attempt ended early: the node's port refused a probe.
const GONE: &str = "the node's port is closed (its process is gone)";

/// Why a store request failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreClientError {
    #[error("cannot create the client endpoint: {0}")]
    Endpoint(String),
    #[error("no node answered after {attempts} attempts (last error: {last})")]
    Unavailable { attempts: u32, last: String },
    #[error(
        "the connection failed after the request was sent; it may or may not have been applied: {0}"
    )]
    OutcomeUnknown(String),
    #[error("the node refused the request ({kind:?}): {message}")]
    Refused {
        kind: ClientErrorKind,
        message: String,
    },
    #[error("the node is not the leader (hint {0:?})")]
    NotLeader(LeaderHint),
    #[error("unexpected answer: {0:?}")]
    Unexpected(Box<ClientOutcome>),
}

/// A connection to some node of the cluster, moved to the leader when a node says so.
pub struct StoreClient {
    endpoint: Endpoint,
    nodes: Vec<SocketAddr>,
    next_node: usize,
    target: Option<SocketAddr>,
    stream: Option<(SocketAddr, FramedStream)>,
    next_request_id: u64,
    /// `false` for a client pinned to one node: `NotLeader` is returned, not followed.
    follow_hints: bool,
}

enum Attempt {
    Done(ClientOutcome),
    /// Not applied; try again at this address (or the next known node).
    Retry(Option<SocketAddr>, String),
    /// Sent but unanswered.
    Unknown(String),
}

impl StoreClient {
    /// A client using `credentials` (an operator or orchestrator certificate) that knows the
    /// nodes at `nodes`.
    pub fn new(
        credentials: &Credentials,
        nodes: Vec<SocketAddr>,
    ) -> Result<Self, StoreClientError> {
        let bind: SocketAddr = match nodes.first() {
            Some(SocketAddr::V6(_)) => "[::]:0".parse().expect("literal"),
            _ => "0.0.0.0:0".parse().expect("literal"),
        };
        let endpoint = Endpoint::client(bind, credentials, TransportConfig::default())
            .map_err(|e| StoreClientError::Endpoint(e.to_string()))?;
        Ok(Self {
            endpoint,
            nodes,
            next_node: 0,
            target: None,
            stream: None,
            next_request_id: 1,
            follow_hints: true,
        })
    }

    /// A client that talks only to the node at `address` and returns `NotLeader` instead of
    /// following it (for probing one node, e.g. measuring failover).
    pub fn pinned(
        credentials: &Credentials,
        address: SocketAddr,
    ) -> Result<Self, StoreClientError> {
        let mut client = Self::new(credentials, vec![address])?;
        client.follow_hints = false;
        Ok(client)
    }

    /// Replicates `command`; returns the state machine's result once applied.
    pub async fn propose(&mut self, command: Vec<u8>) -> Result<Vec<u8>, StoreClientError> {
        match self.request(ClientRequestBody::Propose { command }).await? {
            ClientOutcome::Applied { result } => Ok(result),
            other => Err(StoreClientError::Unexpected(Box::new(other))),
        }
    }

    /// A linearizable read.
    pub async fn read(&mut self, query: Vec<u8>) -> Result<Vec<u8>, StoreClientError> {
        match self.request(ClientRequestBody::Read { query }).await? {
            ClientOutcome::ReadResult { result } => Ok(result),
            other => Err(StoreClientError::Unexpected(Box::new(other))),
        }
    }

    /// Who leads, according to whichever node answers.
    pub async fn leader(&mut self) -> Result<LeaderHint, StoreClientError> {
        match self.request(ClientRequestBody::LeaderInfo).await? {
            ClientOutcome::Leader(hint) => Ok(hint),
            other => Err(StoreClientError::Unexpected(Box::new(other))),
        }
    }

    /// Adds or removes a member; returns the voters after the change.
    pub async fn change_membership(
        &mut self,
        change: MembershipChange,
    ) -> Result<Vec<u64>, StoreClientError> {
        match self
            .request(ClientRequestBody::ChangeMembership(change))
            .await?
        {
            ClientOutcome::Applied { result } => postcard::from_bytes(&result)
                .map_err(|e| StoreClientError::OutcomeUnknown(e.to_string())),
            other => Err(StoreClientError::Unexpected(Box::new(other))),
        }
    }

    async fn request(
        &mut self,
        body: ClientRequestBody,
    ) -> Result<ClientOutcome, StoreClientError> {
        let mut last = String::from("no node configured");
        let attempts = if self.follow_hints { MAX_ATTEMPTS } else { 1 };
        for attempt in 0..attempts {
            let Some(address) = self.target.take().or_else(|| self.rotate()) else {
                break;
            };
            match self.attempt(address, body.clone()).await {
                Attempt::Done(ClientOutcome::NotLeader(hint)) => {
                    return Err(StoreClientError::NotLeader(hint));
                }
                Attempt::Done(ClientOutcome::Failed(error)) => {
                    self.target = Some(address);
                    return Err(StoreClientError::Refused {
                        kind: error.kind,
                        message: error.message,
                    });
                }
                Attempt::Done(outcome) => {
                    self.target = Some(address);
                    return Ok(outcome);
                }
                Attempt::Retry(next, reason) => {
                    last = format!("{address}: {reason}");
                    self.target = next.filter(|n| *n != address);
                    if self.target.is_none() {
                        tokio::time::sleep(RETRY_PAUSE * (attempt + 1)).await;
                    }
                }
                Attempt::Unknown(reason) => {
                    self.stream = None;
                    // Reads change nothing: retrying them is always safe.
                    if matches!(
                        body,
                        ClientRequestBody::Read { .. } | ClientRequestBody::LeaderInfo
                    ) {
                        last = format!("{address}: {reason}");
                        tokio::time::sleep(RETRY_PAUSE * (attempt + 1)).await;
                        continue;
                    }
                    return Err(StoreClientError::OutcomeUnknown(format!(
                        "{address}: {reason}"
                    )));
                }
            }
        }
        Err(StoreClientError::Unavailable { attempts, last })
    }

    fn rotate(&mut self) -> Option<SocketAddr> {
        if self.nodes.is_empty() {
            return None;
        }
        let address = self.nodes[self.next_node % self.nodes.len()];
        self.next_node += 1;
        Some(address)
    }

    async fn attempt(&mut self, address: SocketAddr, body: ClientRequestBody) -> Attempt {
        if self.stream.as_ref().map(|(a, _)| *a) != Some(address) {
            self.stream = None;
            let opened = tokio::select! {
                opened = async {
                    let connection = self
                        .endpoint
                        .connect(address, &Role::Orchestrator.server_name())
                        .await
                        .map_err(|e| e.to_string())?;
                    connection
                        .open_stream(StreamKind::Client)
                        .await
                        .map_err(|e| e.to_string())
                } => opened,
                () = liveness::closed(address) => Err(GONE.to_owned()),
            };
            match opened {
                Ok(stream) => self.stream = Some((address, stream)),
                Err(error) => return Attempt::Retry(None, error),
            }
        }
        let Some((_, stream)) = self.stream.as_mut() else {
            return Attempt::Retry(None, "no stream".into());
        };
        let id = self.next_request_id;
        self.next_request_id += 1;
        if let Err(error) = stream.send(&ClientRequest { id, body }).await {
            self.stream = None;
            // A failed send never reached the node's state machine.
            return Attempt::Retry(None, error.to_string());
        }
        let response = tokio::time::timeout(RESPONSE_TIMEOUT, async {
            let answer = async {
                loop {
                    match stream.recv::<ClientResponse>().await {
                        Ok(Some(response)) if response.id == id => return Ok(response),
                        // An answer to an abandoned earlier request on this stream.
                        Ok(Some(_)) => continue,
                        Ok(None) => return Err("node closed the stream".to_owned()),
                        Err(error) => return Err(error.to_string()),
                    }
                }
            };
            tokio::select! {
                answer = answer => answer,
                () = liveness::closed(address) => Err(GONE.to_owned()),
            }
        })
        .await;
        let response = match response {
            Ok(Ok(response)) => response,
            Ok(Err(reason)) => return Attempt::Unknown(reason),
            Err(_) => return Attempt::Unknown(format!("no answer within {RESPONSE_TIMEOUT:?}")),
        };
        match response.outcome {
            ClientOutcome::NotLeader(hint) if self.follow_hints => {
                Attempt::Retry(hint.leader_addr, format!("not the leader (hint {hint:?})"))
            }
            ClientOutcome::Failed(error)
                if matches!(
                    error.kind,
                    ClientErrorKind::Dropped | ClientErrorKind::ShuttingDown
                ) =>
            {
                Attempt::Retry(None, error.message)
            }
            outcome => Attempt::Done(outcome),
        }
    }
}
