//! The text tokenizer: a byte-level BPE that mstar trains with the tokenizers crate on the
//! task's text (digits split one per token), saved as a Hugging Face `tokenizer.json`.

use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{AddedToken, PreTokenizerWrapper, Tokenizer, TokenizerBuilder};

/// Special tokens, in id order: pad 0, bos 1, eos 2, image 3.
pub const SPECIAL: [&str; 4] = ["<pad>", "<bos>", "<eos>", "<image>"];

#[derive(Debug, thiserror::Error)]
#[error("tokenizer: {0}")]
pub struct TokenizerError(String);

fn err(e: impl std::fmt::Display) -> TokenizerError {
    TokenizerError(e.to_string())
}

#[derive(Clone)]
pub struct TextTokenizer {
    inner: Tokenizer,
}

impl TextTokenizer {
    /// Trains a BPE of at most `vocab_size` tokens on `texts`.
    pub fn train<I, S>(texts: I, vocab_size: usize) -> Result<Self, TokenizerError>
    where
        I: Iterator<Item = S> + Send,
        S: AsRef<str> + Send,
    {
        let mut trainer = BpeTrainerBuilder::new()
            .vocab_size(vocab_size)
            .min_frequency(2)
            .show_progress(false)
            .special_tokens(SPECIAL.iter().map(|s| AddedToken::from(s.to_string(), true)).collect())
            .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
            .build();
        let pre = Sequence::new(vec![PreTokenizerWrapper::Digits(Digits::new(true)), PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, true))]);
        let mut tk = TokenizerBuilder::<BPE, _, _, _, _>::new()
            .with_model(BPE::default())
            .with_normalizer(None::<tokenizers::NormalizerWrapper>)
            .with_pre_tokenizer(Some(pre))
            .with_post_processor(None::<tokenizers::PostProcessorWrapper>)
            .with_decoder(Some(ByteLevel::default()))
            .build()
            .map_err(err)?;
        tk.train(&mut trainer, texts).map_err(err)?;
        let inner: Tokenizer = tk.into();
        let t = Self { inner };
        for (i, s) in SPECIAL.iter().enumerate() {
            if t.inner.token_to_id(s) != Some(i as u32) {
                return Err(TokenizerError(format!("special token {s} did not get id {i}")));
            }
        }
        Ok(t)
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, TokenizerError> {
        Ok(Self { inner: Tokenizer::from_bytes(bytes).map_err(err)? })
    }

    pub fn to_json(&self) -> Result<String, TokenizerError> {
        self.inner.to_string(true).map_err(err)
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Token ids of plain text (no special tokens added).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        Ok(self.inner.encode(text, false).map_err(err)?.get_ids().to_vec())
    }

    /// Text of ids, special tokens skipped.
    pub fn decode(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        self.inner.decode(ids, true).map_err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trains_and_round_trips() {
        let texts = ["Step 1: The red shapes show 3, 7.\nStep 2: 3 + 7 = 10.\nAnswer: 10"; 50];
        let t = TextTokenizer::train(texts.iter(), 300).unwrap();
        let ids = t.encode(texts[0]).unwrap();
        assert_eq!(t.decode(&ids).unwrap(), texts[0]);
        // digits are single tokens
        let ten = t.encode("10").unwrap();
        assert_eq!(ten.len(), 2);
        let again = TextTokenizer::from_bytes(t.to_json().unwrap().as_bytes()).unwrap();
        assert_eq!(again.encode(texts[0]).unwrap(), ids);
    }
}
