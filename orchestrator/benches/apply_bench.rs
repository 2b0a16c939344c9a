//! What one command costs the replicated state as its history grows (a bench binary,
//! `harness = false`).
//!
//! Two states are built through `apply`, as a node builds them: one with 10 finished
//! migrations and one with 100,000 (an archive cap raised to that size, far past the
//! product's `MAX_ARCHIVED_MIGRATIONS`, to show the worst case), each with a full audit log
//! (`MAX_AUDIT_ENTRIES`). Rounds alternate between the two states (so a warming CPU or a
//! neighbour's load falls on both alike), and each measures, one call at a time: creating a
//! migration (which archives the service's previous one and, at the cap, drops the oldest),
//! an operator's rollback, the executor's terminal transition, a dry-run `check`, and the
//! overview query the node's watcher runs after every applied entry (encoded and decoded
//! as it crosses the Raft driver). For comparison, the figures of what the previous design
//! paid per command: a copy of the whole state (its apply and check cloned it) and the
//! overview holding every migration (what its watcher encoded and decoded).
//!
//! Run: `cargo bench -p umbra-orchestrator --bench apply_bench [-- --rounds N]`. Prints a
//! table, then one JSON line.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use umbra_consensus::StateMachine;
use umbra_orchestrator::migration::{MigrationRecord, Phase};
use umbra_orchestrator::state::{
    Applied, AuditEntry, Command, DnsWeights, MAX_AUDIT_ENTRIES, MigrationRequest,
    OrchestratorState, Overview, Plan, Query, QueryAnswer, Retention, decode_answer, encode_query,
};

/// The two history sizes the acceptance compares.
const SIZES: [usize; 2] = [10, 100_000];
/// Rounds measured per size (each creates, rolls back and finishes one migration).
const DEFAULT_ROUNDS: usize = 2_000;
/// A bound on the measuring, whatever `--rounds` says.
const MAX_MEASURE: Duration = Duration::from_secs(60);
/// The cutover every bench migration asks for: far ahead, so none is refused as past.
const CUTOVER_MS: u64 = 4_000_000_000_000;

/// A state applying commands from index 1 on.
struct Driver {
    state: OrchestratorState,
    index: u64,
}

impl Driver {
    fn apply(&mut self, command: &Command) -> Applied {
        self.index += 1;
        self.state
            .apply_command(self.index, command)
            .unwrap_or_else(|e| panic!("{command:?} is refused: {e}"))
    }

    fn create(&mut self) -> String {
        let request = MigrationRequest::new("shop", "eu-west", CUTOVER_MS);
        match self.apply(&Command::CreateMigration { request, at_ms: 10 }) {
            Applied::Migration { id } => id,
            other => panic!("{other:?}"),
        }
    }
}

fn rollback(id: &str) -> Command {
    Command::RequestRollback {
        id: id.to_owned(),
        reason: "bench".to_owned(),
        at_ms: 11,
    }
}

fn rolled_back(id: &str) -> Command {
    Command::Transition {
        id: id.to_owned(),
        from: Phase::RollingBack,
        to: Phase::RolledBack,
        reason: "bench".to_owned(),
        shadow_instances: None,
        rollback_ms: Some(1),
        term: 1,
        at_ms: 12,
    }
}

/// A state holding `finished` finished migrations (all kept) and a full audit log.
fn build(finished: usize) -> Driver {
    let mut driver = Driver {
        state: OrchestratorState::with_retention(Retention {
            archived_migrations: finished,
            ..Retention::default()
        }),
        index: 0,
    };
    driver.apply(&Command::ApplyPlan {
        plan: Plan::example(),
        at_ms: 1,
    });
    for _ in 0..finished {
        let id = driver.create();
        driver.apply(&rollback(&id));
        driver.apply(&rolled_back(&id));
    }
    while driver.state.audit().len() < MAX_AUDIT_ENTRIES {
        driver.apply(&Command::SetDnsWeights {
            service: "shop".to_owned(),
            dns: DnsWeights {
                weights: BTreeMap::from([("us-east".to_owned(), 1)]),
                ttl_secs: 30,
            },
            reason: "bench".to_owned(),
            term: 1,
            at_ms: 13,
        });
    }
    driver
}

