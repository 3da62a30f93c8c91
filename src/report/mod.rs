//! `mstar report`: the monitoring metrics of one or more M-STAR run stores, compared across
//! pipelines (mean ± spread over seeds) as a markdown table and PNG/SVG charts; every number
//! comes from the SQL in `sql/report_run.sql` and `sql/report_compare.sql`. The charts are in
//! percent, with error bars from a bootstrap over prompts (`sql/report_prompts.sql`: the
//! per-prompt values behind each metric).

pub mod gain;
pub mod order;
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
pub const PROMPTS_SQL: &str = include_str!("../../sql/report_prompts.sql");

/// The charts: (split, metric name, title, file stem, y-axis label).
pub const CHARTS: &[(&str, &str, &str, &str, &str)] = &[
    ("test", "greedy_accuracy", "test accuracy (greedy)", "test_accuracy", "greedy accuracy (%)"),
    ("val", "greedy_accuracy", "val greedy accuracy", "val_greedy_accuracy", "greedy accuracy (%)"),
    ("val", "pass@k", "val Pass@K", "val_pass_at_k", "Pass@K (%)"),
    ("val", "reward_pass@2", "val Reward-Pass@2", "val_reward_pass_at_2", "Reward-Pass@2 (%)"),
    ("train", "temperature", "sampling temperature", "temperature", "temperature"),
    ("train", "selected_sound_share", "selected rollouts with sound reasoning", "selected_sound_share", "sound selected rollouts (%)"),
];

/// Bootstrap resamples per point, and the seed they start from (with the point's name mixed in).
pub const RESAMPLES: usize = 2000;
pub const BOOTSTRAP_SEED: u64 = 0;

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
    /// 95% bootstrap interval over prompts of the mean (None: no per-prompt values).
    pub interval: Option<(f64, f64)>,
    /// The fewest and most prompts of a run behind the value (None: not known).
    pub prompts: Option<(usize, usize)>,
}

/// What `report` produced.
pub struct Report {
    pub figures: Vec<Figure>,
    /// Each pipeline's final iteration over its warm-up, per seed and over seeds.
    pub gains: Vec<gain::Gain>,
    /// The orders asked for, checked.
    pub orders: Vec<order::OrderCheck>,
    pub markdown: String,
    pub files: Vec<String>,
    /// The queries, in the order they ran (for `--explain`).
    pub queries: Vec<String>,
    /// Why some error bars are missing (a run whose tables the per-prompt query cannot read).
    pub notes: Vec<String>,
}

/// The per-prompt values of one metric of one run, in prompt_id order.
#[derive(Debug, Default, Clone)]
pub struct PromptValues {
    pub ids: Vec<String>,
    /// (num, den) of each prompt: the metric is sum(num) / sum(den).
    pub values: Vec<(f64, f64)>,
}

/// The per-prompt values of one run, by (iteration, split, name).
pub type PerPrompt = std::collections::BTreeMap<(i64, String, String), PromptValues>;

/// FNV-1a: a stable hash of a point's name, to give each point its own resampling stream.
pub(crate) fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}

/// sum(num) / sum(den) of the prompts.
fn ratio(prompts: &[(f64, f64)]) -> f64 {
    let (n, d) = prompts.iter().fold((0.0, 0.0), |(n, d), (a, b)| (n + a, d + b));
    n / d
}

/// The statistic of one or more runs: the mean over runs of each run's sum(num) / sum(den).
pub fn statistic(runs: &[&[(f64, f64)]]) -> f64 {
    runs.iter().map(|r| ratio(r)).sum::<f64>() / runs.len() as f64
}

/// 95% percentile bootstrap interval of [`statistic`]: each resample draws every run's prompts
/// with replacement (as many as it has), seeded, so the same data give the same interval.
pub fn bootstrap(runs: &[&[(f64, f64)]], resamples: usize, seed: u64) -> Option<(f64, f64)> {
    if runs.is_empty() || runs.iter().any(|r| r.is_empty()) || resamples == 0 {
        return None;
    }
    let mut rng = crate::rng::SplitMix64::new(seed);
    let mut stats: Vec<f64> = (0..resamples)
        .map(|_| {
            runs.iter()
                .map(|r| {
                    let (mut n, mut d) = (0.0, 0.0);
                    for _ in 0..r.len() {
                        let (a, b) = r[rng.below(r.len())];
                        n += a;
                        d += b;
                    }
                    n / d
                })
                .sum::<f64>()
                / runs.len() as f64
        })
        .collect();
    percentile_interval(&mut stats)
}

