//! Segment files: their names, the directory listing, opening and creating them, and reading
//! them through a bounded window.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::error::{LogError, LogResult};
use super::frame::{
    framed_len, HeaderCheck, RecordHeader, SegmentHeader, RECORD_HEADER_LEN, SEGMENT_HEADER_LEN,
};

/// The end of a segment that was already full when the log was opened: its records end at its
/// first all-zero header (its rest was pre-allocated and never written).
const UNKNOWN_END: u64 = u64::MAX;

/// The suffix of a segment file.
const SEGMENT_SUFFIX: &str = ".seg";
/// The suffix of a segment being created (renamed to its final name once its header is synced).
const NEW_SUFFIX: &str = ".seg.new";
/// The digits of a segment's name.
const NAME_DIGITS: usize = 20;

/// One open segment file, shared by the writer and readers (`pread` needs no lock).
#[derive(Debug)]
pub(crate) struct Segment {
    /// The position of its first record, which is also its name.
    pub id: u64,
    /// Its sequence number (1 for the log's first segment).
    pub sequence: u64,
    /// Its path.
    pub path: PathBuf,
    /// Its size (pre-allocated).
    pub size: u64,
    file: File,
    /// The offset where its acknowledged records end, or [`UNKNOWN_END`].
    end: AtomicU64,
}

impl Segment {
    /// Where its acknowledged records end, if known (it is for the segment being written and for
    /// segments filled since the log was opened).
    pub fn end(&self) -> Option<u64> {
        let end = self.end.load(Ordering::Acquire);
        (end != UNKNOWN_END).then_some(end)
    }

    /// Records that its acknowledged records end at `end` (after they were synced).
    pub fn set_end(&self, end: u64) {
        self.end.store(end, Ordering::Release);
    }

    /// Reads bytes up to `buf.len()` at `offset`; fewer only where the file ends.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> LogResult<usize> {
        let mut done = 0;
        while done < buf.len() {
            match self.file.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(LogError::io("read from", &self.path, e)),
            }
        }
        Ok(done)
    }

    /// Writes all of `bytes` at `offset`.
    pub fn write_at(&self, bytes: &[u8], offset: u64) -> io::Result<()> {
        self.file.write_all_at(bytes, offset)
    }

    /// `fdatasync`.
    pub fn sync_data(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// The first run of data at or after `from` and before `limit` (`SEEK_DATA`, `SEEK_HOLE`):
    /// holes and unwritten (allocated, never written) extents read as zeros and are passed over.
    /// `None` when only holes are left. Where the file system cannot tell, the whole rest.
    #[cfg(target_os = "linux")]
    pub fn data_run(&self, from: u64, limit: u64) -> Option<(u64, u64)> {
        use rustix::fs::{seek, SeekFrom};
        let start = match seek(&self.file, SeekFrom::Data(from)) {
            Ok(at) => at.max(from),
            Err(e) if e == rustix::io::Errno::NXIO => return None,
            Err(_) => from,
        };
        if start >= limit {
            return None;
        }
        let end = seek(&self.file, SeekFrom::Hole(start)).unwrap_or(limit);
        Some((start, end.clamp(start, limit)))
    }

    /// The whole rest (`SEEK_DATA` is used on Linux only).
    #[cfg(not(target_os = "linux"))]
    pub fn data_run(&self, from: u64, limit: u64) -> Option<(u64, u64)> {
        (from < limit).then_some((from, limit))
    }

    /// Allocates the file up to its size again (after a cut of a file found shorter).
    pub fn reallocate(&self) -> LogResult<()> {
        preallocate(&self.file, self.size)
            .and_then(|()| self.file.sync_all())
            .map_err(|e| LogError::io("re-allocate", &self.path, e))
    }
}

/// The file name of the segment whose first position is `id`.
pub(super) fn file_name(id: u64) -> String {
    format!("{id:0NAME_DIGITS$}{SEGMENT_SUFFIX}")
}

