//! The tiny VLM behind [`VisionLm`]: prompts `[bos, image, question…]` with the first image's
//! patches; samples in fixed chunks padded to the call's longest prompt; step scores by its head.

use super::{row_error, ExampleRepr, LmError, Prompt, Repr, Result, Sample, Sampled, Tokens, TrainExample, TrainRow, TrainableLm, VisionLm, Work};
use crate::model::generate::{generate, Request, SamplingParams};
use crate::model::policy::Policy;
use crate::model::tiny_vlm::decode_cpu::{rms_norm, CpuDecoder};
use crate::model::tiny_vlm::image_patches;
use crate::train::{batch_tensors, AdamW, Example, TrainerState};
use candle_core::Tensor;
use std::collections::HashMap;
use std::sync::Arc;

impl VisionLm for Policy {
    fn describe(&self) -> String {
        format!("the tiny VLM ({} parameters{})", self.num_params(), if self.cfg.is_prm() { ", a process reward model" } else { "" })
    }

    fn encode_prompt(&self, question: &str, images: &[Vec<u8>]) -> Result<Prompt> {
        let image = images.first().ok_or_else(|| LmError::Invalid("has no image".into()))?;
        let ids = Policy::encode_prompt(self, question)?;
        let patches = image_patches(image, &self.cfg.vision_config).map_err(LmError::Invalid)?;
        Ok(Prompt(Repr::Tokens(Tokens { ids, pixels: Arc::new(patches), grids: vec![] })))
    }

    fn continue_prompt(&self, prompt: &Prompt, text: &str) -> Result<Prompt> {
        prompt.with_more(self.tokenizer.encode(text).map_err(crate::model::policy::ModelError::from)?)
    }

