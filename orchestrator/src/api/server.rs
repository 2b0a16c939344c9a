//! The operator API's HTTPS server. TLS is terminated here (not by `axum::serve`) because
//! each connection's verified client certificate decides who is calling: the role is read
//! from it with `umbra_proto::Identity` and handed to the routes as a request extension.
//!
//! Every `/v1` request needs an `operator` certificate (403 otherwise) and the bearer token
//! (401 otherwise). Writes are checked with `Query::Check` first (a refusal costs no log
//! entry), then proposed; a refusal's status comes from its `RejectKind`: invalid input 400,
//! no such migration or service 404, a clash with the current state or a deposed leader's
//! term 409. Every error answer is `{"error": "..."}` saying what to do.
//! Limits: connections, handshake and header time, body size, request time.
//!
//! This module must not log the token or request bodies (plans may hold addresses operators
//! consider private; tokens are secrets).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Extension, Path, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use umbra_proto::{Credentials, Identity, Role};

use super::{
    ApiConfig, ApiConfigError, BearerToken, CapacityBody, CapacityReport, ClaimStatus,
    DEFAULT_AUDIT_LIMIT, ErrorBody, ForecastReport, ForecastSlice, Health, MAX_AUDIT_LIMIT,
    MigrationStatus, RollbackRequest, STATUS_AUDIT_ENTRIES, StatusReport, TokenError,
};
use crate::state::claims::{self, MAX_CLAIM_MS};
use crate::state::{
    ClaimRequest, Command, MigrationRequest, Overview, Plan, Query, QueryAnswer, RejectKind,
    Rejected, find_service,
};
use crate::store::{Clock, Replicated, StoreError, SystemClock};

/// ALPN id of HTTP/1.1 (RFC 7301 § 6): the API speaks HTTP/1.1 only.
const ALPN_HTTP11: &[u8] = b"http/1.1";
/// How long a stopping server lets its open connections finish their current request.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Why the API could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The config is unusable.
    #[error(transparent)]
    Config(#[from] ApiConfigError),
    /// The token file is unusable.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// The node's credentials cannot make a TLS server.
    #[error("TLS server configuration: {0}")]
    Tls(#[from] umbra_proto::CredentialError),
    /// The metrics could not be registered (already registered in this registry).
    #[error("registering the operator API's metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// The listen address cannot be bound.
    #[error("cannot listen on {address} for the operator API: {source}")]
    Bind {
        /// The address.
        address: SocketAddr,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// A running API server. Dropping it does not stop it; call [`RunningApi::shutdown`].
#[derive(Debug)]
pub struct RunningApi {
    local_addr: SocketAddr,
    stop: watch::Sender<bool>,
}

impl RunningApi {
    /// The address the API listens on (the bound port when the config said port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting connections and lets open ones finish their request (bounded by
    /// a short grace period). Idempotent.
    pub fn shutdown(&self) {
        let _ = self.stop.send(true);
    }
}

/// Who is calling, from the verified client certificate (`None`: it carries no Umbra
/// identity, which only a certificate from the cluster CA made by other tools can do).
#[derive(Debug, Clone)]
pub(super) struct Caller(pub(super) Option<Identity>);

#[derive(Clone)]
struct AppState {
    store: Arc<dyn Replicated>,
    metrics: ApiMetrics,
    token: Arc<BearerToken>,
    max_body_bytes: usize,
    request_timeout: Duration,
}

/// Request counters and latencies, labelled by route (the route template, so the label
/// set stays bounded whatever paths clients send).
#[derive(Clone)]
struct ApiMetrics {
    requests: prometheus::IntCounterVec,
    seconds: prometheus::HistogramVec,
}

impl ApiMetrics {
    fn register(registry: &prometheus::Registry) -> prometheus::Result<Self> {
        let requests = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "umbra_api_requests_total",
                "Operator API requests by route and HTTP status.",
            ),
            &["route", "status"],
        )?;
        let seconds = prometheus::HistogramVec::new(
            prometheus::HistogramOpts::new(
                "umbra_api_request_duration_seconds",
                "Operator API request latency by route (writes include the Raft round).",
            ),
            &["route"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(seconds.clone()))?;
        Ok(Self { requests, seconds })
    }
}

/// The route template of `path`, for metric labels.
fn route_label(path: &str) -> &'static str {
    match path {
        "/v1/plan" => "/v1/plan",
        "/v1/migrations" => "/v1/migrations",
        "/v1/status" => "/v1/status",
        "/v1/audit" => "/v1/audit",
        "/v1/capacity" => "/v1/capacity",
        "/v1/forecast" => "/v1/forecast",
        "/healthz" => "/healthz",
        p if p.starts_with("/v1/capacity/") => "/v1/capacity/{id}",
        p if p.starts_with("/v1/migrations/") && p.ends_with("/rollback") => {
            "/v1/migrations/{id}/rollback"
        }
        _ => "other",
    }
}

/// Starts the operator API on `config.listen`, presenting `credentials` (this
/// orchestrator's) and serving `store`; its metrics go to `registry`.
pub async fn serve(
    config: &ApiConfig,
    credentials: &Credentials,
    store: Arc<dyn Replicated>,
    registry: &prometheus::Registry,
) -> Result<RunningApi, ServeError> {
    config.validate()?;
    let metrics = ApiMetrics::register(registry)?;
    let token = BearerToken::load(&config.token_file)?;
    let mut tls = credentials.server_config()?;
    tls.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| ServeError::Bind {
            address: config.listen,
            source,
        })?;
    let local_addr = listener.local_addr().map_err(|source| ServeError::Bind {
        address: config.listen,
        source,
    })?;
    let state = AppState {
        store,
        metrics,
        token: Arc::new(token),
        max_body_bytes: config.max_body_bytes,
        request_timeout: Duration::from_millis(config.request_timeout_ms),
    };
    let router = router(state);
    let (stop, stopped) = watch::channel(false);
    tokio::spawn(accept_loop(
        listener,
        acceptor,
        router,
        Duration::from_millis(config.handshake_timeout_ms),
        config.max_connections,
        stopped,
    ));
    tracing::info!(%local_addr, "operator API listening (HTTPS, operator certificate and token required)");
    Ok(RunningApi { local_addr, stop })
}

