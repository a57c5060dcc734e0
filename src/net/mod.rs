//! HTTP with resume, retries, in-stream hashing, signed-URL parsing and progress.
pub mod config;
pub mod download;
pub(crate) mod hub;
pub mod progress;
pub(crate) mod reach;
pub(crate) mod retry;
pub(crate) mod signed_url;
