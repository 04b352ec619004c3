//! Making sled's writes durable: sled's `flush` is not an fsync (see docs/decisions.md).

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

/// Syncs sled's files to stable storage after a `flush`.
pub struct Durability {
    data_file: File,
    blobs_dir: PathBuf,
    synced_blobs: HashSet<OsString>,
}

impl Durability {
    /// Opens the handles needed to sync the store in `dir`.
    pub fn open(dir: &Path) -> io::Result<Self> {
        let data_file = File::open(dir.join("db"))?;
        sync_dir(dir)?;
        Ok(Durability {
            data_file,
            blobs_dir: dir.join("blobs"),
            synced_blobs: HashSet::new(),
        })
    }

    /// Makes everything sled has flushed durable: new blob files (pages larger than a quarter
    /// segment, which sled writes without any fsync), the blob directory, then the data file.
    pub fn sync(&mut self) -> io::Result<()> {
        self.sync_new_blobs()?;
        self.data_file.sync_data()
    }

    fn sync_new_blobs(&mut self) -> io::Result<()> {
        let mut present = HashSet::with_capacity(self.synced_blobs.len());
        let mut new = false;
        let entries = match std::fs::read_dir(&self.blobs_dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name();
            if !self.synced_blobs.contains(&name) {
                match File::open(entry.path()) {
                    Ok(f) => f.sync_all()?,
                    // sled may have removed it since the directory was listed.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                }
                new = true;
            }
            present.insert(name);
        }
        if new || present.len() != self.synced_blobs.len() {
            sync_dir(&self.blobs_dir)?;
        }
        self.synced_blobs = present;
        Ok(())
    }
}

/// fsyncs a directory, so that the names it holds are durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}
