//! The operator API on every node of a three-node cluster started as a deployment starts it
//! (`executor_support::Cluster`: `node::start` per node, Raft over QUIC with mutual TLS, the
//! node serving its store's client streams): a plan and a migration written through a
//! follower's API are forwarded to the leader, a refusal through the follower is the state's
//! own (HTTP 400 naming the problem), reads through either API are the same (linearizable),
//! and every node's own replica ends the same. `node_cluster` runs the same wiring as separate
//! processes; this test is where a follower's forwarded writes and refusals are checked.

use umbra_orchestrator::api;
use umbra_orchestrator::api::Written;
use umbra_orchestrator::node::NodeEnvironment;
use umbra_orchestrator::state::{MigrationRequest, Plan};

mod executor_support;

use executor_support::Cluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_through_a_follower_are_forwarded_and_every_node_ends_the_same() -> anyhow::Result<()>
{
    let cluster = Cluster::start(3, NodeEnvironment::default()).await?;
    let leader = cluster.leader().await?;
    let follower = cluster.follower_of(leader);
    let via_follower = cluster.client(follower);

    // The example plan without its schedule, so no executor creates a migration of its own.
    let mut plan = Plan::example();
    plan.schedules.clear();
    let applied = via_follower
        .apply_plan_toml(&toml::to_string(&plan)?)
        .await
        .expect("forwarded");
    assert!(
        matches!(applied, Written::Plan { services: 1, .. }),
        "{applied:?}"
    );
    let request = MigrationRequest {
        from: Some("us-east".to_owned()),
        ..MigrationRequest::new("shop", "eu-west", 4_000_000_000_000)
    };
    let Written::Migration { id } = via_follower.migrate(&request).await.expect("forwarded") else {
        panic!("a migration id");
    };

    // A refusal through the follower is the state's.
    let mut bad = plan.clone();
    bad.services[0].primary_region = "mars".to_owned();
    match via_follower.apply_plan_toml(&toml::to_string(&bad)?).await {
        Err(api::ClientError::Refused { status, message }) => {
            assert_eq!(status.as_u16(), 400);
            assert!(message.contains("\"mars\""), "{message}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }

    let report = cluster.client(leader).status().await?;
    assert_eq!(report.leader.leader, Some(leader));
    assert_eq!(report.migrations[0].id, id);
    assert_eq!(report.migrations[0].phase, "planned");
    let from_follower = via_follower.status().await?;
    assert_eq!(
        from_follower.overview, report.overview,
        "reads are linearizable"
    );

    let replica = cluster
        .replicas_agree(|o| o.migrations.contains_key(&id))
        .await?;
    assert_eq!(replica.services["shop"].primary_region, "us-east");
    assert_eq!(cluster.live().len(), 3, "all three replicas compared");
    Ok(())
}