    /// All (prompt, seed) pairs in order, in chunks of `batch_size`, every prompt padded to the
    /// longest of the call (one bucket: a row rounds the same in any chunk).
    fn sample(&self, work: &[Work<'_>], params: &SamplingParams, batch_size: usize, out: &mut dyn FnMut(Vec<Sampled>) -> bool) -> Result<()> {
        let mut pairs: Vec<(usize, usize)> = Vec::new();
        let mut bucket = 2;
        for (w, item) in work.iter().enumerate() {
            bucket = bucket.max(item.prompt.tokens()?.ids.len());
            pairs.extend((0..item.seeds.len()).map(|s| (w, s)));
        }
        for chunk in pairs.chunks(batch_size.max(1)) {
            let reqs = chunk
                .iter()
                .map(|&(w, s)| {
                    let t = work[w].prompt.tokens()?;
                    Ok(Request { prompt: t.ids.clone(), patches: t.pixels.as_ref().clone(), seed: work[w].seeds[s] })
                })
                .collect::<Result<Vec<_>>>()?;
            let gens = generate(self, &reqs, params, bucket)?;
            let mut batch = Vec::with_capacity(chunk.len());
            for (&(w, s), g) in chunk.iter().zip(gens) {
                let text = self.tokenizer.decode(&g.tokens).map_err(|e| LmError::Invalid(format!("prompt {}: {e}", work[w].id)))?;
                let sample = Sample { text, num_tokens: g.tokens.len(), logprob: g.logprob, finish_reason: g.finish_reason.to_string(), failure: None };
                batch.push(Sampled { work: w, seed: s, sample });
            }
            if !out(batch) {
                break;
            }
        }
        Ok(())
    }

    fn is_prm(&self) -> bool {
        self.cfg.is_prm()
    }

    /// Sigmoid of the score head's logit at each step's last token: on the CPU path when the
    /// model has one, else teacher-forced on candle in chunks of `batch_size`.
    fn score_steps(&self, items: &[(&Prompt, &[String])], batch_size: usize) -> Result<Vec<Vec<f64>>> {
        let laid = lay_out_steps(self, items)?;
        match (self.model.cpu_path(), self.model.score_head_cpu()?) {
            (Some(dec), Some(head)) => score_steps_cpu(self, dec, &head, items, &laid),
            _ => score_steps_candle(self, &laid, batch_size),
        }
    }
}

/// Each item as a teacher-forced example (prompt, steps joined by newlines; one image's patches
/// shared by the items of one prompt) and the index in its response of each step's last token.
pub(crate) fn lay_out_steps(policy: &Policy, items: &[(&Prompt, &[String])]) -> Result<Vec<(Example, Vec<usize>)>> {
    if !policy.cfg.is_prm() {
        return Err(LmError::Invalid(format!("{} is not a process reward model", policy.describe())));
    }
    let mut patches: HashMap<*const Vec<f32>, Arc<[f32]>> = HashMap::new();
    let mut laid = Vec::with_capacity(items.len());
    for (prompt, steps) in items {
        let t = prompt.tokens()?;
        let (tokens, ends) = policy.encode_steps(steps)?;
        let p = patches.entry(Arc::as_ptr(&t.pixels)).or_insert_with(|| t.pixels.as_slice().into()).clone();
        laid.push((Example { prompt: t.ids.clone(), response: tokens, patches: p, features: None, labels: vec![] }, ends));
    }
    Ok(laid)
}

/// `score_steps` on candle ops (any device): `batch_size` examples at a time, right-padded.
pub(crate) fn score_steps_candle(policy: &Policy, laid: &[(Example, Vec<usize>)], batch_size: usize) -> Result<Vec<Vec<f64>>> {
    let ni = policy.cfg.vision_config.image_tokens();
    let mut scores = Vec::with_capacity(laid.len());
    for chunk in laid.chunks(batch_size.max(1)) {
        let examples: Vec<&Example> = chunk.iter().map(|(e, _)| e).collect();
        let (ids, patches, _, _, _) = batch_tensors(policy, &examples)?;
        let logits: Vec<Vec<f32>> = policy.model.scores(&policy.model.forward_hidden(&ids, 1, &patches)?)?.to_vec2()?;
        for ((e, ends), row) in chunk.iter().zip(logits) {
            scores.push(ends.iter().map(|&j| 1.0 / (1.0 + (-(row[e.prompt.len() + j - 1 + ni] as f64)).exp())).collect());
        }
    }
    Ok(scores)
}

/// Responses of one prompt scored together over one prefill of it, at most (each group's
/// cache: layers × responses × (prompt + longest response) keys and values).
const SCORE_GROUP: usize = 16;

/// The CPU path of `score_steps` (a model with `use_inference_kernels`): the same teacher-forced
/// forward as training's, split into runs of consecutive items that share a prompt — the prompt
/// embedded and prefilled once per run (at most `SCORE_GROUP` responses), its cache copied to
/// each response, the responses decoded together over it — and the runs split over the threads.
pub(crate) fn score_steps_cpu(
    policy: &Policy,
    dec: &CpuDecoder,
    head: &(Vec<f32>, f32),
    items: &[(&Prompt, &[String])],
    laid: &[(Example, Vec<usize>)],
) -> Result<Vec<Vec<f64>>> {
    let (cfg, h) = (&policy.cfg, policy.cfg.hidden_size);
    let ni = cfg.vision_config.image_tokens();
    for (k, (e, _)) in laid.iter().enumerate() {
        let len = e.prompt.len() - 1 + ni + e.response.len();
        if len > dec.max_positions() {
            return Err(LmError::Invalid(format!("response {k}: prompt and steps take {len} positions, the model has {}", dec.max_positions())));
        }
    }
    let mut runs: Vec<std::ops::Range<usize>> = Vec::new();
    let mut start = 0;
    for i in 1..=items.len() {
        if i == items.len() || !std::ptr::eq(items[i].0, items[start].0) || i - start == SCORE_GROUP {
            runs.push(start..i);
            start = i;
        }
    }
    // one run: the scores of its responses
    let run = |r: &std::ops::Range<usize>| -> Result<Vec<Vec<f64>>> {
        let first = &laid[r.start].0;
        let (np, pd) = (cfg.vision_config.num_patches(), cfg.vision_config.patch_dim());
        let model = &policy.model;
        let feats = match &dec.vision {
            Some(v) => Tensor::from_vec(v.forward(&first.patches, 1), (1, np, cfg.vision_config.hidden_size), &policy.device)?,
            None => model.vision_features(&Tensor::from_vec(first.patches.to_vec(), (1, np, pd), &policy.device)?)?,
        };
        let ids = Tensor::from_vec(first.prompt.clone(), (1, first.prompt.len()), &policy.device)?;
        let mut x: Vec<f32> = model.embed(&ids, 1, &model.project_features(&feats)?)?.flatten_all()?.to_vec1()?;
        let t0 = first.prompt.len() - 1 + ni;
        let n = r.len();
        let tr = laid[r.clone()].iter().map(|(e, _)| e.response.len()).max().unwrap_or(1);
        let mut cache = dec.new_cache(n, t0 + tr);
        dec.forward(&mut cache, &[0], t0, &mut x, &(0..t0 as u32).collect::<Vec<_>>(), &vec![true; t0]);
        for a in 1..n {
            cache.copy_seq(0, a, dec.layers.len(), dec.heads, dec.head_dim());
        }
        let (mut xs, mut pos, mut ok) = (Vec::with_capacity(n * tr * h), Vec::with_capacity(n * tr), Vec::with_capacity(n * tr));
        for (e, _) in &laid[r.clone()] {
            let mut toks = e.response.clone();
            toks.resize(tr, cfg.pad_token_id);
            xs.extend(dec.embed_tokens(&toks));
            pos.extend((t0..t0 + tr).map(|p| p as u32));
            ok.extend((0..tr).map(|j| j < e.response.len()));
        }
        dec.forward(&mut cache, &(0..n).collect::<Vec<_>>(), tr, &mut xs, &pos, &ok);
        // xs holds each row's residual stream after the last layer: final norm and head at the step ends
        let mut normed = vec![0.0; h];
        Ok(laid[r.clone()]
            .iter()
            .enumerate()
            .map(|(a, (_, ends))| {
                ends.iter()
                    .map(|&j| {
                        rms_norm(&mut normed, &xs[(a * tr + j) * h..(a * tr + j + 1) * h], &dec.norm, dec.eps);
                        let logit = normed.iter().zip(&head.0).map(|(v, w)| v * w).sum::<f32>() + head.1;
                        1.0 / (1.0 + (-(logit as f64)).exp())
                    })
                    .collect()
            })
            .collect())
    };
    let threads = crate::model::threads().clamp(1, runs.len().max(1));
    let per = runs.len().div_ceil(threads).max(1);
    let parts: Vec<Result<Vec<Vec<f64>>>> = std::thread::scope(|s| {
        let handles: Vec<_> = runs
            .chunks(per)
            .map(|chunk| {
                let run = &run;
                s.spawn(move || -> Result<Vec<Vec<f64>>> {
                    let mut out = Vec::new();
                    for r in chunk {
                        out.extend(run(r)?);
                    }
                    Ok(out)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("scoring thread panicked")).collect()
    });
    let mut scores = Vec::with_capacity(items.len());
    for p in parts {
        scores.extend(p?);
    }
    Ok(scores)
}

/// Trains on the first image of a row; each distinct image is decoded once and its patches
/// shared by its examples (and, with the encoder frozen on the CPU, its features computed once).
impl TrainableLm for Policy {
    fn encode_examples(&self, rows: &[TrainRow<'_>]) -> Result<Vec<TrainExample>> {
        let mut by_image: HashMap<&[u8], Arc<[f32]>> = HashMap::new();
        let mut examples = Vec::with_capacity(rows.len());
        for (k, row) in rows.iter().enumerate() {
            let at = |e: &dyn std::fmt::Display| row_error(k, row, e);
            let image = row.images.first().ok_or_else(|| at(&"has no image"))?;
            let prompt = Policy::encode_prompt(self, row.question).map_err(|e| at(&e))?;
            let patches = match by_image.get(image.as_slice()) {
                Some(p) => p.clone(),
                None => {
                    let p: Arc<[f32]> = image_patches(image, &self.cfg.vision_config).map_err(|e| at(&e))?.into();
                    by_image.insert(image, p.clone());
                    p
                }
            };
            let (response, labels) = match &row.steps {
                None => (self.encode_response(row.response).map_err(|e| at(&e))?, vec![]),
                Some((steps, labels)) => {
                    let (response, ends) = self.encode_steps(steps).map_err(|e| at(&e))?;
                    (response, ends.into_iter().zip(labels.iter().copied()).collect())
                }
            };
            examples.push(Example { prompt, response, patches, features: None, labels });
        }
        crate::train::frozen_features(self, &mut examples)?;
        Ok(examples.into_iter().map(|e| TrainExample(ExampleRepr::Tiny(e))).collect())
    }

    /// A vision encoder whose every weight the optimizer freezes gets no backward pass.
    fn freeze(&mut self, opt: &AdamW) {
        let vision: Vec<String> = self.named_vars().into_iter().map(|(n, _)| n).filter(|n| n.starts_with("vision.")).collect();
        self.model.set_vision_frozen(!vision.is_empty() && vision.iter().all(|n| opt.frozen(n)));
    }

    fn train_step(&self, opt: &mut AdamW, state: &mut TrainerState, micro: &[Vec<&TrainExample>], clip: Option<f64>) -> Result<f64> {
        let micro: Vec<Vec<&Example>> = micro.iter().map(|m| m.iter().map(|e| e.tiny()).collect()).collect::<Result<_>>()?;
        Ok(crate::train::train_step(self, opt, state, &micro, clip)?)
    }

    fn device(&self) -> candle_core::Device {
        self.device.clone()
    }

    fn to_files(&self) -> Result<Vec<(String, Vec<u8>)>> {
        Ok(Policy::to_files(self)?.into_iter().map(|(n, b)| (n.to_string(), b)).collect())
    }

    fn end_training(&self) {
        crate::model::tiny_vlm::train_cpu::release_workspaces();
    }
}
