//! etcd, the reference: three `etcd` processes (Debian's etcd-server, installed by
//! `tests/benches/raft-vs-etcd.sh`) on loopback with fsync on (etcd's default), driven through
//! its v3 JSON gateway over HTTP/1.1 keep-alive connections, one connection per client, the
//! way the Umbra side uses one QUIC stream per client.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};
use umbra_testkit::{Process, free_port};

use crate::{Putter, System};

/// Where the bench looks for etcd when `--etcd` is not given.
pub const DEFAULT_BINARY: &str = "/usr/bin/etcd";

struct Member {
    name: String,
    client_url: String,
    log_path: PathBuf,
    args: Vec<String>,
    process: Option<Process>,
}

/// A three-member etcd cluster with the given heartbeat and election timeout.
pub struct EtcdCluster {
    _dir: tempfile::TempDir,
    binary: PathBuf,
    members: BTreeMap<u64, Member>,
    http: reqwest::Client,
}

impl EtcdCluster {
    pub fn launch(
        binary: PathBuf,
        heartbeat_ms: u64,
        election_ms: u64,
    ) -> anyhow::Result<EtcdCluster> {
        if !binary.is_file() {
            bail!(
                "etcd is not installed at {} (the side-by-side bench runs the real one): run \
                 `bash tests/benches/raft-vs-etcd.sh`, which installs Debian's etcd-server, or \
                 pass --etcd PATH",
                binary.display()
            );
        }
        let dir = tempfile::Builder::new().prefix("umbra-etcd-").tempdir()?;
        let mut ports = BTreeMap::new();
        for id in 1..=3u64 {
            ports.insert(id, (free_port()?, free_port()?));
        }
        let initial_cluster = ports
            .iter()
            .map(|(id, (_, peer))| format!("n{id}=http://127.0.0.1:{peer}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut members = BTreeMap::new();
        for (id, (client, peer)) in ports {
            let name = format!("n{id}");
            let client_url = format!("http://127.0.0.1:{client}");
            let peer_url = format!("http://127.0.0.1:{peer}");
            let data_dir = dir.path().join(&name);
            let args = vec![
                format!("--name={name}"),
                format!("--data-dir={}", data_dir.display()),
                format!("--listen-client-urls={client_url}"),
                format!("--advertise-client-urls={client_url}"),
                format!("--listen-peer-urls={peer_url}"),
                format!("--initial-advertise-peer-urls={peer_url}"),
                format!("--initial-cluster={initial_cluster}"),
                "--initial-cluster-state=new".into(),
                "--initial-cluster-token=umbra-bench".into(),
                format!("--heartbeat-interval={heartbeat_ms}"),
                format!("--election-timeout={election_ms}"),
                "--logger=zap".into(),
                "--log-level=warn".into(),
            ];
            members.insert(
                id,
                Member {
                    log_path: dir.path().join(format!("{name}.log")),
                    name,
                    client_url,
                    args,
                    process: None,
                },
            );
        }
        let mut cluster = EtcdCluster {
            _dir: dir,
            binary,
            members,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()?,
        };
        for id in 1..=3 {
            cluster.spawn(id)?;
        }
        Ok(cluster)
    }

    fn spawn(&mut self, id: u64) -> anyhow::Result<()> {
        let member = self.members.get_mut(&id).context("no such member")?;
        let mut command = Command::new(&self.binary);
        command.args(&member.args);
        member.process = Some(Process::spawn(&member.name, command, &member.log_path)?);
        Ok(())
    }

    /// One member's view: (its member id, the leader's member id, its raft index).
    async fn status(&self, id: u64) -> anyhow::Result<(String, String, u64)> {
        let member = &self.members[&id];
        let body: Value = self
            .http
            .post(format!("{}/v3/maintenance/status", member.client_url))
            .json(&json!({}))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let text = |v: &Value| v.as_str().map(str::to_owned).unwrap_or_default();
        let index = text(&body["raftIndex"]).parse().unwrap_or(0);
        Ok((
            text(&body["header"]["member_id"]),
            text(&body["leader"]),
            index,
        ))
    }

    async fn statuses(&self) -> BTreeMap<u64, (String, String, u64)> {
        let mut all = BTreeMap::new();
        for id in self.members.keys() {
            if let Ok(status) = self.status(*id).await {
                all.insert(*id, status);
            }
        }
        all
    }

    fn client_for(&self, id: u64) -> anyhow::Result<EtcdClient> {
        Ok(EtcdClient {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .pool_max_idle_per_host(1)
                .build()?,
            url: format!("{}/v3/kv/put", self.members[&id].client_url),
        })
    }
}

impl System for EtcdCluster {
    type Client = EtcdClient;

    fn client(&self, id: u64) -> anyhow::Result<EtcdClient> {
        // A follower forwards a put to its leader, as an Umbra client follows the hint.
        self.client_for(id)
    }

    fn pinned(&self, id: u64) -> anyhow::Result<EtcdClient> {
        self.client_for(id)
    }

    async fn leader(&self, deadline: Duration) -> anyhow::Result<u64> {
        let started = Instant::now();
        loop {
            let statuses = self.statuses().await;
            let leader = statuses.iter().find_map(|(id, (me, leader, _))| {
                (!leader.is_empty() && me == leader).then_some(*id)
            });
            if let Some(leader) = leader {
                return Ok(leader);
            }
            if started.elapsed() > deadline {
                bail!("no etcd leader within {deadline:?}: {statuses:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn settle(&self, deadline: Duration) -> anyhow::Result<()> {
        let started = Instant::now();
        loop {
            let statuses = self.statuses().await;
            let views: Vec<_> = statuses.values().collect();
            let settled = views.len() == self.members.len()
                && views
                    .iter()
                    .all(|(_, leader, index)| *leader == views[0].1 && *index == views[0].2);
            if settled {
                return Ok(());
            }
            if started.elapsed() > deadline {
                bail!("etcd members did not agree within {deadline:?}: {statuses:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn kill(&mut self, id: u64) -> anyhow::Result<()> {
        // Dropping the process SIGKILLs and reaps it.
        self.members.get_mut(&id).context("no such member")?.process = None;
        Ok(())
    }

    fn restart(&mut self, id: u64) -> anyhow::Result<()> {
        self.kill(id)?;
        self.spawn(id)
    }
}

/// A put client of one member, on its own keep-alive connection.
pub struct EtcdClient {
    http: reqwest::Client,
    url: String,
}

impl Putter for EtcdClient {
    async fn put(&mut self, key: String, value: Vec<u8>) -> anyhow::Result<()> {
        let body = json!({ "key": B64.encode(key), "value": B64.encode(value) });
        let answer: Value = self
            .http
            .post(&self.url)
            .json(&body)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        if answer.get("header").is_none() {
            bail!("etcd refused the put: {answer}");
        }
        Ok(())
    }
}
