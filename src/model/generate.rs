//! Batched sampling with a KV cache. Every prompt is laid out in a fixed-length bucket and
//! sampled with its own seeded RNG, so a rollout is the same whatever batch it ran in.

use super::layers::Mask;
use super::policy::{ModelError, Policy, Result};
use super::tiny_vlm::decode_cpu::CpuDecoder;
use crate::rng::SplitMix64;
use candle_core::Tensor;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SamplingParams {
    /// 0 = greedy.
    #[serde(default = "one")]
    pub temperature: f64,
    /// Nucleus sampling mass (1 = off).
    #[serde(default = "one")]
    pub top_p: f64,
    /// Keep the k most likely tokens (0 = off).
    #[serde(default)]
    pub top_k: usize,
    #[serde(default = "default_max_new")]
    pub max_new_tokens: usize,
}

fn one() -> f64 {
    1.0
}
fn default_max_new() -> usize {
    96
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self { temperature: 1.0, top_p: 1.0, top_k: 0, max_new_tokens: default_max_new() }
    }
}

/// One prompt to sample from.
#[derive(Debug, Clone)]
pub struct Request {
    /// `[bos, image, question tokens…]`.
    pub prompt: Vec<u32>,
    /// Image patches (P × patch_dim).
    pub patches: Vec<f32>,
    pub seed: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    /// Sampled tokens, the EOS excluded.
    pub tokens: Vec<u32>,
    /// Sum of the sampled tokens' log-probabilities under the policy (temperature 1, no
    /// filtering), EOS included.
    pub logprob: f64,
    /// `stop` (EOS) or `length` (max_new_tokens reached).
    pub finish_reason: &'static str,
}

/// FNV-1a over the parts: the seed of one rollout.
pub fn rollout_seed(run_seed: u64, iteration: u32, prompt_id: &str, sample_idx: u32) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for b in bytes {
            h ^= *b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0100_0000_01b3);
    };
    eat(&run_seed.to_le_bytes());
    eat(&iteration.to_le_bytes());
    eat(prompt_id.as_bytes());
    eat(&sample_idx.to_le_bytes());
    h
}

/// Picks the next token from one row of logits; returns (token, log-prob at temperature 1).
pub(crate) fn sample(logits: &[f32], p: &SamplingParams, rng: &mut SplitMix64) -> (u32, f64) {
    let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = logits.iter().map(|&l| (l as f64 - max).exp()).sum::<f64>().ln() + max;
    let greedy = || logits.iter().enumerate().fold((0usize, f32::NEG_INFINITY), |b, (i, &l)| if l > b.1 { (i, l) } else { b }).0;
    let token = if p.temperature <= 0.0 {
        greedy()
    } else if p.top_k == 0 && p.top_p >= 1.0 {
        // no filtering: walk the tempered distribution in token order (no sort)
        let inv_t = 1.0 / p.temperature;
        let weights: Vec<f64> = logits.iter().map(|&l| ((l as f64 - max) * inv_t).exp()).collect();
        let mut u = rng.next_f64() * weights.iter().sum::<f64>();
        let mut pick = logits.len() - 1;
        for (i, w) in weights.iter().enumerate() {
            if u < *w {
                pick = i;
                break;
            }
            u -= w;
        }
        pick
    } else {
        let mut idx: Vec<usize> = (0..logits.len()).collect();
        idx.sort_by(|&a, &b| logits[b].partial_cmp(&logits[a]).unwrap_or(std::cmp::Ordering::Equal).then(a.cmp(&b)));
        if p.top_k > 0 {
            idx.truncate(p.top_k);
        }
        let top = logits[idx[0]] as f64;
        let mut probs: Vec<f64> = idx.iter().map(|&i| ((logits[i] as f64 - top) / p.temperature).exp()).collect();
        let total: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|x| *x /= total);
        if p.top_p < 1.0 {
            let mut cum = 0.0;
            let keep = probs.iter().position(|x| {
                cum += x;
                cum >= p.top_p
            });
            probs.truncate(keep.map(|k| k + 1).unwrap_or(probs.len()));
        }
        let mass: f64 = probs.iter().sum();
        let mut u = rng.next_f64() * mass;
        let mut pick = idx[probs.len() - 1];
        for (j, x) in probs.iter().enumerate() {
            if u < *x {
                pick = idx[j];
                break;
            }
            u -= x;
        }
        pick
    };
    (token as u32, logits[token] as f64 - lse)
}

