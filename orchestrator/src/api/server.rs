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
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use serde::Deserialize;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use umbra_proto::{Credentials, Identity, Role};

use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::openapi::{ApiDoc, OpenApiJson};
use super::views::{
    AuditEntryView, DEFAULT_MIGRATION_PAGE, DrillBody, DrillView, MAX_MIGRATION_OVERRIDE_MS,
    MAX_MIGRATION_PAGE, MigrationAnswer, MigrationBody, OverviewView, PoolStatus, SliceView,
    Subject,
};
use super::{
    ApiConfig, ApiConfigError, BearerToken, CapacityBody, CapacityReport, ClaimStatus,
    DEFAULT_AUDIT_LIMIT, ErrorBody, ForecastReport, Health, MAX_AUDIT_LIMIT, MigrationStatus,
    RollbackRequest, STATUS_AUDIT_ENTRIES, STATUS_DRILLS, StatusReport, TokenError, Written,
};
use crate::state::claims::MAX_CLAIM_MS;
use crate::state::{
    ClaimRequest, Command, MAX_DRILLS, MigrationRequest, Overview, Plan, Query, QueryAnswer,
    RejectKind, Rejected, find_service, migration_number,
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
        "/v1/drills" => "/v1/drills",
        "/v1/forecast" => "/v1/forecast",
        "/v1/openapi.json" => "/v1/openapi.json",
        "/healthz" => "/healthz",
        p if p == "/ui" || p.starts_with("/ui/") => "/ui/",
        p if p.starts_with("/v1/capacity/") => "/v1/capacity/{id}",
        p if p.starts_with("/v1/migrations/") && p.ends_with("/rollback") => {
            "/v1/migrations/{id}/rollback"
        }
        p if p.starts_with("/v1/migrations/") => "/v1/migrations/{id}",
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

/// The API's routes and their OpenAPI description, built from the same `#[utoipa::path]`
/// annotations so that a route cannot be served undocumented. Every `/v1` route is behind
/// the operator certificate and the token ([`guard`]); `/healthz` needs a certificate only.
fn documented_routes(state: &AppState) -> OpenApiRouter<AppState> {
    let v1 = OpenApiRouter::new()
        .routes(routes!(apply_plan))
        .routes(routes!(create_migration, migrations))
        .routes(routes!(migration))
        .routes(routes!(rollback))
        .routes(routes!(status))
        .routes(routes!(audit))
        .routes(routes!(claim_capacity, capacity))
        .routes(routes!(release_capacity))
        .routes(routes!(record_drill, drills))
        .routes(routes!(forecast))
        .routes(routes!(openapi_json))
        .route_layer(middleware::from_fn_with_state(state.clone(), guard));
    OpenApiRouter::with_openapi(<ApiDoc as utoipa::OpenApi>::openapi())
        .merge(v1)
        .routes(routes!(healthz))
}

fn router(state: AppState) -> axum::Router {
    let (routes, document) = documented_routes(&state).split_for_parts();
    routes
        .merge(super::dashboard::routes())
        .fallback(|| async {
            error(
                StatusCode::NOT_FOUND,
                "no such endpoint; GET /v1/openapi.json describes every endpoint the API serves (POST /v1/plan, POST and GET /v1/migrations, GET /v1/migrations/{id}, POST /v1/migrations/{id}/rollback, GET /v1/status, GET /v1/audit, POST and GET /v1/capacity, DELETE /v1/capacity/{id}, GET /v1/forecast, GET /healthz; the web dashboard is GET /ui/)",
            )
        })
        .method_not_allowed_fallback(|| async {
            error(
                StatusCode::METHOD_NOT_ALLOWED,
                "wrong method for this endpoint: writes are POST (DELETE releases a capacity claim), reads are GET",
            )
        })
        .layer(Extension(OpenApiJson::of(&document)))
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
    let mut tls = tls;
    let mut builder = hyper::server::conn::http1::Builder::new();
    // Also the idle limit between requests of a kept-alive connection: hyper starts it
    // whenever it waits for a request head.
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(handshake_timeout);
    {
        let connection =
            builder.serve_connection(TokioIo::new(&mut tls), TowerToHyperService::new(app));
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
    // However the connection ended (an idle one timed out, a request could not be parsed),
    // end TLS with close_notify, so the client reads a clean end rather than a truncation
    // and drops the connection from its pool instead of failing its next request on it.
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, tls.shutdown()).await;
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
/// a conflict, 409). `subject` names what a command without an id of its own acted on.
async fn write(
    store: &dyn Replicated,
    command: Command,
    subject: Subject,
) -> Result<Response, Refusal> {
    match store.query(Query::Check(Box::new(command.clone()))).await? {
        QueryAnswer::Check(Ok(())) => {}
        QueryAnswer::Check(Err(refusal)) => return Err(refusal.into()),
        other => return Err(garbled(&other)),
    }
    match store.propose(command).await? {
        Ok(applied) => match Written::of(applied.clone(), subject) {
            Some(written) => Ok(Json(written).into_response()),
            None => Err(StoreError::Garbled(format!("unexpected answer {applied:?}")).into()),
        },
        Err(refusal) => Err(refusal.into()),
    }
}

async fn overview(store: &dyn Replicated) -> Result<Overview, Refusal> {
    match store.query(Query::Overview).await? {
        QueryAnswer::Overview(overview) => Ok(*overview),
        other => Err(garbled(&other)),
    }
}

/// Applies a plan: regions, services and schedules, created or updated.
#[utoipa::path(
    post,
    path = "/v1/plan",
    tag = "plan",
    request_body(
        description = "The plan, as examples/plan.toml shows it: TOML text (any content type but JSON), or the same as JSON",
        content(
            (String = "text/plain"),
            (Plan = "application/json"),
        ),
    ),
    responses(
        (status = 200, description = "Applied: how many regions, services and schedules it holds", body = Written),
        (status = 400, description = "Not a valid plan (the message names the setting)", body = ErrorBody),
        (status = 404, description = "It names something that does not exist", body = ErrorBody),
        (status = 409, description = "It clashes with the current state, e.g. it would move a service", body = ErrorBody),
        (status = 413, description = "The body is larger than the API's limit", body = ErrorBody),
        (status = 401, description = "No bearer token, or not this cluster's", body = ErrorBody),
        (status = 403, description = "The client certificate is not an operator's", body = ErrorBody),
        (status = 500, description = "The cluster's answer was not understood (version skew or a bug)", body = ErrorBody),
        (status = 503, description = "No leader, or the cluster is unavailable: retry", body = ErrorBody),
        (status = 504, description = "No answer in time: the write may or may not have applied", body = ErrorBody),
    ),
)]
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
    write(state.store.as_ref(), command, Subject::InAnswer).await
}

