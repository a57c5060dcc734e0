//! `llamactl list` (see CLI.md).
use crate::cli::ListArgs;
use anyhow::{bail, Result};

pub fn run(_args: &ListArgs) -> Result<i32> {
    bail!("`llamactl list` is not available in this build yet")
}
