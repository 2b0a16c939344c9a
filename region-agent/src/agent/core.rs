//! The agent's command core, sans-IO: decides for each incoming command whether to execute it,
//! answer it from the ledger, or refuse it — and remembers outcomes. No I/O and no clock: the
//! session feeds it commands and leader terms, the executor reports outcomes back.
//!
//! Rules, in order:
//! 1. A command for another region is refused (`WrongRegion`); nothing changes.
//! 2. A term older than the newest seen is refused (`StaleTerm`): fencing against a deposed
//!    leader. A newer term raises the newest seen.
//! 3. A repeated operation id returns the first outcome without acting again; one still
//!    executing answers `InProgress`.
//!
//! Refusals are not recorded: a refused command changed nothing, so its id stays free. The
//! ledger keeps the newest [`DEFAULT_LEDGER_CAPACITY`] finished operations. Every durable
//! change is also queued as a [`LedgerRecord`] (a raised term, a finished operation) for the
//! driver to append to its journal ([`CommandCore::take_records`]); replaying those records in
//! order ([`CommandCore::replay`]) rebuilds the same core, so a restarted agent keeps both its
//! fencing term and its idempotency. Operations still executing are not recorded: after a
//! restart their effects are unknown and a retry must run them again.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};
use umbra_proto::agent::{AgentCommand, CommandOutcome, MAX_OPERATION_ID_BYTES, Refusal};

/// Finished operations remembered: a leader retries an operation within seconds to minutes;
/// 4,096 covers hours of a busy migration at a few kilobytes each at most.
pub const DEFAULT_LEDGER_CAPACITY: usize = 4_096;

/// What to do with a command.
#[derive(Debug, Clone, PartialEq)]
pub enum Admission {
    /// Execute it, then call [`CommandCore::handle_outcome`].
    Execute,
    /// Answer this without acting.
    Reply(CommandOutcome),
}

/// One durable change of the core, in the order it happened. Variants are only appended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LedgerRecord {
    /// The region the records belong to (the first record of a journal).
    Region(String),
    /// The newest leader term seen rose to this.
    Term(u64),
    /// An operation finished with this outcome (not a refusal).
    Finished {
        /// The operation id.
        op_id: String,
        /// Its outcome.
        outcome: CommandOutcome,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Entry {
    InProgress,
    Done(CommandOutcome),
}

/// Idempotency, term fencing and the region check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandCore {
    region: String,
    newest_term: u64,
    ledger: BTreeMap<String, Entry>,
    finished: VecDeque<String>,
    capacity: usize,
    #[serde(skip)]
    records: Vec<LedgerRecord>,
}

impl CommandCore {
    /// A core for `region` that has seen no term yet.
    pub fn new(region: &str) -> Self {
        Self::with_capacity(region, DEFAULT_LEDGER_CAPACITY)
    }

    /// Same, with a ledger capacity.
    pub fn with_capacity(region: &str, capacity: usize) -> Self {
        assert!(capacity > 0, "a ledger must hold at least one operation");
        CommandCore {
            region: region.to_owned(),
            newest_term: 0,
            ledger: BTreeMap::new(),
            finished: VecDeque::new(),
            capacity,
            records: Vec::new(),
        }
    }

    /// The core that `records` (as [`CommandCore::take_records`] gave them, oldest first)
    /// describe, with nothing left to take.
    pub fn replay(
        region: &str,
        capacity: usize,
        records: impl IntoIterator<Item = LedgerRecord>,
    ) -> Self {
        let mut core = Self::with_capacity(region, capacity);
        for record in records {
            core.apply_record(record);
        }
        core
    }

    /// Applies one record as [`CommandCore::replay`] does (a region record changes nothing:
    /// checking it is the journal's job); it adds nothing to take.
    pub fn apply_record(&mut self, record: LedgerRecord) {
        let pending = self.records.len();
        match record {
            LedgerRecord::Region(_) => {}
            LedgerRecord::Term(term) => {
                self.handle_leader_term(term);
            }
            LedgerRecord::Finished { op_id, outcome } => self.handle_outcome(&op_id, &outcome),
        }
        self.records.truncate(pending);
    }

    /// How many records [`CommandCore::snapshot`] gives.
    pub fn snapshot_len(&self) -> usize {
        2 + self.finished.len()
    }

