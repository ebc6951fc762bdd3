//! Column types: how a Debezium / Kafka Connect field maps to Arrow, how a declared YAML
//! type maps to the same thing, and which type changes count as schema evolution.
//!
//! The full mapping table is in `docs/types.md`; keep the two in step.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Fields, TimeUnit};
use serde_json::Value as Json;

/// The Arrow field metadata key that records the Debezium semantic type of a column.
pub const SEMANTIC_KEY: &str = "weir.semantic";
/// Arrow's canonical extension-type key; weir sets `arrow.json` on JSON columns.
pub const EXTENSION_KEY: &str = "ARROW:extension:name";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Unit {
    Millis,
    Micros,
    Nanos,
}

impl Unit {
    fn arrow(self) -> TimeUnit {
        match self {
            Unit::Millis => TimeUnit::Millisecond,
            Unit::Micros => TimeUnit::Microsecond,
            Unit::Nanos => TimeUnit::Nanosecond,
        }
    }

    pub fn per_second(self) -> i64 {
        match self {
            Unit::Millis => 1_000,
            Unit::Micros => 1_000_000,
            Unit::Nanos => 1_000_000_000,
        }
    }
}

/// How a column's JSON values are read and which Arrow type holds them.
#[derive(Debug, Clone, PartialEq)]
pub enum ColumnType {
    /// Inferred, with only nulls seen so far. Becomes a real type at the first value.
    Null,
    Boolean,
    Int8,
    Int16,
    Int32,
    Int64,
    Float32,
    Float64,
    String,
    /// Base64 in JSON (Kafka Connect `bytes`).
    Bytes,
    /// Exact decimal: base64 two's-complement bytes, or a JSON number.
    Decimal {
        precision: u8,
        scale: i8,
    },
    /// `io.debezium.data.VariableScaleDecimal` (`{"scale": s, "value": base64}`): the scale
    /// changes per row, so the exact value is kept as decimal text.
    VariableScaleDecimal,
    /// Days since the epoch, or an ISO date string.
    Date,
    /// Time of day as an integer in the unit, or an ISO time string.
    Time(Unit),
    /// Epoch integer in the unit, or an ISO string. `utc` says whether the instant is UTC
    /// (Kafka Connect `Timestamp`) or a wall-clock value without zone (Debezium `Timestamp`).
    Timestamp {
        unit: Unit,
        utc: bool,
    },
    /// `io.debezium.time.ZonedTimestamp`: an ISO string with offset, stored as UTC.
    ZonedTimestamp {
        unit: Unit,
    },
    /// `io.debezium.time.ZonedTime`: an ISO time with offset, stored as nanoseconds UTC.
    ZonedTime,
    /// `io.debezium.time.MicroDuration` and friends.
    Duration(Unit),
    /// Any JSON value, kept as its JSON text (Kafka Connect maps, and objects or arrays
    /// met by inference).
    JsonText,
    Struct(Vec<ColumnDef>),
    List(Box<ColumnType>),
}

/// One column (or struct field): name, type, and the Debezium semantic name if any.
#[derive(Debug, Clone, PartialEq)]
pub struct ColumnDef {
    pub name: String,
    pub ty: ColumnType,
    pub semantic: Option<Arc<str>>,
    /// How decimals with more digits than the scale are treated (see `Rescale`).
    pub declared: bool,
}

impl ColumnDef {
    pub fn new(name: impl Into<String>, ty: ColumnType) -> Self {
        ColumnDef {
            name: name.into(),
            ty,
            semantic: None,
            declared: false,
        }
    }

    pub fn with_semantic(mut self, semantic: &str) -> Self {
        self.semantic = Some(semantic.into());
        self
    }

    /// The Arrow field for this column. Row images are nullable throughout: a delete has
    /// no after image, and columns added later are null in earlier rows.
    pub fn arrow_field(&self) -> Field {
        let mut metadata = HashMap::new();
        if let Some(semantic) = &self.semantic {
            metadata.insert(SEMANTIC_KEY.to_string(), semantic.to_string());
            if &**semantic == "io.debezium.data.Json" {
                metadata.insert(EXTENSION_KEY.to_string(), "arrow.json".to_string());
            }
        }
        if self.ty == ColumnType::JsonText {
            metadata.insert(EXTENSION_KEY.to_string(), "arrow.json".to_string());
        }
        Field::new(&self.name, self.ty.arrow_type(), true).with_metadata(metadata)
    }
}

