//! Three real `umbra-orchestrator` processes in orchestrator mode (the default state machine),
//! each with its operator API, agent gateway, embedded DNS server and executor, as a
//! deployment runs them. Through the API (`api::ApiClient`, operator certificate + token):
//! a plan applies and reads back from every node, a plan naming an unknown region is refused
//! with a message that names it, every node's own replica (admin `/status`, not the API,
//! which reads through the leader) holds the same state, and every node's DNS server answers
//! the service's name with the primary region's front (each serves its own replica). An agent
//! (region certificate) opening an agent stream on any node's QUIC endpoint gets the
//! gateway's hello reply: `Leader` from the leader, `NotLeader` naming the leader elsewhere. Then the
//! leader is SIGKILLed: a survivor's API still answers, a new leader is elected, writes go
//! through, and the survivors' DNS still answers. SIGTERM stops a node cleanly (exit 0).
//!
//! The plan is `examples/plan.toml` (`Plan::example()`) without its schedule, so the executor
//! starts no migration. Run `cargo build --workspace --bins` first; all traffic stays on
//! 127.0.0.1.

use std::cell::RefCell;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::Context;
use hickory_proto::rr::{RData, RecordType};
use umbra_dns::verify::resolver_for;
use umbra_proto::agent::HelloReply;
use umbra_proto::{Identity, Role};
use umbra_tests::{Cluster, Options, front_ip, unscheduled_plan, wait_for};

/// The region whose agent certificate the test uses to open agent streams.
const REGION: &str = "us-east";
/// How long an election plus the first API answer may take on a loaded 2-core machine.
const CLUSTER_DEADLINE: Duration = Duration::from_secs(60);
const HELLO_TIMEOUT: Duration = Duration::from_secs(20);
const SIGTERM_DEADLINE: Duration = Duration::from_secs(20);

/// Opens an agent stream (agent certificate of `REGION`) on node `id`'s QUIC endpoint and
/// returns the gateway's answer to the hello.
async fn agent_hello(cluster: &Cluster, id: u64) -> anyhow::Result<HelloReply> {
    let greeting = umbra_testkit::agent::agent_hello(
        cluster.nodes[&id].listen(),
        &cluster.credentials(&Identity::new(Role::Agent, REGION)?)?,
        REGION,
        HELLO_TIMEOUT,
    )
    .await?;
    greeting.endpoint.close();
    greeting
        .reply
        .context("the node sent no hello reply in time (or closed the agent stream)")
}

/// The addresses `server` answers for `name` (A records), asked with a fresh resolver so no
/// cache hides a change.
async fn resolve(server: SocketAddr, name: &str) -> anyhow::Result<Vec<IpAddr>> {
    let resolver = resolver_for(server)?;
    let lookup = resolver.lookup(name, RecordType::A).await?;
    Ok(lookup
        .answers()
        .iter()
        .filter_map(|record| match &record.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            _ => None,
        })
        .collect())
}

