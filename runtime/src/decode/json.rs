//! A JSON pull scanner for change events.
//!
//! The decoder reads each value straight into an Arrow builder, so it needs a pull parser
//! that returns the raw text of numbers (decimals must stay exact) and borrows strings
//! from the input. `jiter` does both, but measured at 0.72x of arrow-json's reader on this
//! workload (docs/benchmarks.md); this scanner does only what the decoder needs: strings
//! are found with `memchr`, returned without a copy unless they contain escapes, and keys
//! are returned as raw bytes for the caller to compare. It validates the whole document
//! (RFC 8259 grammar, UTF-8 in every string the caller reads) and limits nesting depth.

use std::borrow::Cow;
use std::fmt;

/// What the next value is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Token {
    Null,
    True,
    False,
    String,
    Number,
    Array,
    Object,
}

impl Token {
    pub fn describe(self) -> &'static str {
        match self {
            Token::Null => "null",
            Token::True | Token::False => "a boolean",
            Token::String => "a string",
            Token::Number => "a number",
            Token::Array => "a list",
            Token::Object => "an object",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonError {
    pub message: &'static str,
    /// Byte offset in the document.
    pub offset: usize,
}

impl fmt::Display for JsonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at byte {}", self.message, self.offset)
    }
}

/// Deeper documents are refused rather than risking the stack.
const MAX_DEPTH: usize = 128;

pub struct Json<'a> {
    data: &'a [u8],
    pos: usize,
}

#[inline]
fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\n' | b'\r' | b'\t')
}

