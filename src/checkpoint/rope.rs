//! Rotary position settings: `rope_theta` and Llama 3.1's frequency scaling, read from a Hugging
//! Face config.json (either style) or implied by Meta's params.json, with one set of defaults and
//! checks for every command that needs them (run, convert --to gguf, verify, show).
use anyhow::{bail, Result};
use serde_json::Value;

/// The `rope_theta` of configs that do not state one (Llama 2, transformers' default).
pub const DEFAULT_THETA: f64 = 10000.0;

/// Llama 3.1-style frequency scaling (`use_scaled_rope`, HF `rope_scaling.rope_type = "llama3"`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RopeScaling {
    pub factor: f64,
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    pub original_max_position_embeddings: f64,
}

impl Default for RopeScaling {
    /// The values Meta's `apply_scaling` hard-codes for Llama 3.1.
    fn default() -> Self {
        RopeScaling {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192.0,
        }
    }
}

/// rope_theta and the scaling block (any type but `default`) from either config style
/// (`rope_theta` + `rope_scaling`, or the newer `rope_parameters`).
pub fn rope_from_config(c: &Value) -> (f64, Option<&Value>) {
    let params = c.get("rope_parameters").filter(|v| v.is_object());
    let theta = c
        .get("rope_theta")
        .and_then(Value::as_f64)
        .or_else(|| {
            params
                .and_then(|p| p.get("rope_theta"))
                .and_then(Value::as_f64)
        })
        .unwrap_or(DEFAULT_THETA);
    let scaling = c
        .get("rope_scaling")
        .filter(|v| v.is_object())
        .or(params)
        .filter(|s| {
            let t = scaling_type(s);
            matches!(t, Some(t) if t != "default")
        });
    (theta, scaling)
}

/// A scaling block's type (`rope_type`, or the older `type`).
fn scaling_type(s: &Value) -> Option<&str> {
    s.get("rope_type")
        .or_else(|| s.get("type"))
        .and_then(Value::as_str)
}

impl RopeScaling {
    /// The scaling a Hugging Face config.json asks for: None without one; an error for a type
    /// other than `llama3` or values that make no band (as transformers, which needs `factor`
    /// and takes Meta's constants for the rest).
    pub fn from_hf_config(c: &Value) -> Result<Option<RopeScaling>> {
        let (_, scaling) = rope_from_config(c);
        let Some(s) = scaling else { return Ok(None) };
        let t = scaling_type(s);
        if t != Some("llama3") {
            bail!("config.json: rope scaling type {t:?} is not supported (only llama3)");
        }
        let d = RopeScaling::default();
        let num = |k: &str, default: f64| s.get(k).and_then(Value::as_f64).unwrap_or(default);
        let factor = match s.get("factor").and_then(Value::as_f64) {
            Some(f) if f > 0.0 => f,
            _ => bail!("config.json: llama3 rope scaling without a positive `factor`"),
        };
        let r = RopeScaling {
            factor,
            low_freq_factor: num("low_freq_factor", d.low_freq_factor),
            high_freq_factor: num("high_freq_factor", d.high_freq_factor),
            original_max_position_embeddings: num(
                "original_max_position_embeddings",
                d.original_max_position_embeddings,
            ),
        };
        if r.high_freq_factor <= r.low_freq_factor {
            bail!("config.json: rope scaling high_freq_factor must exceed low_freq_factor");
        }
        Ok(Some(r))
    }

    /// One rotary frequency scaled as Meta's `apply_scaling` does: kept for short wavelengths,
    /// divided by `factor` for long ones, blended between.
    pub fn scale(&self, freq: f32) -> f32 {
        let old = self.original_max_position_embeddings as f32;
        let low_wavelen = old / self.low_freq_factor as f32;
        let high_wavelen = old / self.high_freq_factor as f32;
        let wavelen = 2.0 * std::f32::consts::PI / freq;
        if wavelen < high_wavelen {
            freq
        } else if wavelen > low_wavelen {
            freq / self.factor as f32
        } else {
            let smooth = (old / wavelen - self.low_freq_factor as f32)
                / (self.high_freq_factor - self.low_freq_factor) as f32;
            (1.0 - smooth) * freq / self.factor as f32 + smooth * freq
        }
    }

    /// The per-frequency divisors llama.cpp's converter stores as `rope_freqs.weight`: 1 (short
    /// wavelengths), `factor` (long ones), or the smooth blend between, computed in f32 the way
    /// its torch code does (x / y as reciprocal(y) * x), so the file matches bit for bit.
    pub fn divisors(&self, theta: f64, head_dim: usize) -> Vec<f32> {
        let (factor, low, high) = (self.factor, self.low_freq_factor, self.high_freq_factor);
        let old_ctx = self.original_max_position_embeddings;
        let (low_wl, high_wl) = ((old_ctx / low) as f32, (old_ctx / high) as f32);
        let two_pi = std::f64::consts::TAU as f32;
        let base = theta as f32 as f64;
        (0..head_dim)
            .step_by(2)
            .map(|i| {
                let e = i as f32 / head_dim as f32;
                let freq = 1.0 / (base.powf(f64::from(e)) as f32);
                let wavelen = (1.0 / freq) * two_pi;
                if wavelen < high_wl {
                    1.0
                } else if wavelen > low_wl {
                    factor as f32
                } else {
                    let smooth =
                        ((1.0 / wavelen) * old_ctx as f32 - low as f32) / (high - low) as f32;
                    1.0 / ((1.0 - smooth) / factor as f32 + smooth)
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn both_config_styles_and_the_checks() {
        let old =
            json!({"rope_theta": 5e5, "rope_scaling": {"rope_type": "llama3", "factor": 32.0}});
        let new =
            json!({"rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5, "factor": 32.0}});
        for c in [&old, &new] {
            assert_eq!(rope_from_config(c).0, 5e5);
            let s = RopeScaling::from_hf_config(c).unwrap().unwrap();
            assert_eq!(s.factor, 32.0);
            assert_eq!(s.high_freq_factor, RopeScaling::default().high_freq_factor);
        }
        let none = json!({"rope_scaling": {"rope_type": "default"}});
        assert_eq!(RopeScaling::from_hf_config(&none).unwrap(), None);
        assert_eq!(rope_from_config(&none).0, DEFAULT_THETA);
        for bad in [
            json!({"rope_scaling": {"type": "linear", "factor": 2.0}}),
            json!({"rope_scaling": {"rope_type": "llama3"}}),
            json!({"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 4.0}}),
        ] {
            assert!(RopeScaling::from_hf_config(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn divisors_have_the_three_bands() {
        let f = RopeScaling::default().divisors(500000.0, 128);
        assert_eq!(f.len(), 64);
        assert_eq!(f[0], 1.0);
        assert_eq!(f[63], 8.0);
        assert!(f.iter().any(|&x| x > 1.0 && x < 8.0));
    }
}
