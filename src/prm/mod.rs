//! Process reward model data: Monte Carlo step labels (for every step prefix of a response,
//! the share of sampled completions that reach the gold answer), independent of the sampler.

use crate::data::answer::{answer_match, extract_answer, split_steps, AnswerType};

/// The gold answer of a prompt, as `verify` matches it.
#[derive(Debug, Clone)]
pub struct Gold {
    pub answer: String,
    pub answer_type: AnswerType,
    pub precision: Option<i32>,
    pub choices: Option<Vec<String>>,
}

impl Gold {
    /// Whether a full response's extracted answer matches.
    pub fn accepts(&self, response: &str) -> bool {
        extract_answer(response).is_some_and(|p| answer_match(&p, &self.answer, self.answer_type, self.precision, self.choices.as_deref()))
    }
}

/// One sampled response to label.
#[derive(Debug, Clone)]
pub struct LabelTask {
    pub prompt_id: String,
    pub sample_idx: u32,
    pub response: String,
    pub gold: Gold,
}

/// Completions to sample: `n` of them, each continuing `prefix` (whole steps, ending with a
/// newline) as the response to the task's prompt, completion `j` seeded by `seeds[j]`.
#[derive(Debug, Clone)]
pub struct CompletionJob {
    pub task: usize,
    pub step_idx: u32,
    pub prefix: String,
    pub seeds: Vec<u64>,
}

/// A sampler of completions (the policy, or a stub in tests).
pub trait Completer {
    type Error;
    /// For each job, its completions (the text after the prefix), in seed order.
    fn complete(&self, tasks: &[LabelTask], jobs: &[CompletionJob]) -> Result<Vec<Vec<String>>, Self::Error>;
}

/// The label of one step of one response.
#[derive(Debug, Clone, PartialEq)]
pub struct StepLabel {
    pub prompt_id: String,
    pub sample_idx: u32,
    /// 0-based.
    pub step_idx: u32,
    pub step_text: String,
    /// The response up to and including this step.
    pub prefix: String,
    /// Completions sampled (1 for the last step, which is judged as it stands).
    pub n: u32,
    pub successes: u32,
    /// successes / n.
    pub soft: f64,
    /// successes > 0.
    pub hard: bool,
}

/// The seed of completion `j` of step `step_idx` of a response, from the run seed.
pub fn completion_seed(run_seed: u64, iteration: u32, prompt_id: &str, sample_idx: u32, step_idx: u32, j: u32) -> u64 {
    crate::model::generate::rollout_seed(run_seed, iteration, &format!("{prompt_id}\u{1f}{sample_idx}\u{1f}{step_idx}"), j)
}

/// Monte Carlo labels of every step of every task (Math-Shepherd style): a step that is not
/// the last is labeled by `n` completions of the response cut after it; the last step by
/// whether the response itself reaches the gold answer. Completion `j` of a step is seeded by
/// its index `first + j`, so `first` = 4 gives completions independent of those of `first` = 0,
/// `n` = 4 (and 0..4 plus 4..8 are 0..8).
pub fn mc_labels<C: Completer>(completer: &C, tasks: &[LabelTask], first: u32, n: u32, run_seed: u64, iteration: u32) -> Result<Vec<StepLabel>, C::Error> {
    let mut jobs = Vec::new();
    let mut steps_of = Vec::with_capacity(tasks.len());
    for (t, task) in tasks.iter().enumerate() {
        let steps = split_steps(&task.response);
        for i in 0..steps.len().saturating_sub(1) {
            jobs.push(CompletionJob {
                task: t,
                step_idx: i as u32,
                prefix: prefix_of(&steps[..=i]),
                seeds: (first..first + n).map(|j| completion_seed(run_seed, iteration, &task.prompt_id, task.sample_idx, i as u32, j)).collect(),
            });
        }
        steps_of.push(steps);
    }
    let completions = if n == 0 { vec![vec![]; jobs.len()] } else { completer.complete(tasks, &jobs)? };
    let mut by_step = std::collections::HashMap::new();
    for (job, comps) in jobs.iter().zip(completions) {
        let gold = &tasks[job.task].gold;
        let ok = comps.iter().filter(|c| gold.accepts(&format!("{}{c}", job.prefix))).count() as u32;
        by_step.insert((job.task, job.step_idx), (comps.len() as u32, ok));
    }
    let mut out = Vec::new();
    for (t, task) in tasks.iter().enumerate() {
        let steps = &steps_of[t];
        for (i, text) in steps.iter().enumerate() {
            let (n, successes) = if i + 1 == steps.len() { (1, u32::from(task.gold.accepts(&task.response))) } else { by_step[&(t, i as u32)] };
            out.push(StepLabel {
                prompt_id: task.prompt_id.clone(),
                sample_idx: task.sample_idx,
                step_idx: i as u32,
                step_text: text.clone(),
                prefix: prefix_of(&steps[..=i]).trim_end().to_string(),
                n,
                successes,
                soft: if n == 0 { 0.0 } else { successes as f64 / n as f64 },
                hard: successes > 0,
            });
        }
    }
    Ok(out)
}

