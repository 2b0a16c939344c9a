//! `umbra capacity request|reserve|list|release` and `umbra predict`: capacity claims and the
//! leader's demand forecast through the operator API.
//!
//! `request` holds serving instances of a service from now (`--wait` follows the pool until
//! they serve, with a progress bar, and prints which came from dormant and which were
//! launched cold, and each one's time to serving); `reserve` holds them for a window ahead;
//! `release` gives a claim back; `list` shows the claims and how the pool met each; `predict`
//! shows the forecast the leader sizes a serving pool from.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};
use umbra_orchestrator::api::{ApiClient, CapacityBody, CapacityReport, ClaimStatus};
use umbra_orchestrator::api::{FulfilmentView, Written};
use umbra_orchestrator::capacity::MemberWas;

use crate::operator::{ApiArgs, print_json};

/// Pause between polls of `request --wait`.
const WAIT_POLL: Duration = Duration::from_millis(250);

/// Arguments of `umbra capacity`.
#[derive(Debug, clap::Args)]
pub struct CapacityArgs {
    #[command(subcommand)]
    command: CapacityCommand,
}

/// What a claim holds.
#[derive(Debug, clap::Args)]
struct Claimed {
    /// The service.
    service: String,
    /// Its serving region.
    #[arg(long)]
    region: String,
    /// Serving instances to hold.
    #[arg(long)]
    instances: u32,
}

impl Claimed {
    /// The API body claiming this, for the window given.
    fn body(
        self,
        start: Option<String>,
        end: Option<String>,
        hold_secs: Option<u64>,
    ) -> CapacityBody {
        CapacityBody {
            service: self.service,
            region: self.region,
            instances: self.instances,
            start,
            end,
            hold_secs,
        }
    }
}

