//! `llamactl verify` (see CLI.md).
use crate::cli::VerifyArgs;
use anyhow::{bail, Result};

pub fn run(_args: &VerifyArgs) -> Result<i32> {
    bail!("`llamactl verify` is not available in this build yet")
}
