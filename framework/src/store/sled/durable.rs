//! Making sled's writes durable: sled's `flush` is not an fsync (see docs/decisions.md).

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
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

/// The name of the file that remembers the last acknowledged position.
pub const HEAD_FILE: &str = "tidings.head";

/// Remembers, outside sled, the last position the store acknowledged.
///
/// sled 0.34.7 treats a damaged message in its log as the torn end of the log and silently drops
/// everything after it. Comparing the recovered head with this file turns that silent loss into
/// an error at open. The file is rewritten in place after each durable commit, without an fsync
/// of its own (it is fsynced at close): after a power loss it may lag behind, which can only hide
/// a loss, never invent one.
pub struct HeadFile {
    file: File,
}

impl HeadFile {
    /// Reads the head recorded in `dir`, if the file exists and is intact.
    pub fn read(dir: &Path) -> io::Result<Option<u64>> {
        let opened = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(dir.join(HEAD_FILE));
        let read = opened.and_then(|mut f| {
            let mut bytes = Vec::with_capacity(12);
            f.read_to_end(&mut bytes).map(|_| bytes)
        });
        match read {
            Ok(bytes) => {
                let head = decode_head(&bytes);
                if head.is_none() {
                    tracing::warn!(
                        file = %dir.join(HEAD_FILE).display(),
                        "the head file is damaged; the check for a log dropped by the storage \
                         engine is skipped for this open"
                    );
                }
                Ok(head)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Opens (or creates) the file in `dir` and records `head`. A symbolic link in its place is
    /// an error (`ELOOP`): the store never writes through a link out of its directory.
    pub fn open(dir: &Path, head: u64) -> io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(dir.join(HEAD_FILE))?;
        let mut marker = HeadFile { file };
        marker.write(head)?;
        marker.file.sync_data()?;
        sync_dir(dir)?;
        Ok(marker)
    }

    /// Records `head` (one 12-byte write at offset 0).
    pub fn write(&mut self, head: u64) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        self.file.write_all_at(&encode_head(head), 0)
    }

    /// fsyncs the file.
    pub fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }
}

fn encode_head(head: u64) -> [u8; 12] {
    let mut out = [0; 12];
    out[..8].copy_from_slice(&head.to_be_bytes());
    let crc = crc32fast::hash(&out[..8]);
    out[8..].copy_from_slice(&crc.to_be_bytes());
    out
}

fn decode_head(bytes: &[u8]) -> Option<u64> {
    let bytes: &[u8; 12] = bytes.get(..12)?.try_into().ok()?;
    let crc = u32::from_be_bytes(bytes[8..].try_into().ok()?);
    (crc32fast::hash(&bytes[..8]) == crc)
        .then(|| u64::from_be_bytes(bytes[..8].try_into().expect("8 bytes")))
}
