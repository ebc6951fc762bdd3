//! Structural validation of a pipeline file against the JSON Schema of the format.
//!
//! The schema is generated from the config structs (`weir schema` prints the same one), so
//! the structs stay the single source of truth. This walker implements the subset of JSON
//! Schema that schemars emits, and reports every problem with its position, instead of the
//! first one serde meets. Two things it does better than a generic validator: a tagged union
//! (`source: {type: file, ...}`) is checked against the branch its `type` names, rather than
//! reporting "matches none of the alternatives"; and misspelt keys and values get a
//! did-you-mean hint.

use serde_json::{Map, Value as Json};

use super::diagnostic::{Diagnostic, did_you_mean};
use super::yaml::{Node, PathSegment, Value, render_path};

/// A checker for a string `format` (e.g. `duration`): `Err((message, hint))` when invalid.
pub type FormatCheck = fn(&str, &str) -> Option<Result<(), (String, Option<String>)>>;

pub fn validate(root: &Node, schema: &Json, format_check: FormatCheck) -> Vec<Diagnostic> {
    let mut v = Validator {
        root_schema: schema,
        diagnostics: Vec::new(),
        format_check,
    };
    v.check(root, schema, &mut Vec::new());
    v.diagnostics
}

struct Validator<'s> {
    root_schema: &'s Json,
    diagnostics: Vec<Diagnostic>,
    format_check: FormatCheck,
}