/// Creates a migration of a service to another region.
#[utoipa::path(
    post,
    path = "/v1/migrations",
    tag = "migrations",
    request_body = MigrationBody,
    responses(
        (status = 200, description = "The migration exists (new, or the one a schedule made for the same slice)", body = Written),
        (status = 400, description = "Not a valid migration request, e.g. an undeclared region or a cutover time in the past", body = ErrorBody),
        (status = 404, description = "No such service", body = ErrorBody),
        (status = 409, description = "A migration of the service is in flight, or the service is not where `from` says", body = ErrorBody),
        (status = 413, description = "The body is larger than the API's limit", body = ErrorBody),
        (status = 401, description = "No bearer token, or not this cluster's", body = ErrorBody),
        (status = 403, description = "The client certificate is not an operator's", body = ErrorBody),
        (status = 500, description = "The cluster's answer was not understood (version skew or a bug)", body = ErrorBody),
        (status = 503, description = "No leader, or the cluster is unavailable: retry", body = ErrorBody),
        (status = 504, description = "No answer in time: the write may or may not have applied", body = ErrorBody),
    ),
)]
async fn create_migration(State(state): State<AppState>, body: Body) -> Result<Response, Refusal> {
    let bytes = read_body(body, state.max_body_bytes).await?;
    let body = parse_json::<MigrationBody>(&bytes, "migration request")?;
    if let Some((field, ms)) = body.too_long() {
        return Err(Refusal(
            StatusCode::BAD_REQUEST,
            format!(
                "{field} {ms} is longer than a day ({MAX_MIGRATION_OVERRIDE_MS} ms); durations are milliseconds"
            ),
        ));
    }
    let command = Command::CreateMigration {
        request: MigrationRequest::from(body),
        at_ms: SystemClock.now_ms(),
    };
    write(state.store.as_ref(), command, Subject::InAnswer).await
}

