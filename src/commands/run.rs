//! `llamactl run` (see CLI.md).
use crate::cli::RunArgs;
use anyhow::{bail, Result};

pub fn run(_args: &RunArgs) -> Result<i32> {
    bail!("`llamactl run` is not available in this build yet")
}
