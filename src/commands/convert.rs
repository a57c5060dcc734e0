//! `llamactl convert` (see CLI.md).
use crate::cli::ConvertArgs;
use anyhow::{bail, Result};

pub fn run(_args: &ConvertArgs) -> Result<i32> {
    bail!("`llamactl convert` is not available in this build yet")
}
