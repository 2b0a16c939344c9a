//! The operator API end to end over real HTTPS on loopback, with certificates from
//! `umbra_proto::certs`, against the in-memory replicated store: who may call (operator
//! certificate and token), what bad input gets (a clear JSON error, nothing changed), and
//! that a migration shows up in the status as a user would read it.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{Method, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use umbra_orchestrator::api::{self, ApiClient, ApiConfig, BearerToken, ClientError};
use umbra_orchestrator::api::{AuditEventView, MigrationAnswer, MigrationStatus, Written};
use umbra_orchestrator::migration::Phase;
use umbra_orchestrator::migration::{Observations, ReplicationObserved};
use umbra_orchestrator::state::plan::EXAMPLE_PLAN_TOML;
use umbra_orchestrator::state::{Command, MigrationRequest, Plan};
use umbra_orchestrator::store::{MemoryReplicated, Replicated};
use umbra_proto::certs::{self, Layout};
use umbra_proto::{Credentials, Identity, Role};
use umbra_testkit::TEST_TOKEN;
use umbra_tests::{MemoryApi, plan_without_schedules};

const TOKEN: &str = TEST_TOKEN;

/// The example plan without its schedule: these tests create every migration themselves.
/// `plan` as the TOML text an operator sends.
fn text(plan: &Plan) -> String {
    toml::to_string(plan).expect("a plan serializes")
}

/// The API under test: [`MemoryApi`] with this file's helpers.
struct Harness(MemoryApi);

impl std::ops::Deref for Harness {
    type Target = MemoryApi;
    fn deref(&self) -> &MemoryApi {
        &self.0
    }
}

impl Harness {
    async fn start() -> Harness {
        Harness(MemoryApi::start().await.expect("the API starts"))
    }

    fn url(&self) -> String {
        format!("https://{}", self.api.local_addr())
    }

    fn client_as(&self, role: Role, id: &str, token: &str) -> ApiClient {
        let identity = Identity::new(role, id).expect("identity");
        let credentials =
            Credentials::load(&self.secrets.certs_dir, &identity).expect("credentials");
        ApiClient::new(
            &self.url(),
            &credentials,
            BearerToken::new(token).expect("token"),
        )
        .expect("client")
        .with_timeout(Duration::from_secs(30))
    }

    fn operator(&self) -> ApiClient {
        self.client_as(Role::Operator, "admin", TOKEN)
    }
}

fn refused(result: Result<impl std::fmt::Debug, ClientError>) -> (StatusCode, String) {
    match result {
        Err(ClientError::Refused { status, message }) => (status, message),
        other => panic!("expected an HTTP refusal, got {other:?}"),
    }
}

fn migration(to: &str) -> MigrationRequest {
    // Far ahead: the migration stays Planned while the test looks at it.
    MigrationRequest::new("shop", to, 4_000_000_000_000)
}

