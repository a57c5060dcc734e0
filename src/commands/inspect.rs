//! `llamactl inspect` (see CLI.md).
use crate::cli::InspectArgs;
use anyhow::{bail, Result};

pub fn run(_args: &InspectArgs) -> Result<i32> {
    bail!("`llamactl inspect` is not available in this build yet")
}
