//! `llamactl download` (see CLI.md).
use crate::cli::DownloadArgs;
use anyhow::{bail, Result};

pub fn run(_args: &DownloadArgs) -> Result<i32> {
    bail!("`llamactl download` is not available in this build yet")
}
