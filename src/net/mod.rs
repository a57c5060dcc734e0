//! HTTP with resume, retries, in-stream hashing, signed-URL parsing and progress.
pub mod config;
pub mod download;
pub mod hub;
pub mod progress;
pub mod reach;
pub mod signed_url;
