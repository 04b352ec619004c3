//! Output: aligned tables for people, JSON lines for scripts, and how values are shown.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::io::{self, Write};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use serde::Serialize;
use serde_json::value::RawValue;
use tidings::store::RecordedEvent;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::registry::Registry;

/// How many rows a table holds before it fixes its column widths and starts printing...
const TABLE_BUFFER_ROWS: usize = 1000;
/// ...or how many bytes of cells (payloads shown with `--payload` are cells).
const TABLE_BUFFER_BYTES: usize = 1024 * 1024;

/// An aligned table printed as rows come. The first [`TABLE_BUFFER_ROWS`] rows (at most
/// [`TABLE_BUFFER_BYTES`] of cells, and always one row) set the column widths, so that a listing
/// of any length is printed without holding it all in memory.
pub struct Table<'a> {
    out: &'a mut dyn Write,
    headers: Vec<&'static str>,
    widths: Vec<usize>,
    buffered: Vec<Vec<String>>,
    buffered_bytes: usize,
    started: bool,
    rows: u64,
}

impl<'a> Table<'a> {
    /// A table with these column headers.
    pub fn new(out: &'a mut dyn Write, headers: &[&'static str]) -> Self {
        Table {
            out,
            headers: headers.to_vec(),
            widths: headers.iter().map(|h| h.chars().count()).collect(),
            buffered: Vec::new(),
            buffered_bytes: 0,
            started: false,
            rows: 0,
        }
    }

    /// Adds a row (one cell per header). Cells are shown through [`printable`].
    pub fn row(&mut self, cells: Vec<String>) -> io::Result<()> {
        let cells: Vec<String> = cells
            .into_iter()
            .map(|c| match printable(&c) {
                Cow::Borrowed(_) => c,
                Cow::Owned(escaped) => escaped,
            })
            .collect();
        self.rows += 1;
        if self.started {
            return self.print(&cells);
        }
        for (w, c) in self.widths.iter_mut().zip(&cells) {
            *w = (*w).max(c.chars().count());
        }
        self.buffered_bytes += cells.iter().map(String::len).sum::<usize>();
        self.buffered.push(cells);
        if self.buffered.len() >= TABLE_BUFFER_ROWS || self.buffered_bytes >= TABLE_BUFFER_BYTES {
            self.start()?;
        }
        Ok(())
    }

    /// Starts printing at once with columns at least `widths` wide (for output that must not
    /// wait, like `tail`).
    pub fn immediate(mut self, widths: &[usize]) -> io::Result<Self> {
        for (w, min) in self.widths.iter_mut().zip(widths) {
            *w = (*w).max(*min);
        }
        self.start()?;
        Ok(self)
    }

    /// Flushes the output (rows still buffered for widths stay buffered).
    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    /// Prints what is buffered; returns how many rows the table had.
    pub fn finish(mut self) -> io::Result<u64> {
        if !self.started {
            self.start()?;
        }
        Ok(self.rows)
    }

    fn start(&mut self) -> io::Result<()> {
        self.started = true;
        let headers: Vec<String> = self.headers.iter().map(|h| (*h).to_owned()).collect();
        self.print(&headers)?;
        self.buffered_bytes = 0;
        for row in std::mem::take(&mut self.buffered) {
            self.print(&row)?;
        }
        Ok(())
    }

    fn print(&mut self, cells: &[String]) -> io::Result<()> {
        let mut line = String::new();
        let last = cells.len().saturating_sub(1);
        for (i, cell) in cells.iter().enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            line.push_str(cell);
            if i < last {
                let pad = self.widths[i].saturating_sub(cell.chars().count());
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        writeln!(self.out, "{}", line.trim_end())
    }
}

/// `text` made safe to print on a terminal: control characters (C0, DEL, C1) and the Unicode
/// bidirectional controls are written as escapes (`\n`, `\t`, `\r`, `\u{1b}`), so that a stream
/// id, event type or name holding an escape sequence cannot act on the operator's terminal.
/// Everything the CLI prints for people that comes from the store goes through it (`--json`
/// escapes by itself).
pub fn printable(text: &str) -> Cow<'_, str> {
    let unsafe_char = |c: char| c.is_control() || is_bidi_control(c);
    if !text.contains(unsafe_char) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if unsafe_char(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// The Unicode characters that reorder the text around them (embeddings, overrides, isolates,
/// marks): shown escaped, as in "Trojan Source".
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{061c}')
}

/// Rows of a listing: an aligned table, or one JSON object per line.
pub enum Rows<'a> {
    /// For people.
    Table(Table<'a>),
    /// For scripts.
    Json(&'a mut dyn Write),
}

impl<'a> Rows<'a> {
    /// A table with `headers`, or JSON lines when `json`.
    pub fn new(json: bool, out: &'a mut dyn Write, headers: &[&'static str]) -> Self {
        if json {
            Rows::Json(out)
        } else {
            Rows::Table(Table::new(out, headers))
        }
    }

    /// Adds one row: `cells` for a table, `object` for JSON (only the one needed is made).
    pub fn row<T: Serialize>(
        &mut self,
        cells: impl FnOnce() -> Vec<String>,
        object: impl FnOnce() -> T,
    ) -> io::Result<()> {
        match self {
            Rows::Table(t) => t.row(cells()),
            Rows::Json(out) => json_line(*out, &object()),
        }
    }

    /// Ends the listing; returns how many rows it had (0 for JSON, which is not counted).
    pub fn finish(self) -> io::Result<u64> {
        match self {
            Rows::Table(t) => t.finish(),
            Rows::Json(out) => out.flush().map(|()| 0),
        }
    }
}

