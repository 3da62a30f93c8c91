//! Qwen-VL `config.json` as transformers reads it, for both generations: the text model (flat at
//! the top level or under `text_config`), its RoPE (`rope_scaling` + `rope_theta` as 4.5x writes
//! them, or `rope_parameters` with its own `rope_theta` as 5.x does), M-RoPE sections, tied
//! embeddings, `vision_config` and the special token ids, with transformers' defaults.

use crate::model::hf::{invalid, read_json, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::Path;

/// The language model's sizes, resolved (defaults of transformers' text config classes applied).
#[derive(Debug, Clone, PartialEq)]
pub struct TextConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
}

impl TextConfig {
    pub fn head_dim(&self) -> usize {
        self.head_dim
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct VisionConfig {
    #[serde(default = "d32")]
    pub depth: usize,
    #[serde(default = "d3584")]
    pub hidden_size: usize,
    #[serde(default = "d3420")]
    pub intermediate_size: usize,
    #[serde(default = "d16")]
    pub num_heads: usize,
    #[serde(default = "d3584")]
    pub out_hidden_size: usize,
    #[serde(default = "d14")]
    pub patch_size: usize,
    #[serde(default = "two")]
    pub spatial_merge_size: usize,
    #[serde(default = "two")]
    pub temporal_patch_size: usize,
    #[serde(default = "d112")]
    pub window_size: usize,
    #[serde(default = "fullatt")]
    pub fullatt_block_indexes: Vec<usize>,
    #[serde(default = "three")]
    pub in_channels: usize,
    #[serde(default = "silu")]
    pub hidden_act: String,
}

// transformers 5.24's Qwen2_5_VLVisionConfig defaults
fn d32() -> usize {
    32
}
fn d3584() -> usize {
    3584
}
fn d3420() -> usize {
    3420
}
fn d16() -> usize {
    16
}
fn d14() -> usize {
    14
}
fn d112() -> usize {
    112
}
fn fullatt() -> Vec<usize> {
    vec![7, 15, 23, 31]
}
pub(crate) fn two() -> usize {
    2
}
pub(crate) fn three() -> usize {
    3
}
fn silu() -> String {
    "silu".into()
}

/// Which Qwen-VL generation a config is read for: their text configs differ in defaults, in
/// where they look for keys and in how M-RoPE lays out the rotary dimensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Generation {
    /// Qwen2.5-VL: Qwen2 decoder, q/k/v biases, sectioned M-RoPE.
    Qwen25,
    /// Qwen3-VL: Qwen3 decoder, q/k norms, explicit head_dim, interleaved M-RoPE.
    Qwen3,
}

impl Generation {
    /// The defaults of transformers 5.24's `Qwen2_5_VLTextConfig` / `Qwen3VLTextConfig` (and
    /// their rotary embeddings' default `mrope_section`).
    fn defaults(self) -> TextDefaults {
        match self {
            Generation::Qwen25 => TextDefaults {
                vocab_size: 152064,
                hidden_size: 8192,
                intermediate_size: 29568,
                num_hidden_layers: 80,
                num_attention_heads: 64,
                num_key_value_heads: Some(8),
                head_dim: None,
                rms_norm_eps: 1e-5,
                rope_theta: 1_000_000.0,
                mrope_section: &[16, 24, 24],
            },
            Generation::Qwen3 => TextDefaults {
                vocab_size: 151936,
                hidden_size: 4096,
                intermediate_size: 22016,
                num_hidden_layers: 32,
                num_attention_heads: 32,
                num_key_value_heads: Some(32),
                head_dim: Some(128),
                rms_norm_eps: 1e-6,
                rope_theta: 500_000.0,
                mrope_section: &[24, 20, 20],
            },
        }
    }
}

struct TextDefaults {
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    rms_norm_eps: f64,
    rope_theta: f64,
    mrope_section: &'static [usize],
}

/// Typed reads of one JSON object's keys; errors name the key (with its object's path) and the file.
#[derive(Clone, Copy)]
pub(crate) struct Keys<'a> {
    pub obj: &'a Value,
    pub at: &'a str,
    pub path: &'a Path,
}