/// Asks a migration to roll back: traffic returns to the source.
#[utoipa::path(
    post,
    path = "/v1/migrations/{id}/rollback",
    tag = "migrations",
    params(("id" = String, Path, description = "The migration, e.g. `shop-2`")),
    request_body = RollbackRequest,
    responses(
        (status = 200, description = "The rollback is recorded; the migration ends `rolled_back`", body = Written),
        (status = 400, description = "No reason given, or not a valid rollback request", body = ErrorBody),
        (status = 404, description = "No such migration", body = ErrorBody),
        (status = 409, description = "The migration has ended or is rolling back already", body = ErrorBody),
        (status = 413, description = "The body is larger than the API's limit", body = ErrorBody),
        (status = 401, description = "No bearer token, or not this cluster's", body = ErrorBody),
        (status = 403, description = "The client certificate is not an operator's", body = ErrorBody),
        (status = 500, description = "The cluster's answer was not understood (version skew or a bug)", body = ErrorBody),
        (status = 503, description = "No leader, or the cluster is unavailable: retry", body = ErrorBody),
        (status = 504, description = "No answer in time: the write may or may not have applied", body = ErrorBody),
    ),
)]
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
        id: id.clone(),
        reason: request.reason,
        at_ms: SystemClock.now_ms(),
    };
    write(state.store.as_ref(), command, Subject::Migration(id)).await
}

/// The query of `GET /v1/migrations`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct MigrationParams {
    /// `true`: the archive (finished migrations no service depends on any more, kept up to
    /// a bound, the oldest dropped first); `false` (the default): the live migrations and
    /// each service's latest and latest completed, as `GET /v1/status` lists them.
    archived: Option<bool>,
    /// Only migrations created before this one's number (`shop-12` → 12), to page on.
    before: Option<u64>,
    /// Most migrations returned, 1..=1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
}

/// Migrations, newest created first: the current ones, or with `?archived=true` the archive.
#[utoipa::path(
    get,
    path = "/v1/migrations",
    tag = "migrations",
    params(MigrationParams),
    responses(
        (status = 200, description = "Migrations created before `before`, newest first", body = Vec<MigrationStatus>),
        (status = 400, description = "`archived`, `before` or `limit` is not valid", body = ErrorBody),
        (status = 401, description = "No bearer token, or not this cluster's", body = ErrorBody),
        (status = 403, description = "The client certificate is not an operator's", body = ErrorBody),
        (status = 500, description = "The cluster's answer was not understood (version skew or a bug)", body = ErrorBody),
        (status = 503, description = "No leader, or the cluster is unavailable: retry", body = ErrorBody),
        (status = 504, description = "No answer in time", body = ErrorBody),
    ),
)]
async fn migrations(
    State(state): State<AppState>,
    params: Result<axum::extract::Query<MigrationParams>, QueryRejection>,
) -> Result<Response, Refusal> {
    let axum::extract::Query(params) = params.map_err(|rejection| {
        Refusal(
            StatusCode::BAD_REQUEST,
            format!("{rejection}; use ?archived=true|false&before=N&limit=M"),
        )
    })?;
    let limit = params.limit.unwrap_or(DEFAULT_MIGRATION_PAGE);
    if limit == 0 || limit > MAX_MIGRATION_PAGE {
        return Err(Refusal(
            StatusCode::BAD_REQUEST,
            format!(
                "limit must be 1..={MAX_MIGRATION_PAGE}; page with ?before=<number of the last id seen>"
            ),
        ));
    }
    let store = state.store.as_ref();
    let before = params.before.unwrap_or(u64::MAX);
    let records = if params.archived == Some(true) {
        match store
            .query(Query::Archived {
                before: params.before,
                limit,
            })
            .await?
        {
            QueryAnswer::Migrations(records) => records,
            other => return Err(garbled(&other)),
        }
    } else {
        let mut current: Vec<_> = overview(store)
            .await?
            .migrations
            .into_values()
            .filter(|m| migration_number(&m.spec.id) < before)
            .collect();
        current.sort_by_key(|m| std::cmp::Reverse(migration_number(&m.spec.id)));
        current.truncate(limit);
        current
    };
    let list: Vec<MigrationStatus> = records
        .iter()
        .map(|record| MigrationStatus::of(record, store.observations(&record.spec.id).as_ref()))
        .collect();
    Ok(Json(list).into_response())
}

