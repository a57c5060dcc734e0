//! A model directory as a thing: params.json, checklist.chk, shard discovery, split rules, Meta <-> HF.
pub mod catalog;
