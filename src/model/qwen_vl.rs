//! The Qwen-VL family behind one type: a checkpoint folder (model by `architectures`, weights,
//! tokenizer, image processor, chat template) and the calls generation and training make.

use super::hf::{self, chat::ChatTemplate, processor::ImageProcessor, HfError};
use super::layers::Mask;
use super::qwen2_5_vl::{self, lora, text::TextModel, Qwen25Vl};
use super::qwen3_vl::{self, Qwen3Vl};
use candle_core::{DType, Device, Result, Tensor, Var};
use candle_nn::VarMap;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// A process reward model's scalar head (hidden → 1) beside the model's weights.
pub const SCORE_HEAD: &str = "score_head.safetensors";

/// peft's adapter files.
pub const ADAPTER_CONFIG: &str = "adapter_config.json";
pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";

/// A folder's weights, once its config.json is known to be there (an empty or wrong folder
/// is reported by its config, not by a missing weights file).
fn base_weights(dir: &Path, dtype: DType, dev: &Device) -> hf::Result<HashMap<String, Tensor>> {
    hf::read_json(&dir.join("config.json"))?;
    hf::weights::load(dir, dtype, dev)
}

/// A rendered prompt: token ids, the images' patches (rows of 3·temporal·patch² values) and
/// grids, and the template's text.
pub struct PromptParts {
    pub ids: Vec<u32>,
    pub pixels: Vec<f32>,
    pub grids: Vec<[usize; 3]>,
    pub text: String,
}

/// The decoder's inputs for a batch of rows (see `QwenVl::decoder_inputs`).
pub struct DecoderInputs {
    pub x: Tensor,
    pub cos: Tensor,
    pub sin: Tensor,
    /// DeepStack features (B·T, C), added after the first layers (Qwen3-VL; empty otherwise).
    pub deep: Vec<Tensor>,
}

/// A Qwen-VL model of either generation.
#[derive(Debug, Clone)]
pub enum QwenVl {
    Qwen25(Qwen25Vl),
    Qwen3(Qwen3Vl),
}

impl QwenVl {
    pub fn text(&self) -> &TextModel {
        match self {
            QwenVl::Qwen25(m) => &m.text,
            QwenVl::Qwen3(m) => &m.text,
        }
    }

    pub fn image_token_id(&self) -> u32 {
        match self {
            QwenVl::Qwen25(m) => m.cfg.image_token_id,
            QwenVl::Qwen3(m) => m.cfg.image_token_id,
        }
    }

    pub fn eos_token_ids(&self) -> &[u32] {
        match self {
            QwenVl::Qwen25(m) => &m.cfg.eos_token_ids,
            QwenVl::Qwen3(m) => &m.cfg.eos_token_ids,
        }
    }

    fn merge_size(&self) -> usize {
        match self {
            QwenVl::Qwen25(m) => m.cfg.vision.spatial_merge_size,
            QwenVl::Qwen3(m) => m.cfg.vision.spatial_merge_size,
        }
    }

    /// (patch, merge, temporal) sizes the image processor must use.
    fn patching(&self) -> (usize, usize, usize) {
        match self {
            QwenVl::Qwen25(m) => (m.cfg.vision.patch_size, m.cfg.vision.spatial_merge_size, m.cfg.vision.temporal_patch_size),
            QwenVl::Qwen3(m) => (m.cfg.vision.patch_size, m.cfg.vision.spatial_merge_size, m.cfg.vision.temporal_patch_size),
        }
    }

    /// Hidden states (1, T, C) of a prompt with its images, filling `cache`; and the next
    /// text position (one past the largest M-RoPE position).
    pub fn prefill(&self, ids: &[u32], pixels: Option<&Tensor>, grids: &[[usize; 3]], cache: Option<&mut qwen2_5_vl::text::Cache>) -> Result<(Tensor, i64)> {
        let pos = qwen2_5_vl::rope_index(ids, grids, self.image_token_id(), self.merge_size())?;
        let next = pos.iter().flat_map(|p| p.iter().copied()).max().map_or(0, |m| m + 1);
        Ok((self.hidden(&[ids.to_vec()], pixels, grids, vec![pos], cache)?, next))
    }