/// What a directory listing found.
#[derive(Debug, Default)]
pub(super) struct Listing {
    /// Segments, by first position (from the name).
    pub segments: Vec<(u64, PathBuf)>,
    /// Segments left half-created by a crash (`*.seg.new`).
    pub incomplete: Vec<PathBuf>,
}

/// Lists the log's directory. Anything but regular files with the log's own names is an error
/// naming it (and is left alone).
pub(super) fn list(dir: &Path) -> LogResult<Listing> {
    let mut listing = Listing::default();
    let entries = std::fs::read_dir(dir).map_err(|e| LogError::io("list", dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| LogError::io("list", dir, e))?;
        let path = entry.path();
        let not_ours = |reason: &str| LogError::BadPath {
            path: path.clone(),
            reason: format!(
                "{reason}; the log's directory holds only its segment files \
                 (20 digits + `.seg`): move it out"
            ),
        };
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            return Err(not_ours("the name is not UTF-8"));
        };
        let (digits, new) = if let Some(d) = name.strip_suffix(NEW_SUFFIX) {
            (d, true)
        } else if let Some(d) = name.strip_suffix(SEGMENT_SUFFIX) {
            (d, false)
        } else {
            return Err(not_ours("not a segment of the log"));
        };
        let id = (digits.len() == NAME_DIGITS && digits.bytes().all(|b| b.is_ascii_digit()))
            .then(|| digits.parse::<u64>().ok())
            .flatten()
            .filter(|&id| id > 0)
            .ok_or_else(|| not_ours("the name is not a segment's name"))?;
        let meta = std::fs::symlink_metadata(&path).map_err(|e| LogError::io("stat", &path, e))?;
        if meta.file_type().is_symlink() {
            return Err(LogError::BadPath {
                path,
                reason: "a symbolic link in place of a segment: the log never reads or writes \
                         through a link (it was not followed and is left alone)"
                    .into(),
            });
        }
        if !meta.is_file() {
            return Err(not_ours("not a regular file"));
        }
        if new {
            listing.incomplete.push(path);
        } else {
            listing.segments.push((id, path));
        }
    }
    listing.segments.sort_unstable_by_key(|(id, _)| *id);
    Ok(listing)
}

/// Opens the segment at `path`, named for position `id`, and checks its header. Returns it with
/// the file's length (the caller checks it against the size).
pub(super) fn open(path: &Path, id: u64) -> LogResult<(Segment, SegmentHeader, u64)> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| LogError::io("open", path, e))?;
    no_readahead(&file);
    let len = file
        .metadata()
        .map_err(|e| LogError::io("stat", path, e))?
        .len();
    let bad = |reason: String| LogError::BadSegment {
        path: path.to_owned(),
        reason,
    };
    let mut bytes = [0u8; SEGMENT_HEADER_LEN as usize];
    let segment = Segment {
        id,
        sequence: 0,
        path: path.to_owned(),
        size: 0,
        file,
        end: AtomicU64::new(UNKNOWN_END),
    };
    let read = segment.read_at(&mut bytes, 0)?;
    let header = SegmentHeader::decode(&bytes[..read]).map_err(bad)?;
    if header.first_position != id {
        return Err(bad(format!(
            "its header says it begins at position {}, its name says {id}",
            header.first_position
        )));
    }
    if header.sequence == 0
        || header.size < SEGMENT_HEADER_LEN
        || !header.size.is_multiple_of(super::frame::ALIGN)
    {
        return Err(bad(
            "its header's sequence number or size is impossible".into()
        ));
    }
    Ok((
        Segment {
            sequence: header.sequence,
            size: header.size,
            ..segment
        },
        header,
        len,
    ))
}