/// Sends `request` as raw HTTP/1.1 over TLS with an operator certificate and returns the
/// status line and the body, to see exactly what a client without our library gets.
async fn raw_https(certs: &Path, address: SocketAddr, request: &str) -> (String, String) {
    let identity = Identity::new(Role::Operator, "admin").unwrap();
    let credentials = Credentials::load(certs, &identity).unwrap();
    let mut tls = credentials.client_config().unwrap();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
    let tcp = tokio::net::TcpStream::connect(address).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("orchestrator.umbra").unwrap();
    let mut stream = connector.connect(name, tcp).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut answer))
        .await
        .expect("the server answers and closes")
        .ok();
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer.lines().next().unwrap_or_default().to_owned();
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test]
async fn a_missing_or_wrong_token_is_refused_with_a_json_error_and_changes_nothing() {
    let h = Harness::start().await;
    let (status, body) = raw_https(
        &h.secrets.certs_dir,
        h.api.local_addr(),
        "POST /v1/plan HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(status.contains("401"), "{status}");
    let error: serde_json::Value = serde_json::from_str(&body).expect("a JSON body");
    let message = error["error"].as_str().expect("an error field");
    assert!(message.contains("--token-file"), "{message}");

    let wrong = h.client_as(Role::Operator, "admin", "not-the-token-0123456789");
    let (status, message) = refused(wrong.apply_plan_toml(EXAMPLE_PLAN_TOML).await);
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(message.contains("not this cluster's"), "{message}");
    assert!(!message.contains(TOKEN), "the token must not be echoed");
    assert!(h.store.state().audit().is_empty(), "nothing was applied");
}

#[tokio::test]
async fn an_agent_certificate_is_refused_even_with_the_token() {
    let h = Harness::start().await;
    let agent = h.client_as(Role::Agent, "eu-west", TOKEN);
    let (status, message) = refused(agent.apply_plan_toml(EXAMPLE_PLAN_TOML).await);
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(message.contains("operator certificates only"), "{message}");
    let (status, _) = refused(agent.status().await);
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(h.store.state().audit().is_empty(), "nothing was applied");
}

fn expect_tls_refusal(result: Result<impl std::fmt::Debug, ClientError>) -> String {
    match result {
        Err(error @ ClientError::Tls { .. }) => {
            let message = error.to_string();
            assert!(message.contains("same cluster CA"), "{message}");
            message
        }
        other => panic!("expected a TLS refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn certificates_from_another_ca_are_refused_in_the_handshake() {
    let h = Harness::start().await;
    let other = tempfile::tempdir().unwrap();
    certs::init(&Layout::default(), other.path()).unwrap();
    let identity = Identity::new(Role::Operator, "admin").unwrap();
    let token = || BearerToken::new(TOKEN).unwrap();

    // A client of another cluster refuses this cluster's server certificate.
    let foreign = Credentials::load(other.path(), &identity).unwrap();
    let client = ApiClient::new(&h.url(), &foreign, token()).unwrap();
    expect_tls_refusal(client.status().await);

    // The server refuses a client certificate from another CA, even when the client trusts
    // the right CA (TLS 1.3: the refusal arrives as an alert on the first read).
    let read = |dir: &Path, file: &str| std::fs::read_to_string(dir.join(file)).unwrap();
    let mixed = Credentials::from_pem(
        &read(&h.secrets.certs_dir, "ca.pem"),
        &read(other.path(), "operator-admin.pem"),
        &read(other.path(), "operator-admin.key"),
    )
    .unwrap();
    let client = ApiClient::new(&h.url(), &mixed, token()).unwrap();
    let message = expect_tls_refusal(client.status().await);
    assert!(message.to_lowercase().contains("alert"), "{message}");
    assert!(h.store.state().audit().is_empty());
}

#[tokio::test]
async fn a_plan_naming_an_unknown_region_is_refused_with_the_states_message() {
    let h = Harness::start().await;
    let client = h.operator();
    let applied = client
        .apply_plan_toml(&text(&plan_without_schedules()))
        .await
        .expect("the plan applies");
    assert_eq!(
        applied,
        Written::Plan {
            regions: 2,
            services: 1,
            schedules: 0
        }
    );
    let before = client.status().await.unwrap();

    let mut bad = plan_without_schedules();
    bad.services[0].primary_region = "mars-north".to_owned();
    let (status, message) = refused(client.apply_plan_toml(&text(&bad)).await);
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        message.contains("\"mars-north\"") && message.contains("not declared"),
        "{message}"
    );
    let after = client.status().await.unwrap();
    assert_eq!(before.overview, after.overview, "nothing changed");
    assert_eq!(
        h.store.state().audit().len(),
        1,
        "the refusal cost no entry"
    );
}

#[tokio::test]
async fn a_malformed_plan_is_refused_with_line_and_column() {
    let h = Harness::start().await;
    let client = h.operator();
    // The example plan with a number where its first front's "ip:port" belongs.
    let front = format!("front = {:?}", plan_without_schedules().regions[0].front);
    let bad = EXAMPLE_PLAN_TOML.replacen(&front, "front = 5", 1);
    let line = 1 + bad.lines().position(|l| l == "front = 5").expect("a front");
    let (status, message) = refused(client.apply_plan_toml(&bad).await);
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(message.contains(&format!("line {line}")), "{message}");
    assert!(h.store.state().audit().is_empty());
}

#[tokio::test]
async fn migrate_then_status_shows_it_planned_with_readiness_once_observed() {
    let h = Harness::start().await;
    let client = h.operator();
    client
        .apply_plan_toml(&text(&plan_without_schedules()))
        .await
        .unwrap();
    let Written::Migration { id } = client.migrate(&migration("eu-west")).await.unwrap() else {
        panic!("expected a migration id");
    };
    let report = client.status().await.unwrap();
    let shown = report
        .migrations
        .iter()
        .find(|m| m.id == id)
        .expect("the migration is listed");
    assert_eq!(shown.phase, "planned");
    assert_eq!(
        (shown.from.as_str(), shown.to.as_str()),
        ("us-east", "eu-west")
    );
    assert_eq!(shown.stages_done, 0);
    assert_eq!(
        shown.stages_total, 9,
        "5 stages + 3 steps + draining/completed"
    );
    assert!(shown.readiness.is_none(), "nothing observed yet");
    assert!(
        report
            .recent_audit
            .iter()
            .any(|e| e.subject == id && matches!(e.event, AuditEventView::MigrationCreated { .. })),
        "{:?}",
        report.recent_audit
    );

    h.store.observation_board().publish(
        &id,
        Observations {
            shadow_serving: 1,
            shadow_warm: 0,
            replication: Some(ReplicationObserved {
                lag: 0,
                promoted: false,
                source_fenced: false,
                fence_lifted: false,
            }),
            ..Observations::default()
        },
    );
    let report = client.status().await.unwrap();
    let readiness = report.migrations[0].readiness.as_ref().expect("observed");
    assert!(
        readiness.score < 100,
        "warm-up has not passed: {readiness:?}"
    );
    assert!(readiness.gates.iter().any(|g| g.name == "warm" && !g.holds));

    // A second migration of the same service conflicts with the one in flight.
    let (status, message) = refused(client.migrate(&migration("eu-west")).await);
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(message.contains("in flight"), "{message}");
    let audit = client.audit(0, 10).await.unwrap();
    assert_eq!(audit.len(), 2, "plan and creation: {audit:?}");
}

#[tokio::test]
async fn rollback_of_an_unknown_id_is_404_and_of_a_known_one_is_recorded() {
    let h = Harness::start().await;
    let client = h.operator();
    client
        .apply_plan_toml(&text(&plan_without_schedules()))
        .await
        .unwrap();
    let (status, message) = refused(client.rollback("shop-99", "drill").await);
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(message.contains("shop-99"), "{message}");

    let Written::Migration { id } = client.migrate(&migration("eu-west")).await.unwrap() else {
        panic!("expected a migration id");
    };
    let (status, message) = refused(client.rollback(&id, "  ").await);
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(message.contains("reason"), "{message}");
    client.rollback(&id, "change freeze").await.unwrap();
    let report = client.status().await.unwrap();
    assert_eq!(report.migrations[0].phase, "rolling_back");
    let last = report.recent_audit.last().unwrap();
    assert!(last.reason.contains("change freeze"), "{last:?}");
    // Rolling back again clashes with the migration's phase: 409, and costs no entry.
    let entries = h.store.state().audit().len();
    let (status, message) = refused(client.rollback(&id, "again").await);
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(message.contains("nothing to roll back"), "{message}");
    assert_eq!(h.store.state().audit().len(), entries);
}

#[tokio::test]
async fn an_archived_migration_is_still_found_by_id_and_listed_with_archived_true() {
    let h = Harness::start().await;
    let client = h.operator();
    client
        .apply_plan_toml(&text(&plan_without_schedules()))
        .await
        .unwrap();
    let Written::Migration { id: first } = client.migrate(&migration("eu-west")).await.unwrap()
    else {
        panic!("expected a migration id");
    };
    client.rollback(&first, "drill").await.unwrap();
    // The executor's part: the rollback is confirmed and the migration ends.
    let finished = h
        .store
        .propose(Command::Transition {
            id: first.clone(),
            from: Phase::RollingBack,
            to: Phase::RolledBack,
            reason: "share 0 confirmed on the source".to_owned(),
            shadow_instances: None,
            rollback_ms: Some(400),
            term: 1,
            at_ms: 1,
        })
        .await
        .unwrap();
    assert!(finished.is_ok(), "{finished:?}");
    // Still the service's latest migration: current, not archived.
    let answer: MigrationAnswer = client
        .call(Method::GET, &format!("/v1/migrations/{first}"), None)
        .await
        .unwrap();
    assert!(!answer.archived);
    assert_eq!(answer.migration.phase, "rolled_back");

    // A newer migration of the service makes it history.
    let Written::Migration { id: second } = client.migrate(&migration("eu-west")).await.unwrap()
    else {
        panic!("expected a migration id");
    };
    let answer: MigrationAnswer = client
        .call(Method::GET, &format!("/v1/migrations/{first}"), None)
        .await
        .unwrap();
    assert!(answer.archived, "{answer:?}");
    assert_eq!(answer.migration.id, first);
    let report = client.status().await.unwrap();
    let ids: Vec<&str> = report.migrations.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(
        ids,
        vec![second.as_str()],
        "the status shows what is current"
    );
    let current: Vec<MigrationStatus> = client
        .call(Method::GET, "/v1/migrations", None)
        .await
        .unwrap();
    assert_eq!(current.len(), 1);
    assert_eq!(current[0].id, second);
    let archived: Vec<MigrationStatus> = client
        .call(Method::GET, "/v1/migrations?archived=true&limit=10", None)
        .await
        .unwrap();
    assert_eq!(archived.len(), 1);
    assert_eq!(archived[0].id, first);

    let (status, message) = refused(
        client
            .call::<MigrationAnswer>(Method::GET, "/v1/migrations/shop-99", None)
            .await,
    );
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(message.contains("archived=true"), "{message}");
    for bad in ["?limit=0", "?archived=maybe", "?colour=blue"] {
        let (status, message) = refused(
            client
                .call::<Vec<MigrationStatus>>(Method::GET, &format!("/v1/migrations{bad}"), None)
                .await,
        );
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {message}");
        assert!(
            message.contains("?archived=") || message.contains("limit"),
            "{bad}: {message}"
        );
    }
}

#[tokio::test]
async fn bad_requests_get_json_errors_that_say_what_to_do() {
    let h = Harness::start().await;
    let client = h.operator();
    client
        .apply_plan_toml(&text(&plan_without_schedules()))
        .await
        .unwrap();
    // An undeclared region is wrong input (400); an undeclared service is not found (404).
    let (status, message) = refused(client.migrate(&migration("mars-north")).await);
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(message.contains("\"mars-north\""), "{message}");
    let mut unknown_service = migration("eu-west");
    unknown_service.service = "cart".to_owned();
    let (status, message) = refused(client.migrate(&unknown_service).await);
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(message.contains("\"cart\""), "{message}");
    // shop is served from us-east: a declared but wrong source clashes with the state (409).
    let mut wrong_source = migration("eu-west");
    wrong_source.from = Some("eu-west".to_owned());
    let (status, message) = refused(client.migrate(&wrong_source).await);
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(message.contains("served from us-east"), "{message}");

    let (status, message) = refused(
        client
            .call::<serde_json::Value>(Method::GET, "/v1/audit?limit=100000", None)
            .await,
    );
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(message.contains("limit"), "{message}");

    let (status, _) = refused(
        client
            .call::<serde_json::Value>(Method::GET, "/v1/nothing", None)
            .await,
    );
    assert_eq!(status, StatusCode::NOT_FOUND);

    let (status, _) = refused(
        client
            .call::<serde_json::Value>(Method::GET, "/v1/plan", None)
            .await,
    );
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);

    let huge = format!(
        "# {}\n{}",
        "x".repeat(api::DEFAULT_MAX_BODY_BYTES),
        text(&plan_without_schedules())
    );
    let (status, message) = refused(client.apply_plan_toml(&huge).await);
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(message.contains("bytes"), "{message}");

    let health = client.health().await.unwrap();
    assert!(health.ok);
    assert_eq!(
        h.store.state().audit().len(),
        1,
        "only the plan was applied"
    );

    let mut text = String::new();
    prometheus::TextEncoder::new()
        .encode_utf8(&h.registry.gather(), &mut text)
        .unwrap();
    for line in [
        r#"umbra_api_requests_total{route="/v1/plan",status="200"} 1"#,
        r#"umbra_api_requests_total{route="/v1/plan",status="413"} 1"#,
        r#"umbra_api_requests_total{route="/v1/plan",status="405"} 1"#,
        r#"umbra_api_requests_total{route="other",status="404"} 1"#,
    ] {
        assert!(text.contains(line), "{line} missing from:\n{text}");
    }
}

#[tokio::test]
async fn silent_and_idle_clients_are_dropped_after_the_handshake_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    certs::init(&Layout::default(), &certs).unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, TOKEN).unwrap();
    let credentials = Credentials::load(&certs, &Identity::orchestrator(1)).unwrap();
    let mut config = ApiConfig::new("127.0.0.1:0".parse().unwrap(), token_file);
    config.handshake_timeout_ms = 200;
    let running = api::serve(
        &config,
        &credentials,
        Arc::new(MemoryReplicated::new()),
        &prometheus::Registry::new(),
    )
    .await
    .unwrap();
    let mut idle = tokio::net::TcpStream::connect(running.local_addr())
        .await
        .unwrap();
    let mut buffer = [0u8; 64];
    // The server closes the silent connection after its handshake timeout; the read sees
    // the end (or a reset) long before this test's own bound.
    let read = tokio::time::timeout(Duration::from_secs(30), idle.read(&mut buffer))
        .await
        .expect("the server drops a silent client");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");

    // An idle keep-alive connection is closed after the same timeout, so idle clients
    // cannot hold the connection slots either: the raw read below ends only when the
    // server closes.
    let (status, _) = raw_https(
        &certs,
        running.local_addr(),
        &format!("GET /v1/status HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"),
    )
    .await;
    assert!(status.contains("200"), "{status}");
    running.shutdown();
}

