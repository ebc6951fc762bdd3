//! The `postgres-cdc` source against a real PostgreSQL server (`wal_level=logical`): the
//! source and the target are two databases of one server.

mod common;

use std::time::{Duration, Instant};

use common::cdc::*;
use common::services::Postgres;
use common::{Workspace, weir};

#[test]
fn copies_every_table_then_streams_each_kind_of_change() {
    let pg = server();
    let ws = Workspace::new();
    let mut source = pg.client("source");
    source
        .batch_execute(
            "CREATE TABLE orders (id bigint PRIMARY KEY, customer text, price numeric(12,2),
                 amount numeric, note text, placed timestamptz, day date, at_time time,
                 local timestamp, doc jsonb, raw bytea, ratio real, big double precision,
                 ok boolean, ref uuid, small smallint);
             INSERT INTO orders SELECT g, 'customer ' || g, g * 1.25, g / 3.0,
                 CASE WHEN g = 3 THEN (SELECT string_agg(md5(i::text), '') FROM generate_series(1, 4000) i)
                      ELSE 'short' END,
                 '2024-02-29 23:30:00.5+02'::timestamptz + g * interval '1 hour',
                 DATE '2024-01-01' + g, TIME '12:00:00.25', TIMESTAMP '2024-01-01 00:00:00.123456',
                 jsonb_build_object('n', g, 's', 'x\"y'), '\\x00ff'::bytea, 0.1, 1e300,
                 g % 2 = 0, md5(g::text)::uuid, g
               FROM generate_series(1, 30) g;
             -- A text key: copied whole after a restart.
             CREATE TABLE items (sku text PRIMARY KEY, qty int);
             INSERT INTO items VALUES ('a', 1), ('b', 2), ('c', 3);
             -- Before-images of every column.
             CREATE TABLE accounts (id int PRIMARY KEY, balance numeric(20,4), owner text);
             ALTER TABLE accounts REPLICA IDENTITY FULL;
             INSERT INTO accounts SELECT 1, 100.5, string_agg(md5(i::text), '')
               FROM generate_series(1, 1000) i;
             INSERT INTO accounts VALUES (2, 0, 'b');
             -- A partitioned table: copied and streamed as itself, not as its partitions.
             CREATE TABLE readings (id int PRIMARY KEY, v int) PARTITION BY RANGE (id);
             CREATE TABLE readings_low PARTITION OF readings FOR VALUES FROM (0) TO (100);
             CREATE TABLE readings_high PARTITION OF readings FOR VALUES FROM (100) TO (1000);
             INSERT INTO readings VALUES (1, 1), (150, 2);",
        )
        .unwrap();
    let file = pipeline(&ws, &pg, "shop", "  heartbeat: { interval: 1s }\n");
    let tables = ["orders", "items", "accounts", "readings"];

    let weir_run = start(&ws, &file);
    wait_until_same(&pg, &ws, &tables, Duration::from_secs(60));
    // An unconstrained numeric (its scale varies by row) stays a numeric in the target.
    let amount: String = pg
        .client("target")
        .query_one(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute \
             WHERE attrelid = 'public.orders'::regclass AND attname = 'amount'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(amount, "numeric");

    // Every kind of change, while weir streams, each statement its own transaction
    // unless it says otherwise.
    for statement in [
        // 128 kB of digits that do not compress below the TOAST threshold.
        "INSERT INTO orders (id, customer, price, note)
         SELECT 100, 'new', 9.99, string_agg(md5(i::text), '') FROM generate_series(1, 4000) i",
        // `note` is TOASTed and left unchanged: pgoutput does not send it.
        "UPDATE orders SET price = 1.00 WHERE id = 100",
        "UPDATE orders SET customer = 'renamed' WHERE id = 3",
        "DELETE FROM orders WHERE id = 1",
        "UPDATE items SET sku = 'z' WHERE sku = 'a'",
        // REPLICA IDENTITY FULL: the old row comes whole, its TOASTed owner too.
        "UPDATE accounts SET balance = balance + 0.0001 WHERE id = 1",
        "UPDATE orders SET price = 2.00 WHERE id = 3",
        "DELETE FROM accounts WHERE id = 2",
        "BEGIN; INSERT INTO items VALUES ('d', 4); TRUNCATE items; INSERT INTO items VALUES ('e', 5); COMMIT",
        "ALTER TABLE orders ADD COLUMN status text",
        "UPDATE orders SET status = 'paid' WHERE id = 2",
        "INSERT INTO orders (id, customer, status) VALUES (101, 'later', 'open')",
        "INSERT INTO readings VALUES (2, 3), (200, 4)",
        "UPDATE readings SET v = v + 10 WHERE id = 150",
    ] {
        source.batch_execute(statement).unwrap();
    }
    wait_until_same(&pg, &ws, &tables, Duration::from_secs(60));
    kill(weir_run);

    let toasted: i32 = pg
        .client("target")
        .query_one("SELECT length(note) FROM orders WHERE id = 100", &[])
        .unwrap()
        .get(0);
    assert_eq!(toasted, 128_000, "the unchanged TOASTed value is kept");
    let letters = std::fs::read_to_string(ws.path("dead-letters.jsonl")).unwrap_or_default();
    assert!(letters.is_empty(), "no dead letters: {letters}");
}

