//! The sled key layout, and the run keys of the stream index. Everything in sled lives in its
//! default tree, so that one `apply_batch` is atomic across checkpoints, state, snapshots and the
//! commit counter.
//!
//! Format 3 keeps the events in the segment log (`store::log`) and the stream index derived
//! from it in table files of its own (`table.rs`, `stream_index.rs`), whose keys are the run
//! keys below (`X` + stream id length + stream id + first version, as format 2 had them in
//! sled). sled holds the format `F`, the commit counter `N`, checkpoints `C`, consumer state `V`
//! and snapshots `P`. The `L` chunks and `S` entries of format 1, and the `X` runs, `G` group
//! starts and `I` mark of format 2, exist in sled only in a store that is being converted
//! (`migrate.rs`).

/// The key of the store's format number.
pub const FORMAT_KEY: &[u8] = b"F";
/// The key of the commit counter: how many synced commits of sled (batches holding checkpoints,
/// consumer state or snapshots) the store has made. Written in each of them, so that a commit
/// sled drops lowers it. Appends do not raise it: they are checked through the log.
pub const COMMITS_KEY: &[u8] = b"N";
/// The key of the format-2 index's mark: the last position whose record the index covered (with
/// where the next record began and its timestamp). Written by format 2 when it flushed sled; in
/// format 3 only read (as part of what was acknowledged) and removed, while converting.
pub const INDEXED_KEY: &[u8] = b"I";
/// Prefix of format-1 log chunks: `L` + first position (u64 big-endian).
pub const LOG: u8 = b'L';
/// Prefix of format-1 stream-index entries: `S` + stream id length (u16 BE) + stream id + first
/// version (u64 BE).
pub const INDEX: u8 = b'S';
/// The tag of run keys: `X` + stream id length (u16 BE) + stream id + first version (u64 BE).
/// The keys of the index's table files in format 3; in format 2 the prefix of the runs in sled,
/// which a conversion removes.
pub const RUNS: u8 = b'X';
/// Prefix of format-2 group starts in sled: `G` + position (u64 BE), whose record's address was
/// the value. Only removed, by a conversion: format 3 keeps group starts in the index's table
/// files and in memory.
pub const GROUP: u8 = b'G';
/// Prefix of checkpoints: `C` + name.
pub const CHECKPOINT: u8 = b'C';
/// Prefix of snapshots: `P` + stream id.
pub const SNAPSHOT: u8 = b'P';
/// Prefix of consumer state: `V` + name length (u16 BE) + name + key.
pub const STATE: u8 = b'V';

/// The key of the log chunk whose first event is at `position`.
pub fn log_key(position: u64) -> [u8; 9] {
    let mut key = [LOG; 9];
    key[1..].copy_from_slice(&position.to_be_bytes());
    key
}

/// The position a log key starts at, if it is a well-formed log key.
pub fn log_key_position(key: &[u8]) -> Option<u64> {
    match key {
        [LOG, rest @ ..] if rest.len() == 8 => Some(u64::from_be_bytes(rest.try_into().ok()?)),
        _ => None,
    }
}

/// The prefix shared by every run key of `stream`.
pub fn run_prefix(stream: &str) -> Vec<u8> {
    prefixed_stream(RUNS, stream)
}

/// The key of the run of `stream` whose first event has `version`.
pub fn run_key(stream: &str, version: u64) -> Vec<u8> {
    let mut key = run_prefix(stream);
    key.extend_from_slice(&version.to_be_bytes());
    key
}

/// Splits a run key into stream id and first version.
pub fn parse_run_key(key: &[u8]) -> Option<(&str, u64)> {
    match key.first() {
        Some(&RUNS) => parse_stream_key(key),
        _ => None,
    }
}

#[cfg(test)]
/// The prefix shared by every format-1 index entry of `stream`.
pub fn stream_prefix(stream: &str) -> Vec<u8> {
    prefixed_stream(INDEX, stream)
}

/// `tag` + stream id length (u16 BE) + stream id.
fn prefixed_stream(tag: u8, stream: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(3 + stream.len() + 8);
    key.push(tag);
    // Stream ids are at most MAX_STREAM_ID_LEN (512) bytes, checked before any write.
    key.extend_from_slice(&(stream.len() as u16).to_be_bytes());
    key.extend_from_slice(stream.as_bytes());
    key
}

#[cfg(test)]
/// The key of the index entry of `stream` whose first event has `version`.
pub fn index_key(stream: &str, version: u64) -> Vec<u8> {
    let mut key = stream_prefix(stream);
    key.extend_from_slice(&version.to_be_bytes());
    key
}

#[cfg(test)]
/// Splits a format-1 index key into stream id and first version.
pub fn parse_index_key(key: &[u8]) -> Option<(&str, u64)> {
    match key.first() {
        Some(&INDEX) => parse_stream_key(key),
        _ => None,
    }
}

/// Splits a key of a stream prefix (any tag) into stream id and version.
fn parse_stream_key(key: &[u8]) -> Option<(&str, u64)> {
    let [_, a, b, rest @ ..] = key else {
        return None;
    };
    let len = u16::from_be_bytes([*a, *b]) as usize;
    if rest.len() != len + 8 {
        return None;
    }
    let stream = std::str::from_utf8(&rest[..len]).ok()?;
    let version = u64::from_be_bytes(rest[len..].try_into().ok()?);
    Some((stream, version))
}

/// The key of a checkpoint.
pub fn checkpoint_key(name: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + name.len());
    key.push(CHECKPOINT);
    key.extend_from_slice(name.as_bytes());
    key
}

/// The prefix of every state key of consumer `name`.
pub fn state_prefix(name: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(3 + name.len());
    key.push(STATE);
    // Names are at most MAX_STREAM_ID_LEN (512) bytes, checked before any write.
    key.extend_from_slice(&(name.len() as u16).to_be_bytes());
    key.extend_from_slice(name.as_bytes());
    key
}

/// The key of one state value of consumer `name`.
pub fn state_key(name: &str, key: &[u8]) -> Vec<u8> {
    let mut out = state_prefix(name);
    out.extend_from_slice(key);
    out
}

/// The key of a stream's snapshot.
pub fn snapshot_key(stream: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + stream.len());
    key.push(SNAPSHOT);
    key.extend_from_slice(stream.as_bytes());
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_keys_of_one_stream_sort_by_version_and_never_mix_with_a_prefix_stream() {
        assert!(index_key("a", 2) < index_key("a", 10));
        // "a" and "a-b" differ in length, so one's entries never fall inside the other's prefix.
        assert!(!index_key("a-b", 1).starts_with(&stream_prefix("a")));
        assert_eq!(
            parse_index_key(&index_key("order-1", 7)),
            Some(("order-1", 7))
        );
        assert_eq!(log_key_position(&log_key(42)), Some(42));
        assert_eq!(parse_run_key(&run_key("order-1", 7)), Some(("order-1", 7)));
        assert_eq!(parse_run_key(&index_key("order-1", 7)), None);
        assert!(!run_key("a-b", 1).starts_with(&run_prefix("a")));
    }
}
