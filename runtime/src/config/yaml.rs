//! A YAML document tree that remembers where every node came from.
//!
//! serde deserialisers report one error without a position; users need every mistake in a
//! pipeline file at once, each with its line and column. So the file is first read into this
//! small tree (built from `saphyr-parser` events), environment variables are interpolated
//! inside it, it is checked against the JSON Schema of the format (see `validate`), and only
//! then handed to serde.

use saphyr_parser::{Event, Parser, ScalarStyle, Span};

use super::diagnostic::{Diagnostic, Mark};
use super::interpolate::{Interpolated, interpolate};

/// One YAML node with the position of its first character.
#[derive(Debug, Clone)]
pub struct Node {
    pub value: Value,
    pub mark: Mark,
    /// True when an environment variable contributed to this scalar. Such values may be
    /// secrets, so diagnostics never print them.
    pub from_env: bool,
}

#[derive(Debug, Clone)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    Map(Vec<Entry>),
}

#[derive(Debug, Clone)]
pub struct Entry {
    pub key: String,
    pub key_mark: Mark,
    pub value: Node,
}

impl Value {
    /// The YAML/JSON type name used in messages ("a string", "a mapping", ...).
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Int(_) => "an integer",
            Value::Float(_) => "a number",
            Value::Str(_) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }
}

impl Node {
    pub fn get(&self, key: &str) -> Option<&Node> {
        match &self.value {
            Value::Map(entries) => entries.iter().find(|e| e.key == key).map(|e| &e.value),
            _ => None,
        }
    }

