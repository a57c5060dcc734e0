//! Chat format, the transformer (candle), KV cache, sampling, generation.
pub mod chat;
// cpu/ is being changed elsewhere; its `pub` items in private modules become pub(crate) as this
// lint says when that lands, and the allow goes.
#[allow(unreachable_pub)]
pub mod cpu;
pub(crate) mod device;
pub(crate) mod generate;
pub(crate) mod gguf;
pub(crate) mod kv_cache;
pub(crate) mod memory;
pub(crate) mod model;
pub(crate) mod sampling;
pub(crate) mod weights;
