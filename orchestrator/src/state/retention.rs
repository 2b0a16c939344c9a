//! How much history the replicated state keeps, and the index that lets apply and the
//! overview touch only what is live.
//!
//! Finished migrations stay in the state's one `migrations` map (the log schema is unchanged:
//! a v1 snapshot decodes as it is), and [`MigrationIndex`], derived from that map and rebuilt
//! on restore, says which are live, which a service still depends on, and which are archive.
//! The archive is bounded: past [`MAX_ARCHIVED_MIGRATIONS`] the oldest created leaves the
//! state, with its schedule key. Every replica derives the same index from the same map and
//! changes it only in apply, so retention is as deterministic as the rest of apply.

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

/// A migration as the index keys it: creation number, then id.
type Ranked = (u64, String);

/// Where each migration stands; derived from the state's maps, never encoded.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct MigrationIndex {
    /// Migrations not finished.
    live: BTreeSet<String>,
    /// Per service, its latest migration (the executor keeps its terminal holds).
    latest: BTreeMap<String, Ranked>,
    /// Per service, its latest completed migration (its shadow pool serves the service).
    latest_completed: BTreeMap<String, Ranked>,
    /// Finished migrations that are neither of the above, oldest created first.
    archived: BTreeSet<Ranked>,
    /// Migration id → its key in the state's `fired` map.
    fired_by: BTreeMap<String, String>,
}

impl MigrationIndex {
    /// The index of `migrations` and the schedule keys `fired` (key → migration id).
    pub(super) fn of(
        migrations: &BTreeMap<String, MigrationRecord>,
        fired: &BTreeMap<String, String>,
    ) -> Self {
        let mut index = Self::default();
        for (id, record) in migrations {
            let ranked = (migration_number(id), id.clone());
            let service = &record.spec.service;
            if !record.phase.is_terminal() {
                index.live.insert(id.clone());
            }
            raise(&mut index.latest, service, &ranked);
            if record.phase == Phase::Completed {
                raise(&mut index.latest_completed, service, &ranked);
            }
        }
        for (id, record) in migrations {
            if record.phase.is_terminal() && !index.pinned(&record.spec.service, id) {
                index.archived.insert((migration_number(id), id.clone()));
            }
        }
        index.fired_by = fired
            .iter()
            .map(|(key, id)| (id.clone(), key.clone()))
            .collect();
        index
    }

    /// Ids of the migrations the overview shows: live ones and those services depend on.
    pub(super) fn current(&self) -> impl Iterator<Item = &String> {
        self.live.iter().chain(
            self.latest
                .values()
                .chain(self.latest_completed.values())
                .map(|(_, id)| id),
        )
    }

    /// Whether `id` is archived (finished, and no service depends on it).
    pub(super) fn is_archived(&self, id: &str) -> bool {
        self.archived
            .contains(&(migration_number(id), id.to_owned()))
    }

    /// Archived ids created before `before` (creation number; all when `None`), newest
    /// first.
    pub(super) fn archived_before(&self, before: Option<u64>) -> impl Iterator<Item = &String> {
        self.archived
            .range(..(before.unwrap_or(u64::MAX), String::new()))
            .rev()
            .map(|(_, id)| id)
    }

    /// A new migration `id` of `service`, started by schedule key `key` if any.
    pub(super) fn created(&mut self, service: &str, id: &str, key: Option<&str>) {
        self.live.insert(id.to_owned());
        let previous = self
            .latest
            .insert(service.to_owned(), (migration_number(id), id.to_owned()));
        self.unpin(service, previous);
        if let Some(key) = key {
            self.fired_by.insert(id.to_owned(), key.to_owned());
        }
    }

    /// Migration `id` of `service` entered terminal `phase`.
    pub(super) fn finished(&mut self, service: &str, id: &str, phase: Phase) {
        self.live.remove(id);
        if phase == Phase::Completed {
            let previous = self
                .latest_completed
                .insert(service.to_owned(), (migration_number(id), id.to_owned()));
            self.unpin(service, previous);
        }
    }

    /// Removes the oldest archived migrations past `cap`, returning each with its schedule
    /// key, for the state to drop.
    pub(super) fn retire(&mut self, cap: usize) -> Vec<(String, Option<String>)> {
        let mut retired = Vec::new();
        while self.archived.len() > cap {
            let Some((_, id)) = self.archived.pop_first() else {
                break;
            };
            let key = self.fired_by.remove(&id);
            retired.push((id, key));
        }
        retired
    }

    /// `previous` was pinned for `service`; archives it if nothing pins it any more (a
    /// finished migration is never live).
    fn unpin(&mut self, service: &str, previous: Option<Ranked>) {
        if let Some(ranked) = previous
            && !self.live.contains(&ranked.1)
            && !self.pinned(service, &ranked.1)
        {
            self.archived.insert(ranked);
        }
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
