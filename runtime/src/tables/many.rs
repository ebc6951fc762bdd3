//! Decoding a stream of many tables: one [`Decoder`] per source table, chosen by the
//! table each event names, so every table keeps its own schema, key and evolution.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::config::tables::TablesConfig;
use crate::decode::native::NativeTables;
use crate::decode::route::Fields;
use crate::decode::table::{TableCheck, TableSpec, UnknownColumns};
use crate::decode::types::ColumnType;
use crate::decode::{DecodeError, Decoder, Format, Outcome, RawRecord, RecordError};
use crate::envelope::ChangeBatch;
use crate::metrics::{Metrics, TableCounts};
use crate::position::{Checkpoint, Position};

use super::{Routing, Selection, record_key_columns, source_table_into};

/// What the target already has of a table: its key and its column types.
#[derive(Debug, Clone, Default)]
pub struct TargetTable {
    pub primary_key: Vec<String>,
    pub types: Vec<(String, ColumnType)>,
}

/// What became of a source table when it was first seen.
enum Slot {
    /// Not selected: its events are counted and skipped.
    Skipped,
    /// Decoded by `tables[i]`.
    Decoded(usize),
    /// Its events are refused, for this reason (it would share a target by accident).
    Refused(String),
}

struct Table {
    decoder: Decoder,
    target: String,
}

/// The decoders of a many-table pipeline, and where each table goes.
pub struct ManyTables {
    routing: Routing,
    keys_required: bool,
    config: TablesConfig,
    format: Format,
    targets: HashMap<String, TargetTable>,
    /// Source tables seen, by name: their index in `entries`.
    slots: HashMap<String, usize>,
    entries: Vec<Entry>,
    tables: Vec<Table>,
    /// Target tables named after a source table (no `route` rule), and that table: a
    /// second source table of the same name is refused rather than merged by accident.
    claimed: HashMap<String, String>,
    /// Decodes events that name no table, only to tell what they are.
    classifier: Decoder,
    rows: usize,
    bytes: usize,
    /// The most rows any one table holds since the last finish.
    largest: usize,
    /// Tables with rows since the last finish.
    with_rows: usize,
    /// Most tables with rows in one batch (`batch.max_tables`).
    max_tables: usize,
    /// Set when a record was not decoded because its table would be one too many for the
    /// batch: the caller applies the batch, then decodes the record again.
    deferred: bool,
    /// The source table of the event decoded last (for its dead letter).
    current: Option<Current>,
    /// Counts of tables that have no slot yet (no key found), since the last finish.
    unplaced: BTreeMap<String, TableCounts>,
    /// The buffer event tables are named in.
    name: String,
    /// The tables of weir's own source, for decoders of its native events.
    native: Option<Arc<NativeTables>>,
    /// The entry of each native table id met (a table's name never changes under its id).
    native_entries: HashMap<u32, usize>,
    /// Declared columns only type the columns changes carry (dead letters replayed past
    /// the decoder).
    declared_as_hints: bool,
}

/// The batch limits a poll decoded grouped by table must stay within.
#[derive(Debug, Clone, Copy)]
pub struct GroupLimits {
    /// `batch.max_events`: most rows of one table.
    pub max_events: usize,
    /// `batch.max_total_events`.
    pub max_total: usize,
    /// `batch.max_bytes` of input.
    pub max_bytes: usize,
    /// `batch.max_record_bytes`: a larger record is dead-lettered before decoding.
    pub max_record_bytes: usize,
}

/// A poll's records in the order to decode them ([`ManyTables::plan`]).
#[derive(Debug)]
pub struct Plan {
    /// Indexes of the poll's records: those with no guess, then each table's.
    pub order: Vec<u32>,
    /// Each record's guessed table (its entry), by index in the poll.
    pub guesses: Vec<Option<u32>>,
}

/// What became of a record of a [`Plan`].
#[derive(Debug)]
pub enum Planned {
    Decoded(Result<Outcome, DecodeError>),
    /// Rewind and decode the poll record by record.
    Redo,
}

