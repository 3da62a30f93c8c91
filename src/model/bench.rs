//! `mstar model bench`: generation and SFT throughput of a random policy of a preset size on
//! this machine (its CPU, or with the `cuda` feature a GPU), writing the weights and inputs used
//! so benches/policy_bench.py can run the same work in PyTorch.

use super::generate::{generate, Request, SamplingParams};
use super::policy::{safetensors_bytes, ModelError, Policy, Result};
use super::tiny_vlm::{image_patches, Config};
use super::tokenizer::TextTokenizer;
use crate::data::synth;
use crate::train::{batch_tensors, train_step, AdamW, AdamWConfig, Example, Schedule, TrainerState};
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

pub fn bench(size: &str, out: &Path, batch: usize, new_tokens: usize, sft_steps: usize, dev: &Device) -> Result<serde_json::Value> {
    let dev = dev.clone();
    let exs: Vec<_> = (0..256).map(|i| synth::generate(1, "train", i, false)).collect();
    let texts: Vec<String> = exs.iter().flat_map(|e| [e.question.clone(), e.gold_cot.clone()]).collect();
    let tok = TextTokenizer::train(texts.iter(), 384)?;
    let cfg = Config::preset(size, 384).ok_or_else(|| ModelError::Invalid(format!("unknown size {size}")))?;
    let mut policy = Policy::new_random(&cfg, tok, 0, &dev)?;
    std::fs::create_dir_all(out)?;
    for (name, bytes) in policy.to_files()? {
        std::fs::write(out.join(name), bytes)?;
    }
    let examples: Vec<Example> = exs
        .iter()
        .take(batch)
        .map(|e| {
            Ok(Example {
                prompt: policy.encode_prompt(&e.question)?,
                response: policy.encode_response(&e.gold_cot)?,
                patches: image_patches(&e.image_png, &cfg.vision_config).map_err(ModelError::Invalid)?,
                labels: vec![],
            })
        })
        .collect::<Result<_>>()?;

    // generation inputs, laid out as generate() lays them out
    let bucket = examples.iter().map(|e| e.prompt.len()).max().unwrap_or(2);
    let (np, ni) = (cfg.vision_config.num_patches(), cfg.vision_config.image_tokens());
    let (mut ids, mut valid) = (Vec::new(), Vec::new());
    for e in &examples {
        let n_pad = bucket - e.prompt.len();
        ids.extend(e.prompt[..2].iter().map(|&x| x as i64));
        ids.extend(std::iter::repeat_n(cfg.pad_token_id as i64, n_pad));
        ids.extend(e.prompt[2..].iter().map(|&x| x as i64));
        valid.extend(std::iter::repeat_n(1u8, 1 + ni));
        valid.extend(std::iter::repeat_n(0u8, n_pad));
        valid.extend(std::iter::repeat_n(1u8, e.prompt.len() - 2));
    }
    let b = examples.len();
    let patches: Vec<f32> = examples.iter().flat_map(|e| e.patches.iter().copied()).collect();
    let (sft_ids, sft_patches, targets, weights, _) = batch_tensors(&policy, &examples.iter().collect::<Vec<_>>())?;
    let mut inputs: HashMap<String, Tensor> = HashMap::new();
    inputs.insert("gen.ids".into(), Tensor::from_vec(ids, (b, bucket), &dev)?);
    inputs.insert("gen.valid".into(), Tensor::from_vec(valid, (b, bucket - 1 + ni), &dev)?);
    inputs.insert("gen.patches".into(), Tensor::from_vec(patches, (b, np, cfg.vision_config.patch_dim()), &dev)?);
    inputs.insert("sft.ids".into(), sft_ids.to_dtype(DType::I64)?);
    inputs.insert("sft.patches".into(), sft_patches);
    inputs.insert("sft.targets".into(), targets.to_dtype(DType::I64)?);
    inputs.insert("sft.weights".into(), weights.clone());
    std::fs::write(out.join("inputs.safetensors"), safetensors_bytes(&inputs)?)?;

    // generation: greedy, EOS ignored so every row makes `new_tokens` tokens; the generate
    // operator's inference kernels
    policy.cfg.eos_token_id = u32::MAX;
    let mut gen_model = policy.model.clone();
    gen_model.use_inference_kernels(true)?;
    let train_model = std::mem::replace(&mut policy.model, gen_model);
    let reqs: Vec<Request> = examples.iter().map(|e| Request { prompt: e.prompt.clone(), patches: e.patches.clone(), seed: 0 }).collect();
    let params = SamplingParams { temperature: 0.0, top_p: 1.0, top_k: 0, max_new_tokens: new_tokens };
    generate(&policy, &reqs[..2.min(b)], &SamplingParams { max_new_tokens: 4, ..params.clone() }, bucket)?;
    let t = Instant::now();
    let gens = generate(&policy, &reqs, &params, bucket)?;
    let gen_s = t.elapsed().as_secs_f64();
    let gen_tokens: usize = gens.iter().map(|g| g.tokens.len()).sum();
    policy.model = train_model;

    // SFT: forward + backward + AdamW
    let mut state = TrainerState {
        step: 0,
        examples_seen: 0,
        tokens_seen: 0,
        schedule: Schedule::Constant { lr: 1e-3 },
        adamw: AdamWConfig::default(),
        rng: 0,
        last_loss: None,
    };
    let mut opt = AdamW::new(state.adamw.clone());
    let micro = vec![examples.iter().collect::<Vec<_>>()];
    train_step(&policy, &mut opt, &mut state, &micro, None)?;
    let t = Instant::now();
    for _ in 0..sft_steps {
        train_step(&policy, &mut opt, &mut state, &micro, None)?;
    }
    dev.synchronize()?; // a GPU's last optimizer step is still queued
    let sft_s = t.elapsed().as_secs_f64();
    let tokens_per_step = weights.elem_count();
    Ok(serde_json::json!({
        "size": size,
        "device": if dev.is_cuda() { "cuda" } else { "cpu" },
        "params": policy.num_params(),
        "batch": b,
        "new_tokens": new_tokens,
        "gen_tokens_per_s": gen_tokens as f64 / gen_s,
        "sft_steps": sft_steps,
        "sft_tokens_per_step": tokens_per_step,
        "sft_tokens_per_s": (tokens_per_step * sft_steps) as f64 / sft_s,
    }))
}
