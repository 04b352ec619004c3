//! SVG charts of a run's `--json` output, for docs/performance.md (issue 17):
//!
//! ```text
//! cargo run --release -p tidings-bench -- --only W1,W2,W4 --json > target/bench.json
//! cargo run -p tidings-bench -- charts target/bench.json docs/images
//! ```
//!
//! writes `w1-throughput.svg` (events/s against concurrent writers, one line per engine, both
//! axes logarithmic) and `latency.svg` (W2's and W4's percentiles, one bar each) into the
//! directory. The charts show what the JSON holds and nothing else: an engine that did not run
//! has no line, and a run without W1 (or without W2 and W4) is an error rather than an empty
//! chart.

use std::collections::BTreeMap;
use std::path::Path;

use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;

/// The file names written into the output directory.
pub const W1_FILE: &str = "w1-throughput.svg";
/// See [`W1_FILE`].
pub const LATENCY_FILE: &str = "latency.svg";

/// The subcommand's name: `tidings-bench charts FILE.json DIR`.
pub const COMMAND: &str = "charts";

/// A row of the JSON, reduced to what the charts need.
#[derive(Debug, Clone, PartialEq)]
struct Figure {
    workload: String,
    case: String,
    engine: String,
    value: f64,
    baseline: Option<(String, f64)>,
}

/// `charts FILE.json DIR`: reads the rows, writes both charts, prints their paths.
pub fn run(args: &[String]) -> Result<(), String> {
    let [input, dir] = args else {
        return Err(format!(
            "usage: tidings-bench {COMMAND} FILE.json DIR (FILE.json from `tidings-bench --json`)"
        ));
    };
    let text = std::fs::read_to_string(input).map_err(|e| format!("{input}: {e}"))?;
    let figures = parse(&text).map_err(|e| format!("{input}: {e}"))?;
    let dir = Path::new(dir);
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let w1 = dir.join(W1_FILE);
    let latency = dir.join(LATENCY_FILE);
    std::fs::write(&w1, w1_chart(&figures)?).map_err(|e| format!("{}: {e}", w1.display()))?;
    std::fs::write(&latency, latency_chart(&figures)?)
        .map_err(|e| format!("{}: {e}", latency.display()))?;
    println!("{}\n{}", w1.display(), latency.display());
    Ok(())
}

/// The rows of `tidings-bench --json`. Runs before the `engine` field existed name the
/// PostgreSQL store in the case ("PostgreSQL: ...").
fn parse(text: &str) -> Result<Vec<Figure>, String> {
    let rows: Vec<serde_json::Value> =
        serde_json::from_str(text).map_err(|e| format!("not the JSON of `--json`: {e}"))?;
    rows.iter()
        .enumerate()
        .map(|(i, row)| {
            let field = |name: &str| {
                row.get(name)
                    .and_then(|v| v.as_str())
                    .ok_or_else(|| format!("row {i}: no text field {name:?}"))
            };
            let number = |name: &str| row.get(name).and_then(|v| v.as_f64());
            let case = field("case")?.to_owned();
            let engine = match row.get("engine").and_then(|v| v.as_str()) {
                Some(e) => e.to_owned(),
                None if case.starts_with("PostgreSQL: ") => "tidings PostgreSQL".to_owned(),
                None => "tidings".to_owned(),
            };
            let baseline = match (
                row.get("baseline").and_then(|v| v.as_str()),
                number("baseline_value"),
            ) {
                (Some(name), Some(v)) => Some((name.to_owned(), v)),
                _ => None,
            };
            Ok(Figure {
                workload: field("workload")?.to_owned(),
                value: number("tidings").unwrap_or(f64::NAN),
                case,
                engine,
                baseline,
            })
        })
        .collect()
}

/// The number of writers of a W1 case ("16 writers, ..." or "PostgreSQL: 16 writers, ..."), or
/// `None` for W1 rows that are not one of the writer series (the load of the W3/W7 data set).
fn writers(case: &str) -> Option<u64> {
    if case.contains("data set") {
        return None;
    }
    let rest = case.strip_prefix("PostgreSQL: ").unwrap_or(case);
    let (n, after) = rest.split_once(' ')?;
    after.starts_with("writer").then_some(())?;
    n.parse().ok()
}

/// engine → writers → events/s, from every W1 row (tidings' figure and the baseline's).
fn w1_series(figures: &[Figure]) -> BTreeMap<String, BTreeMap<u64, f64>> {
    let mut series: BTreeMap<String, BTreeMap<u64, f64>> = BTreeMap::new();
    for f in figures.iter().filter(|f| f.workload == "W1") {
        let Some(w) = writers(&f.case) else { continue };
        let mut put = |engine: &str, v: f64| {
            if v.is_finite() && v > 0.0 {
                series.entry(engine.to_owned()).or_default().insert(w, v);
            }
        };
        put(&f.engine, f.value);
        if let Some((name, v)) = &f.baseline {
            put(name, *v);
        }
    }
    series
}

