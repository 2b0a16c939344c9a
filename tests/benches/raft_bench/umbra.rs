//! Umbra's side: three `umbra-orchestrator` processes in key-value mode (the test harness's
//! `Cluster`), with the class's tick interval.

use std::time::Duration;

use umbra_consensus::kv::KvCommand;
use umbra_orchestrator::store::StoreClient;
use umbra_proto::Credentials;
use umbra_tests::{Cluster, Options};

use crate::{Putter, System};

pub struct UmbraCluster {
    cluster: Cluster,
    credentials: Credentials,
}

impl UmbraCluster {
    pub async fn launch(tick_ms: u64, election_ticks: usize) -> anyhow::Result<UmbraCluster> {
        let cluster = Cluster::launch(Options {
            raft: umbra_consensus::Config {
                tick_interval_ms: tick_ms,
                heartbeat_ticks: 1,
                election_ticks,
                ..umbra_consensus::Config::default()
            },
            ..Options::kv(3)
        })
        .await?;
        let credentials = cluster.operator_credentials()?;
        Ok(UmbraCluster {
            cluster,
            credentials,
        })
    }
}

impl System for UmbraCluster {
    type Client = UmbraClient;

    fn client(&self, id: u64) -> anyhow::Result<UmbraClient> {
        Ok(UmbraClient(self.cluster.client_starting_at(id)?))
    }

    fn pinned(&self, id: u64) -> anyhow::Result<UmbraClient> {
        Ok(UmbraClient(StoreClient::pinned(
            &self.credentials,
            self.cluster.nodes[&id].listen(),
        )?))
    }

    async fn leader(&self, deadline: Duration) -> anyhow::Result<u64> {
        self.cluster.wait_for_leader(deadline).await
    }

    async fn settle(&self, deadline: Duration) -> anyhow::Result<()> {
        let leader = self
            .cluster
            .wait_for_leader_among(&[1, 2, 3], deadline)
            .await?;
        let applied = self
            .cluster
            .status(leader)
            .await?
            .digest
            .map(|d| d.commands_applied)
            .unwrap_or(0);
        self.cluster
            .wait_for_same_state(&[1, 2, 3], applied, deadline)
            .await?;
        Ok(())
    }

    fn kill(&mut self, id: u64) -> anyhow::Result<()> {
        self.cluster.kill(id)
    }

    fn restart(&mut self, id: u64) -> anyhow::Result<()> {
        self.cluster.spawn(id)
    }
}

pub struct UmbraClient(StoreClient);

impl Putter for UmbraClient {
    async fn put(&mut self, key: String, value: Vec<u8>) -> anyhow::Result<()> {
        self.0
            .propose(KvCommand::Put { key, value }.encode())
            .await?;
        Ok(())
    }
}