/// A copy, updates, deletes and inserts each large enough to be COPYed into the target
/// in COPY's binary format (the sink's `binary.rs`), of every type that format carries,
/// with values at their edges: around 1970 and 2000, negative, zero and fractional
/// numerics, NaN and infinite floats, escapes and empty values, nulls.
#[test]
fn large_batches_of_every_binary_type_end_equal() {
    let pg = server();
    let ws = Workspace::new();
    let mut source = pg.client("source");
    source
        .batch_execute(
            "CREATE TABLE measures (id bigint PRIMARY KEY, small smallint, i int,
                 price numeric(12,2), exact numeric(38,10), ratio real, big double precision,
                 ok boolean, raw bytea, note text, code varchar(20), placed timestamptz,
                 local timestamp, day date, at_time time);
             INSERT INTO measures SELECT g, (g * 11 % 65535 - 32767)::smallint,
                 (g::bigint * 715000 - 2147483647)::int,
                 (g - 3000) * 1.01,
                 round((g - 3000)::numeric / 7, 10),
                 (CASE g % 5 WHEN 0 THEN 'NaN' WHEN 1 THEN 'Infinity' WHEN 2 THEN '-Infinity'
                      ELSE (g / 3.0)::text END)::real,
                 CASE WHEN g % 4 = 0 THEN 1.0 / g ELSE g * 1e300 / 6000 END,
                 CASE WHEN g % 7 = 0 THEN NULL ELSE g % 3 = 0 END,
                 CASE WHEN g % 9 = 0 THEN ''::bytea ELSE decode(md5(g::text), 'hex') END,
                 CASE g % 4 WHEN 0 THEN '' WHEN 1 THEN E'tab\\there\\nand a back\\\\slash'
                      WHEN 2 THEN 'ü€😀' ELSE 'n' || g END,
                 'c' || g,
                 '1969-07-20 20:17:40.123456+00'::timestamptz + g * interval '37 days 1.000001 seconds',
                 '1999-12-31 23:59:59.999999'::timestamp + g * interval '1 minute',
                 DATE '1900-01-01' + g * 20,
                 TIME '00:00:00' + g * interval '14.000001 seconds'
               FROM generate_series(1, 6000) g;
             INSERT INTO measures (id) VALUES (-1);
             INSERT INTO measures VALUES (-2, -32768, -2147483648, -9999999999.99,
                 9999999999999999999999999999.9999999999, 0, -0.0, false, '\\x00', E'\\\\',
                 '', '2000-01-01 00:00:00+00', '1970-01-01 00:00:00', '2000-01-01', '24:00:00');",
        )
        .unwrap();
    let file = pipeline(&ws, &pg, "measures", "");
    let weir_run = start(&ws, &file);
    wait_until_same(&pg, &ws, &["measures"], Duration::from_secs(60));
    for statement in [
        "UPDATE measures SET price = price + 1, note = note || 'x', day = day - 1",
        "DELETE FROM measures WHERE id <= 5000",
        "INSERT INTO measures (id, exact, placed, raw)
         SELECT g, g / 1000.0, now() - g * interval '1 day', '\\x01'
         FROM generate_series(10001, 15000) g",
    ] {
        source.batch_execute(statement).unwrap();
    }
    wait_until_same(&pg, &ws, &["measures"], Duration::from_secs(60));

    // A column of the target retyped under weir to one of the same width: binary int4
    // read as float4 would be other numbers, so those rows must go as before (through
    // staging, cast by the server).
    pg.client("target")
        .batch_execute("ALTER TABLE measures ALTER COLUMN i TYPE real")
        .unwrap();
    source
        .batch_execute(
            "INSERT INTO measures (id, i) SELECT g, g - 20000 FROM generate_series(20001, 25000) g",
        )
        .unwrap();
    let new_rows = |database: &str| -> Vec<String> {
        pg.client(database)
            .query(
                "SELECT id || ':' || i::bigint FROM measures WHERE id > 20000 ORDER BY id",
                &[],
            )
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    };
    let expected = new_rows("source");
    let started = Instant::now();
    while new_rows("target") != expected {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the rows into the retyped column: {:?}",
            new_rows("target").first()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    kill(weir_run);
    let letters = std::fs::read_to_string(ws.path("dead-letters.jsonl")).unwrap_or_default();
    assert!(letters.is_empty(), "no dead letters: {letters}");
}