/// Writes `value` as one line of JSON.
pub fn json_line(out: &mut dyn Write, value: &impl Serialize) -> io::Result<()> {
    serde_json::to_writer(&mut *out, value)?;
    writeln!(out)
}

/// A timestamp in microseconds since the Unix epoch, as RFC 3339 in UTC with microseconds.
/// Always six digits of fraction, so that times line up in a table.
pub fn rfc3339_micros(micros: u64) -> String {
    let nanos = i128::from(micros) * 1000;
    match OffsetDateTime::from_unix_timestamp_nanos(nanos) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            t.microsecond()
        ),
        Err(_) => format!("{micros}µs after the Unix epoch"),
    }
}

/// A system time as RFC 3339 in UTC.
pub fn rfc3339(t: SystemTime) -> String {
    let micros = t
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_micros();
    rfc3339_micros(micros as u64)
}

/// Parses an RFC 3339 time (any offset, any year RFC 3339 can write, before 1970 too) into a
/// system time.
pub fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    let t = OffsetDateTime::parse(s, &Rfc3339).ok()?;
    let nanos = t.unix_timestamp_nanos();
    let since = Duration::new(
        u64::try_from(nanos.unsigned_abs() / 1_000_000_000).ok()?,
        (nanos.unsigned_abs() % 1_000_000_000) as u32,
    );
    if nanos < 0 {
        UNIX_EPOCH.checked_sub(since)
    } else {
        UNIX_EPOCH.checked_add(since)
    }
}

/// A byte count for people: `512 B`, `1.5 KiB`, `12.0 MiB`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// How a payload is written in JSON.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PayloadEncoding {
    /// The payload's own bytes, which are one JSON value (kept verbatim).
    Json,
    /// The payload's bytes in standard base64 (they are not JSON).
    Base64,
    /// Decoded by a registered event type and encoded again (for reading; not for `import`).
    Decoded,
}

/// The payload's bytes as a verbatim JSON value, when they are one that fits on a JSON line
/// exactly as it is (no surrounding whitespace, no line breaks).
pub fn raw_json(payload: &[u8]) -> Option<Box<RawValue>> {
    let text = std::str::from_utf8(payload).ok()?;
    let ws = |c: char| matches!(c, ' ' | '\t' | '\n' | '\r');
    if text.is_empty() || text.starts_with(ws) || text.ends_with(ws) || text.contains(['\n', '\r'])
    {
        return None;
    }
    let raw = RawValue::from_string(text.to_owned()).ok()?;
    (raw.get().as_bytes() == payload).then_some(raw)
}

/// A payload as exported: verbatim JSON when possible, else base64.
pub fn exact_payload(payload: &[u8]) -> (PayloadEncoding, Box<RawValue>) {
    match raw_json(payload) {
        Some(raw) => (PayloadEncoding::Json, raw),
        None => {
            let b64 = base64::engine::general_purpose::STANDARD.encode(payload);
            let raw = serde_json::value::to_raw_value(&b64).expect("a string encodes");
            (PayloadEncoding::Base64, raw)
        }
    }
}

/// Bytes in standard base64.
pub fn encode_base64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Decodes base64 as [`exact_payload`] writes it.
pub fn decode_base64(s: &str) -> Result<Vec<u8>, String> {
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .map_err(|e| format!("payload is not valid base64: {e}"))
}

/// A payload for reading: decoded by the registry when its type is registered, else as
/// [`exact_payload`]. The error, if a registered type does not decode it, comes along.
pub fn shown_payload(
    registry: &Registry,
    event: &RecordedEvent,
) -> (PayloadEncoding, Box<RawValue>, Option<String>) {
    match registry.decode(event) {
        Some(Ok(value)) => {
            let raw = serde_json::value::to_raw_value(&value).expect("a JSON value encodes");
            (PayloadEncoding::Decoded, raw, None)
        }
        Some(Err(reason)) => {
            let (enc, raw) = exact_payload(&event.payload);
            (enc, raw, Some(reason))
        }
        None => {
            let (enc, raw) = exact_payload(&event.payload);
            (enc, raw, None)
        }
    }
}

