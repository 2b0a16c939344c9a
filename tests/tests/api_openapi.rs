//! The operator API against its own OpenAPI description, on the demo's real processes (three
//! `umbra-orchestrator`, three `umbra-agent`, `umbra-sample` instances) with the demo plan
//! applied: `GET /v1/openapi.json` is served behind the operator certificate and the token,
//! and schemathesis (from PyPI, in the virtualenv `.ci/install-deps` makes) generates requests
//! for every operation from that document and sends them to the leader's API with the
//! operator certificate and the token. It must report no failure: no 5xx, no answer outside
//! the documented schema, no undocumented status code, no wrong content type.
//!
//! schemathesis may create migrations, claims and rollbacks on this cluster; it is bounded in
//! examples per operation and in time. Run `cargo build --workspace --bins` first.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use axum::http::{Method, StatusCode};
use umbra_demo::{DemoOptions, IdleCluster};
use umbra_orchestrator::api::{ApiClient, BearerToken, ClientError};
use umbra_proto::{Credentials, Identity, Role};

/// Longest the cluster may take to show the demo pool (a liveness deadline on a loaded
/// machine, not a latency bound).
const DEADLINE: Duration = Duration::from_secs(120);
/// Requests schemathesis generates per operation and phase, and its time budget: enough to
/// reach every documented status of every operation, small enough for a 2-core machine.
const MAX_EXAMPLES: &str = "25";
const MAX_SECS: &str = "100";
/// Kills schemathesis if it outlives its own time budget by this much (it never should).
const HARD_LIMIT: Duration = Duration::from_secs(240);
/// schemathesis' seed, pinned so a failure reproduces; printed with its output.
const SEED: &str = "20261201";

/// schemathesis' command line, from the project's virtualenv.
fn schemathesis() -> anyhow::Result<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("the tests crate sits in the workspace")?;
    let st = root.join(".ci/venv/bin/st");
    anyhow::ensure!(
        st.is_file(),
        "schemathesis is not installed at {}: run `bash .ci/install-deps` (it makes the \
         virtualenv .ci/venv and installs the pinned schemathesis from PyPI)",
        st.display()
    );
    Ok(st)
}

/// The value of `key` in the CLI environment `env`.
fn var<'a>(env: &'a [(&'static str, String)], key: &str) -> anyhow::Result<&'a str> {
    env.iter()
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v.as_str())
        .with_context(|| format!("the cluster's CLI environment has no {key}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_failure_against_the_served_openapi() -> anyhow::Result<()> {
    let st = schemathesis()?;
    let bin_dir: PathBuf = umbra_tests::bin_dir()?;
    let cluster =
        IdleCluster::start(&DemoOptions::new(bin_dir), &|line| eprintln!("{line}")).await?;
    cluster
        .apply_plan_toml(&cluster.demo_plan())
        .await
        .map_err(anyhow::Error::msg)?;
    // The pools and forecast answers are checked too: wait until the leader shows one.
    umbra_tests::wait_for("the leader to show the demo pool", DEADLINE, || async {
        cluster.pools().await.into_iter().next()
    })
    .await?;
    let env =
        umbra_tests::wait_for("a leader's API", DEADLINE, || cluster.leader_cli_env()).await?;
    let api = var(&env, "UMBRA_API")?;
    let certs = PathBuf::from(var(&env, "UMBRA_CERTS")?);
    let operator = Identity::new(Role::Operator, var(&env, "UMBRA_OPERATOR")?)?;
    let token = std::fs::read_to_string(var(&env, "UMBRA_TOKEN_FILE")?)?
        .trim()
        .to_owned();
    let credentials = Credentials::load(&certs, &operator)?;

    // The document is served behind the token like every /v1 route.
    let stranger = ApiClient::new(
        api,
        &credentials,
        BearerToken::new("not-this-clusters-token").context("a usable token")?,
    )?;
    match stranger
        .call::<serde_json::Value>(Method::GET, "/v1/openapi.json", None)
        .await
    {
        Err(ClientError::Refused { status, .. }) => assert_eq!(status, StatusCode::UNAUTHORIZED),
        other => panic!("a wrong token must be refused, got {other:?}"),
    }
    let client = ApiClient::new(
        api,
        &credentials,
        BearerToken::new(&token).context("the cluster's token is usable")?,
    )?;
    let (status, document) = client.raw(Method::GET, "/v1/openapi.json", None).await?;
    assert_eq!(status, StatusCode::OK);
    let parsed: serde_json::Value = serde_json::from_slice(&document)?;
    assert!(
        parsed["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1")),
        "{}",
        parsed["openapi"]
    );
    let dir = tempfile::tempdir()?;
    let schema = dir.path().join("openapi.json");
    std::fs::write(&schema, &document)?;

    // Orchestrator certificates name the cluster (`orchestrator.umbra`), not 127.0.0.1, so
    // schemathesis (Python's TLS) cannot check the server's name; the server still checks
    // schemathesis' operator certificate, and everything stays on loopback.
    let cert = certs.join(format!("{}.pem", operator.file_stem()));
    let key = certs.join(format!("{}.key", operator.file_stem()));
    let args: Vec<String> = [
        "run",
        &schema.display().to_string(),
        "--url",
        api,
        "--checks",
        "not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance",
        "--phases",
        "examples,coverage,fuzzing",
        "--max-examples",
        MAX_EXAMPLES,
        "--max-time",
        MAX_SECS,
        "--seed",
        SEED,
        "--workers",
        "1",
        "--request-timeout",
        "20",
        // The API closes a kept-alive connection idle for 5 s (its handshake timeout); a
        // request sent on it just as it closes is retried once on a new connection, as any
        // HTTP client pool does. A server that fails a request twice still fails the run.
        "--request-retries",
        "1",
        "--request-cert",
        &cert.display().to_string(),
        "--request-cert-key",
        &key.display().to_string(),
        "--tls-verify",
        "false",
        "--header",
        &format!("Authorization: Bearer {token}"),
        "--report",
        "junit",
        "--report-dir",
        &dir.path().join("report").display().to_string(),
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    let printable = args.join(" ").replace(&token, "<token>");
    eprintln!("$ {} {printable}", st.display());
    let started = std::time::Instant::now();
    let run = tokio::process::Command::new(&st)
        .args(&args)
        .env("NO_COLOR", "1")
        // schemathesis keeps a cache in its working directory: the run's temp dir.
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", st.display()))?;
    let output = tokio::time::timeout(HARD_LIMIT, run.wait_with_output())
        .await
        .with_context(|| format!("schemathesis ran past {} s", HARD_LIMIT.as_secs()))??;
    let stdout = String::from_utf8_lossy(&output.stdout).replace(&token, "<token>");
    let stderr = String::from_utf8_lossy(&output.stderr).replace(&token, "<token>");
    // The closing line, e.g. `==== No issues found in 100.02s ====`.
    let summary = stdout
        .lines()
        .rev()
        .find(|line| line.starts_with('=') && line.contains(" in "))
        .unwrap_or("(no summary line)");
    eprintln!(
        "{stdout}\nschemathesis ({:.0} s, seed {SEED}): {summary}",
        started.elapsed().as_secs_f64()
    );
    assert!(
        output.status.success(),
        "schemathesis reported failures (exit {}):\n{stdout}\n{stderr}",
        output.status
    );
    Ok(())
}
