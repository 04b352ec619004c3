//! The tidings benchmark runner (issue 7): each workload's figure for tidings beside baselines
//! measured in the same run, with the ratio and the target.
//!
//! ```text
//! cargo run --release -p tidings-bench                 # full run (docs/performance.md)
//! cargo run --release -p tidings-bench -- --quick      # seconds: small sizes, a smoke test
//! cargo run --release -p tidings-bench -- --only W1,W3 --json
//! cargo run --release -p tidings-bench -- --backend postgres   # W1, W3, W7 on PostgreSQL only
//! cargo run --release -p tidings-bench -- --only W8            # the NATS relay vs a bare loop
//! cargo run -p tidings-bench -- charts bench.json docs/images   # SVG charts of a --json run
//! ```
//!
//! W1, W3 and W7 also run against tidings' PostgreSQL store when the server
//! (`TIDINGS_BENCH_POSTGRES_URL`, else `TIDINGS_TEST_POSTGRES_URL`, else
//! `postgres://root@127.0.0.1:5432/test`) answers; when it does not, they are skipped with a loud
//! message, and the run fails at the end if `TIDINGS_REQUIRE_POSTGRES=1`.
//!
//! W8 (the NATS JetStream relay against a bare async-nats publish loop) needs NATS with
//! JetStream (`TIDINGS_BENCH_NATS_URL`, else `nats://127.0.0.1:4222`); without it W8 is skipped
//! with a loud message, and the run fails if `TIDINGS_REQUIRE_NATS=1`.

mod baseline;
mod charts;
mod data;
mod dataset;
mod domain;
mod engines;
mod pg;
mod report;
mod w12;
mod w37;
mod w45;
mod w6;
mod w8;

use std::fmt;
use std::time::Instant;

use baseline::postgres::Server;
use report::Row;

const USAGE: &str = "usage: tidings-bench [--quick] [--json] [--only W1,W2,...] [--backend B] \
     [--rounds N] [--verbose]

  --quick    small sizes, runs in seconds (a smoke test; figures are not meaningful)
  --json     print the rows as JSON instead of the table
  --only     run only these workloads (W1..W8; W8 is the NATS relay)
  --backend  sled, postgres or both (default): which stores' workloads run (PostgreSQL has
             W1, W3 and W7; W8 runs on the embedded store)
  --rounds   rounds of W1 per engine, and of the PostgreSQL reads (median reported); default 3,
             1 with --quick; W8 runs at least 5 (2 with --quick)
  --verbose  print each measurement to stderr as it is taken
Temporary stores go under $TMPDIR (default /tmp): put it on the disk you want to measure.
PostgreSQL: TIDINGS_BENCH_POSTGRES_URL, else TIDINGS_TEST_POSTGRES_URL, else
postgres://root@127.0.0.1:5432/test; each run works in schemas of its own (bench_<pid>_<n>) and
drops them. TIDINGS_REQUIRE_POSTGRES=1 fails the run when the server is not reachable.
NATS (W8): TIDINGS_BENCH_NATS_URL, else nats://127.0.0.1:4222; TIDINGS_REQUIRE_NATS=1 fails the
run when it is not reachable.";

/// What to run, and how big.
pub struct Settings {
    /// Small sizes.
    pub quick: bool,
    /// Rounds of W1.
    pub rounds: usize,
    /// Print each measurement to stderr.
    pub verbose: bool,
    /// Run the embedded (sled) store's workloads.
    pub sled: bool,
    /// Run the PostgreSQL store's workloads.
    pub postgres: bool,
    only: Option<Vec<String>>,
    json: bool,
}

impl Settings {
    fn parse(args: &[String]) -> Result<Settings, String> {
        let mut s = Settings {
            quick: false,
            rounds: 0,
            verbose: false,
            sled: true,
            postgres: true,
            only: None,
            json: false,
        };
        let mut it = args.iter();
        while let Some(a) = it.next() {
            match a.as_str() {
                "--quick" => s.quick = true,
                "--json" => s.json = true,
                "--verbose" | "-v" => s.verbose = true,
                "--only" => {
                    let v = it.next().ok_or("--only needs a list, e.g. W1,W3")?;
                    let list: Vec<String> = v.split(',').map(|w| w.trim().to_uppercase()).collect();
                    if let Some(bad) = list.iter().find(|w| !WORKLOADS.contains(&w.as_str())) {
                        return Err(format!(
                            "unknown workload {bad:?} (known: {})",
                            WORKLOADS.join(", ")
                        ));
                    }
                    s.only = Some(list);
                }
                "--backend" => {
                    let v = it.next().ok_or("--backend needs sled, postgres or both")?;
                    (s.sled, s.postgres) = match v.as_str() {
                        "sled" => (true, false),
                        "postgres" => (false, true),
                        "both" => (true, true),
                        _ => return Err(format!("--backend: {v:?} is not sled, postgres or both")),
                    };
                }
                "--rounds" => {
                    let v = it.next().ok_or("--rounds needs a number")?;
                    s.rounds = v
                        .parse()
                        .ok()
                        .filter(|r| *r > 0)
                        .ok_or_else(|| format!("--rounds: {v:?} is not a positive number"))?;
                }
                "-h" | "--help" => return Err(String::new()),
                other => return Err(format!("unknown argument {other:?}")),
            }
        }
        if s.rounds == 0 {
            s.rounds = if s.quick { 1 } else { 3 };
        }
        Ok(s)
    }

