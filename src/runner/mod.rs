//! Tokenizer, chat format, the transformer (candle), KV cache, sampling, generation.

pub mod chat;
pub mod hf_tokenizer;
pub mod tokenizer;
