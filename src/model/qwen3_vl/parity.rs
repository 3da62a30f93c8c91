//! Parity with transformers 4.57 on the tiny random Qwen3-VL checkpoint in tests/model/qwen3_vl
//! (made by tests/model/make_qwen3_fixture.py): the same three chats as Qwen2.5-VL's test.

#[test]
fn processor_tokens_and_logits_match_transformers() {
    crate::model::qwen2_5_vl::parity::check_parity(&std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/model/qwen3_vl")));
}