    fn wants(&self, w: &str) -> bool {
        self.only.as_ref().is_none_or(|l| l.iter().any(|x| x == w))
    }

    /// Events written by W1 at `writers` writers.
    pub fn w1_events(&self, writers: u64) -> u64 {
        match (self.quick, writers) {
            (true, 1) => 300,
            (true, _) => 3_000,
            // Rounds of 5–10 s on this disk: at 1–3 s one stall of the shared disk decided a
            // round (issue 15, "Benchmark fairness").
            (false, 1) => 30_000,
            (false, 16) => 300_000,
            (false, _) => 600_000,
        }
    }

    /// Events written by W1 on PostgreSQL at `writers` writers: fewer than on sled, so that the
    /// PostgreSQL workloads of a full run take about 10 minutes on a 2-core machine (the store
    /// appends ~1 000 events/s there).
    pub fn pg_w1_events(&self, writers: u64) -> u64 {
        match (self.quick, writers) {
            (true, _) => self.w1_events(writers),
            (false, 1) => 5_000,
            (false, 16) => 50_000,
            (false, _) => 100_000,
        }
    }

    /// Appends timed one by one in W2.
    pub fn w2_appends(&self) -> u64 {
        if self.quick {
            200
        } else {
            5_000
        }
    }

    /// Events in the data set of W3 and W7 (and written in W6).
    pub fn big_events(&self) -> u64 {
        if self.quick {
            20_000
        } else {
            1_000_000
        }
    }

    /// A temporary directory for one store.
    pub fn tempdir(&self) -> Result<tempfile::TempDir, String> {
        tempfile::Builder::new()
            .prefix("tidings-bench-")
            .tempdir()
            .map_err(|e| e.to_string())
    }

    /// Prints a progress line to stderr when verbose.
    pub fn log(&self, line: fmt::Arguments<'_>) {
        if self.verbose {
            eprintln!("{line}");
        }
    }
}

