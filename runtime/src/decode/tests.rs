//! Decoder unit tests on small hand-written events. The shared third-party fixtures are
//! exercised end to end in the workspace's `tests/conformance.rs`.

use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, Decimal128Type, Int64Type, TimeUnit};
use serde_json::json;

use super::*;
use crate::position::Position;

fn spec() -> TableSpec {
    TableSpec::new("t", &["id"])
}

fn at(line: u64) -> Position {
    Position::File {
        stream: "file:test".into(),
        line,
        offset: 0,
        next: line,
    }
}

fn decode_all(decoder: &mut Decoder, events: &[String]) -> Vec<Result<Outcome, DecodeError>> {
    events
        .iter()
        .enumerate()
        .map(|(i, e)| {
            decoder.decode(
                RawRecord {
                    headers: Default::default(),
                    key: None,
                    value: Some(e.as_bytes()),
                },
                &at(i as u64 + 1),
            )
        })
        .collect()
}

fn ok(decoder: &mut Decoder, events: &[String]) -> ChangeBatch {
    for (i, r) in decode_all(decoder, events).into_iter().enumerate() {
        assert_eq!(r, Ok(Outcome::Row), "event {i}: {}", events[i]);
    }
    decoder.finish(Checkpoint::default())
}

fn after_column<'a>(batch: &'a ChangeBatch, name: &str) -> &'a ArrayRef {
    batch
        .after()
        .column_by_name(name)
        .unwrap_or_else(|| panic!("no column {name}"))
}

fn render(batch: &ChangeBatch, image: &StructArray, row: usize) -> String {
    let _ = batch;
    let mut out = String::new();
    crate::encode::write_struct_row(&mut out, image, row);
    out
}

/// Compares a rendered row with the expected JSON, ignoring key order (test events are
/// built with `json!`, which sorts keys).
fn assert_row(batch: &ChangeBatch, image: &StructArray, row: usize, expected: &str) {
    let actual: serde_json::Value = serde_json::from_str(&render(batch, image, row)).unwrap();
    let expected: serde_json::Value = serde_json::from_str(expected).unwrap();
    assert_eq!(actual, expected);
}

use arrow::array::StructArray;

/// A Kafka Connect envelope schema for rows with `fields`.
fn with_schema(fields: serde_json::Value, payload: serde_json::Value) -> String {
    json!({
        "schema": {
            "type": "struct",
            "fields": [
                {"type": "struct", "fields": fields.clone(), "optional": true, "field": "before"},
                {"type": "struct", "fields": fields, "optional": true, "field": "after"},
                {"type": "string", "optional": false, "field": "op"}
            ]
        },
        "payload": payload
    })
    .to_string()
}

