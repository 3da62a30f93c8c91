//! DataFusion over a run store: every committed stage is a table (all its iterations, with an
//! `iteration` column), queries are read-only, and SQL text gets `${…}` parameters.

pub mod format;
pub mod iteration_table;
pub mod params;
pub mod udf;

use crate::store::manifest::OutputKind;
use crate::store::readonly::ReadOnlyStore;
use crate::store::{FileEntry, Manifest, RunStore};
use arrow_schema::SchemaRef;
use datafusion::datasource::listing::ListingTableUrl;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::memory_pool::FairSpillPool;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::{DataFrame, SQLOptions, SessionConfig, SessionContext};
use datafusion::sql::parser::{DFParser, Statement};
use datafusion::sql::resolve::resolve_table_references;
use iteration_table::IterationTable;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Table functions DataFusion provides; a query may read them besides stage tables.
const TABLE_FUNCTIONS: &[&str] = &["range", "generate_series"];

/// The memory pool of a session, in MB, when none is given.
pub const DEFAULT_MEMORY_LIMIT_MB: usize = 2048;

/// A DataFusion session with mstar's settings: a memory pool that spills to disk, so sorts and
/// aggregations over large stages stream instead of holding everything. The pool is
/// [`DEFAULT_MEMORY_LIMIT_MB`].
pub fn new_session() -> SessionContext {
    new_session_with(None)
}

/// `new_session` with a memory pool of `memory_mb` (None: [`DEFAULT_MEMORY_LIMIT_MB`]). The CLI
/// passes `--memory-mb`, else `MSTAR_MEMORY_LIMIT_MB`; the library reads no environment.
pub fn new_session_with(memory_mb: Option<usize>) -> SessionContext {
    let limit = memory_mb.unwrap_or(DEFAULT_MEMORY_LIMIT_MB) * 1024 * 1024;
    let runtime = RuntimeEnvBuilder::new().with_memory_pool(Arc::new(FairSpillPool::new(limit))).build_arc().expect("runtime env");
    let config = SessionConfig::new().with_information_schema(true);
    let ctx = SessionContext::new_with_config_rt(config, runtime);
    udf::register(&ctx);
    ctx
}

/// Options that reject DDL, DML (INSERT, COPY … TO) and session-changing statements.
pub fn read_only_options() -> SQLOptions {
    SQLOptions::new().with_allow_ddl(false).with_allow_dml(false).with_allow_statements(false)
}

/// Plans a read-only query.
pub async fn query(ctx: &SessionContext, sql: &str) -> Result<DataFrame> {
    ctx.sql_with_options(sql, read_only_options()).await
}

/// Why SQL text is not one query whose tables can be named.
#[derive(Debug, thiserror::Error)]
pub enum QueryTextError {
    #[error("SQL: {}", strip_df(.0))]
    Parse(DataFusionError),
    #[error("expected exactly one SQL statement, found {0}")]
    Statements(usize),
    #[error("a stage's SQL must be one query (SELECT, WITH … SELECT or VALUES)")]
    NotAQuery,
    #[error("{}", strip_df(.0))]
    References(DataFusionError),
}

/// Parses one query and returns the names of the tables it reads (CTEs and table
/// functions excluded), lower-cased as DataFusion normalizes them.
pub fn referenced_tables(sql: &str) -> std::result::Result<Vec<String>, QueryTextError> {
    let mut stmts = DFParser::parse_sql(sql).map_err(QueryTextError::Parse)?;
    if stmts.len() != 1 {
        return Err(QueryTextError::Statements(stmts.len()));
    }
    let stmt = stmts.pop_front().expect("one statement");
    let is_query = matches!(&stmt, Statement::Statement(s) if matches!(**s, datafusion::sql::sqlparser::ast::Statement::Query(_)));
    if !is_query {
        return Err(QueryTextError::NotAQuery);
    }
    let (refs, ctes) = resolve_table_references(&stmt, true).map_err(QueryTextError::References)?;
    let ctes: Vec<String> = ctes.iter().map(|c| c.table().to_string()).collect();
    let mut out: Vec<String> = refs
        .iter()
        .filter(|r| r.schema().is_none())
        .map(|r| r.table().to_string())
        .filter(|t| !ctes.contains(t) && !TABLE_FUNCTIONS.contains(&t.as_str()))
        .collect();
    out.dedup();
    Ok(out)
}

