//! The status page (`GET /`): one self-contained HTML document, rendered by the listener
//! from the pipeline's live status and counters. No script, no font, no stylesheet from
//! elsewhere: the charts are inline SVG and the page reloads itself every
//! [`REFRESH_SECONDS`]. Every text on it goes through maud, which escapes it; dead letters'
//! texts are cut and their credentials masked before they get here
//! ([`crate::metrics::RecentDeadLetter`]).

use std::fmt::Write;
use std::time::Instant;

use maud::{DOCTYPE, Markup, PreEscaped, html};

use super::history::{History, Point, WINDOW};
use crate::dead_letter::Stage;
use crate::lifecycle::{Process, State, Status, TableStatus};
use crate::metrics::Metrics;

/// How often the page reloads itself.
pub const REFRESH_SECONDS: u32 = 5;

const STYLE: &str = "
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #1d2330; background: #f7f8fa; }
h1 { font-size: 1.4em; margin: 0 0 .3em; }
h2 { font-size: 1.1em; margin: 1.6em 0 .5em; }
section { background: #fff; border: 1px solid #dde1e8; border-radius: 6px; padding: .8em 1em; margin-bottom: 1em; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: .25em .6em; border-bottom: 1px solid #eceff3; vertical-align: top; }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; }
.state { display: inline-block; padding: .15em .6em; border-radius: 1em; font-weight: 600; color: #fff; background: #6b7280; }
.state-streaming { background: #15803d; } .state-catching-up, .state-snapshotting { background: #2563eb; }
.state-degraded { background: #b45309; } .state-resync-required { background: #b91c1c; }
.muted { color: #6b7280; }
.counts { display: flex; flex-wrap: wrap; gap: 1.5em; }
.counts div { min-width: 9em; } .counts b { display: block; font-size: 1.4em; }
.bar { background: #e5e7eb; border-radius: 3px; height: .7em; width: 10em; display: inline-block; }
.bar span { display: block; background: #2563eb; height: 100%; border-radius: 3px; }
.charts { display: flex; flex-wrap: wrap; gap: 2em; }
svg { background: #fbfcfd; border: 1px solid #eceff3; }
pre { white-space: pre-wrap; word-break: break-all; margin: 0; font-size: .85em; max-width: 60em; }
.error { color: #b91c1c; }
";

/// The page as it stands at `now`.
pub fn render(pipeline: &str, metrics: &Metrics, history: &History, now: Instant) -> String {
    metrics.lifecycle.refresh(&metrics.health);
    let status = metrics.status(pipeline, Process::Running);
    let counters = metrics.snapshot();
    let series = history.series(now);
    let page = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta http-equiv="refresh" content=(REFRESH_SECONDS);
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { "weir · " (pipeline) " · " (status.state.as_str()) }
                style { (PreEscaped(STYLE)) }
            }
            body {
                (header(&status))
                section id="counts" class="counts" {
                    (count("events-received", "events received", counters.events_read))
                    (count("rows-applied", "rows applied", counters.rows_applied))
                    (count("batches", "batches", counters.batches))
                    (count("dead-letters", "dead letters", counters.dead_letters))
                    div {
                        b id="lag-seconds" {
                            @match status.lag.seconds {
                                Some(lag) => (format!("{lag:.1} s")),
                                None => "–",
                            }
                        }
                        span class="muted" { "behind the source" }
                    }
                    div {
                        b id="lag-events" {
                            @match status.lag.events {
                                Some(events) => (events),
                                None => "–",
                            }
                        }
                        span class="muted" { "events not applied" }
                    }
                }
                (last_error(&status))
                section {
                    h2 { "Last 15 minutes" }
                    div class="charts" {
                        (chart("throughput-chart", "rows applied per second", &series.rows_per_second))
                        (chart("received-chart", "events received per second", &series.events_per_second))
                        (chart("lag-chart", "lag, seconds", &series.lag_seconds))
                    }
                }
                (tables(&status))
                (partitions(metrics))
                (dead_letters(metrics))
                (plugins(metrics))
                (transitions(&status))
                p class="muted" {
                    "Updated " (status.updated_at) ", every " (REFRESH_SECONDS) " s. Process " (status.pid)
                    ". Also served: " a href="/metrics" { "/metrics" } ", "
                    a href="/health" { "/health" } ", " a href="/ready" { "/ready" } "."
                }
            }
        }
    };
    page.into_string()
}

fn header(status: &Status) -> Markup {
    html! {
        h1 { "weir · " span id="pipeline" { (status.pipeline) } }
        p {
            span id="state" class=(format!("state state-{}", status.state)) { (status.state.as_str()) }
            " "
            span id="state-reason" { (status.reason) }
            span class="muted" { " (since " (status.since) ")" }
        }
    }
}

fn count(id: &str, label: &str, value: u64) -> Markup {
    html! {
        div {
            b id=(id) { (value) }
            span class="muted" { (label) }
        }
    }
}

fn last_error(status: &Status) -> Markup {
    html! {
        @if let Some(error) = &status.last_error {
            section id="last-error" {
                h2 { "Last error" }
                p class="error" { (error.message) }
                p class="muted" { (error.at) }
            }
        }
    }
}

/// An SVG line chart of `points` over the last [`WINDOW`], newest on the right.
fn chart(id: &str, title: &str, points: &[Point]) -> Markup {
    const WIDTH: f64 = 360.0;
    const HEIGHT: f64 = 90.0;
    let window = WINDOW.as_secs_f64();
    let max = points.iter().map(|p| p.value).fold(0.0_f64, f64::max);
    let mut line = String::new();
    for point in points {
        let x = WIDTH * (1.0 - (point.ago / window).min(1.0));
        let y = if max > 0.0 {
            HEIGHT - 4.0 - (HEIGHT - 8.0) * point.value / max
        } else {
            HEIGHT - 4.0
        };
        let _ = write!(line, "{x:.1},{y:.1} ");
    }
    let latest = points.last().map(|p| p.value);
    html! {
        figure id=(id) {
            svg width=(WIDTH) height=(HEIGHT) viewBox=(format!("0 0 {WIDTH} {HEIGHT}")) role="img" {
                title { (title) }
                @if points.len() > 1 {
                    polyline points=(line.trim_end()) fill="none" stroke="#2563eb" stroke-width="1.5" {}
                }
            }
            figcaption {
                (title) ": "
                @match latest {
                    Some(value) => b class="latest" { (format_rate(value)) },
                    None => span class="muted" { "no sample yet" },
                }
                span class="muted" { " (peak " (format_rate(max)) ")" }
            }
        }
    }
}

fn format_rate(value: f64) -> String {
    if value >= 100.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.1}")
    }
}

fn tables(status: &Status) -> Markup {
    html! {
        section id="tables" {
            h2 { "Tables" }
            @if status.tables.is_empty() {
                p class="muted" {
                    "Progress by table is kept for a pipeline of many tables (" code { "tables:" }
                    "), once its first change or copy comes."
                }
            } @else {
                table {
                    thead { tr {
                        th { "table" } th { "state" } th { "copy" }
                        th class="n" { "rows copied" } th class="n" { "rows applied" }
                    } }
                    tbody {
                        @for (name, table) in &status.tables {
                            tr {
                                td { (name) }
                                td { (table.state.map_or("–", State::as_str)) }
                                td { (copy_progress(table)) }
                                td class="n" { (table.rows_copied) }
                                td class="n" { (table.rows_applied) }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn copy_progress(table: &TableStatus) -> Markup {
    let fraction = match (table.copied, table.rows_estimated) {
        (true, _) => Some(1.0),
        (false, Some(estimated)) if estimated > 0 => {
            Some((table.rows_copied as f64 / estimated as f64).min(1.0))
        }
        _ => None,
    };
    html! {
        @match fraction {
            Some(fraction) => {
                span class="bar" { span style=(format!("width: {:.0}%", fraction * 100.0)) {} }
                " " (format!("{:.0}%", fraction * 100.0))
            }
            None => span class="muted" { "–" },
        }
    }
}

fn partitions(metrics: &Metrics) -> Markup {
    let lag = metrics.partition_lag();
    html! {
        @if !lag.is_empty() {
            section id="partitions" {
                h2 { "Lag per partition" }
                table {
                    thead { tr { th { "topic" } th class="n" { "partition" } th class="n" { "events behind" } } }
                    tbody {
                        @for ((topic, partition), events) in &lag {
                            tr { td { (topic) } td class="n" { (partition) } td class="n" { (events) } }
                        }
                    }
                }
            }
        }
    }
}

fn dead_letters(metrics: &Metrics) -> Markup {
    let by_reason = metrics.dead_letters_by_reason();
    let recent = metrics.recent_dead_letters();
    let per_stage = |stage: Stage| -> u64 {
        by_reason
            .iter()
            .filter(|((s, _), _)| *s == stage)
            .map(|(_, n)| n)
            .sum()
    };
    html! {
        section id="dead-letters-section" {
            h2 { "Dead letters" }
            table id="dead-letters-by-stage" {
                thead { tr { th { "stage" } th class="n" { "records" } th { "by reason" } } }
                tbody {
                    @for stage in Stage::ALL {
                        tr data-stage=(stage.as_str()) {
                            td { (stage.as_str()) }
                            td class="n" { (per_stage(stage)) }
                            td {
                                @for ((_, reason), n) in by_reason.iter().filter(|((s, _), _)| *s == stage) {
                                    (reason) ": " (n) " "
                                }
                            }
                        }
                    }
                }
            }
            @if !recent.is_empty() {
                h2 { "Latest dead letters" }
                table id="recent-dead-letters" {
                    thead { tr { th { "time" } th { "stage" } th { "table" } th { "position" } th { "error and record" } } }
                    tbody {
                        @for letter in &recent {
                            tr {
                                td { (letter.at) }
                                td { (letter.stage.as_str()) " / " (letter.reason) }
                                td { (letter.table.as_deref().unwrap_or("–")) }
                                td { (letter.position.as_deref().unwrap_or("–")) }
                                td {
                                    div class="error" { (letter.error) }
                                    @if let Some(record) = &letter.record {
                                        pre { (record) }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn plugins(metrics: &Metrics) -> Markup {
    let plugins = metrics.plugin_readings();
    html! {
        @if !plugins.is_empty() {
            section id="plugins" {
                h2 { "Plugins" }
                table {
                    thead { tr {
                        th { "plugin" } th { "kind" } th class="n" { "calls" } th class="n" { "failed" }
                        th class="n" { "mean ms" } th class="n" { "total s" } th { "failures by outcome" }
                    } }
                    tbody {
                        @for plugin in &plugins {
                            tr {
                                td { (plugin.name) }
                                td { (plugin.kind) }
                                td class="n" { (plugin.total_calls()) }
                                td class="n" { (plugin.failed_calls()) }
                                td class="n" {
                                    @if plugin.total_calls() > 0 {
                                        (format!("{:.2}", plugin.seconds * 1000.0 / plugin.total_calls() as f64))
                                    } @else { "–" }
                                }
                                td class="n" { (format!("{:.2}", plugin.seconds)) }
                                td {
                                    @for (outcome, n) in plugin.calls.iter().skip(1).filter(|(_, n)| *n > 0) {
                                        (outcome) ": " (n) " "
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn transitions(status: &Status) -> Markup {
    html! {
        @if !status.transitions.is_empty() {
            section id="transitions" {
                h2 { "State changes" }
                table {
                    thead { tr { th { "time" } th { "from" } th { "to" } th { "reason" } } }
                    tbody {
                        @for transition in status.transitions.iter().rev().take(10) {
                            tr {
                                td { (transition.at) }
                                td { (transition.from.map_or("–", State::as_str)) }
                                td { (transition.to.as_str()) }
                                td { (transition.reason) }
                            }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dead_letter::DeadLetter;

    #[test]
    fn the_page_escapes_and_masks_what_it_shows() {
        let metrics = Metrics::default();
        metrics
            .lifecycle
            .phase(State::Streaming, "reading <b>live</b>");
        metrics.dead_letter(&DeadLetter {
            stage: Stage::Decode,
            error: "invalid JSON: <script>alert(1)</script>",
            table: Some("public.\"<i>\""),
            position: None,
            key: None,
            raw: Some(
                br#"{"password":"hunter2","url":"postgres://u:pw@h/db","x":"</pre><script>"}"#,
            ),
        });
        let page = render("shop<eu>", &metrics, &History::default(), Instant::now());
        assert!(!page.contains("<script"), "{page}");
        assert!(!page.contains("<b>live"), "{page}");
        assert!(
            page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
            "{page}"
        );
        assert!(page.contains("shop&lt;eu&gt;"), "{page}");
        assert!(
            !page.contains("hunter2") && !page.contains(":pw@"),
            "{page}"
        );
        assert!(
            page.contains("id=\"state\" class=\"state state-streaming\""),
            "{page}"
        );
        assert!(
            page.contains("<td>decode</td><td class=\"n\">1</td>"),
            "{page}"
        );
    }

    #[test]
    fn charts_draw_a_line_once_two_samples_are_taken() {
        let points = [
            Point {
                ago: 10.0,
                value: 5.0,
            },
            Point {
                ago: 5.0,
                value: 10.0,
            },
        ];
        let drawn = chart("c", "rows", &points).into_string();
        assert!(drawn.contains("<polyline points=\""), "{drawn}");
        assert!(drawn.contains("<b class=\"latest\">10.0</b>"), "{drawn}");
        let empty = chart("c", "rows", &[]).into_string();
        assert!(
            !empty.contains("polyline") && empty.contains("no sample yet"),
            "{empty}"
        );
    }
}
