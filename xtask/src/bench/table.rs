//! A small text table: one header row, string cells, rendered as Markdown (stdout) or CSV (files).
//!
//! Kept apart from the sweeps so the formatting is unit-tested without running any of them.

use std::fmt::Write as _;

/// Rows of string cells under a header.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Table {
    /// Column names.
    pub headers: Vec<String>,
    /// Rows; each has as many cells as there are headers.
    pub rows: Vec<Vec<String>>,
}

impl Table {
    /// An empty table with these column names.
    pub fn new(headers: &[&str]) -> Self {
        Table {
            headers: headers.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    /// Appends a row; a row of the wrong width is an error naming both widths.
    pub fn push(&mut self, row: Vec<String>) -> anyhow::Result<()> {
        anyhow::ensure!(
            row.len() == self.headers.len(),
            "table row has {} cells but the table has {} columns",
            row.len(),
            self.headers.len()
        );
        self.rows.push(row);
        Ok(())
    }

    /// GitHub Markdown; `|` inside a cell is escaped so it cannot split the cell.
    pub fn to_markdown(&self) -> String {
        let cell = |s: &str| s.replace('|', "\\|");
        let line = |cells: &[String]| {
            let inner: Vec<String> = cells.iter().map(|c| cell(c)).collect();
            format!("| {} |\n", inner.join(" | "))
        };
        let mut out = line(&self.headers);
        let rule: Vec<String> = self.headers.iter().map(|_| "---".to_string()).collect();
        out.push_str(&line(&rule));
        for row in &self.rows {
            out.push_str(&line(row));
        }
        out
    }

    /// RFC 4180 CSV: cells holding a comma, quote or newline are quoted, quotes doubled.
    pub fn to_csv(&self) -> String {
        let cell = |s: &str| {
            if s.contains([',', '"', '\n']) {
                format!("\"{}\"", s.replace('"', "\"\""))
            } else {
                s.to_string()
            }
        };
        let mut out = String::new();
        for row in std::iter::once(&self.headers).chain(&self.rows) {
            let cells: Vec<String> = row.iter().map(|c| cell(c)).collect();
            // Writing to a String cannot fail.
            let _ = writeln!(out, "{}", cells.join(","));
        }
        out
    }
}

/// Bytes as GiB with two decimals.
pub fn gib(bytes: f64) -> String {
    format!("{:.2}", bytes / (1u64 << 30) as f64)
}

/// A ratio as a percentage with two decimals.
pub fn pct(ratio: f64) -> String {
    format!("{:.2} %", ratio * 100.0)
}

/// A token count the way the papers write it: `32K`, `2048K`, or the plain number.
pub fn tokens(n: u64) -> String {
    if n % 1024 == 0 {
        format!("{}K", n / 1024)
    } else {
        n.to_string()
    }
}

/// Signed relative error of `ours` against `reference`, as a percentage.
pub fn rel_err(ours: f64, reference: f64) -> String {
    if reference == 0.0 {
        return "n/a".into();
    }
    format!("{:+.1} %", (ours / reference - 1.0) * 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Table {
        let mut t = Table::new(&["kind", "note"]);
        t.push(vec!["1f1b".into(), "a|b".into()]).unwrap();
        t.push(vec!["seq1f1b".into(), "x, \"y\"".into()]).unwrap();
        t
    }

    #[test]
    fn markdown_has_rule_and_escapes_pipes() {
        let md = sample().to_markdown();
        let lines: Vec<&str> = md.lines().collect();
        assert_eq!(lines[0], "| kind | note |");
        assert_eq!(lines[1], "| --- | --- |");
        assert_eq!(lines[2], "| 1f1b | a\\|b |");
        assert_eq!(lines.len(), 4);
    }

    #[test]
    fn csv_quotes_commas_and_quotes() {
        let csv = sample().to_csv();
        assert_eq!(csv, "kind,note\n1f1b,a|b\nseq1f1b,\"x, \"\"y\"\"\"\n");
    }

    #[test]
    fn wrong_width_row_is_an_error() {
        let mut t = Table::new(&["a", "b"]);
        let err = t.push(vec!["only one".into()]).unwrap_err().to_string();
        assert!(
            err.contains("1 cells") && err.contains("2 columns"),
            "{err}"
        );
    }

    #[test]
    fn number_formats() {
        assert_eq!(gib(24.6 * (1u64 << 30) as f64), "24.60");
        assert_eq!(pct(0.0054), "0.54 %");
        assert_eq!(tokens(2048 * 1024), "2048K");
        assert_eq!(tokens(1000), "1000");
        assert_eq!(rel_err(1.1, 1.0), "+10.0 %");
        assert_eq!(rel_err(0.9, 1.0), "-10.0 %");
        assert_eq!(rel_err(1.0, 0.0), "n/a");
    }
}