/// Where a many-table batch stood ([`ManyTables::mark`]).
#[derive(Debug)]
pub struct Mark {
    tables: Vec<crate::decode::Mark>,
    counts: Vec<TableCounts>,
    unplaced: BTreeMap<String, TableCounts>,
    rows: usize,
    bytes: usize,
    largest: usize,
    with_rows: usize,
}

/// Where a compact Debezium event's `source` block starts.
const SOURCE_BLOCK: &[u8] = br#""source":{"#;

/// A source table seen, what became of it, and its counts since the last finish.
struct Entry {
    name: String,
    slot: Slot,
    counts: TableCounts,
}

enum Current {
    Entry(usize),
    Unplaced(String),
}

impl ManyTables {
    /// `targets` holds the target's existing tables (their key is the last place a table's
    /// key is looked for, and their types hold new columns to them).
    /// `keys_required` is false for sinks that apply no key (a change log); `max_tables`
    /// is `batch.max_tables`.
    pub fn new(
        config: &TablesConfig,
        format: Format,
        targets: HashMap<String, TargetTable>,
        keys_required: bool,
        max_tables: usize,
    ) -> Result<ManyTables, String> {
        let mut spec = TableSpec::new("", &[]);
        spec.unknown_columns = UnknownColumns::Ignore;
        Ok(ManyTables {
            routing: Routing::new(config)?,
            keys_required,
            config: config.clone(),
            format,
            targets,
            slots: HashMap::new(),
            entries: Vec::new(),
            tables: Vec::new(),
            claimed: HashMap::new(),
            classifier: Decoder::new(spec, format),
            rows: 0,
            bytes: 0,
            largest: 0,
            with_rows: 0,
            max_tables: max_tables.max(1),
            deferred: false,
            current: None,
            unplaced: BTreeMap::new(),
            name: String::new(),
            native: None,
            native_entries: HashMap::new(),
            declared_as_hints: false,
        })
    }

    /// Decodes changes as a transform or the sink saw them
    /// ([`TableSpec::with_declared_as_hints`]).
    pub fn set_declared_as_hints(&mut self) {
        self.declared_as_hints = true;
    }

    /// Lets every table's decoder read native events of these tables.
    pub fn set_native(&mut self, tables: Option<Arc<NativeTables>>) {
        // Ids are the registry's own.
        self.native_entries.clear();
        self.classifier.set_native(tables.clone());
        for table in &mut self.tables {
            table.decoder.set_native(tables.clone());
        }
        self.native = tables;
    }