impl ColumnType {
    pub fn arrow_type(&self) -> DataType {
        match self {
            ColumnType::Null => DataType::Null,
            ColumnType::Boolean => DataType::Boolean,
            ColumnType::Int8 => DataType::Int8,
            ColumnType::Int16 => DataType::Int16,
            ColumnType::Int32 => DataType::Int32,
            ColumnType::Int64 => DataType::Int64,
            ColumnType::Float32 => DataType::Float32,
            ColumnType::Float64 => DataType::Float64,
            ColumnType::String | ColumnType::VariableScaleDecimal | ColumnType::JsonText => {
                DataType::Utf8
            }
            ColumnType::Bytes => DataType::Binary,
            ColumnType::Decimal { precision, scale } if *precision <= 38 => {
                DataType::Decimal128(*precision, *scale)
            }
            ColumnType::Decimal { precision, scale } => DataType::Decimal256(*precision, *scale),
            ColumnType::Date => DataType::Date32,
            ColumnType::Time(Unit::Millis) => DataType::Time32(TimeUnit::Millisecond),
            ColumnType::Time(unit) => DataType::Time64(unit.arrow()),
            ColumnType::ZonedTime => DataType::Time64(TimeUnit::Nanosecond),
            ColumnType::Timestamp { unit, utc } => {
                DataType::Timestamp(unit.arrow(), utc.then(|| "UTC".into()))
            }
            ColumnType::ZonedTimestamp { unit } => {
                DataType::Timestamp(unit.arrow(), Some("UTC".into()))
            }
            ColumnType::Duration(unit) => DataType::Duration(unit.arrow()),
            ColumnType::Struct(fields) => DataType::Struct(struct_fields(fields)),
            ColumnType::List(item) => {
                DataType::List(Arc::new(Field::new("item", item.arrow_type(), true)))
            }
        }
    }

    /// A short name for messages, matching the declared-type names where there is one.
    pub fn name(&self) -> String {
        match self {
            ColumnType::Null => "null".into(),
            ColumnType::Boolean => "boolean".into(),
            ColumnType::Int8 => "int8".into(),
            ColumnType::Int16 => "int16".into(),
            ColumnType::Int32 => "int32".into(),
            ColumnType::Int64 => "int64".into(),
            ColumnType::Float32 => "float32".into(),
            ColumnType::Float64 => "float64".into(),
            ColumnType::String => "string".into(),
            ColumnType::Bytes => "bytes".into(),
            ColumnType::Decimal { precision, scale } => format!("decimal({precision},{scale})"),
            ColumnType::VariableScaleDecimal => "variable-scale decimal".into(),
            ColumnType::Date => "date".into(),
            ColumnType::Time(u) => format!("time_{}", unit_name(*u)),
            ColumnType::Timestamp { unit, utc: false } => format!("timestamp_{}", unit_name(*unit)),
            ColumnType::Timestamp { unit, utc: true } => {
                format!("timestamp_{} (UTC)", unit_name(*unit))
            }
            ColumnType::ZonedTimestamp { unit: Unit::Micros } => "timestamptz".into(),
            ColumnType::ZonedTimestamp { unit } => format!("timestamptz_{}", unit_name(*unit)),
            ColumnType::ZonedTime => "timetz".into(),
            ColumnType::Duration(u) => format!("duration_{}", unit_name(*u)),
            ColumnType::JsonText => "json".into(),
            ColumnType::Struct(_) => "struct".into(),
            ColumnType::List(item) => format!("list<{}>", item.name()),
        }
    }

    fn int_rank(&self) -> Option<u8> {
        match self {
            ColumnType::Int8 => Some(1),
            ColumnType::Int16 => Some(2),
            ColumnType::Int32 => Some(3),
            ColumnType::Int64 => Some(4),
            _ => None,
        }
    }
}

impl fmt::Display for ColumnType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

fn unit_name(unit: Unit) -> &'static str {
    match unit {
        Unit::Millis => "millis",
        Unit::Micros => "micros",
        Unit::Nanos => "nanos",
    }
}

pub fn struct_fields(columns: &[ColumnDef]) -> Fields {
    columns.iter().map(ColumnDef::arrow_field).collect()
}

/// The result of meeting a new type for a column that already has one.
#[derive(Debug, Clone, PartialEq)]
pub enum Merge {
    /// Keep the current type; incoming values fit it (same type, or narrower).
    Keep,
    /// Change the column to this wider type; existing values convert without loss.
    Widen(ColumnType),
    /// No lossless conversion exists.
    Incompatible,
}

