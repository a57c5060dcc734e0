//! HTTP with resume, retries, in-stream hashing, signed-URL parsing and progress.
pub mod hub;