    /// The records that describe this core whole (its region, its term, then its finished
    /// operations, oldest first): what a compacted journal holds.
    pub fn snapshot(&self) -> Vec<LedgerRecord> {
        let mut all = vec![
            LedgerRecord::Region(self.region.clone()),
            LedgerRecord::Term(self.newest_term),
        ];
        for op_id in &self.finished {
            if let Some(Entry::Done(outcome)) = self.ledger.get(op_id) {
                all.push(LedgerRecord::Finished {
                    op_id: op_id.clone(),
                    outcome: outcome.clone(),
                });
            }
        }
        all
    }

    /// The durable changes made since the last call, oldest first.
    pub fn take_records(&mut self) -> Vec<LedgerRecord> {
        std::mem::take(&mut self.records)
    }

    fn raise_term(&mut self, term: u64) {
        if term > self.newest_term {
            self.newest_term = term;
            self.records.push(LedgerRecord::Term(term));
        }
    }

    /// The newest leader term seen.
    pub fn newest_term(&self) -> u64 {
        self.newest_term
    }

    /// The region.
    pub fn region(&self) -> &str {
        &self.region
    }

    /// A leader announced itself with `term` (hello reply). Returns false if that term is older
    /// than the newest seen: the caller must not follow that "leader".
    pub fn handle_leader_term(&mut self, term: u64) -> bool {
        if term < self.newest_term {
            return false;
        }
        self.raise_term(term);
        true
    }

    /// Decides about a command.
    pub fn handle_command(&mut self, cmd: &AgentCommand) -> Admission {
        if cmd.region != self.region {
            return Admission::Reply(CommandOutcome::Refused(Refusal::WrongRegion {
                ours: self.region.clone(),
                theirs: cmd.region.clone(),
            }));
        }
        if cmd.term < self.newest_term {
            return Admission::Reply(CommandOutcome::Refused(Refusal::StaleTerm {
                command_term: cmd.term,
                newest_term: self.newest_term,
            }));
        }
        if cmd.op_id.is_empty() || cmd.op_id.len() > MAX_OPERATION_ID_BYTES {
            return Admission::Reply(CommandOutcome::Refused(Refusal::BadRequest {
                reason: format!(
                    "operation ids are 1 to {MAX_OPERATION_ID_BYTES} bytes, got {}",
                    cmd.op_id.len()
                ),
            }));
        }
        self.raise_term(cmd.term);
        match self.ledger.get(&cmd.op_id) {
            Some(Entry::Done(outcome)) => Admission::Reply(outcome.clone()),
            Some(Entry::InProgress) => {
                Admission::Reply(CommandOutcome::Refused(Refusal::InProgress))
            }
            None => {
                self.ledger.insert(cmd.op_id.clone(), Entry::InProgress);
                Admission::Execute
            }
        }
    }

    /// Records the outcome of an executed command. A refusal frees the id again.
    pub fn handle_outcome(&mut self, op_id: &str, outcome: &CommandOutcome) {
        if matches!(outcome, CommandOutcome::Refused(_)) {
            self.ledger.remove(op_id);
            return;
        }
        self.ledger
            .insert(op_id.to_owned(), Entry::Done(outcome.clone()));
        self.records.push(LedgerRecord::Finished {
            op_id: op_id.to_owned(),
            outcome: outcome.clone(),
        });
        self.finished.push_back(op_id.to_owned());
        while self.finished.len() > self.capacity {
            if let Some(old) = self.finished.pop_front() {
                self.ledger.remove(&old);
            }
        }
    }

