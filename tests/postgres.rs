//! The PostgreSQL sink against a real server.

mod common;

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::faults::Figures;
use common::services::{NetworkCut, Postgres, free_port, http_get, series_value, signal};
use common::{
    FULL_TYPES_COLUMNS, STREAM_COLUMNS, Workspace, change_stream, compact_json, fixture,
    json_lines, weir,
};

fn pipeline(
    ws: &Workspace,
    pg: &Postgres,
    database: &str,
    table: &str,
    key: &str,
    extra: &str,
    sink_extra: &str,
) -> std::path::PathBuf {
    let yaml = format!(
        "name: to-postgres-{table}\n\
         source:\n  type: file\n  path: events.jsonl\n\
         table:\n  name: {table}\n  primary_key: [{key}]\n{extra}\
         sink:\n  type: postgres\n  url: {}\n  table: public.{table}\n  create: true\n{sink_extra}\
         dead_letter:\n  type: file\n  path: dead-letters.jsonl\n",
        pg.url(database)
    );
    ws.write("pipeline.yaml", &yaml)
}

/// weir following `events.jsonl`, which starts as `first`, into `public.items` of the
/// database `name` (also the pipeline's name), run with `--json -q` and `args` (`sink`
/// adds to the sink's settings); returned once `first` is applied. Its log is
/// [`weir_log`].
fn follow_into_items(
    pg: &Postgres,
    name: &str,
    first: &[String],
    sink: &str,
    args: &[&str],
) -> (Workspace, std::process::Child) {
    let ws = Workspace::new();
    ws.append_lines("events.jsonl", first);
    let yaml = ws.write(
        "pipeline.yaml",
        &format!(
            "name: {name}\n\
             source:\n  type: file\n  path: events.jsonl\n  follow: true\n\
             table:\n  name: items\n  primary_key: [id]\n{STREAM_COLUMNS}\
             sink:\n  type: postgres\n  url: {}\n  table: public.items\n  create: true\n{sink}",
            pg.url(name)
        ),
    );
    let child = weir()
        .args(["run", "--json", "-q"])
        .args(args)
        .arg(&yaml)
        .current_dir(ws.dir.path())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(ws.path("weir.log")).unwrap())
        .spawn()
        .expect("start weir");
    let mut client = pg.client(name);
    let started = Instant::now();
    while client
        .query_opt(
            "SELECT 1 FROM weir.checkpoints WHERE pipeline = $1 AND next >= 0",
            &[&name],
        )
        .ok()
        .flatten()
        .is_none()
    {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the first events were not applied within 60 s: {}",
            weir_log(&ws)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    (ws, child)
}

/// What weir started by [`follow_into_items`] has logged.
fn weir_log(ws: &Workspace) -> String {
    std::fs::read_to_string(ws.path("weir.log")).unwrap_or_default()
}

/// The oracle's final `items` rows, as `SELECT id, name, price, version` reads them.
fn item_rows(stream: &common::Stream) -> Vec<Vec<Option<String>>> {
    stream
        .final_rows
        .iter()
        .map(|(id, (name, price, version))| {
            vec![
                Some(id.to_string()),
                Some(name.clone()),
                Some(price.clone()),
                Some(version.to_string()),
            ]
        })
        .collect()
}

fn rows(pg: &Postgres, database: &str, sql: &str) -> Vec<Vec<Option<String>>> {
    pg.client(database)
        .query(sql, &[])
        .unwrap()
        .iter()
        .map(|r| {
            (0..r.len())
                .map(|i| r.get::<_, Option<String>>(i))
                .collect()
        })
        .collect()
}

