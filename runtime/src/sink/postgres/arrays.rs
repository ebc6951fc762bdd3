//! Merging a segment of fewer than `STAGED_ACTIONS` actions: each column's values sent as
//! one array parameter to a prepared DELETE and INSERT … ON CONFLICT, kept per connection.

use super::*;

impl PostgresSink {
    /// The statements that delete a batch's keys and upsert its rows, each column's values
    /// sent as one array parameter (`Encoding`) and cast to its column's type, for a
    /// segment of fewer than `STAGED_ACTIONS` actions. Staging those would cost two COPY
    /// round trips per table, and PostgreSQL truncates every `ON COMMIT DELETE ROWS`
    /// table of the session at each commit (docs/decisions.md).
    pub(super) fn merge_statements(
        &self,
        batch: &ChangeBatch,
    ) -> Result<MergeStatements, SinkError> {
        let mut statements = self.merge_statements_as(batch, true)?;
        let binary = |encodings: &[Encoding]| {
            encodings
                .iter()
                .any(|e| matches!(e, Encoding::Binary { .. }))
        };
        if binary(&statements.row_encodings) || binary(&statements.key_encodings) {
            statements.text = Some(Box::new(self.merge_statements_as(batch, false)?));
        }
        Ok(statements)
    }

    /// The statements with each column's values sent as `Encoding::of` says, in binary
    /// where it can when `binary`.
    fn merge_statements_as(
        &self,
        batch: &ChangeBatch,
        binary: bool,
    ) -> Result<MergeStatements, SinkError> {
        let fields = batch.row_fields();
        let key = &batch.table.primary_key;
        // Cast to the type without its modifier: an explicit cast to `varchar(5)` would cut
        // a longer value short, where the assignment the INSERT then makes refuses it.
        let cast = |name: &str| -> Result<&str, SinkError> {
            self.casts.get(name).map(String::as_str).ok_or_else(|| {
                self.error(format!("column {} is missing from the target", quote(name)))
            })
        };
        let target = self.target();
        let parameters = |encodings: &[Encoding]| -> String {
            encodings
                .iter()
                .enumerate()
                .map(|(i, e)| format!("${}::{}", i + 1, e.array_type()))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let aliases = |n: usize| -> String {
            (1..=n)
                .map(|i| format!("c{i}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let names: Vec<String> = fields.iter().map(|f| quote(f.name())).collect();
        let key_names: Vec<String> = key.iter().map(|k| quote(k)).collect();
        let declared = |name: &str| binary.then(|| self.columns.get(name)).flatten();
        let row_encodings = fields
            .iter()
            .map(|f| {
                Ok(Encoding::of(
                    f.data_type(),
                    cast(f.name())?,
                    declared(f.name()),
                ))
            })
            .collect::<Result<Vec<_>, SinkError>>()?;
        let key_encodings = key_columns(batch)
            .map_err(|e| self.error(e))?
            .iter()
            .zip(key)
            .map(|(column, k)| Ok(Encoding::of(column.data_type(), cast(k)?, declared(k))))
            .collect::<Result<Vec<_>, SinkError>>()?;
        let values = fields
            .iter()
            .enumerate()
            .map(|(i, f)| Ok(format!("u.c{}::{}", i + 1, cast(f.name())?)))
            .collect::<Result<Vec<_>, SinkError>>()?;
        let action = conflict_action(&fields, key);
        // `unnest` in the select list, not in FROM: set-returning functions there run in
        // lockstep and stream their rows, where `FROM unnest(a, b, …)` first stores every
        // column's values in a tuplestore, which spills to disk past `work_mem`.
        let unnested: Vec<String> = row_encodings
            .iter()
            .enumerate()
            .map(|(i, e)| format!("unnest(${}::{}) AS c{}", i + 1, e.array_type(), i + 1))
            .collect();
        let upsert = format!(
            "INSERT INTO {target} ({}) SELECT {} FROM (SELECT {}) AS u \
             ON CONFLICT ({}) DO {action}",
            names.join(", "),
            values.join(", "),
            unnested.join(", "),
            key_names.join(", "),
        );
        let key_casts = key
            .iter()
            .map(|k| cast(k))
            .collect::<Result<Vec<_>, SinkError>>()?;
        let delete = match (&key_names[..], &key_casts[..]) {
            // One key column: an index scan for the whole array, whatever the planner
            // guesses of its length.
            ([name], [cast]) if !cast.ends_with(']') => format!(
                "DELETE FROM {target} WHERE {name} = ANY($1::{}::{cast}[])",
                key_encodings[0].array_type()
            ),
            _ => {
                let on: Vec<String> = key_names
                    .iter()
                    .zip(&key_casts)
                    .enumerate()
                    .map(|(i, (name, cast))| format!("t.{name} = k.c{}::{cast}", i + 1))
                    .collect();
                format!(
                    "DELETE FROM {target} t USING unnest({}) AS k({}) WHERE {}",
                    parameters(&key_encodings),
                    aliases(key_names.len()),
                    on.join(" AND ")
                )
            }
        };
        // `xmax = 0` marks a row the statement inserted rather than updated.
        let counted_upsert = format!(
            "WITH written AS ({upsert} RETURNING (xmax = 0) AS inserted) \
             SELECT count(*) FILTER (WHERE inserted) FROM written"
        );
        Ok(MergeStatements {
            delete,
            upsert,
            counted_upsert,
            key_encodings,
            row_encodings,
            text: None,
        })
    }

    /// Deletes the keys, then upserts the rows, of `actions` (a run of the segment's).
    pub(super) fn merge(
        &self,
        tx: &mut Transaction<'_>,
        batch: &ChangeBatch,
        statements: &MergeStatements,
        segment: &PreparedSegment,
        actions: &[Action],
        present: Option<&[bool]>,
    ) -> Result<Applied, MergeError> {
        let mut done = Applied::default();
        let deletes: Vec<&Action> = actions.iter().filter(|a| !a.upsert).collect();
        if !deletes.is_empty() {
            done.deletes = deletes.len() as u64;
            let mut deleted = 0;
            let arrays = key_columns(batch).expect("checked by merge_statements");
            for chunk in chunks(segment, &arrays, &deletes) {
                let (used, columns) =
                    statements.with_columns(|s| &s.key_encodings, segment, &arrays, chunk);
                let statement = self.statement(tx, &used.delete, std::ptr::eq(used, statements))?;
                deleted += tx.execute(&statement, &parameters(&columns))?;
            }
            if let Some(present) = present {
                check_deleted(batch, &deletes, present, deleted)?;
            }
        }
        let upserts: Vec<&Action> = actions.iter().filter(|a| a.upsert).collect();
        if !upserts.is_empty() {
            done.upserts = upserts.len() as u64;
            let mut inserted = 0;
            let after = batch.after();
            let arrays: Vec<&dyn Array> = after.columns().iter().map(|c| c.as_ref()).collect();
            for chunk in chunks(segment, &arrays, &upserts) {
                let (used, columns) =
                    statements.with_columns(|s| &s.row_encodings, segment, &arrays, chunk);
                let sql = match present {
                    None => &used.upsert,
                    Some(_) => &used.counted_upsert,
                };
                let statement = self.statement(tx, sql, std::ptr::eq(used, statements))?;
                match present {
                    None => {
                        tx.execute(&statement, &parameters(&columns))?;
                    }
                    Some(_) => {
                        let count: i64 = tx.query_one(&statement, &parameters(&columns))?.get(0);
                        inserted += count;
                    }
                }
            }
            if let Some(present) = present {
                check_inserted(&upserts, present, inserted)?;
            }
        }
        Ok(done)
    }

    /// `sql` prepared on this connection: when `keep`, kept for the next batch, up to
    /// `STATEMENTS_KEPT` statements, so it is parsed and planned once. (The text form of
    /// statements with binary columns is not kept: it serves only a rare run holding a
    /// value with no binary form, and kept first come it would hold a slot for good.)
    fn statement(
        &self,
        tx: &mut Transaction<'_>,
        sql: &str,
        keep: bool,
    ) -> Result<postgres::Statement, postgres::Error> {
        if let Some(statement) = self.statements.borrow().get(sql) {
            return Ok(statement.clone());
        }
        let statement = tx.prepare(sql)?;
        if !keep {
            return Ok(statement);
        }
        let mut kept = self.statements.borrow_mut();
        // Kept first come: a pipeline of more tables than that prepares the rest per
        // batch, as an unkept statement costs, rather than evicting in a cycle.
        if kept.len() < STATEMENTS_KEPT {
            kept.insert(sql.to_string(), statement.clone());
        }
        Ok(statement)
    }
}

/// How many prepared statements a connection keeps: two per table (three under a conflict
/// strategy; their text forms, for a table with binary columns, are not kept) for a few
/// hundred tables (the server holds each one's plan in its memory).
pub(super) const STATEMENTS_KEPT: usize = 512;

/// A statement's parameters are sent in one message, which PostgreSQL caps at 1 GiB; a
/// larger segment is sent in parts of about this many bytes of text.
const PARAMETER_BYTES: usize = 64 << 20;

/// The SQL that merges one table's batch (`merge_statements`).
pub(super) struct MergeStatements {
    delete: String,
    upsert: String,
    counted_upsert: String,
    key_encodings: Vec<Encoding>,
    row_encodings: Vec<Encoding>,
    /// The same with every column that `Encoding::Binary` sends as text instead: for a
    /// run holding a value the binary form does not carry exactly (a date outside the
    /// years 1-9999), which then lands, or is refused, as it would in any other batch.
    text: Option<Box<MergeStatements>>,
}

impl MergeStatements {
    /// The statements for `actions` with their parameters: these, or the text ones when
    /// some value has no exact binary form.
    fn with_columns<'s, 'a>(
        &'s self,
        encodings: impl Fn(&MergeStatements) -> &Vec<Encoding>,
        segment: &'a PreparedSegment,
        arrays: &[&'a dyn Array],
        actions: &[&Action],
    ) -> (&'s MergeStatements, Vec<Column<'a>>) {
        if let Some(columns) = columns(encodings(self), segment, arrays, actions) {
            return (self, columns);
        }
        let text = self
            .text
            .as_deref()
            .expect("statements with a binary column have a text form");
        let columns =
            columns(encodings(text), segment, arrays, actions).expect("text carries every value");
        (text, columns)
    }
}

/// How a column's values travel: as typed arrays straight from the Arrow values when the
/// target column has the Arrow type's own PostgreSQL type (no text made or parsed), else
/// as `text[]` cast to the column's type, which reads them as its input function does.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Encoding {
    /// Text prepared ahead (`PreparedSegment`).
    Prepared,
    /// A string column's own values.
    Strings,
    /// A column sent directly whose target type is another: its text, made now.
    Formatted,
    Int16,
    Int32,
    Int64,
    Float32,
    Float64,
    Boolean,
    /// An array of the element type `element` in binary (`binary.rs`), when the target
    /// column is declared as the type whose receive function reads it.
    Binary {
        encoder: Encoder,
        element: &'static str,
        /// The element type the bytes are for, checked against the statement's.
        oid: u32,
    },
}

impl Encoding {
    /// How a column of `data_type` goes into a target column cast as `cast` (its type
    /// without a modifier) and, when binary is wanted, declared as `declared`.
    fn of(data_type: &DataType, cast: &str, declared: Option<&String>) -> Encoding {
        let binary = declared.and_then(|d| binary::encoder(data_type, d));
        use postgres::types::Type;
        let element = match (binary, data_type) {
            (Some(Encoder::Numeric), _) => Some(("numeric[]", Type::NUMERIC)),
            (Some(Encoder::Date), _) => Some(("date[]", Type::DATE)),
            (Some(Encoder::Time), _) => Some(("time[]", Type::TIME)),
            (Some(Encoder::Timestamp), DataType::Timestamp(_, Some(_))) => {
                Some(("timestamptz[]", Type::TIMESTAMPTZ))
            }
            (Some(Encoder::Timestamp), _) => Some(("timestamp[]", Type::TIMESTAMP)),
            (Some(Encoder::Interval), _) => Some(("interval[]", Type::INTERVAL)),
            (Some(Encoder::Bytea), _) => Some(("bytea[]", Type::BYTEA)),
            // The rest is sent typed below, or as a string column's own values.
            _ => None,
        };
        if let (Some(encoder), Some((element, ty))) = (binary, element) {
            return Encoding::Binary {
                encoder,
                element,
                oid: ty.oid(),
            };
        }
        match (data_type, cast) {
            (DataType::Int8 | DataType::Int16, "smallint") => Encoding::Int16,
            (DataType::Int32, "integer") => Encoding::Int32,
            (DataType::Int64, "bigint") => Encoding::Int64,
            (DataType::Float32, "real") => Encoding::Float32,
            (DataType::Float64, "double precision") => Encoding::Float64,
            (DataType::Boolean, "boolean") => Encoding::Boolean,
            (DataType::Utf8, _) => Encoding::Strings,
            (other, _) if sent_directly(other) => Encoding::Formatted,
            _ => Encoding::Prepared,
        }
    }

    fn array_type(self) -> &'static str {
        match self {
            Encoding::Prepared | Encoding::Strings | Encoding::Formatted => "text[]",
            Encoding::Int16 => "int2[]",
            Encoding::Int32 => "int4[]",
            Encoding::Int64 => "int8[]",
            Encoding::Float32 => "float4[]",
            Encoding::Float64 => "float8[]",
            Encoding::Boolean => "bool[]",
            Encoding::Binary { element, .. } => element,
        }
    }
}

/// One column's values for a run of actions: a statement parameter.
enum Column<'a> {
    Text(Vec<Option<&'a str>>),
    Formatted(Vec<Option<String>>),
    Int16(Vec<Option<i16>>),
    Int32(Vec<Option<i32>>),
    Int64(Vec<Option<i64>>),
    Float32(Vec<Option<f32>>),
    Float64(Vec<Option<f64>>),
    Boolean(Vec<Option<bool>>),
    Binary(BinaryArray),
}

/// A one-dimensional array parameter whose elements are already in binary: its header
/// is written when the element type's OID is known (the statement's parameter type).
#[derive(Debug)]
struct BinaryArray {
    /// The element type the bytes are for.
    oid: u32,
    count: i32,
    has_null: bool,
    /// Each element's length (-1 for a null), then its bytes.
    elements: Vec<u8>,
}

impl BinaryArray {
    /// `array`'s values at `actions`' rows, or None when one has no exact binary form.
    fn of(
        array: &dyn Array,
        encoder: Encoder,
        oid: u32,
        actions: &[&Action],
    ) -> Option<BinaryArray> {
        let count = i32::try_from(actions.len()).ok()?;
        let mut elements = Vec::with_capacity(actions.len() * 12);
        let mut has_null = false;
        for action in actions {
            has_null |= array.is_null(action.row);
            if !binary::write_field(&mut elements, array, encoder, action.row) {
                return None;
            }
        }
        Some(BinaryArray {
            oid,
            count,
            has_null,
            elements,
        })
    }
}

impl postgres::types::ToSql for BinaryArray {
    fn to_sql(
        &self,
        ty: &postgres::types::Type,
        out: &mut bytes::BytesMut,
    ) -> Result<postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        // The statement names the element type; bytes for another type must never reach
        // its receive function (array_recv checks only the OID written here).
        let postgres::types::Kind::Array(element) = ty.kind() else {
            return Err(format!("a binary array sent as {ty}").into());
        };
        if element.oid() != self.oid {
            return Err(format!("binary {} elements sent as {ty}", self.oid).into());
        }
        // array_recv's header: dimensions, whether any element is null, the element
        // type, then each dimension's length and lower bound.
        out.extend_from_slice(&1i32.to_be_bytes());
        out.extend_from_slice(&(self.has_null as i32).to_be_bytes());
        out.extend_from_slice(&element.oid().to_be_bytes());
        out.extend_from_slice(&self.count.to_be_bytes());
        out.extend_from_slice(&1i32.to_be_bytes());
        out.extend_from_slice(&self.elements);
        Ok(postgres::types::IsNull::No)
    }

    fn accepts(ty: &postgres::types::Type) -> bool {
        matches!(ty.kind(), postgres::types::Kind::Array(_))
    }

    postgres::types::to_sql_checked!();
}

/// The parameters for `actions`: each column's values, encoded as `encodings` say. None
/// when a binary column holds a value its binary form does not carry exactly.
fn columns<'a>(
    encodings: &[Encoding],
    segment: &'a PreparedSegment,
    arrays: &[&'a dyn Array],
    actions: &[&Action],
) -> Option<Vec<Column<'a>>> {
    fn values<T>(
        actions: &[&Action],
        array: &dyn Array,
        value: impl Fn(usize) -> T,
    ) -> Vec<Option<T>> {
        actions
            .iter()
            .map(|a| array.is_valid(a.row).then(|| value(a.row)))
            .collect()
    }
    encodings
        .iter()
        .zip(arrays)
        .enumerate()
        .map(|(i, (encoding, array))| {
            let array = *array;
            Some(match encoding {
                Encoding::Binary { encoder, oid, .. } => {
                    Column::Binary(BinaryArray::of(array, *encoder, *oid, actions)?)
                }
                Encoding::Prepared => Column::Text(segment.column(actions, i)),
                Encoding::Strings => {
                    let strings = array.as_string::<i32>();
                    Column::Text(values(actions, array, |row| strings.value(row)))
                }
                Encoding::Formatted => Column::Formatted(values(actions, array, |row| {
                    let mut text = String::new();
                    write_text(&mut text, array, row);
                    text
                })),
                Encoding::Int16 => match array.data_type() {
                    DataType::Int8 => {
                        let ints = array.as_primitive::<Int8Type>();
                        Column::Int16(values(actions, array, |row| ints.value(row) as i16))
                    }
                    _ => {
                        let ints = array.as_primitive::<Int16Type>();
                        Column::Int16(values(actions, array, |row| ints.value(row)))
                    }
                },
                Encoding::Int32 => {
                    let ints = array.as_primitive::<Int32Type>();
                    Column::Int32(values(actions, array, |row| ints.value(row)))
                }
                Encoding::Int64 => {
                    let ints = array.as_primitive::<Int64Type>();
                    Column::Int64(values(actions, array, |row| ints.value(row)))
                }
                Encoding::Float32 => {
                    let floats = array.as_primitive::<Float32Type>();
                    Column::Float32(values(actions, array, |row| floats.value(row)))
                }
                Encoding::Float64 => {
                    let floats = array.as_primitive::<Float64Type>();
                    Column::Float64(values(actions, array, |row| floats.value(row)))
                }
                Encoding::Boolean => {
                    let bools = array.as_boolean();
                    Column::Boolean(values(actions, array, |row| bools.value(row)))
                }
            })
        })
        .collect()
}

/// `actions` in runs of at most about `PARAMETER_BYTES` each.
fn chunks<'a, 'b>(
    segment: &PreparedSegment,
    arrays: &[&dyn Array],
    actions: &'b [&'a Action],
) -> Vec<&'b [&'a Action]> {
    let strings: Vec<_> = arrays
        .iter()
        .filter(|a| a.data_type() == &DataType::Utf8)
        .map(|a| a.as_string::<i32>())
        .collect();
    let mut parts = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, action) in actions.iter().enumerate() {
        let size = segment.text_bytes(action)
            + strings
                .iter()
                .map(|s| s.value(action.row).len())
                .sum::<usize>()
            + 8 * arrays.len();
        if bytes + size > PARAMETER_BYTES && i > start {
            parts.push(&actions[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += size;
    }
    parts.push(&actions[start..]);
    parts
}

fn parameters<'a>(columns: &'a [Column<'_>]) -> Vec<&'a (dyn postgres::types::ToSql + Sync)> {
    columns
        .iter()
        .map(|c| -> &(dyn postgres::types::ToSql + Sync) {
            match c {
                Column::Text(v) => v,
                Column::Formatted(v) => v,
                Column::Int16(v) => v,
                Column::Int32(v) => v,
                Column::Int64(v) => v,
                Column::Float32(v) => v,
                Column::Float64(v) => v,
                Column::Boolean(v) => v,
                Column::Binary(v) => v,
            }
        })
        .collect()
}
