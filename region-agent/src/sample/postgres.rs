//! The sample service's PostgreSQL mode (`umbra-sample --postgres CONNINFO`): the instance
//! keeps its data in its own database on the region's PostgreSQL server instead of its
//! write-ahead log, and replication between instances is PostgreSQL's logical replication.
//! The admin API and the modes stay the same, so the agent's replication driver drives it
//! unchanged; what each mode change does in PostgreSQL:
//!
//! - start: creates the database `umbra_<name>` if missing, the tables `umbra_kv` (the data)
//!   and `umbra_mark` (fence marks), the sequence `umbra_write_seq` (every acknowledged write
//!   takes the next value) and the publication `umbra_pub` of both tables.
//! - follow: `CREATE SUBSCRIPTION umbra_sub` to the source's database (the source's
//!   `/admin/status` names it): an initial copy then streaming, from a slot named after this
//!   database, made beforehand (so a source on the same server works too). A database that already holds data is refused, unless the source was promoted
//!   from it: then the subscription takes the slot the source made at its promotion, without
//!   a copy, so the way back loses nothing written on the source since.
//! - fence: after every write acknowledged before it (the writer applies writes in order),
//!   a mark row holding the server's WAL position, then `default_transaction_read_only` for
//!   the database. A fenced source's position is that mark, a replica's the source position
//!   it has applied (the mark copied to it, or what its subscription reported back), so lag 0
//!   means every acknowledged write is on the target.
//! - promote: reads the source's sequence, moves its own past it, makes a slot for the way
//!   back and records the promotion (the source, the slot, the source's fence mark), then
//!   drops the subscription (and its slot) and takes writes. A retry finishes a promotion
//!   that failed after the drop; a replica with no subscription and no such record is refused.
//!   The way back takes the slot without a copy only for the database the target was promoted
//!   from, still at the fence mark it was promoted at, and only while the slot exists.
//! - unfence, unfollow: lift the database's read-only setting; drop the subscription.
//! - removal: the process provider drops a removed instance's database
//!   ([`drop_instance_database`]) with its subscription and its slots; a promoted database
//!   drops its slot for the way back once the database it was promoted from is gone
//!   ([`PgStore::release_unused_back_slot`], checked every few seconds), so a completed
//!   migration leaves no slot keeping WAL.
//!
//! Positions (`last_seq` of `/admin/status`) are WAL positions in bytes (an LSN as a
//! number), so a service's `max_replication_lag` is in bytes in this mode. A replica's
//! `last_seq` is in its source server's WAL; its own followers read its server's WAL, so
//! they are measured against its `published_position` instead.
//!
//! Limits, stated: the conninfo carries no password (the subscription's connection string is
//! readable in the catalog; use trust on loopback, peer or certificate authentication), the
//! role must be a superuser (PostgreSQL 15 asks it of `CREATE SUBSCRIPTION`), and a source
//! that cannot be reached when a removed follower's subscription is dropped keeps the slot
//! that subscription read (the agent's log says so) until someone drops it
//! (`pg_drop_replication_slot`).

use std::fmt::Write as _;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;
use tokio_postgres::{Client, Config, NoTls};

/// The subscription of a replica (one per database).
const SUBSCRIPTION: &str = "umbra_sub";
/// The publication every instance's database has.
const PUBLICATION: &str = "umbra_pub";
/// Longest a connection attempt to PostgreSQL may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How far a promoted writer's sequence is moved past the source's: writes the source
/// acknowledged are all below its sequence's value, this keeps a margin for none lost.
const SEQUENCE_MARGIN: i64 = 1_000;

/// Errors of the PostgreSQL store.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// The conninfo does not parse or asks for what this mode cannot do.
    #[error("the PostgreSQL conninfo {0}")]
    Conninfo(String),
    /// A statement failed.
    #[error("PostgreSQL: {0}")]
    Db(String),
    /// The database is read-only (fenced): the write was not applied.
    #[error("the database is read-only (fenced)")]
    ReadOnly,
    /// A mode change cannot be done safely; nothing changed.
    #[error("{0}")]
    Refused(String),
}

