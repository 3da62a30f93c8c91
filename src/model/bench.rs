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
                patches: image_patches(&e.image_png, &cfg.vision_config).map_err(ModelError::Invalid)?.into(),
                features: None,
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
    let eos = std::mem::replace(&mut policy.cfg.eos_token_id, u32::MAX);
    let mut gen_model = policy.model.clone();
    gen_model.use_inference_kernels(true)?;
    let train_model = std::mem::replace(&mut policy.model, gen_model);
    let reqs: Vec<Request> = examples.iter().map(|e| Request { prompt: e.prompt.clone(), patches: e.patches.to_vec(), seed: 0 }).collect();
    let params = SamplingParams { temperature: 0.0, top_p: 1.0, top_k: 0, max_new_tokens: new_tokens };
    generate(&policy, &reqs[..2.min(b)], &SamplingParams { max_new_tokens: 4, ..params.clone() }, bucket)?;
    let t = Instant::now();
    let gens = generate(&policy, &reqs, &params, bucket)?;
    let gen_s = t.elapsed().as_secs_f64();
    let gen_tokens: usize = gens.iter().map(|g| g.tokens.len()).sum();
    policy.model = train_model;
    policy.cfg.eos_token_id = eos;

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
    let params = policy.num_params();
    let prm = prm_bench(policy, &exs[..b], &dev)?;
    Ok(serde_json::json!({
        "prm_score": prm,
        "size": size,
        "device": if dev.is_cuda() { "cuda" } else { "cpu" },
        "params": params,
        "batch": b,
        "new_tokens": new_tokens,
        "gen_tokens_per_s": gen_tokens as f64 / gen_s,
        "sft_steps": sft_steps,
        "sft_tokens_per_step": tokens_per_step,
        "sft_tokens_per_s": (tokens_per_step * sft_steps) as f64 / sft_s,
    }))
}

/// PRM step scoring of `exs`' prompts × 8 responses (the first 1/8, 2/8, … of each gold
/// chain's steps), the same work two ways: candle's teacher-forced forward in chunks of 32 (the operators' default) and,
/// on the CPU, the CPU path (prompt prefilled once per group, responses decoded over it).
fn prm_bench(policy: Policy, exs: &[synth::Example], dev: &Device) -> Result<serde_json::Value> {
    use super::lm::tiny::{lay_out_steps, score_steps_candle, score_steps_cpu};
    use super::lm::{Prompt, VisionLm};
    let lm = |e: super::lm::LmError| ModelError::Invalid(e.to_string());
    let mut prm = policy.into_prm(1)?;
    prm.model.use_inference_kernels(true)?;
    let prompts: Vec<Prompt> = exs
        .iter()
        .map(|e| VisionLm::encode_prompt(&prm, &e.question, std::slice::from_ref(&e.image_png)))
        .collect::<std::result::Result<_, _>>()
        .map_err(lm)?;
    let steps: Vec<Vec<String>> = exs.iter().map(|e| crate::data::answer::split_steps(&e.gold_cot)).collect();
    let items: Vec<(&Prompt, &[String])> =
        (0..exs.len()).flat_map(|i| (1..=8).map(|k| (&prompts[i], &steps[i][..(steps[i].len() * k / 8).max(1)])).collect::<Vec<_>>()).collect();
    let laid = lay_out_steps(&prm, &items).map_err(lm)?;
    let n_steps: usize = laid.iter().map(|(_, e)| e.len()).sum();
    score_steps_candle(&prm, &laid[..8.min(laid.len())], 32).map_err(lm)?; // warm-up
    let t = Instant::now();
    let slow = score_steps_candle(&prm, &laid, 32).map_err(lm)?;
    let candle_s = t.elapsed().as_secs_f64();
    let cpu = match (prm.model.cpu_path(), prm.model.score_head_cpu()?) {
        (Some(d), Some(head)) if dev.is_cpu() => {
            let t = Instant::now();
            let fast = score_steps_cpu(&prm, d, &head, &items, &laid).map_err(lm)?;
            let s = t.elapsed().as_secs_f64();
            let diff = slow.iter().flatten().zip(fast.iter().flatten()).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
            Some((s, diff))
        }
        _ => None,
    };
    Ok(serde_json::json!({
        "responses": items.len(),
        "steps": n_steps,
        "candle_s": candle_s,
        "cpu_path_s": cpu.map(|c| c.0),
        "speedup": cpu.map(|c| candle_s / c.0),
        "max_abs_diff": cpu.map(|c| c.1),
    }))
}

