//! Model tests: gradients reach every weight, checkpoints round-trip, training resumed from a
//! checkpoint equals uninterrupted training, sampling is independent of the batch. With the
//! `cuda` feature, the device-independent ones run again on the GPU (module `cuda`).

use super::generate::{generate, rollout_seed, Request, SamplingParams};
use super::policy::Policy;
use super::test_util::{setup, setup_on, setup_with};
use crate::train::{batch_loss, train_step, AdamW, AdamWConfig, Schedule, TrainerState};
use candle_core::Device;

fn state() -> TrainerState {
    TrainerState {
        step: 0,
        examples_seen: 0,
        tokens_seen: 0,
        schedule: Schedule::WarmupCosine { lr: 3e-3, warmup_steps: 2, total_steps: 20, min_lr: 1e-4 },
        adamw: AdamWConfig { weight_decay: 0.01, ..Default::default() },
        rng: 0,
        last_loss: None,
    }
}

#[test]
fn every_trainable_tensor_gets_a_nonzero_gradient() {
    gradients_reach_every_weight(&Device::Cpu);
}

#[test]
fn merged_patches_train_and_decode() {
    let merged = serde_json::json!({"vision_config": {"patch_size": 4, "merge_size": 2}});
    gradients_reach_every_weight_with(&Device::Cpu, &merged);
    cached_step_equals_full_forward_with(&Device::Cpu, &merged);
}

#[test]
fn a_convolutional_stem_trains_and_decodes() {
    let stem = serde_json::json!({"vision_config": {"stem_channels": 4}});
    gradients_reach_every_weight_with(&Device::Cpu, &stem);
    cached_step_equals_full_forward_with(&Device::Cpu, &stem);
}

#[test]
fn pooled_regions_train_and_decode() {
    let pooled = serde_json::json!({"vision_config": {"pool_grid": 3}});
    gradients_reach_every_weight_with(&Device::Cpu, &pooled);
    cached_step_equals_full_forward_with(&Device::Cpu, &pooled);
    // each of the 9 image tokens is the projection of its region's mean patch feature
    let (policy, ex) = setup_with(1, &Device::Cpu, &pooled);
    let v = policy.cfg.vision_config.clone();
    let patches = candle_core::Tensor::from_vec(ex[0].patches.to_vec(), (1, v.num_patches(), v.patch_dim()), &Device::Cpu).unwrap();
    let f: Vec<Vec<f32>> = policy.model.vision_features(&patches).unwrap().squeeze(0).unwrap().to_vec2().unwrap();
    let regions = v.patch_regions(3);
    let members: Vec<usize> = (0..regions.len()).filter(|&i| regions[i] == 4).collect();
    assert_eq!(members, vec![16, 17, 18, 23, 24, 25, 30, 31, 32], "the centre region is the middle 3×3 patches");
    let mean: Vec<f32> = (0..v.hidden_size).map(|c| members.iter().map(|&i| f[i][c]).sum::<f32>() / members.len() as f32).collect();
    let pooled = crate::model::tiny_vlm::model::pool_regions(
        &crate::model::tiny_vlm::model::region_pool(&v, 3, &Device::Cpu).unwrap(),
        &policy.model.vision_features(&patches).unwrap(),
    )
    .unwrap();
    let got: Vec<f32> = pooled.squeeze(0).unwrap().get(4).unwrap().to_vec1().unwrap();
    assert!(got.iter().zip(&mean).all(|(a, b)| (a - b).abs() < 1e-5));
    assert_eq!(policy.model.encode_images(&patches).unwrap().dims3().unwrap(), (1, 9, policy.cfg.hidden_size));
}

fn gradients_reach_every_weight(dev: &Device) {
    gradients_reach_every_weight_with(dev, &serde_json::json!({}));
}

fn gradients_reach_every_weight_with(dev: &Device, over: &serde_json::Value) {
    let (policy, ex) = setup_with(4, dev, over);
    let refs: Vec<_> = ex.iter().collect();
    let (loss, _) = batch_loss(&policy, &refs).unwrap();
    let grads = loss.backward().unwrap();
    let vars = policy.named_vars();
    assert!(vars.len() > 20, "{} vars", vars.len());
    let mut missing = Vec::new();
    for (name, var) in &vars {
        match grads.get(var.as_tensor()) {
            Some(g) if g.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() > 0.0 => {}
            _ => missing.push(name.clone()),
        }
    }
    assert!(missing.is_empty(), "no gradient for: {missing:?}");
}

#[test]
fn training_lowers_the_loss() {
    training_lowers_the_loss_on(&Device::Cpu);
}

fn training_lowers_the_loss_on(dev: &Device) {
    let (policy, ex) = setup_on(8, dev);
    let refs: Vec<_> = ex.iter().collect();
    let mut st = state();
    st.schedule = Schedule::Constant { lr: 3e-3 };
    let mut opt = AdamW::new(st.adamw.clone());
    let first = train_step(&policy, &mut opt, &mut st, std::slice::from_ref(&refs), Some(1.0)).unwrap();
    let mut last = first;
    for _ in 0..15 {
        last = train_step(&policy, &mut opt, &mut st, std::slice::from_ref(&refs), Some(1.0)).unwrap();
    }
    eprintln!("{dev:?}: loss {first} → {last}");
    assert!(last < first * 0.7, "loss {first} → {last}");
}

fn files(p: &Policy) -> Vec<(&'static str, Vec<u8>)> {
    p.to_files().unwrap()
}