/// DataFusion errors without the "Error during planning:" style prefixes doubled up.
pub fn strip_df(e: &DataFusionError) -> String {
    e.to_string()
}

/// Makes the store's objects reachable from the session (read-only when asked).
pub fn attach_store(ctx: &SessionContext, store: &RunStore, read_only: bool) {
    let os: Arc<dyn object_store::ObjectStore> = if read_only { Arc::new(ReadOnlyStore(store.loc.store.clone())) } else { store.loc.store.clone() };
    ctx.register_object_store(&store.loc.url_root, os);
}

/// Registers one stage as a table over the files of the given committed manifests, partitioned
/// by iteration: a query's conditions on `iteration` decide which files are opened.
pub async fn register_stage(ctx: &SessionContext, store: &RunStore, name: &str, manifests: &[&Manifest]) -> Result<()> {
    let tables: Vec<&&Manifest> = manifests.iter().filter(|m| m.kind == OutputKind::Table).collect();
    let Some(latest) = tables.iter().max_by_key(|m| m.iteration) else {
        return Ok(());
    };
    let schema = latest.schema.clone().ok_or_else(|| DataFusionError::Plan(format!("manifest of {name} at iteration {} has no schema", latest.iteration)))?;
    let parts = tables.iter().map(|m| (m.iteration, m.files.as_slice()));
    ctx.deregister_table(name)?;
    ctx.register_table(name, Arc::new(iteration_table(store, Arc::new(schema), parts)?))?;
    Ok(())
}

/// An [`IterationTable`] over files grouped by iteration.
fn iteration_table<'a>(store: &RunStore, schema: SchemaRef, parts: impl Iterator<Item = (u32, &'a [FileEntry])>) -> Result<IterationTable> {
    let mut by_iteration: BTreeMap<i64, Vec<ListingTableUrl>> = BTreeMap::new();
    for (it, files) in parts {
        for f in files {
            by_iteration.entry(it as i64).or_default().push(ListingTableUrl::parse(store.loc.object_url(&store.loc.path(&f.path)))?);
        }
    }
    Ok(IterationTable::new(schema, by_iteration))
}

/// Registers every committed stage of the run, for ad-hoc queries. Returns the table names.
pub async fn register_run(ctx: &SessionContext, store: &RunStore) -> std::result::Result<Vec<String>, crate::Error> {
    attach_store(ctx, store, true);
    let manifests = store.manifests().await?;
    let mut by_stage: BTreeMap<&str, Vec<&Manifest>> = BTreeMap::new();
    for m in &manifests {
        by_stage.entry(m.stage.as_str()).or_default().push(m);
    }
    for (name, ms) in &by_stage {
        register_stage(ctx, store, name, ms).await?;
    }
    let mut names: Vec<String> = by_stage.keys().map(|s| s.to_string()).collect();
    // side tables (e.g. `quarantine`) of every stage, under their own name
    let mut side: BTreeMap<&str, Vec<(u32, &crate::store::manifest::SideTable)>> = BTreeMap::new();
    for m in &manifests {
        for s in &m.side {
            side.entry(s.name.as_str()).or_default().push((m.iteration, s));
        }
    }
    for (name, tables) in side {
        if by_stage.contains_key(name) {
            continue;
        }
        let schema = Arc::new(tables[0].1.schema.clone());
        let table = iteration_table(store, schema, tables.iter().map(|(it, t)| (*it, t.files.as_slice())))?;
        ctx.register_table(name, Arc::new(table))?;
        names.push(name.to_string());
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_tables_but_not_ctes() {
        let t = referenced_tables("WITH x AS (SELECT * FROM a) SELECT * FROM x JOIN B ON true, range(3)").unwrap();
        assert_eq!(t, vec!["a".to_string(), "b".to_string()]);
        assert!(matches!(referenced_tables("SELECT 1; SELECT 2"), Err(QueryTextError::Statements(2))));
        assert!(matches!(referenced_tables("DROP TABLE a"), Err(QueryTextError::NotAQuery)));
        assert!(referenced_tables("SELEC 1").unwrap_err().to_string().starts_with("SQL: "));
    }
}
