//! `llamactl pull` (see CLI.md).
use crate::cli::PullArgs;
use anyhow::{bail, Result};

pub fn run(_args: &PullArgs) -> Result<i32> {
    bail!("`llamactl pull` is not available in this build yet")
}
