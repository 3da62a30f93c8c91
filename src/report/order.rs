//! The orders `mstar report --order A>B>C` checks: each neighbouring pair's difference in final
//! test greedy accuracy, paired by seed and prompt, with a bootstrap interval and a verdict.

use super::gain::{bootstrap, gain, paired, Pair};
use super::{fnv1a, PerPrompt, BOOTSTRAP_SEED, RESAMPLES};
use std::fmt::Write as _;

/// The metric an order compares: (split, name).
pub const ORDER_METRIC: (&str, &str) = ("test", "greedy_accuracy");

/// One neighbouring pair of an order: `a` − `b` at their final iterations.
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    pub a: String,
    pub b: String,
    /// The seeds both ran (the difference is the mean over them).
    pub seeds: Vec<u64>,
    pub diff: f64,
    pub interval: Option<(f64, f64)>,
    /// The fewest prompts a seed's pair shares.
    pub prompts: usize,
}

/// An order and its comparisons (none where a pipeline has no run or the two share no seed).
#[derive(Debug, Clone, PartialEq)]
pub struct OrderCheck {
    pub order: Vec<String>,
    pub steps: Vec<Option<Comparison>>,
}

impl OrderCheck {
    /// "holds" (every interval above 0), "reversed" (one below 0) or "not resolved".
    pub fn verdict(&self) -> &'static str {
        let ivs: Vec<Option<(f64, f64)>> = self.steps.iter().map(|s| s.as_ref().and_then(|c| c.interval)).collect();
        if ivs.iter().any(|i| i.is_some_and(|(_, hi)| hi < 0.0)) {
            "reversed"
        } else if !ivs.is_empty() && ivs.iter().all(|i| i.is_some_and(|(lo, _)| lo > 0.0)) {
            "holds"
        } else if self.steps.iter().any(Option::is_none) {
            "not measured (a pipeline without runs, or no seed in common)"
        } else {
            "not resolved (an interval spans 0)"
        }
    }
}

/// `A>B>C` (pipeline names, best first) → [A, B, C].
pub fn parse(s: &str) -> Result<Vec<String>, String> {
    let names: Vec<String> = s.split('>').map(|x| x.trim().to_string()).collect();
    if names.len() < 2 || names.iter().any(String::is_empty) {
        return Err(format!("--order `{s}`: expected pipeline names separated by `>`, best first (e.g. continuous>iterative_rft>rest_em)"));
    }
    Ok(names)
}

/// Checks `order` on the runs (pipeline, store, seed, per-prompt values); `last` gives a
/// pipeline's final iteration.
pub fn check(order: &[String], runs: &[(String, String, u64, PerPrompt)], last: impl Fn(&str) -> i64) -> OrderCheck {
    let (split, name) = ORDER_METRIC;
    let values = |p: &str, seed: u64| {
        let key = (last(p), split.to_string(), name.to_string());
        runs.iter().find(|r| r.0 == p && r.2 == seed).and_then(|r| r.3.get(&key))
    };
    let steps = order
        .windows(2)
        .map(|w| {
            let (a, b) = (&w[0], &w[1]);
            let mut seeds: Vec<u64> = runs.iter().filter(|r| &r.0 == a).map(|r| r.2).filter(|s| values(b, *s).is_some() && values(a, *s).is_some()).collect();
            seeds.sort_unstable();
            seeds.dedup();
            let per_seed: Vec<Vec<Pair>> = seeds.iter().map(|s| paired(values(b, *s).expect("checked"), values(a, *s).expect("checked"))).collect();
            if per_seed.is_empty() || per_seed.iter().any(Vec::is_empty) {
                return None;
            }
            let refs: Vec<&[Pair]> = per_seed.iter().map(Vec::as_slice).collect();
            Some(Comparison {
                a: a.clone(),
                b: b.clone(),
                diff: gain(&refs),
                interval: bootstrap(&refs, RESAMPLES, BOOTSTRAP_SEED ^ fnv1a(&format!("order/{a}/{b}"))),
                prompts: per_seed.iter().map(Vec::len).min().unwrap_or(0),
                seeds,
            })
        })
        .collect();
    OrderCheck { order: order.to_vec(), steps }
}