impl<'a> Json<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Json { data, pos: 0 }
    }

    fn error<T>(&self, message: &'static str) -> Result<T, JsonError> {
        Err(JsonError {
            message,
            offset: self.pos,
        })
    }

    pub fn offset(&self) -> usize {
        self.pos
    }

    #[inline]
    fn skip_ws(&mut self) {
        while let Some(&b) = self.data.get(self.pos) {
            if !is_ws(b) {
                break;
            }
            self.pos += 1;
        }
    }

    /// The kind of the next value, without consuming it.
    #[inline]
    pub fn peek(&mut self) -> Result<Token, JsonError> {
        self.skip_ws();
        match self.data.get(self.pos) {
            Some(b'"') => Ok(Token::String),
            Some(b'{') => Ok(Token::Object),
            Some(b'[') => Ok(Token::Array),
            Some(b'-' | b'0'..=b'9') => Ok(Token::Number),
            Some(b'n') => Ok(Token::Null),
            Some(b't') => Ok(Token::True),
            Some(b'f') => Ok(Token::False),
            Some(_) => self.error("expected a JSON value"),
            None => self.error("unexpected end of the document"),
        }
    }

    fn literal(&mut self, word: &'static [u8], message: &'static str) -> Result<(), JsonError> {
        if self.data[self.pos..].starts_with(word) {
            self.pos += word.len();
            Ok(())
        } else {
            self.error(message)
        }
    }

    pub fn null(&mut self) -> Result<(), JsonError> {
        self.skip_ws();
        self.literal(b"null", "expected null")
    }

    pub fn boolean(&mut self) -> Result<bool, JsonError> {
        match self.peek()? {
            Token::True => self.literal(b"true", "expected true").map(|_| true),
            Token::False => self.literal(b"false", "expected false").map(|_| false),
            _ => self.error("expected a boolean"),
        }
    }

    /// A number's text, checked against the JSON grammar.
    #[inline]
    pub fn number(&mut self) -> Result<&'a [u8], JsonError> {
        self.skip_ws();
        let start = self.pos;
        let d = self.data;
        let digits_from = |mut i: usize| {
            while d.get(i).is_some_and(u8::is_ascii_digit) {
                i += 1;
            }
            i
        };
        let mut i = start;
        if d.get(i) == Some(&b'-') {
            i += 1;
        }
        match d.get(i) {
            Some(b'0') => i += 1,
            Some(b'1'..=b'9') => i = digits_from(i + 1),
            _ => {
                self.pos = i;
                return self.error("invalid number");
            }
        }
        if d.get(i) == Some(&b'.') {
            let digits = i + 1;
            i = digits_from(digits);
            if i == digits {
                self.pos = i;
                return self.error("invalid number: a digit must follow the decimal point");
            }
        }
        if matches!(d.get(i), Some(b'e' | b'E')) {
            i += 1;
            if matches!(d.get(i), Some(b'+' | b'-')) {
                i += 1;
            }
            let digits = i;
            i = digits_from(digits);
            if i == digits {
                self.pos = i;
                return self.error("invalid number: the exponent has no digits");
            }
        }
        self.pos = i;
        Ok(&d[start..i])
    }

    /// A number as an `f64` (correctly rounded).
    #[inline]
    pub fn float(&mut self) -> Result<f64, JsonError> {
        let at = self.pos;
        let raw = self.number()?;
        // SAFETY: `number` accepted `raw` by the JSON grammar, which admits only ASCII.
        unsafe { std::str::from_utf8_unchecked(raw) }
            .parse()
            .map_err(|_| JsonError {
                message: "invalid number",
                offset: at,
            })
    }

    /// Finds the end of the string whose opening quote is at `self.pos`. Returns the raw
    /// contents, whether they contain escapes, and whether they are known to be ASCII;
    /// leaves `pos` after the closing quote.
    #[inline]
    fn string_span(&mut self) -> Result<(&'a [u8], bool, bool), JsonError> {
        // Eight bytes at a time (SWAR): most strings are short, where this beats memchr's
        // setup, and it notes on the way whether the bytes are ASCII (then they need no
        // UTF-8 check). A long run without a quote or backslash switches to memchr.
        const ONES: u64 = 0x0101_0101_0101_0101;
        const HIGH: u64 = 0x8080_8080_8080_8080;
        const QUOTES: u64 = ONES * b'"' as u64;
        const BACKSLASHES: u64 = ONES * b'\\' as u64;
        let has_zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGH;
        let d = self.data;
        let start = self.pos + 1;
        let mut i = start;
        let mut escaped = false;
        let mut high = 0u64;
        let mut run = 0;
        loop {
            if i + 8 <= d.len() && run < 64 {
                let chunk = u64::from_le_bytes(d[i..i + 8].try_into().expect("eight bytes"));
                let hits = has_zero(chunk ^ QUOTES) | has_zero(chunk ^ BACKSLASHES);
                if hits == 0 {
                    high |= chunk;
                    i += 8;
                    run += 8;
                    continue;
                }
                // The lowest flagged byte is exact (false positives only sit above it).
                let k = (hits.trailing_zeros() / 8) as usize;
                if k > 0 {
                    high |= chunk & (u64::MAX >> (64 - 8 * k));
                }
                i += k;
            } else {
                match memchr::memchr2(b'"', b'\\', &d[i..]) {
                    Some(n) => {
                        // Bytes skipped by memchr are not checked for ASCII.
                        high |= if n > 0 { HIGH } else { 0 };
                        i += n;
                    }
                    None => {
                        self.pos = d.len();
                        return self.error("unterminated string");
                    }
                }
            }
            if d[i] == b'"' {
                self.pos = i + 1;
                return Ok((&d[start..i], escaped, !escaped && high & HIGH == 0));
            }
            // A backslash: skip it and the character it escapes.
            escaped = true;
            i += 2;
            run = 0;
            if i > d.len() {
                self.pos = d.len();
                return self.error("unterminated string");
            }
        }
    }

    /// A string value: borrowed from the input unless it has escapes.
    #[inline]
    pub fn str(&mut self) -> Result<Cow<'a, str>, JsonError> {
        if self.peek()? != Token::String {
            return self.error("expected a string");
        }
        let at = self.pos;
        let (raw, escaped, ascii) = self.string_span()?;
        if escaped {
            return unescape(raw).map(Cow::Owned).map_err(|message| JsonError {
                message,
                offset: at,
            });
        }
        if ascii {
            // SAFETY: every byte is below 0x80, and ASCII is valid UTF-8.
            return Ok(Cow::Borrowed(unsafe { std::str::from_utf8_unchecked(raw) }));
        }
        std::str::from_utf8(raw)
            .map(Cow::Borrowed)
            .map_err(|_| JsonError {
                message: "a string is not valid UTF-8",
                offset: at,
            })
    }

    /// A string's raw bytes, for values that never need escapes (base64). Escapes are
    /// decoded when present (`\/` is legal in base64 text written by some encoders).
    pub fn str_bytes(&mut self) -> Result<Cow<'a, [u8]>, JsonError> {
        if self.peek()? != Token::String {
            return self.error("expected a string");
        }
        let at = self.pos;
        let (raw, escaped, _) = self.string_span()?;
        if escaped {
            return unescape(raw)
                .map(|s| Cow::Owned(s.into_bytes()))
                .map_err(|message| JsonError {
                    message,
                    offset: at,
                });
        }
        Ok(Cow::Borrowed(raw))
    }

    /// Reads a key and its colon. The key is raw: compare it as bytes; a key containing a
    /// backslash has escapes (see [`unescape`]).
    #[inline]
    fn key(&mut self) -> Result<&'a [u8], JsonError> {
        let (raw, _, _) = self.string_span()?;
        self.skip_ws();
        if self.data.get(self.pos) != Some(&b':') {
            return self.error("expected `:` after an object key");
        }
        self.pos += 1;
        Ok(raw)
    }

    /// Enters an object; returns its first key, or `None` for `{}`.
    #[inline]
    pub fn object_first(&mut self) -> Result<Option<&'a [u8]>, JsonError> {
        if self.peek()? != Token::Object {
            return self.error("expected an object");
        }
        self.pos += 1;
        self.skip_ws();
        match self.data.get(self.pos) {
            Some(b'}') => {
                self.pos += 1;
                Ok(None)
            }
            Some(b'"') => self.key().map(Some),
            _ => self.error("expected a key or `}`"),
        }
    }

    /// After a value in an object: the next key, or `None` at the closing brace.
    #[inline]
    pub fn object_next(&mut self) -> Result<Option<&'a [u8]>, JsonError> {
        self.skip_ws();
        match self.data.get(self.pos) {
            Some(b',') => {
                self.pos += 1;
                self.skip_ws();
                if self.data.get(self.pos) != Some(&b'"') {
                    return self.error("expected a key after `,`");
                }
                self.key().map(Some)
            }
            Some(b'}') => {
                self.pos += 1;
                Ok(None)
            }
            _ => self.error("expected `,` or `}` in an object"),
        }
    }

    /// Enters an array; returns the first element's kind, or `None` for `[]`.
    pub fn array_first(&mut self) -> Result<Option<Token>, JsonError> {
        if self.peek()? != Token::Array {
            return self.error("expected a list");
        }
        self.pos += 1;
        self.skip_ws();
        if self.data.get(self.pos) == Some(&b']') {
            self.pos += 1;
            return Ok(None);
        }
        self.peek().map(Some)
    }

    /// After an element: the next element's kind, or `None` at the closing bracket.
    pub fn array_next(&mut self) -> Result<Option<Token>, JsonError> {
        self.skip_ws();
        match self.data.get(self.pos) {
            Some(b',') => {
                self.pos += 1;
                self.peek().map(Some)
            }
            Some(b']') => {
                self.pos += 1;
                Ok(None)
            }
            _ => self.error("expected `,` or `]` in a list"),
        }
    }

    /// Skips one value, checking its grammar.
    pub fn skip(&mut self) -> Result<(), JsonError> {
        self.skip_depth(0)
    }

    /// Skips one value and returns its text.
    /// Skips the next value when its text is exactly `known`, a complete JSON object or
    /// array seen before. A JSON object's text ends at its closing brace, so text that
    /// begins with `known` holds `known` as its next value, whatever follows. Returns
    /// whether it skipped.
    #[inline]
    pub fn skip_known(&mut self, known: &[u8]) -> bool {
        self.skip_ws();
        if !matches!(known.first(), Some(b'{' | b'[')) {
            return false;
        }
        let skipped = self.data[self.pos..].starts_with(known);
        if skipped {
            self.pos += known.len();
        }
        skipped
    }

    pub fn skip_slice(&mut self) -> Result<&'a [u8], JsonError> {
        self.skip_ws();
        let start = self.pos;
        self.skip()?;
        Ok(&self.data[start..self.pos])
    }

    fn skip_depth(&mut self, depth: usize) -> Result<(), JsonError> {
        if depth > MAX_DEPTH {
            return self.error("the document nests deeper than 128 levels");
        }
        match self.peek()? {
            Token::Null => self.null(),
            Token::True | Token::False => self.boolean().map(|_| ()),
            Token::Number => self.number().map(|_| ()),
            Token::String => self.string_span().map(|_| ()),
            Token::Object => {
                let mut key = self.object_first()?;
                while key.is_some() {
                    self.skip_depth(depth + 1)?;
                    key = self.object_next()?;
                }
                Ok(())
            }
            Token::Array => {
                let mut next = self.array_first()?;
                while next.is_some() {
                    self.skip_depth(depth + 1)?;
                    next = self.array_next()?;
                }
                Ok(())
            }
        }
    }

    /// Checks that nothing but whitespace follows the document.
    pub fn finish(&mut self) -> Result<(), JsonError> {
        self.skip_ws();
        if self.pos == self.data.len() {
            Ok(())
        } else {
            self.error("unexpected characters after the JSON document")
        }
    }
}

