//! Recovery of the last segment at open: where its acknowledged records end, what a crash left
//! torn after them (cut), and what is damaged before them (reported, never cut).
//!
//! The rule (decision 54): a group is written only after the group before it was synced. So a
//! record of a *later* group proves that every group before it was durable: damage before such
//! a record is damage to acknowledged data. Damage with no later group after it is the torn
//! tail of the one group in flight at the crash, and is cut from the start of that group.

use std::path::PathBuf;

use super::error::{LogError, LogResult};
use super::frame::{ALIGN, RECORD_HEADER_LEN, RECORD_MAGIC, SEGMENT_HEADER_LEN};
use super::segment::{probe, Probe, Segment, Window};

/// What opening the log found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Recovery {
    /// Bytes of the last segment's tail that were cut (zeroed, synced): the torn group that was
    /// being written when the process stopped, which was never acknowledged.
    pub cut_bytes: u64,
    /// How many whole, valid records the cut held (the start of a group whose rest is missing).
    pub cut_records: u64,
    /// The first position of the group that was cut, when anything was.
    pub cut_from_position: Option<u64>,
    /// Damage before acknowledged records of the last segment: reported here and by reads, never
    /// cut.
    pub damaged: Vec<Damage>,
    /// Segment files that a crash left half-created (`*.seg.new`, no record in them), removed.
    pub removed: Vec<PathBuf>,
}

/// A damaged stretch of a segment, followed by acknowledged records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Damage {
    /// The segment (its first position).
    pub segment: u64,
    /// Where the damage begins.
    pub offset: u64,
    /// Where the next valid record begins.
    pub resumes_at: u64,
    /// The first position that cannot be read.
    pub first_position: u64,
    /// The position of the next valid record.
    pub resumes_position: u64,
}

/// The result of recovering the last segment.
#[derive(Debug)]
pub(super) struct Recovered {
    /// Where its acknowledged records end.
    pub end: u64,
    /// The last acknowledged position (the segment's first position − 1 when it holds none).
    pub last_position: u64,
}

#[derive(Clone, Copy, Debug)]
struct Group {
    /// Its first position.
    first: u64,
    /// The offset of its first record seen.
    start: u64,
}

#[derive(Debug)]
struct Pending {
    /// The group in which the damage is.
    group: u64,
    /// The offset where that group begins (as far as seen).
    start: u64,
    /// Where the damage begins.
    at: u64,
    /// The first position it takes.
    position: u64,
    /// The next valid record after it: offset and position.
    resumed: Option<(u64, u64)>,
}

/// Recovers `segment` (the log's last), whose file is `file_len` bytes long: finds its end, cuts
/// a torn tail (zeroing it) and reports damage before acknowledged records in `recovery`.
///
/// `acknowledged` is the last position the caller knows was acknowledged: a tail that would cut
/// it (damage in the last group, which no later group proves durable) is not cut but refused
/// with [`LogError::Damaged`], the file left as it was.
pub(super) fn recover_last(
    segment: &Segment,
    file_len: u64,
    window: usize,
    acknowledged: u64,
    recovery: &mut Recovery,
) -> LogResult<Recovered> {
    let limit = file_len.min(segment.size) / ALIGN * ALIGN;
    let mut win = Window::new(window);
    let mut off = SEGMENT_HEADER_LEN;
    let mut expected = segment.id;
    let mut open: Option<Group> = None;
    let mut pending: Vec<Pending> = Vec::new();
    loop {
        let found = probe(&mut win, segment, off, limit, true)?;
        if let Probe::Record(h, next) = found {
            let in_group = match open {
                Some(g) => h.group_first == g.first,
                None => h.group_first == h.position,
            };
            if h.position == expected && in_group {
                // A record of a later group proves the damage before it was durable.
                pending.retain(|p| {
                    let confirmed = p.group < h.group_first;
                    if confirmed {
                        let (resumes_at, resumes_position) = p.resumed.unwrap_or((off, h.position));
                        recovery.damaged.push(Damage {
                            segment: segment.id,
                            offset: p.at,
                            resumes_at,
                            first_position: p.position,
                            resumes_position,
                        });
                    }
                    !confirmed
                });
                if open.is_none() {
                    open = Some(Group {
                        first: h.group_first,
                        start: off,
                    });
                }
                off = next;
                expected = h.position + 1;
                if h.last_of_group {
                    open = None;
                }
                continue;
            }
        }
        let at_end = matches!(found, Probe::End);
        // A failure at `off` (or the end of the file inside a group).
        if at_end && open.is_none() {
            break;
        }
        let group = open.map_or(expected, |g| g.first);
        pending.push(Pending {
            group,
            start: open.map_or(off, |g| g.start),
            at: off,
            position: expected,
            resumed: None,
        });
        open = None;
        if at_end {
            break;
        }
        match find_next(&mut win, segment, off + ALIGN, limit, expected, group)? {
            None => break,
            Some((at, position, group_first)) => {
                pending.last_mut().expect("pushed").resumed = Some((at, position));
                off = at;
                expected = position;
                if group_first < position {
                    open = Some(Group {
                        first: group_first,
                        start: at,
                    });
                }
            }
        }
    }
    recovery.damaged.sort_by_key(|d| (d.segment, d.offset));
    let (end, last_position) = match pending.first() {
        Some(cut) => (cut.start, cut.group - 1),
        None => (off, expected - 1),
    };
    // Up to the file's end, not the last whole record's: a short write may end mid-word.
    let dirty_end = last_nonzero(&mut win, segment, end, file_len.min(segment.size))?;
    if last_position < acknowledged {
        let reason = if dirty_end > end {
            format!(
                "the log's last commit group (from position {}) is damaged, and it was \
                 acknowledged (positions up to {acknowledged} were): it is not cut as a torn \
                 tail, and nothing was changed. Restore the store from a backup",
                last_position + 1
            )
        } else {
            format!(
                "the log ends at position {last_position}, but positions up to {acknowledged} \
                 were acknowledged: acknowledged records are missing (a segment file was cut \
                 short, replaced or deleted); nothing was changed. Restore the store from a \
                 backup"
            )
        };
        return Err(LogError::Damaged {
            position: last_position + 1,
            file: segment.path.clone(),
            offset: end,
            reason,
        });
    }
    if dirty_end > end {
        recovery.cut_bytes = dirty_end - end;
        recovery.cut_records = count_records(&mut win, segment, end, limit, last_position + 1)?;
        recovery.cut_from_position = Some(last_position + 1);
        zero(segment, end, dirty_end, win.capacity())?;
    }
    Ok(Recovered { end, last_position })
}

