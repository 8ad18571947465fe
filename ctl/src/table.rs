//! Aligned columns, padded by display width: a process name or a label in
//! CJK or with emoji takes two columns a character, and counting chars
//! would push every later column out of line.

use unicode_width::UnicodeWidthStr;

use crate::out::{paint, Paint};

/// A table under construction: a header, rows of plain cells, and an
/// optional colour per cell (applied after padding).
#[derive(Debug, Default)]
pub struct Table {
    header: Vec<&'static str>,
    rows: Vec<Vec<(String, Option<Paint>)>>,
    /// Columns aligned to the right (numbers).
    right: Vec<usize>,
}

impl Table {
    pub fn new(header: &[&'static str]) -> Self {
        Self {
            header: header.to_vec(),
            ..Self::default()
        }
    }

    pub fn right_aligned(mut self, columns: &[usize]) -> Self {
        self.right = columns.to_vec();
        self
    }

    pub fn row(&mut self, cells: Vec<(String, Option<Paint>)>) {
        self.rows.push(cells);
    }

    pub fn render(&self, colour: bool) -> String {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.width()).collect();
        for r in &self.rows {
            for (w, (cell, _)) in widths.iter_mut().zip(r) {
                *w = (*w).max(cell.width());
            }
        }
        let mut out = String::new();
        let header: Vec<(String, Option<Paint>)> =
            self.header.iter().map(|h| (h.to_string(), None)).collect();
        for r in std::iter::once(&header).chain(&self.rows) {
            let mut line = String::new();
            for (i, ((cell, p), w)) in r.iter().zip(&widths).enumerate() {
                let pad = " ".repeat(w.saturating_sub(cell.width()));
                let painted = p.map_or_else(|| cell.clone(), |p| paint(colour, p, cell));
                if self.right.contains(&i) {
                    line.push_str(&pad);
                    line.push_str(&painted);
                } else {
                    line.push_str(&painted);
                    line.push_str(&pad);
                }
                line.push_str("  ");
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// A plain cell.
pub fn cell(s: impl Into<String>) -> (String, Option<Paint>) {
    (s.into(), None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_line_up_by_display_width() {
        let mut t = Table::new(&["COMM", "N"]).right_aligned(&[1]);
        t.row(vec![cell("日本語"), cell("1")]);
        t.row(vec![cell("curl"), cell("22")]);
        assert_eq!(t.render(false), "COMM     N\n日本語   1\ncurl    22\n");
    }

    #[test]
    fn colour_does_not_count_towards_width() {
        let mut t = Table::new(&["STATE", "X"]);
        t.row(vec![(String::from("failed"), Some(Paint::Red)), cell("x")]);
        assert_eq!(t.render(true), "STATE   X\n\x1b[31mfailed\x1b[0m  x\n");
    }
}