fn router(state: AppState) -> axum::Router {
    let v1 = axum::Router::new()
        .route("/v1/plan", post(apply_plan))
        .route("/v1/migrations", post(create_migration))
        .route("/v1/migrations/{id}/rollback", post(rollback))
        .route("/v1/status", get(status))
        .route("/v1/audit", get(audit))
        .route("/v1/capacity", post(claim_capacity).get(capacity))
        .route("/v1/capacity/{id}", delete(release_capacity))
        .route("/v1/forecast", get(forecast))
        .route_layer(middleware::from_fn_with_state(state.clone(), guard));
    axum::Router::new()
        .merge(v1)
        .merge(super::dashboard::routes())
        .route("/healthz", get(healthz))
        .fallback(|| async {
            error(
                StatusCode::NOT_FOUND,
                "no such endpoint; the API serves POST /v1/plan, POST /v1/migrations, POST /v1/migrations/{id}/rollback, GET /v1/status, GET /v1/audit, POST and GET /v1/capacity, DELETE /v1/capacity/{id}, GET /v1/forecast and GET /healthz",
            )
        })
        .method_not_allowed_fallback(|| async {
            error(
                StatusCode::METHOD_NOT_ALLOWED,
                "wrong method for this endpoint: writes are POST (DELETE releases a capacity claim), reads are GET",
            )
        })
        .layer(middleware::from_fn_with_state(state.clone(), time_limit))
        .with_state(state)
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    router: axum::Router,
    handshake_timeout: Duration,
    max_connections: usize,
    mut stopped: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(max_connections));
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => return,
            },
            _ = stopped.changed() => return,
        };
        let (tcp, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors, say: pause rather than spin.
                    tracing::warn!(%error, "operator API accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stopped.changed() => return,
        };
        let acceptor = acceptor.clone();
        let router = router.clone();
        let stopped = stopped.clone();
        tokio::spawn(async move {
            serve_connection(tcp, remote, acceptor, router, handshake_timeout, stopped).await;
            drop(slot);
        });
    }
}