#[test]
fn fixtures_end_as_the_expected_tables() {
    let pg = Postgres::start();
    pg.create_database("fixtures");

    // Flink's products: the final table from the flink-connector-kafka test's comment.
    let ws = Workspace::new();
    ws.append_lines(
        "events.jsonl",
        &json_lines(&fixture("flink/debezium-postgres-data-schema-include.txt")),
    );
    ws.run_ok(&pipeline(&ws, &pg, "fixtures", "products", "id", "", ""));
    let got = rows(
        &pg,
        "fixtures",
        "SELECT id::text, name, description, weight::text FROM products ORDER BY id",
    );
    assert_eq!(got.len(), 10);
    assert_eq!(
        got[0],
        [
            Some("101".into()),
            Some("scooter".into()),
            Some("Small 2-wheel scooter".into()),
            Some("3.14".into())
        ]
    );
    assert_eq!(
        got[9][2].as_deref(),
        Some("new water resistent white wind breaker")
    );

    // RisingWave's customers (schema + payload): five rows.
    let ws = Workspace::new();
    ws.append_lines(
        "events.jsonl",
        &json_lines(&fixture("risingwave/debezium_log.1")),
    );
    ws.run_ok(&pipeline(&ws, &pg, "fixtures", "customers", "id", "", ""));
    let got = rows(
        &pg,
        "fixtures",
        "SELECT concat_ws(' ', id, first_name, last_name, email) FROM customers ORDER BY id",
    );
    let expected: Vec<Vec<Option<String>>> =
        std::fs::read_to_string(fixture("risingwave/expected-debezium_log.1.txt"))
            .unwrap()
            .lines()
            .map(|l| vec![Some(l.to_string())])
            .collect();
    assert_eq!(got, expected);

    // Flink-CDC full_types: decimals exact in numeric columns, both encodings.
    for file in [
        "flink-cdc/debezium-data-schema-exclude.json",
        "flink-cdc/debezium-data-schema-exclude-with-numeric-decimal.json",
    ] {
        let pg_db = if file.contains("numeric") {
            "numeric"
        } else {
            "base64"
        };
        pg.create_database(pg_db);
        let doc = compact_json(&fixture(file));
        let ws = Workspace::new();
        ws.append_lines(
            "events.jsonl",
            &[
                doc["expected_snapshot"].to_string(),
                doc["expected_binlog"].to_string(),
            ],
        );
        let summary = ws.run_ok(&pipeline(
            &ws,
            &pg,
            pg_db,
            "full_types",
            "id",
            FULL_TYPES_COLUMNS,
            "",
        ));
        assert_eq!(summary["dead_letters"], 0, "{file}");
        let got = rows(
            &pg,
            pg_db,
            "SELECT id::text, big_un_c::text, decimal_c::text, numeric_c::text, big_decimal_c::text, \
             to_char(timestamp_c AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS'), varchar_c FROM full_types",
        );
        assert_eq!(
            got,
            [[
                Some("1".to_string()),
                Some("18446744073709551615".into()),
                Some("123.4567".into()),
                Some("346".into()),
                Some("34567892.1".into()),
                Some("2020-07-17T18:33:22".into()),
                Some("Hello World".into()),
            ]],
            "{file}"
        );
    }
}

/// Rows the table refuses (a CHECK constraint, NOT NULL) go to the dead-letter output
/// with the reason and their line; every other row of the batch is applied.
#[test]
fn rows_the_table_refuses_are_dead_lettered_and_the_rest_applied() {
    refused_rows_are_dead_lettered(20, &[(4, "-1"), (9, "null"), (15, "-7")]);
}

/// The same in a batch large enough to be COPYed into staging tables rather than sent
/// as array parameters.
#[test]
fn rows_a_staged_batch_refuses_are_dead_lettered_and_the_rest_applied() {
    refused_rows_are_dead_lettered(6000, &[(4, "-1"), (2999, "null"), (5990, "-7")]);
}