#[tokio::test]
async fn the_api_refuses_to_start_with_a_weak_token_or_zero_limits() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    certs::init(&Layout::default(), &certs).unwrap();
    let credentials = Credentials::load(&certs, &Identity::orchestrator(1)).unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "short\n").unwrap();
    let store = || Arc::new(MemoryReplicated::new());
    let config = ApiConfig::new("127.0.0.1:0".parse().unwrap(), token_file.clone());
    let error = api::serve(&config, &credentials, store(), &prometheus::Registry::new())
        .await
        .expect_err("a short token is refused");
    assert!(error.to_string().contains("openssl rand"), "{error}");
    assert!(
        !error.to_string().contains("short"),
        "the token is not echoed: {error}"
    );

    std::fs::write(&token_file, TOKEN).unwrap();
    let mut config = config;
    config.max_body_bytes = 0;
    let error = api::serve(&config, &credentials, store(), &prometheus::Registry::new())
        .await
        .expect_err("a zero limit is refused");
    assert!(error.to_string().contains("max_body_bytes"), "{error}");
}

#[tokio::test]
async fn drill_verdicts_are_recorded_listed_newest_first_and_shown_in_the_status() {
    let h = Harness::start().await;
    let client = h.operator();
    client
        .apply_plan_toml(&text(&plan_without_schedules()))
        .await
        .unwrap();
    let pass: api::DrillBody = serde_json::from_value(serde_json::json!({
        "drill": "evacuate",
        "region": "us-east",
        "verdict": "pass",
        "started": "2026-12-05T09:00:00Z",
        "ended": "2026-12-05T09:00:41.500+01:00",
        "evacuate_ms": 39_000,
        "services": [
            {"service": "shop", "to": "eu-west", "migration": "shop-1", "outcome": "completed"}
        ],
        "requests": 9_000,
        "failed_requests": 0,
        "max_failed_ratio": 0.01,
        "max_p99_ms": 500.0,
        "p99_ms_max": 31.5,
        "rollbacks": 0,
        "faults_fired": 0,
        "faults_planned": 0
    }))
    .expect("a drill report");
    // An end before the start (the +01:00 end is 08:00:41.5Z) is refused and records nothing.
    let (status, message) = refused(client.record_drill(&pass).await);
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(message.contains("ends before it starts"), "{message}");
    assert!(client.drills(10).await.unwrap().is_empty());

    let mut pass = pass;
    pass.ended = serde_json::from_value(serde_json::json!("2026-12-05T09:00:41.500Z")).unwrap();
    let written = client.record_drill(&pass).await.unwrap();
    assert_eq!(
        written,
        Written::Drill {
            id: "drill-1".to_owned()
        }
    );
    let mut fail = pass.clone();
    fail.verdict = api::DrillVerdict::Fail;
    fail.reasons = vec!["shop ended rolled_back".to_owned()];
    fail.services[0].outcome = "rolled_back".to_owned();
    fail.rollbacks = 1;
    let (status, message) = refused(
        client
            .record_drill(&{
                let mut mars = fail.clone();
                mars.region = "mars-north".to_owned();
                mars
            })
            .await,
    );
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(message.contains("\"mars-north\""), "{message}");
    assert_eq!(
        client.record_drill(&fail).await.unwrap(),
        Written::Drill {
            id: "drill-2".to_owned()
        }
    );

    let drills = client.drills(10).await.unwrap();
    let ids: Vec<&str> = drills.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(ids, ["drill-2", "drill-1"], "newest first");
    assert_eq!(drills[1].report, pass, "kept as reported");
    assert_eq!(drills[0].report, fail);
    assert_eq!(client.drills(1).await.unwrap().len(), 1);
    let status = client.status().await.unwrap();
    assert_eq!(status.drills, drills);

    // Unknown fields, a verdict that is neither pass nor fail, and a limit out of range.
    for (field, value, says) in [
        ("by", "me", "unknown field `by`"),
        ("verdict", "maybe", "not a valid drill report"),
    ] {
        let mut body = serde_json::to_value(&pass).unwrap();
        body[field] = value.into();
        let (status, message) = refused(
            client
                .call::<serde_json::Value>(
                    Method::POST,
                    "/v1/drills",
                    Some(("application/json", body.to_string().into())),
                )
                .await,
        );
        assert_eq!(status, StatusCode::BAD_REQUEST, "{field}");
        assert!(message.contains(says), "{field}: {message}");
    }
    for query in ["limit=0", "limit=101", "limit=x", "count=3"] {
        let (status, message) = refused(
            client
                .call::<serde_json::Value>(Method::GET, &format!("/v1/drills?{query}"), None)
                .await,
        );
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}");
        assert!(message.contains("from 1 to 100"), "{query}: {message}");
    }
    assert_eq!(
        client.drills(100).await.unwrap().len(),
        2,
        "nothing else recorded"
    );
}
