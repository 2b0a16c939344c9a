//! The web dashboard (`GET /ui/` on every orchestrator) in a real headless Chromium during a
//! real migration: `umbra demo --keep DIR` starts three orchestrators, three agents and the
//! traffic, and the browser talks TLS to the leading orchestrator itself, presenting the
//! demo's operator certificate from an NSS database in a temporary `HOME` (selected without
//! a prompt by the profile's `auto_select_certificate` setting) and trusting the cluster CA
//! from the same database. The token reaches the page in the URL fragment, which the server
//! never sees.
//!
//! The browser is driven by its command line (`--dump-dom`, `--screenshot`), each run a fresh
//! page given a few seconds of virtual time, which is robust on a loaded machine: virtual
//! time stands still while the page waits for the API. What the test asserts is what an
//! operator would check: the page shows the migration while it runs, and once it ended, its
//! timeline lists every phase the audit log has for it, in order; the leader is named; the
//! page needs an operator certificate and the data needs the token. Screenshots are kept
//! under `target/dashboard-screenshots/` (printed). To look at the ended migration while the
//! cluster still runs, the demo process is paused (SIGSTOP) the moment the API says the
//! migration ended; its orchestrators and agents are other processes and keep serving.
//!
//! Needs `chromium`, `certutil` and `pk12util` (`libnss3-tools`) and `openssl`; a missing one
//! fails the test with the command that installs it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use umbra_orchestrator::api::{ApiClient, BearerToken, StatusReport};
use umbra_orchestrator::node::NodeConfig;
use umbra_proto::{Credentials, Identity, Role};
use umbra_testkit::{Process, installed};