/// Microseconds of each sample, for percentiles.
#[derive(Default)]
struct Samples(Vec<f64>);

impl Samples {
    fn time<T>(&mut self, f: impl FnOnce() -> T) -> T {
        let start = Instant::now();
        let out = f();
        self.0.push(start.elapsed().as_secs_f64() * 1e6);
        out
    }

    fn percentile(&self, p: f64) -> f64 {
        let mut sorted = self.0.clone();
        sorted.sort_by(f64::total_cmp);
        if sorted.is_empty() {
            return f64::NAN;
        }
        let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
        sorted[rank]
    }
}

/// One size's figures, microseconds.
struct Figures {
    finished: usize,
    rounds: usize,
    create: Samples,
    rollback: Samples,
    finish: Samples,
    check: Samples,
    overview: Samples,
    full_clone: Samples,
    full_overview: Samples,
    snapshot_bytes: usize,
    overview_migrations: usize,
}

fn overview_read(state: &OrchestratorState) -> Overview {
    match decode_answer(&state.query(&encode_query(&Query::Overview))) {
        Ok(QueryAnswer::Overview(overview)) => *overview,
        other => panic!("{other:?}"),
    }
}

/// One round on `driver`: a dry run, then create, roll back and finish one migration, and
/// the overview read after it.
fn round(driver: &mut Driver, figures: &mut Figures, probe: &Command) {
    figures
        .check
        .time(|| driver.state.check(probe))
        .expect("the service is free");
    let id = figures.create.time(|| driver.create());
    let command = rollback(&id);
    figures.rollback.time(|| driver.apply(&command));
    let command = rolled_back(&id);
    figures.finish.time(|| driver.apply(&command));
    figures.overview.time(|| overview_read(&driver.state));
    figures.rounds += 1;
}

/// Measures every size in `SIZES`. Both states are built first and the rounds alternate
/// between them, so a warming CPU or another process's load falls on both alike.
fn measure(rounds: usize) -> Vec<Figures> {
    let mut drivers: Vec<Driver> = SIZES.iter().map(|&n| build(n)).collect();
    let mut all: Vec<Figures> = SIZES
        .iter()
        .map(|&finished| Figures {
            finished,
            rounds: 0,
            create: Samples::default(),
            rollback: Samples::default(),
            finish: Samples::default(),
            check: Samples::default(),
            overview: Samples::default(),
            full_clone: Samples::default(),
            full_overview: Samples::default(),
            snapshot_bytes: 0,
            overview_migrations: 0,
        })
        .collect();
    let started = Instant::now();
    let probe = Command::CreateMigration {
        request: MigrationRequest::new("shop", "eu-west", CUTOVER_MS),
        at_ms: 10,
    };
    for _ in 0..rounds {
        if started.elapsed() >= MAX_MEASURE {
            break;
        }
        for (driver, figures) in drivers.iter_mut().zip(&mut all) {
            round(driver, figures, &probe);
        }
    }
    for (driver, figures) in drivers.iter().zip(&mut all) {
        // The previous design's costs: fewer samples, they are slow at size.
        let full = full_overview(&driver.state);
        for _ in 0..20.min(rounds) {
            figures.full_clone.time(|| driver.state.clone());
            figures.full_overview.time(|| {
                let bytes =
                    umbra_proto::envelope::encode(&QueryAnswer::Overview(Box::new(full.clone())))
                        .expect("encodes");
                umbra_proto::envelope::decode::<QueryAnswer>(&bytes).expect("decodes")
            });
        }
        figures.snapshot_bytes = StateMachine::snapshot(&driver.state).len();
        figures.overview_migrations = overview_read(&driver.state).migrations.len();
    }
    all
}