    /// Forgets operations that were executing when the agent stopped: their effects are
    /// unknown, so a retry must run again (the provider's operations are idempotent by state).
    pub fn handle_restart(&mut self) {
        self.ledger.retain(|_, e| matches!(e, Entry::Done(_)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use umbra_proto::agent::{AgentAction, CommandResult};

    fn cmd(op: &str, term: u64, region: &str) -> AgentCommand {
        AgentCommand {
            op_id: op.into(),
            term,
            region: region.into(),
            action: AgentAction::Start {
                instance: "i-1".into(),
            },
        }
    }

    fn done() -> CommandOutcome {
        CommandOutcome::Done(CommandResult::Instances(vec![]))
    }

    #[test]
    fn repeated_operation_returns_the_first_outcome() {
        let mut core = CommandCore::new("eu-west");
        assert_eq!(
            core.handle_command(&cmd("op-1", 3, "eu-west")),
            Admission::Execute
        );
        assert_eq!(
            core.handle_command(&cmd("op-1", 3, "eu-west")),
            Admission::Reply(CommandOutcome::Refused(Refusal::InProgress))
        );
        core.handle_outcome("op-1", &done());
        assert_eq!(
            core.handle_command(&cmd("op-1", 3, "eu-west")),
            Admission::Reply(done())
        );
        // A new leader retrying the same operation also gets the first outcome.
        assert_eq!(
            core.handle_command(&cmd("op-1", 4, "eu-west")),
            Admission::Reply(done())
        );
    }

    #[test]
    fn stale_terms_and_other_regions_are_refused_and_change_nothing() {
        let mut core = CommandCore::new("eu-west");
        assert_eq!(
            core.handle_command(&cmd("a", 5, "eu-west")),
            Admission::Execute
        );
        core.handle_outcome("a", &done());
        let before = core.clone();
        assert_eq!(
            core.handle_command(&cmd("b", 4, "eu-west")),
            Admission::Reply(CommandOutcome::Refused(Refusal::StaleTerm {
                command_term: 4,
                newest_term: 5
            }))
        );
        assert_eq!(
            core.handle_command(&cmd("b", 9, "us-east")),
            Admission::Reply(CommandOutcome::Refused(Refusal::WrongRegion {
                ours: "eu-west".into(),
                theirs: "us-east".into()
            }))
        );
        assert_eq!(
            core, before,
            "refusals change nothing, not even the newest term"
        );
        assert!(!core.handle_leader_term(4));
        assert!(core.handle_leader_term(6));
        assert!(matches!(
            core.handle_command(&cmd("c", 5, "eu-west")),
            Admission::Reply(CommandOutcome::Refused(Refusal::StaleTerm { .. }))
        ));
    }

    #[test]
    fn the_ledger_is_bounded_and_survives_a_restart() {
        let mut core = CommandCore::with_capacity("r", 2);
        for op in ["a", "b", "c"] {
            assert_eq!(core.handle_command(&cmd(op, 1, "r")), Admission::Execute);
            core.handle_outcome(op, &done());
        }
        assert_eq!(
            core.handle_command(&cmd("a", 1, "r")),
            Admission::Execute,
            "a was evicted"
        );
        // "a" is executing again: a restart forgets it, whether the core comes back from its
        // journal's records or from an old whole-core file.
        let records = core.take_records();
        let json = serde_json::to_string(&core).unwrap();
        let mut from_file: CommandCore = serde_json::from_str(&json).unwrap();
        from_file.handle_restart();
        for mut back in [CommandCore::replay("r", 2, records), from_file] {
            assert_eq!(
                back.handle_command(&cmd("a", 1, "r")),
                Admission::Execute,
                "in-progress forgotten"
            );
            assert_eq!(
                back.handle_command(&cmd("c", 1, "r")),
                Admission::Reply(done())
            );
            assert_eq!(
                back.handle_command(&cmd("b", 1, "r")),
                Admission::Reply(done())
            );
            assert_eq!(back.newest_term(), 1);
        }
    }

    #[test]
    fn records_replay_into_the_same_core_and_a_snapshot_into_an_equal_one() {
        let mut core = CommandCore::with_capacity("r", 3);
        core.handle_leader_term(2);
        for (i, op) in ["a", "b", "c", "d", "e"].into_iter().enumerate() {
            assert_eq!(
                core.handle_command(&cmd(op, 2 + i as u64 / 2, "r")),
                Admission::Execute
            );
            core.handle_outcome(op, &done());
        }
        // A stale term and a refusal record nothing.
        core.handle_command(&cmd("f", 1, "r"));
        core.handle_command(&cmd("g", 4, "r"));
        core.handle_outcome("g", &CommandOutcome::Refused(Refusal::InProgress));
        let records = core.take_records();
        assert!(core.take_records().is_empty(), "taken once");
        let replayed = CommandCore::replay("r", 3, records);
        assert_eq!(replayed, core);
        assert_eq!(CommandCore::replay("r", 3, core.snapshot()), core);
        assert_eq!(core.newest_term(), 4);
    }
}