/// One migration, current or archived.
#[utoipa::path(
    get,
    path = "/v1/migrations/{id}",
    tag = "migrations",
    params(("id" = String, Path, description = "The migration, e.g. `shop-2`")),
    responses(
        (status = 200, description = "The migration, and whether it is archived", body = MigrationAnswer),
        (status = 404, description = "No such migration (never created, or dropped from the archive)", body = ErrorBody),
        (status = 401, description = "No bearer token, or not this cluster's", body = ErrorBody),
        (status = 403, description = "The client certificate is not an operator's", body = ErrorBody),
        (status = 500, description = "The cluster's answer was not understood (version skew or a bug)", body = ErrorBody),
        (status = 503, description = "No leader, or the cluster is unavailable: retry", body = ErrorBody),
        (status = 504, description = "No answer in time", body = ErrorBody),
    ),
)]
async fn migration(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, Refusal> {
    let store = state.store.as_ref();
    match store.query(Query::Migration { id: id.clone() }).await? {
        QueryAnswer::Migration {
            record: Some(record),
            archived,
        } => Ok(Json(MigrationAnswer {
            migration: MigrationStatus::of(&record, store.observations(&id).as_ref()),
            archived,
        })
        .into_response()),
        QueryAnswer::Migration { record: None, .. } => Err(Refusal(
            StatusCode::NOT_FOUND,
            format!(
                "no migration {id:?}; `GET /v1/migrations` lists the current ones and `?archived=true` the archive (the oldest finished ones leave it)"
            ),
        )),
        other => Err(garbled(&other)),
    }
}

/// What the cluster is doing: the leader, every migration, the serving pools and the most
/// recent audit entries.
#[utoipa::path(
    get,
    path = "/v1/status",
    tag = "status",
    responses(
        (status = 200, description = "The cluster's status", body = StatusReport),
        (status = 401, description = "No bearer token, or not this cluster's", body = ErrorBody),
        (status = 403, description = "The client certificate is not an operator's", body = ErrorBody),
        (status = 500, description = "The cluster's answer was not understood (version skew or a bug)", body = ErrorBody),
        (status = 503, description = "No leader, or the cluster is unavailable: retry", body = ErrorBody),
        (status = 504, description = "No answer in time", body = ErrorBody),
    ),
)]
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
    migrations.sort_by_key(|m| std::cmp::Reverse(migration_number(&m.id)));
    Ok(Json(StatusReport {
        leader: store.leader(),
        overview: OverviewView::from(overview),
        migrations,
        recent_audit: recent_audit.iter().map(AuditEntryView::from).collect(),
        pools: store.pools().into_iter().map(PoolStatus::from).collect(),
        drills: recorded_drills(store, STATUS_DRILLS).await?,
    })
    .into_response())
}

/// The newest `limit` recorded drills, newest first.
async fn recorded_drills(store: &dyn Replicated, limit: usize) -> Result<Vec<DrillView>, Refusal> {
    match store.query(Query::Drills { limit }).await? {
        QueryAnswer::Drills(drills) => Ok(drills.into_iter().map(DrillView::from).collect()),
        other => Err(garbled(&other)),
    }
}

/// Records a drill's verdict in the replicated state: what `umbra drill` sends when it ends,
/// so every operator sees the cluster's drills. The state keeps the newest 100.
#[utoipa::path(
    post,
    path = "/v1/drills",
    tag = "drills",
    request_body = DrillBody,
    responses(
        (status = 200, description = "Recorded, with its id", body = Written),
        (status = 400, description = "Not a valid drill report (the message names the field), or an undeclared region", body = ErrorBody),
        (status = 413, description = "The body is larger than the API's limit", body = ErrorBody),
        (status = 401, description = "No bearer token, or not this cluster's", body = ErrorBody),
        (status = 403, description = "The client certificate is not an operator's", body = ErrorBody),
        (status = 500, description = "The cluster's answer was not understood (version skew or a bug)", body = ErrorBody),
        (status = 503, description = "No leader, or the cluster is unavailable: retry", body = ErrorBody),
        (status = 504, description = "No answer in time: the write may or may not have applied", body = ErrorBody),
    ),
)]
async fn record_drill(State(state): State<AppState>, body: Body) -> Result<Response, Refusal> {
    let bytes = read_body(body, state.max_body_bytes).await?;
    let body = parse_json::<DrillBody>(&bytes, "drill report")?;
    let command = Command::RecordDrill {
        drill: body.into(),
        at_ms: SystemClock.now_ms(),
    };
    write(state.store.as_ref(), command, Subject::InAnswer).await
}

