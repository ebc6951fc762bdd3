//! The thread that refreshes the lifecycle state once a second and writes the status to
//! the pipeline's store, and the last write when the run ends.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use arrow::array::{Array, AsArray};
use arrow::datatypes::TimestampMicrosecondType;

use super::Process;
use super::store::{self, StatusStore};
use crate::config::LoadedPipeline;
use crate::envelope::{ChangeBatch, SOURCE_TIME};
use crate::metrics::Metrics;

/// How often the status is refreshed and written.
pub const INTERVAL: Duration = Duration::from_secs(1);

pub struct StatusWriter {
    done: Arc<AtomicBool>,
    thread: JoinHandle<Option<Box<dyn StatusStore>>>,
    pipeline: String,
    metrics: Arc<Metrics>,
}

impl StatusWriter {
    pub fn start(pipeline: &LoadedPipeline, metrics: Arc<Metrics>) -> StatusWriter {
        let done = Arc::new(AtomicBool::new(false));
        let name = pipeline.config.name.clone();
        let mut store = store::open(pipeline);
        if let Some(store) = store.as_mut() {
            match store.load(&name) {
                Ok(Some(earlier)) => metrics.lifecycle.resume_from(earlier),
                Ok(None) => {}
                Err(error) => {
                    tracing::warn!(store = %store.describe(), %error, "cannot read the status an earlier run stored")
                }
            }
        }
        let thread = {
            let (done, metrics, name) = (done.clone(), metrics.clone(), name.clone());
            std::thread::Builder::new()
                .name("weir-status".into())
                .spawn(move || {
                    let mut failing = false;
                    while !done.load(Ordering::Relaxed) {
                        write(&mut store, &name, &metrics, Process::Running, &mut failing);
                        // Sleep in short steps, so the run's end is not held up.
                        for _ in 0..10 {
                            if done.load(Ordering::Relaxed) {
                                break;
                            }
                            std::thread::sleep(INTERVAL / 10);
                        }
                    }
                    store
                })
                .expect("spawn the status thread")
        };
        StatusWriter {
            done,
            thread,
            pipeline: name,
            metrics,
        }
    }

    /// Stops the thread and writes how the run ended.
    pub fn finish(self, error: Option<&str>) {
        self.done.store(true, Ordering::Relaxed);
        let Ok(mut store) = self.thread.join() else {
            return;
        };
        let process = match error {
            Some(error) => {
                self.metrics.lifecycle.error(error);
                Process::Failed
            }
            None => Process::Stopped,
        };
        write(
            &mut store,
            &self.pipeline,
            &self.metrics,
            process,
            &mut false,
        );
    }
}

fn write(
    store: &mut Option<Box<dyn StatusStore>>,
    pipeline: &str,
    metrics: &Metrics,
    process: Process,
    failing: &mut bool,
) {
    metrics.lifecycle.refresh(&metrics.health);
    let Some(store) = store.as_mut() else {
        return;
    };
    let status = metrics.status(pipeline, process);
    match store.save(&status) {
        Ok(()) if *failing => {
            *failing = false;
            tracing::info!(store = %store.describe(), "status written again");
        }
        Ok(()) => {}
        Err(error) if !*failing => {
            // Logged once until it works again: the status is a report, the data goes on.
            *failing = true;
            tracing::warn!(store = %store.describe(), %error, "cannot write the pipeline's status");
        }
        Err(_) => {}
    }
}

/// The newest source time in `batch`, in epoch milliseconds.
pub fn newest_source_time(batch: &ChangeBatch) -> Option<i64> {
    let column = batch.data.column_by_name(SOURCE_TIME)?;
    let times = column.as_primitive_opt::<TimestampMicrosecondType>()?;
    if times.null_count() == times.len() {
        return None;
    }
    arrow::compute::max(times).map(|micros| micros / 1000)
}
