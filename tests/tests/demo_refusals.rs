//! Refusals through the operator API of the demo's real processes (three orchestrators, three
//! agents): a plan naming an unknown region, and a migration to one, are refused with a message
//! that names the region, and change nothing; the demo's own plan is then accepted.

use umbra_demo::scenario::{DemoTiming, migration_request};
use umbra_demo::{DemoOptions, IdleCluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_or_migration_naming_an_unknown_region_is_refused_and_changes_nothing()
-> anyhow::Result<()> {
    let bin_dir = umbra_tests::bin_dir()?;
    let mut cluster =
        IdleCluster::start(&DemoOptions::new(bin_dir), &|line| eprintln!("{line}")).await?;
    let good = cluster.demo_plan();

    let bad = good.replace(
        "primary_region = \"us-east\"",
        "primary_region = \"mars-1\"",
    );
    let error = cluster
        .apply_plan_toml(&bad)
        .await
        .expect_err("a plan naming an unknown region is refused");
    eprintln!("refused: {error}");
    assert!(
        error.contains("mars-1"),
        "the message names the region: {error}"
    );
    let overview = cluster.overview().await.map_err(anyhow::Error::msg)?;
    assert!(
        overview.regions.is_empty(),
        "the refused plan changed nothing"
    );
    assert!(overview.services.is_empty());

    cluster
        .apply_plan_toml(&good)
        .await
        .map_err(anyhow::Error::msg)?;
    let request = migration_request("us-east", "mars-1", 0, &DemoTiming::default(), true);
    let error = cluster
        .migrate(&request)
        .await
        .expect_err("a migration to an unknown region is refused");
    eprintln!("refused: {error}");
    assert!(
        error.contains("mars-1"),
        "the message names the region: {error}"
    );
    let overview = cluster.overview().await.map_err(anyhow::Error::msg)?;
    assert_eq!(overview.regions.len(), 3);
    let migrations = cluster.migrations().await.map_err(anyhow::Error::msg)?;
    assert!(
        migrations.is_empty(),
        "the refused migration changed nothing: {migrations:?}"
    );
    assert_eq!(cluster.running().len(), 6, "every process is still up");
    Ok(())
}
