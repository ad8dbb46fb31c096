//! Plain-text tables for the terminal: columns padded to their widest
//! cell, numbers right-aligned.

use std::fmt::Write as _;

/// A table being filled.
pub struct Table {
    headers: Vec<&'static str>,
    right: Vec<bool>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headers; a header starting with `>` is a
    /// right-aligned (numeric) column (the `>` is not shown).
    pub fn new(headers: &[&'static str]) -> Table {
        Table {
            right: headers.iter().map(|h| h.starts_with('>')).collect(),
            headers: headers.iter().map(|h| h.trim_start_matches('>')).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row (one cell per column).
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The table as text, one line per row, ending with a newline.
    pub fn render(&self) -> String {
        let width = |text: &str| text.chars().count();
        let mut widths: Vec<usize> = self.headers.iter().map(|h| width(h)).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate() {
                if let Some(w) = widths.get_mut(i) {
                    *w = (*w).max(width(cell));
                }
            }
        }
        let mut out = String::new();
        let mut line = |cells: Vec<&str>| {
            let mut text = String::new();
            for (i, cell) in cells.iter().enumerate() {
                let pad = widths[i].saturating_sub(width(cell));
                if i > 0 {
                    text.push_str("  ");
                }
                if self.right[i] {
                    let _ = write!(text, "{}{cell}", " ".repeat(pad));
                } else if i + 1 < cells.len() {
                    let _ = write!(text, "{cell}{}", " ".repeat(pad));
                } else {
                    text.push_str(cell);
                }
            }
            out.push_str(text.trim_end());
            out.push('\n');
        };
        line(self.headers.to_vec());
        for row in &self.rows {
            line(row.iter().map(String::as_str).collect());
        }
        out
    }
}

/// `text` on one line, cut to `max` characters.
pub fn cell(text: &str, max: usize) -> String {
    let line = text.replace(['\n', '\r', '\t'], " ");
    match line.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &line[..at]),
        None => line,
    }
}

/// A duration in seconds, short.
pub fn secs(seconds: Option<f64>) -> String {
    match seconds {
        None => "-".to_owned(),
        Some(s) if s < 10.0 => format!("{s:.1}s"),
        Some(s) if s < 120.0 => format!("{s:.0}s"),
        Some(s) if s < 7200.0 => format!("{:.0}m{:02.0}s", (s / 60.0).floor(), s % 60.0),
        Some(s) => format!(
            "{:.0}h{:02.0}m",
            (s / 3600.0).floor(),
            (s % 3600.0 / 60.0).floor()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_line_up() {
        let mut table = Table::new(&["name", ">lag"]);
        table.row(vec!["cart-items-db".into(), "0".into()]);
        table.row(vec!["x".into(), "1234".into()]);
        assert_eq!(
            table.render(),
            "name            lag\ncart-items-db     0\nx              1234\n"
        );
    }

    #[test]
    fn cells_stay_on_one_line() {
        assert_eq!(cell("a\nb", 10), "a b");
        assert_eq!(cell("abcdef", 3), "abc…");
        assert_eq!(secs(Some(125.0)), "2m05s");
        assert_eq!(secs(None), "-");
    }
}
