//! The tiny VLM's training step on the CPU without candle's autograd in the decoder: image
//! features (and the projector's and encoder's gradients) come from candle, the decoder's
//! forward and backward from `tiny_vlm::train_cpu`.

use super::{Example, Partial};
use crate::model::policy::{ModelError, Policy, Result};
use crate::model::tiny_vlm::decode_cpu::CpuDecoder;
use crate::model::tiny_vlm::train_cpu::{loss_and_grads, Objective};
use crate::model::tiny_vlm::vision_cpu::CpuVision;
use candle_core::{Shape, Tensor};

/// The mean loss of `chunk` and the gradients of that loss × `scale`, by variable name (the
/// decoder, embeddings and heads) and as a candle gradient store (projector and encoder).
/// `dec` is a snapshot of the policy's current weights; `vision`, one of its frozen encoder's
/// (the image features then come from it, outside candle).
pub fn sub_batch_grads(policy: &Policy, dec: &CpuDecoder, vision: Option<&CpuVision>, chunk: &[&Example], scale: f64) -> Result<(f64, Partial)> {
    let cfg = &policy.cfg;
    let (h, ni, np, pd) = (cfg.hidden_size, cfg.vision_config.image_tokens(), cfg.vision_config.num_patches(), cfg.vision_config.patch_dim());
    let prm = cfg.is_prm();
    let b = chunk.len();
    let t = chunk.iter().map(|e| e.prompt.len() + e.response.len()).max().unwrap_or(0);
    let texp = t - 1 + ni;
    if texp > dec.max_positions() {
        return Err(ModelError::Invalid(format!(
            "a sequence of {texp} positions (image tokens included) exceeds max_position_embeddings {}",
            dec.max_positions()
        )));
    }
    let mut patches = Vec::with_capacity(b * np * pd);
    for e in chunk {
        if e.prompt.len() < 2 || e.prompt[1] != cfg.image_token_id {
            return Err(ModelError::Invalid("an example's prompt must start with [bos, image]".into()));
        }
        if e.patches.len() != np * pd {
            return Err(ModelError::Invalid(format!("an example has {} patch values, the model reads {}", e.patches.len(), np * pd)));
        }
        patches.extend_from_slice(&e.patches);
    }
    let vh = cfg.vision_config.hidden_size;
    let feats = match vision {
        Some(v) => {
            // a frozen encoder's output: computed once per image, or here
            let f = match chunk.iter().map(|e| e.features.as_deref().filter(|f| f.len() == np * vh)).collect::<Option<Vec<_>>>() {
                Some(fs) => fs.concat(),
                None => v.forward(&patches, b),
            };
            policy.model.project_features(&Tensor::from_vec(f, (b, np, vh), &policy.device)?)?
        }
        None => policy.model.encode_images(&Tensor::from_vec(patches, (b, np, pd), &policy.device)?)?,
    };
    let fv: Vec<f32> = feats.flatten_all()?.to_vec1()?;

    // input embeddings: [bos, image features…, the rest of the sequence, padding]
    let mut x = vec![0f32; b * texp * h];
    let mut ids = vec![cfg.pad_token_id; b * texp]; // the token at each expanded position (image: pad)
    for (row, e) in chunk.iter().enumerate() {
        let seq = e.prompt.iter().chain(&e.response).copied().chain(std::iter::repeat(cfg.pad_token_id));
        for (s, tok) in seq.take(t).enumerate() {
            if s == 1 {
                continue;
            }
            let pos = if s == 0 { 0 } else { s - 1 + ni };
            ids[row * texp + pos] = tok;
            let tok = tok as usize;
            if tok >= dec.vocab {
                return Err(ModelError::Invalid(format!("token id {tok} ≥ vocab size {}", dec.vocab)));
            }
            x[(row * texp + pos) * h..(row * texp + pos + 1) * h].copy_from_slice(&dec.embed[tok * h..(tok + 1) * h]);
        }
        x[(row * texp + 1) * h..(row * texp + 1 + ni) * h].copy_from_slice(&fv[row * ni * h..(row + 1) * ni * h]);
    }

    let named_tensor = |name: &str| -> Result<Tensor> {
        let vars = policy.varmap.data().lock().expect("varmap");
        vars.get(name).map(|v| v.as_tensor().clone()).ok_or_else(|| ModelError::Invalid(format!("the policy has no weight `{name}`")))
    };
    let (loss, g) = if prm {
        let mut at = Vec::new();
        for (row, e) in chunk.iter().enumerate() {
            for &(j, y) in &e.labels {
                if j >= e.response.len() || !(0.0..=1.0).contains(&y) {
                    return Err(ModelError::Invalid(format!("step label ({j}, {y}) outside the response of {} tokens or [0, 1]", e.response.len())));
                }
                at.push((row * texp + e.prompt.len() + j - 1 + ni, y));
            }
        }
        let w: Vec<f32> = named_tensor("score_head.weight")?.flatten_all()?.to_vec1()?;
        let bias = named_tensor("score_head.bias")?.flatten_all()?.to_vec1::<f32>()?[0];
        loss_and_grads(dec, x, b, texp, &Objective::Steps { at: &at, w: &w, b: bias })
    } else {
        let mut at = Vec::new();
        for (row, e) in chunk.iter().enumerate() {
            for (j, &tok) in e.response.iter().enumerate() {
                if tok as usize >= dec.vocab {
                    return Err(ModelError::Invalid(format!("token id {tok} ≥ vocab size {}", dec.vocab)));
                }
                at.push((row * texp + e.prompt.len() + j - 2 + ni, tok));
            }
        }
        loss_and_grads(dec, x, b, texp, &Objective::Tokens(&at))
    };

    let s = scale as f32;
    let mut named: Vec<(String, Tensor)> = Vec::new();
    let mut put = |name: String, v: &[f32], shape: Shape| -> Result<()> {
        named.push((name, Tensor::from_vec(v.iter().map(|x| x * s).collect::<Vec<f32>>(), shape, &policy.device)?));
        Ok(())
    };
    let (inter, hh) = (cfg.intermediate_size, h * h);
    for (i, l) in g.layers.iter().enumerate() {
        let p = format!("model.layers.{i}");
        put(format!("{p}.input_layernorm.weight"), &l.input_norm, h.into())?;
        put(format!("{p}.post_attention_layernorm.weight"), &l.post_norm, h.into())?;
        for (j, m) in ["q_proj", "k_proj", "v_proj"].iter().enumerate() {
            put(format!("{p}.self_attn.{m}.weight"), &l.qkv[j * hh..(j + 1) * hh], (h, h).into())?;
        }
        put(format!("{p}.self_attn.o_proj.weight"), &l.o, (h, h).into())?;
        put(format!("{p}.mlp.gate_proj.weight"), &l.gate_up[..inter * h], (inter, h).into())?;
        put(format!("{p}.mlp.up_proj.weight"), &l.gate_up[inter * h..], (inter, h).into())?;
        put(format!("{p}.mlp.down_proj.weight"), &l.down, (h, inter).into())?;
    }
    put("model.norm.weight".into(), &g.norm, h.into())?;
    // the embedding: the tied LM head's gradient plus each input token's
    let mut embed = if cfg.tie_word_embeddings && !g.lm_head.is_empty() { g.lm_head.clone() } else { vec![0f32; dec.vocab * h] };
    for (pos, &tok) in ids.iter().enumerate() {
        if pos % texp >= 1 && pos % texp <= ni {
            continue;
        }
        let (dst, src) = (&mut embed[tok as usize * h..(tok as usize + 1) * h], &g.x[pos * h..(pos + 1) * h]);
        dst.iter_mut().zip(src).for_each(|(a, b)| *a += b);
    }
    put("model.embed_tokens.weight".into(), &embed, (dec.vocab, h).into())?;
    if !cfg.tie_word_embeddings && !g.lm_head.is_empty() {
        put("lm_head.weight".into(), &g.lm_head, (dec.vocab, h).into())?;
    }
    if prm {
        put("score_head.weight".into(), &g.score_w, (1, h).into())?;
        put("score_head.bias".into(), &[g.score_b], 1.into())?;
    }

    // the projector (and an unfrozen encoder) through candle: d(Σ feats ⊙ dfeats) = the chain rule
    let dfeats: Vec<f32> = (0..b).flat_map(|row| g.x[(row * texp + 1) * h..(row * texp + 1 + ni) * h].iter().map(|v| v * s)).collect();
    let surrogate = (feats * Tensor::from_vec(dfeats, (b, ni, h), &policy.device)?)?.sum_all()?;
    let store = surrogate.backward()?;
    Ok((loss as f64, Partial { store: Some(store), named }))
}
