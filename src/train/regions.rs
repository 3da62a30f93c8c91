//! Vision pretraining: the encoder alone learns a class per image region (e.g. each grid
//! cell's digit), through a throwaway linear head over the mean feature of each region's patches.

use crate::model::policy::{ModelError, Policy, Result};
use crate::rng::Normal;
use candle_core::{Tensor, Var, D};
use candle_nn::Optimizer;

/// One image and a label per region (regions in reading order over a g×g grid).
pub struct RegionExample {
    pub patches: Vec<f32>,
    pub labels: Vec<u32>,
}

pub struct RegionTrainer {
    /// (g², P): each region's patches (those whose centre lies in it), averaged.
    pool: Tensor,
    head_w: Var,
    head_b: Var,
    opt: candle_nn::AdamW,
    /// What `opt` trains: the encoder's weights and the head
    vars: Vec<Var>,
    classes: usize,
}

impl RegionTrainer {
    /// A fresh head (seeded) and AdamW over the vision encoder's weights and the head.
    pub fn new(policy: &Policy, grid: usize, classes: usize, weight_decay: f64, seed: u64) -> Result<Self> {
        let v = &policy.cfg.vision_config;
        let dev = &policy.device;
        if grid == 0 || classes < 2 {
            return Err(ModelError::Invalid(format!("regions: grid {grid} and {classes} classes")));
        }
        let pool = crate::model::tiny_vlm::model::region_pool(v, grid, dev).map_err(|e| ModelError::Invalid(format!("regions: {e}")))?;
        let h = v.hidden_size;
        let mut rng = Normal::new(seed ^ 0x4e61);
        let w: Vec<f32> = (0..classes * h).map(|_| rng.sample() * 0.02).collect();
        let head_w = Var::from_tensor(&Tensor::from_vec(w, (classes, h), dev)?)?;
        let head_b = Var::from_tensor(&Tensor::zeros(classes, candle_core::DType::F32, dev)?)?;
        let mut vars: Vec<Var> = policy.named_vars().into_iter().filter(|(k, _)| k.starts_with("vision.")).map(|(_, v)| v).collect();
        vars.push(head_w.clone());
        vars.push(head_b.clone());
        let opt = candle_nn::AdamW::new(vars.clone(), candle_nn::ParamsAdamW { lr: 1e-3, weight_decay, ..Default::default() })?;
        Ok(Self { pool, head_w, head_b, opt, vars, classes })
    }

    /// Region logits (B·g², classes) of a batch of patches (B, P, patch_dim).
    pub fn logits(&self, policy: &Policy, patches: &Tensor) -> Result<Tensor> {
        let f = policy.model.vision_features(patches)?;
        let (b, _, h) = f.dims3()?;
        let r = self.pool.dim(0)?;
        let cells = crate::model::tiny_vlm::model::pool_regions(&self.pool, &f)?;
        Ok(cells.reshape((b * r, h))?.matmul(&self.head_w.as_tensor().t()?)?.broadcast_add(self.head_b.as_tensor())?)
    }

    fn batch(&self, policy: &Policy, examples: &[&RegionExample]) -> Result<(Tensor, Tensor)> {
        let v = &policy.cfg.vision_config;
        let r = self.pool.dim(0)?;
        let mut y = Vec::with_capacity(examples.len() * r);
        for e in examples {
            if e.labels.len() != r || e.labels.iter().any(|&l| l as usize >= self.classes) {
                return Err(ModelError::Invalid(format!("regions: an example has labels {:?}; expected {r} labels below {}", e.labels, self.classes)));
            }
            y.extend_from_slice(&e.labels);
        }
        let p: Vec<f32> = examples.iter().flat_map(|e| e.patches.iter().copied()).collect();
        let dev = &policy.device;
        Ok((Tensor::from_vec(p, (examples.len(), v.num_patches(), v.patch_dim()), dev)?, Tensor::from_vec(y, examples.len() * r, dev)?))
    }

    /// One optimizer step at learning rate `lr`; returns the mean cross-entropy. On the CPU the
    /// batch is split into sub-batches of [`super::CPU_CHUNK`] images run by
    /// [`super::on_threads`] (candle's own ops run single-threaded), each weighted by its share
    /// of the images; their gradients are summed in sub-batch order, so the step does not depend
    /// on the thread count.
    pub fn step(&mut self, policy: &Policy, examples: &[&RegionExample], lr: f64) -> Result<f64> {
        let run = |chunk: &[&RegionExample]| -> Result<(f64, candle_core::backprop::GradStore)> {
            let (p, y) = self.batch(policy, chunk)?;
            let loss = candle_nn::loss::cross_entropy(&self.logits(policy, &p)?, &y)?;
            let l = loss.to_scalar::<f32>()? as f64;
            let share = chunk.len() as f64 / examples.len().max(1) as f64;
            Ok((l * share, (loss * share)?.backward()?))
        };
        let chunks: Vec<&[&RegionExample]> = if policy.device.is_cpu() { examples.chunks(super::CPU_CHUNK).collect() } else { vec![examples] };
        let done = super::on_threads(&chunks, |c| run(c));
        let (mut l, mut grads) = (0.0, None::<candle_core::backprop::GradStore>);
        for r in done {
            let (part, mut store) = r?;
            l += part;
            grads = Some(match grads {
                None => store,
                Some(mut sum) => {
                    for var in &self.vars {
                        if let Some(g) = store.remove(var.as_tensor()) {
                            let acc = match sum.remove(var.as_tensor()) {
                                Some(prev) => (prev + g)?,
                                None => g,
                            };
                            sum.insert(var.as_tensor(), acc);
                        }
                    }
                    sum
                }
            });
        }
        if !l.is_finite() {
            return Err(ModelError::Invalid(format!("the region loss became {l}; the step was not applied")));
        }
        self.opt.set_learning_rate(lr);
        if let Some(g) = grads {
            self.opt.step(&g)?;
        }
        Ok(l)
    }