/// The query of `GET /v1/drills`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct DrillParams {
    /// Most drills returned, 1..=100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    limit: Option<usize>,
}

/// The drills recorded in the cluster, newest first.
#[utoipa::path(
    get,
    path = "/v1/drills",
    tag = "drills",
    params(DrillParams),
    responses(
        (status = 200, description = "Recorded drills, newest first", body = Vec<DrillView>),
        (status = 400, description = "`limit` is not a whole number from 1 to 100", body = ErrorBody),
        (status = 401, description = "No bearer token, or not this cluster's", body = ErrorBody),
        (status = 403, description = "The client certificate is not an operator's", body = ErrorBody),
        (status = 500, description = "The cluster's answer was not understood (version skew or a bug)", body = ErrorBody),
        (status = 503, description = "No leader, or the cluster is unavailable: retry", body = ErrorBody),
        (status = 504, description = "No answer in time", body = ErrorBody),
    ),
)]
async fn drills(
    State(state): State<AppState>,
    params: Result<axum::extract::Query<DrillParams>, QueryRejection>,
) -> Result<Response, Refusal> {
    let out_of_range = || {
        Refusal(
            StatusCode::BAD_REQUEST,
            format!("limit must be a whole number from 1 to {MAX_DRILLS}"),
        )
    };
    let axum::extract::Query(params) = params.map_err(|_| out_of_range())?;
    let limit = params.limit.unwrap_or(20);
    if !(1..=MAX_DRILLS).contains(&limit) {
        return Err(out_of_range());
    }
    let drills = recorded_drills(state.store.as_ref(), limit).await?;
    Ok(Json(drills).into_response())
}

/// The query of `GET /v1/audit`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct AuditParams {
    /// Entries after this Raft log index (default 0: from the start).
    after: Option<u64>,
    /// Most entries returned, 1..=1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
}

/// The audit log: every change with its reason, oldest first, a page at a time.
#[utoipa::path(
    get,
    path = "/v1/audit",
    tag = "status",
    params(AuditParams),
    responses(
        (status = 200, description = "Audit entries with index > `after`, oldest first", body = Vec<AuditEntryView>),
        (status = 400, description = "`after` or `limit` is not a whole number in range", body = ErrorBody),
        (status = 401, description = "No bearer token, or not this cluster's", body = ErrorBody),
        (status = 403, description = "The client certificate is not an operator's", body = ErrorBody),
        (status = 500, description = "The cluster's answer was not understood (version skew or a bug)", body = ErrorBody),
        (status = 503, description = "No leader, or the cluster is unavailable: retry", body = ErrorBody),
        (status = 504, description = "No answer in time", body = ErrorBody),
    ),
)]
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
        QueryAnswer::Audit(entries) => {
            let entries: Vec<AuditEntryView> = entries.iter().map(AuditEntryView::from).collect();
            Ok(Json(entries).into_response())
        }
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

/// Claims serving capacity for a service in its serving region: from now (a request) or for
/// a window (a reservation).
#[utoipa::path(
    post,
    path = "/v1/capacity",
    tag = "capacity",
    request_body = CapacityBody,
    responses(
        (status = 200, description = "The claim exists", body = Written),
        (status = 400, description = "Not a valid claim, e.g. a window in the past or too long", body = ErrorBody),
        (status = 404, description = "No such service", body = ErrorBody),
        (status = 409, description = "Past the service's or the region's limit (the message says how many fit), or not the serving region", body = ErrorBody),
        (status = 413, description = "The body is larger than the API's limit", body = ErrorBody),
        (status = 401, description = "No bearer token, or not this cluster's", body = ErrorBody),
        (status = 403, description = "The client certificate is not an operator's", body = ErrorBody),
        (status = 500, description = "The cluster's answer was not understood (version skew or a bug)", body = ErrorBody),
        (status = 503, description = "No leader, or the cluster is unavailable: retry", body = ErrorBody),
        (status = 504, description = "No answer in time: the write may or may not have applied", body = ErrorBody),
    ),
)]
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
    write(state.store.as_ref(), command, Subject::InAnswer).await
}

