//! HTTP with resume, retries, in-stream hashing, signed-URL parsing and progress.
pub mod http;
pub(crate) mod hub;
pub mod progress;
pub(crate) mod reach;
pub(crate) mod segmented;
pub(crate) mod signed_url;
