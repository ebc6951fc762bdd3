//! Two sites kept in sync both ways through a real `tansu` broker (issue 5, test 2): two
//! PostgreSQL databases, applications writing to both at once for 60 s, a trigger-based
//! outbox at each site that captures every write there (weir's own included) and a relay
//! that feeds it to the site's topic, and two weir pipelines, A → B and B → A, under
//! last-write-wins. The sites must end equal, each key held by the write the rule names,
//! and weir must apply no more than twice the applications' writes: no ping-pong.

mod common;

use std::collections::BTreeMap;
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::faults::Figures;
use common::services::{Broker, Postgres};
use common::{Workspace, weir};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const SITES: [&str; 2] = ["a", "b"];
/// Rows both sites hold before the applications start.
const SEEDED: i64 = 300;
const WRITING: Duration = Duration::from_secs(60);

/// One write an application made: its key, the version and origin it wrote (a delete's
/// version is the deleted row's), and the value (`None` for a delete).
#[derive(Debug, Clone)]
struct Write {
    key: i64,
    version: i64,
    origin: String,
    value: Option<String>,
}

/// The table at a site, with the capture: every row change becomes a Debezium-shaped
/// event in `outbox`. A delete's origin is `weir.origin` when weir made it (the setting
/// weir gives its delete statements, docs/sync.md), else this site; a row's origin is in
/// its `origin` column.
fn prepare_site(pg: &Postgres, site: &str) {
    pg.create_database(site);
    let mut client = pg.client(site);
    client
        .batch_execute(&format!(
            "CREATE TABLE items (id bigint PRIMARY KEY, val text NOT NULL, \
                                 version bigint NOT NULL, origin text NOT NULL);
             INSERT INTO items SELECT g, 'seed ' || g, 1, 'seed' FROM generate_series(1, {SEEDED}) g;
             CREATE TABLE outbox (seq bigserial PRIMARY KEY, event jsonb NOT NULL);
             CREATE FUNCTION capture() RETURNS trigger LANGUAGE plpgsql AS $capture$
             BEGIN
                 INSERT INTO outbox (event) VALUES (jsonb_build_object(
                     'op', CASE TG_OP WHEN 'INSERT' THEN 'c' WHEN 'UPDATE' THEN 'u' ELSE 'd' END,
                     'before', CASE WHEN TG_OP <> 'INSERT' THEN to_jsonb(OLD) END,
                     'after', CASE WHEN TG_OP <> 'DELETE' THEN to_jsonb(NEW) END,
                     'source', jsonb_build_object(
                         'connector', 'outbox', 'name', '{site}', 'db', current_database(),
                         'schema', TG_TABLE_SCHEMA, 'table', TG_TABLE_NAME,
                         'txId', txid_current(),
                         'origin', CASE WHEN TG_OP = 'DELETE' THEN coalesce(
                             nullif(current_setting('weir.origin', true), ''), '{site}') END)));
                 RETURN NULL;
             END
             $capture$;
             CREATE TRIGGER capture AFTER INSERT OR UPDATE OR DELETE ON items
                 FOR EACH ROW EXECUTE FUNCTION capture();"
        ))
        .expect("prepare the site");
}

/// The pipeline that applies the changes captured at `from` to the other site.
fn pipeline(ws: &Workspace, pg: &Postgres, from: &str, to: &str) -> std::path::PathBuf {
    ws.write(
        &format!("{from}-to-{to}.yaml"),
        &format!(
            "name: {from}-to-{to}\n\
             source:\n  type: kafka\n  brokers: ${{KAFKA_BROKERS}}\n  topics: [from-{from}]\n  \
             group_id: weir-{to}\n  start: earliest\n  format: debezium-json\n  \
             options:\n    fetch.wait.max.ms: 20\n\
             table:\n  name: items\n  primary_key: [id]\n  \
             columns: {{id: int64, val: string, version: int64, origin: string}}\n\
             batch:\n  max_events: 500\n  max_wait: 50ms\n\
             sink:\n  type: postgres\n  url: {}\n  table: public.items\n\
             conflict:\n  strategy: last-write-wins\n  version_column: version\n  \
             origin_column: origin\n  site: {to}\n  source_site: {from}\n  lanes: 2\n\
             dead_letter:\n  type: file\n  path: dead-letters-{to}.jsonl\n",
            pg.url(to)
        ),
    )
}