/// Samples a batch. `bucket` is the prompt length every prompt is padded to (at least the
/// longest prompt); it must not depend on the batch for results to be batch-independent.
/// Uses the model's CPU sampling path when it has one (see `TinyVlm::use_inference_kernels`),
/// else candle ops on the model's device.
pub fn generate(policy: &Policy, reqs: &[Request], params: &SamplingParams, bucket: usize) -> Result<Vec<Generation>> {
    if reqs.is_empty() {
        return Ok(vec![]);
    }
    let layout = Layout::new(policy, reqs, bucket)?;
    match policy.model.cpu_path() {
        Some(dec) => generate_cpu(policy, dec, reqs, &layout, params),
        None => generate_candle(policy, reqs, &layout, params),
    }
}

/// The bucket layout of a batch: per prompt, the expanded columns (bos, P image features,
/// pads, question) with their RoPE positions and whether they may be attended to.
struct Layout {
    bucket: usize,
    /// Expanded prompt length: bucket − 1 + P.
    t0: usize,
    positions: Vec<Vec<u32>>,
    valid: Vec<Vec<bool>>,
}

impl Layout {
    fn new(policy: &Policy, reqs: &[Request], bucket: usize) -> Result<Self> {
        let cfg = &policy.cfg;
        let (np, ni, pd) = (cfg.vision_config.num_patches(), cfg.vision_config.image_tokens(), cfg.vision_config.patch_dim());
        let (mut positions, mut valid) = (Vec::new(), Vec::new());
        for r in reqs {
            if r.prompt.len() > bucket || r.prompt.len() < 2 || r.prompt[1] != cfg.image_token_id {
                return Err(ModelError::Invalid(format!("prompt of {} tokens does not fit the bucket {bucket} or lacks [bos, image]", r.prompt.len())));
            }
            if r.patches.len() != np * pd {
                return Err(ModelError::Invalid(format!("image patches: {} values, expected {}", r.patches.len(), np * pd)));
            }
            let n_pad = bucket - r.prompt.len();
            let mut pos: Vec<u32> = (0..=ni as u32).collect();
            pos.extend(std::iter::repeat_n(0, n_pad));
            pos.extend((0..(r.prompt.len() - 2) as u32).map(|j| ni as u32 + 1 + j));
            positions.push(pos);
            let mut v = vec![true; 1 + ni];
            v.extend(std::iter::repeat_n(false, n_pad));
            v.extend(std::iter::repeat_n(true, r.prompt.len() - 2));
            valid.push(v);
        }
        Ok(Self { bucket, t0: bucket - 1 + ni, positions, valid })
    }

    /// Input embeddings (B, t0, hidden) of the requests: token embeddings with the image's
    /// features in the image token's column.
    fn embeddings(&self, policy: &Policy, reqs: &[&Request]) -> Result<Tensor> {
        let cfg = &policy.cfg;
        let (np, pd) = (cfg.vision_config.num_patches(), cfg.vision_config.patch_dim());
        let mut ids = Vec::with_capacity(reqs.len() * self.bucket);
        let mut patches = Vec::with_capacity(reqs.len() * np * pd);
        for r in reqs {
            ids.extend_from_slice(&r.prompt[..2]);
            ids.extend(std::iter::repeat_n(cfg.pad_token_id, self.bucket - r.prompt.len()));
            ids.extend_from_slice(&r.prompt[2..]);
            patches.extend_from_slice(&r.patches);
        }
        let dev = &policy.device;
        let ids_t = Tensor::from_vec(ids, (reqs.len(), self.bucket), dev)?;
        let feats = match policy.model.cpu_path().and_then(|d| d.vision.as_ref()) {
            Some(v) => Tensor::from_vec(v.forward(&patches, reqs.len()), (reqs.len(), np, cfg.vision_config.hidden_size), dev)?,
            None => policy.model.vision_features(&Tensor::from_vec(patches, (reqs.len(), np, pd), dev)?)?,
        };
        Ok(policy.model.embed(&ids_t, 1, &policy.model.project_features(&feats)?)?)
    }
}

