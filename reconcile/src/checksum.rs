//! Checksum mode: compare two PostgreSQL tables without moving their rows.
//!
//! The key range is cut into buckets of `bucket_keys` consecutive keys. Each database
//! computes, per bucket, the row count and the XOR of a 64-bit hash of every row
//! (`hash_record_extended(ROW(…), 0)` over the key and the compared columns, in the same
//! order on both sides; see [`choose_hash`]), grouped in one pass over a key range — the
//! hashing is pushed down as SQL, and both databases work at the same time. A bucket
//! whose count or hash differs is split in 32 and hashed again (only its keys, through the key's index), until buckets
//! hold at most 32 keys; then the rows of those buckets alone are read from both sides and
//! compared as in full mode, which reports them and applies the same type-aware rules.
//!
//! The first pass runs in `ranges` key ranges; each finished range is recorded in a state
//! file, so a killed run resumes from the ranges it finished. The state is keyed by the
//! comparison's settings and both tables' key bounds, and removed when a run completes.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use arrow::datatypes::Schema;
use postgres::Client;
use serde::{Deserialize, Serialize};
use weir_runtime::config::reconcile::{ChecksumConfig, PostgresSnapshot};

use crate::ReconcileError;
use crate::compare::{Plan, ident};
use crate::tables::postgres::qualified;

/// Buckets are split by this factor at each level, down to this many keys.
const SPLIT: i64 = 32;

/// Rows per first-pass range when `checksum.ranges` is not set.
const ROWS_PER_RANGE: f64 = 4_000_000.0;

/// `(row count, XOR of row hashes)` per bucket.
type Buckets = BTreeMap<i64, (i64, i64)>;

/// One side of the comparison.
pub struct Side<'a> {
    pub config: &'a PostgresSnapshot,
    /// The key column, quoted.
    pub key: String,
    /// The key and compared columns, unquoted, in pair order.
    pub columns: Vec<String>,
    /// `AND …` leaving out rows past the cut, or empty.
    pub filter: String,
    /// The row hash, an SQL expression over `t` (set by [`choose_hash`]).
    pub hash: String,
}

impl Side<'_> {
    fn table(&self) -> String {
        qualified(self.config.table.as_deref().unwrap_or_default())
    }

    fn connect(&self, name: &str) -> Result<crate::pool::Pooled, ReconcileError> {
        crate::pool::connect(self.config.url.expose())
            .map_err(|e| ReconcileError::new(format!("{name}: cannot connect: {e}")))
    }

    /// The columns of `candidates` whose values PostgreSQL can hash as they are (their
    /// type has an extended hash function, and the server has `hash_record_extended`,
    /// PostgreSQL 14 and later). A probe hashes one row; when it fails, each column is
    /// probed alone. An empty table refuses nothing, which is safe: it has no rows to
    /// hash, and the other side's probe decides.
    fn hashable(&self, client: &mut Client, candidates: &[String]) -> BTreeSet<String> {
        let probe = |client: &mut Client, columns: &[String]| {
            let hashes: Vec<String> = columns
                .iter()
                .map(|c| format!("hash_record_extended(ROW(t.{}), 0)", ident(c)))
                .collect();
            let sql = format!(
                "SELECT {} FROM {} t LIMIT 1",
                hashes.join(", "),
                self.table()
            );
            client.query(&sql, &[]).is_ok()
        };
        if candidates.is_empty() || probe(client, candidates) {
            return candidates.iter().cloned().collect();
        }
        candidates
            .iter()
            .filter(|c| probe(client, std::slice::from_ref(c)))
            .cloned()
            .collect()
    }
}