/// Schema evolution rules. `inferred` relaxes one rule: an inferred integer column that
/// meets a fractional number becomes float64 (the stream never said it was an integer).
pub fn merge(current: &ColumnType, incoming: &ColumnType, inferred: bool) -> Merge {
    use ColumnType::*;
    if current == incoming || *incoming == Null {
        return Merge::Keep;
    }
    if *current == Null {
        return Merge::Widen(incoming.clone());
    }
    if let (Some(a), Some(b)) = (current.int_rank(), incoming.int_rank()) {
        return if b > a {
            Merge::Widen(incoming.clone())
        } else {
            Merge::Keep
        };
    }
    match (current, incoming) {
        (Float32, Float64) => Merge::Widen(Float64),
        (Float64, Float32) => Merge::Keep,
        (Int8 | Int16 | Int32, Float64) => Merge::Widen(Float64),
        (Int64, Float64) if inferred => Merge::Widen(Float64),
        (Int8 | Int16, Float32) => Merge::Widen(Float32),
        (
            Decimal {
                precision: p1,
                scale: s1,
            },
            Decimal {
                precision: p2,
                scale: s2,
            },
        ) => {
            let scale = (*s1).max(*s2);
            let integer_digits = (*p1 as i16 - *s1 as i16).max(*p2 as i16 - *s2 as i16);
            let precision = (integer_digits + scale as i16).clamp(1, 76) as u8;
            if precision == *p1 && scale == *s1 {
                Merge::Keep
            } else {
                Merge::Widen(Decimal { precision, scale })
            }
        }
        (Timestamp { unit: u1, utc: z1 }, Timestamp { unit: u2, utc: z2 }) if z1 == z2 => {
            if u2.per_second() > u1.per_second() {
                Merge::Widen(incoming.clone())
            } else {
                Merge::Keep
            }
        }
        (Struct(a), Struct(b)) => {
            let mut merged = a.clone();
            let mut changed = false;
            for field in b {
                match merged.iter_mut().find(|f| f.name == field.name) {
                    Some(existing) => match merge(&existing.ty, &field.ty, inferred) {
                        Merge::Keep => {}
                        Merge::Widen(t) => {
                            existing.ty = t;
                            changed = true;
                        }
                        Merge::Incompatible => return Merge::Incompatible,
                    },
                    None => {
                        merged.push(field.clone());
                        changed = true;
                    }
                }
            }
            if changed {
                Merge::Widen(Struct(merged))
            } else {
                Merge::Keep
            }
        }
        (List(a), List(b)) => match merge(a, b, inferred) {
            Merge::Keep => Merge::Keep,
            Merge::Widen(t) => Merge::Widen(List(Box::new(t))),
            Merge::Incompatible => Merge::Incompatible,
        },
        _ if same_storage(current, incoming) => Merge::Keep,
        _ => Merge::Incompatible,
    }
}

/// Types that read the same JSON into the same Arrow type (e.g. a string column whose
/// semantic type changes from Enum to plain string).
fn same_storage(a: &ColumnType, b: &ColumnType) -> bool {
    a.arrow_type() == b.arrow_type()
        && !matches!(
            a,
            ColumnType::Decimal { .. } | ColumnType::Struct(_) | ColumnType::List(_)
        )
}