    /// Hidden states (B, T, C) of equally long rows (right-padded with any non-image token;
    /// causal attention keeps the pads out of the real tokens' states). `pixels` holds every
    /// image of every row in row order and `grids[r]` row r's image grids.
    pub fn hidden_batch(&self, rows: &[Vec<u32>], pixels: Option<&Tensor>, grids: &[Vec<[usize; 3]>]) -> Result<Tensor> {
        self.hidden(rows, pixels, &grids.concat(), self.positions(rows, grids)?, None)
    }

    fn hidden(
        &self,
        rows: &[Vec<u32>],
        pixels: Option<&Tensor>,
        grids: &[[usize; 3]],
        pos: Vec<Vec<[i64; 3]>>,
        cache: Option<&mut qwen2_5_vl::text::Cache>,
    ) -> Result<Tensor> {
        let d = self.decoder_inputs(rows, pixels, grids, pos)?;
        self.text().forward_deepstack(&d.x, &d.cos, &d.sin, Mask::Causal, cache, &d.deep)
    }

    /// What the decoder layers take: embeddings with the image features in place, the M-RoPE
    /// tables of `pos`, and (Qwen3-VL) the DeepStack features per token row.
    pub fn decoder_inputs(&self, rows: &[Vec<u32>], pixels: Option<&Tensor>, grids: &[[usize; 3]], pos: Vec<Vec<[i64; 3]>>) -> Result<DecoderInputs> {
        let text = self.text();
        let dev = text.embed.embeddings().device().clone();
        let t = rows.first().map_or(0, |r| r.len());
        if rows.iter().any(|r| r.len() != t) {
            candle_core::bail!("rows of different lengths in one batch");
        }
        let id_t = Tensor::from_vec(rows.concat(), (rows.len(), t), &dev)?;
        let (feats, deep) = match (self, pixels) {
            (QwenVl::Qwen25(m), Some(p)) => (Some(m.vision.forward(p, grids)?), vec![]),
            (QwenVl::Qwen3(m), Some(p)) => {
                let (f, d) = m.vision.forward(p, grids)?;
                let rows = m.deepstack_rows(&id_t, &d)?;
                (Some(f), rows)
            }
            (_, None) => (None, vec![]),
        };
        let x = qwen2_5_vl::embed_with_images(text, &id_t, feats.as_ref(), self.image_token_id())?;
        let (cos, sin) = text.rope_tables(&pos, &dev)?;
        let (cos, sin) = (cos.to_dtype(x.dtype())?, sin.to_dtype(x.dtype())?);
        Ok(DecoderInputs { x, cos, sin, deep })
    }

    /// M-RoPE positions of each row (its images' grids in `grids[r]`).
    pub fn positions(&self, rows: &[Vec<u32>], grids: &[Vec<[usize; 3]>]) -> Result<Vec<Vec<[i64; 3]>>> {
        rows.iter().zip(grids).map(|(r, g)| qwen2_5_vl::rope_index(r, g, self.image_token_id(), self.merge_size())).collect()
    }

    pub fn architecture(&self) -> &'static str {
        match self {
            QwenVl::Qwen25(_) => "Qwen2_5_VLForConditionalGeneration",
            QwenVl::Qwen3(_) => "Qwen3VLForConditionalGeneration",
        }
    }

    /// Logits (1, T, V) of one sequence with its images.
    pub fn forward(&self, ids: &[u32], pixels: Option<&Tensor>, grids: &[[usize; 3]]) -> Result<Tensor> {
        let (h, _) = self.prefill(ids, pixels, grids, None)?;
        self.text().logits(&h)
    }
}

/// Which weights a loaded checkpoint holds as variables (the others are constants).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trainable {
    /// Inference: no variables, no backward graphs.
    Nothing,
    /// LoRA training: the adapters only.
    Adapters,
    /// Full fine-tuning: every weight.
    All,
}

impl Trainable {
    fn names(self, name: &str) -> bool {
        match self {
            Trainable::Nothing => false,
            Trainable::Adapters => name.contains(".lora_"),
            Trainable::All => true,
        }
    }
}