/// Chooses the row hash of both sides. A column whose type is the same on both sides and
/// has a hash function goes into `hash_record_extended(ROW(…), 0)` as it is: each value
/// is hashed by its type's own hash function, with no text built, which takes about half
/// the time of hashing the row's text (docs/benchmarks.md). Other columns go in as their
/// text (`t.c::text`), so a column held as `integer` on one side and `bigint` or `text`
/// on the other still compares by value's text. Values equal by their type hash equal
/// (`1.10` and `1.1` as `numeric`), as full mode compares them. Returns the source
/// columns hashed as text. `*_types` are each column's type without modifiers, from
/// [`schemas`].
pub fn choose_hash<'a>(
    source: &mut Side<'a>,
    target: &mut Side<'a>,
    source_types: &ColumnTypes,
    target_types: &ColumnTypes,
) -> Result<Vec<String>, ReconcileError> {
    let mut source_client = source.connect("source")?;
    let mut target_client = target.connect("target")?;
    let same_type: Vec<(String, String)> = source
        .columns
        .iter()
        .zip(&target.columns)
        .filter(|(s, t)| {
            source_types
                .get(*s)
                .is_some_and(|ty| target_types.get(*t) == Some(ty))
        })
        .map(|(s, t)| (s.clone(), t.clone()))
        .collect();
    let (s, t): (Vec<String>, Vec<String>) = same_type.into_iter().unzip();
    let s_ok = source.hashable(&mut source_client, &s);
    let t_ok = target.hashable(&mut target_client, &t);
    let raw: BTreeSet<usize> = source
        .columns
        .iter()
        .zip(&target.columns)
        .enumerate()
        .filter(|(_, (s, t))| s_ok.contains(*s) && t_ok.contains(*t))
        .map(|(i, _)| i)
        .collect();
    for side in [&mut *source, &mut *target] {
        let inputs: Vec<String> = side
            .columns
            .iter()
            .enumerate()
            .map(|(i, c)| match raw.contains(&i) {
                true => format!("t.{}", ident(c)),
                false => format!("t.{}::text", ident(c)),
            })
            .collect();
        side.hash = match raw.is_empty() {
            // Without any hashable column (or before PostgreSQL 14): the row's text.
            true => format!("hashtextextended(ROW({})::text, 0)", inputs.join(", ")),
            false => format!("hash_record_extended(ROW({}), 0)", inputs.join(", ")),
        };
    }
    Ok(source
        .columns
        .iter()
        .enumerate()
        .filter(|(i, _)| !raw.contains(i))
        .map(|(_, c)| c.clone())
        .collect())
}

/// What checksum mode did, for the report.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Stats {
    /// Source columns hashed as their text, not by their type's hash function (their type
    /// differs between the sides, or has no hash function).
    pub hashed_as_text: Vec<String>,
    pub bucket_keys: i64,
    pub ranges: u32,
    /// Ranges whose checksums came from the state file of a killed run.
    pub ranges_resumed: u32,
    pub buckets: u64,
    pub buckets_differing: u64,
    /// Buckets of at most 32 keys whose rows were read and compared.
    pub leaves: u64,
    pub rows_read: u64,
    /// Seconds spent on the first pass (both sides at once) and on the finer levels.
    pub first_pass_seconds: f64,
    pub levels_seconds: f64,
}

/// The recorded progress of a run.
#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    /// The settings and bounds this state belongs to.
    fingerprint: String,
    /// Range index -> the buckets of each side.
    source: BTreeMap<u32, Buckets>,
    target: BTreeMap<u32, Buckets>,
}

/// Progress callback: `(ranges done, ranges in all)`.
pub type Progress<'a> = &'a (dyn Fn(u64, u64) + Send + Sync);

/// The rows to compare: key ranges `[from, to)` of the buckets that differ.
pub struct Narrowed {
    pub ranges: Vec<(i64, i64)>,
    pub source_rows: u64,
    pub target_rows: u64,
    pub stats: Stats,
}

/// The state file for a pipeline.
pub fn state_path(
    pipeline: &weir_runtime::config::LoadedPipeline,
    config: &ChecksumConfig,
) -> PathBuf {
    match &config.state {
        Some(path) => pipeline.resolve(path),
        None => pipeline
            .base_dir
            .join(format!("{}.reconcile-state.json", pipeline.config.name)),
    }
}

