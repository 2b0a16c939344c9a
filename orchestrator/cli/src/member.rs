//! `umbra member add|remove`: change the orchestrators' Raft membership over QUIC with an
//! operator certificate, through whichever node leads. The replace path for a node that lost
//! its disk is `remove`, then `add` with the same id and address, then the node starts with
//! `join = true` and catches up by snapshot. A thin shell over `StoreClient`.

use std::net::SocketAddr;

use anyhow::Context;
use umbra_proto::MembershipChange;

use crate::kv::Target;

/// Arguments of `umbra member`.
#[derive(Debug, clap::Args)]
pub struct MemberArgs {
    #[command(subcommand)]
    command: MemberCommand,
}

#[derive(Debug, clap::Subcommand)]
enum MemberCommand {
    /// Add orchestrator ID, reachable at ADDRESS (its `listen`), as a voter. Start it with
    /// `join = true`: it learns the state from the leader.
    Add {
        id: u64,
        address: SocketAddr,
        #[command(flatten)]
        target: Target,
    },
    /// Remove orchestrator ID from the group (the first step of replacing its disk).
    Remove {
        id: u64,
        #[command(flatten)]
        target: Target,
    },
}

pub fn run(args: MemberArgs) -> anyhow::Result<()> {
    let (target, change, done) = match args.command {
        MemberCommand::Add {
            id,
            address,
            target,
        } => (
            target,
            MembershipChange::AddNode {
                node_id: id,
                addr: address,
            },
            format!("added node {id} at {address}"),
        ),
        MemberCommand::Remove { id, target } => (
            target,
            MembershipChange::RemoveNode { node_id: id },
            format!("removed node {id}"),
        ),
    };
    let (MembershipChange::AddNode { node_id, .. } | MembershipChange::RemoveNode { node_id }) =
        change;
    anyhow::ensure!(
        node_id > 0,
        "node ids start at 1: give the `id` from the node's config"
    );
    let (runtime, mut client) = target.client()?;
    let voters = runtime
        .block_on(client.change_membership(change))
        .context("changing the membership")?;
    println!("{done}; members now {voters:?}");
    Ok(())
}
