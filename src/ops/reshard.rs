//! Changing a Meta checkpoint's model-parallel size as a file-to-file operation.
//!
//! Output rank r of MP b holds, for every tensor, the slice `layout::shard_range(w, params, b, r)`
//! of the full tensor along its split dim. The full tensor is never built: [`MetaDir::full`] maps
//! it onto the input shards (de-duplicating kv heads that an input with MP > n_kv_heads repeats),
//! and [`write_region`] copies the output slice straight from those files — contiguous ranges for
//! dim-0 splits, strided row pieces for dim-1 splits — so memory stays at a few buffers per
//! writing thread whatever the model size, and any valid a -> b works, not only multiples.
use crate::checkpoint::checklist::{self, Entry};
use crate::checkpoint::layout::{self, Split, Weight};
use crate::checkpoint::meta::{shard_name, MetaDir};
use crate::checkpoint::stream::{self, write_region, Buffers, CastStats, FullTensor, Region};
use crate::formats::copy::HashingFile;
use crate::formats::pth::{PthWriter, TensorSpec};
use crate::progress::{Reporter, Task};
use crate::util::work_queue;
use anyhow::{anyhow, bail, Context, Result};
use std::collections::HashSet;
use std::io::{self, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// A checked source and a target MP: everything needed to write the output shards.
pub(crate) struct Plan {
    src: MetaDir,
    mp: usize,
    tensors: Vec<Planned>,
}

struct Planned {
    weight: Weight,
    full: FullTensor,
}

impl Plan {
    /// Open `src_dir` and check, before anything is written, that `mp` is valid for its params,
    /// that every shard has the same tensor names, dtypes and the shapes its MP implies, and that
    /// replicated tensors (and repeated kv heads) are byte-identical wherever they occur.
    pub(crate) fn new(src_dir: &Path, mp: usize) -> Result<Self> {
        let src = MetaDir::open_checked(src_dir)?;
        let vocab = src.vocab()?;
        let p = &src.params;
        if !p.is_valid_mp(mp, vocab) {
            let valid: Vec<String> = p.valid_mps(vocab).iter().map(|m| m.to_string()).collect();
            bail!(
                "{}: MP {mp} does not fit this model (n_heads {}, n_kv_heads {}, dim {}, ffn hidden {}, vocab {vocab}); valid MP sizes: {}",
                src_dir.join("params.json").display(),
                p.n_heads,
                p.kv_heads(),
                p.dim,
                p.ffn_hidden(),
                valid.join(", ")
            );
        }
        check_names(&src)?;
        check_against_params(&src)?;
        let mut tensors = Vec::new();
        for name in src.names() {
            let weight = src.weight(&name)?;
            let full = src.full(&name)?;
            src.check_replicas(&name)?;
            tensors.push(Planned { weight, full });
        }
        Ok(Self { src, mp, tensors })
    }

    pub(crate) fn src(&self) -> &MetaDir {
        &self.src
    }

    /// Output MP.
    pub(crate) fn mp(&self) -> usize {
        self.mp
    }

    /// The tensors of output rank `rank`, in the source's order.
    fn specs(&self, rank: usize) -> Vec<TensorSpec> {
        self.tensors
            .iter()
            .map(|t| TensorSpec {
                name: t.full.name.clone(),
                dtype: t.full.dtype,
                shape: self.shard_shape(t, rank),
            })
            .collect()
    }

    fn shard_shape(&self, t: &Planned, rank: usize) -> Vec<usize> {
        let r = self.region(t, rank);
        let mut s = t.full.shape.clone();
        match t.weight.split {
            Split::Rows => s[0] = r.rows.len(),
            Split::Cols => s[1] = r.cols.len(),
            Split::Replicated => {}
        }
        s
    }

    /// Which rectangle of the full tensor output rank `rank` holds.
    fn region(&self, t: &Planned, rank: usize) -> Region<'static> {
        let range = layout::shard_range(&t.weight, &self.src.params, self.mp, rank);
        let mut r = t.full.all();
        match t.weight.split {
            Split::Rows => r.rows = range,
            Split::Cols => r.cols = range,
            Split::Replicated => {}
        }
        r
    }

    /// Tensor bytes in output shard `rank`.
    pub(crate) fn data_bytes(&self, rank: usize) -> u64 {
        self.specs(rank).iter().map(|s| s.nbytes()).sum()
    }

    /// An upper bound on the size of output shard `rank`: the tensor bytes plus the zip records,
    /// pickle and directory around them.
    fn file_bytes_bound(&self, rank: usize) -> u64 {
        self.data_bytes(rank) + 1024 * self.tensors.len() as u64 + (64 << 10)
    }

    /// Write output shard `rank` into `dir`, reporting the bytes written as a task named after
    /// the shard; a set `cancel` (another shard failed) stops it at the next write.
    fn write_shard(
        &self,
        rank: usize,
        dir: &Path,
        bufs: &mut Buffers,
        progress: &dyn Reporter,
        cancel: &AtomicBool,
    ) -> Result<Entry> {
        let name = shard_name(rank);
        let path = dir.join(&name);
        let task = progress.task(&name, Some(self.data_bytes(rank)));
        let file = Tracked {
            inner: HashingFile::create(&path)?,
            done: task.as_ref(),
            cancel,
        };
        let stem = format!("consolidated.{rank:02}");
        let mut w = PthWriter::new(file, &stem, self.specs(rank))?;
        let mut stats = CastStats::default();
        for t in &self.tensors {
            let region = self.region(t, rank);
            w.write_tensor(&mut |out| write_region(&t.full, &region, None, bufs, out, &mut stats))
                .with_context(|| format!("{}: writing", path.display()))?;
        }
        let file = w
            .finish()
            .with_context(|| format!("{}: writing", path.display()))?;
        let md5 = file.inner.finish()?;
        task.finish();
        Ok(Entry { md5, name })
    }

    /// The small files carried over beside the shards: params.json, and tokenizer.model when the
    /// source has one.
    fn small_files(&self) -> Vec<&'static str> {
        let mut names = vec!["params.json"];
        if self.src.dir.join("tokenizer.model").exists() {
            names.push("tokenizer.model");
        }
        names
    }

    /// Bytes the output directory needs at most: every shard's bound and the small files.
    pub(crate) fn bytes_needed(&self) -> Result<u64> {
        let mut need: u64 = (0..self.mp).map(|r| self.file_bytes_bound(r)).sum();
        for name in self.small_files() {
            let p = self.src.dir.join(name);
            need += std::fs::metadata(&p)
                .with_context(|| format!("{}: cannot stat", p.display()))?
                .len();
        }
        Ok(need)
    }

    /// The whole output directory `dir`: every shard ([`Plan::write_shards`]), params.json and
    /// tokenizer.model copied and checked against the source's checklist ([`copy_listed`]), and a
    /// checklist.chk over them all, whose entries are returned. A source without tokenizer.model
    /// gets a note through `progress`.
    pub(crate) fn write(
        &self,
        dir: &Path,
        jobs: usize,
        progress: &dyn Reporter,
    ) -> Result<Vec<Entry>> {
        let mut entries = self.write_shards(dir, jobs, progress)?;
        let small = self.small_files();
        for name in &small {
            entries.push(copy_listed(&self.src, name, dir)?);
        }
        if !small.contains(&"tokenizer.model") {
            progress.message(&format!(
                "note: {} has no tokenizer.model; the output has none either",
                self.src.dir.display()
            ));
        }
        let text = checklist::render(&entries)?;
        let chk = dir.join("checklist.chk");
        std::fs::write(&chk, text).with_context(|| format!("{}: cannot write", chk.display()))?;
        Ok(entries)
    }

    /// Write every output shard into `dir`, `jobs` shards at a time, each thread with its own
    /// buffers, each shard a task of `progress`. On the first failure the other shards stop and
    /// that failure is returned.
    fn write_shards(&self, dir: &Path, jobs: usize, progress: &dyn Reporter) -> Result<Vec<Entry>> {
        let cancel = AtomicBool::new(false);
        let first_err: Mutex<Option<anyhow::Error>> = Mutex::new(None);
        let written = work_queue(
            self.mp,
            jobs,
            |_| Buffers::default(),
            |bufs, rank| match self.write_shard(rank, dir, bufs, progress, &cancel) {
                Ok(entry) => Some(entry),
                Err(e) => {
                    // The first failure is the cause; the shards it cancels fail after it.
                    lock(&first_err).get_or_insert(e);
                    cancel.store(true, Ordering::Relaxed);
                    None
                }
            },
            || cancel.load(Ordering::Relaxed),
        );
        if let Some(e) = lock(&first_err).take() {
            return Err(e);
        }
        // Every source byte was read once; a corrupt one fails here, before any checklist.
        stream::finish_checks(self.tensors.iter().map(|t| &t.full))?;
        written
            .into_iter()
            .enumerate()
            .map(|(r, e)| {
                e.flatten()
                    .ok_or_else(|| anyhow!("shard {} was not written", shard_name(r)))
            })
            .collect()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panicking writer thread already fails the run; the data behind the lock is still usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Every shard must hold the same tensor names as shard 0 and nothing but tensors.
fn check_names(src: &MetaDir) -> Result<()> {
    let first: HashSet<&str> = src.shards[0]
        .tensors()
        .iter()
        .map(|t| t.name.as_str())
        .collect();
    for s in &src.shards {
        if let Some(k) = s.skipped_keys().first() {
            bail!(
                "{}: entry {k:?} is not a tensor; reshard only carries tensors",
                s.path().display()
            );
        }
        let names: HashSet<&str> = s.tensors().iter().map(|t| t.name.as_str()).collect();
        if let Some(extra) = s
            .tensors()
            .iter()
            .find(|t| !first.contains(t.name.as_str()))
        {
            bail!(
                "{}: has tensor {} which {} lacks",
                s.path().display(),
                extra.name,
                src.shards[0].path().display()
            );
        }
        if let Some(missing) = src.shards[0]
            .tensors()
            .iter()
            .find(|t| !names.contains(t.name.as_str()))
        {
            bail!("{}: tensor {} is missing", s.path().display(), missing.name);
        }
    }
    Ok(())
}

/// The shards must hold exactly the weights params.json describes: a missing layer (or an empty
/// state dict) would otherwise reshard into a model that cannot load.
fn check_against_params(src: &MetaDir) -> Result<()> {
    let expected = src.expected()?;
    let names: HashSet<String> = src.names().into_iter().collect();
    let shard0 = src.shards[0].path().display();
    let layers = src.params.n_layers;
    if let Some(w) = expected.iter().find(|w| !names.contains(&w.name)) {
        bail!(
            "{shard0}: tensor {} is missing (params.json describes {layers} layers; the shard holds {} tensors)",
            w.name,
            names.len()
        );
    }
    let known: HashSet<&str> = expected.iter().map(|w| w.name.as_str()).collect();
    if let Some(n) = src.names().iter().find(|n| !known.contains(n.as_str())) {
        bail!("{shard0}: tensor {n} is not a weight of the model params.json describes ({layers} layers)");
    }
    Ok(())
}

/// [`copy_hashed`] a small file of the source dir, and refuse it when it does not match what the
/// source's checklist.chk lists for it (the output's checklist must not bless changed bytes).
fn copy_listed(src: &MetaDir, name: &str, dir: &Path) -> Result<Entry> {
    let from = src.dir.join(name);
    let entry = copy_hashed(&from, dir, name)?;
    if let Some(want) = src.listed_md5(name)? {
        if want != entry.md5 {
            return Err(crate::error::check_failed(format!(
                "{}: md5 {} does not match {} (checklist.chk): the file is corrupt or was changed",
                from.display(),
                entry.md5,
                want
            )));
        }
    }
    Ok(entry)
}

/// Copy `src` (following symlinks) to `dir/name`, hashing while copying.
fn copy_hashed(src: &Path, dir: &Path, name: &str) -> Result<Entry> {
    let mut from =
        std::fs::File::open(src).with_context(|| format!("{}: cannot open", src.display()))?;
    let to = dir.join(name);
    let mut out = HashingFile::create(&to)?;
    io::copy(&mut from, &mut out)
        .with_context(|| format!("{} -> {}: cannot copy", src.display(), to.display()))?;
    Ok(Entry {
        md5: out.finish()?,
        name: name.to_owned(),
    })
}

/// Counts bytes for progress and turns a cancellation into a write error.
struct Tracked<'a, W: Write> {
    inner: W,
    done: &'a dyn Task,
    cancel: &'a AtomicBool,
}

impl<W: Write> Write for Tracked<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.cancel.load(Ordering::Relaxed) {
            return Err(io::Error::other("stopped: another shard failed"));
        }
        let n = self.inner.write(buf)?;
        self.done.advance(n as u64);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}
