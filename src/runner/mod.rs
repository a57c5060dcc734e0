//! Tokenizer, chat format, the transformer (candle), KV cache, sampling, generation.
