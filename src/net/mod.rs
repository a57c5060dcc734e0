//! HTTP with resume, retries, in-stream hashing and signed-URL parsing. Transfers report through
//! [`crate::progress`]; nothing here draws or prints.
pub mod config;
pub mod download;
pub(crate) mod hub;
pub(crate) mod reach;
pub(crate) mod retry;
pub(crate) mod signed_url;
