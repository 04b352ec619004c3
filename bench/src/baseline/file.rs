//! The disk's limit: the same records appended to one file, one `write` + `fdatasync` per group,
//! to a growing file ([`FileWriter::create`]) or to one pre-allocated ahead of the tail
//! ([`FileWriter::create_presized`], the physical reference: a growing file's fdatasync also
//! writes its new size, 222 µs against 111 µs for 4 KiB on this machine's disk).

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::time::Instant;

use super::{Append, Backend, Outcome};
use crate::data::{self, Payloads};

/// How far ahead of the tail a pre-sized file is written with zeros: at creation, before any
/// timed append, enough for W1's largest run (600 000 events of ~330 bytes), so that no timed
/// group pays for zeros; a longer run extends it by as much again inside the group that needs it.
const PRESIZE_STEP: u64 = 256 << 20;

/// Appends records to a file.
pub struct FileWriter {
    file: File,
    heads: HashMap<String, u64>,
    next_position: u64,
    buf: Vec<u8>,
    /// Pre-sized: the tail offset and how far the file is allocated (`None`: a growing file).
    presized: Option<(u64, u64)>,
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
            presized: None,
        })
    }

    /// Creates `dir/log` written with zeros [`PRESIZE_STEP`] ahead of its tail (before the
    /// workload's clock starts): each group is one `pwrite` at the tail and one `fdatasync` that
    /// has no size or extent to record.
    pub fn create_presized(dir: &Path) -> std::io::Result<FileWriter> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(dir.join("log"))?;
        let mut w = FileWriter {
            file,
            heads: HashMap::new(),
            next_position: 1,
            buf: Vec::new(),
            presized: Some((0, 0)),
        };
        w.allocate(0)?;
        Ok(w)
    }

    /// Extends the pre-sized file with zeros up to `needed + PRESIZE_STEP` when `needed` passes
    /// its end, and syncs them (once per step).
    fn allocate(&mut self, needed: u64) -> std::io::Result<()> {
        let Some((tail, allocated)) = self.presized else {
            return Ok(());
        };
        if needed <= allocated && allocated > 0 {
            return Ok(());
        }
        let end = needed + PRESIZE_STEP;
        // Zeros written, not `posix_fallocate`: an allocated but unwritten extent must still be
        // marked written (journalled) by the fdatasync after the first write into it.
        use std::os::unix::fs::FileExt;
        let zeros = vec![0u8; 1 << 20];
        let mut at = allocated;
        while at < end {
            let n = (end - at).min(zeros.len() as u64) as usize;
            self.file.write_all_at(&zeros[..n], at)?;
            at += n as u64;
        }
        self.file.sync_all()?;
        self.presized = Some((tail, end));
        Ok(())
    }

    /// Writes the group's bytes: appended to a growing file, or at the tail of a pre-sized one.
    fn write_group(&mut self) -> std::io::Result<()> {
        match self.presized {
            None => self.file.write_all(&self.buf),
            Some((tail, _)) => {
                use std::os::unix::fs::FileExt;
                let end = tail + self.buf.len() as u64;
                // (The first group's zeros are written in `create_presized`.)
                self.allocate(end)?;
                self.file.write_all_at(&self.buf, tail)?;
                if let Some((t, _)) = self.presized.as_mut() {
                    *t = end;
                }
                Ok(())
            }
        }
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
        self.write_group().map_err(|e| e.to_string())?;
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
