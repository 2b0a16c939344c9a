//! The operator API's history under faults, checked for linearizability: three real
//! `umbra-orchestrator` processes in orchestrator mode (operator API over HTTPS with the
//! operator certificate and token, Raft over QUIC, raft-engine with fsync), and six concurrent
//! clients, each an `api::ApiClient` pinned to one node's API as `umbra --api URL` is (two per
//! node: a follower forwards to the leader), while the leader is SIGKILLed and started again,
//! and later cut off from the other two (its Raft traffic dropped both ways) and healed.
//!
//! The clients work on two kinds of register, as `umbra_chaos::history` checks them (each key
//! a register, each value written once):
//! - the plan: `POST /v1/plan` of the regions and one service, `register`, whose
//!   `lead_time_secs` carries a unique value ([`LEAD_BASE`] + value), and `GET /v1/status`,
//!   which reads it back from the service's spec;
//! - migrations: `POST /v1/migrations` of a service no migration has touched (each service is
//!   moved at most once, so no creation clashes with one in flight, and the cutover lies a day
//!   ahead, so the migration stays `planned` with no agent running), and `GET
//!   /v1/migrations/{id}` (found or 404). Each migration id is a register "it exists", written
//!   once by its creation. Readers read ids whose creation was answered, and guess the ids of
//!   creations in flight (the number is the cluster's count of migrations), so reads race their
//!   creations too.
//!
//! Each call is recorded with the instant it was invoked and answered. A call answered with an
//! error of any kind (refused connection, timeout, 5xx, ...) is recorded as of unknown outcome:
//! a write may have taken effect at any time after it was invoked, or never. A creation's id is
//! known only from its answer; for a creation of unknown outcome the final listing of
//! migrations tells which id (if any) its service got, since each service was asked for once.
//! A final read of every key (the listing and the status) ends the history, so a write that
//! was answered 200 and then lost is caught even if no client read it afterwards.
//!
//! `umbra_chaos::history::check` must find an order for the whole history, and must refuse it
//! once one stale read is planted in it (on the plan, and on a migration).
//!
//! Run `cargo build --workspace --bins` first. Deadlines are liveness limits, never latency
//! bounds.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use axum::http::{Method, StatusCode};
use umbra_chaos::history::{Call, Operation, Outcome, Verdict, check};
use umbra_orchestrator::api::{
    ApiClient, ClientError, MigrationAnswer, MigrationStatus, StatusReport, Written,
};
use umbra_orchestrator::state::{MigrationRequest, Plan, ServiceSpec};
use umbra_tests::{Cluster, Options, unscheduled_plan, wait_for};

const CLIENTS: u64 = 6;
/// Calls recorded before the leader is killed, while it is down (its clients fail, and the
/// restarted node has that much to catch up on while it answers), before the leader is cut
/// off, while it is cut off, and in all.
const BEFORE_KILL: usize = 250;
const KILLED_FOR: usize = 100;
const BEFORE_CUT: usize = 650;
const CUT_FOR: usize = 300;
const TOTAL: usize = 1_400;
/// Services a creation may move: more than the creations [`TOTAL`] operations hold (about one
/// in ten), so that no client runs out; one that does reads instead.
const SERVICES: usize = 200;
/// The service whose `lead_time_secs` is the plan's register.
const REGISTER: &str = "register";
/// `lead_time_secs` = `LEAD_BASE` + the value written: above the example service's TTL plus
/// margin (360 s), which the plan's validation asks of a lead time.
const LEAD_BASE: u64 = 3_600;
/// Where migrations go (the example plan's two regions: services start in us-east).
const TARGET_REGION: &str = "eu-west";
/// How far ahead each migration's cutover lies: far beyond the test, so the executor never
/// starts one (it has no agent to start it with).
const CUTOVER_AHEAD_MS: u64 = 86_400_000;
/// The checker's key of the plan register (a migration's is `migration {id}`).
const PLAN_KEY: &str = "plan";
/// Liveness limits of each stage on a loaded 2-core machine.
const STAGE: Duration = Duration::from_secs(90);
/// A client's pause after an error, times the errors in a row (at most [`MAX_PAUSES`] times):
/// an operator retries a refused connection after a moment, not in a tight loop.
const ERROR_PAUSE: Duration = Duration::from_millis(100);
const MAX_PAUSES: u32 = 10;

