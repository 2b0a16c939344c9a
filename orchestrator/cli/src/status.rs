//! `umbra status [--watch]`: what the cluster is doing. Once: the leader, every migration
//! (phase, lifecycle stage, target share, readiness), each serving pool (target, what it
//! holds, the forecast it follows; shown by the leader only) and the recent audit log. With
//! `--watch`: a live progress bar per migration (stages done / total, readiness score) and
//! one line per phase change, until every migration shown has ended (or Ctrl-C).
//!
//! It only reads; it must not change the cluster.

use std::collections::BTreeMap;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use umbra_orchestrator::api::{DrillVerdict, DrillView, MigrationStatus, StatusReport};

use crate::operator::{ApiArgs, counted, print_json};

/// Default pause between polls of `--watch`: 500 ms, fast enough to see a 10 % step of a
/// demo with a few-second analysis window.
const DEFAULT_WATCH_INTERVAL_MS: u64 = 500;

/// Arguments of `umbra status`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// Keep polling and show live progress until every migration has ended.
    #[arg(long)]
    watch: bool,
    /// Pause between polls with --watch (ms).
    #[arg(long, default_value_t = DEFAULT_WATCH_INTERVAL_MS)]
    interval_ms: u64,
    #[command(flatten)]
    api: ApiArgs,
}

pub fn run(args: StatusArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.interval_ms > 0,
        "--interval-ms must be greater than zero"
    );
    args.api.run(async |client| {
        if !args.watch {
            let report = client.status().await?;
            return if args.api.json {
                print_json(&report)
            } else {
                print_report(&report);
                Ok(())
            };
        }
        let mut watch = Watch::default();
        loop {
            let report = client.status().await?;
            if args.api.json {
                // One JSON document per line, so `jq` can follow the stream.
                println!("{}", serde_json::to_string(&report)?);
            } else {
                watch.show(&report);
            }
            if report.migrations.iter().all(|m| m.terminal) {
                watch.finish();
                return Ok(());
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(args.interval_ms)) => {}
                _ = tokio::signal::ctrl_c() => {
                    watch.finish();
                    return Ok(());
                }
            }
        }
    })
}

fn readiness_text(migration: &MigrationStatus) -> String {
    match &migration.readiness {
        Some(readiness) => format!("readiness {}/100", readiness.score),
        None if migration.terminal => "readiness n/a".to_owned(),
        None => "readiness on the leader".to_owned(),
    }
}

fn line(migration: &MigrationStatus) -> String {
    format!(
        "{} {} {} → {}: {} (stage {}/{}, target share {}%, {} shadow, {})",
        migration.id,
        migration.service,
        migration.from,
        migration.to,
        migration.phase,
        migration.stages_done,
        migration.stages_total,
        migration.target_share_percent,
        migration.shadow_instances,
        readiness_text(migration),
    )
}

fn print_report(report: &StatusReport) {
    let leader = &report.leader;
    match (leader.leader, leader.this_node) {
        (Some(id), _) => println!("leader: orchestrator {id} (term {})", leader.term),
        (None, Some(_)) => println!("leader: none known (term {})", leader.term),
        (None, None) => println!("leader: not a Raft cluster"),
    }
    println!(
        "{}, {}, {}; applied index {}",
        counted(report.overview.regions.len(), "region"),
        counted(report.overview.services.len(), "service"),
        counted(report.overview.schedules.len(), "schedule"),
        report.overview.applied_index
    );
    for day in &report.overview.game_days {
        println!(
            "game day {}: {} {} at {}{}: {}{}",
            day.name,
            day.drill,
            day.region,
            day.at,
            day.to
                .as_ref()
                .map_or_else(String::new, |to| format!(" to {to}")),
            day.state,
            match (&day.verdict, day.migrations.is_empty()) {
                (Some(drill), _) => format!(", verdict {drill} (recent drills below)"),
                (None, false) => format!(", {}", day.migrations.join(", ")),
                (None, true) => String::new(),
            }
        );
    }
    if report.migrations.is_empty() {
        println!("no migrations");
    }
    for migration in &report.migrations {
        println!("{}", line(migration));
        println!(
            "    cutover at {}, phase since {}",
            migration.cutover_at, migration.phase_since
        );
        let ttl = &migration.dns_ttl;
        if ttl.low_ttl_secs < ttl.old_ttl_secs {
            let lowered = match ttl.lowered_at {
                Some(at) => format!("lowered at {at}"),
                None => format!("to be lowered at {}", ttl.lower_at),
            };
            println!(
                "    dns ttl {} s → {} s, {lowered}; every cache holds it from {}{}",
                ttl.old_ttl_secs,
                ttl.low_ttl_secs,
                ttl.low_ttl_everywhere_at,
                if ttl.late {
                    " (LATE: after the cutover starts; earlier steps take up to the old TTL to reach every client)"
                } else {
                    ""
                }
            );
        }
        match &migration.readiness {
            Some(readiness) => {
                for gate in &readiness.gates {
                    let mark = if gate.holds { "ok" } else { ".." };
                    println!("    [{mark}] {}: {}", gate.name, gate.detail);
                }
            }
            // Only the leader's executor observes the agents; another node has no gates to show.
            None if !migration.terminal => match (leader.leader, leader.this_node) {
                (Some(id), Some(this)) if id != this => println!(
                    "    readiness gates: observed by the leader, orchestrator {id}; this API is \
                     orchestrator {this}'s: point --api at the leader's to see each gate"
                ),
                _ => println!("    readiness gates: not observed yet"),
            },
            None => {}
        }
    }
    for pool in &report.pools {
        println!(
            "pool {}/{}: target {} warm + {} dormant, holding {} + {}; {}",
            pool.service,
            pool.region,
            pool.target.warm,
            pool.target.dormant,
            pool.actual.warm,
            pool.actual.dormant,
            match &pool.slice {
                Some(slice) => format!(
                    "forecast {:.0} req/s for the slice at {} ({})",
                    slice.quantile, slice.start, pool.forecast
                ),
                None => format!("no forecast: {}", pool.forecast),
            }
        );
    }
    if !report.drills.is_empty() {
        println!("recent drills:");
        for drill in &report.drills {
            println!("  {}", drill_line(drill));
        }
    }
    if !report.recent_audit.is_empty() {
        println!("recent audit:");
        for entry in &report.recent_audit {
            println!(
                "  #{} {} {}: {} ({})",
                entry.index, entry.at, entry.subject, entry.summary, entry.reason
            );
        }
    }
}

