//! The core tables' schemas, kept as JSON under `schemas/` and parsed into Arrow schemas, so
//! operators and documentation share one definition.

use arrow_schema::{DataType, Field, Schema};
use std::str::FromStr;

const TABLES: &[(&str, &str)] = &[
    ("prompts", include_str!("../schemas/prompts.json")),
    ("rollouts", include_str!("../schemas/rollouts.json")),
    ("verified", include_str!("../schemas/verified.json")),
    ("step_scores", include_str!("../schemas/step_scores.json")),
    ("step_labels", include_str!("../schemas/step_labels.json")),
    ("selected", include_str!("../schemas/selected.json")),
    ("metrics", include_str!("../schemas/metrics.json")),
    ("eval_samples", include_str!("../schemas/eval_samples.json")),
];

#[derive(serde::Deserialize)]
struct TableDoc {
    table: String,
    columns: Vec<ColumnDoc>,
}

#[derive(serde::Deserialize)]
struct ColumnDoc {
    name: String,
    #[serde(rename = "type")]
    data_type: String,
    nullable: bool,
}

/// A schema file that does not parse, named by its path.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("schemas/{table}.json: {err}")]
    Json { table: String, err: serde_json::Error },
    #[error("schemas/{table}.json: column {column}: {err}")]
    Type { table: String, column: String, err: arrow_schema::ArrowError },
}

/// The Arrow schema of a core table, or None for an unknown name.
pub fn table(name: &str) -> Option<Result<Schema, SchemaError>> {
    let (_, text) = TABLES.iter().find(|(n, _)| *n == name)?;
    Some(parse(name, text))
}

/// A core table's schema as an operator produces it: without the `iteration` column, which
/// the engine adds. Panics on a broken schema file (a unit test parses them all).
pub fn operator_output(name: &str) -> arrow_schema::SchemaRef {
    let s = table(name).unwrap_or_else(|| panic!("no schema `{name}`")).unwrap_or_else(|e| panic!("{e}"));
    std::sync::Arc::new(Schema::new(s.fields().iter().filter(|f| f.name() != "iteration").cloned().collect::<Vec<_>>()))
}

/// `name`: the file's name under `schemas/`, without `.json`.
fn parse(name: &str, text: &str) -> Result<Schema, SchemaError> {
    let doc: TableDoc = serde_json::from_str(text).map_err(|err| SchemaError::Json { table: name.to_string(), err })?;
    let fields = doc
        .columns
        .iter()
        .map(|c| {
            DataType::from_str(&c.data_type).map(|t| Field::new(&c.name, t, c.nullable)).map_err(|err| SchemaError::Type {
                table: doc.table.clone(),
                column: c.name.clone(),
                err,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Schema::new(fields))
}

#[cfg(test)]
mod tests {
    use arrow_schema::Schema;

    /// Columns, types and nullability as lines, to compare two schemas with a readable diff.
    fn columns(s: &Schema) -> Vec<String> {
        s.fields().iter().map(|f| format!("{}: {}{}", f.name(), f.data_type(), if f.is_nullable() { " (nullable)" } else { "" })).collect()
    }

    /// Every table schema declared in code equals its schemas/*.json file (without the
    /// `iteration` column the engine adds, where the code leaves it to the engine).
    #[test]
    fn code_schemas_equal_their_json() {
        let with_iteration = |name: &str| super::table(name).unwrap().unwrap();
        let cases: Vec<(&str, Schema, Schema)> = vec![
            ("prompts", crate::data::prompts::prompts_schema().as_ref().clone(), with_iteration("prompts")),
            ("rollouts (generate)", crate::ops::generate::rollouts_schema().as_ref().clone(), super::operator_output("rollouts").as_ref().clone()),
            ("step_labels (prm_label)", crate::ops::prm_label::step_labels_schema().as_ref().clone(), super::operator_output("step_labels").as_ref().clone()),
            ("step_scores (prm_score)", crate::ops::prm_score::step_scores_schema().as_ref().clone(), super::operator_output("step_scores").as_ref().clone()),
            ("eval_samples (eval)", crate::ops::eval::eval_samples_schema().as_ref().clone(), super::operator_output("eval_samples").as_ref().clone()),
            ("metrics (report, a missing metrics stage)", crate::report::metrics_schema().as_ref().clone(), with_iteration("metrics")),
        ];
        for (name, code, json) in cases {
            assert_eq!(columns(&code), columns(&json), "{name}: the code's schema differs from schemas/*.json");
        }
    }

    #[test]
    fn every_schema_file_parses() {
        for (name, _) in super::TABLES {
            let s = super::table(name).unwrap().unwrap();
            assert!(!s.fields().is_empty(), "{name}");
        }
        let p = super::table("prompts").unwrap().unwrap();
        let e = super::parse("x", r#"{"table": "x", "columns": [{"name": "c", "type": "Nope", "nullable": true}]}"#).unwrap_err();
        assert!(e.to_string().starts_with("schemas/x.json: column c: "), "{e}");
        assert!(super::parse("y", "{").unwrap_err().to_string().starts_with("schemas/y.json: "));
        assert!(matches!(p.field_with_name("images").unwrap().data_type(), arrow_schema::DataType::List(_)));
    }
}
