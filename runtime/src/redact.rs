//! Keeping secrets out of logs, errors, metrics and dead letters.
//!
//! Two mechanisms: [`Secret`] wraps a value that must never be printed (its `Debug` and
//! `Display` show `***`), and [`redact`] scrubs credentials out of free text that may embed
//! them: `scheme://user:password@host` URLs and `password=...` in connection strings. Every
//! error message that may quote user configuration passes through [`redact`].

use std::borrow::Cow;
use std::fmt;

/// A configuration value that is a secret. Only [`Secret::expose`] gives the value.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself, for handing to a client library. Never format the result.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl<'de> serde::Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret)
    }
}

impl schemars::JsonSchema for Secret {
    fn schema_name() -> Cow<'static, str> {
        "Secret".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "A secret. Use `${VAR}` to take it from the environment; weir never prints it."
        })
    }
}

const KEYWORDS: [&str; 4] = ["password=", "passwd=", "secret=", "token="];

/// Replaces credentials embedded in `text` with `***`.
pub fn redact(text: &str) -> Cow<'_, str> {
    let lower = text.to_ascii_lowercase();
    if !text.contains("://") && !KEYWORDS.iter().any(|k| lower.contains(k)) {
        return Cow::Borrowed(text);
    }
    let mut out = redact_urls(text);
    for keyword in KEYWORDS {
        out = redact_keyword(&out, keyword);
    }
    Cow::Owned(out)
}

/// `scheme://user:pass@host` becomes `scheme://user:***@host`; `scheme://token@host` becomes
/// `scheme://***@host`.
fn redact_urls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        let authority_end = tail
            .find(|c: char| {
                // A URL ends at its path, or where the text around it goes on (a JSON
                // string's quote, markup).
                matches!(c, '/' | '?' | '#' | '"' | '<' | '>' | '\\') || c.is_whitespace()
            })
            .unwrap_or(tail.len());
        let authority = &tail[..authority_end];
        match authority.rfind('@') {
            Some(at) => {
                let userinfo = &authority[..at];
                match userinfo.find(':') {
                    Some(colon) => {
                        out.push_str(&userinfo[..colon]);
                        out.push_str(":***");
                    }
                    None => out.push_str("***"),
                }
                out.push_str(&authority[at..]);
            }
            None => out.push_str(authority),
        }
        rest = &tail[authority_end..];
    }
    out.push_str(rest);
    out
}

fn redact_keyword(text: &str, keyword: &str) -> String {
    let lower = text.to_ascii_lowercase();
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    let mut search = 0;
    while let Some(found) = lower[search..].find(keyword) {
        let start = search + found + keyword.len();
        let value_end = text[start..]
            .find(|c: char| c.is_whitespace() || c == '&' || c == ';' || c == ',')
            .map(|i| start + i)
            .unwrap_or(text.len());
        out.push_str(&text[last..start]);
        out.push_str("***");
        last = value_end;
        search = value_end;
    }
    out.push_str(&text[last..]);
    out
}

/// Names of fields whose values a record preview never shows.
const SECRET_FIELDS: [&str; 6] = ["password", "passwd", "secret", "token", "api_key", "apikey"];

/// A record (a JSON document, usually) as the status page may show it: [`redact`], and the
/// value of every field whose name looks like a credential (`"password": "…"`,
/// `"api_token": 42`, `"secrets": {…}`, and in JSON held in a string, as Debezium writes a
/// `jsonb` column, `\"token\":\"…\"`) replaced by `***`.
pub fn redact_record(text: &str) -> Cow<'_, str> {
    if !names_a_secret(text) {
        return redact(text);
    }
    let masked = mask_escaped_fields(&mask_secret_fields(text));
    Cow::Owned(redact(&masked).into_owned())
}

/// An error message as the status page may show it: [`redact`], and when it names a
/// column that looks like a credential (`` column `api_token`: `abc` is not a number ``),
/// every other `` `quoted` `` part (the value) replaced by `***`.
pub fn redact_error(text: &str) -> Cow<'_, str> {
    let parts: Vec<&str> = text.split('`').collect();
    // Odd parts are quoted.
    let secret = parts
        .iter()
        .skip(1)
        .step_by(2)
        .any(|quoted| names_a_secret(quoted));
    if !secret || parts.len() < 3 {
        return redact(text);
    }
    let masked: Vec<&str> = parts
        .iter()
        .enumerate()
        .map(
            |(i, part)| match i % 2 == 1 && i + 1 < parts.len() && !names_a_secret(part) {
                true => "***",
                false => part,
            },
        )
        .collect();
    Cow::Owned(redact(&masked.join("`")).into_owned())
}

fn names_a_secret(text: &str) -> bool {
    let lower = text.to_ascii_lowercase();
    SECRET_FIELDS.iter().any(|f| lower.contains(f))
}

/// The end (exclusive) of the object or array starting at `start`, or the text's end.
fn container_end(bytes: &[u8], start: usize) -> usize {
    let mut depth = 0usize;
    let mut i = start;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                i = string_end(bytes, i);
                continue;
            }
            b'{' | b'[' => depth += 1,
            b'}' | b']' => {
                depth -= 1;
                if depth == 0 {
                    return i + 1;
                }
            }
            _ => {}
        }
        i += 1;
    }
    bytes.len()
}

