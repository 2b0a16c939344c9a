//! `umbra apply -f FILE.toml`: send a plan (regions, services, schedules) to the operator
//! API. The file is parsed here first, so a malformed plan is reported with its file name,
//! line and column before anything is sent; the cluster then checks it against the
//! replicated state (unknown regions, services in flight) and applies it or says why not.

use std::path::PathBuf;

use anyhow::Context;
use umbra_orchestrator::api::Written;
use umbra_orchestrator::state::Plan;

use crate::operator::{ApiArgs, counted, print_json};

/// Arguments of `umbra apply`.
#[derive(Debug, clap::Args)]
pub struct ApplyArgs {
    /// The plan file (TOML: [[region]], [[service]], [[schedule]], [[game_day]]).
    #[arg(short = 'f', long = "file")]
    file: PathBuf,
    #[command(flatten)]
    api: ApiArgs,
}

pub fn run(args: ApplyArgs) -> anyhow::Result<()> {
    let file = args.file.clone();
    args.api.run(async |client| {
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("cannot read the plan {}", file.display()))?;
        Plan::from_toml(&text)
            .with_context(|| format!("{} is not a valid plan", file.display()))?;
        let applied = client.apply_plan_toml(&text).await?;
        if args.api.json {
            // The API's answer as it is: `{"resource": "plan", "regions": 2, ...}`.
            return print_json(&applied);
        }
        match applied {
            Written::Plan {
                regions,
                services,
                schedules,
            } => println!(
                "applied {}: {}, {}, {}",
                file.display(),
                counted(regions, "region"),
                counted(services, "service"),
                counted(schedules, "schedule")
            ),
            other => println!("applied {}: {other:?}", file.display()),
        }
        Ok(())
    })
}
