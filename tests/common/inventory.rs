//! A captured database of 50 tables for the many-table tests: Debezium change events
//! with their record keys, per table, and an independent oracle's final rows.

use std::collections::BTreeMap;

/// How a table is keyed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Key {
    Int,
    BigInt,
    Text,
    /// `(tenant int, code text)`
    Composite,
}

#[derive(Clone, Debug)]
pub struct Table {
    pub name: String,
    pub key: Key,
    /// Gains a `note` column half-way through the stream.
    pub evolves: bool,
    /// Its key values start here, so shards of one target never share a key.
    pub key_base: i64,
}

impl Table {
    pub fn key_fields(&self) -> Vec<(&'static str, &'static str)> {
        match self.key {
            Key::Int => vec![("id", "int32")],
            Key::BigInt => vec![("id", "int64")],
            Key::Text => vec![("code", "string")],
            Key::Composite => vec![("tenant", "int32"), ("code", "string")],
        }
    }

    /// The key's values for key number `n`, as JSON.
    pub fn key_values(&self, n: i64) -> Vec<String> {
        let n = self.key_base + n;
        match self.key {
            Key::Int => vec![n.to_string()],
            Key::BigInt => vec![(5_000_000_000 + n).to_string()],
            Key::Text => vec![format!("\"k-{n}\"")],
            Key::Composite => vec![(n % 7).to_string(), format!("\"c-{n}\"")],
        }
    }

    /// The key as `concat_ws('|', …)` renders it in PostgreSQL.
    pub fn key_text(&self, n: i64) -> String {
        self.key_values(n)
            .iter()
            .map(|v| v.trim_matches('"').to_string())
            .collect::<Vec<_>>()
            .join("|")
    }