fn db_error(e: tokio_postgres::Error) -> PgError {
    if let Some(db) = e.as_db_error()
        && db.code() == &tokio_postgres::error::SqlState::READ_ONLY_SQL_TRANSACTION
    {
        return PgError::ReadOnly;
    }
    // The server's message (with its detail) says more than the client's summary.
    match e.as_db_error() {
        Some(db) => PgError::Db(match db.detail() {
            Some(detail) => format!("{}: {detail}", db.message()),
            None => db.message().to_owned(),
        }),
        None => PgError::Db(e.to_string()),
    }
}

/// What `/admin/status` says of an instance in PostgreSQL mode.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PgStatus {
    /// The instance's database, as a conninfo other servers reach it by (no password).
    pub endpoint: String,
    /// The database this one was promoted from, if it was: the one that may follow back
    /// through `back_slot`.
    #[serde(default)]
    pub promoted_from: Option<String>,
    /// The slot made at promotion for the way back.
    #[serde(default)]
    pub back_slot: Option<String>,
    /// The source's fence mark this database held when it was promoted: only a database
    /// whose own mark is this one may follow back through `back_slot` without a copy.
    #[serde(default)]
    pub promoted_at: Option<u64>,
    /// The position this database's own followers are measured against: its fence mark once
    /// fenced, else its server's WAL end. It differs from `last_seq` for a replica, whose
    /// `last_seq` is in its source server's WAL while its followers read its own server's
    /// (a shadow following the writer to be, while that one still follows the source).
    #[serde(default)]
    pub published_position: Option<u64>,
}

/// An instance's two positions ([`PgStore::positions`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PgPositions {
    /// `last_seq` of `/admin/status`.
    pub last_seq: u64,
    /// The position its own followers are measured against (`published_position`).
    pub published: u64,
}

/// One instance's database.
pub struct PgStore {
    server: Config,
    endpoint: String,
    database: String,
    /// The writer's connection; writes, marks and mode changes go through it in order.
    writer: Mutex<Option<Client>>,
    /// Reads and status queries (pipelined on one connection).
    reader: Mutex<Option<Arc<Client>>>,
}

/// A name PostgreSQL takes unquoted: lowercase letters, digits and `_`, at most 63 bytes,
/// with a hash of the original when it had to be changed or cut, so two names never meet.
fn identifier(prefix: &str, raw: &str) -> String {
    let clean: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    let mut name = format!("{prefix}{clean}");
    if name.len() > 63 || clean != raw {
        name.truncate(46);
        let _ = write!(name, "_{:016x}", fnv1a(raw));
    }
    name
}

fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A conninfo value, quoted as libpq reads it.
fn quote_conninfo(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// A string literal for SQL (statements that take no parameters, such as `CREATE
/// SUBSCRIPTION`).
fn literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

fn lsn_number(lsn: Option<tokio_postgres::types::PgLsn>) -> u64 {
    lsn.map_or(0, u64::from)
}

async fn connect(config: &Config) -> Result<Client, PgError> {
    let (client, connection) = config.connect(NoTls).await.map_err(db_error)?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %e, "PostgreSQL connection ended");
        }
    });
    Ok(client)
}

/// The region's server from `conninfo`, with the connection timeout, its maintenance
/// database when the conninfo names none.
fn server_config(conninfo: &str) -> Result<Config, PgError> {
    let mut server = parse_conninfo(conninfo)?;
    server.connect_timeout(CONNECT_TIMEOUT);
    if server.get_dbname().is_none() {
        server.dbname("postgres");
    }
    Ok(server)
}

/// Instance `instance`'s database on the server `conninfo` names: the server's config, a
/// connection to its maintenance database, the database's name, and whether it exists.
async fn instance_database(
    conninfo: &str,
    instance: &str,
) -> Result<(Config, Client, String, bool), PgError> {
    let server = server_config(conninfo)?;
    let database = identifier("umbra_", instance);
    let admin = connect(&server).await?;
    let exists = admin
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&database])
        .await
        .map_err(db_error)?
        .is_some();
    Ok((server, admin, database, exists))
}