#[test]
fn checkpoint_round_trips_and_resumed_training_matches_uninterrupted() {
    let (policy, ex) = setup(6);
    let batches: Vec<Vec<_>> = ex.chunks(2).map(|c| c.iter().collect()).collect();
    // uninterrupted: 6 steps
    let mut st_a = state();
    let mut opt_a = AdamW::new(st_a.adamw.clone());
    let f0 = files(&policy);
    let reload = |f: &[(&str, Vec<u8>)]| Policy::from_bytes(&f[0].1, &f[1].1, &f[2].1, &candle_core::Device::Cpu).unwrap();
    let a = reload(&f0);
    let mut losses_a = Vec::new();
    for i in 0..6 {
        losses_a.push(train_step(&a, &mut opt_a, &mut st_a, &[batches[i % 3].clone()], Some(1.0)).unwrap());
    }
    // interrupted after 3 steps: save weights, optimizer moments and state; reload; 3 more
    let b = reload(&f0);
    let mut st_b = state();
    let mut opt_b = AdamW::new(st_b.adamw.clone());
    let mut losses_b = Vec::new();
    for i in 0..3 {
        losses_b.push(train_step(&b, &mut opt_b, &mut st_b, &[batches[i % 3].clone()], Some(1.0)).unwrap());
    }
    let fb = files(&b);
    let opt_bytes = super::policy::safetensors_bytes(&opt_b.state_tensors()).unwrap();
    let st_json = serde_json::to_string(&st_b).unwrap();
    let c = reload(&fb);
    for (name, t) in c.named_tensors() {
        let orig = b.named_tensors()[&name].clone();
        let diff = (t - orig).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert_eq!(diff, 0.0, "{name} changed in the round trip");
    }
    let mut st_c: TrainerState = serde_json::from_str(&st_json).unwrap();
    assert_eq!(st_c.step, 3);
    let moments = candle_core::safetensors::load_buffer(&opt_bytes, &candle_core::Device::Cpu).unwrap();
    assert_eq!(moments.len(), 2 * c.named_vars().len());
    let mut opt_c = AdamW::from_state(st_c.adamw.clone(), moments).unwrap();
    for i in 3..6 {
        losses_b.push(train_step(&c, &mut opt_c, &mut st_c, &[batches[i % 3].clone()], Some(1.0)).unwrap());
    }
    assert_eq!(losses_a, losses_b, "resumed training must equal uninterrupted training step for step");
    for (name, t) in c.named_tensors() {
        let diff = (t - a.named_tensors()[&name].clone()).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert_eq!(diff, 0.0, "{name} differs after resumed training");
    }
}

#[test]
fn sampling_does_not_depend_on_the_batch() {
    sampling_does_not_depend_on_the_batch_on(&Device::Cpu);
}

fn sampling_does_not_depend_on_the_batch_on(dev: &Device) {
    let (policy, ex) = setup_on(70, dev);
    let bucket = ex.iter().map(|e| e.prompt.len()).max().unwrap();
    let reqs: Vec<Request> = ex
        .iter()
        .enumerate()
        .map(|(i, e)| Request { prompt: e.prompt.clone(), patches: e.patches.to_vec(), seed: rollout_seed(5, 1, &i.to_string(), 0) })
        .collect();
    let params = SamplingParams { temperature: 1.0, top_p: 0.95, top_k: 0, max_new_tokens: 12 };
    let run = |bs: usize| -> Vec<_> { reqs.chunks(bs).flat_map(|c| generate(&policy, c, &params, bucket).unwrap()).collect() };
    let one = run(1);
    assert_eq!(one.len(), 70);
    // Tokens and finish reasons are identical; through candle ops the logprob sums agree to
    // float accumulation order (batched matmuls sum in a batch-dependent order).
    let same = |a: &[super::generate::Generation], b: &[super::generate::Generation]| {
        for (x, y) in a.iter().zip(b) {
            assert_eq!((&x.tokens, x.finish_reason), (&y.tokens, y.finish_reason));
            assert!((x.logprob - y.logprob).abs() <= 1e-6 * x.logprob.abs().max(1.0), "{} vs {}", x.logprob, y.logprob);
        }
    };
    same(&one, &run(7));
    same(&one, &run(64));
    // greedy is deterministic too and differs from sampling
    let greedy = SamplingParams { temperature: 0.0, ..params.clone() };
    let g1: Vec<_> = reqs[..5].chunks(1).flat_map(|c| generate(&policy, c, &greedy, bucket).unwrap()).collect();
    same(&g1, &generate(&policy, &reqs[..5], &greedy, bucket).unwrap());
    // the CPU sampling path (what the generate operator uses on a CPU) rounds every row the
    // same at any batch size, to the bit: decoding steps and logits run on `kernels::matmul`,
    // prefill on gemm with at least 4 rows
    if dev.is_cpu() {
        let mut fast = policy;
        fast.model.use_inference_kernels(true).unwrap();
        let run = |bs: usize| -> Vec<_> { reqs.chunks(bs).flat_map(|c| generate(&fast, c, &params, bucket).unwrap()).collect() };
        let one = run(1);
        for bs in [7, 64] {
            for (x, y) in one.iter().zip(&run(bs)) {
                assert_eq!(
                    (&x.tokens, x.finish_reason, x.logprob.to_bits()),
                    (&y.tokens, y.finish_reason, y.logprob.to_bits()),
                    "batch {bs}: logprobs {} vs {}",
                    x.logprob,
                    y.logprob
                );
            }
        }
    }
}

#[test]
fn a_cached_decoding_step_equals_a_full_forward() {
    a_cached_decoding_step_equals_a_full_forward_on(&Device::Cpu);
}

fn a_cached_decoding_step_equals_a_full_forward_on(dev: &Device) {
    cached_step_equals_full_forward_with(dev, &serde_json::json!({}));
}

