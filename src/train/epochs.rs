//! The epoch loop every trainer shares: each epoch a seeded shuffle of the examples, optimizer
//! steps over them, a step log and progress lines, and a stop between steps when cancelled.

use super::TrainerState;
use crate::cancel::CancelToken;

/// One entry per optimizer step (the `train_log` side table's columns).
#[derive(Debug, Default)]
pub struct StepLog {
    pub steps: Vec<i64>,
    pub epochs: Vec<i64>,
    pub losses: Vec<f64>,
    pub lrs: Vec<f64>,
}

/// A training loop stopped by a cancellation between two steps.
#[derive(Debug, thiserror::Error)]
#[error("interrupted at step {step} of {total}; nothing of this stage was committed")]
pub struct Interrupted {
    pub step: usize,
    pub total: usize,
}

/// The number of optimizer steps of `epochs` over `examples` in steps of `per_step`.
pub fn total_steps(examples: usize, per_step: usize, epochs: u32) -> usize {
    examples.div_ceil(per_step.max(1)) * epochs as usize
}

/// Runs `epochs` epochs: the order of each is a shuffle seeded by the state's RNG plus the epoch,
/// cut into steps of `per_step` examples; `step` takes one optimizer step (it advances
/// `state.step`) on them at the schedule's learning rate and returns the loss. `at_tenth` runs
/// after each tenth of the steps (e.g. a held-out evaluation). The state's RNG then moves on by
/// `epochs`, so the next run shuffles differently.
#[allow(clippy::too_many_arguments)]
pub fn run_epochs<E, Er: From<Interrupted>>(
    label: &str,
    examples: &[E],
    epochs: u32,
    per_step: usize,
    state: &mut TrainerState,
    cancel: &CancelToken,
    mut step: impl FnMut(&mut TrainerState, &[&E], f64) -> Result<f64, Er>,
    mut at_tenth: impl FnMut(&TrainerState) -> Result<(), Er>,
) -> Result<StepLog, Er> {
    let total = total_steps(examples.len(), per_step, epochs);
    let started = std::time::Instant::now();
    let mut log = StepLog::default();
    for epoch in 0..epochs {
        let mut order: Vec<usize> = (0..examples.len()).collect();
        crate::rng::SplitMix64::new(state.rng.wrapping_add(epoch as u64)).shuffle(&mut order);
        for chunk in order.chunks(per_step.max(1)) {
            if cancel.is_cancelled() {
                return Err(Interrupted { step: log.losses.len(), total }.into());
            }
            let lr = state.schedule.lr_at(state.step);
            let batch: Vec<&E> = chunk.iter().map(|&i| &examples[i]).collect();
            let loss = step(state, &batch, lr)?;
            log.steps.push(state.step as i64);
            log.losses.push(loss);
            log.lrs.push(lr);
            log.epochs.push(epoch as i64);
            let done = log.losses.len();
            if done * 10 / total.max(1) != (done - 1) * 10 / total.max(1) || done == total {
                eprintln!("  {label}: step {done}/{total}, loss {loss:.4}, lr {lr:.2e}, {:.1}s", started.elapsed().as_secs_f64());
                at_tenth(state)?;
            }
        }
    }
    state.rng = state.rng.wrapping_add(epochs as u64);
    Ok(log)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> TrainerState {
        TrainerState {
            step: 0,
            examples_seen: 0,
            tokens_seen: 0,
            schedule: serde_json::from_str(r#"{"kind": "constant", "lr": 0.5}"#).unwrap(),
            adamw: Default::default(),
            rng: 7,
            last_loss: None,
        }
    }

    #[derive(Debug)]
    struct E(String);
    impl From<Interrupted> for E {
        fn from(i: Interrupted) -> Self {
            E(i.to_string())
        }
    }

    #[test]
    fn every_example_once_per_epoch_and_a_full_log() {
        let mut st = state();
        let examples: Vec<usize> = (0..10).collect();
        let mut seen = vec![0; 10];
        let log = run_epochs::<_, E>(
            "t",
            &examples,
            2,
            4,
            &mut st,
            &CancelToken::default(),
            |s, batch, lr| {
                batch.iter().for_each(|&&e| seen[e] += 1);
                s.step += 1;
                Ok(lr * batch.len() as f64)
            },
            |_| Ok(()),
        )
        .unwrap();
        assert_eq!(seen, vec![2; 10]);
        assert_eq!(log.steps, vec![1, 2, 3, 4, 5, 6]);
        assert_eq!(log.epochs, vec![0, 0, 0, 1, 1, 1]);
        assert_eq!(log.losses.iter().sum::<f64>(), 10.0);
        assert_eq!(st.rng, 9);
    }

    #[test]
    fn a_cancelled_token_stops_before_the_next_step() {
        let mut st = state();
        let cancel = CancelToken::default();
        let examples: Vec<usize> = (0..10).collect();
        let err = run_epochs::<_, E>(
            "t",
            &examples,
            1,
            2,
            &mut st,
            &cancel.clone(),
            |s, _, _| {
                s.step += 1;
                if s.step == 2 {
                    cancel.cancel();
                }
                Ok(0.0)
            },
            |_| Ok(()),
        )
        .unwrap_err();
        assert_eq!(err.0, "interrupted at step 2 of 5; nothing of this stage was committed");
        assert_eq!(st.step, 2);
    }
}