impl PgStore {
    /// Parses `conninfo` (the region's server), creates the instance's database and schema if
    /// missing, and connects.
    pub async fn open(conninfo: &str, instance: &str) -> Result<PgStore, PgError> {
        let (server, admin, database, exists) = instance_database(conninfo, instance).await?;
        if !exists {
            admin
                .batch_execute(&format!("CREATE DATABASE {database}"))
                .await
                .map_err(db_error)?;
        }
        drop(admin);
        let endpoint = endpoint_of(&server, &database)?;
        let store = PgStore {
            server,
            endpoint,
            database,
            writer: Mutex::new(None),
            reader: Mutex::new(None),
        };
        store.create_schema().await?;
        Ok(store)
    }

    async fn create_schema(&self) -> Result<(), PgError> {
        let writer = self.writer().await?;
        writer
            .batch_execute(
                "CREATE TABLE IF NOT EXISTS umbra_kv (key text PRIMARY KEY, value text NOT NULL, \
                     seq bigint NOT NULL, writer text NOT NULL, at_ms bigint NOT NULL);
                 CREATE TABLE IF NOT EXISTS umbra_mark (origin text PRIMARY KEY, lsn pg_lsn NOT NULL);
                 CREATE TABLE IF NOT EXISTS umbra_meta (key text PRIMARY KEY, value text NOT NULL);
                 CREATE SEQUENCE IF NOT EXISTS umbra_write_seq;",
            )
            .await
            .map_err(db_error)?;
        let published = writer
            .query_opt(
                "SELECT 1 FROM pg_publication WHERE pubname = $1",
                &[&PUBLICATION],
            )
            .await
            .map_err(db_error)?
            .is_some();
        if !published {
            writer
                .batch_execute(&format!(
                    "CREATE PUBLICATION {PUBLICATION} FOR TABLE umbra_kv, umbra_mark"
                ))
                .await
                .map_err(db_error)?;
        }
        Ok(())
    }