/// The demo's operator (`umbra demo` issues `operator-demo.pem`).
const OPERATOR: &str = "demo";
/// The name the orchestrators' certificates are issued for; the browser maps it to loopback.
const ORCHESTRATOR_HOST: &str = "orchestrator.umbra";
/// The cluster CA's common name (`umbra certs init`), which selects the client certificate.
const CA_COMMON_NAME: &str = "Umbra cluster CA";
/// Longest the cluster may take to start and elect a leader.
const START_DEADLINE: Duration = Duration::from_secs(120);
/// Longest the migration may take from the demo's start to its end.
const MIGRATION_DEADLINE: Duration = Duration::from_secs(240);
/// Longest one browser run may take (start, TLS, a few seconds of page time, the capture).
const BROWSER_DEADLINE: Duration = Duration::from_secs(90);
/// Page time (virtual: it stands still while requests are out) each browser run gives the
/// page, about five polls of the API.
const PAGE_TIME_MS: u32 = 5_000;
/// Longest the demo may take to finish once resumed.
const DEMO_EXIT_DEADLINE: Duration = Duration::from_secs(240);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_a_live_migration_and_every_phase_it_went_through() -> anyhow::Result<()>
{
    let chromium = installed("chromium", "chromium")?;
    let certutil = installed("certutil", "libnss3-tools")?;
    let pk12util = installed("pk12util", "libnss3-tools")?;
    let openssl = installed("openssl", "openssl")?;
    let bin_dir = umbra_testkit::bin_dir()?;
    let shots = screenshot_dir(&bin_dir)?;
    println!("screenshots go to {}", shots.display());

    let scratch = tempfile::Builder::new()
        .prefix("umbra-dashboard-")
        .tempdir()?;
    let work = scratch.path().join("demo");
    // 16,000 requests at 200/s: the traffic outlasts the migration, and the demo's deadline
    // grows to fit it.
    let mut demo = Command::new(bin_dir.join("umbra"));
    demo.args(["demo", "--rate", "200", "--min-requests", "16000", "--keep"])
        .arg(&work);
    let mut demo = Process::spawn("umbra demo", demo, &scratch.path().join("demo.log"))?;

    let cluster = demo
        .wait_for("the demo's orchestrators to lead", START_DEADLINE, || {
            DemoCluster::read(&work)
        })
        .await?;
    let browser = Browser::prepare(
        BrowserTools {
            chromium,
            certutil,
            pk12util,
            openssl,
        },
        &scratch.path().join("browser"),
        &work.join("certs"),
        &cluster.api_ports,
    )?;

    // The page needs an operator certificate, and its data the token.
    cluster.check_access(&work.join("certs")).await?;

    // During the migration: the page names the leader and shows the migration as it stands.
    let (id, leader_port) = demo
        .wait_for("a migration to start", MIGRATION_DEADLINE, || {
            cluster.running_migration()
        })
        .await?;
    let during = browser.dom(leader_port, &cluster.token, &shots.join("during.html"))?;
    browser.screenshot(leader_port, &cluster.token, &shots.join("during.png"))?;
    ensure!(
        during.contains(&format!("data-migration=\"{id}\"")),
        "the page shows no migration {id} while it runs; the page was:\n{during}"
    );
    let leader = cluster.leader_id(leader_port).await?;
    ensure!(
        during.contains(&format!("data-leader=\"{leader}\"")),
        "the page does not name node {leader} as the leader"
    );
    let shown_during = timeline_phases(&during, &id)?;
    println!("during the migration the timeline showed {shown_during:?}");

    // Once it ended: hold the demo (its processes keep serving) while the browser looks.
    let (phase, leader_port) = demo
        .wait_for("the migration to end", MIGRATION_DEADLINE, || {
            cluster.ended(&id)
        })
        .await?;
    demo.pause()?;
    let looked = look_after_the_end(&browser, &cluster, &id, leader_port, &shots).await;
    demo.resume()?;
    let (after, audit_phases) = looked?;
    println!("migration {id} ended {phase}; its audit log has {audit_phases:?}");
    let shown = timeline_phases(&after, &id)?;
    ensure!(
        shown == audit_phases,
        "the timeline of {id} shows {shown:?}, the audit log has {audit_phases:?}"
    );
    ensure!(
        shown_during.len() <= shown.len() && shown[..shown_during.len()] == shown_during[..],
        "the timeline during the migration ({shown_during:?}) is not the start of the final one ({shown:?})"
    );
    ensure!(
        after.contains(&format!("data-phase=\"{phase}\" data-terminal=\"true\"")),
        "the migration's card does not show it ended {phase}"
    );
    for needle in [
        "data-pool=\"shop/",
        "data-forecast=\"shop/",
        "data-event=\"transition\"",
    ] {
        ensure!(after.contains(needle), "the page shows no {needle}");
    }

    // The demo exits 1 when its migration did not complete (a slow machine can breach the
    // SLO and roll back); the page showed what happened either way, which is what this test
    // is about.
    let status = demo.wait_exit(DEMO_EXIT_DEADLINE)?;
    ensure!(
        status.success() || phase != "completed",
        "umbra demo failed ({status}) after its migration completed:\n{}",
        demo.log_tail()
    );
    for shot in ["during.png", "after.png"] {
        println!("screenshot: {}", shots.join(shot).display());
    }
    Ok(())
}

/// The final look: the page's DOM and a screenshot, and the phases the audit log has.
async fn look_after_the_end(
    browser: &Browser,
    cluster: &DemoCluster,
    id: &str,
    leader_port: u16,
    shots: &Path,
) -> anyhow::Result<(String, Vec<String>)> {
    let audit = cluster.client(leader_port)?.audit(0, 1_000).await?;
    let audit_phases: Vec<String> = umbra_demo::report::phases_from_audit(&audit, id)
        .into_iter()
        .map(|span| span.name)
        .collect();
    let after = browser.dom(leader_port, &cluster.token, &shots.join("after.html"))?;
    browser.screenshot(leader_port, &cluster.token, &shots.join("after.png"))?;
    Ok((after, audit_phases))
}