/// `mstar model bench-hf DIR`: on a Qwen-VL folder (random weights will do), generation
/// tokens/s of `batch` samples of one prompt (one image, EOS ignored) and the time of one
/// training step (LoRA r 16 on the attention and MLP projections, or full) on `train_batch`
/// sequences of `train_len` tokens, with or without gradient checkpointing.
#[allow(clippy::too_many_arguments)]
pub fn bench_hf(
    dir: &Path,
    batch: usize,
    new_tokens: usize,
    train_batch: usize,
    train_len: usize,
    lora: bool,
    checkpointing: bool,
    dev: &Device,
) -> Result<serde_json::Value> {
    use super::qwen2_5_vl::generate::generate as hf_generate;
    use super::qwen2_5_vl::lora::LoraConfig;
    use super::qwen_vl::{Checkpoint, Trainable};
    use crate::train::qwen::{accumulate, QwenExample};
    let bad = |e: &dyn std::fmt::Display| ModelError::Invalid(e.to_string());
    let dtype = crate::model::hf_dtype(dev);
    let sync = |t: &Tensor| -> Result<()> {
        t.flatten_all()?.get(0)?.to_dtype(DType::F32)?.to_scalar::<f32>()?;
        Ok(())
    };
    // one synthetic image, 448 × 448 (256 merged image tokens at 14-pixel patches)
    let img = {
        let mut im = image::RgbImage::new(448, 448);
        for (x, y, p) in im.enumerate_pixels_mut() {
            *p = image::Rgb([(x % 251) as u8, (y % 241) as u8, ((x * y) % 239) as u8]);
        }
        let mut png = Vec::new();
        image::DynamicImage::ImageRgb8(im).write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png).map_err(|e| bad(&e))?;
        png
    };
    let ck = Checkpoint::load(dir, dtype, dev).map_err(|e| bad(&e))?;
    let prompt = ck.generation_prompt("Describe the picture in detail.", std::slice::from_ref(&img)).map_err(|e| bad(&e))?;
    let params = SamplingParams { temperature: 1.0, top_p: 1.0, top_k: 0, max_new_tokens: new_tokens };
    let seeds: Vec<u64> = (0..batch as u64).collect();
    hf_generate(&ck.model, &prompt, &seeds[..1], &SamplingParams { max_new_tokens: 2, ..params.clone() }, &[])?; // warm-up
    let t0 = Instant::now();
    let gens = hf_generate(&ck.model, &prompt, &seeds, &params, &[])?;
    let gen_s = t0.elapsed().as_secs_f64();
    let tokens: usize = gens.iter().map(|g| g.tokens.len()).sum();
    drop(ck);

    // a training step
    let ck = if lora {
        let targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"].map(String::from).to_vec();
        Checkpoint::load_with_new_adapter(dir, LoraConfig { rank: 16, alpha: 32.0, targets }, 0, dtype, dev).map_err(|e| bad(&e))?
    } else {
        Checkpoint::load_parts(dir, None, Trainable::All, dtype, dev).map_err(|e| bad(&e))?
    };
    let p = ck.generation_prompt("Describe the picture in detail.", std::slice::from_ref(&img)).map_err(|e| bad(&e))?;
    let pixels: Vec<f32> = p.pixels.as_ref().map(|t| t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()).transpose()?.unwrap_or_default();
    // response tokens: the prompt's text tokens, shuffled by row
    let text_ids: Vec<u32> = p.ids.iter().copied().filter(|&t| t != ck.model.image_token_id()).collect();
    let examples: Vec<QwenExample> = (0..train_batch)
        .map(|r| {
            let mut ids = p.ids.clone();
            let prompt_len = ids.len();
            ids.extend((0..train_len.saturating_sub(prompt_len).max(1)).map(|i| text_ids[(r * 7919 + i * 104_729) % text_ids.len()]));
            QwenExample { ids, prompt_len, pixels: pixels.clone(), grids: p.grids.clone(), labels: vec![] }
        })
        .collect();
    let vars = ck.trainable();
    let mut opt = AdamW::new(AdamWConfig::default());
    let mut state = TrainerState {
        step: 0,
        examples_seen: 0,
        tokens_seen: 0,
        schedule: Schedule::Constant { lr: 1e-5 },
        adamw: AdamWConfig::default(),
        rng: 0,
        last_loss: None,
    };
    let micro = vec![examples.iter().collect::<Vec<_>>()];
    let step = |opt: &mut AdamW, state: &mut TrainerState| -> Result<f64> {
        let l =
            crate::train::optimizer_step(&vars, opt, state, &micro, Some(1.0), QwenExample::targets, |mb, s, g| accumulate(&ck, mb, 0, checkpointing, s, g))?;
        sync(vars[0].1.as_tensor())?;
        Ok(l)
    };
    step(&mut opt, &mut state)?; // warm-up (allocations, kernels)
    let t1 = Instant::now();
    let steps = 2;
    for _ in 0..steps {
        step(&mut opt, &mut state)?;
    }
    let step_s = t1.elapsed().as_secs_f64() / steps as f64;
    let params_n: usize = ck.all_tensors().values().map(|t| t.elem_count()).sum();
    let trained: usize = vars.iter().map(|(_, v)| v.elem_count()).sum();
    Ok(serde_json::json!({
        "device": format!("{dev:?}"), "dtype": format!("{dtype:?}"), "parameters": params_n, "trained_parameters": trained,
        "prompt_tokens": prompt.ids.len(), "batch": batch, "new_tokens": new_tokens,
        "generate_s": gen_s, "generate_tokens_per_s": tokens as f64 / gen_s,
        "train_batch": train_batch, "train_len": examples[0].ids.len(), "lora": lora, "gradient_checkpointing": checkpointing,
        "train_step_s": step_s, "train_tokens_per_s": (train_batch * examples[0].ids.len()) as f64 / step_s,
    }))
}