impl<'s> Validator<'s> {
    fn resolve(&self, schema: &'s Json) -> &'s Json {
        let mut schema = schema;
        // `#/$defs/Name` is the only form of reference schemars produces.
        while let Some(reference) = schema.get("$ref").and_then(Json::as_str) {
            let Some(name) = reference.strip_prefix("#/$defs/") else {
                break;
            };
            match self.root_schema.get("$defs").and_then(|d| d.get(name)) {
                Some(target) => schema = target,
                None => break,
            }
        }
        schema
    }

    fn report(&mut self, node: &Node, path: &[PathSegment], message: String, hint: Option<String>) {
        self.diagnostics.push(Diagnostic::new(
            Some(node.mark),
            &render_path(path),
            message,
            hint,
        ));
    }

    fn check(&mut self, node: &Node, schema: &'s Json, path: &mut Vec<PathSegment>) {
        let schema = self.resolve(schema);
        if let Some(alternatives) = schema
            .get("oneOf")
            .or_else(|| schema.get("anyOf"))
            .and_then(Json::as_array)
        {
            self.check_alternatives(node, alternatives, path);
            return;
        }
        if let Some(constant) = schema.get("const") {
            self.check_enum(node, std::slice::from_ref(constant), path);
            return;
        }
        if let Some(values) = schema.get("enum").and_then(Json::as_array) {
            self.check_enum(node, values, path);
            return;
        }
        if !self.check_type(node, schema, path) {
            return;
        }
        match &node.value {
            Value::Map(_) => self.check_object(node, schema, path),
            Value::Seq(items) => {
                if let Some(min) = schema.get("minItems").and_then(Json::as_u64)
                    && (items.len() as u64) < min
                {
                    self.report(
                        node,
                        path,
                        format!("needs at least {min} item(s), found {}", items.len()),
                        None,
                    );
                }
                if let Some(item_schema) = schema.get("items") {
                    for (i, item) in items.iter().enumerate() {
                        path.push(PathSegment::Index(i));
                        self.check(item, item_schema, path);
                        path.pop();
                    }
                }
            }
            Value::Int(i) => {
                if let Some(min) = schema.get("minimum").and_then(Json::as_f64)
                    && (*i as f64) < min
                {
                    self.report(
                        node,
                        path,
                        format!("must be at least {min}, found {i}"),
                        None,
                    );
                }
                if let Some(max) = schema.get("maximum").and_then(Json::as_f64)
                    && (*i as f64) > max
                {
                    self.report(
                        node,
                        path,
                        format!("must be at most {max}, found {i}"),
                        None,
                    );
                }
            }
            Value::Str(s) => {
                if let Some(min) = schema.get("minLength").and_then(Json::as_u64)
                    && (s.chars().count() as u64) < min
                {
                    self.report(node, path, "must not be empty".into(), None);
                }
                if let Some(format) = schema.get("format").and_then(Json::as_str)
                    && let Some(Err((message, hint))) = (self.format_check)(format, s)
                {
                    let message = if node.from_env {
                        format!("the value from the environment is not valid here: {message}")
                    } else {
                        message
                    };
                    self.report(node, path, message, hint);
                }
            }
            _ => {}
        }
    }

    /// Returns false when the node's type is wrong (and reports it).
    fn check_type(&mut self, node: &Node, schema: &Json, path: &[PathSegment]) -> bool {
        let Some(expected) = schema.get("type") else {
            return true;
        };
        let types: Vec<&str> = match expected {
            Json::String(t) => vec![t.as_str()],
            Json::Array(ts) => ts.iter().filter_map(Json::as_str).collect(),
            _ => return true,
        };
        let ok = types.iter().any(|t| {
            matches!(
                (*t, &node.value),
                ("null", Value::Null)
                    | ("boolean", Value::Bool(_))
                    | ("integer", Value::Int(_))
                    | ("number", Value::Int(_) | Value::Float(_))
                    | ("string", Value::Str(_))
                    | ("array", Value::Seq(_))
                    | ("object", Value::Map(_))
            )
        });
        if !ok {
            let wanted = types
                .iter()
                .filter(|t| **t != "null")
                .map(|t| type_phrase(t))
                .collect::<Vec<_>>()
                .join(" or ");
            let found = describe(node);
            let hint = match (types.first().copied(), &node.value) {
                (Some("string"), Value::Int(_) | Value::Float(_) | Value::Bool(_)) => {
                    Some("quote the value to make it a string".to_string())
                }
                (Some("boolean"), Value::Str(s)) if is_boolean_word(s) => {
                    Some("write `true` or `false` (YAML 1.2 reads yes/no/on/off as strings)".into())
                }
                (Some("array"), Value::Str(_)) => Some("write a list: `[a, b]`".into()),
                (Some("integer"), Value::Str(_)) => {
                    Some("write a plain number without quotes".into())
                }
                _ => None,
            };
            self.report(
                node,
                path,
                format!("expected {wanted}, found {found}"),
                hint,
            );
        }
        ok
    }

    fn check_object(&mut self, node: &Node, schema: &'s Json, path: &mut Vec<PathSegment>) {
        let Value::Map(entries) = &node.value else {
            return;
        };
        let properties: Option<&'s Map<String, Json>> =
            schema.get("properties").and_then(Json::as_object);
        let known_keys = || {
            properties
                .into_iter()
                .flat_map(|p| p.keys().map(String::as_str))
        };
        let additional = schema.get("additionalProperties");
        for entry in entries {
            path.push(PathSegment::Key(entry.key.clone()));
            match properties.and_then(|p| p.get(&entry.key)) {
                Some(property_schema) => self.check(&entry.value, property_schema, path),
                None => match additional {
                    Some(Json::Bool(false)) => {
                        let parent = path.len() > 1;
                        let hint = did_you_mean(&entry.key, known_keys())
                            .map(|k| format!("did you mean `{k}`?"))
                            .or_else(|| {
                                let mut keys: Vec<&str> = known_keys().collect();
                                keys.sort();
                                Some(format!("known keys here: {}", keys.join(", ")))
                            });
                        let place = if parent {
                            format!(" in `{}`", render_path(&path[..path.len() - 1]))
                        } else {
                            String::new()
                        };
                        self.diagnostics.push(Diagnostic::new(
                            Some(entry.key_mark),
                            &render_path(path),
                            format!("unknown key `{}`{place}", entry.key),
                            hint,
                        ));
                    }
                    Some(value_schema @ Json::Object(_)) => {
                        self.check(&entry.value, value_schema, path)
                    }
                    _ => {}
                },
            }
            path.pop();
        }
        if let Some(required) = schema.get("required").and_then(Json::as_array) {
            for key in required.iter().filter_map(Json::as_str) {
                if !entries.iter().any(|e| e.key == key) {
                    let what = properties
                        .and_then(|p| p.get(key))
                        .map(|p| self.resolve(p))
                        .and_then(|p| p.get("description"))
                        .and_then(Json::as_str)
                        .map(|d| first_sentence(d).to_string());
                    path.push(PathSegment::Key(key.to_string()));
                    let location = if path.len() > 1 {
                        format!(" in `{}`", render_path(&path[..path.len() - 1]))
                    } else {
                        String::new()
                    };
                    self.report(
                        node,
                        path,
                        format!("missing required key `{key}`{location}"),
                        what.map(|w| format!("`{key}`: {w}")),
                    );
                    path.pop();
                }
            }
        }
    }

    fn check_enum(&mut self, node: &Node, allowed: &[Json], path: &[PathSegment]) {
        let json = node.to_json();
        if allowed.contains(&json) {
            return;
        }
        let names: Vec<&str> = allowed.iter().filter_map(Json::as_str).collect();
        let listing = names
            .iter()
            .map(|n| format!("`{n}`"))
            .collect::<Vec<_>>()
            .join(", ");
        let hint = match &node.value {
            Value::Str(s) if !node.from_env => did_you_mean(s, names.iter().copied())
                .map(|n| format!("did you mean `{n}`?"))
                .or_else(|| Some(format!("expected one of {listing}"))),
            _ => Some(format!("expected one of {listing}")),
        };
        self.report(
            node,
            path,
            format!("{} is not allowed here", describe(node)),
            hint,
        );
    }

    fn check_alternatives(
        &mut self,
        node: &Node,
        alternatives: &'s [Json],
        path: &mut Vec<PathSegment>,
    ) {
        let non_null: Vec<&'s Json> = alternatives
            .iter()
            .map(|a| self.resolve(a))
            .filter(|a| a.get("type").and_then(Json::as_str) != Some("null"))
            .collect();
        let null_allowed = non_null.len() < alternatives.len();
        if matches!(node.value, Value::Null) && null_allowed {
            return;
        }
        // A unit enum: every branch is a constant.
        if !non_null.is_empty() && non_null.iter().all(|a| a.get("const").is_some()) {
            let values: Vec<Json> = non_null.iter().map(|a| a["const"].clone()).collect();
            self.check_enum(node, &values, path);
            return;
        }
        if non_null.len() == 1 {
            self.check(node, non_null[0], path);
            return;
        }
        if let Some(tag) = discriminator(&non_null) {
            self.check_tagged(node, &non_null, &tag, path);
            return;
        }
        // No structure to exploit: accept the first branch that fits.
        let before = self.diagnostics.len();
        for alternative in &non_null {
            let mut probe = Validator {
                root_schema: self.root_schema,
                diagnostics: Vec::new(),
                format_check: self.format_check,
            };
            probe.check(node, alternative, path);
            if probe.diagnostics.is_empty() {
                return;
            }
        }
        self.diagnostics.truncate(before);
        self.report(
            node,
            path,
            format!("{} does not fit any allowed form", describe(node)),
            None,
        );
    }

    fn check_tagged(
        &mut self,
        node: &Node,
        branches: &[&'s Json],
        tag: &str,
        path: &mut Vec<PathSegment>,
    ) {
        let tags: Vec<&str> = branches
            .iter()
            .filter_map(|b| b["properties"][tag]["const"].as_str())
            .collect();
        let listing = tags
            .iter()
            .map(|t| format!("`{t}`"))
            .collect::<Vec<_>>()
            .join(", ");
        let Value::Map(_) = &node.value else {
            self.report(
                node,
                path,
                format!("expected a mapping, found {}", describe(node)),
                Some(format!("start with `{tag}:` set to one of {listing}")),
            );
            return;
        };
        let Some(tag_node) = node.get(tag) else {
            self.report(
                node,
                path,
                format!("missing required key `{tag}` in `{}`", render_path(path)),
                Some(format!("set `{tag}` to one of {listing}")),
            );
            return;
        };
        let chosen = match &tag_node.value {
            Value::Str(s) => branches
                .iter()
                .find(|b| b["properties"][tag]["const"].as_str() == Some(s)),
            _ => None,
        };
        match chosen {
            Some(branch) => self.check(node, branch, path),
            None => {
                path.push(PathSegment::Key(tag.to_string()));
                let hint = match &tag_node.value {
                    Value::Str(s) if !tag_node.from_env => did_you_mean(s, tags.iter().copied())
                        .map(|t| format!("did you mean `{t}`?")),
                    _ => None,
                }
                .or_else(|| Some(format!("expected one of {listing}")));
                self.report(
                    tag_node,
                    path,
                    format!("{} is not a known `{tag}` here", describe(tag_node)),
                    hint,
                );
                path.pop();
            }
        }
    }
}

/// The property every branch pins to a constant, if there is one (`type` for our unions).
fn discriminator(branches: &[&Json]) -> Option<String> {
    let first = branches.first()?.get("properties")?.as_object()?;
    first
        .iter()
        .filter(|(_, s)| s.get("const").is_some())
        .map(|(k, _)| k.clone())
        .find(|k| {
            branches
                .iter()
                .all(|b| b["properties"][k.as_str()].get("const").is_some())
        })
}

fn type_phrase(t: &str) -> &'static str {
    match t {
        "boolean" => "a boolean",
        "integer" => "an integer",
        "number" => "a number",
        "string" => "a string",
        "array" => "a list",
        "object" => "a mapping",
        _ => "null",
    }
}

/// How a value is shown in a message. Values that came from the environment may be
/// secrets, so only their type is shown.
fn describe(node: &Node) -> String {
    if node.from_env {
        return format!("{} (from the environment)", node.value.kind());
    }
    match &node.value {
        Value::Str(s) if s.chars().count() <= 60 => format!("the string \"{s}\""),
        Value::Int(i) => format!("the integer {i}"),
        Value::Bool(b) => format!("the boolean {b}"),
        Value::Float(f) => format!("the number {f}"),
        other => other.kind().to_string(),
    }
}

fn is_boolean_word(s: &str) -> bool {
    matches!(
        s.to_ascii_lowercase().as_str(),
        "yes" | "no" | "on" | "off" | "y" | "n" | "true" | "false"
    )
}

fn first_sentence(text: &str) -> &str {
    let text = text.trim();
    match text.find(". ") {
        Some(i) => &text[..=i],
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::yaml::parse;
    use serde_json::json;

    fn no_formats(_: &str, _: &str) -> Option<Result<(), (String, Option<String>)>> {
        None
    }

    fn run(yaml: &str, schema: Json) -> Vec<Diagnostic> {
        let root = parse(yaml, &|_| None).unwrap();
        validate(&root, &schema, no_formats)
    }

    fn schema() -> Json {
        json!({
            "type": "object",
            "properties": {
                "name": {"type": "string", "description": "The pipeline name. More."},
                "count": {"type": ["integer", "null"], "minimum": 1},
                "mode": {"$ref": "#/$defs/Mode"},
                "source": {"$ref": "#/$defs/Source"},
            },
            "additionalProperties": false,
            "required": ["name", "source"],
            "$defs": {
                "Mode": {"oneOf": [{"type": "string", "const": "changelog"}, {"type": "string", "const": "final"}]},
                "Source": {"oneOf": [
                    {"type": "object", "properties": {"type": {"const": "file"}, "path": {"type": "string"}},
                     "additionalProperties": false, "required": ["type", "path"]},
                    {"type": "object", "properties": {"type": {"const": "kafka"}, "brokers": {"type": "string"}},
                     "additionalProperties": false, "required": ["type", "brokers"]},
                ]}
            }
        })
    }

    #[test]
    fn a_valid_file_has_no_diagnostics() {
        assert!(
            run(
                "name: a\nsource: {type: file, path: x}\nmode: final\n",
                schema()
            )
            .is_empty()
        );
    }

    #[test]
    fn reports_every_problem_at_once_with_positions() {
        let d = run(
            "nmae: a\ncount: 0\nmode: finale\nsource:\n  type: file\n  pth: x\n",
            schema(),
        );
        let messages: Vec<String> = d
            .iter()
            .map(|d| format!("{} {}", d.path, d.message))
            .collect();
        assert_eq!(d.len(), 6, "{messages:#?}");
        assert!(messages.contains(&"nmae unknown key `nmae`".to_string()));
        assert_eq!(d[0].hint.as_deref(), Some("did you mean `name`?"));
        assert!(messages.contains(&"count must be at least 1, found 0".to_string()));
        let mode = d.iter().find(|d| d.path == "mode").unwrap();
        assert_eq!(mode.hint.as_deref(), Some("did you mean `final`?"));
        assert_eq!(mode.mark.unwrap().line, 3);
        let pth = d.iter().find(|d| d.path == "source.pth").unwrap();
        assert_eq!(pth.message, "unknown key `pth` in `source`");
        assert_eq!(pth.mark.unwrap().line, 6);
        assert_eq!(pth.mark.unwrap().col, 3);
        assert!(
            messages.contains(&"source.path missing required key `path` in `source`".to_string())
        );
        let name = d.iter().find(|d| d.path == "name").unwrap();
        assert_eq!(name.message, "missing required key `name`");
        assert_eq!(name.hint.as_deref(), Some("`name`: The pipeline name."));
    }

    #[test]
    fn tagged_unions_check_the_named_branch() {
        let d = run("name: a\nsource: {type: kafak, brokers: b}\n", schema());
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].path, "source.type");
        assert_eq!(d[0].hint.as_deref(), Some("did you mean `kafka`?"));

        let d = run("name: a\nsource: {type: kafka, path: b}\n", schema());
        let paths: Vec<&str> = d.iter().map(|d| d.path.as_str()).collect();
        assert_eq!(paths, ["source.path", "source.brokers"]);

        let d = run("name: a\nsource: {path: b}\n", schema());
        assert_eq!(d[0].message, "missing required key `type` in `source`");
        assert_eq!(
            d[0].hint.as_deref(),
            Some("set `type` to one of `file`, `kafka`")
        );
    }

    #[test]
    fn wrong_types_say_what_was_expected_and_found() {
        let d = run("name: 5\nsource: {type: file, path: [a]}\n", schema());
        assert_eq!(d[0].message, "expected a string, found the integer 5");
        assert_eq!(
            d[0].hint.as_deref(),
            Some("quote the value to make it a string")
        );
        assert_eq!(d[1].message, "expected a string, found a list");
    }

    #[test]
    fn values_from_the_environment_are_never_echoed() {
        let root = parse(
            "name: ${SECRET}\nsource: {type: file, path: x}\nmode: ${SECRET}\n",
            &|_| Some("hunter2".into()),
        )
        .unwrap();
        let d = validate(&root, &schema(), no_formats);
        assert_eq!(d.len(), 1);
        let text = format!("{d:?}");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(d[0].message.contains("from the environment"));
    }
}
