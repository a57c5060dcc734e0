//! Exit codes (CLI.md) and error classification.
//!
//! Commands return `anyhow::Result<i32>`: `Ok(0)` when every check passed, `Ok(1)` when the run finished
//! but a check failed. Errors are bad input (exit 2) unless they carry a [`Fail`] with another code
//! somewhere in their chain, e.g. a 403 from a signed URL (3) or a network failure after retries (4).

/// Done, and every check passed.
pub const OK: i32 = 0;
/// Done, but a check failed (md5 mismatch, verify problems, `run --check` failed).
pub const CHECK_FAILED: i32 = 1;
/// Bad usage or bad input.
pub const USAGE: i32 = 2;
/// Refused by the remote side (expired or used-up signed URL, gated repo, bad token).
pub const REFUSED: i32 = 3;
/// Network failure after retries.
pub const NETWORK: i32 = 4;

/// An error that carries its own exit code.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Fail {
    code: i32,
    message: String,
}

impl Fail {
    pub fn error(code: i32, message: impl Into<String>) -> anyhow::Error {
        anyhow::Error::new(Fail {
            code,
            message: message.into(),
        })
    }
}

/// A check failed (exit 1), e.g. a checksum mismatch found while downloading.
pub fn check_failed(message: impl Into<String>) -> anyhow::Error {
    Fail::error(CHECK_FAILED, message)
}

/// The remote side refused us (exit 3).
pub fn refused(message: impl Into<String>) -> anyhow::Error {
    Fail::error(REFUSED, message)
}

/// The network failed after retries (exit 4).
pub fn network(message: impl Into<String>) -> anyhow::Error {
    Fail::error(NETWORK, message)
}

/// The exit code for an error: the first [`Fail`] in its chain decides, otherwise bad input (2).
pub fn exit_code(err: &anyhow::Error) -> i32 {
    err.chain()
        .find_map(|e| e.downcast_ref::<Fail>().map(|f| f.code))
        .unwrap_or(USAGE)
}

/// All contexts of an error on one line, outermost first, without repeating a message that a
/// lower layer already included verbatim.
pub fn one_line(err: &anyhow::Error) -> String {
    let mut out = String::new();
    for part in err.chain() {
        let text = part.to_string().replace('\n', " ");
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_found_through_context() {
        let e = refused("link expired").context("downloading consolidated.00.pth");
        assert_eq!(exit_code(&e), REFUSED);
        assert_eq!(
            one_line(&e),
            "downloading consolidated.00.pth: link expired"
        );
        let plain = anyhow::anyhow!("bad json");
        assert_eq!(exit_code(&plain), USAGE);
    }
}