async fn serve_connection(
    tcp: tokio::net::TcpStream,
    remote: SocketAddr,
    acceptor: tokio_rustls::TlsAcceptor,
    router: axum::Router,
    handshake_timeout: Duration,
    mut stopped: watch::Receiver<bool>,
) {
    let tls = match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(error)) => {
            // A missing client certificate or one from another CA ends here.
            tracing::warn!(%remote, %error, "operator API refused a TLS handshake");
            return;
        }
        Err(_) => {
            tracing::debug!(%remote, "operator API TLS handshake timed out");
            return;
        }
    };
    let caller = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .and_then(|cert| Identity::from_certificate(cert).ok());
    let app = router.layer(Extension(Caller(caller)));
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(handshake_timeout);
    let connection = builder.serve_connection(TokioIo::new(tls), TowerToHyperService::new(app));
    tokio::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(error) = result {
                tracing::debug!(%remote, %error, "operator API connection ended");
            }
        }
        _ = stopped.changed() => {
            connection.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(SHUTDOWN_GRACE, connection).await;
        }
    }
}

/// An error answer: a status and a message that says what to do, sent as `{"error": ...}`.
#[derive(Debug)]
struct Refusal(StatusCode, String);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        (self.0, Json(ErrorBody { error: self.1 })).into_response()
    }
}

impl From<StoreError> for Refusal {
    fn from(failure: StoreError) -> Self {
        let status = match failure {
            StoreError::NoLeader(_) | StoreError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            StoreError::OutcomeUnknown(_) => StatusCode::GATEWAY_TIMEOUT,
            StoreError::Garbled(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Refusal(status, failure.to_string())
    }
}

impl From<Rejected> for Refusal {
    fn from(rejected: Rejected) -> Self {
        let status = match rejected.kind {
            RejectKind::Invalid => StatusCode::BAD_REQUEST,
            RejectKind::NotFound => StatusCode::NOT_FOUND,
            RejectKind::Conflict | RejectKind::Stale => StatusCode::CONFLICT,
        };
        Refusal(status, rejected.message)
    }
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    Refusal(status, message.into()).into_response()
}

fn garbled(answer: &QueryAnswer) -> Refusal {
    StoreError::Garbled(format!("unexpected answer {answer:?}")).into()
}

/// Bounds every request's time, so a stuck cluster cannot hold connections forever, and
/// counts it.
async fn time_limit(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route = route_label(request.uri().path());
    let started = std::time::Instant::now();
    let response = bounded(&state, request, next).await;
    let metrics = &state.metrics;
    metrics
        .requests
        .with_label_values(&[route, response.status().as_str()])
        .inc();
    metrics
        .seconds
        .with_label_values(&[route])
        .observe(started.elapsed().as_secs_f64());
    response
}

async fn bounded(state: &AppState, request: Request, next: Next) -> Response {
    match tokio::time::timeout(state.request_timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => error(
            StatusCode::GATEWAY_TIMEOUT,
            format!(
                "no answer within {} ms; a write may or may not have been applied: check `umbra status`",
                state.request_timeout.as_millis()
            ),
        ),
    }
}

/// Operator certificate first (the stronger proof), then the bearer token.
async fn guard(
    State(state): State<AppState>,
    Extension(Caller(caller)): Extension<Caller>,
    headers: HeaderMap,
    request: Request,
    next: Next,
) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let caller = match caller {
        Some(identity) if identity.role() == Role::Operator => identity,
        Some(identity) => {
            tracing::warn!(%identity, %method, %path, "operator API refused a non-operator certificate");
            return error(
                StatusCode::FORBIDDEN,
                format!(
                    "certificate {identity} has role {}; the operator API accepts operator certificates only: use one issued with `umbra certs add --role operator`",
                    identity.role()
                ),
            );
        }
        None => {
            return error(
                StatusCode::FORBIDDEN,
                "the client certificate carries no umbra://operator/<name> identity; use one issued with `umbra certs add --role operator`",
            );
        }
    };
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    let refusal = match presented {
        None => Some(
            "missing `Authorization: Bearer <token>` header; pass --token-file FILE (or set UMBRA_TOKEN_FILE)",
        ),
        Some(token) if !state.token.matches(token.trim()) => {
            Some("the bearer token is not this cluster's; check --token-file (or UMBRA_TOKEN_FILE)")
        }
        Some(_) => None,
    };
    if let Some(message) = refusal {
        tracing::warn!(operator = caller.id(), %method, %path, "operator API refused a request without a valid token");
        let mut response = error(StatusCode::UNAUTHORIZED, message);
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
        return response;
    }
    let response = next.run(request).await;
    tracing::info!(operator = caller.id(), %method, %path, status = response.status().as_u16(), "operator API request");
    response
}

async fn read_body(body: Body, limit: usize) -> Result<Bytes, Refusal> {
    axum::body::to_bytes(body, limit).await.map_err(|_| {
        Refusal(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the request body is larger than {limit} bytes (or was cut off); split the plan"
            ),
        )
    })
}

fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, Refusal> {
    serde_json::from_slice(bytes).map_err(|e| {
        Refusal(
            StatusCode::BAD_REQUEST,
            format!("the body is not a valid {what} (JSON): {e}"),
        )
    })
}

/// Dry-runs `command`, then proposes it. A refusal by either answers with its kind's
/// status: the state may have moved between the two (another operator's write), and the
/// refusal at apply time describes what happened (e.g. a migration created in between is
/// a conflict, 409).
async fn write(store: &dyn Replicated, command: Command) -> Result<Response, Refusal> {
    match store.query(Query::Check(Box::new(command.clone()))).await? {
        QueryAnswer::Check(Ok(())) => {}
        QueryAnswer::Check(Err(refusal)) => return Err(refusal.into()),
        other => return Err(garbled(&other)),
    }
    match store.propose(command).await? {
        Ok(applied) => Ok((StatusCode::OK, Json(applied)).into_response()),
        Err(refusal) => Err(refusal.into()),
    }
}

async fn overview(store: &dyn Replicated) -> Result<Overview, Refusal> {
    match store.query(Query::Overview).await? {
        QueryAnswer::Overview(overview) => Ok(*overview),
        other => Err(garbled(&other)),
    }
}

async fn apply_plan(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Refusal> {
    let bytes = read_body(body, state.max_body_bytes).await?;
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let plan = if is_json {
        parse_json::<Plan>(&bytes, "plan")?
    } else {
        let text = std::str::from_utf8(&bytes).map_err(|_| {
            Refusal(
                StatusCode::BAD_REQUEST,
                "the plan is not UTF-8 text; send the TOML file as is (or JSON with Content-Type: application/json)".to_owned(),
            )
        })?;
        Plan::from_toml(text).map_err(|e| {
            Refusal(
                StatusCode::BAD_REQUEST,
                format!("the plan is not valid TOML: {e}"),
            )
        })?
    };
    let command = Command::ApplyPlan {
        plan,
        at_ms: SystemClock.now_ms(),
    };
    write(state.store.as_ref(), command).await
}

async fn create_migration(State(state): State<AppState>, body: Body) -> Result<Response, Refusal> {
    let bytes = read_body(body, state.max_body_bytes).await?;
    let request = parse_json::<MigrationRequest>(&bytes, "migration request")?;
    if request.schedule_key.is_some() {
        return Err(Refusal(
            StatusCode::BAD_REQUEST,
            "schedule_key is set by schedules only; leave it out".to_owned(),
        ));
    }
    let command = Command::CreateMigration {
        request,
        at_ms: SystemClock.now_ms(),
    };
    write(state.store.as_ref(), command).await
}

async fn rollback(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Body,
) -> Result<Response, Refusal> {
    let bytes = read_body(body, state.max_body_bytes).await?;
    let request = parse_json::<RollbackRequest>(&bytes, "rollback request")?;
    if request.reason.trim().is_empty() {
        return Err(Refusal(
            StatusCode::BAD_REQUEST,
            "say why in `reason`; the audit log keeps it".to_owned(),
        ));
    }
    // An unknown id is the state's NotFound (404), from the same check as every other
    // refusal, so no separate lookup can disagree with it.
    let command = Command::RequestRollback {
        id,
        reason: request.reason,
        at_ms: SystemClock.now_ms(),
    };
    write(state.store.as_ref(), command).await
}

/// The numeric suffix of a migration id (`shop-12` → 12): the state numbers migrations in
/// creation order.
fn creation_order(id: &str) -> u64 {
    id.rsplit('-')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

async fn status(State(state): State<AppState>) -> Result<Response, Refusal> {
    let store = state.store.as_ref();
    let overview = overview(store).await?;
    // Each command leaves at most one audit entry at its own log index, so the window of
    // the last few hundred indexes holds the most recent entries.
    let window = STATUS_AUDIT_ENTRIES * 10;
    let query = Query::Audit {
        after_index: overview.applied_index.saturating_sub(window as u64),
        limit: window,
    };
    let mut recent_audit = match store.query(query).await? {
        QueryAnswer::Audit(entries) => entries,
        other => return Err(garbled(&other)),
    };
    let excess = recent_audit.len().saturating_sub(STATUS_AUDIT_ENTRIES);
    recent_audit.drain(..excess);
    let mut migrations: Vec<MigrationStatus> = overview
        .migrations
        .values()
        .map(|record| MigrationStatus::of(record, store.observations(&record.spec.id).as_ref()))
        .collect();
    migrations.sort_by_key(|m| std::cmp::Reverse(creation_order(&m.id)));
    Ok(Json(StatusReport {
        leader: store.leader(),
        overview,
        migrations,
        recent_audit,
        pools: store.pools(),
    })
    .into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditParams {
    after: Option<u64>,
    limit: Option<usize>,
}

async fn audit(
    State(state): State<AppState>,
    params: Result<axum::extract::Query<AuditParams>, QueryRejection>,
) -> Result<Response, Refusal> {
    let axum::extract::Query(params) = params.map_err(|rejection| {
        Refusal(
            StatusCode::BAD_REQUEST,
            format!("{rejection}; use ?after=N&limit=M with whole numbers"),
        )
    })?;
    let limit = params.limit.unwrap_or(DEFAULT_AUDIT_LIMIT);
    if limit == 0 || limit > MAX_AUDIT_LIMIT {
        return Err(Refusal(
            StatusCode::BAD_REQUEST,
            format!("limit must be 1..={MAX_AUDIT_LIMIT}; page with ?after=<last index seen>"),
        ));
    }
    let query = Query::Audit {
        after_index: params.after.unwrap_or(0),
        limit,
    };
    match state.store.query(query).await? {
        QueryAnswer::Audit(entries) => Ok(Json(entries).into_response()),
        other => Err(garbled(&other)),
    }
}

/// An RFC 3339 time as Unix ms, or a 400 naming the field.
fn unix_ms(field: &str, text: &str) -> Result<u64, Refusal> {
    chrono::DateTime::parse_from_rfc3339(text)
        .ok()
        .and_then(|t| u64::try_from(t.timestamp_millis()).ok())
        .ok_or_else(|| {
            Refusal(
                StatusCode::BAD_REQUEST,
                format!(
                    "{field} {text:?} is not an RFC 3339 time after 1970, e.g. 2026-12-01T09:00:00Z"
                ),
            )
        })
}

async fn claim_capacity(State(state): State<AppState>, body: Body) -> Result<Response, Refusal> {
    let bytes = read_body(body, state.max_body_bytes).await?;
    let body = parse_json::<CapacityBody>(&bytes, "capacity claim")?;
    let at_ms = SystemClock.now_ms();
    let start_ms = body
        .start
        .as_deref()
        .map(|t| unix_ms("start", t))
        .transpose()?;
    let end_ms = match (body.end.as_deref(), body.hold_secs) {
        (Some(_), Some(_)) => {
            return Err(Refusal(
                StatusCode::BAD_REQUEST,
                "give either end or hold_secs, not both".to_owned(),
            ));
        }
        (Some(end), None) => Some(unix_ms("end", end)?),
        (None, Some(secs)) if secs == 0 || secs.saturating_mul(1_000) > MAX_CLAIM_MS => {
            return Err(Refusal(
                StatusCode::BAD_REQUEST,
                format!("hold_secs must be 1..={} (31 days)", MAX_CLAIM_MS / 1_000),
            ));
        }
        (None, Some(secs)) => Some(start_ms.unwrap_or(at_ms).max(at_ms) + secs * 1_000),
        (None, None) => None,
    };
    let command = Command::ClaimCapacity {
        request: ClaimRequest {
            service: body.service,
            region: body.region,
            instances: body.instances,
            start_ms,
            end_ms,
        },
        at_ms,
    };
    write(state.store.as_ref(), command).await
}

async fn release_capacity(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, Refusal> {
    let command = Command::ReleaseCapacity {
        id,
        at_ms: SystemClock.now_ms(),
    };
    write(state.store.as_ref(), command).await
}

async fn capacity(State(state): State<AppState>) -> Result<Response, Refusal> {
    let store = state.store.as_ref();
    let overview = overview(store).await?;
    let pools = store.pools();
    let now = SystemClock.now_ms();
    let mut claims: Vec<ClaimStatus> = overview
        .capacity
        .into_values()
        .filter(|c| c.end_ms > now)
        .map(|claim| ClaimStatus {
            start: claims::rfc3339(claim.start_ms),
            end: claims::rfc3339(claim.end_ms),
            fulfilment: pools
                .iter()
                .flat_map(|p| &p.claims)
                .find(|f| f.claim == claim.id)
                .cloned(),
            claim,
        })
        .collect();
    claims.sort_by_key(|c| (c.claim.created_ms, c.claim.id.len(), c.claim.id.clone()));
    Ok(Json(CapacityReport {
        leader: store.leader(),
        claims,
        pools,
    })
    .into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ForecastParams {
    service: String,
    region: Option<String>,
}

async fn forecast(
    State(state): State<AppState>,
    params: Result<axum::extract::Query<ForecastParams>, QueryRejection>,
) -> Result<Response, Refusal> {
    let axum::extract::Query(params) = params.map_err(|rejection| {
        Refusal(
            StatusCode::BAD_REQUEST,
            format!("{rejection}; use ?service=NAME (and &region=NAME)"),
        )
    })?;
    let store = state.store.as_ref();
    let overview = overview(store).await?;
    let service = find_service(&overview.services, &params.service)?;
    let region = params
        .region
        .unwrap_or_else(|| service.primary_region.clone());
    if region != service.primary_region {
        return Err(Refusal(
            StatusCode::CONFLICT,
            format!(
                "service {:?} is served from {}; the leader forecasts serving pools: ask for region {} (`umbra forecast` forecasts any history offline)",
                params.service, service.primary_region, service.primary_region
            ),
        ));
    }
    let leader = store.leader();
    let Some(pool) = store
        .pools()
        .into_iter()
        .find(|p| p.service == params.service && p.region == region)
    else {
        let why = match leader.leader {
            Some(id) if leader.this_node == Some(id) => {
                "this node leads but its executor has not sized the pool yet; ask again in a moment"
                    .to_owned()
            }
            Some(id) => format!("this node does not lead; ask node {id}'s API"),
            None => "no node leads right now; ask again once one does".to_owned(),
        };
        return Err(Refusal(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "no forecast of {}'s pool in {region} here: {why}",
                params.service
            ),
        ));
    };
    Ok(Json(ForecastReport {
        service: pool.service,
        region: pool.region,
        model: pool.forecast,
        slices: pool
            .upcoming
            .into_iter()
            .map(|slice| ForecastSlice {
                start: claims::rfc3339(slice.start_ms),
                slice,
            })
            .collect(),
    })
    .into_response())
}

/// Needs a certificate from the cluster CA (the TLS layer checks it) but no token or role,
/// so health checkers hold no operator secrets.
async fn healthz(State(state): State<AppState>) -> Response {
    Json(Health {
        ok: true,
        leader: state.store.leader(),
    })
    .into_response()
}