/// The report's "Orders" section (empty without orders).
pub fn markdown(checks: &[OrderCheck]) -> String {
    if checks.is_empty() {
        return String::new();
    }
    let mut o = String::from(
        "\n## Orders\n\nEach neighbour's difference in test greedy accuracy at its final iteration, in points, averaged over the seeds both ran; \
         in brackets the 95% bootstrap interval over prompts (paired: a seed's prompts are drawn once for both). An order holds where every \
         interval lies above 0.\n\n| order | verdict | differences |\n|---|---|---|\n",
    );
    for c in checks {
        let parts: Vec<String> = c
            .steps
            .iter()
            .zip(c.order.windows(2))
            .map(|(s, w)| match s {
                None => format!("{} − {}: –", w[0], w[1]),
                Some(s) => {
                    let pts = |x: f64| format!("{:+.1}", 100.0 * x);
                    let iv = s.interval.map(|(lo, hi)| format!(" [{}, {}]", pts(lo), pts(hi))).unwrap_or_default();
                    format!(
                        "{} − {}: {}{iv} ({} seed{}, {} prompts)",
                        s.a,
                        s.b,
                        pts(s.diff),
                        s.seeds.len(),
                        if s.seeds.len() == 1 { "" } else { "s" },
                        s.prompts
                    )
                }
            })
            .collect();
        let _ = writeln!(o, "| {} | {} | {} |", c.order.join(" > "), c.verdict(), parts.join("; "));
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::PromptValues;

    fn run(p: &str, seed: u64, right: &[u8]) -> (String, String, u64, PerPrompt) {
        let mut pp = PerPrompt::new();
        let ids = (0..right.len()).map(|i| format!("q{i:03}")).collect();
        pp.insert((2, "test".into(), "greedy_accuracy".into()), PromptValues { ids, values: right.iter().map(|&r| (r as f64, 1.0)).collect() });
        (p.to_string(), format!("{p}-{seed}"), seed, pp)
    }

    #[test]
    fn an_order_holds_is_reversed_or_is_not_resolved() {
        // 200 prompts: a gets 60% right, b 40%, c 40% (other prompts than b's)
        let n = 200;
        let a: Vec<u8> = (0..n).map(|i| u8::from(i % 5 < 3)).collect();
        let b: Vec<u8> = (0..n).map(|i| u8::from(i % 5 < 2)).collect();
        let c: Vec<u8> = (0..n).map(|i| u8::from(i % 5 >= 3)).collect();
        let runs = vec![run("a", 0, &a), run("a", 1, &a), run("b", 0, &b), run("b", 1, &b), run("c", 0, &c)];
        let names = |s: &str| parse(s).unwrap();
        let ab = check(&names("a>b"), &runs, |_| 2);
        let s = ab.steps[0].as_ref().unwrap();
        assert_eq!((s.seeds.clone(), s.prompts), (vec![0, 1], n));
        assert!((s.diff - 0.2).abs() < 1e-12);
        assert_eq!(ab.verdict(), "holds");
        assert_eq!(check(&names("b>a"), &runs, |_| 2).verdict(), "reversed");
        // b and c are equally right (40%) on other prompts: the interval spans 0; c ran seed 0 only
        let bc = check(&names("b>c"), &runs, |_| 2);
        assert_eq!((bc.verdict(), bc.steps[0].as_ref().unwrap().seeds.clone()), ("not resolved (an interval spans 0)", vec![0]));
        assert!(check(&names("a>nobody"), &runs, |_| 2).verdict().starts_with("not measured"));
        let md = markdown(&[ab]);
        assert!(md.contains("| a > b | holds | a − b: +20.0 [+"), "{md}");
        assert!(md.contains("(2 seeds, 200 prompts) |"), "{md}");
        assert!(parse("a").is_err() && parse("a>>b").is_err() && parse(" a > b ").unwrap() == ["a", "b"]);
    }
}
