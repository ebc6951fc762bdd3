//! `${VAR}` and `${VAR:-default}` interpolation inside YAML scalar values.
//!
//! Interpolation runs on values after YAML parsing (never on the raw text), so positions in
//! error messages still point at the file the user wrote, and a variable cannot inject YAML
//! structure. `$$` writes a literal `$`.

#[derive(Debug)]
pub struct Interpolated {
    pub text: String,
    /// True when at least one variable (or its default) was substituted.
    pub substituted: bool,
}

#[derive(Debug)]
pub struct InterpolationError {
    pub message: String,
    pub hint: Option<String>,
}

pub fn interpolate(
    input: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Interpolated, InterpolationError> {
    if !input.contains('$') {
        return Ok(Interpolated {
            text: input.to_string(),
            substituted: false,
        });
    }
    let mut out = String::with_capacity(input.len());
    let mut substituted = false;
    let mut rest = input;
    while let Some(dollar) = rest.find('$') {
        out.push_str(&rest[..dollar]);
        let after = &rest[dollar + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
            continue;
        }
        let Some(body_and_tail) = after.strip_prefix('{') else {
            out.push('$');
            rest = after;
            continue;
        };
        let Some(close) = body_and_tail.find('}') else {
            return Err(InterpolationError {
                message: "`${` is not closed with `}`".into(),
                hint: Some("write `${NAME}`, `${NAME:-default}`, or `$$` for a literal `$`".into()),
            });
        };
        let body = &body_and_tail[..close];
        let (name, default) = match body.find(":-") {
            Some(i) => (&body[..i], Some(&body[i + 2..])),
            None => (body, None),
        };
        if name.is_empty()
            || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            || name.as_bytes()[0].is_ascii_digit()
        {
            return Err(InterpolationError {
                message: format!("`${{{body}}}` is not a valid variable reference"),
                hint: Some(
                    "variable names use letters, digits and `_` and do not start with a digit"
                        .into(),
                ),
            });
        }
        match (env(name), default) {
            (Some(value), _) => out.push_str(&value),
            (None, Some(default)) => out.push_str(default),
            (None, None) => {
                return Err(InterpolationError {
                    message: format!("environment variable `{name}` is not set"),
                    hint: Some(format!(
                        "export {name}=..., or give a default with `${{{name}:-default}}`"
                    )),
                });
            }
        }
        substituted = true;
        rest = &body_and_tail[close + 1..];
    }
    out.push_str(rest);
    Ok(Interpolated {
        text: out,
        substituted,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "HOST" => Some("db.internal".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    fn run(s: &str) -> Result<String, String> {
        interpolate(s, &env).map(|i| i.text).map_err(|e| e.message)
    }

    #[test]
    fn substitutes_set_variables_and_defaults() {
        assert_eq!(run("pg://${HOST}:5432").unwrap(), "pg://db.internal:5432");
        assert_eq!(run("${PORT:-5432}").unwrap(), "5432");
        assert_eq!(run("${HOST:-other}").unwrap(), "db.internal");
        assert_eq!(
            run("[${EMPTY}]").unwrap(),
            "[]",
            "a set but empty variable is used as is"
        );
        assert_eq!(run("${MISSING:-}").unwrap(), "");
    }

    #[test]
    fn leaves_plain_dollars_and_escapes_alone() {
        assert_eq!(run("cost $5").unwrap(), "cost $5");
        assert_eq!(run("$${HOST}").unwrap(), "${HOST}");
        assert!(!interpolate("no vars", &env).unwrap().substituted);
        assert!(interpolate("${HOST}", &env).unwrap().substituted);
    }

    #[test]
    fn a_missing_variable_without_default_names_it() {
        let err = run("${PG_PASSWORD}").unwrap_err();
        assert!(err.contains("`PG_PASSWORD` is not set"), "{err}");
    }

    #[test]
    fn malformed_references_are_errors() {
        assert!(run("${HOST").unwrap_err().contains("not closed"));
        assert!(run("${1X}").unwrap_err().contains("not a valid"));
        assert!(run("${A-B}").unwrap_err().contains("not a valid"));
    }
}
