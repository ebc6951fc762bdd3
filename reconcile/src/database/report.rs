//! The report of a many-table comparison: one line per table, then the detail of each
//! table that differs (the one-table report), as terminal text, JSON or one HTML page.

use std::fmt::Write;

use serde::Serialize;

use crate::html::{escape, head};
use crate::report::Report;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TableStatus {
    Equal,
    Different,
    /// The target has no such table.
    MissingInTarget,
    /// The pair could not be compared (no key, a failed read).
    Error,
}

impl TableStatus {
    fn word(self) -> &'static str {
        match self {
            TableStatus::Equal => "EQUAL",
            TableStatus::Different => "DIFFERENT",
            TableStatus::MissingInTarget => "NO TABLE",
            TableStatus::Error => "ERROR",
        }
    }
}

/// One table pair's result.
#[derive(Debug, Clone, Serialize)]
pub struct TableLine {
    /// The target table.
    pub table: String,
    /// The source tables routed to it.
    pub sources: Vec<String>,
    pub status: TableStatus,
    pub source_rows: Option<u64>,
    pub target_rows: Option<u64>,
    pub missing: u64,
    pub extra: u64,
    pub mismatched: u64,
    /// `full` or `checksum`, as this table was compared.
    pub mode: Option<String>,
    pub seconds: f64,
    /// Why it could not be compared, or how it was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl TableLine {
    fn empty(table: &str, sources: &[String], status: TableStatus) -> TableLine {
        TableLine {
            table: table.to_string(),
            sources: sources.to_vec(),
            status,
            source_rows: None,
            target_rows: None,
            missing: 0,
            extra: 0,
            mismatched: 0,
            mode: None,
            seconds: 0.0,
            note: None,
        }
    }

    pub(super) fn failed(table: &str, sources: &[String], error: String) -> TableLine {
        TableLine {
            note: Some(error),
            ..TableLine::empty(table, sources, TableStatus::Error)
        }
    }

    pub(super) fn absent(table: &str, sources: &[String]) -> TableLine {
        TableLine {
            note: Some(format!(
                "the target has no table `{table}`; `weir run` with `create: true` makes it"
            )),
            ..TableLine::empty(table, sources, TableStatus::MissingInTarget)
        }
    }

    pub(super) fn compared(
        table: &str,
        sources: &[String],
        report: &Report,
        seconds: f64,
        note: Option<String>,
    ) -> TableLine {
        let status = match report.equal {
            true => TableStatus::Equal,
            false => TableStatus::Different,
        };
        TableLine {
            source_rows: Some(report.source.rows),
            target_rows: Some(report.target.rows),
            missing: report.missing.count,
            extra: report.extra.count,
            mismatched: report.mismatched.count,
            mode: Some(report.mode.clone()),
            seconds,
            note,
            ..TableLine::empty(table, sources, status)
        }
    }
}

/// A differing table's full report.
#[derive(Debug, Clone, Serialize)]
pub struct TableDetail {
    pub table: String,
    pub report: Report,
}

#[derive(Debug, Clone, Serialize)]
pub struct TablesReport {
    pub pipeline: String,
    /// The configured mode (a table whose key checksum mode cannot cut is compared in
    /// full; its line says so).
    pub mode: String,
    pub source: String,
    pub target: String,
    pub tables: Vec<TableLine>,
    /// Source tables the pipeline does not select (not compared).
    pub skipped: Vec<String>,
    /// Each table that differs, in full.
    pub differences: Vec<TableDetail>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waited: Option<crate::wait::Waited>,
    /// Every table compared and equal (exit code 0).
    pub equal: bool,
    /// Tables that differ (missing in the target included).
    pub differing: usize,
    /// Tables that could not be compared.
    pub errors: usize,
    pub elapsed_seconds: f64,
}