/// A checkpoint folder: model, weights (variables and constants), processor, tokenizer, template.
pub struct Checkpoint {
    pub model: QwenVl,
    /// The trainable weights.
    pub varmap: VarMap,
    /// The other weights.
    pub frozen: HashMap<String, Tensor>,
    pub processor: ImageProcessor,
    pub tokenizer: tokenizers::Tokenizer,
    pub chat: ChatTemplate,
    /// The folder the model was read from (the base folder of an adapter).
    pub dir: PathBuf,
    /// The LoRA adapters' settings when the model has them.
    pub lora: Option<lora::LoraConfig>,
    /// Tokens that end generation (see `end_of_turn_ids`); may be empty.
    pub eos_ids: Vec<u32>,
}

/// End-of-turn tokens: generation_config.json's `eos_token_id` (one or a list), else
/// config.json's, else tokenizer_config.json's `eos_token`. Ids the tokenizer lacks are dropped
/// with a warning, and the chat template's end-of-turn token is added in their place.
fn end_of_turn_ids(dir: &Path, config_eos: &[u32], tokenizer: &tokenizers::Tokenizer, chat: &ChatTemplate) -> Vec<u32> {
    use serde_json::Value;
    let gen_path = dir.join("generation_config.json");
    let from_gen = std::fs::read(&gen_path).ok().and_then(|b| serde_json::from_slice::<Value>(&b).ok()).and_then(|v| match v.get("eos_token_id")? {
        Value::Number(n) => Some(vec![n.as_u64()? as u32]),
        Value::Array(a) => Some(a.iter().filter_map(|x| x.as_u64()).map(|x| x as u32).collect()),
        _ => None,
    });
    let (named, source) = match from_gen.filter(|v| !v.is_empty()) {
        Some(ids) => (ids, gen_path),
        None if !config_eos.is_empty() => (config_eos.to_vec(), dir.join("config.json")),
        None => {
            let tc = std::fs::read(dir.join("tokenizer_config.json")).ok().and_then(|b| serde_json::from_slice::<Value>(&b).ok());
            let tok = tc.as_ref().and_then(|v| match v.get("eos_token")? {
                Value::String(s) => Some(s.clone()),
                Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
                _ => None,
            });
            (tok.and_then(|t| tokenizer.token_to_id(&t)).into_iter().collect(), dir.join("tokenizer_config.json"))
        }
    };
    let (mut ids, missing): (Vec<u32>, Vec<u32>) = named.into_iter().partition(|&id| tokenizer.id_to_token(id).is_some());
    if !missing.is_empty() || ids.is_empty() {
        let eot = chat.end_of_turn(tokenizer);
        let with = match eot {
            Some(id) => format!("the chat template's end-of-turn token {:?} ({id}) is used", tokenizer.id_to_token(id).unwrap_or_default()),
            None => "the chat template names no end-of-turn token either".to_string(),
        };
        if !missing.is_empty() {
            eprintln!(
                "warning: {}: eos_token_id {missing:?} not in the tokenizer's vocabulary ({} tokens); {with}",
                source.display(),
                tokenizer.get_vocab_size(true)
            );
        }
        ids.extend(eot.filter(|id| !ids.contains(id)));
    }
    ids
}

impl Checkpoint {
    /// Loads a Qwen2.5-VL or Qwen3-VL folder (by config.json's `architectures`) for inference:
    /// config.json, weights, tokenizer.json, preprocessor_config.json and the chat template.
    pub fn load(dir: &Path, dtype: DType, dev: &Device) -> hf::Result<Self> {
        Self::load_parts(dir, None, Trainable::Nothing, dtype, dev)
    }

