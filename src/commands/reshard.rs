//! `llamactl reshard` (see CLI.md).
use crate::cli::ReshardArgs;
use anyhow::{bail, Result};

pub fn run(_args: &ReshardArgs) -> Result<i32> {
    bail!("`llamactl reshard` is not available in this build yet")
}
