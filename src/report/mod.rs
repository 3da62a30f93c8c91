//! `mstar report`: the monitoring metrics of one or more M-STAR run stores, compared across
//! pipelines (mean ± spread over seeds) as a markdown table and PNG/SVG charts; every number
//! comes from the SQL in `sql/report_run.sql` and `sql/report_compare.sql`.

pub mod plot;

use crate::runner::RunInfo;
use crate::store::{RunStore, RUN_FILE};
use crate::Error;
use arrow::array::{Array, AsArray, RecordBatch, StringArray, UInt64Array};
use arrow::datatypes::{Float64Type, Int64Type};
use arrow_schema::{DataType, Field, Schema};
use datafusion::datasource::MemTable;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;

pub const RUN_SQL: &str = include_str!("../../sql/report_run.sql");
pub const COMPARE_SQL: &str = include_str!("../../sql/report_compare.sql");

/// The charts: (split, metric name, title, file stem).
pub const CHARTS: &[(&str, &str, &str, &str)] = &[
    ("test", "greedy_accuracy", "test accuracy (greedy)", "test_accuracy"),
    ("val", "greedy_accuracy", "val greedy accuracy", "val_greedy_accuracy"),
    ("val", "pass@k", "val Pass@K", "val_pass_at_k"),
    ("val", "reward_pass@2", "val Reward-Pass@2", "val_reward_pass_at_2"),
    ("train", "temperature", "sampling temperature", "temperature"),
    ("train", "selected_sound_share", "selected rollouts with sound reasoning", "selected_sound_share"),
];

/// Columns of the comparison table: (split, metric name, header).
const COLUMNS: &[(&str, &str, &str)] = &[
    ("test", "greedy_accuracy", "test greedy"),
    ("test", "pass@k", "test Pass@K"),
    ("test_hard", "greedy_accuracy", "test_hard greedy"),
    ("val", "greedy_accuracy", "val greedy"),
    ("val", "reward_pass@2", "val Reward-Pass@2"),
    ("val", "pass@k_minus_greedy", "val Pass@K − greedy"),
];

/// One row of `report_compare.sql`.
#[derive(Debug, Clone, PartialEq)]
pub struct Figure {
    pub pipeline: String,
    pub iteration: i64,
    pub split: String,
    pub name: String,
    pub mean: f64,
    pub spread: f64,
    pub seeds: i64,
}

/// What `report` produced.
pub struct Report {
    pub figures: Vec<Figure>,
    pub markdown: String,
    pub files: Vec<String>,
    /// The queries, in the order they ran (for `--explain`).
    pub queries: Vec<String>,
}

/// The metrics table (schemas/metrics.json), for a run without one of its metrics stages.
pub(crate) fn metrics_schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new("iteration", DataType::Int64, false),
        Field::new("split", DataType::Utf8, false),
        Field::new("name", DataType::Utf8, false),
        Field::new("value", DataType::Float64, true),
    ]))
}

