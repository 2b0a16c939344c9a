//! `examples/cluster/run.sh`, run as a user runs it (`bash examples/cluster/run.sh`, no
//! argument) with the binaries of this build: three orchestrators, two agents and their
//! sample instances on loopback, a migration to completion and one rolled back by the
//! operator. The assertions are what the user would check: the script exits 0, its summary
//! shows the completed and the rolled-back migration, and nothing it started is left running.
//!
//! A light test beside it reads the example's files with the product's own parsers and checks
//! that they agree with each other (peers, DNS servers, fronts), so a change of format or a
//! port edited in one file only is caught without starting anything.
//!
//! The script runs in a process group of its own, so that a run past the deadline is ended
//! whole (the script's own trap stops its children on every other exit). Heavy: nextest runs
//! this package's tests one at a time (`.ci/nextest.toml`).

use std::io::Read;
use std::net::{Ipv4Addr, TcpListener, UdpSocket};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use umbra_demo::processes::instance_pids;

/// Longest the whole script may take. It waits on each of its own steps with a deadline of
/// its own; this one only ends a run that hangs regardless.
const SCRIPT_DEADLINE: Duration = Duration::from_secs(480);
/// Ports the script uses above its base (`UMBRA_EXAMPLE_PORT_BASE`): it draws from BASE+1 to
/// BASE+99.
const PORT_SPAN: u16 = 100;
/// The port offset of the region fronts, which listen on 127.0.0.11 and 127.0.0.12.
const FRONT_OFFSET: u16 = 80;

/// The repository root, where `examples/` lives.
fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lies in the repository")
        .to_owned()
}

/// A port base whose hundred ports are free on loopback (TCP and UDP, and the front port on
/// the fronts' addresses), drawn below the ephemeral range like every port of the suite, so a
/// run never meets another cluster (or another engineer's run of this test) on the defaults.
fn free_port_base() -> anyhow::Result<u16> {
    let loopback = Ipv4Addr::LOCALHOST;
    let fronts = [Ipv4Addr::new(127, 0, 0, 11), Ipv4Addr::new(127, 0, 0, 12)];
    for _ in 0..50 {
        let drawn = umbra_tests::free_port()?;
        let base = drawn - drawn % PORT_SPAN;
        if base < 1024 {
            continue;
        }
        let free = (1..PORT_SPAN).all(|offset| {
            let port = base + offset;
            TcpListener::bind((loopback, port)).is_ok() && UdpSocket::bind((loopback, port)).is_ok()
        }) && fronts
            .iter()
            .all(|ip| TcpListener::bind((*ip, base + FRONT_OFFSET)).is_ok());
        // The span must stay below the ephemeral range, where outgoing connections take
        // their ports: a free port draw stays there, its span must too.
        let ephemeral_start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
            .unwrap_or(32_768);
        if free && base + PORT_SPAN <= ephemeral_start {
            return Ok(base);
        }
    }
    bail!("no base with {PORT_SPAN} free loopback ports after 50 draws")
}

