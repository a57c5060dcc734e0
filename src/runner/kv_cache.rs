//! The per-layer key/value cache, allocated once for `max_batch × max_seq` like Meta's `cache_k` /
//! `cache_v`, and written in place: a decode step copies one position per layer, never the history.
use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};

pub(crate) struct KvCache {
    /// Per layer: keys and values, each [max_batch, n_kv_heads, max_seq, head_dim].
    layers: Vec<(Tensor, Tensor)>,
    max_batch: usize,
    max_seq: usize,
}

impl KvCache {
    pub(crate) fn new(
        n_layers: usize,
        max_batch: usize,
        n_kv_heads: usize,
        max_seq: usize,
        head_dim: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<KvCache> {
        let shape = (max_batch, n_kv_heads, max_seq, head_dim);
        let layers = (0..n_layers)
            .map(|_| {
                Ok((
                    Tensor::zeros(shape, dtype, device)?,
                    Tensor::zeros(shape, dtype, device)?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(KvCache {
            layers,
            max_batch,
            max_seq,
        })
    }

    pub(crate) fn max_batch(&self) -> usize {
        self.max_batch
    }
    pub(crate) fn max_seq(&self) -> usize {
        self.max_seq
    }

    /// Bytes held by the cache (all layers, keys and values).
    pub(crate) fn bytes(&self) -> usize {
        self.layers
            .iter()
            .map(|(k, v)| (k.elem_count() + v.elem_count()) * k.dtype().size_in_bytes())
            .sum()
    }

    /// Store `k`, `v` ([b, n_kv, t, hd]) at positions `start_pos..start_pos + t` of the first `b`
    /// batch rows of `layer`, and return views of everything cached so far, [b, n_kv, start_pos + t, hd].
    /// Older positions are whatever earlier calls wrote, so callers replay positions in order.
    pub(crate) fn append(
        &mut self,
        layer: usize,
        k: &Tensor,
        v: &Tensor,
        start_pos: usize,
    ) -> Result<(Tensor, Tensor)> {
        let (b, _, t, _) = k.dims4()?;
        if b > self.max_batch {
            bail!(
                "batch of {b} exceeds the cache's max batch size {}",
                self.max_batch
            );
        }
        if start_pos + t > self.max_seq {
            bail!(
                "positions up to {} exceed the cache's max sequence length {}",
                start_pos + t,
                self.max_seq
            );
        }
        let Some((ck, cv)) = self.layers.get(layer) else {
            bail!("no cache for layer {layer}");
        };
        // Narrowing the batch dim keeps the view contiguous, which slice_set needs; it writes into
        // the shared storage.
        let (ck, cv) = (ck.narrow(0, 0, b)?, cv.narrow(0, 0, b)?);
        ck.slice_set(&k.contiguous()?, 2, start_pos)?;
        cv.slice_set(&v.contiguous()?, 2, start_pos)?;
        Ok((
            ck.narrow(2, 0, start_pos + t)?,
            cv.narrow(2, 0, start_pos + t)?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_in_place_and_returns_the_prefix() {
        let dev = Device::Cpu;
        let mut c = KvCache::new(1, 3, 2, 8, 4, DType::F32, &dev).unwrap();
        let k = Tensor::ones((2, 2, 3, 4), DType::F32, &dev).unwrap();
        let (keys, _) = c.append(0, &k, &k, 0).unwrap();
        assert_eq!(keys.dims(), &[2, 2, 3, 4]);
        let k2 = (Tensor::ones((2, 2, 1, 4), DType::F32, &dev).unwrap() * 2.0).unwrap();
        let (keys, vals) = c.append(0, &k2, &k2, 3).unwrap();
        assert_eq!(keys.dims(), &[2, 2, 4, 4]);
        let s: f32 = keys.sum_all().unwrap().to_scalar().unwrap();
        assert_eq!(s, 2.0 * 2.0 * (3.0 * 4.0 + 2.0 * 4.0));
        let sv: f32 = vals.sum_all().unwrap().to_scalar().unwrap();
        assert_eq!(s, sv);
        // The unused third batch row stayed zero.
        let (full, _) = c.layers[0].clone();
        let row2: f32 = full
            .narrow(0, 2, 1)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar()
            .unwrap();
        assert_eq!(row2, 0.0);
        assert!(c.append(0, &k2, &k2, 8).is_err());
        assert!(c
            .append(
                0,
                &Tensor::ones((4, 2, 1, 4), DType::F32, &dev).unwrap(),
                &k2,
                0
            )
            .is_err());
        assert_eq!(c.bytes(), 2 * 3 * 2 * 8 * 4 * 4);
    }
}
