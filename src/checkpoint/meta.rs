//! A Meta checkpoint directory: `params.json`, `consolidated.NN.pth` (one per model-parallel rank),
//! `tokenizer.model`, `checklist.chk`.
use super::checklist;
use super::layout::{self, Role, Split, Weight};
use super::params::Params;
use super::stream::{FullTensor, Piece};
use super::tensors::Part;
use crate::formats::copy::CHUNK;
use crate::formats::integrity::Expect;
use crate::formats::pth::PthFile;
use crate::formats::TensorInfo;
use anyhow::{anyhow, bail, Context, Result};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

pub struct MetaDir {
    pub dir: PathBuf,
    pub params: Params,
    pub shards: Vec<PthFile>,
}

/// `consolidated.NN.pth` files of a dir by rank; a rank missing below the highest is `None`.
pub fn shards_by_rank(dir: &Path) -> Result<Vec<Option<PathBuf>>> {
    let mut found: BTreeMap<usize, PathBuf> = BTreeMap::new();
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("{}: cannot list", dir.display()))?;
    for e in entries {
        let e = e.with_context(|| format!("{}: cannot list", dir.display()))?;
        let name = e.file_name().to_string_lossy().into_owned();
        let rank = name
            .strip_prefix("consolidated.")
            .and_then(|r| r.strip_suffix(".pth"))
            .and_then(|n| n.parse::<usize>().ok());
        if let Some(rank) = rank {
            found.insert(rank, e.path());
        }
    }
    let n = found.keys().next_back().map_or(0, |&m| m + 1);
    Ok((0..n).map(|i| found.remove(&i)).collect())
}