fn start_pipeline(broker: &Broker, pipeline: &std::path::Path) -> Child {
    weir()
        .env("KAFKA_BROKERS", broker.address())
        .args(["run", "--json", "-q", "--stop-when-idle", "15s"])
        .arg(pipeline)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start weir")
}

/// Moves the outbox of `site` to its topic until `stop`, in commit order: each round
/// takes the rows committed so far, produces them, and deletes them once the broker has
/// acknowledged every one (so a row is neither lost nor skipped by a later commit).
fn relay(pg: &Postgres, broker: &Broker, site: &str, stop: Arc<AtomicBool>) -> u64 {
    use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
    let producer: ThreadedProducer<DefaultProducerContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", broker.address())
        .set("enable.idempotence", "true")
        .set("linger.ms", "2")
        .create()
        .expect("producer");
    let topic = format!("from-{site}");
    let mut client = pg.client(site);
    let mut relayed = 0;
    loop {
        let stopping = stop.load(Ordering::SeqCst);
        let mut tx = client.transaction().unwrap();
        let rows = tx
            .query(
                "DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox ORDER BY seq LIMIT 2000)
                 RETURNING seq, (event #>> '{after,id}'), (event #>> '{before,id}'), event::text",
                &[],
            )
            .unwrap();
        let mut events: Vec<(i64, String, String)> = rows
            .iter()
            .map(|r| {
                let id: String = r.get::<_, Option<String>>(1).or(r.get(2)).unwrap();
                (r.get(0), format!("{{\"id\":{id}}}"), r.get(3))
            })
            .collect();
        events.sort_by_key(|e| e.0);
        for (_, key, event) in &events {
            producer
                .send(BaseRecord::to(&topic).key(key).payload(event))
                .map_err(|(e, _)| e)
                .expect("queue the event");
        }
        producer
            .flush(Duration::from_secs(30))
            .expect("every event acknowledged");
        tx.commit().unwrap();
        relayed += events.len() as u64;
        if events.is_empty() {
            if stopping {
                return relayed;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// An application at `site`: for `WRITING`, updates (70%), deletes (15%) and inserts
/// (15%, of keys only this site creates). A write's version is a hybrid clock: the time
/// in milliseconds, above the version of the row it overwrites and of this site's last
/// write, as last-write-wins needs (docs/sync.md).
fn application(pg: &Postgres, site: &str, seed: u64) -> Vec<Write> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut client = pg.client(site);
    let mut clock = 0i64;
    let first_new = 1_000_000 + SITES.iter().position(|s| *s == site).unwrap() as i64;
    let mut created = 0;
    let mut writes = Vec::new();
    let started = Instant::now();
    while started.elapsed() < WRITING {
        let roll = rng.random_range(0..100);
        // The write made: key, version (a delete's is the deleted row's) and value.
        let made: Option<(i64, i64, Option<String>)> = if roll < 15 {
            let id = first_new + 2 * created;
            created += 1;
            let version = tick(&mut clock);
            let value = format!("{site} made {id}");
            client
                .execute(
                    "INSERT INTO items VALUES ($1, $2, $3, $4)",
                    &[&id, &value, &version, &site],
                )
                .unwrap();
            Some((id, version, Some(value)))
        } else {
            let Some(id) = client
                .query_opt("SELECT id FROM items ORDER BY random() LIMIT 1", &[])
                .unwrap()
                .map(|r| r.get::<_, i64>(0))
            else {
                continue;
            };
            let (row, value) = if roll < 30 {
                let sql = "DELETE FROM items WHERE id = $1 RETURNING version";
                (client.query_opt(sql, &[&id]).unwrap(), None)
            } else {
                let value = format!("{site} set {id} at {}", rng.random::<u32>());
                let floor = tick(&mut clock);
                let sql = "UPDATE items SET val = $2, version = greatest(version + 1, $3), \
                           origin = $4 WHERE id = $1 RETURNING version";
                let params: [&(dyn postgres::types::ToSql + Sync); 4] =
                    [&id, &value, &floor, &site];
                (client.query_opt(sql, &params).unwrap(), Some(value))
            };
            // The row may be gone already (deleted by weir meanwhile): no write then.
            row.map(|row| (id, row.get(0), value))
        };
        if let Some((key, version, value)) = made {
            clock = clock.max(version);
            writes.push(Write {
                key,
                version,
                origin: site.into(),
                value,
            });
        }
        std::thread::sleep(Duration::from_millis(rng.random_range(2..8)));
    }
    writes
}

/// The next version of a site's hybrid clock: now in milliseconds, or one past the last.
fn tick(clock: &mut i64) -> i64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    *clock = now.max(*clock + 1);
    *clock
}

/// Each key's final row under last-write-wins, from the documented rule alone: the
/// greatest (version, delete, origin) among its writes wins; a delete leaves no row.
fn oracle(writes: &[Write]) -> BTreeMap<i64, (String, i64, String)> {
    let mut winners: BTreeMap<i64, &Write> = BTreeMap::new();
    let rank = |w: &Write| (w.version, w.value.is_none(), w.origin.clone());
    for w in writes {
        if winners.get(&w.key).is_none_or(|best| rank(w) > rank(best)) {
            winners.insert(w.key, w);
        }
    }
    winners
        .into_iter()
        .filter_map(|(key, w)| {
            let value = w.value.clone()?;
            Some((key, (value, w.version, w.origin.clone())))
        })
        .collect()
}

fn rows(pg: &Postgres, site: &str) -> BTreeMap<i64, (String, i64, String)> {
    pg.client(site)
        .query("SELECT id, val, version, origin FROM items", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2), r.get(3))))
        .collect()
}