/// Reads a Kafka Connect field schema (`{"type": "int32", "name": ..., "field": ...}`).
pub fn from_connect_schema(schema: &Json) -> Result<ColumnDef, String> {
    let name = schema
        .get("field")
        .and_then(Json::as_str)
        .unwrap_or_default()
        .to_string();
    let ty_name = schema
        .get("type")
        .and_then(Json::as_str)
        .unwrap_or_default();
    let semantic = schema.get("name").and_then(Json::as_str);
    let parameters = schema.get("parameters");
    let parameter = |key: &str| parameters.and_then(|p| p.get(key)).and_then(Json::as_str);

    let ty = match (semantic, ty_name) {
        (Some("org.apache.kafka.connect.data.Decimal"), _) => {
            let scale: i8 = parameter("scale")
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| format!("decimal field `{name}` has no scale parameter"))?;
            let precision: u8 = parameter("connect.decimal.precision")
                .and_then(|s| s.parse().ok())
                .unwrap_or(38)
                .max(scale.max(1) as u8);
            if precision > 76 {
                return Err(format!(
                    "decimal field `{name}` has precision {precision}; weir supports up to 76"
                ));
            }
            ColumnType::Decimal { precision, scale }
        }
        (Some("io.debezium.data.VariableScaleDecimal"), _) => ColumnType::VariableScaleDecimal,
        (Some("io.debezium.time.Date" | "org.apache.kafka.connect.data.Date"), _) => {
            ColumnType::Date
        }
        (Some("io.debezium.time.Time" | "org.apache.kafka.connect.data.Time"), _) => {
            ColumnType::Time(Unit::Millis)
        }
        (Some("io.debezium.time.MicroTime"), _) => ColumnType::Time(Unit::Micros),
        (Some("io.debezium.time.NanoTime"), _) => ColumnType::Time(Unit::Nanos),
        (Some("io.debezium.time.Timestamp"), _) => ColumnType::Timestamp {
            unit: Unit::Millis,
            utc: false,
        },
        (Some("org.apache.kafka.connect.data.Timestamp"), _) => ColumnType::Timestamp {
            unit: Unit::Millis,
            utc: true,
        },
        (Some("io.debezium.time.MicroTimestamp"), _) => ColumnType::Timestamp {
            unit: Unit::Micros,
            utc: false,
        },
        (Some("io.debezium.time.NanoTimestamp"), _) => ColumnType::Timestamp {
            unit: Unit::Nanos,
            utc: false,
        },
        (Some("io.debezium.time.ZonedTimestamp"), _) => {
            ColumnType::ZonedTimestamp { unit: Unit::Micros }
        }
        (Some("io.debezium.time.ZonedTime"), _) => ColumnType::ZonedTime,
        (Some("io.debezium.time.MicroDuration"), _) => ColumnType::Duration(Unit::Micros),
        (Some("io.debezium.time.NanoDuration"), _) => ColumnType::Duration(Unit::Nanos),
        (Some("io.debezium.time.Year"), _) => ColumnType::Int32,
        (_, "struct") => {
            let fields = schema
                .get("fields")
                .and_then(Json::as_array)
                .ok_or_else(|| format!("struct field `{name}` has no fields"))?;
            ColumnType::Struct(
                fields
                    .iter()
                    .map(from_connect_schema)
                    .collect::<Result<_, _>>()?,
            )
        }
        (_, "array") => {
            let items = schema
                .get("items")
                .ok_or_else(|| format!("array field `{name}` has no item schema"))?;
            ColumnType::List(Box::new(from_connect_schema(items)?.ty))
        }
        (_, "map") => ColumnType::JsonText,
        (_, "boolean") => ColumnType::Boolean,
        (_, "int8") => ColumnType::Int8,
        (_, "int16") => ColumnType::Int16,
        (_, "int32") => ColumnType::Int32,
        (_, "int64") => ColumnType::Int64,
        (_, "float" | "float32") => ColumnType::Float32,
        (_, "double" | "float64") => ColumnType::Float64,
        (_, "string") => ColumnType::String,
        (_, "bytes") => ColumnType::Bytes,
        (_, other) => {
            return Err(format!(
                "field `{name}` has the unknown Kafka Connect type `{other}`"
            ));
        }
    };
    Ok(ColumnDef {
        name,
        ty,
        semantic: semantic.map(Arc::from),
        declared: false,
    })
}

/// The weir type of a column the target already has, from its SQL declaration (SQLite
/// type names, read with SQLite's affinity rules). `None` when the declaration says too
/// little to hold the stream to it.
pub fn from_sql_declaration(declaration: &str) -> Option<ColumnType> {
    let upper = declaration.trim().to_ascii_uppercase();
    if let Some(args) = upper
        .strip_prefix("DECIMAL(")
        .or_else(|| upper.strip_prefix("NUMERIC("))
        .or_else(|| upper.strip_prefix("DECIMAL TEXT("))
        .and_then(|a| a.strip_suffix(')'))
    {
        return parse_decimal_args(args)
            .ok()
            .map(|(precision, scale)| ColumnType::Decimal { precision, scale });
    }
    Some(match upper.as_str() {
        "BOOLEAN" | "BOOL" => ColumnType::Boolean,
        "DATE" => ColumnType::Date,
        "TIME" => ColumnType::Time(Unit::Micros),
        "TIMESTAMP" | "DATETIME" => ColumnType::Timestamp {
            unit: Unit::Micros,
            utc: false,
        },
        "TIMESTAMPTZ" => ColumnType::ZonedTimestamp { unit: Unit::Micros },
        _ if upper.contains("INT") => ColumnType::Int64,
        _ if ["CHAR", "CLOB", "TEXT"].iter().any(|t| upper.contains(t)) => ColumnType::String,
        _ if upper.contains("BLOB") => ColumnType::Bytes,
        _ if ["REAL", "FLOA", "DOUB"].iter().any(|t| upper.contains(t)) => ColumnType::Float64,
        _ => return None,
    })
}

