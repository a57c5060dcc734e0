//! What a run will need in memory, checked before anything is loaded, so that a run that cannot fit
//! fails at once with the flag to lower instead of being killed half-way by the kernel.
use super::model::{Config, PREFILL_CHUNK};
use super::weights::WeightBytes;
use crate::human::human_bytes;
use anyhow::{bail, Result};

/// The estimate for one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MemoryPlan {
    /// Weight bytes: `mapped` used from the files' page cache, `owned` held by the process.
    weights: WeightBytes,
    /// The KV cache, allocated for `max_batch × max_seq` up front.
    kv_cache: u64,
    /// Buffers of the largest forward pass (a prefill chunk): projections, attention scores, logits.
    activations: u64,
}

impl MemoryPlan {
    /// `act_bytes`: bytes per activation / cache element (4 on the CPU). The sizes come from
    /// user numbers (`--max-seq-len` up to 2^64 - 1), so every product saturates: a run whose
    /// size does not fit in 64 bits needs "more than 16 EiB" and is refused like any run too big.
    pub(crate) fn new(
        cfg: &Config,
        weights: WeightBytes,
        max_seq: usize,
        max_batch: usize,
        act_bytes: usize,
    ) -> MemoryPlan {
        let (b, s) = (max_batch as u64, max_seq as u64);
        let e = act_bytes as u64;
        let kv_row = (cfg.n_kv_heads * cfg.head_dim) as u64;
        let kv = product(&[2, cfg.n_layers as u64, b, s, kv_row, e]);
        let chunk = s.min(PREFILL_CHUNK as u64);
        let heads = cfg.n_heads as u64;
        // Scores, the masked copy and the probabilities of one layer; the residual stream and its
        // norm, the q/k/v projections and their rotated copies, gate/up/product of the FFN; logits
        // of the last position. Dropped buffers are reused by the allocator, so one layer counts.
        let scores = product(&[3, b, heads, chunk, s, e]);
        let per_row = 6 * cfg.dim
            + 3 * (cfg.n_heads + 2 * cfg.n_kv_heads) * cfg.head_dim
            + 4 * cfg.hidden_dim;
        let rows = product(&[b, chunk, per_row as u64, e]);
        let logits = product(&[b, cfg.vocab_size as u64, 4]);
        // The rotary tables: f32 angles, then their cos and sin, for every position.
        let rotary = product(&[3, s, (cfg.head_dim / 2) as u64, 4]);
        MemoryPlan {
            weights,
            kv_cache: kv,
            activations: scores
                .saturating_add(rows)
                .saturating_add(logits)
                .saturating_add(rotary),
        }
    }

    /// Bytes the process itself must hold (everything but the mapped weights).
    fn owned(&self) -> u64 {
        self.weights
            .owned
            .saturating_add(self.kv_cache)
            .saturating_add(self.activations)
    }

    /// Fail when the process memory the run needs exceeds `available`; `Ok(Some(note))` when it fits
    /// but the mapped weights will not stay cached beside it (`total`: memory the machine has).
    pub(crate) fn check(&self, available: u64, total: u64, where_: &str) -> Result<Option<String>> {
        let need = self.owned();
        if need > available {
            bail!(
                "this run needs {} of {where_} memory ({}) but {} is available; lower {}",
                match need {
                    u64::MAX => size(need),
                    n => format!("about {}", human_bytes(n)),
                },
                self.breakdown(),
                human_bytes(available),
                self.advice()
            );
        }
        if self.weights.mapped > 0 && need.saturating_add(self.weights.mapped) > total {
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
            parts.push(format!("weights {}", size(self.weights.owned)));
        }
        parts.push(format!("KV cache {}", size(self.kv_cache)));
        parts.push(format!("activations {}", size(self.activations)));
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

/// The product of `factors`, or `u64::MAX` when it does not fit.
fn product(factors: &[u64]) -> u64 {
    factors.iter().fold(1u64, |acc, &f| acc.saturating_mul(f))
}

/// A size for a message; a saturated one is said to be past 64 bits, not given a false figure.
fn size(bytes: u64) -> String {
    if bytes == u64::MAX {
        "more than 16 EiB".to_string()
    } else {
        human_bytes(bytes)
    }
}

/// Memory the process can still take: MemAvailable, capped by a cgroup (container) limit.
pub(crate) fn available_host_bytes() -> (u64, u64) {
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
pub(crate) fn rss_now() -> (u64, u64) {
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
    use crate::runner::model::RopePairing;

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
            rope_pairing: RopePairing::AdjacentPairs,
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
    fn sizes_past_64_bits_are_refused_not_wrapped() {
        let w = WeightBytes {
            mapped: 16 << 30,
            owned: 0,
        };
        for max_seq in [1usize << 56, 1 << 60, usize::MAX] {
            let p = MemoryPlan::new(&cfg_8b(), w, max_seq, 4, 4);
            let err = p
                .check(u64::MAX - 1, u64::MAX, "host")
                .unwrap_err()
                .to_string();
            assert!(err.contains("more than 16 EiB"), "{max_seq}: {err}");
            assert!(err.contains("--max-seq-len"), "{err}");
        }
    }

    #[test]
    fn host_readings_are_sane() {
        let (avail, total) = available_host_bytes();
        assert!(avail > 0 && avail <= total);
        let (anon, _) = rss_now();
        assert!(anon > 0);
    }
}
