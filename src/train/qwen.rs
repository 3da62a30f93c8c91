//! SFT of a Qwen-VL checkpoint: (question, images, response) rows rendered with the
//! checkpoint's chat template, loss on the assistant turn's tokens only, right-padded micro-batches,
//! optionally with each decoder layer's activations recomputed in the backward pass.

use super::Grads;
use crate::model::hf::{self, chat::user_turn, HfError};
use crate::model::layers::{masked_bce_with_logits, masked_cross_entropy};
use crate::model::policy::{ModelError, Result};
use crate::model::qwen_vl::{Checkpoint, PromptParts};
use candle_core::{DType, Device, Tensor, Var};

/// One training row: prompt and response token ids, and the prompt's images.
#[derive(Debug, Clone)]
pub struct QwenExample {
    /// Prompt tokens (chat template, image placeholders expanded) followed by the response's.
    pub ids: Vec<u32>,
    /// Where the response starts in `ids`.
    pub prompt_len: usize,
    /// Every image's patches, concatenated (rows × columns of the vision tower's input).
    pub pixels: Vec<f32>,
    pub grids: Vec<[usize; 3]>,
    /// A process reward model's targets: (index in `ids` of a step's last token, label in
    /// [0, 1]); empty for SFT.
    pub labels: Vec<(usize, f32)>,
}

impl QwenExample {
    /// Loss terms: the step labels of a PRM example, else the response's tokens (the assistant
    /// turn's end included).
    pub fn targets(&self) -> usize {
        if self.labels.is_empty() {
            self.ids.len() - self.prompt_len
        } else {
            self.labels.len()
        }
    }
}

/// A response laid out for a process reward model, the same way in training and scoring: the
/// prompt, then each step's tokens, steps joined by the tokens of a newline; a step's score is
/// read at its last token. `labels` (one per step, or none when scoring) become the targets.
/// Returns the example and the step ends (indices in `ids`).
pub fn encode_steps<S: AsRef<str>>(
    ck: &Checkpoint,
    question: &str,
    images: &[Vec<u8>],
    steps: &[S],
    labels: Option<&[f32]>,
) -> hf::Result<(QwenExample, Vec<usize>)> {
    let PromptParts { ids, pixels, grids, .. } = ck.prompt_parts(question, images)?;
    let prompt_len = ids.len();
    let (ids, ends) = append_steps(ck, ids, steps)?;
    let labels = match labels {
        Some(l) if l.len() != ends.len() => return Err(HfError::Template(format!("{} labels for {} steps", l.len(), ends.len()))),
        Some(l) => ends.iter().copied().zip(l.iter().copied()).collect(),
        None => vec![],
    };
    Ok((QwenExample { ids, prompt_len, pixels, grids, labels }, ends))
}

/// `ids` followed by the steps' tokens joined by the tokens of a newline, and the index of each
/// step's last token.
pub fn append_steps<S: AsRef<str>>(ck: &Checkpoint, mut ids: Vec<u32>, steps: &[S]) -> hf::Result<(Vec<u32>, Vec<usize>)> {
    let newline = ck.encode("\n")?;
    let mut ends = Vec::with_capacity(steps.len());
    for (i, s) in steps.iter().enumerate() {
        if i > 0 {
            ids.extend_from_slice(&newline);
        }
        let t = ck.encode(s.as_ref())?;
        if t.is_empty() {
            return Err(HfError::Template(format!("step {} is empty", i + 1)));
        }
        ids.extend(t);
        ends.push(ids.len() - 1);
    }
    Ok((ids, ends))
}