/// Reads every store, compares the pipelines and writes report.md plus one PNG and one SVG
/// per chart into `out`.
pub async fn report(stores: &[String], out: &Path) -> Result<Report, Error> {
    if stores.is_empty() {
        return Err(Error::Usage("name at least one run store".into()));
    }
    let mut pipelines: Vec<String> = Vec::new();
    let mut parts: Vec<RecordBatch> = Vec::new();
    let runs_schema = Arc::new(Schema::new(vec![
        Field::new("pipeline", DataType::Utf8, false),
        Field::new("seed", DataType::UInt64, false),
        Field::new("store", DataType::Utf8, false),
        Field::new("iteration", DataType::Int64, false),
        Field::new("split", DataType::Utf8, false),
        Field::new("name", DataType::Utf8, false),
        Field::new("value", DataType::Float64, true),
    ]));
    for s in stores {
        let rs = RunStore::open_existing(s)?;
        let info: RunInfo = rs.read_json(RUN_FILE).await?.ok_or_else(|| Error::Usage(format!("{s}: no run.json — not a run store")))?;
        let ctx = crate::sql::new_session();
        let tables = crate::sql::register_run(&ctx, &rs).await?;
        if !tables.iter().any(|t| t == "eval_metrics") {
            return Err(Error::Usage(format!("{s}: the run has no `eval_metrics` table (report reads M-STAR runs: pipelines/mstar.yaml and what extends it)")));
        }
        for t in ["warmup_metrics", "train_metrics"] {
            if !tables.iter().any(|x| x == t) {
                ctx.register_table(t, Arc::new(MemTable::try_new(metrics_schema(), vec![vec![]])?))?;
            }
        }
        if !tables.iter().any(|x| x == "rollouts") {
            let schema = Arc::new(Schema::new(vec![Field::new("iteration", DataType::Int64, false), Field::new("temperature", DataType::Float64, false)]));
            ctx.register_table("rollouts", Arc::new(MemTable::try_new(schema, vec![vec![]])?))?;
        }
        let q = format!("SELECT CAST(iteration AS BIGINT) AS iteration, CAST(split AS VARCHAR) AS split, CAST(name AS VARCHAR) AS name, CAST(value AS DOUBLE) AS value FROM ({RUN_SQL})");
        let batches = crate::sql::query(&ctx, &q).await?.collect().await?;
        for b in batches {
            let n = b.num_rows();
            let mut cols: Vec<Arc<dyn Array>> = vec![
                Arc::new(StringArray::from(vec![info.pipeline.clone(); n])),
                Arc::new(UInt64Array::from(vec![info.seed; n])),
                Arc::new(StringArray::from(vec![rs.display().to_string(); n])),
            ];
            for (j, c) in b.columns().iter().enumerate() {
                cols.push(arrow::compute::cast(c, runs_schema.field(3 + j).data_type())?);
            }
            parts.push(RecordBatch::try_new(runs_schema.clone(), cols)?);
        }
        if !pipelines.contains(&info.pipeline) {
            pipelines.push(info.pipeline.clone());
        }
    }
    let ctx = crate::sql::new_session();
    ctx.register_table("runs", Arc::new(MemTable::try_new(runs_schema, vec![parts])?))?;
    let batches = crate::sql::query(&ctx, COMPARE_SQL).await?.collect().await?;
    let mut figures = Vec::new();
    for b in &batches {
        let s = |i: usize| arrow::compute::cast(b.column(i), &DataType::Utf8).map(|a| a.as_string::<i32>().clone());
        let (p, sp, nm) = (s(0)?, s(2)?, s(3)?);
        let (it, mean, spread, seeds) = (
            b.column(1).as_primitive::<Int64Type>(),
            b.column(4).as_primitive::<Float64Type>(),
            b.column(5).as_primitive::<Float64Type>(),
            b.column(6).as_primitive::<Int64Type>(),
        );
        for i in 0..b.num_rows() {
            if mean.is_null(i) {
                continue;
            }
            figures.push(Figure {
                pipeline: p.value(i).into(),
                iteration: it.value(i),
                split: sp.value(i).into(),
                name: nm.value(i).into(),
                mean: mean.value(i),
                spread: spread.value(i),
                seeds: seeds.value(i),
            });
        }
    }
    std::fs::create_dir_all(out)?;
    let mut files = Vec::new();
    for (split, name, title, stem) in CHARTS {
        let series: Vec<plot::Series> = pipelines
            .iter()
            .map(|p| plot::Series {
                label: p.clone(),
                points: figures
                    .iter()
                    .filter(|f| &f.pipeline == p && f.split == *split && f.name == *name)
                    .map(|f| (f.iteration as f64, f.mean, f.spread))
                    .collect(),
            })
            .filter(|s| !s.points.is_empty())
            .collect();
        if series.is_empty() {
            continue;
        }
        let chart = plot::Chart { title: title.to_string(), x_label: "iteration (0 = warm-up)".into(), series };
        for (ext, bytes) in [("svg", chart.svg().into_bytes()), ("png", chart.png())] {
            let f = format!("{stem}.{ext}");
            std::fs::write(out.join(&f), bytes)?;
            files.push(f);
        }
    }
    let markdown = markdown(&pipelines, &figures, &files);
    std::fs::write(out.join("report.md"), &markdown)?;
    files.push("report.md".into());
    Ok(Report { figures, markdown, files, queries: vec![RUN_SQL.to_string(), COMPARE_SQL.to_string()] })
}

