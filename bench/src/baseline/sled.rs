//! raw sled: the keys tidings writes (one log key per 4 KiB of records, one stream-index key per
//! append), with `apply_batch` + `flush` + `fdatasync` of sled's data file, as tidings' writer
//! does, but without tidings' encoding, checksums or checks.

use std::collections::HashMap;
use std::fs::File;
use std::path::Path;

use super::{Append, Backend, Outcome};
use crate::data;

/// tidings' default chunk size.
const CHUNK_BYTES: usize = 4 * 1024;

/// Opens sled in `dir` with tidings' settings (64 MiB cache, high throughput, no timer flush).
pub fn open(dir: &Path) -> sled::Result<sled::Db> {
    sled::Config::new()
        .path(dir)
        .cache_capacity(64 * 1024 * 1024)
        .mode(sled::Mode::HighThroughput)
        .flush_every_ms(None)
        .open()
}

/// The raw sled writer.
pub struct SledWriter {
    db: sled::Db,
    data_file: File,
    heads: HashMap<String, u64>,
    next_position: u64,
}

impl SledWriter {
    /// A writer on a fresh `db` in `dir`.
    pub fn new(db: sled::Db, dir: &Path) -> std::io::Result<SledWriter> {
        Ok(SledWriter {
            db,
            data_file: File::open(dir.join("db"))?,
            heads: HashMap::new(),
            next_position: 1,
        })
    }
}

/// The log key of the chunk starting at `position` (as tidings: `L` + u64 BE).
pub fn log_key(position: u64) -> [u8; 9] {
    let mut key = [b'L'; 9];
    key[1..].copy_from_slice(&position.to_be_bytes());
    key
}

/// The index key (as tidings: `S` + u16 BE length + stream + u64 BE version).
pub fn index_key(stream: &str, version: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(11 + stream.len());
    key.push(b'S');
    key.extend_from_slice(&(stream.len() as u16).to_be_bytes());
    key.extend_from_slice(stream.as_bytes());
    key.extend_from_slice(&version.to_be_bytes());
    key
}

impl Backend for SledWriter {
    fn commit(&mut self, group: &[Append]) -> Result<Vec<Outcome>, String> {
        let mut batch = sled::Batch::default();
        let mut outcomes = Vec::with_capacity(group.len());
        let mut overlay: HashMap<&str, u64> = HashMap::new();
        let mut position = self.next_position;
        let mut chunk = Vec::with_capacity(CHUNK_BYTES + 512);
        let mut chunk_first = position;
        for a in group {
            let current = overlay
                .get(a.stream.as_str())
                .or_else(|| self.heads.get(&a.stream))
                .copied()
                .unwrap_or(0);
            if a.expected.is_some_and(|e| e != current) {
                outcomes.push(Err(format!(
                    "{}: expected {:?}, at {current}",
                    a.stream, a.expected
                )));
                continue;
            }
            let first_position = position;
            for (i, (event_type, payload)) in a.events.iter().enumerate() {
                data::raw_record(
                    &mut chunk,
                    position,
                    &a.stream,
                    current + 1 + i as u64,
                    event_type,
                    payload,
                );
                position += 1;
                if chunk.len() >= CHUNK_BYTES {
                    batch.insert(&log_key(chunk_first)[..], std::mem::take(&mut chunk));
                    chunk_first = position;
                }
            }
            let mut entry = [0u8; 12];
            entry[..8].copy_from_slice(&first_position.to_be_bytes());
            entry[8..].copy_from_slice(&(a.events.len() as u32).to_be_bytes());
            batch.insert(index_key(&a.stream, current + 1), &entry[..]);
            let version = current + a.events.len() as u64;
            overlay.insert(&a.stream, version);
            outcomes.push(Ok(version));
        }
        if !chunk.is_empty() {
            batch.insert(&log_key(chunk_first)[..], chunk);
        }
        self.db.apply_batch(batch).map_err(|e| e.to_string())?;
        self.db.flush().map_err(|e| e.to_string())?;
        self.data_file.sync_data().map_err(|e| e.to_string())?;
        for (s, v) in overlay {
            self.heads.insert(s.to_owned(), v);
        }
        self.next_position = position;
        Ok(outcomes)
    }
}
