//! Result rows: the printed table and the JSON array.

use std::path::Path;

use serde::Serialize;

use crate::stats::Measured;

/// One line of the results. Fields that do not apply to a row are `None`
/// (`null` in JSON, `-` in the table).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Row {
    /// The workload (`append`, ...).
    pub workload: String,
    /// The variant within the workload (`disjoint`, `contended`, `raw_insert`, ...).
    pub variant: String,
    /// Concurrent callers (or connections, for the baseline).
    pub concurrency: usize,
    /// Completed operations per second (decisions, inserts...).
    pub ops_per_s: f64,
    /// Events written per second.
    pub events_per_s: Option<f64>,
    /// Failed attempts over all attempts (0..=1).
    pub conflict_rate: Option<f64>,
    /// Median latency of one operation, in milliseconds.
    pub p50_ms: Option<f64>,
    /// 99th percentile latency of one operation, in milliseconds.
    pub p99_ms: Option<f64>,
    /// The ops/s of the row this one is compared with.
    pub baseline_ops_per_s: Option<f64>,
    /// `ops_per_s / baseline_ops_per_s`.
    pub ratio: Option<f64>,
    /// Decisions served by the decision maker's cache of states, over all
    /// decisions (0..=1).
    pub cache_hit_rate: Option<f64>,
    /// The cache's approximate memory at the end of the row, in KiB.
    pub cache_kib: Option<f64>,
}

impl Row {
    /// The row of `m`: its rates, conflict rate and latency percentiles.
    pub fn measured(workload: &str, variant: &str, concurrency: usize, m: &Measured) -> Row {
        Row {
            workload: workload.to_string(),
            variant: variant.to_string(),
            concurrency,
            ops_per_s: m.ops_per_s(),
            events_per_s: Some(m.events_per_s()),
            conflict_rate: m.conflict_rate(),
            p50_ms: m.percentile_ms(0.50),
            p99_ms: m.percentile_ms(0.99),
            baseline_ops_per_s: None,
            ratio: None,
            cache_hit_rate: None,
            cache_kib: None,
        }
    }

    /// Records the decision maker's cache figures.
    pub fn record_cache(&mut self, stats: Option<dcb_core::CacheStats>) {
        if let Some(stats) = stats {
            let lookups = stats.hits + stats.misses;
            self.cache_hit_rate = (lookups > 0).then(|| stats.hits as f64 / lookups as f64);
            self.cache_kib = Some(stats.approx_bytes as f64 / 1024.0);
        }
    }

    /// Compares this row with a baseline's ops/s.
    pub fn compare_with(&mut self, baseline_ops_per_s: f64) {
        self.baseline_ops_per_s = Some(baseline_ops_per_s);
        self.ratio = (baseline_ops_per_s > 0.0).then(|| self.ops_per_s / baseline_ops_per_s);
    }
}

fn opt(v: Option<f64>, f: impl Fn(f64) -> String) -> String {
    v.map(f).unwrap_or_else(|| "-".to_string())
}

/// The rows as a fixed-width text table.
pub fn table(rows: &[Row]) -> String {
    let header = [
        "workload",
        "variant",
        "conc",
        "ops/s",
        "events/s",
        "conflict%",
        "p50 ms",
        "p99 ms",
        "baseline",
        "ratio",
        "hit%",
        "cache KiB",
    ];
    let cells: Vec<[String; 12]> = rows
        .iter()
        .map(|r| {
            [
                r.workload.clone(),
                r.variant.clone(),
                r.concurrency.to_string(),
                format!("{:.0}", r.ops_per_s),
                opt(r.events_per_s, |v| format!("{v:.0}")),
                opt(r.conflict_rate, |v| format!("{:.1}", v * 100.0)),
                opt(r.p50_ms, |v| format!("{v:.2}")),
                opt(r.p99_ms, |v| format!("{v:.2}")),
                opt(r.baseline_ops_per_s, |v| format!("{v:.0}")),
                opt(r.ratio, |v| format!("{v:.2}")),
                opt(r.cache_hit_rate, |v| format!("{:.1}", v * 100.0)),
                opt(r.cache_kib, |v| format!("{v:.0}")),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.len());
        }
    }
    let mut out = String::new();
    let mut line = |cols: &[String]| {
        let mut s = String::new();
        for (i, (c, w)) in cols.iter().zip(widths).enumerate() {
            if i > 0 {
                s.push_str("  ");
            }
            // Text columns left, numbers right.
            if i < 2 {
                s.push_str(&format!("{c:<w$}"));
            } else {
                s.push_str(&format!("{c:>w$}"));
            }
        }
        out.push_str(s.trim_end());
        out.push('\n');
    };
    line(&header.map(String::from));
    line(&widths.map(|w| "-".repeat(w)));
    for row in &cells {
        line(row);
    }
    out
}

/// Writes the rows to `path` as a pretty-printed JSON array.
///
/// # Errors
/// The file cannot be written.
pub fn write_json(path: &Path, rows: &[Row]) -> Result<(), String> {
    let text = serde_json::to_string_pretty(rows).map_err(|e| e.to_string())?;
    std::fs::write(path, text + "\n").map_err(|e| format!("cannot write {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row() -> Row {
        Row {
            workload: "append".into(),
            variant: "disjoint".into(),
            concurrency: 8,
            ops_per_s: 1500.0,
            events_per_s: Some(2000.0),
            conflict_rate: Some(0.0),
            p50_ms: Some(4.2),
            p99_ms: Some(12.5),
            baseline_ops_per_s: None,
            ratio: None,
            cache_hit_rate: None,
            cache_kib: None,
        }
    }

    #[test]
    fn json_has_every_field_with_nulls() {
        let mut r = row();
        r.compare_with(3000.0);
        let v = serde_json::to_value([
            r,
            Row {
                events_per_s: None,
                ..row()
            },
        ])
        .unwrap();
        assert_eq!(v[0]["ratio"], 0.5);
        assert_eq!(v[0]["baseline_ops_per_s"], 3000.0);
        assert!(v[1]["events_per_s"].is_null());
        assert!(v[1]["ratio"].is_null());
        let keys: Vec<_> = v[0].as_object().unwrap().keys().cloned().collect();
        assert_eq!(keys.len(), 12);
    }

    #[test]
    fn table_aligns_and_dashes_missing_values() {
        let t = table(&[row()]);
        let lines: Vec<_> = t.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("workload"));
        assert!(lines[2].contains("1500"));
        assert!(lines[2].trim_end().ends_with('-'));
    }
}