    /// Rows decoded since the last [`finish`](Self::finish), over every table.
    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The most rows any one table holds since the last finish (`batch.max_events`
    /// bounds each table's part of a batch).
    pub fn largest(&self) -> usize {
        self.largest
    }

    /// Whether the last record was left undecoded because the batch already holds
    /// `max_tables` tables and it is another's (cleared by the call): apply the batch,
    /// then decode the record again.
    pub fn take_deferred(&mut self) -> bool {
        std::mem::take(&mut self.deferred)
    }

    /// The source table of the event decoded last, if it named one.
    pub fn current_table(&self) -> Option<&str> {
        match self.current.as_ref()? {
            Current::Entry(entry) => Some(&self.entries[*entry].name),
            Current::Unplaced(name) => Some(name),
        }
    }

    /// Decodes one record into its table's batch. Events of tables the pipeline does not
    /// select are `Ignored` (and counted); an event naming no table is decoded only to
    /// tell a row change (refused: it cannot be placed) from anything else.
    pub fn decode(
        &mut self,
        record: RawRecord<'_>,
        position: &Position,
    ) -> Result<Outcome, DecodeError> {
        self.current = None;
        // The name is built in a buffer kept across events: no allocation per event.
        let mut name = std::mem::take(&mut self.name);
        if let Some(entry) = self.guess_table(record, position, &mut name) {
            match self.decode_entry(entry, record, position, true) {
                // Not the table the guess named: read the event's table properly.
                Err(DecodeError::OtherTable(_)) => {}
                result => {
                    self.name = name;
                    return result;
                }
            }
        }
        let named = match record.value {
            Some(value) if !is_null(value) => {
                match Fields::read(value, self.format, self.native.is_some()) {
                    Some(fields) => source_table_into(
                        [
                            fields.db.as_deref(),
                            fields.schema.as_deref(),
                            fields.table.as_deref(),
                        ],
                        position,
                        &mut name,
                    ),
                    None => false,
                }
            }
            _ => source_table_into([None, None, None], position, &mut name),
        };
        let result = match named {
            true => self.decode_named(&name, record, position),
            false => self.classify(record, position),
        };
        self.name = name;
        result
    }

    /// Plans decoding a poll's records grouped by table, each table's in their order: a
    /// table's builders then take its rows in a run instead of one at a time between
    /// other tables' (most of a many-table reader's extra time was reaching builders gone
    /// cold since the table's last row). A poll of one table is planned too: its guesses
    /// are then not made twice. `None` when the poll is to be decoded record by record: no
    /// table in it could be guessed, or decoding it whole could reach a batch limit (a
    /// batch may only be cut where the stream is, not inside a reordered poll).
    ///
    /// Each record's table is [guessed](Self::guess_table); records with no guess come
    /// first, and [`decode_planned`](Self::decode_planned) asks for the poll to be decoded
    /// record by record (after [`rewind`](Self::rewind)) if one of them turns out to be a
    /// row, or a guess turns out wrong.
    pub fn plan(
        &mut self,
        records: &[(RawRecord<'_>, &Position)],
        limits: &GroupLimits,
    ) -> Option<Plan> {
        if self.format != Format::DebeziumJson || records.len() < 2 {
            return None;
        }
        let mut name = std::mem::take(&mut self.name);
        let mut guesses = Vec::with_capacity(records.len());
        let mut per_entry = vec![0u32; self.entries.len()];
        let mut bytes = 0;
        let mut fits = true;
        for (record, position) in records {
            let size = record.value.map_or(0, <[u8]>::len);
            if size > limits.max_record_bytes {
                fits = false;
                break;
            }
            let guess = self.guess_table(*record, position, &mut name);
            if let Some(entry) = guess {
                per_entry[entry] += 1;
                bytes += size;
            }
            guesses.push(guess.map(|e| e as u32));
        }
        self.name = name;
        if !fits {
            return None;
        }
        let (mut tables, mut rows, mut new_tables) = (0, 0, 0);
        for (entry, &count) in per_entry.iter().enumerate().filter(|(_, c)| **c > 0) {
            let Slot::Decoded(index) = self.entries[entry].slot else {
                return None;
            };
            let held = self.tables[index].decoder.rows();
            if held + count as usize > limits.max_events {
                return None;
            }
            tables += 1;
            rows += count as usize;
            new_tables += usize::from(held == 0);
        }
        let fits = tables >= 1
            && self.rows + rows <= limits.max_total
            && self.bytes + bytes <= limits.max_bytes
            && self.with_rows + new_tables <= self.max_tables;
        if !fits {
            return None;
        }
        // Records with no guess first, then each table's, by a counting sort.
        let mut start = vec![0u32; per_entry.len()];
        let unguessed = (records.len() - rows) as u32;
        let mut next = unguessed;
        for (entry, count) in per_entry.iter().enumerate() {
            start[entry] = next;
            next += count;
        }
        let mut order = vec![0u32; records.len()];
        let mut first = 0;
        for (i, guess) in guesses.iter().enumerate() {
            let at = match guess {
                Some(entry) => {
                    let at = &mut start[*entry as usize];
                    *at += 1;
                    *at - 1
                }
                None => {
                    first += 1;
                    first - 1
                }
            };
            order[at as usize] = i as u32;
        }
        Some(Plan { order, guesses })
    }

    /// Decodes record `record` of a [`Plan`] with its guess, or asks for the poll to be
    /// decoded record by record ([`Planned::Redo`]): its guess was wrong, a record with
    /// no guess was a row, a batch limit would be passed, or the pipeline must stop
    /// (which must apply exactly the events before the one that stops it).
    pub fn decode_planned(
        &mut self,
        guess: Option<u32>,
        record: RawRecord<'_>,
        position: &Position,
    ) -> Planned {
        let result = match guess {
            Some(entry) => {
                let result = self.decode_entry(entry as usize, record, position, true);
                if matches!(result, Err(DecodeError::OtherTable(_))) && self.current.is_none() {
                    return Planned::Redo;
                }
                result
            }
            None => {
                let result = self.decode(record, position);
                if result == Ok(Outcome::Row) {
                    return Planned::Redo;
                }
                result
            }
        };
        if self.take_deferred() || matches!(result, Err(DecodeError::Fatal(_))) {
            return Planned::Redo;
        }
        Planned::Decoded(result)
    }

    /// Where the batch stands, to [`rewind`](Self::rewind) to.
    pub fn mark(&self) -> Mark {
        Mark {
            tables: self.tables.iter().map(|t| t.decoder.mark()).collect(),
            counts: self.entries.iter().map(|e| e.counts.clone()).collect(),
            unplaced: self.unplaced.clone(),
            rows: self.rows,
            bytes: self.bytes,
            largest: self.largest,
            with_rows: self.with_rows,
        }
    }

    /// Drops everything decoded since `mark`. Tables first seen since are kept, empty
    /// (their next events place them the same way).
    pub fn rewind(&mut self, mark: Mark) {
        for (i, table) in self.tables.iter_mut().enumerate() {
            let to = mark.tables.get(i).copied().unwrap_or_else(|| {
                let mut empty = table.decoder.mark();
                empty.clear();
                empty
            });
            table.decoder.rewind(to);
        }
        let mut counts = mark.counts.into_iter();
        for entry in &mut self.entries {
            entry.counts = counts.next().unwrap_or_default();
        }
        self.unplaced = mark.unplaced;
        self.rows = mark.rows;
        self.bytes = mark.bytes;
        self.largest = mark.largest;
        self.with_rows = mark.with_rows;
        self.current = None;
        self.deferred = false;
    }

    /// A guess at the table of a Debezium event, cheaper than reading its structure: the
    /// last `"source":{` in it, read as the envelope's `source` block. Debezium writes
    /// that block after the row images, near the end, and the schema block it begins
    /// with (often most of the event) is then never searched. Only a table
    /// already decoded is guessed; its decoder then checks the guess against the table it
    /// reads for the event (`TableCheck::Exact`) before the event can change anything, so
    /// a wrong guess (a row column that holds an object with a `source` field) costs a
    /// second reading and nothing else.
    fn guess_table(
        &mut self,
        record: RawRecord<'_>,
        position: &Position,
        name: &mut String,
    ) -> Option<usize> {
        if self.format != Format::DebeziumJson {
            return None;
        }
        let value = record.value?;
        if self.native.is_some() && crate::decode::native::is_native(value) {
            // weir's own source names the table exactly, the same for every event of
            // one of its table ids.
            let id = crate::decode::native::table_id(value)?;
            if let Some(&entry) = self.native_entries.get(&id) {
                return Some(entry);
            }
            let fields = Fields::read(value, self.format, true)?;
            let path = [
                fields.db.as_deref(),
                fields.schema.as_deref(),
                fields.table.as_deref(),
            ];
            if !source_table_into(path, position, name) {
                return None;
            }
            let entry = *self.slots.get(name.as_str())?;
            if !matches!(self.entries[entry].slot, Slot::Decoded(_)) {
                return None;
            }
            self.native_entries.insert(id, entry);
            return Some(entry);
        }
        // Each `{` from the end (a vectorised search; few follow the source block) until
        // one ends `"source":{`.
        let at = memchr::memrchr_iter(b'{', value)
            .find(|&brace| value[..=brace].ends_with(SOURCE_BLOCK))?
            + 1
            - SOURCE_BLOCK.len();
        let fields = Fields::read_source(&value[at + SOURCE_BLOCK.len() - 1..])?;
        let path = [
            fields.db.as_deref(),
            fields.schema.as_deref(),
            fields.table.as_deref(),
        ];
        fields.table.as_ref()?;
        if !source_table_into(path, position, name) {
            return None;
        }
        let entry = *self.slots.get(name.as_str())?;
        matches!(self.entries[entry].slot, Slot::Decoded(_)).then_some(entry)
    }

    fn decode_named(
        &mut self,
        name: &str,
        record: RawRecord<'_>,
        position: &Position,
    ) -> Result<Outcome, DecodeError> {
        let entry = match self.slots.get(name) {
            Some(&entry) => entry,
            None => {
                let slot = self.first_sight(name, record.key);
                let entry = self.entries.len();
                match slot {
                    Ok(slot) => {
                        self.entries.push(Entry {
                            name: name.to_string(),
                            slot,
                            counts: TableCounts::default(),
                        });
                        self.slots.insert(name.to_string(), entry);
                    }
                    Err(e) => {
                        // No slot: a later event (with a record key) may still place it.
                        let counts = self.unplaced.entry(name.to_string()).or_default();
                        counts.dead_letters += 1;
                        self.current = Some(Current::Unplaced(name.to_string()));
                        return Err(e);
                    }
                }
                entry
            }
        };
        self.decode_entry(entry, record, position, false)
    }

    /// Decodes a record of table `entries[entry]`; `guessed` when that is only a guess,
    /// which the decoder may refuse (`OtherTable`, counted as nothing).
    fn decode_entry(
        &mut self,
        entry: usize,
        record: RawRecord<'_>,
        position: &Position,
        guessed: bool,
    ) -> Result<Outcome, DecodeError> {
        self.current = Some(Current::Entry(entry));
        let Entry { slot, counts, .. } = &mut self.entries[entry];
        let index = match slot {
            Slot::Skipped => {
                counts.skipped += 1;
                return Ok(Outcome::Ignored("an event of a table the pipeline skips"));
            }
            Slot::Refused(reason) => {
                counts.dead_letters += 1;
                return Err(DecodeError::OtherTable(reason.clone()));
            }
            Slot::Decoded(index) => *index,
        };
        let table = &mut self.tables[index];
        let first_row = table.decoder.rows() == 0;
        if first_row && self.with_rows >= self.max_tables {
            self.deferred = true;
            return Ok(Outcome::Ignored("deferred to the next batch"));
        }
        let result = table.decoder.decode(record, position);
        match &result {
            Ok(Outcome::Row) => {
                self.with_rows += usize::from(first_row);
                counts.rows += 1;
                self.rows += 1;
                self.largest = self.largest.max(table.decoder.rows());
                self.bytes += record.value.map_or(0, <[u8]>::len);
            }
            Err(DecodeError::OtherTable(_)) if guessed => self.current = None,
            Err(_) => counts.dead_letters += 1,
            Ok(_) => {}
        }
        result
    }

    /// Decides where a table first seen goes, and with which key. A table with no key
    /// anywhere gets no slot, so a later event with a record key can still place it.
    fn first_sight(&mut self, name: &str, key: Option<&[u8]>) -> Result<Slot, DecodeError> {
        let (target, routed) = match self.routing.select(name) {
            Selection::Skipped => {
                tracing::info!(table = %name, "skipping a table the pipeline does not select");
                return Ok(Slot::Skipped);
            }
            Selection::Target { name, routed } => (name, routed),
        };
        if let Err(reason) = usable_target(&target) {
            return Ok(Slot::Refused(format!(
                "table `{name}` would go to target table `{target}`, which {reason}; add a \
                 `tables.route` rule that names its target"
            )));
        }
        if !routed {
            match self.claimed.get(&target) {
                Some(holder) if holder != name => {
                    return Ok(Slot::Refused(format!(
                        "source tables `{holder}` and `{name}` would both go to target table \
                         `{target}`; add a `tables.route` rule to merge them on purpose, or to \
                         send one elsewhere"
                    )));
                }
                Some(_) => {}
                None => {
                    self.claimed.insert(target.clone(), name.to_string());
                }
            }
        }
        let overrides = self.config.overrides.get(name);
        let existing = self.targets.get(&target);
        let primary_key = overrides
            .and_then(|o| o.primary_key.clone())
            .or_else(|| key.and_then(record_key_columns))
            .or_else(|| {
                (!self.config.primary_key.is_empty()).then(|| self.config.primary_key.clone())
            })
            .or_else(|| {
                existing
                    .map(|t| t.primary_key.clone())
                    .filter(|k| !k.is_empty())
            })
            .or_else(|| (!self.keys_required).then(Vec::new));
        let Some(primary_key) = primary_key else {
            if !routed {
                self.claimed.remove(&target);
            }
            return Err(DecodeError::Record(RecordError {
                message: format!(
                    "table `{name}` has no primary key: its events carry no Kafka record key \
                     and the target has no table `{target}` with one; declare it in \
                     `tables.overrides.{name}.primary_key`, or for every such table in \
                     `tables.primary_key`"
                ),
            }));
        };
        let spec = TableSpec {
            name: name.to_string(),
            primary_key,
            declared: overrides
                .map(|o| &o.columns)
                .filter(|columns| !columns.is_empty())
                .unwrap_or(&self.config.columns)
                .iter()
                .map(|(column, ty)| {
                    let mut def = ty.0.clone();
                    def.name = column.clone();
                    def
                })
                .collect(),
            case_insensitive: overrides
                .and_then(|o| o.case_insensitive)
                .unwrap_or(self.config.case_insensitive),
            unknown_columns: overrides
                .and_then(|o| o.unknown_columns)
                .unwrap_or(self.config.unknown_columns),
            target_types: existing.map(|t| t.types.clone()).unwrap_or_default(),
            // The table an event is decoded as may be a guess (`guess_table`): the decoder
            // checks it before the event can change the table, as for one table.
            table_check: TableCheck::Exact,
            target: Some(target.clone()),
        };
        let spec = if self.declared_as_hints {
            spec.with_declared_as_hints()
        } else {
            spec
        };
        tracing::info!(table = %name, target = %target, key = ?spec.primary_key, "new table");
        let mut decoder = Decoder::new(spec, self.format);
        decoder.set_native(self.native.clone());
        self.tables.push(Table { decoder, target });
        Ok(Slot::Decoded(self.tables.len() - 1))
    }

    /// An event that names no table: anything but a row change is what it is; a row
    /// change cannot be placed and is refused.
    fn classify(
        &mut self,
        record: RawRecord<'_>,
        position: &Position,
    ) -> Result<Outcome, DecodeError> {
        let outcome = self.classifier.decode(record, position)?;
        if outcome != Outcome::Row {
            return Ok(outcome);
        }
        // Drop the row the classifier kept.
        let _ = self.classifier.finish(Checkpoint::default());
        Err(DecodeError::OtherTable(
            "the event names no table (no `source.table`, no `__table`, and no \
             `<prefix>.<schema>.<table>` topic), so weir cannot tell which table it is for"
                .into(),
        ))
    }

    /// The batches of every table that has rows, each with `checkpoint` (they are applied
    /// together). Publishes the per-table counts.
    pub fn finish(&mut self, checkpoint: &Checkpoint, metrics: &Metrics) -> Vec<ChangeBatch> {
        let batches = self
            .tables
            .iter_mut()
            .filter(|t| t.decoder.rows() > 0)
            .map(|t| t.decoder.finish(checkpoint.clone()))
            .collect();
        self.rows = 0;
        self.largest = 0;
        self.bytes = 0;
        self.with_rows = 0;
        let mut counts = std::mem::take(&mut self.unplaced);
        for entry in &mut self.entries {
            if entry.counts == TableCounts::default() {
                continue;
            }
            let mut taken = std::mem::take(&mut entry.counts);
            if let Slot::Decoded(index) = entry.slot {
                taken.target.clone_from(&self.tables[index].target);
            }
            counts.insert(entry.name.clone(), taken);
        }
        if !counts.is_empty() {
            metrics.add_table_counts(counts);
        }
        batches
    }
}

/// Whether a target table name can name a table, a folder or a file in every sink: a
/// source table's name comes from the events, so it must not reach outside the sink's
/// own place (`..`, a path separator) or be unprintable.
fn usable_target(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name == "." || name == ".." {
        return Err("is not a name");
    }
    if name.len() > 255 {
        return Err("is longer than 255 bytes");
    }
    if name
        .chars()
        .any(|c| c == '/' || c == '\\' || c.is_control())
    {
        return Err("holds a path separator or a control character");
    }
    Ok(())
}

fn is_null(value: &[u8]) -> bool {
    let value = value.trim_ascii();
    value.is_empty() || value == b"null"
}

#[cfg(test)]
mod tests {
    use arrow::array::{AsArray, Int64Array};

    use super::*;

    fn file(line: u64) -> Position {
        Position::File {
            stream: "file:events.jsonl".into(),
            line,
            offset: line * 100,
            next: line * 100 + 100,
        }
    }

    fn event(table: &str, id: i64, nested: &str) -> String {
        format!(
            r#"{{"before":null,"after":{{"id":{id},"doc":{nested}}},"source":{{"db":"shop","schema":"public","table":"{table}"}},"op":"c"}}"#
        )
    }

    fn ids(batches: &[ChangeBatch], table: &str) -> Vec<i64> {
        let batch = batches
            .iter()
            .find(|b| b.table.name == table)
            .unwrap_or_else(|| panic!("no batch of {table}"));
        let id = batch.after().column_by_name("id").unwrap();
        let id: &Int64Array = id.as_primitive();
        id.values().to_vec()
    }

    /// The guess reads the first `"source":{` in an event; a row column holding an object
    /// with a `source` field comes first, and names another table. The decoder's own
    /// reading of the envelope decides, so the row goes to its real table.
    #[test]
    fn a_source_field_inside_a_row_does_not_move_the_row_to_another_table() {
        let mut many = many_tables();
        let misleading = r#"{"source":{"db":"shop","schema":"public","table":"a"}}"#;
        let events = [
            event("a", 1, "null"),
            event("b", 2, "null"),
            // Guessed `a` (a table already decoded), read as `b`.
            event("b", 3, misleading),
            // Guessed and read as `a`.
            event("a", 4, "null"),
        ];
        for (i, text) in events.iter().enumerate() {
            let outcome = many.decode(record(text), &file(i as u64 + 1));
            assert_eq!(outcome, Ok(Outcome::Row), "{text}");
            let table = if text.ends_with(r#""table":"a"},"op":"c"}"#) {
                "public.a"
            } else {
                "public.b"
            };
            assert_eq!(many.current_table(), Some(table), "{text}");
        }
        let metrics = Metrics::default();
        let batches = many.finish(&Checkpoint::default(), &metrics);
        assert_eq!(ids(&batches, "public.a"), [1, 4]);
        assert_eq!(ids(&batches, "public.b"), [2, 3]);
        let counts = metrics.table_counts();
        assert_eq!(counts["public.a"].rows, 2);
        assert_eq!(counts["public.a"].dead_letters, 0);
        assert_eq!(counts["public.b"].rows, 2);
    }

    fn record(text: &str) -> RawRecord<'_> {
        RawRecord {
            key: None,
            value: Some(text.as_bytes()),
            headers: Default::default(),
        }
    }

    const LIMITS: GroupLimits = GroupLimits {
        max_events: 1000,
        max_total: 1000,
        max_bytes: 1 << 20,
        max_record_bytes: 1 << 20,
    };

    /// Decodes a poll as the reader does: grouped by plan, or `None` when it asks for a
    /// redo (having rewound).
    fn decode_poll(many: &mut ManyTables, texts: &[String], first_line: u64) -> Option<usize> {
        let positions: Vec<Position> = (0..texts.len() as u64)
            .map(|i| file(first_line + i))
            .collect();
        let records: Vec<(RawRecord<'_>, &Position)> = texts
            .iter()
            .zip(&positions)
            .map(|(t, p)| (record(t), p))
            .collect();
        let plan = many.plan(&records, &LIMITS).expect("the poll is grouped");
        let mark = many.mark();
        let mut errors = 0;
        for &i in &plan.order {
            let (record, position) = records[i as usize];
            match many.decode_planned(plan.guesses[i as usize], record, position) {
                Planned::Decoded(Ok(_)) => {}
                Planned::Decoded(Err(_)) => errors += 1,
                Planned::Redo => {
                    many.rewind(mark);
                    return None;
                }
            }
        }
        Some(errors)
    }

    fn many_tables() -> ManyTables {
        let config: TablesConfig = serde_json::from_str(
            r#"{"include": ["*"], "primary_key": ["id"], "columns": {"id": "int64", "doc": "json"}}"#,
        )
        .unwrap();
        ManyTables::new(&config, Format::DebeziumJson, HashMap::new(), true, 100).unwrap()
    }

    /// A pipeline that has decoded one row of each of `tables` (ids 100, 101, …), record
    /// by record: a poll holding a table's first rows is not grouped.
    fn seen(tables: &[&str]) -> ManyTables {
        let mut many = many_tables();
        for (i, table) in tables.iter().enumerate() {
            let text = event(table, 100 + i as i64, "null");
            assert_eq!(
                many.decode(record(&text), &file(i as u64)),
                Ok(Outcome::Row)
            );
        }
        many
    }

    /// A poll decoded grouped by table gives each table its rows in the stream's order,
    /// and its counts, as decoding record by record does.
    #[test]
    fn a_poll_grouped_by_table_keeps_each_table_s_order() {
        let mut many = seen(&["a", "b"]);
        let mut poll = Vec::new();
        for id in 0..6 {
            poll.push(event(if id % 2 == 0 { "a" } else { "b" }, id, "null"));
        }
        // An event of `b` that cannot be decoded: a dead letter, not a redo.
        poll.push(event("b", 6, "null").replace(r#""id":6"#, r#""id":"six""#));
        assert_eq!(decode_poll(&mut many, &poll, 10), Some(1));
        let metrics = Metrics::default();
        let batches = many.finish(&Checkpoint::default(), &metrics);
        assert_eq!(ids(&batches, "public.a"), [100, 0, 2, 4]);
        assert_eq!(ids(&batches, "public.b"), [101, 1, 3, 5]);
        let counts = metrics.table_counts();
        assert_eq!(counts["public.a"].rows, 4);
        assert_eq!(counts["public.b"].rows, 4);
        assert_eq!(counts["public.b"].dead_letters, 1);
    }

    /// A wrong guess inside a grouped poll asks for the poll to be decoded record by
    /// record, and rewinding leaves every table as it was before the poll.
    #[test]
    fn a_wrong_guess_in_a_grouped_poll_rewinds_it_whole() {
        let mut many = seen(&["a", "b"]);
        let misleading = r#"{"source":{"db":"shop","schema":"public","table":"a"}}"#;
        let poll = vec![
            event("a", 1, "null"),
            event("b", 2, "null"),
            event("a", 3, "null"),
            // Guessed `a` (the last source block is the row's), but `b`'s.
            format!(
                r#"{{"before":null,"source":{{"db":"shop","schema":"public","table":"b"}},"after":{{"id":4,"doc":{misleading}}},"op":"c"}}"#
            ),
            event("a", 5, "null"),
        ];
        assert_eq!(decode_poll(&mut many, &poll, 10), None);
        // The poll again, record by record.
        for (i, text) in poll.iter().enumerate() {
            assert_eq!(
                many.decode(record(text), &file(10 + i as u64)),
                Ok(Outcome::Row)
            );
        }
        let metrics = Metrics::default();
        let batches = many.finish(&Checkpoint::default(), &metrics);
        assert_eq!(ids(&batches, "public.a"), [100, 1, 3, 5]);
        assert_eq!(ids(&batches, "public.b"), [101, 2, 4]);
        assert_eq!(metrics.table_counts()["public.a"].rows, 4);
        assert_eq!(metrics.table_counts()["public.b"].rows, 3);
    }

    /// A record past `batch.max_record_bytes` is the reader's to dead-letter before any
    /// decoding, in the stream's order: a poll holding one is not grouped.
    #[test]
    fn a_poll_with_a_record_past_max_record_bytes_is_not_grouped() {
        let mut many = seen(&["a", "b"]);
        let huge = format!(r#""{}""#, "x".repeat(400));
        let poll = [event("a", 1, "null"), event("b", 2, &huge)];
        let positions = [file(10), file(11)];
        let records: Vec<(RawRecord<'_>, &Position)> = poll
            .iter()
            .zip(&positions)
            .map(|(t, p)| (record(t), p))
            .collect();
        assert!(many.plan(&records, &LIMITS).is_some());
        let small = GroupLimits {
            max_record_bytes: 300,
            ..LIMITS
        };
        assert!(many.plan(&records, &small).is_none());
    }
}
