//! Lanes: one sink per lane, each on its own connection, applying the changes whose
//! primary key hashes to it (`conflict.lanes`).
//!
//! A batch is split by key, so every change to a key goes to the same lane, in order, and
//! the lanes apply their parts at the same time. Each lane stores the batch's checkpoint
//! in its own transaction, under its own name (`<pipeline>/lane <i> of <n>`). The source
//! resumes from the lowest checkpoint of all lanes, and on a retry or a restart each lane
//! skips the changes its checkpoint covers, so a lane that committed before another
//! failed does not apply its part twice.
//!
//! Rows a lane rejects reach the pipeline's dead-letter output from the calling thread,
//! before that lane commits, as the [`Sink`] contract requires.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::mpsc;

use arrow::array::UInt32Array;

use super::compact::keys;
use super::{Applied, Rejects, Sink, SinkError};
use crate::decode::types::ColumnType;
use crate::envelope::{ChangeBatch, Op};
use crate::plugin::stats::PluginStats;
use crate::position::Checkpoint;

pub struct Lanes {
    lanes: Vec<Box<dyn Sink>>,
}

/// The checkpoint name of lane `lane` (from 0) of `lanes`.
pub fn lane_name(pipeline: &str, lane: usize, lanes: usize) -> String {
    format!("{pipeline}/lane {} of {lanes}", lane + 1)
}

/// What a lane's thread tells the calling thread.
enum Message {
    /// Send row `row` of the lane's part to the dead-letter output, and answer.
    Reject {
        lane: usize,
        row: usize,
        error: String,
        answer: mpsc::SyncSender<Result<(), SinkError>>,
    },
    Done {
        lane: usize,
        result: Result<Applied, SinkError>,
    },
}

/// A lane's [`Rejects`]: asks the calling thread and waits for its answer.
struct Forward {
    lane: usize,
    to: mpsc::Sender<Message>,
}

impl Rejects for Forward {
    fn reject(&mut self, _: &ChangeBatch, row: usize, error: &str) -> Result<(), SinkError> {
        let (answer, reply) = mpsc::sync_channel(1);
        let gone = || SinkError::new("lanes", "the pipeline stopped while a lane rejected a row");
        self.to
            .send(Message::Reject {
                lane: self.lane,
                row,
                error: error.to_string(),
                answer,
            })
            .map_err(|_| gone())?;
        reply.recv().map_err(|_| gone())?
    }
}

impl Lanes {
    pub fn new(lanes: Vec<Box<dyn Sink>>) -> Lanes {
        assert!(!lanes.is_empty(), "at least one lane");
        Lanes { lanes }
    }

    /// The batch rows of each lane, in order.
    fn split(&self, batch: &ChangeBatch) -> Result<Vec<Vec<usize>>, SinkError> {
        let n = self.lanes.len();
        let mut parts = vec![Vec::new(); n];
        if batch.num_rows() == 0 {
            return Ok(parts);
        }
        let keys = keys(batch).map_err(|e| SinkError::new(self.describe(), e))?;
        for (row, op) in batch.ops().enumerate() {
            if op == Op::Truncate {
                // A truncate empties every lane's keys: each lane applies it in its order.
                for part in parts.iter_mut() {
                    part.push(row);
                }
                continue;
            }
            // A delete's key is in `before`; an update that moves its key is routed by
            // its new key.
            let key = match op {
                Op::Delete => keys.before.row(row),
                _ => keys.after.row(row),
            };
            let mut hasher = DefaultHasher::new();
            key.as_ref().hash(&mut hasher);
            parts[(hasher.finish() % n as u64) as usize].push(row);
        }
        Ok(parts)
    }

    fn part(&self, batch: &ChangeBatch, rows: &[usize]) -> Result<ChangeBatch, SinkError> {
        let indices = UInt32Array::from_iter_values(rows.iter().map(|&r| r as u32));
        let data = arrow::compute::take_record_batch(&batch.data, &indices)
            .map_err(|e| SinkError::new(self.describe(), e.to_string()))?;
        Ok(ChangeBatch {
            data,
            positions: Arc::new(rows.iter().map(|&r| batch.positions[r].clone()).collect()),
            checkpoint: batch.checkpoint.clone(),
            table: batch.table.clone(),
        })
    }
}