    pub fn schema_fields(&self, with_note: bool) -> String {
        let mut fields: Vec<String> = self
            .key_fields()
            .iter()
            .map(|(name, ty)| format!(r#"{{"type":"{ty}","optional":false,"field":"{name}"}}"#))
            .collect();
        fields.extend([
            r#"{"type":"string","optional":true,"field":"name"}"#.to_string(),
            r#"{"type":"int32","optional":true,"field":"qty"}"#.to_string(),
            r#"{"type":"double","optional":true,"field":"price"}"#.to_string(),
            r#"{"type":"boolean","optional":true,"field":"active"}"#.to_string(),
            r#"{"type":"int64","optional":true,"name":"io.debezium.time.MicroTimestamp","field":"updated_at"}"#.to_string(),
        ]);
        if with_note {
            fields.push(r#"{"type":"string","optional":true,"field":"note"}"#.to_string());
        }
        format!("[{}]", fields.join(","))
    }

    pub fn image(&self, n: i64, version: i64, with_note: bool) -> String {
        let mut parts: Vec<String> = self
            .key_fields()
            .iter()
            .zip(self.key_values(n))
            .map(|((name, _), value)| format!(r#""{name}":{value}"#))
            .collect();
        parts.extend([
            format!(r#""name":"{}-{n}-{version}""#, self.name),
            format!(r#""qty":{}"#, version * 7 % 1000),
            format!(r#""price":{}.25"#, n % 1000),
            format!(r#""active":{}"#, version % 3 == 0),
            format!(
                r#""updated_at":{}"#,
                1_700_000_000_000_000 + version * 1_000_001
            ),
        ]);
        if with_note {
            parts.push(format!(r#""note":"v{version}""#));
        }
        format!("{{{}}}", parts.join(","))
    }

    /// What the oracle expects the target row to read as.
    pub fn row_text(&self, n: i64, version: i64, with_note: Option<bool>) -> String {
        let mut text = format!(
            "{}|{}-{n}-{version}|{}|{}.25|{}|{}",
            self.key_text(n),
            self.name,
            version * 7 % 1000,
            n % 1000,
            version % 3 == 0,
            1_700_000_000_000_000 + version * 1_000_001
        );
        if let Some(note) = with_note {
            text += &if note {
                format!("|v{version}")
            } else {
                "|-".into()
            };
        }
        text
    }

    /// The key as SQL renders it, `concat_ws('|', …)` over the target's key columns:
    /// what [`key_text`](Self::key_text) writes.
    pub fn key_sql(&self) -> String {
        let keys: Vec<String> = self
            .key_fields()
            .iter()
            .map(|(name, _)| format!("{name}::text"))
            .collect();
        format!("concat_ws('|', {})", keys.join(", "))
    }

    /// The target row as SQL renders it: what [`row_text`](Self::row_text) writes.
    pub fn row_sql(&self) -> String {
        let keys: Vec<String> = self
            .key_fields()
            .iter()
            .map(|(name, _)| format!("{name}::text"))
            .collect();
        let note = if self.evolves {
            ", coalesce(note, '-')"
        } else {
            ""
        };
        format!(
            "concat_ws('|', {}, name, qty::text, price::text, active::text, \
             (extract(epoch FROM updated_at) * 1000000)::bigint::text{note})",
            keys.join(", ")
        )
    }

    pub fn record_key(&self, n: i64) -> String {
        let schema: Vec<String> = self
            .key_fields()
            .iter()
            .map(|(name, ty)| format!(r#"{{"type":"{ty}","optional":false,"field":"{name}"}}"#))
            .collect();
        let payload: Vec<String> = self
            .key_fields()
            .iter()
            .zip(self.key_values(n))
            .map(|((name, _), value)| format!(r#""{name}":{value}"#))
            .collect();
        format!(
            r#"{{"schema":{{"type":"struct","fields":[{}],"optional":false,"name":"dbserver1.inventory.{}.Key"}},"payload":{{{}}}}}"#,
            schema.join(","),
            self.name,
            payload.join(",")
        )
    }
}

/// 50 source tables: 44 plain ones of four key kinds, two order shards routed into
/// `orders`, two excluded audit tables, and two more plain ones; `t07` evolves.
pub fn tables() -> Vec<Table> {
    let kinds = [Key::Int, Key::BigInt, Key::Text, Key::Composite];
    let mut tables: Vec<Table> = (0..46)
        .map(|i| Table {
            name: format!("t{i:02}"),
            key: kinds[i % 4],
            evolves: i == 7,
            key_base: 0,
        })
        .collect();
    for (shard, base) in [("orders_shard_1", 0), ("orders_shard_2", 1_000_000)] {
        tables.push(Table {
            name: shard.into(),
            key: Key::BigInt,
            evolves: false,
            key_base: base,
        });
    }
    for audit in ["audit_log", "audit_trail"] {
        tables.push(Table {
            name: audit.into(),
            key: Key::Int,
            evolves: false,
            key_base: 0,
        });
    }
    tables
}

/// One change event and its record key, per table, with the oracle's final rows by target
/// table (key text -> row text).
pub struct Capture {
    /// By table index: (key, value) records in order.
    pub records: Vec<Vec<(Option<String>, Option<String>)>>,
    pub finals: BTreeMap<String, BTreeMap<String, String>>,
}

impl Capture {
    /// Every table's records in one stream, as Debezium's topic routing writes them: each
    /// table's in order, the tables interleaved at random (`seed`).
    pub fn interleaved(&self, seed: u64) -> Vec<(Option<String>, Option<String>)> {
        let total: usize = self.records.iter().map(Vec::len).sum();
        let mut out = Vec::with_capacity(total);
        let mut cursors = vec![0usize; self.records.len()];
        let mut rng = weir_runtime::bench::Rng::new(seed);
        while out.len() < total {
            let t = rng.below(self.records.len() as u64) as usize;
            if let Some(record) = self.records[t].get(cursors[t]) {
                out.push(record.clone());
                cursors[t] += 1;
            }
        }
        out
    }
}

impl Capture {
    /// The changes a pipeline with [`target_of`]'s routing applies: all but the tables it
    /// excludes (the audit tables).
    pub fn routed_changes(&self, tables: &[Table]) -> usize {
        tables
            .iter()
            .zip(&self.records)
            .filter(|(table, _)| target_of(table).is_some())
            .map(|(_, records)| records.len())
            .sum()
    }
}

pub fn target_of(table: &Table) -> Option<&str> {
    match table.name.as_str() {
        "audit_log" | "audit_trail" => None,
        name if name.starts_with("orders_shard_") => Some("orders"),
        name => Some(name),
    }
}

pub fn capture(tables: &[Table], events: usize, keys: i64, seed: u64) -> Capture {
    let mut rng = weir_runtime::bench::Rng::new(seed);
    let mut records = vec![Vec::new(); tables.len()];
    let mut finals: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    // (table, key) -> (version, whether its row has a note)
    let mut live: BTreeMap<(usize, i64), (i64, bool)> = BTreeMap::new();
    let mut versions: BTreeMap<(usize, i64), i64> = BTreeMap::new();
    for i in 0..events {
        let t = rng.below(tables.len() as u64) as usize;
        let table = &tables[t];
        let n = rng.below(keys as u64) as i64;
        let noted = table.evolves && i >= events / 2;
        let version = {
            let v = versions.entry((t, n)).or_insert(0);
            *v += 1;
            *v
        };
        let source = format!(
            r#"{{"connector":"postgresql","db":"shop","schema":"inventory","table":"{}","lsn":{i}}}"#,
            table.name
        );
        let envelope = |payload: String| {
            format!(
                r#"{{"schema":{{"type":"struct","fields":[{{"type":"struct","fields":{f},"optional":true,"field":"before"}},{{"type":"struct","fields":{f},"optional":true,"field":"after"}},{{"type":"string","optional":false,"field":"op"}}]}},"payload":{payload}}}"#,
                f = table.schema_fields(noted)
            )
        };
        let value = match live.get(&(t, n)).copied() {
            Some((old, old_note)) if rng.below(8) == 0 => {
                live.remove(&(t, n));
                envelope(format!(
                    r#"{{"op":"d","before":{},"after":null,"source":{source},"ts_ms":{i}}}"#,
                    table.image(n, old, old_note && noted)
                ))
            }
            old => {
                live.insert((t, n), (version, noted));
                envelope(format!(
                    r#"{{"op":"{}","before":{},"after":{},"source":{source},"ts_ms":{i}}}"#,
                    if old.is_some() { "u" } else { "c" },
                    old.map_or("null".into(), |(v, note)| table.image(n, v, note && noted)),
                    table.image(n, version, noted)
                ))
            }
        };
        records[t].push((Some(table.record_key(n)), Some(value)));
    }
    for ((t, n), (version, noted)) in live {
        let table = &tables[t];
        if let Some(target) = target_of(table) {
            let note = table.evolves.then_some(noted);
            finals
                .entry(target.to_string())
                .or_default()
                .insert(table.key_text(n), table.row_text(n, version, note));
        }
    }
    Capture { records, finals }
}