/// (label, µs) for every W2 and W4 percentile, tidings' first, each once.
fn latency_bars(figures: &[Figure]) -> Vec<(String, f64)> {
    let mut bars: Vec<(String, f64)> = Vec::new();
    let mut push = |label: String, v: f64| {
        if v.is_finite() && !bars.iter().any(|(l, _)| *l == label) {
            bars.push((label, v));
        }
    };
    for f in figures
        .iter()
        .filter(|f| f.workload == "W2" || f.workload == "W4")
    {
        // "1 writer, 5000 appends, p99" → "p99"; "2000 commands ..., command → handler p50" →
        // "command → handler p50".
        let what = f.case.rsplit(", ").next().unwrap_or(&f.case);
        push(format!("{} {} {what}", f.workload, f.engine), f.value);
        if let Some((name, v)) = &f.baseline {
            let pct = what.rsplit(' ').next().unwrap_or(what);
            push(format!("{} {name} {pct}", f.workload), *v);
        }
    }
    bars
}

fn draw_err<E: std::fmt::Debug>(e: E) -> String {
    format!("drawing the chart: {e:?}")
}

/// The W1 chart as SVG text.
fn w1_chart(figures: &[Figure]) -> Result<String, String> {
    let series = w1_series(figures);
    if series.is_empty() {
        return Err("no W1 rows: run the benchmark with W1 and --json".into());
    }
    let points = || series.values().flat_map(|s| s.iter());
    let max_w = points().map(|(w, _)| *w).max().unwrap_or(1).max(2) as f64;
    let (lo, hi) = points().fold((f64::MAX, 0f64), |(lo, hi), (_, v)| {
        (lo.min(*v), hi.max(*v))
    });
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (900, 520)).into_drawing_area();
        root.fill(&WHITE).map_err(draw_err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption("W1: appends against concurrent writers", ("sans-serif", 22))
            .margin(14)
            .x_label_area_size(44)
            .y_label_area_size(70)
            .build_cartesian_2d(
                (0.8f64..max_w * 1.25).log_scale(),
                (lo / 1.6..hi * 1.6).log_scale(),
            )
            .map_err(draw_err)?;
        chart
            .configure_mesh()
            .x_desc("concurrent writers")
            .y_desc("events/s")
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|y| human(*y))
            .draw()
            .map_err(draw_err)?;
        for (i, (engine, points)) in series.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            let line: Vec<(f64, f64)> = points.iter().map(|(w, v)| (*w as f64, *v)).collect();
            chart
                .draw_series(LineSeries::new(line.clone(), color.stroke_width(2)))
                .map_err(draw_err)?
                .label(engine.as_str())
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 18, y)], color.stroke_width(2))
                });
            chart
                .draw_series(line.into_iter().map(|p| Circle::new(p, 4, color.filled())))
                .map_err(draw_err)?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(draw_err)?;
        root.present().map_err(draw_err)?;
    }
    Ok(svg)
}

/// The W2/W4 chart as SVG text: one horizontal bar per percentile, its value written beside it.
fn latency_chart(figures: &[Figure]) -> Result<String, String> {
    let bars = latency_bars(figures);
    if bars.is_empty() {
        return Err("no W2 or W4 rows: run the benchmark with W2,W4 and --json".into());
    }
    let n = bars.len();
    let max = bars.iter().map(|(_, v)| *v).fold(0f64, f64::max);
    let mut svg = String::new();
    {
        let height = 90 + 30 * n as u32;
        let root = SVGBackend::with_string(&mut svg, (900, height)).into_drawing_area();
        root.fill(&WHITE).map_err(draw_err)?;
        let labels: Vec<String> = bars.iter().map(|(l, _)| l.clone()).collect();
        let mut chart = ChartBuilder::on(&root)
            .caption(
                "W2, W4: latency percentiles (µs, lower is better)",
                ("sans-serif", 22),
            )
            .margin(14)
            .x_label_area_size(40)
            .y_label_area_size(330)
            .build_cartesian_2d(0f64..max * 1.2, (0..n).into_segmented())
            .map_err(draw_err)?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .x_desc("µs")
            .y_labels(n)
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|y| match y {
                // The first bar at the top.
                SegmentValue::CenterOf(i) if *i < n => labels[n - 1 - i].clone(),
                _ => String::new(),
            })
            .draw()
            .map_err(draw_err)?;
        chart
            .draw_series(bars.iter().enumerate().map(|(k, (label, v))| {
                let i = n - 1 - k;
                let color = if label.contains(" tidings") {
                    BLUE
                } else {
                    RGBColor(150, 150, 150)
                };
                let mut bar = Rectangle::new(
                    [
                        (0.0, SegmentValue::Exact(i)),
                        (*v, SegmentValue::Exact(i + 1)),
                    ],
                    color.mix(0.75).filled(),
                );
                bar.set_margin(4, 4, 0, 0);
                bar
            }))
            .map_err(draw_err)?;
        chart
            .draw_series(bars.iter().enumerate().map(|(k, (_, v))| {
                let i = n - 1 - k;
                Text::new(
                    format!(" {v:.0}"),
                    (*v, SegmentValue::CenterOf(i)),
                    ("sans-serif", 13),
                )
            }))
            .map_err(draw_err)?;
        root.present().map_err(draw_err)?;
    }
    Ok(svg)
}

