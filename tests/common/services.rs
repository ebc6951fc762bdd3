//! Real services for the integration tests: a `tansu` Kafka broker and a PostgreSQL server,
//! each started on a free loopback port in a temporary directory and torn down on drop.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const INSTALL_TANSU: &str =
    "cargo install tansu --version 0.6.0 --locked --features dynostore,postgres,libsql";
const INSTALL_POSTGRES: &str =
    "apt-get install -y postgresql (or run scripts/test, which installs it)";

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn wait_for_port(port: u16, what: &str, log: &Path) {
    let started = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if started.elapsed() > Duration::from_secs(30) {
            let log = std::fs::read_to_string(log).unwrap_or_default();
            panic!("{what} did not start listening on port {port} within 30 s; its log:\n{log}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

pub fn signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{signal} {pid} failed");
}

/// A `tansu` broker on loopback.
pub struct Broker {
    child: Option<Child>,
    pub port: u16,
    storage: String,
    dir: tempfile::TempDir,
}

impl Broker {
    /// A broker keeping its data in memory.
    pub fn start() -> Broker {
        Broker::start_with_storage("memory://tansu/")
    }

    /// A broker on the given storage engine (e.g. a PostgreSQL URL, for a broker whose data
    /// survives a restart).
    pub fn start_with_storage(storage: &str) -> Broker {
        let mut broker = Broker {
            child: None,
            port: free_port(),
            storage: storage.to_string(),
            dir: tempfile::tempdir().expect("temp dir"),
        };
        broker.launch();
        broker
    }

    fn launch(&mut self) {
        let log = self.dir.path().join("tansu.log");
        let listener = format!("tcp://127.0.0.1:{}", self.port);
        let child = Command::new("tansu")
            // A file storage (`sqlite://tansu.db`) lives in the broker's own directory.
            .current_dir(self.dir.path())
            .args([
                "broker",
                "--listener-url",
                &listener,
                "--advertised-listener-url",
                &listener,
            ])
            .args(["--storage-engine", &self.storage])
            .stdout(Stdio::from(std::fs::File::create(&log).expect("log file")))
            .stderr(Stdio::from(
                std::fs::File::options()
                    .append(true)
                    .open(&log)
                    .expect("log file"),
            ))
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start `tansu` ({e}); install it with: {INSTALL_TANSU}")
            });
        self.child = Some(child);
        wait_for_port(self.port, "tansu", &log);
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The end of the broker's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("tansu.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// CPU seconds (user + system) the broker process has used so far, for benchmarks.
    pub fn cpu_seconds(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid()))
            .expect("the broker's /proc stat");
        // Fields after the parenthesised command name: state is field 3, utime 14, stime 15.
        let rest = &stat[stat.rfind(')').expect("a command name") + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks: f64 =
            fields[11].parse::<f64>().expect("utime") + fields[12].parse::<f64>().expect("stime");
        // SAFETY: sysconf only reads a configuration value.
        let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        ticks / per_second
    }

    /// Freezes the broker (SIGSTOP): connections stay open but nothing answers.
    pub fn pause(&self) {
        signal(self.pid(), "STOP");
    }

    pub fn resume(&self) {
        signal(self.pid(), "CONT");
    }

    /// Kills the broker and starts it again on the same port and storage.
    pub fn restart_after(&mut self, down: Duration) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        std::thread::sleep(down);
        self.launch();
    }

    /// Kills the broker and starts it again on the same port, on `storage` (the same
    /// data with other settings, e.g. `?maintenance_interval=1s`).
    #[allow(dead_code)]
    pub fn restart_on(&mut self, storage: &str) {
        self.storage = storage.to_string();
        self.restart_after(Duration::ZERO);
    }

    /// Where a partition begins and ends now, as a consumer asking the broker sees it.
    #[allow(dead_code)]
    pub fn watermarks(&self, topic: &str, partition: i32) -> Option<(i64, i64)> {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        let consumer: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", self.address())
            .set("group.id", "watermarks")
            .create()
            .expect("consumer");
        consumer
            .fetch_watermarks(topic, partition, Duration::from_secs(10))
            .ok()
    }

    pub fn create_topic(&self, topic: &str, partitions: u32) {
        self.create_topic_with(topic, partitions, &[]);
    }

    /// [`create_topic`](Self::create_topic) with topic settings, e.g.
    /// `("retention.ms", "600000")`.
    pub fn create_topic_with(&self, topic: &str, partitions: u32, settings: &[(&str, &str)]) {
        let settings: Vec<String> = settings
            .iter()
            .flat_map(|(k, v)| ["--config".to_string(), format!("{k}={v}")])
            .collect();
        let output = Command::new("tansu")
            .args([
                "topic",
                "create",
                topic,
                "--broker",
                &format!("tcp://{}", self.address()),
            ])
            .args(["--partitions", &partitions.to_string()])
            .args(&settings)
            .output()
            .expect("run tansu topic create");
        assert!(
            output.status.success(),
            "creating topic {topic} failed: {}\nthe broker's log:\n{}",
            String::from_utf8_lossy(&output.stderr),
            self.log_tail()
        );
    }

    /// Produces records (key, value; a `None` value is a tombstone) with the idempotent
    /// producer of the bundled librdkafka, one record per batch, waiting until every one is
    /// acknowledged.
    pub fn produce(&self, topic: &str, records: &[(Option<String>, Option<String>)]) {
        self.produce_with(topic, records, &[], true, None)
    }

    /// [`produce`](Self::produce) with each record's create time set to `at_ms` (epoch
    /// milliseconds), e.g. in the past for the broker's retention to delete them.
    #[allow(dead_code)]
    pub fn produce_at(
        &self,
        topic: &str,
        records: &[(Option<String>, Option<String>)],
        at_ms: i64,
    ) {
        self.produce_with(topic, records, &[], true, Some(at_ms))
    }

    /// [`produce`](Self::produce), the i-th record with the i-th list of headers.
    pub fn produce_with_headers(
        &self,
        topic: &str,
        records: &[(Option<String>, Option<String>)],
        headers: &[Vec<(&str, &str)>],
    ) {
        self.produce_with(topic, records, headers, true, None)
    }

    /// [`produce`](Self::produce) with librdkafka's normal batching, for benchmarks that
    /// read a topic once from the start.
    pub fn produce_batched(&self, topic: &str, records: &[(Option<String>, Option<String>)]) {
        self.produce_with(topic, records, &[], false, None)
    }

    fn produce_with(
        &self,
        topic: &str,
        records: &[(Option<String>, Option<String>)],
        headers: &[Vec<(&str, &str)>],
        one_per_batch: bool,
        at_ms: Option<i64>,
    ) {
        produce_with(
            &self.address(),
            topic,
            records,
            headers,
            one_per_batch,
            at_ms,
        )
    }
}