/// Creates the segment `sequence` beginning at `first_position`: a `.seg.new` file allocated to
/// `size` with its header, synced, renamed into place, and the directory synced.
pub(super) fn create(
    dir: &Path,
    sequence: u64,
    first_position: u64,
    size: u64,
) -> LogResult<Segment> {
    let name = file_name(first_position);
    let path = dir.join(&name);
    let new = dir.join(format!("{name}.new"));
    match std::fs::symlink_metadata(&path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Ok(_) => {
            return Err(LogError::BadPath {
                path,
                reason: "a file of that name exists already (left alone)".into(),
            })
        }
        Err(e) => return Err(LogError::io("stat", &path, e)),
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&new)
        .map_err(|e| LogError::io("create", &new, e))?;
    no_readahead(&file);
    let header = SegmentHeader {
        sequence,
        first_position,
        size,
    };
    let made = preallocate(&file, size)
        .map_err(|e| LogError::io("allocate", &new, e))
        .and_then(|()| {
            file.write_all_at(&header.encode(), 0)
                .and_then(|()| file.sync_all())
                .map_err(|e| LogError::io("write the header of", &new, e))
        })
        .and_then(|()| std::fs::rename(&new, &path).map_err(|e| LogError::io("rename", &new, e)));
    if let Err(e) = made {
        // Best effort: the next open removes it otherwise.
        let _ = std::fs::remove_file(&new);
        return Err(e);
    }
    sync_dir(dir)?;
    Ok(Segment {
        id: first_position,
        sequence,
        path,
        size,
        file,
        end: AtomicU64::new(SEGMENT_HEADER_LEN),
    })
}

/// Allocates `size` bytes to `file` (`fallocate`, so that writes inside it change neither the
/// file's size nor its block map, and `fdatasync` has no metadata to write); `set_len` where the
/// file system cannot allocate.
#[cfg(target_os = "linux")]
fn preallocate(file: &File, size: u64) -> io::Result<()> {
    use rustix::fs::{fallocate, FallocateFlags};
    match fallocate(file, FallocateFlags::empty(), 0, size) {
        Ok(()) => Ok(()),
        Err(e) if e == rustix::io::Errno::OPNOTSUPP => file.set_len(size),
        Err(e) => Err(e.into()),
    }
}

/// Turns the kernel's readahead off for `file` (`POSIX_FADV_RANDOM`): reads of one record at an
/// exact offset should read that record, not the 128 KiB after it, and scans read 1 MiB windows
/// of their own. It also keeps the never-written rest of a segment out of the page cache, where
/// its zero pages would count as data for `SEEK_DATA` and make the open read all of it. Advice
/// only: a failure changes nothing.
#[cfg(target_os = "linux")]
fn no_readahead(file: &File) {
    let _ = rustix::fs::fadvise(file, 0, None, rustix::fs::Advice::Random);
}

/// `set_len` (fallocate is used on Linux only).
#[cfg(not(target_os = "linux"))]
fn preallocate(file: &File, size: u64) -> io::Result<()> {
    file.set_len(size)
}

/// Nothing (fadvise is used on Linux only).
#[cfg(not(target_os = "linux"))]
fn no_readahead(_file: &File) {}

/// fsyncs a directory, so that the names it holds are durable.
pub(super) fn sync_dir(dir: &Path) -> LogResult<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| LogError::io("fsync the directory", dir, e))
}

/// The first read of a [`Window`]; each later one reads twice as much, up to its capacity.
const FIRST_READ: usize = 64 * 1024;

/// A bounded read buffer over one segment: sequential reads (a scan, the recovery walk) go
/// through it, so memory is its capacity, whatever the size of the log. It reads 64 KiB first
/// and doubles each read up to its capacity, so that a short read of the log (a page of a
/// subscription) does not read a whole capacity's worth.
#[derive(Debug)]
pub(super) struct Window {
    buf: Vec<u8>,
    capacity: usize,
    /// How much the next read asks for.
    step: usize,
    /// The segment (its id) and the file offset of `buf[0]`.
    at: Option<(u64, u64)>,
    len: usize,
}

impl Window {
    /// A window of `capacity` bytes.
    pub fn new(capacity: usize) -> Self {
        Self::with_buffer(Vec::new(), capacity)
    }