/// A value weir cannot carry exactly (a numeric NaN) makes its change a dead letter with
/// the reason, written as the Debezium event it would have been, and the stream goes on.
#[test]
fn a_change_weir_cannot_carry_is_a_dead_letter_in_debezium_form() {
    let pg = server();
    let ws = Workspace::new();
    let mut source = pg.client("source");
    source
        .batch_execute(
            "CREATE TABLE prices (id int PRIMARY KEY, price numeric(12,2), note text);
             INSERT INTO prices VALUES (1, 1.50, 'a');",
        )
        .unwrap();
    let file = pipeline(&ws, &pg, "shop", "");
    let weir_run = start(&ws, &file);
    wait_until_same(&pg, &ws, &["prices"], Duration::from_secs(60));
    source
        .batch_execute(
            "INSERT INTO prices VALUES (2, 'NaN', 'x\"y');
             INSERT INTO prices VALUES (3, 3.00, 'c');",
        )
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let target_has_3 = || {
        pg.client("target")
            .query_opt("SELECT 1 FROM prices WHERE id = 3", &[])
            .unwrap()
            .is_some()
    };
    while !target_has_3() {
        assert!(
            Instant::now() < deadline,
            "the change after the refused one is applied"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    kill(weir_run);
    let letters = std::fs::read_to_string(ws.path("dead-letters.jsonl")).unwrap();
    let letters: Vec<serde_json::Value> = letters
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(letters.len(), 1, "{letters:?}");
    let letter = &letters[0];
    assert!(
        letter["error"].as_str().unwrap().contains("price"),
        "the reason names the column: {letter}"
    );
    let event: serde_json::Value = serde_json::from_str(letter["raw"].as_str().unwrap()).unwrap();
    assert_eq!(event["payload"]["op"], "c");
    assert_eq!(event["payload"]["after"]["price"], "NaN");
    assert_eq!(event["payload"]["after"]["note"], "x\"y");
    assert_eq!(event["payload"]["source"]["table"], "prices");
    assert_eq!(
        event["schema"]["fields"][1]["fields"][1]["name"],
        "org.apache.kafka.connect.data.Decimal"
    );
}

#[test]
fn a_killed_run_resumes_without_losing_or_repeating_and_the_slot_waits_for_the_sink() {
    let pg = server();
    let ws = Workspace::new();
    let mut source = pg.client("source");
    source
        .batch_execute(
            "CREATE TABLE counters (id int PRIMARY KEY, n bigint NOT NULL);
             INSERT INTO counters SELECT g, 0 FROM generate_series(1, 500) g;
             CREATE TABLE log (id bigserial PRIMARY KEY, counter int, n bigint);",
        )
        .unwrap();
    let file = pipeline(&ws, &pg, "resume", "");
    let tables = ["counters", "log"];
    // Changes while weir is killed and restarted: each transaction bumps counters and
    // appends to `log`, so a lost or doubled change shows in either table.
    let writer = {
        let url = pg.url("source");
        std::thread::spawn(move || {
            let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
            for i in 0..1000i64 {
                let id = (i * 7 % 500 + 1) as i32;
                client
                    .execute(
                        "WITH u AS (UPDATE counters SET n = n + 1 WHERE id = $1 RETURNING id, n)
                         INSERT INTO log (counter, n) SELECT id, n FROM u",
                        &[&id],
                    )
                    .unwrap();
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    for round in 0..4 {
        let child = start(&ws, &file);
        std::thread::sleep(Duration::from_millis(1500 + round * 400));
        kill(child);
        // The slot never confirms past what the target committed.
        let confirmed: Option<String> = pg
            .client("source")
            .query_one(
                "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = 'weir_resume'",
                &[],
            )
            .ok()
            .and_then(|r| r.get(0));
        let committed: Option<i64> = pg
            .client("target")
            .query_opt(
                "SELECT next FROM weir.checkpoints WHERE stream = 'postgres:weir_resume'",
                &[],
            )
            .ok()
            .flatten()
            .map(|r| r.get(0));
        if let (Some(confirmed), Some(committed)) = (confirmed, committed) {
            let confirmed = parse_lsn(&confirmed);
            assert!(
                confirmed <= committed as u64,
                "round {round}: the slot confirmed {confirmed:X}, past the sink's {committed:X}"
            );
        }
    }
    // The sink stopped: its tables locked, so no batch commits, while the writer goes on.
    // The slot must not confirm what weir received and could not apply, and the server
    // must not end the replication connection meanwhile: weir still reports, once a
    // second, what the sink has applied (a two-second `wal_sender_timeout` here).
    let mut admin = pg.client("source");
    admin
        .batch_execute("ALTER SYSTEM SET wal_sender_timeout = '2s'")
        .unwrap();
    admin.batch_execute("SELECT pg_reload_conf()").unwrap();
    let child = start(&ws, &file);
    wait_for_checkpoint(&pg, &ws, "resume");
    let walsender = || -> Option<i32> {
        pg.client("source")
            .query_opt("SELECT pid FROM pg_stat_replication LIMIT 1", &[])
            .unwrap()
            .map(|r| r.get(0))
    };
    let started = Instant::now();
    let mut streaming_from = walsender();
    while streaming_from.is_none() {
        assert!(started.elapsed() < Duration::from_secs(30), "weir streams");
        std::thread::sleep(Duration::from_millis(100));
        streaming_from = walsender();
    }
    // The stream has caught up with what the writer did while weir was down.
    std::thread::sleep(Duration::from_millis(500));
    writer.join().unwrap();
    let mut lock = pg.client("target");
    let mut held = lock.transaction().unwrap();
    held.batch_execute("LOCK TABLE counters, log IN ACCESS EXCLUSIVE MODE")
        .unwrap();
    let (committed, _) = sink_and_slot(&pg, "resume");
    // The source keeps changing: weir reads until its stages are full, then waits.
    let stalled_writer = {
        let url = pg.url("source");
        std::thread::spawn(move || {
            let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
            let started = Instant::now();
            let mut writes = 0i64;
            while started.elapsed() < Duration::from_secs(3) {
                client
                    .execute(
                        "UPDATE counters SET n = n + 1 WHERE id = $1",
                        &[&((writes % 500 + 1) as i32)],
                    )
                    .unwrap();
                writes += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            writes
        })
    };
    for _ in 0..12 {
        std::thread::sleep(Duration::from_millis(250));
        let (now_committed, confirmed) = sink_and_slot(&pg, "resume");
        assert_eq!(
            now_committed, committed,
            "nothing commits while the sink is stopped"
        );
        assert!(
            confirmed <= committed,
            "the slot confirmed {confirmed:X} while the sink had committed only {committed:X}"
        );
    }
    assert_eq!(
        walsender(),
        streaming_from,
        "the replication connection outlived 3 s of a stopped sink"
    );
    held.rollback().unwrap();
    let stalled_writes = stalled_writer.join().unwrap();
    kill(child);
    let child = start(&ws, &file);
    wait_until_same(&pg, &ws, &tables, Duration::from_secs(60));
    kill(child);
    let total: i64 = pg
        .client("target")
        .query_one("SELECT sum(n)::bigint FROM counters", &[])
        .unwrap()
        .get(0);
    assert_eq!(total, 1000 + stalled_writes, "every increment applied once");
}

#[test]
fn heartbeats_move_the_slot_of_an_idle_source() {
    let pg = server();
    let ws = Workspace::new();
    pg.client("source")
        .batch_execute(
            "CREATE TABLE quiet (id int PRIMARY KEY); INSERT INTO quiet VALUES (1);
             CREATE TABLE busy (id int PRIMARY KEY, n int);",
        )
        .unwrap();
    let restart_lsn = |slot: &str| -> u64 {
        let text: String = pg
            .client("source")
            .query_one(
                "SELECT restart_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .unwrap()
            .get(0);
        parse_lsn(&text)
    };
    // WAL the slots are not interested in: another table, outside the publication.
    let other_writes = || {
        let mut client = pg.client("source");
        for i in 0..200 {
            client
                .execute("INSERT INTO busy VALUES ($1, $1)", &[&i])
                .unwrap();
        }
        client
            .batch_execute("DELETE FROM busy; CHECKPOINT")
            .unwrap();
    };
    let mut results = Vec::new();
    for (name, heartbeat) in [
        ("with", "  heartbeat: { interval: 200ms }\n"),
        ("without", ""),
    ] {
        let yaml = std::fs::read_to_string(pipeline(&ws, &pg, name, heartbeat))
            .unwrap()
            .replace("include: ['public.*']", "include: ['public.quiet']");
        let file = ws.write(&format!("{name}.yaml"), &yaml);
        let child = start(&ws, &file);
        wait_for_checkpoint(&pg, &ws, name);
        let before = restart_lsn(&format!("weir_{name}"));
        other_writes();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut after = restart_lsn(&format!("weir_{name}"));
        while after == before && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(500));
            other_writes();
            after = restart_lsn(&format!("weir_{name}"));
        }
        kill(child);
        results.push((name, before, after));
    }
    let (_, before, after) = results[0];
    assert!(
        after > before,
        "with heartbeats the slot moves: {results:?}"
    );
    let (_, before, after) = results[1];
    assert_eq!(after, before, "without them it stays: {results:?}");
}

/// Where the sink has applied the stream to (the end of the last transaction it applied
/// whole, or the commit LSN of one it applied in part), and the slot's confirmed flush LSN.
/// What the sink has committed of the replication stream, and what the slot confirms.
fn sink_and_slot(pg: &Postgres, pipeline: &str) -> (u64, u64) {
    let committed: i64 = pg
        .client("target")
        .query_one(
            "SELECT coalesce(max(next), 0) FROM weir.checkpoints
             WHERE pipeline = $1 AND stream LIKE 'postgres:%'",
            &[&pipeline],
        )
        .unwrap()
        .get(0);
    let confirmed: String = pg
        .client("source")
        .query_one(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
            &[&format!("weir_{pipeline}")],
        )
        .unwrap()
        .get(0);
    (committed as u64, parse_lsn(&confirmed))
}

fn parse_lsn(text: &str) -> u64 {
    let (high, low) = text.split_once('/').expect("an LSN");
    (u64::from_str_radix(high, 16).unwrap() << 32) | u64::from_str_radix(low, 16).unwrap()
}

#[test]
fn a_killed_copy_resumes_after_the_last_row_the_sink_applied() {
    let pg = server();
    let ws = Workspace::new();
    let total: i64 = 60_000;
    pg.client("source")
        .batch_execute(&format!(
            "CREATE TABLE big (id bigint PRIMARY KEY, pad text);
             INSERT INTO big SELECT g, md5(g::text) FROM generate_series(1, {total}) g;"
        ))
        .unwrap();
    let yaml = std::fs::read_to_string(pipeline(&ws, &pg, "copy", ""))
        .unwrap()
        .replace("chunk_rows: 7", "chunk_rows: 500");
    let file = ws.write("copy.yaml", &yaml);
    let count = || -> i64 {
        pg.client("target")
            .query_one("SELECT count(*) FROM big", &[])
            .map(|r| r.get(0))
            .unwrap_or(0)
    };
    // Kill the first run in the middle of its copy.
    let child = start(&ws, &file);
    let started = Instant::now();
    let mut applied = count();
    while applied == 0 && started.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(20));
        applied = count();
    }
    kill(child);
    let applied = count();
    assert!(
        applied > 0 && applied < total,
        "the copy was killed in its middle ({applied} of {total} rows applied)"
    );
    // The second run copies only what the first did not apply.
    let run = ws.run(&file, &["--stop-when-idle", "2s"]);
    assert!(run.output.status.success(), "{}", run.stderr());
    let read = run.summary["events_read"].as_i64().unwrap();
    assert_eq!(
        read,
        total - applied,
        "the resumed copy read {read} rows; {applied} of {total} were applied before the kill"
    );
    assert_same(&pg, &["big"]);
}

/// A copy's transactions commit without waiting for the target's WAL flush. If the
/// target's server restarts and loses the last of them, weir must not apply the next
/// batch over the gap: it stops, and the next run copies again from the checkpoint the
/// target does hold. The loss is made by hand here (a crash cannot be timed to a batch):
/// while weir waits for the checkpoint table's lock, the last rows and the checkpoint are
/// taken back to an earlier chunk.
#[test]
fn a_copy_the_target_lost_is_refused_and_copied_again_from_its_checkpoint() {
    let pg = server();
    let ws = Workspace::new();
    let total: i64 = 200_000;
    pg.client("source")
        .batch_execute(&format!(
            "CREATE TABLE big (id bigint PRIMARY KEY, pad text);
             INSERT INTO big SELECT g, md5(g::text) FROM generate_series(-5000, {total}) g;"
        ))
        .unwrap();
    // Negative keys first: a resume point below zero is never stored, and must not be
    // taken for a lost one.
    let yaml = std::fs::read_to_string(pipeline(&ws, &pg, "lost", ""))
        .unwrap()
        .replace("chunk_rows: 7", "chunk_rows: 500")
        .replace("tables:", "batch: { max_events: 1000 }\ntables:");
    let file = ws.write("lost.yaml", &yaml);
    let mut child = start(&ws, &file);
    let stream = "postgres-snapshot:public.big";
    let copied = || -> Option<i64> {
        pg.client("target")
            .query_opt(
                "SELECT next FROM weir.checkpoints WHERE pipeline = 'lost' AND stream = $1",
                &[&stream],
            )
            .ok()
            .flatten()
            .map(|r| r.get(0))
    };
    let started = Instant::now();
    while copied().is_none_or(|next| next < 2_000) {
        if child.0.try_wait().unwrap().is_some() || started.elapsed() > Duration::from_secs(120) {
            let log = std::fs::read_to_string(ws.path("weir.log")).unwrap_or_default();
            panic!("weir stopped before copying 2000 rows; its log:\n{log}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut target = pg.client("target");
    let mut loss = target.transaction().unwrap();
    loss.batch_execute("LOCK TABLE weir.checkpoints IN EXCLUSIVE MODE")
        .unwrap();
    let next: i64 = loss
        .query_one(
            "SELECT next FROM weir.checkpoints WHERE pipeline = 'lost' AND stream = $1",
            &[&stream],
        )
        .unwrap()
        .get(0);
    assert!(next < total, "weir is still copying ({next} of {total})");
    // What a crash of the target's server would have lost: the rows of the last
    // chunks, and the checkpoint that said they were applied.
    let kept = next / 2;
    loss.execute("DELETE FROM big WHERE id > $1", &[&kept])
        .unwrap();
    loss.execute(
        "UPDATE weir.checkpoints SET next = $1, line = 1 WHERE pipeline = 'lost' AND stream = $2",
        &[&kept, &stream],
    )
    .unwrap();
    loss.commit().unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(60) {
            kill(child);
            let log = std::fs::read_to_string(ws.path("weir.log")).unwrap_or_default();
            panic!("weir went on over the lost rows; its log:\n{log}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let log = std::fs::read_to_string(ws.path("weir.log")).unwrap_or_default();
    assert!(!status.success(), "weir failed:\n{log}");
    assert!(
        log.contains("the target no longer holds rows weir copied"),
        "weir said why:\n{log}"
    );
    // The next run copies the lost rows again, from the target's checkpoint.
    let run = ws.run(&file, &["--stop-when-idle", "2s"]);
    assert!(run.output.status.success(), "{}", run.stderr());
    assert_same(&pg, &["big"]);
}

#[test]
fn a_lost_replication_connection_is_reopened_and_nothing_is_lost() {
    let pg = server();
    let ws = Workspace::new();
    let mut source = pg.client("source");
    source
        .batch_execute(
            "CREATE TABLE counters (id int PRIMARY KEY, n bigint NOT NULL);
             INSERT INTO counters SELECT g, 0 FROM generate_series(1, 50) g;",
        )
        .unwrap();
    let file = pipeline(&ws, &pg, "reopen", "");
    let child = start(&ws, &file);
    wait_for_checkpoint(&pg, &ws, "reopen");
    for round in 0..3 {
        for i in 0..100 {
            source
                .execute(
                    "UPDATE counters SET n = n + 1 WHERE id = $1",
                    &[&(i % 50 + 1)],
                )
                .unwrap();
        }
        // The server ends weir's replication connection, as a failover or a network
        // cut would.
        let ended: i64 = pg
            .client("source")
            .query_one(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_replication
                 WHERE application_name <> 'none'",
                &[],
            )
            .unwrap()
            .get(0);
        assert!(ended <= 1, "round {round}: one walsender at most");
    }
    wait_until_same(&pg, &ws, &["counters"], Duration::from_secs(60));
    let log = std::fs::read_to_string(ws.path("weir.log")).unwrap_or_default();
    assert!(log.contains("reconnected"), "weir reconnected:\n{log}");
    kill(child);
    let total: i64 = pg
        .client("target")
        .query_one("SELECT sum(n)::bigint FROM counters", &[])
        .unwrap()
        .get(0);
    assert_eq!(total, 300, "every increment applied once");
}

#[test]
fn status_follows_the_copy_streaming_a_lost_source_and_a_dropped_slot() {
    let pg = server();
    let ws = Workspace::new();
    let total: u64 = 200_000;
    pg.client("source")
        .batch_execute(&format!(
            "CREATE TABLE big (id bigint PRIMARY KEY, pad text);
             INSERT INTO big SELECT g, md5(g::text) FROM generate_series(1, {total}) g;
             ANALYZE big;
             CREATE TABLE small (id int PRIMARY KEY, v int);
             INSERT INTO small VALUES (1, 1), (2, 2);"
        ))
        .unwrap();
    let yaml = std::fs::read_to_string(pipeline(
        &ws,
        &pg,
        "watched",
        "  heartbeat: { interval: 1s }\n",
    ))
    .unwrap()
    .replace("chunk_rows: 7", "chunk_rows: 1000");
    let file = ws.write("watched.yaml", &yaml);
    let mut child = start(&ws, &file);

    // 1. The copy, table by table, with its progress against the planner's estimate.
    let copying = wait_for_status(
        &ws,
        &file,
        Duration::from_secs(60),
        "the copy of `big` in progress",
        |s| {
            s["state"] == "snapshotting"
                && s["tables"]["public.big"]["state"] == "snapshotting"
                && s["tables"]["public.big"]["rows_copied"]
                    .as_u64()
                    .unwrap_or(0)
                    > 0
        },
    );
    let big = &copying["tables"]["public.big"];
    let estimated = big["rows_estimated"].as_u64().unwrap_or_else(|| {
        let log = std::fs::read_to_string(ws.path("weir.log")).unwrap_or_default();
        panic!("no estimate: {copying}\n{log}")
    });
    assert!(
        estimated.abs_diff(total) < total / 10,
        "the estimate {estimated} is near the {total} rows"
    );
    assert!(big["rows_copied"].as_u64().unwrap() < total, "{big}");
    assert!(copying["process"] == "running", "{copying}");
    assert!(copying["lag"]["events"].as_u64().unwrap() > 0, "{copying}");

    // 2. Streaming, with heartbeats applied and a lag measured from them.
    let streaming = wait_for_status(
        &ws,
        &file,
        Duration::from_secs(120),
        "streaming with a heartbeat applied",
        |s| s["state"] == "streaming" && !s["last_heartbeat"].is_null(),
    );
    for table in ["public.big", "public.small"] {
        assert_eq!(
            streaming["tables"][table]["state"], "streaming",
            "{streaming}"
        );
        assert_eq!(streaming["tables"][table]["copied"], true, "{streaming}");
    }
    assert!(
        streaming["lag"]["seconds"].as_f64().is_some(),
        "{streaming}"
    );
    assert!(
        streaming["positions"]["postgres:weir_watched"]["next"]
            .as_i64()
            .unwrap()
            > 0,
        "{streaming}"
    );
    let path: Vec<&str> = streaming["transitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["to"].as_str().unwrap())
        .collect();
    assert!(
        path.ends_with(&["snapshotting", "streaming"]),
        "the transitions went through the copy to streaming: {path:?}"
    );

    // 3. The source refuses connections and weir's replication connection is cut:
    // degraded, with the reason, until the source takes connections again.
    let mut admin = pg.client("postgres");
    admin
        .batch_execute("ALTER DATABASE source ALLOW_CONNECTIONS false")
        .unwrap();
    admin
        .batch_execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_replication
             WHERE application_name <> 'none'",
        )
        .unwrap();
    let degraded = wait_for_status(&ws, &file, Duration::from_secs(30), "degraded", |s| {
        s["state"] == "degraded"
    });
    let reason = degraded["reason"].as_str().unwrap();
    assert!(
        reason.contains("source") && reason.contains("not currently accepting connections"),
        "the reason names the source and its error: {reason}"
    );
    admin
        .batch_execute("ALTER DATABASE source ALLOW_CONNECTIONS true")
        .unwrap();
    wait_for_status(
        &ws,
        &file,
        Duration::from_secs(60),
        "streaming again",
        |s| s["state"] == "streaming",
    );
    pg.client("source")
        .batch_execute("INSERT INTO small VALUES (3, 3)")
        .unwrap();
    wait_until_same(&pg, &ws, &["small"], Duration::from_secs(30));

    // 4. The slot is dropped while weir is down: the changes since the sink's position
    // are gone. The run stops with the resync exit code, and the status says what to do.
    let _ = child.0.kill();
    let _ = child.0.wait();
    let started = Instant::now();
    while pg
        .client("source")
        .batch_execute("SELECT pg_drop_replication_slot('weir_watched')")
        .is_err()
    {
        assert!(started.elapsed() < Duration::from_secs(30), "drop the slot");
        std::thread::sleep(Duration::from_millis(200));
    }
    let run = ws.run(&file, &["--stop-when-idle", "2s"]);
    assert_eq!(run.output.status.code(), Some(3), "{}", run.stderr());
    assert!(run.stderr().contains("Resync"), "{}", run.stderr());
    let stopped = status_json(&ws, &file).expect("a status");
    assert_eq!(stopped["state"], "resync-required", "{stopped}");
    assert_eq!(stopped["process"], "failed", "{stopped}");
    assert!(
        stopped["last_error"]["message"]
            .as_str()
            .unwrap()
            .contains("does not exist"),
        "{stopped}"
    );
    let text = weir()
        .arg("status")
        .arg(&file)
        .current_dir(ws.dir.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.starts_with("pipeline watched: resync-required") && text.contains("public.big"),
        "{text}"
    );
    assert!(
        !text.contains("postgres://"),
        "no connection URL in the status: {text}"
    );
}

#[test]
fn reconcile_waits_for_a_watermark_in_the_source_s_wal() {
    let pg = server();
    let ws = Workspace::new();
    pg.client("source")
        .batch_execute(
            "CREATE TABLE counters (id int PRIMARY KEY, n bigint NOT NULL);
             INSERT INTO counters SELECT g, 0 FROM generate_series(1, 20) g;",
        )
        .unwrap();
    let yaml = std::fs::read_to_string(pipeline(&ws, &pg, "waited", "")).unwrap()
        + &format!(
            "reconcile:\n  source: {{ type: postgres, url: '{}', schema: public }}\n  \
             target: {{ type: postgres, url: '{}', schema: public }}\n  \
             wait: {{ timeout: 60s }}\n",
            pg.url("source"),
            pg.url("target")
        );
    let file = ws.write("waited.yaml", &yaml);
    let _running = start(&ws, &file);
    wait_until_same(&pg, &ws, &["counters"], Duration::from_secs(60));
    // The sink is held back (the table locked against writes) while the source changes:
    // a comparison that did not wait would find the target behind.
    let mut blocker = pg.client("target");
    blocker
        .batch_execute("BEGIN; LOCK TABLE counters IN EXCLUSIVE MODE")
        .unwrap();
    pg.client("source")
        .batch_execute("UPDATE counters SET n = n + 1")
        .unwrap();
    let unlock = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(3));
        blocker.batch_execute("COMMIT").unwrap();
    });
    let output = weir()
        .args(["reconcile", "-q"])
        .arg(&file)
        .current_dir(ws.dir.path())
        .output()
        .unwrap();
    unlock.join().unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{text}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(text.contains("waited"), "the report says it waited: {text}");
}

#[test]
fn a_dropped_slot_is_copied_again_with_resync_auto_and_stops_a_manual_run() {
    let pg = server();
    let ws = Workspace::new();
    let total: i64 = 60_000;
    pg.client("source")
        .batch_execute(&format!(
            "CREATE TABLE items (id bigint PRIMARY KEY, v text);
             INSERT INTO items SELECT g, md5(g::text) FROM generate_series(1, {total}) g;
             -- A text key: its copy cannot resume, so it is copied whole again.
             CREATE TABLE tags (name text PRIMARY KEY, n int);
             INSERT INTO tags SELECT 'tag' || g, g FROM generate_series(1, 50) g;"
        ))
        .unwrap();
    let yaml = std::fs::read_to_string(pipeline(
        &ws,
        &pg,
        "resync",
        "  heartbeat: { interval: 1s }\n",
    ))
    .unwrap()
    .replace("chunk_rows: 7", "chunk_rows: 500");
    let auto = ws.write(
        "auto.yaml",
        &format!("{yaml}lifecycle: {{ resync: auto }}\n"),
    );
    let manual = ws.write("manual.yaml", &yaml);
    let tables = ["items", "tags"];
    let stream = "postgres:weir_resync";
    let first = start(&ws, &auto);
    wait_until_same(&pg, &ws, &tables, Duration::from_secs(120));
    wait_for_status(
        &ws,
        &auto,
        Duration::from_secs(30),
        "a streamed position",
        |s| s["positions"][stream]["next"].as_i64().is_some(),
    );
    kill(first);

    // The slot is dropped while weir is down, and the source changes meanwhile: those
    // changes are in no slot. Rows deleted now must go from the target too.
    let drop_slot = || {
        let started = Instant::now();
        while pg
            .client("source")
            .batch_execute("SELECT pg_drop_replication_slot('weir_resync')")
            .is_err()
        {
            assert!(started.elapsed() < Duration::from_secs(30), "drop the slot");
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    drop_slot();
    pg.client("source")
        .batch_execute(
            "DELETE FROM items WHERE id <= 100;
             UPDATE items SET v = 'changed' WHERE id BETWEEN 500 AND 600;
             INSERT INTO items VALUES (70000, 'new');
             DELETE FROM tags WHERE n < 10;
             UPDATE tags SET n = n + 100;",
        )
        .unwrap();

    // The resync is killed in the middle of its copy of `items`, after it emptied the
    // table; the next run resumes it.
    let count = || -> i64 {
        pg.client("target")
            .query_one("SELECT count(*) FROM items", &[])
            .map(|r| r.get(0))
            .unwrap_or(0)
    };
    let second = start(&ws, &auto);
    let started = Instant::now();
    let mut emptied = false;
    loop {
        let now = count();
        emptied |= now < total - 100;
        if emptied && now > 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the resync emptied and began to refill items ({now} rows); weir's log:\n{}",
            std::fs::read_to_string(ws.path("weir.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    kill(second);
    let refilled = count();
    assert!(
        refilled < total - 100,
        "killed in the middle: {refilled} rows"
    );

    let third = start(&ws, &auto);
    wait_until_same(&pg, &ws, &tables, Duration::from_secs(120));
    pg.client("source")
        .batch_execute("INSERT INTO items VALUES (80000, 'streamed after the resync')")
        .unwrap();
    wait_until_same(&pg, &ws, &tables, Duration::from_secs(60));
    let status = wait_for_status(&ws, &auto, Duration::from_secs(30), "streaming", |s| {
        s["state"] == "streaming"
    });
    let path: Vec<&str> = status["transitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["to"].as_str().unwrap())
        .collect();
    let resync = path
        .iter()
        .position(|s| *s == "resync-required")
        .unwrap_or_else(|| panic!("the transitions show the resync: {path:?}"));
    assert!(
        path[resync..].contains(&"snapshotting") && path.last() == Some(&"streaming"),
        "a resync copies, then streams: {path:?}"
    );
    kill(third);

    // Without `resync: auto`, a slot made anew by hand (past the sink's position) stops
    // the run with the resync exit code instead of streaming from where the slot starts.
    drop_slot();
    pg.client("source")
        .batch_execute("UPDATE items SET v = 'missed' WHERE id = 1000")
        .unwrap();
    pg.client("source")
        .batch_execute("SELECT pg_create_logical_replication_slot('weir_resync', 'pgoutput')")
        .unwrap();
    let run = ws.run(&manual, &["--stop-when-idle", "2s"]);
    assert_eq!(run.output.status.code(), Some(3), "{}", run.stderr());
    assert!(run.stderr().contains("created anew"), "{}", run.stderr());
}

/// A table added to the publication while weir streams: its changes stream, but its rows
/// from before were never copied. weir says so (log, the table's status, the last error),
/// and says it again after a restart, instead of leaving the gap silent.
#[test]
fn tables_added_to_the_publication_mid_run_are_copied_while_streaming() {
    let pg = server();
    let ws = Workspace::new();
    pg.client("source")
        .batch_execute(
            "CREATE TABLE early (id int PRIMARY KEY, v text);
             CREATE TABLE empty (id int PRIMARY KEY);
             INSERT INTO early VALUES (1, 'a'), (2, 'b');",
        )
        .unwrap();
    let file = pipeline(&ws, &pg, "late", "");
    let run = start(&ws, &file);
    wait_until_same(&pg, &ws, &["early"], Duration::from_secs(60));
    wait_for_status(&ws, &file, Duration::from_secs(30), "streaming", |s| {
        s["state"] == "streaming"
    });
    // Rows from before the tables join the publication (copied 7 at a time, so the copy
    // of `late` takes seconds), a text key (copied whole again after a restart).
    pg.client("source")
        .batch_execute(
            "CREATE TABLE late (id int PRIMARY KEY, v text);
             INSERT INTO late SELECT g, 'before' FROM generate_series(1, 300000) g;
             CREATE TABLE late_text (code text PRIMARY KEY, v text);
             INSERT INTO late_text SELECT 'k' || g, 'before' FROM generate_series(1, 50) g;
             ALTER PUBLICATION weir_late ADD TABLE late, late_text;",
        )
        .unwrap();
    // An application writes to both throughout: before the copy's point, during the
    // copy, after it, and across a kill.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let mut client = pg.client("source");
        std::thread::spawn(move || {
            let mut n: i64 = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                let id = (n * 7919) % 300_000 + 1;
                client
                    .batch_execute(&format!(
                        "BEGIN;
                         UPDATE late SET v = 'changed {n}' WHERE id = {id};
                         DELETE FROM late WHERE id = {};
                         INSERT INTO late VALUES ({}, 'new {n}');
                         UPDATE late_text SET v = 'changed {n}' WHERE code = 'k{}';
                         COMMIT;",
                        (n * 104_729) % 300_000 + 1,
                        1_000_000 + n,
                        n % 50 + 1
                    ))
                    .unwrap();
                std::thread::sleep(Duration::from_millis(5));
            }
            n
        })
    };
    // Killed while `late` is being copied.
    wait_for_status(
        &ws,
        &file,
        Duration::from_secs(60),
        &format!(
            "public.late copying; log: {}",
            std::fs::read_to_string(ws.path("weir.log")).unwrap_or_default()
        ),
        |s| {
            s["tables"]["public.late"]["state"] == "snapshotting"
                && s["tables"]["public.late"]["rows_copied"]
                    .as_u64()
                    .is_some_and(|n| n > 0)
        },
    );
    kill(run);
    let first_log = std::fs::read_to_string(ws.path("weir.log")).unwrap_or_default();
    assert!(
        first_log.contains("copying tables added to the publication mid-run"),
        "{first_log}"
    );
    let run = start(&ws, &file);
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let writes = writer.join().unwrap();
    assert!(writes > 10, "the writer wrote {writes} transactions");
    wait_until_same(
        &pg,
        &ws,
        &["early", "late", "late_text"],
        Duration::from_secs(120),
    );
    let copied = |s: &serde_json::Value| {
        ["public.late", "public.late_text"]
            .iter()
            .all(|t| s["tables"][t]["copied"] == true && s["tables"][t]["state"] == "streaming")
            && s["state"] == "streaming"
    };
    let status = wait_for_status(&ws, &file, Duration::from_secs(30), "copied", copied);
    assert!(
        !status
            .to_string()
            .contains("added to the publication after the copy"),
        "{status}"
    );
    // After a restart, nothing is copied again, and the streamed changes still apply.
    kill(run);
    let run = start(&ws, &file);
    pg.client("source")
        .batch_execute("UPDATE late SET v = 'after restart' WHERE id <= 3")
        .unwrap();
    wait_until_same(&pg, &ws, &["late", "late_text"], Duration::from_secs(60));
    let log = std::fs::read_to_string(ws.path("weir.log")).unwrap_or_default();
    assert!(!log.contains("copying tables added"), "{log}");
    assert!(!log.contains("was added to the publication"), "{log}");
    kill(run);
}

/// A new slot waits for every transaction open on the source to end. weir names the one
/// holding it (a session idle in a transaction) in its log while it waits, and goes on
/// when it ends: nothing is lost, the held transaction's row included.
#[test]
fn a_slot_held_by_an_open_transaction_names_it_and_goes_on_when_it_ends() {
    let pg = server();
    let ws = Workspace::new();
    pg.client("source")
        .batch_execute(
            "CREATE TABLE held (id int PRIMARY KEY, v int); INSERT INTO held VALUES (1, 1);",
        )
        .unwrap();
    let mut holder = pg.client("source");
    holder
        .batch_execute("SET application_name = 'held-open'; BEGIN; INSERT INTO held VALUES (2, 2);")
        .unwrap();
    let pid: i32 = holder
        .query_one("SELECT pg_backend_pid()", &[])
        .unwrap()
        .get(0);
    let file = pipeline(&ws, &pg, "held", "");
    let _child = start(&ws, &file);
    let named = format!("process {pid} (idle in transaction, open ");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let log = std::fs::read_to_string(ws.path("weir.log")).unwrap_or_default();
        if log.contains(&named) && log.contains("held-open") && log.contains("weir_held") {
            break;
        }
        assert!(Instant::now() < deadline, "no word of {named}:\n{log}");
        std::thread::sleep(Duration::from_millis(200));
    }
    holder.batch_execute("COMMIT").unwrap();
    wait_until_same(&pg, &ws, &["held"], Duration::from_secs(60));
    assert_eq!(table_rows(&pg, "target", "held").len(), 2);
}

/// A SQL_ASCII database holds whatever bytes its clients wrote. A streamed value that is
/// not UTF-8 makes its change a dead letter with the reason (it used to stop the stream
/// and reconnect to the same change forever); the changes after it are applied.
#[test]
fn a_streamed_value_that_is_not_utf8_is_a_dead_letter_and_the_stream_goes_on() {
    let pg = server();
    let ws = Workspace::new();
    pg.client("postgres")
        .batch_execute(
            "CREATE DATABASE ascii_source ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C' \
             TEMPLATE template0",
        )
        .unwrap();
    let mut source = pg.client("ascii_source");
    source
        .batch_execute("CREATE TABLE notes (id int PRIMARY KEY, note text); INSERT INTO notes VALUES (1, 'plain');")
        .unwrap();
    let yaml = std::fs::read_to_string(pipeline(&ws, &pg, "ascii", ""))
        .unwrap()
        .replace(&pg.url("source"), &pg.url("ascii_source"));
    let file = ws.write("ascii.yaml", &yaml);
    let weir_run = start(&ws, &file);
    let has = |id: i32| {
        pg.client("target")
            .query_opt("SELECT 1 FROM notes WHERE id = $1", &[&id])
            .ok()
            .flatten()
            .is_some()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !has(1) {
        assert!(Instant::now() < deadline, "the copy of row 1");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Latin-1 bytes in a text column, as a SQL_ASCII database takes them.
    source
        .batch_execute(
            "INSERT INTO notes VALUES (2, E'na\\xefve');
             INSERT INTO notes VALUES (3, 'after');",
        )
        .unwrap();
    while !has(3) {
        let log = std::fs::read_to_string(ws.path("weir.log")).unwrap_or_default();
        assert!(
            Instant::now() < deadline,
            "the change after the unreadable one:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    kill(weir_run);
    assert!(!has(2), "the unreadable row is not applied");
    let letters: Vec<serde_json::Value> = std::fs::read_to_string(ws.path("dead-letters.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(letters.len(), 1, "{letters:?}");
    let error = letters[0]["error"].as_str().unwrap();
    assert!(
        error.contains("`note`") && error.contains("not UTF-8"),
        "{error}"
    );
    let event: serde_json::Value =
        serde_json::from_str(letters[0]["raw"].as_str().unwrap()).unwrap();
    assert_eq!(event["payload"]["after"]["id"], 2);
    assert_eq!(event["payload"]["after"]["note"], "na\u{fffd}ve");
}
