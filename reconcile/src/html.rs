//! The HTML report (`weir reconcile --html FILE`): one self-contained page — the summary,
//! a bar chart of the differences (inline SVG, no script, no outside resources), the
//! first rows of each kind, and the named queries' results. Every value is escaped.

use std::fmt::Write;

use crate::report::{Cell, Report};

/// `text` with HTML's special characters escaped.
pub(crate) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A cell: NULL set apart from text (so NULL and '' cannot be confused).
fn cell(value: &Cell) -> String {
    match value {
        None => "<td class=\"null\">NULL</td>".into(),
        Some(text) if text.is_empty() => "<td class=\"empty\">''</td>".into(),
        Some(text) => format!("<td>{}</td>", escape(text)),
    }
}

fn table(out: &mut String, columns: &[String], rows: &[Vec<Cell>]) {
    out.push_str("<table><tr>");
    for column in columns {
        let _ = write!(out, "<th>{}</th>", escape(column));
    }
    out.push_str("</tr>");
    for row in rows {
        out.push_str("<tr>");
        for value in row {
            out.push_str(&cell(value));
        }
        out.push_str("</tr>");
    }
    out.push_str("</table>");
}

/// Horizontal bars, one per `(label, count)`, scaled to the largest.
fn chart(bars: &[(String, u64)]) -> String {
    let max = bars.iter().map(|(_, n)| *n).max().unwrap_or(0).max(1);
    let (row, label_width, bar_width) = (26, 220, 420);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{}\" role=\"img\" \
         aria-label=\"differences\">",
        label_width + bar_width + 80,
        row * bars.len() + 4
    );
    for (i, (label, count)) in bars.iter().enumerate() {
        let y = i * row + 2;
        let width = (*count as f64 / max as f64 * bar_width as f64).round() as u64;
        let _ = write!(
            svg,
            "<text x=\"0\" y=\"{}\" class=\"label\">{}</text>\
             <rect x=\"{label_width}\" y=\"{y}\" width=\"{width}\" height=\"{}\" class=\"{}\"/>\
             <text x=\"{}\" y=\"{}\">{count}</text>",
            y + 17,
            escape(label),
            row - 6,
            if *count == 0 { "zero" } else { "bar" },
            label_width + width + 6,
            y + 17,
        );
    }
    svg.push_str("</svg>");
    svg
}

