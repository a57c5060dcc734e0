//! HTTP with resume, retries, in-stream hashing, signed-URL parsing and progress.
pub mod http;
pub mod hub;
pub mod progress;
pub mod reach;
pub mod segmented;
pub mod signed_url;