/// The 2.5% and 97.5% percentiles of resampled statistics, linearly interpolated between order
/// statistics (None where any is not finite, or there are none).
pub(crate) fn percentile_interval(stats: &mut [f64]) -> Option<(f64, f64)> {
    if stats.is_empty() || stats.iter().any(|x| !x.is_finite()) {
        return None;
    }
    stats.sort_by(f64::total_cmp);
    let q = |p: f64| {
        let h = p * (stats.len() - 1) as f64;
        let (i, f) = (h.floor() as usize, h - h.floor());
        stats[i] + f * (stats[(i + 1).min(stats.len() - 1)] - stats[i])
    };
    Some((q(0.025), q(0.975)))
}

/// Registers an empty table with these columns unless the run has one by that name.
fn stub(ctx: &datafusion::prelude::SessionContext, tables: &[String], name: &str, fields: Vec<Field>) -> Result<(), Error> {
    if !tables.iter().any(|t| t == name) {
        ctx.register_table(name, Arc::new(MemTable::try_new(Arc::new(Schema::new(fields)), vec![vec![]])?))?;
    }
    Ok(())
}

/// The per-prompt values of one run (`sql/report_prompts.sql`).
async fn per_prompt(ctx: &datafusion::prelude::SessionContext, tables: &[String]) -> Result<PerPrompt, Error> {
    let f = |n: &str, t: DataType| Field::new(n, t, true);
    for t in ["eval_warmup", "eval"] {
        stub(
            ctx,
            tables,
            t,
            vec![
                f("iteration", DataType::Int64),
                f("split", DataType::Utf8),
                f("prompt_id", DataType::Utf8),
                f("greedy", DataType::Boolean),
                f("sample_idx", DataType::Int32),
                f("correct", DataType::Boolean),
                f("score", DataType::Float64),
            ],
        )?;
    }
    stub(ctx, tables, "selected", vec![f("iteration", DataType::Int64), f("prompt_id", DataType::Utf8), f("sample_idx", DataType::Int32)])?;
    stub(
        ctx,
        tables,
        "scored",
        vec![f("iteration", DataType::Int64), f("prompt_id", DataType::Utf8), f("sample_idx", DataType::Int32), f("steps_ok", DataType::Boolean)],
    )?;
    let q = format!(
        "SELECT CAST(iteration AS BIGINT), CAST(split AS VARCHAR), CAST(name AS VARCHAR), CAST(num AS DOUBLE), CAST(den AS DOUBLE), CAST(prompt_id AS VARCHAR) FROM ({PROMPTS_SQL}) ORDER BY 1, 2, 3, 6"
    );
    let mut out = PerPrompt::new();
    for b in crate::sql::query(ctx, &q).await?.collect().await? {
        let s = |i: usize| arrow::compute::cast(b.column(i), &DataType::Utf8).map(|a| a.as_string::<i32>().clone());
        let (split, name, id) = (s(1)?, s(2)?, s(5)?);
        let (it, num, den) = (b.column(0).as_primitive::<Int64Type>(), b.column(3).as_primitive::<Float64Type>(), b.column(4).as_primitive::<Float64Type>());
        for i in 0..b.num_rows() {
            if it.is_null(i) || num.is_null(i) || den.is_null(i) || split.is_null(i) || id.is_null(i) {
                continue;
            }
            let v = out.entry((it.value(i), split.value(i).to_string(), name.value(i).to_string())).or_default();
            v.ids.push(id.value(i).to_string());
            v.values.push((num.value(i), den.value(i)));
        }
    }
    Ok(out)
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
/// per chart into `out`. `memory_mb`: the memory pool of its SQL sessions
/// ([`crate::sql::new_session_with`]). `orders`: pipeline names, best first, whose test
/// accuracies the report compares ([`order::check`]).
pub async fn report(stores: &[String], out: &Path, memory_mb: Option<usize>, orders: &[Vec<String>]) -> Result<Report, Error> {
    if stores.is_empty() {
        return Err(Error::Usage("name at least one run store".into()));
    }
    let mut pipelines: Vec<String> = Vec::new();
    let mut parts: Vec<RecordBatch> = Vec::new();
    // (pipeline, store, seed, per-prompt values) of each run
    let mut prompts: Vec<(String, String, u64, PerPrompt)> = Vec::new();
    let mut notes = Vec::new();
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
        let ctx = crate::sql::new_session_with(memory_mb);
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
        match per_prompt(&ctx, &tables).await {
            Ok(pp) => prompts.push((info.pipeline.clone(), rs.display().to_string(), info.seed, pp)),
            Err(e) => notes.push(format!("{s}: no error bars, the per-prompt values (sql/report_prompts.sql) could not be read: {e}")),
        }
        if !pipelines.contains(&info.pipeline) {
            pipelines.push(info.pipeline.clone());
        }
    }
    // runs in store order, so that the order of the arguments does not change an interval
    prompts.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    let ctx = crate::sql::new_session_with(memory_mb);
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
                interval: None,
                prompts: None,
            });
        }
    }
    for f in figures.iter_mut().filter(|f| CHARTS.iter().any(|c| c.0 == f.split && c.1 == f.name)) {
        let key = (f.iteration, f.split.clone(), f.name.clone());
        let runs: Vec<&[(f64, f64)]> =
            prompts.iter().filter(|(p, _, _, _)| *p == f.pipeline).filter_map(|(_, _, _, pp)| pp.get(&key).map(|v| v.values.as_slice())).collect();
        // only where every seed has the values and they give the metric itself
        if runs.is_empty() || runs.len() as i64 != f.seeds || (statistic(&runs) - f.mean).abs() > 1e-9 {
            continue;
        }
        let seed = BOOTSTRAP_SEED ^ fnv1a(&format!("{}/{}/{}/{}", f.pipeline, f.split, f.name, f.iteration));
        f.interval = bootstrap(&runs, RESAMPLES, seed);
        f.prompts = Some((runs.iter().map(|r| r.len()).min().unwrap_or(0), runs.iter().map(|r| r.len()).max().unwrap_or(0)));
    }
    std::fs::create_dir_all(out)?;
    let mut files = Vec::new();
    for (split, name, title, stem, y_label) in CHARTS {
        let percent = is_percent(name);
        let k = if percent { 100.0 } else { 1.0 };
        let step = *name == "temperature";
        let series: Vec<plot::Series> = pipelines
            .iter()
            .map(|p| plot::Series {
                label: p.clone(),
                points: figures
                    .iter()
                    .filter(|f| &f.pipeline == p && f.split == *split && f.name == *name)
                    .map(|f| plot::Point { x: f.iteration as f64, y: k * f.mean, interval: f.interval.map(|(lo, hi)| (k * lo, k * hi)) })
                    .collect(),
                step,
            })
            .filter(|s| !s.points.is_empty())
            .collect();
        if series.is_empty() {
            continue;
        }
        let chosen: Vec<&Figure> = figures.iter().filter(|f| f.split == *split && f.name == *name).collect();
        let subtitle = if step {
            "constant within an iteration".to_string()
        } else {
            let n = prompt_counts(&chosen).map(|n| format!("n = {n}")).unwrap_or_else(|| "n unknown".into());
            let bars = if chosen.iter().any(|f| f.interval.is_some()) { " · error bars: 95% bootstrap interval over prompts" } else { "" };
            let seeds = chosen.iter().map(|f| f.seeds).max().unwrap_or(1);
            format!("{n}{}{bars}", if seeds > 1 { " per run, mean over seeds" } else { "" })
        };
        let chart = plot::Chart { title: title.to_string(), subtitle, x_label: "iteration (0 = warm-up)".into(), y_label: y_label.to_string(), series };
        for (ext, bytes) in [("svg", chart.svg().into_bytes()), ("png", chart.png())] {
            let f = format!("{stem}.{ext}");
            std::fs::write(out.join(&f), bytes)?;
            files.push(f);
        }
    }
    let last = |p: &str| figures.iter().filter(|f| f.pipeline == p).map(|f| f.iteration).max().unwrap_or(0);
    let gains = gain::gains(&prompts, last);
    let orders: Vec<order::OrderCheck> = orders.iter().map(|o| order::check(o, &prompts, last)).collect();
    let markdown = markdown(&pipelines, &figures, &gains, &orders, &files, &notes);
    std::fs::write(out.join("report.md"), &markdown)?;
    files.push("report.md".into());
    Ok(Report { figures, gains, orders, markdown, files, queries: vec![RUN_SQL.to_string(), COMPARE_SQL.to_string(), PROMPTS_SQL.to_string()], notes })
}

