//! Gains over the warm-up with paired bootstrap intervals: each run's final iteration against its
//! own iteration 0 on the same prompts, per seed and averaged over a pipeline's seeds.

use super::{fnv1a, percentile_interval, PerPrompt, PromptValues, BOOTSTRAP_SEED, RESAMPLES};
use std::collections::HashMap;
use std::fmt::Write as _;

/// The metrics whose gain the report gives: (split, name).
pub const GAIN_METRICS: &[(&str, &str)] = &[("test", "greedy_accuracy"), ("test_hard", "greedy_accuracy")];

/// A run's (or a pipeline's mean) gain of one metric from iteration 0 to `iteration`.
#[derive(Debug, Clone, PartialEq)]
pub struct Gain {
    pub pipeline: String,
    pub split: String,
    pub name: String,
    pub iteration: i64,
    /// The run's seed; None: the mean over the pipeline's runs.
    pub seed: Option<u64>,
    /// How many runs (seeds) are behind it.
    pub runs: usize,
    /// After minus before, as a share (0.05 = 5 points).
    pub gain: f64,
    /// 95% paired bootstrap interval over prompts.
    pub interval: Option<(f64, f64)>,
    /// The prompts both iterations have (the fewest of the runs').
    pub prompts: usize,
}

/// One prompt's (num, den) before and after.
pub type Pair = ((f64, f64), (f64, f64));

/// The prompts `before` and `after` both have, matched by prompt_id, in `after`'s order.
pub fn paired(before: &PromptValues, after: &PromptValues) -> Vec<Pair> {
    let at: HashMap<&str, (f64, f64)> = before.ids.iter().map(String::as_str).zip(before.values.iter().copied()).collect();
    after.ids.iter().zip(&after.values).filter_map(|(id, a)| at.get(id.as_str()).map(|b| (*b, *a))).collect()
}

/// sum(num) / sum(den) after minus the same before, over the prompts drawn by `pick`.
fn one_gain(n: usize, mut pick: impl FnMut() -> Pair) -> f64 {
    let (mut nb, mut db, mut na, mut da) = (0.0, 0.0, 0.0, 0.0);
    for _ in 0..n {
        let ((a, b), (c, d)) = pick();
        (nb, db, na, da) = (nb + a, db + b, na + c, da + d);
    }
    na / da - nb / db
}

/// The mean over runs of each run's gain.
pub fn gain(runs: &[&[Pair]]) -> f64 {
    runs.iter()
        .map(|r| {
            let mut i = 0;
            one_gain(r.len(), || {
                i += 1;
                r[i - 1]
            })
        })
        .sum::<f64>()
        / runs.len() as f64
}

/// 95% percentile bootstrap interval of [`gain`]: each resample draws every run's prompts with
/// replacement, the same draw for before and after (paired), seeded.
pub fn bootstrap(runs: &[&[Pair]], resamples: usize, seed: u64) -> Option<(f64, f64)> {
    if runs.is_empty() || runs.iter().any(|r| r.is_empty()) || resamples == 0 {
        return None;
    }
    let mut rng = crate::rng::SplitMix64::new(seed);
    let mut stats: Vec<f64> =
        (0..resamples).map(|_| runs.iter().map(|r| one_gain(r.len(), || r[rng.below(r.len())])).sum::<f64>() / runs.len() as f64).collect();
    percentile_interval(&mut stats)
}