impl Keys<'_> {
    pub fn name(&self, key: &str) -> String {
        if self.at.is_empty() {
            format!("`{key}`")
        } else {
            format!("`{}.{key}`", self.at)
        }
    }

    /// The key's value unless absent or null.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.obj.get(key).filter(|x| !x.is_null())
    }

    pub fn uint(&self, key: &str) -> Result<Option<usize>> {
        self.get(key)
            .map(|x| x.as_u64().map(|n| n as usize).ok_or_else(|| invalid(self.path, format!("{} must be a non-negative integer, got {x}", self.name(key)))))
            .transpose()
    }

    pub fn float(&self, key: &str) -> Result<Option<f64>> {
        self.get(key).map(|x| x.as_f64().ok_or_else(|| invalid(self.path, format!("{} must be a number, got {x}", self.name(key))))).transpose()
    }

    pub fn bool(&self, key: &str) -> Result<Option<bool>> {
        self.get(key).map(|x| x.as_bool().ok_or_else(|| invalid(self.path, format!("{} must be true or false, got {x}", self.name(key))))).transpose()
    }

    pub fn str(&self, key: &str) -> Result<Option<&str>> {
        self.get(key).map(|x| x.as_str().ok_or_else(|| invalid(self.path, format!("{} must be a string, got {x}", self.name(key))))).transpose()
    }
}

/// Keys of the language model that transformers reads from `text_config` when there is one.
const TEXT_KEYS: &[&str] = &[
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "rms_norm_eps",
    "rope_theta",
    "rope_scaling",
    "rope_parameters",
    "hidden_act",
    "use_sliding_window",
    "max_window_layers",
    "attention_bias",
];

/// The language model's shape and the Qwen2 / Qwen3 differences.
#[derive(Debug, Clone)]
pub struct DecoderSpec {
    pub text: TextConfig,
    pub generation: Generation,
    /// The M-RoPE axis (0 temporal, 1 height, 2 width) of each of a head's `head_dim` rotary
    /// dimensions, laid out as transformers' rotary embedding of this generation lays them.
    pub mrope_axes: Vec<usize>,
    /// Qwen3: RMSNorm of each head's queries and keys before RoPE.
    pub qk_norm: bool,
    pub qkv_bias: bool,
    pub o_bias: bool,
    /// lm_head shares the token embeddings (see `resolve_tied_head` for the weights' say).
    pub tie_word_embeddings: bool,
    /// `text_config` says tied but the top-level flag transformers 5 reads does not (a Qwen3-VL
    /// folder saved by 4.57): tied when the folder stores no lm_head.
    pub tie_if_no_head: bool,
}

fn warn(path: &Path, msg: impl std::fmt::Display) {
    eprintln!("warning: {}: {msg}", path.display());
}