    /// The instance's database as a conninfo.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    fn own_config(&self) -> Config {
        let mut config = self.server.clone();
        config.dbname(&self.database);
        config
    }

    async fn writer(&self) -> Result<tokio::sync::MappedMutexGuard<'_, Client>, PgError> {
        let mut slot = self.writer.lock().await;
        if slot.as_ref().is_none_or(Client::is_closed) {
            *slot = Some(connect(&self.own_config()).await?);
        }
        Ok(tokio::sync::MutexGuard::map(slot, |c| {
            c.as_mut().expect("connected above")
        }))
    }

    async fn reader(&self) -> Result<Arc<Client>, PgError> {
        let mut slot = self.reader.lock().await;
        if let Some(client) = slot.as_ref()
            && !client.is_closed()
        {
            return Ok(client.clone());
        }
        let client = Arc::new(connect(&self.own_config()).await?);
        *slot = Some(client.clone());
        Ok(client)
    }

    /// Applies client writes (`None`: delete) in one transaction; their sequence numbers.
    pub async fn write(
        &self,
        writes: &[(String, Option<String>)],
        writer_name: &str,
    ) -> Result<Vec<u64>, PgError> {
        let mut client = self.writer().await?;
        let tx = client.transaction().await.map_err(db_error)?;
        let upsert = tx
            .prepare(
                "INSERT INTO umbra_kv (key, value, seq, writer, at_ms) \
                 VALUES ($1, $2, nextval('umbra_write_seq'), $3, $4) \
                 ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, seq = EXCLUDED.seq, \
                 writer = EXCLUDED.writer, at_ms = EXCLUDED.at_ms RETURNING seq",
            )
            .await
            .map_err(db_error)?;
        let delete = tx
            .prepare(
                "WITH gone AS (DELETE FROM umbra_kv WHERE key = $1) \
                 SELECT nextval('umbra_write_seq')",
            )
            .await
            .map_err(db_error)?;
        let at_ms = crate::unix_ms() as i64;
        let mut seqs = Vec::with_capacity(writes.len());
        for (key, value) in writes {
            let row = match value {
                Some(v) => tx.query_one(&upsert, &[key, v, &writer_name, &at_ms]).await,
                None => tx.query_one(&delete, &[key]).await,
            }
            .map_err(db_error)?;
            seqs.push(row.get::<_, i64>(0) as u64);
        }
        tx.commit().await.map_err(db_error)?;
        Ok(seqs)
    }

    /// A key's value.
    pub async fn read(&self, key: &str) -> Result<Option<String>, PgError> {
        let reader = self.reader().await?;
        let row = reader
            .query_opt("SELECT value FROM umbra_kv WHERE key = $1", &[&key])
            .await
            .map_err(db_error)?;
        Ok(row.map(|r| r.get(0)))
    }

    /// Every key and value.
    pub async fn dump(&self) -> Result<Vec<(String, String)>, PgError> {
        let reader = self.reader().await?;
        let rows = reader
            .query("SELECT key, value FROM umbra_kv", &[])
            .await
            .map_err(db_error)?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Keys stored.
    pub async fn keys(&self) -> Result<usize, PgError> {
        let reader = self.reader().await?;
        let row = reader
            .query_one("SELECT count(*) FROM umbra_kv", &[])
            .await
            .map_err(db_error)?;
        Ok(row.get::<_, i64>(0) as usize)
    }

    /// The instance's positions. `last_seq`: the WAL end for a writer, its fence mark once
    /// fenced, and for a replica the source position it has applied (0 until the initial copy
    /// is done). `published`: what its own followers are measured against.
    pub async fn positions(&self, fenced: bool, replica: bool) -> Result<PgPositions, PgError> {
        let reader = self.reader().await?;
        let applied = self.applied_position(&reader).await?;
        let published = self.published_position(&reader, fenced).await?;
        let last_seq = match applied {
            Some(applied) => applied,
            // A replica whose subscription is gone (a follow that failed half-way, a
            // database lost under it) holds nothing that can be measured against its source.
            None if replica => 0,
            None => published,
        };
        Ok(PgPositions {
            last_seq,
            published,
        })
    }

    /// The source position a subscribed database has applied (0 while its initial copy
    /// runs); `None` without a subscription.
    async fn applied_position(&self, reader: &Client) -> Result<Option<u64>, PgError> {
        let subscribed = reader
            .query_opt(
                "SELECT s.subconninfo, st.latest_end_lsn FROM pg_subscription s \
                 JOIN pg_database d ON d.oid = s.subdbid AND d.datname = current_database() \
                 LEFT JOIN pg_stat_subscription st ON st.subid = s.oid AND st.relid IS NULL \
                 WHERE s.subname = $1",
                &[&SUBSCRIPTION],
            )
            .await
            .map_err(db_error)?;
        let Some(row) = subscribed else {
            return Ok(None);
        };
        let upstream: String = row.get(0);
        let reported = lsn_number(row.get(1));
        let copying = reader
            .query_one(
                "SELECT count(*) FROM pg_subscription_rel r JOIN pg_subscription s \
                 ON s.oid = r.srsubid WHERE s.subname = $1 AND r.srsubstate <> 'r'",
                &[&SUBSCRIPTION],
            )
            .await
            .map_err(db_error)?
            .get::<_, i64>(0);
        if copying > 0 {
            return Ok(Some(0));
        }
        let mark = self.mark(reader, &upstream).await?;
        Ok(Some(reported.max(mark)))
    }

    /// The position this database's followers are measured against, whether it follows a
    /// source itself or not: its fence mark once fenced, else its server's WAL end (the
    /// position its followers' subscriptions report, as they read that WAL).
    async fn published_position(&self, reader: &Client, fenced: bool) -> Result<u64, PgError> {
        if fenced {
            let mark = self.mark(reader, &self.endpoint).await?;
            if mark > 0 {
                return Ok(mark);
            }
        }
        let row = reader
            .query_one("SELECT pg_current_wal_lsn()", &[])
            .await
            .map_err(db_error)?;
        Ok(lsn_number(row.get(0)))
    }

    async fn mark(&self, client: &Client, origin: &str) -> Result<u64, PgError> {
        let row = client
            .query_opt("SELECT lsn FROM umbra_mark WHERE origin = $1", &[&origin])
            .await
            .map_err(db_error)?;
        Ok(lsn_number(row.map(|r| r.get(0))))
    }

    /// What `/admin/status` shows of the database, but for its published position
    /// ([`PgStore::positions`]).
    pub async fn status(&self) -> Result<PgStatus, PgError> {
        let reader = self.reader().await?;
        let meta = |key: &'static str| {
            let reader = reader.clone();
            async move {
                reader
                    .query_opt("SELECT value FROM umbra_meta WHERE key = $1", &[&key])
                    .await
                    .map(|row| row.map(|r| r.get::<_, String>(0)))
                    .map_err(db_error)
            }
        };
        Ok(PgStatus {
            endpoint: self.endpoint.clone(),
            promoted_from: meta("promoted_from").await?,
            back_slot: meta("back_slot").await?,
            promoted_at: meta("promoted_at").await?.and_then(|v| v.parse().ok()),
            published_position: None,
        })
    }

    /// Fences the database: a mark at the current WAL position (after every write the writer
    /// applied), then read-only for every new transaction.
    pub async fn fence(&self) -> Result<(), PgError> {
        let client = self.writer().await?;
        client
            .execute(
                "INSERT INTO umbra_mark (origin, lsn) VALUES ($1, pg_current_wal_lsn()) \
                 ON CONFLICT (origin) DO UPDATE SET lsn = EXCLUDED.lsn",
                &[&self.endpoint],
            )
            .await
            .map_err(db_error)?;
        client
            .batch_execute(&format!(
                "ALTER DATABASE {} SET default_transaction_read_only = on",
                self.database
            ))
            .await
            .map_err(db_error)
    }

    /// Lifts the database's read-only setting (new transactions may write again).
    async fn writable(&self, client: &Client) -> Result<(), PgError> {
        client
            .batch_execute(&format!(
                "ALTER DATABASE {} RESET default_transaction_read_only",
                self.database
            ))
            .await
            .map_err(db_error)
    }

    /// Lifts the database's read-only setting.
    pub async fn unfence(&self) -> Result<(), PgError> {
        let client = self.writer().await?;
        self.writable(&client).await
    }

    /// Subscribes to `upstream` (the source's status). Idempotent for the same source.
    pub async fn follow(&self, upstream: &PgStatus) -> Result<(), PgError> {
        let client = self.writer().await?;
        let current = subscribed_to(&client).await?;
        if current.as_deref() == Some(upstream.endpoint.as_str()) {
            return Ok(());
        }
        if upstream.endpoint == self.endpoint {
            return Err(PgError::Refused("an instance cannot follow itself".into()));
        }
        let source = source_config(&upstream.endpoint)?;
        // The way back: the source was promoted from this very database, at the mark it still
        // holds (nothing lost or written here since), and its slot for the way back exists.
        let way_back = match (&upstream.back_slot, upstream.promoted_at) {
            (Some(slot), Some(at))
                if upstream.promoted_from.as_deref() == Some(self.endpoint.as_str())
                    && at > 0
                    && self.mark(&client, &self.endpoint).await? == at =>
            {
                let upstream_client = connect(&source).await?;
                upstream_client
                    .query_opt(
                        "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1",
                        &[&slot],
                    )
                    .await
                    .map_err(db_error)?
                    .map(|_| slot.clone())
            }
            _ => None,
        };
        let options = match way_back {
            Some(slot) => {
                format!(
                    "slot_name = {}, create_slot = false, copy_data = false",
                    literal(&slot)
                )
            }
            _ => {
                let rows = client
                    .query_one("SELECT count(*) FROM umbra_kv", &[])
                    .await
                    .map_err(db_error)?
                    .get::<_, i64>(0);
                if rows > 0 {
                    return Err(PgError::Refused(format!(
                        "database {} holds {rows} keys and {} offers no way back to it; \
                         a copy would overwrite them (start the replica on an empty database)",
                        self.database, upstream.endpoint
                    )));
                }
                // The slot is made first, over a connection of its own: a subscription to a
                // database of the same server cannot make its slot itself (PostgreSQL waits
                // for the creating transaction, which is the subscription's own).
                let slot = identifier("umbra_", &self.endpoint);
                connect(&source)
                    .await?
                    .query(
                        "SELECT pg_create_logical_replication_slot($1, 'pgoutput') WHERE NOT \
                         EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)",
                        &[&slot],
                    )
                    .await
                    .map_err(db_error)?;
                format!(
                    "slot_name = {}, create_slot = false, copy_data = true",
                    literal(&slot)
                )
            }
        };
        if current.is_some() {
            drop_subscription(&client).await?;
        }
        // The apply worker writes under the database's settings: a fenced source following
        // its target back must take the stream (the instance itself refuses client writes).
        self.writable(&client).await?;
        client
            .batch_execute(&format!(
                "CREATE SUBSCRIPTION {SUBSCRIPTION} CONNECTION {} PUBLICATION {PUBLICATION} \
                 WITH ({options})",
                literal(&upstream.endpoint)
            ))
            .await
            .map_err(db_error)?;
        // A replica is no longer what it was promoted from.
        forget_promotion(&client).await
    }

    /// Stops following without taking writes.
    pub async fn unfollow(&self) -> Result<(), PgError> {
        let client = self.writer().await?;
        drop_subscription(&client).await
    }

    /// Makes the database the writer: the source's sequence read, the subscription dropped,
    /// the sequence moved past the source's, a slot made for the way back.
    pub async fn promote(&self) -> Result<(), PgError> {
        let client = self.writer().await?;
        let Some(upstream) = subscribed_to(&client).await? else {
            // A promotion records itself before it drops the subscription: one that failed
            // after the drop is finished here; a replica that lost its subscription otherwise
            // has nothing it could be promoted from.
            let promoted = client
                .query_opt("SELECT 1 FROM umbra_meta WHERE key = 'promoted_from'", &[])
                .await
                .map_err(db_error)?
                .is_some();
            if !promoted {
                return Err(PgError::Refused(format!(
                    "database {} follows no source (its subscription is gone), so it may lack \
                     acknowledged writes: follow the source again before promoting",
                    self.database
                )));
            }
            return self.writable(&client).await;
        };
        let source_seq: i64 = connect(&source_config(&upstream)?)
            .await?
            .query_one("SELECT last_value FROM umbra_write_seq", &[])
            .await
            .map_err(db_error)?
            .get(0);
        client
            .query_one(
                "SELECT setval('umbra_write_seq', \
                 greatest((SELECT last_value FROM umbra_write_seq), $1::bigint) + $2::bigint)",
                &[&source_seq, &SEQUENCE_MARGIN],
            )
            .await
            .map_err(db_error)?;
        // The slot for the way back, made afresh: one left by an earlier promotion would
        // start the way back at an old position.
        let back_slot = identifier("umbra_back_", &self.endpoint);
        drop_idle_slot(&client, &back_slot).await?;
        client
            .query(
                "SELECT pg_create_logical_replication_slot($1, 'pgoutput') \
                 WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)",
                &[&back_slot],
            )
            .await
            .map_err(db_error)?;
        let at = self.mark(&client, &upstream).await?.to_string();
        client
            .execute(
                "INSERT INTO umbra_meta (key, value) VALUES ('promoted_from', $1), \
                 ('back_slot', $2), ('promoted_at', $3) \
                 ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                &[&upstream, &back_slot, &at],
            )
            .await
            .map_err(db_error)?;
        drop_subscription(&client).await?;
        self.writable(&client).await
    }

    /// Drops the slot this database's promotion made for the way back once the database it
    /// was promoted from is gone (its instance removed after the migration completed, which
    /// drops its database): nothing can follow back through it any more, and an unused slot
    /// makes the server keep every WAL segment from its position on. Whether the slot was
    /// dropped; a source that cannot be reached keeps it (gone is only what the server says).
    pub async fn release_unused_back_slot(&self) -> Result<bool, PgError> {
        let status = self.status().await?;
        let (Some(from), Some(slot)) = (status.promoted_from, status.back_slot) else {
            return Ok(false);
        };
        match source_config(&from)?.connect(NoTls).await {
            Err(e)
                if e.as_db_error().map(|db| db.code())
                    == Some(&tokio_postgres::error::SqlState::INVALID_CATALOG_NAME) => {}
            _ => return Ok(false),
        }
        // Under the writer's lock, which every mode change holds throughout: only the
        // promotion checked above is forgotten, not one a follow and promotion made meanwhile.
        let client = self.writer().await?;
        let still = client
            .query_opt(
                "SELECT 1 FROM umbra_meta WHERE key = 'promoted_from' AND value = $1",
                &[&from],
            )
            .await
            .map_err(db_error)?
            .is_some();
        if !still {
            return Ok(false);
        }
        drop_idle_slot(&client, &slot).await?;
        forget_promotion(&client).await?;
        tracing::info!(slot, database = %self.database,
            "dropped the slot for the way back: the database it served is gone");
        Ok(true)
    }
}

