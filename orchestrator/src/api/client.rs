//! The HTTPS client of the operator API, used by the `umbra` CLI and the tests: mutual TLS
//! with an operator certificate from the cluster CA, the bearer token, one connection per
//! request, a timeout on each. Servers are verified against the cluster CA under the name
//! every orchestrator certificate carries (`orchestrator.umbra`), whatever address `--api`
//! names, because cluster certificates hold cluster names, not IP addresses.
//!
//! This module must not print the token, and must not retry writes (a write whose answer
//! is lost may have been applied).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{Method, Request, StatusCode, Uri, header};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use serde::de::DeserializeOwned;
use umbra_proto::{Credentials, Role};

use super::{
    AuditEntryView, BearerToken, CapacityBody, CapacityReport, DrillBody, DrillView, ErrorBody,
    ForecastReport, Health, MigrationBody, RollbackRequest, StatusReport, Written,
};
use crate::state::{AuditEntry, MigrationRequest};

/// Longest one request may take: longer than the server's own 15 s limit, so the server's
/// verdict (including its timeout answer) arrives first.
pub const DEFAULT_CLIENT_TIMEOUT: Duration = Duration::from_secs(20);
/// Largest answer read: 16 MiB (a status with thousands of migrations is a few MiB).
pub const MAX_RESPONSE_BYTES: usize = 16 << 20;

/// Why an API call failed. Each message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// `--api` is not `https://HOST:PORT`.
    #[error("--api {0:?} is not https://HOST:PORT (e.g. https://127.0.0.1:7443)")]
    BadUrl(String),
    /// The TLS configuration could not be built from the credentials.
    #[error("cannot use the operator certificate: {0}")]
    Credentials(#[from] umbra_proto::CredentialError),
    /// No TCP connection.
    #[error(
        "cannot reach the operator API at {address}: {reason}; is the orchestrator running, and is --api (UMBRA_API) right?"
    )]
    Unreachable {
        /// Where.
        address: String,
        /// What the OS said.
        reason: String,
    },
    /// The TLS handshake or the first read failed on a certificate (either side's).
    #[error(
        "TLS with the operator API at {address} failed ({reason}); the client needs an operator certificate from the same cluster CA as the orchestrators (--certs, --as), and --api must point at an orchestrator"
    )]
    Tls {
        /// Where.
        address: String,
        /// What rustls said.
        reason: String,
    },
    /// No answer in time.
    #[error(
        "no answer from {address} within {timeout:?}; a write may or may not have been applied: check `umbra status`"
    )]
    Timeout {
        /// Where.
        address: String,
        /// The limit.
        timeout: Duration,
    },
    /// The server answered with an error.
    #[error("{message} (HTTP {status})")]
    Refused {
        /// The HTTP status.
        status: StatusCode,
        /// The server's `error` message.
        message: String,
    },
    /// The exchange broke in another way.
    #[error("talking to {address}: {reason}")]
    Protocol {
        /// Where.
        address: String,
        /// What broke.
        reason: String,
    },
}

/// A client of one orchestrator's operator API.
#[derive(Clone)]
pub struct ApiClient {
    host: String,
    port: u16,
    authority: String,
    connector: tokio_rustls::TlsConnector,
    token: BearerToken,
    timeout: Duration,
}

impl std::fmt::Debug for ApiClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiClient")
            .field("api", &self.authority)
            .finish_non_exhaustive()
    }
}

impl ApiClient {
    /// A client of the API at `api` (`https://HOST:PORT`) presenting `credentials` (an
    /// operator's) and `token`.
    pub fn new(
        api: &str,
        credentials: &Credentials,
        token: BearerToken,
    ) -> Result<Self, ClientError> {
        let uri: Uri = api
            .parse()
            .map_err(|_| ClientError::BadUrl(api.to_owned()))?;
        let (Some("https"), Some(host), Some(port)) =
            (uri.scheme_str(), uri.host(), uri.port_u16())
        else {
            return Err(ClientError::BadUrl(api.to_owned()));
        };
        if !matches!(uri.path(), "" | "/") {
            return Err(ClientError::BadUrl(api.to_owned()));
        }
        let mut tls = credentials.client_config()?;
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        // `Uri::host` keeps the brackets of an IPv6 literal; the socket address wants none.
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        Ok(Self {
            authority: format!("{}:{port}", uri.host().unwrap_or(&host)),
            host,
            port,
            connector: tokio_rustls::TlsConnector::from(Arc::new(tls)),
            token,
            timeout: DEFAULT_CLIENT_TIMEOUT,
        })
    }