    /// Converts the tree into JSON for serde. Keys keep their order.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match &self.value {
            Value::Null => J::Null,
            Value::Bool(b) => J::Bool(*b),
            Value::Int(i) => J::from(*i),
            Value::Float(f) => serde_json::Number::from_f64(*f)
                .map(J::Number)
                .unwrap_or(J::Null),
            Value::Str(s) => J::String(s.clone()),
            Value::Seq(items) => J::Array(items.iter().map(Node::to_json).collect()),
            Value::Map(entries) => J::Object(
                entries
                    .iter()
                    .map(|e| (e.key.clone(), e.value.to_json()))
                    .collect(),
            ),
        }
    }

    /// Finds the node at a path of keys and list indices, for placing an error found later
    /// (by serde, or by a semantic check) at the right line. Falls back to the nearest parent.
    pub fn locate(&self, path: &[PathSegment]) -> Mark {
        let mut node = self;
        for segment in path {
            let next = match (segment, &node.value) {
                (PathSegment::Key(k), Value::Map(entries)) => {
                    entries.iter().find(|e| &e.key == k).map(|e| &e.value)
                }
                (PathSegment::Index(i), Value::Seq(items)) => items.get(*i),
                _ => None,
            };
            match next {
                Some(n) => node = n,
                None => break,
            }
        }
        node.mark
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathSegment {
    Key(String),
    Index(usize),
}

/// Renders a path the way users write it: `sink.table`, `table.primary_key[1]`.
pub fn render_path(path: &[PathSegment]) -> String {
    let mut out = String::new();
    for segment in path {
        match segment {
            PathSegment::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            PathSegment::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    if out.is_empty() {
        out.push_str("(top level)");
    }
    out
}

fn mark_of(span: &Span) -> Mark {
    Mark {
        line: span.start.line(),
        col: span.start.col() + 1,
    }
}

enum Frame {
    Seq {
        items: Vec<Node>,
        mark: Mark,
        anchor: usize,
    },
    Map {
        entries: Vec<Entry>,
        /// Entries from merge keys (`<<`); explicit keys override them, whatever the order.
        merged: Vec<Entry>,
        pending_key: Option<(String, Mark)>,
        mark: Mark,
        anchor: usize,
    },
}

/// Parses YAML text into a [`Node`], interpolating `${VAR}` in scalar values.
/// `env` looks a variable up; the caller decides where variables come from.
pub fn parse(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Node, Vec<Diagnostic>> {
    let mut parser = Parser::new_from_str(text);
    let mut stack: Vec<Frame> = Vec::new();
    let mut anchors: Vec<(usize, Node)> = Vec::new();
    let mut root: Option<Node> = None;
    let mut diagnostics = Vec::new();
    let mut documents = 0;

    while let Some(event) = parser.next_event() {
        let (event, span) = match event {
            Ok(ok) => ok,
            Err(e) => {
                let marker = e.marker();
                diagnostics.push(Diagnostic::new(
                    Some(Mark {
                        line: marker.line(),
                        col: marker.col() + 1,
                    }),
                    "",
                    format!("this is not valid YAML: {}", e.info()),
                    Some("check the indentation and quoting around this position".into()),
                ));
                return Err(diagnostics);
            }
        };
        let mark = mark_of(&span);
        let completed: Option<(Node, usize)> = match event {
            Event::StreamStart | Event::StreamEnd | Event::Nothing | Event::DocumentEnd => None,
            Event::DocumentStart(_) => {
                documents += 1;
                if documents > 1 {
                    diagnostics.push(Diagnostic::new(
                        Some(mark),
                        "",
                        "a pipeline file holds one YAML document, but a second one starts here",
                        Some(
                            "remove the `---` line, or split the pipelines into separate files"
                                .into(),
                        ),
                    ));
                    return Err(diagnostics);
                }
                None
            }
            Event::Alias(id) => match anchors.iter().rev().find(|(a, _)| *a == id) {
                Some((_, node)) => Some((node.clone(), 0)),
                None => {
                    diagnostics.push(Diagnostic::new(
                        Some(mark),
                        "",
                        "this alias refers to an anchor that is not defined before it",
                        None,
                    ));
                    None
                }
            },
            Event::Scalar(text, style, anchor, tag) => {
                let is_key = matches!(
                    stack.last(),
                    Some(Frame::Map {
                        pending_key: None,
                        ..
                    })
                );
                if is_key {
                    if let Some(Frame::Map { pending_key, .. }) = stack.last_mut() {
                        *pending_key = Some((text.into_owned(), mark));
                    }
                    None
                } else {
                    let forced_string = tag.as_ref().is_some_and(|t| t.suffix == "str");
                    match scalar(&text, style, forced_string, mark, env) {
                        Ok(node) => Some((node, anchor)),
                        Err(d) => {
                            diagnostics.push(d);
                            Some((
                                Node {
                                    value: Value::Null,
                                    mark,
                                    from_env: true,
                                },
                                anchor,
                            ))
                        }
                    }
                }
            }
            Event::SequenceStart(anchor, _) => {
                if let Some(d) = complex_key_check(&stack, mark) {
                    diagnostics.push(d);
                    return Err(diagnostics);
                }
                stack.push(Frame::Seq {
                    items: Vec::new(),
                    mark,
                    anchor,
                });
                None
            }
            Event::MappingStart(anchor, _) => {
                if let Some(d) = complex_key_check(&stack, mark) {
                    diagnostics.push(d);
                    return Err(diagnostics);
                }
                stack.push(Frame::Map {
                    entries: Vec::new(),
                    merged: Vec::new(),
                    pending_key: None,
                    mark,
                    anchor,
                });
                None
            }
            Event::SequenceEnd => match stack.pop() {
                Some(Frame::Seq {
                    items,
                    mark,
                    anchor,
                }) => Some((
                    Node {
                        value: Value::Seq(items),
                        mark,
                        from_env: false,
                    },
                    anchor,
                )),
                _ => None,
            },
            Event::MappingEnd => match stack.pop() {
                Some(Frame::Map {
                    mut entries,
                    merged,
                    mark,
                    anchor,
                    ..
                }) => {
                    for entry in merged {
                        if !entries.iter().any(|e| e.key == entry.key) {
                            entries.push(entry);
                        }
                    }
                    Some((
                        Node {
                            value: Value::Map(entries),
                            mark,
                            from_env: false,
                        },
                        anchor,
                    ))
                }
                _ => None,
            },
        };

        if let Some((node, anchor)) = completed {
            if anchor != 0 {
                anchors.push((anchor, node.clone()));
            }
            match stack.last_mut() {
                None => root = Some(node),
                Some(Frame::Seq { items, .. }) => items.push(node),
                Some(Frame::Map {
                    entries,
                    merged,
                    pending_key,
                    ..
                }) => {
                    let (key, key_mark) = pending_key.take().unwrap_or_default();
                    if key == "<<" {
                        merge_into(merged, node, &mut diagnostics);
                    } else if entries.iter().any(|e| e.key == key) {
                        diagnostics.push(Diagnostic::new(
                            Some(key_mark),
                            &key,
                            format!("the key `{key}` appears twice in the same mapping"),
                            Some("keep one of them; YAML does not define which one wins".into()),
                        ));
                    } else {
                        entries.push(Entry {
                            key,
                            key_mark,
                            value: node,
                        });
                    }
                }
            }
        }
    }

    if !diagnostics.is_empty() {
        return Err(diagnostics);
    }
    Ok(root.unwrap_or(Node {
        value: Value::Null,
        mark: Mark { line: 1, col: 1 },
        from_env: false,
    }))
}

/// Mapping keys must be plain strings; a list or mapping in key position is legal YAML but
/// never meaningful in a pipeline.
fn complex_key_check(stack: &[Frame], mark: Mark) -> Option<Diagnostic> {
    matches!(
        stack.last(),
        Some(Frame::Map {
            pending_key: None,
            ..
        })
    )
    .then(|| {
        Diagnostic::new(
            Some(mark),
            "",
            "a mapping key must be a plain string, not a list or mapping",
            None,
        )
    })
}

/// YAML merge keys (`<<: *defaults`) copy entries that the mapping does not set itself.
fn merge_into(entries: &mut Vec<Entry>, node: Node, diagnostics: &mut Vec<Diagnostic>) {
    let sources = match node.value {
        Value::Map(m) => vec![m],
        Value::Seq(items) => items
            .into_iter()
            .filter_map(|n| match n.value {
                Value::Map(m) => Some(m),
                _ => None,
            })
            .collect(),
        _ => {
            diagnostics.push(Diagnostic::new(
                Some(node.mark),
                "<<",
                "a merge key (`<<`) must refer to a mapping",
                None,
            ));
            return;
        }
    };
    for source in sources {
        for entry in source {
            if !entries.iter().any(|e| e.key == entry.key) {
                entries.push(entry);
            }
        }
    }
}

fn scalar(
    text: &str,
    style: ScalarStyle,
    forced_string: bool,
    mark: Mark,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Node, Diagnostic> {
    let Interpolated { text, substituted } =
        interpolate(text, env).map_err(|e| Diagnostic::new(Some(mark), "", e.message, e.hint))?;
    let value = if style == ScalarStyle::Plain && !forced_string {
        resolve_plain(&text)
    } else {
        Value::Str(text)
    };
    Ok(Node {
        value,
        mark,
        from_env: substituted,
    })
}

/// Resolves an unquoted scalar with the YAML 1.2 core schema: null, booleans, integers
/// (decimal, 0o octal, 0x hex), floats (including .inf and .nan), otherwise a string.
pub fn resolve_plain(text: &str) -> Value {
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => {
            return Value::Float(f64::INFINITY);
        }
        "-.inf" | "-.Inf" | "-.INF" => return Value::Float(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => return Value::Float(f64::NAN),
        _ => {}
    }
    if let Some(hex) = text.strip_prefix("0x")
        && let Ok(i) = i64::from_str_radix(hex, 16)
    {
        return Value::Int(i);
    }
    if let Some(oct) = text.strip_prefix("0o")
        && let Ok(i) = i64::from_str_radix(oct, 8)
    {
        return Value::Int(i);
    }
    let digits = text.strip_prefix(['-', '+']).unwrap_or(text);
    if !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && let Ok(i) = text.parse::<i64>()
    {
        return Value::Int(i);
    }
    if looks_like_float(digits)
        && let Ok(f) = text.parse::<f64>()
    {
        return Value::Float(f);
    }
    Value::Str(text.to_string())
}

/// `[0-9]+(\.[0-9]*)?([eE][-+]?[0-9]+)?` or `\.[0-9]+(...)`: the core schema's float form.
fn looks_like_float(s: &str) -> bool {
    let (mantissa, exponent) = match s.find(['e', 'E']) {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    };
    let (int_part, frac_part) = match mantissa.find('.') {
        Some(i) => (&mantissa[..i], Some(&mantissa[i + 1..])),
        None => (mantissa, None),
    };
    let all_digits = |p: &str| p.bytes().all(|b| b.is_ascii_digit());
    let mantissa_ok = match frac_part {
        Some(frac) => {
            all_digits(int_part) && all_digits(frac) && (!int_part.is_empty() || !frac.is_empty())
        }
        None => !int_part.is_empty() && all_digits(int_part),
    };
    let exponent_ok = match exponent {
        None => frac_part.is_some(),
        Some(e) => {
            let e = e.strip_prefix(['-', '+']).unwrap_or(e);
            !e.is_empty() && all_digits(e)
        }
    };
    mantissa_ok && exponent_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn scalars_resolve_with_the_core_schema() {
        assert!(matches!(resolve_plain("42"), Value::Int(42)));
        assert!(matches!(resolve_plain("-7"), Value::Int(-7)));
        assert!(matches!(resolve_plain("0x1f"), Value::Int(31)));
        assert!(matches!(resolve_plain("1.5"), Value::Float(f) if f == 1.5));
        assert!(matches!(resolve_plain("1e3"), Value::Float(f) if f == 1000.0));
        assert!(matches!(resolve_plain("true"), Value::Bool(true)));
        assert!(matches!(resolve_plain("~"), Value::Null));
        assert!(matches!(resolve_plain("1.2.3"), Value::Str(_)));
        assert!(
            matches!(resolve_plain("yes"), Value::Str(_)),
            "YAML 1.2: yes is a string"
        );
        assert!(matches!(resolve_plain("10s"), Value::Str(_)));
    }

    #[test]
    fn nodes_carry_line_and_column() {
        let root = parse("a: 1\nb:\n  c: [x, 'y']\n", &no_env).unwrap();
        let c = root.get("b").unwrap().get("c").unwrap();
        assert_eq!(c.mark, Mark { line: 3, col: 6 });
        let Value::Seq(items) = &c.value else {
            panic!()
        };
        assert!(matches!(&items[1].value, Value::Str(s) if s == "y"));
        assert_eq!(items[1].mark, Mark { line: 3, col: 10 });
    }

    #[test]
    fn quoted_scalars_stay_strings() {
        let root = parse("a: '42'\nb: !!str true\n", &no_env).unwrap();
        assert!(matches!(&root.get("a").unwrap().value, Value::Str(s) if s == "42"));
        assert!(matches!(&root.get("b").unwrap().value, Value::Str(s) if s == "true"));
    }

    #[test]
    fn duplicate_keys_are_reported() {
        let errors = parse("a: 1\na: 2\n", &no_env).unwrap_err();
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].mark, Some(Mark { line: 2, col: 1 }));
        assert!(errors[0].message.contains("appears twice"));
    }

    #[test]
    fn anchors_and_merge_keys_work() {
        let root = parse("base: &b {x: 1, y: 2}\nuse:\n  <<: *b\n  y: 3\n", &no_env).unwrap();
        let json = root.get("use").unwrap().to_json();
        assert_eq!(json, serde_json::json!({"y": 3, "x": 1}));
    }

    #[test]
    fn interpolated_plain_scalars_are_typed_after_substitution() {
        let env = |name: &str| (name == "N").then(|| "5".to_string());
        let root = parse("n: ${N}\ns: '${N}'\n", &env).unwrap();
        let n = root.get("n").unwrap();
        assert!(matches!(n.value, Value::Int(5)));
        assert!(n.from_env);
        assert!(matches!(&root.get("s").unwrap().value, Value::Str(s) if s == "5"));
    }

    #[test]
    fn syntax_errors_have_a_position() {
        let errors = parse("a: [1, 2\nb: 3\n", &no_env).unwrap_err();
        assert!(errors[0].mark.is_some());
        assert!(errors[0].message.contains("not valid YAML"));
    }
}