/// Per-row sampling state shared by both paths.
struct Sampler<'a> {
    params: &'a SamplingParams,
    eos: u32,
    rngs: Vec<SplitMix64>,
    out: Vec<Generation>,
    done: Vec<bool>,
}

impl<'a> Sampler<'a> {
    fn new(reqs: &[&Request], params: &'a SamplingParams, eos: u32) -> Self {
        Self {
            params,
            eos,
            rngs: reqs.iter().map(|r| SplitMix64::new(r.seed)).collect(),
            out: reqs.iter().map(|_| Generation { tokens: vec![], logprob: 0.0, finish_reason: "length" }).collect(),
            done: vec![false; reqs.len()],
        }
    }

    /// Samples row `i`'s next token; returns it, or None when the row had already stopped.
    fn step(&mut self, i: usize, logits: &[f32]) -> Option<u32> {
        if self.done[i] {
            return None;
        }
        let (tok, lp) = sample(logits, self.params, &mut self.rngs[i]);
        self.out[i].logprob += lp;
        if tok == self.eos {
            self.out[i].finish_reason = "stop";
            self.done[i] = true;
        } else {
            self.out[i].tokens.push(tok);
        }
        Some(tok)
    }

    fn all_done(&self) -> bool {
        self.done.iter().all(|d| *d)
    }
}

