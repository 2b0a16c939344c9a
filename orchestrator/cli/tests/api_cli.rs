//! The `umbra apply | migrate | status | rollback` commands, run as real processes against
//! the operator API over HTTPS on loopback (in-memory store): what an operator types and
//! reads, including the errors (malformed plan with line and column, unknown region,
//! unreachable API, a certificate from another cluster).

use std::path::{Path, PathBuf};
use std::time::Duration;

use umbra_orchestrator::api::{MigrationStatus, StatusReport};
use umbra_orchestrator::migration::{Phase, happy_path};
use umbra_orchestrator::state::plan::EXAMPLE_PLAN_TOML;
use umbra_orchestrator::state::{Command, Plan};
use umbra_orchestrator::store::Replicated;
use umbra_proto::certs::{self, Layout};
use umbra_tests::MemoryApi;

/// Longest one CLI run may take on a loaded machine.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// The example plan without its schedule, as TOML: these tests create every migration
/// themselves.
fn plan_without_schedules() -> String {
    toml::to_string(&umbra_tests::plan_without_schedules()).expect("a plan serializes")
}

/// The API under test: [`MemoryApi`] with this file's helpers.
struct Harness(MemoryApi);

impl std::ops::Deref for Harness {
    type Target = MemoryApi;
    fn deref(&self) -> &MemoryApi {
        &self.0
    }
}

struct Run {
    success: bool,
    stdout: String,
    stderr: String,
}

