//! Chat format, the transformer (candle), KV cache, sampling, generation.
pub mod chat;
pub mod device;
pub mod generate;
pub mod kv_cache;
pub mod model;
pub mod sampling;
