//! Parity with transformers on tiny random Qwen3-VL checkpoints: tests/model/qwen3_vl (4.57, made
//! by tests/model/make_qwen3_fixture.py) and qwen3_vl_v5 (5.24, make_qwen_v5_fixtures.py): the same
//! three chats as Qwen2.5-VL's test.

#[test]
fn processor_tokens_and_logits_match_transformers() {
    crate::model::qwen2_5_vl::parity::check_parity(&std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/model/qwen3_vl")));
}

/// A folder saved by transformers 5: interleaved sections [1, 1, 2] of head_dim 8, 6 query heads
/// per KV head, DeepStack from blocks 1 and 3, 4×4 learned positions, an untied head, and a
/// generation_config naming Qwen3-VL's real end-of-turn ids, which this tokenizer lacks.
#[test]
fn a_transformers_5_folder_matches_transformers_5() {
    let dir = std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/model/qwen3_vl_v5"));
    crate::model::qwen2_5_vl::parity::check_parity(&dir);
    let ck = crate::model::qwen_vl::Checkpoint::load(&dir, candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
    assert_eq!(ck.eos_ids, vec![ck.tokenizer.token_to_id("<|im_end|>").unwrap()], "the chat template's end of turn replaces the missing ids");
}
