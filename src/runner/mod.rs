//! Chat format, the transformer (candle), KV cache, sampling, generation.
pub mod chat;
pub mod cpu;
pub mod device;
pub mod generate;
pub mod kv_cache;
pub mod memory;
pub mod model;
pub mod sampling;
pub mod weights;