/// The CPU path: distinct prompts are encoded once; the rows are split over the threads, and
/// each thread prefills each distinct prompt once, copies its cache to the prompt's other
/// samples, and decodes only rows that have not stopped.
fn generate_cpu(policy: &Policy, dec: &CpuDecoder, reqs: &[Request], layout: &Layout, params: &SamplingParams) -> Result<Vec<Generation>> {
    let h = policy.cfg.hidden_size;
    let t0 = layout.t0;
    // distinct prompts (same tokens and image) and each row's prompt
    let mut uniq: Vec<&Request> = Vec::new();
    let mut which: Vec<usize> = Vec::with_capacity(reqs.len());
    let mut seen: HashMap<(&[u32], Vec<u32>), usize> = HashMap::new();
    for r in reqs {
        let key = (r.prompt.as_slice(), r.patches.iter().map(|f| f.to_bits()).collect::<Vec<_>>());
        let u = *seen.entry(key).or_insert_with(|| {
            uniq.push(r);
            uniq.len() - 1
        });
        which.push(u);
    }
    let x: Vec<f32> = layout.embeddings(policy, &uniq)?.flatten_all()?.to_vec1()?;
    let threads = super::threads().clamp(1, reqs.len());
    let per = reqs.len().div_ceil(threads);
    let rows: Vec<usize> = (0..reqs.len()).collect();
    let results: Vec<Vec<Generation>> = std::thread::scope(|s| {
        let handles: Vec<_> = rows
            .chunks(per)
            .map(|chunk| {
                let (x, which) = (&x, &which);
                s.spawn(move || {
                    let cfg = &policy.cfg;
                    let my: Vec<&Request> = chunk.iter().map(|&i| &reqs[i]).collect();
                    let mut sampler = Sampler::new(&my, params, cfg.eos_token_id);
                    let mut cache = dec.new_cache(chunk.len(), t0 + params.max_new_tokens);
                    // prefill one row per distinct prompt, then share its cache
                    let mut leader_of = vec![usize::MAX; chunk.len()];
                    let mut leaders = Vec::new();
                    for (a, &i) in chunk.iter().enumerate() {
                        if let Some(b) = (0..a).find(|&b| which[chunk[b]] == which[i]) {
                            leader_of[a] = leader_of[b];
                        } else {
                            leader_of[a] = leaders.len();
                            leaders.push(a);
                        }
                    }
                    let mut xs = Vec::with_capacity(leaders.len() * t0 * h);
                    let (mut pos, mut ok) = (Vec::new(), Vec::new());
                    for &a in &leaders {
                        let u = which[chunk[a]];
                        xs.extend_from_slice(&x[u * t0 * h..(u + 1) * t0 * h]);
                        pos.extend_from_slice(&layout.positions[chunk[a]]);
                        ok.extend_from_slice(&layout.valid[chunk[a]]);
                    }
                    let hid = dec.forward(&mut cache, &leaders, t0, &mut xs, &pos, &ok);
                    let first = dec.logits(&hid);
                    for (a, &l) in leader_of.iter().enumerate() {
                        if leaders[l] != a {
                            cache.copy_seq(leaders[l], a, dec.layers.len(), dec.heads, dec.head_dim());
                        }
                    }
                    let v = dec.vocab;
                    let mut logits: Vec<&[f32]> = leader_of.iter().map(|&l| &first[l * v..(l + 1) * v]).collect();
                    let mut next_pos: Vec<u32> = chunk.iter().map(|&i| layout.positions[i][t0 - 1] + 1).collect();
                    let mut step_logits;
                    for step in 0..params.max_new_tokens {
                        let mut active = Vec::new();
                        let mut feed = Vec::new();
                        for (a, l) in logits.iter().enumerate() {
                            if let Some(tok) = sampler.step(a, l) {
                                if !sampler.done[a] {
                                    active.push(a);
                                    feed.push(tok);
                                }
                            }
                        }
                        if sampler.all_done() || step + 1 == params.max_new_tokens || next_pos.iter().any(|&p| p as usize >= dec.max_positions()) {
                            break;
                        }
                        let mut xs = dec.embed_tokens(&feed);
                        let pos: Vec<u32> = active.iter().map(|&a| next_pos[a]).collect();
                        next_pos.iter_mut().for_each(|p| *p += 1);
                        let hid = dec.forward(&mut cache, &active, 1, &mut xs, &pos, &vec![true; active.len()]);
                        step_logits = dec.logits(&hid);
                        let mut rows = vec![&[][..]; chunk.len()];
                        for (j, &a) in active.iter().enumerate() {
                            rows[a] = &step_logits[j * v..(j + 1) * v];
                        }
                        logits = rows;
                    }
                    sampler.out
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("sampling thread panicked")).collect()
    });
    Ok(results.into_iter().flatten().collect())
}

/// The candle path (any device): one batch, candle ops, a growing KV cache.
fn generate_candle(policy: &Policy, reqs: &[Request], layout: &Layout, params: &SamplingParams) -> Result<Vec<Generation>> {
    let cfg = &policy.cfg;
    let dev = &policy.device;
    let model = &policy.model;
    let b = reqs.len();
    let t0 = layout.t0;
    let refs: Vec<&Request> = reqs.iter().collect();
    let x = layout.embeddings(policy, &refs)?;
    let pos_t = Tensor::from_vec(layout.positions.concat(), (b, t0), dev)?;
    let mut valid = layout.valid.clone();
    let mut mask = Vec::with_capacity(b * t0 * t0);
    for v in &valid {
        for i in 0..t0 {
            mask.extend((0..t0).map(|j| if j <= i && (v[j] || j == i) { 0f32 } else { -1e9 }));
        }
    }
    let mask_t = Tensor::from_vec(mask, (b, 1, t0, t0), dev)?;
    let mut cache = super::tiny_vlm::KvCache::new(cfg.num_hidden_layers);
    let h = model.decode(&x, &pos_t, Mask::Additive(&mask_t), Some(&mut cache))?;
    let mut logits: Vec<Vec<f32>> = model.logits(&h.narrow(1, t0 - 1, 1)?)?.squeeze(1)?.to_vec2()?;

    let mut sampler = Sampler::new(&refs, params, cfg.eos_token_id);
    let mut next_pos: Vec<u32> = layout.positions.iter().map(|p| p[t0 - 1] + 1).collect();
    for step in 0..params.max_new_tokens {
        let feed: Vec<u32> = (0..b).map(|i| sampler.step(i, &logits[i]).unwrap_or(cfg.pad_token_id)).collect();
        if sampler.all_done() || step + 1 == params.max_new_tokens || next_pos.iter().any(|&p| p as usize >= cfg.max_position_embeddings) {
            break;
        }
        for v in valid.iter_mut() {
            v.push(true);
        }
        let tk = valid[0].len();
        let m: Vec<f32> = valid.iter().flat_map(|v| v.iter().map(|ok| if *ok { 0f32 } else { -1e9 })).collect();
        let m_t = Tensor::from_vec(m, (b, 1, 1, tk), dev)?;
        let x = model.embed_tokens(&Tensor::from_vec(feed, (b, 1), dev)?)?;
        let p_t = Tensor::from_vec(next_pos.clone(), (b, 1), dev)?;
        next_pos.iter_mut().for_each(|p| *p += 1);
        let h = model.decode(&x, &p_t, Mask::Additive(&m_t), Some(&mut cache))?;
        logits = model.logits(&h)?.squeeze(1)?.to_vec2()?;
    }
    Ok(sampler.out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_rules() {
        let logits = [0.0f32, 3.0, 1.0, 2.9];
        let mut rng = SplitMix64::new(1);
        let greedy = SamplingParams { temperature: 0.0, ..Default::default() };
        assert_eq!(sample(&logits, &greedy, &mut rng).0, 1);
        let top1 = SamplingParams { top_k: 1, ..Default::default() };
        for _ in 0..20 {
            assert_eq!(sample(&logits, &top1, &mut rng).0, 1);
        }
        let nucleus = SamplingParams { top_p: 0.5, ..Default::default() };
        for _ in 0..50 {
            let t = sample(&logits, &nucleus, &mut rng).0;
            assert!(t == 1 || t == 3, "{t}");
        }
        // logprob is under the untempered distribution
        let (t, lp) = sample(&logits, &greedy, &mut rng);
        let lse = logits.iter().map(|&l| (l as f64).exp()).sum::<f64>().ln();
        assert!((lp - (logits[t as usize] as f64 - lse)).abs() < 1e-9);
        assert_ne!(rollout_seed(1, 1, "a", 0), rollout_seed(1, 1, "a", 1));
        assert_ne!(rollout_seed(1, 1, "a", 0), rollout_seed(1, 2, "a", 0));
    }

    /// The sampling RNG's uniforms for a fixed seed, bit for bit (rollouts depend on them).
    #[test]
    fn sampling_uniforms_are_pinned() {
        let mut rng = SplitMix64::new(42);
        let got: Vec<u64> = (0..4).map(|_| rng.next_f64().to_bits()).collect();
        assert_eq!(got, [0x3fe7_bae6_44c5_fd6d, 0x3fc4_77f1_99d9_3378, 0x3fd1_d499_d5c4_c3e6, 0x3fd6_0738_7fc3_92b8]);
        // the same stream drawing 8 tokens from logits [0, 1, 2, 3] at temperature 1
        let mut rng = SplitMix64::new(42);
        let tokens: Vec<u32> = (0..8).map(|_| sample(&[0.0, 1.0, 2.0, 3.0], &SamplingParams::default(), &mut rng).0).collect();
        assert_eq!(tokens, [3, 2, 2, 2, 1, 3, 2, 3]);
    }
}