/// Drops the slot `slot` unless a subscriber reads it.
async fn drop_idle_slot(client: &Client, slot: &str) -> Result<(), PgError> {
    client
        .query(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
             WHERE slot_name = $1 AND NOT active",
            &[&slot],
        )
        .await
        .map_err(db_error)?;
    Ok(())
}

/// Forgets this database's promotion record (where it was promoted from, its way-back slot,
/// the mark it was promoted at).
async fn forget_promotion(client: &Client) -> Result<(), PgError> {
    client
        .batch_execute(
            "DELETE FROM umbra_meta WHERE key IN ('promoted_from', 'back_slot', 'promoted_at')",
        )
        .await
        .map_err(db_error)
}

/// Drops removed instance `instance`'s database from the server `conninfo` names, with what
/// ties the server to it: its subscription (and so the slot it read on its source's server),
/// and the slots made in it (the way back). Whether there was one. A slot a live subscriber
/// still reads is not dropped, and then neither is the database: the error says so.
pub async fn drop_instance_database(conninfo: &str, instance: &str) -> Result<bool, PgError> {
    let (server, admin, database, exists) = instance_database(conninfo, instance).await?;
    if !exists {
        return Ok(false);
    }
    let mut own = server.clone();
    own.dbname(&database);
    let client = connect(&own).await?;
    // A fenced database is read-only for new sessions; this one drops it.
    client
        .batch_execute("SET default_transaction_read_only = off")
        .await
        .map_err(db_error)?;
    if subscribed_to(&client).await?.is_some()
        && let Err(e) = client
            .batch_execute(&format!("DROP SUBSCRIPTION {SUBSCRIPTION}"))
            .await
    {
        // The source cannot be reached to drop the slot this subscription read: detach it
        // and say so (that slot stays on the source's server).
        tracing::warn!(%database, error = %db_error(e),
            "the removed instance's source did not answer: its slot stays on that server");
        client
            .batch_execute(&format!(
                "ALTER SUBSCRIPTION {SUBSCRIPTION} DISABLE; \
                 ALTER SUBSCRIPTION {SUBSCRIPTION} SET (slot_name = NONE); \
                 DROP SUBSCRIPTION {SUBSCRIPTION}"
            ))
            .await
            .map_err(db_error)?;
    }
    drop(client);
    admin
        .query(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
             WHERE database = $1 AND NOT active",
            &[&database],
        )
        .await
        .map_err(db_error)?;
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"))
        .await
        .map_err(db_error)?;
    Ok(true)
}