#[test]
fn all_three_envelope_shapes_decode_the_same_row() {
    let payload =
        json!({"before": null, "after": {"id": 1, "name": "a"}, "op": "c", "ts_ms": 1000});
    let fields = json!([
        {"type": "int64", "optional": false, "field": "id"},
        {"type": "string", "optional": true, "field": "name"}
    ]);
    let events = vec![
        payload.to_string(),
        json!({ "payload": payload }).to_string(),
        with_schema(fields, payload.clone()),
        // Pretty-printed JSON is fine too (one document per record).
        serde_json::to_string_pretty(&payload).unwrap(),
    ];
    let mut decoder = Decoder::new(spec(), Format::DebeziumJson);
    let batch = ok(&mut decoder, &events);
    assert_eq!(batch.num_rows(), 4);
    for row in 0..4 {
        assert_eq!(render(&batch, batch.after(), row), r#"{"id":1,"name":"a"}"#);
        assert!(batch.before().is_null(row));
    }
    let event_time = batch.data.column_by_name("event_time").unwrap();
    assert_eq!(
        event_time
            .as_primitive::<arrow::datatypes::TimestampMicrosecondType>()
            .value(0),
        1_000_000
    );
    assert_eq!(batch.table.primary_key, ["id"]);
}

#[test]
fn tombstones_produce_no_rows_and_are_counted() {
    let mut decoder = Decoder::new(spec(), Format::DebeziumJson);
    let results = decode_all(
        &mut decoder,
        &[
            "".into(),
            "null".into(),
            "  ".into(),
            r#"{"schema":null,"payload":null}"#.into(),
        ],
    );
    assert!(results.iter().all(|r| *r == Ok(Outcome::Tombstone)));
    assert_eq!(decoder.stats.tombstones, 4);
    assert_eq!(decoder.finish(Checkpoint::default()).num_rows(), 0);
}

#[test]
fn every_operation_decodes() {
    let events: Vec<String> = [
        json!({"op": "r", "after": {"id": 1, "v": 1}, "source": {"snapshot": "true"}}),
        json!({"op": "c", "after": {"id": 2, "v": 2}}),
        json!({"op": "u", "before": {"id": 2, "v": 2}, "after": {"id": 2, "v": 3}}),
        json!({"op": "d", "before": {"id": 1, "v": 1}, "after": null}),
        json!({"op": "t", "source": {"table": "t"}}),
    ]
    .iter()
    .map(|e| e.to_string())
    .collect();
    let mut decoder = Decoder::new(spec(), Format::DebeziumJson);
    let batch = ok(&mut decoder, &events);
    let ops: Vec<&str> = batch.ops().map(Op::as_str).collect();
    assert_eq!(ops, ["r", "c", "u", "d", "t"]);
    assert!(batch.after().is_null(3) && batch.before().is_valid(3));
    assert!(batch.after().is_null(4) && batch.before().is_null(4));
    let snapshot = batch
        .data
        .column_by_name("source_snapshot")
        .unwrap()
        .as_string::<i32>();
    assert_eq!(snapshot.value(0), "true");
}

#[test]
fn source_coordinates_fill_the_envelope() {
    let event = json!({
        "op": "u",
        "before": {"id": 1}, "after": {"id": 1},
        "source": {"version": "2.5", "connector": "postgresql", "name": "srv", "ts_ms": 1596010985627_i64,
                   "snapshot": false, "db": "app", "schema": "inventory", "table": "products",
                   "txId": 607, "lsn": 34133584, "xmin": null},
        "ts_ms": 1596010986047_i64,
        "ts_ns": 1596010986047123456_i64,
        "transaction": {"id": "607:34133584", "total_order": 1}
    });
    let mut decoder = Decoder::new(spec(), Format::DebeziumJson);
    let batch = ok(&mut decoder, &[event.to_string()]);
    let text = |name: &str| {
        batch
            .data
            .column_by_name(name)
            .unwrap()
            .as_string::<i32>()
            .value(0)
            .to_string()
    };
    assert_eq!(text("source_connector"), "postgresql");
    assert_eq!(text("source_name"), "srv");
    assert_eq!(text("source_db"), "app");
    assert_eq!(text("source_schema"), "inventory");
    assert_eq!(text("source_table"), "products");
    assert_eq!(text("source_position"), "lsn=34133584");
    assert_eq!(
        text("source_txid"),
        "607",
        "source.txId wins over transaction.id"
    );
    assert_eq!(text("source_snapshot"), "false");
    assert!(
        batch.data.column_by_name("origin").unwrap().is_null(0),
        "Debezium's source block names no origin"
    );
    // ts_ns has 19 digits and is the finest time the event offers.
    let event_time = batch.data.column_by_name("event_time").unwrap();
    assert_eq!(
        event_time
            .as_primitive::<arrow::datatypes::TimestampMicrosecondType>()
            .value(0),
        1_596_010_986_047_123
    );
    let source_time = batch.data.column_by_name("source_time").unwrap();
    assert_eq!(
        source_time
            .as_primitive::<arrow::datatypes::TimestampMicrosecondType>()
            .value(0),
        1_596_010_985_627_000
    );

    let mysql = json!({"op": "c", "after": {"id": 2},
        "source": {"connector": "mysql", "file": "mysql-bin.000003", "pos": 154, "row": 0, "gtid": null}});
    let batch = ok(&mut decoder, &[mysql.to_string()]);
    let position = batch
        .data
        .column_by_name("source_position")
        .unwrap()
        .as_string::<i32>();
    assert_eq!(position.value(0), "file=mysql-bin.000003,pos=154,row=0");
}

#[test]
fn debezium_logical_types_map_to_arrow() {
    let fields = json!([
        {"type": "int32", "optional": false, "field": "id"},
        {"type": "bytes", "optional": true, "field": "price", "name": "org.apache.kafka.connect.data.Decimal",
         "parameters": {"scale": "4", "connect.decimal.precision": "8"}},
        {"type": "struct", "optional": true, "field": "vsd", "name": "io.debezium.data.VariableScaleDecimal",
         "fields": [{"type": "int32", "field": "scale"}, {"type": "bytes", "field": "value"}]},
        {"type": "int32", "optional": true, "field": "day", "name": "io.debezium.time.Date"},
        {"type": "int64", "optional": true, "field": "at", "name": "io.debezium.time.MicroTimestamp"},
        {"type": "string", "optional": true, "field": "zoned", "name": "io.debezium.time.ZonedTimestamp"},
        {"type": "int64", "optional": true, "field": "t", "name": "io.debezium.time.MicroTime"},
        {"type": "string", "optional": true, "field": "doc", "name": "io.debezium.data.Json"},
        {"type": "string", "optional": true, "field": "uid", "name": "io.debezium.data.Uuid"},
        {"type": "string", "optional": true, "field": "color", "name": "io.debezium.data.Enum",
         "parameters": {"allowed": "red,green"}},
        {"type": "bytes", "optional": true, "field": "flags", "name": "io.debezium.data.Bits",
         "parameters": {"length": "8"}},
        {"type": "int32", "optional": true, "field": "yr", "name": "io.debezium.time.Year"},
        {"type": "int64", "optional": true, "field": "ts_conn", "name": "org.apache.kafka.connect.data.Timestamp"},
        {"type": "struct", "optional": true, "field": "pt", "name": "io.debezium.data.geometry.Point",
         "fields": [{"type": "double", "field": "x"}, {"type": "double", "field": "y"},
                    {"type": "bytes", "optional": true, "field": "wkb"}, {"type": "int32", "optional": true, "field": "srid"}]},
        {"type": "array", "optional": true, "field": "tags", "items": {"type": "string"}},
    ]);
    let payload = json!({"op": "c", "after": {
        "id": 1, "price": "EtaH", "vsd": {"scale": 2, "value": "AeI="}, "day": 18460,
        "at": 1595008822123456_i64, "zoned": "2020-07-17T18:00:22.5+02:00", "t": 64822000000_i64,
        "doc": "{\"k\": 1}", "uid": "6a1f0b2e-0000-4000-8000-000000000001", "color": "red",
        "flags": "BQ==", "yr": 2021, "ts_conn": 1595008822123_i64,
        "pt": {"x": 1.0, "y": 2.0, "wkb": "AQE=", "srid": null}, "tags": ["a", "b"]
    }});
    let mut decoder = Decoder::new(spec(), Format::DebeziumJson);
    let batch = ok(&mut decoder, &[with_schema(fields, payload)]);
    let types: Vec<(String, DataType)> = batch
        .row_fields()
        .iter()
        .map(|f| (f.name().clone(), f.data_type().clone()))
        .collect();
    let ty = |name: &str| types.iter().find(|(n, _)| n == name).unwrap().1.clone();
    assert_eq!(ty("id"), DataType::Int32);
    assert_eq!(ty("price"), DataType::Decimal128(8, 4));
    assert_eq!(ty("vsd"), DataType::Utf8);
    assert_eq!(ty("day"), DataType::Date32);
    assert_eq!(ty("at"), DataType::Timestamp(TimeUnit::Microsecond, None));
    assert_eq!(
        ty("zoned"),
        DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
    );
    assert_eq!(ty("t"), DataType::Time64(TimeUnit::Microsecond));
    assert_eq!(ty("doc"), DataType::Utf8);
    assert_eq!(ty("flags"), DataType::Binary);
    assert_eq!(ty("yr"), DataType::Int32);
    assert_eq!(
        ty("ts_conn"),
        DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()))
    );
    assert!(matches!(ty("pt"), DataType::Struct(f) if f.len() == 4));
    assert!(matches!(ty("tags"), DataType::List(_)));

    let price = after_column(&batch, "price").as_primitive::<Decimal128Type>();
    assert_eq!(price.value_as_string(0), "123.4567");
    assert_eq!(
        render(&batch, batch.after(), 0),
        concat!(
            r#"{"id":1,"price":123.4567,"vsd":"4.82","day":"2020-07-17","at":"2020-07-17T18:00:22.123456","#,
            r#""zoned":"2020-07-17T16:00:22.500Z","t":"18:00:22","doc":"{\"k\": 1}","#,
            r#""uid":"6a1f0b2e-0000-4000-8000-000000000001","color":"red","flags":"BQ==","yr":2021,"#,
            r#""ts_conn":"2020-07-17T18:00:22.123Z","pt":{"x":1.0,"y":2.0,"wkb":"AQE=","srid":null},"tags":["a","b"]}"#
        )
    );
    let doc_field = batch.row_fields().find("doc").unwrap().1.clone();
    assert_eq!(
        doc_field
            .metadata()
            .get(types::EXTENSION_KEY)
            .map(String::as_str),
        Some("arrow.json")
    );
}