impl Harness {
    async fn start() -> Harness {
        Harness(MemoryApi::start().await.expect("the API starts"))
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Runs `umbra ARGS` with the API flags passed through the environment.
    async fn umbra(&self, args: &[&str]) -> Run {
        self.umbra_with(
            args,
            &format!("https://{}", self.api.local_addr()),
            &self.secrets.certs_dir,
        )
        .await
    }

    async fn umbra_with(&self, args: &[&str], api: &str, certs: &Path) -> Run {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_umbra"));
        command
            .args(args)
            .env("UMBRA_API", api)
            .env("UMBRA_CERTS", certs)
            // The token `certs init` wrote into the certificates directory, found by default.
            .env_remove("UMBRA_TOKEN_FILE")
            .env_remove("UMBRA_OPERATOR")
            .kill_on_drop(true);
        let output = tokio::time::timeout(RUN_TIMEOUT, command.output())
            .await
            .unwrap_or_else(|_| panic!("umbra {args:?} did not finish within {RUN_TIMEOUT:?}"))
            .expect("umbra runs");
        Run {
            success: output.status.success(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_migrate_status_rollback_as_an_operator_sees_them() {
    let h = Harness::start().await;
    let plan = h.write("plan.toml", &plan_without_schedules());
    let plan = plan.to_str().unwrap();

    let run = h.umbra(&["apply", "-f", plan]).await;
    assert!(run.success, "{}", run.stderr);
    assert!(
        run.stdout.contains("2 regions, 1 service, 0 schedules"),
        "{}",
        run.stdout
    );

    let run = h.umbra(&["migrate", "shop", "--to", "mars-north"]).await;
    assert!(!run.success);
    assert!(
        run.stderr.contains("\"mars-north\"")
            && run.stderr.contains("not declared")
            && run.stderr.contains("HTTP 400"),
        "{}",
        run.stderr
    );

    // A date typed wrong is refused, not started at once.
    let run = h
        .umbra(&[
            "migrate",
            "shop",
            "--to",
            "eu-west",
            "--at",
            "2020-01-01T00:00:00Z",
        ])
        .await;
    assert!(!run.success);
    assert!(
        run.stderr.contains("2020-01-01T00:00:00Z is")
            && run.stderr.contains("in the past")
            && run.stderr.contains("--at now"),
        "{}",
        run.stderr
    );
    let run = h
        .umbra(&[
            "migrate",
            "shop",
            "--to",
            "eu-west",
            "--at",
            "2100-01-01T00:00:00Z",
            "--json",
        ])
        .await;
    assert!(run.success, "{}", run.stderr);
    // The migration as `umbra status --json` lists it: one shape per resource.
    let created: MigrationStatus = serde_json::from_str(&run.stdout).expect("a migration");
    assert_eq!(
        (
            created.service.as_str(),
            created.to.as_str(),
            created.phase.as_str()
        ),
        ("shop", "eu-west", "planned")
    );
    let id = created.id.clone();

    let run = h.umbra(&["status", "--json"]).await;
    assert!(run.success, "{}", run.stderr);
    let report: StatusReport = serde_json::from_str(&run.stdout).expect("a status report");
    assert_eq!(report.migrations[0].id, id);
    assert_eq!(report.migrations[0].phase, "planned");

    let run = h.umbra(&["status"]).await;
    assert!(run.success, "{}", run.stderr);
    assert!(
        run.stdout
            .contains(&format!("{id} shop us-east → eu-west: planned (stage 0/9")),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("cutover at 2100-01-01T00:00:00.000Z"),
        "{}",
        run.stdout
    );
    // The TTL plan: 300 s answers go down to 5 s one TTL plus the 60 s margin ahead.
    assert!(
        run.stdout.contains(
            "dns ttl 300 s → 5 s, to be lowered at 2099-12-31T23:54:00.000Z; every cache holds it from 2099-12-31T23:59:00.000Z\n"
        ),
        "{}",
        run.stdout
    );

    let run = h
        .umbra(&["rollback", &id, "--reason", "change freeze", "--json"])
        .await;
    assert!(run.success, "{}", run.stderr);
    let rolling: MigrationStatus = serde_json::from_str(&run.stdout).expect("the migration");
    assert_eq!(
        (rolling.id.as_str(), rolling.phase.as_str()),
        (id.as_str(), "rolling_back")
    );
    let run = h
        .umbra(&["rollback", "shop-99", "--reason", "x", "--json"])
        .await;
    assert!(!run.success);
    let error: serde_json::Value = serde_json::from_str(&run.stdout).expect("a JSON error");
    assert!(
        error["error"]
            .as_str()
            .unwrap()
            .contains("no migration \"shop-99\""),
        "{error}"
    );

    // The executor would finish the rollback; here the test does it, so `--watch` sees
    // every migration end and exits by itself.
    h.store
        .propose(Command::Transition {
            id: id.clone(),
            from: Phase::RollingBack,
            to: Phase::RolledBack,
            reason: "all traffic back on the source".to_owned(),
            shadow_instances: None,
            rollback_ms: Some(5),
            term: 1,
            at_ms: 1,
        })
        .await
        .expect("the store answers")
        .expect("the rollback finishes");
    let run = h
        .umbra(&["status", "--watch", "--interval-ms", "100"])
        .await;
    assert!(run.success, "{}", run.stderr);
    assert!(
        run.stdout.contains("rolling_back → rolled_back"),
        "{}",
        run.stdout
    );

    // Asked for two minutes ahead, a migration cannot lower a 300 s TTL in time: it is
    // accepted, its audit entry and `umbra status` say so.
    let soon = chrono::Utc::now() + chrono::TimeDelta::seconds(120);
    let soon = soon.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let run = h
        .umbra(&["migrate", "shop", "--to", "eu-west", "--at", &soon])
        .await;
    assert!(run.success, "{}", run.stderr);
    let run = h.umbra(&["status"]).await;
    assert!(run.success, "{}", run.stderr);
    assert!(
        run.stdout.contains("dns ttl 300 s → 5 s")
            && run.stdout.contains("(LATE: after the cutover starts")
            && run.stdout.contains("the DNS TTL is lowered late"),
        "{}",
        run.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_plan_parses_and_applies() {
    let h = Harness::start().await;
    let run = h.umbra(&["example-plan"]).await;
    assert!(run.success, "{}", run.stderr);
    let plan = Plan::from_toml(&run.stdout).expect("the printed example plan parses");
    assert_eq!(plan, Plan::example());
    let file = h.write("example.toml", &run.stdout);
    let run = h.umbra(&["apply", "-f", file.to_str().unwrap()]).await;
    assert!(run.success, "{}", run.stderr);
    assert!(
        run.stdout.contains("2 regions, 1 service, 1 schedule"),
        "{}",
        run.stdout
    );
    let overview = h.store.state().overview();
    assert_eq!(overview.services["shop"].primary_region, "us-east");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_plan_is_reported_with_file_line_and_column() {
    let h = Harness::start().await;
    // The example plan with a number where its first front's "ip:port" belongs.
    let front = format!("front = {:?}", Plan::example().regions[0].front);
    let text = EXAMPLE_PLAN_TOML.replacen(&front, "front = 5", 1);
    let line = 1 + text
        .lines()
        .position(|l| l == "front = 5")
        .expect("a front");
    let bad = h.write("bad.toml", &text);
    let run = h.umbra(&["apply", "-f", bad.to_str().unwrap()]).await;
    assert!(!run.success);
    assert!(run.stderr.contains("bad.toml"), "{}", run.stderr);
    let place = format!("line {line}, column 9");
    assert!(run.stderr.contains(&place), "{place} in {}", run.stderr);

    // A negative count is explained in words, not as serde's `expected u32`.
    let text = EXAMPLE_PLAN_TOML.replacen("max_instances = 4", "max_instances = -4", 1);
    let bad = h.write("negative.toml", &text);
    let run = h.umbra(&["apply", "-f", bad.to_str().unwrap()]).await;
    assert!(!run.success);
    assert!(
        run.stderr.contains("expected a whole number from 0 to"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("u32"), "{}", run.stderr);
    assert!(h.store.state().audit().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_api_and_a_foreign_certificate_get_clear_errors() {
    let h = Harness::start().await;
    // A port nobody listens on: bind one, note it, close it.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = closed.local_addr().unwrap();
    drop(closed);
    let run = h
        .umbra_with(
            &["status"],
            &format!("https://{address}"),
            &h.secrets.certs_dir,
        )
        .await;
    assert!(!run.success);
    assert!(
        run.stderr.contains("cannot reach the operator API"),
        "{}",
        run.stderr
    );

    let run = h
        .umbra_with(&["status"], "http://127.0.0.1:1", &h.secrets.certs_dir)
        .await;
    assert!(!run.success);
    assert!(run.stderr.contains("https://HOST:PORT"), "{}", run.stderr);

    let other = tempfile::tempdir().unwrap();
    certs::init(&Layout::default(), other.path()).unwrap();
    let run = h
        .umbra_with(
            &["status"],
            &format!("https://{}", h.api.local_addr()),
            other.path(),
        )
        .await;
    assert!(!run.success);
    assert!(run.stderr.contains("same cluster CA"), "{}", run.stderr);

    // An operator without a certificate is told how to issue one from THIS cluster's CA,
    // once, and never to make a new CA.
    let run = h
        .umbra_with(
            &["status", "--as", "carol"],
            &format!("https://{}", h.api.local_addr()),
            &h.secrets.certs_dir,
        )
        .await;
    assert!(!run.success);
    let add = format!(
        "umbra certs add --dir {} --role operator --id carol",
        h.secrets.certs_dir.display()
    );
    assert_eq!(run.stderr.matches(&add).count(), 1, "{}", run.stderr);
    assert!(!run.stderr.contains("certs init"), "{}", run.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_watch_follows_a_migration_through_every_phase_and_exits_when_it_ends() {
    let h = Harness::start().await;
    let plan = h.write("plan.toml", &plan_without_schedules());
    assert!(
        h.umbra(&["apply", "-f", plan.to_str().unwrap()])
            .await
            .success
    );
    let run = h
        .umbra(&["migrate", "shop", "--to", "eu-west", "--json"])
        .await;
    assert!(run.success, "{}", run.stderr);
    let created: MigrationStatus = serde_json::from_str(&run.stdout).unwrap();
    let id = created.id;

    let watcher = {
        let api = format!("https://{}", h.api.local_addr());
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_umbra"));
        command
            .args(["status", "--watch", "--interval-ms", "50"])
            .env("UMBRA_API", api)
            .env("UMBRA_CERTS", &h.secrets.certs_dir)
            .env("UMBRA_TOKEN_FILE", &h.secrets.token_file)
            .kill_on_drop(true);
        command.output()
    };
    let watcher = tokio::spawn(watcher);

    // What the executor would do, one phase at a time.
    let path = happy_path(3);
    for pair in path.windows(2) {
        tokio::time::sleep(Duration::from_millis(60)).await;
        h.store
            .propose(Command::Transition {
                id: id.clone(),
                from: pair[0],
                to: pair[1],
                reason: "test executor".to_owned(),
                shadow_instances: Some(2),
                rollback_ms: None,
                term: 1,
                at_ms: 1,
            })
            .await
            .expect("the store answers")
            .expect("the transition applies");
    }
    let output = tokio::time::timeout(RUN_TIMEOUT, watcher)
        .await
        .expect("watch exits once the migration completed")
        .unwrap()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    let mut from = 0;
    for pair in path.windows(2) {
        let event = format!("{id}: {} → {}", pair[0], pair[1]);
        let at = stdout[from..]
            .find(&event)
            .unwrap_or_else(|| panic!("{event:?} missing or out of order in:\n{stdout}"));
        from += at + event.len();
    }
}
