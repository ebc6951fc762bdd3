//! `weir cutover` on a live `postgres-cdc` pipeline against a real PostgreSQL server: the
//! source and the target are two databases of one server.

mod common;

use std::process::Output;
use std::time::Duration;

use common::cdc::*;
use common::services::Postgres;
use common::{Workspace, weir};

fn cutover(ws: &Workspace, file: &std::path::Path, extra: &[&str]) -> Output {
    weir()
        .arg("cutover")
        .arg(file)
        .args(["--quiet-for", "2s", "--timeout", "60s"])
        .args(extra)
        .current_dir(ws.dir.path())
        .output()
        .expect("run weir cutover")
}

fn text(output: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Writes to the source for `seconds`, as an application would, on its own thread.
fn application(pg: &Postgres, seconds: u64) -> std::thread::JoinHandle<u64> {
    let mut source = pg.client("source");
    std::thread::spawn(move || {
        let started = std::time::Instant::now();
        let mut writes = 0u64;
        while started.elapsed() < Duration::from_secs(seconds) {
            let id = (writes % 100 + 1) as i32;
            source
                .execute(
                    "UPDATE accounts SET balance = balance + 1 WHERE id = $1",
                    &[&id],
                )
                .unwrap();
            writes += 1;
            std::thread::sleep(Duration::from_millis(5));
        }
        writes
    })
}

#[test]
fn cutover_checks_a_live_pipeline_and_its_reverse_pipeline_carries_writes_back() {
    let pg = server();
    let ws = Workspace::new();
    pg.client("source")
        .batch_execute(
            "CREATE TABLE accounts (id int PRIMARY KEY, balance bigint NOT NULL);
             INSERT INTO accounts SELECT g, 0 FROM generate_series(1, 100) g;
             CREATE TABLE notes (id int PRIMARY KEY, body text);
             INSERT INTO notes SELECT g, 'note ' || g FROM generate_series(1, 10) g;",
        )
        .unwrap();
    // The forward pipeline marks its writes with an origin and leaves out the reverse
    // pipeline's, so the two can run at once.
    let yaml = std::fs::read_to_string(pipeline(
        &ws,
        &pg,
        "move",
        "  heartbeat: { interval: 1s }\n  skip_origins: ['move-reverse*']\n",
    ))
    .unwrap()
    .replace("  create: true\n", "  create: true\n  origin: weir_move\n");
    let file = ws.write("pipeline.yaml", &yaml);
    let forward = start(&ws, &file);
    wait_until_same(&pg, &ws, &["accounts", "notes"], Duration::from_secs(60));

    // A dry run after the application wrote, while the pipeline cannot apply yet (the
    // target table is locked against writes, not reads): the cutover must wait for the
    // pipeline to apply everything before it compares.
    let mut blocker = pg.client("target");
    blocker
        .batch_execute("BEGIN; LOCK TABLE accounts IN EXCLUSIVE MODE")
        .unwrap();
    let writes = application(&pg, 2).join().unwrap();
    assert!(writes > 0);
    let unlock = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(4));
        blocker.batch_execute("COMMIT").unwrap();
    });
    let dry = cutover(&ws, &file, &[]);
    let total: i64 = pg
        .client("target")
        .query_one("SELECT sum(balance)::bigint FROM accounts", &[])
        .unwrap()
        .get(0);
    unlock.join().unwrap();
    assert_eq!(dry.status.code(), Some(0), "{}", text(&dry));
    assert_eq!(
        total as u64, writes,
        "every write made before the cutover is in the target when it ends"
    );
    let out = String::from_utf8_lossy(&dry.stdout);
    assert!(out.contains("dry run"), "{}", text(&dry));
    assert!(out.contains("source position: "), "{}", text(&dry));
    assert!(out.contains("would be written"), "{}", text(&dry));
    assert!(
        !ws.path("pipeline-reverse.yaml").exists(),
        "a dry run writes nothing"
    );
    let slots: i64 = pg
        .client("target")
        .query_one(
            "SELECT count(*) FROM pg_replication_slots WHERE database = 'target'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(slots, 0, "a dry run creates no slot on the target");

    // One difference in the target: exit 1, naming the table.
    pg.client("target")
        .batch_execute("UPDATE notes SET body = 'changed behind weir' WHERE id = 4")
        .unwrap();
    let differs = cutover(&ws, &file, &["--execute", "--freeze-hook", "touch frozen"]);
    assert_eq!(differs.status.code(), Some(1), "{}", text(&differs));
    let err = String::from_utf8_lossy(&differs.stderr);
    assert!(
        err.contains("notes") && !err.contains("accounts"),
        "{}",
        text(&differs)
    );
    assert!(
        !ws.path("pipeline-reverse.yaml").exists(),
        "a failed cutover writes no reverse pipeline"
    );
    pg.client("target")
        .batch_execute("UPDATE notes SET body = 'note 4' WHERE id = 4")
        .unwrap();

    // The cutover itself: the hook freezes, the positions are printed, the reverse
    // pipeline is written and a slot waits on the target.
    std::fs::remove_file(ws.path("frozen")).unwrap();
    let done = cutover(&ws, &file, &["--execute", "--freeze-hook", "touch frozen"]);
    assert_eq!(done.status.code(), Some(0), "{}", text(&done));
    assert!(ws.path("frozen").exists(), "the freeze hook ran");
    let out = String::from_utf8_lossy(&done.stdout);
    assert!(
        out.contains("source position: ") && out.contains("target position: "),
        "{}",
        text(&done)
    );
    let reverse = ws.path("pipeline-reverse.yaml");
    let yaml = std::fs::read_to_string(&reverse).expect("the reverse pipeline is written");
    assert!(yaml.contains(&pg.url("target")), "{yaml}");
    assert!(yaml.contains("slot: 'weir_move_reverse'"), "{yaml}");

    // The switch: the forward pipeline stops, the application writes to the target, and
    // the reverse pipeline carries those writes back to the source.
    kill(forward);
    pg.client("target")
        .batch_execute(
            "UPDATE accounts SET balance = -5 WHERE id = 1;
             DELETE FROM notes WHERE id = 2;
             INSERT INTO notes VALUES (11, 'written after the switch');",
        )
        .unwrap();
    let back = start(&ws, &reverse);
    wait_until_same(&pg, &ws, &["accounts", "notes"], Duration::from_secs(60));
    drop(back);
    let note: String = pg
        .client("source")
        .query_one("SELECT body FROM notes WHERE id = 11", &[])
        .unwrap()
        .get(0);
    assert_eq!(note, "written after the switch");
    assert!(yaml_of(&reverse).contains("skip_origins: ['weir_move*']"));

    // Both at once: each leaves out the other's writes, so nothing goes back and forth.
    let forward = start_logged(&ws, &file, "forward.log");
    let back = start_logged(&ws, &reverse, "reverse.log");
    let forward_applied = applied_past(&ws, &file, &pg, "source", "postgres:weir_move");
    assert_eq!(
        forward_applied, 0,
        "the forward pipeline left out the reverse pipeline's writes"
    );
    pg.client("target")
        .batch_execute("INSERT INTO notes VALUES (12, 'both running')")
        .unwrap();
    wait_until_same(&pg, &ws, &["notes"], Duration::from_secs(60));
    let reverse_applied = applied_past(&ws, &reverse, &pg, "target", "postgres:weir_move_reverse");
    assert!(reverse_applied > 0);
    assert_eq!(
        applied_past(&ws, &file, &pg, "source", "postgres:weir_move"),
        0,
        "the forward pipeline left out the write the reverse pipeline carried back"
    );
    pg.client("source")
        .batch_execute("INSERT INTO notes VALUES (13, 'from the source')")
        .unwrap();
    wait_until_same(&pg, &ws, &["notes"], Duration::from_secs(60));
    assert_eq!(
        applied_past(&ws, &file, &pg, "source", "postgres:weir_move"),
        1,
        "the forward pipeline applied the source's write"
    );
    assert_eq!(
        applied_past(&ws, &reverse, &pg, "target", "postgres:weir_move_reverse"),
        reverse_applied,
        "the reverse pipeline left out the forward pipeline's write"
    );
    drop((forward, back));
    assert_same(&pg, &["accounts", "notes"]);
}