fn cached_step_equals_full_forward_with(dev: &Device, over: &serde_json::Value) {
    use candle_core::Tensor;
    let (policy, ex) = setup_with(2, dev, over);
    let m = &policy.model;
    let e = &ex[0];
    let np = policy.cfg.vision_config.num_patches();
    let pd = policy.cfg.vision_config.patch_dim();
    let patches = Tensor::from_vec(e.patches.to_vec(), (1, np, pd), dev).unwrap();
    let feats = m.encode_images(&patches).unwrap();
    let next = e.response[0];
    // full forward over prompt + one token
    let mut ids = e.prompt.clone();
    ids.push(next);
    let full = m.forward(&Tensor::new(ids.as_slice(), dev).unwrap().unsqueeze(0).unwrap(), 1, &patches).unwrap();
    let t = full.dim(1).unwrap();
    let want: Vec<f32> = full.narrow(1, t - 1, 1).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    // prefill the prompt, then one cached step
    let x = m.embed(&Tensor::new(e.prompt.as_slice(), dev).unwrap().unsqueeze(0).unwrap(), 1, &feats).unwrap();
    let t0 = x.dim(1).unwrap();
    let pos = Tensor::arange(0u32, t0 as u32, dev).unwrap().unsqueeze(0).unwrap();
    let mut cache = super::tiny_vlm::KvCache::new(policy.cfg.num_hidden_layers);
    m.decode(&x, &pos, super::layers::Mask::Causal, Some(&mut cache)).unwrap();
    let step = m.embed_tokens(&Tensor::new(&[[next]], dev).unwrap()).unwrap();
    let h = m.decode(&step, &Tensor::new(&[[t0 as u32]], dev).unwrap(), super::layers::Mask::None, Some(&mut cache)).unwrap();
    let got: Vec<f32> = m.logits(&h).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    let d = want.iter().zip(&got).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    eprintln!("{dev:?}: max |cached − full| = {d}");
    assert!(d < 1e-4, "cached step differs from the full forward by {d}");
}

#[test]
fn inference_kernels_agree_with_the_differentiable_path() {
    inference_kernels_agree_with_the_differentiable_path_on(&Device::Cpu);
}

fn inference_kernels_agree_with_the_differentiable_path_on(dev: &Device) {
    use candle_core::Tensor;
    let (mut policy, ex) = setup_on(3, dev);
    let np = policy.cfg.vision_config.num_patches();
    let pd = policy.cfg.vision_config.patch_dim();
    let e = &ex[0];
    let ids = Tensor::new(e.prompt.as_slice(), &policy.device).unwrap().unsqueeze(0).unwrap();
    let patches = Tensor::from_vec(e.patches.to_vec(), (1, np, pd), &policy.device).unwrap();
    let slow: Vec<f32> = policy.model.forward(&ids, 1, &patches).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    policy.model.use_inference_kernels(true).unwrap();
    let fast: Vec<f32> = policy.model.forward(&ids, 1, &patches).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    let d = slow.iter().zip(&fast).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    eprintln!("{dev:?}: max |fused − differentiable| = {d}");
    assert!(d < 1e-4, "fused kernels differ by {d}");
}

#[test]
fn cpu_sampling_path_equals_the_candle_path() {
    let (mut policy, ex) = setup(5);
    // prompts of different lengths, and several samples of the same prompt (shared prefill)
    let mut reqs: Vec<Request> = ex.iter().map(|e| Request { prompt: e.prompt.clone(), patches: e.patches.to_vec(), seed: 1 }).collect();
    for s in 0..3 {
        reqs.push(Request { seed: 100 + s, ..reqs[2].clone() });
    }
    reqs.push(Request { seed: 7, ..reqs[0].clone() });
    let bucket = reqs.iter().map(|r| r.prompt.len()).max().unwrap() + 2;
    for params in [
        SamplingParams { temperature: 0.0, max_new_tokens: 24, ..Default::default() },
        SamplingParams { temperature: 1.0, max_new_tokens: 24, ..Default::default() },
        SamplingParams { temperature: 0.8, top_p: 0.9, top_k: 20, max_new_tokens: 24 },
    ] {
        let slow = generate(&policy, &reqs, &params, bucket).unwrap();
        policy.model.use_inference_kernels(true).unwrap();
        assert!(policy.model.cpu_path().is_some());
        let fast = generate(&policy, &reqs, &params, bucket).unwrap();
        policy.model.use_inference_kernels(false).unwrap();
        assert_eq!(slow.len(), fast.len());
        for (a, b) in slow.iter().zip(&fast) {
            assert_eq!(a.tokens, b.tokens, "{params:?}");
            assert_eq!(a.finish_reason, b.finish_reason);
            assert!((a.logprob - b.logprob).abs() < 1e-3, "logprob {} vs {}", a.logprob, b.logprob);
        }
        // some rows must actually sample several tokens for this to mean anything
        assert!(fast.iter().any(|g| g.tokens.len() > 5));
    }
}