impl TablesReport {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        pipeline: String,
        mode: &str,
        source: String,
        target: String,
        tables: Vec<TableLine>,
        skipped: Vec<String>,
        differences: Vec<(String, Report)>,
        waited: Option<crate::wait::Waited>,
        elapsed_seconds: f64,
    ) -> TablesReport {
        let count =
            |wanted: &[TableStatus]| tables.iter().filter(|t| wanted.contains(&t.status)).count();
        let differing = count(&[TableStatus::Different, TableStatus::MissingInTarget]);
        let errors = count(&[TableStatus::Error]);
        TablesReport {
            pipeline,
            mode: mode.to_string(),
            source,
            target,
            equal: differing == 0 && errors == 0,
            differing,
            errors,
            tables,
            skipped,
            differences: differences
                .into_iter()
                .map(|(table, report)| TableDetail { table, report })
                .collect(),
            waited,
            elapsed_seconds,
        }
    }

    fn verdict(&self) -> &'static str {
        match (self.differing, self.errors) {
            (0, 0) => "EQUAL",
            (0, _) => "INCOMPLETE",
            _ => "DIFFERENT",
        }
    }

    /// The report for a terminal.
    pub fn text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "reconcile {}: {} tables ({} mode)",
            self.pipeline,
            self.tables.len(),
            self.mode
        );
        let _ = writeln!(out, "  source: {}", self.source);
        let _ = writeln!(out, "  target: {}", self.target);
        if let Some(waited) = &self.waited {
            let _ = writeln!(
                out,
                "  waited {:.1} s for the pipeline to apply its source",
                waited.seconds
            );
        }
        if !self.skipped.is_empty() {
            let _ = writeln!(
                out,
                "  not selected by the pipeline: {}",
                self.skipped.join(", ")
            );
        }
        let width = self
            .tables
            .iter()
            .map(|t| t.table.chars().count())
            .max()
            .unwrap_or(0)
            .max(5);
        let _ = writeln!(
            out,
            "\n  {:<width$}  {:<9}  {:>10}  {:>10}  {:>8}  {:>8}  {:>10}  {:<8}  {:>7}",
            "TABLE", "STATUS", "SOURCE", "TARGET", "MISSING", "EXTRA", "MISMATCHED", "MODE", "TIME"
        );
        let rows = |n: Option<u64>| n.map_or_else(|| "-".to_string(), |n| n.to_string());
        for line in &self.tables {
            let _ = writeln!(
                out,
                "  {:<width$}  {:<9}  {:>10}  {:>10}  {:>8}  {:>8}  {:>10}  {:<8}  {:>6.2}s",
                line.table,
                line.status.word(),
                rows(line.source_rows),
                rows(line.target_rows),
                line.missing,
                line.extra,
                line.mismatched,
                line.mode.as_deref().unwrap_or("-"),
                line.seconds
            );
            if let Some(note) = &line.note {
                let _ = writeln!(out, "  {:<width$}  {note}", "");
            }
        }
        for detail in &self.differences {
            let _ = writeln!(out, "\n== table {} ==", detail.table);
            out.push_str(&detail.report.text());
        }
        let summary = match self.verdict() {
            "EQUAL" => format!(
                "EQUAL: every table of the target holds its source's rows ({} tables)",
                self.tables.len()
            ),
            "INCOMPLETE" => format!(
                "INCOMPLETE: {} of {} tables could not be compared (see above)",
                self.errors,
                self.tables.len()
            ),
            _ => format!(
                "DIFFERENT: {} of {} tables differ: {}{}",
                self.differing,
                self.tables.len(),
                self.tables
                    .iter()
                    .filter(|t| {
                        matches!(
                            t.status,
                            TableStatus::Different | TableStatus::MissingInTarget
                        )
                    })
                    .map(|t| t.table.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                match self.errors {
                    0 => String::new(),
                    n => format!("; {n} could not be compared"),
                }
            ),
        };
        let _ = writeln!(out, "\n{summary} ({:.2} s)", self.elapsed_seconds);
        out
    }

    /// The report as one HTML page: the table of tables, then each differing table.
    pub fn html(&self) -> String {
        let mut out = String::new();
        let verdict = self.verdict();
        head(
            &mut out,
            &format!("weir reconcile {}: {verdict}", self.pipeline),
        );
        let _ = write!(
            out,
            "<h1>weir reconcile {}</h1><p class=\"verdict {}\">{verdict}</p>\
             <table><tr><th>source</th><td>{}</td></tr><tr><th>target</th><td>{}</td></tr>\
             <tr><th>mode</th><td>{}</td></tr><tr><th>time</th><td>{:.2} s</td></tr></table>",
            escape(&self.pipeline),
            match verdict {
                "EQUAL" => "equal",
                "INCOMPLETE" => "error",
                _ => "different",
            },
            escape(&self.source),
            escape(&self.target),
            escape(&self.mode),
            self.elapsed_seconds
        );
        out.push_str(
            "<h2>Tables</h2><table id=\"tables\"><tr><th>table</th><th>status</th>\
             <th>sources</th><th>source rows</th><th>target rows</th><th>missing</th>\
             <th>extra</th><th>mismatched</th><th>mode</th><th>time</th><th>note</th></tr>",
        );
        let rows = |n: Option<u64>| n.map_or_else(|| "-".to_string(), |n| n.to_string());
        for line in &self.tables {
            let class = match line.status {
                TableStatus::Equal => "equal",
                TableStatus::Error => "error",
                _ => "different",
            };
            let name = match line.status {
                TableStatus::Different => {
                    format!("<a href=\"#table-{0}\">{0}</a>", escape(&line.table))
                }
                _ => escape(&line.table),
            };
            let _ = write!(
                out,
                "<tr><td>{name}</td><td class=\"{class}\">{}</td><td>{}</td><td>{}</td>\
                 <td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.2} s</td>\
                 <td>{}</td></tr>",
                line.status.word(),
                escape(&line.sources.join(", ")),
                rows(line.source_rows),
                rows(line.target_rows),
                line.missing,
                line.extra,
                line.mismatched,
                escape(line.mode.as_deref().unwrap_or("-")),
                line.seconds,
                escape(line.note.as_deref().unwrap_or("")),
            );
        }
        out.push_str("</table>");
        if !self.skipped.is_empty() {
            let _ = write!(
                out,
                "<p>Not selected by the pipeline: {}</p>",
                escape(&self.skipped.join(", "))
            );
        }
        for detail in &self.differences {
            let _ = write!(
                out,
                "<hr><h1 id=\"table-{0}\">Table {0}</h1>",
                escape(&detail.table)
            );
            detail.report.body(&mut out);
        }
        out.push_str("</body></html>\n");
        out
    }
}