/// 1234567 → "1.2M", 83800 → "84k", 512 → "512".
fn human(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.0}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{json, Better, Row, Target};

    /// Rows as the runner makes them, through the same `json` function.
    fn sample() -> String {
        let w1 = |writers: u64, t: f64, base: &'static str, b: f64| {
            Row::vs(
                "W1",
                format!("{writers} writers, 1000 events"),
                "events/s",
                Better::Higher,
                t,
                base,
                b,
                Target::None,
            )
        };
        let pg = Row::vs(
            "W1",
            "PostgreSQL: 16 writers, 16 connections, 100 events",
            "events/s",
            Better::Higher,
            900.0,
            "PG bare INSERT",
            1000.0,
            Target::None,
        )
        .engine("tidings PostgreSQL");
        let w2 = Row::vs(
            "W2",
            "1 writer, 50 appends, p99",
            "µs",
            Better::Lower,
            1153.0,
            "raw fdatasync",
            500.0,
            Target::None,
        );
        let w4 = Row::vs(
            "W4",
            "20 commands one at a time, command → handler p50",
            "µs",
            Better::Lower,
            512.0,
            "raw fdatasync",
            229.0,
            Target::None,
        );
        let load = Row::vs(
            "W1",
            "256 writers, 999936 events (W3/W7 data set)",
            "events/s",
            Better::Higher,
            1.0,
            "SQLite WAL FULL",
            1.0,
            Target::None,
        );
        json(&[
            w1(1, 3282.0, "SQLite WAL FULL", 3797.0),
            w1(16, 21600.0, "SQLite WAL FULL", 20500.0),
            w1(16, 21600.0, "raw sled", 31000.0),
            pg,
            w2,
            w4,
            load,
        ])
    }

    #[test]
    fn every_engine_gets_its_points_and_the_data_set_load_is_left_out() {
        let series = w1_series(&parse(&sample()).unwrap());
        let names: Vec<&str> = series.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            [
                "PG bare INSERT",
                "SQLite WAL FULL",
                "raw sled",
                "tidings",
                "tidings PostgreSQL"
            ]
        );
        assert_eq!(series["tidings"].get(&1), Some(&3282.0));
        assert_eq!(series["tidings"].get(&16), Some(&21600.0));
        assert_eq!(
            series["tidings"].get(&256),
            None,
            "the 1 M-event load is not a writer point"
        );
        assert_eq!(series["SQLite WAL FULL"].len(), 2);
        assert_eq!(series["tidings PostgreSQL"].get(&16), Some(&900.0));
    }

    #[test]
    fn latency_bars_name_the_workload_the_engine_and_the_percentile() {
        let bars = latency_bars(&parse(&sample()).unwrap());
        let labels: Vec<&str> = bars.iter().map(|(l, _)| l.as_str()).collect();
        assert_eq!(
            labels,
            [
                "W2 tidings p99",
                "W2 raw fdatasync p99",
                "W4 tidings command → handler p50",
                "W4 raw fdatasync p50"
            ]
        );
        assert_eq!(bars[1].1, 500.0);
    }

    #[test]
    fn both_charts_are_svg_with_their_series_named() {
        let figures = parse(&sample()).unwrap();
        let w1 = w1_chart(&figures).unwrap();
        assert!(w1.starts_with("<svg"), "{}", &w1[..40.min(w1.len())]);
        for name in [
            "tidings PostgreSQL",
            "SQLite WAL FULL",
            "concurrent writers",
        ] {
            assert!(w1.contains(name), "{name} missing from the W1 chart");
        }
        let lat = latency_chart(&figures).unwrap();
        assert!(lat.contains("W4 tidings command → handler p50"));
        assert!(lat.contains(" 1153"), "the value is written beside its bar");
    }

    #[test]
    fn a_run_without_the_workloads_or_not_json_is_refused() {
        let only_w3 = json(&[Row::alone(
            "W3",
            "x",
            "events/s",
            Better::Higher,
            1.0,
            Target::None,
        )]);
        let figures = parse(&only_w3).unwrap();
        assert!(w1_chart(&figures).unwrap_err().contains("no W1 rows"));
        assert!(latency_chart(&figures)
            .unwrap_err()
            .contains("no W2 or W4 rows"));
        assert!(parse("| W1 | table |")
            .unwrap_err()
            .contains("not the JSON"));
        assert!(parse(r#"[{"case": "x"}]"#)
            .unwrap_err()
            .contains("\"workload\""));
    }

    #[test]
    fn writer_counts_are_read_from_both_case_forms() {
        assert_eq!(writers("1 writer, 10000 events"), Some(1));
        assert_eq!(
            writers("PostgreSQL: 256 writers, 64 connections, 9 events"),
            Some(256)
        );
        assert_eq!(writers("256 writers, 999936 events (W3/W7 data set)"), None);
        assert_eq!(writers("5000 appends"), None);
    }
}