/// The page's head and style, up to the opening `<body>`.
pub(crate) fn head(out: &mut String, title: &str) {
    let _ = write!(
        out,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>{}</title><style>\
         body{{font-family:system-ui,sans-serif;margin:2em;color:#222}}\
         table{{border-collapse:collapse;margin:.5em 0 1.5em}}\
         td,th{{border:1px solid #ccc;padding:.2em .5em;text-align:left;white-space:pre-wrap}}\
         th{{background:#f3f3f3}} .null{{color:#999;font-style:italic}}\
         .empty{{color:#a60}} .verdict{{font-size:1.4em;font-weight:bold}}\
         .equal{{color:#070}} .different{{color:#b00}} .error{{color:#b60}} .bar{{fill:#c44}} .zero{{fill:#ccc}}\
         svg text{{font-size:13px}}</style></head><body>",
        escape(title)
    );
}

impl Report {
    /// The report as one HTML page.
    pub fn html(&self) -> String {
        let mut out = String::new();
        let verdict = if self.equal { "EQUAL" } else { "DIFFERENT" };
        head(
            &mut out,
            &format!("weir reconcile {}: {verdict}", self.pipeline),
        );
        let _ = write!(
            out,
            "<h1>weir reconcile {name}</h1><p class=\"verdict {class}\">{verdict}</p>",
            name = escape(&self.pipeline),
            class = verdict.to_ascii_lowercase(),
        );
        self.body(&mut out);
        out.push_str("</body></html>\n");
        out
    }

    /// The page's content after its verdict: the summary, the chart, the rows.
    pub(crate) fn body(&self, out: &mut String) {
        out.push_str("<table>");
        for (label, value) in [
            (
                "source",
                format!("{} ({} rows)", self.source.description, self.source.rows),
            ),
            (
                "target",
                format!("{} ({} rows)", self.target.description, self.target.rows),
            ),
            ("key", self.key.join(", ")),
            ("compared", self.compared.join(", ")),
            ("ignored", self.ignored.join(", ")),
            (
                "columns missing in target",
                self.columns_missing_in_target.join(", "),
            ),
            (
                "only in target (not compared)",
                self.columns_only_in_target.join(", "),
            ),
            ("time", format!("{:.2} s", self.elapsed_seconds)),
        ] {
            let _ = write!(
                out,
                "<tr><th>{}</th><td>{}</td></tr>",
                escape(label),
                escape(&value)
            );
        }
        out.push_str("</table><h2>Differences</h2>");
        let mut bars = vec![
            ("missing in target".to_string(), self.missing.count),
            ("extra in target".to_string(), self.extra.count),
            ("mismatched rows".to_string(), self.mismatched.count),
        ];
        bars.extend(
            self.mismatched
                .by_column
                .iter()
                .map(|(column, n)| (format!("  column {column}"), *n)),
        );
        out.push_str(&chart(&bars));
        for (title, rows) in [
            ("Missing in target", &self.missing),
            ("Extra in target", &self.extra),
        ] {
            if rows.rows.is_empty() {
                continue;
            }
            let _ = write!(
                out,
                "<h2>{title} (first {} of {})</h2>",
                rows.rows.len(),
                rows.count
            );
            table(out, &rows.columns, &rows.rows);
        }
        if !self.mismatched.rows.is_empty() {
            let _ = write!(
                out,
                "<h2>Mismatched (first {} of {})</h2>",
                self.mismatched.rows.len(),
                self.mismatched.count
            );
            let mut columns = self.key.clone();
            columns.extend(["column", "source", "target"].map(String::from));
            let rows: Vec<Vec<Cell>> = self
                .mismatched
                .rows
                .iter()
                .flat_map(|m| {
                    m.columns.iter().map(|d| {
                        let mut row = m.key.clone();
                        row.extend([Some(d.column.clone()), d.source.clone(), d.target.clone()]);
                        row
                    })
                })
                .collect();
            table(out, &columns, &rows);
        }
        for query in &self.queries {
            let _ = write!(
                out,
                "<h2>Query {}</h2><pre>{}</pre>",
                escape(&query.name),
                escape(&query.sql)
            );
            table(out, &query.columns, &query.rows);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{Difference, Mismatch, Mismatches, QueryResult, Rows, Side};

    #[test]
    fn the_page_escapes_values_and_charts_the_counts() {
        let report = Report {
            pipeline: "orders<1>".into(),
            mode: "full".into(),
            source: Side {
                description: "parquet s/".into(),
                rows: 3,
            },
            target: Side {
                description: "sqlite t.db".into(),
                rows: 2,
            },
            key: vec!["id".into()],
            compared: vec!["name".into()],
            ignored: vec![],
            columns_missing_in_target: vec![],
            columns_only_in_target: vec![],
            missing: Rows {
                count: 1,
                columns: vec!["id".into(), "name".into()],
                rows: vec![vec![Some("3".into()), Some("<script>x</script>".into())]],
            },
            extra: Rows::default(),
            mismatched: Mismatches {
                count: 1,
                by_column: vec![("name".into(), 1)],
                rows: vec![Mismatch {
                    key: vec![Some("1".into())],
                    columns: vec![Difference {
                        column: "name".into(),
                        source: None,
                        target: Some(String::new()),
                    }],
                }],
            },
            checksum: None,
            cut: None,
            waited: None,
            queries: vec![QueryResult {
                name: "n".into(),
                sql: "SELECT 1 < 2".into(),
                columns: vec!["x".into()],
                rows: vec![vec![Some("true".into())]],
                table: String::new(),
            }],
            equal: false,
            elapsed_seconds: 0.5,
        };
        let page = report.html();
        assert!(!page.contains("<script>"), "values are escaped");
        assert!(page.contains("&lt;script&gt;x&lt;/script&gt;"));
        assert!(page.contains("orders&lt;1&gt;"));
        assert!(page.contains("SELECT 1 &lt; 2"));
        assert!(page.contains("<td class=\"null\">NULL</td><td class=\"empty\">''</td>"));
        // One bar per count: missing, extra, mismatched, and the `name` column.
        assert_eq!(page.matches("<rect").count(), 4);
        assert!(page.contains("DIFFERENT"));
    }
}