/// Renders a row as the checkpoint's chat template does: the user turn (images, then the
/// question) with the generation prompt, then the assistant turn; the response tokens are
/// what the full conversation adds to the prompt (for Qwen: the text and `<|im_end|>\n`).
pub fn encode(ck: &Checkpoint, question: &str, images: &[Vec<u8>], response: &str) -> hf::Result<QwenExample> {
    let PromptParts { mut ids, pixels, grids, text: prompt } = ck.prompt_parts(question, images)?;
    let user = user_turn(images.len(), question);
    let mut turns = user.as_array().cloned().unwrap_or_default();
    turns.push(serde_json::json!({"role": "assistant", "content": response}));
    let full = ck.chat.render(&serde_json::Value::Array(turns), false)?;
    let tail = full.strip_prefix(prompt.as_str()).ok_or_else(|| {
        HfError::Template("the chat template renders the conversation with the answer differently from the prompt it generates from; the response tokens cannot be told apart".into())
    })?;
    if tail.contains("<|image_pad|>") || tail.contains("<|vision_start|>") {
        return Err(HfError::Template("the response contains an image placeholder token".into()));
    }
    let prompt_len = ids.len();
    let response_ids = ck.encode(tail)?;
    if response_ids.is_empty() {
        return Err(HfError::Template("the response renders to no tokens".into()));
    }
    ids.extend(response_ids);
    Ok(QwenExample { ids, prompt_len, pixels, grids, labels: vec![] })
}

/// A micro-batch laid out for the model: rows right-padded with `pad`, all images' patches,
/// per-row grids, and the flat (row · T + position) indices whose next token is a target.
struct Batch {
    rows: Vec<Vec<u32>>,
    pixels: Option<Tensor>,
    grids: Vec<Vec<[usize; 3]>>,
    at: Tensor,
    /// Next tokens (1, N) for SFT, step labels (N) for a PRM.
    targets: Tensor,
    prm: bool,
    t: usize,
}

fn layout(examples: &[&QwenExample], pad: u32, dev: &Device, dtype: DType) -> Result<Batch> {
    let t = examples.iter().map(|e| e.ids.len()).max().unwrap_or(0);
    let prm = examples.iter().any(|e| !e.labels.is_empty());
    let (mut rows, mut grids, mut values, mut at, mut targets, mut labels) = (vec![], vec![], vec![], vec![], vec![], vec![]);
    let mut patches = 0;
    for (r, e) in examples.iter().enumerate() {
        let mut row = e.ids.clone();
        row.resize(t, pad);
        rows.push(row);
        grids.push(e.grids.clone());
        patches += e.grids.iter().map(|g| g.iter().product::<usize>()).sum::<usize>();
        values.extend_from_slice(&e.pixels);
        if prm {
            // a step's score is read at its last token
            for &(p, y) in &e.labels {
                if p >= e.ids.len() || !(0.0..=1.0).contains(&y) {
                    return Err(ModelError::Invalid(format!("step label ({p}, {y}) outside the sequence of {} tokens or [0, 1]", e.ids.len())));
                }
                at.push((r * t + p) as u32);
                labels.push(y);
            }
            continue;
        }
        // position p's logits predict token p + 1
        for p in e.prompt_len - 1..e.ids.len() - 1 {
            at.push((r * t + p) as u32);
            targets.push(e.ids[p + 1]);
        }
    }
    let pixels = if patches == 0 {
        None
    } else {
        if values.len() % patches != 0 {
            return Err(ModelError::Invalid(format!("{} pixel values for {patches} patches", values.len())));
        }
        let cols = values.len() / patches;
        Some(Tensor::from_vec(values, (patches, cols), dev)?.to_dtype(dtype)?)
    };
    let n = at.len();
    let targets = if prm { Tensor::from_vec(labels, n, dev)? } else { Tensor::from_vec(targets, (1, n), dev)? };
    Ok(Batch { rows, pixels, grids, at: Tensor::from_vec(at, n, dev)?, targets, prm, t })
}