impl DecoderSpec {
    /// The text part of a Qwen-VL `config.json` as transformers 5.x reads it for `generation`.
    pub fn from_value(v: &Value, path: &Path, generation: Generation) -> Result<Self> {
        let top = Keys { obj: v, at: "", path };
        let nested = v.get("text_config").filter(|t| !t.is_null());
        if let Some(t) = nested.filter(|t| !t.is_object()) {
            return Err(invalid(path, format!("`text_config` must be an object, got {t}")));
        }
        let t = match nested {
            Some(obj) => {
                // transformers reads text_config and ignores the top level's copies: two values are a contradiction
                for k in TEXT_KEYS {
                    if let (Some(a), Some(b)) = (top.get(k), obj.get(k).filter(|x| !x.is_null())) {
                        if a != b {
                            return Err(invalid(
                                path,
                                format!("`{k}` is {a} at the top level but {b} in `text_config` (transformers reads text_config): contradictory"),
                            ));
                        }
                    }
                }
                Keys { obj, at: "text_config", path }
            }
            None if generation == Generation::Qwen3 => {
                if let Some(k) = TEXT_KEYS.iter().find(|k| top.get(k).is_some()) {
                    return Err(invalid(
                        path,
                        format!("`{k}` is at the top level, but Qwen3-VL reads its language model from `text_config`, which this file lacks"),
                    ));
                }
                Keys { obj: &Value::Null, at: "text_config", path }
            }
            None => top,
        };
        let d = generation.defaults();
        let uint = |k: &str, dflt: usize| -> Result<usize> { Ok(t.uint(k)?.unwrap_or(dflt)) };
        let heads = uint("num_attention_heads", d.num_attention_heads)?;
        let hidden = uint("hidden_size", d.hidden_size)?;
        // absent: the class default; null: as many as the query heads
        let kv = match t.obj.get("num_key_value_heads") {
            Some(Value::Null) => heads,
            _ => t.uint("num_key_value_heads")?.or(d.num_key_value_heads).unwrap_or(heads),
        };
        if heads == 0 || kv == 0 || !heads.is_multiple_of(kv) {
            return Err(invalid(
                path,
                format!("{} = {heads} must be a positive multiple of {} = {kv}", t.name("num_attention_heads"), t.name("num_key_value_heads")),
            ));
        }
        let head_dim = match generation {
            Generation::Qwen25 => {
                // Qwen2.5-VL's attention always uses hidden_size / heads
                if !hidden.is_multiple_of(heads) {
                    return Err(invalid(
                        path,
                        format!("{} = {hidden} must be divisible by {} = {heads}", t.name("hidden_size"), t.name("num_attention_heads")),
                    ));
                }
                let hd = hidden / heads;
                if let Some(given) = t.uint("head_dim")?.filter(|&g| g != hd) {
                    return Err(invalid(
                        path,
                        format!("{} = {given} contradicts hidden_size / num_attention_heads = {hd}, which Qwen2.5-VL's attention uses", t.name("head_dim")),
                    ));
                }
                hd
            }
            Generation::Qwen3 => t.uint("head_dim")?.or(d.head_dim).unwrap_or(hidden / heads),
        };
        if head_dim == 0 || head_dim % 2 == 1 {
            return Err(invalid(path, format!("head_dim {head_dim} must be even and positive")));
        }
        if let Some(act) = t.str("hidden_act")?.filter(|a| *a != "silu") {
            return Err(invalid(path, format!("{} `{act}` is not supported (silu is)", t.name("hidden_act"))));
        }
        let layers = uint("num_hidden_layers", d.num_hidden_layers)?;
        if generation == Generation::Qwen25 && t.bool("use_sliding_window")?.unwrap_or(false) && uint("max_window_layers", 80)? < layers {
            return Err(invalid(
                path,
                format!("{} with max_window_layers < num_hidden_layers (sliding-window layers) is not supported", t.name("use_sliding_window")),
            ));
        }
        let (theta, mrope_axes) = rope(&t, generation, &d, head_dim)?;
        let text = TextConfig {
            vocab_size: uint("vocab_size", d.vocab_size)?,
            hidden_size: hidden,
            intermediate_size: uint("intermediate_size", d.intermediate_size)?,
            num_hidden_layers: layers,
            num_attention_heads: heads,
            num_key_value_heads: kv,
            head_dim,
            rms_norm_eps: t.float("rms_norm_eps")?.unwrap_or(d.rms_norm_eps),
            rope_theta: theta,
        };
        // tied embeddings: transformers 5 reads the top-level flag; Qwen2.5-VL's config also
        // forwards a `text_config` true to it (pre-v5 saves kept it there)
        let top_tie = top.bool("tie_word_embeddings")?.unwrap_or(false);
        let text_tie = if nested.is_some() { t.bool("tie_word_embeddings")?.unwrap_or(false) } else { false };
        let (tie, tie_if_no_head) = match generation {
            Generation::Qwen25 => (top_tie || text_tie, false),
            Generation::Qwen3 => (top_tie, text_tie && !top_tie),
        };
        let bias = if generation == Generation::Qwen3 { t.bool("attention_bias")?.unwrap_or(false) } else { false };
        Ok(Self {
            text,
            generation,
            mrope_axes,
            qk_norm: generation == Generation::Qwen3,
            qkv_bias: generation == Generation::Qwen25 || bias,
            o_bias: bias,
            tie_word_embeddings: tie,
            tie_if_no_head,
        })
    }

    /// Settles tied embeddings against the weights, as transformers 5 does at load: when tied,
    /// an lm_head stored equal to the embeddings is dropped, one stored different is kept and
    /// the head is untied (with a warning), and a folder with only lm_head gets its embeddings
    /// from it. A Qwen3-VL config tied only in `text_config` ties when no lm_head is stored.
    pub fn resolve_tied_head(&mut self, tensors: &mut std::collections::HashMap<String, candle_core::Tensor>, path: &Path) -> Result<()> {
        const HEAD: &str = "lm_head.weight";
        const EMBED: &str = "model.embed_tokens.weight";
        let has_head = tensors.contains_key(HEAD);
        if self.tie_if_no_head && !has_head {
            warn(path, "`text_config.tie_word_embeddings` is true and no lm_head is stored: tied (transformers 5 reads only the top-level flag)");
            self.tie_word_embeddings = true;
        }
        if !self.tie_word_embeddings || !has_head {
            return Ok(());
        }
        match tensors.get(EMBED) {
            None => {
                let head = tensors.remove(HEAD).expect("present");
                tensors.insert(EMBED.into(), head);
            }
            Some(embed) => {
                let head = &tensors[HEAD];
                let same = embed.shape() == head.shape()
                    && (embed - head)
                        .and_then(|d| d.abs()?.flatten_all()?.max(0)?.to_dtype(candle_core::DType::F32)?.to_scalar::<f32>())
                        .map_err(|e| invalid(path, e.to_string()))?
                        == 0.0;
                if same {
                    tensors.remove(HEAD);
                } else {
                    warn(path, "tie_word_embeddings is true but lm_head.weight and the token embeddings are stored with different values: not tied (as transformers 5 does)");
                    self.tie_word_embeddings = false;
                }
            }
        }
        Ok(())
    }
}

