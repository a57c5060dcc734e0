//! A Meta checkpoint directory: `params.json`, `consolidated.NN.pth` (one per model-parallel rank),
//! `tokenizer.model`, `checklist.chk`.
use super::layout::{self, Role, Split, Weight};
use super::params::Params;
use super::stream::{FullTensor, Piece};
use crate::formats::pth::PthFile;
use crate::formats::TensorInfo;
use anyhow::{anyhow, bail, Context, Result};
use std::path::{Path, PathBuf};

pub struct MetaDir {
    pub dir: PathBuf,
    pub params: Params,
    pub shards: Vec<PthFile>,
}

/// `consolidated.NN.pth` files of a dir, in rank order; a gap in the numbering is an error.
pub fn shard_paths(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("{}: cannot list", dir.display()))?;
    for e in entries {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(n) = name
            .strip_prefix("consolidated.")
            .and_then(|r| r.strip_suffix(".pth"))
        {
            let idx: usize = n
                .parse()
                .map_err(|_| anyhow!("{}: unexpected shard name {name}", dir.display()))?;
            found.push((idx, e.path()));
        }
    }
    found.sort();
    for (want, (idx, p)) in found.iter().enumerate() {
        if *idx != want {
            bail!(
                "{}: shard consolidated.{want:02}.pth is missing (found {})",
                dir.display(),
                p.display()
            );
        }
    }
    Ok(found.into_iter().map(|(_, p)| p).collect())
}

pub fn shard_name(rank: usize) -> String {
    format!("consolidated.{rank:02}.pth")
}

