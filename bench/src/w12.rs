//! W1 (durable append throughput) and W2 (append latency beside raw fdatasync).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use crate::baseline;
use crate::baseline::postgres::Server;
use crate::data::Payloads;
use crate::engines::{drive, Engine, Sink};
use crate::report::{median, quantile, Better, Row, Target};
use crate::Settings;

/// W1: events/s with 1, 16 and 256 concurrent writers, appends of 1–3 events, each engine on a
/// fresh store, `rounds` rounds interleaved, medians.
pub fn w1(s: &Settings, rows: &mut Vec<Row>) -> Result<(), String> {
    for writers in [1u64, 16, 256] {
        let events = s.w1_events(writers);
        let rounds = append_rounds(s, &Engine::W1_EMBEDDED, None, writers, events, 0)?;
        let plural = if writers == 1 { "" } else { "s" };
        let case = format!("{writers} writer{plural}, {events} events");
        rows.push(rounds.row(&case, Engine::Sqlite, Target::RatioAtLeast(2.0)));
        rows.push(rounds.row(&case, Engine::RawSled, Target::RatioAtLeast(0.8)));
        rows.push(rounds.row(&case, Engine::RawFile, Target::None));
        // Format 2's target (issue 15) at 256 writers; below, the limit is one fdatasync per
        // append for both sides and the ratio is shown for information.
        let limit_target = if writers >= 256 {
            Target::RatioAtLeast(0.5)
        } else {
            Target::None
        };
        rows.push(rounds.row(&case, Engine::PresizedFile, limit_target));
    }
    Ok(())
}