    /// A checkpoint folder of either kind: a model folder, or a peft adapter folder over the
    /// base folder its adapter_config.json names (`base_model_name_or_path`, a local path).
    /// `trainable`: which weights become variables (`Adapters` needs an adapter, `All` none).
    pub fn open(dir: &Path, trainable: Trainable, dtype: DType, dev: &Device) -> hf::Result<Self> {
        let ac = dir.join(ADAPTER_CONFIG);
        if !ac.exists() {
            if trainable == Trainable::Adapters {
                return Err(hf::invalid(dir, "LoRA training continues from an adapter folder, but this is a full checkpoint"));
            }
            return Self::load_parts(dir, None, trainable, dtype, dev);
        }
        if trainable == Trainable::All {
            return Err(hf::invalid(dir, "full fine-tuning continues from a model folder, but this is a LoRA adapter"));
        }
        let v = hf::read_json(&ac)?;
        let base = v
            .get("base_model_name_or_path")
            .and_then(|b| b.as_str())
            .ok_or_else(|| hf::invalid(&ac, "no `base_model_name_or_path`: the base folder is unknown"))?;
        let base = PathBuf::from(base);
        if !base.join("config.json").exists() {
            return Err(hf::invalid(&ac, format!("the base folder {} (base_model_name_or_path) has no config.json", base.display())));
        }
        Self::load_with_adapter(&base, dir, trainable == Trainable::Adapters, dtype, dev)
    }

    /// `load`, plus a peft LoRA adapter folder whose weights join the model's (as variables
    /// when `train`).
    pub fn load_with_adapter(dir: &Path, adapter: &Path, train: bool, dtype: DType, dev: &Device) -> hf::Result<Self> {
        let loaded = lora::load_adapter(adapter, dtype, dev)?;
        let trainable = if train { Trainable::Adapters } else { Trainable::Nothing };
        let base = base_weights(dir, dtype, dev)?;
        Self::from_weights(dir, base, Some(loaded), adapter, trainable, dtype, dev)
    }

    /// `dir` with fresh trainable LoRA adapters (peft's initialization, seeded): the model to
    /// start LoRA training from, equal to the base until trained.
    pub fn load_with_new_adapter(dir: &Path, cfg: lora::LoraConfig, seed: u64, dtype: DType, dev: &Device) -> hf::Result<Self> {
        let base = base_weights(dir, dtype, dev)?;
        let adapters = lora::init_adapters(&base, &cfg, seed).map_err(|e| hf::invalid(dir, e.to_string()))?;
        Self::from_weights(dir, base, Some((cfg, adapters)), dir, Trainable::Adapters, dtype, dev)
    }

    /// `dir`'s model with `adapter` (settings, canonical-named tensors) joined to its weights.
    pub fn load_parts(
        dir: &Path,
        adapter: Option<(lora::LoraConfig, HashMap<String, Tensor>)>,
        trainable: Trainable,
        dtype: DType,
        dev: &Device,
    ) -> hf::Result<Self> {
        let base = base_weights(dir, dtype, dev)?;
        Self::from_weights(dir, base, adapter, dir, trainable, dtype, dev)
    }