/// The overview as the previous design built it: every migration the state holds.
fn full_overview(state: &OrchestratorState) -> Overview {
    let mut overview = state.overview();
    let mut before = None;
    loop {
        let page = state.archived(before, 10_000);
        let Some(last) = page.last() else { break };
        before = Some(umbra_orchestrator::state::migration_number(&last.spec.id));
        overview
            .migrations
            .extend(page.into_iter().map(|r| (r.spec.id.clone(), r)));
    }
    overview
}

/// Encoded sizes of one audit entry and one finished migration record (serde envelope, the
/// same field encoding as the log schema's postcard), for the retention constants' budgets.
fn record_sizes(state: &OrchestratorState) -> (f64, f64) {
    let entries: Vec<&AuditEntry> = state.audit().iter().collect();
    let audit = entries
        .iter()
        .map(|e| umbra_proto::envelope::encode(*e).expect("encodes").len())
        .sum::<usize>() as f64
        / entries.len().max(1) as f64;
    let records: Vec<MigrationRecord> = state.archived(None, 1_000);
    let migration = records
        .iter()
        .map(|r| umbra_proto::envelope::encode(r).expect("encodes").len())
        .sum::<usize>() as f64
        / records.len().max(1) as f64;
    (audit, migration)
}

fn main() {
    let mut rounds = DEFAULT_ROUNDS;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--rounds" {
            rounds = args
                .next()
                .and_then(|n| n.parse().ok())
                .expect("--rounds takes a whole number");
        }
    }
    let all = measure(rounds);
    let (audit_bytes, migration_bytes) = record_sizes(&build(1_000).state);

    println!(
        "{:>9} {:>6} | {:>13} {:>13} {:>13} {:>13} {:>13} | {:>13} {:>15} | {:>9} {:>7}",
        "finished",
        "rounds",
        "create p50/99",
        "rollbk p50/99",
        "finish p50/99",
        "check p50/99",
        "overview p50",
        "old: clone",
        "old: overview",
        "snapshot",
        "ov.migr"
    );
    let pair = |s: &Samples| format!("{:.1}/{:.1}", s.percentile(50.0), s.percentile(99.0));
    for f in &all {
        println!(
            "{:>9} {:>6} | {:>13} {:>13} {:>13} {:>13} {:>13.1} | {:>13.1} {:>15.1} | {:>8}K {:>7}",
            f.finished,
            f.rounds,
            pair(&f.create),
            pair(&f.rollback),
            pair(&f.finish),
            pair(&f.check),
            f.overview.percentile(50.0),
            f.full_clone.percentile(50.0),
            f.full_overview.percentile(50.0),
            f.snapshot_bytes / 1024,
            f.overview_migrations,
        );
    }
    println!(
        "(µs per call; audit log full at {MAX_AUDIT_ENTRIES}; one audit entry ≈ {audit_bytes:.0} B, one finished migration ≈ {migration_bytes:.0} B encoded)"
    );
    let mut json = serde_json::Map::new();
    for f in &all {
        let n = f.finished;
        for (name, samples) in [
            ("create", &f.create),
            ("rollback", &f.rollback),
            ("finish", &f.finish),
            ("check", &f.check),
            ("overview", &f.overview),
            ("old_clone", &f.full_clone),
            ("old_overview", &f.full_overview),
        ] {
            json.insert(
                format!("{name}_p50_us_{n}"),
                serde_json::json!(samples.percentile(50.0)),
            );
        }
        json.insert(
            format!("snapshot_bytes_{n}"),
            serde_json::json!(f.snapshot_bytes),
        );
    }
    json.insert(
        "audit_entry_bytes".to_owned(),
        serde_json::json!(audit_bytes),
    );
    json.insert(
        "finished_migration_bytes".to_owned(),
        serde_json::json!(migration_bytes),
    );
    println!("{}", serde_json::Value::Object(json));
}