/// The loss (f32) at the target positions of hidden states (B, T, C): mean token
/// cross-entropy for SFT, mean binary cross-entropy of the step scores for a PRM.
fn head_loss(ck: &Checkpoint, hidden: &Tensor, b: &Batch) -> Result<Tensor> {
    let (rows, t, c) = hidden.dims3()?;
    debug_assert_eq!(t, b.t);
    let h = hidden.reshape((rows * t, c))?.index_select(&b.at, 0)?;
    let n = b.at.dim(0)?;
    let ones = Tensor::ones((1, n), DType::F32, hidden.device())?;
    if b.prm {
        let z = ck.score_logits(&h)?.unsqueeze(0)?;
        return Ok(masked_bce_with_logits(&z, &b.targets.unsqueeze(0)?, &ones)?);
    }
    let model = &ck.model;
    let logits = model.text().logits(&model.text().final_norm(&h)?)?.to_dtype(DType::F32)?.unsqueeze(0)?;
    Ok(masked_cross_entropy(&logits, &b.targets, &ones)?)
}

/// The decoder's output (B, T, C) before the final norm, with the backward graph.
fn last_layer(ck: &Checkpoint, b: &Batch) -> Result<Tensor> {
    let text = ck.model.text();
    let pos = ck.model.positions(&b.rows, &b.grids)?;
    let inputs = ck.model.decoder_inputs(&b.rows, b.pixels.as_ref(), &b.grids.concat(), pos)?;
    let mut x = inputs.x.clone();
    for i in 0..text.num_layers() {
        x = text.layer(i, &x, &inputs.cos, &inputs.sin)?;
        if let Some(d) = inputs.deep.get(i) {
            x = (&x + d.reshape(x.shape())?)?;
        }
    }
    Ok(x)
}

/// Scores in (0, 1) of each example's steps (`ends`: indices in its ids) by a PRM, in one
/// right-padded batch.
pub fn score_steps(ck: &Checkpoint, examples: &[&QwenExample], ends: &[&[usize]], pad: u32) -> Result<Vec<Vec<f64>>> {
    let text = ck.model.text();
    let dev = text.embed.embeddings().device().clone();
    let b = layout(examples, pad, &dev, text.embed.embeddings().dtype())?;
    let hidden = last_layer(ck, &b)?;
    let (rows, t, c) = hidden.dims3()?;
    let index: Vec<u32> = ends.iter().enumerate().flat_map(|(r, e)| e.iter().map(move |&p| (r * t + p) as u32)).collect();
    let n = index.len();
    let h = hidden.reshape((rows * t, c))?.index_select(&Tensor::from_vec(index, n, &dev)?, 0)?;
    let z: Vec<f32> = ck.score_logits(&h)?.to_vec1()?;
    let mut it = z.into_iter();
    Ok(ends.iter().map(|e| e.iter().map(|_| 1.0 / (1.0 + (-(it.next().unwrap_or(0.0) as f64)).exp())).collect()).collect())
}