    /// The same client with another per-request timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// `POST /v1/plan` with a TOML plan.
    pub async fn apply_plan_toml(&self, toml: &str) -> Result<Written, ClientError> {
        self.call(
            Method::POST,
            "/v1/plan",
            Some(("application/toml", Bytes::from(toml.to_owned()))),
        )
        .await
    }

    /// `POST /v1/migrations`.
    pub async fn migrate(&self, request: &MigrationRequest) -> Result<Written, ClientError> {
        let body = serde_json::to_vec(&MigrationBody::from(request))
            .expect("a migration request always encodes");
        self.call(
            Method::POST,
            "/v1/migrations",
            Some(("application/json", Bytes::from(body))),
        )
        .await
    }

    /// `POST /v1/migrations/{id}/rollback`.
    pub async fn rollback(&self, id: &str, reason: &str) -> Result<Written, ClientError> {
        let body = serde_json::to_vec(&RollbackRequest {
            reason: reason.to_owned(),
        })
        .expect("a rollback request always encodes");
        // Ids are `service-N` with DNS-label service names; anything else cannot exist, and
        // must not be allowed to change the path.
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(ClientError::Refused {
                status: StatusCode::NOT_FOUND,
                message: format!("no migration {id:?}; `umbra status` lists the migrations"),
            });
        }
        self.call(
            Method::POST,
            &format!("/v1/migrations/{id}/rollback"),
            Some(("application/json", Bytes::from(body))),
        )
        .await
    }

    /// `GET /v1/status`.
    pub async fn status(&self) -> Result<StatusReport, ClientError> {
        self.call(Method::GET, "/v1/status", None).await
    }

    /// `GET /v1/audit?after=N&limit=M`, as the typed entries the state keeps (callers match
    /// on events).
    pub async fn audit(&self, after: u64, limit: usize) -> Result<Vec<AuditEntry>, ClientError> {
        let entries: Vec<AuditEntryView> = self
            .call(
                Method::GET,
                &format!("/v1/audit?after={after}&limit={limit}"),
                None,
            )
            .await?;
        entries
            .into_iter()
            .map(AuditEntry::try_from)
            .collect::<Result<_, _>>()
            .map_err(|e| self.protocol(format!("undecodable audit entry: {e}")))
    }

    /// `POST /v1/capacity`.
    pub async fn claim_capacity(&self, body: &CapacityBody) -> Result<Written, ClientError> {
        let body = serde_json::to_vec(body).expect("a capacity claim always encodes");
        self.call(
            Method::POST,
            "/v1/capacity",
            Some(("application/json", Bytes::from(body))),
        )
        .await
    }

    /// `POST /v1/drills`: records a drill's verdict.
    pub async fn record_drill(&self, body: &DrillBody) -> Result<Written, ClientError> {
        let body = serde_json::to_vec(body).expect("a drill report always encodes");
        self.call(
            Method::POST,
            "/v1/drills",
            Some(("application/json", Bytes::from(body))),
        )
        .await
    }

    /// `GET /v1/drills?limit=N`: recorded drills, newest first.
    pub async fn drills(&self, limit: usize) -> Result<Vec<DrillView>, ClientError> {
        self.call(Method::GET, &format!("/v1/drills?limit={limit}"), None)
            .await
    }

    /// `GET /v1/capacity`.
    pub async fn capacity(&self) -> Result<CapacityReport, ClientError> {
        self.call(Method::GET, "/v1/capacity", None).await
    }

    /// `DELETE /v1/capacity/{id}`.
    pub async fn release_capacity(&self, id: &str) -> Result<Written, ClientError> {
        // Ids are `cap-N`; anything else cannot exist, and must not change the path.
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(ClientError::Refused {
                status: StatusCode::NOT_FOUND,
                message: format!("no capacity claim {id:?}; `umbra capacity list` shows them"),
            });
        }
        self.call(Method::DELETE, &format!("/v1/capacity/{id}"), None)
            .await
    }

    /// `GET /v1/forecast?service=S[&region=R]`.
    pub async fn forecast(
        &self,
        service: &str,
        region: Option<&str>,
    ) -> Result<ForecastReport, ClientError> {
        let name_ok = |s: &str| s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !name_ok(service) || !region.is_none_or(name_ok) {
            return Err(ClientError::Refused {
                status: StatusCode::BAD_REQUEST,
                message: "service and region names are lower-case letters, digits and '-'"
                    .to_owned(),
            });
        }
        let path = match region {
            Some(region) => format!("/v1/forecast?service={service}&region={region}"),
            None => format!("/v1/forecast?service={service}"),
        };
        self.call(Method::GET, &path, None).await
    }

    /// `GET /healthz`.
    pub async fn health(&self) -> Result<Health, ClientError> {
        self.call(Method::GET, "/healthz", None).await
    }

    /// Sends one request and decodes a 2xx answer as `T`; other answers become
    /// [`ClientError::Refused`] with the server's message.
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<(&str, Bytes)>,
    ) -> Result<T, ClientError> {
        let (status, bytes) = self.raw(method, path, body).await?;
        if status.is_success() {
            serde_json::from_slice(&bytes)
                .map_err(|e| self.protocol(format!("undecodable answer: {e}")))
        } else {
            let message = serde_json::from_slice::<ErrorBody>(&bytes)
                .map(|b| b.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned());
            Err(ClientError::Refused { status, message })
        }
    }

    /// Sends one request; returns the status and body whatever the status.
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        body: Option<(&str, Bytes)>,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        tokio::time::timeout(self.timeout, self.exchange(method, path, body))
            .await
            .map_err(|_| ClientError::Timeout {
                address: self.authority.clone(),
                timeout: self.timeout,
            })?
    }

    fn protocol(&self, reason: impl Into<String>) -> ClientError {
        ClientError::Protocol {
            address: self.authority.clone(),
            reason: reason.into(),
        }
    }

    /// A failure during TLS or HTTP I/O: a rustls error anywhere in the chain means a
    /// certificate was refused, by either side.
    fn io_failure(&self, error: &(dyn std::error::Error + 'static)) -> ClientError {
        let mut next: Option<&(dyn std::error::Error + 'static)> = Some(error);
        let mut chain = Vec::new();
        let mut tls = false;
        while let Some(e) = next {
            tls |= e.downcast_ref::<rustls::Error>().is_some();
            chain.push(e.to_string());
            // `io::Error::source` skips the error it wraps; look inside it instead.
            next = match e
                .downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
            {
                Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
                None => e.source(),
            };
        }
        chain.dedup();
        let reason = chain.join(": ");
        if tls {
            ClientError::Tls {
                address: self.authority.clone(),
                reason,
            }
        } else {
            self.protocol(reason)
        }
    }

    async fn exchange(
        &self,
        method: Method,
        path: &str,
        body: Option<(&str, Bytes)>,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let address = self.resolve().await?;
        let tcp = tokio::net::TcpStream::connect(address).await.map_err(|e| {
            ClientError::Unreachable {
                address: self.authority.clone(),
                reason: e.to_string(),
            }
        })?;
        let name = ServerName::try_from(Role::Orchestrator.server_name())
            .expect("the orchestrator role's server name is a valid DNS name");
        let tls = self
            .connector
            .connect(name, tcp)
            .await
            .map_err(|e| self.io_failure(&e))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| self.io_failure(&e))?;
        // The connection task ends when the exchange does (or the timeout drops `sender`).
        let driver = tokio::spawn(connection);
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, &self.authority)
            .header(header::AUTHORIZATION, self.token.header_value())
            .header(header::ACCEPT, "application/json");
        let body = match body {
            Some((content_type, bytes)) => {
                request = request.header(header::CONTENT_TYPE, content_type);
                Full::new(bytes)
            }
            None => Full::new(Bytes::new()),
        };
        let request = request
            .body(body)
            .map_err(|e| self.protocol(format!("building the request: {e}")))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| self.io_failure(&e))?;
        let status = response.status();
        let bytes = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(|e| self.protocol(format!("reading the answer: {e}")))?
            .to_bytes();
        drop(sender);
        driver.abort();
        Ok((status, bytes))
    }

    async fn resolve(&self) -> Result<SocketAddr, ClientError> {
        let unreachable = |reason: String| ClientError::Unreachable {
            address: self.authority.clone(),
            reason,
        };
        tokio::net::lookup_host((self.host.as_str(), self.port))
            .await
            .map_err(|e| unreachable(e.to_string()))?
            .next()
            .ok_or_else(|| unreachable("the name has no address".to_owned()))
    }
}
