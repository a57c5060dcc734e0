//! The transformer (candle), KV cache, sampling, generation.
pub mod cpu;
pub(crate) mod device;
pub(crate) mod generate;
pub(crate) mod gguf;
pub(crate) mod kv_cache;
pub(crate) mod memory;
pub(crate) mod model;
pub(crate) mod sampling;
pub(crate) mod weights;
