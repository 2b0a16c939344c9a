//! `umbra rollback ID --reason ...`: ask the cluster to roll a migration back. The leader's
//! executor puts the traffic back on the source; `umbra status` shows it happen.

use crate::operator::{ApiArgs, migration_resource, print_json};

/// Arguments of `umbra rollback`.
#[derive(Debug, clap::Args)]
pub struct RollbackArgs {
    /// The migration's id (from `umbra migrate` or `umbra status`).
    id: String,
    /// Why (kept in the audit log).
    #[arg(long)]
    reason: String,
    #[command(flatten)]
    api: ApiArgs,
}

pub fn run(args: RollbackArgs) -> anyhow::Result<()> {
    args.api.run(async |client| {
        client.rollback(&args.id, &args.reason).await?;
        if args.api.json {
            return print_json(&migration_resource(&client, &args.id).await?);
        }
        println!(
            "migration {} is rolling back; follow it with `umbra status --watch`",
            args.id
        );
        Ok(())
    })
}
