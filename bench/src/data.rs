//! The events every workload writes: ~200-byte JSON payloads, ten event types, 10 000 streams.

use serde::{Deserialize, Serialize};
use tidings::store::EventData;
use tidings::DomainEvent;

/// Streams the workloads spread appends over.
pub const STREAMS: u64 = 10_000;
/// The category of every benchmark stream (`bench-<n>`).
pub const CATEGORY: &str = "bench";

/// The benchmark's domain event: ten types (`T0`..`T9`), each with a ~200-byte JSON payload.
/// A handler that handles `T0` alone takes 10 % of the events.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, DomainEvent)]
#[allow(missing_docs)]
pub enum BenchEvent {
    T0 { n: u64, note: String },
    T1 { n: u64, note: String },
    T2 { n: u64, note: String },
    T3 { n: u64, note: String },
    T4 { n: u64, note: String },
    T5 { n: u64, note: String },
    T6 { n: u64, note: String },
    T7 { n: u64, note: String },
    T8 { n: u64, note: String },
    T9 { n: u64, note: String },
}

/// Only the first of the ten types: a handler of this type takes 10 % of the events.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, DomainEvent)]
#[allow(missing_docs)]
pub enum OneInTen {
    T0 { n: u64, note: String },
}

/// The ten event type names.
pub const TYPES: [&str; 10] = ["T0", "T1", "T2", "T3", "T4", "T5", "T6", "T7", "T8", "T9"];

/// The payloads of the ten types, made once (every backend writes the same bytes).
pub struct Payloads {
    bytes: Vec<Vec<u8>>,
}

impl Payloads {
    /// Builds the ten JSON payloads (~200 bytes each).
    pub fn new() -> Payloads {
        let note = "x".repeat(170);
        let bytes = (0..10)
            .map(|t| {
                let n = 1_000_000 + t;
                let note = note.clone();
                let e = match t {
                    0 => BenchEvent::T0 { n, note },
                    1 => BenchEvent::T1 { n, note },
                    2 => BenchEvent::T2 { n, note },
                    3 => BenchEvent::T3 { n, note },
                    4 => BenchEvent::T4 { n, note },
                    5 => BenchEvent::T5 { n, note },
                    6 => BenchEvent::T6 { n, note },
                    7 => BenchEvent::T7 { n, note },
                    8 => BenchEvent::T8 { n, note },
                    _ => BenchEvent::T9 { n, note },
                };
                e.to_event_data().expect("serializes").payload
            })
            .collect();
        Payloads { bytes }
    }

    /// The payload of type `t` (0..10).
    pub fn get(&self, t: usize) -> &[u8] {
        &self.bytes[t % 10]
    }
}

impl Default for Payloads {
    fn default() -> Self {
        Payloads::new()
    }
}

/// One append of the workload: the `k`-th append overall goes to stream `k·7919 mod STREAMS`
/// (a fixed permutation, so that consecutive appends hit different streams) with 1–3 events.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    /// The stream's number.
    pub stream: u64,
    /// How many events (1..=3).
    pub events: usize,
}

/// The `k`-th append of a workload.
pub fn plan(k: u64, streams: u64) -> Plan {
    Plan {
        stream: (k.wrapping_mul(7919)) % streams,
        events: 1 + (k % 3) as usize,
    }
}

/// The name of stream `n`.
pub fn stream_name(n: u64) -> String {
    format!("{CATEGORY}-{n}")
}

/// The events of one append as tidings' `EventData`; the event with global sequence number
/// `seq + i` has type `T{(seq + i) mod 10}`.
pub fn event_data(p: &Payloads, seq: u64, count: usize) -> Vec<EventData> {
    (0..count)
        .map(|i| {
            let t = ((seq + i as u64) % 10) as usize;
            EventData::new(TYPES[t], p.get(t).to_vec())
        })
        .collect()
}

/// The events of one append for the baselines: (type, payload), the same bytes tidings gets.
pub fn raw_events(p: &Payloads, seq: u64, count: usize) -> Vec<(&'static str, Vec<u8>)> {
    (0..count)
        .map(|i| {
            let t = ((seq + i as u64) % 10) as usize;
            (TYPES[t], p.get(t).to_vec())
        })
        .collect()
}

/// The bytes tidings stores around one event besides its payload (format 1, see
/// docs/storage-format.md): record length and crc (8), body format and header length (5), and
/// the bincode header (position 8, stream 8+s, version 8, category 8+c, type 8+t, schema 4,
/// event id 8+16, two absent options 2, timestamp 8). The raw baselines write records of the
/// same length, so that they move the same bytes.
pub fn record_overhead(stream: &str, event_type: &str) -> usize {
    let category = tidings::store::category_of(stream).len();
    8 + 5 + (8 + (8 + stream.len()) + 8 + (8 + category) + (8 + event_type.len()) + 4 + 24 + 2 + 8)
}

/// A record of the raw baselines: the same length as tidings' record of the same event,
/// holding length, position, version, stream and type, zero padding, then the payload.
pub fn raw_record(
    out: &mut Vec<u8>,
    position: u64,
    stream: &str,
    version: u64,
    event_type: &str,
    payload: &[u8],
) {
    let overhead = record_overhead(stream, event_type);
    let start = out.len();
    out.extend_from_slice(&((overhead + payload.len() - 4) as u32).to_le_bytes());
    out.extend_from_slice(&position.to_le_bytes());
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&(stream.len() as u16).to_le_bytes());
    out.extend_from_slice(stream.as_bytes());
    out.push(event_type.len() as u8);
    out.extend_from_slice(event_type.as_bytes());
    out.resize(start + overhead, 0);
    out.extend_from_slice(payload);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_are_about_two_hundred_bytes_and_decode_as_their_type() {
        let p = Payloads::new();
        for (t, name) in TYPES.iter().enumerate() {
            let len = p.get(t).len();
            assert!((190..=230).contains(&len), "{len}");
            let data =
                tidings::store::EventData::new(*name, p.get(t).to_vec()).with_event_id(uuid_nil());
            let recorded =
                tidings::store::RecordedEvent::new(1, "bench-1", 1, data).with_timestamp_micros(0);
            assert_eq!(
                BenchEvent::from_recorded(&recorded).unwrap().event_type(),
                *name
            );
            assert_eq!(OneInTen::from_recorded(&recorded).is_ok(), t == 0);
        }
    }

    fn uuid_nil() -> uuid::Uuid {
        uuid::Uuid::nil()
    }

    #[test]
    fn plans_spread_appends_over_streams_with_one_to_three_events() {
        let plans: Vec<Plan> = (0..30_000).map(|k| plan(k, STREAMS)).collect();
        let streams: std::collections::HashSet<u64> = plans.iter().map(|p| p.stream).collect();
        assert_eq!(streams.len() as u64, STREAMS);
        assert!(plans.iter().all(|p| (1..=3).contains(&p.events)));
    }

    #[test]
    fn raw_records_are_as_long_as_tidings_records() {
        let mut out = Vec::new();
        raw_record(&mut out, 7, "bench-12", 3, "T1", &[1; 200]);
        assert_eq!(out.len(), record_overhead("bench-12", "T1") + 200);
        assert_eq!(
            u32::from_le_bytes(out[..4].try_into().unwrap()) as usize,
            out.len() - 4
        );
    }
}