/// A small seeded generator (xorshift64*), so each client's mix of calls repeats.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// What one API call was, before creations of unknown outcome are matched to their ids.
#[derive(Debug, Clone)]
enum Recorded {
    /// `POST /v1/plan` writing `value`.
    PlanPut { value: u64, outcome: Outcome },
    /// `GET /v1/status`, reading the register's value.
    PlanGet { outcome: Outcome },
    /// `POST /v1/migrations` of `service`: the id answered, or `None` (unknown outcome).
    Create { service: String, id: Option<String> },
    /// `GET /v1/migrations/{id}`: found (`Some(1)`), 404 (`None`), or unknown.
    MigrationGet { id: String, outcome: Outcome },
}

/// One recorded call with its client and instants.
#[derive(Debug, Clone)]
struct ApiCall {
    client: u64,
    invoked: u64,
    completed: u64,
    what: Recorded,
}

impl ApiCall {
    /// Whether the call's outcome is unknown (it ended in an error).
    fn failed(&self) -> bool {
        match &self.what {
            Recorded::PlanPut { outcome, .. }
            | Recorded::PlanGet { outcome }
            | Recorded::MigrationGet { outcome, .. } => *outcome == Outcome::Unknown,
            Recorded::Create { id, .. } => id.is_none(),
        }
    }
}

/// What the clients share: the clock, the recorded calls, the values and services not yet
/// used, and what readers know of migrations.
struct Recorder {
    start: Instant,
    calls: Mutex<Vec<ApiCall>>,
    next_value: AtomicU64,
    next_service: AtomicUsize,
    /// Ids whose creation was answered.
    created: Mutex<Vec<String>>,
    /// The highest migration number answered so far.
    highest: AtomicU64,
    /// Services whose creation is in flight, by client.
    in_flight: Mutex<BTreeMap<u64, String>>,
    stop: AtomicBool,
}

impl Recorder {
    fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    fn len(&self) -> usize {
        self.calls.lock().expect("calls lock").len()
    }

    fn push(&self, client: u64, invoked: u64, what: Recorded) {
        let completed = self.now();
        self.calls.lock().expect("calls lock").push(ApiCall {
            client,
            invoked,
            completed,
            what,
        });
    }
}

fn service_name(k: usize) -> String {
    format!("m{k}")
}

/// The number of migration `id` (`m17-5` → 5).
fn migration_number(id: &str) -> Option<u64> {
    id.rsplit_once('-').and_then(|(_, n)| n.parse().ok())
}

/// The plan's services: the register, and [`SERVICES`] services to move, all shaped as the
/// example plan's `shop`.
fn service(template: &ServiceSpec, name: &str) -> ServiceSpec {
    ServiceSpec {
        name: name.to_owned(),
        hostname: format!("{name}.umbra.test."),
        ..template.clone()
    }
}

/// The plan a client writes: the regions and the register with `value` in its lead time. It
/// leaves the other services out, as a plan may (services it does not name are kept), since a
/// plan naming a service with a migration in flight is refused.
fn register_plan(base: &Plan, value: u64) -> Plan {
    let mut register = service(&base.services[0], REGISTER);
    register.lead_time_secs = LEAD_BASE + value;
    Plan {
        regions: base.regions.clone(),
        services: vec![register],
        ..Plan::default()
    }
}

/// The register's value in a status answer (`u64::MAX`, which nobody writes, for a lead time
/// below the base, so the check fails on it).
fn register_value(status: &StatusReport) -> Option<u64> {
    status.overview.services.get(REGISTER).map(|s| {
        s.spec
            .lead_time_secs
            .checked_sub(LEAD_BASE)
            .unwrap_or(u64::MAX)
    })
}

/// `GET /v1/migrations/{id}` as a read of the register "migration `id` exists": found is 1,
/// 404 is nothing written, an error is unknown. An answer about another migration is a value
/// nobody wrote (`u64::MAX`), so the check fails on it.
async fn read_migration(api: &ApiClient, id: &str) -> Outcome {
    match api
        .call::<MigrationAnswer>(Method::GET, &format!("/v1/migrations/{id}"), None)
        .await
    {
        Ok(answer) if answer.migration.id == id => Outcome::Value(Some(1)),
        Ok(_) => Outcome::Value(Some(u64::MAX)),
        Err(ClientError::Refused {
            status: StatusCode::NOT_FOUND,
            ..
        }) => Outcome::Value(None),
        Err(_) => Outcome::Unknown,
    }
}

