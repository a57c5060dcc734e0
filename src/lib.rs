//! llamactl: one toolkit for people who hold Llama 3 weights.
//!
//! The layers, bottom up (data flows one way):
//! - `human` (the floor): sizes and durations as people read them; uses nothing of the crate.
//! - `util` (on `human`): disk space, directory fsync, flock, path resolution, the I/O work queue.
//! - [`isa`] (the floor too): which SIMD instruction set the kernels use.
//! - [`progress`] (beside `util`, the floor): the traits long work reports through; it draws
//!   nothing.
//! - [`signal`] (on `human`): SIGINT/SIGTERM, the registry of temporary outputs to remove.
//! - `output` (on `signal` and `util`): atomic files and directories, stale temporary outputs.
//! - [`formats`]: bytes <-> tensors (pickle, torch zip `.pth`, safetensors). No model knowledge.
//! - [`checkpoint`]: a model directory as a thing (params.json, checklist.chk, shards, split rules,
//!   Meta <-> HF <-> GGUF names, rope, fp8 facts, streaming of logical tensors, hashing).
//! - [`net`]: HTTP with resume, retries, in-stream hashing, signed-URL handling.
//! - [`tokenizer`]: Meta's tiktoken and Hugging Face tokenizers at run time, and the Hugging Face
//!   tokenizer files `convert` writes. Needs nothing above `formats`.
//! - [`ops`] (on `checkpoint`, `formats`, `tokenizer`): the operations on a model: convert to
//!   Hugging Face or Meta, reshard, GGUF export, verify (with its report), value statistics. Each
//!   reports through `progress` and prints nothing.
//! - [`runner`]: the transformer, generation (uses `tokenizer`, whose `chat` module formats dialogs).
//! - [`store`]: the models on this machine (Meta's checkpoint folder, the HF cache, GGUF files) and
//!   the catalog of models llamactl knows: listing, resolving a MODEL argument, locks, removal.
//!   Uses `checkpoint`, `net::hub`, `tokenizer`.
//! - [`commands`]: one module per subcommand, on `ops`, `store`, `runner` and `net`; a command
//!   resolves its flags, calls one operation and prints. A command never imports another. Their one
//!   progress display (bars or plain lines) is `commands::reporters`.
// `pub` is the library's API (what main.rs, tests/, examples/ and fuzz/ use); an item only the
// crate uses says pub(crate) or pub(super).
#![warn(unreachable_pub)]
pub mod checkpoint;
pub mod cli;
pub mod commands;
pub mod error;
pub mod formats;
pub(crate) mod human;
pub mod isa;
pub mod net;
pub mod ops;
pub(crate) mod output;
pub mod progress;
pub mod runner;
pub mod signal;
pub mod store;
pub mod tokenizer;
pub(crate) mod util;
