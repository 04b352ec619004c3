//! The result table: one row per (workload, case, baseline), with the ratio and the target.

use std::fmt::Write as _;

/// How a figure compares: which way is better.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Better {
    /// Throughputs: more is better.
    Higher,
    /// Latencies, memory, bytes: less is better.
    Lower,
}

/// A target on the ratio tidings ÷ baseline (or on the tidings figure itself).
#[derive(Clone, Copy, Debug)]
pub enum Target {
    /// No target: the ratio is shown for information.
    None,
    /// ratio ≥ value.
    RatioAtLeast(f64),
    /// ratio ≤ value.
    RatioAtMost(f64),
    /// the tidings figure itself ≤ value (in the row's unit).
    ValueAtMost(f64),
    /// the tidings figure itself ≥ value (in the row's unit).
    ValueAtLeast(f64),
}

/// One line of the table.
#[derive(Clone, Debug)]
pub struct Row {
    /// W1..W7.
    pub workload: &'static str,
    /// The engine behind tidings' figure: "tidings" (the embedded store) unless the row says
    /// otherwise ("tidings PostgreSQL").
    pub engine: &'static str,
    /// What was run, e.g. "256 writers".
    pub case: String,
    /// The unit of both figures.
    pub unit: &'static str,
    /// Whether a larger figure is better.
    pub better: Better,
    /// tidings' figure.
    pub tidings: f64,
    /// The baseline's name ("" when the row has no baseline).
    pub baseline: &'static str,
    /// The baseline's figure (NaN when there is none).
    pub base: f64,
    /// The target, if any.
    pub target: Target,
    /// The median of the per-round ratios, when both sides ran in the same rounds: what
    /// [`ratio`](Self::ratio) reports instead of the ratio of the two medians (a round's load
    /// falls on both sides of its ratio, so the paired figure shakes less on a busy machine).
    pub paired: Option<f64>,
    /// The lowest and highest per-round ratio, when there were several rounds.
    pub paired_range: Option<(f64, f64)>,
    /// The 1-minute load average after each round, when the row has rounds.
    pub round_loads: Vec<f64>,
}

impl Row {
    /// A row comparing tidings with a baseline (one argument per column of the table).
    #[allow(clippy::too_many_arguments)]
    pub fn vs(
        workload: &'static str,
        case: impl Into<String>,
        unit: &'static str,
        better: Better,
        tidings: f64,
        baseline: &'static str,
        base: f64,
        target: Target,
    ) -> Row {
        Row {
            workload,
            engine: "tidings",
            case: case.into(),
            unit,
            better,
            tidings,
            baseline,
            base,
            target,
            paired: None,
            paired_range: None,
            round_loads: Vec::new(),
        }
    }

    /// The same row with its ratio taken as `ratio`, the median of per-round ratios.
    pub fn paired(mut self, ratio: f64) -> Row {
        self.paired = Some(ratio);
        self
    }

    /// The same row with the per-round ratios' range and the load after each round.
    pub fn rounds(mut self, range: Option<(f64, f64)>, loads: Vec<f64>) -> Row {
        self.paired_range = range;
        self.round_loads = loads;
        self
    }

    /// The same row with tidings' figure measured on `engine` (e.g. "tidings PostgreSQL").
    pub fn engine(mut self, engine: &'static str) -> Row {
        self.engine = engine;
        self
    }

    /// A row with tidings' figure alone (and perhaps a target on it).
    pub fn alone(
        workload: &'static str,
        case: impl Into<String>,
        unit: &'static str,
        better: Better,
        tidings: f64,
        target: Target,
    ) -> Row {
        Row::vs(workload, case, unit, better, tidings, "", f64::NAN, target)
    }

    /// tidings ÷ baseline: the median of the per-round ratios when the row has them, else the
    /// ratio of the two figures.
    pub fn ratio(&self) -> f64 {
        self.paired.unwrap_or(self.tidings / self.base)
    }

    /// Whether the target is met (`None` when there is no target).
    pub fn met(&self) -> Option<bool> {
        match self.target {
            Target::None => None,
            Target::RatioAtLeast(t) => Some(self.ratio() >= t),
            Target::RatioAtMost(t) => Some(self.ratio() <= t),
            Target::ValueAtMost(t) => Some(self.tidings <= t),
            Target::ValueAtLeast(t) => Some(self.tidings >= t),
        }
    }

    fn target_text(&self) -> String {
        match self.target {
            Target::None => String::new(),
            Target::RatioAtLeast(t) => format!("ratio >= {t}"),
            Target::RatioAtMost(t) => format!("ratio <= {t}"),
            Target::ValueAtMost(t) => format!("<= {} {}", fmt_num(t), self.unit),
            Target::ValueAtLeast(t) => format!(">= {} {}", fmt_num(t), self.unit),
        }
    }
}

