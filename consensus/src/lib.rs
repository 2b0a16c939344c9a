//! A Raft node on tikv raft-rs: durable log and snapshots, the Ready loop, peer transport over
//! `umbra-proto`, membership changes and ReadIndex reads, generic over a `StateMachine`.
//! It knows nothing about migrations.
