//! The disk's limit: the same records appended to one file, one `write` + `fdatasync` per group.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::time::Instant;

use super::{Append, Backend, Outcome};
use crate::data::{self, Payloads};

/// Appends records to a file.
pub struct FileWriter {
    file: File,
    heads: HashMap<String, u64>,
    next_position: u64,
    buf: Vec<u8>,
}

impl FileWriter {
    /// Creates `dir/log`.
    pub fn create(dir: &Path) -> std::io::Result<FileWriter> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("log"))?;
        Ok(FileWriter {
            file,
            heads: HashMap::new(),
            next_position: 1,
            buf: Vec::new(),
        })
    }
}

impl Backend for FileWriter {
    fn commit(&mut self, group: &[Append]) -> Result<Vec<Outcome>, String> {
        self.buf.clear();
        let mut outcomes = Vec::with_capacity(group.len());
        for a in group {
            let current = self.heads.get(&a.stream).copied().unwrap_or(0);
            for (i, (event_type, payload)) in a.events.iter().enumerate() {
                data::raw_record(
                    &mut self.buf,
                    self.next_position,
                    &a.stream,
                    current + 1 + i as u64,
                    event_type,
                    payload,
                );
                self.next_position += 1;
            }
            let version = current + a.events.len() as u64;
            self.heads.insert(a.stream.clone(), version);
            outcomes.push(Ok(version));
        }
        self.file.write_all(&self.buf).map_err(|e| e.to_string())?;
        self.file.sync_data().map_err(|e| e.to_string())?;
        Ok(outcomes)
    }
}

/// Latencies (µs) of `n` appends made one at a time straight to a file: write the append's
/// records, then `fdatasync`. The disk's floor for one durable append.
pub fn fdatasync_latencies(dir: &Path, payloads: &Payloads, n: u64) -> std::io::Result<Vec<f64>> {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("fsync-probe"))?;
    let mut out = Vec::with_capacity(n as usize);
    let mut buf = Vec::new();
    let mut seq = 0u64;
    for k in 0..n {
        let p = data::plan(k, data::STREAMS);
        let stream = data::stream_name(p.stream);
        buf.clear();
        let start = Instant::now();
        for (i, (t, payload)) in data::raw_events(payloads, seq, p.events).iter().enumerate() {
            data::raw_record(&mut buf, seq + 1, &stream, 1 + i as u64, t, payload);
        }
        seq += p.events as u64;
        file.write_all(&buf)?;
        file.sync_data()?;
        out.push(start.elapsed().as_secs_f64() * 1e6);
    }
    Ok(out)
}
