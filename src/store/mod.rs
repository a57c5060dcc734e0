//! The models on this machine, wherever llamactl and the tools it shares files with keep them:
//! Meta's checkpoint folder (the *store*, shared with Meta's `llama` CLI), the Hugging Face cache
//! (shared with `huggingface_hub`), and any folder a user names.
//!
//! ```text
//! store/
//!   mod.rs       where the roots are (Roots): $LLAMA_STACK_CONFIG_DIR/checkpoints, the HF cache
//!   catalog.rs   the models llamactl knows (source, folder, shards) and the verified marker
//!   usage.rs     bytes on disk, each inode once (hard links, blobs shared by revisions)
//!   scan.rs      what is there: Meta dirs, HF dirs, HF cache repos and revisions, GGUF files
//!   check.rs     `--verify`: md5s against checklist.chk, blob sha256s, GGUF layout
//!   describe.rs  one model in detail (`show`): params, dtypes per tensor group, tokenizer, ...
//!   resolve.rs   a MODEL argument (catalog name, descriptor, repo id, path) -> a path
//!   lock.rs      the per-model lock download/pull/convert/reshard hold and rm/prune test
//!   remove.rs    plans for `rm` and `prune`, and their crash-safe execution
//! ```
//!
//! Nothing here hashes unless asked (`scan::verify`): the listing reads directory entries,
//! `stat`s and small headers only, so it answers at once on terabytes.
pub(crate) mod catalog;
pub mod check;
pub mod describe;
pub mod lock;
pub mod remove;
pub mod resolve;
pub mod scan;
mod usage;

use anyhow::{anyhow, Result};
use std::path::PathBuf;

/// Where models live on this machine.
#[derive(Debug, Clone)]
pub struct Roots {
    /// `$LLAMA_STACK_CONFIG_DIR`, default `~/.llama` (llama-stack's `config_dirs.py`).
    pub llama_home: PathBuf,
    /// `{llama_home}/checkpoints`: one folder per model, named after its descriptor with `:` as
    /// `-` (llama-stack's `model_local_dir`).
    pub checkpoints: PathBuf,
    /// The Hugging Face hub cache (`$HF_HUB_CACHE`, else `$HF_HOME/hub`).
    pub hf_cache: PathBuf,
}

impl Roots {
    pub fn from_env() -> Result<Self> {
        let llama_home = match std::env::var_os("LLAMA_STACK_CONFIG_DIR").filter(|v| !v.is_empty()) {
            Some(d) => PathBuf::from(d),
            None => std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| PathBuf::from(h).join(".llama"))
                .ok_or_else(|| {
                    anyhow!("HOME is not set; set LLAMA_STACK_CONFIG_DIR to say where the model store is")
                })?,
        };
        Ok(Self {
            checkpoints: llama_home.join("checkpoints"),
            llama_home,
            hf_cache: crate::net::hub::HubEnv::from_env()?.cache_dir,
        })
    }

    /// Where llamactl keeps its model locks (outside `checkpoints/`, which Meta's CLI lists).
    fn lock_dir(&self) -> PathBuf {
        self.llama_home.join(".llamactl-locks")
    }

    /// Where `download` puts a catalog model when no `--dir` is given.
    pub fn store_dir(&self, model: &catalog::Model) -> PathBuf {
        self.checkpoints.join(model.store_folder())
    }
}
