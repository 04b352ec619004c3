//! W6: peak RSS and bytes on disk per event after appending (and reading back) N events, each
//! engine in a child process of its own so that workloads do not pollute each other's memory.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use tidings::store::{EventStore, Filter, SledConfig};

use crate::baseline;
use crate::data::Payloads;
use crate::engines::{drive, Engine, Sink};
use crate::report::{Better, Row, Target};
use crate::w12::runtime;
use crate::Settings;

/// The smaller sled cache W6 also measures tidings with.
const SMALL_CACHE: u64 = 8 * 1024 * 1024;

/// The hidden subcommand the child runs: `__w6 <engine> <events>`.
pub const CHILD: &str = "__w6";

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// What a child measured.
#[derive(Debug, Clone, Copy)]
pub struct Measured {
    /// Peak resident set (VmHWM) when the appends were done, bytes.
    pub append_rss: u64,
    /// Peak resident set (VmHWM) at the end, after reading everything back, bytes.
    pub peak_rss: u64,
    /// Bytes of the store's files.
    pub disk: u64,
    /// Events written.
    pub events: u64,
}

/// Runs in the child: appends `events` events from 256 writers to a fresh store, reads them
/// all back, then prints `append_peak_rss end_peak_rss disk_bytes events`.
pub fn child(args: &[String]) -> Result<(), String> {
    let (engine, events, cache) = match args {
        [engine, events] => (engine, events, None),
        [engine, events, cache] => (engine, events, Some(cache)),
        _ => {
            return Err(format!(
                "usage: {CHILD} <tidings|sqlite|sled|file> <events> [tidings cache bytes]"
            ))
        }
    };
    let cache: Option<u64> = cache
        .map(|c| c.parse().map_err(|_| format!("not a number: {c:?}")))
        .transpose()?;
    let engine = Engine::from_arg(engine).ok_or_else(|| format!("unknown engine {engine:?}"))?;
    let events: u64 = events
        .parse()
        .map_err(|_| format!("not a number: {events:?}"))?;
    let dir = tempfile::Builder::new()
        .prefix("tidings-bench-w6-")
        .tempdir()
        .map_err(err)?;
    let rt = runtime()?;
    let sink = match (engine, cache) {
        (Engine::Tidings, Some(bytes)) => Sink::Store(Arc::new(
            SledConfig::new(dir.path())
                .cache_capacity_bytes(bytes)
                .open()
                .map_err(err)?,
        )),
        _ => Sink::open(engine, dir.path())?,
    };
    let run = rt.block_on(drive(&sink, Arc::new(Payloads::new()), 256, events, false))?;
    sink.close();
    let append_rss = peak_rss().map_err(err)?;
    // Read everything back (a subscription catching up from the start does this).
    match engine {
        Engine::Tidings => rt.block_on(async {
            let mut config = SledConfig::new(dir.path());
            if let Some(bytes) = cache {
                config = config.cache_capacity_bytes(bytes);
            }
            let store = config.open().map_err(err)?;
            let mut next = 1;
            loop {
                let page = store
                    .read_all(next, 1000, &Filter::all())
                    .await
                    .map_err(err)?;
                next = page.next_position;
                if page.is_end() {
                    return Ok::<_, String>(());
                }
            }
        })?,
        Engine::Sqlite => {
            let conn = baseline::sqlite::open(dir.path()).map_err(err)?;
            baseline::sqlite::scan(&conn, |_| true).map_err(err)?;
        }
        Engine::RawSled => {
            let db = baseline::sled::open(dir.path()).map_err(err)?;
            for item in db.scan_prefix(b"L") {
                std::hint::black_box(item.map_err(err)?);
            }
        }
        Engine::RawFile => {
            use std::io::Read;
            let mut f = std::fs::File::open(dir.path().join("log")).map_err(err)?;
            let mut buf = vec![0u8; 1 << 20];
            while f.read(&mut buf).map_err(err)? > 0 {
                std::hint::black_box(&buf);
            }
        }
        Engine::Postgres | Engine::PgInsert | Engine::PresizedFile => {
            return Err("W6 measures the embedded engines only".into())
        }
    }
    let disk = dir_bytes(dir.path()).map_err(err)?;
    println!(
        "{append_rss} {} {disk} {}",
        peak_rss().map_err(err)?,
        run.events
    );
    Ok(())
}

