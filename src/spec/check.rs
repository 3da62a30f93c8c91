//! What an operator's config sees while its stage is validated: errors at its own keys (with
//! YAML path and line:col), the stages it declares it reads, the datasets, and SQL checks.

use super::decode::Decoder;
use super::{find_sql_file, DatasetSpec, InputRef, Scalar, Scope, Seg, SqlSource};
use crate::sql::params::{substitute, ParamSet};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// The validation of one stage, handed to its operator's [`crate::ops::OpConfig::check`].
pub struct StageCheck<'v, 'a> {
    pub(super) dec: &'v mut Decoder<'a>,
    pub(super) base_dir: &'v Path,
    pub(super) index: usize,
    pub(super) id: String,
    pub(super) scope: Scope,
    pub(super) scopes: &'v HashMap<String, Scope>,
    pub(super) datasets: &'v BTreeMap<String, DatasetSpec>,
    /// The pipeline's parameters with the stage's own over them.
    pub(super) params: BTreeMap<String, Scalar>,
    pub(super) inputs: Vec<InputRef>,
    pub(super) sql_template: Option<String>,
}

impl StageCheck<'_, '_> {
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn scope(&self) -> Scope {
        self.scope
    }

    /// The YAML path of a key of this stage; `field` may be dotted (`schedule.lr`).
    fn at(&self, field: &str) -> Vec<Seg> {
        let mut p = vec![Seg::Key("stages".into()), Seg::Index(self.index)];
        p.extend(field.split('.').filter(|s| !s.is_empty()).map(|k| Seg::Key(k.to_string())));
        p
    }

    /// Records an error at this stage's key `field` (empty: the stage itself).
    pub fn error(&mut self, field: &str, message: impl Into<String>) {
        let at = self.at(field);
        self.dec.error(&at, message);
    }

    /// Whether the pipeline defines this dataset; the names it defines.
    pub fn dataset(&self, name: &str) -> Result<&DatasetSpec, Vec<&str>> {
        self.datasets.get(name).ok_or_else(|| self.datasets.keys().map(String::as_str).collect())
    }

    /// Declares that this stage reads stage `name`, named at key `field` (up to this iteration).
    pub fn reads(&mut self, field: &str, name: &str) {
        let at = self.at(field);
        self.read_at(&at, name, false);
    }

    /// Like [`Self::reads`], where `NAME@prev` (its earlier iterations only) is allowed.
    pub fn reads_maybe_prev(&mut self, field: &str, raw: &str) {
        let at = self.at(field);
        let (name, prev) = split_prev(raw);
        self.read_at(&at, name, prev);
    }

    /// Declares a list of stages read (key `field`, item by item), `NAME@prev` allowed.
    pub fn reads_list(&mut self, field: &str, raws: &[String]) {
        for (j, raw) in raws.iter().enumerate() {
            let mut at = self.at(field);
            at.push(Seg::Index(j));
            let (name, prev) = split_prev(raw);
            self.read_at(&at, name, prev);
        }
    }

    /// Declares that this stage reads its own earlier iterations (e.g. its last checkpoint).
    pub fn reads_own_prev(&mut self) {
        self.add(InputRef { stage: self.id.clone(), prev: true });
    }

    fn add(&mut self, r: InputRef) {
        if !self.inputs.contains(&r) {
            self.inputs.push(r);
        }
    }

    pub(super) fn read_at(&mut self, path: &[Seg], name: &str, prev: bool) {
        let me = self.id.as_str();
        let Some(their) = self.scopes.get(name) else {
            let mut known: Vec<&str> = self.scopes.keys().map(String::as_str).collect();
            known.sort();
            self.dec.error(path, format!("stage `{me}` reads unknown stage `{name}` (stages: {})", super::list_or_none(&known)));
            return;
        };
        if self.scope == Scope::Setup && *their == Scope::Iteration {
            self.dec.error(path, format!("setup stage `{me}` cannot read iteration stage `{name}`"));
            return;
        }
        if prev && *their == Scope::Setup {
            self.dec.error(path, format!("`{name}@prev`: `{name}` is a setup stage; it has no previous iterations"));
            return;
        }
        if name == me && !prev {
            self.dec.error(path, format!("stage `{me}` reads itself; write `{me}@prev` to read its earlier iterations"));
            return;
        }
        self.add(InputRef { stage: name.to_string(), prev });
    }

    /// A SQL stage's query (a file under `sql/` or inline): read, parameters substituted as at
    /// iteration 1, parsed; the stages it reads become inputs and the text the stage's template.
    pub fn sql(&mut self, src: &SqlSource) {
        let field = if src.query.is_some() { "query" } else { "sql" };
        let Some(text) = self.resolve_sql(src) else { return };
        if let Some(tables) = self.tables_read(field, &text) {
            for t in tables {
                if self.inputs.iter().any(|r| r.stage == t) {
                    continue;
                }
                if t == self.id {
                    if self.scope == Scope::Setup {
                        self.error(field, "a setup stage cannot read its own table");
                    } else {
                        self.add(InputRef { stage: t, prev: true });
                    }
                } else {
                    self.reads(field, &t);
                }
            }
        }
        self.sql_template = Some(text);
    }

    fn resolve_sql(&mut self, src: &SqlSource) -> Option<String> {
        read_sql(self.base_dir, src).map_err(|(field, m)| self.error(field, m)).ok()
    }

    /// Substitutes parameters and parses the query; returns the stage tables it reads.
    fn tables_read(&mut self, field: &str, text: &str) -> Option<Vec<String>> {
        let mut ps = ParamSet::new();
        let it = if self.scope == Scope::Setup { "0" } else { "1" };
        for k in ["iteration", "prev_iteration", "iterations", "seed"] {
            ps.insert(k, it.into());
        }
        ps.insert("stage", self.id.clone());
        for (k, v) in &self.params {
            ps.insert(k, v.to_string());
        }
        let parsed = match substitute(text, &ps) {
            Ok(q) => crate::sql::referenced_tables(&q).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match parsed {
            Ok(t) => Some(t),
            Err(e) => {
                self.error(field, e);
                None
            }
        }
    }
}

/// `NAME@prev` → (NAME, true); `NAME` → (NAME, false).
pub fn split_prev(raw: &str) -> (&str, bool) {
    match raw.strip_suffix("@prev") {
        Some(n) => (n, true),
        None => (raw, false),
    }
}

/// The text of SQL given by name (`sql/NAME.sql`) or inline; an error names the key at fault
/// (`sql`, `query`, or "" for the mapping that has neither).
pub fn read_sql(base_dir: &Path, src: &SqlSource) -> Result<String, (&'static str, String)> {
    match (&src.sql, &src.query) {
        (Some(_), Some(_)) => Err(("query", "give either `sql` (a file under sql/) or `query` (inline), not both".into())),
        (None, None) => Err(("", "missing `sql: NAME` (for sql/NAME.sql) or `query: …` (inline SQL)".into())),
        (None, Some(q)) => Ok(q.clone()),
        (Some(name), None) => {
            let path = find_sql_file(base_dir, name).map_err(|e| ("sql", e.to_string()))?;
            std::fs::read_to_string(&path).map_err(|e| ("sql", format!("cannot read {}: {e}", path.display())))
        }
    }
}
