//! `umbra demo`: the main job until the migration demo exists. Issues certificates into a
//! temp dir, starts a local Raft cluster of `umbra-orchestrator` processes on loopback, waits
//! for a leader, writes keys through the cluster and reads them back linearizably, shows
//! every node's state, then stops everything it started — also on Ctrl-C or an error.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;
use umbra_consensus::kv::{KvAnswer, KvCommand, KvQuery};
use umbra_orchestrator::node::{
    AdminStatus, NodeConfig, PeerConfig, StoreClient, free_loopback_port as free_port,
};
use umbra_proto::certs::{self, Layout};
use umbra_proto::{Credentials, Identity, Role};

/// How long the cluster may take to elect its first leader: many election timeouts, for a
/// loaded laptop.
const LEADER_DEADLINE: Duration = Duration::from_secs(30);
/// How long a node gets to exit after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Arguments of `umbra demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Number of orchestrator processes.
    #[arg(long, default_value_t = 3)]
    nodes: u64,
    /// Keys to write and read back.
    #[arg(long, default_value_t = 50)]
    keys: u32,
    /// Print one JSON document instead of text.
    #[arg(long)]
    json: bool,
    /// Keep the temp dir (certificates, configs, data, logs) for inspection.
    #[arg(long)]
    keep: bool,
}

#[derive(Debug, Serialize)]
struct DemoReport {
    leader: u64,
    term: u64,
    elected_after_ms: u64,
    keys_written: u32,
    keys_read_back: u32,
    write_latency_ms_p50: f64,
    write_latency_ms_max: f64,
    nodes: Vec<NodeReport>,
    identical_state: bool,
    dir: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
struct NodeReport {
    id: u64,
    listen: SocketAddr,
    admin: Option<SocketAddr>,
    role: String,
    term: u64,
    applied_index: u64,
    commands_applied: Option<u64>,
}

/// The processes the demo started; killed on drop, so every exit path stops them.
struct Processes {
    children: Vec<(u64, Child)>,
}

impl Processes {
    fn stop(&mut self) {
        for (_, child) in &self.children {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        }
        let deadline = Instant::now() + STOP_GRACE;
        for (_, child) in &mut self.children {
            while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        self.children.clear();
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        self.stop();
    }
}

fn orchestrator_binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let path = exe.with_file_name("umbra-orchestrator");
    if !path.is_file() {
        bail!(
            "{} not found next to umbra; build both with `cargo build --workspace --bins`",
            path.display()
        );
    }
    Ok(path)
}

pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    if !(1..=7).contains(&args.nodes) {
        bail!("--nodes must be between 1 and 7 (3 or 5 is usual)");
    }
    let binary = orchestrator_binary()?;
    let dir = tempfile::Builder::new().prefix("umbra-demo-").tempdir()?;
    let mut processes = Processes {
        children: Vec::new(),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let outcome = runtime.block_on(async {
        tokio::select! {
            result = demo(&args, &binary, dir.path(), &mut processes) => result,
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted; stopping the cluster")),
        }
    });
    processes.stop();
    let kept = args.keep.then(|| dir.keep());
    match outcome {
        Ok(mut report) => {
            report.dir = kept;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print_report(&report);
            }
            if !report.identical_state {
                bail!("the nodes did not converge to the same state");
            }
            Ok(())
        }
        Err(error) => Err(error),
    }
}

