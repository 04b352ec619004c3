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

/// The name of the file that remembers what the store last acknowledged.
pub const HEAD_FILE: &str = "tidings.head";

/// The format of the head file written by this build: the head, the commit counter and the
/// last commit of each kind. Format 1 (12 bytes: head and crc) had the head alone.
const MARKS_FORMAT: u8 = 2;
/// The length of a format-2 head file.
const MARKS_LEN: usize = 1 + 6 * 8 + 4;

/// What the store had acknowledged when it last wrote its head file.
///
/// Every durable commit of the store (one sled batch: appends, imports, checkpoints, consumer
/// state, snapshots, whatever they are) raises a counter kept in sled in that same batch; the
/// kinds of write a commit held are remembered as "the last commit that wrote this kind".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Marks {
    /// The last acknowledged position.
    pub head: u64,
    /// How many durable commits the store had made. `None` in a head file of format 1 (written
    /// before commits were counted).
    pub commits: Option<u64>,
    /// The last commit that held events.
    pub last_events: u64,
    /// The last commit that held a checkpoint.
    pub last_checkpoints: u64,
    /// The last commit that held consumer state (which includes subscriptions' status and
    /// parked records).
    pub last_state: u64,
    /// The last commit that held a snapshot.
    pub last_snapshots: u64,
}

impl Marks {
    /// The kinds of write held by the commits after `recovered` (named for an error message).
    pub fn kinds_after(&self, recovered: u64) -> Vec<&'static str> {
        [
            (self.last_events, "events"),
            (self.last_checkpoints, "checkpoints"),
            (
                self.last_state,
                "consumer state (exactly-once state, subscriptions' status and parked events)",
            ),
            (self.last_snapshots, "snapshots"),
        ]
        .into_iter()
        .filter(|(last, _)| *last > recovered)
        .map(|(_, kind)| kind)
        .collect()
    }

    fn encode(&self) -> [u8; MARKS_LEN] {
        let mut out = [0; MARKS_LEN];
        out[0] = MARKS_FORMAT;
        let numbers = [
            self.head,
            self.commits.unwrap_or(0),
            self.last_events,
            self.last_checkpoints,
            self.last_state,
            self.last_snapshots,
        ];
        for (i, n) in numbers.iter().enumerate() {
            out[1 + i * 8..9 + i * 8].copy_from_slice(&n.to_be_bytes());
        }
        let crc = crc32fast::hash(&out[..MARKS_LEN - 4]);
        out[MARKS_LEN - 4..].copy_from_slice(&crc.to_be_bytes());
        out
    }

    /// Decodes a head file of format 2, or else of format 1 (its first 12 bytes: an older build
    /// that opened a store written by this one rewrites only those). `None` if neither checks.
    fn decode(bytes: &[u8]) -> Option<Marks> {
        let number = |b: &[u8], i: usize| u64::from_be_bytes(b[i..i + 8].try_into().expect("8"));
        if let Some(b) = bytes.get(..MARKS_LEN) {
            let crc = u32::from_be_bytes(b[MARKS_LEN - 4..].try_into().expect("4 bytes"));
            if b[0] == MARKS_FORMAT && crc32fast::hash(&b[..MARKS_LEN - 4]) == crc {
                return Some(Marks {
                    head: number(b, 1),
                    commits: Some(number(b, 9)),
                    last_events: number(b, 17),
                    last_checkpoints: number(b, 25),
                    last_state: number(b, 33),
                    last_snapshots: number(b, 41),
                });
            }
        }
        let b = bytes.get(..12)?;
        let crc = u32::from_be_bytes(b[8..].try_into().expect("4 bytes"));
        (crc32fast::hash(&b[..8]) == crc).then(|| Marks {
            head: number(b, 0),
            ..Marks::default()
        })
    }
}

/// Remembers, outside sled, what the store acknowledged: the last position and the number of
/// durable commits, with the last commit of each kind ([`Marks`]).
///
/// sled 0.34.7 treats a damaged message in its log as the torn end of the log and silently drops
/// everything after it, whatever the commits there held. Comparing the recovered head and commit
/// counter with this file turns that silent loss into an error at open.
///
/// The file is rewritten in place (one write at offset 0) after each durable commit, only once
/// sled's data file has been fsynced, and without an fsync of its own (it is fsynced at close).
/// So it can lag behind what sled holds (a kill between the fsync and this write, a power loss
/// before the page cache reached the disk), which can only hide a loss, never invent one.
pub struct HeadFile {
    file: File,
    marks: Marks,
}

impl HeadFile {
    /// Reads the marks recorded in `dir`, if the file exists and is intact.
    pub fn read(dir: &Path) -> io::Result<Option<Marks>> {
        let opened = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(dir.join(HEAD_FILE));
        let read = opened.and_then(|mut f| {
            let mut bytes = Vec::with_capacity(MARKS_LEN);
            f.read_to_end(&mut bytes).map(|_| bytes)
        });
        match read {
            Ok(bytes) => {
                let marks = Marks::decode(&bytes);
                if marks.is_none() {
                    tracing::warn!(
                        file = %dir.join(HEAD_FILE).display(),
                        "the head file is damaged; the check for commits dropped by the storage \
                         engine is skipped for this open"
                    );
                }
                Ok(marks)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Opens (or creates) the file in `dir` and records `marks`, synced. A symbolic link in its
    /// place is an error (`ELOOP`): the store never writes through a link out of its directory.
    pub fn open(dir: &Path, marks: Marks) -> io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(dir.join(HEAD_FILE))?;
        let mut head_file = HeadFile { file, marks };
        head_file.write(marks)?;
        head_file.file.sync_data()?;
        sync_dir(dir)?;
        Ok(head_file)
    }

    /// What was last recorded.
    pub fn marks(&self) -> Marks {
        self.marks
    }

    /// Records `marks` (one write at offset 0).
    pub fn write(&mut self, marks: Marks) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        self.marks = marks;
        self.file.write_all_at(&marks.encode(), 0)
    }

    /// fsyncs the file.
    pub fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_round_trip_and_a_format_1_file_still_reads() {
        let marks = Marks {
            head: 480,
            commits: Some(2_001),
            last_events: 1_990,
            last_checkpoints: 2_001,
            last_state: 2_000,
            last_snapshots: 7,
        };
        assert_eq!(Marks::decode(&marks.encode()), Some(marks));
        assert_eq!(marks.kinds_after(2_000), ["checkpoints"]);
        // Format 1: the head and its crc.
        let mut old = 480u64.to_be_bytes().to_vec();
        old.extend_from_slice(&crc32fast::hash(&old).to_be_bytes());
        let expected = Marks {
            head: 480,
            ..Marks::default()
        };
        assert_eq!(Marks::decode(&old), Some(expected));
        // An older build rewrote the first 12 bytes of a format-2 file.
        let mut both = marks.encode().to_vec();
        both[..12].copy_from_slice(&old);
        assert_eq!(Marks::decode(&both), Some(expected));
        // Any flipped bit is seen.
        for bit in 0..MARKS_LEN * 8 {
            let mut bytes = marks.encode();
            bytes[bit / 8] ^= 1 << (bit % 8);
            assert_ne!(Marks::decode(&bytes), Some(marks), "bit {bit}");
        }
    }
}
