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
            .find(|c: char| c == '/' || c == '?' || c == '#' || c.is_whitespace())
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

#[cfg(test)]
mod tests {
    use super::*;

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
