//! Next-token choice as Meta's generation.py makes it: argmax at temperature 0, otherwise nucleus
//! (top-p) sampling from softmax(logits / temperature), seeded.
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Index of the largest logit; the first one on ties (torch.argmax). NaNs never win.
fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0usize;
    let mut best_v = f32::NEG_INFINITY;
    for (i, &v) in logits.iter().enumerate() {
        if v > best_v {
            best = i;
            best_v = v;
        }
    }
    best as u32
}

/// log softmax(logits)[index], computed stably in f64.
pub(crate) fn log_prob(logits: &[f32], index: u32) -> f32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = logits.iter().map(|&v| (v as f64 - max).exp()).sum();
    let v = logits.get(index as usize).copied().unwrap_or(f32::NAN) as f64;
    (v - max - sum.ln()) as f32
}

pub(crate) struct Sampler {
    temperature: f64,
    top_p: f64,
    rng: StdRng,
}

impl Sampler {
    pub(crate) fn new(temperature: f64, top_p: f64, seed: u64) -> Sampler {
        Sampler {
            temperature,
            top_p,
            rng: StdRng::seed_from_u64(seed),
        }
    }

    fn is_greedy(&self) -> bool {
        self.temperature <= 0.0
    }

    pub(crate) fn sample(&mut self, logits: &[f32]) -> u32 {
        if self.is_greedy() || logits.is_empty() {
            return argmax(logits);
        }
        let t = self.temperature as f32;
        let max = logits
            .iter()
            .copied()
            .filter(|v| !v.is_nan())
            .fold(f32::NEG_INFINITY, f32::max);
        let mut probs: Vec<(f32, u32)> = logits
            .iter()
            .enumerate()
            .map(|(i, &v)| {
                let p = if v.is_nan() {
                    0.0
                } else {
                    ((v - max) / t).exp()
                };
                (p, i as u32)
            })
            .collect();
        let total: f32 = probs.iter().map(|p| p.0).sum();
        if !(total.is_finite() && total > 0.0) {
            return argmax(logits);
        }
        probs.sort_unstable_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        // Keep the smallest prefix whose mass reaches top_p: a token stays while the mass before
        // it is at most top_p (Meta masks `cumsum - p > top_p`).
        let limit = self.top_p as f32 * total;
        let mut before = 0.0f32;
        let mut keep = 0;
        for (p, _) in &probs {
            if before > limit {
                break;
            }
            before += p;
            keep += 1;
        }
        let kept = &probs[..keep.max(1)];
        let mass: f32 = kept.iter().map(|p| p.0).sum();
        let mut u = self.rng.random::<f32>() * mass;
        for &(p, i) in kept {
            if u < p {
                return i;
            }
            u -= p;
        }
        kept[kept.len() - 1].1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_first_max() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, f32::NAN]), 1);
        let mut s = Sampler::new(0.0, 0.9, 1);
        assert_eq!(s.sample(&[0.0, -1.0, 2.0]), 2);
    }

    #[test]
    fn log_prob_normalises() {
        let l = [1.0f32, 2.0, 3.0];
        let total: f64 = (0..3).map(|i| (log_prob(&l, i) as f64).exp()).sum();
        assert!((total - 1.0).abs() < 1e-6);
        assert!((log_prob(&[0.0, 0.0], 1) - (0.5f32).ln()).abs() < 1e-7);
    }

    #[test]
    fn top_p_keeps_only_the_nucleus_and_seed_reproduces() {
        // probs ~ [0.64, 0.24, 0.09, 0.03]: with top_p 0.8 only the first two can appear.
        let logits = [3.0f32, 2.0, 1.0, 0.0];
        let mut s = Sampler::new(1.0, 0.8, 7);
        let draws: Vec<u32> = (0..400).map(|_| s.sample(&logits)).collect();
        assert!(draws.iter().all(|&d| d < 2));
        assert!(draws.contains(&0) && draws.contains(&1));
        let mut again = Sampler::new(1.0, 0.8, 7);
        let redo: Vec<u32> = (0..400).map(|_| again.sample(&logits)).collect();
        assert_eq!(draws, redo);
        // top_p 1 can reach the tail.
        let mut all = Sampler::new(1.0, 1.0, 3);
        let seen: std::collections::HashSet<u32> = (0..2000).map(|_| all.sample(&logits)).collect();
        assert_eq!(seen.len(), 4);
    }
}
