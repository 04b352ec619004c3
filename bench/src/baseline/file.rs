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

/// The disk's floor for one durable append: write one append's records to a file, then
/// `fdatasync`. Sampled between the appends of the engine under test (interleaved), so that both
/// see the same moment of a shared, noisy disk.
pub struct FsyncProbe {
    file: File,
    payloads: Payloads,
    buf: Vec<u8>,
    k: u64,
}

impl FsyncProbe {
    /// Creates `dir/fsync-probe`.
    pub fn create(dir: &Path) -> std::io::Result<FsyncProbe> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("fsync-probe"))?;
        Ok(FsyncProbe {
            file,
            payloads: Payloads::new(),
            buf: Vec::new(),
            k: 0,
        })
    }

    /// Appends the next planned append's records durably; returns the latency in µs.
    pub fn sample(&mut self) -> std::io::Result<f64> {
        let p = data::plan(self.k, data::STREAMS);
        let stream = data::stream_name(p.stream);
        self.buf.clear();
        let start = Instant::now();
        for (i, (t, payload)) in data::raw_events(&self.payloads, 3 * self.k, p.events)
            .iter()
            .enumerate()
        {
            data::raw_record(&mut self.buf, self.k + 1, &stream, 1 + i as u64, t, payload);
        }
        self.k += 1;
        self.file.write_all(&self.buf)?;
        self.file.sync_data()?;
        Ok(start.elapsed().as_secs_f64() * 1e6)
    }
}