/// Steps joined by newlines, with a trailing newline: the text a completion continues.
pub fn prefix_of<S: AsRef<str>>(steps: &[S]) -> String {
    steps.iter().map(|s| format!("{}\n", s.as_ref())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Completes step prefix i correctly with probability p[i] (from the seed), else wrongly.
    struct Stub {
        p: Vec<f64>,
    }

    impl Completer for Stub {
        type Error = String;
        fn complete(&self, _: &[LabelTask], jobs: &[CompletionJob]) -> Result<Vec<Vec<String>>, String> {
            Ok(jobs
                .iter()
                .map(|j| {
                    j.seeds
                        .iter()
                        .map(|&s| {
                            let u = crate::rng::unit_f64(s);
                            if u < self.p[j.step_idx as usize] {
                                "Answer: 12".to_string()
                            } else {
                                "Answer: 13".to_string()
                            }
                        })
                        .collect()
                })
                .collect())
        }
    }

    fn task(response: &str) -> LabelTask {
        LabelTask {
            prompt_id: "p1".into(),
            sample_idx: 3,
            response: response.into(),
            gold: Gold { answer: "12".into(), answer_type: AnswerType::Integer, precision: None, choices: None },
        }
    }

    #[test]
    fn monte_carlo_labels_converge_to_the_success_probability() {
        let stub = Stub { p: vec![0.9, 0.5, 0.1] };
        let t = task("Step 1: a\nStep 2: b\nStep 3: c\nAnswer: 13");
        for n in [16u32, 4000] {
            let labels = mc_labels(&stub, std::slice::from_ref(&t), 0, n, 7, 1).unwrap();
            assert_eq!(labels.len(), 4);
            for (l, p) in labels.iter().zip(&stub.p) {
                assert_eq!(l.n, n);
                // binomial standard error; 4σ at n = 16 is loose, at n = 4000 tight (≤ 0.032)
                let tol = 4.0 * (p * (1.0 - p) / n as f64).sqrt() + 1e-9;
                assert!((l.soft - p).abs() <= tol, "n={n} step {}: {} vs {p}", l.step_idx, l.soft);
                assert_eq!(l.hard, l.successes > 0);
            }
            // the last step is judged as it stands: this response is wrong
            let last = &labels[3];
            assert_eq!((last.n, last.successes, last.soft, last.hard), (1, 0, 0.0, false));
            assert_eq!(labels[1].prefix, "Step 1: a\nStep 2: b");
            assert_eq!(labels[1].step_text, "Step 2: b");
        }
        // same seed, same labels; another run seed, other completions
        let a = mc_labels(&stub, std::slice::from_ref(&t), 0, 64, 7, 1).unwrap();
        assert_eq!(a, mc_labels(&stub, std::slice::from_ref(&t), 0, 64, 7, 1).unwrap());
        assert_ne!(a, mc_labels(&stub, std::slice::from_ref(&t), 0, 64, 8, 1).unwrap());
        // completions 32..64 are those of 0..64 the first 32 leave out: their successes add up
        let (lo, hi) = (mc_labels(&stub, std::slice::from_ref(&t), 0, 32, 7, 1).unwrap(), mc_labels(&stub, &[t], 32, 32, 7, 1).unwrap());
        assert_ne!(lo, hi, "another completion range, other completions");
        for ((l, h), all) in lo.iter().zip(&hi).zip(&a).take(3) {
            assert_eq!((l.n + h.n, l.successes + h.successes), (all.n, all.successes), "step {}", all.step_idx);
        }
    }

    #[test]
    fn a_correct_last_step_and_a_one_step_response() {
        let stub = Stub { p: vec![] };
        let labels = mc_labels(&stub, &[task("Answer: 12")], 0, 8, 0, 0).unwrap();
        assert_eq!(labels.len(), 1);
        assert_eq!((labels[0].n, labels[0].successes, labels[0].soft, labels[0].hard), (1, 1, 1.0, true));
        assert!(mc_labels(&stub, &[task("")], 0, 8, 0, 0).unwrap().is_empty());
    }
}
