//! What a run will need in memory, checked before anything is loaded, so that a run that cannot fit
//! fails at once with the flag to lower instead of being killed half-way by the kernel.
use super::model::{Config, PREFILL_CHUNK};
use super::weights::WeightBytes;
use crate::util::human_bytes;
use anyhow::{bail, Result};

/// The estimate for one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryPlan {
    /// Weight bytes: `mapped` used from the files' page cache, `owned` held by the process.
    pub weights: WeightBytes,
    /// The KV cache, allocated for `max_batch × max_seq` up front.
    pub kv_cache: u64,
    /// Buffers of the largest forward pass (a prefill chunk): projections, attention scores, logits.
    pub activations: u64,
}

impl MemoryPlan {
    /// `act_bytes`: bytes per activation / cache element (4 on the CPU).
    pub fn new(
        cfg: &Config,
        weights: WeightBytes,
        max_seq: usize,
        max_batch: usize,
        act_bytes: usize,
    ) -> MemoryPlan {
        let (b, s) = (max_batch as u64, max_seq as u64);
        let e = act_bytes as u64;
        let kv = 2 * cfg.n_layers as u64 * b * s * (cfg.n_kv_heads * cfg.head_dim) as u64 * e;
        let chunk = s.min(PREFILL_CHUNK as u64);
        let rows = b * chunk;
        let heads = cfg.n_heads as u64;
        // Scores, the masked copy and the probabilities of one layer; the residual stream and its
        // norm, the q/k/v projections and their rotated copies, gate/up/product of the FFN; logits
        // of the last position. Dropped buffers are reused by the allocator, so one layer counts.
        let scores = 3 * b * heads * chunk * s * e;
        let per_row = 6 * cfg.dim
            + 3 * (cfg.n_heads + 2 * cfg.n_kv_heads) * cfg.head_dim
            + 4 * cfg.hidden_dim;
        let logits = b * cfg.vocab_size as u64 * 4;
        MemoryPlan {
            weights,
            kv_cache: kv,
            activations: scores + rows * per_row as u64 * e + logits,
        }
    }

    /// Bytes the process itself must hold (everything but the mapped weights).
    pub fn owned(&self) -> u64 {
        self.weights.owned + self.kv_cache + self.activations
    }

    /// Fail when the process memory the run needs exceeds `available`; `Ok(Some(note))` when it fits
    /// but the mapped weights will not stay cached beside it (`total`: memory the machine has).
    pub fn check(&self, available: u64, total: u64, where_: &str) -> Result<Option<String>> {
        let need = self.owned();
        if need > available {
            bail!(
                "this run needs about {} of {where_} memory ({}) but {} is available; lower {}",
                human_bytes(need),
                self.breakdown(),
                human_bytes(available),
                self.advice()
            );
        }
        if self.weights.mapped > 0 && need + self.weights.mapped > total {
            return Ok(Some(format!(
                "note: the mapped weights ({}) and the run's own memory ({}) exceed this machine's {}: \
                 weight pages will be re-read from disk and the run will be slow",
                human_bytes(self.weights.mapped),
                human_bytes(need),
                human_bytes(total)
            )));
        }
        Ok(None)
    }

    fn breakdown(&self) -> String {
        let mut parts = Vec::new();
        if self.weights.owned > 0 {
            parts.push(format!("weights {}", human_bytes(self.weights.owned)));
        }
        parts.push(format!("KV cache {}", human_bytes(self.kv_cache)));
        parts.push(format!("activations {}", human_bytes(self.activations)));
        parts.join(", ")
    }

    /// The flags that shrink the largest part.
    fn advice(&self) -> &'static str {
        if self.weights.owned >= self.kv_cache.max(self.activations) {
            "--dtype (auto keeps the stored type; bf16 halves f32) or reshard to MP 1 so the weights are mapped"
        } else {
            "--max-seq-len or --max-batch-size"
        }
    }
}

/// Memory the process can still take: MemAvailable, capped by a cgroup (container) limit.
pub fn available_host_bytes() -> (u64, u64) {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |key: &str| -> Option<u64> {
        meminfo
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .map(|kb| kb * 1024)
    };
    let mut total = field("MemTotal:").unwrap_or(u64::MAX);
    let mut avail = field("MemAvailable:").unwrap_or(total);
    let cg = |f: &str| -> Option<u64> {
        std::fs::read_to_string(format!("/sys/fs/cgroup/{f}"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
    };
    if let Some(limit) = cg("memory.max") {
        let used = cg("memory.current").unwrap_or(0);
        total = total.min(limit);
        avail = avail.min(limit.saturating_sub(used));
    }
    (avail, total)
}

/// This process's resident memory now, from /proc: (anonymous, file-backed) bytes.
pub fn rss_now() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |key: &str| -> u64 {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    (field("RssAnon:"), field("RssFile:"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runner::model::RopeLayout;

    fn cfg_8b() -> Config {
        Config {
            dim: 4096,
            n_layers: 32,
            n_heads: 32,
            n_kv_heads: 8,
            head_dim: 128,
            hidden_dim: 14336,
            vocab_size: 128256,
            norm_eps: 1e-5,
            rope_theta: 500000.0,
            rope_scaling: None,
            rope_freq_factors: None,
            rope_layout: RopeLayout::AdjacentPairs,
        }
    }

    #[test]
    fn kv_cache_and_advice() {
        let w = WeightBytes {
            mapped: 16 << 30,
            owned: 0,
        };
        let p = MemoryPlan::new(&cfg_8b(), w, 8192, 4, 4);
        // 2 (k, v) x 32 layers x 4 x 8192 x 1024 x 4 bytes = 8 GiB.
        assert_eq!(p.kv_cache, 8 << 30);
        let err = p.check(4 << 30, 24 << 30, "host").unwrap_err().to_string();
        assert!(err.contains("--max-seq-len or --max-batch-size"), "{err}");
        assert!(err.contains("KV cache 8.0 GiB"), "{err}");
        let small = MemoryPlan::new(&cfg_8b(), w, 512, 1, 4);
        assert!(small.check(20 << 30, 24 << 30, "host").unwrap().is_none());
        // Fits, but 16 GiB of mapped weights beside it exceed a 16 GiB machine.
        assert!(small.check(15 << 30, 16 << 30, "host").unwrap().is_some());
        let widened = MemoryPlan::new(
            &cfg_8b(),
            WeightBytes {
                mapped: 0,
                owned: 32 << 30,
            },
            512,
            1,
            4,
        );
        let err = widened
            .check(20 << 30, 24 << 30, "host")
            .unwrap_err()
            .to_string();
        assert!(err.contains("--dtype"), "{err}");
    }

    #[test]
    fn host_readings_are_sane() {
        let (avail, total) = available_host_bytes();
        assert!(avail > 0 && avail <= total);
        let (anon, _) = rss_now();
        assert!(anon > 0);
    }
}