/// [`Broker::produce`] from another thread, to the broker at `address`.
pub fn produce_to(address: &str, topic: &str, records: &[(Option<String>, Option<String>)]) {
    produce_with(address, topic, records, &[], true, None)
}

fn produce_with(
    address: &str,
    topic: &str,
    records: &[(Option<String>, Option<String>)],
    headers: &[Vec<(&str, &str)>],
    one_per_batch: bool,
    at_ms: Option<i64>,
) {
    {
        use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
        let mut config = rdkafka::ClientConfig::new();
        config
            .set("bootstrap.servers", address)
            .set("enable.idempotence", "true")
            .set("linger.ms", "5")
            // Tests also produce oversized records, for weir to reject.
            .set("message.max.bytes", "10000000")
            .set("queue.buffering.max.messages", "1000000");
        if one_per_batch {
            // One record per batch: tansu 0.6's fetch returns only batches whose base
            // offset is at or after the requested offset, so a consumer resuming inside a
            // batch (after a restart or an outage) would silently skip the rest of it.
            // Kafka returns the containing batch; see docs/decisions.md.
            config.set("batch.num.messages", "1");
        }
        let producer: ThreadedProducer<DefaultProducerContext> = config.create().expect("producer");
        for (i, (key, value)) in records.iter().enumerate() {
            let mut record: BaseRecord<'_, str, str> = BaseRecord::to(topic);
            if let Some(list) = headers.get(i).filter(|l| !l.is_empty()) {
                let mut owned = rdkafka::message::OwnedHeaders::new_with_capacity(list.len());
                for (name, value) in list {
                    owned = owned.insert(rdkafka::message::Header {
                        key: name,
                        value: Some(value.as_bytes()),
                    });
                }
                record = record.headers(owned);
            }
            if let Some(k) = key {
                record = record.key(k.as_str());
            }
            if let Some(at) = at_ms {
                record = record.timestamp(at);
            }
            if let Some(v) = value {
                record = record.payload(v.as_str());
            }
            let mut record = record;
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((
                        rdkafka::error::KafkaError::MessageProduction(
                            rdkafka::types::RDKafkaErrorCode::QueueFull,
                        ),
                        r,
                    )) => {
                        record = r;
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err((e, _)) => panic!("produce failed: {e}"),
                }
            }
        }
        producer
            .flush(Duration::from_secs(60))
            .expect("every record acknowledged");
    }
}

