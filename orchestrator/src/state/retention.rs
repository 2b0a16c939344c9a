//! How much history the replicated state keeps, and the index that lets apply and the
//! overview touch only what is live.
//!
//! The state holds its current migrations (live ones, and those a service depends on) in one
//! map and the finished rest in an [`Archive`] ordered by creation, so no command's cost
//! grows with history. The log schema keeps them in one map (a v1 snapshot decodes as it
//! is): a snapshot joins the two and a restore splits them again with [`MigrationIndex`],
//! which says which are live and which a service still depends on. The archive is bounded:
//! past [`MAX_ARCHIVED_MIGRATIONS`] the oldest created leaves the state, with its schedule
//! key. Every replica derives the same split from the same map and changes it only in apply,
//! so retention is as deterministic as the rest of apply.

use std::collections::{BTreeMap, BTreeSet};

use crate::migration::{MigrationRecord, Phase};

/// Largest audit log kept in the state (entries), a ring: the oldest entry leaves as a new
/// one comes. Sized against the snapshot budget, one frame of
/// `umbra_proto::frame::DEFAULT_MAX_FRAME_BYTES` (16 MiB): an entry encodes to about 30 bytes
/// with a one-word reason (the apply bench measures it) and about 400 with the longest reason
/// the state writes (a late TTL lowering), so 32,768 entries take 1–13 MiB, leaving room for
/// the archive and the declared state. Every entry is also a Raft log entry and a tracing
/// event, so nothing is lost to an operator who keeps those.
pub const MAX_AUDIT_ENTRIES: usize = 32_768;

/// Most finished migrations kept beyond the ones a service still depends on (its latest, and
/// its latest completed, whose shadow pool serves it). A finished record of the example
/// plan's service encodes to about 100 bytes (the apply bench measures 96 alone and about
/// 113 in a snapshot), a few hundred with many steps or a Prometheus SLO source, so the
/// archive takes 1–3 MiB of the 16 MiB snapshot frame; at one migration per service per
/// hour it is a year of history for a service, or a month for a dozen.
pub const MAX_ARCHIVED_MIGRATIONS: usize = 8_192;

/// The caps the state enforces. The product runs [`Retention::default`] (the constants
/// above); a state built with smaller caps behaves the same at its caps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Audit entries kept (at least 1).
    pub audit_entries: usize,
    /// Archived migrations kept.
    pub archived_migrations: usize,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            audit_entries: MAX_AUDIT_ENTRIES,
            archived_migrations: MAX_ARCHIVED_MIGRATIONS,
        }
    }
}

/// A migration's place in creation order: the state numbers migrations `service-N` with one
/// counter, so `N` orders them across services.
pub fn migration_number(id: &str) -> u64 {
    id.rsplit_once('-')
        .and_then(|(_, n)| n.parse().ok())
        .unwrap_or(0)
}

/// A migration as the archive and the index key it: creation number, then id. The number
/// decides every comparison (ids are unique per number), so a lookup in a large archive
/// compares integers held in its nodes and never follows a string.
pub(super) type Ranked = (u64, String);

/// Finished migrations that no service depends on, oldest created first: kept apart from the
/// state's current ones, so that creating, moving and finishing a migration work on maps
/// whose size does not grow with history. Entering it is an insert at its newest end and
/// leaving it a pop at its oldest, both on paths a busy state keeps in cache.
pub(super) type Archive = BTreeMap<Ranked, MigrationRecord>;

/// The key of migration `id` in an [`Archive`].
pub(super) fn ranked(id: &str) -> Ranked {
    (migration_number(id), id.to_owned())
}

/// Where each current migration stands; derived from the state's maps, never encoded.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct MigrationIndex {
    /// Migrations not finished.
    live: BTreeSet<String>,
    /// Per service, its latest migration (the executor keeps its terminal holds).
    latest: BTreeMap<String, Ranked>,
    /// Per service, its latest completed migration (its shadow pool serves the service).
    latest_completed: BTreeMap<String, Ranked>,
    /// Migration id → its key in the state's `fired` map.
    fired_by: BTreeMap<String, String>,
}

impl MigrationIndex {
    /// Splits every migration the log holds (`all`, current and archived alike, as the log
    /// schema keeps them in one map) into the current ones and the [`Archive`], with the
    /// index of the current ones and of the schedule keys `fired` (key → migration id).
    pub(super) fn split(
        all: BTreeMap<String, MigrationRecord>,
        fired: &BTreeMap<String, String>,
    ) -> (Self, BTreeMap<String, MigrationRecord>, Archive) {
        let mut index = Self::default();
        for (id, record) in &all {
            let ranked = ranked(id);
            let service = &record.spec.service;
            if !record.phase.is_terminal() {
                index.live.insert(id.clone());
            }
            raise(&mut index.latest, service, &ranked);
            if record.phase == Phase::Completed {
                raise(&mut index.latest_completed, service, &ranked);
            }
        }
        index.fired_by = fired
            .iter()
            .map(|(key, id)| (id.clone(), key.clone()))
            .collect();
        let mut current = BTreeMap::new();
        let mut archive = Archive::new();
        for (id, record) in all {
            if record.phase.is_terminal() && !index.pinned(&record.spec.service, &id) {
                archive.insert(ranked(&id), record);
            } else {
                current.insert(id, record);
            }
        }
        (index, current, archive)
    }

    /// A new migration `id` of `service`, started by schedule key `key` if any. Returns the
    /// migration that no longer counts as current (the service's previous latest, unless its
    /// latest completed), for the state to archive.
    pub(super) fn created(&mut self, service: &str, id: &str, key: Option<&str>) -> Option<Ranked> {
        self.live.insert(id.to_owned());
        let previous = self.latest.insert(service.to_owned(), ranked(id));
        if let Some(key) = key {
            self.fired_by.insert(id.to_owned(), key.to_owned());
        }
        self.unpinned(service, previous)
    }

    /// Migration `id` of `service` entered terminal `phase`. Returns the migration that no
    /// longer counts as current (a completed one replaces the previous latest completed),
    /// for the state to archive.
    pub(super) fn finished(&mut self, service: &str, id: &str, phase: Phase) -> Option<Ranked> {
        self.live.remove(id);
        if phase != Phase::Completed {
            return None;
        }
        let previous = self.latest_completed.insert(service.to_owned(), ranked(id));
        self.unpinned(service, previous)
    }

    /// Migration `id` left the archive: its schedule key, for the state to drop.
    pub(super) fn retired(&mut self, id: &str) -> Option<String> {
        self.fired_by.remove(id)
    }

    /// `previous` was pinned for `service`: itself if nothing pins it any more (a finished
    /// migration is never live).
    fn unpinned(&self, service: &str, previous: Option<Ranked>) -> Option<Ranked> {
        previous.filter(|(_, id)| !self.live.contains(id) && !self.pinned(service, id))
    }

    fn pinned(&self, service: &str, id: &str) -> bool {
        let is = |map: &BTreeMap<String, Ranked>| map.get(service).is_some_and(|(_, p)| p == id);
        is(&self.latest) || is(&self.latest_completed)
    }
}

/// Makes `ranked` the entry of `service` in `map` if it is newer.
fn raise(map: &mut BTreeMap<String, Ranked>, service: &str, ranked: &Ranked) {
    let entry = map
        .entry(service.to_owned())
        .or_insert_with(|| ranked.clone());
    if ranked.0 > entry.0 {
        *entry = ranked.clone();
    }
}