/// The weir type for an Arrow type that weir itself writes (e.g. read back from a Parquet
/// file). `None` for Arrow types weir does not produce.
pub fn from_arrow(data_type: &DataType) -> Option<ColumnType> {
    Some(match data_type {
        DataType::Null => ColumnType::Null,
        DataType::Boolean => ColumnType::Boolean,
        DataType::Int8 => ColumnType::Int8,
        DataType::Int16 => ColumnType::Int16,
        DataType::Int32 => ColumnType::Int32,
        DataType::Int64 => ColumnType::Int64,
        DataType::Float32 => ColumnType::Float32,
        DataType::Float64 => ColumnType::Float64,
        DataType::Utf8 => ColumnType::String,
        DataType::Binary => ColumnType::Bytes,
        DataType::Decimal128(p, s) | DataType::Decimal256(p, s) => ColumnType::Decimal {
            precision: *p,
            scale: *s,
        },
        DataType::Date32 => ColumnType::Date,
        DataType::Time32(_) => ColumnType::Time(Unit::Millis),
        DataType::Time64(TimeUnit::Microsecond) => ColumnType::Time(Unit::Micros),
        DataType::Time64(_) => ColumnType::Time(Unit::Nanos),
        DataType::Timestamp(unit, tz) => {
            let unit = match unit {
                TimeUnit::Millisecond => Unit::Millis,
                TimeUnit::Microsecond => Unit::Micros,
                _ => Unit::Nanos,
            };
            match tz {
                Some(_) => ColumnType::Timestamp { unit, utc: true },
                None => ColumnType::Timestamp { unit, utc: false },
            }
        }
        DataType::Duration(TimeUnit::Microsecond) => ColumnType::Duration(Unit::Micros),
        DataType::Duration(_) => ColumnType::Duration(Unit::Nanos),
        DataType::Struct(fields) => ColumnType::Struct(
            fields
                .iter()
                .map(|f| from_arrow(f.data_type()).map(|t| ColumnDef::new(f.name(), t)))
                .collect::<Option<_>>()?,
        ),
        DataType::List(item) => ColumnType::List(Box::new(from_arrow(item.data_type())?)),
        _ => return None,
    })
}

/// The type names accepted in `table.columns`, for messages and docs.
pub const DECLARED_TYPE_NAMES: &str = "boolean, int8, int16, int32, int64, float32, float64, \
string, bytes, decimal(p,s), date, time_millis, time_micros, time_nanos, timestamp_millis, \
timestamp_micros, timestamp_nanos, timestamptz, timestamptz_nanos, timetz, json, uuid";