/// What the server `conninfo` names holds for Umbra: its instances' databases (`umbra_…`)
/// and its replication slots that no subscriber reads at the moment (an in-region replica's
/// slot is read; one kept for a way back that can no longer be taken is not), each sorted.
pub async fn holdings(conninfo: &str) -> Result<(Vec<String>, Vec<String>), PgError> {
    let client = connect(&server_config(conninfo)?).await?;
    let names = |rows: Vec<tokio_postgres::Row>| rows.iter().map(|r| r.get(0)).collect();
    let databases = client
        .query(
            "SELECT datname::text FROM pg_database WHERE datname LIKE 'umbra\\_%' ORDER BY 1",
            &[],
        )
        .await
        .map_err(db_error)?;
    let slots = client
        .query(
            "SELECT slot_name::text FROM pg_replication_slots WHERE NOT active ORDER BY 1",
            &[],
        )
        .await
        .map_err(db_error)?;
    Ok((names(databases), names(slots)))
}

/// A source's conninfo (as a subscription names it), with the connection timeout.
fn source_config(conninfo: &str) -> Result<Config, PgError> {
    let mut config = Config::from_str(conninfo)
        .map_err(|e| PgError::Db(format!("the source's conninfo does not parse: {e}")))?;
    config.connect_timeout(CONNECT_TIMEOUT);
    Ok(config)
}