/// One recorded drill in a line: what, its verdict, when, and the evidence's figures.
fn drill_line(drill: &DrillView) -> String {
    let r = &drill.report;
    let by = drill
        .game_day
        .as_ref()
        .map_or_else(String::new, |day| format!(" (game day {day})"));
    let moved = r
        .services
        .iter()
        .filter(|s| s.outcome == "completed")
        .count();
    let mut line = format!(
        "{} {} {}{by}: {}, {} to {}; {} of {} services moved out{}, {} of {} requests failed (budget {:.2} %)",
        drill.id,
        r.drill,
        r.region,
        match r.verdict {
            DrillVerdict::Pass => "PASS",
            DrillVerdict::Fail => "FAIL",
        },
        r.started,
        r.ended,
        moved,
        r.services.len(),
        r.evacuate_ms.map_or_else(String::new, |ms| format!(
            " in {:.1} s",
            ms as f64 / 1_000.0
        )),
        r.failed_requests,
        r.requests,
        r.max_failed_ratio * 100.0
    );
    if r.rollbacks > 0 {
        line.push_str(&format!(", {} rolled back", r.rollbacks));
    }
    if r.faults_planned > 0 {
        line.push_str(&format!(
            ", {} of {} faults fired{}",
            r.faults_fired,
            r.faults_planned,
            r.seed.map_or_else(String::new, |s| format!(" (seed {s})"))
        ));
    }
    for reason in &r.reasons {
        line.push_str(&format!("\n      fail: {reason}"));
    }
    line
}

/// The live view: one bar per migration, and a printed line whenever a phase changes.
#[derive(Default)]
struct Watch {
    bars: MultiProgress,
    shown: BTreeMap<String, (ProgressBar, String)>,
    last_audit: u64,
}

impl Watch {
    fn show(&mut self, report: &StatusReport) {
        for entry in &report.recent_audit {
            if entry.index > self.last_audit {
                self.bars.suspend(|| {
                    println!(
                        "{} {}: {} ({})",
                        entry.at, entry.subject, entry.summary, entry.reason
                    )
                });
                self.last_audit = entry.index;
            }
        }
        let style = ProgressStyle::with_template("{prefix:>12} [{bar:30}] {pos}/{len} {msg}")
            .expect("the template is valid")
            .progress_chars("=> ");
        for migration in &report.migrations {
            let (bar, phase) = self.shown.entry(migration.id.clone()).or_insert_with(|| {
                let bar = self
                    .bars
                    .add(ProgressBar::new(migration.stages_total).with_style(style.clone()));
                bar.set_prefix(migration.id.clone());
                (bar, String::new())
            });
            bar.set_length(migration.stages_total);
            bar.set_position(migration.stages_done);
            bar.set_message(format!(
                "{} → {} {} share {}% {}",
                migration.from,
                migration.to,
                migration.phase,
                migration.target_share_percent,
                readiness_text(migration)
            ));
            if *phase != migration.phase && migration.terminal {
                bar.finish();
            }
            phase.clone_from(&migration.phase);
        }
    }

    fn finish(&mut self) {
        for (bar, _) in self.shown.values() {
            bar.finish();
        }
    }
}
