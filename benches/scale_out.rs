//! Scale-out over a consumer group (docs/delivery.md, "Several processes"): one process
//! against two on one topic of 12 partitions carrying 50 tables into PostgreSQL, and the
//! rebalance pause, the time from one process leaving or dying until the others apply
//! its partitions again.
//!
//! ```text
//! cargo bench --bench scale_out                     # 60k events, 3 rounds
//! cargo bench --bench scale_out -- --events 100000 --rounds 5
//! ```
//!
//! The local broker (tansu) shares the machine's 2 cores with every weir process and
//! PostgreSQL, so the rates say more about the machine than about weir; beside each the
//! CPU time weir spent per event, summed over its processes. One process and two read the
//! same topic from the start into a fresh database each, in turn first in alternate
//! rounds; the ratio is taken within a round.
//!
//! The pause is measured twice: a process leaving (SIGTERM: it applies what it read and
//! leaves the group, which rebalances at once), and a process killed (SIGKILL), whose
//! partitions move once its session expires (`session.timeout.ms`, 6 s here). tansu
//! starts no rebalance on an expiry (docs/decisions.md, "Scale-out tests and tansu's group
//! expiry"), so a third process joins 7 s after the kill, and the figure is from the
//! kill, the session's wait included.

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::collections::BTreeMap;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::Workspace;
use common::inventory::{capture, tables};
use common::services::{Broker, Postgres, signal};
use support::{cpu_seconds, median, number_args};

const TOPIC: &str = "dbserver1.inventory.all";
const PARTITIONS: i32 = 12;

fn pipeline(ws: &Workspace, name: &str) -> std::path::PathBuf {
    ws.write(
        &format!("{name}.yaml"),
        &format!(
            r#"name: {name}
source:
  type: kafka
  brokers: ${{KAFKA_BROKERS}}
  topics: [{TOPIC}]
  group_id: {name}
  start: earliest
  format: debezium-json
  options:
    session.timeout.ms: 6000
    heartbeat.interval.ms: 1000
    # tansu answers a fetch only when its wait expires (docs/pipeline.md, "Tuning").
    fetch.wait.max.ms: 5
tables:
  include: ['inventory.*']
sink:
  type: postgres
  url: ${{PG_URL}}
  schema: public
  mode: upsert
  create: true
batch:
  max_events: 5000
  max_wait: 100ms
"#
        ),
    )
}

fn start(broker: &Broker, pg: &Postgres, database: &str, pipeline: &std::path::Path) -> Child {
    common::weir()
        .env("KAFKA_BROKERS", broker.address())
        .env("PG_URL", pg.url(database))
        // Long enough that a process whose own partitions are done is still there when
        // the group hands it a leaver's.
        .args(["run", "-q", "--stop-when-idle", "10s"])
        .arg(pipeline)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start weir")
}

/// The stored position of each partition.
fn positions(pg: &Postgres, database: &str, name: &str) -> BTreeMap<i32, i64> {
    let Ok(mut client) = postgres::Client::connect(&pg.url(database), postgres::NoTls) else {
        return BTreeMap::new();
    };
    client
        .query(
            "SELECT stream, next FROM weir.checkpoints WHERE pipeline = $1 AND next >= 0",
            &[&name],
        )
        .unwrap_or_default()
        .iter()
        .filter_map(|row| {
            let stream: String = row.get(0);
            Some((stream.rsplit_once('/')?.1.parse().ok()?, row.get(1)))
        })
        .collect()
}