/// Runs `s.rounds` rounds in which each of `engines` in turn appends about `events` events from
/// `writers` concurrent writers to a fresh store of its own (a PostgreSQL one on `server`, with
/// `connections` connections); returns each engine's median events/s and the median of its
/// per-round ratios to the first engine (tidings). The order of the engines is reversed every
/// other round, so that a load that rises or falls through a round does not always favour the
/// same side. With `--verbose`, each round's figures and their ratio to the first engine's.
pub fn append_rounds(
    s: &Settings,
    engines: &[Engine],
    server: Option<&Server>,
    writers: u64,
    events: u64,
    connections: usize,
) -> Result<Rounds, String> {
    let payloads = Arc::new(Payloads::new());
    let rt = runtime()?;
    let mut figures: HashMap<&'static str, Vec<f64>> = HashMap::new();
    let mut ratios: HashMap<&'static str, Vec<f64>> = HashMap::new();
    let mut loads = Vec::with_capacity(s.rounds);
    for round in 1..=s.rounds {
        let mut order: Vec<Engine> = engines.to_vec();
        if round % 2 == 0 {
            order.reverse();
        }
        let mut this_round: Vec<(&'static str, f64)> = Vec::new();
        for &engine in &order {
            let fresh = engine.open_fresh(s, server, connections)?;
            let run = rt.block_on(drive(&fresh.sink, payloads.clone(), writers, events, false));
            fresh.close();
            let run = run?;
            let rate = run.events_per_sec();
            figures.entry(engine.name()).or_default().push(rate);
            this_round.push((engine.name(), rate));
            s.log(format_args!(
                "W1 {writers:>3} writers {:<20} {rate:>10.0} events/s ({} appends; round {round})",
                engine.name(),
                run.appends,
            ));
        }
        let tidings = engines[0].name();
        let first = this_round
            .iter()
            .find(|(name, _)| *name == tidings)
            .map(|&(_, rate)| rate)
            .unwrap_or(f64::NAN);
        for (name, rate) in this_round {
            ratios.entry(name).or_default().push(first / rate);
            s.log(format_args!(
                "W1 {writers:>3} writers round {round}: tidings / {name} = {:.2}",
                first / rate
            ));
        }
        let load = crate::load_average_1min();
        loads.push(load);
        s.log(format_args!(
            "W1 {writers:>3} writers round {round}: load average {load:.2}"
        ));
    }
    let medians = |m: &HashMap<&'static str, Vec<f64>>| -> HashMap<&'static str, f64> {
        m.iter()
            .map(|(name, xs)| (*name, median(&mut xs.clone())))
            .collect()
    };
    let ranges = ratios
        .iter()
        .filter(|(_, xs)| xs.len() > 1)
        .map(|(name, xs)| {
            let lo = xs.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            (*name, (lo, hi))
        })
        .collect();
    Ok(Rounds {
        first: engines[0],
        medians: medians(&figures),
        ratios: medians(&ratios),
        ranges,
        loads,
    })
}

/// What [`append_rounds`] measured.
pub struct Rounds {
    /// The engine the others are compared with (tidings).
    first: Engine,
    medians: HashMap<&'static str, f64>,
    ratios: HashMap<&'static str, f64>,
    /// The lowest and highest per-round ratio to the first engine, by engine.
    ranges: HashMap<&'static str, (f64, f64)>,
    /// The 1-minute load average after each round.
    loads: Vec<f64>,
}

impl Rounds {
    /// The median events/s of `engine`.
    pub fn median(&self, engine: Engine) -> f64 {
        self.medians.get(engine.name()).copied().unwrap_or(f64::NAN)
    }

    /// The W1 row of the first engine (tidings) against `baseline`: both medians, and as the
    /// ratio the median of the per-round ratios.
    pub fn row(&self, case: &str, baseline: Engine, target: Target) -> Row {
        Row::vs(
            "W1",
            case,
            "events/s",
            Better::Higher,
            self.median(self.first),
            baseline.name(),
            self.median(baseline),
            target,
        )
        .engine(self.first.name())
        .paired(
            self.ratios
                .get(baseline.name())
                .copied()
                .unwrap_or(f64::NAN),
        )
        .rounds(
            self.ranges.get(baseline.name()).copied(),
            self.loads.clone(),
        )
    }
}

/// W2: latency of single appends (1 writer, one at a time), p50 and p99, beside raw
/// `write + fdatasync` of the same bytes and the other engines. The engines take turns append by
/// append (tidings, SQLite, raw sled, raw fdatasync, tidings, ...), so that each sees the same
/// moments of a shared disk.
pub fn w2(s: &Settings, rows: &mut Vec<Row>) -> Result<(), String> {
    let payloads = Payloads::new();
    let rt = runtime()?;
    let n = s.w2_appends();
    let engines = [Engine::Tidings, Engine::Sqlite, Engine::RawSled];
    let mut dirs = Vec::new();
    let mut sinks = Vec::new();
    for engine in engines {
        let dir = s.tempdir()?;
        sinks.push(Sink::open(engine, dir.path())?);
        dirs.push(dir);
    }
    let probe_dir = s.tempdir()?;
    let mut probe =
        baseline::file::FsyncProbe::create(probe_dir.path()).map_err(|e| e.to_string())?;
    let mut lat: Vec<Vec<f64>> = vec![Vec::with_capacity(n as usize); engines.len() + 1];
    rt.block_on(async {
        for k in 0..n {
            for (sink, out) in sinks.iter().zip(lat.iter_mut()) {
                let t = Instant::now();
                sink.append_planned(&payloads, k, crate::data::STREAMS)
                    .await?;
                out.push(t.elapsed().as_secs_f64() * 1e6);
            }
            lat[engines.len()].push(probe.sample().map_err(|e| e.to_string())?);
        }
        Ok::<_, String>(())
    })?;
    for sink in sinks {
        sink.close();
    }
    let names = [
        Engine::Tidings.name(),
        Engine::Sqlite.name(),
        Engine::RawSled.name(),
        "raw fdatasync",
    ];
    let mut q = HashMap::new();
    for (name, mut xs) in names.into_iter().zip(lat) {
        xs.sort_by(|a, b| a.total_cmp(b));
        s.log(format_args!(
            "W2 {name:<20} p50 {:>8.0} µs  p99 {:>8.0} µs  ({} appends)",
            quantile(&xs, 0.5),
            quantile(&xs, 0.99),
            xs.len()
        ));
        q.insert(name, (quantile(&xs, 0.5), quantile(&xs, 0.99)));
    }
    let t = q[Engine::Tidings.name()];
    let case = |p: &str| format!("1 writer, {n} appends, {p}");
    rows.push(Row::vs(
        "W2",
        case("p50"),
        "µs",
        Better::Lower,
        t.0,
        "raw fdatasync",
        q["raw fdatasync"].0,
        Target::None,
    ));
    rows.push(Row::vs(
        "W2",
        case("p99"),
        "µs",
        Better::Lower,
        t.1,
        "raw fdatasync",
        q["raw fdatasync"].1,
        Target::RatioAtMost(2.0),
    ));
    rows.push(Row::vs(
        "W2",
        case("p50"),
        "µs",
        Better::Lower,
        t.0,
        Engine::RawSled.name(),
        q[Engine::RawSled.name()].0,
        Target::None,
    ));
    rows.push(Row::vs(
        "W2",
        case("p99"),
        "µs",
        Better::Lower,
        t.1,
        Engine::RawSled.name(),
        q[Engine::RawSled.name()].1,
        Target::None,
    ));
    rows.push(Row::vs(
        "W2",
        case("p99"),
        "µs",
        Better::Lower,
        t.1,
        Engine::Sqlite.name(),
        q[Engine::Sqlite.name()].1,
        Target::None,
    ));
    Ok(())
}

/// A current-thread tokio runtime: the stores' writers are their own threads and reads run on
/// the blocking pool, so one thread drives every task (as in tidings' own example).
pub fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
}