/// The decoder must read the image: with one question for every example, only the image tells
/// the captions apart, so a blind model cannot push the loss far below their entropy.
#[test]
fn the_model_learns_from_the_image() {
    let (policy, _) = setup(1);
    let cfg = policy.cfg.clone();
    let mut prompt = vec![cfg.bos_token_id, cfg.image_token_id];
    prompt.extend(policy.tokenizer.encode("Describe every shape in the image.\n").unwrap());
    let exs: Vec<crate::train::Example> = (0..8)
        .map(|i| {
            let e = crate::data::synth::generate(3, "train", i, false);
            let mut response = policy.tokenizer.encode(&e.scene.caption()).unwrap();
            response.push(cfg.eos_token_id);
            crate::train::Example {
                prompt: prompt.clone(),
                response,
                patches: super::tiny_vlm::image_patches(&e.image_png, &cfg.vision_config).unwrap().into(),
                features: None,
                labels: vec![],
            }
        })
        .collect();
    let refs: Vec<_> = exs.iter().collect();
    let mut st = state();
    st.schedule = Schedule::Constant { lr: 3e-3 };
    let mut opt = AdamW::new(st.adamw.clone());
    let mut loss = f64::MAX;
    for _ in 0..300 {
        loss = train_step(&policy, &mut opt, &mut st, std::slice::from_ref(&refs), Some(1.0)).unwrap();
    }
    eprintln!("caption loss after 300 steps: {loss}");
    assert!(loss < 0.05, "caption loss {loss}: the image is not being used");
}

/// The device-independent tests again on the first GPU (`cargo test --features cuda cuda`).
#[cfg(feature = "cuda")]
mod cuda {
    use candle_core::Device;

    fn gpu() -> Device {
        Device::new_cuda(0).expect("a CUDA device (these tests need a GPU)")
    }

    #[test]
    fn every_trainable_tensor_gets_a_nonzero_gradient() {
        super::gradients_reach_every_weight(&gpu());
    }

    #[test]
    fn training_lowers_the_loss() {
        super::training_lowers_the_loss_on(&gpu());
    }

    #[test]
    fn sampling_does_not_depend_on_the_batch() {
        super::sampling_does_not_depend_on_the_batch_on(&gpu());
    }

    #[test]
    fn a_cached_decoding_step_equals_a_full_forward() {
        super::a_cached_decoding_step_equals_a_full_forward_on(&gpu());
    }

    #[test]
    fn inference_kernels_agree_with_the_differentiable_path() {
        super::inference_kernels_agree_with_the_differentiable_path_on(&gpu());
    }
}

