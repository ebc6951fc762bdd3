//! The last 15 minutes of throughput and lag, for the status page's charts: a sample of
//! the counters every few seconds, taken by the listener's thread (so a pipeline without a
//! listener keeps none), in a ring of fixed size.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::metrics::Metrics;

/// How often a sample is taken.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(5);

/// How far back the charts go.
pub const WINDOW: Duration = Duration::from_secs(15 * 60);

/// Samples kept: one window's worth, and one more to take the first rate from.
const SAMPLES: usize = (WINDOW.as_secs() / SAMPLE_EVERY.as_secs()) as usize + 1;

#[derive(Debug, Clone, Copy, PartialEq)]
struct Sample {
    at: Instant,
    rows_applied: u64,
    events_read: u64,
    lag_seconds: Option<f64>,
}

/// One point of a chart: seconds before now, and the value then.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    pub ago: f64,
    pub value: f64,
}

/// The series the status page draws.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Series {
    /// Rows applied per second, between each sample and the one before.
    pub rows_per_second: Vec<Point>,
    /// Events received per second.
    pub events_per_second: Vec<Point>,
    /// The lag in seconds when each sample was taken (where it was measured).
    pub lag_seconds: Vec<Point>,
}

#[derive(Debug, Default)]
pub struct History {
    samples: VecDeque<Sample>,
}

impl History {
    /// Takes a sample if [`SAMPLE_EVERY`] has passed since the last one.
    pub fn sample(&mut self, metrics: &Metrics, now: Instant) {
        if self
            .samples
            .back()
            .is_some_and(|last| now.duration_since(last.at) < SAMPLE_EVERY)
        {
            return;
        }
        let counters = metrics.snapshot();
        self.push(Sample {
            at: now,
            rows_applied: counters.rows_applied,
            events_read: counters.events_read,
            lag_seconds: metrics.lifecycle.readings().lag_seconds,
        });
    }

    fn push(&mut self, sample: Sample) {
        if self.samples.len() == SAMPLES {
            self.samples.pop_front();
        }
        self.samples.push_back(sample);
    }

    /// The charts' series as of `now`.
    pub fn series(&self, now: Instant) -> Series {
        let ago = |s: &Sample| now.saturating_duration_since(s.at).as_secs_f64();
        let mut series = Series::default();
        for (before, after) in self.samples.iter().zip(self.samples.iter().skip(1)) {
            let seconds = after.at.duration_since(before.at).as_secs_f64();
            if seconds <= 0.0 {
                continue;
            }
            let rate = |a: u64, b: u64| b.saturating_sub(a) as f64 / seconds;
            series.rows_per_second.push(Point {
                ago: ago(after),
                value: rate(before.rows_applied, after.rows_applied),
            });
            series.events_per_second.push(Point {
                ago: ago(after),
                value: rate(before.events_read, after.events_read),
            });
        }
        series.lag_seconds = self
            .samples
            .iter()
            .filter_map(|s| s.lag_seconds.map(|value| Point { ago: ago(s), value }))
            .collect();
        series
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at: Instant, rows: u64, lag: Option<f64>) -> Sample {
        Sample {
            at,
            rows_applied: rows,
            events_read: rows * 2,
            lag_seconds: lag,
        }
    }

    #[test]
    fn rates_come_from_consecutive_samples() {
        let start = Instant::now();
        let mut history = History::default();
        history.push(sample(start, 0, None));
        history.push(sample(start + Duration::from_secs(5), 500, Some(1.5)));
        history.push(sample(start + Duration::from_secs(10), 1500, Some(0.5)));
        let series = history.series(start + Duration::from_secs(10));
        assert_eq!(
            series.rows_per_second,
            vec![
                Point {
                    ago: 5.0,
                    value: 100.0
                },
                Point {
                    ago: 0.0,
                    value: 200.0
                }
            ]
        );
        assert_eq!(series.events_per_second[1].value, 400.0);
        assert_eq!(series.lag_seconds.len(), 2, "the lag where it was measured");
    }

    #[test]
    fn samples_are_taken_no_more_often_than_asked_and_kept_for_the_window() {
        let metrics = Metrics::default();
        let start = Instant::now();
        let mut history = History::default();
        history.sample(&metrics, start);
        history.sample(&metrics, start + Duration::from_secs(1));
        assert_eq!(history.samples.len(), 1);
        for i in 1..1000 {
            history.sample(&metrics, start + SAMPLE_EVERY * i);
        }
        assert_eq!(history.samples.len(), SAMPLES);
        let series = history.series(start + SAMPLE_EVERY * 999);
        let oldest = series.rows_per_second.first().expect("a rate").ago;
        assert!(oldest <= WINDOW.as_secs_f64(), "{oldest}");
    }
}