/// A figure with few significant digits and a thousands separator where it helps.
pub fn fmt_num(x: f64) -> String {
    if x.is_nan() {
        return "-".into();
    }
    let a = x.abs();
    if a >= 100_000.0 {
        format!("{:.0}k", x / 1000.0)
    } else if a >= 10_000.0 {
        format!("{:.1}k", x / 1000.0)
    } else if a >= 100.0 {
        format!("{x:.0}")
    } else if a >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

/// The table as aligned text.
pub fn table(rows: &[Row]) -> String {
    let header = [
        "workload",
        "case",
        "unit",
        "tidings",
        "baseline",
        "baseline fig",
        "ratio",
        "target",
        "met",
    ];
    let cells: Vec<[String; 9]> = rows
        .iter()
        .map(|r| {
            [
                r.workload.to_string(),
                r.case.clone(),
                format!(
                    "{}{}",
                    r.unit,
                    if r.better == Better::Higher {
                        " ↑"
                    } else {
                        " ↓"
                    }
                ),
                fmt_num(r.tidings),
                if r.baseline.is_empty() {
                    "-".into()
                } else {
                    r.baseline.to_string()
                },
                fmt_num(r.base),
                match r.paired_range {
                    _ if r.base.is_nan() => "-".into(),
                    Some((lo, hi)) => format!("{:.2} ({lo:.2}–{hi:.2})", r.ratio()),
                    None => format!("{:.2}", r.ratio()),
                },
                r.target_text(),
                match r.met() {
                    None => String::new(),
                    Some(true) => "yes".into(),
                    Some(false) => "NO".into(),
                },
            ]
        })
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, cols: &[String]| {
        out.push('|');
        for (c, w) in cols.iter().zip(&widths) {
            let pad = w - c.chars().count();
            let _ = write!(out, " {c}{} |", " ".repeat(pad));
        }
        out.push('\n');
    };
    line(&mut out, &header.map(String::from));
    out.push('|');
    for w in &widths {
        let _ = write!(out, "{}|", "-".repeat(w + 2));
    }
    out.push('\n');
    for row in &cells {
        line(&mut out, row);
    }
    out
}

/// The rows as a JSON array (for scripts and profiling).
pub fn json(rows: &[Row]) -> String {
    let items: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| {
            let num = |x: f64| if x.is_finite() { serde_json::json!(x) } else { serde_json::Value::Null };
            serde_json::json!({
                "workload": r.workload,
                "engine": r.engine,
                "case": r.case,
                "unit": r.unit,
                "higher_is_better": r.better == Better::Higher,
                "tidings": num(r.tidings),
                "baseline": if r.baseline.is_empty() { serde_json::Value::Null } else { r.baseline.into() },
                "baseline_value": num(r.base),
                "ratio": num(r.ratio()),
                "ratio_min": r.paired_range.map_or(serde_json::Value::Null, |(lo, _)| num(lo)),
                "ratio_max": r.paired_range.map_or(serde_json::Value::Null, |(_, hi)| num(hi)),
                "round_loads": r.round_loads,
                "target": r.target_text(),
                "met": r.met(),
            })
        })
        .collect();
    serde_json::to_string_pretty(&items).expect("rows serialize")
}

/// The median of `xs` (which must not be empty).
pub fn median(xs: &mut [f64]) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    let mid = xs.len() / 2;
    if xs.len().is_multiple_of(2) {
        (xs[mid - 1] + xs[mid]) / 2.0
    } else {
        xs[mid]
    }
}

/// The `q`-quantile (0..=1) of sorted samples, nearest rank.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_use_the_nearest_rank() {
        let xs: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&xs, 0.5), 50.0);
        assert_eq!(quantile(&xs, 0.99), 99.0);
        assert_eq!(quantile(&xs, 1.0), 100.0);
        assert_eq!(quantile(&[7.0], 0.99), 7.0);
        assert!(quantile(&[], 0.5).is_nan());
    }

    #[test]
    fn the_median_of_an_even_count_is_the_mean_of_the_middle_two() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [2.0, 1.0]), 1.5);
    }

    #[test]
    fn a_paired_ratio_replaces_the_ratio_of_the_medians() {
        let r = Row::vs(
            "W1",
            "x",
            "ev/s",
            Better::Higher,
            3.0,
            "b",
            4.0,
            Target::RatioAtLeast(0.8),
        );
        assert_eq!(r.met(), Some(false));
        let r = r.paired(0.9);
        assert_eq!(r.ratio(), 0.9);
        assert_eq!(r.met(), Some(true));
        assert!(table(std::slice::from_ref(&r)).contains("0.90"));
        let r = r.rounds(Some((0.75, 0.92)), vec![1.5, 2.25]);
        assert!(table(std::slice::from_ref(&r)).contains("0.90 (0.75–0.92)"));
        let j = json(&[r]);
        assert!(
            j.contains("\"ratio_min\": 0.75") && j.contains("\"ratio_max\": 0.92"),
            "{j}"
        );
        assert!(j.contains("2.25"), "{j}");
    }

    #[test]
    fn targets_compare_the_ratio_in_the_stated_direction() {
        let r = Row::vs(
            "W1",
            "x",
            "ev/s",
            Better::Higher,
            3.0,
            "b",
            2.0,
            Target::RatioAtLeast(2.0),
        );
        assert_eq!(r.met(), Some(false));
        let r = Row::vs(
            "W2",
            "x",
            "µs",
            Better::Lower,
            3.0,
            "b",
            2.0,
            Target::RatioAtMost(2.0),
        );
        assert_eq!(r.met(), Some(true));
        let r = Row::alone(
            "W6",
            "x",
            "MB",
            Better::Lower,
            120.0,
            Target::ValueAtMost(100.0),
        );
        assert_eq!(r.met(), Some(false));
        assert!(table(std::slice::from_ref(&r)).contains("NO"));
        assert!(json(&[r]).contains("\"met\": false"));
    }
}