#[test]
fn prm_scores_are_the_policy_hidden_states_through_the_head() {
    use candle_core::{Module, Tensor};
    let (policy, ex) = setup(3);
    let f = files(&policy);
    let prm = Policy::from_bytes(&f[0].1, &f[1].1, &f[2].1, &Device::Cpu).unwrap().into_prm(5).unwrap();
    assert!(prm.cfg.is_prm() && !policy.cfg.is_prm());
    let (np, pd) = (policy.cfg.vision_config.num_patches(), policy.cfg.vision_config.patch_dim());
    let e = &ex[0];
    let ids: Vec<u32> = e.prompt.iter().chain(&e.response).copied().collect();
    let ids = Tensor::new(ids.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap();
    let patches = Tensor::from_vec(e.patches.to_vec(), (1, np, pd), &Device::Cpu).unwrap();
    let h_policy = policy.model.forward_hidden(&ids, 1, &patches).unwrap();
    let h_prm = prm.model.forward_hidden(&ids, 1, &patches).unwrap();
    let dh = (&h_policy - &h_prm).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert_eq!(dh, 0.0, "the PRM's trunk differs from the policy's");
    let t = prm.named_tensors();
    let head = candle_nn::Linear::new(t["score_head.weight"].clone(), Some(t["score_head.bias"].clone()));
    let want = head.forward(&h_policy).unwrap().squeeze(2).unwrap();
    let got = prm.model.scores(&h_prm).unwrap();
    let d = (&want - &got).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(d < 1e-6, "scores differ from head(hidden) by {d}");
    // a PRM checkpoint round-trips as a PRM
    let g = files(&prm);
    let back = Policy::from_bytes(&g[0].1, &g[1].1, &g[2].1, &Device::Cpu).unwrap();
    assert!(back.cfg.is_prm());
    let again = back.model.scores(&back.model.forward_hidden(&ids, 1, &patches).unwrap()).unwrap();
    assert_eq!((&again - &got).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);
    // a policy has no score head
    assert!(policy.model.scores(&h_policy).unwrap_err().to_string().contains("no score head"));
}

#[test]
fn prm_scores_on_the_cpu_path_equal_the_differentiable_path() {
    use super::lm::VisionLm;
    use crate::data::answer::split_steps;
    let exs: Vec<_> = (0..3).map(|i| crate::data::synth::generate(7, "train", i, false)).collect();
    let (policy, _) = setup(3);
    let slow = policy.into_prm(5).unwrap();
    let f = files(&slow);
    let mut fast = Policy::from_bytes(&f[0].1, &f[1].1, &f[2].1, &Device::Cpu).unwrap();
    fast.model.use_inference_kernels(true).unwrap();
    // 3 prompts; the second has 20 responses (more than one group), the others 1 and 4;
    // responses of 1 step up to the whole gold chain, in several orders
    let prompts: Vec<_> = exs.iter().map(|e| VisionLm::encode_prompt(&fast, &e.question, std::slice::from_ref(&e.image_png)).unwrap()).collect();
    let mut responses: Vec<(usize, Vec<String>)> = Vec::new();
    for (p, n) in [(0usize, 1usize), (1, 20), (2, 4)] {
        let steps = split_steps(&exs[p].gold_cot);
        for k in 0..n {
            let mut s: Vec<String> = steps.iter().cycle().skip(k).take(1 + k % steps.len()).cloned().collect();
            if k % 3 == 1 {
                s.reverse();
            }
            responses.push((p, s));
        }
    }
    let items: Vec<(&super::lm::Prompt, &[String])> = responses.iter().map(|(p, s)| (&prompts[*p], s.as_slice())).collect();
    let want = VisionLm::score_steps(&slow, &items, 8).unwrap();
    let got = VisionLm::score_steps(&fast, &items, 8).unwrap();
    assert_eq!(want.iter().map(Vec::len).collect::<Vec<_>>(), got.iter().map(Vec::len).collect::<Vec<_>>());
    let d = want.iter().flatten().zip(got.iter().flatten()).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    assert!(d < 1e-5, "CPU path scores differ from the differentiable path's by {d}");
    let spread = got.iter().flatten().fold((1.0f64, 0.0f64), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    assert!(spread.1 - spread.0 > 1e-4, "scores do not vary: {spread:?}");
    // a response's scores do not depend on the responses it is grouped with
    for (i, item) in items.iter().enumerate() {
        assert_eq!(VisionLm::score_steps(&fast, &[*item], 8).unwrap()[0], got[i], "response {i} scored alone");
    }
    // a sequence longer than the model's positions is an error, not a panic
    let long: Vec<String> = vec!["1 + 1 = 2".to_string(); 400];
    let e = VisionLm::score_steps(&fast, &[(&prompts[0], long.as_slice())], 8).unwrap_err().to_string();
    assert!(e.contains("positions"), "{e}");
}

#[test]
fn prm_training_reaches_every_weight_and_fits_step_labels() {
    let (policy, mut ex) = setup(6);
    let prm = policy.into_prm(1).unwrap();
    // label every 3rd response token, alternating 1 / 0 / 0.5 by example
    for (i, e) in ex.iter_mut().enumerate() {
        e.labels = (2..e.response.len()).step_by(3).map(|j| (j, [1.0, 0.0, 0.5][(i + j) % 3])).collect();
    }
    let refs: Vec<_> = ex.iter().collect();
    let (loss, n) = batch_loss(&prm, &refs).unwrap();
    assert_eq!(n, ex.iter().map(|e| e.labels.len()).sum::<usize>());
    let grads = loss.backward().unwrap();
    let missing: Vec<_> = prm
        .named_vars()
        .into_iter()
        .filter(|(name, var)| {
            // the LM head (tied to the embeddings) gets gradient through the embeddings only
            !grads.get(var.as_tensor()).is_some_and(|g| g.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() > 0.0) && !name.starts_with("lm_head")
        })
        .map(|(n, _)| n)
        .collect();
    assert!(missing.is_empty(), "no gradient for {missing:?}");
    let mut st = state();
    st.schedule = Schedule::Constant { lr: 3e-3 };
    let mut opt = AdamW::new(st.adamw.clone());
    let first = train_step(&prm, &mut opt, &mut st, std::slice::from_ref(&refs), Some(1.0)).unwrap();
    let mut last = first;
    for _ in 0..30 {
        last = train_step(&prm, &mut opt, &mut st, std::slice::from_ref(&refs), Some(1.0)).unwrap();
    }
    // the floor is the labels' entropy (the 0.5 labels): ln 2 / 3 ≈ 0.23
    eprintln!("PRM BCE {first} → {last}");
    assert!(last < first * 0.7 && last < 0.45, "PRM loss {first} → {last}");
}

/// Perception probe: can the vision encoder alone learn each grid cell's digit when it is
/// supervised directly (cell features = mean of the patches centred in the cell → linear →
/// empty | 0..9)? Prints train steps and test digit accuracy on occupied cells.
/// `MSTAR_PROBE_STEPS`, `MSTAR_PROBE_TRAIN` (images), `MSTAR_PROBE_STEM` (channels),
/// `MSTAR_PROBE_PATCH` tune it.
#[test]
#[ignore = "an experiment (about a minute): cargo test --lib digit_probe -- --ignored --nocapture"]
fn digit_probe_on_the_vision_encoder() {
    use super::tiny_vlm::{image_patches, Config, TinyVlm};
    use crate::data::synth::{self, scene::CELL, scene::ORIGIN};
    use candle_core::{DType, Tensor, D};
    use candle_nn::{Module, Optimizer, VarBuilder, VarMap};
    let env = |k: &str, d: usize| std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d);
    let mut cfg = Config::preset("tiny", 384).unwrap();
    cfg.vision_config.patch_size = env("MSTAR_PROBE_PATCH", 8);
    cfg.vision_config.stem_channels = Some(env("MSTAR_PROBE_STEM", 0)).filter(|c| *c > 0);
    let v = cfg.vision_config.clone();
    let dev = Device::Cpu;
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
    let model = TinyVlm::new(&cfg, vb.clone()).unwrap();
    let head = candle_nn::linear(v.hidden_size, 11, vb.pp("probe")).unwrap();
    if std::env::var("MSTAR_PROBE_INIT").as_deref() == Ok("policy") {
        // the policy's initialization (Policy::new_random): N(0, 0.02²) matrices, unit norms, zero biases
        let mut rng = crate::rng::Normal::new(11);
        for (name, var) in varmap.data().lock().unwrap().iter() {
            let shape = var.shape().clone();
            if name.starts_with("vision.") && shape.rank() == 2 {
                let w: Vec<f32> = (0..shape.elem_count()).map(|_| rng.sample() * 0.02).collect();
                var.set(&Tensor::from_vec(w, &shape, &dev).unwrap()).unwrap();
            }
        }
    }
    // (9, P) averaging matrix: patch → the cell its centre falls in
    let n = v.grid();
    let mut pool = vec![0f32; 9 * n * n];
    for py in 0..n {
        for px in 0..n {
            let cell = |c: usize| ((((c * v.patch_size + v.patch_size / 2) as i32 - ORIGIN) / CELL).clamp(0, 2)) as usize;
            pool[(cell(py) * 3 + cell(px)) * n * n + py * n + px] = 1.0;
        }
    }
    let pool = Tensor::from_vec(pool, (9, n * n), &dev).unwrap();
    let pool = pool.broadcast_div(&pool.sum_keepdim(1).unwrap()).unwrap();
    let data = |split: &str, count: u64| -> Vec<(Vec<f32>, Vec<u32>)> {
        (0..count)
            .map(|i| {
                let e = synth::generate(0, split, i, false);
                let mut y = vec![10u32; 9];
                for o in &e.scene.objects {
                    y[(o.row * 3 + o.col) as usize] = u32::from(o.digit);
                }
                (image_patches(&e.image_png, &v).unwrap(), y)
            })
            .collect()
    };
    let (train, test) = (data("train", env("MSTAR_PROBE_TRAIN", 4000) as u64), data("test", 500));
    let batch = |xs: &[(Vec<f32>, Vec<u32>)]| {
        let p: Vec<f32> = xs.iter().flat_map(|x| x.0.iter().copied()).collect();
        let y: Vec<u32> = xs.iter().flat_map(|x| x.1.iter().copied()).collect();
        (Tensor::from_vec(p, (xs.len(), n * n, v.patch_dim()), &dev).unwrap(), Tensor::from_vec(y, xs.len() * 9, &dev).unwrap())
    };
    let logits = |p: &Tensor| -> Tensor {
        let f = model.vision_features(p).unwrap();
        let cells = pool.unsqueeze(0).unwrap().broadcast_as((f.dim(0).unwrap(), 9, n * n)).unwrap().contiguous().unwrap().matmul(&f).unwrap();
        head.forward(&cells).unwrap().reshape(((), 11)).unwrap()
    };
    let vars: Vec<_> = varmap.all_vars();
    let mut opt =
        candle_nn::AdamW::new(vars, candle_nn::ParamsAdamW { lr: env("MSTAR_PROBE_LR_E4", 10) as f64 * 1e-4, weight_decay: 0.01, ..Default::default() })
            .unwrap();
    let steps = env("MSTAR_PROBE_STEPS", 1500);
    let started = std::time::Instant::now();
    for step in 0..steps {
        let lo = (step * 32) % (train.len() - 32);
        let (p, y) = batch(&train[lo..lo + 32]);
        let loss = candle_nn::loss::cross_entropy(&logits(&p), &y).unwrap();
        opt.backward_step(&loss).unwrap();
        if step % 250 == 0 || step + 1 == steps {
            eprintln!("step {step}: loss {:.4} ({:.0}s)", loss.to_scalar::<f32>().unwrap(), started.elapsed().as_secs_f64());
        }
    }
    let (mut right, mut occupied, mut empty_right) = (0, 0, 0);
    for chunk in test.chunks(100) {
        let (p, y) = batch(chunk);
        let pred: Vec<u32> = logits(&p).argmax(D::Minus1).unwrap().to_vec1().unwrap();
        for (a, b) in pred.iter().zip(y.to_vec1::<u32>().unwrap()) {
            if b == 10 {
                empty_right += (*a == 10) as usize;
            } else {
                occupied += 1;
                right += (*a == b) as usize;
            }
        }
    }
    eprintln!("test: digit accuracy on occupied cells {:.3} ({right}/{occupied}), empty cells right {empty_right}", right as f64 / occupied as f64);
    assert!(occupied > 0);
}

#[test]
fn frozen_weights_stay_and_the_rest_train() {
    let (policy, ex) = setup(4);
    let refs: Vec<_> = ex.iter().collect();
    let before: Vec<(String, Vec<f32>)> =
        policy.named_vars().iter().map(|(n, v)| (n.clone(), v.as_tensor().flatten_all().unwrap().to_vec1().unwrap())).collect();
    let mut opt = AdamW::new(AdamWConfig { freeze: vec!["vision.".into()], ..Default::default() });
    let mut st = state();
    train_step(&policy, &mut opt, &mut st, &[refs], Some(1.0)).unwrap();
    let (mut frozen, mut moved) = (0, 0);
    for ((name, old), (_, var)) in before.iter().zip(policy.named_vars()) {
        let new: Vec<f32> = var.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
        if name.starts_with("vision.") {
            assert_eq!(&new, old, "{name} changed although frozen");
            frozen += 1;
        } else if &new != old {
            moved += 1;
        }
    }
    assert!(frozen > 5 && moved > 10, "{frozen} frozen, {moved} trained");
}

#[test]
fn a_frozen_encoder_is_detached_and_the_trainable_gradients_stay() {
    let (mut policy, ex) = setup(4);
    let refs: Vec<_> = ex.iter().collect();
    let grads = |p: &Policy| -> Vec<(String, Option<Vec<f32>>)> {
        let (loss, _) = batch_loss(p, &refs).unwrap();
        let store = loss.backward().unwrap();
        p.named_vars().into_iter().map(|(n, v)| (n, store.get(v.as_tensor()).map(|g| g.flatten_all().unwrap().to_vec1().unwrap()))).collect()
    };
    let full = grads(&policy);
    policy.model.set_vision_frozen(true);
    let detached = grads(&policy);
    let mut trainable = 0;
    for ((name, a), (_, b)) in full.iter().zip(&detached) {
        if name.starts_with("vision.") {
            assert!(a.is_some() && b.is_none(), "{name}: the encoder should get a gradient only when it is not frozen");
        } else {
            assert_eq!(a, b, "{name}: detaching the frozen encoder changed a trainable gradient");
            trainable += usize::from(a.is_some());
        }
    }
    assert!(trainable > 10, "{trainable} trainable tensors with gradients");
}

#[test]
fn a_micro_batch_split_across_threads_gives_the_whole_batchs_loss_and_gradients() {
    use crate::train::{chunked_backward, optimizer_step, CPU_CHUNK};
    // 20 examples: sub-batches of 8, 8 and 4, on however many threads this process has
    let (policy, ex) = setup(20);
    let refs: Vec<_> = ex.iter().collect();
    assert!(refs.len() > 2 * CPU_CHUNK);
    let vars = policy.named_vars();
    let grads_of = |chunked: bool| {
        let mut st = state();
        let mut captured = None;
        optimizer_step(
            &vars,
            &mut AdamW::new(AdamWConfig::default()),
            &mut st,
            std::slice::from_ref(&refs),
            None,
            |e| e.loss_terms(false),
            |mb, share, g| {
                let l = if chunked {
                    chunked_backward(mb, share, g, |e| e.loss_terms(false), |c, s| crate::train::autograd(&batch_loss(&policy, c)?.0, s))?
                } else {
                    g.backward(&batch_loss(&policy, mb)?.0, share)?
                };
                captured = Some(g.sum.clone());
                Ok(l)
            },
        )
        .unwrap();
        captured.unwrap()
    };
    // the whole batch first: optimizer_step applies an update, so restore the weights between
    let before: Vec<_> = vars.iter().map(|(_, v)| v.as_tensor().copy().unwrap()).collect();
    let whole = grads_of(false);
    for ((_, v), t) in vars.iter().zip(&before) {
        v.set(t).unwrap();
    }
    let split = grads_of(true);
    assert_eq!(whole.len(), split.len());
    assert_eq!(whole.len(), vars.len(), "every weight gets a gradient");
    assert_gradients_close(&whole, &split);
}

/// Every gradient of `b` within 1e-4 of the largest magnitude of the same weight's in `a`.
fn assert_gradients_close(a: &std::collections::BTreeMap<String, candle_core::Tensor>, b: &std::collections::BTreeMap<String, candle_core::Tensor>) {
    for (name, g) in a {
        let x: Vec<f32> = g.flatten_all().unwrap().to_vec1().unwrap();
        let y: Vec<f32> = b[name].flatten_all().unwrap().to_vec1().unwrap();
        let scale = x.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
        let err = x.iter().zip(&y).fold(0f32, |m, (p, q)| m.max((p - q).abs()));
        assert!(err <= 1e-4 * scale, "{name}: gradients differ by {err} (scale {scale})");
    }
}

/// The gradients (× 0.7) of one sub-batch through the hand-written CPU decoder backward and
/// through candle's autograd, every weight within 1e-4 of its gradient's scale.
fn hand_written_backward_equals_autograd(policy: &Policy, ex: &[crate::train::Example]) {
    use crate::train::{autograd, cpu::sub_batch_grads, AdamW, Grads};
    let refs: Vec<_> = ex.iter().collect();
    let vars = policy.named_vars();
    let frozen = AdamW::new(AdamWConfig { freeze: if policy.model.vision_is_frozen() { vec!["vision.".into()] } else { vec![] }, ..Default::default() });
    let collect = |part: crate::train::Partial| {
        let mut g = Grads::new(&vars, &frozen, 0);
        g.add_partial(&part).unwrap();
        g.sum
    };
    let (l_auto, p_auto) = autograd(&batch_loss(policy, &refs).unwrap().0, 0.7).unwrap();
    let dec = policy.model.cpu_decoder().unwrap();
    let vision = if policy.model.vision_is_frozen() { policy.model.cpu_vision().unwrap() } else { None };
    let (l_hand, p_hand) = sub_batch_grads(policy, &dec, vision.as_ref(), &refs, 0.7).unwrap();
    assert!((l_auto - l_hand).abs() < 1e-5 * l_auto.abs().max(1.0), "losses {l_auto} vs {l_hand}");
    let (auto, hand) = (collect(p_auto), collect(p_hand));
    let names = |m: &std::collections::BTreeMap<String, candle_core::Tensor>| m.keys().cloned().collect::<Vec<_>>();
    assert_eq!(names(&auto), names(&hand), "the same weights get gradients");
    assert!(auto.len() > 10);
    assert_gradients_close(&auto, &hand);
}

#[test]
fn the_hand_written_cpu_backward_equals_autograd() {
    // policy: whole model trained; encoder frozen; pooled regions; untied LM head; a PRM
    let (mut policy, ex) = setup(5);
    hand_written_backward_equals_autograd(&policy, &ex);
    policy.model.set_vision_frozen(true);
    hand_written_backward_equals_autograd(&policy, &ex);
    // the frozen encoder's features computed once per image beforehand
    let mut pre = ex.clone();
    crate::train::frozen_features(&policy, &mut pre).unwrap();
    assert!(pre.iter().all(|e| e.features.is_some()));
    hand_written_backward_equals_autograd(&policy, &pre);
    let (policy, ex) = setup_with(4, &Device::Cpu, &serde_json::json!({"vision_config": {"pool_grid": 3}}));
    hand_written_backward_equals_autograd(&policy, &ex);
    let (policy, ex) = setup_with(3, &Device::Cpu, &serde_json::json!({"tie_word_embeddings": false}));
    hand_written_backward_equals_autograd(&policy, &ex);
    let (policy, mut ex) = setup(4);
    let prm = policy.into_prm(1).unwrap();
    for (i, e) in ex.iter_mut().enumerate() {
        e.labels = (1..e.response.len()).step_by(4).map(|j| (j, [1.0, 0.0, 0.25][(i + j) % 3])).collect();
    }
    hand_written_backward_equals_autograd(&prm, &ex);
}

#[test]
fn the_cpu_vision_path_equals_the_encoder() {
    // the generate operator's vision features (vision_cpu) against candle's encoder, every
    // weight moved off its initial value (norms start at 1); with a stem there is none
    let (mut policy, ex) = setup_with(3, &Device::Cpu, &serde_json::json!({"vision_config": {"num_hidden_layers": 2}}));
    for (_, var) in policy.named_vars() {
        let noise = var.as_tensor().randn_like(0.0, 0.05).unwrap();
        var.set(&(var.as_tensor() + noise).unwrap()).unwrap();
    }
    let v = policy.cfg.vision_config.clone();
    let patches: Vec<f32> = ex.iter().flat_map(|e| e.patches.iter().copied()).collect();
    let t = candle_core::Tensor::from_vec(patches.clone(), (3, v.num_patches(), v.patch_dim()), &Device::Cpu).unwrap();
    let want: Vec<f32> = policy.model.vision_features(&t).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    policy.model.use_inference_kernels(true).unwrap();
    let cpu = policy.model.cpu_path().unwrap().vision.as_ref().expect("a CPU vision path");
    let got = cpu.forward(&patches, 3);
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0f32, |m, x| m.max(x.abs()));
    for (i, (a, b)) in got.iter().zip(&want).enumerate() {
        assert!((a - b).abs() <= 1e-4 * scale, "feature {i}: {a} vs {b}");
    }
    // an image's features do not depend on the others encoded with it
    let one = cpu.forward(&patches[2 * patches.len() / 3..], 1);
    assert!(one == got[2 * got.len() / 3..], "an image's features depend on its batch");
    let (stem, _) = setup_with(1, &Device::Cpu, &serde_json::json!({"vision_config": {"stem_channels": 4}}));
    assert!(stem.model.cpu_vision().unwrap().is_none());
}