/// A raw key as text (decoding escapes if it has any).
pub fn key_string(raw: &[u8]) -> String {
    if raw.contains(&b'\\') {
        unescape(raw).unwrap_or_else(|_| String::from_utf8_lossy(raw).into_owned())
    } else {
        String::from_utf8_lossy(raw).into_owned()
    }
}

/// Decodes the escapes of a raw JSON string (without its quotes).
pub fn unescape(raw: &[u8]) -> Result<String, &'static str> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        if b != b'\\' {
            out.push(b);
            i += 1;
            continue;
        }
        let Some(&e) = raw.get(i + 1) else {
            return Err("a string ends with a lone backslash");
        };
        i += 2;
        match e {
            b'"' => out.push(b'"'),
            b'\\' => out.push(b'\\'),
            b'/' => out.push(b'/'),
            b'b' => out.push(0x08),
            b'f' => out.push(0x0c),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'u' => {
                let mut code = hex4(raw.get(i..i + 4))?;
                i += 4;
                if (0xD800..0xDC00).contains(&code) {
                    // A high surrogate must be followed by a low one.
                    if raw.get(i..i + 2) != Some(b"\\u") {
                        return Err("a string has an unpaired surrogate");
                    }
                    let low = hex4(raw.get(i + 2..i + 6))?;
                    if !(0xDC00..0xE000).contains(&low) {
                        return Err("a string has an unpaired surrogate");
                    }
                    i += 6;
                    code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00);
                } else if (0xDC00..0xE000).contains(&code) {
                    return Err("a string has an unpaired surrogate");
                }
                let c = char::from_u32(code).ok_or("a string has an invalid \\u escape")?;
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
            _ => return Err("a string has an invalid escape"),
        }
    }
    String::from_utf8(out).map_err(|_| "a string is not valid UTF-8")
}