    fn from_weights(
        dir: &Path,
        mut tensors: HashMap<String, Tensor>,
        adapter: Option<(lora::LoraConfig, HashMap<String, Tensor>)>,
        errors_at: &Path,
        trainable: Trainable,
        dtype: DType,
        dev: &Device,
    ) -> hf::Result<Self> {
        let cfg_path = dir.join("config.json");
        let raw = hf::read_json(&cfg_path)?;
        // a PRM's head: score_head.safetensors beside the adapter (or the model), else none
        let mut head: HashMap<String, Tensor> = HashMap::new();
        for d in [errors_at, dir] {
            let f = d.join(SCORE_HEAD);
            if head.is_empty() && f.exists() {
                head = candle_core::safetensors::load(&f, dev).map_err(|e| hf::invalid(&f, format!("unreadable safetensors: {e}")))?;
                let ok = head.len() == 2
                    && head.get("score_head.weight").is_some_and(|w| w.rank() == 2 && w.dim(0).ok() == Some(1))
                    && head.contains_key("score_head.bias");
                if !ok {
                    return Err(hf::invalid(&f, "expected score_head.weight (1 × hidden) and score_head.bias (1)"));
                }
            }
        }
        let lora = adapter.map(|(lc, extra)| {
            tensors.extend(extra);
            lc
        });
        let at = |e: candle_core::Error| hf::invalid(errors_at, e.to_string());
        let pick = |n: &str| trainable.names(n);
        let (model, varmap, frozen) = match hf::architecture(&raw) {
            Some("Qwen2_5_VLForConditionalGeneration") => {
                let mut cfg = qwen2_5_vl::Config::from_value(&raw, &cfg_path)?;
                cfg.decoder.resolve_tied_head(&mut tensors, &cfg_path)?;
                let (m, v, f) = Qwen25Vl::from_tensors(&cfg, tensors, lora.as_ref(), &pick, dtype, dev).map_err(at)?;
                (QwenVl::Qwen25(m), v, f)
            }
            Some("Qwen3VLForConditionalGeneration") => {
                let mut cfg = qwen3_vl::Config::from_value(&raw, &cfg_path)?;
                cfg.decoder.resolve_tied_head(&mut tensors, &cfg_path)?;
                let (m, v, f) = Qwen3Vl::from_tensors(&cfg, tensors, lora.as_ref(), &pick, dtype, dev).map_err(at)?;
                (QwenVl::Qwen3(m), v, f)
            }
            other => {
                return Err(hf::invalid(
                    &cfg_path,
                    format!("architecture {other:?} is not supported (Qwen2_5_VLForConditionalGeneration, Qwen3VLForConditionalGeneration are)"),
                ));
            }
        };
        let tok_path = dir.join("tokenizer.json");
        let tokenizer = tokenizers::Tokenizer::from_file(&tok_path).map_err(|e| hf::invalid(&tok_path, e.to_string()))?;
        let processor = ImageProcessor::from_dir(dir)?;
        if (processor.patch_size, processor.merge_size, processor.temporal_patch_size) != model.patching() {
            return Err(hf::invalid(dir, "the image processor's patch, merge or temporal sizes differ from config.json's vision_config"));
        }
        let chat = ChatTemplate::from_dir(dir)?;
        let eos_ids = end_of_turn_ids(dir, model.eos_token_ids(), &tokenizer, &chat);
        let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
        let mut ck = Self { model, varmap, frozen, processor, tokenizer, chat, dir, lora, eos_ids };
        if !head.is_empty() {
            ck.set_score_head(
                head["score_head.weight"].to_dtype(dtype).map_err(at)?,
                head["score_head.bias"].to_dtype(dtype).map_err(at)?,
                trainable != Trainable::Nothing,
            )
            .map_err(at)?;
        }
        Ok(ck)
    }

    /// Makes the model a process reward model: a fresh scalar head (hidden → 1, weights
    /// U(±1/√hidden) seeded, bias 0) read at each step's last token; trainable when asked.
    pub fn add_score_head(&mut self, seed: u64, trainable: bool) -> Result<()> {
        let e = self.model.text().embed.embeddings();
        let c = e.dim(1)?;
        let mut rng = crate::rng::SplitMix64::new(seed ^ 0x5c0e_4ead);
        let w: Vec<f32> = (0..c).map(|_| ((2.0 * rng.next_f64() - 1.0) / (c as f64).sqrt()) as f32).collect();
        let w = Tensor::from_vec(w, (1, c), e.device())?.to_dtype(e.dtype())?;
        let b = Tensor::zeros(1, e.dtype(), e.device())?;
        self.set_score_head(w, b, trainable)
    }

    fn set_score_head(&mut self, w: Tensor, b: Tensor, trainable: bool) -> Result<()> {
        if trainable {
            let mut data = self.varmap.data().lock().expect("not poisoned");
            data.insert("score_head.weight".into(), Var::from_tensor(&w)?);
            data.insert("score_head.bias".into(), Var::from_tensor(&b)?);
        } else {
            self.frozen.insert("score_head.weight".into(), w);
            self.frozen.insert("score_head.bias".into(), b);
        }
        Ok(())
    }

    /// Whether this is a process reward model (it has a score head).
    pub fn is_prm(&self) -> bool {
        self.head().is_some()
    }

    fn head(&self) -> Option<(Tensor, Tensor)> {
        let all = self.all_tensors();
        Some((all.get("score_head.weight")?.clone(), all.get("score_head.bias")?.clone()))
    }

