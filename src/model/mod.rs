//! Models in candle: the tiny vision-language policy (its own folder), its tokenizer, image
//! preprocessing, batched sampling with a KV cache, and checkpoint folders.

pub mod bench;
pub mod checkpoint;
pub mod doctor;
pub mod generate;
pub mod hf;
pub mod layers;
pub mod lm;
pub mod policy;
pub mod qwen2_5_vl;
pub mod qwen3_vl;
pub mod qwen_vl;
pub mod tiny_vlm;
pub mod tokenizer;

use candle_core::Device;
use std::sync::OnceLock;

static THREADS: OnceLock<usize> = OnceLock::new();

/// The threads mstar's CPU model code spreads its work over (generation rows, training
/// sub-batches): `RAYON_NUM_THREADS`, else candle's default (the physical cores), read once.
pub fn threads() -> usize {
    *THREADS.get_or_init(candle_core::utils::get_num_threads)
}

/// Makes candle's own CPU ops single-threaded for the rest of the process, after noting
/// [`threads`]: mstar parallelizes above them (rows of a generation batch, sub-batches of a
/// training step), which on these small models is about twice as fast as candle's per-op
/// threads. Call first thing in `main`, before any other thread exists.
pub fn parallelize_above_candle() {
    threads();
    // SAFETY: called at the start of `main`, when no other thread can read the environment
    unsafe {
        std::env::set_var("RAYON_NUM_THREADS", "1");
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
}

/// Makes glibc keep freed memory instead of handing it back to the kernel: buffers up to 32
/// MiB come from the heap (not fresh mmaps) and the heap is not trimmed below 2 GiB. Training
/// allocates and frees every intermediate of every step, and each fresh page costs a page
/// fault and zeroing: `mstar model bench --size tiny --batch 32` trains at 16.0–16.6k tok/s
/// with this against 11.0–14.2k without. Call first thing in `main`, before any other thread.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; called before any other thread exists
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        libc::mallopt(libc::M_TOP_PAD, 64 << 20);
    }
}

/// Where models run, as the CLI chose it at start-up (`MSTAR_DEVICE`, `MSTAR_DTYPE`); the
/// library reads no environment.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct DeviceChoice {
    /// Run on the CPU even when a GPU is there.
    pub force_cpu: bool,
    /// The dtype of Hugging Face checkpoints (default: bf16 on a GPU, f32 on the CPU).
    pub hf_dtype: Option<candle_core::DType>,
}

impl DeviceChoice {
    /// From the values of `MSTAR_DEVICE` (`cpu` or `auto`) and `MSTAR_DTYPE` (`bf16` or `f32`);
    /// unset or empty: the defaults.
    pub fn parse(device: Option<&str>, dtype: Option<&str>) -> Result<Self, String> {
        let force_cpu = match device.unwrap_or("") {
            "" | "auto" => false,
            "cpu" => true,
            v => return Err(format!("MSTAR_DEVICE={v}: give `cpu` (force the CPU) or `auto` (a GPU when there is one)")),
        };
        let hf_dtype = match dtype.unwrap_or("") {
            "" => None,
            "bf16" => Some(candle_core::DType::BF16),
            "f32" => Some(candle_core::DType::F32),
            v => return Err(format!("MSTAR_DTYPE={v}: give `bf16` or `f32`")),
        };
        Ok(Self { force_cpu, hf_dtype })
    }
}

static DEVICE_CHOICE: OnceLock<DeviceChoice> = OnceLock::new();

/// Sets where models run for the rest of the process (once, at start-up; later calls are
/// ignored). Unset: a GPU when there is one, the default dtypes.
pub fn choose_device(choice: DeviceChoice) {
    let _ = DEVICE_CHOICE.set(choice);
}

/// The choice [`choose_device`] made.
pub fn device_choice() -> DeviceChoice {
    DEVICE_CHOICE.get().copied().unwrap_or_default()
}

/// The device models run on: CUDA when built with the `cuda` feature and a GPU is present
/// (unless [`DeviceChoice::force_cpu`]), else the CPU.
pub fn device() -> Device {
    if device_choice().force_cpu {
        return Device::Cpu;
    }
    #[cfg(feature = "cuda")]
    if let Ok(d) = Device::new_cuda(0) {
        return d;
    }
    Device::Cpu
}

/// The dtype Hugging Face checkpoints run in on `dev`: bf16 on a GPU, f32 on the CPU, unless
/// [`DeviceChoice::hf_dtype`] says otherwise (e.g. to try the GPU's bf16 path on the CPU).
pub fn hf_dtype(dev: &Device) -> candle_core::DType {
    match device_choice().hf_dtype {
        Some(d) => d,
        None if dev.is_cpu() => candle_core::DType::F32,
        None => candle_core::DType::BF16,
    }
}

/// Small fixtures shared by the model and trainer tests.
#[cfg(test)]
pub(crate) mod test_util {
    use super::policy::Policy;
    use super::tiny_vlm::{image_patches, Config};
    use super::tokenizer::TextTokenizer;
    use crate::data::synth;
    use crate::train::Example;

    pub fn tiny_config(vocab: usize) -> Config {
        let mut c = Config::preset("tiny", vocab).unwrap();
        c.hidden_size = 32;
        c.intermediate_size = 64;
        c.num_hidden_layers = 2;
        c.num_attention_heads = 2;
        c.vision_config.hidden_size = 16;
        c.vision_config.num_attention_heads = 2;
        c.vision_config.num_hidden_layers = 1;
        c.vision_config.intermediate_size = 32;
        c
    }

    /// A tiny policy and `n` synthetic examples with their gold chains.
    pub fn setup(n: u64) -> (Policy, Vec<Example>) {
        setup_on(n, &candle_core::Device::Cpu)
    }

    /// [`setup`] with the policy on `dev`.
    pub fn setup_on(n: u64, dev: &candle_core::Device) -> (Policy, Vec<Example>) {
        setup_with(n, dev, &serde_json::json!({}))
    }

    /// [`setup_on`] with `over` merged into the tiny config.
    pub fn setup_with(n: u64, dev: &candle_core::Device, over: &serde_json::Value) -> (Policy, Vec<Example>) {
        let exs: Vec<_> = (0..n).map(|i| synth::generate(7, "train", i, false)).collect();
        let texts: Vec<String> = exs.iter().flat_map(|e| [e.question.clone(), e.gold_cot.clone()]).collect();
        let tok = TextTokenizer::train(texts.iter(), 320).unwrap();
        let cfg = tiny_config(tok.vocab_size()).with_overrides(over).unwrap();
        let policy = Policy::new_random(&cfg, tok, 11, dev).unwrap();
        assert!(policy.named_vars().iter().all(|(_, v)| v.device().same_device(dev)), "weights not on {dev:?}");
        let examples = exs
            .iter()
            .map(|e| {
                let mut prompt = vec![cfg.bos_token_id, cfg.image_token_id];
                prompt.extend(policy.tokenizer.encode(&format!("{}\n", e.question)).unwrap());
                let mut response = policy.tokenizer.encode(&e.gold_cot).unwrap();
                response.push(cfg.eos_token_id);
                Example { prompt, response, patches: image_patches(&e.image_png, &cfg.vision_config).unwrap().into(), features: None, labels: vec![] }
            })
            .collect();
        (policy, examples)
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod parity;