fn refused_rows_are_dead_lettered(count: i64, bad: &[(i64, &str)]) {
    let pg = Postgres::start();
    pg.create_database("refuse");
    pg.client("refuse")
        .batch_execute(
            "CREATE TABLE public.orders (id bigint PRIMARY KEY, qty bigint NOT NULL CHECK (qty >= 0), note text)",
        )
        .unwrap();
    let lines: Vec<String> = (1..=count)
        .map(|id| {
            let qty = bad
                .iter()
                .find(|(b, _)| *b == id)
                .map_or(id.to_string(), |(_, q)| q.to_string());
            format!("{{\"op\":\"c\",\"after\":{{\"id\":{id},\"qty\":{qty},\"note\":\"n{id}\"}}}}")
        })
        .collect();
    let ws = Workspace::new();
    ws.append_lines("events.jsonl", &lines);
    let yaml = format!(
        "name: refuse\n\
         source:\n  type: file\n  path: events.jsonl\n\
         table:\n  name: orders\n  primary_key: [id]\n  columns: {{id: int64, qty: int64, note: string}}\n\
         sink:\n  type: postgres\n  url: {}\n  table: public.orders\n\
         batch:\n  max_events: 8192\n\
         dead_letter:\n  type: file\n  path: dead-letters.jsonl\n",
        pg.url("refuse")
    );
    let summary = ws.run_ok(&ws.write("pipeline.yaml", &yaml));
    assert_eq!(summary["dead_letters"], bad.len(), "{summary}");
    let ids = rows(
        &pg,
        "refuse",
        "SELECT id::text, note FROM orders ORDER BY orders.id",
    );
    let expected: Vec<Vec<Option<String>>> = (1..=count)
        .filter(|id| !bad.iter().any(|(b, _)| b == id))
        .map(|id| vec![Some(id.to_string()), Some(format!("n{id}"))])
        .collect();
    assert_eq!(ids, expected);
    let letters = ws.dead_letters();
    let lines: Vec<i64> = letters
        .iter()
        .map(|l| l["source"]["line"].as_i64().unwrap())
        .collect();
    assert_eq!(lines, bad.iter().map(|(b, _)| *b).collect::<Vec<_>>());
    for letter in &letters {
        assert_eq!(letter["stage"], "sink");
        let error = letter["error"].as_str().unwrap();
        assert!(
            error.contains("orders_qty_check") || error.contains("not-null"),
            "{error}"
        );
        // The refused change itself, readable as a Debezium event.
        let raw: serde_json::Value = serde_json::from_str(letter["raw"].as_str().unwrap()).unwrap();
        assert_eq!(raw["op"], "c");
        assert_eq!(raw["after"]["id"], letter["source"]["line"]);
    }
}

/// Dates and timestamps outside the years 1-9999 (which weir writes no text for that
/// PostgreSQL reads) are refused with the reason, whether the batch sends its values as
/// arrays (binary for the temporal and numeric columns) or COPYs them: a row lands or not
/// whatever the size of its batch. The others land with their exact values.
#[test]
fn out_of_range_dates_are_refused_alike_in_small_and_staged_batches() {
    for count in [40, 6000] {
        let pg = Postgres::start();
        pg.create_database("dates");
        // Years 12017 and 1 BC; the rest between 1970 and 2024.
        let bad = [(7, 3_700_000, 0), (31, 0, -62_200_000_000_000_000i64)];
        let lines: Vec<String> = (1..=count)
            .map(|id: i64| {
                let (day, micros) = bad
                    .iter()
                    .find(|(b, _, _)| *b == id)
                    .map_or((id % 20_000, id * 1_000_003), |(_, d, m)| (*d, *m));
                format!(
                    r#"{{"op":"c","after":{{"id":{id},"day":{day},"at":{micros},"price":{id}.25,"took":{}}}}}"#,
                    id * 1_000
                )
            })
            .collect();
        let ws = Workspace::new();
        ws.append_lines("events.jsonl", &lines);
        let yaml = format!(
            "name: dates\n\
             source:\n  type: file\n  path: events.jsonl\n\
             table:\n  name: dates\n  primary_key: [id]\n  \
             columns: {{id: int64, day: date, at: timestamp, price: 'decimal(12,2)', took: io.debezium.time.MicroDuration}}\n\
             sink:\n  type: postgres\n  url: {}\n  table: public.dates\n  create: true\n\
             batch:\n  max_events: 8192\n\
             dead_letter:\n  type: file\n  path: dead-letters.jsonl\n",
            pg.url("dates")
        );
        let summary = ws.run_ok(&ws.write("pipeline.yaml", &yaml));
        assert_eq!(summary["dead_letters"], 2, "{count} rows: {summary}");
        let letters = ws.dead_letters();
        let refused: Vec<i64> = letters
            .iter()
            .map(|l| l["source"]["line"].as_i64().unwrap())
            .collect();
        assert_eq!(refused, vec![7, 31], "{count} rows");
        for letter in &letters {
            let error = letter["error"].as_str().unwrap();
            assert!(
                error.contains("out of range") || error.contains("invalid input"),
                "{error}"
            );
        }
        let landed = rows(
            &pg,
            "dates",
            "SELECT id::text, day::text, (extract(epoch from at) * 1000000)::bigint::text,              price::text, (extract(epoch from took) * 1000000)::bigint::text FROM dates ORDER BY dates.id",
        );
        let expected: Vec<Vec<Option<String>>> = (1..=count)
            .filter(|id| *id != 7 && *id != 31)
            .map(|id| {
                let day = chrono::NaiveDate::from_ymd_opt(1970, 1, 1).unwrap()
                    + chrono::Duration::days(id % 20_000);
                [
                    id.to_string(),
                    day.to_string(),
                    (id * 1_000_003).to_string(),
                    format!("{id}.25"),
                    (id * 1_000).to_string(),
                ]
                .into_iter()
                .map(Some)
                .collect()
            })
            .collect();
        assert_eq!(landed.len(), expected.len(), "{count} rows");
        assert_eq!(landed, expected, "{count} rows");
    }
}