/// "41.3 ± 1.2" in percent (a temperature or count as it is).
fn cell(f: Option<&Figure>) -> String {
    match f {
        None => "–".into(),
        Some(f) if f.name == "temperature" || f.name.ends_with("rows") => format!("{:.2}", f.mean),
        Some(f) if f.seeds > 1 => format!("{:.1} ± {:.1}", 100.0 * f.mean, 100.0 * f.spread),
        Some(f) => format!("{:.1}", 100.0 * f.mean),
    }
}

fn markdown(pipelines: &[String], figures: &[Figure], files: &[String]) -> String {
    let find = |p: &str, it: i64, split: &str, name: &str| figures.iter().find(|f| f.pipeline == p && f.iteration == it && f.split == split && f.name == name);
    let last = |p: &str| figures.iter().filter(|f| f.pipeline == p).map(|f| f.iteration).max().unwrap_or(0);
    let mut o = String::from("# mstar report\n\nAccuracies in percent, mean ± sample standard deviation over the seeds (runs of the same pipeline).\n\n");
    o += "## Final iteration\n\n| pipeline | seeds | iteration |";
    for (_, _, h) in COLUMNS {
        let _ = write!(o, " {h} |");
    }
    o += "\n|---|---:|---:|";
    o += &"---:|".repeat(COLUMNS.len());
    o += "\n";
    let mut rows: Vec<(String, i64)> = Vec::new();
    if let Some(first) = pipelines.first() {
        rows.push((first.clone(), 0));
    }
    rows.extend(pipelines.iter().map(|p| (p.clone(), last(p))));
    for (k, (p, it)) in rows.iter().enumerate() {
        let label = if k == 0 { "warm-up".to_string() } else { p.clone() };
        let seeds = figures.iter().filter(|f| &f.pipeline == p && f.iteration == *it).map(|f| f.seeds).max().unwrap_or(0);
        let _ = write!(o, "| {label} | {seeds} | {it} |");
        for (split, name, _) in COLUMNS {
            let _ = write!(o, " {} |", cell(find(p, *it, split, name)));
        }
        o += "\n";
    }
    let max_it = pipelines.iter().map(|p| last(p)).max().unwrap_or(0);
    for (split, name, title, _) in CHARTS {
        if !figures.iter().any(|f| f.split == *split && f.name == *name) {
            continue;
        }
        let _ = write!(o, "\n## {title} by iteration\n\n| pipeline |");
        for it in 0..=max_it {
            let _ = write!(o, " {it} |");
        }
        o += "\n|---|";
        o += &"---:|".repeat(max_it as usize + 1);
        o += "\n";
        for p in pipelines {
            let _ = write!(o, "| {p} |");
            for it in 0..=max_it {
                let _ = write!(o, " {} |", cell(find(p, it, split, name)));
            }
            o += "\n";
        }
    }
    let charts: Vec<&String> = files.iter().filter(|f| f.ends_with(".png")).collect();
    if !charts.is_empty() {
        o += "\n## Charts\n\n";
        for f in charts {
            let _ = writeln!(o, "![{f}]({f})");
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_show_percent_and_spread_only_across_seeds() {
        let f = |seeds, name: &str| Figure { pipeline: "p".into(), iteration: 1, split: "test".into(), name: name.into(), mean: 0.4125, spread: 0.0123, seeds };
        assert_eq!(cell(Some(&f(3, "greedy_accuracy"))), "41.2 ± 1.2");
        assert_eq!(cell(Some(&f(1, "greedy_accuracy"))), "41.2");
        assert_eq!(cell(Some(&f(1, "temperature"))), "0.41");
        assert_eq!(cell(None), "–");
    }
}
