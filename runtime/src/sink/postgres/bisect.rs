//! Writing under savepoints, halving a write the target refuses until the refused row
//! stands alone (it goes to the dead-letter output; the rest is written).

use super::*;

impl PostgresSink {
    /// Writes `items` with `write` under a savepoint and counts what it applied. When the
    /// target refuses the data of some item, halves the items until the refused one stands
    /// alone, rejects its row and writes the rest.
    pub(super) fn isolating<T: Isolatable>(
        &self,
        tx: &mut Transaction<'_>,
        batch: &ChangeBatch,
        items: &[T],
        write: &mut WriteItems<'_, T>,
        rejects: &mut dyn Rejects,
        applied: &mut Applied,
    ) -> Result<(), SinkError> {
        if items.is_empty() {
            return Ok(());
        }
        if self.optimistic.get() {
            // No savepoint (two round trips saved per write): a refusal fails the whole
            // transaction, which the caller then applies again with savepoints.
            return match write(tx, items) {
                Ok(done) => {
                    applied.upserts += done.upserts;
                    applied.deletes += done.deletes;
                    applied.appended += done.appended;
                    Ok(())
                }
                Err(MergeError::Pg(e)) if data_error(&e) => {
                    self.refused_optimistically.set(true);
                    Err(self.pg_error("the target refused a row", &e))
                }
                Err(MergeError::Pg(e)) => Err(self.pg_error(T::FAILED, &e)),
                Err(MergeError::Raced(message)) => Err(SinkError {
                    retryable: true,
                    ..self.error(message)
                }),
                Err(MergeError::Io(e)) => Err(SinkError {
                    retryable: true,
                    ..self.error(format!("writing COPY data failed: {e}"))
                }),
            };
        }
        let mut savepoint = tx
            .savepoint(T::SAVEPOINT)
            .map_err(|e| self.pg_error("cannot start a savepoint", &e))?;
        match write(&mut savepoint, items) {
            Ok(done) => {
                savepoint
                    .commit()
                    .map_err(|e| self.pg_error("cannot release a savepoint", &e))?;
                applied.upserts += done.upserts;
                applied.deletes += done.deletes;
                applied.appended += done.appended;
                Ok(())
            }
            Err(MergeError::Pg(e)) if data_error(&e) => {
                drop(savepoint);
                if let [item] = items {
                    let message =
                        format!("the target refused the {}: {}", T::NOUN, describe_error(&e));
                    return rejects.reject(batch, item.row(), &message);
                }
                let (left, right) = items.split_at(items.len() / 2);
                self.isolating(tx, batch, left, write, rejects, applied)?;
                self.isolating(tx, batch, right, write, rejects, applied)
            }
            Err(MergeError::Pg(e)) => Err(self.pg_error(T::FAILED, &e)),
            Err(MergeError::Raced(message)) => Err(SinkError {
                retryable: true,
                ..self.error(message)
            }),
            Err(MergeError::Io(e)) => Err(SinkError {
                retryable: true,
                ..self.error(format!("writing COPY data failed: {e}"))
            }),
        }
    }
}

/// Writes some items inside a transaction and says what it applied.
pub(super) type WriteItems<'a, T> =
    dyn FnMut(&mut Transaction<'_>, &[T]) -> Result<Applied, MergeError> + 'a;

/// What [`PostgresSink::isolating`] writes: upsert actions, or change-log rows.
pub(super) trait Isolatable {
    /// What an item is, in a refusal's message.
    const NOUN: &'static str;
    /// The error context when writing fails for another reason.
    const FAILED: &'static str;
    const SAVEPOINT: &'static str;
    /// The batch row the item comes from.
    fn row(&self) -> usize;
}

impl Isolatable for Action {
    const NOUN: &'static str = "row";
    const FAILED: &'static str = "cannot apply the batch";
    const SAVEPOINT: &'static str = "weir_rows";
    fn row(&self) -> usize {
        self.row
    }
}

/// A change-log row: its batch row.
impl Isolatable for usize {
    const NOUN: &'static str = "change";
    const FAILED: &'static str = "cannot append the batch";
    const SAVEPOINT: &'static str = "weir_append";
    fn row(&self) -> usize {
        *self
    }
}