/// The micro-batch's mean loss, its gradients times `scale` added to `grads`. With
/// `recompute`, the decoder keeps only each layer's input in the forward pass and re-runs the
/// layer in the backward pass (gradient checkpointing): the same gradients for less memory.
pub fn accumulate(ck: &Checkpoint, examples: &[&QwenExample], pad: u32, recompute: bool, scale: f64, grads: &mut Grads) -> Result<f64> {
    let text = ck.model.text();
    let dev = text.embed.embeddings().device().clone();
    let dtype = text.embed.embeddings().dtype();
    let b = layout(examples, pad, &dev, dtype)?;
    if !recompute {
        let loss = head_loss(ck, &last_layer(ck, &b)?, &b)?;
        return grads.backward(&loss, scale);
    }
    let pos = ck.model.positions(&b.rows, &b.grids)?;
    let inputs = ck.model.decoder_inputs(&b.rows, b.pixels.as_ref(), &b.grids.concat(), pos)?;
    // forward: keep each layer's input, no graph
    let deep: Vec<Var> = inputs.deep.iter().map(|d| Var::from_tensor(&d.detach())).collect::<candle_core::Result<_>>()?;
    let mut saved = Vec::with_capacity(text.num_layers());
    let mut x = inputs.x.detach();
    for i in 0..text.num_layers() {
        saved.push(x.clone());
        let mut y = text.layer(i, &x, &inputs.cos, &inputs.sin)?;
        if let Some(d) = deep.get(i) {
            y = (&y + d.as_tensor().reshape(y.shape())?)?;
        }
        x = y.detach();
    }
    // the head
    let top = Var::from_tensor(&x)?;
    let loss = head_loss(ck, top.as_tensor(), &b)?;
    let l = grads.check(&loss)?;
    let store = (&loss * scale)?.backward()?;
    grads.add(&store)?;
    let Some(mut g) = store.get(top.as_tensor()).cloned() else { return Ok(l) };
    // backward through the layers, one re-run at a time
    let mut g_deep: Vec<Option<Tensor>> = vec![None; deep.len()];
    for i in (0..text.num_layers()).rev() {
        let xin = Var::from_tensor(&saved[i])?;
        let mut y = text.layer(i, xin.as_tensor(), &inputs.cos, &inputs.sin)?;
        if let Some(d) = deep.get(i) {
            y = (&y + d.as_tensor().reshape(y.shape())?)?;
        }
        let store = (y * &g)?.sum_all()?.backward()?;
        grads.add(&store)?;
        if let Some(d) = deep.get(i) {
            g_deep[i] = store.get(d.as_tensor()).cloned();
        }
        g = match store.get(xin.as_tensor()) {
            Some(gx) => gx.clone(),
            None => return Ok(l),
        };
    }
    // and into the embeddings and the vision tower
    let mut surrogate = (&inputs.x * &g)?.sum_all()?;
    for (d, gd) in inputs.deep.iter().zip(&g_deep) {
        if let Some(gd) = gd {
            surrogate = (surrogate + (d * gd)?.sum_all()?)?;
        }
    }
    grads.add(&surrogate.backward()?)?;
    Ok(l)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::qwen2_5_vl::lora::LoraConfig;
    use crate::model::qwen_vl::{QwenVl, Trainable};
    use crate::train::{optimizer_step, AdamW, AdamWConfig, Schedule, TrainerState};
    use std::collections::BTreeMap;
    use std::path::PathBuf;

    fn fixture(name: &str) -> PathBuf {
        PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/model")).join(name)
    }

    fn examples(ck: &Checkpoint, dir: &std::path::Path) -> Vec<QwenExample> {
        let img = |n: &str| std::fs::read(dir.join(n)).unwrap();
        vec![
            encode(ck, "What is in the picture?", &[img("b.png")], "A square. The answer is 4.").unwrap(),
            encode(ck, "Compare them.", &[img("a.png"), img("c.png")], "Left is bigger.").unwrap(),
            encode(ck, "Say hi.", &[], "hi").unwrap(),
        ]
    }

    fn state() -> TrainerState {
        TrainerState {
            step: 0,
            examples_seen: 0,
            tokens_seen: 0,
            schedule: Schedule::Constant { lr: 1e-2 },
            adamw: AdamWConfig::default(),
            rng: 0,
            last_loss: None,
        }
    }

    /// Gradients of one step's loss over `micro` (summed, token-weighted), by variable name.
    fn grads_of(ck: &Checkpoint, micro: &[Vec<&QwenExample>], recompute: bool) -> (f64, BTreeMap<String, Tensor>) {
        let vars = ck.trainable();
        let total: usize = micro.iter().flatten().map(|e| e.targets()).sum();
        let mut g = Grads { vars: &vars, frozen: vec![false; vars.len()], step: 0, sum: BTreeMap::new() };
        let mut loss = 0.0;
        for mb in micro {
            let share = mb.iter().map(|e| e.targets()).sum::<usize>() as f64 / total as f64;
            loss += accumulate(ck, mb, 0, recompute, share, &mut g).unwrap() * share;
        }
        (loss, g.sum)
    }

    fn max_rel(a: &BTreeMap<String, Tensor>, b: &BTreeMap<String, Tensor>) -> f32 {
        assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
        let mut worst = 0f32;
        for (k, x) in a {
            let d = (x - &b[k]).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
            let s = x.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
            worst = worst.max(d / s.max(1e-12));
        }
        worst
    }

    #[test]
    fn the_response_tokens_are_the_assistant_turn() {
        let dir = fixture("qwen2_5_vl");
        let ck = Checkpoint::load(&dir, DType::F32, &Device::Cpu).unwrap();
        let e = &examples(&ck, &dir)[2];
        let text = ck.tokenizer.decode(&e.ids[e.prompt_len..], false).unwrap();
        assert_eq!(text, "hi<|im_end|>\n");
        let prompt = ck.tokenizer.decode(&e.ids[..e.prompt_len], false).unwrap();
        assert!(prompt.ends_with("<|im_start|>assistant\n"), "{prompt}");
    }

    /// Right padding is invisible: one micro-batch of three rows (one image, two images, none)
    /// gives the loss and gradients of the rows taken one at a time.
    #[test]
    fn a_padded_batch_equals_its_rows_one_by_one() {
        for name in ["qwen2_5_vl", "qwen3_vl"] {
            let dir = fixture(name);
            let ck = Checkpoint::load_parts(&dir, None, Trainable::All, DType::F32, &Device::Cpu).unwrap();
            let ex = examples(&ck, &dir);
            let together = grads_of(&ck, &[ex.iter().collect()], false);
            let apart = grads_of(&ck, &ex.iter().map(|e| vec![e]).collect::<Vec<_>>(), false);
            assert!((together.0 - apart.0).abs() < 1e-5, "{name}: loss {} vs {}", together.0, apart.0);
            let d = max_rel(&together.1, &apart.1);
            assert!(d < 1e-4, "{name}: gradients differ by {d} (relative)");
            // every weight gets a gradient, the vision tower's too
            assert_eq!(together.1.len(), ck.trainable().len(), "{name}");
        }
    }

    /// Recomputing each layer in the backward pass gives the same gradients, DeepStack included.
    #[test]
    fn gradient_checkpointing_gives_the_same_gradients() {
        for name in ["qwen2_5_vl", "qwen3_vl"] {
            let dir = fixture(name);
            let ck = Checkpoint::load_parts(&dir, None, Trainable::All, DType::F32, &Device::Cpu).unwrap();
            let ex = examples(&ck, &dir);
            let plain = grads_of(&ck, &[ex.iter().collect()], false);
            let recomputed = grads_of(&ck, &[ex.iter().collect()], true);
            assert!((plain.0 - recomputed.0).abs() < 1e-6, "{name}: loss");
            let d = max_rel(&plain.1, &recomputed.1);
            assert!(d < 1e-5, "{name}: gradients differ by {d} (relative)");
            assert!(plain.1.values().all(|g| g.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() > 0.0), "{name}: a zero gradient");
        }
    }

    /// LoRA: fresh adapters leave the model as it was; training moves only the adapters, every
    /// one of them, and lowers the loss; the saved adapter folder reloads to the same model.
    #[test]
    fn lora_trains_only_the_adapters_and_round_trips() {
        let dir = fixture("qwen2_5_vl");
        let dev = Device::Cpu;
        let base = Checkpoint::load(&dir, DType::F32, &dev).unwrap();
        let lc = LoraConfig { rank: 4, alpha: 8.0, targets: vec!["q_proj".into(), "v_proj".into(), "qkv".into(), "down_proj".into()] };
        let ck = Checkpoint::load_with_new_adapter(&dir, lc.clone(), 7, DType::F32, &dev).unwrap();
        let ex = examples(&ck, &dir);
        let img = ck.processor.preprocess_bytes(&std::fs::read(dir.join("b.png")).unwrap()).unwrap();
        let n = img.num_patches();
        let pixels = Tensor::from_vec(img.values.clone(), (n, img.values.len() / n), &dev).unwrap();
        let logits = |m: &QwenVl| m.forward(&ex[0].ids, Some(&pixels), &[img.grid]).unwrap();
        let d0 = (logits(&ck.model) - logits(&base.model)).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert_eq!(d0, 0.0, "fresh adapters change the model");
        let vars = ck.trainable();
        assert!(vars.iter().all(|(n, _)| n.contains(".lora_")) && !vars.is_empty());
        let frozen_before = ck.frozen.clone();
        let mut opt = AdamW::new(AdamWConfig::default());
        let mut st = state();
        let micro = vec![ex.iter().collect::<Vec<_>>()];
        let mut losses = vec![];
        for _ in 0..6 {
            losses.push(
                optimizer_step(&vars, &mut opt, &mut st, &micro, Some(1.0), QwenExample::targets, |mb, s, g| accumulate(&ck, mb, 0, false, s, g)).unwrap(),
            );
        }
        assert!(losses[5] < losses[0] - 0.1, "loss {losses:?}");
        // after a step B ≠ 0, so every adapter tensor has a gradient
        let (_, g) = grads_of(&ck, &micro, false);
        assert_eq!(g.len(), vars.len());
        assert!(g.values().all(|t| t.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() > 0.0), "an adapter without gradient");
        for (k, t) in &ck.frozen {
            assert_eq!((t - &frozen_before[k]).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap(), 0.0, "{k} moved");
        }
        // the peft folder reloads to the same model; merged, it is a plain folder with the same logits
        let tmp = tempfile::tempdir().unwrap();
        let (ad, merged) = (tmp.path().join("adapter"), tmp.path().join("merged"));
        for (d, files) in [(&ad, ck.to_files().unwrap()), (&merged, ck.merged_files(DType::F32).unwrap())] {
            std::fs::create_dir_all(d).unwrap();
            for (name, bytes) in files {
                std::fs::write(d.join(name), bytes).unwrap();
            }
        }
        let trained = logits(&ck.model);
        let again = Checkpoint::open(&ad, Trainable::Nothing, DType::F32, &dev).unwrap();
        assert_eq!(again.lora.as_ref(), Some(&lc));
        let d = (logits(&again.model) - &trained).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert_eq!(d, 0.0, "reloaded adapter");
        let plain = Checkpoint::open(&merged, Trainable::Nothing, DType::F32, &dev).unwrap();
        assert!(plain.lora.is_none());
        let d = (logits(&plain.model) - &trained).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(d < 1e-4, "merged logits differ by {d}");
    }

    /// A fresh score head's weights for a fixed seed, bit for bit: U(±1/√64) over qwen3_vl's
    /// 64 hidden units.
    #[test]
    fn score_head_init_is_pinned() {
        let mut ck = Checkpoint::load_parts(&fixture("qwen3_vl"), None, Trainable::All, DType::F32, &Device::Cpu).unwrap();
        ck.add_score_head(3, true).unwrap();
        let w = ck.all_tensors()["score_head.weight"].flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let got: Vec<u32> = w[..4].iter().map(|x| x.to_bits()).collect();
        // 0.014620478, 0.013592229, -0.031164754, 0.12049971
        assert_eq!(got, [0x3c6f_8abb, 0x3c5e_b1f1, 0xbcff_4d3a, 0x3df6_c88d]);
    }

    /// A PRM reads each step's score at the step's last token: the batched, padded scores equal
    /// the head applied to the model's own hidden states there; training on step labels lowers
    /// the binary cross-entropy and reaches the head and every weight; the head round-trips.
    #[test]
    fn a_prm_scores_steps_at_their_last_tokens_and_learns_labels() {
        for name in ["qwen2_5_vl", "qwen3_vl"] {
            let dir = fixture(name);
            let dev = Device::Cpu;
            let mut ck = Checkpoint::load_parts(&dir, None, Trainable::All, DType::F32, &dev).unwrap();
            ck.add_score_head(3, true).unwrap();
            assert!(ck.is_prm());
            let img = std::fs::read(dir.join("b.png")).unwrap();
            let steps = ["First count the squares.", "There are 3 of them.", "The answer is 3."];
            let (e, ends) = encode_steps(&ck, "How many squares?", std::slice::from_ref(&img), &steps, Some(&[1.0, 0.0, 1.0])).unwrap();
            let (e2, ends2) = encode_steps(&ck, "Say hi.", &[], &["hi"], Some(&[0.5])).unwrap();
            let scored = score_steps(&ck, &[&e, &e2], &[&ends, &ends2], 0).unwrap();
            let alone = score_steps(&ck, &[&e], &[&ends], 0).unwrap();
            // the reference: the model's (normed) hidden states at the step ends, then the head
            let n: usize = e.grids.iter().map(|g| g.iter().product::<usize>()).sum();
            let pixels = Tensor::from_vec(e.pixels.clone(), (n, e.pixels.len() / n), &dev).unwrap();
            let (h, _) = ck.model.prefill(&e.ids, Some(&pixels), &e.grids, None).unwrap();
            let all = ck.all_tensors();
            let (w, b) = (&all["score_head.weight"], all["score_head.bias"].to_vec1::<f32>().unwrap()[0]);
            for (j, &p) in ends.iter().enumerate() {
                let z =
                    h.get(0).unwrap().get(p).unwrap().unsqueeze(0).unwrap().matmul(&w.t().unwrap()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()
                        [0]
                        + b;
                let want = 1.0 / (1.0 + (-(z as f64)).exp());
                assert!(
                    (scored[0][j] - want).abs() < 1e-5 && (alone[0][j] - want).abs() < 1e-5,
                    "{name} step {j}: {} / {} vs {want}",
                    scored[0][j],
                    alone[0][j]
                );
            }
            assert_eq!(scored[1].len(), 1);
            // training on the labels
            let vars = ck.trainable();
            let mut opt = AdamW::new(AdamWConfig::default());
            let mut st = state();
            let micro = vec![vec![&e, &e2]];
            let (l0, g) = grads_of(&ck, &micro, false);
            // every weight but the (unused) language-model head
            let missing: Vec<&String> = vars.iter().map(|(n, _)| n).filter(|n| !g.contains_key(*n)).collect();
            assert!(missing.iter().all(|n| *n == "lm_head.weight"), "{name}: no gradient for {missing:?}");
            assert!(g.contains_key("score_head.weight") && g.contains_key("score_head.bias"));
            let (l0r, gr) = grads_of(&ck, &micro, true);
            assert!((l0 - l0r).abs() < 1e-6 && max_rel(&g, &gr) < 1e-5, "{name}: checkpointed PRM gradients differ");
            let mut last = l0;
            for _ in 0..8 {
                last =
                    optimizer_step(&vars, &mut opt, &mut st, &micro, Some(1.0), QwenExample::targets, |mb, s, g| accumulate(&ck, mb, 0, false, s, g)).unwrap();
            }
            assert!(last < l0 * 0.7, "{name}: BCE {l0} → {last}");
            // saved and reloaded (a model folder with score_head.safetensors), the same scores
            let tmp = tempfile::tempdir().unwrap();
            for (f, bytes) in ck.to_files().unwrap() {
                std::fs::write(tmp.path().join(f), bytes).unwrap();
            }
            let again = Checkpoint::open(tmp.path(), Trainable::Nothing, DType::F32, &dev).unwrap();
            assert!(again.is_prm());
            let (s1, s2) = (score_steps(&ck, &[&e], &[&ends], 0).unwrap(), score_steps(&again, &[&e], &[&ends], 0).unwrap());
            assert_eq!(s1, s2, "{name}: reloaded PRM scores differ");
        }
    }
}
/// The dtype a GPU runs Qwen-VL in, on the CPU: every operation of sampling, SFT (LoRA and
/// full, with gradient checkpointing) and PRM scoring takes bf16 tensors without a dtype clash.
#[cfg(test)]
mod bf16 {
    use super::*;
    use crate::model::qwen2_5_vl::generate::{generate_many, Prompt};
    use crate::model::qwen2_5_vl::lora::LoraConfig;
    use crate::model::qwen_vl::Trainable;
    use crate::train::{optimizer_step, AdamW, AdamWConfig, Schedule, TrainerState};

    fn run(name: &str) -> Result<()> {
        let dir = std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/model")).join(name);
        let (dev, dt) = (Device::Cpu, DType::BF16);
        let img = std::fs::read(dir.join("b.png"))?;
        let bad = |e: &dyn std::fmt::Display| ModelError::Invalid(format!("{name}: {e}"));
        let ck = Checkpoint::load(&dir, dt, &dev).map_err(|e| bad(&e))?;
        let p1: Prompt = ck.generation_prompt("How many?", std::slice::from_ref(&img)).map_err(|e| bad(&e))?;
        let p2: Prompt = ck.generation_prompt("Say something longer, please.", &[]).map_err(|e| bad(&e))?;
        let params = crate::model::generate::SamplingParams { temperature: 1.0, max_new_tokens: 4, ..Default::default() };
        let g = generate_many(&ck.model, &[(&p1, &[1, 2]), (&p2, &[3])], &params, &[])?;
        assert_eq!(g.iter().flatten().map(|x| x.tokens.len()).sum::<usize>(), 12);
        let state = || TrainerState {
            step: 0,
            examples_seen: 0,
            tokens_seen: 0,
            schedule: Schedule::Constant { lr: 1e-3 },
            adamw: AdamWConfig::default(),
            rng: 0,
            last_loss: None,
        };
        let lora = LoraConfig { rank: 2, alpha: 4.0, targets: vec!["q_proj".into(), "v_proj".into()] };
        for (mut ck, recompute) in [
            (Checkpoint::load_with_new_adapter(&dir, lora, 0, dt, &dev).map_err(|e| bad(&e))?, false),
            (Checkpoint::load_parts(&dir, None, Trainable::All, dt, &dev).map_err(|e| bad(&e))?, true),
        ] {
            let e = encode(&ck, "How many?", std::slice::from_ref(&img), "Three.").map_err(|e| bad(&e))?;
            let vars = ck.trainable();
            let (mut opt, mut st) = (AdamW::new(AdamWConfig::default()), state());
            let micro = vec![vec![&e]];
            optimizer_step(&vars, &mut opt, &mut st, &micro, Some(1.0), QwenExample::targets, |mb, s, g| accumulate(&ck, mb, 0, recompute, s, g))?;
            // and as a PRM
            ck.add_score_head(1, true)?;
            let (pe, ends) = encode_steps(&ck, "How many?", std::slice::from_ref(&img), &["Look.", "Three."], Some(&[1.0, 0.0])).map_err(|e| bad(&e))?;
            let vars = ck.trainable();
            let micro = vec![vec![&pe]];
            optimizer_step(&vars, &mut AdamW::new(AdamWConfig::default()), &mut state(), &micro, Some(1.0), QwenExample::targets, |mb, s, g| {
                accumulate(&ck, mb, 0, recompute, s, g)
            })?;
            let scores = score_steps(&ck, &[&pe], &[&ends], 0)?;
            assert!(scores[0].iter().all(|s| (0.0..=1.0).contains(s)));
        }
        Ok(())
    }

    #[test]
    fn bf16_sampling_training_and_scoring_run() {
        for name in ["qwen2_5_vl", "qwen3_vl"] {
            if let Err(e) = run(name) {
                panic!("{name}: {e:?}");
            }
        }
    }
}
