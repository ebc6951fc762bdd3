//! What a sink needs to run a conflict resolver: the batch split into rounds in which each
//! key appears once, and the target's stored values turned back into Arrow columns.
//!
//! Rounds keep the resolver exact: within a round every change sees the target row as
//! the previous rounds left it, so two changes to one key in a batch are resolved one
//! after the other, in order, never both against the same stale row.

use std::collections::HashSet;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BinaryArray, BooleanArray, Float64Array, Int64Array, StringArray, StructArray,
    UInt32Array,
};
use arrow::compute::{CastOptions, cast_with_options};
use arrow::datatypes::{DataType, Field};
use rusqlite::types::Value;

use super::compact::Keys;
use super::{Rejects, SinkError};
use crate::envelope::{ChangeBatch, Op};
use crate::plugin::resolver::{Resolution, ResolverPlugin};

/// A group of changes resolved together, or a truncate between them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Round {
    /// Rows of the batch, in order, no two touching the same key.
    Changes(Vec<usize>),
    /// Empty the table.
    Truncate,
}

/// Calls the resolver for the changes `rows` of `batch`, with `current` (their keys'
/// rows in the target). When the call fails as a whole, every change of the round goes
/// to `rejects` (a long reason once, see [`crate::plugin::reject_all`]) and the answer
/// is `None`. `error` makes the sink's error of a failure to gather the changes.
pub fn resolve_round(
    resolver: &mut ResolverPlugin,
    batch: &ChangeBatch,
    rows: &[usize],
    current: StructArray,
    rejects: &mut dyn Rejects,
    error: impl FnOnce(String) -> SinkError,
) -> Result<Option<Resolution>, SinkError> {
    let indices = UInt32Array::from_iter_values(rows.iter().map(|&r| r as u32));
    let incoming = arrow::compute::take_record_batch(&batch.data, &indices)
        .map_err(|e| error(e.to_string()))?;
    match resolver.call(&incoming, current, &batch.table.primary_key) {
        Ok(resolution) => Ok(Some(resolution)),
        Err(failure) => {
            let reason = format!("{} (resolver `{}`)", failure.reason(), resolver.name());
            crate::plugin::reject_all(
                rows.iter().copied(),
                &reason,
                |row| batch.positions.get(row).map(|p| p.to_string()),
                |row, reason| rejects.reject(batch, row, reason),
            )?;
            Ok(None)
        }
    }
}

/// Splits the included rows of `batch` into rounds. A change touches its key (`before`'s
/// for a delete, `after`'s otherwise) and, for an update that moves its key, the old key
/// too; a round ends before a change that touches a key the round already has.
pub fn rounds(batch: &ChangeBatch, keys: &Keys, include: Option<&[bool]>) -> Vec<Round> {
    let mut rounds = Vec::new();
    let mut rows: Vec<usize> = Vec::new();
    let mut seen = HashSet::new();
    for (row, op) in batch.ops().enumerate() {
        if include.is_some_and(|include| !include[row]) {
            continue;
        }
        if op == Op::Truncate {
            if !rows.is_empty() {
                rounds.push(Round::Changes(std::mem::take(&mut rows)));
            }
            seen.clear();
            rounds.push(Round::Truncate);
            continue;
        }
        let mut touched = Vec::with_capacity(2);
        if op == Op::Delete {
            touched.push(keys.before.row(row));
        } else {
            touched.push(keys.after.row(row));
            if keys.moved(batch, row, op) {
                touched.push(keys.before.row(row));
            }
        }
        if touched.iter().any(|k| seen.contains(k)) {
            rounds.push(Round::Changes(std::mem::take(&mut rows)));
            seen.clear();
        }
        seen.extend(touched);
        rows.push(row);
    }
    if !rows.is_empty() {
        rounds.push(Round::Changes(rows));
    }
    rounds
}

/// The target's rows, one per incoming change, as a struct of the batch's row columns:
/// `values` holds one vector per field, `found` whether the key had a row (the struct is
/// null where it had none).
pub fn current_rows(
    fields: &arrow::datatypes::Fields,
    values: &[Vec<Value>],
    found: Vec<bool>,
) -> Result<arrow::array::StructArray, String> {
    let columns = fields
        .iter()
        .zip(values)
        .map(|(field, values)| arrow_column(field, values))
        .collect::<Result<Vec<_>, _>>()?;
    arrow::array::StructArray::try_new(
        fields.clone(),
        columns,
        Some(arrow::buffer::NullBuffer::from(found)),
    )
    .map_err(|e| e.to_string())
}