/// `target/dashboard-screenshots/<unix seconds>`, beside the build's binaries.
fn screenshot_dir(bin_dir: &Path) -> anyhow::Result<PathBuf> {
    let target = bin_dir.parent().unwrap_or(bin_dir);
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let dir = target.join("dashboard-screenshots").join(stamp.to_string());
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// The phases in the page's timeline of migration `id`, in order.
fn timeline_phases(dom: &str, id: &str) -> anyhow::Result<Vec<String>> {
    let open = format!("data-timeline=\"{id}\"");
    let start = dom
        .find(&open)
        .with_context(|| format!("the page has no timeline of {id}"))?;
    let list = &dom[start..];
    let list = &list[..list
        .find("</ol>")
        .context("the timeline list is not closed")?];
    Ok(list
        .split("data-phase=\"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .map(str::to_owned)
        .collect())
}

/// What the test reads from the demo's directory: the API ports, the token, an operator.
struct DemoCluster {
    api_ports: Vec<u16>,
    token: String,
    operator: Credentials,
}

impl DemoCluster {
    /// The demo's cluster once every node config, the certificates and the token are written
    /// and one API names a leader.
    async fn read(work: &Path) -> Option<DemoCluster> {
        let mut api_ports = Vec::new();
        for id in 1..=3 {
            let config =
                NodeConfig::load(&work.join(format!("orchestrator-{id}/node.toml"))).ok()?;
            api_ports.push(config.api?.listen.port());
        }
        let token = std::fs::read_to_string(work.join("api-token")).ok()?;
        let operator = Credentials::load(
            &work.join("certs"),
            &Identity::new(Role::Operator, OPERATOR).ok()?,
        )
        .ok()?;
        let cluster = DemoCluster {
            api_ports,
            token: token.trim().to_owned(),
            operator,
        };
        for port in &cluster.api_ports {
            let health = cluster.client(*port).ok()?.health().await.ok()?;
            if health.leader.leader.is_some() {
                return Some(cluster);
            }
        }
        None
    }

    fn client(&self, port: u16) -> anyhow::Result<ApiClient> {
        let token = BearerToken::new(&self.token).context("the demo's token is unusable")?;
        Ok(
            ApiClient::new(&format!("https://127.0.0.1:{port}"), &self.operator, token)?
                .with_timeout(Duration::from_secs(10)),
        )
    }

    /// The leader's status and API port.
    async fn leader_status(&self) -> Option<(StatusReport, u16)> {
        for port in &self.api_ports {
            let Ok(client) = self.client(*port) else {
                continue;
            };
            if let Ok(status) = client.status().await
                && status.leader.leader.is_some()
                && status.leader.leader == status.leader.this_node
            {
                return Some((status, *port));
            }
        }
        None
    }

    async fn leader_id(&self, port: u16) -> anyhow::Result<u64> {
        let health = self.client(port)?.health().await?;
        health.leader.leader.context("no leader")
    }

    /// A migration past `planned` and not ended, and the leader's port.
    async fn running_migration(&self) -> Option<(String, u16)> {
        let (status, port) = self.leader_status().await?;
        let running = status
            .migrations
            .iter()
            .find(|m| !m.terminal && m.phase != "planned")?;
        Some((running.id.clone(), port))
    }

    /// The phase migration `id` ended in, and the leader's port.
    async fn ended(&self, id: &str) -> Option<(String, u16)> {
        let (status, port) = self.leader_status().await?;
        let migration = status.migrations.iter().find(|m| m.id == id)?;
        migration.terminal.then(|| (migration.phase.clone(), port))
    }

    /// The page and its assets need an operator certificate (an agent's is refused) but no
    /// token; the API's data needs the token.
    async fn check_access(&self, certs: &Path) -> anyhow::Result<()> {
        use umbra_orchestrator::api::ClientError;
        let port = self.api_ports[0];
        let url = format!("https://127.0.0.1:{port}");
        let wrong = BearerToken::new("0123456789abcdef0123456789abcdef").expect("a token");
        let operator = ApiClient::new(&url, &self.operator, wrong.clone())?;
        for asset in ["/ui/", "/ui/dashboard.js", "/ui/dashboard.css"] {
            let (status, body) = operator.raw(reqwest::Method::GET, asset, None).await?;
            ensure!(
                status == reqwest::StatusCode::OK && !body.is_empty(),
                "GET {asset} with an operator certificate answered {status}"
            );
        }
        match operator.status().await {
            Err(ClientError::Refused { status, .. })
                if status == reqwest::StatusCode::UNAUTHORIZED => {}
            other => bail!("GET /v1/status with a wrong token answered {other:?}"),
        }
        let agent = Credentials::load(certs, &Identity::new(Role::Agent, "us-east")?)?;
        let agent = ApiClient::new(&url, &agent, wrong)?;
        let (status, body) = agent.raw(reqwest::Method::GET, "/ui/", None).await?;
        ensure!(
            status == reqwest::StatusCode::FORBIDDEN,
            "GET /ui/ with an agent's certificate answered {status}: {}",
            String::from_utf8_lossy(&body)
        );
        Ok(())
    }
}

/// The programs the browser needs.
struct BrowserTools {
    chromium: PathBuf,
    certutil: PathBuf,
    pk12util: PathBuf,
    openssl: PathBuf,
}

/// Headless Chromium with a profile and an NSS database of its own.
struct Browser {
    chromium: PathBuf,
    home: PathBuf,
    profile: PathBuf,
    logs: PathBuf,
}

impl Browser {
    /// A `HOME` whose NSS database trusts the cluster CA and holds the operator's certificate
    /// and key, and a profile that presents that certificate to the orchestrators' API ports
    /// without asking.
    fn prepare(
        tools: BrowserTools,
        dir: &Path,
        certs: &Path,
        api_ports: &[u16],
    ) -> anyhow::Result<Browser> {
        let home = dir.join("home");
        let nssdb = home.join(".pki/nssdb");
        std::fs::create_dir_all(&nssdb)?;
        let db = format!("sql:{}", nssdb.display());
        let p12 = dir.join("operator.p12");
        let operator = format!("operator-{OPERATOR}");
        run(Command::new(&tools.certutil).args(["-N", "--empty-password", "-d", &db]))?;
        run(Command::new(&tools.certutil)
            .args(["-A", "-n", "umbra-cluster-ca", "-t", "C,,", "-d", &db, "-i"])
            .arg(certs.join("ca.pem")))?;
        run(Command::new(&tools.openssl)
            .args([
                "pkcs12", "-export", "-passout", "pass:", "-name", &operator, "-in",
            ])
            .arg(certs.join(format!("{operator}.pem")))
            .arg("-inkey")
            .arg(certs.join(format!("{operator}.key")))
            .arg("-out")
            .arg(&p12))?;
        run(Command::new(&tools.pk12util)
            .args(["-W", "", "-d", &db, "-i"])
            .arg(&p12))?;
        std::fs::remove_file(&p12)?;

        // Chromium asks which certificate to present unless a content setting names it; a
        // headless browser has no one to ask, so the profile says it up front.
        let profile = dir.join("profile");
        std::fs::create_dir_all(profile.join("Default"))?;
        let filter = serde_json::json!({ "filters": [{ "ISSUER": { "CN": CA_COMMON_NAME } }] });
        let exceptions: serde_json::Map<String, serde_json::Value> = api_ports
            .iter()
            .map(|port| {
                (
                    format!("https://{ORCHESTRATOR_HOST}:{port},*"),
                    serde_json::json!({ "setting": filter }),
                )
            })
            .collect();
        let preferences = serde_json::json!({
            "profile": { "content_settings": { "exceptions": {
                "auto_select_certificate": exceptions
            } } }
        });
        std::fs::write(
            profile.join("Default/Preferences"),
            serde_json::to_vec(&preferences)?,
        )?;
        let logs = dir.join("logs");
        std::fs::create_dir_all(&logs)?;
        Ok(Browser {
            chromium: tools.chromium,
            home,
            profile,
            logs,
        })
    }

    /// The page's DOM after a few seconds of its time, also kept in `keep`.
    fn dom(&self, port: u16, token: &str, keep: &Path) -> anyhow::Result<String> {
        let out = self.browse(port, token, &["--dump-dom".to_owned()], "dump-dom")?;
        let dom = String::from_utf8(out).context("the DOM is not UTF-8")?;
        std::fs::write(keep, &dom)?;
        ensure!(
            dom.contains("id=\"board\"") && !dom.contains("<main id=\"board\" hidden"),
            "the dashboard did not get past the token form; the page was:\n{dom}"
        );
        Ok(dom)
    }

    /// A PNG of the page after a few seconds of its time.
    fn screenshot(&self, port: u16, token: &str, png: &Path) -> anyhow::Result<()> {
        self.browse(
            port,
            token,
            &[format!("--screenshot={}", png.display())],
            "screenshot",
        )?;
        let bytes =
            std::fs::read(png).with_context(|| format!("no screenshot at {}", png.display()))?;
        ensure!(
            bytes.starts_with(b"\x89PNG"),
            "{} is not a PNG",
            png.display()
        );
        Ok(())
    }

    /// Runs Chromium once on the dashboard of the API at `port`, bounded in time; returns
    /// its standard output.
    fn browse(
        &self,
        port: u16,
        token: &str,
        what: &[String],
        name: &str,
    ) -> anyhow::Result<Vec<u8>> {
        let url = format!("https://{ORCHESTRATOR_HOST}:{port}/ui/#token={token}");
        let log = self.logs.join(format!("{name}.log"));
        let mut command = Command::new(&self.chromium);
        command
            .env("HOME", &self.home)
            .arg("--headless")
            // Tests often run as root in containers, where Chromium's sandbox cannot start;
            // the page is our own.
            .arg("--no-sandbox")
            .args([
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--hide-scrollbars",
                "--force-device-scale-factor=1",
                "--window-size=1440,2400",
            ])
            .arg(format!("--user-data-dir={}", self.profile.display()))
            // The certificates name the orchestrators, not an address: resolve that name to
            // loopback, so the browser checks the real server certificate.
            .arg(format!(
                "--host-resolver-rules=MAP {ORCHESTRATOR_HOST} 127.0.0.1"
            ))
            .arg(format!("--virtual-time-budget={PAGE_TIME_MS}"))
            .args(what)
            .arg(url)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log)?);
        let started = Instant::now();
        let child = command.spawn().context("starting chromium")?;
        let output = wait_output(child, BROWSER_DEADLINE)
            .with_context(|| format!("chromium ({name}); its log is {}", log.display()))?;
        println!("chromium {name}: {} ms", started.elapsed().as_millis());
        if !output.status.success() {
            bail!(
                "chromium ({name}) failed ({}); its log is {}",
                output.status,
                log.display()
            );
        }
        Ok(output.stdout)
    }
}

/// Waits for `child` to exit within `deadline`, reading its standard output; kills it past
/// the deadline.
fn wait_output(
    mut child: std::process::Child,
    deadline: Duration,
) -> anyhow::Result<std::process::Output> {
    use std::io::Read;
    let mut stdout = child.stdout.take().context("no stdout pipe")?;
    let reader = std::thread::spawn(move || {
        let mut bytes = Vec::new();
        stdout.read_to_end(&mut bytes).map(|_| bytes)
    });
    let until = Instant::now() + deadline;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= until {
            let _ = child.kill();
            let _ = child.wait();
            bail!("did not finish within {deadline:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stdout = reader
        .join()
        .map_err(|_| anyhow::anyhow!("the stdout reader panicked"))??;
    Ok(std::process::Output {
        status,
        stdout,
        stderr: Vec::new(),
    })
}

/// Runs a setup command; its output is shown when it fails.
fn run(command: &mut Command) -> anyhow::Result<()> {
    let output = command
        .output()
        .with_context(|| format!("running {command:?}"))?;
    if !output.status.success() {
        bail!(
            "{command:?} failed ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}