/// rope_theta and the M-RoPE axis of each rotary dimension from `rope_scaling` / `rope_parameters`.
fn rope(t: &Keys, generation: Generation, d: &TextDefaults, head_dim: usize) -> Result<(f64, Vec<usize>)> {
    let path = t.path;
    let (scaling, params) = (t.get("rope_scaling"), t.get("rope_parameters"));
    for (k, x) in [("rope_scaling", scaling), ("rope_parameters", params)] {
        if let Some(x) = x.filter(|x| !x.is_object()) {
            return Err(invalid(path, format!("{} must be an object, got {x}", t.name(k))));
        }
    }
    // transformers: rope_parameters = rope_scaling or rope_parameters
    let (rope, at) = match (scaling, params) {
        (Some(s), Some(p)) => {
            for (k, a) in s.as_object().expect("object") {
                if let Some(b) = p.get(k).filter(|b| *b != a) {
                    return Err(invalid(
                        path,
                        format!("{} and {} disagree on `{k}` ({a} vs {b}): contradictory", t.name("rope_scaling"), t.name("rope_parameters")),
                    ));
                }
            }
            (s, "rope_scaling")
        }
        (Some(s), None) => (s, "rope_scaling"),
        (None, Some(p)) => (p, "rope_parameters"),
        (None, None) => (&Value::Null, "rope_parameters"),
    };
    let at = if t.at.is_empty() { at.to_string() } else { format!("{}.{at}", t.at) };
    let r = Keys { obj: rope, at: &at, path };
    let theta = match (r.float("rope_theta")?, t.float("rope_theta")?) {
        (Some(a), Some(b)) if a != b => {
            return Err(invalid(
                path,
                format!("{} = {a} and {} = {b}: contradictory (transformers uses the first)", r.name("rope_theta"), t.name("rope_theta")),
            ));
        }
        (a, b) => a.or(b).unwrap_or(d.rope_theta),
    };
    if theta.is_nan() || theta <= 0.0 {
        return Err(invalid(path, format!("rope_theta must be positive, got {theta}")));
    }
    let kind = r.str("rope_type")?.or(r.str("type")?).unwrap_or("default");
    if !matches!(kind, "default" | "mrope") {
        return Err(invalid(path, format!("{} `{kind}` is not supported (default and mrope are)", r.name("rope_type"))));
    }
    let section: Vec<usize> = match r.get("mrope_section") {
        None => d.mrope_section.to_vec(),
        Some(x) => x
            .as_array()
            .and_then(|a| a.iter().map(|n| n.as_u64().map(|n| n as usize)).collect::<Option<Vec<_>>>())
            .ok_or_else(|| invalid(path, format!("{} must be a list of non-negative integers, got {x}", r.name("mrope_section"))))?,
    };
    let half = head_dim / 2;
    let interleaved = r.bool("mrope_interleaved")?;
    let axes: Vec<usize> = match generation {
        Generation::Qwen25 => {
            if interleaved == Some(true) {
                warn(path, format!("{} is ignored: transformers' Qwen2.5-VL lays M-RoPE out in sections", r.name("mrope_interleaved")));
            }
            // the rotary half split into the sections, section i on axis i mod 3
            if section.iter().sum::<usize>() != half {
                return Err(invalid(
                    path,
                    format!("{} {section:?} must sum to head_dim/2 = {half} (transformers splits each head's rotary half by it)", r.name("mrope_section")),
                ));
            }
            section.iter().enumerate().flat_map(|(i, &n)| std::iter::repeat_n(i % 3, n)).collect()
        }
        Generation::Qwen3 => {
            if interleaved == Some(false) {
                warn(path, format!("{} is ignored: transformers' Qwen3-VL always interleaves M-RoPE", r.name("mrope_interleaved")));
            }
            if section.len() < 3 {
                return Err(invalid(path, format!("{} {section:?} needs 3 entries (temporal, height, width)", r.name("mrope_section"))));
            }
            // apply_interleaved_mrope: height at 1, 4, … below 3·s[1]; width at 2, 5, … below 3·s[2]; the rest temporal
            (0..half)
                .map(|j| {
                    if j % 3 == 1 && j < 3 * section[1] {
                        1
                    } else if j % 3 == 2 && j < 3 * section[2] {
                        2
                    } else {
                        0
                    }
                })
                .collect()
        }
    };
    // the same axes for both halves of a head (cos/sin are the half's tables concatenated twice)
    Ok((theta, axes.iter().chain(axes.iter()).copied().collect()))
}