/// One client: calls one at a time on its node's API until told to stop.
async fn client(id: u64, api: ApiClient, base: Arc<Plan>, recorder: Arc<Recorder>) {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (id + 1));
    let mut errors_in_row = 0u32;
    while !recorder.stop.load(Ordering::Relaxed) {
        let roll = rng.next() % 100;
        let invoked = recorder.now();
        let (what, failed) = if roll < 15 {
            let value = recorder.next_value.fetch_add(1, Ordering::Relaxed);
            let plan = register_plan(&base, value);
            let text = toml::to_string(&plan).expect("a plan always encodes");
            let outcome = match api.apply_plan_toml(&text).await {
                Ok(Written::Plan { .. }) => Outcome::Written,
                _ => Outcome::Unknown,
            };
            let failed = outcome == Outcome::Unknown;
            (Recorded::PlanPut { value, outcome }, failed)
        } else if roll < 40 {
            let outcome = match api.status().await {
                Ok(status) => Outcome::Value(register_value(&status)),
                Err(_) => Outcome::Unknown,
            };
            let failed = outcome == Outcome::Unknown;
            (Recorded::PlanGet { outcome }, failed)
        } else if roll < 50 && recorder.next_service.load(Ordering::Relaxed) < SERVICES {
            let k = recorder.next_service.fetch_add(1, Ordering::Relaxed);
            if k >= SERVICES {
                continue;
            }
            let service = service_name(k);
            recorder
                .in_flight
                .lock()
                .expect("in-flight lock")
                .insert(id, service.clone());
            let cutover = now_ms() + CUTOVER_AHEAD_MS;
            let request = MigrationRequest::new(&service, TARGET_REGION, cutover);
            let created = match api.migrate(&request).await {
                Ok(Written::Migration { id }) => Some(id),
                _ => None,
            };
            recorder
                .in_flight
                .lock()
                .expect("in-flight lock")
                .remove(&id);
            if let Some(created) = &created {
                if let Some(n) = migration_number(created) {
                    recorder.highest.fetch_max(n, Ordering::Relaxed);
                }
                recorder
                    .created
                    .lock()
                    .expect("created lock")
                    .push(created.clone());
            }
            let failed = created.is_none();
            (
                Recorded::Create {
                    service,
                    id: created,
                },
                failed,
            )
        } else {
            let target = pick_migration(&mut rng, &recorder);
            let outcome = read_migration(&api, &target).await;
            let failed = outcome == Outcome::Unknown;
            (
                Recorded::MigrationGet {
                    id: target,
                    outcome,
                },
                failed,
            )
        };
        recorder.push(id, invoked, what);
        if failed {
            errors_in_row = (errors_in_row + 1).min(MAX_PAUSES);
            tokio::time::sleep(ERROR_PAUSE * errors_in_row).await;
        } else {
            errors_in_row = 0;
        }
    }
}