/// Parses a server's conninfo as `--postgres` takes it: it must name a host and carry no
/// password. The error never repeats the conninfo (it may hold one).
pub fn parse_conninfo(conninfo: &str) -> Result<Config, PgError> {
    let server = Config::from_str(conninfo).map_err(|e| {
        PgError::Conninfo(format!(
            "does not parse ({e}); give one such as \"host=127.0.0.1 port=5432 user=postgres\""
        ))
    })?;
    if server.get_password().is_some() {
        return Err(PgError::Conninfo(
            "must not carry a password: other servers read it to subscribe, and it would \
             show in the catalog; use trust on loopback, peer or certificate authentication"
                .into(),
        ));
    }
    if server.get_hosts().is_empty() {
        return Err(PgError::Conninfo("names no host (host=127.0.0.1)".into()));
    }
    Ok(server)
}

/// The conninfo this database's subscription reads from, if it has one.
async fn subscribed_to(client: &Client) -> Result<Option<String>, PgError> {
    let row = client
        .query_opt(
            "SELECT s.subconninfo FROM pg_subscription s JOIN pg_database d \
             ON d.oid = s.subdbid AND d.datname = current_database() WHERE s.subname = $1",
            &[&SUBSCRIPTION],
        )
        .await
        .map_err(db_error)?;
    Ok(row.map(|r| r.get(0)))
}

