//! Type mapping: Arrow types to PostgreSQL column types and back, and which column
//! changes only widen.

use super::*;

pub fn quote(identifier: &str) -> String {
    format!("\"{}\"", identifier.replace('"', "\"\""))
}

/// The PostgreSQL type for an Arrow field (see docs/types.md).
pub fn pg_type(field: &Field) -> String {
    let semantic = field.metadata().get(SEMANTIC_KEY).map(String::as_str);
    match field.data_type() {
        DataType::Boolean => "boolean".into(),
        DataType::Int8 | DataType::Int16 => "smallint".into(),
        DataType::Int32 => "integer".into(),
        DataType::Int64 => "bigint".into(),
        DataType::Float32 => "real".into(),
        DataType::Float64 => "double precision".into(),
        DataType::Decimal128(p, s) | DataType::Decimal256(p, s) => format!("numeric({p},{s})"),
        DataType::Utf8 if semantic == Some("io.debezium.data.Json") => "jsonb".into(),
        DataType::Utf8 if semantic == Some("io.debezium.data.Uuid") => "uuid".into(),
        // Exact decimal text whose scale varies by row: an unconstrained numeric holds it.
        DataType::Utf8 if semantic == Some("io.debezium.data.VariableScaleDecimal") => {
            "numeric".into()
        }
        DataType::Binary => "bytea".into(),
        DataType::Date32 => "date".into(),
        DataType::Time32(_) | DataType::Time64(_) => "time".into(),
        DataType::Timestamp(_, None) => "timestamp".into(),
        DataType::Timestamp(_, Some(_)) => "timestamptz".into(),
        DataType::Duration(_) => "interval".into(),
        DataType::Struct(_) | DataType::List(_) => "jsonb".into(),
        _ => "text".into(),
    }
}

/// The weir type of a column the target already has, from `format_type`.
pub fn from_pg_declaration(declaration: &str) -> Option<ColumnType> {
    let d = declaration.trim().to_ascii_lowercase();
    if let Some(args) = d.strip_prefix("numeric(").and_then(|a| a.strip_suffix(')')) {
        let mut parts = args.split(',').map(str::trim);
        let precision: u8 = parts.next()?.parse().ok()?;
        let scale: i8 = parts.next().unwrap_or("0").parse().ok()?;
        return (precision <= 76).then_some(ColumnType::Decimal { precision, scale });
    }
    Some(match d.as_str() {
        "boolean" => ColumnType::Boolean,
        "smallint" => ColumnType::Int16,
        "integer" => ColumnType::Int32,
        "bigint" => ColumnType::Int64,
        "real" => ColumnType::Float32,
        "double precision" => ColumnType::Float64,
        "text" | "jsonb" | "json" | "uuid" => ColumnType::String,
        "bytea" => ColumnType::Bytes,
        "date" => ColumnType::Date,
        "time without time zone" => ColumnType::Time(Unit::Micros),
        "timestamp without time zone" => ColumnType::Timestamp {
            unit: Unit::Micros,
            utc: false,
        },
        "timestamp with time zone" => ColumnType::ZonedTimestamp { unit: Unit::Micros },
        _ if d.starts_with("character varying") || d.starts_with("character(") => {
            ColumnType::String
        }
        _ => return None,
    })
}

/// True when changing a column from `from` to `to` only widens it.
pub(super) fn widens(from: &str, to: &str) -> bool {
    let rank = |t: &str| match t {
        "smallint" => Some(1),
        "integer" => Some(2),
        "bigint" => Some(3),
        _ => None,
    };
    if let (Some(a), Some(b)) = (rank(from), rank(to)) {
        return b > a;
    }
    if from == "real" && to == "double precision" {
        return true;
    }
    let numeric = |t: &str| -> Option<(i32, i32)> {
        let args = t.strip_prefix("numeric(")?.strip_suffix(')')?;
        let (p, s) = args.split_once(',')?;
        Some((p.trim().parse().ok()?, s.trim().parse().ok()?))
    };
    match (numeric(from), numeric(to)) {
        (Some((p1, s1)), Some((p2, s2))) => s2 >= s1 && p2 - s2 >= p1 - s1 && (p2, s2) != (p1, s1),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn widening_rules() {
        assert!(widens("integer", "bigint"));
        assert!(!widens("bigint", "integer"));
        assert!(widens("numeric(10,2)", "numeric(12,4)"));
        assert!(!widens("numeric(10,2)", "numeric(10,4)"));
        assert!(!widens("text", "bigint"));
        assert_eq!(
            from_pg_declaration("numeric(10,2)"),
            Some(ColumnType::Decimal {
                precision: 10,
                scale: 2
            })
        );
        assert_eq!(
            from_pg_declaration("character varying(20)"),
            Some(ColumnType::String)
        );
        assert_eq!(quote("a\"b"), "\"a\"\"b\"");
    }
}