impl Sink for Lanes {
    /// The lowest checkpoint of every lane, per stream; a stream some lane has no
    /// checkpoint for is left out (the source resumes it from its own record).
    fn committed(&mut self) -> Result<Option<Checkpoint>, SinkError> {
        let mut lowest: Option<Checkpoint> = None;
        for lane in &mut self.lanes {
            let Some(checkpoint) = lane.committed()? else {
                return Ok(None);
            };
            lowest = Some(match lowest {
                None => checkpoint,
                Some(mut lowest) => {
                    lowest
                        .streams
                        .retain(|stream, point| match checkpoint.streams.get(stream) {
                            Some(other) => {
                                if (other.next, other.line) < (point.next, point.line) {
                                    *point = *other;
                                }
                                true
                            }
                            None => false,
                        });
                    lowest
                }
            });
        }
        Ok(lowest.filter(|c| !c.streams.is_empty()))
    }

    fn apply(
        &mut self,
        batch: &ChangeBatch,
        rejects: &mut dyn Rejects,
    ) -> Result<Applied, SinkError> {
        let parts = self.split(batch)?;
        let batches = parts
            .iter()
            .map(|rows| self.part(batch, rows))
            .collect::<Result<Vec<_>, _>>()?;
        let (to, from) = mpsc::channel();
        let mut results: Vec<Option<Result<Applied, SinkError>>> =
            (0..self.lanes.len()).map(|_| None).collect();
        let count = self.lanes.len();
        std::thread::scope(|scope| {
            for (lane, (sink, part)) in self.lanes.iter_mut().zip(&batches).enumerate() {
                let to = to.clone();
                let thread = format!("weir-lane-{}", lane + 1);
                let work = move || {
                    let mut forward = Forward { lane, to };
                    // A lane that panics fails the batch, naming itself, rather than
                    // taking the pipeline's thread down with a bare "a scoped thread
                    // panicked".
                    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        crate::fault::panic_if_injected("lane");
                        sink.apply(part, &mut forward)
                    }))
                    .unwrap_or_else(|panic| {
                        Err(SinkError::new(
                            "lanes",
                            format!(
                                "lane {} of {count} (thread weir-lane-{}) panicked: {}",
                                lane + 1,
                                lane + 1,
                                crate::fault::panic_message(panic.as_ref())
                            ),
                        ))
                    });
                    let _ = forward.to.send(Message::Done { lane, result });
                };
                // A lane that cannot start fails the batch; the others finish theirs
                // (a panic here would leave them waiting on this thread's answers).
                if let Err(e) = std::thread::Builder::new()
                    .name(thread)
                    .spawn_scoped(scope, work)
                {
                    results[lane] = Some(Err(SinkError::new(
                        "lanes",
                        format!("cannot start the thread of lane {}: {e}", lane + 1),
                    )));
                }
            }
            drop(to);
            while let Ok(message) = from.recv() {
                match message {
                    Message::Reject {
                        lane,
                        row,
                        error,
                        answer,
                    } => {
                        let _ = answer.send(rejects.reject(batch, parts[lane][row], &error));
                    }
                    Message::Done { lane, result } => results[lane] = Some(result),
                }
            }
        });
        let mut total = Applied::default();
        for result in results {
            let applied = result.expect("every lane reports")?;
            total.upserts += applied.upserts;
            total.deletes += applied.deletes;
            total.truncates += applied.truncates;
            total.appended += applied.appended;
            total.skipped += applied.skipped;
            total.merged += applied.merged;
            total.echoes += applied.echoes;
            total.duplicates += applied.duplicates;
            total.already_applied += applied.already_applied;
        }
        total.durable = Some(batch.checkpoint.clone());
        Ok(total)
    }

    fn flush(&mut self) -> Result<Option<Checkpoint>, SinkError> {
        for lane in &mut self.lanes {
            lane.flush()?;
        }
        self.committed()
    }

    fn target_types(&mut self) -> Result<Vec<(String, ColumnType)>, SinkError> {
        self.lanes[0].target_types()
    }

    fn plugin_stats(&self) -> Vec<Arc<PluginStats>> {
        self.lanes
            .iter()
            .flat_map(|lane| lane.plugin_stats())
            .collect()
    }

    fn describe(&self) -> String {
        format!("{} in {} lanes", self.lanes[0].describe(), self.lanes.len())
    }
}