/// Parses a declared column type (`int64`, `decimal(10,3)`, `timestamptz`, ...). Common SQL
/// spellings and Debezium semantic names are accepted too.
pub fn parse_declared(text: &str) -> Result<ColumnDef, String> {
    let lower = text.trim().to_ascii_lowercase();
    let plain = |ty| Ok(ColumnDef::new("", ty));
    let semantic = |ty, name: &str| Ok(ColumnDef::new("", ty).with_semantic(name));
    let result = match lower.as_str() {
        "boolean" | "bool" => plain(ColumnType::Boolean),
        "int8" | "tinyint" => plain(ColumnType::Int8),
        "int16" | "smallint" => plain(ColumnType::Int16),
        "int32" | "int" | "integer" => plain(ColumnType::Int32),
        "int64" | "bigint" | "long" => plain(ColumnType::Int64),
        "float32" | "float" | "real" => plain(ColumnType::Float32),
        "float64" | "double" => plain(ColumnType::Float64),
        "string" | "text" | "varchar" => plain(ColumnType::String),
        "bytes" | "binary" | "blob" => plain(ColumnType::Bytes),
        "date" => plain(ColumnType::Date),
        "time_millis" => plain(ColumnType::Time(Unit::Millis)),
        "time_micros" | "time" => plain(ColumnType::Time(Unit::Micros)),
        "time_nanos" => plain(ColumnType::Time(Unit::Nanos)),
        "timestamp_millis" => plain(ColumnType::Timestamp {
            unit: Unit::Millis,
            utc: false,
        }),
        "timestamp_micros" | "timestamp" => plain(ColumnType::Timestamp {
            unit: Unit::Micros,
            utc: false,
        }),
        "timestamp_nanos" => plain(ColumnType::Timestamp {
            unit: Unit::Nanos,
            utc: false,
        }),
        "timestamptz" => plain(ColumnType::ZonedTimestamp { unit: Unit::Micros }),
        "timestamptz_nanos" => plain(ColumnType::ZonedTimestamp { unit: Unit::Nanos }),
        "timetz" => plain(ColumnType::ZonedTime),
        "json" | "jsonb" => semantic(ColumnType::String, "io.debezium.data.Json"),
        "uuid" => semantic(ColumnType::String, "io.debezium.data.Uuid"),
        _ => {
            if let Some(args) = lower
                .strip_prefix("decimal(")
                .or_else(|| lower.strip_prefix("numeric("))
                .and_then(|s| s.strip_suffix(')'))
            {
                parse_decimal_args(args).map(|(precision, scale)| {
                    ColumnDef::new("", ColumnType::Decimal { precision, scale })
                })
            } else if text.contains('.') {
                // A Debezium / Kafka Connect semantic name, e.g. io.debezium.time.MicroTimestamp.
                from_connect_schema(&serde_json::json!({"type": "", "name": text.trim()}))
                    .map_err(|_| String::new())
                    .and_then(|c| {
                        if matches!(c.ty, ColumnType::Decimal { .. }) {
                            Err(String::new())
                        } else {
                            Ok(c)
                        }
                    })
            } else {
                Err(String::new())
            }
        }
    };
    result
        .map(|mut c| {
            c.declared = true;
            c
        })
        .map_err(|detail| {
            if detail.is_empty() {
                format!("`{text}` is not a column type weir knows")
            } else {
                detail
            }
        })
}