/// `cargo test --lib bench_sub_batch_grads -- --ignored --nocapture`: the time of one CPU
/// training sub-batch (8 drill-length sequences) of the tiny preset, as the drill stage runs it.
#[test]
#[ignore]
fn bench_sub_batch_grads() {
    let over = serde_json::json!({"hidden_size": 128, "intermediate_size": 352, "num_hidden_layers": 4, "num_attention_heads": 4,
        "vision_config": {"hidden_size": 96, "num_attention_heads": 4, "num_hidden_layers": 2, "intermediate_size": 256, "pool_grid": 3}});
    let (mut policy, mut ex) = setup_with(8, &Device::Cpu, &over);
    policy.model.set_vision_frozen(true);
    for e in &mut ex {
        e.prompt.truncate(26);
        e.response.truncate(18);
    }
    crate::train::frozen_features(&policy, &mut ex).unwrap();
    let refs: Vec<_> = ex.iter().collect();
    let dec = policy.model.cpu_decoder().unwrap();
    let vision = policy.model.cpu_vision().unwrap();
    for _ in 0..3 {
        crate::train::cpu::sub_batch_grads(&policy, &dec, vision.as_ref(), &refs, 1.0).unwrap();
    }
    let reps = 20;
    let (mut best, mut total) = (f64::INFINITY, 0.0);
    for _ in 0..6 {
        let t = std::time::Instant::now();
        for _ in 0..reps {
            crate::train::cpu::sub_batch_grads(&policy, &dec, vision.as_ref(), &refs, 1.0).unwrap();
        }
        best = best.min(t.elapsed().as_secs_f64());
        total += t.elapsed().as_secs_f64();
    }
    let ms = |s: f64, n: usize| s * 1e3 / n as f64;
    eprintln!(
        "sub_batch_grads: {:.2} ms per sub-batch of 8 × {} tokens (best of 6 × {reps}; mean {:.2})",
        ms(best, reps),
        26 + 18 - 1 + 9,
        ms(total, 6 * reps)
    );
}