/// Polls until `done` holds for the positions; returns when it did.
fn wait_for(
    pg: &Postgres,
    database: &str,
    name: &str,
    what: &str,
    done: impl Fn(&BTreeMap<i32, i64>) -> bool,
) -> Instant {
    let started = Instant::now();
    loop {
        if done(&positions(pg, database, name)) {
            return Instant::now();
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "{what}: too long"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn finish(children: Vec<Child>) {
    for mut child in children {
        let status = child.wait().unwrap();
        assert!(status.success(), "weir failed: {status}");
    }
}

/// One run of `processes` processes over the whole topic: seconds until every partition
/// is applied to its end, weir's CPU seconds and the broker's.
fn throughput(
    broker: &Broker,
    pg: &Postgres,
    ws: &Workspace,
    run: &str,
    processes: usize,
    ends: &BTreeMap<i32, i64>,
) -> (f64, f64, f64) {
    pg.create_database(run);
    let pipeline = pipeline(ws, run);
    let cpu_before = cpu_seconds(libc::RUSAGE_CHILDREN);
    let broker_before = broker.cpu_seconds();
    let started = Instant::now();
    let children: Vec<Child> = (0..processes)
        .map(|_| start(broker, pg, run, &pipeline))
        .collect();
    let applied = wait_for(pg, run, run, "applying the topic", |at| {
        ends.iter().all(|(p, end)| at.get(p) == Some(end))
    });
    let broker_cpu = broker.cpu_seconds() - broker_before;
    finish(children);
    (
        applied.duration_since(started).as_secs_f64(),
        cpu_seconds(libc::RUSAGE_CHILDREN) - cpu_before,
        broker_cpu,
    )
}

/// Two processes part-way through the topic; one leaves (or dies): seconds until every
/// partition not yet at its end has moved past where it stood.
fn pause(
    broker: &Broker,
    pg: &Postgres,
    ws: &Workspace,
    run: &str,
    ends: &BTreeMap<i32, i64>,
    kill: bool,
) -> (f64, f64) {
    pg.create_database(run);
    let pipeline = pipeline(ws, run);
    let total: i64 = ends.values().sum();
    let mut first = start(broker, pg, run, &pipeline);
    let second = start(broker, pg, run, &pipeline);
    // Both own partitions and a tenth of the topic is applied.
    wait_for(pg, run, run, "a tenth applied", |at| {
        at.len() == PARTITIONS as usize && at.values().sum::<i64>() * 10 >= total
    });
    let at_signal = positions(pg, run, run);
    let signalled = Instant::now();
    let mut joiner = None;
    let mut leaving = None;
    let mut rebalanced = signalled;
    if kill {
        first.kill().unwrap();
        first.wait().unwrap();
        std::thread::sleep(Duration::from_secs(7));
        rebalanced = Instant::now();
        joiner = Some(start(broker, pg, run, &pipeline));
    } else {
        signal(first.id(), "TERM");
        leaving = Some(std::thread::spawn(move || first.wait().unwrap()));
    }
    // A leaver applies what it read before it goes: its partitions move on from where
    // it left them, not from where they stood at the signal.
    let mut from = at_signal;
    while leaving.as_ref().is_some_and(|l| !l.is_finished()) {
        std::thread::sleep(Duration::from_millis(5));
    }
    if leaving.is_some() {
        from = positions(pg, run, run);
    }
    let moved = wait_for(pg, run, run, "every partition applied again", |at| {
        ends.iter().all(|(p, end)| {
            let now = at.get(p).copied().unwrap_or(-1);
            now >= *end || now > from.get(p).copied().unwrap_or(-1)
        })
    });
    if let Some(leaving) = leaving {
        assert!(
            leaving.join().unwrap().success(),
            "the leaving process failed"
        );
    }
    let mut rest = vec![second];
    rest.extend(joiner);
    finish(rest);
    (
        moved.duration_since(signalled).as_secs_f64(),
        moved.duration_since(rebalanced).as_secs_f64(),
    )
}

fn main() {
    let [events, rounds] = number_args(&[("--events", 60_000), ("--rounds", 3)])[..] else {
        unreachable!()
    };
    let tables = tables();
    let capture = capture(&tables, events, 300, 0xbe7c);
    let records = capture.interleaved(3);
    let broker = Broker::start();
    let pg = Postgres::start();
    broker.create_topic(TOPIC, PARTITIONS as u32);
    // One record per batch: the pause runs resume partitions mid-stream, and tansu
    // resumes only at batch boundaries (docs/decisions.md).
    let producing = Instant::now();
    // In chunks: each call waits at most a minute for its acknowledgements.
    for chunk in records.chunks(30_000) {
        broker.produce(TOPIC, chunk);
    }
    eprintln!(
        "produced {events} events in {:.1} s",
        producing.elapsed().as_secs_f64()
    );
    let ends: BTreeMap<i32, i64> = (0..PARTITIONS)
        .map(|p| (p, broker.watermarks(TOPIC, p).expect("watermarks").1))
        .collect();
    let ws = Workspace::new();

    let mut ratios = Vec::new();
    let mut per_event = BTreeMap::<usize, Vec<f64>>::new();
    for round in 0..rounds {
        let order = if round % 2 == 0 { [1, 2] } else { [2, 1] };
        let mut rates = BTreeMap::new();
        for processes in order {
            let run = format!("r{round}p{processes}");
            let (seconds, cpu, broker_cpu) = throughput(&broker, &pg, &ws, &run, processes, &ends);
            let rate = events as f64 / seconds;
            let micros = cpu * 1e6 / events as f64;
            eprintln!(
                "round {round}: {processes} process(es): {rate:.0} events/s, weir CPU \
                 {micros:.1} µs/event, broker CPU {:.1} µs/event",
                broker_cpu * 1e6 / events as f64
            );
            rates.insert(processes, rate);
            per_event.entry(processes).or_default().push(micros);
        }
        ratios.push(rates[&2] / rates[&1]);
    }
    let mut leave = Vec::new();
    let mut kill = Vec::new();
    let mut join = Vec::new();
    for round in 0..rounds {
        leave.push(pause(&broker, &pg, &ws, &format!("leave{round}"), &ends, false).0);
        let (from_kill, from_join) = pause(&broker, &pg, &ws, &format!("kill{round}"), &ends, true);
        kill.push(from_kill);
        join.push(from_join);
        eprintln!(
            "round {round}: pause after a leave {:.2} s; after a kill {from_kill:.2} s, of \
             which {from_join:.2} s from the join",
            leave[round]
        );
    }
    println!(
        "two processes against one: median {:.2}x (rounds {:?}); weir CPU per event: one \
         {:.1} µs, two {:.1} µs (medians)",
        median(&mut ratios).unwrap(),
        ratios.iter().map(|r| format!("{r:.2}")).collect::<Vec<_>>(),
        median(per_event.get_mut(&1).unwrap()).unwrap(),
        median(per_event.get_mut(&2).unwrap()).unwrap(),
    );
    println!(
        "rebalance pause: after a leave median {:.2} s; after a kill median {:.2} s, of \
         which {:.2} s from the join that follows the 6 s session (7 s wait)",
        median(&mut leave).unwrap(),
        median(&mut kill).unwrap(),
        median(&mut join).unwrap()
    );
}