/// One record read back from a topic.
#[derive(Debug, Clone)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Vec<u8>)>,
}

impl Record {
    pub fn key_json(&self) -> serde_json::Value {
        serde_json::from_slice(self.key.as_deref().expect("a key")).expect("key is JSON")
    }

    pub fn value_json(&self) -> Option<serde_json::Value> {
        self.value
            .as_deref()
            .map(|v| serde_json::from_slice(v).expect("value is JSON"))
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }
}

impl Broker {
    /// Every record of `topic` (all partitions, from the start), once `expected` records
    /// arrived or nothing new came for 3 s; in (partition, offset) order.
    pub fn consume_all(&self, topic: &str, expected: usize) -> Vec<Record> {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        use rdkafka::message::{Headers, Message};
        let consumer: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", self.address())
            .set("group.id", format!("weir-test-reader-{}", free_port()))
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .create()
            .expect("consumer");
        consumer.subscribe(&[topic]).expect("subscribe");
        let mut records = Vec::new();
        let started = Instant::now();
        let mut last = Instant::now();
        while records.len() < expected
            && last.elapsed() < Duration::from_secs(3)
            && started.elapsed() < Duration::from_secs(60)
        {
            match consumer.poll(Duration::from_millis(200)) {
                Some(Ok(m)) => {
                    let headers = m
                        .headers()
                        .map(|h| {
                            h.iter()
                                .map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec()))
                                .collect()
                        })
                        .unwrap_or_default();
                    records.push(Record {
                        partition: m.partition(),
                        offset: m.offset(),
                        key: m.key().map(<[u8]>::to_vec),
                        value: m.payload().map(<[u8]>::to_vec),
                        headers,
                    });
                    last = Instant::now();
                }
                Some(Err(e)) => panic!("consume {topic}: {e}"),
                // Until the group is joined nothing arrives; do not count that as idle.
                None if consumer.assignment().map_or(0, |a| a.count()) == 0 => {
                    last = Instant::now()
                }
                None => {}
            }
        }
        records.sort_by_key(|r| (r.partition, r.offset));
        records
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // A paused broker must be resumed to die cleanly.
            let _ = Command::new("kill")
                .args(["-CONT", &child.id().to_string()])
                .status();
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The network to a loopback port cut, as a partition or a paused host would cut it:
/// what is sent to or from the port is neither delivered nor refused, and the sender's
/// kernel sees nothing wrong. Made with `tc` (so it needs root): an HTB root on `lo` puts
/// the port's packets, both ways, in a class of 8 bit/s, which one large datagram sent
/// first puts in debt for HTB's longest (60 s), so the packets behind it wait a minute
/// each. (A class that drops them instead makes the kernel report local congestion, and
/// TCP gives up in seconds whatever its settings: not what a real cut does. `netem`
/// would be the usual tool, but this kernel has no module for it.) Undone on drop. Tests
/// that cut the network must not run at the same time: there is one root qdisc per device.
pub struct NetworkCut {
    port: u16,
}

/// `tc`, which Debian keeps in `/usr/sbin` (not on every user's `PATH`).
fn tc() -> Command {
    let installed = Path::new("/usr/sbin/tc");
    Command::new(if installed.exists() {
        installed
    } else {
        Path::new("tc")
    })
}