const WORKLOADS: [&str; 8] = ["W1", "W2", "W3", "W4", "W5", "W6", "W7", "W8"];

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // Hidden subcommands: workloads that run in a child process of their own.
    let child: Option<Child> = match args.first().map(String::as_str) {
        Some(w6::CHILD) => Some(w6::child),
        Some(w45::CQRS_CHILD) => Some(w45::cqrs_child),
        Some(w6::SCAN_CHILD) => Some(w6::sled_scan_child),
        Some(charts::COMMAND) => Some(charts::run),
        _ => None,
    };
    if let Some(child) = child {
        if let Err(e) = child(&args[1..]) {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
        return;
    }
    let settings = match Settings::parse(&args) {
        Ok(s) => s,
        Err(e) => {
            if e.is_empty() {
                println!("{USAGE}");
                return;
            }
            eprintln!("error: {e}\n\n{USAGE}");
            std::process::exit(2);
        }
    };
    if let Err(e) = run(&settings) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

type Workload = fn(&Settings, &mut Vec<Row>) -> Result<(), String>;

/// Runs a step of the run under `name`, timing it and noting a failure.
type Timer<'a> =
    dyn FnMut(&str, &mut Vec<Row>, &mut dyn FnMut(&mut Vec<Row>) -> Result<(), String>) + 'a;

/// The PostgreSQL workloads on `server`: W1, then W7 and W3 on a data set of their own.
fn postgres(s: &Settings, server: &Server, rows: &mut Vec<Row>, timed: &mut Timer<'_>) {
    if s.wants("W1") {
        timed("W1 PostgreSQL", rows, &mut |rows| pg::w1(s, server, rows));
    }
    if s.wants("W3") || s.wants("W7") {
        let mut d = None;
        timed("PostgreSQL data set for W3/W7", rows, &mut |_| {
            d = Some(pg::PgDataset::build(s, server)?);
            Ok(())
        });
        if let Some(d) = d {
            if s.wants("W7") {
                timed("W7 PostgreSQL", rows, &mut |rows| {
                    pg::w7(s, server, &d, rows)
                });
            }
            if s.wants("W3") {
                timed("W3 PostgreSQL", rows, &mut |rows| {
                    pg::w3(s, server, &d, rows)
                });
            }
        }
    }
}

/// A workload that runs in a child process, given its arguments.
type Child = fn(&[String]) -> Result<(), String>;

/// The machine's load average, from `/proc/loadavg` (other work on a shared machine moves the
/// figures: ratios from the same run hold up better than absolute numbers).
/// The 1-minute load average (NaN where /proc/loadavg cannot be read).
pub fn load_average_1min() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// Runs the chosen workloads; a workload that fails is reported and the others still run (the
/// table shows what was measured), and the run then fails.
fn run(s: &Settings) -> Result<(), String> {
    let started = Instant::now();
    let load_before = load_average();
    let workloads: [(&str, Workload); 5] = [
        ("W1", w12::w1),
        ("W2", w12::w2),
        ("W4", w45::w4),
        ("W5", w45::w5),
        ("W6", w6::w6),
    ];
    let mut rows = Vec::new();
    let mut failed = Vec::new();
    let mut timed = |name: &str,
                     rows: &mut Vec<Row>,
                     f: &mut dyn FnMut(&mut Vec<Row>) -> Result<(), String>| {
        let t = Instant::now();
        match f(rows) {
            Ok(()) => s.log(format_args!(
                "{name} took {:.1} s",
                t.elapsed().as_secs_f64()
            )),
            Err(e) => {
                eprintln!("error: {name}: {e}");
                failed.push(name.to_string());
            }
        }
    };
    for (name, f) in workloads {
        if s.sled && s.wants(name) {
            timed(name, &mut rows, &mut |rows| f(s, rows));
        }
    }
    if s.sled && (s.wants("W3") || s.wants("W7")) {
        let mut d = None;
        timed("data set for W3/W7", &mut rows, &mut |rows| {
            d = Some(dataset::Dataset::build(s, rows)?);
            Ok(())
        });
        if let Some(d) = d {
            if s.wants("W7") {
                timed("W7", &mut rows, &mut |rows| w37::w7(s, &d, rows));
            }
            if s.wants("W3") {
                timed("W3", &mut rows, &mut |rows| w37::w3(s, &d, rows));
            }
        }
    }
    let mut skipped = Vec::new();
    if s.sled && s.wants("W8") {
        match w8::reachable() {
            Ok(()) => timed("W8", &mut rows, &mut |rows| w8::w8(s, rows)),
            Err(e) => {
                let message = format!(
                    "NATS with JetStream at {} is not reachable ({e}): W8 (the NATS relay) is \
                     SKIPPED. Start the server (nats-server -js) or set TIDINGS_BENCH_NATS_URL.",
                    w8::url()
                );
                eprintln!("\n!!!!!!!! {message} !!!!!!!!\n");
                if std::env::var("TIDINGS_REQUIRE_NATS").is_ok_and(|v| v == "1") {
                    timed("NATS", &mut rows, &mut |_| {
                        Err("TIDINGS_REQUIRE_NATS=1 and the server is not reachable".into())
                    });
                }
                skipped.push(message);
            }
        }
    }
    if s.postgres && (s.wants("W1") || s.wants("W3") || s.wants("W7")) {
        let server = Server::from_env();
        match server.reachable() {
            Ok(()) => postgres(s, &server, &mut rows, &mut timed),
            Err(e) => {
                let message = format!(
                    "PostgreSQL at {} is not reachable ({e}): the PostgreSQL workloads are \
                     SKIPPED. Start the server or set TIDINGS_BENCH_POSTGRES_URL.",
                    server.url
                );
                eprintln!("\n!!!!!!!! {message} !!!!!!!!\n");
                if std::env::var("TIDINGS_REQUIRE_POSTGRES").is_ok_and(|v| v == "1") {
                    timed("PostgreSQL", &mut rows, &mut |_| {
                        Err("TIDINGS_REQUIRE_POSTGRES=1 and the server is not reachable".into())
                    });
                }
                skipped.push(message);
            }
        }
    }
    if s.json {
        println!("{}", report::json(&rows));
    } else {
        println!(
            "tidings benchmark ({} mode, {} round(s) of W1, {} cores) — ratio = tidings ÷ baseline; ↑ higher is better, ↓ lower is better",
            if s.quick { "quick" } else { "full" },
            s.rounds,
            std::thread::available_parallelism().map_or(0, |n| n.get())
        );
        print!("{}", report::table(&rows));
        println!(
            "total {:.1} s; load average (1/5/15 min) at the start {load_before}, at the end {}",
            started.elapsed().as_secs_f64(),
            load_average()
        );
    }
    for message in skipped {
        println!("!!!!!!!! {message} !!!!!!!!");
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!("failed: {}", failed.join(", ")))
    }
}