#[test]
fn a_training_pass_does_not_depend_on_the_reused_buffers() {
    // the CPU backward reuses its activation buffers across passes: a pass after a longer one
    // must equal the same pass before it, to the bit
    let (policy, ex) = setup(6);
    let dec = policy.model.cpu_decoder().unwrap();
    let run = |n: usize| {
        let refs: Vec<_> = ex[..n].iter().collect();
        let (l, p) = crate::train::cpu::sub_batch_grads(&policy, &dec, None, &refs, 1.0).unwrap();
        (l, p.named.iter().map(|(_, t)| t.flatten_all().unwrap().to_vec1::<f32>().unwrap()).collect::<Vec<_>>())
    };
    let first = run(2);
    let _ = run(6);
    assert!(run(2) == first, "a pass changed after a longer one");
}

/// `MSTAR_DEVICE` and `MSTAR_DTYPE` as the CLI parses them: the defaults when unset, a clear
/// error naming the variable and the accepted values otherwise.
#[test]
fn device_choice_parses_its_variables() {
    use super::DeviceChoice;
    assert_eq!(DeviceChoice::parse(None, None).unwrap(), DeviceChoice::default());
    let c = DeviceChoice::parse(Some("cpu"), Some("bf16")).unwrap();
    assert!(c.force_cpu && c.hf_dtype == Some(candle_core::DType::BF16));
    assert!(!DeviceChoice::parse(Some("auto"), Some("f32")).unwrap().force_cpu);
    let e = DeviceChoice::parse(Some("gpu"), None).unwrap_err();
    assert!(e.contains("MSTAR_DEVICE=gpu") && e.contains("`cpu`"), "{e}");
    let e = DeviceChoice::parse(None, Some("fp16")).unwrap_err();
    assert!(e.contains("MSTAR_DTYPE=fp16") && e.contains("`bf16` or `f32`"), "{e}");
}
