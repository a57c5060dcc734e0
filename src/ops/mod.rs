//! The operations on a model: each reads a model directory (or a GGUF file) through `checkpoint`
//! and `formats`, may use `tokenizer`, reports through `progress`, and prints nothing. A command
//! resolves its flags, calls its operation, and prints the result.
//!
//! ```text
//! ops/
//!   convert.rs     Meta <-> Hugging Face safetensors, streamed, with the tokenizer files beside
//!                  the weights (and checklist.chk for Meta)
//!   reshard.rs     consolidated.*.pth from MP a to MP b, streamed, with params.json,
//!                  tokenizer.model and checklist.chk
//!   gguf/          a model directory (or an f32/f16/bf16 GGUF file) -> one GGUF file
//!     mod.rs         the plan (tensors, types, order) and the streaming writer; uses its children
//!     docs.rs        the Hugging Face JSON files the metadata comes from (read, or built from a
//!                    Meta checkpoint), and the check that the tokenizer is Llama 3's
//!     meta.rs        the Hugging Face JSON files -> the GGUF key/values, as llama.cpp's converter
//!     types.rs       which GGML type each tensor gets per file type (llama-quantize's rules)
//!   verify/        checksums, structure, tokenizer files and values of a model directory, or the
//!                  layout of a GGUF file (gguf.rs), collected into one report (report.rs)
//!   stats.rs       value statistics of stored tensors (NaN/Inf counts, min/max/mean/std)
//! ```
//!
//! Imports go one way: a parent uses its children, and `gguf` uses `convert` (the Hugging Face
//! shard order), `verify` uses `stats`; nothing here imports `commands`, `store` or `net`.
pub(crate) mod convert;
pub(crate) mod gguf;
pub(crate) mod reshard;
pub(crate) mod stats;
pub(crate) mod verify;