    /// Per label seen: (label, regions, regions whose argmax is the label), ascending by label.
    /// Forward passes only, [`super::CPU_CHUNK`] images at a time on threads on the CPU.
    pub fn evaluate(&self, policy: &Policy, examples: &[&RegionExample]) -> Result<Vec<(u32, u64, u64)>> {
        let chunk = if policy.device.is_cpu() { super::CPU_CHUNK } else { 64 };
        let chunks: Vec<&[&RegionExample]> = examples.chunks(chunk).collect();
        let mut counts = std::collections::BTreeMap::<u32, (u64, u64)>::new();
        for r in super::on_threads(&chunks, |c| -> Result<(Vec<u32>, Vec<u32>)> {
            let (p, y) = self.batch(policy, c)?;
            Ok((self.logits(policy, &p)?.argmax(D::Minus1)?.to_vec1()?, y.to_vec1()?))
        }) {
            let (pred, y) = r?;
            for (p, l) in pred.iter().zip(&y) {
                let e = counts.entry(*l).or_default();
                e.0 += 1;
                e.1 += u64::from(p == l);
            }
        }
        Ok(counts.into_iter().map(|(l, (n, c))| (l, n, c)).collect())
    }

    /// Share of regions whose argmax equals the label.
    pub fn accuracy(&self, policy: &Policy, examples: &[&RegionExample]) -> Result<f64> {
        let per = self.evaluate(policy, examples)?;
        let (n, c) = per.iter().fold((0, 0), |(n, c), e| (n + e.1, c + e.2));
        Ok(c as f64 / n.max(1) as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn region_pretraining_reaches_the_encoder_and_fits_labels() {
        let (policy, _) = crate::model::test_util::setup(1);
        let v = policy.cfg.vision_config.clone();
        // fixed images whose 3×3 regions carry distinct labels
        let images = |n: usize| -> Vec<RegionExample> {
            (0..n)
                .map(|k| RegionExample {
                    patches: (0..v.num_patches() * v.patch_dim()).map(|i| (((i * 7 + k * 13) % 17) as f32 / 8.5) - 1.0).collect(),
                    labels: (0..9).map(|r| ((r + k) % 4) as u32).collect(),
                })
                .collect()
        };
        let examples = images(2);
        let refs: Vec<&RegionExample> = examples.iter().collect();
        let before = policy.named_tensors()["vision.patch_embed.weight"].flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let mut t = RegionTrainer::new(&policy, 3, 4, 0.0, 1).unwrap();
        let first = t.step(&policy, &refs, 3e-3).unwrap();
        let mut last = first;
        for _ in 0..60 {
            last = t.step(&policy, &refs, 3e-3).unwrap();
        }
        assert!(last < first * 0.5, "region loss {first} → {last}");
        assert!(t.accuracy(&policy, &refs).unwrap() > 0.9);
        // per label: every region counted once, under its own label
        let per = t.evaluate(&policy, &refs).unwrap();
        assert_eq!(per.iter().map(|e| e.0).collect::<Vec<_>>(), vec![0, 1, 2, 3]);
        assert_eq!(per.iter().map(|e| e.1).collect::<Vec<_>>(), vec![5, 5, 4, 4], "labels (r + k) % 4 over 2 images");
        assert!(per.iter().all(|e| e.2 <= e.1));
        let after = policy.named_tensors()["vision.patch_embed.weight"].flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_ne!(before, after, "the encoder did not train");
        // a batch of 3 sub-batches: the step's loss is the batch's mean cross-entropy
        let many = images(20);
        let refs: Vec<&RegionExample> = many.iter().collect();
        let (p, y) = t.batch(&policy, &refs).unwrap();
        let whole = candle_nn::loss::cross_entropy(&t.logits(&policy, &p).unwrap(), &y).unwrap().to_scalar::<f32>().unwrap() as f64;
        let stepped = t.step(&policy, &refs, 1e-3).unwrap();
        assert!((whole - stepped).abs() < 1e-5 * whole.max(1.0), "sub-batches' loss {stepped}, the batch's {whole}");
        let bad = RegionExample { patches: examples[0].patches.clone(), labels: vec![0; 4] };
        assert!(t.step(&policy, &[&bad], 1e-3).unwrap_err().to_string().contains("expected 9 labels"));
    }
}