/// The gains of every pipeline's final iteration (`last`) over its iteration 0, per run and, for
/// a pipeline of several runs, their mean. `runs`: (pipeline, store, seed, per-prompt values),
/// in a fixed order.
pub fn gains(runs: &[(String, String, u64, PerPrompt)], last: impl Fn(&str) -> i64) -> Vec<Gain> {
    let mut pipelines: Vec<&str> = runs.iter().map(|r| r.0.as_str()).collect();
    pipelines.dedup();
    let mut out = Vec::new();
    for p in pipelines {
        let it = last(p);
        if it == 0 {
            continue;
        }
        for (split, name) in GAIN_METRICS {
            let key = |i: i64| (i, split.to_string(), name.to_string());
            let per_run: Vec<(u64, Vec<Pair>)> = runs
                .iter()
                .filter(|r| r.0 == p)
                .filter_map(|(_, _, seed, pp)| Some((*seed, paired(pp.get(&key(0))?, pp.get(&key(it))?))))
                .filter(|(_, v)| !v.is_empty())
                .collect();
            let make = |seed: Option<u64>, rs: &[&[Pair]]| Gain {
                pipeline: p.to_string(),
                split: split.to_string(),
                name: name.to_string(),
                iteration: it,
                seed,
                runs: rs.len(),
                gain: gain(rs),
                interval: bootstrap(rs, RESAMPLES, BOOTSTRAP_SEED ^ fnv1a(&format!("gain/{p}/{split}/{name}/{it}/{seed:?}"))),
                prompts: rs.iter().map(|r| r.len()).min().unwrap_or(0),
            };
            for (seed, v) in &per_run {
                out.push(make(Some(*seed), &[v.as_slice()]));
            }
            if per_run.len() > 1 {
                let all: Vec<&[Pair]> = per_run.iter().map(|(_, v)| v.as_slice()).collect();
                out.push(make(None, &all));
            }
        }
    }
    out
}

/// "+4.3 [+1.0, +7.7] ✓" in points; ✓ where the interval lies above 0.
pub fn cell(g: &Gain) -> String {
    let pts = |x: f64| format!("{:+.1}", 100.0 * x);
    match g.interval {
        Some((lo, hi)) => format!("{} [{}, {}]{}", pts(g.gain), pts(lo), pts(hi), if lo > 0.0 { " ✓" } else { "" }),
        None => pts(g.gain),
    }
}