fn hex4(digits: Option<&[u8]>) -> Result<u32, &'static str> {
    let digits = digits.ok_or("a string has a truncated \\u escape")?;
    let text = std::str::from_utf8(digits).map_err(|_| "a string has an invalid \\u escape")?;
    u32::from_str_radix(text, 16).map_err(|_| "a string has an invalid \\u escape")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    /// Rebuilds a serde_json value with the scanner, to compare the two parsers.
    fn read(j: &mut Json) -> Result<Value, JsonError> {
        Ok(match j.peek()? {
            Token::Null => {
                j.null()?;
                Value::Null
            }
            Token::True | Token::False => Value::Bool(j.boolean()?),
            Token::Number => serde_json::from_slice(j.number()?).unwrap(),
            Token::String => Value::String(j.str()?.into_owned()),
            Token::Array => {
                let mut items = Vec::new();
                let mut next = j.array_first()?;
                while next.is_some() {
                    items.push(read(j)?);
                    next = j.array_next()?;
                }
                Value::Array(items)
            }
            Token::Object => {
                let mut map = serde_json::Map::new();
                let mut key = j.object_first()?;
                while let Some(k) = key {
                    let k = unescape(k).unwrap();
                    map.insert(k, read(j)?);
                    key = j.object_next()?;
                }
                Value::Object(map)
            }
        })
    }

    fn parse(text: &str) -> Result<Value, JsonError> {
        let mut j = Json::new(text.as_bytes());
        let v = read(&mut j)?;
        j.finish()?;
        Ok(v)
    }

    #[test]
    fn agrees_with_serde_json_on_valid_documents() {
        for text in [
            r#"{"a":1,"b":[true,false,null],"c":{"d":"e"},"f":-0.5e-3}"#,
            r#" { "s" : "tab\there \"q\" \\ \/ \u00e9 \ud83d\ude00" , "n" : 0 } "#,
            r#"[]"#,
            r#"{}"#,
            r#""plain""#,
            r#"[1, [2, [3, {"x": [ ]}]]]"#,
            r#"{"k\"ey": 12345678901234567890123}"#,
        ] {
            let expected: Value = serde_json::from_str(text).unwrap();
            assert_eq!(parse(text).unwrap(), expected, "{text}");
        }
    }

    #[test]
    fn agrees_with_serde_json_on_generated_documents() {
        let mut seed = 0x243f6a8885a308d3u64;
        let mut rand = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        fn generate(rand: &mut dyn FnMut(u64) -> u64, depth: u32) -> Value {
            match if depth > 3 { rand(4) } else { rand(6) } {
                0 => Value::Null,
                1 => Value::Bool(rand(2) == 0),
                2 => serde_json::json!((rand(2_000_000) as i64) - 1_000_000),
                3 => {
                    // Mostly plain text, so long runs without escapes occur too.
                    let chars = [
                        'a', 'b', 'c', 'd', 'e', 'f', 'g', 'h', 'é', '"', '\\', '\n', '😀', '/',
                        '\u{1}', ' ',
                    ];
                    Value::String(
                        (0..rand(150))
                            .map(|_| chars[rand(chars.len() as u64) as usize])
                            .collect(),
                    )
                }
                4 => Value::Array((0..rand(4)).map(|_| generate(rand, depth + 1)).collect()),
                _ => Value::Object(
                    (0..rand(4))
                        .map(|i| {
                            (
                                format!("k{i}{}", ["", "\"", "é"][rand(3) as usize]),
                                generate(rand, depth + 1),
                            )
                        })
                        .collect(),
                ),
            }
        }
        for _ in 0..2000 {
            let value = generate(&mut rand, 0);
            let text = value.to_string();
            assert_eq!(parse(&text).unwrap(), value, "{text}");
            let pretty = serde_json::to_string_pretty(&value).unwrap();
            assert_eq!(parse(&pretty).unwrap(), value, "{pretty}");
        }
    }

    #[test]
    fn rejects_what_serde_json_rejects() {
        for text in [
            "",
            "{",
            "}",
            "[1,]",
            "{\"a\":1,}",
            "{\"a\" 1}",
            "{a:1}",
            "01",
            "1.",
            "-",
            "1e",
            "\"unterminated",
            "\"bad \\x escape\"",
            "\"\\ud800\"",
            "[1 2]",
            "nul",
            "tru",
            "{\"a\":1} x",
            "\"\\u12\"",
        ] {
            assert!(
                serde_json::from_str::<Value>(text).is_err(),
                "serde accepts {text:?}"
            );
            assert!(parse(text).is_err(), "scanner accepts {text:?}");
        }
        let invalid_utf8 = b"\"\xff\xfe\"";
        let mut j = Json::new(invalid_utf8);
        assert!(j.str().is_err());
        let deep = "[".repeat(200) + &"]".repeat(200);
        let err = Json::new(deep.as_bytes()).skip().unwrap_err();
        assert!(err.message.contains("deeper"), "{err}");
    }

    #[test]
    fn the_ascii_shortcut_never_admits_invalid_utf8() {
        for len in 1..130 {
            for p in 0..len {
                let mut bytes = vec![b'"'];
                bytes.extend(std::iter::repeat_n(b'a', len));
                bytes.push(b'"');
                bytes[1 + p] = 0xff;
                assert!(
                    Json::new(&bytes).str().is_err(),
                    "len {len}, invalid byte at {p}"
                );
                // A valid multi-byte character at the same place is accepted.
                let mut text = "a".repeat(len - 1);
                text.insert(p.min(text.len()), 'é');
                let doc = format!("\"{text}\"");
                assert_eq!(Json::new(doc.as_bytes()).str().unwrap(), text);
                // An escape at the same place is decoded.
                let mut text = "a".repeat(len - 1);
                text.insert_str(p.min(text.len()), "\\n");
                let doc = format!("\"{text}\"");
                let expected: String = serde_json::from_str(&doc).unwrap();
                assert_eq!(Json::new(doc.as_bytes()).str().unwrap(), expected);
            }
        }
    }

    #[test]
    fn numbers_keep_their_text_and_strings_borrow() {
        let mut j = Json::new(br#"[3.140000104904175, 18446744073709551615, "x", "y\n"]"#);
        assert_eq!(j.array_first().unwrap(), Some(Token::Number));
        assert_eq!(j.number().unwrap(), b"3.140000104904175");
        j.array_next().unwrap();
        assert_eq!(j.number().unwrap(), b"18446744073709551615");
        j.array_next().unwrap();
        assert!(matches!(j.str().unwrap(), Cow::Borrowed("x")));
        j.array_next().unwrap();
        assert!(matches!(j.str().unwrap(), Cow::Owned(s) if s == "y\n"));
        assert_eq!(j.array_next().unwrap(), None);
        j.finish().unwrap();
    }
}