/// `\"name\": \"value\"` inside a JSON string: the value of a secret-named field
/// becomes `\"***\"` (a number or literal is masked up to the next `,` or `}`).
fn mask_escaped_fields(text: &str) -> String {
    const QUOTE: &str = "\\\"";
    let mut out = String::with_capacity(text.len());
    let (mut i, mut copied) = (0, 0);
    while let Some(found) = text[i..].find(QUOTE) {
        let start = i + found + QUOTE.len();
        let Some(length) = text[start..].find(QUOTE) else {
            break;
        };
        let name = &text[start..start + length];
        let after = start + length + QUOTE.len();
        let rest = text[after..].trim_start();
        if !names_a_secret(name) || !rest.starts_with(':') {
            i = start + length;
            continue;
        }
        let value = after + (text[after..].len() - rest.len()) + 1;
        let value = value + (text[value..].len() - text[value..].trim_start().len());
        let end = match text[value..].strip_prefix(QUOTE) {
            Some(quoted) => quoted
                .find(QUOTE)
                .map_or(text.len(), |k| value + QUOTE.len() + k + QUOTE.len()),
            None => text[value..]
                .find([',', '}', '"'])
                .map_or(text.len(), |k| value + k),
        };
        out.push_str(&text[copied..value]);
        out.push_str(QUOTE);
        out.push_str("***");
        out.push_str(QUOTE);
        copied = end;
        i = end;
    }
    out.push_str(&text[copied..]);
    out
}

/// The end (exclusive) of the JSON string starting at `start` (a `"`), or the text's end.
fn string_end(bytes: &[u8], start: usize) -> usize {
    let mut i = start + 1;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'"' => return i + 1,
            _ => i += 1,
        }
    }
    bytes.len()
}

fn mask_secret_fields(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let (mut i, mut copied) = (0, 0);
    while i < bytes.len() {
        if bytes[i] != b'"' {
            i += 1;
            continue;
        }
        let end = string_end(bytes, i);
        let name = text[i..end].to_ascii_lowercase();
        let mut j = end;
        while j < bytes.len() && bytes[j].is_ascii_whitespace() {
            j += 1;
        }
        if j >= bytes.len() || bytes[j] != b':' || !SECRET_FIELDS.iter().any(|f| name.contains(f)) {
            i = end;
            continue;
        }
        j += 1;
        while j < bytes.len() && bytes[j].is_ascii_whitespace() {
            j += 1;
        }
        let value_end = match bytes.get(j) {
            Some(b'"') => string_end(bytes, j),
            // A secret's object or array is masked whole: `"secrets": {...}`.
            Some(b'{') | Some(b'[') => container_end(bytes, j),
            None => break,
            Some(_) => text[j..]
                .find([',', '}', ']'])
                .map_or(bytes.len(), |k| j + k),
        };
        out.push_str(&text[copied..j]);
        out.push_str("\"***\"");
        copied = value_end;
        i = value_end;
    }
    out.push_str(&text[copied..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_show_no_credential_fields() {
        assert_eq!(
            redact_record(r#"{"id":1,"password":"hunter2","name":"a"}"#),
            r#"{"id":1,"password":"***","name":"a"}"#
        );
        assert_eq!(
            redact_record(r#"{"API_TOKEN" : 12345, "x": {"db_secret": "s\"q"}}"#),
            r#"{"API_TOKEN" : "***", "x": {"db_secret": "***"}}"#
        );
        // A value cut short by a preview is masked to its end.
        assert_eq!(
            redact_record(r#"{"password":"hunt"#),
            r#"{"password":"***""#
        );
        assert_eq!(
            redact_record(r#"{"url":"postgres://u:pw@h/db","note":"password"}"#),
            r#"{"url":"postgres://u:***@h/db","note":"password"}"#
        );
        assert_eq!(
            redact_record(r#"{"api_keys":["sk-1",{"a":"]"}],"secret":{"v":"x"},"id":2}"#),
            r#"{"api_keys":"***","secret":"***","id":2}"#
        );
        // JSON in a string, as a `jsonb` column comes.
        assert_eq!(
            redact_record(r#"{"cfg":"{\"token\": \"abc\",\"n\":1,\"pin_secret\":42}"}"#),
            r#"{"cfg":"{\"token\": \"***\",\"n\":1,\"pin_secret\":\"***\"}"}"#
        );
        // A URL after another in compact JSON.
        assert_eq!(
            redact_record(r#"{"home":"https://example.com","dsn":"postgres://u:pw@h/db"}"#),
            r#"{"home":"https://example.com","dsn":"postgres://u:***@h/db"}"#
        );
    }

    #[test]
    fn errors_naming_a_secret_column_show_no_value() {
        assert_eq!(
            redact_error("column `api_token`: `abc123` is not a number"),
            "column `api_token`: `***` is not a number"
        );
        assert_eq!(
            redact_error("column `price`: `abc` is not a number"),
            "column `price`: `abc` is not a number"
        );
    }

    #[test]
    fn url_passwords_are_hidden() {
        assert_eq!(
            redact("connect to postgres://weir:hunter2@db:5432/app failed"),
            "connect to postgres://weir:***@db:5432/app failed"
        );
        assert_eq!(
            redact("https://tok3n@example.com/x"),
            "https://***@example.com/x"
        );
        assert_eq!(redact("file:///tmp/a.db"), "file:///tmp/a.db");
    }

    #[test]
    fn keyword_values_are_hidden() {
        assert_eq!(
            redact("host=db user=weir password=hunter2 dbname=app"),
            "host=db user=weir password=*** dbname=app"
        );
        assert_eq!(redact("sasl token=abc&x=1"), "sasl token=***&x=1");
        assert_eq!(redact("PASSWORD=abc"), "PASSWORD=***");
    }

    #[test]
    fn secrets_do_not_format() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s} {s:?}"), "*** Secret(***)");
        assert_eq!(s.expose(), "hunter2");
    }
}
