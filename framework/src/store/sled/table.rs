//! One file of the stream index (format 3): the runs of a range of positions, sorted by key, in
//! checksummed blocks, with the block index and the range's group starts in a checksummed footer.
//!
//! A table is written once (under a temporary name, synced, renamed, the directory synced) and
//! never changed; the index merges tables into larger ones and deletes the inputs afterwards.
//! Its name says which positions it covers: `<from>-<to>.idx`, both 20 digits.
//!
//! Layout (integers big-endian):
//! ```text
//! header   "TIDXTBL1"
//! blocks   [u32 body length][u32 crc32 of body][entries], entries never split across blocks
//! entry    [u16 key length][key][u64 first position][u32 count][u64 segment][u32 offset][u32 bytes]
//! footer   [u32 blocks]([u64 offset][u32 length][u16 key length][first key])*
//!          [u32 group starts]([u64 position][u64 segment][u32 offset])*
//! trailer  [u64 footer offset][u32 footer length][u32 footer crc32][u64 from][u64 to]
//!          [u64 next segment][u64 next offset][u64 last timestamp][u64 entries]
//!          [u32 crc32 of the trailer so far]"TIDXTBL1"
//! ```
//! Keys are the sled layout's run keys (`keys::run_key`): tag, stream id length, stream id,
//! first version; so the order is the same as format 2's (shorter stream ids first).

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::store::codec::{IndexMark, RunEntry};
use crate::store::log::RecordAddr;
use crate::store::{Result, StoreError};

const MAGIC: &[u8; 8] = b"TIDXTBL1";
/// A block is closed once its entries reach this many bytes.
pub(super) const BLOCK_BYTES: usize = 4096;
const TRAILER_LEN: usize = 8 + 4 + 4 + 8 * 6 + 4 + 8;
/// The bytes of an entry after its key.
const RUN_LEN: usize = 8 + 4 + 8 + 4 + 4;
/// No key is longer (a stream id is at most 512 bytes): a longer length is damage.
const MAX_KEY: usize = 1024;
/// No block is larger (entries never split, so a block holds less than this): a larger length
/// is damage, not a reason to allocate.
const MAX_BLOCK: usize = BLOCK_BYTES + MAX_KEY + RUN_LEN + 2;
/// A table keeps at most this many block keys in memory: past that, one key per span of
/// consecutive blocks, read with one `pread` (so memory does not grow with the table).
const MAX_SPANS: usize = if cfg!(test) { 8 } else { 32 * 1024 };
/// A table keeps at most this many of its group starts in memory (every n-th past that: a read
/// from a position may then pass over more records to reach it).
const MAX_GROUPS: usize = if cfg!(test) { 4 } else { 64 * 1024 };
/// The suffix of a table's file name.
pub(super) const SUFFIX: &str = ".idx";
/// The suffix of a table being written.
pub(super) const TEMP_SUFFIX: &str = ".idx.tmp";

/// A group start: where a sequential read of the log from `position` begins.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct GroupStart {
    pub position: u64,
    pub segment: u64,
    pub offset: u32,
}

impl GroupStart {
    /// The address of its record, for a scan of the log that begins there (its length unknown).
    pub(crate) fn addr(&self) -> RecordAddr {
        RecordAddr {
            segment: self.segment,
            offset: self.offset,
            len: 0,
        }
    }
}

struct BlockRef {
    offset: u64,
    len: u32,
    first_key: Box<[u8]>,
}

/// One or more consecutive blocks, read together.
struct Span {
    offset: u64,
    /// The bytes of its blocks, headers included.
    len: u64,
    first_key: Box<[u8]>,
}

/// An open table: its file and, in memory, at most [`MAX_SPANS`] keys of its block index and
/// [`MAX_GROUPS`] of its group starts, whatever its size.
pub(crate) struct Table {
    path: PathBuf,
    file: File,
    /// The first and last position whose runs it holds.
    pub from: u64,
    pub to: u64,
    /// Where the record after `to` begins, and the timestamp of the record at `to`.
    pub mark: IndexMark,
    /// How many runs it holds.
    pub entries: u64,
    spans: Vec<Span>,
    /// Where the footer begins (the end of the blocks), and its length.
    footer_at: u64,
    footer_len: u64,
    /// Group starts of the range (every n-th of them in a large table; see
    /// [`read_groups`](Self::read_groups) for all).
    pub groups: Vec<GroupStart>,
}

