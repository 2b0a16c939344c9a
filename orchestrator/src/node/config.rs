//! The orchestrator node's configuration file (`node.toml`): who this node is, where it
//! listens, where it keeps its log, its certificates, its peers and Raft tuning. Parsed with
//! serde at this edge and checked by `validate()`; nothing else in the node reads files.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// One `[[peer]]` entry: a founding member of the Raft group (this node included).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    pub id: u64,
    pub address: SocketAddr,
}

/// The whole `node.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Raft node id; the certificate `orchestrator-<id>.pem` in `certs_dir` must match.
    pub id: u64,
    /// QUIC address for peers and clients.
    pub listen: SocketAddr,
    /// Where the Raft log and snapshots live.
    pub data_dir: PathBuf,
    /// Directory written by `umbra certs init` (holds `ca.pem`, `orchestrator-<id>.pem/.key`).
    pub certs_dir: PathBuf,
    /// Loopback HTTP address serving `/metrics` (Prometheus text) and `/status` (JSON).
    #[serde(default)]
    pub admin_listen: Option<SocketAddr>,
    /// `true` for a node added to a running cluster with `add_node`: it starts with no
    /// configuration and learns it from the leader. Founding members leave it `false`.
    #[serde(default)]
    pub join: bool,
    /// Founding members (including this node) with their QUIC addresses.
    #[serde(rename = "peer", default)]
    pub peers: Vec<PeerConfig>,
    /// Serves `POST /faults/cut` and `POST /faults/heal` on the admin endpoint, which drop
    /// this node's Raft traffic with chosen peers (tests and drills). Off unless set.
    #[serde(default)]
    pub fault_injection: bool,
    /// Raft tuning; every field optional.
    #[serde(default)]
    pub raft: umbra_consensus::Config,
}

/// A configuration that cannot work, with what to change.
#[derive(Debug, thiserror::Error)]
pub enum NodeConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a valid node config: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("id must be 1 or more (it is the Raft node id)")]
    ZeroId,
    #[error(
        "node {id} is not among the [[peer]] entries; list every founding member, this node included, or set join = true for a node added later"
    )]
    SelfNotListed { id: u64 },
    #[error("[[peer]] id {0} is listed twice")]
    DuplicatePeer(u64),
    #[error("[[peer]] entry for node {id} says {listed} but listen is {listen}; they must match")]
    AddressMismatch {
        id: u64,
        listed: SocketAddr,
        listen: SocketAddr,
    },
    #[error(
        "admin_listen {0} must be a loopback address: /status and /metrics are unauthenticated"
    )]
    AdminNotLoopback(SocketAddr),
    #[error("fault_injection = true needs admin_listen: the faults are set through it")]
    FaultsWithoutAdmin,
    #[error("certs_dir {0} has no ca.pem; run `umbra certs init --out {0}` first")]
    NoCertificates(PathBuf),
    #[error(transparent)]
    Raft(#[from] umbra_consensus::ConfigError),
}

impl NodeConfig {
    /// Reads and validates a `node.toml`.
    pub fn load(path: &Path) -> Result<Self, NodeConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| NodeConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let config: NodeConfig =
            toml::from_str(&text).map_err(|source| NodeConfigError::Parse {
                path: path.to_owned(),
                source: Box::new(source),
            })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks the values fit together.
    pub fn validate(&self) -> Result<(), NodeConfigError> {
        if self.id == 0 {
            return Err(NodeConfigError::ZeroId);
        }
        let mut seen = BTreeSet::new();
        for peer in &self.peers {
            if !seen.insert(peer.id) {
                return Err(NodeConfigError::DuplicatePeer(peer.id));
            }
            if peer.id == self.id && peer.address != self.listen {
                return Err(NodeConfigError::AddressMismatch {
                    id: peer.id,
                    listed: peer.address,
                    listen: self.listen,
                });
            }
        }
        if !self.join && !seen.contains(&self.id) {
            return Err(NodeConfigError::SelfNotListed { id: self.id });
        }
        if let Some(admin) = self.admin_listen
            && !admin.ip().is_loopback()
        {
            return Err(NodeConfigError::AdminNotLoopback(admin));
        }
        if self.fault_injection && self.admin_listen.is_none() {
            return Err(NodeConfigError::FaultsWithoutAdmin);
        }
        if !self.certs_dir.join(umbra_proto::tls::CA_CERT_FILE).exists() {
            return Err(NodeConfigError::NoCertificates(self.certs_dir.clone()));
        }
        self.raft.validate()?;
        Ok(())
    }

    /// Voters of a brand-new cluster: every founding member, or none for a joining node.
    pub fn initial_voters(&self) -> Vec<u64> {
        if self.join {
            Vec::new()
        } else {
            self.peers.iter().map(|p| p.id).collect()
        }
    }

    /// Renders the config as TOML (used by `umbra demo` and the tests to write node files).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("node config always serialises")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &Path) -> NodeConfig {
        NodeConfig {
            id: 1,
            listen: "127.0.0.1:7001".parse().unwrap(),
            data_dir: dir.join("data"),
            certs_dir: dir.to_owned(),
            admin_listen: Some("127.0.0.1:9001".parse().unwrap()),
            join: false,
            peers: vec![
                PeerConfig {
                    id: 1,
                    address: "127.0.0.1:7001".parse().unwrap(),
                },
                PeerConfig {
                    id: 2,
                    address: "127.0.0.1:7002".parse().unwrap(),
                },
            ],
            fault_injection: false,
            raft: umbra_consensus::Config::default(),
        }
    }

    #[test]
    fn round_trips_through_toml_and_checks_mistakes() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), "x").unwrap();
        let good = config(dir.path());
        let path = dir.path().join("node.toml");
        std::fs::write(&path, good.to_toml()).unwrap();
        assert_eq!(NodeConfig::load(&path).unwrap(), good);

        let cases: Vec<(NodeConfig, &str)> = vec![
            (
                NodeConfig {
                    id: 0,
                    ..good.clone()
                },
                "id must be 1",
            ),
            (
                NodeConfig {
                    id: 3,
                    ..good.clone()
                },
                "join = true",
            ),
            (
                NodeConfig {
                    admin_listen: Some("0.0.0.0:9".parse().unwrap()),
                    ..good.clone()
                },
                "loopback",
            ),
            (
                NodeConfig {
                    certs_dir: dir.path().join("nope"),
                    ..good.clone()
                },
                "umbra certs init",
            ),
            (
                NodeConfig {
                    listen: "127.0.0.1:1".parse().unwrap(),
                    ..good.clone()
                },
                "must match",
            ),
        ];
        for (config, expected) in cases {
            let message = config.validate().expect_err(expected).to_string();
            assert!(
                message.contains(expected),
                "{message:?} should mention {expected:?}"
            );
        }
        let unknown = dir.path().join("bad.toml");
        std::fs::write(&unknown, format!("{}\nbogus = 1\n", good.to_toml())).unwrap();
        assert!(NodeConfig::load(&unknown).is_err());
    }
}
