//! Configuration errors that say what is wrong, where, and what to do.

use std::fmt;
use std::path::PathBuf;

use crate::redact::redact;

/// A position in the pipeline file, both 1-based.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, PartialOrd, Ord)]
pub struct Mark {
    pub line: usize,
    pub col: usize,
}

/// One problem found in a pipeline file.
#[derive(Debug, Clone, PartialEq)]
pub struct Diagnostic {
    pub mark: Option<Mark>,
    /// The key path, e.g. `sink.table` or `table.primary_key[0]`.
    pub path: String,
    pub message: String,
    pub hint: Option<String>,
}

impl Diagnostic {
    pub fn new(
        mark: Option<Mark>,
        path: &str,
        message: impl Into<String>,
        hint: Option<String>,
    ) -> Self {
        Diagnostic {
            mark,
            path: path.to_string(),
            message: message.into(),
            hint,
        }
    }
}

/// Every problem found in one pipeline file, rendered with the offending lines.
#[derive(Debug)]
pub struct ConfigError {
    pub file: PathBuf,
    pub source_text: String,
    pub diagnostics: Vec<Diagnostic>,
}

impl ConfigError {
    pub fn single(file: PathBuf, message: impl Into<String>, hint: Option<String>) -> Self {
        ConfigError {
            file,
            source_text: String::new(),
            diagnostics: vec![Diagnostic::new(None, "", message, hint)],
        }
    }
}

impl std::error::Error for ConfigError {}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lines: Vec<&str> = self.source_text.lines().collect();
        let file = self.file.display();
        let count = self.diagnostics.len();
        for (i, d) in self.diagnostics.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            let location = match d.mark {
                Some(m) => format!("{file}:{}:{}", m.line, m.col),
                None => file.to_string(),
            };
            if d.path.is_empty() {
                writeln!(f, "error: {}", redact(&d.message))?;
            } else {
                writeln!(f, "error: {}: {}", d.path, redact(&d.message))?;
            }
            writeln!(f, "  --> {location}")?;
            if let Some(mark) = d.mark
                && let Some(line) = lines.get(mark.line.saturating_sub(1))
            {
                let gutter = mark.line.to_string().len();
                writeln!(f, "{:gutter$} |", "")?;
                writeln!(f, "{} | {}", mark.line, redact(line))?;
                let caret_at = mark.col.saturating_sub(1).min(line.chars().count());
                writeln!(f, "{:gutter$} | {:caret_at$}^", "", "")?;
            }
            if let Some(hint) = &d.hint {
                writeln!(f, "  = hint: {}", redact(hint))?;
            }
        }
        if count > 1 {
            write!(f, "\n{count} errors in {file}")?;
        }
        Ok(())
    }
}

/// The closest candidate to a misspelt word, if one is close enough to be a likely typo.
pub fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let word_lower = word.to_ascii_lowercase();
    candidates
        .into_iter()
        .map(|c| {
            (
                c,
                strsim::jaro_winkler(&word_lower, &c.to_ascii_lowercase()),
            )
        })
        .filter(|(_, score)| *score >= 0.8)
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(c, _)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions_only_for_close_words() {
        let keys = ["path", "format", "type"];
        assert_eq!(did_you_mean("pth", keys), Some("path"));
        assert_eq!(did_you_mean("fromat", keys), Some("format"));
        assert_eq!(did_you_mean("Path", keys), Some("path"));
        assert_eq!(did_you_mean("brokers", keys), None);
    }

    #[test]
    fn rendering_shows_file_line_column_and_redacts() {
        let err = ConfigError {
            file: "p.yaml".into(),
            source_text: "a: 1\nurl: postgres://u:pw@h/db\n".into(),
            diagnostics: vec![Diagnostic::new(
                Some(Mark { line: 2, col: 6 }),
                "url",
                "bad value postgres://u:pw@h/db",
                Some("fix it".into()),
            )],
        };
        let text = err.to_string();
        assert!(text.contains("--> p.yaml:2:6"), "{text}");
        assert!(
            text.contains("error: url: bad value postgres://u:***@h/db"),
            "{text}"
        );
        assert!(text.contains("2 | url: postgres://u:***@h/db"), "{text}");
        assert!(!text.contains("pw"), "{text}");
        assert!(text.contains("= hint: fix it"));
    }
}