/// Waits until `server` answers `name` with exactly `expected`.
async fn wait_for_record(
    server: SocketAddr,
    name: &str,
    expected: &[IpAddr],
) -> anyhow::Result<()> {
    let last = RefCell::new(String::new());
    wait_for(
        &format!("DNS server {server} to answer {name} with {expected:?}"),
        CLUSTER_DEADLINE,
        || async {
            match resolve(server, name).await {
                Ok(found) if found == expected => return Some(()),
                Ok(found) => *last.borrow_mut() = format!("answered {found:?}"),
                Err(error) => *last.borrow_mut() = error.to_string(),
            }
            None
        },
    )
    .await
    .with_context(|| format!("last: {}", last.borrow()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_processes_serve_api_and_dns_and_survive_the_leader() -> anyhow::Result<()> {
    let mut cluster = Cluster::launch(Options::orchestrator(3)).await?;
    let all = [1, 2, 3];
    let leader = cluster
        .wait_for_api_leader(1, &all, CLUSTER_DEADLINE)
        .await?;
    let plan = unscheduled_plan();
    let shop = plan.services[0].clone();
    assert_eq!(shop.primary_region, REGION);
    let primary_front = front_ip(&plan, REGION)?;

    // A plan through a follower's API (forwarded to the leader).
    let follower = if leader == 1 { 2 } else { 1 };
    let applied = cluster
        .api(follower)?
        .apply_plan_toml(&toml::to_string(&plan)?)
        .await
        .context("applying the plan through a follower")?;
    assert!(format!("{applied:?}").contains("Plan"), "{applied:?}");

    // A plan naming an unknown region is refused, and the message names the region.
    let mut unknown = plan.clone();
    unknown.services[0].primary_region = "mars".into();
    let refused = cluster
        .api(leader)?
        .apply_plan_toml(&toml::to_string(&unknown)?)
        .await
        .expect_err("a plan with an unknown region must be refused");
    assert!(refused.to_string().contains("mars"), "{refused}");

    // Every node's API reads the plan back, and every node's state is the same.
    let mut overviews = Vec::new();
    for id in all {
        let status = cluster.api(id)?.status().await?;
        assert_eq!(
            status.overview.regions.len(),
            plan.regions.len(),
            "node {id}"
        );
        let served = &status.overview.services[&shop.name];
        assert_eq!(served.primary_region, REGION, "node {id}");
        overviews.push(status.overview);
    }
    assert!(overviews.windows(2).all(|w| w[0] == w[1]));
    // The API reads through the leader; each node's own replica is on its admin `/status`.
    let replicas = cluster
        .wait_for_replicas(&overviews[0], CLUSTER_DEADLINE)
        .await?;
    assert_eq!(replicas, 3);

    // Every node's DNS serves the replicated weights: all weight on the primary's front.
    for id in all {
        wait_for_record(cluster.nodes[&id].dns(), &shop.hostname, &[primary_front])
            .await
            .with_context(|| format!("node {id}"))?;
    }

    // Agents reach the gateway on every node's QUIC endpoint: the leader takes the stream,
    // the others point at the leader.
    let leader = cluster
        .wait_for_api_leader(follower, &all, CLUSTER_DEADLINE)
        .await?;
    for id in all {
        let reply = agent_hello(&cluster, id).await?;
        if id == leader {
            assert!(
                matches!(reply, HelloReply::Leader { node_id, .. } if node_id == leader),
                "node {id}: {reply:?}"
            );
        } else {
            let leader_quic = cluster.nodes[&leader].listen().to_string();
            assert_eq!(
                reply,
                HelloReply::NotLeader {
                    leader_id: Some(leader),
                    leader_addr: Some(leader_quic),
                },
                "node {id}"
            );
        }
    }

    // SIGKILL the leader; a survivor's API still answers and a new leader takes writes.
    cluster.kill(leader)?;
    let survivors = cluster.live();
    assert_eq!(survivors.len(), 2, "{survivors:?}");
    let survivor = survivors[0];
    let new_leader = cluster
        .wait_for_api_leader(survivor, &survivors, CLUSTER_DEADLINE)
        .await?;
    assert_ne!(new_leader, leader);
    let status = cluster.api(survivor)?.status().await?;
    assert_eq!(status.overview.services[&shop.name].primary_region, REGION);
    let mut grown = plan.clone();
    let mut added = grown.regions[0].clone();
    added.name = "ap-south".into();
    added.front = "127.0.0.13:8080".into();
    grown.regions.push(added);
    cluster
        .api(survivors[1])?
        .apply_plan_toml(&toml::to_string(&grown)?)
        .await
        .context("a write after the leader died")?;
    let after = cluster.api(survivor)?.status().await?;
    assert_eq!(
        cluster
            .wait_for_replicas(&after.overview, CLUSTER_DEADLINE)
            .await?,
        2
    );
    for id in &survivors {
        let status = cluster.api(*id)?.status().await?;
        assert_eq!(
            status.overview.regions.len(),
            grown.regions.len(),
            "node {id}"
        );
        wait_for_record(cluster.nodes[id].dns(), &shop.hostname, &[primary_front])
            .await
            .with_context(|| format!("node {id}"))?;
    }

    // SIGTERM: a clean stop, exit status 0.
    for id in survivors {
        let status = cluster.terminate(id, SIGTERM_DEADLINE).await?;
        assert!(
            status.success(),
            "node {id} exited {status}; log:\n{}",
            cluster.nodes[&id].log_tail(30)
        );
    }
    Ok(())
}