/// One event as a JSON object: the export format, and the `--json` output of reads.
#[derive(Serialize, serde::Deserialize, Debug)]
pub struct EventLine {
    /// Always `"event"` (other kinds of lines may be added).
    pub kind: String,
    /// Global position.
    pub position: u64,
    /// Stream id.
    pub stream_id: String,
    /// Version in its stream.
    pub stream_version: u64,
    /// Category.
    pub category: String,
    /// Event type name.
    pub event_type: String,
    /// Payload schema version.
    pub schema_version: u32,
    /// Event id.
    pub event_id: uuid::Uuid,
    /// Correlation id.
    pub correlation_id: Option<uuid::Uuid>,
    /// Causation id.
    pub causation_id: Option<uuid::Uuid>,
    /// Commit time, microseconds since the Unix epoch (what `import` uses).
    pub timestamp_micros: u64,
    /// The same time in RFC 3339, for people (ignored by `import`).
    #[serde(default)]
    pub timestamp: String,
    /// The event's metadata (string headers), left out when it has none, so that lines of
    /// events without metadata are the same as before metadata existed.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    /// The payload's length in bytes.
    pub payload_size: usize,
    /// How `payload` is written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_encoding: Option<PayloadEncoding>,
    /// The payload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<Box<RawValue>>,
    /// Why a registered event type does not decode the payload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_error: Option<String>,
}

impl EventLine {
    /// The line for `event`, with its payload shown `how`.
    pub fn new(event: &RecordedEvent, payload: Option<(PayloadEncoding, Box<RawValue>)>) -> Self {
        let (payload_encoding, payload) = match payload {
            Some((e, p)) => (Some(e), Some(p)),
            None => (None, None),
        };
        EventLine {
            kind: "event".into(),
            position: event.position,
            stream_id: event.stream_id.to_string(),
            stream_version: event.stream_version,
            category: event.category.to_string(),
            event_type: event.event_type.to_string(),
            schema_version: event.schema_version,
            event_id: event.event_id,
            correlation_id: event.correlation_id,
            causation_id: event.causation_id,
            timestamp_micros: event.timestamp_micros,
            timestamp: rfc3339_micros(event.timestamp_micros),
            metadata: event.metadata.clone(),
            payload_size: event.payload.len(),
            payload_encoding,
            payload,
            payload_error: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_payloads_that_are_verbatim_single_line_json_are_written_as_json() {
        for ok in [
            &br#"{"a": 1,  "b":[1, 2]}"#[..],
            b"42",
            b"\"s\"",
            b"[]",
            b"null",
        ] {
            assert_eq!(exact_payload(ok).0, PayloadEncoding::Json, "{ok:?}");
            assert_eq!(raw_json(ok).unwrap().get().as_bytes(), ok);
        }
        for not in [
            &b""[..],
            b" {}",
            b"{} ",
            b"{\n}",
            b"{",
            b"\xff\xfe",
            b"{} {}",
            b"abc",
        ] {
            assert_eq!(exact_payload(not).0, PayloadEncoding::Base64, "{not:?}");
        }
        let (_, raw) = exact_payload(b"\x00\x01binary");
        let s: String = serde_json::from_str(raw.get()).unwrap();
        assert_eq!(decode_base64(&s).unwrap(), b"\x00\x01binary");
    }

    #[test]
    fn times_are_rfc3339_with_microseconds_and_parse_back_with_any_offset() {
        assert_eq!(
            rfc3339_micros(1_700_000_000_123_456),
            "2023-11-14T22:13:20.123456Z"
        );
        let t = parse_rfc3339("2023-11-15T00:13:20.123456+02:00").unwrap();
        assert_eq!(rfc3339(t), "2023-11-14T22:13:20.123456Z");
        assert!(parse_rfc3339("yesterday").is_none());
        let far = parse_rfc3339("9999-12-31T23:59:59Z").unwrap();
        assert_eq!(rfc3339(far), "9999-12-31T23:59:59.000000Z");
        assert!(parse_rfc3339("1969-07-20T20:17:40Z").unwrap() < UNIX_EPOCH);
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
    }

    #[test]
    fn control_and_bidi_characters_are_escaped_and_other_text_kept() {
        assert!(matches!(
            printable("order-1 ü €"),
            Cow::Borrowed("order-1 ü €")
        ));
        assert_eq!(printable("x\u{1b}[2J\u{7}"), "x\\u{1b}[2J\\u{7}");
        assert_eq!(printable("a\nb\tc\r"), "a\\nb\\tc\\r");
        assert_eq!(printable("\u{9b}31m\u{202e}txt"), "\\u{9b}31m\\u{202e}txt");
        let mut out = Vec::new();
        let mut t = Table::new(&mut out, &["A"]);
        t.row(vec!["\u{1b}]0;title\u{7}".into()]).unwrap();
        t.finish().unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "A\n\\u{1b}]0;title\\u{7}\n"
        );
    }

    #[test]
    fn a_table_aligns_its_columns_by_the_widest_cell() {
        let mut out = Vec::new();
        let mut t = Table::new(&mut out, &["A", "BBB"]);
        t.row(vec!["xxxx".into(), "1".into()]).unwrap();
        t.row(vec!["y".into(), "22".into()]).unwrap();
        assert_eq!(t.finish().unwrap(), 2);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "A     BBB\nxxxx  1\ny     22\n"
        );
    }
}