#[derive(Debug, Clone)]
pub struct Config {
    pub decoder: DecoderSpec,
    pub vision: VisionConfig,
    pub image_token_id: u32,
    pub vision_start_token_id: u32,
    pub eos_token_ids: Vec<u32>,
}

impl Config {
    pub fn from_file(path: &Path) -> Result<Self> {
        Self::from_value(&read_json(path)?, path)
    }

    pub fn from_value(v: &Value, path: &Path) -> Result<Self> {
        let decoder = DecoderSpec::from_value(v, path, Generation::Qwen25)?;
        let vision: VisionConfig = vision_config(v, path)?;
        let (image_token_id, vision_start_token_id, eos_token_ids) = token_ids(v, path)?;
        let vk = Keys { obj: v.get("vision_config").unwrap_or(&Value::Null), at: "vision_config", path };
        if vision.hidden_act != "silu" {
            return Err(invalid(path, format!("{} `{}` is not supported (silu is)", vk.name("hidden_act"), vision.hidden_act)));
        }
        let v_ = &vision;
        if v_.num_heads == 0 || !v_.hidden_size.is_multiple_of(v_.num_heads) || !(v_.hidden_size / v_.num_heads).is_multiple_of(4) {
            return Err(invalid(path, "vision_config: head_dim (hidden_size / num_heads) must be a multiple of 4"));
        }
        if !v_.window_size.is_multiple_of(v_.spatial_merge_size * v_.patch_size) || v_.window_size == 0 {
            return Err(invalid(path, format!("{} must be a positive multiple of spatial_merge_size × patch_size", vk.name("window_size"))));
        }
        Ok(Self { image_token_id, vision_start_token_id, eos_token_ids, decoder, vision })
    }
}

/// `vision_config` with the defaults of its transformers class (absent: every default).
pub(crate) fn vision_config<T: serde::de::DeserializeOwned>(v: &Value, path: &Path) -> Result<T> {
    let raw = v.get("vision_config").filter(|x| !x.is_null()).cloned().unwrap_or_else(|| Value::Object(Default::default()));
    // transformers 5 writes the vision rotary's parameters (axial, theta 10000, the vision towers' own)
    let rope = Keys { obj: raw.get("rope_parameters").unwrap_or(&Value::Null), at: "vision_config.rope_parameters", path };
    if let Some(theta) = rope.float("rope_theta")?.filter(|&t| t != 10000.0) {
        return Err(invalid(path, format!("{} = {theta} is not supported (10000 is)", rope.name("rope_theta"))));
    }
    if let Some(kind) = rope.str("rope_type")?.filter(|k| !matches!(*k, "axial" | "default")) {
        return Err(invalid(path, format!("{} `{kind}` is not supported (axial is)", rope.name("rope_type"))));
    }
    serde_json::from_value(raw).map_err(|e| invalid(path, format!("vision_config: {e}")))
}

/// (image_token_id, vision_start_token_id, eos ids): top-level keys with transformers' defaults
/// (151655, 151652); eos from the top level or `text_config`.
pub fn token_ids(v: &Value, path: &Path) -> Result<(u32, u32, Vec<u32>)> {
    let top = Keys { obj: v, at: "", path };
    let id = |k: &str, dflt: usize| -> Result<u32> {
        let n = top.uint(k)?.unwrap_or(dflt);
        u32::try_from(n).map_err(|_| invalid(path, format!("`{k}` = {n} is out of range")))
    };
    let text_v = v.get("text_config").unwrap_or(&Value::Null);
    let eos = match top.get("eos_token_id").or_else(|| text_v.get("eos_token_id")) {
        Some(Value::Number(n)) => n.as_u64().into_iter().map(|x| x as u32).collect(),
        Some(Value::Array(a)) => a.iter().filter_map(|x| x.as_u64()).map(|x| x as u32).collect(),
        _ => vec![],
    };
    Ok((id("image_token_id", 151655)?, id("vision_start_token_id", 151652)?, eos))
}
