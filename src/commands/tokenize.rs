//! `llamactl tokenize` (see CLI.md).
use crate::cli::TokenizeArgs;
use anyhow::{bail, Result};

pub fn run(_args: &TokenizeArgs) -> Result<i32> {
    bail!("`llamactl tokenize` is not available in this build yet")
}