/// The migration id a reader asks for: half the time one whose creation was answered, else a
/// guess at the id of a creation in flight (or of the next one): its service and a number just
/// past the highest answered.
fn pick_migration(rng: &mut Rng, recorder: &Recorder) -> String {
    let created = recorder.created.lock().expect("created lock").clone();
    if !created.is_empty() && rng.next().is_multiple_of(2) {
        return created[(rng.next() % created.len() as u64) as usize].clone();
    }
    let in_flight: Vec<String> = recorder
        .in_flight
        .lock()
        .expect("in-flight lock")
        .values()
        .cloned()
        .collect();
    let service = if in_flight.is_empty() {
        service_name(recorder.next_service.load(Ordering::Relaxed))
    } else {
        in_flight[(rng.next() % in_flight.len() as u64) as usize].clone()
    };
    let number = recorder.highest.load(Ordering::Relaxed) + 1 + rng.next() % CLIENTS;
    format!("{service}-{number}")
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Waits until the clients have recorded `n` calls.
async fn recorded(recorder: &Recorder, n: usize) -> anyhow::Result<()> {
    wait_for(&format!("{n} calls recorded"), STAGE, || async {
        (recorder.len() >= n).then_some(())
    })
    .await
}

fn migration_key(id: &str) -> String {
    format!("migration {id}")
}

/// The checker's history: the recorded calls, each creation on the key of the id it got (from
/// its answer, or for an unknown outcome from `final_ids`, the final listing by service; one
/// whose service has no migration there never took effect before the end and is left out).
fn history(calls: &[ApiCall], final_ids: &BTreeMap<String, String>) -> Vec<Operation> {
    let mut history = Vec::with_capacity(calls.len());
    for call in calls {
        let (key, op_call, outcome) = match &call.what {
            Recorded::PlanPut { value, outcome } => {
                (PLAN_KEY.to_owned(), Call::Put(*value), *outcome)
            }
            Recorded::PlanGet { outcome } => (PLAN_KEY.to_owned(), Call::Get, *outcome),
            Recorded::Create { id: Some(id), .. } => {
                (migration_key(id), Call::Put(1), Outcome::Written)
            }
            Recorded::Create { service, id: None } => match final_ids.get(service) {
                Some(id) => (migration_key(id), Call::Put(1), Outcome::Unknown),
                None => continue,
            },
            Recorded::MigrationGet { id, outcome } => (migration_key(id), Call::Get, *outcome),
        };
        history.push(Operation {
            client: call.client,
            key,
            call: op_call,
            invoked: call.invoked,
            completed: call.completed,
            outcome,
        });
    }
    history
}

/// `history` with one stale plan read planted after its end: a plan with a fresh value is
/// acknowledged, and then a status read returns a value whose write was acknowledged before
/// that write began. No order can explain it.
fn with_stale_plan_read(history: &[Operation]) -> Option<Vec<Operation>> {
    let stale = history.iter().find(|op| {
        op.key == PLAN_KEY && matches!(op.call, Call::Put(_)) && op.outcome == Outcome::Written
    })?;
    let Call::Put(old) = stale.call else {
        return None;
    };
    let end = history.iter().map(|op| op.completed).max()? + 1;
    let fresh = history
        .iter()
        .filter(|op| op.key == PLAN_KEY)
        .filter_map(|op| match op.call {
            Call::Put(v) => Some(v),
            Call::Get => None,
        })
        .max()?
        + 1;
    let mut planted = history.to_vec();
    planted.push(Operation {
        client: 0,
        key: PLAN_KEY.to_owned(),
        call: Call::Put(fresh),
        invoked: end,
        completed: end + 1,
        outcome: Outcome::Written,
    });
    planted.push(Operation {
        client: 1,
        key: PLAN_KEY.to_owned(),
        call: Call::Get,
        invoked: end + 2,
        completed: end + 3,
        outcome: Outcome::Value(Some(old)),
    });
    Some(planted)
}

/// `history` with one stale migration read planted after its end: a 404 for a migration whose
/// creation was answered 200 (a lost write, or a node answering from a replica that has not
/// applied it yet).
fn with_stale_migration_read(history: &[Operation]) -> Option<Vec<Operation>> {
    let created = history.iter().find(|op| {
        op.key.starts_with("migration ")
            && op.call == Call::Put(1)
            && op.outcome == Outcome::Written
    })?;
    let end = history.iter().map(|op| op.completed).max()? + 1;
    let mut planted = history.to_vec();
    planted.push(Operation {
        client: 1,
        key: created.key.clone(),
        call: Call::Get,
        invoked: end,
        completed: end + 1,
        outcome: Outcome::Value(None),
    });
    Some(planted)
}

/// Prints `key`'s operations in the order they were invoked (times in ms since the start), to
/// read a refused history by.
fn print_key(history: &[Operation], key: &str) {
    let mut ops: Vec<&Operation> = history.iter().filter(|op| op.key == key).collect();
    ops.sort_by_key(|op| op.invoked);
    eprintln!("{key}'s operations:");
    for op in ops.iter().take(200) {
        eprintln!(
            "  client {} {:?} {:.1}..{:.1} ms: {:?}",
            op.client,
            op.call,
            op.invoked as f64 / 1e6,
            op.completed as f64 / 1e6,
            op.outcome
        );
    }
}

/// A call on some live node's API that may fail during an election, retried until it answers.
async fn settled<T, F, Fut>(cluster: &Cluster, what: &str, mut call: F) -> anyhow::Result<T>
where
    F: FnMut(ApiClient) -> Fut,
    Fut: std::future::Future<Output = Result<T, ClientError>>,
{
    let live = cluster.live();
    let mut turn = 0usize;
    let last = Mutex::new(String::from("no answer yet"));
    let clients: Vec<ApiClient> = live
        .iter()
        .map(|id| cluster.api(*id))
        .collect::<anyhow::Result<_>>()?;
    wait_for(what, STAGE, || {
        let api = clients[turn % clients.len()].clone();
        turn += 1;
        let attempt = call(api);
        let last = &last;
        async move {
            match attempt.await {
                Ok(value) => Some(value),
                Err(error) => {
                    *last.lock().expect("last lock") = error.to_string();
                    None
                }
            }
        }
    })
    .await
    .with_context(|| format!("last: {}", last.lock().expect("last lock")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_history_under_a_leader_kill_and_a_partition_is_linearizable() -> anyhow::Result<()>
{
    let mut cluster = Cluster::launch(Options::orchestrator(3)).await?;
    let all = [1, 2, 3];
    cluster.wait_for_api_leader(1, &all, STAGE).await?;
    let recorder = Arc::new(Recorder {
        start: Instant::now(),
        calls: Mutex::new(Vec::new()),
        next_value: AtomicU64::new(1),
        next_service: AtomicUsize::new(0),
        created: Mutex::new(Vec::new()),
        highest: AtomicU64::new(0),
        in_flight: Mutex::new(BTreeMap::new()),
        stop: AtomicBool::new(false),
    });

    // The whole plan once: the register (value 0) and every service a creation may move. It
    // is the history's first write, by a client of its own.
    let base = Arc::new(unscheduled_plan());
    let mut whole = register_plan(&base, 0);
    whole
        .services
        .extend((0..SERVICES).map(|k| service(&base.services[0], &service_name(k))));
    let text = toml::to_string(&whole)?;
    let invoked = recorder.now();
    settled(&cluster, "the first plan to apply", |api| {
        let text = text.clone();
        async move { api.apply_plan_toml(&text).await }
    })
    .await?;
    recorder.push(
        CLIENTS,
        invoked,
        Recorded::PlanPut {
            value: 0,
            outcome: Outcome::Written,
        },
    );

    let first = cluster.wait_for_leader(STAGE).await?;
    let mut clients = Vec::new();
    for id in 0..CLIENTS {
        let api = cluster.api(id % 3 + 1)?;
        clients.push(tokio::spawn(client(
            id,
            api,
            base.clone(),
            recorder.clone(),
        )));
    }

    recorded(&recorder, BEFORE_KILL).await?;
    let killed_at = recorder.now();
    cluster.kill(first)?;
    let survivors = cluster.live();
    let second = cluster.wait_for_leader_among(&survivors, STAGE).await?;
    let elected_at = recorder.now();
    eprintln!(
        "killed leader {first} after {} calls; {second} leads",
        recorder.len()
    );
    recorded(&recorder, recorder.len() + KILLED_FOR).await?;
    cluster.spawn(first)?;

    recorded(&recorder, BEFORE_CUT).await?;
    let leader = cluster.wait_for_leader(STAGE).await?;
    let others: Vec<u64> = all.into_iter().filter(|id| *id != leader).collect();
    let cut_at = recorder.now();
    cluster.cut(leader, &others).await?;
    let during = cluster.wait_for_leader_among(&others, STAGE).await?;
    eprintln!(
        "cut leader {leader} off after {} calls; {during} leads the other side",
        recorder.len()
    );
    let at_cut = recorder.len();
    recorded(&recorder, at_cut + CUT_FOR).await?;
    cluster.heal(leader).await?;
    let healed_at = recorder.now();

    recorded(&recorder, TOTAL).await?;
    recorder.stop.store(true, Ordering::Relaxed);
    for client in clients {
        // Each client finishes the call in flight (the API answers within its 15 s limit).
        tokio::time::timeout(STAGE, client).await??;
    }

    // The final reads: every migration (all are current: none has ended), and the register.
    let invoked = recorder.now();
    let listed: Vec<MigrationStatus> = settled(&cluster, "the final listing", |api| async move {
        api.call(Method::GET, "/v1/migrations?limit=1000", None)
            .await
    })
    .await?;
    let listed_at = (invoked, recorder.now());
    let invoked = recorder.now();
    let status = settled(&cluster, "the final status", |api| async move {
        api.status().await
    })
    .await?;
    recorder.push(
        CLIENTS,
        invoked,
        Recorded::PlanGet {
            outcome: Outcome::Value(register_value(&status)),
        },
    );

    let calls = recorder.calls.lock().expect("calls lock").clone();
    let final_ids: BTreeMap<String, String> = listed
        .iter()
        .map(|m| (m.service.clone(), m.id.clone()))
        .collect();
    ensure!(
        listed.len() == final_ids.len(),
        "one migration per service: {listed:?}"
    );
    let mut history = history(&calls, &final_ids);
    let listed_ids: BTreeSet<&String> = final_ids.values().collect();
    let keys: BTreeSet<String> = history
        .iter()
        .filter(|op| op.key != PLAN_KEY)
        .map(|op| op.key.clone())
        .chain(listed_ids.iter().map(|id| migration_key(id)))
        .collect();
    for key in keys {
        let found = listed_ids.iter().any(|id| migration_key(id) == key);
        history.push(Operation {
            client: CLIENTS,
            key,
            call: Call::Get,
            invoked: listed_at.0,
            completed: listed_at.1,
            outcome: Outcome::Value(found.then_some(1)),
        });
    }

    let count = |f: &dyn Fn(&ApiCall) -> bool| calls.iter().filter(|c| f(c)).count();
    let unknown = count(&|c| c.failed());
    let plan_writes = count(&|c| matches!(c.what, Recorded::PlanPut { .. }));
    let plan_reads = count(&|c| matches!(c.what, Recorded::PlanGet { .. }));
    let creations = count(&|c| matches!(c.what, Recorded::Create { .. }));
    let unknown_created = count(
        &|c| matches!(&c.what, Recorded::Create { service, id: None } if final_ids.contains_key(service)),
    );
    let migration_read = |seen: Outcome| move |c: &ApiCall| matches!(&c.what, Recorded::MigrationGet { outcome, .. } if *outcome == seen);
    let found = count(&migration_read(Outcome::Value(Some(1))));
    let not_found = count(&migration_read(Outcome::Value(None)));
    eprintln!(
        "{} calls: {plan_writes} plan writes, {plan_reads} status reads, {creations} creations ({unknown_created} of unknown outcome that took effect), {found} migration reads found, {not_found} not found; {unknown} of unknown outcome; {} migrations in the end",
        calls.len(),
        listed.len()
    );
    let within = |from: u64, to: u64| {
        let during: Vec<&ApiCall> = calls
            .iter()
            .filter(|c| c.invoked < to && c.completed > from)
            .collect();
        let failed = during.iter().filter(|c| c.failed()).count();
        (during.len(), failed)
    };
    let (kill_calls, kill_failed) = within(killed_at, elected_at);
    let (cut_calls, cut_failed) = within(cut_at, healed_at);
    eprintln!(
        "{kill_calls} calls overlap the election after the kill ({:.1} s, {kill_failed} of unknown outcome); {cut_calls} overlap the cut ({:.1} s, {cut_failed} of unknown outcome)",
        (elected_at - killed_at) as f64 / 1e9,
        (healed_at - cut_at) as f64 / 1e9
    );
    ensure!(
        calls.len() - unknown >= 1_000,
        "at least 1,000 calls with a known outcome"
    );
    ensure!(
        found > 0 && not_found > 0 && creations > 0,
        "the history holds creations, and reads that found migrations and reads that did not"
    );

    let started = Instant::now();
    let verdict = check(&history);
    eprintln!(
        "checked {} operations in {:?}: {verdict:?}",
        history.len(),
        started.elapsed()
    );
    if let Verdict::NotLinearizable { key, .. } = &verdict {
        print_key(&history, key);
    }
    ensure!(
        matches!(verdict, Verdict::Linearizable { .. }),
        "not linearizable: {verdict:?}"
    );

    let planted = with_stale_plan_read(&history).expect("the history has an acknowledged plan");
    let verdict = check(&planted);
    ensure!(
        matches!(&verdict, Verdict::NotLinearizable { stuck_at, .. } if stuck_at.call == Call::Get && stuck_at.key == PLAN_KEY),
        "the planted stale plan read must be refused: {verdict:?}"
    );
    let planted =
        with_stale_migration_read(&history).expect("the history has an acknowledged creation");
    let verdict = check(&planted);
    ensure!(
        matches!(&verdict, Verdict::NotLinearizable { stuck_at, .. } if stuck_at.call == Call::Get && stuck_at.key.starts_with("migration ")),
        "the planted stale migration read must be refused: {verdict:?}"
    );
    Ok(())
}
