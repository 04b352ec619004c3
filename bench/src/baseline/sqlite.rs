//! SQLite as an embedded user would set it up for an event store: WAL, `synchronous=FULL`, one
//! `events` table with the position as rowid and a unique (stream, version) index, and the
//! same fields per event as tidings records (event id, category, schema version, correlation and
//! causation ids, timestamp), so that time and bytes per event compare like for like.

use std::collections::HashMap;
use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension};

use super::{Append, Backend, Outcome};

/// Opens (or creates) the SQLite event store in `dir/events.db`.
pub fn open(dir: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(dir.join("events.db"))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS events (
            position INTEGER PRIMARY KEY,
            stream TEXT NOT NULL,
            version INTEGER NOT NULL,
            type TEXT NOT NULL,
            payload BLOB NOT NULL,
            event_id BLOB NOT NULL,
            category TEXT NOT NULL,
            schema_version INTEGER NOT NULL,
            correlation_id BLOB,
            causation_id BLOB,
            timestamp_micros INTEGER NOT NULL,
            UNIQUE(stream, version)
        );",
    )?;
    Ok(conn)
}

/// The SQLite event store's writer: one transaction per group.
pub struct SqliteWriter {
    conn: Connection,
    heads: HashMap<String, u64>,
    next_position: u64,
}

impl SqliteWriter {
    /// A writer over a store opened with [`open`].
    pub fn new(conn: Connection) -> rusqlite::Result<SqliteWriter> {
        let last: Option<u64> =
            conn.query_row("SELECT MAX(position) FROM events", [], |r| r.get(0))?;
        Ok(SqliteWriter {
            conn,
            heads: HashMap::new(),
            next_position: last.unwrap_or(0) + 1,
        })
    }

    fn head(
        conn: &Connection,
        heads: &HashMap<String, u64>,
        stream: &str,
    ) -> rusqlite::Result<u64> {
        if let Some(v) = heads.get(stream) {
            return Ok(*v);
        }
        let v: Option<u64> = conn
            .prepare_cached("SELECT MAX(version) FROM events WHERE stream = ?1")?
            .query_row([stream], |r| r.get(0))
            .optional()?
            .flatten();
        Ok(v.unwrap_or(0))
    }

    fn write(
        &mut self,
        group: &[Append],
    ) -> rusqlite::Result<(Vec<Outcome>, HashMap<String, u64>, u64)> {
        let tx = self.conn.transaction()?;
        let mut overlay: HashMap<String, u64> = HashMap::new();
        let mut outcomes = Vec::with_capacity(group.len());
        let mut position = self.next_position;
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO events (position, stream, version, type, payload, event_id, category, \
                 schema_version, correlation_id, causation_id, timestamp_micros) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 1, NULL, NULL, ?8)",
            )?;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_micros() as i64);
            for a in group {
                let current = match overlay.get(&a.stream) {
                    Some(v) => *v,
                    None => Self::head(&tx, &self.heads, &a.stream)?,
                };
                if a.expected.is_some_and(|e| e != current) {
                    outcomes.push(Err(format!(
                        "{}: expected {:?}, at {current}",
                        a.stream, a.expected
                    )));
                    continue;
                }
                let category = a
                    .stream
                    .split_once('-')
                    .map_or(a.stream.as_str(), |(c, _)| c);
                for (i, (event_type, payload)) in a.events.iter().enumerate() {
                    insert.execute(params![
                        position,
                        a.stream,
                        current + 1 + i as u64,
                        event_type,
                        payload,
                        uuid::Uuid::new_v4().as_bytes(),
                        category,
                        now
                    ])?;
                    position += 1;
                }
                let version = current + a.events.len() as u64;
                overlay.insert(a.stream.clone(), version);
                outcomes.push(Ok(version));
            }
        }
        tx.commit()?;
        Ok((outcomes, overlay, position))
    }
}

impl Backend for SqliteWriter {
    fn commit(&mut self, group: &[Append]) -> Result<Vec<Outcome>, String> {
        let (outcomes, overlay, position) = self.write(group).map_err(|e| e.to_string())?;
        self.heads.extend(overlay);
        self.next_position = position;
        Ok(outcomes)
    }
}

/// A full history of `stream`, as (version, type, payload) rows.
pub fn read_stream(
    conn: &Connection,
    stream: &str,
) -> rusqlite::Result<Vec<(u64, String, Vec<u8>)>> {
    let mut stmt = conn.prepare_cached(
        "SELECT version, type, payload FROM events WHERE stream = ?1 ORDER BY version",
    )?;
    let rows = stmt.query_map([stream], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
    rows.collect()
}

/// Reads the whole log in position order; returns how many events passed `keep` (by type).
pub fn scan(conn: &Connection, keep: impl Fn(&str) -> bool) -> rusqlite::Result<u64> {
    let mut stmt = conn.prepare_cached(
        "SELECT position, stream, version, type, payload FROM events ORDER BY position",
    )?;
    let mut rows = stmt.query([])?;
    let mut n = 0u64;
    while let Some(row) = rows.next()? {
        let event_type = row.get_ref(3)?.as_str()?;
        if keep(event_type) {
            let _position: u64 = row.get(0)?;
            let _stream = row.get_ref(1)?.as_str()?.to_owned();
            let _version: u64 = row.get(2)?;
            let _payload = row.get_ref(4)?.as_blob()?.to_vec();
            n += 1;
        }
    }
    Ok(n)
}
