//! The checkpoint rows in `weir.checkpoints`, locked and stored in each batch's
//! transaction.

use super::*;

impl PostgresSink {
    /// Locks and reads this pipeline's checkpoint rows for the streams of `checkpoint`.
    pub(super) fn lock_checkpoint(
        &self,
        tx: &mut Transaction<'_>,
        checkpoint: &Checkpoint,
    ) -> Result<Checkpoint, SinkError> {
        let streams: Vec<String> = checkpoint.streams.keys().cloned().collect();
        tx.execute(
            "INSERT INTO weir.checkpoints (pipeline, stream, next, line)
             SELECT $1, s, -1, 0 FROM unnest($2::text[]) s
             ON CONFLICT DO NOTHING",
            &[&self.pipeline, &streams],
        )
        .map_err(|e| self.pg_error("cannot lock the checkpoint", &e))?;
        let rows = tx
            .query(
                "SELECT stream, next, line FROM weir.checkpoints
                 WHERE pipeline = $1 AND stream = ANY($2) ORDER BY stream FOR UPDATE",
                &[&self.pipeline, &streams],
            )
            .map_err(|e| self.pg_error("cannot lock the checkpoint", &e))?;
        let mut stored = Checkpoint::default();
        for row in rows {
            let next: i64 = row.get(1);
            if next >= 0 {
                stored.streams.insert(
                    row.get(0),
                    ResumePoint {
                        next,
                        line: row.get::<_, i64>(2) as u64,
                    },
                );
            }
        }
        Ok(stored)
    }

    /// Stores every stream's resume point, in one statement: a many-table pipeline's
    /// checkpoint holds a stream per table copied, and a statement each was a round trip
    /// each, in every transaction.
    pub(super) fn store_checkpoint(
        &self,
        tx: &mut Transaction<'_>,
        checkpoint: &Checkpoint,
    ) -> Result<(), SinkError> {
        let mut streams = Vec::with_capacity(checkpoint.streams.len());
        let mut nexts = Vec::with_capacity(checkpoint.streams.len());
        let mut lines = Vec::with_capacity(checkpoint.streams.len());
        for (stream, resume) in &checkpoint.streams {
            streams.push(stream.as_str());
            nexts.push(resume.next);
            lines.push(resume.line as i64);
        }
        tx.execute(
            "INSERT INTO weir.checkpoints (pipeline, stream, next, line, updated_at)
             SELECT $1, s.stream, s.next, s.line, now()
             FROM unnest($2::text[], $3::int8[], $4::int8[]) AS s(stream, next, line)
             ON CONFLICT (pipeline, stream) DO UPDATE SET
                 next = CASE WHEN (excluded.next, excluded.line)
                                  > (weir.checkpoints.next, weir.checkpoints.line)
                             THEN excluded.next ELSE weir.checkpoints.next END,
                 line = CASE WHEN (excluded.next, excluded.line)
                                  > (weir.checkpoints.next, weir.checkpoints.line)
                             THEN excluded.line ELSE weir.checkpoints.line END,
                 updated_at = now()",
            &[&self.pipeline, &streams, &nexts, &lines],
        )
        .map_err(|e| self.pg_error("cannot store the checkpoint", &e))?;
        Ok(())
    }
}

/// A checkpoint from `(stream, next, line)` rows.
pub(in crate::sink) fn checkpoint_of(rows: &[postgres::Row]) -> Checkpoint {
    Checkpoint {
        streams: rows
            .iter()
            .map(|r| {
                (
                    r.get::<_, String>(0),
                    ResumePoint {
                        next: r.get(1),
                        line: r.get::<_, i64>(2) as u64,
                    },
                )
            })
            .collect(),
    }
}