/// Small batches (array parameters) of the binary-array types with nulls, then updates
/// and deletes by a `timestamptz` key and by a composite `(date, bigint)` key: the rows
/// deleted go, the others hold exactly the values sent.
#[test]
fn small_batches_of_binary_array_types_upsert_and_delete_by_key() {
    fn base64(bytes: &[u8; 3]) -> String {
        const ABC: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let n = (bytes[0] as u32) << 16 | (bytes[1] as u32) << 8 | bytes[2] as u32;
        (0..4)
            .map(|i| ABC[(n >> (18 - 6 * i) & 63) as usize] as char)
            .collect()
    }
    const BASE: i64 = 1_704_067_200_000_000; // 2024-01-01T00:00:00Z
    // One row's values: (at, day, id, t, b, p, d); `version` 0 as created, 1 as updated.
    let row = |id: i64, version: i64| -> String {
        let at = chrono::DateTime::from_timestamp_micros(BASE + id * 1_000_001)
            .unwrap()
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        let nulls = version == 0 && id % 5 == 0;
        let value = |v: String| if nulls { "null".to_string() } else { v };
        format!(
            r#"{{"at":"{at}","day":{},"id":{id},"t":{},"b":{},"p":{},"d":{}}}"#,
            id * 7,
            value(((id * 1_000_003 + version) % 86_400_000_000).to_string()),
            value(format!("\"{}\"", base64(&[id as u8, version as u8, 255]))),
            value(format!("{id}.{}", 5 + version * 2)),
            value((id * 1_000 + version).to_string()),
        )
    };
    let expected = |id: i64, version: i64| -> Vec<Option<String>> {
        let nulls = version == 0 && id % 5 == 0;
        let value = |v: String| (!nulls).then_some(v);
        let day =
            chrono::NaiveDate::from_ymd_opt(1970, 1, 1).unwrap() + chrono::Duration::days(id * 7);
        let t = (id * 1_000_003 + version) % 86_400_000_000;
        vec![
            Some((BASE + id * 1_000_001).to_string()),
            Some(day.to_string()),
            Some(id.to_string()),
            value(t.to_string()),
            value(format!("{:02x}{:02x}ff", id as u8, version as u8)),
            value(format!("{id}.{}", 5 + version * 2)),
            value((id * 1_000 + version).to_string()),
        ]
    };
    for key in ["[at]", "[day, id]"] {
        let pg = Postgres::start();
        pg.create_database("binkeys");
        let ws = Workspace::new();
        let yaml = format!(
            "name: binkeys\n\
             source:\n  type: file\n  path: events.jsonl\n\
             table:\n  name: binkeys\n  primary_key: {key}\n  \
             columns: {{at: timestamptz, day: date, id: int64, t: time, b: bytes, p: 'decimal(10,1)', d: io.debezium.time.MicroDuration}}\n\
             sink:\n  type: postgres\n  url: {}\n  table: public.binkeys\n  create: true\n\
             batch:\n  max_events: 8192\n\
             dead_letter:\n  type: file\n  path: dead-letters.jsonl\n",
            pg.url("binkeys")
        );
        let file = ws.write("pipeline.yaml", &yaml);
        let created: Vec<String> = (1..=60)
            .map(|id| format!(r#"{{"op":"c","after":{}}}"#, row(id, 0)))
            .collect();
        ws.append_lines("events.jsonl", &created);
        let first = ws.run_ok(&file);
        assert_eq!(first["upserts"], 60, "{key}: {first}");
        // Then, in a batch of their own: every fourth row deleted, every third updated.
        let changed: Vec<String> = (1..=60)
            .filter_map(|id| {
                if id % 4 == 0 {
                    Some(format!(r#"{{"op":"d","before":{}}}"#, row(id, 0)))
                } else if id % 3 == 0 {
                    Some(format!(
                        r#"{{"op":"u","before":{},"after":{}}}"#,
                        row(id, 0),
                        row(id, 1)
                    ))
                } else {
                    None
                }
            })
            .collect();
        ws.append_lines("events.jsonl", &changed);
        let second = ws.run_ok(&file);
        assert_eq!(second["dead_letters"], 0, "{key}: {second}");
        assert_eq!(second["deletes"], 15, "{key}: {second}");
        let landed = rows(
            &pg,
            "binkeys",
            "SELECT (extract(epoch from at) * 1000000)::bigint::text, day::text, id::text, \
             (extract(epoch from t) * 1000000)::bigint::text, encode(b, 'hex'), p::text, \
             (extract(epoch from d) * 1000000)::bigint::text FROM binkeys ORDER BY binkeys.id",
        );
        let wanted: Vec<Vec<Option<String>>> = (1..=60)
            .filter(|id| id % 4 != 0)
            .map(|id| expected(id, (id % 3 == 0) as i64))
            .collect();
        assert_eq!(landed, wanted, "{key}");
    }
}

/// A value too long for a column's `varchar(n)`, `char(n)`, a domain over one or an
/// array of that domain is refused, as the column's own input would refuse it, never cut
/// short to fit; keys of a type with a modifier still delete.
#[test]
fn a_value_too_long_for_its_column_is_refused_not_cut_short() {
    let pg = Postgres::start();
    pg.create_database("modifiers");
    // `char(n)` and a domain over `varchar(n)`: an explicit cast to `character` means
    // `character(1)`, and one to the domain applies its length as an explicit cast does,
    // cutting values short, so values are cast to the base type without its modifier.
    pg.client("modifiers")
        .batch_execute(
            "CREATE DOMAIN short_tag AS varchar(2);
             CREATE TABLE public.codes (code char(3) PRIMARY KEY, label varchar(5), \
             kind char(2), tag short_tag, tags short_tag[]);
             INSERT INTO public.codes VALUES ('old', 'kept?', 'k0', 't0', '{t0}')",
        )
        .unwrap();
    let ws = Workspace::new();
    let lines = [
        r#"{"op":"c","after":{"code":"abc","label":"first","kind":"k1","tag":"t1","tags":"{t1,t2}"}}"#,
        r#"{"op":"c","after":{"code":"abd","label":"second","kind":"k2","tag":"t2","tags":"{}"}}"#,
        r#"{"op":"c","after":{"code":"abe","label":"third","kind":"k3","tag":"t3","tags":"{}"}}"#,
        r#"{"op":"c","after":{"code":"abcd","label":"x","kind":"k4","tag":"t4","tags":"{}"}}"#,
        r#"{"op":"d","before":{"code":"abe","label":"third","kind":"k3","tag":"t3","tags":"{}"}}"#,
        r#"{"op":"d","before":{"code":"old","label":"kept?","kind":"k0","tag":"t0","tags":"{t0}"}}"#,
        r#"{"op":"c","after":{"code":"abf","label":"x","kind":"k12","tag":"t5","tags":"{}"}}"#,
        r#"{"op":"c","after":{"code":"abg","label":"x","kind":"k6","tag":"t12","tags":"{}"}}"#,
        r#"{"op":"c","after":{"code":"abh","label":"x","kind":"k7","tag":"t7","tags":"{t12}"}}"#,
    ];
    ws.append_lines("events.jsonl", &lines.map(String::from));
    let yaml = format!(
        "name: modifiers\n\
         source:\n  type: file\n  path: events.jsonl\n\
         table:\n  name: codes\n  primary_key: [code]\n  \
         columns: {{code: string, label: string, kind: string, tag: string, tags: string}}\n\
         sink:\n  type: postgres\n  url: {}\n  table: public.codes\n\
         dead_letter:\n  type: file\n  path: dead-letters.jsonl\n",
        pg.url("modifiers")
    );
    let summary = ws.run_ok(&ws.write("pipeline.yaml", &yaml));
    assert_eq!(summary["dead_letters"], 5, "{summary}");
    assert_eq!(
        rows(
            &pg,
            "modifiers",
            "SELECT code::text, label::text, kind::text, tag::text, tags::text \
             FROM codes ORDER BY code"
        ),
        vec![
            ["abc", "first", "k1", "t1", "{t1,t2}"]
                .map(|v| Some(v.to_string()))
                .to_vec()
        ]
    );
    let letters = ws.dead_letters();
    let lines: Vec<i64> = letters
        .iter()
        .map(|l| l["source"]["line"].as_i64().unwrap())
        .collect();
    assert_eq!(lines, [2, 4, 7, 8, 9]);
    for letter in &letters {
        let error = letter["error"].as_str().unwrap();
        assert!(error.contains("too long"), "{error}");
    }
}

/// A table of the user's whose column types differ from the events' (integers into
/// `integer` and `numeric`, booleans and integers into `text`, doubles into `real`) takes
/// each value as the column's input would read its text, by key for deletes too.
#[test]
fn a_table_whose_types_differ_from_the_events_reads_their_values_as_text() {
    let pg = Postgres::start();
    pg.create_database("mixed");
    pg.client("mixed")
        .batch_execute(
            "CREATE TABLE public.mixed (id integer PRIMARY KEY, qty numeric(12,2), \
             flag text, code text, score real);
             INSERT INTO public.mixed VALUES (7, 1, 'old', 'old', 0)",
        )
        .unwrap();
    let ws = Workspace::new();
    let lines = [
        r#"{"op":"c","after":{"id":1,"qty":10,"flag":true,"code":42,"score":0.5}}"#,
        r#"{"op":"c","after":{"id":2,"qty":-3,"flag":false,"code":null,"score":1e3}}"#,
        r#"{"op":"u","after":{"id":1,"qty":11,"flag":false,"code":43,"score":0.25}}"#,
        r#"{"op":"d","before":{"id":7,"qty":1,"flag":false,"code":0,"score":0}}"#,
    ];
    ws.append_lines("events.jsonl", &lines.map(String::from));
    let yaml = format!(
        "name: mixed\n\
         source:\n  type: file\n  path: events.jsonl\n\
         table:\n  name: mixed\n  primary_key: [id]\n  \
         columns: {{id: int64, qty: int64, flag: boolean, code: int64, score: float64}}\n\
         sink:\n  type: postgres\n  url: {}\n  table: public.mixed\n\
         dead_letter:\n  type: file\n  path: dead-letters.jsonl\n",
        pg.url("mixed")
    );
    let summary = ws.run_ok(&ws.write("pipeline.yaml", &yaml));
    assert_eq!(summary["dead_letters"], 0, "{summary}");
    let row = |id: &str, qty: &str, flag: &str, code: Option<&str>, score: &str| {
        vec![
            Some(id.to_string()),
            Some(qty.to_string()),
            Some(flag.to_string()),
            code.map(String::from),
            Some(score.to_string()),
        ]
    };
    assert_eq!(
        rows(
            &pg,
            "mixed",
            "SELECT id::text, qty::text, flag, code, score::text FROM mixed ORDER BY id"
        ),
        vec![
            row("1", "11.00", "f", Some("43"), "0.25"),
            row("2", "-3.00", "f", None, "1000"),
        ]
    );
}

/// `mode: append` keeps every change, with its operation and position, in order.
#[test]
fn append_mode_keeps_every_change() {
    let pg = Postgres::start();
    pg.create_database("append");
    let lines = json_lines(&fixture("flink/debezium-postgres-data-schema-include.txt"));
    let ops: Vec<String> = lines
        .iter()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["payload"]["op"].as_str().unwrap().to_string()
        })
        .collect();
    let ws = Workspace::new();
    ws.append_lines("events.jsonl", &lines);
    let yaml = pipeline(
        &ws,
        &pg,
        "append",
        "products_log",
        "id",
        "",
        "  mode: append\n",
    );
    // The events are table `products`'s; the sink writes them to `products_log`.
    let text = std::fs::read_to_string(&yaml).unwrap();
    std::fs::write(
        &yaml,
        text.replace("  name: products_log\n", "  name: products\n"),
    )
    .unwrap();
    let summary = ws.run_ok(&yaml);
    assert_eq!(summary["appended"], lines.len() as u64, "{summary}");
    let got = rows(
        &pg,
        "append",
        "SELECT _weir_op FROM products_log ORDER BY _weir_offset",
    );
    let got: Vec<String> = got.into_iter().map(|r| r[0].clone().unwrap()).collect();
    assert_eq!(got, ops);
    // A second run resumes from the stored checkpoint and appends nothing twice.
    let summary = ws.run_ok(&ws.path("pipeline.yaml"));
    assert_eq!(summary["appended"], 0, "{summary}");
    let count = rows(&pg, "append", "SELECT count(*)::text FROM products_log");
    assert_eq!(count, [[Some(lines.len().to_string())]]);
}

/// A column that appears mid-stream is added to the table (`create: true`) and filled
/// from then on, within one run and across batches.
#[test]
fn a_column_added_mid_stream_is_added_to_the_table() {
    let pg = Postgres::start();
    pg.create_database("evolve");
    let lines: Vec<String> = (1..=6i64)
        .map(|id| {
            if id <= 3 {
                format!("{{\"op\":\"c\",\"after\":{{\"id\":{id},\"qty\":{id}}}}}")
            } else {
                format!(
                    "{{\"op\":\"c\",\"after\":{{\"id\":{id},\"qty\":{id},\"note\":\"n{id}\"}}}}"
                )
            }
        })
        .chain(std::iter::once(
            "{\"op\":\"u\",\"after\":{\"id\":1,\"qty\":10,\"note\":\"late\"}}".to_string(),
        ))
        .collect();
    let ws = Workspace::new();
    ws.append_lines("events.jsonl", &lines);
    let path = pipeline(&ws, &pg, "evolve", "items", "id", "", "");
    // Two events per batch: the new column arrives in a later batch of the same run.
    let yaml = std::fs::read_to_string(&path).unwrap() + "batch:\n  max_events: 2\n";
    std::fs::write(&path, yaml).unwrap();
    let summary = ws.run_ok(&path);
    assert_eq!(summary["dead_letters"], 0, "{summary}");
    let got = rows(
        &pg,
        "evolve",
        "SELECT id::text, qty::text, note FROM items ORDER BY items.id",
    );
    let expected: Vec<Vec<Option<String>>> = vec![
        vec![Some("1".into()), Some("10".into()), Some("late".into())],
        vec![Some("2".into()), Some("2".into()), None],
        vec![Some("3".into()), Some("3".into()), None],
        vec![Some("4".into()), Some("4".into()), Some("n4".into())],
        vec![Some("5".into()), Some("5".into()), Some("n5".into())],
        vec![Some("6".into()), Some("6".into()), Some("n6".into())],
    ];
    assert_eq!(got, expected);
}

/// A process stopped inside a batch's transaction (SIGSTOP, a paused VM) past the sink's
/// `idle_transaction_timeout` finds, when it resumes, that the server has ended its
/// session (SQLSTATE 25P03). The batch is applied again on a new connection: the run goes
/// on, and the target ends equal to the oracle's. The test holds the checkpoint row so
/// the process is stopped at a known point: after the transaction began, before it
/// commits.
#[test]
fn a_process_stopped_inside_a_transaction_past_the_idle_timeout_applies_the_batch_again() {
    let pg = Postgres::start();
    pg.create_database("paused");
    let stream = change_stream(4_000, 300, 25);
    let (first, rest) = stream.lines.split_at(1_000);
    let (ws, mut child) = follow_into_items(
        &pg,
        "paused",
        first,
        "  idle_transaction_timeout: 3s\n",
        &["--stop-when-idle", "8s"],
    );
    let log = || weir_log(&ws);
    let mut client = pg.client("paused");
    let wait_for = |what: &str, client: &mut postgres::Client, sql: &str| -> Option<i32> {
        let started = Instant::now();
        loop {
            if let Ok(Some(row)) = client.query_opt(sql, &[]) {
                return row.get(0);
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "{what} within 60 s: {}",
                log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };

    // Hold the checkpoint row, so the next batch's transaction waits on it.
    let mut holder = pg.client("paused");
    let mut hold = holder.transaction().unwrap();
    hold.execute(
        "SELECT * FROM weir.checkpoints WHERE pipeline = 'paused' FOR UPDATE",
        &[],
    )
    .unwrap();
    ws.append_lines("events.jsonl", rest);
    let session = wait_for(
        "the second batch waiting on the checkpoint row",
        &mut client,
        "SELECT pid FROM pg_stat_activity WHERE datname = 'paused' AND wait_event_type = 'Lock' \
         AND query LIKE '%weir.checkpoints%FOR UPDATE%'",
    )
    .expect("a pid");
    // Stop weir while its transaction waits, then let the wait end: its session turns
    // idle inside the transaction, and the server ends it.
    signal(child.id(), "STOP");
    hold.commit().unwrap();
    let started = Instant::now();
    while client
        .query_opt("SELECT 1 FROM pg_stat_activity WHERE pid = $1", &[&session])
        .unwrap()
        .is_some()
    {
        if started.elapsed() > Duration::from_secs(60) {
            signal(child.id(), "CONT");
            let _ = child.kill();
            panic!("the server did not end weir's idle transaction: {}", log());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    signal(child.id(), "CONT");

    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "weir failed: {}", log());
    let summary: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert!(
        summary["sink_retries"].as_u64().unwrap() >= 1,
        "the batch was not applied again: {summary}"
    );
    let got = rows(
        &pg,
        "paused",
        "SELECT id::text, name, price::text, version::text FROM items ORDER BY items.id",
    );
    let expected = item_rows(&stream);
    let differing: Vec<_> = got
        .iter()
        .zip(&expected)
        .filter(|(got, expected)| got != expected)
        .take(5)
        .collect();
    assert!(differing.is_empty(), "rows differ: {differing:?}");
    assert_eq!(got.len(), expected.len());
}

/// PostgreSQL cut off by the network while weir applies a batch (a paused VM, a host that
/// died, a partition): nothing sent to it is acknowledged, and nothing is refused. weir's
/// connection defaults (`weir_runtime::postgres_client`) make the kernel give up on the
/// connection after about a minute, so the statement fails and the sink retries; by the
/// operating system's defaults it would wait about 15 minutes. Once the network is back
/// the batch is applied on a new connection, and the target ends equal to the oracle's.
#[test]
fn a_server_cut_off_by_the_network_fails_the_statement_and_the_batch_is_applied_again() {
    let pg = Postgres::start();
    pg.create_database("cut");
    let stream = change_stream(3_000, 300, 25);
    let (first, rest) = stream.lines.split_at(1_000);
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    // Idle long enough that the rest, appended after the cut, is read before weir stops
    // reading; it then applies what it read, however long the sink retries.
    let (ws, mut child) = follow_into_items(
        &pg,
        "cut",
        first,
        "",
        &["--stop-when-idle", "20s", "--listen", &listen],
    );
    let log = || weir_log(&ws);
    let retries = || {
        http_get(port, "/metrics")
            .and_then(|(_, body)| series_value(&body, "weir_sink_retries_total{pipeline=\"cut\"}"))
    };
    assert_eq!(retries(), Some(0), "{}", log());

    // Cut the network with weir's connection open, then give it more to apply.
    let cut = NetworkCut::to_port(pg.port);
    ws.append_lines("events.jsonl", rest);
    let started = Instant::now();
    while retries().unwrap_or(0) == 0 {
        // About two minutes in three runs: this cut lets a packet out each minute, which
        // seems to restart TCP's clock (docs/operations.md). The operating system's
        // defaults would take about 15.
        if started.elapsed() > Duration::from_secs(300) {
            drop(cut);
            let _ = child.kill();
            panic!(
                "weir did not notice the cut within 300 s (no sink retry): {}",
                log()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!(
        "the cut noticed after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    drop(cut);

    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > Duration::from_secs(180) {
            let _ = child.kill();
            panic!(
                "weir did not finish within 180 s of the network's return: {}",
                log()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "weir failed: {}", log());
    let summary: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert!(
        summary["sink_retries"].as_u64().unwrap() >= 1,
        "no sink retry: {summary}"
    );
    let got = rows(
        &pg,
        "cut",
        "SELECT id::text, name, price::text, version::text FROM items ORDER BY items.id",
    );
    let by_id = |rows: Vec<Vec<Option<String>>>| -> BTreeMap<Option<String>, Vec<Option<String>>> {
        rows.into_iter().map(|row| (row[0].clone(), row)).collect()
    };
    Figures::compare(
        stream.lines.len() as u64,
        &by_id(item_rows(&stream)),
        &by_id(got),
    )
    .report_and_check(
        "file to PostgreSQL",
        "the network to PostgreSQL cut mid-batch (tc)",
    );
}