/// The name of the table covering `from..=to`.
pub(super) fn file_name(from: u64, to: u64) -> String {
    format!("{from:020}-{to:020}{SUFFIX}")
}

/// The range a table's file name says it covers.
pub(super) fn parse_name(name: &str) -> Option<(u64, u64)> {
    let stem = name.strip_suffix(SUFFIX)?;
    let (from, to) = stem.split_once('-')?;
    if from.len() != 20 || to.len() != 20 {
        return None;
    }
    Some((from.parse().ok()?, to.parse().ok()?))
}

fn damaged(path: &Path, reason: impl Into<String>) -> StoreError {
    StoreError::DamagedMetadata {
        what: format!("the stream index file {}", path.display()),
        reason: reason.into(),
    }
}

fn io_error(path: &Path, what: &str, e: std::io::Error) -> StoreError {
    StoreError::Io(std::io::Error::new(
        e.kind(),
        format!("{what} {}: {e}", path.display()),
    ))
}

fn u64_at(b: &[u8], i: usize) -> u64 {
    u64::from_be_bytes(b[i..i + 8].try_into().expect("8 bytes"))
}

fn u32_at(b: &[u8], i: usize) -> u32 {
    u32::from_be_bytes(b[i..i + 4].try_into().expect("4 bytes"))
}

fn u16_at(b: &[u8], i: usize) -> u16 {
    u16::from_be_bytes(b[i..i + 2].try_into().expect("2 bytes"))
}

/// Decodes the entries of a block's body, in order.
pub(super) struct Entries<'a> {
    body: &'a [u8],
    at: usize,
}

impl<'a> Entries<'a> {
    pub(super) fn new(body: &'a [u8]) -> Self {
        Entries { body, at: 0 }
    }
}