/// Runs `command` in a process group of its own until it exits or `deadline` passes; past
/// it the whole group is stopped (SIGTERM, which the script's trap answers by stopping what it
/// started, then SIGKILL) and `None` is returned.
fn run_with_deadline(
    mut command: Command,
    deadline: Duration,
) -> anyhow::Result<(Pid, Option<ExitStatus>)> {
    command.process_group(0);
    let mut child = command.spawn().context("starting bash")?;
    let group = Pid::from_raw(i32::try_from(child.id()).context("pid")?);
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok((group, Some(status)));
        }
        if started.elapsed() >= deadline {
            let _ = killpg(group, Signal::SIGTERM);
            let grace = Instant::now();
            while grace.elapsed() < Duration::from_secs(10) {
                if child.try_wait()?.is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = killpg(group, Signal::SIGKILL);
            let _ = child.wait();
            return Ok((group, None));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The example's directory.
fn example_dir() -> PathBuf {
    repo_root().join("examples").join("cluster")
}

#[test]
fn the_example_files_parse_agree_and_the_plan_applies() -> anyhow::Result<()> {
    use umbra_orchestrator::node::config::NodeConfig;
    use umbra_orchestrator::state::{Command as StateCommand, OrchestratorState, Plan};

    let dir = example_dir();
    let read = |name: &str| {
        std::fs::read_to_string(dir.join(name)).with_context(|| format!("reading {name}"))
    };
    // The nodes validate as the binary does, with certificates where their certs_dir says.
    let certs = tempfile::tempdir()?;
    umbra_proto::certs::init(
        &umbra_proto::certs::Layout {
            orchestrators: 3,
            regions: vec!["us-east".into(), "eu-west".into()],
            operators: vec!["admin".into()],
        },
        certs.path(),
    )?;
    let mut nodes = Vec::new();
    for id in 1..=3u64 {
        let name = format!("node-{id}.toml");
        let mut node: NodeConfig =
            toml::from_str(&read(&name)?).with_context(|| format!("parsing {name}"))?;
        node.certs_dir = certs.path().to_owned();
        node.validate()
            .with_context(|| format!("{name} is refused"))?;
        assert_eq!(node.id, id, "{name}");
        nodes.push(node);
    }
    let peers: Vec<_> = nodes[0].peers.iter().map(|p| p.address).collect();
    let dns: Vec<_> = nodes
        .iter()
        .map(|n| n.dns.as_ref().and_then(|d| d.listen).expect("[dns] listen"))
        .collect();
    for node in &nodes {
        assert_eq!(
            node.peers, nodes[0].peers,
            "every node lists the same peers"
        );
        assert_eq!(
            node.executor.dns_servers, dns,
            "node {} checks every DNS server",
            node.id
        );
    }

    let plan = Plan::from_toml(&read("plan.toml")?)?;
    let mut state = OrchestratorState::default();
    state
        .apply_command(1, &StateCommand::ApplyPlan { plan, at_ms: 1 })
        .map_err(|e| anyhow::anyhow!("plan.toml is refused: {e}"))?;
    let overview = state.overview();
    for region in ["us-east", "eu-west"] {
        let name = format!("agent-{region}.toml");
        let agent = umbra_agent::agent::config::AgentConfig::load(&dir.join(&name))?;
        assert_eq!(agent.region, region, "{name}");
        assert_eq!(
            agent.orchestrators, peers,
            "{name} lists every orchestrator"
        );
        assert_eq!(
            agent.front.as_ref().map(|f| f.listen),
            Some(overview.regions[region].front_addr()),
            "{name}'s front is the plan's front of {region}"
        );
    }
    Ok(())
}

#[test]
fn the_example_cluster_completes_a_migration_and_rolls_one_back() -> anyhow::Result<()> {
    let bin_dir = umbra_tests::bin_dir()?;
    let work = tempfile::Builder::new()
        .prefix("umbra-example-test-")
        .tempdir()?;
    let state = work.path().join("state");
    let output_path = work.path().join("run.log");
    let output = std::fs::File::create(&output_path)?;
    let port_base = free_port_base()?;

    let mut command = Command::new("bash");
    command
        .arg("examples/cluster/run.sh")
        .current_dir(repo_root())
        .env("UMBRA_BIN_DIR", &bin_dir)
        .env("UMBRA_EXAMPLE_DIR", &state)
        .env("UMBRA_EXAMPLE_PORT_BASE", port_base.to_string())
        .stdin(Stdio::null())
        .stdout(output.try_clone()?)
        .stderr(output);
    let started = Instant::now();
    let (group, status) = run_with_deadline(command, SCRIPT_DEADLINE)?;
    let elapsed = started.elapsed();
    let mut log = String::new();
    std::fs::File::open(&output_path)?.read_to_string(&mut log)?;
    println!(
        "run.sh (port base {port_base}, {:.1} s):\n{log}",
        elapsed.as_secs_f64()
    );

    // The orchestrators and agents ran in the script's process group: none may remain.
    let group_left = killpg(group, None).is_ok();
    if group_left {
        let _ = killpg(group, Signal::SIGKILL);
    }
    let leftovers: Vec<(&str, Vec<u32>)> = ["us-east", "eu-west"]
        .into_iter()
        .map(|region| {
            (
                region,
                instance_pids(&state.join(format!("agent-{region}"))),
            )
        })
        .filter(|(_, pids)| !pids.is_empty())
        .collect();
    for (_, pids) in &leftovers {
        for pid in pids {
            let _ = nix::sys::signal::kill(Pid::from_raw(*pid as i32), Signal::SIGKILL);
        }
    }

    let Some(status) = status else {
        panic!(
            "run.sh did not end within {SCRIPT_DEADLINE:?}; its output is above, its logs in {}",
            state.display()
        );
    };
    assert!(
        status.success(),
        "run.sh failed ({status}); its output is above"
    );
    let summary = |outcome: &str| {
        log.lines().any(|line| {
            line.contains("summary: migration") && line.contains(&format!("ended {outcome}"))
        })
    };
    assert!(
        summary("completed"),
        "no completed migration in the summary"
    );
    assert!(
        summary("rolled_back"),
        "no rolled-back migration in the summary"
    );
    assert!(!group_left, "processes of run.sh outlived it");
    assert!(
        leftovers.is_empty(),
        "sample instances outlived run.sh: {leftovers:?}"
    );
    Ok(())
}
