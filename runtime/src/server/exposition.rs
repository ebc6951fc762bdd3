//! `/metrics`: the pipeline's counters in the Prometheus text format (docs/operations.md),
//! built into a registry at each scrape from the counters the stages keep ([`Metrics`]).

use std::sync::atomic::Ordering;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::dead_letter::Stage;
use crate::lifecycle::State;
use crate::metrics::Metrics;

type Labels = Vec<(String, String)>;

/// The states a pipeline can be in, each a series of `weir_pipeline_state`.
const STATES: [State; 7] = [
    State::Starting,
    State::SnapshotPending,
    State::Snapshotting,
    State::CatchingUp,
    State::Streaming,
    State::Degraded,
    State::ResyncRequired,
];

/// The Prometheus text exposition of `metrics`, read as they stand.
pub fn exposition(pipeline: &str, metrics: &Metrics) -> String {
    let read = |counter: &std::sync::atomic::AtomicU64| counter.load(Ordering::Relaxed);
    let labels = |extra: &[(&str, &str)]| -> Labels {
        std::iter::once(("pipeline".to_string(), pipeline.to_string()))
            .chain(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())))
            .collect()
    };
    let mut registry = Registry::default();
    let mut counter = |name: &str, help: &str, series: &[(&[(&str, &str)], u64)]| {
        let family = Family::<Labels, Counter>::default();
        for (extra, value) in series {
            family.get_or_create(&labels(extra)).inc_by(*value);
        }
        registry.register(name, help, family);
    };
    counter(
        "weir_events_received",
        "Records read from the source",
        &[(&[], read(&metrics.events_read))],
    );
    counter(
        "weir_received_bytes",
        "Bytes of the records read from the source",
        &[(&[], read(&metrics.bytes_read))],
    );
    counter(
        "weir_rows_decoded",
        "Row changes decoded into change batches",
        &[(&[], read(&metrics.rows_decoded))],
    );
    counter(
        "weir_rows_applied",
        "Row changes in batches the sink applied, by operation",
        &[
            (&[("op", "upsert")], read(&metrics.upserts)),
            (&[("op", "delete")], read(&metrics.deletes)),
            (&[("op", "truncate")], read(&metrics.truncates)),
            (&[("op", "append")], read(&metrics.appended)),
        ],
    );
    counter(
        "weir_batches_applied",
        "Batches the sink applied",
        &[(&[], read(&metrics.batches))],
    );
    let by_reason = metrics.dead_letters_by_reason();
    // Every stage and class from 0, so the first dead letter of one is an increase.
    let reasons: Vec<([(&str, &str); 2], u64)> = Stage::ALL
        .iter()
        .flat_map(|stage| {
            let by_reason = &by_reason;
            stage.reason_classes().iter().map(move |reason| {
                (
                    [("stage", stage.as_str()), ("reason", *reason)],
                    by_reason.get(&(*stage, *reason)).copied().unwrap_or(0),
                )
            })
        })
        .collect();
    let reasons: Vec<(&[(&str, &str)], u64)> =
        reasons.iter().map(|(l, c)| (l.as_slice(), *c)).collect();
    counter(
        "weir_dead_letters",
        "Records sent to the dead-letter output, by the stage that refused them and the class of the reason",
        &reasons,
    );
    let plugins = metrics.plugin_readings();
    let calls: Vec<([(&str, &str); 3], u64)> = plugins
        .iter()
        .flat_map(|plugin| {
            plugin.calls.iter().map(|(outcome, n)| {
                (
                    [
                        ("plugin", plugin.name.as_str()),
                        ("kind", plugin.kind),
                        ("outcome", *outcome),
                    ],
                    *n,
                )
            })
        })
        .collect();
    let calls: Vec<(&[(&str, &str)], u64)> =
        calls.iter().map(|(l, c)| (l.as_slice(), *c)).collect();
    counter(
        "weir_plugin_calls",
        "Calls into each plugin, by how they ended (ok, or the failure's code)",
        &calls,
    );
    counter(
        "weir_sink_retries",
        "Attempts to apply a batch that failed and were made again",
        &[(&[], read(&metrics.sink_retries))],
    );
    counter(
        "weir_rows_already_applied",
        "Rows the sink skipped because the target held them by position already (a \
         redelivery, or a batch the partition's new owner applied first)",
        &[(&[], read(&metrics.already_applied))],
    );
    counter(
        "weir_events_abandoned",
        "Events read before this process's partitions were revoked, left unapplied to \
         their next owner",
        &[(&[], read(&metrics.events_abandoned))],
    );
    counter(
        "weir_partitions_revoked",
        "Rebalances of the consumer group that revoked this process's partitions",
        &[(&[], read(&metrics.revocations))],
    );
    counter(
        "weir_conflicts",
        "Changes a conflict strategy skipped or replaced by a merged row",
        &[
            (&[("outcome", "skipped")], read(&metrics.conflicts_skipped)),
            (&[("outcome", "merged")], read(&metrics.conflicts_merged)),
        ],
    );
    counter(
        "weir_duplicates_skipped",
        "Changes skipped because the target already held them",
        &[(&[], read(&metrics.duplicates_skipped))],
    );
    counter(
        "weir_echoes_dropped",
        "Changes dropped because they came from the target's own site",
        &[(&[], read(&metrics.echoes_dropped))],
    );
    let tables = metrics
        .tables
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let per_table = Family::<Labels, Counter>::default();
    for (table, counts) in &tables {
        per_table
            .get_or_create(&labels(&[("table", table)]))
            .inc_by(counts.applied);
    }
    registry.register(
        "weir_table_rows_applied",
        "Row changes of each source table in batches the sink applied",
        per_table,
    );
    registry
        .sub_registry_with_label(("pipeline".into(), pipeline.to_string().into()))
        .register(
            "weir_batch_apply_seconds",
            "Seconds each batch took to apply, retries included",
            metrics.apply_seconds.0.clone(),
        );
    let plugin_seconds = Family::<Labels, Counter<f64, std::sync::atomic::AtomicU64>>::default();
    for plugin in &plugins {
        plugin_seconds
            .get_or_create(&labels(&[
                ("plugin", plugin.name.as_str()),
                ("kind", plugin.kind),
            ]))
            .inc_by(plugin.seconds);
    }
    registry.register(
        "weir_plugin_seconds",
        "Seconds spent in each plugin's calls, failed ones included",
        plugin_seconds,
    );
    let partition_lag = Family::<Labels, Gauge>::default();
    for ((topic, partition), lag) in metrics.partition_lag() {
        partition_lag
            .get_or_create(&labels(&[
                ("topic", topic.as_str()),
                ("partition", partition.to_string().as_str()),
            ]))
            .set(i64::try_from(lag).unwrap_or(i64::MAX));
    }
    registry.register(
        "weir_source_partition_lag_events",
        "Each Kafka partition's records not yet applied (its end less the committed offset), for the partitions this process owns",
        partition_lag,
    );
    let readings = metrics.lifecycle.readings();
    let mut gauge = |name: &str, help: &str, value: Option<f64>| {
        // A reading not taken (no lag measured yet, no heartbeat) is left out rather
        // than shown as 0, which would read as "no lag".
        if let Some(value) = value {
            let family = Family::<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
            family.get_or_create(&labels(&[])).set(value);
            registry.register(name, help, family);
        }
    };
    gauge(
        "weir_source_lag_seconds",
        "Seconds between the last change or heartbeat applied being written at the source and being applied",
        readings.lag_seconds,
    );
    gauge(
        "weir_source_lag_events",
        "Changes the source holds that are not applied yet, or rows still to copy",
        readings.lag_events.map(|v| v as f64),
    );
    gauge(
        "weir_source_lag_wal_bytes",
        "WAL written at the source past what the sink applied (postgres-cdc)",
        readings.lag_wal_bytes.map(|v| v as f64),
    );
    let epoch = |at: chrono::DateTime<chrono::Utc>| at.timestamp_millis() as f64 / 1000.0;
    gauge(
        "weir_last_heartbeat_timestamp_seconds",
        "Source time of the last heartbeat seen, in seconds since the epoch",
        readings.last_heartbeat.map(epoch),
    );
    gauge(
        "weir_last_checkpoint_timestamp_seconds",
        "When the sink last made a checkpoint durable, in seconds since the epoch",
        readings.durable_at.map(epoch),
    );
    let state = metrics.lifecycle.refresh(&metrics.health);
    let states = Family::<Labels, Gauge>::default();
    for each in STATES {
        states
            .get_or_create(&labels(&[("state", each.as_str())]))
            .set(i64::from(each == state));
    }
    registry.register(
        "weir_pipeline_state",
        "The pipeline's lifecycle state: 1 for the state it is in (docs/status.md)",
        states,
    );
    let mut text = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut text, &registry)
        .expect("writing to a String does not fail");
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_names_every_counter_with_its_labels() {
        let metrics = Metrics::default();
        metrics.events_read.store(7, Ordering::Relaxed);
        metrics.upserts.store(5, Ordering::Relaxed);
        metrics.deletes.store(2, Ordering::Relaxed);
        let text = exposition("shop \"eu\"", &metrics);
        assert!(
            text.contains("weir_events_received_total{pipeline=\"shop \\\"eu\\\"\"} 7"),
            "{text}"
        );
        assert!(
            text.contains("weir_rows_applied_total{pipeline=\"shop \\\"eu\\\"\",op=\"upsert\"} 5"),
            "{text}"
        );
        assert!(
            text.contains("weir_rows_applied_total{pipeline=\"shop \\\"eu\\\"\",op=\"delete\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("weir_pipeline_state{pipeline=\"shop \\\"eu\\\"\",state=\"starting\"} 1"),
            "{text}"
        );
    }

    #[test]
    fn dead_letters_by_stage_retries_and_apply_times_are_exposed() {
        let metrics = Metrics::default();
        metrics
            .dead_letters_by_reason
            .lock()
            .unwrap()
            .insert((Stage::Decode, "invalid_json"), 3);
        metrics.sink_retries.store(2, Ordering::Relaxed);
        metrics.apply_seconds.0.observe(0.003);
        metrics.apply_seconds.0.observe(0.2);
        let text = exposition("p", &metrics);
        for series in [
            "weir_dead_letters_total{pipeline=\"p\",stage=\"decode\",reason=\"invalid_json\"} 3",
            "weir_dead_letters_total{pipeline=\"p\",stage=\"decode\",reason=\"too_large\"} 0",
            "weir_dead_letters_total{pipeline=\"p\",stage=\"sink\",reason=\"refused\"} 0",
            "weir_sink_retries_total{pipeline=\"p\"} 2",
            "weir_batch_apply_seconds_count{pipeline=\"p\"} 2",
            "weir_batch_apply_seconds_bucket{pipeline=\"p\",le=\"0.004\"} 1",
        ] {
            assert!(text.contains(series), "{series} in:\n{text}");
        }
    }

    #[test]
    fn lag_and_times_are_shown_once_measured_and_not_before() {
        let metrics = Metrics::default();
        let text = exposition("p", &metrics);
        assert!(!text.contains("weir_source_lag"), "{text}");
        assert!(!text.contains("weir_last_checkpoint_timestamp"), "{text}");
        metrics.lifecycle.lag_events(Some(42));
        metrics.lifecycle.lag_wal_bytes(Some(8192));
        metrics
            .lifecycle
            .durable(&crate::position::Checkpoint::default());
        let text = exposition("p", &metrics);
        assert!(
            text.contains("weir_source_lag_events{pipeline=\"p\"} 42"),
            "{text}"
        );
        assert!(
            text.contains("weir_source_lag_wal_bytes{pipeline=\"p\"} 8192"),
            "{text}"
        );
        let durable: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("weir_last_checkpoint_timestamp_seconds{pipeline=\"p\"} "))
            .and_then(|v| v.parse().ok())
            .expect("the checkpoint's time");
        let now = chrono::Utc::now().timestamp() as f64;
        assert!((now - durable).abs() < 60.0, "{durable} is now ({now})");
    }

    #[test]
    fn plugin_calls_and_partition_lag_are_exposed() {
        use crate::plugin::stats::PluginStats;
        let metrics = Metrics::default();
        let mask = std::sync::Arc::new(PluginStats::new("mask", "transform"));
        mask.record(None, std::time::Duration::from_millis(250));
        mask.record(
            Some(&crate::plugin::Failure::Timeout { limit_ms: 1 }),
            std::time::Duration::from_millis(250),
        );
        metrics.watch_plugins([mask]);
        metrics.set_partition_lag([(("orders".to_string(), 3), 17)].into());
        let text = exposition("p", &metrics);
        for series in [
            "weir_plugin_calls_total{pipeline=\"p\",plugin=\"mask\",kind=\"transform\",outcome=\"ok\"} 1",
            "weir_plugin_calls_total{pipeline=\"p\",plugin=\"mask\",kind=\"transform\",outcome=\"timeout\"} 1",
            "weir_plugin_calls_total{pipeline=\"p\",plugin=\"mask\",kind=\"transform\",outcome=\"trap\"} 0",
            "weir_plugin_seconds_total{pipeline=\"p\",plugin=\"mask\",kind=\"transform\"} 0.5",
            "weir_source_partition_lag_events{pipeline=\"p\",topic=\"orders\",partition=\"3\"} 17",
        ] {
            assert!(text.contains(series), "{series} in:\n{text}");
        }
    }
}