impl<'a> Iterator for Entries<'a> {
    type Item = std::result::Result<(&'a [u8], RunEntry), String>;

    fn next(&mut self) -> Option<Self::Item> {
        let b = self.body;
        if self.at >= b.len() {
            return None;
        }
        let at = self.at;
        if b.len() - at < 2 {
            self.at = b.len();
            return Some(Err(format!("an entry cut short at byte {at} of a block")));
        }
        let klen = usize::from(u16_at(b, at));
        let end = at + 2 + klen + RUN_LEN;
        if klen == 0 || klen > MAX_KEY || end > b.len() {
            self.at = b.len();
            return Some(Err(format!(
                "an entry of a {klen}-byte key at byte {at} does not fit its block"
            )));
        }
        let key = &b[at + 2..at + 2 + klen];
        let r = at + 2 + klen;
        let run = RunEntry {
            first_position: u64_at(b, r),
            count: u32_at(b, r + 8),
            segment: u64_at(b, r + 12),
            offset: u32_at(b, r + 20),
            bytes: u32_at(b, r + 24),
        };
        self.at = end;
        if run.count == 0 {
            return Some(Err(format!("an entry of no events at byte {at}")));
        }
        Some(Ok((key, run)))
    }
}

fn put_entry(out: &mut Vec<u8>, key: &[u8], run: &RunEntry) {
    out.extend_from_slice(&(key.len() as u16).to_be_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(&run.first_position.to_be_bytes());
    out.extend_from_slice(&run.count.to_be_bytes());
    out.extend_from_slice(&run.segment.to_be_bytes());
    out.extend_from_slice(&run.offset.to_be_bytes());
    out.extend_from_slice(&run.bytes.to_be_bytes());
}

/// Writes a table: entries pushed in key order, then [`finish`](TableWriter::finish).
pub(super) struct TableWriter {
    dir: PathBuf,
    temp: PathBuf,
    out: BufWriter<File>,
    written: u64,
    block: Vec<u8>,
    first_key: Option<Box<[u8]>>,
    blocks: Vec<BlockRef>,
    entries: u64,
    last_key: Vec<u8>,
    /// Set once the file was renamed to its table's name.
    finished: bool,
}

impl TableWriter {
    /// Begins a table in `dir` covering positions from `from` (its name is known at the end).
    pub(super) fn new(dir: &Path, from: u64) -> Result<Self> {
        let temp = dir.join(format!("{from:020}{TEMP_SUFFIX}"));
        let file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .custom_flags(libc::O_NOFOLLOW)
            .mode(0o600)
            .open(&temp)
            .map_err(|e| io_error(&temp, "create the stream index file", e))?;
        let mut out = BufWriter::with_capacity(64 * 1024, file);
        out.write_all(MAGIC)
            .map_err(|e| io_error(&temp, "write", e))?;
        Ok(TableWriter {
            dir: dir.to_path_buf(),
            temp,
            out,
            written: MAGIC.len() as u64,
            block: Vec::with_capacity(BLOCK_BYTES + 600),
            first_key: None,
            blocks: Vec::new(),
            entries: 0,
            last_key: Vec::new(),
            finished: false,
        })
    }

    /// Adds the next entry (keys strictly increasing: a key out of order, which only damage to
    /// an input of a merge could give, is refused).
    pub(super) fn push(&mut self, key: &[u8], run: &RunEntry) -> Result<()> {
        if self.entries > 0 && key <= &self.last_key[..] {
            return Err(damaged(
                &self.temp,
                "runs out of key order (an input of this table is damaged)",
            ));
        }
        if self.first_key.is_none() {
            self.first_key = Some(key.into());
        }
        put_entry(&mut self.block, key, run);
        self.entries += 1;
        self.last_key.clear();
        self.last_key.extend_from_slice(key);
        if self.block.len() >= BLOCK_BYTES {
            self.end_block()?;
        }
        Ok(())
    }

    fn end_block(&mut self) -> Result<()> {
        let Some(first_key) = self.first_key.take() else {
            return Ok(());
        };
        let len = self.block.len() as u32;
        let crc = crc32fast::hash(&self.block);
        let w = &mut self.out;
        w.write_all(&len.to_be_bytes())
            .and_then(|()| w.write_all(&crc.to_be_bytes()))
            .and_then(|()| w.write_all(&self.block))
            .map_err(|e| io_error(&self.temp, "write", e))?;
        self.blocks.push(BlockRef {
            offset: self.written,
            len,
            first_key,
        });
        self.written += 8 + u64::from(len);
        self.block.clear();
        Ok(())
    }

    /// Writes the footer, syncs the file and renames it to cover `from..=mark.position`, then
    /// syncs the directory. Returns the open table.
    pub(super) fn finish(
        mut self,
        from: u64,
        mark: IndexMark,
        groups: Vec<GroupStart>,
    ) -> Result<Table> {
        self.end_block()?;
        let mut footer = Vec::with_capacity(self.blocks.len() * 40 + groups.len() * 20 + 8);
        footer.extend_from_slice(&(self.blocks.len() as u32).to_be_bytes());
        for b in &self.blocks {
            footer.extend_from_slice(&b.offset.to_be_bytes());
            footer.extend_from_slice(&b.len.to_be_bytes());
            footer.extend_from_slice(&(b.first_key.len() as u16).to_be_bytes());
            footer.extend_from_slice(&b.first_key);
        }
        footer.extend_from_slice(&(groups.len() as u32).to_be_bytes());
        for g in &groups {
            footer.extend_from_slice(&g.position.to_be_bytes());
            footer.extend_from_slice(&g.segment.to_be_bytes());
            footer.extend_from_slice(&g.offset.to_be_bytes());
        }
        let mut trailer = Vec::with_capacity(TRAILER_LEN);
        trailer.extend_from_slice(&self.written.to_be_bytes());
        trailer.extend_from_slice(&(footer.len() as u32).to_be_bytes());
        trailer.extend_from_slice(&crc32fast::hash(&footer).to_be_bytes());
        for v in [
            from,
            mark.position,
            mark.segment,
            mark.offset,
            mark.timestamp_micros,
            self.entries,
        ] {
            trailer.extend_from_slice(&v.to_be_bytes());
        }
        trailer.extend_from_slice(&crc32fast::hash(&trailer).to_be_bytes());
        trailer.extend_from_slice(MAGIC);
        let temp = self.temp.clone();
        self.out
            .write_all(&footer)
            .and_then(|()| self.out.write_all(&trailer))
            .and_then(|()| self.out.flush())
            .map_err(|e| io_error(&temp, "write", e))?;
        self.out
            .get_ref()
            .sync_all()
            .map_err(|e| io_error(&temp, "fsync", e))?;
        let path = self.dir.join(file_name(from, mark.position));
        std::fs::rename(&temp, &path).map_err(|e| io_error(&path, "rename to", e))?;
        self.finished = true;
        sync_dir(&self.dir)?;
        Table::open(&path)
    }

    /// Gives up the table: removes what was written (as dropping it does).
    pub(super) fn abandon(self) {
        drop(self);
    }
}

impl Drop for TableWriter {
    /// A table that was not finished (given up, or failed on the way) leaves no file behind.
    fn drop(&mut self) {
        if !self.finished {
            let _ = std::fs::remove_file(&self.temp);
        }
    }
}

/// Syncs the directory `dir` (after a file in it was created, renamed or removed).
pub(super) fn sync_dir(dir: &Path) -> Result<()> {
    super::durable::sync_dir(dir).map_err(|e| io_error(dir, "fsync the directory", e))
}

impl Table {
    /// Opens the table at `path`, checking its trailer and footer (the blocks are checked when
    /// read).
    pub(super) fn open(path: &Path) -> Result<Table> {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let (from, to) = parse_name(name).ok_or_else(|| damaged(path, "not a table's name"))?;
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
            .map_err(|e| io_error(path, "open the stream index file", e))?;
        let len = file
            .metadata()
            .map_err(|e| io_error(path, "stat", e))?
            .len();
        if len < (MAGIC.len() + TRAILER_LEN) as u64 {
            return Err(damaged(path, format!("{len} bytes: cut short")));
        }
        let mut trailer = [0u8; TRAILER_LEN];
        read_exact_at(&file, &mut trailer, len - TRAILER_LEN as u64, path)?;
        let body = TRAILER_LEN - 12;
        if &trailer[TRAILER_LEN - 8..] != MAGIC
            || crc32fast::hash(&trailer[..body]) != u32_at(&trailer, body)
        {
            return Err(damaged(
                path,
                "its trailer does not check (cut short or damaged)",
            ));
        }
        let footer_at = u64_at(&trailer, 0);
        let footer_len = u64::from(u32_at(&trailer, 8));
        let footer_crc = u32_at(&trailer, 12);
        let (t_from, t_to) = (u64_at(&trailer, 16), u64_at(&trailer, 24));
        let mark = IndexMark {
            position: t_to,
            segment: u64_at(&trailer, 32),
            offset: u64_at(&trailer, 40),
            timestamp_micros: u64_at(&trailer, 48),
        };
        let entries = u64_at(&trailer, 56);
        if (t_from, t_to) != (from, to) || from == 0 || to < from {
            return Err(damaged(
                path,
                format!("it says it covers positions {t_from}..={t_to}, its name {from}..={to}"),
            ));
        }
        let footer_end = footer_at
            .checked_add(footer_len)
            .and_then(|e| e.checked_add(TRAILER_LEN as u64));
        if footer_at < MAGIC.len() as u64 || footer_end != Some(len) || to == u64::MAX {
            return Err(damaged(path, "its footer is not where the trailer says"));
        }
        let mut footer = vec![0u8; footer_len as usize];
        read_exact_at(&file, &mut footer, footer_at, path)?;
        if crc32fast::hash(&footer) != footer_crc {
            return Err(damaged(path, "its footer's checksum does not match"));
        }
        let (blocks, groups) =
            parse_footer(&footer, footer_at).map_err(|reason| damaged(path, reason))?;
        drop(footer);
        let per_span = blocks.len().div_ceil(MAX_SPANS).max(1);
        let spans = blocks
            .chunks(per_span)
            .map(|c| Span {
                offset: c[0].offset,
                len: c.iter().map(|b| 8 + u64::from(b.len)).sum(),
                first_key: c[0].first_key.clone(),
            })
            .collect();
        Ok(Table {
            path: path.to_path_buf(),
            file,
            from,
            to,
            mark,
            entries,
            spans,
            footer_at,
            footer_len,
            groups: sample(groups, MAX_GROUPS),
        })
    }

    /// Every group start of the table, read from its footer (for a merge).
    pub(super) fn read_groups(&self) -> Result<Vec<GroupStart>> {
        let mut footer = vec![0u8; self.footer_len as usize];
        read_exact_at(&self.file, &mut footer, self.footer_at, &self.path)?;
        let (_, groups) =
            parse_footer(&footer, self.footer_at).map_err(|reason| damaged(&self.path, reason))?;
        Ok(groups)
    }

    /// The table's file.
    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// How many spans of blocks (see [`Span`]) the table holds.
    pub(super) fn span_count(&self) -> usize {
        self.spans.len()
    }

    /// Reads the entries of span `i` (one `pread`) into `buf`, checking each block's length
    /// and checksum: the blocks' bodies one after another.
    pub(super) fn read_span(&self, i: usize, buf: &mut Vec<u8>) -> Result<()> {
        let span = &self.spans[i];
        buf.clear();
        buf.resize(span.len as usize, 0);
        read_exact_at(&self.file, buf, span.offset, &self.path)?;
        // Moves each block's body down over the headers, in place.
        let (mut read, mut write) = (0usize, 0usize);
        while read < buf.len() {
            let at = span.offset + read as u64;
            let bad = || damaged(&self.path, format!("the block at byte {at} does not check"));
            if buf.len() - read < 8 {
                return Err(bad());
            }
            let len = u32_at(buf, read) as usize;
            let crc = u32_at(buf, read + 4);
            let body = read + 8;
            if len > MAX_BLOCK || len > buf.len() - body {
                return Err(bad());
            }
            if crc32fast::hash(&buf[body..body + len]) != crc {
                return Err(bad());
            }
            buf.copy_within(body..body + len, write);
            write += len;
            read = body + len;
        }
        buf.truncate(write);
        Ok(())
    }

    /// The span where entries at or after `key` begin: the last one whose first key is at or
    /// before `key` (or the first span).
    pub(super) fn span_for(&self, key: &[u8]) -> usize {
        self.spans
            .partition_point(|b| &*b.first_key <= key)
            .saturating_sub(1)
    }

    /// A damage error naming this table, for entries that do not decode.
    pub(super) fn damage(&self, reason: impl Into<String>) -> StoreError {
        damaged(&self.path, reason)
    }

    /// Calls `each` with every entry from the first at or after `from` (all when `None`), in key
    /// order, while it returns true; with `whole_span`, from the first entry of the span where
    /// `from` would be (entries before it too).
    pub(super) fn scan(
        &self,
        from: Option<&[u8]>,
        whole_span: bool,
        buf: &mut Vec<u8>,
        mut each: impl FnMut(&[u8], RunEntry) -> Result<bool>,
    ) -> Result<()> {
        let start = from.map_or(0, |k| self.span_for(k));
        for i in start..self.spans.len() {
            self.read_span(i, buf)?;
            for entry in Entries::new(buf) {
                let (key, run) =
                    entry.map_err(|r| self.damage(format!("the blocks of span {i}: {r}")))?;
                if !whole_span && from.is_some_and(|f| key < f) {
                    continue;
                }
                if !each(key, run)? {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// The last entry at or before `key`, if any.
    pub(super) fn last_at_or_before(
        &self,
        key: &[u8],
        buf: &mut Vec<u8>,
    ) -> Result<Option<(Vec<u8>, RunEntry)>> {
        if self.spans.is_empty() || &*self.spans[0].first_key > key {
            return Ok(None);
        }
        let i = self.span_for(key);
        self.read_span(i, buf)?;
        let mut last = None;
        for entry in Entries::new(buf) {
            let (k, run) =
                entry.map_err(|r| self.damage(format!("the blocks of span {i}: {r}")))?;
            if k > key {
                break;
            }
            last = Some((k, run));
        }
        Ok(last.map(|(k, r)| (k.to_vec(), r)))
    }
}

fn parse_footer(
    f: &[u8],
    footer_at: u64,
) -> std::result::Result<(Vec<BlockRef>, Vec<GroupStart>), String> {
    let short = || "its footer is cut short".to_string();
    let mut at = 0usize;
    let take = |at: &mut usize, n: usize| -> std::result::Result<usize, String> {
        let start = *at;
        if f.len() - start < n {
            return Err(short());
        }
        *at += n;
        Ok(start)
    };
    let n = u32_at(f, take(&mut at, 4)?) as usize;
    let mut blocks = Vec::with_capacity(n.min(f.len() / 14));
    let mut end = MAGIC.len() as u64;
    for i in 0..n {
        let i0 = take(&mut at, 14)?;
        let (offset, len, klen) = (
            u64_at(f, i0),
            u32_at(f, i0 + 8),
            usize::from(u16_at(f, i0 + 12)),
        );
        let k0 = take(&mut at, klen)?;
        if offset != end || len as usize > MAX_BLOCK || klen == 0 || klen > MAX_KEY {
            return Err(format!(
                "block {i} of the footer is not where the blocks are"
            ));
        }
        end = offset + 8 + u64::from(len);
        let first_key: Box<[u8]> = f[k0..k0 + klen].into();
        if blocks
            .last()
            .is_some_and(|b: &BlockRef| b.first_key >= first_key)
        {
            return Err(format!("block {i}'s first key is out of order"));
        }
        blocks.push(BlockRef {
            offset,
            len,
            first_key,
        });
    }
    if end != footer_at {
        return Err("the blocks do not end where the footer begins".into());
    }
    let g = u32_at(f, take(&mut at, 4)?) as usize;
    let mut groups = Vec::with_capacity(g.min(f.len() / 20));
    for _ in 0..g {
        let i0 = take(&mut at, 20)?;
        groups.push(GroupStart {
            position: u64_at(f, i0),
            segment: u64_at(f, i0 + 8),
            offset: u32_at(f, i0 + 16),
        });
    }
    if at != f.len() {
        return Err("its footer has bytes after its end".into());
    }
    Ok((blocks, groups))
}

/// At most about `max` of `items`: every n-th, the first always kept.
fn sample<T>(items: Vec<T>, max: usize) -> Vec<T> {
    let every = items.len().div_ceil(max.max(1)).max(1);
    if every == 1 {
        return items;
    }
    items.into_iter().step_by(every).collect()
}

fn read_exact_at(file: &File, buf: &mut [u8], offset: u64, path: &Path) -> Result<()> {
    file.read_exact_at(buf, offset).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            damaged(
                path,
                format!("cut short before byte {}", offset + buf.len() as u64),
            )
        } else {
            io_error(path, "read", e)
        }
    })
}

/// Merges tables `a` and `b` (adjacent, `a` first) into one in `dir`; stops early (returning
/// `None`, nothing left behind) when `stop` is set.
pub(super) fn merge(
    dir: &Path,
    a: &Arc<Table>,
    b: &Arc<Table>,
    stop: &AtomicBool,
) -> Result<Option<Table>> {
    let mut out = TableWriter::new(dir, a.from)?;
    let mut ca = Cursor::new(a.clone());
    let mut cb = Cursor::new(b.clone());
    let mut na = ca.next()?;
    let mut nb = cb.next()?;
    let mut n = 0u64;
    loop {
        n += 1;
        if n.is_multiple_of(4096) && stop.load(Ordering::Relaxed) {
            out.abandon();
            return Ok(None);
        }
        let take_a = match (&na, &nb) {
            (Some((ka, _)), Some((kb, _))) => ka < kb,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => break,
        };
        if take_a {
            let (k, r) = na.take().expect("checked");
            out.push(&k, &r)?;
            na = ca.next()?;
        } else {
            let (k, r) = nb.take().expect("checked");
            out.push(&k, &r)?;
            nb = cb.next()?;
        }
    }
    let mut groups = a.read_groups()?;
    groups.extend(b.read_groups()?);
    out.finish(a.from, b.mark, groups).map(Some)
}

/// Walks a table's entries in key order, one span of blocks in memory.
pub(super) struct Cursor {
    table: Arc<Table>,
    next_span: usize,
    buf: Vec<u8>,
    at: usize,
}

impl Cursor {
    pub(super) fn new(table: Arc<Table>) -> Self {
        Cursor {
            table,
            next_span: 0,
            buf: Vec::new(),
            at: 0,
        }
    }

    /// The next entry, or `None` after the last.
    pub(super) fn next(&mut self) -> Result<Option<(Vec<u8>, RunEntry)>> {
        loop {
            if self.at < self.buf.len() {
                let mut entries = Entries::new(&self.buf[self.at..]);
                let item = entries.next().expect("bytes left");
                let block = self.next_span - 1;
                let (key, run) = item.map_err(|r| {
                    self.table
                        .damage(format!("the blocks of span {block}: {r}"))
                })?;
                let key = key.to_vec();
                self.at += entries.at;
                return Ok(Some((key, run)));
            }
            if self.next_span >= self.table.span_count() {
                return Ok(None);
            }
            self.table.read_span(self.next_span, &mut self.buf)?;
            self.next_span += 1;
            self.at = 0;
        }
    }
}