/// Whether a metric is a share, shown in percent (a temperature or a count is shown as it is).
fn is_percent(name: &str) -> bool {
    name != "temperature" && !name.ends_with("rows") && name != "k" && name != "prompts"
}

/// "300 prompts" or "96–120 prompts": how many prompts are behind the figures.
fn prompt_counts(figures: &[&Figure]) -> Option<String> {
    let (lo, hi) = figures.iter().filter_map(|f| f.prompts).fold((usize::MAX, 0), |(lo, hi), (a, b)| (lo.min(a), hi.max(b)));
    match (lo, hi) {
        (usize::MAX, _) => None,
        (lo, hi) if lo == hi => Some(format!("{lo} prompts")),
        (lo, hi) => Some(format!("{lo}–{hi} prompts")),
    }
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

fn markdown(pipelines: &[String], figures: &[Figure], gains: &[gain::Gain], orders: &[order::OrderCheck], files: &[String], notes: &[String]) -> String {
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
    o += &gain::markdown(gains);
    o += &order::markdown(orders);
    let max_it = pipelines.iter().map(|p| last(p)).max().unwrap_or(0);
    for (split, name, title, _, _) in CHARTS {
        if !figures.iter().any(|f| f.split == *split && f.name == *name) {
            continue;
        }
        let _ = write!(o, "\n## {title} by iteration\n\n");
        let chosen: Vec<&Figure> = figures.iter().filter(|f| f.split == *split && f.name == *name).collect();
        if let Some(n) = prompt_counts(&chosen).filter(|_| is_percent(name)) {
            let _ = write!(o, "n = {n} per run.\n\n");
        }
        o += "| pipeline |";
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
        let _ = write!(
            o,
            "\n## Charts\n\nIn percent (the temperature as it is, drawn as steps: it is constant within an iteration); a point is the mean over seeds, \
             its error bar the 95% bootstrap interval over prompts ({RESAMPLES} resamples of each run's prompts, seeded: the same runs give the same bars).\n\n"
        );
        for f in charts {
            let _ = writeln!(o, "![{f}]({f})");
        }
    }
    for n in notes {
        let _ = writeln!(o, "\nNote: {n}");
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_show_percent_and_spread_only_across_seeds() {
        let f = |seeds, name: &str| Figure {
            pipeline: "p".into(),
            iteration: 1,
            split: "test".into(),
            name: name.into(),
            mean: 0.4125,
            spread: 0.0123,
            seeds,
            interval: None,
            prompts: None,
        };
        assert_eq!(cell(Some(&f(3, "greedy_accuracy"))), "41.2 ± 1.2");
        assert_eq!(cell(Some(&f(1, "greedy_accuracy"))), "41.2");
        assert_eq!(cell(Some(&f(1, "temperature"))), "0.41");
        assert_eq!(cell(None), "–");
    }

    #[test]
    fn the_bootstrap_interval_is_seeded_and_covers_the_mean() {
        // 300 prompts, 120 correct: 40%
        let prompts: Vec<(f64, f64)> = (0..300).map(|i| (if i % 5 < 2 { 1.0 } else { 0.0 }, 1.0)).collect();
        let runs = [prompts.as_slice()];
        assert!((statistic(&runs) - 0.4).abs() < 1e-12);
        let (lo, hi) = bootstrap(&runs, RESAMPLES, 7).unwrap();
        assert_eq!(bootstrap(&runs, RESAMPLES, 7), Some((lo, hi)), "the same seed gives the same interval");
        assert!(lo < 0.4 && 0.4 < hi, "{lo} {hi}");
        // ±1.96 standard errors of a proportion: sqrt(0.4 · 0.6 / 300) ≈ 0.0283 → width ≈ 0.111
        assert!((hi - lo - 0.111).abs() < 0.015, "{lo} {hi}");
        assert_ne!(bootstrap(&runs, RESAMPLES, 8), Some((lo, hi)), "another seed, other draws");
        // fewer prompts, a wider interval; all alike, none
        let (a, b) = bootstrap(&[&prompts[..30]], RESAMPLES, 7).unwrap();
        assert!(b - a > 2.0 * (hi - lo));
        assert_eq!(bootstrap(&[&[(1.0, 1.0); 10][..]], RESAMPLES, 7), Some((1.0, 1.0)));
        assert_eq!(bootstrap(&[&[][..]], RESAMPLES, 7), None);
    }

    #[test]
    fn a_ratio_metric_resamples_prompts_not_rows() {
        // prompt A: 3 of 4 selected rollouts sound, B: 0 of 1 → 3/5 overall (not the mean of 0.75 and 0)
        let runs = [&[(3.0, 4.0), (0.0, 1.0)][..]];
        assert!((statistic(&runs) - 0.6).abs() < 1e-12);
        let (lo, hi) = bootstrap(&runs, RESAMPLES, 1).unwrap();
        assert!(lo >= 0.0 && hi <= 0.75 + 1e-12 && lo < hi, "{lo} {hi}");
    }

    #[test]
    fn prompt_counts_name_the_range() {
        let f = |n: Option<(usize, usize)>| Figure {
            pipeline: "p".into(),
            iteration: 1,
            split: "test".into(),
            name: "greedy_accuracy".into(),
            mean: 0.5,
            spread: 0.0,
            seeds: 1,
            interval: None,
            prompts: n,
        };
        let (a, b, c) = (f(Some((300, 300))), f(Some((96, 120))), f(None));
        assert_eq!(prompt_counts(&[&a]), Some("300 prompts".into()));
        assert_eq!(prompt_counts(&[&a, &b, &c]), Some("96–300 prompts".into()));
        assert_eq!(prompt_counts(&[&c]), None);
    }
}