fn parse_decimal_args(args: &str) -> Result<(u8, i8), String> {
    let mut parts = args.split(',').map(str::trim);
    let precision: u8 = parts
        .next()
        .and_then(|p| p.parse().ok())
        .ok_or("decimal needs a precision: decimal(p,s)")?;
    let scale: i8 = match parts.next() {
        Some(s) => s.parse().map_err(|_| "decimal scale must be a number")?,
        None => 0,
    };
    if parts.next().is_some() {
        return Err("decimal takes two arguments: decimal(p,s)".into());
    }
    if precision == 0 || precision > 76 {
        return Err(format!(
            "decimal precision must be 1 to 76, not {precision}"
        ));
    }
    if scale < 0 || scale as u8 > precision {
        return Err(format!(
            "decimal scale must be between 0 and the precision {precision}, not {scale}"
        ));
    }
    Ok((precision, scale))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn connect_schemas_map_to_arrow() {
        let decimal = from_connect_schema(&json!({
            "type": "bytes", "optional": true, "field": "price",
            "name": "org.apache.kafka.connect.data.Decimal",
            "parameters": {"scale": "4", "connect.decimal.precision": "8"}
        }))
        .unwrap();
        assert_eq!(decimal.name, "price");
        assert_eq!(
            decimal.arrow_field().data_type(),
            &DataType::Decimal128(8, 4)
        );

        let wide = from_connect_schema(&json!({
            "type": "bytes", "field": "big", "name": "org.apache.kafka.connect.data.Decimal",
            "parameters": {"scale": "1", "connect.decimal.precision": "65"}
        }))
        .unwrap();
        assert_eq!(wide.ty.arrow_type(), DataType::Decimal256(65, 1));

        let zoned = from_connect_schema(&json!({
            "type": "string", "field": "ts", "name": "io.debezium.time.ZonedTimestamp"
        }))
        .unwrap();
        assert_eq!(
            zoned.ty.arrow_type(),
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
        );
        assert_eq!(
            zoned
                .arrow_field()
                .metadata()
                .get(SEMANTIC_KEY)
                .map(String::as_str),
            Some("io.debezium.time.ZonedTimestamp")
        );

        let json_col = from_connect_schema(&json!({
            "type": "string", "field": "doc", "name": "io.debezium.data.Json"
        }))
        .unwrap();
        assert_eq!(
            json_col
                .arrow_field()
                .metadata()
                .get(EXTENSION_KEY)
                .map(String::as_str),
            Some("arrow.json")
        );

        let point = from_connect_schema(&json!({
            "type": "struct", "field": "location", "name": "io.debezium.data.geometry.Point",
            "fields": [
                {"type": "double", "field": "x"}, {"type": "double", "field": "y"},
                {"type": "bytes", "field": "wkb", "optional": true},
                {"type": "int32", "field": "srid", "optional": true}
            ]
        }))
        .unwrap();
        let DataType::Struct(fields) = point.ty.arrow_type() else {
            panic!()
        };
        assert_eq!(fields.len(), 4);
        assert_eq!(fields[2].data_type(), &DataType::Binary);

        assert!(from_connect_schema(&json!({"type": "mystery", "field": "x"})).is_err());
    }

    #[test]
    fn declared_types_parse() {
        assert_eq!(parse_declared("int64").unwrap().ty, ColumnType::Int64);
        assert_eq!(
            parse_declared("DECIMAL(10, 3)").unwrap().ty,
            ColumnType::Decimal {
                precision: 10,
                scale: 3
            }
        );
        assert_eq!(
            parse_declared("io.debezium.time.MicroTimestamp")
                .unwrap()
                .ty,
            ColumnType::Timestamp {
                unit: Unit::Micros,
                utc: false
            }
        );
        assert!(
            parse_declared("decimal(80,2)")
                .unwrap_err()
                .contains("1 to 76")
        );
        assert!(
            parse_declared("decimal(5,7)")
                .unwrap_err()
                .contains("scale")
        );
        assert!(
            parse_declared("int65")
                .unwrap_err()
                .contains("not a column type")
        );
        assert!(parse_declared("int32").unwrap().declared);
    }

    #[test]
    fn target_declarations_map_back() {
        assert_eq!(from_sql_declaration("INTEGER"), Some(ColumnType::Int64));
        assert_eq!(
            from_sql_declaration("varchar(20)"),
            Some(ColumnType::String)
        );
        assert_eq!(
            from_sql_declaration("DECIMAL(10,2)"),
            Some(ColumnType::Decimal {
                precision: 10,
                scale: 2
            })
        );
        assert_eq!(from_sql_declaration("REAL"), Some(ColumnType::Float64));
        assert_eq!(
            from_sql_declaration("DECIMAL TEXT(20,0)"),
            Some(ColumnType::Decimal {
                precision: 20,
                scale: 0
            })
        );
        assert_eq!(from_sql_declaration(""), None);
        for ty in [
            ColumnType::Int32,
            ColumnType::Decimal {
                precision: 50,
                scale: 3,
            },
            ColumnType::ZonedTimestamp { unit: Unit::Micros },
            ColumnType::Time(Unit::Nanos),
        ] {
            let back = from_arrow(&ty.arrow_type()).unwrap();
            assert_eq!(back.arrow_type(), ty.arrow_type());
        }
    }

    #[test]
    fn evolution_widens_and_refuses_lossy_changes() {
        use ColumnType::*;
        assert_eq!(merge(&Int32, &Int64, false), Merge::Widen(Int64));
        assert_eq!(
            merge(&Int64, &Int32, false),
            Merge::Keep,
            "narrower values fit"
        );
        assert_eq!(merge(&Null, &String, true), Merge::Widen(String));
        assert_eq!(merge(&Int64, &String, false), Merge::Incompatible);
        assert_eq!(merge(&Int64, &Float64, false), Merge::Incompatible);
        assert_eq!(merge(&Int64, &Float64, true), Merge::Widen(Float64));
        assert_eq!(
            merge(
                &Decimal {
                    precision: 8,
                    scale: 2
                },
                &Decimal {
                    precision: 10,
                    scale: 4
                },
                false
            ),
            Merge::Widen(Decimal {
                precision: 10,
                scale: 4
            })
        );
        let a = Struct(vec![ColumnDef::new("x", Int32)]);
        let b = Struct(vec![
            ColumnDef::new("x", Int64),
            ColumnDef::new("y", String),
        ]);
        let Merge::Widen(Struct(fields)) = merge(&a, &b, false) else {
            panic!()
        };
        assert_eq!(fields.len(), 2);
        assert_eq!(fields[0].ty, Int64);
    }
}
