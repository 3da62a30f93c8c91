//! Parity with transformers 4.57 on the tiny random checkpoint in tests/model/qwen2_5_vl
//! (made by tests/model/make_qwen_fixture.py): chat template, tokens, pixels and logits.

use super::Checkpoint;
use candle_core::{DType, Device, Tensor};
use std::path::PathBuf;

fn fixture() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/model/qwen2_5_vl"))
}

fn max_abs(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

#[test]
fn processor_tokens_and_logits_match_transformers() {
    let dir = fixture();
    let dev = Device::Cpu;
    let ck = Checkpoint::load(&dir, DType::F32, &dev).unwrap();
    let expected = candle_core::safetensors::load(dir.join("expected.safetensors"), &dev).unwrap();
    let meta: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("expected.json")).unwrap()).unwrap();
    for case in ["text", "one_image", "two_images"] {
        let m = &meta[case];
        // the chat template renders the same prompt
        let prompt = ck.chat.render(&m["messages"], true).unwrap();
        assert_eq!(prompt, m["prompt"].as_str().unwrap(), "{case}: rendered prompt");
        // the image processor gives the same pixels and grids, bit for bit
        let mut pixels = Vec::new();
        let mut grids = Vec::new();
        for name in m["images"].as_array().unwrap() {
            let bytes = std::fs::read(dir.join(name.as_str().unwrap())).unwrap();
            let p = ck.processor.preprocess_bytes(&bytes).unwrap();
            grids.push(p.grid);
            pixels.extend(p.values);
        }
        let pixels = if grids.is_empty() {
            None
        } else {
            let want = &expected[&format!("{case}.pixel_values")];
            let got = Tensor::from_vec(pixels, want.dims(), &dev).unwrap();
            assert_eq!(max_abs(&got, want), 0.0, "{case}: pixel values");
            let want_grid: Vec<i64> = expected[&format!("{case}.image_grid_thw")].flatten_all().unwrap().to_vec1().unwrap();
            let got_grid: Vec<i64> = grids.iter().flatten().map(|&x| x as i64).collect();
            assert_eq!(got_grid, want_grid, "{case}: grids");
            Some(got)
        };
        // placeholder expansion + tokenizer give the same ids
        let text = ck.expand_image_pads(m["text"].as_str().unwrap(), &grids).unwrap();
        let ids = ck.encode(&text).unwrap();
        let want_ids: Vec<i64> = expected[&format!("{case}.input_ids")].to_vec1().unwrap();
        assert_eq!(ids.iter().map(|&x| x as i64).collect::<Vec<_>>(), want_ids, "{case}: input ids");
        // and the model the same logits
        let logits = ck.model.forward(&ids, pixels.as_ref(), &grids).unwrap().squeeze(0).unwrap();
        let want = &expected[&format!("{case}.logits")];
        let d = max_abs(&logits, want);
        let scale = want.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
        eprintln!("{case}: max |Δlogit| = {d:.2e} (logits up to {scale:.2})");
        assert!(d <= 1e-4, "{case}: max |Δlogit| = {d}");
    }
}