/// Runs the checksum passes and returns the key ranges whose rows differ.
pub fn narrow(
    source: &Side<'_>,
    target: &Side<'_>,
    config: &ChecksumConfig,
    state_file: &Path,
    progress: Option<Progress<'_>>,
) -> Result<Narrowed, ReconcileError> {
    let mut source_client = source.connect("source")?;
    let mut target_client = target.connect("target")?;
    let bounds = |client: &mut Client, side: &Side<'_>, name: &str| {
        client
            .query_one(
                &format!(
                    "SELECT min({0})::bigint, max({0})::bigint FROM {1}",
                    side.key,
                    side.table()
                ),
                &[],
            )
            .map(|r| (r.get::<_, Option<i64>>(0), r.get::<_, Option<i64>>(1)))
            .map_err(|e| {
                ReconcileError::new(format!(
                    "{name}: cannot read the key's bounds (checksum mode needs an integer key): {e}"
                ))
            })
    };
    let (s_lo, s_hi) = bounds(&mut source_client, source, "source")?;
    let (t_lo, t_hi) = bounds(&mut target_client, target, "target")?;
    let lo = [s_lo, t_lo].into_iter().flatten().min();
    let hi = [s_hi, t_hi].into_iter().flatten().max();
    let width = config.bucket_keys.max(SPLIT);
    let ranges = match config.ranges {
        Some(ranges) => ranges.max(1),
        None => {
            let estimate: f64 = source_client
                .query_one(
                    "SELECT greatest(reltuples, 0)::float8 FROM pg_class WHERE oid = $1::text::regclass",
                    &[&source.table()],
                )
                .map(|r| r.get(0))
                .unwrap_or(0.0);
            ((estimate / ROWS_PER_RANGE).ceil() as u32).max(1)
        }
    };
    let mut stats = Stats {
        bucket_keys: width,
        ranges,
        ..Stats::default()
    };
    let (Some(lo), Some(hi)) = (lo, hi) else {
        // Both tables are empty.
        return Ok(Narrowed {
            ranges: Vec::new(),
            source_rows: 0,
            target_rows: 0,
            stats,
        });
    };
    let buckets = (hi - lo) / width + 1;
    let ranges = (stats.ranges as i64).min(buckets).max(1);
    let per_range = (buckets + ranges - 1) / ranges;
    let fingerprint = format!(
        "v2 {} {} {width} {ranges} {lo} {hi} {:?} {:?} {:?} {:?}",
        source.table(),
        target.table(),
        source.hash,
        target.hash,
        source.filter,
        target.filter
    );
    let mut state = read_state(state_file)
        .filter(|s| s.fingerprint == fingerprint)
        .unwrap_or(State {
            fingerprint,
            ..State::default()
        });
    stats.ranges = ranges as u32;
    stats.ranges_resumed = (0..ranges as u32)
        .filter(|r| state.source.contains_key(r) && state.target.contains_key(r))
        .count() as u32;

    // The first pass: both sides at once, one range at a time each.
    let first_pass = |client: &mut Client,
                      side: &Side<'_>,
                      is_source: bool,
                      done: &BTreeSet<u32>,
                      sender: mpsc::Sender<(bool, u32, Buckets)>| {
        for range in 0..ranges as u32 {
            if done.contains(&range) {
                continue;
            }
            let first = range as i64 * per_range;
            let from = lo + first * width;
            let to = lo + (first + per_range).min(buckets) * width;
            let sql = format!(
                // Parameters are bigint whatever the key's integer type (cross-type
                // comparisons still use the key's index).
                "SELECT ((t.{key} - $1::bigint) / $2::bigint)::bigint, count(*),
                        coalesce(bit_xor({}), 0)
                 FROM {} t WHERE t.{key} >= $3::bigint AND t.{key} < $4::bigint {} GROUP BY 1",
                side.hash,
                side.table(),
                side.filter,
                key = side.key
            );
            let found = buckets_of(client.query(&sql, &[&lo, &width, &from, &to]))?;
            if sender.send((is_source, range, found)).is_err() {
                break;
            }
        }
        Ok::<_, ReconcileError>(())
    };
    let total = ranges as u64;
    let started = std::time::Instant::now();
    let abort_after: Option<u64> = std::env::var("WEIR_TEST_ABORT_AFTER_RANGES")
        .ok()
        .and_then(|n| n.parse().ok());
    let source_done: BTreeSet<u32> = state.source.keys().copied().collect();
    let target_done: BTreeSet<u32> = state.target.keys().copied().collect();
    let result = std::thread::scope(|scope| {
        let (sender, finished) = mpsc::channel();
        let target_sender = sender.clone();
        let s = scope.spawn(|| first_pass(&mut source_client, source, true, &source_done, sender));
        let t = scope.spawn(|| {
            first_pass(
                &mut target_client,
                target,
                false,
                &target_done,
                target_sender,
            )
        });
        // Record each finished range as it comes, so a killed run loses at most the
        // ranges in flight. The loop ends when both passes have ended.
        for (is_source, range, found) in finished {
            match is_source {
                true => state.source.insert(range, found),
                false => state.target.insert(range, found),
            };
            write_state(state_file, &state)?;
            let done = (0..ranges as u32)
                .filter(|r| state.source.contains_key(r) && state.target.contains_key(r))
                .count() as u64;
            if let Some(progress) = progress {
                progress(done, total);
            }
            // A failpoint for the resume test: die like a killed process, with the state
            // file as it is on disk.
            if abort_after.is_some_and(|n| done >= n) {
                std::process::abort();
            }
        }
        s.join().expect("the source pass does not panic")?;
        t.join().expect("the target pass does not panic")?;
        Ok::<_, ReconcileError>(())
    });
    result?;
    stats.first_pass_seconds = started.elapsed().as_secs_f64();
    let started = std::time::Instant::now();
    let merge = |per_range: &BTreeMap<u32, Buckets>| -> Buckets {
        per_range
            .values()
            .flat_map(|b| b.iter().map(|(k, v)| (*k, *v)))
            .collect()
    };
    let (source_buckets, target_buckets) = (merge(&state.source), merge(&state.target));
    let source_rows = source_buckets.values().map(|(n, _)| *n as u64).sum();
    let target_rows = target_buckets.values().map(|(n, _)| *n as u64).sum();
    stats.buckets = source_buckets
        .keys()
        .chain(target_buckets.keys())
        .collect::<BTreeSet<_>>()
        .len() as u64;
    let mut differing = differing(&source_buckets, &target_buckets);
    stats.buckets_differing = differing.len() as u64;

    // Split differing buckets until they hold at most SPLIT keys: each level hashes only
    // the keys of the buckets that still differ, on both sides at once.
    let mut level_width = width;
    while level_width > SPLIT && !differing.is_empty() {
        let sub = (level_width / SPLIT).max(1);
        let from: Vec<i64> = differing.iter().map(|b| lo + b * level_width).collect();
        let level = |client: &mut Client, side: &Side<'_>| -> Result<Buckets, ReconcileError> {
            // LATERAL: one index range scan per bucket, never a scan of the table.
            let sql = format!(
                "SELECT b, count(*), coalesce(bit_xor(h), 0)
                 FROM unnest($3::bigint[]) AS r(start)
                 CROSS JOIN LATERAL (
                     SELECT ((t.{key} - $1::bigint) / $2::bigint)::bigint AS b, {} AS h
                     FROM {} t
                     WHERE t.{key} >= r.start AND t.{key} < r.start + $4::bigint {}
                 ) x
                 GROUP BY 1",
                side.hash,
                side.table(),
                side.filter,
                key = side.key
            );
            buckets_of(client.query(&sql, &[&lo, &sub, &from, &level_width]))
        };
        let (s, t) = std::thread::scope(|scope| {
            let s = scope.spawn(|| level(&mut source_client, source));
            let t = scope.spawn(|| level(&mut target_client, target));
            (s.join().expect("no panic"), t.join().expect("no panic"))
        });
        differing = self::differing(&s?, &t?);
        level_width = sub;
    }
    stats.leaves = differing.len() as u64;
    stats.levels_seconds = started.elapsed().as_secs_f64();
    let ranges: Vec<(i64, i64)> = differing
        .iter()
        .map(|b| (lo + b * level_width, lo + (b + 1) * level_width))
        .collect();
    Ok(Narrowed {
        ranges,
        source_rows,
        target_rows,
        stats,
    })
}