async fn demo(
    args: &DemoArgs,
    binary: &Path,
    dir: &Path,
    processes: &mut Processes,
) -> anyhow::Result<DemoReport> {
    let certs_dir = dir.join("certs");
    certs::init(
        &Layout {
            orchestrators: args.nodes,
            regions: Vec::new(),
            operators: vec!["admin".into()],
        },
        &certs_dir,
    )?;
    let mut peers = Vec::new();
    for id in 1..=args.nodes {
        peers.push(PeerConfig {
            id,
            address: SocketAddr::from(([127, 0, 0, 1], free_port()?)),
        });
    }
    let mut configs = Vec::new();
    for peer in &peers {
        let node_dir = dir.join(format!("node-{}", peer.id));
        std::fs::create_dir_all(&node_dir)?;
        let config = NodeConfig {
            id: peer.id,
            listen: peer.address,
            data_dir: node_dir.join("data"),
            certs_dir: certs_dir.clone(),
            admin_listen: Some(SocketAddr::from(([127, 0, 0, 1], free_port()?))),
            join: false,
            peers: peers.clone(),
            fault_injection: false,
            // The Raft test/bench mode: the key-value machine, no API, DNS or executor.
            state_machine: umbra_orchestrator::node::StateMachineKind::Kv,
            api: None,
            gateway: Default::default(),
            dns: None,
            executor: Default::default(),
            raft: umbra_consensus::Config::default(),
        };
        let path = node_dir.join("node.toml");
        std::fs::write(&path, config.to_toml())?;
        let log = std::fs::File::create(node_dir.join("node.log"))?;
        let child = Command::new(binary)
            .arg("--config")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        processes.children.push((peer.id, child));
        if !args.json {
            println!("started node {} on {} (QUIC)", peer.id, peer.address);
        }
        configs.push(config);
    }

    let credentials = Credentials::load(&certs_dir, &Identity::new(Role::Operator, "admin")?)?;
    let mut client = StoreClient::new(&credentials, peers.iter().map(|p| p.address).collect())?;
    let started = Instant::now();
    let hint = loop {
        if let Ok(hint) = client.leader().await
            && hint.leader_id.is_some()
        {
            break hint;
        }
        for (id, child) in &mut processes.children {
            if let Ok(Some(status)) = child.try_wait() {
                let log = dir.join(format!("node-{id}")).join("node.log");
                bail!(
                    "node {id} exited ({status}); its log: {}",
                    std::fs::read_to_string(log).unwrap_or_default()
                );
            }
        }
        if started.elapsed() > LEADER_DEADLINE {
            bail!("no leader after {LEADER_DEADLINE:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let elected_after_ms = started.elapsed().as_millis() as u64;
    let leader = hint.leader_id.unwrap_or_default();
    if !args.json {
        println!(
            "node {leader} leads term {} ({elected_after_ms} ms after start)",
            hint.term
        );
    }

    let mut latencies_ms = Vec::new();
    for i in 0..args.keys {
        let command = KvCommand::Put {
            key: format!("key-{i}"),
            value: format!("value-{i}").into_bytes(),
        };
        let sent = Instant::now();
        client.propose(command.encode()).await?;
        latencies_ms.push(sent.elapsed().as_secs_f64() * 1000.0);
    }
    let mut read_back = 0;
    for i in 0..args.keys {
        let answer = client
            .read(
                KvQuery::Get {
                    key: format!("key-{i}"),
                }
                .encode(),
            )
            .await?;
        if KvAnswer::decode(&answer)? == KvAnswer::Value(Some(format!("value-{i}").into_bytes())) {
            read_back += 1;
        }
    }
    latencies_ms.sort_by(f64::total_cmp);
    if !args.json {
        println!(
            "wrote {} keys through the leader, read {read_back} back linearizably",
            args.keys
        );
    }

    // Every node's own view, once they have all applied the writes.
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let statuses = loop {
        let mut statuses = Vec::new();
        for config in &configs {
            let admin = config.admin_listen.context("admin address")?;
            let status: Option<AdminStatus> =
                match http.get(format!("http://{admin}/status")).send().await {
                    Ok(response) => response.json().await.ok(),
                    Err(_) => None,
                };
            statuses.push((config, status));
        }
        let digests: Vec<_> = statuses
            .iter()
            .map(|(_, s)| s.as_ref().and_then(|s| s.digest))
            .collect();
        let converged = digests.iter().all(|d| d.is_some() && *d == digests[0])
            && digests[0].is_some_and(|d| d.commands_applied >= u64::from(args.keys));
        if converged || Instant::now() > deadline {
            break (statuses, converged);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (statuses, identical_state) = statuses;
    let nodes = statuses
        .into_iter()
        .map(|(config, status)| NodeReport {
            id: config.id,
            listen: config.listen,
            admin: config.admin_listen,
            role: status
                .as_ref()
                .map(|s| format!("{:?}", s.raft.role))
                .unwrap_or_else(|| "unreachable".into()),
            term: status.as_ref().map(|s| s.raft.term).unwrap_or_default(),
            applied_index: status
                .as_ref()
                .map(|s| s.raft.applied_index)
                .unwrap_or_default(),
            commands_applied: status.and_then(|s| s.digest).map(|d| d.commands_applied),
        })
        .collect();
    Ok(DemoReport {
        leader,
        term: hint.term,
        elected_after_ms,
        keys_written: args.keys,
        keys_read_back: read_back,
        write_latency_ms_p50: latencies_ms
            .get(latencies_ms.len() / 2)
            .copied()
            .unwrap_or(0.0),
        write_latency_ms_max: latencies_ms.last().copied().unwrap_or(0.0),
        nodes,
        identical_state,
        dir: None,
    })
}

fn print_report(report: &DemoReport) {
    println!(
        "write latency: p50 {:.2} ms, max {:.2} ms (fsync on every node)",
        report.write_latency_ms_p50, report.write_latency_ms_max
    );
    for node in &report.nodes {
        println!(
            "node {}: {:<9} term {:<3} applied index {:<5} commands {}  (metrics: http://{}/metrics)",
            node.id,
            node.role,
            node.term,
            node.applied_index,
            node.commands_applied
                .map(|c| c.to_string())
                .unwrap_or_else(|| "?".into()),
            node.admin.map(|a| a.to_string()).unwrap_or_default(),
        );
    }
    println!(
        "all nodes hold the same state: {}",
        if report.identical_state { "yes" } else { "NO" }
    );
    if let Some(dir) = &report.dir {
        println!("files kept in {}", dir.display());
    }
    println!("stopped every process the demo started");
}
