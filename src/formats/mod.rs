//! Bytes <-> tensors: the restricted unpickler, torch zip checkpoints, safetensors.
//! No CLI, no network, no model knowledge.
