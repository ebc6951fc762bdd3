//! What `weir reconcile` found, and how it is shown: a terminal report, or JSON.

use std::fmt::Write;

use serde::Serialize;

/// A value as the report shows it: `None` for SQL NULL, else its text (decimals and
/// timestamps exact, strings as they are, so NULL and '' stay apart).
pub type Cell = Option<String>;

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The pipeline's name.
    pub pipeline: String,
    /// `full` or `checksum`.
    pub mode: String,
    pub source: Side,
    pub target: Side,
    /// Key columns (source names).
    pub key: Vec<String>,
    /// Columns compared besides the key (source names).
    pub compared: Vec<String>,
    pub ignored: Vec<String>,
    /// Source columns the target lacks: their data is missing, so the sides differ.
    pub columns_missing_in_target: Vec<String>,
    /// Target columns the source lacks (not compared).
    pub columns_only_in_target: Vec<String>,
    /// Rows of the source whose key the target lacks.
    pub missing: Rows,
    /// Rows of the target whose key the source lacks.
    pub extra: Rows,
    /// Rows whose key both hold, with columns that differ.
    pub mismatched: Mismatches,
    /// What checksum mode did (ranges, buckets, rows read).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checksum: Option<crate::checksum::Stats>,
    /// The consistent cut, when the comparison left out recent changes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cut: Option<String>,
    /// The source positions the comparison waited for the pipeline to apply.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waited: Option<crate::wait::Waited>,
    /// The named queries' results.
    pub queries: Vec<QueryResult>,
    /// Whether the two sides are equal (exit code 0).
    pub equal: bool,
    pub elapsed_seconds: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Side {
    pub description: String,
    pub rows: u64,
}

/// Rows of one kind: how many, and the first ones found (up to the report's limit).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Rows {
    pub count: u64,
    /// Column names of `rows`.
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Cell>>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Mismatches {
    pub count: u64,
    /// Mismatched rows per column.
    pub by_column: Vec<(String, u64)>,
    pub rows: Vec<Mismatch>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Mismatch {
    pub key: Vec<Cell>,
    pub columns: Vec<Difference>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Difference {
    pub column: String,
    pub source: Cell,
    pub target: Cell,
}

#[derive(Debug, Clone, Serialize)]
pub struct QueryResult {
    pub name: String,
    pub sql: String,
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Cell>>,
    /// The result as a table, as printed.
    #[serde(skip)]
    pub table: String,
}

/// A cell as the terminal shows it: NULL bare, strings quoted only when they could be
/// mistaken (empty, or with spaces at either end).
fn show(cell: &Cell) -> String {
    match cell {
        None => "NULL".into(),
        Some(text) if text.is_empty() || text.trim() != text || text == "NULL" => {
            format!("{text:?}")
        }
        Some(text) => text.clone(),
    }
}

fn key_text(key: &[String], values: &[Cell]) -> String {
    key.iter()
        .zip(values)
        .map(|(k, v)| format!("{k}={}", show(v)))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Report {
    /// The report for a terminal.
    pub fn text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "reconcile {}", self.pipeline);
        let _ = writeln!(
            out,
            "  source: {} ({} rows)",
            self.source.description, self.source.rows
        );
        let _ = writeln!(
            out,
            "  target: {} ({} rows)",
            self.target.description, self.target.rows
        );
        let _ = writeln!(out, "  key: {}", self.key.join(", "));
        if let Some(cut) = &self.cut {
            let _ = writeln!(out, "  cut: {cut}");
        }
        if let Some(waited) = &self.waited {
            let positions: Vec<String> = waited
                .positions
                .iter()
                .map(|(stream, position)| format!("{stream} @ {position}"))
                .collect();
            let _ = writeln!(
                out,
                "  waited {:.1} s for the pipeline to apply its source up to: {}",
                waited.seconds,
                positions.join(", ")
            );
        }
        if let Some(stats) = &self.checksum {
            let _ = writeln!(
                out,
                "  checksum mode: {} buckets of {} keys in {} ranges ({} resumed), {} \
                 differing; {} leaves of at most 32 keys read and compared",
                stats.buckets,
                stats.bucket_keys,
                stats.ranges,
                stats.ranges_resumed,
                stats.buckets_differing,
                stats.leaves
            );
            if !stats.hashed_as_text.is_empty() {
                let _ = writeln!(
                    out,
                    "  hashed as text (types differ between the sides, or have no hash \
                     function): {}",
                    stats.hashed_as_text.join(", ")
                );
            }
        }
        let _ = writeln!(out, "  compared: {}", list(&self.compared));
        if !self.ignored.is_empty() {
            let _ = writeln!(out, "  ignored: {}", self.ignored.join(", "));
        }
        if !self.columns_only_in_target.is_empty() {
            let _ = writeln!(
                out,
                "  only in target (not compared): {}",
                self.columns_only_in_target.join(", ")
            );
        }
        out.push('\n');
        let by_column = self
            .mismatched
            .by_column
            .iter()
            .map(|(c, n)| format!("{c} {n}"))
            .collect::<Vec<_>>()
            .join(", ");
        let _ = writeln!(
            out,
            "  {:<28}{:>12}",
            "missing in target", self.missing.count
        );
        let _ = writeln!(out, "  {:<28}{:>12}", "extra in target", self.extra.count);
        let _ = writeln!(
            out,
            "  {:<28}{:>12}{}",
            "mismatched rows",
            self.mismatched.count,
            if by_column.is_empty() {
                String::new()
            } else {
                format!("  ({by_column})")
            }
        );
        if !self.columns_missing_in_target.is_empty() {
            let _ = writeln!(
                out,
                "  {:<28}{:>12}  ({})",
                "columns missing in target",
                self.columns_missing_in_target.len(),
                self.columns_missing_in_target.join(", ")
            );
        }
        for (title, rows) in [
            ("missing in target", &self.missing),
            ("extra in target", &self.extra),
        ] {
            if rows.rows.is_empty() {
                continue;
            }
            let _ = writeln!(
                out,
                "\n{title} (first {} of {}):",
                rows.rows.len(),
                rows.count
            );
            for row in &rows.rows {
                let cells: Vec<String> = rows
                    .columns
                    .iter()
                    .zip(row)
                    .map(|(c, v)| format!("{c}={}", show(v)))
                    .collect();
                let _ = writeln!(out, "  {}", cells.join("  "));
            }
        }
        if !self.mismatched.rows.is_empty() {
            let _ = writeln!(
                out,
                "\nmismatched (first {} of {}):",
                self.mismatched.rows.len(),
                self.mismatched.count
            );
            for row in &self.mismatched.rows {
                let _ = writeln!(out, "  {}", key_text(&self.key, &row.key));
                for d in &row.columns {
                    let _ = writeln!(
                        out,
                        "    {}: source {}, target {}",
                        d.column,
                        show(&d.source),
                        show(&d.target)
                    );
                }
            }
        }
        for query in &self.queries {
            let _ = writeln!(out, "\nquery {}:\n{}", query.name, query.table);
        }
        let _ = writeln!(
            out,
            "\n{} ({:.2} s)",
            if self.equal {
                "EQUAL: the target holds the source's rows"
            } else {
                "DIFFERENT: see above"
            },
            self.elapsed_seconds
        );
        out
    }
}

fn list(columns: &[String]) -> String {
    if columns.is_empty() {
        "(key only)".into()
    } else {
        columns.join(", ")
    }
}
