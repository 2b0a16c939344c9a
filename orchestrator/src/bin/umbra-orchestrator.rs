//! The orchestrator process: a Raft member serving the operator API and the agent gateway.

fn main() {}
