//! Several weir processes sharing one pipeline through a Kafka consumer group, with a
//! real `tansu` broker and a real PostgreSQL: 50 tables in one topic of 12 partitions,
//! written while processes are frozen past their session timeout (fencing), killed,
//! added, and made to come and go. The target is a change log (`mode: append`), so every
//! change applied shows once per apply: it is checked against an independent oracle for
//! changes lost, applied twice, and keys left at a stale version.
//!
//! After each member dies without leaving (SIGKILL, SIGSTOP), another joins once its
//! session has expired: tansu 0.6 does not rebalance on the expiry itself (see
//! tests/common/group.rs and docs/decisions.md).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::Workspace;
use common::group::{
    Group, PAST_THE_SESSION, change_log_figures, change_log_pipeline, read_change_log,
};
use common::inventory::{capture, tables};
use common::services::{Broker, Postgres};

const TOPIC: &str = "dbserver1.inventory.all";
const PARTITIONS: i32 = 12;
const PIPELINE: &str = "inventory";
/// A process may stop once nothing is left for it to read (a gap between polls, as when
/// frozen, is not taken for idleness: the thawed process must go on).
const STOP_WHEN_IDLE: &[&str] = &["--stop-when-idle", "10s"];
/// Changes written while the processes run (the rest are written before).
const LIVE_EVENTS: usize = 30_000;

/// 3 processes, then one frozen past its session timeout while a fourth joins, then
/// thawed (fencing), one killed and a fifth started, and a sixth joining and leaving
/// three times, all over 300,000 changes to 50 tables: every change is applied once, none
/// is lost, no key is left stale.
#[test]
fn a_group_of_processes_survives_freezes_kills_and_rebalances_applying_each_change_once() {
    let tables = tables();
    let events = 300_000;
    let capture = capture(&tables, events, 400, 0x5ca1e);
    let broker = Broker::start();
    let pg = Postgres::start();
    pg.create_database("target");
    broker.create_topic(TOPIC, PARTITIONS as u32);
    // Debezium's topic routing: every table in one topic, keyed by the record key (so a
    // key's changes stay in one partition, in order).
    let interleaved = capture.interleaved(12);
    // Most changes are there before the processes start (tansu serves a backlog in large
    // fetches, and a stream written while several consumers fetch it, a few records at a
    // time, at a fifth of the rate); the rest arrive during the faults, a chunk at a time.
    let (backlog, live) = interleaved.split_at(events - LIVE_EVENTS);
    let producing = Instant::now();
    for chunk in backlog.chunks(30_000) {
        broker.produce(TOPIC, chunk);
    }
    eprintln!(
        "{} events produced in {:.1} s",
        backlog.len(),
        producing.elapsed().as_secs_f64()
    );
    let live = live.to_vec();
    let produced = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let producing = {
        let produced = produced.clone();
        let broker_address = broker.address();
        std::thread::spawn(move || {
            for chunk in live.chunks(2_000) {
                common::services::produce_to(&broker_address, TOPIC, chunk);
                std::thread::sleep(Duration::from_millis(500));
            }
            produced.store(true, std::sync::atomic::Ordering::SeqCst);
        })
    };

    let ws = Workspace::new();
    let pipeline = ws.write("inventory.yaml", &change_log_pipeline(PIPELINE, TOPIC));
    let group = Group {
        pg: &pg,
        broker: &broker,
        pipeline: &pipeline,
        name: PIPELINE,
        database: "target",
        topic: TOPIC,
        partitions: PARTITIONS,
    };
    let moves = Duration::from_secs(120);
    let mut p1 = group.start("p1", STOP_WHEN_IDLE);
    let mut p2 = group.start("p2", STOP_WHEN_IDLE);
    let mut p3 = group.start("p3", STOP_WHEN_IDLE);
    group.wait_until_every_partition_moves(
        &BTreeMap::new(),
        "at the start",
        &mut [&mut p1, &mut p2, &mut p3],
        moves,
    );

    // Fencing: p2 is frozen inside a batch's transaction while it works through the
    // backlog, past its session timeout, and the group gives its partitions to the others
    // (a fourth joins after the expiry), which go on from the stored positions. Then p2
    // is thawed, still holding the batch it had read: it must not be applied over the
    // new owners' work.
    let mut p4 =
        group.freeze_inside_a_batch(&mut p2, "p4", STOP_WHEN_IDLE, &mut [&mut p1, &mut p3]);

    // A process killed without leaving the group; once its session has expired, a fifth
    // joins. The partitions move to the live members, each from its stored position.
    // (On tansu 0.6 the join is what moves them: see the module's comment.)
    let killed_at = group.positions();
    p1.kill();
    std::thread::sleep(PAST_THE_SESSION);
    let mut p5 = group.start("p5", STOP_WHEN_IDLE);
    group.wait_until_every_partition_moves(
        &killed_at,
        "after p1 was killed and p5 joined",
        &mut [&mut p2, &mut p3, &mut p4, &mut p5],
        moves,
    );

    // A rebalance storm: a sixth process joins and leaves (SIGTERM: it applies what it has
    // read and leaves the group), three times.
    for _ in 0..3 {
        let before = group.positions();
        let mut p6 = group.start("p6", STOP_WHEN_IDLE);
        group.wait_until_every_partition_moves(
            &before,
            "with p6 joining",
            &mut [&mut p2, &mut p3, &mut p4, &mut p5, &mut p6],
            moves,
        );
        p6.signal("TERM");
        p6.finish(Duration::from_secs(60));
    }

    // Everything applied, by whichever members own the partitions; then the rest stop.
    // (A member may wait for an assignment that tansu 0.6 never gives it, and so never
    // be idle: the end is what the group applied, not each member's idleness.)
    producing.join().unwrap();
    assert!(produced.load(std::sync::atomic::Ordering::SeqCst));
    group.wait_until_applied_to_the_end(
        &mut [&mut p2, &mut p3, &mut p4, &mut p5],
        Duration::from_secs(300),
    );
    let summaries: Vec<(&str, serde_json::Value)> = [p2, p3, p4, p5]
        .into_iter()
        .map(|p| (p.name, p.stop(Duration::from_secs(60))))
        .collect();

    let log = read_change_log(&pg, "target", &tables);
    let applied_once: BTreeSet<&(String, i64)> = log.changes.iter().collect();
    let expected_changes = capture.routed_changes(&tables) as u64;
    let mut figures = change_log_figures(&log, &capture, expected_changes);
    figures.events = events as u64;
    for (name, summary) in &summaries {
        eprintln!(
            "{name}: revoked {} times, {} events abandoned, {} rows already applied, {} read",
            summary["partitions_revoked"],
            summary["events_abandoned"],
            summary["already_applied"],
            summary["events_read"],
        );
    }
    figures.report_and_check(
        "scale-out: 3 to 5 processes in one group",
        "SIGKILL, SIGSTOP past the session, joins, leaves",
    );
    assert_eq!(applied_once.len() as u64, expected_changes);
    // p2 was thawed holding a batch of partitions it had lost: it abandoned it, or the
    // sink found its rows applied already.
    let fenced = summaries[0].1["events_abandoned"].as_u64().unwrap()
        + summaries[0].1["already_applied"].as_u64().unwrap();
    assert!(
        fenced > 0,
        "p2 held nothing when thawed: {}",
        summaries[0].1
    );
}