/// VmHWM of this process, in bytes.
fn peak_rss() -> std::io::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .ok_or_else(|| std::io::Error::other("no VmHWM in /proc/self/status"))
}

/// The bytes of every file under `dir`.
fn dir_bytes(dir: &Path) -> std::io::Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() {
            dir_bytes(&entry.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}

fn measure(engine: Engine, events: u64, cache: Option<u64>) -> Result<Measured, String> {
    let exe = std::env::current_exe().map_err(err)?;
    let mut args = vec![
        CHILD.to_string(),
        engine.arg().to_string(),
        events.to_string(),
    ];
    args.extend(cache.map(|c| c.to_string()));
    let out = Command::new(exe).args(&args).output().map_err(err)?;
    if !out.status.success() {
        return Err(format!(
            "W6 child for {} failed ({}): {}",
            engine.name(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let nums: Vec<u64> = text
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    match nums[..] {
        [append_rss, peak_rss, disk, events] => Ok(Measured {
            append_rss,
            peak_rss,
            disk,
            events,
        }),
        _ => Err(format!("W6 child for {} printed {text:?}", engine.name())),
    }
}

/// W6 in the parent: one child per engine.
pub fn w6(s: &Settings, rows: &mut Vec<Row>) -> Result<(), String> {
    let events = s.big_events();
    let mut m = Vec::new();
    for engine in Engine::EMBEDDED {
        let r = measure(engine, events, None)?;
        s.log(format_args!(
            "W6 {}: peak RSS {:.1} MB after the appends, {:.1} MB at the end, {:.0} bytes/event on disk",
            engine.name(),
            r.append_rss as f64 / 1e6,
            r.peak_rss as f64 / 1e6,
            r.disk as f64 / r.events as f64
        ));
        m.push((engine, r));
    }
    let t = m[0].1;
    let mb = |x: u64| x as f64 / 1e6;
    let per = |r: Measured| r.disk as f64 / r.events as f64;
    let case = format!(
        "{} events appended by 256 writers, then read back",
        t.events
    );
    rows.push(Row::alone(
        "W6",
        format!("{case}: peak RSS"),
        "MB",
        Better::Lower,
        mb(t.peak_rss),
        Target::ValueAtMost(100.0),
    ));
    for (engine, r) in &m[1..] {
        rows.push(Row::vs(
            "W6",
            format!("{case}: peak RSS while appending"),
            "MB",
            Better::Lower,
            mb(t.append_rss),
            engine.name(),
            mb(r.append_rss),
            Target::None,
        ));
    }
    for (engine, r) in &m[1..] {
        rows.push(Row::vs(
            "W6",
            format!("{case}: peak RSS"),
            "MB",
            Better::Lower,
            mb(t.peak_rss),
            engine.name(),
            mb(r.peak_rss),
            Target::None,
        ));
    }
    // sled's cache_capacity bounds the on-disk size of cached pages, not memory (sled issues
    // #986, #1093, #1309): the same run with an 8 MiB cache shows how far the knob goes.
    let small = measure(Engine::Tidings, events, Some(SMALL_CACHE))?;
    s.log(format_args!(
        "W6 tidings, cache 8 MiB: peak RSS {:.1} MB after the appends, {:.1} MB at the end",
        small.append_rss as f64 / 1e6,
        small.peak_rss as f64 / 1e6
    ));
    rows.push(Row::alone(
        "W6",
        format!("{case}: peak RSS, tidings with an 8 MiB sled cache"),
        "MB",
        Better::Lower,
        mb(small.peak_rss),
        Target::ValueAtMost(100.0),
    ));
    for (engine, r) in &m[1..] {
        rows.push(Row::vs(
            "W6",
            format!("{case}: bytes on disk per event"),
            "bytes",
            Better::Lower,
            per(t),
            engine.name(),
            per(*r),
            Target::None,
        ));
    }
    Ok(())
}

/// A hidden subcommand that isolates sled's memory after a scan: `__sled_scan_rss <events>
/// <cache bytes>` writes `events` events' worth of 4 KiB log chunks (as tidings lays them out)
/// with raw sled, closes it, then in a fresh process reopens it with the given `cache_capacity`
/// and prints VmRSS after the open and after one forward scan of the chunks.
pub const SCAN_CHILD: &str = "__sled_scan_rss";

/// Runs [`SCAN_CHILD`].
pub fn sled_scan_child(args: &[String]) -> Result<(), String> {
    if let [read, dir, cache] = args {
        if read == "--read" {
            return sled_scan_read(Path::new(dir), cache);
        }
    }
    let [events, cache] = args else {
        return Err(format!("usage: {SCAN_CHILD} <events> <cache bytes>"));
    };
    let events: u64 = events
        .parse()
        .map_err(|_| format!("not a number: {events:?}"))?;
    let cache: u64 = cache
        .parse()
        .map_err(|_| format!("not a number: {cache:?}"))?;
    let dir = tempfile::Builder::new()
        .prefix("tidings-bench-scan-")
        .tempdir()
        .map_err(err)?;
    let open = |cache: u64| {
        sled::Config::new()
            .path(dir.path())
            .cache_capacity(cache)
            .mode(sled::Mode::HighThroughput)
            .flush_every_ms(None)
            .open()
            .map_err(err)
    };
    {
        let db = open(64 * 1024 * 1024)?;
        let mut position = 1u64;
        while position <= events {
            // One commit group: 5 chunks of 13 records of 320 bytes, 32 index entries.
            let mut batch = sled::Batch::default();
            for _ in 0..5 {
                batch.insert(&baseline::sled::log_key(position)[..], vec![7u8; 13 * 320]);
                position += 13;
            }
            for i in 0..32 {
                let stream = crate::data::stream_name((position + i) % crate::data::STREAMS);
                batch.insert(
                    baseline::sled::index_key(&stream, position + i),
                    &[1u8; 12][..],
                );
            }
            db.apply_batch(batch).map_err(err)?;
            db.flush().map_err(err)?;
        }
    }
    // The scan runs in a fresh process, so that memory the writing left behind does not hide
    // what the scan keeps.
    let exe = std::env::current_exe().map_err(err)?;
    let out = Command::new(exe)
        .args([
            SCAN_CHILD,
            "--read",
            &dir.path().display().to_string(),
            &cache.to_string(),
        ])
        .output()
        .map_err(err)?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    print!("{}", String::from_utf8_lossy(&out.stdout));
    Ok(())
}

fn sled_scan_read(dir: &Path, cache: &str) -> Result<(), String> {
    let cache: u64 = cache
        .parse()
        .map_err(|_| format!("not a number: {cache:?}"))?;
    let db = sled::Config::new()
        .path(dir)
        .cache_capacity(cache)
        .mode(sled::Mode::HighThroughput)
        .flush_every_ms(None)
        .open()
        .map_err(err)?;
    let after_open = rss().map_err(err)?;
    let mut bytes = 0u64;
    for item in db.scan_prefix(b"L") {
        bytes += item.map_err(err)?.1.len() as u64;
    }
    println!(
        "cache {cache} bytes: VmRSS {:.1} MB after open, {:.1} MB after scanning {:.1} MB of chunks",
        after_open as f64 / 1e6,
        rss().map_err(err)? as f64 / 1e6,
        bytes as f64 / 1e6
    );
    Ok(())
}

/// VmRSS of this process, in bytes.
fn rss() -> std::io::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .ok_or_else(|| std::io::Error::other("no VmRSS in /proc/self/status"))
}
