//! `mstar doctor`: which device, dtype, threads and kernels the model operators will use, and a
//! smoke test (SFT loss and gradients of a tiny random policy) on that device.

use super::policy::Policy;
use super::tokenizer::TextTokenizer;
use candle_core::Device;
use std::fmt::Write as _;

/// What `mstar doctor` found.
pub struct Doctor {
    /// `name: value` lines, in print order.
    pub lines: Vec<(String, String)>,
    /// The smoke test's error, if it failed.
    pub failure: Option<SmokeError>,
}

impl Doctor {
    pub fn render(&self) -> String {
        let w = self.lines.iter().map(|(k, _)| k.chars().count()).max().unwrap_or(0);
        let mut s = String::new();
        for (k, v) in &self.lines {
            let _ = writeln!(s, "{k:<w$}  {v}");
        }
        s
    }
}

fn cpu_features() -> String {
    #[cfg(target_arch = "x86_64")]
    {
        let mut f = Vec::new();
        if is_x86_feature_detected!("avx512f") {
            f.push("avx512f");
        }
        if is_x86_feature_detected!("avx2") {
            f.push("avx2");
        }
        if is_x86_feature_detected!("fma") {
            f.push("fma");
        }
        if f.is_empty() {
            "x86_64, no AVX2: gemm falls back to scalar kernels".into()
        } else {
            format!("x86_64 {}", f.join(" "))
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        std::env::consts::ARCH.to_string()
    }
}

/// Inspects the build and the environment, then runs one forward + backward pass of a tiny
/// random policy on the device the operators would pick (`model::device()`).
pub fn doctor() -> Doctor {
    let mut lines: Vec<(String, String)> = Vec::new();
    let mut add = |k: &str, v: String| lines.push((k.to_string(), v));
    add("mstar", env!("CARGO_PKG_VERSION").to_string());
    add(
        "build",
        format!("{} profile, cuda feature {}", if cfg!(debug_assertions) { "debug" } else { "release" }, if cfg!(feature = "cuda") { "on" } else { "off" }),
    );
    let dev = super::device();
    let why = match (super::device_choice().force_cpu, cfg!(feature = "cuda"), dev.is_cuda()) {
        (true, _, false) => "MSTAR_DEVICE=cpu".to_string(),
        (_, false, _) => "built without the cuda feature".to_string(),
        (_, true, true) => "the first CUDA GPU".to_string(),
        (_, true, false) => format!("no usable CUDA device: {}", cuda_error()),
    };
    add("device", format!("{} ({why})", if dev.is_cuda() { "cuda:0" } else { "cpu" }));
    add("dtype", "f32 (weights, activations, optimizer moments)".into());
    add(
        "cpu",
        format!(
            "{}; {} threads for sampling rows and training sub-batches (RAYON_NUM_THREADS), candle's own ops on {}",
            cpu_features(),
            super::threads(),
            candle_core::utils::get_num_threads()
        ),
    );
    if dev.is_cuda() {
        add("sampling kernels", "candle CUDA kernels + cuBLAS, fused RMSNorm/softmax for inference".into());
        add("training kernels", "candle CUDA ops composed (differentiable RMSNorm, softmax, RoPE)".into());
    } else {
        add("sampling kernels", "decode_cpu: f32 weight snapshot, preallocated KV cache, direct gemm calls, rows split over threads".into());
        add("training kernels", "fused CPU ops with explicit backward (causal softmax, RMSNorm, RoPE) + candle matmul".into());
    }
    let failure = match smoke(&dev) {
        Ok(msg) => {
            add("smoke test", msg);
            None
        }
        Err(e) => {
            add("smoke test", format!("FAILED: {e}"));
            Some(e)
        }
    };
    Doctor { lines, failure }
}

#[cfg(feature = "cuda")]
fn cuda_error() -> String {
    match Device::new_cuda(0) {
        Ok(_) => "MSTAR_DEVICE".into(),
        Err(e) => e.to_string().lines().next().unwrap_or_default().to_string(),
    }
}

#[cfg(not(feature = "cuda"))]
fn cuda_error() -> String {
    String::new()
}

/// Why the smoke test failed: a step that errs, or a loss or gradient that is not as it should be.
#[derive(Debug, thiserror::Error)]
pub enum SmokeError {
    #[error(transparent)]
    Tokenizer(#[from] super::tokenizer::TokenizerError),
    #[error("no tiny preset")]
    NoPreset,
    #[error(transparent)]
    Model(#[from] super::policy::ModelError),
    #[error("{0}")]
    Image(String),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error("the loss is {0}")]
    NonFiniteLoss(f32),
    #[error("no finite non-zero gradient for {}", .0.join(", "))]
    NoGradient(Vec<String>),
}

/// The SFT loss and its gradients for a tiny random policy on a synthetic example: the loss is
/// finite and every weight gets a finite, non-zero gradient.
fn smoke(dev: &Device) -> Result<String, SmokeError> {
    let t0 = std::time::Instant::now();
    let ex = crate::data::synth::generate(0, "doctor", 0, false);
    let texts = [ex.question.clone(), ex.gold_cot.clone()];
    let tok = TextTokenizer::train(texts.iter(), 300)?;
    let mut cfg = super::tiny_vlm::Config::preset("tiny", tok.vocab_size()).ok_or(SmokeError::NoPreset)?;
    cfg.num_hidden_layers = 2;
    let policy = Policy::new_random(&cfg, tok, 1, dev)?;
    let prompt = policy.encode_prompt(&ex.question)?;
    let response = policy.encode_response(&ex.gold_cot)?;
    let patches = super::tiny_vlm::image_patches(&ex.image_png, &cfg.vision_config).map_err(SmokeError::Image)?;
    let example = crate::train::Example { prompt, response, patches: patches.into(), features: None, labels: vec![] };
    let (loss, _) = crate::train::batch_loss(&policy, &[&example])?;
    let l = loss.to_scalar::<f32>()?;
    if !l.is_finite() {
        return Err(SmokeError::NonFiniteLoss(l));
    }
    let grads = loss.backward()?;
    let vars = policy.named_vars();
    let mut missing = Vec::new();
    for (name, var) in &vars {
        let ok = grads.get(var.as_tensor()).and_then(|g| g.abs().ok()?.sum_all().ok()?.to_scalar::<f32>().ok()).is_some_and(|s| s.is_finite() && s > 0.0);
        if !ok {
            missing.push(name.clone());
        }
    }
    if !missing.is_empty() {
        return Err(SmokeError::NoGradient(missing));
    }
    Ok(format!(
        "ok — SFT loss and gradients of a {}-parameter policy, loss {l:.3}, all {} weights got gradients, {:.0} ms",
        policy.num_params(),
        vars.len(),
        t0.elapsed().as_secs_f64() * 1e3
    ))
}

#[cfg(test)]
mod tests {
    #[test]
    fn doctor_reports_the_cpu_and_passes_its_smoke_test() {
        let d = super::doctor();
        assert!(d.failure.is_none(), "{}", d.render());
        let text = d.render();
        for key in ["device", "dtype", "sampling kernels", "training kernels", "smoke test"] {
            assert!(text.contains(key), "{text}");
        }
        if !cfg!(feature = "cuda") {
            assert!(text.contains("cpu (built without the cuda feature)"), "{text}");
        }
    }
}