/// Gives a capacity claim back.
#[utoipa::path(
    delete,
    path = "/v1/capacity/{id}",
    tag = "capacity",
    params(("id" = String, Path, description = "The claim, e.g. `cap-2`")),
    responses(
        (status = 200, description = "The claim is released", body = Written),
        (status = 400, description = "Not a valid release", body = ErrorBody),
        (status = 404, description = "No such claim", body = ErrorBody),
        (status = 409, description = "It clashes with the current state", body = ErrorBody),
        (status = 401, description = "No bearer token, or not this cluster's", body = ErrorBody),
        (status = 403, description = "The client certificate is not an operator's", body = ErrorBody),
        (status = 500, description = "The cluster's answer was not understood (version skew or a bug)", body = ErrorBody),
        (status = 503, description = "No leader, or the cluster is unavailable: retry", body = ErrorBody),
        (status = 504, description = "No answer in time: the write may or may not have applied", body = ErrorBody),
    ),
)]
async fn release_capacity(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, Refusal> {
    let command = Command::ReleaseCapacity {
        id: id.clone(),
        at_ms: SystemClock.now_ms(),
    };
    write(state.store.as_ref(), command, Subject::Capacity(id)).await
}

/// The capacity claims in force or ahead, how the pools met them, and the pools.
#[utoipa::path(
    get,
    path = "/v1/capacity",
    tag = "capacity",
    responses(
        (status = 200, description = "Claims and pools", body = CapacityReport),
        (status = 401, description = "No bearer token, or not this cluster's", body = ErrorBody),
        (status = 403, description = "The client certificate is not an operator's", body = ErrorBody),
        (status = 500, description = "The cluster's answer was not understood (version skew or a bug)", body = ErrorBody),
        (status = 503, description = "No leader, or the cluster is unavailable: retry", body = ErrorBody),
        (status = 504, description = "No answer in time", body = ErrorBody),
    ),
)]
async fn capacity(State(state): State<AppState>) -> Result<Response, Refusal> {
    let store = state.store.as_ref();
    let overview = overview(store).await?;
    let pools = store.pools();
    let now = SystemClock.now_ms();
    let mut claims: Vec<_> = overview
        .capacity
        .into_values()
        .filter(|c| c.end_ms > now)
        .collect();
    claims.sort_by_key(|c| (c.created_ms, c.id.len(), c.id.clone()));
    Ok(Json(CapacityReport {
        leader: store.leader(),
        claims: claims
            .into_iter()
            .map(|claim| ClaimStatus::of(claim, &pools))
            .collect(),
        pools: pools.into_iter().map(PoolStatus::from).collect(),
    })
    .into_response())
}

/// The query of `GET /v1/forecast`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ForecastParams {
    /// The service.
    service: String,
    /// Its serving region (the default; another region is refused).
    region: Option<String>,
}

/// The demand forecast the leader holds for a service's serving pool, slice by slice.
#[utoipa::path(
    get,
    path = "/v1/forecast",
    tag = "capacity",
    params(ForecastParams),
    responses(
        (status = 200, description = "The coming slices of the forecast", body = ForecastReport),
        (status = 400, description = "No `service`, or an unknown parameter", body = ErrorBody),
        (status = 404, description = "No such service", body = ErrorBody),
        (status = 409, description = "The region is not the service's serving region", body = ErrorBody),
        (status = 401, description = "No bearer token, or not this cluster's", body = ErrorBody),
        (status = 403, description = "The client certificate is not an operator's", body = ErrorBody),
        (status = 500, description = "The cluster's answer was not understood (version skew or a bug)", body = ErrorBody),
        (status = 503, description = "This node does not lead, or has no forecast yet: ask the leader, or again", body = ErrorBody),
        (status = 504, description = "No answer in time", body = ErrorBody),
    ),
)]

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
        slices: pool.upcoming.into_iter().map(SliceView::from).collect(),
    })
    .into_response())
}

/// This description of the API, OpenAPI 3.1.
#[utoipa::path(
    get,
    path = "/v1/openapi.json",
    tag = "meta",
    responses(
        (status = 200, description = "The OpenAPI 3.1 document", body = Object, content_type = "application/json"),
        (status = 401, description = "No bearer token, or not this cluster's", body = ErrorBody),
        (status = 403, description = "The client certificate is not an operator's", body = ErrorBody),
        (status = 504, description = "No answer in time", body = ErrorBody),
    ),
)]
async fn openapi_json(Extension(document): Extension<OpenApiJson>) -> Response {
    document.into_response()
}