async fn drop_subscription(client: &Client) -> Result<(), PgError> {
    if subscribed_to(client).await?.is_some() {
        client
            .batch_execute(&format!("DROP SUBSCRIPTION {SUBSCRIPTION}"))
            .await
            .map_err(db_error)?;
    }
    Ok(())
}

/// The conninfo other servers reach `database` by: the server's host, port and user.
fn endpoint_of(server: &Config, database: &str) -> Result<String, PgError> {
    use tokio_postgres::config::Host;
    let host = match server.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        Some(Host::Unix(p)) => p.display().to_string(),
        None => return Err(PgError::Conninfo("names no host (host=127.0.0.1)".into())),
    };
    let mut s = format!("host={}", quote_conninfo(&host));
    if let Some(port) = server.get_ports().first() {
        let _ = write!(s, " port={port}");
    }
    if let Some(user) = server.get_user() {
        let _ = write!(s, " user={}", quote_conninfo(user));
    }
    let _ = write!(s, " dbname={database}");
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_plain_short_and_distinct() {
        assert_eq!(identifier("umbra_", "a1"), "umbra_a1");
        let long = identifier("umbra_", &"x".repeat(100));
        assert!(long.len() <= 63, "{long}");
        assert_ne!(identifier("umbra_", "A-1"), identifier("umbra_", "a_1"));
        assert!(
            identifier("umbra_", "svc-eu/7")
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        );
    }

    #[test]
    fn the_endpoint_names_host_port_user_and_the_database() {
        let server = Config::from_str("host=127.0.0.1 port=5433 user=postgres").unwrap();
        assert_eq!(
            endpoint_of(&server, "umbra_a").unwrap(),
            "host='127.0.0.1' port=5433 user='postgres' dbname=umbra_a"
        );
    }

    #[tokio::test]
    async fn a_conninfo_with_a_password_is_refused_before_connecting() {
        let Err(e) = PgStore::open("host=127.0.0.1 port=1 password=secret", "a").await else {
            panic!("a password was taken");
        };
        let message = e.to_string();
        assert!(message.contains("password"), "{message}");
        assert!(!message.contains("secret"), "{message}");
    }
}