fn wait_for_tombstone_triggers(pg: &Postgres) {
    let started = Instant::now();
    for site in SITES {
        let mut client = pg.client(site);
        while client
            .query_opt(
                "SELECT 1 FROM pg_trigger WHERE tgname = 'weir_tombstone'",
                &[],
            )
            .unwrap()
            .is_none()
        {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "weir did not prepare site {site}'s tombstones at start"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

#[test]
fn two_sites_written_at_once_converge_without_ping_pong() {
    let pg = Postgres::start();
    let broker = Broker::start();
    for site in SITES {
        prepare_site(&pg, site);
        broker.create_topic(&format!("from-{site}"), 1);
    }
    let ws = Workspace::new();
    let mut pipelines: Vec<(&str, Child)> = vec![
        ("b", start_pipeline(&broker, &pipeline(&ws, &pg, "a", "b"))),
        ("a", start_pipeline(&broker, &pipeline(&ws, &pg, "b", "a"))),
    ];
    // weir installs the tombstone trigger when it opens the sink, so deletes the
    // applications make from the first moment leave tombstones.
    wait_for_tombstone_triggers(&pg);

    let stop = Arc::new(AtomicBool::new(false));
    let (writes, relayed) = std::thread::scope(|s| {
        let relays: Vec<_> = SITES
            .iter()
            .map(|site| {
                let (pg, broker, stop) = (&pg, &broker, stop.clone());
                s.spawn(move || relay(pg, broker, site, stop))
            })
            .collect();
        let apps: Vec<_> = SITES
            .iter()
            .enumerate()
            .map(|(i, site)| {
                let pg = &pg;
                s.spawn(move || application(pg, site, 7 + i as u64))
            })
            .collect();
        let writes: Vec<Write> = apps.into_iter().flat_map(|a| a.join().unwrap()).collect();
        // The pipelines stop once nothing has come for 15 s; the relays run until then,
        // so weir's own writes (the echoes) reach the topics too.
        let mut summaries = BTreeMap::new();
        for (site, child) in pipelines.drain(..) {
            let output = child.wait_with_output().unwrap();
            assert!(
                output.status.success(),
                "the pipeline into {site} failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            let summary: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
            summaries.insert(site, summary);
        }
        stop.store(true, Ordering::SeqCst);
        let relayed: u64 = relays.into_iter().map(|r| r.join().unwrap()).sum();
        (writes, (relayed, summaries))
    });
    let (relayed, summaries) = relayed;

    let seeds = (1..=SEEDED).map(|id| Write {
        key: id,
        version: 1,
        origin: "seed".into(),
        value: Some(format!("seed {id}")),
    });
    let all: Vec<Write> = seeds.chain(writes.iter().cloned()).collect();
    let expected = oracle(&all);
    let (at_a, at_b) = (rows(&pg, "a"), rows(&pg, "b"));
    let (a, b) = (
        Figures::compare(all.len() as u64, &expected, &at_a),
        Figures::compare(all.len() as u64, &expected, &at_b),
    );
    Figures {
        events: all.len() as u64,
        lost: a.lost + b.lost,
        stale: a.stale + b.stale,
        duplicated: None,
    }
    .report_and_check(
        "two sites, PostgreSQL through Kafka both ways",
        "both sites written at once",
    );
    let differing: Vec<_> = expected
        .keys()
        .chain(at_a.keys())
        .chain(at_b.keys())
        .filter(|k| at_a.get(k) != at_b.get(k) || at_a.get(k) != expected.get(k))
        .take(5)
        .map(|k| (k, at_a.get(k), at_b.get(k), expected.get(k)))
        .collect();
    assert!(
        differing.is_empty(),
        "the sites differ from each other or from the rule (key, a, b, expected): {differing:?}"
    );

    for site in SITES {
        let dead = ws.path(&format!("dead-letters-{site}.jsonl"));
        let dead = std::fs::read_to_string(dead).unwrap_or_default();
        assert!(dead.is_empty(), "dead letters at {site}: {dead}");
    }
    let count = |field: &str| -> u64 {
        summaries
            .values()
            .map(|s| s[field].as_u64().unwrap_or(0))
            .sum()
    };
    let applied = count("upserts") + count("deletes");
    let app_writes = writes.len() as u64;
    let deletes = writes.iter().filter(|w| w.value.is_none()).count();
    eprintln!(
        "two sites: {app_writes} application writes ({deletes} deletes), {relayed} events \
         relayed, weir applied {applied}, skipped {} as older, dropped {} echoes; \
         {} keys at the end",
        count("conflicts_skipped"),
        count("echoes_dropped"),
        at_a.len()
    );
    assert!(
        deletes > 0 && app_writes > 1000,
        "the applications wrote too little"
    );
    assert!(
        applied <= 2 * app_writes,
        "weir applied {applied} changes for {app_writes} application writes: ping-pong"
    );
    // Every change weir applied was captured at its target and came back as an echo;
    // each pipeline drops them, deletes included (through `weir.origin`), so it applies
    // no more than the other site's applications wrote.
    for (site, summary) in &summaries {
        let other_writes = writes.iter().filter(|w| w.origin != *site).count() as u64;
        let applied = summary["upserts"].as_u64().unwrap() + summary["deletes"].as_u64().unwrap();
        assert!(
            applied <= other_writes,
            "the pipeline into {site} applied {applied} changes for {other_writes} writes \
             made at the other site: some came back: {summary}"
        );
        assert!(
            summary["echoes_dropped"].as_u64().unwrap_or(0) > 0,
            "the pipeline into {site} dropped no echo: {summary}"
        );
    }
}