#[derive(Debug, clap::Subcommand)]
enum CapacityCommand {
    /// Hold serving instances of a service in its serving region from now: dormant
    /// instances are activated first, cold ones launched for the rest.
    Request {
        #[command(flatten)]
        what: Claimed,
        /// How long to hold them, seconds (default one hour).
        #[arg(long)]
        hold_secs: Option<u64>,
        /// Follow the pool until every instance serves, then say how each got there.
        #[arg(long)]
        wait: bool,
        /// Longest --wait, seconds.
        #[arg(long, default_value_t = 300)]
        wait_secs: u64,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Reserve serving instances for a window ahead (the guaranteed tier): they are
    /// provisioned dormant ahead of it and serve when it opens.
    Reserve {
        #[command(flatten)]
        what: Claimed,
        /// Window start, RFC 3339 (e.g. 2026-12-01T09:00:00Z).
        #[arg(long)]
        start: String,
        /// Window end, RFC 3339.
        #[arg(long)]
        end: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// The claims in force or ahead, and how each pool met them.
    List {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Give a claim back.
    Release {
        /// The claim's id (`cap-N`).
        id: String,
        #[command(flatten)]
        api: ApiArgs,
    },
}

/// Arguments of `umbra predict`.
#[derive(Debug, clap::Args)]
pub struct PredictArgs {
    /// The service.
    service: String,
    /// The region (default: the service's serving region, the one the leader forecasts).
    #[arg(long)]
    region: Option<String>,
    #[command(flatten)]
    api: ApiArgs,
}

pub fn run(args: CapacityArgs) -> anyhow::Result<()> {
    match args.command {
        CapacityCommand::Request {
            what,
            hold_secs,
            wait,
            wait_secs,
            api,
        } => api.run(async |client| {
            let body = what.body(None, None, hold_secs);
            // With --wait --json, the one JSON document is the fulfilled claim.
            let print = match (api.json, wait) {
                (true, true) => Print::Nothing,
                (true, false) => Print::Json,
                (false, _) => Print::Text,
            };
            let id = claim(&client, &body, print).await?;
            if wait {
                let claim =
                    wait_fulfilled(&client, &id, Duration::from_secs(wait_secs), api.json).await?;
                if api.json {
                    print_json(&claim)?;
                } else {
                    print_claim(&claim);
                }
            }
            Ok(())
        }),
        CapacityCommand::Reserve {
            what,
            start,
            end,
            api,
        } => api.run(async |client| {
            let body = what.body(Some(start), Some(end), None);
            let print = if api.json { Print::Json } else { Print::Text };
            claim(&client, &body, print).await.map(drop)
        }),
        CapacityCommand::List { api } => api.run(async |client| {
            let report = client.capacity().await?;
            if api.json {
                return print_json(&report);
            }
            print_list(&report);
            Ok(())
        }),
        CapacityCommand::Release { id, api } => api.run(async |client| {
            let applied = client.release_capacity(&id).await?;
            if api.json {
                return print_json(&applied);
            }
            println!("released {id}; the pool shrinks back after its hysteresis");
            Ok(())
        }),
    }
}

pub fn predict(args: PredictArgs) -> anyhow::Result<()> {
    args.api.run(async |client| {
        let report = client
            .forecast(&args.service, args.region.as_deref())
            .await?;
        if args.api.json {
            return print_json(&report);
        }
        println!("{} in {}: {}", report.service, report.region, report.model);
        if report.slices.is_empty() {
            println!("  no forecast slices (no usable demand history, or a reactive pool)");
        }
        for s in &report.slices {
            println!(
                "  {}  mean {:>8.1} rps  held {:>8.1} rps  warm {} dormant {}",
                s.start, s.mean, s.quantile, s.target.warm, s.target.dormant
            );
        }
        Ok(())
    })
}

/// How `claim` shows the new claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Print {
    Json,
    Text,
    Nothing,
}

/// Proposes the claim, shows it as `print` says, and returns its id.
async fn claim(client: &ApiClient, body: &CapacityBody, print: Print) -> anyhow::Result<String> {
    let applied = client.claim_capacity(body).await?;
    let Written::Capacity { id } = &applied else {
        bail!("the API answered {applied:?} to a capacity claim");
    };
    if print == Print::Json {
        print_json(&applied)?;
    } else if print == Print::Text {
        println!(
            "{id}: {} instances of {} in {}{}; `umbra capacity list` shows how the pool meets it",
            body.instances,
            body.service,
            body.region,
            match (&body.start, &body.end) {
                (Some(start), Some(end)) => format!(" from {start} to {end}"),
                _ => String::new(),
            }
        );
    }
    Ok(id.clone())
}

/// Polls `GET /v1/capacity` until every member of claim `id` serves.
async fn wait_fulfilled(
    client: &ApiClient,
    id: &str,
    limit: Duration,
    quiet: bool,
) -> anyhow::Result<ClaimStatus> {
    let bar = if quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(0)
    };
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg} [{bar:20}] {pos}/{len} serving")
            .context("progress template")?,
    );
    bar.enable_steady_tick(Duration::from_millis(100));
    let deadline = Instant::now() + limit;
    loop {
        let report = client.capacity().await?;
        let Some(claim) = report.claims.into_iter().find(|c| c.id == id) else {
            bar.finish_and_clear();
            bail!("claim {id} is gone (released, or its window ended)");
        };
        match &claim.fulfilment {
            Some(f) => {
                bar.set_length(f.members.len() as u64);
                let serving = f.members.iter().filter(|m| m.serving_at.is_some());
                bar.set_position(serving.count() as u64);
                bar.set_message(id.to_owned());
                if f.fulfilled {
                    bar.finish_and_clear();
                    return Ok(claim);
                }
            }
            None => bar.set_message(format!(
                "{id}: waiting for the leader's pool controller (leader {:?})",
                report.leader.leader
            )),
        }
        if Instant::now() >= deadline {
            bar.finish_and_clear();
            bail!(
                "claim {id} is not served after {} s; `umbra capacity list` shows which instances are missing, and the region agent's log why",
                limit.as_secs()
            );
        }
        tokio::time::sleep(WAIT_POLL).await;
    }
}

fn was(w: MemberWas) -> &'static str {
    match w {
        MemberWas::Serving => "serving already",
        MemberWas::Dormant => "from dormant",
        MemberWas::Cold => "launched cold",
    }
}

fn print_fulfilment(f: &FulfilmentView) {
    for m in &f.members {
        let ready = match m.ready_after_ms {
            Some(ms) => format!("serving {:.1} s after the window opened", ms as f64 / 1e3),
            None => "not serving yet".to_owned(),
        };
        println!("    {:<24} {:<16} {ready}", m.instance, was(m.was));
    }
}

fn print_claim(claim: &ClaimStatus) {
    let c = claim;
    println!(
        "{} {:?} {} instances of {} in {} from {} to {}",
        c.id, c.kind, c.instances, c.service, c.region, c.start, c.end
    );
    match &claim.fulfilment {
        Some(f) => print_fulfilment(f),
        None => println!("    not in effect yet (or this node does not lead)"),
    }
}

fn print_list(report: &CapacityReport) {
    if report.claims.is_empty() {
        println!("no capacity claims in force");
    }
    for claim in &report.claims {
        print_claim(claim);
    }
    for p in &report.pools {
        println!(
            "pool {} in {}: target {} warm + {} dormant, holds {} + {} ({})",
            p.service,
            p.region,
            p.target.warm,
            p.target.dormant,
            p.actual.warm,
            p.actual.dormant,
            p.forecast
        );
    }
    if report.pools.is_empty() {
        println!(
            "(pools and fulfilment are shown by the leader's API only; the leader is node {:?})",
            report.leader.leader
        );
    }
}