/// The first valid record at or after `from` (a multiple of [`ALIGN`]) whose position is at
/// least `min_position` and whose group is not before `min_group`: its offset, position and
/// group.
fn find_next(
    win: &mut Window,
    segment: &Segment,
    from: u64,
    limit: u64,
    min_position: u64,
    min_group: u64,
) -> LogResult<Option<(u64, u64, u64)>> {
    let (mut at, mut run_end) = (from, from);
    loop {
        if at >= run_end {
            // Holes (the never-written rest of a segment) hold no record: skip them unread.
            let Some((start, end)) = segment.data_run(at, limit) else {
                return Ok(None);
            };
            at = start.div_ceil(ALIGN) * ALIGN;
            run_end = end;
        }
        if at + RECORD_HEADER_LEN as u64 > limit {
            return Ok(None);
        }
        // Look at the magic byte of every aligned offset of a window's worth at once.
        let chunk = win.get(
            segment,
            at,
            run_end.saturating_sub(at).max(1) as usize,
            limit,
        )?;
        if chunk.is_empty() {
            return Ok(None);
        }
        let step = (chunk.len() as u64 / ALIGN).max(1) * ALIGN;
        let magic = (0..chunk.len())
            .step_by(ALIGN as usize)
            .find(|&i| chunk[i] == RECORD_MAGIC);
        let Some(i) = magic else {
            at += step;
            continue;
        };
        let candidate = at + i as u64;
        if let Probe::Record(h, _) = probe(win, segment, candidate, limit, true)? {
            if h.position >= min_position && h.group_first >= min_group {
                return Ok(Some((candidate, h.position, h.group_first)));
            }
        }
        at = candidate + ALIGN;
    }
}

/// The end (rounded up to [`ALIGN`]) of the last byte that is not zero in `from .. limit`, or
/// `from` if all are zero.
fn last_nonzero(win: &mut Window, segment: &Segment, from: u64, limit: u64) -> LogResult<u64> {
    let mut dirty = from;
    let mut at = from;
    while let Some((start, end)) = segment.data_run(at, limit) {
        at = start;
        while at < end {
            let chunk = win.get(segment, at, (end - at) as usize, limit)?;
            if chunk.is_empty() {
                break;
            }
            if let Some(i) = chunk.iter().rposition(|&b| b != 0) {
                dirty = at + i as u64 + 1;
            }
            at += chunk.len() as u64;
        }
        if at < end {
            break; // the file ended early
        }
    }
    Ok(dirty.div_ceil(ALIGN) * ALIGN)
}

/// How many whole, valid records follow each other from `from`, beginning with `first_position`.
fn count_records(
    win: &mut Window,
    segment: &Segment,
    from: u64,
    limit: u64,
    first_position: u64,
) -> LogResult<u64> {
    let (mut at, mut count) = (from, 0);
    while let Probe::Record(h, next) = probe(win, segment, at, limit, true)? {
        if h.position != first_position + count {
            break;
        }
        count += 1;
        at = next;
    }
    Ok(count)
}

/// Writes zeros over `from .. to` and syncs.
fn zero(segment: &Segment, from: u64, to: u64, chunk: usize) -> LogResult<()> {
    let zeros = vec![0u8; chunk.min((to - from) as usize)];
    let mut at = from;
    while at < to {
        let n = zeros.len().min((to - at) as usize);
        segment
            .write_at(&zeros[..n], at)
            .map_err(|e| LogError::io("zero the torn tail of", &segment.path, e))?;
        at += n as u64;
    }
    segment
        .sync_data()
        .map_err(|e| LogError::io("fsync", &segment.path, e))
}