/// A column of values read from the target, as an Arrow array of `field`'s type. SQLite's
/// value type serves both sinks: integers, floats, blobs, and text for every other type. The SQLite
/// sink stores integers and floats natively, booleans as 0/1, binary as blobs, and every
/// other type (decimals, dates, times, timestamps) as exact text, which Arrow's cast reads
/// back; the PostgreSQL sink reads its columns in those forms. Nested values (stored as
/// JSON) cannot be read back.
pub fn arrow_column(field: &Field, values: &[Value]) -> Result<ArrayRef, String> {
    let ty = field.data_type();
    let name = field.name();
    // `to` is `ty`, except for a zoned timestamp (below).
    let cast_to = |array: ArrayRef, to: &DataType| {
        let options = CastOptions {
            safe: false,
            ..Default::default()
        };
        cast_with_options(&array, to, &options)
            .map_err(|e| format!("column `{name}` does not read back as {ty}: {e}"))
    };
    let cast = |array: ArrayRef| cast_to(array, ty);
    let text = |v: &Value| match v {
        Value::Null => None,
        Value::Integer(i) => Some(i.to_string()),
        Value::Real(f) => Some(f.to_string()),
        Value::Text(t) => Some(t.clone()),
        Value::Blob(b) => Some(String::from_utf8_lossy(b).into_owned()),
    };
    match ty {
        DataType::Boolean => Ok(Arc::new(
            values
                .iter()
                .map(|v| match v {
                    Value::Integer(i) => Some(*i != 0),
                    Value::Real(f) => Some(*f != 0.0),
                    Value::Text(t) => Some(t == "true" || t == "1"),
                    _ => None,
                })
                .collect::<BooleanArray>(),
        )),
        DataType::Int8
        | DataType::Int16
        | DataType::Int32
        | DataType::Int64
        | DataType::UInt8
        | DataType::UInt16
        | DataType::UInt32
        | DataType::UInt64
        | DataType::Duration(_) => {
            let ints = values
                .iter()
                .map(|v| match v {
                    Value::Null => Ok(None),
                    Value::Integer(i) => Ok(Some(*i)),
                    other => Err(format!(
                        "column `{name}` holds {:?} where an integer belongs",
                        other.data_type()
                    )),
                })
                .collect::<Result<Int64Array, String>>()?;
            cast(Arc::new(ints))
        }
        DataType::Float16 | DataType::Float32 | DataType::Float64 => {
            let floats = values
                .iter()
                .map(|v| match v {
                    Value::Integer(i) => Some(*i as f64),
                    Value::Real(f) => Some(*f),
                    _ => None,
                })
                .collect::<Float64Array>();
            cast(Arc::new(floats))
        }
        DataType::Binary | DataType::LargeBinary | DataType::FixedSizeBinary(_) => {
            let blobs: BinaryArray = values
                .iter()
                .map(|v| match v {
                    Value::Blob(b) => Some(b.clone()),
                    Value::Text(t) => Some(t.clone().into_bytes()),
                    _ => None,
                })
                .collect();
            cast(Arc::new(blobs))
        }
        DataType::Utf8
        | DataType::LargeUtf8
        | DataType::Utf8View
        | DataType::Decimal32(..)
        | DataType::Decimal64(..)
        | DataType::Decimal128(..)
        | DataType::Decimal256(..)
        | DataType::Date32
        | DataType::Date64
        | DataType::Time32(_)
        | DataType::Time64(_)
        | DataType::Timestamp(_, None) => {
            let strings: StringArray = values.iter().map(text).collect();
            cast(Arc::new(strings))
        }
        DataType::Timestamp(unit, Some(_)) => {
            // The text is an instant in UTC ("…Z"); parsing it needs no time zone, and
            // the zone is only the column's display setting, so it is put back after.
            let strings: StringArray = values.iter().map(text).collect();
            let naive = cast_to(Arc::new(strings), &DataType::Timestamp(*unit, None))?;
            let data = naive
                .to_data()
                .into_builder()
                .data_type(ty.clone())
                .build()
                .map_err(|e| format!("column `{name}`: {e}"))?;
            Ok(arrow::array::make_array(data))
        }
        other => Err(format!(
            "column `{name}` is {other}, which the sink stores as JSON and cannot read back \
             for a resolver"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::compact::keys;
    use crate::sink::compact::tests::batch;
    use arrow::array::AsArray;
    use arrow::datatypes::{
        Date32Type, Decimal128Type, Int16Type, TimeUnit, TimestampMicrosecondType,
    };

    #[test]
    fn a_round_never_holds_one_key_twice() {
        let b = batch(&[
            r#"{"op":"c","after":{"id":1}}"#,
            r#"{"op":"c","after":{"id":2}}"#,
            r#"{"op":"u","before":{"id":1},"after":{"id":1}}"#,
            r#"{"op":"d","before":{"id":2}}"#,
            r#"{"op":"t","source":{"table":"t"}}"#,
            r#"{"op":"c","after":{"id":1}}"#,
        ]);
        let keys = keys(&b).unwrap();
        assert_eq!(
            rounds(&b, &keys, None),
            vec![
                Round::Changes(vec![0, 1]),
                Round::Changes(vec![2, 3]),
                Round::Truncate,
                Round::Changes(vec![5]),
            ]
        );
        // Rows already applied are left out.
        let include = [false, true, true, true, false, false];
        assert_eq!(
            rounds(&b, &keys, Some(&include)),
            vec![Round::Changes(vec![1, 2]), Round::Changes(vec![3])]
        );
    }

    #[test]
    fn a_key_move_touches_both_keys() {
        let b = batch(&[
            r#"{"op":"c","after":{"id":1}}"#,
            r#"{"op":"u","before":{"id":2},"after":{"id":3}}"#,
            r#"{"op":"c","after":{"id":2}}"#,
        ]);
        let keys = keys(&b).unwrap();
        assert_eq!(
            rounds(&b, &keys, None),
            vec![Round::Changes(vec![0, 1]), Round::Changes(vec![2])]
        );
    }

    #[test]
    fn a_partial_before_image_moves_no_key() {
        // Connectors that send only changed columns leave `before`'s key null: these are
        // updates of keys 5 and 6, not moves away from one null key.
        let b = batch(&[
            r#"{"op":"u","before":{"v":"x"},"after":{"id":5,"v":"y"}}"#,
            r#"{"op":"u","before":{"v":"x"},"after":{"id":6,"v":"y"}}"#,
        ]);
        let keys = keys(&b).unwrap();
        assert!(!keys.moved(&b, 0, Op::Update));
        assert_eq!(rounds(&b, &keys, None), vec![Round::Changes(vec![0, 1])]);
    }

    fn read(ty: DataType, values: &[Value]) -> ArrayRef {
        let array = arrow_column(&Field::new("c", ty.clone(), true), values).unwrap();
        assert_eq!(array.data_type(), &ty);
        array
    }

    #[test]
    fn stored_values_read_back_as_their_types() {
        let decimals = read(
            DataType::Decimal128(10, 2),
            &[Value::Text("12.50".into()), Value::Real(7.25), Value::Null],
        );
        let decimals = decimals.as_primitive::<Decimal128Type>();
        assert_eq!((decimals.value(0), decimals.value(1)), (1250, 725));
        assert!(decimals.is_null(2));

        let utc = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
        let times = read(utc, &[Value::Text("2024-03-01T10:20:30.123456Z".into())]);
        // 2024-03-01 is day 19783 of the Unix epoch.
        let micros = (19783 * 86_400 + 10 * 3600 + 20 * 60 + 30) * 1_000_000 + 123_456;
        assert_eq!(
            times.as_primitive::<TimestampMicrosecondType>().value(0),
            micros
        );

        let dates = read(DataType::Date32, &[Value::Text("2024-03-01".into())]);
        assert_eq!(dates.as_primitive::<Date32Type>().value(0), 19783);

        let small = read(DataType::Int16, &[Value::Integer(-3), Value::Null]);
        assert_eq!(small.as_primitive::<Int16Type>().value(0), -3);
        assert!(small.is_null(1));

        let flags = read(DataType::Boolean, &[Value::Integer(1), Value::Integer(0)]);
        assert!(flags.as_boolean().value(0) && !flags.as_boolean().value(1));
    }

    #[test]
    fn a_value_that_does_not_fit_names_its_column() {
        let field = Field::new("n", DataType::Int32, true);
        let error = arrow_column(&field, &[Value::Text("x".into())]).unwrap_err();
        assert!(error.contains("`n`"), "{error}");
        let field = Field::new("n", DataType::Int8, true);
        let error = arrow_column(&field, &[Value::Integer(300)]).unwrap_err();
        assert!(error.contains("`n`"), "{error}");
    }
}