/// The buckets a checksum query returned: `(bucket, count, hash)` rows.
fn buckets_of(
    rows: Result<Vec<postgres::Row>, postgres::Error>,
) -> Result<Buckets, ReconcileError> {
    let rows = rows.map_err(|e| ReconcileError::new(format!("checksums failed: {e}")))?;
    Ok(rows
        .iter()
        .map(|r| (r.get::<_, i64>(0), (r.get::<_, i64>(1), r.get::<_, i64>(2))))
        .collect())
}

/// Buckets whose count or hash differs (a bucket one side lacks counts as empty).
fn differing(source: &Buckets, target: &Buckets) -> Vec<i64> {
    let keys: BTreeSet<i64> = source.keys().chain(target.keys()).copied().collect();
    keys.into_iter()
        .filter(|k| source.get(k).unwrap_or(&(0, 0)) != target.get(k).unwrap_or(&(0, 0)))
        .collect()
}

/// `(SELECT * FROM table WHERE key in the ranges) AS q`, for reading the differing rows.
pub fn restricted(table: &str, key: &str, ranges: &[(i64, i64)]) -> String {
    let key = crate::compare::ident(key);
    let conditions: Vec<String> = ranges
        .iter()
        .map(|(from, to)| format!("({key} >= {from} AND {key} < {to})"))
        .collect();
    let filter = if conditions.is_empty() {
        "false".to_string()
    } else {
        conditions.join(" OR ")
    };
    format!("(SELECT * FROM {} WHERE {filter}) AS q", qualified(table))
}