/// The report's "Gain over the warm-up" section (empty without gains).
pub fn markdown(gains: &[Gain]) -> String {
    if gains.is_empty() {
        return String::new();
    }
    let mut seeds: Vec<u64> = gains.iter().filter_map(|g| g.seed).collect();
    seeds.sort_unstable();
    seeds.dedup();
    let mut o = String::from(
        "\n## Gain over the warm-up\n\nThe final iteration minus iteration 0 (each run's own warm-up), on the prompts both were measured on, in points; \
         in brackets the 95% bootstrap interval over prompts, paired (a resample draws the same prompts for both iterations; over seeds, \
         each seed's prompts are drawn and the gains averaged); ✓: the interval lies above 0.\n\n| pipeline | metric | prompts | mean over seeds |",
    );
    for s in &seeds {
        let _ = write!(o, " seed {s} |");
    }
    o += "\n|---|---|---:|---|";
    o += &"---|".repeat(seeds.len());
    o += "\n";
    let mut rows: Vec<(&str, &str, &str)> = gains.iter().map(|g| (g.pipeline.as_str(), g.split.as_str(), g.name.as_str())).collect();
    rows.dedup();
    for (p, split, name) in rows {
        let of = |seed: Option<u64>| gains.iter().find(|g| g.pipeline == p && g.split == split && g.name == name && g.seed == seed);
        let mine: Vec<&Gain> = gains.iter().filter(|g| g.pipeline == p && g.split == split && g.name == name).collect();
        let n = mine.iter().map(|g| g.prompts).min().unwrap_or(0);
        let single = mine.iter().filter(|g| g.seed.is_some()).count() == 1;
        let mean = of(None).or_else(|| single.then(|| mine.iter().copied().find(|g| g.seed.is_some())).flatten());
        let _ = write!(o, "| {p} | {split} {} | {n} | {} |", name.replace('_', " "), mean.map(cell).unwrap_or_else(|| "–".into()));
        for s in &seeds {
            let _ = write!(o, " {} |", of(Some(*s)).map(cell).unwrap_or_else(|| "–".into()));
        }
        o += "\n";
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(ids: &[&str], v: &[f64]) -> PromptValues {
        PromptValues { ids: ids.iter().map(|s| s.to_string()).collect(), values: v.iter().map(|x| (*x, 1.0)).collect() }
    }

    #[test]
    fn pairs_match_prompt_ids() {
        let before = values(&["a", "b", "c"], &[1.0, 0.0, 0.0]);
        let after = values(&["b", "c", "d"], &[1.0, 0.0, 1.0]);
        assert_eq!(paired(&before, &after), vec![((0.0, 1.0), (1.0, 1.0)), ((0.0, 1.0), (0.0, 1.0))]);
    }

    #[test]
    fn a_paired_interval_is_narrower_than_two_unpaired_ones() {
        // 400 prompts: 40% right before; after, 10% more prompts right and none lost
        let before: Vec<f64> = (0..400).map(|i| if i % 10 < 4 { 1.0 } else { 0.0 }).collect();
        let after: Vec<f64> = (0..400).map(|i| if i % 10 < 5 { 1.0 } else { 0.0 }).collect();
        let pairs: Vec<Pair> = before.iter().zip(&after).map(|(b, a)| ((*b, 1.0), (*a, 1.0))).collect();
        assert!((gain(&[&pairs]) - 0.1).abs() < 1e-12);
        let (lo, hi) = bootstrap(&[&pairs], RESAMPLES, 3).unwrap();
        assert_eq!(bootstrap(&[&pairs], RESAMPLES, 3), Some((lo, hi)), "seeded");
        assert!(lo > 0.0 && lo < 0.1 && 0.1 < hi, "{lo} {hi}");
        // the gain is one prompt in ten going 0 → 1: sd of the mean sqrt(0.1 · 0.9 / 400) = 0.015,
        // so ±1.96 sd ≈ ±0.029; unpaired, the two accuracies' errors (≈ 0.0245 each) would add to ±0.068
        assert!((hi - lo - 0.059).abs() < 0.012, "{lo} {hi}");
        // no change: a zero-width interval at 0; no prompts: none
        let same: Vec<Pair> = before.iter().map(|b| ((*b, 1.0), (*b, 1.0))).collect();
        assert_eq!(bootstrap(&[&same], RESAMPLES, 3), Some((0.0, 0.0)));
        assert_eq!(bootstrap(&[&[][..]], RESAMPLES, 3), None);
        // over seeds: the mean of the gains, an interval around it
        let g2 = gain(&[&pairs, &same]);
        assert!((g2 - 0.05).abs() < 1e-12);
        let (lo2, hi2) = bootstrap(&[&pairs, &same], RESAMPLES, 3).unwrap();
        assert!(lo2 < 0.05 && 0.05 < hi2 && hi2 - lo2 < hi - lo, "{lo2} {hi2}");
    }

    #[test]
    fn gains_per_seed_and_over_seeds_and_their_cells() {
        let run = |seed: u64, after: &[f64]| {
            let mut pp = PerPrompt::new();
            pp.insert((0, "test".into(), "greedy_accuracy".into()), values(&["a", "b", "c", "d"], &[0.0, 0.0, 1.0, 0.0]));
            pp.insert((2, "test".into(), "greedy_accuracy".into()), values(&["a", "b", "c", "d"], after));
            ("p".to_string(), format!("s{seed}"), seed, pp)
        };
        let runs = vec![run(0, &[1.0, 1.0, 1.0, 0.0]), run(1, &[1.0, 0.0, 1.0, 0.0])];
        let g = gains(&runs, |_| 2);
        assert_eq!(g.len(), 3, "two seeds and their mean; test_hard has no values: {g:?}");
        assert_eq!((g[0].seed, g[0].gain, g[0].prompts), (Some(0), 0.5, 4));
        assert_eq!((g[1].seed, g[1].gain), (Some(1), 0.25));
        assert_eq!((g[2].seed, g[2].runs, g[2].gain), (None, 2, 0.375));
        let md = markdown(&g);
        assert!(md.contains("| p | test greedy accuracy | 4 | +37.5 ["), "{md}");
        assert!(md.contains("| seed 0 | seed 1 |"), "{md}");
        assert!(gains(&runs, |_| 0).is_empty(), "no iteration after the warm-up, no gain");
        let g = Gain { interval: Some((0.01, 0.2)), ..g[0].clone() };
        assert_eq!(cell(&g), "+50.0 [+1.0, +20.0] ✓");
        assert_eq!(cell(&Gain { interval: Some((-0.01, 0.2)), ..g.clone() }), "+50.0 [-1.0, +20.0]");
    }
}