    /// A window of `capacity` bytes reusing `buf`'s allocation.
    pub fn with_buffer(buf: Vec<u8>, capacity: usize) -> Self {
        let capacity = capacity.max(RECORD_HEADER_LEN);
        Window {
            buf,
            capacity,
            step: FIRST_READ.min(capacity),
            at: None,
            len: 0,
        }
    }

    /// Its capacity.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Gives back its buffer (for reuse).
    pub fn into_buffer(self) -> Vec<u8> {
        self.buf
    }

    /// The bytes `offset .. offset + n` of `segment` (`n` at most the capacity), not reading at
    /// or past `limit`: fewer where the file or the limit ends.
    pub fn get(
        &mut self,
        segment: &Segment,
        offset: u64,
        n: usize,
        limit: u64,
    ) -> LogResult<&[u8]> {
        let n = n.min(self.capacity);
        let hit = match self.at {
            Some((id, start)) => {
                id == segment.id && offset >= start && offset + n as u64 <= start + self.len as u64
            }
            None => false,
        };
        if !hit {
            let step = self.step.max(n);
            self.step = (self.step * 2).min(self.capacity);
            let want = (limit.saturating_sub(offset)).min(step as u64) as usize;
            if self.buf.len() < want {
                self.buf.resize(want, 0);
            }
            // (Until the read succeeds the window holds nothing.)
            self.at = None;
            self.len = segment.read_at(&mut self.buf[..want], offset)?;
            self.at = Some((segment.id, offset));
        }
        let start = (offset - self.at.expect("set").1) as usize;
        let end = (start + n).min(self.len);
        Ok(&self.buf[start.min(end)..end])
    }
}

/// What is at an offset of a segment.
#[derive(Debug)]
pub(super) enum Probe {
    /// Not room for a record header before the limit.
    End,
    /// An all-zero header: nothing was written there.
    Zero,
    /// Not a valid record; why.
    Bad(String),
    /// A valid record (its checksums hold and it fits), and the offset of the next one.
    Record(RecordHeader, u64),
}

/// Looks at the record at `offset` of `segment`: its header, that it fits before `limit`, and
/// (with `check_body`) its body's checksum.
pub(super) fn probe(
    win: &mut Window,
    segment: &Segment,
    offset: u64,
    limit: u64,
    check_body: bool,
) -> LogResult<Probe> {
    if offset + RECORD_HEADER_LEN as u64 > limit {
        return Ok(Probe::End);
    }
    let bytes = win.get(segment, offset, RECORD_HEADER_LEN, limit)?;
    let Ok(bytes) = <[u8; RECORD_HEADER_LEN]>::try_from(bytes) else {
        return Ok(Probe::Bad(
            "the segment file ends inside a record header".into(),
        ));
    };
    let header = match RecordHeader::decode(&bytes) {
        HeaderCheck::Zero => return Ok(Probe::Zero),
        HeaderCheck::Bad(why) => return Ok(Probe::Bad(why.into())),
        HeaderCheck::Ok(h) => h,
    };
    let next = offset + framed_len(u64::from(header.body_len));
    if offset + RECORD_HEADER_LEN as u64 + u64::from(header.body_len) > limit {
        return Ok(Probe::Bad(
            "the record's length runs past the end of the segment's records".into(),
        ));
    }
    if check_body {
        let mut hasher = crc32fast::Hasher::new();
        let mut at = offset + RECORD_HEADER_LEN as u64;
        let body_end = at + u64::from(header.body_len);
        while at < body_end {
            let chunk = win.get(segment, at, (body_end - at) as usize, limit)?;
            if chunk.is_empty() {
                return Ok(Probe::Bad("the segment file ends inside the record".into()));
            }
            hasher.update(chunk);
            at += chunk.len() as u64;
        }
        if hasher.finalize() != header.body_crc {
            return Ok(Probe::Bad("the record's body fails its checksum".into()));
        }
    }
    Ok(Probe::Record(header, next.min(limit)))
}
