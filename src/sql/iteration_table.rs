//! A stage as a SQL table partitioned by iteration: a query's conditions on `iteration` pick the
//! iterations whose files are opened, so a stage at iteration N reads only the files it needs.

use arrow_schema::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::ScalarValue;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl};
use datafusion::datasource::TableType;
use datafusion::error::Result;
use datafusion::logical_expr::{Between, BinaryExpr, Expr, Operator, TableProviderFilterPushDown};
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_plan::ExecutionPlan;
use std::collections::BTreeMap;
use std::sync::Arc;

/// The column every stage table carries and is partitioned by.
const ITERATION: &str = "iteration";

/// A table over Parquet files grouped by the iteration that wrote them.
#[derive(Debug)]
pub struct IterationTable {
    schema: SchemaRef,
    parts: BTreeMap<i64, Vec<ListingTableUrl>>,
}

impl IterationTable {
    pub fn new(schema: SchemaRef, parts: BTreeMap<i64, Vec<ListingTableUrl>>) -> Self {
        Self { schema, parts }
    }

    /// The iterations a scan with these filters may need (every filter must hold).
    pub fn iterations(&self, filters: &[Expr]) -> Vec<i64> {
        self.parts.keys().copied().filter(|&it| filters.iter().all(|f| holds(f, it) != Some(false))).collect()
    }
}

#[async_trait]
impl TableProvider for IterationTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    /// Filters only choose iterations (and Parquet row groups); DataFusion still applies them.
    fn supports_filters_pushdown(&self, filters: &[&Expr]) -> Result<Vec<TableProviderFilterPushDown>> {
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(&self, state: &dyn Session, projection: Option<&Vec<usize>>, filters: &[Expr], limit: Option<usize>) -> Result<Arc<dyn ExecutionPlan>> {
        let urls: Vec<ListingTableUrl> = self.iterations(filters).iter().flat_map(|it| self.parts[it].iter().cloned()).collect();
        if urls.is_empty() {
            let schema = match projection {
                Some(p) => Arc::new(self.schema.project(p)?),
                None => self.schema.clone(),
            };
            return Ok(Arc::new(EmptyExec::new(schema)));
        }
        let options = ListingOptions::new(Arc::new(ParquetFormat::default())).with_file_extension(".parquet");
        let config = ListingTableConfig::new_with_multi_paths(urls).with_listing_options(options).with_schema(self.schema.clone());
        ListingTable::try_new(config)?.scan(state, projection, filters, limit).await
    }
}

/// Whether `expr` holds for rows of iteration `it`: Some(false) when it cannot hold whatever the
/// other columns are, None when that is not known.
fn holds(expr: &Expr, it: i64) -> Option<bool> {
    match expr {
        Expr::BinaryExpr(BinaryExpr { left, op: Operator::And, right }) => match (holds(left, it), holds(right, it)) {
            (Some(false), _) | (_, Some(false)) => Some(false),
            (Some(true), Some(true)) => Some(true),
            _ => None,
        },
        Expr::BinaryExpr(BinaryExpr { left, op: Operator::Or, right }) => match (holds(left, it), holds(right, it)) {
            (Some(true), _) | (_, Some(true)) => Some(true),
            (Some(false), Some(false)) => Some(false),
            _ => None,
        },
        Expr::Not(e) => holds(e, it).map(|b| !b),
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
            let (v, op) = match (is_iteration(left), literal(right), is_iteration(right), literal(left)) {
                (true, Some(v), _, _) => (v, *op),
                (_, _, true, Some(v)) => (v, op.swap()?),
                _ => return None,
            };
            match op {
                Operator::Eq => Some(it == v),
                Operator::NotEq => Some(it != v),
                Operator::Lt => Some(it < v),
                Operator::LtEq => Some(it <= v),
                Operator::Gt => Some(it > v),
                Operator::GtEq => Some(it >= v),
                _ => None,
            }
        }
        Expr::InList(l) if is_iteration(&l.expr) => {
            let values: Option<Vec<i64>> = l.list.iter().map(literal).collect();
            values.map(|vs| vs.contains(&it) != l.negated)
        }
        Expr::Between(Between { expr, negated, low, high }) if is_iteration(expr) => {
            let (lo, hi) = (literal(low)?, literal(high)?);
            Some((lo <= it && it <= hi) != *negated)
        }
        _ => None,
    }
}

/// The `iteration` column, possibly cast to another integer type.
fn is_iteration(e: &Expr) -> bool {
    match e {
        Expr::Column(c) => c.name == ITERATION,
        Expr::Cast(c) => c.field.data_type().is_integer() && is_iteration(&c.expr),
        Expr::TryCast(c) => c.field.data_type().is_integer() && is_iteration(&c.expr),
        _ => false,
    }
}

