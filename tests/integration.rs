//! The integration tests: one crate (so the binary and its dependencies link once), one module per
//! area. Each drives the built `llamactl` binary or the library against fixtures in testdata/ and
//! local HTTP servers (tests/common). `cargo test --release MODULE::` runs one area.
mod common;
mod convert;
mod download;
mod formats;
mod gguf;
mod gguf_quant;
mod interrupt;
mod manners;
mod pull;
mod reshard;
mod run;
mod run_gguf;
mod safety;
mod store;
mod tokenize;
mod verify;
