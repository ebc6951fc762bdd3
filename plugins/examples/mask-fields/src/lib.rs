//! mask-fields: hashes or redacts the listed text columns in `before` and `after`.
//!
//! ```yaml
//! transforms:
//!   - name: mask-pii
//!     wasm: plugins/examples/mask-fields/mask_fields.wasm
//!     config: { fields: [email, phone], method: sha256 }   # or redact, or null
//! ```
//!
//! `sha256` replaces a value with the hex SHA-256 of `salt` + value (so equal values stay
//! joinable), `redact` with `replacement` (default `***`), `null` with null. Nulls stay
//! null. It works on whole Arrow columns (the batch API): a listed column that is missing
//! or not text fails the batch with a message naming it.

use std::sync::Arc;

use serde::Deserialize;
use sha2::{Digest, Sha256};
use weir_plugin::arrow_array::builder::StringBuilder;
use weir_plugin::arrow_array::cast::AsArray;
use weir_plugin::arrow_array::{Array, ArrayRef, RecordBatch, StructArray, new_null_array};
use weir_plugin::arrow_schema::DataType;
use weir_plugin::envelope::{self, AFTER, BEFORE};
use weir_plugin::{JsonValue, Output, Transform, typed_config};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    fields: Vec<String>,
    #[serde(default)]
    method: Method,
    #[serde(default)]
    salt: String,
    #[serde(default = "default_replacement")]
    replacement: String,
}

fn default_replacement() -> String {
    "***".into()
}

#[derive(Debug, Default, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Method {
    #[default]
    Sha256,
    Redact,
    Null,
}

pub struct MaskFields {
    config: Config,
}

impl Transform for MaskFields {
    fn init(config: &JsonValue) -> Result<Self, String> {
        let config: Config = typed_config(config)?;
        if config.fields.is_empty() {
            return Err("`fields` lists no column to mask".into());
        }
        Ok(MaskFields { config })
    }

    fn transform(&mut self, batch: RecordBatch) -> Result<Output, String> {
        let before = self.mask_image(envelope::image(&batch, BEFORE)?)?;
        let after = self.mask_image(envelope::image(&batch, AFTER)?)?;
        Ok(Output::rows(envelope::with_images(&batch, before, after)?))
    }
}

impl MaskFields {
    fn mask_image(&self, image: &StructArray) -> Result<StructArray, String> {
        let mut image = image.clone();
        for name in &self.config.fields {
            let column = image
                .column_by_name(name)
                .ok_or_else(|| format!("mask-fields: the rows have no column `{name}`"))?;
            let masked = self.mask_column(name, column)?;
            image = envelope::replace_field(&image, name, masked)?;
        }
        Ok(image)
    }

    fn mask_column(&self, name: &str, column: &ArrayRef) -> Result<ArrayRef, String> {
        if column.data_type() != &DataType::Utf8 {
            return Err(format!(
                "mask-fields: column `{name}` is {}, not text",
                column.data_type()
            ));
        }
        let values = column.as_string::<i32>();
        Ok(match self.config.method {
            Method::Null => new_null_array(&DataType::Utf8, values.len()),
            Method::Redact => {
                let mut out = StringBuilder::with_capacity(values.len(), values.len() * 3);
                for value in values.iter() {
                    out.append_option(value.map(|_| self.config.replacement.as_str()));
                }
                Arc::new(out.finish())
            }
            Method::Sha256 => {
                let mut out = StringBuilder::with_capacity(values.len(), values.len() * 64);
                let mut hex = [0u8; 64];
                for value in values.iter() {
                    match value {
                        Some(value) => {
                            let digest = Sha256::new()
                                .chain_update(self.config.salt.as_bytes())
                                .chain_update(value.as_bytes())
                                .finalize();
                            out.append_value(to_hex(&digest, &mut hex));
                        }
                        None => out.append_null(),
                    }
                }
                Arc::new(out.finish())
            }
        })
    }
}

fn to_hex<'a>(bytes: &[u8], out: &'a mut [u8; 64]) -> &'a str {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in bytes.iter().enumerate() {
        out[2 * i] = DIGITS[(b >> 4) as usize];
        out[2 * i + 1] = DIGITS[(b & 15) as usize];
    }
    std::str::from_utf8(&out[..bytes.len() * 2]).expect("hex is ASCII")
}

weir_plugin::export_transform!(MaskFields);

#[cfg(test)]
mod tests {
    use serde_json::json;
    use weir_plugin::arrow_schema::DataType;
    use weir_plugin::testing::{ChangeBatchBuilder, column, run_transform};

    use super::*;

    fn batch() -> RecordBatch {
        ChangeBatchBuilder::new(vec![
            column("id", DataType::Int64),
            column("email", DataType::Utf8),
        ])
        .change(
            "c",
            None,
            Some(json!({"id": 1, "email": "ada@example.org"})),
        )
        .change(
            "u",
            Some(json!({"id": 2, "email": "bob@example.org"})),
            Some(json!({"id": 2, "email": null})),
        )
        .build()
    }

    fn emails(output: &Output, image: &str) -> Vec<Option<String>> {
        let image = envelope::image(&output.batch, image).unwrap();
        let emails = image.column_by_name("email").unwrap().as_string::<i32>();
        emails.iter().map(|v| v.map(str::to_string)).collect()
    }

    #[test]
    fn sha256_hashes_both_images_and_keeps_nulls() {
        let output = run_transform::<MaskFields>(json!({"fields": ["email"]}), &batch()).unwrap();
        let after = emails(&output, AFTER);
        // sha256("ada@example.org"), computed independently (sha256sum).
        assert_eq!(
            after[0].as_deref(),
            Some("cfe00dde46ef942601ffafb9e2825e802858b460e586b8305b344c1eb826357d")
        );
        assert_eq!(after[1], None, "a null stays null");
        let before = emails(&output, BEFORE);
        assert_eq!(before[0], None, "an absent image stays absent");
        assert_eq!(before[1].as_ref().unwrap().len(), 64);
        // The same value hashes the same; a salt changes it.
        let again = run_transform::<MaskFields>(json!({"fields": ["email"]}), &batch()).unwrap();
        assert_eq!(emails(&again, AFTER), after);
        let salted =
            run_transform::<MaskFields>(json!({"fields": ["email"], "salt": "s"}), &batch())
                .unwrap();
        assert_ne!(emails(&salted, AFTER)[0], after[0]);
    }

    #[test]
    fn redact_and_null_replace_values() {
        let redacted = run_transform::<MaskFields>(
            json!({"fields": ["email"], "method": "redact", "replacement": "<hidden>"}),
            &batch(),
        )
        .unwrap();
        assert_eq!(
            emails(&redacted, AFTER),
            vec![Some("<hidden>".into()), None]
        );
        let nulled =
            run_transform::<MaskFields>(json!({"fields": ["email"], "method": "null"}), &batch())
                .unwrap();
        assert_eq!(emails(&nulled, BEFORE), vec![None, None]);
    }

    #[test]
    fn mistakes_are_named() {
        let error =
            run_transform::<MaskFields>(json!({"fields": ["phone"]}), &batch()).unwrap_err();
        assert!(error.contains("no column `phone`"), "{error}");
        let error = run_transform::<MaskFields>(json!({"fields": ["id"]}), &batch()).unwrap_err();
        assert!(error.contains("column `id` is Int64, not text"), "{error}");
        let error =
            run_transform::<MaskFields>(json!({"fields": ["email"], "method": "rot13"}), &batch())
                .unwrap_err();
        assert!(error.contains("invalid plugin config"), "{error}");
    }
}