#[test]
fn decimals_with_more_than_38_digits_use_decimal256() {
    let fields = json!([
        {"type": "int32", "field": "id"},
        {"type": "bytes", "field": "big", "name": "org.apache.kafka.connect.data.Decimal",
         "parameters": {"scale": "1", "connect.decimal.precision": "65"}}
    ]);
    let payload = json!({"op": "c", "after": {"id": 1, "big": "FJqkSQ=="}});
    let mut decoder = Decoder::new(spec(), Format::DebeziumJson);
    let batch = ok(&mut decoder, &[with_schema(fields, payload)]);
    assert_eq!(
        after_column(&batch, "big").data_type(),
        &DataType::Decimal256(65, 1)
    );
    assert_row(&batch, batch.after(), 0, r#"{"id":1,"big":34567892.1}"#);
}

#[test]
fn inference_types_columns_from_values_and_widens_integers() {
    let events: Vec<String> = [
        json!({"op": "c", "after": {"id": 1, "w": 1, "n": null, "ok": true, "tags": [1, 2]}}),
        json!({"op": "c", "after": {"id": 2, "w": 0.875, "n": "x", "ok": false, "tags": null}}),
    ]
    .iter()
    .map(|e| e.to_string())
    .collect();
    let mut decoder = Decoder::new(spec(), Format::DebeziumJson);
    let batch = ok(&mut decoder, &events);
    let fields = batch.row_fields();
    let ty = |n: &str| fields.find(n).unwrap().1.data_type().clone();
    assert_eq!(ty("id"), DataType::Int64);
    assert_eq!(
        ty("w"),
        DataType::Float64,
        "an integer column widens at its first fraction"
    );
    assert_eq!(
        ty("n"),
        DataType::Utf8,
        "a null-only column takes the first real value's type"
    );
    assert_eq!(ty("ok"), DataType::Boolean);
    assert_eq!(
        ty("tags"),
        DataType::Utf8,
        "nested values are kept as JSON text"
    );
    assert_row(
        &batch,
        batch.after(),
        0,
        r#"{"id":1,"w":1.0,"n":null,"ok":true,"tags":"[1,2]"}"#,
    );
    assert_row(
        &batch,
        batch.after(),
        1,
        r#"{"id":2,"w":0.875,"n":"x","ok":false,"tags":null}"#,
    );

    // A value that contradicts an inferred type is a bad record, not a schema change.
    let bad = json!({"op": "c", "after": {"id": 3, "ok": "maybe"}}).to_string();
    let result = decode_all(&mut decoder, &[bad]).pop().unwrap();
    let Err(DecodeError::Record(e)) = result else {
        panic!("{result:?}")
    };
    assert!(
        e.message.contains("column `ok` (inferred as boolean"),
        "{}",
        e.message
    );
}

#[test]
fn declared_columns_type_schemaless_streams() {
    let mut s = spec();
    s.declared = vec![
        ColumnDef {
            name: "id".into(),
            ..types::parse_declared("decimal(20,0)").unwrap()
        },
        ColumnDef {
            name: "weight".into(),
            ..types::parse_declared("decimal(10,3)").unwrap()
        },
        ColumnDef {
            name: "shipped".into(),
            ..types::parse_declared("date").unwrap()
        },
    ];
    let events: Vec<String> = [
        json!({"op": "c", "after": {"id": "AQ==", "weight": 3.140000104904175, "shipped": "1992-06-22"}}),
        json!({"op": "c", "after": {"id": 18446744073709551615_u64, "weight": 0.1, "shipped": 8208}}),
    ]
    .iter()
    .map(|e| e.to_string())
    .collect();
    let mut decoder = Decoder::new(s, Format::DebeziumJson);
    let batch = ok(&mut decoder, &events);
    assert_row(
        &batch,
        batch.after(),
        0,
        r#"{"id":1,"weight":3.140,"shipped":"1992-06-22"}"#,
    );
    assert_row(
        &batch,
        batch.after(),
        1,
        r#"{"id":18446744073709551615,"weight":0.100,"shipped":"1992-06-22"}"#,
    );
}

#[test]
fn schema_evolution_adds_columns_and_widens_integers() {
    let v1 = json!([{"type": "int32", "field": "id"}, {"type": "int32", "optional": true, "field": "age"}]);
    let v2 = json!([{"type": "int32", "field": "id"}, {"type": "int64", "optional": true, "field": "age"},
                    {"type": "string", "optional": true, "field": "city"}]);
    let v3 = json!([{"type": "int32", "field": "id"}, {"type": "int32", "optional": true, "field": "age"}]);
    let events = vec![
        with_schema(v1, json!({"op": "c", "after": {"id": 1, "age": 18}})),
        with_schema(
            v2,
            json!({"op": "c", "after": {"id": 2, "age": 9000000000_i64, "city": "Lyon"}}),
        ),
        with_schema(v3, json!({"op": "c", "after": {"id": 3, "age": 24}})),
    ];
    let mut decoder = Decoder::new(spec(), Format::DebeziumJson);
    let batch = ok(&mut decoder, &events);
    let age = after_column(&batch, "age");
    assert_eq!(
        age.data_type(),
        &DataType::Int64,
        "int32 → int64 widens; back to int32 keeps int64"
    );
    assert_eq!(
        age.as_primitive::<Int64Type>().values().to_vec(),
        [18, 9_000_000_000, 24]
    );
    let city = after_column(&batch, "city");
    assert!(city.is_null(0) && city.is_valid(1) && city.is_null(2));

    let v4 = json!([{"type": "int32", "field": "id"}, {"type": "string", "optional": true, "field": "age"}]);
    let bad = with_schema(v4, json!({"op": "c", "after": {"id": 4, "age": "old"}}));
    let result = decode_all(&mut decoder, &[bad]).pop().unwrap();
    assert_eq!(
        result,
        Err(DecodeError::Fatal(IncompatibleChange {
            column: "age".into(),
            from: "int64".into(),
            to: "string".into()
        }))
    );
}

#[test]
fn a_repeated_schema_block_is_matched_by_its_bytes_and_only_when_whole() {
    let fields = |extra: &str| {
        format!(
            r#"{{"type":"struct","fields":[{{"type":"struct","fields":[{{"type":"int32","field":"id"}},{{"type":"int32","optional":true,"field":"age"}}{extra}],"optional":true,"field":"after"}},{{"type":"string","field":"op"}}]}}"#
        )
    };
    let v1 = fields("");
    let v2 = fields(r#",{"type":"string","optional":true,"field":"city"}"#);
    let event = |schema: &str, after: &str| {
        format!(r#"{{"schema":{schema},"payload":{{"op":"c","after":{after}}}}}"#)
    };
    let mut decoder = Decoder::new(spec(), Format::DebeziumJson);
    let events = vec![
        event(&v1, r#"{"id":1,"age":18}"#),
        // The same block again, then with other spacing (not the same bytes), then a
        // block that begins like the first but has another column.
        event(&v1, r#"{"id":2,"age":19}"#),
        event(&v1.replacen(',', ", ", 1), r#"{"id":3,"age":20}"#),
        event(&v2, r#"{"id":4,"age":21,"city":"Lyon"}"#),
        event(&v1, r#"{"id":5,"age":22}"#),
    ];
    let batch = ok(&mut decoder, &events);
    assert_eq!(
        after_column(&batch, "age")
            .as_primitive::<arrow::datatypes::Int32Type>()
            .values()
            .to_vec(),
        [18, 19, 20, 21, 22]
    );
    let city = after_column(&batch, "city");
    assert!(
        city.is_valid(3) && city.is_null(4),
        "the second block's column is read"
    );

    // What follows a known block is still read: text after it is no JSON.
    let trailing = format!(r#"{{"schema":{v1}x,"payload":{{"op":"c","after":{{"id":6}}}}}}"#);
    let result = decode_all(&mut decoder, &[trailing]).pop().unwrap();
    assert!(matches!(result, Err(DecodeError::Record(_))), "{result:?}");
}

#[test]
fn bad_records_are_rejected_without_touching_the_batch() {
    let bad = [
        (r#"{"op":"c","after":{"id":1"#, "invalid JSON"),
        (r#"[1,2]"#, "expected a JSON object"),
        (r#"{"after":{"id":1}}"#, "no `op` field"),
        (r#"{"op":"x","after":{"id":1}}"#, "unknown operation `x`"),
        (r#"{"op":"c","after":null}"#, "no `after` image"),
        (r#"{"op":"d","before":null}"#, "without a `before` image"),
        (
            r#"{"op":"c","after":{"name":"no key"}}"#,
            "primary key column `id`",
        ),
        (r#"{"op":"c","after":{"id":1,"id":2}}"#, "appears twice"),
        (r#"{"op":"c","after":{"id":1}} trailing"#, "invalid JSON"),
    ];
    let mut decoder = Decoder::new(spec(), Format::DebeziumJson);
    let good = json!({"op": "c", "after": {"id": 7, "v": "kept"}}).to_string();
    assert_eq!(
        decode_all(&mut decoder, std::slice::from_ref(&good))[0],
        Ok(Outcome::Row)
    );
    for (event, expected) in bad {
        let result = decode_all(&mut decoder, &[event.to_string()])
            .pop()
            .unwrap();
        let Err(DecodeError::Record(e)) = result else {
            panic!("{event}: {result:?}")
        };
        assert!(e.message.contains(expected), "{event}: {}", e.message);
        assert_eq!(decoder.rows(), 1, "{event} left a partial row");
    }
    // A bad value after a new column was added rolls the column back too.
    let partial =
        json!({"op": "c", "after": {"id": 8, "extra": 1, "v": {"nested": true}}}).to_string();
    let result = decode_all(&mut decoder, &[partial]).pop().unwrap();
    assert!(
        result.is_ok(),
        "strings accept JSON documents as text: {result:?}"
    );
    let result = decode_all(
        &mut decoder,
        &[json!({"op":"c","after":{"id":9,"fresh":1,"extra":"x"}}).to_string()],
    );
    assert!(
        matches!(result[0], Err(DecodeError::Record(_))),
        "{result:?}"
    );
    assert!(decoder.columns().iter().all(|c| c.name != "fresh"));
    assert_eq!(decoder.stats.rejected, 10);
    let batch = decoder.finish(Checkpoint::default());
    assert_eq!(batch.num_rows(), 2);
    assert_row(
        &batch,
        batch.after(),
        0,
        r#"{"id":7,"v":"kept","extra":null}"#,
    );
}

#[test]
fn a_delete_without_before_takes_its_key_from_the_record_key() {
    let mut decoder = Decoder::new(spec(), Format::DebeziumJson);
    let value = r#"{"op":"d","before":null,"after":null}"#;
    for key in [
        r#"{"id": 5}"#,
        r#"{"schema":{"type":"struct"},"payload":{"id":6}}"#,
    ] {
        let result = decoder.decode(
            RawRecord {
                headers: Default::default(),
                key: Some(key.as_bytes()),
                value: Some(value.as_bytes()),
            },
            &at(1),
        );
        assert_eq!(result, Ok(Outcome::Row));
    }
    let batch = decoder.finish(Checkpoint::default());
    assert_row(&batch, batch.before(), 0, r#"{"id":5}"#);
    assert_row(&batch, batch.before(), 1, r#"{"id":6}"#);
}

#[test]
fn case_insensitive_matching_keeps_the_first_spelling() {
    let mut s = spec();
    s.primary_key = vec!["l_orderkey".into()];
    s.case_insensitive = true;
    let mut decoder = Decoder::new(s, Format::DebeziumJson);
    let events: Vec<String> = [
        json!({"payload": {"op": "r", "after": {"L_ORDERKEY": 1, "L_COMMENT": "a"}}}),
        json!({"payload": {"op": "r", "after": {"l_orderkey": 2, "l_comment": "b"}}}),
    ]
    .iter()
    .map(|e| e.to_string())
    .collect();
    let batch = ok(&mut decoder, &events);
    assert_eq!(batch.row_fields().len(), 2);
    assert_eq!(batch.table.primary_key, ["L_ORDERKEY"]);
    assert_row(
        &batch,
        batch.after(),
        1,
        r#"{"L_ORDERKEY":2,"L_COMMENT":"b"}"#,
    );
}

#[test]
fn unknown_columns_can_be_ignored_or_rejected() {
    let event = json!({"op": "u", "before": {"id": 1, "middle_name": "L"}, "after": {"id": 1, "middle_name": "L"}}).to_string();
    let mut s = spec();
    s.declared = vec![ColumnDef::new("id", ColumnType::Int64)];
    s.unknown_columns = UnknownColumns::Ignore;
    let mut decoder = Decoder::new(s.clone(), Format::DebeziumJson);
    let batch = ok(&mut decoder, std::slice::from_ref(&event));
    assert_row(&batch, batch.before(), 0, r#"{"id":1}"#);

    s.unknown_columns = UnknownColumns::Reject;
    let mut decoder = Decoder::new(s, Format::DebeziumJson);
    let result = decode_all(&mut decoder, &[event]).pop().unwrap();
    let Err(DecodeError::Record(e)) = result else {
        panic!()
    };
    assert!(
        e.message.contains("`middle_name` is not declared"),
        "{}",
        e.message
    );
}

#[test]
fn schema_change_events_and_messages_carry_no_rows() {
    let history = json!({
        "source": {"connector": "mysql", "db": "d", "table": "t1"},
        "historyRecord": json!({"ddl": "ALTER TABLE t1 ADD COLUMN c INT",
            "tableChanges": [{"type": "ALTER", "id": "\"d\".\"t1\""}]}).to_string()
    });
    let message = json!({"op": "m", "message": {"prefix": "p", "content": "AA=="}});
    let mut decoder = Decoder::new(spec(), Format::DebeziumJson);
    let results = decode_all(&mut decoder, &[history.to_string(), message.to_string()]);
    assert_eq!(
        results[0],
        Ok(Outcome::SchemaChange(SchemaChangeInfo {
            ddl: Some("ALTER TABLE t1 ADD COLUMN c INT".into()),
            table_changes: vec![("ALTER".into(), "d.t1".into())],
        }))
    );
    assert_eq!(results[1], Ok(Outcome::Ignored("logical decoding message")));
    assert_eq!(decoder.rows(), 0);
}

#[test]
fn flattened_rows_decode_with_the_unwrapped_format() {
    let mut decoder = Decoder::new(spec(), Format::DebeziumJsonUnwrapped);
    let events: Vec<String> = [
        json!({"id": 1004, "first_name": "Anne", "__op": "c", "__table": "customers"}),
        json!({"id": 1005, "first_name": "Bob", "__deleted": "true"}),
        json!({"id": 1006, "first_name": "Cy", "__deleted": "false"}),
    ]
    .iter()
    .map(|e| e.to_string())
    .collect();
    let batch = ok(&mut decoder, &events);
    let ops: Vec<&str> = batch.ops().map(Op::as_str).collect();
    assert_eq!(ops, ["c", "d", "u"]);
    assert_row(
        &batch,
        batch.after(),
        0,
        r#"{"id":1004,"first_name":"Anne"}"#,
    );
    assert_row(
        &batch,
        batch.before(),
        1,
        r#"{"id":1005,"first_name":"Bob"}"#,
    );
    let table = batch
        .data
        .column_by_name("source_table")
        .unwrap()
        .as_string::<i32>();
    assert_eq!(table.value(0), "customers");

    // A tombstone with a key deletes that key.
    let result = decoder.decode(
        RawRecord {
            headers: Default::default(),
            key: Some(br#"{"id":1006}"#),
            value: None,
        },
        &at(9),
    );
    assert_eq!(result, Ok(Outcome::Row));
    let batch = decoder.finish(Checkpoint::default());
    assert_eq!(batch.ops().next(), Some(Op::Delete));
}

#[test]
fn a_capture_s_origin_fills_the_envelope_origin() {
    let event = json!({
        "op": "d", "before": {"id": 1}, "after": null,
        "source": {"connector": "outbox", "name": "site-b", "origin": "site-a"}
    });
    let mut decoder = Decoder::new(spec(), Format::DebeziumJson);
    let batch = ok(&mut decoder, &[event.to_string()]);
    let origin = batch.data.column_by_name("origin").unwrap();
    assert_eq!(origin.as_string::<i32>().value(0), "site-a");
}

/// A pipeline's decoder refuses another table's events before they can change its
/// table: no column added or widened, no type conflict stopping it; its own events that
/// change the schema are decoded (again, once checked).
#[test]
fn another_tables_events_cannot_change_this_table() {
    let mut decoder = Decoder::new(
        TableSpec {
            table_check: crate::decode::table::TableCheck::Named,
            target: None,
            ..TableSpec::new("customers", &["id"])
        },
        Format::DebeziumJson,
    );
    let source =
        |table: &str| format!(r#""source":{{"db":"shop","schema":"public","table":"{table}"}}"#);
    let schema = |id: &str| {
        format!(
            r#""schema":{{"type":"struct","fields":[{{"type":"struct","field":"after","optional":true,
            "fields":[{{"type":"{id}","field":"id"}},{{"type":"string","optional":true,"field":"name"}}]}}]}}"#
        )
    };
    let events = vec![
        format!(
            r#"{{{},"payload":{{"op":"c","after":{{"id":1,"name":"a"}},{}}}}}"#,
            schema("int32"),
            source("customers")
        ),
        // Would widen `id` to int64 through its schema block.
        format!(
            r#"{{{},"payload":{{"op":"c","after":{{"id":2,"name":"b"}},{}}}}}"#,
            schema("int64"),
            source("orders")
        ),
        // Would retype `id` to text: an incompatible change, which stops a pipeline.
        format!(
            r#"{{{},"payload":{{"op":"c","after":{{"id":"x","name":"c"}},{}}}}}"#,
            schema("string"),
            source("orders")
        ),
        // Would add a column, and has a value `id` cannot hold.
        format!(
            r#"{{"op":"c","after":{{"id":"o-4","total":9.5}},{}}}"#,
            source("orders")
        ),
        // This table's event adding a column: decoded.
        format!(
            r#"{{"op":"c","after":{{"id":5,"name":"e","vip":true}},{}}}"#,
            source("customers")
        ),
        // Another table's event that fits this table exactly: decoded, then refused.
        format!(
            r#"{{"op":"u","after":{{"id":1,"name":"x","vip":false}},{}}}"#,
            source("orders")
        ),
    ];
    let outcomes = decode_all(&mut decoder, &events);
    assert_eq!(outcomes[0], Ok(Outcome::Row));
    for outcome in &outcomes[1..4] {
        let Err(DecodeError::OtherTable(reason)) = outcome else {
            panic!("{outcome:?}");
        };
        assert!(reason.contains("`shop.public.orders`"), "{reason}");
    }
    assert_eq!(outcomes[4], Ok(Outcome::Row));
    assert!(matches!(outcomes[5], Err(DecodeError::OtherTable(_))));
    assert_eq!(decoder.stats.other_tables, 4);
    let batch = decoder.finish(Checkpoint::default());
    let fields: Vec<String> = batch
        .row_fields()
        .iter()
        .map(|f| format!("{}:{}", f.name(), f.data_type()))
        .collect();
    assert_eq!(fields, ["id:Int32", "name:Utf8", "vip:Boolean"]);
    assert_eq!(batch.num_rows(), 2);
}