/// The key and compared columns of each side, in the plan's pair order.
pub fn columns(plan: &Plan) -> (Vec<String>, Vec<String>) {
    plan.key
        .iter()
        .chain(&plan.compared)
        .map(|p| (p.source.clone(), p.target.clone()))
        .unzip()
}

fn read_state(path: &Path) -> Option<State> {
    let text = std::fs::read_to_string(path).ok()?;
    serde_json::from_str(&text).ok()
}

fn write_state(path: &Path, state: &State) -> Result<(), ReconcileError> {
    let text = serde_json::to_vec(state).expect("the state serialises");
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, text)
        .and_then(|_| std::fs::rename(&tmp, path))
        .map_err(|e| ReconcileError::new(format!("cannot write {}: {e}", path.display())))
}

/// Removes the state file once a run has completed.
pub fn finish(path: &Path) {
    let _ = std::fs::remove_file(path);
}

/// A table's column types without modifiers, by column name.
pub type ColumnTypes = BTreeMap<String, String>;

/// A table's Arrow schema and its column types.
pub type Catalog = (Schema, ColumnTypes);

/// Both sides' schemas and column types, read from the catalogs (no rows).
pub fn schemas(source: &Side<'_>, target: &Side<'_>) -> Result<(Catalog, Catalog), ReconcileError> {
    let read = |side: &Side<'_>, name: &str| {
        let mut client = side.connect(name)?;
        crate::tables::postgres::schema(&mut client, &side.table())
            .map(|(schema, types)| (schema.as_ref().clone(), types))
            .map_err(|e| ReconcileError::new(format!("{name}: {e}")))
    };
    Ok((read(source, "source")?, read(target, "target")?))
}