impl NetworkCut {
    pub fn to_port(port: u16) -> NetworkCut {
        // A root qdisc left by a killed run would make `add` fail.
        let _ = tc().args(["qdisc", "del", "dev", "lo", "root"]).output();
        let port = port.to_string();
        let cut = NetworkCut {
            port: port.parse().expect("a port"),
        };
        let steps: [&[&str]; 5] = [
            &[
                "qdisc", "add", "dev", "lo", "root", "handle", "1:", "htb", "default", "10",
            ],
            &[
                "class", "add", "dev", "lo", "parent", "1:", "classid", "1:10", "htb", "rate",
                "100gbit",
            ],
            &[
                "class", "add", "dev", "lo", "parent", "1:", "classid", "1:20", "htb", "rate",
                "8bit", "ceil", "8bit", "burst", "1", "cburst", "1",
            ],
            &[
                "filter", "add", "dev", "lo", "parent", "1:", "protocol", "ip", "prio", "1", "u32",
                "match", "ip", "dport", &port, "0xffff", "flowid", "1:20",
            ],
            &[
                "filter", "add", "dev", "lo", "parent", "1:", "protocol", "ip", "prio", "2", "u32",
                "match", "ip", "sport", &port, "0xffff", "flowid", "1:20",
            ],
        ];
        for step in steps {
            let output = tc().args(step).output().unwrap_or_else(|e| {
                panic!("cannot run tc ({e}); install it with: apt-get install iproute2")
            });
            assert!(
                output.status.success(),
                "tc {} failed (cutting the network needs root): {}",
                step.join(" "),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        // The datagram that spends the class's allowance (nothing listens for it).
        std::net::UdpSocket::bind("127.0.0.1:0")
            .and_then(|socket| socket.send_to(&[0; 60_000], format!("127.0.0.1:{port}")))
            .expect("send the datagram that stalls the class");
        cut
    }
}

impl Drop for NetworkCut {
    fn drop(&mut self) {
        let output = tc().args(["qdisc", "del", "dev", "lo", "root"]).output();
        if !output.is_ok_and(|o| o.status.success()) {
            eprintln!("the network cut to port {} could not be undone", self.port);
        }
    }
}

/// A PostgreSQL server on loopback, run as the unprivileged `postgres` user when the
/// tests run as root (PostgreSQL refuses to run as root).
pub struct Postgres {
    pub port: u16,
    dir: PathBuf,
    _temp: tempfile::TempDir,
    as_postgres: bool,
}

impl Postgres {
    pub fn start() -> Postgres {
        let temp = tempfile::tempdir().expect("temp dir");
        let dir = temp.path().to_path_buf();
        let as_postgres = is_root();
        if as_postgres {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir)
                .status()
                .expect("run chown");
            assert!(
                status.success(),
                "cannot give {} to the postgres user",
                dir.display()
            );
        }
        let pg = Postgres {
            port: free_port(),
            dir,
            _temp: temp,
            as_postgres,
        };
        let data = pg.dir.join("data");
        let output = pg
            .command("initdb")
            .args(["-D"])
            .arg(&data)
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"])
            .output()
            .unwrap_or_else(|e| {
                panic!("cannot run initdb ({e}); install PostgreSQL: {INSTALL_POSTGRES}")
            });
        assert!(
            output.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        pg.start_server();
        pg
    }

    fn command(&self, program: &str) -> Command {
        let program = find_pg_binary(program);
        if self.as_postgres {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(program);
            command
        } else {
            Command::new(program)
        }
    }

    pub fn start_server(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=50 -c wal_level=logical",
            self.port,
            self.dir.display()
        );
        let output = self
            .command("pg_ctl")
            .args(["-D"])
            .arg(self.dir.join("data"))
            .args(["-o", &options, "-l"])
            .arg(self.dir.join("postgres.log"))
            .args(["-w", "start"])
            .output()
            .expect("run pg_ctl");
        assert!(
            output.status.success(),
            "pg_ctl start failed: {}\n{}",
            String::from_utf8_lossy(&output.stderr),
            std::fs::read_to_string(self.dir.join("postgres.log")).unwrap_or_default()
        );
    }

    /// Stops the server at once (as a crash or an outage would).
    pub fn stop_server(&self) {
        let _ = self
            .command("pg_ctl")
            .args(["-D"])
            .arg(self.dir.join("data"))
            .args(["-m", "immediate", "-w", "stop"])
            .output();
    }

    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    pub fn client(&self, database: &str) -> postgres::Client {
        postgres::Client::connect(&self.url(database), postgres::NoTls)
            .expect("connect to postgres")
    }

    pub fn create_database(&self, name: &str) {
        self.client("postgres")
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .expect("create database");
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop_server();
    }
}

/// `initdb` and friends: on PATH, else in Debian's versioned directory.
pub fn find_pg_binary(program: &str) -> PathBuf {
    if let Ok(out) = Command::new("which").arg(program).output() {
        let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if !path.is_empty() {
            return PathBuf::from(path);
        }
    }
    if let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") {
        let mut versions: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        versions.sort();
        if let Some(newest) = versions.last() {
            let candidate = newest.join("bin").join(program);
            if candidate.exists() {
                return candidate;
            }
        }
    }
    PathBuf::from(program)
}

/// `GET path` from the HTTP server on loopback `port`: the status code and the body.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split(' ').nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n")?.1.to_string();
    Some((status, body))
}

/// The value of the series `series` (its name and labels, as exposed) in a Prometheus
/// text exposition.
pub fn series_value(metrics: &str, series: &str) -> Option<u64> {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}