/// Whether the API answers, and who leads. Needs a certificate from the cluster CA (the TLS
/// layer checks it) but no token or role, so health checkers hold no operator secrets.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "meta",
    security(("operator_certificate" = [])),
    responses(
        (status = 200, description = "The API answers", body = Health),
        (status = 504, description = "No answer in time", body = ErrorBody),
    ),
)]
async fn healthz(State(state): State<AppState>) -> Response {
    Json(Health {
        ok: true,
        leader: state.store.leader(),
    })
    .into_response()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use axum::http::Method;
    use tower::ServiceExt;

    use super::*;
    use crate::store::MemoryReplicated;

    const METHODS: [Method; 5] = [
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::PATCH,
    ];

    fn state() -> AppState {
        AppState {
            store: Arc::new(MemoryReplicated::new()),
            metrics: ApiMetrics::register(&prometheus::Registry::new()).expect("a new registry"),
            token: Arc::new(BearerToken::new("0123456789abcdef0123").expect("a usable token")),
            max_body_bytes: 1 << 10,
            request_timeout: Duration::from_secs(5),
        }
    }

    /// The path templates the served router holds. axum keeps no public list of its routes;
    /// its `Debug` form names every path it matches (its routes first, then the fallback
    /// router's catch-all paths, which are not routes), which is what a new route changes.
    fn served_paths(router: &axum::Router) -> BTreeSet<String> {
        let debug = format!("{router:?}");
        let routes = debug
            .split("fallback_router")
            .next()
            .expect("split yields at least one part");
        routes
            .split('"')
            .skip(1)
            .step_by(2)
            .filter(|text| text.starts_with('/'))
            .map(str::to_owned)
            .collect()
    }

    #[tokio::test]
    async fn every_route_the_router_serves_is_in_the_openapi_document() {
        let state = state();
        let (_, document) = documented_routes(&state).split_for_parts();
        let router = router(state);
        // The dashboard's page and assets are not part of the operator API (api::dashboard).
        let paths: BTreeSet<String> = served_paths(&router)
            .into_iter()
            .filter(|path| path != "/ui" && !path.starts_with("/ui/"))
            .collect();
        assert!(
            paths.contains("/v1/status") && paths.contains("/healthz"),
            "the router's paths could not be read from its Debug form: {paths:?}"
        );
        // Ask the router itself which methods each path answers: a method it does not route
        // gets the method-not-allowed fallback, whatever the document says.
        let mut served = BTreeSet::new();
        for path in &paths {
            let uri = path.replace("{id}", "x-1");
            for method in METHODS {
                let request = Request::builder()
                    .method(method.clone())
                    .uri(&uri)
                    .body(Body::empty())
                    .expect("a valid request");
                let answer = router.clone().oneshot(request).await.expect("infallible");
                if answer.status() != StatusCode::METHOD_NOT_ALLOWED {
                    served.insert((method.to_string(), path.clone()));
                }
            }
        }
        let mut documented = BTreeSet::new();
        for (path, item) in &document.paths.paths {
            for (method, operation) in [
                (Method::GET, &item.get),
                (Method::POST, &item.post),
                (Method::PUT, &item.put),
                (Method::DELETE, &item.delete),
                (Method::PATCH, &item.patch),
            ] {
                if operation.is_some() {
                    documented.insert((method.to_string(), path.clone()));
                }
            }
        }
        assert_eq!(served, documented, "served routes vs documented operations");
        assert!(documented.contains(&("GET".to_owned(), "/v1/openapi.json".to_owned())));
    }

    #[test]
    fn the_document_is_openapi_3_1_with_both_credentials_required_on_v1() {
        let (_, document) = documented_routes(&state()).split_for_parts();
        let json = serde_json::to_value(&document).expect("encodes");
        assert!(
            json["openapi"]
                .as_str()
                .is_some_and(|v| v.starts_with("3.1"))
        );
        let schemes = &json["components"]["securitySchemes"];
        assert_eq!(schemes["bearer_token"]["scheme"], "bearer");
        assert_eq!(schemes["operator_certificate"]["type"], "mutualTLS");
        assert_eq!(
            json["security"],
            serde_json::json!([{"operator_certificate": [], "bearer_token": []}])
        );
        let instant = &json["components"]["schemas"]["MigrationStatus"]["properties"]["cutover_at"];
        assert!(instant.to_string().contains("Timestamp"), "{instant}");
        assert_eq!(
            json["components"]["schemas"]["Timestamp"]["format"],
            "date-time"
        );
    }
}