impl MetaDir {
    pub fn open(dir: &Path) -> Result<Self> {
        let params = Params::read(&dir.join("params.json"))?;
        let paths = shard_paths(dir)?;
        if paths.is_empty() {
            bail!("{}: no consolidated.NN.pth shards", dir.display());
        }
        let shards = paths
            .iter()
            .map(|p| PthFile::open(p))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            dir: dir.to_path_buf(),
            params,
            shards,
        })
    }

    pub fn mp(&self) -> usize {
        self.shards.len()
    }

    /// Tensor names in the order of the first shard.
    pub fn names(&self) -> Vec<String> {
        self.shards[0]
            .tensors()
            .iter()
            .map(|t| t.name.clone())
            .collect()
    }

    fn info(&self, rank: usize, name: &str) -> Result<&TensorInfo> {
        self.shards[rank].get(name).ok_or_else(|| {
            anyhow!(
                "{}: tensor {name} is missing",
                self.shards[rank].path().display()
            )
        })
    }

    /// Which dim `tok_embeddings` is split on: rows for Llama 3 (VocabParallelEmbedding), columns
    /// for Llama 2 (ParallelEmbedding). Read from the shard shapes, since params.json doesn't say.
    pub fn embed_split(&self) -> Result<Split> {
        if self.mp() == 1 {
            return Ok(Split::Rows);
        }
        let t = self.info(0, "tok_embeddings.weight")?;
        Ok(match t.shape.as_slice() {
            [_, d] if *d == self.params.dim => Split::Rows,
            [_, d] if d * self.mp() == self.params.dim => Split::Cols,
            s => bail!(
                "{}: tok_embeddings.weight has shape {s:?}, which fits neither split of dim {} over {} shards",
                self.shards[0].path().display(),
                self.params.dim,
                self.mp()
            ),
        })
    }

    /// Vocabulary size: params.json, or (Llama 2's -1) the embedding shape.
    pub fn vocab(&self) -> Result<usize> {
        if let Some(v) = self.params.vocab() {
            return Ok(v);
        }
        let t = self.info(0, "tok_embeddings.weight")?;
        let rows = *t
            .shape
            .first()
            .ok_or_else(|| anyhow!("tok_embeddings.weight is not 2-D"))?;
        Ok(match self.embed_split()? {
            Split::Rows => rows * self.mp(),
            _ => rows,
        })
    }

    /// The expected weights of this model (Llama 2 files also carry `rope.freqs`).
    pub fn expected(&self) -> Result<Vec<Weight>> {
        let rope = self.shards[0].get("rope.freqs").is_some();
        Ok(layout::meta_weights(
            &self.params,
            self.vocab()?,
            self.embed_split()?,
            rope,
        ))
    }

    /// The split rule and full shape for one name.
    pub fn weight(&self, name: &str) -> Result<Weight> {
        let split = self.embed_split()?;
        self.expected()?
            .into_iter()
            .find(|w| w.name == name)
            .or_else(|| {
                layout::rule_for(name, split).map(|(split, role)| Weight {
                    name: name.to_owned(),
                    full_shape: Vec::new(),
                    split,
                    role,
                })
            })
            .filter(|w| !w.full_shape.is_empty())
            .ok_or_else(|| {
                anyhow!(
                    "{}: {name} is not a weight of this Llama model",
                    self.dir.display()
                )
            })
    }

    /// The tensor whole, as pieces of the shards. With more shards than kv heads, each kv head is
    /// taken from the first rank that holds it (use [`MetaDir::replica_sets`] to check the copies).
    pub fn full(&self, name: &str) -> Result<FullTensor> {
        let w = self.weight(name)?;
        let mp = self.mp();
        let first = self.info(0, name)?;
        let dtype = first.dtype;
        let mut pieces = Vec::new();
        for rank in 0..mp {
            let t = self.info(rank, name)?;
            if t.dtype != dtype {
                bail!(
                    "{}: {name} is {} but {} in shard 0",
                    self.shards[rank].path().display(),
                    t.dtype,
                    dtype
                );
            }
            let want = layout::shard_shape(&w, &self.params, mp);
            if t.shape != want {
                bail!(
                    "{}: {name} has shape {:?}, expected {want:?} for MP {mp}",
                    self.shards[rank].path().display(),
                    t.shape
                );
            }
            let range = layout::shard_range(&w, &self.params, mp, rank);
            let kv_dup = matches!(w.role, Role::Key | Role::Value)
                && pieces.iter().any(|p: &Piece| p.rows == range);
            if w.split == Split::Replicated && rank > 0 || kv_dup {
                continue;
            }
            let cols_full = w.full_shape.get(1).copied().unwrap_or(w.full_shape[0]);
            let rows_full = if w.full_shape.len() > 1 {
                w.full_shape[0]
            } else {
                1
            };
            let (rows, cols) = match w.split {
                Split::Rows => (range, 0..cols_full),
                Split::Cols => (0..rows_full, range),
                Split::Replicated => (0..rows_full, 0..cols_full),
            };
            pieces.push(Piece {
                src: self.shards[rank].source().clone(),
                offset: self.shards[rank].data_offset(t)?,
                rows,
                cols,
            });
        }
        FullTensor::new(name, dtype, w.full_shape.clone(), pieces)
    }

    /// Groups of ranks that must hold byte-identical copies of `name`: every rank for replicated
    /// tensors, the ranks sharing one kv head when there are more shards than kv heads.
    pub fn replica_sets(&self, name: &str) -> Result<Vec<Vec<usize>>> {
        let w = self.weight(name)?;
        let mp = self.mp();
        if w.split == Split::Replicated {
            return Ok(if mp > 1 {
                vec![(0..mp).collect()]
            } else {
                vec![]
            });
        }
        if matches!(w.role, Role::Key | Role::Value) && mp > self.params.kv_heads() {
            let mut sets: Vec<(std::ops::Range<usize>, Vec<usize>)> = Vec::new();
            for r in 0..mp {
                let range = layout::shard_range(&w, &self.params, mp, r);
                match sets.iter_mut().find(|(rg, _)| *rg == range) {
                    Some((_, v)) => v.push(r),
                    None => sets.push((range, vec![r])),
                }
            }
            return Ok(sets
                .into_iter()
                .map(|(_, v)| v)
                .filter(|v| v.len() > 1)
                .collect());
        }
        Ok(vec![])
    }

    /// Compare the copies of a replicated tensor across ranks; Err names the first differing rank.
    pub fn check_replicas(&self, name: &str) -> Result<()> {
        for set in self.replica_sets(name)? {
            let base = self.info(set[0], name)?;
            let a = self.shards[set[0]].bytes(base)?;
            for &r in &set[1..] {
                let t = self.info(r, name)?;
                if self.shards[r].bytes(t)? != a {
                    bail!(
                        "{name} differs between {} and {} (it must be identical in every shard that holds it)",
                        self.shards[set[0]].path().display(),
                        self.shards[r].path().display()
                    );
                }
            }
        }
        Ok(())
    }
}