/// An integer literal's value.
fn literal(e: &Expr) -> Option<i64> {
    match e {
        Expr::Literal(v, _) => match v {
            ScalarValue::Int8(Some(x)) => Some(*x as i64),
            ScalarValue::Int16(Some(x)) => Some(*x as i64),
            ScalarValue::Int32(Some(x)) => Some(*x as i64),
            ScalarValue::Int64(Some(x)) => Some(*x),
            ScalarValue::UInt8(Some(x)) => Some(*x as i64),
            ScalarValue::UInt16(Some(x)) => Some(*x as i64),
            ScalarValue::UInt32(Some(x)) => Some(*x as i64),
            ScalarValue::UInt64(Some(x)) => i64::try_from(*x).ok(),
            _ => None,
        },
        Expr::Cast(c) => literal(&c.expr),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::prelude::{col, lit};

    fn table(its: &[i64]) -> IterationTable {
        let schema = Arc::new(arrow_schema::Schema::new(vec![arrow_schema::Field::new(ITERATION, arrow_schema::DataType::Int64, false)]));
        let parts = its.iter().map(|&i| (i, vec![ListingTableUrl::parse(format!("file:///t/iteration={i}/a.parquet")).unwrap()])).collect();
        IterationTable::new(schema, parts)
    }

    #[test]
    fn filters_on_iteration_choose_iterations() {
        let t = table(&[1, 2, 3, 4, 5]);
        let it = col(ITERATION);
        assert_eq!(t.iterations(&[it.clone().eq(lit(3i64))]), vec![3]);
        assert_eq!(t.iterations(&[lit(3i64).eq(it.clone())]), vec![3]);
        assert_eq!(t.iterations(&[it.clone().lt(lit(3i64))]), vec![1, 2]);
        assert_eq!(t.iterations(&[lit(3i64).lt(it.clone())]), vec![4, 5]);
        assert_eq!(t.iterations(&[it.clone().gt_eq(lit(2i64)), it.clone().lt_eq(lit(3i64))]), vec![2, 3]);
        assert_eq!(t.iterations(&[it.clone().eq(lit(1i64)).or(it.clone().eq(lit(5i64)))]), vec![1, 5]);
        assert_eq!(t.iterations(&[it.clone().in_list(vec![lit(2i64), lit(4i32)], false)]), vec![2, 4]);
        assert_eq!(t.iterations(&[it.clone().in_list(vec![lit(2i64)], true)]), vec![1, 3, 4, 5]);
        assert_eq!(t.iterations(&[it.clone().between(lit(2i64), lit(4i64))]), vec![2, 3, 4]);
        assert_eq!(t.iterations(&[it.clone().not_eq(lit(2i64))]), vec![1, 3, 4, 5]);
        assert_eq!(t.iterations(&[it.clone().eq(lit(9i64))]), Vec::<i64>::new());
        // conditions that do not decide the iteration keep every iteration
        assert_eq!(t.iterations(&[col("x").eq(lit(1i64))]), vec![1, 2, 3, 4, 5]);
        assert_eq!(t.iterations(&[col("x").eq(lit(1i64)).or(it.clone().eq(lit(2i64)))]), vec![1, 2, 3, 4, 5]);
        assert_eq!(t.iterations(&[col("x").eq(lit(1i64)).and(it.clone().eq(lit(2i64)))]), vec![2]);
        assert_eq!(t.iterations(&[(it.clone() + lit(1i64)).eq(lit(3i64))]), vec![1, 2, 3, 4, 5]);
    }

    /// Only the chosen iterations' files are opened: with the other iterations' files broken, a
    /// query on one iteration still runs, and one over all of them fails.
    #[tokio::test]
    async fn only_the_chosen_iterations_files_are_opened() {
        use arrow::array::{Int64Array, RecordBatch};
        let dir = tempfile::tempdir().unwrap();
        let schema = Arc::new(arrow_schema::Schema::new(vec![
            arrow_schema::Field::new("x", arrow_schema::DataType::Int64, false),
            arrow_schema::Field::new(ITERATION, arrow_schema::DataType::Int64, false),
        ]));
        let mut parts = BTreeMap::new();
        for it in 1..=4i64 {
            let path = dir.path().join(format!("iteration={it}/a.parquet"));
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            let batch =
                RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from(vec![10 * it, 10 * it + 1])), Arc::new(Int64Array::from(vec![it, it]))])
                    .unwrap();
            let mut w = parquet::arrow::ArrowWriter::try_new(std::fs::File::create(&path).unwrap(), schema.clone(), None).unwrap();
            w.write(&batch).unwrap();
            w.close().unwrap();
            parts.insert(it, vec![ListingTableUrl::parse(path.to_str().unwrap()).unwrap()]);
        }
        let ctx = datafusion::prelude::SessionContext::new();
        ctx.register_table("t", Arc::new(IterationTable::new(schema, parts))).unwrap();
        let sum = |q: &'static str| {
            let ctx = ctx.clone();
            async move {
                let batches = ctx.sql(q).await?.collect().await?;
                Ok::<_, datafusion::error::DataFusionError>(batches[0].column(0).as_any().downcast_ref::<Int64Array>().map(|a| a.value(0)))
            }
        };
        assert_eq!(sum("SELECT sum(x) FROM t").await.unwrap(), Some(10 + 11 + 20 + 21 + 30 + 31 + 40 + 41));
        for it in [1, 2, 4] {
            std::fs::write(dir.path().join(format!("iteration={it}/a.parquet")), "not parquet").unwrap();
        }
        assert_eq!(sum("SELECT sum(x) FROM t WHERE iteration = 3").await.unwrap(), Some(61));
        assert_eq!(sum("SELECT sum(t.x) FROM t WHERE t.iteration IN (3, 7) AND x > 0").await.unwrap(), Some(61));
        assert_eq!(sum("SELECT count(*) FROM t WHERE iteration > 4").await.unwrap(), Some(0));
        assert!(sum("SELECT sum(x) FROM t").await.is_err());
        assert!(sum("SELECT sum(x) FROM t WHERE iteration >= 2").await.is_err());
    }
}
