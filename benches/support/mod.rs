//! What the benchmarks share: medians, CPU time, number arguments.
// Each benchmark uses a part of this module.
#![allow(dead_code)]

/// Sorts `values` and returns their median.
pub fn median(values: &mut [f64]) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(values[n / 2]),
        _ => Some((values[n / 2 - 1] + values[n / 2]) / 2.0),
    }
}

/// CPU seconds (user + sys) of `who`: `libc::RUSAGE_SELF`, `RUSAGE_CHILDREN` (finished
/// children) or `RUSAGE_THREAD`.
pub fn cpu_seconds(who: i32) -> f64 {
    // SAFETY: getrusage only writes the struct it is given.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(who, &mut usage);
        usage
    };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

/// User + system CPU seconds of a running process, from `/proc/<pid>/stat`.
pub fn process_cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    // SAFETY: sysconf reads a constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks(11) + ticks(12)) / hz
}

/// The value after each `--name` among the arguments, parsed as a number: `names` gives
/// each name with its default. A name without a number is an error.
pub fn number_args(names: &[(&str, usize)]) -> Vec<usize> {
    let mut values: Vec<usize> = names.iter().map(|(_, default)| *default).collect();
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        if let Some(i) = names.iter().position(|(name, _)| *name == arg) {
            values[i] = it
                .next()
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or_else(|| panic!("{arg} needs a number"));
        }
    }
    values
}

/// The benchmarks' table of capture: an integer key and 7 columns of 6 types.
pub fn table_ddl(table: &str) -> String {
    format!(
        "CREATE TABLE {table} (id bigint PRIMARY KEY, customer text, price numeric(12,2),
             qty int, placed timestamptz, day date, ok boolean, note text)"
    )
}

/// `COPY table TO STDOUT` from `src` streamed into `COPY table FROM STDIN` of `dst`.
pub fn copy_table(src: &mut postgres::Client, dst: &mut postgres::Client, table: &str) {
    use std::io::{Read, Write};
    let mut reader = src.copy_out(&format!("COPY {table} TO STDOUT")).unwrap();
    let mut writer = dst.copy_in(&format!("COPY {table} FROM STDIN")).unwrap();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = reader.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        writer.write_all(&buf[..n]).unwrap();
    }
    writer.finish().unwrap();
}

/// Drops a replication slot whose reader was just killed: its walsender may still hold
/// the slot for a moment after the client is gone (PostgreSQL then refuses the drop as
/// "active for PID …"), so the drop is retried for up to 30 s.
pub fn drop_slot(client: &mut postgres::Client, slot: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        match client.execute("SELECT pg_drop_replication_slot($1)", &[&slot]) {
            Ok(_) => return,
            Err(e)
                if e.code() == Some(&postgres::error::SqlState::OBJECT_IN_USE)
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            Err(e) => panic!("dropping replication slot {slot}: {e}"),
        }
    }
}