    /// Score logits (N) of final hidden states (N, C) (before the final norm), f32.
    pub fn score_logits(&self, hidden: &Tensor) -> Result<Tensor> {
        let (w, b) = self.head().ok_or_else(|| candle_core::Error::Msg("not a process reward model (no score head)".into()))?;
        let h = self.model.text().final_norm(hidden)?;
        h.matmul(&w.t()?)?.broadcast_add(&b)?.squeeze(1)?.to_dtype(DType::F32)
    }

    /// The variables training updates, by name.
    pub fn trainable(&self) -> Vec<(String, Var)> {
        let data = self.varmap.data().lock().expect("not poisoned");
        let mut v: Vec<(String, Var)> = data.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Every weight by canonical name (adapters included).
    pub fn all_tensors(&self) -> HashMap<String, Tensor> {
        let data = self.varmap.data().lock().expect("not poisoned");
        let mut out: HashMap<String, Tensor> = data.iter().map(|(k, v)| (k.clone(), v.as_tensor().clone())).collect();
        out.extend(self.frozen.iter().map(|(k, v)| (k.clone(), v.clone())));
        out
    }

    /// The model's weights (without the score head): the adapters, or the others.
    fn tensors(&self, adapters: bool) -> HashMap<String, Tensor> {
        self.all_tensors().into_iter().filter(|(k, _)| k.contains(".lora_") == adapters && !k.starts_with("score_head.")).collect()
    }

    /// `score_head.safetensors` for a PRM.
    fn head_file(&self) -> hf::Result<Option<(String, Vec<u8>)>> {
        let Some((w, b)) = self.head() else { return Ok(None) };
        let m = HashMap::from([("score_head.weight".to_string(), w), ("score_head.bias".to_string(), b)]);
        Ok(Some((SCORE_HEAD.to_string(), crate::model::policy::safetensors_bytes(&m).map_err(|e| hf::invalid(&self.dir, e.to_string()))?)))
    }

    /// The checkpoint as files in Hugging Face's layout. With adapters: `adapter_config.json`
    /// (pointing at the base folder) and `adapter_model.safetensors`, as peft saves them;
    /// without: `model.safetensors` (hub names, the training dtype) and the folder's other files.
    pub fn to_files(&self) -> hf::Result<Vec<(String, Vec<u8>)>> {
        let err = |e: crate::model::policy::ModelError| hf::invalid(&self.dir, e.to_string());
        match &self.lora {
            Some(lc) => {
                let named: HashMap<String, Tensor> = self.tensors(true).into_iter().map(|(k, t)| (lora::peft_name(&k), t)).collect();
                let cfg = lora::adapter_config_json(lc, &self.dir.to_string_lossy(), self.model.architecture());
                let mut files = vec![
                    (ADAPTER_CONFIG.to_string(), serde_json::to_vec_pretty(&cfg).expect("json")),
                    (ADAPTER_WEIGHTS.to_string(), crate::model::policy::safetensors_bytes(&named).map_err(err)?),
                ];
                files.extend(self.head_file()?);
                Ok(files)
            }
            None => {
                let mut files = self.folder_files()?;
                files.push(("model.safetensors".to_string(), crate::model::policy::safetensors_bytes(&self.tensors(false)).map_err(err)?));
                files.extend(self.head_file()?);
                Ok(files)
            }
        }
    }

    /// A plain checkpoint folder's files with the adapters merged into the weights, in `dtype`
    /// (e.g. the base's own): what other tools load without peft.
    pub fn merged_files(&self, dtype: DType) -> hf::Result<Vec<(String, Vec<u8>)>> {
        let at = |e: candle_core::Error| hf::invalid(&self.dir, e.to_string());
        let mut all = self.tensors(false);
        if let Some(lc) = &self.lora {
            all.extend(self.tensors(true));
            all = lora::merge(&all, lc).map_err(at)?;
        }
        let all = all.into_iter().map(|(k, t)| Ok((k, t.to_dtype(dtype)?))).collect::<candle_core::Result<HashMap<_, _>>>().map_err(at)?;
        let mut files = self.folder_files()?;
        files.push(("model.safetensors".to_string(), crate::model::policy::safetensors_bytes(&all).map_err(|e| hf::invalid(&self.dir, e.to_string()))?));
        files.extend(self.head_file()?);
        Ok(files)
    }

    /// The folder's files other than weights, adapters and training state (config, tokenizer,
    /// processor, template, …), copied as they are.
    fn folder_files(&self) -> hf::Result<Vec<(String, Vec<u8>)>> {
        let rd = std::fs::read_dir(&self.dir).map_err(|err| HfError::Io { path: self.dir.clone(), err })?;
        let mut out = Vec::new();
        for e in rd.filter_map(|e| e.ok()) {
            let name = e.file_name().to_string_lossy().into_owned();
            let skip = [".safetensors", ".bin", ".pt", ".pth", ".index.json"].iter().any(|x| name.ends_with(x))
                || [ADAPTER_CONFIG, crate::model::checkpoint::STATE_FILE].contains(&name.as_str());
            if e.path().is_file() && !skip {
                out.push((name, hf::read(&e.path())?));
            }
        }
        out.sort();
        Ok(out)
    }

    /// The processor's text expansion: each `<|image_pad|>` becomes one token per merged patch.
    pub fn expand_image_pads(&self, text: &str, grids: &[[usize; 3]]) -> std::result::Result<String, HfError> {
        const PAD: &str = "<|image_pad|>";
        let parts: Vec<&str> = text.split(PAD).collect();
        if parts.len() - 1 != grids.len() {
            return Err(HfError::Image(format!("the prompt has {} image placeholders but {} images were given", parts.len() - 1, grids.len())));
        }
        let mut out = String::with_capacity(text.len());
        for (i, part) in parts.iter().enumerate() {
            out.push_str(part);
            if let Some(g) = grids.get(i) {
                out.push_str(&PAD.repeat(self.processor.num_tokens(*g)));
            }
        }
        Ok(out)
    }

    /// A question and its images as the model's prompt: the images' patches (concatenated) and
    /// grids, and the chat template's user turn with the generation prompt — as text and as
    /// token ids with the image placeholders expanded.
    pub fn prompt_parts(&self, question: &str, images: &[Vec<u8>]) -> hf::Result<PromptParts> {
        let (mut pixels, mut grids) = (Vec::new(), Vec::new());
        for (j, bytes) in images.iter().enumerate() {
            let p = self.processor.preprocess_bytes(bytes).map_err(|e| HfError::Image(format!("image {j}: {e}")))?;
            grids.push(p.grid);
            pixels.extend(p.values);
        }
        let text = self.chat.render(&hf::chat::user_turn(images.len(), question), true)?;
        let ids = self.encode(&self.expand_image_pads(&text, &grids)?)?;
        Ok(PromptParts { ids, pixels, grids, text })
    }

    /// Images' patches as the vision tower's input on the model's device and in its dtype
    /// (rows × 3·temporal·patch²); `None` without images.
    pub fn pixel_tensor(&self, values: &[f32], grids: &[[usize; 3]]) -> hf::Result<Option<Tensor>> {
        if grids.is_empty() {
            return Ok(None);
        }
        let emb = self.model.text().embed.embeddings();
        let cols = 3 * self.processor.temporal_patch_size * self.processor.patch_size * self.processor.patch_size;
        let rows = grids.iter().map(|g| g.iter().product::<usize>()).sum::<usize>();
        Ok(Some(Tensor::from_vec(values.to_vec(), (rows, cols), emb.device())?.to_dtype(emb.dtype())?))
    }

    /// A question and its images as a prompt to sample from: the chat template's user turn
    /// with the generation prompt, image placeholders expanded, tokenized; the patches on the
    /// model's device.
    pub fn generation_prompt(&self, question: &str, images: &[Vec<u8>]) -> hf::Result<super::qwen2_5_vl::generate::Prompt> {
        let parts = self.prompt_parts(question, images)?;
        Ok(super::qwen2_5_vl::generate::Prompt { pixels: self.pixel_tensor(&parts.pixels, &parts.grids)?, ids: parts.ids, grids: parts.grids })
    }

    /// Token ids of `text` (special tokens parsed, none added), as the processor's tokenizer call.
    pub fn encode(&self, text: &str) -> hf::Result<Vec<u32>> {
        let enc = self.tokenizer.encode(text, false).map_err(|e| HfError::Template(format!("tokenizer: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }
}
