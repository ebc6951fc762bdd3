//! Flattened rows (Debezium's `ExtractNewRecordState`): a row image without an envelope,
//! deletes told by `__deleted` or a tombstone's record key.

use super::debezium::read_scalar_text;
use super::*;

impl Decoder {
    /// For a delete without a `before` image: the record key (`{"id": 1}`, with or without
    /// its own schema wrapper) supplies the primary key.
    pub(super) fn decode_key_into_before(&mut self, key: &[u8]) -> Result<(), DecodeError> {
        let key = key.trim_ascii();
        let mut j = Json::new(key);
        if j.peek()? != Token::Object {
            return Err(reject("the record key is not a JSON object"));
        }
        // A key with a schema wrapper: use its payload.
        let parsed: JsonValue = serde_json::from_slice(key)
            .map_err(|e| reject(format!("the record key is not valid JSON: {e}")))?;
        let payload = match parsed.get("payload") {
            Some(p) if parsed.get("schema").is_some() => p.clone(),
            _ => parsed,
        };
        let text = payload.to_string();
        let mut j = Json::new(text.as_bytes());
        if j.peek()? != Token::Object {
            return Err(reject("the record key's payload is not a JSON object"));
        }
        self.decode_row(&mut j, Which::Before, None)
    }

    /// Flattened rows: the record is the row; `__`-prefixed fields fill the envelope.
    pub(super) fn decode_unwrapped(&mut self, bytes: &[u8]) -> Result<Outcome, DecodeError> {
        let mut state = EventState::default();
        let deleted = unwrapped_is_deleted(bytes)?;
        let which = if deleted { Which::Before } else { Which::After };
        let mut j = Json::new(bytes);
        let peek = j.peek()?;
        if peek != Token::Object {
            return Err(reject(format!(
                "expected a JSON object (a flattened row), found {}",
                peek.describe()
            )));
        }
        let row = self.rows();
        let image_row = self.image_mut(which).rows();
        let mut name = j.object_first()?.map(key_string);
        let mut hint = 0;
        while let Some(k) = name {
            match k.as_str() {
                "__deleted" => j.skip()?,
                "__op" => {
                    if let Some(op) = read_scalar_text(&mut j)? {
                        state.op = Op::parse(&op);
                    }
                }
                "__table" | "__db" | "__schema" | "__source_ts_ms" | "__ts_ms" | "__lsn" => {
                    let text = read_scalar_text(&mut j)?;
                    let target = match k.as_str() {
                        "__table" => Some(TEXT_TABLE),
                        "__db" => Some(TEXT_DB),
                        "__schema" => Some(TEXT_SCHEMA),
                        "__lsn" => Some(TEXT_POSITION),
                        _ => None,
                    };
                    match (target, text) {
                        (Some(column), Some(text)) => {
                            let text = if column == TEXT_POSITION {
                                format!("lsn={text}")
                            } else {
                                text
                            };
                            if self.envelope.texts[column].len() == row {
                                self.envelope.texts[column].push_str(&text)?;
                            }
                        }
                        (None, Some(text)) => {
                            let micros = text.parse::<i64>().ok().map(|ms| ms * 1000);
                            if k == "__source_ts_ms" {
                                if let (Some(m), true) =
                                    (micros, self.envelope.source_time.len() == row)
                                {
                                    self.envelope.source_time.push_i64(m);
                                }
                            } else {
                                state.event_time = micros;
                            }
                        }
                        _ => {}
                    }
                }
                _ => {
                    let index = match self.table.find(&k, hint) {
                        Some(i) => Some(i),
                        None => self.unknown_column(&k, &mut j)?,
                    };
                    if let Some(i) = index {
                        self.decode_value(&mut j, which, i, image_row, None)?;
                        hint = i + 1;
                    }
                }
            }
            name = j.object_next()?.map(key_string);
        }
        j.finish()?;
        self.image_mut(which).end_row();
        if deleted {
            state.op = Some(Op::Delete);
            state.before = Some(true);
        } else {
            state.op = Some(match state.op {
                Some(Op::Delete) | None => Op::Update,
                Some(op) => op,
            });
            state.after = Some(true);
        }
        self.finish_event(state, None)
    }
}

/// Whether a flattened row carries `__deleted: "true"` (or `true`).
pub(super) fn unwrapped_is_deleted(bytes: &[u8]) -> Result<bool, DecodeError> {
    if !bytes.windows(11).any(|w| w == b"\"__deleted\"") {
        return Ok(false);
    }
    let mut j = Json::new(bytes);
    let mut name = j.object_first()?.map(|k| k == b"__deleted");
    while let Some(is_deleted) = name {
        if is_deleted {
            return Ok(matches!(read_scalar_text(&mut j)?.as_deref(), Some("true")));
        }
        j.skip()?;
        name = j.object_next()?.map(|k| k == b"__deleted");
    }
    Ok(false)
}
