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
//! ledger keeps the newest [`DEFAULT_LEDGER_CAPACITY`] finished operations; the whole core is
//! serde so the driver persists it and a restarted agent keeps both its fencing term and its
//! idempotency.

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
        self.newest_term = term;
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
        self.newest_term = cmd.term;
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
        let json = serde_json::to_string(&core).unwrap();
        let mut back: CommandCore = serde_json::from_str(&json).unwrap();
        back.handle_restart();
        assert_eq!(
            back.handle_command(&cmd("a", 1, "r")),
            Admission::Execute,
            "in-progress forgotten"
        );
        assert_eq!(
            back.handle_command(&cmd("c", 1, "r")),
            Admission::Reply(done())
        );
        assert_eq!(back.newest_term(), 1);
    }
}