fn yaml_of(path: &std::path::Path) -> String {
    std::fs::read_to_string(path).unwrap()
}

fn start_logged(ws: &Workspace, pipeline: &std::path::Path, log: &str) -> Running {
    Running(
        weir()
            .args(["run", "-q", "-v"])
            .arg(pipeline)
            .current_dir(ws.dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(ws.path(log)).unwrap())
            .spawn()
            .expect("start weir"),
    )
}

/// The rows the pipeline of `file` has applied in this run, once it has read its source
/// (`database`) past everything written there so far: a watermark message is written,
/// and its position must reach the pipeline's stored `stream`.
fn applied_past(
    ws: &Workspace,
    file: &std::path::Path,
    pg: &Postgres,
    database: &str,
    stream: &str,
) -> u64 {
    let lsn: String = pg
        .client(database)
        .query_one(
            "SELECT pg_logical_emit_message(false, 'test', 'watermark')::text",
            &[],
        )
        .unwrap()
        .get(0);
    let (high, low) = lsn.split_once('/').unwrap();
    let lsn =
        (u64::from_str_radix(high, 16).unwrap() << 32) | u64::from_str_radix(low, 16).unwrap();
    let status = wait_for_status(
        ws,
        file,
        Duration::from_secs(60),
        "the watermark applied",
        |s| {
            s["positions"][stream]["next"]
                .as_u64()
                .is_some_and(|next| next >= lsn)
                && s["process"] == "running"
        },
    );
    // The counts are written with the status, a second apart: one more round.
    std::thread::sleep(Duration::from_millis(1500));
    let status = status_json(ws, file).unwrap_or(status);
    status["rows_applied"].as_u64().unwrap()
}
