//! `llamactl demo` (see CLI.md).
use crate::cli::DemoArgs;
use anyhow::{bail, Result};

pub fn run(_args: &DemoArgs) -> Result<i32> {
    bail!("`llamactl demo` is not available in this build yet")
}