/// `consolidated.NN.pth` files of a dir, in rank order; a gap in the numbering is an error.
pub fn shard_paths(dir: &Path) -> Result<Vec<PathBuf>> {
    shards_by_rank(dir)?
        .into_iter()
        .enumerate()
        .map(|(rank, p)| {
            p.ok_or_else(|| anyhow!("{}: shard {} is missing", dir.display(), shard_name(rank)))
        })
        .collect()
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

    /// [`MetaDir::open`], then check every byte later read from a shard against its zip CRC-32
    /// and, where `checklist.chk` lists the shard, its md5 (see [`crate::formats::integrity`]);
    /// `stream::finish_checks` gives the verdicts once the work is done.
    pub fn open_checked(dir: &Path) -> Result<Self> {
        let m = Self::open(dir)?;
        let chk = dir.join("checklist.chk");
        let listed: HashMap<String, String> = if chk.exists() {
            let (entries, _) = checklist::read(&chk)?;
            entries.into_iter().map(|e| (e.name, e.md5)).collect()
        } else {
            HashMap::new()
        };
        for s in &m.shards {
            let src = s.source();
            let mut expect = Expect::new(s.path(), src.len(), s.record_checks());
            let name = s
                .path()
                .file_name()
                .map(|n| n.to_string_lossy().into_owned());
            if let Some(md5) = name.and_then(|n| listed.get(&n)) {
                expect = expect.with_md5(src.file(), md5, &chk)?;
            }
            src.check_reads(expect);
        }
        Ok(m)
    }

    /// The md5 `checklist.chk` lists for `name`, if it lists one.
    pub fn listed_md5(&self, name: &str) -> Result<Option<String>> {
        let chk = self.dir.join("checklist.chk");
        if !chk.exists() {
            return Ok(None);
        }
        let (entries, _) = checklist::read(&chk)?;
        Ok(entries.into_iter().find(|e| e.name == name).map(|e| e.md5))
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
    ///
    /// One shard shows no split; then the convention goes with the params.json generation: Llama 2
    /// files say `vocab_size: -1`, and splitting such a model later must use its dim-1 rule.
    pub fn embed_split(&self) -> Result<Split> {
        if self.mp() == 1 {
            return Ok(if self.params.vocab().is_none() {
                Split::Cols
            } else {
                Split::Rows
            });
        }
        let t = self.info(0, Part::Embedding.meta_name())?;
        Ok(match t.shape.as_slice() {
            [_, d] if *d == self.params.dim => Split::Rows,
            [_, d] if d * self.mp() == self.params.dim => Split::Cols,
            s => bail!(
                "{}: {} has shape {s:?}, which fits neither split of dim {} over {} shards",
                self.shards[0].path().display(),
                Part::Embedding.meta_name(),
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
        let t = self.info(0, Part::Embedding.meta_name())?;
        let rows = *t
            .shape
            .first()
            .ok_or_else(|| anyhow!("{} is not 2-D", Part::Embedding.meta_name()))?;
        Ok(match self.embed_split()? {
            Split::Rows => rows * self.mp(),
            _ => rows,
        })
    }

    /// The expected weights of this model (Llama 2 files also carry `rope.freqs`).
    pub fn expected(&self) -> Result<Vec<Weight>> {
        let rope = self.shards[0].get(Part::RopeFreqs.meta_name()).is_some();
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
    /// taken from the first rank that holds it (use `MetaDir::replica_sets` to check the copies).
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
                    "{}: {name} has shape {:?}, expected {want:?} for MP {mp}{}",
                    self.shards[rank].path().display(),
                    t.shape,
                    self.missing_shards_hint(&t.shape, &want)
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
            pieces.push(Piece::plain(
                self.shards[rank].source().clone(),
                self.shards[rank].data_offset(t)?,
                rows,
                cols,
            ));
        }
        FullTensor::new(name, dtype, w.full_shape.clone(), pieces)
    }

    /// Why a shard's shape may not fit: shards that checklist.chk lists but the directory lacks,
    /// or a shape that is a whole fraction of the expected one (the rest of the shards missing).
    fn missing_shards_hint(&self, got: &[usize], want: &[usize]) -> String {
        let listed = checklist::read(&self.dir.join("checklist.chk")).map_or(Vec::new(), |r| r.0);
        let missing: Vec<String> = listed
            .into_iter()
            .map(|e| e.name)
            .filter(|n| n.starts_with("consolidated.") && !self.dir.join(n).exists())
            .collect();
        if !missing.is_empty() {
            return format!(
                "; checklist.chk lists {}, missing from the directory",
                missing.join(", ")
            );
        }
        let ratios: Vec<usize> = got
            .iter()
            .zip(want)
            .filter(|(g, w)| g != w)
            .map(|(&g, &w)| if g > 0 && w % g == 0 { w / g } else { 0 })
            .collect();
        match ratios[..] {
            [k] if k > 1 => format!(
                "; it is 1/{k} of that, as in a checkpoint of {} shards: are shards missing?",
                k * self.mp()
            ),
            _ => String::new(),
        }
    }

    /// Groups of ranks that must hold byte-identical copies of `name`: every rank for replicated
    /// tensors, the ranks sharing one kv head when there are more shards than kv heads.
    fn replica_sets(&self, name: &str) -> Result<Vec<Vec<usize>>> {
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
    ///
    /// Compared with pread in CHUNK blocks rather than through the maps: kv copies of a large
    /// model at MP > n_kv add up to gigabytes, and touched map pages would all count as RSS.
    pub fn check_replicas(&self, name: &str) -> Result<()> {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for set in self.replica_sets(name)? {
            let base = self.info(set[0], name)?;
            for &r in &set[1..] {
                let t = self.info(r, name)?;
                if !self.same_bytes(set[0], base, r, t, &mut a, &mut b)? {
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

    fn same_bytes(
        &self,
        ra: usize,
        ta: &TensorInfo,
        rb: usize,
        tb: &TensorInfo,
        a: &mut Vec<u8>,
        b: &mut Vec<u8>,
    ) -> Result<bool> {
        if ta.nbytes() != tb.nbytes() {
            return Ok(false);
        }
        let (sa, sb) = (&self.shards[ra], &self.shards[rb]);
        if !(ta.is_contiguous() && tb.is_contiguous()) {
            return Ok(sa.bytes(ta)? == sb.bytes(tb)?);
        }
        let (oa, ob) = (sa.data_offset(ta)?, sb.data_offset(tb)?);
        let total = ta.nbytes() as u64;
        let mut done = 0u64;
        while done < total {
            let n = (total - done).min(CHUNK as u64) as usize;
            a.resize(n, 0);
            b.resize(n, 0);
            sa.source().read_exact_at(a, oa + done)?;
            sb.source().read_exact_at(b, ob + done)?;
            if a != b {
                return Ok(false);
            }
            done += n as u64;
        }
        Ok(true)
    }
}
