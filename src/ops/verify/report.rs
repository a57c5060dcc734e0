//! The verify report: problems by kind, files, the table of checks, per-tensor values.
use serde::Serialize;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Kinds of problems, as they appear in the JSON report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Kind {
    /// checklist.chk is absent from a Meta directory.
    NoChecklist,
    /// A checklist line that is malformed or names an unsafe path (never followed).
    BadChecklistLine,
    Md5Mismatch,
    /// Listed in checklist.chk, absent from the directory.
    MissingFile,
    /// Present in the directory, absent from checklist.chk.
    UnlistedFile,
    /// An I/O error while reading a file.
    Unreadable,
    InvalidParams,
    /// params.json describes another model than the shards hold (the dims of both are listed).
    ParamsMismatch,
    InvalidConfig,
    /// The shard count is not a model-parallel size these params allow.
    InvalidMp,
    MissingShard,
    /// A shard that cannot be opened (truncated, not a checkpoint, ...).
    CorruptShard,
    /// A safetensors file that exists but no index entry refers to.
    DanglingShard,
    MissingTensor,
    UnexpectedTensor,
    WrongShape,
    WrongDtype,
    /// The same tensor in two files.
    DuplicateTensor,
    /// Copies of a replicated tensor that differ between shards.
    ReplicaMismatch,
    /// tokenizer.model or tokenizer.json does not parse.
    InvalidTokenizer,
    VocabMismatch,
    /// config.json's bos/eos token id is not a token of tokenizer.json.
    MissingSpecialToken,
    /// tokenizer_config.json does not parse.
    InvalidTokenizerConfig,
    /// tokenizer_config.json's chat_template does not compile.
    InvalidChatTemplate,
    InvalidIndex,
    /// A tensor listed more than once in the index.
    IndexDuplicate,
    /// A stored tensor the index does not list.
    IndexUnlistedTensor,
    /// The index names a file that does not hold the tensor.
    IndexWrongFile,
    /// The index's metadata.total_size is not the sum of the tensors' bytes.
    IndexTotalSize,
    /// fp8 weights without their `fp8_scales_{rank}.pt` beside the shard.
    MissingFp8Scales,
    /// A scales file that does not open, lacks a key, or has a vector of the wrong type or length.
    InvalidFp8Scales,
    /// NaN or Inf values (--deep).
    NonFinite,
    /// A tensor that could not be scanned (--deep).
    Unscannable,
}

impl Kind {
    pub(crate) fn as_str(self) -> String {
        serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    }
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Problem {
    pub kind: Kind,
    pub detail: String,
    /// The file inside the directory the problem is about, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tensor: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum FileState {
    Ok,
    Mismatch,
    Missing,
    Unlisted,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct FileStatus {
    pub name: String,
    pub status: FileState,
    /// The digest computed here (None when the file was not hashed).
    pub md5: Option<String>,
    /// The digest checklist.chk gives (None for unlisted files).
    pub expected: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum CheckState {
    Ok,
    Failed,
    Skipped,
}

/// One line of the "what was checked" table.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Check {
    pub name: &'static str,
    pub status: CheckState,
    pub detail: String,
}

/// Per-tensor values (--deep). min/max/mean/std are over the finite values (None when there are
/// none); std is the population standard deviation.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct TensorReport {
    pub file: String,
    pub name: String,
    pub dtype: String,
    pub shape: Vec<usize>,
    pub nan: u64,
    pub inf: u64,
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub mean: Option<f64>,
    pub std: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Report {
    pub ok: bool,
    pub format: &'static str,
    pub dir: PathBuf,
    pub checks: Vec<Check>,
    pub files: Vec<FileStatus>,
    pub problems: Vec<Problem>,
    pub tensors: Vec<TensorReport>,
    /// Bytes hashed by the md5 pass and scanned by the deep pass.
    pub hashed_bytes: u64,
    pub scanned_bytes: u64,
}

impl Report {
    /// An empty report (not ok until the checks say so) of `format` ("meta", "hf", "gguf").
    pub(super) fn new(format: &'static str, dir: &Path) -> Self {
        Report {
            ok: false,
            format,
            dir: dir.to_path_buf(),
            checks: Vec::new(),
            files: Vec::new(),
            problems: Vec::new(),
            tensors: Vec::new(),
            hashed_bytes: 0,
            scanned_bytes: 0,
        }
    }

    pub(super) fn problem(
        &mut self,
        kind: Kind,
        file: Option<&str>,
        tensor: Option<&str>,
        detail: String,
    ) {
        self.problems.push(Problem {
            kind,
            detail,
            file: file.map(str::to_owned),
            tensor: tensor.map(str::to_owned),
        });
    }

    pub(super) fn check(&mut self, name: &'static str, status: CheckState, detail: String) {
        self.checks.push(Check {
            name,
            status,
            detail,
        });
    }

    /// Record a check as failed when problems were added since `mark`, ok otherwise.
    pub(super) fn settle(&mut self, name: &'static str, mark: usize, ok_detail: String) {
        let n = self.problems.len() - mark;
        if n == 0 {
            self.check(name, CheckState::Ok, ok_detail);
        } else {
            let kinds: BTreeSet<String> = self.problems[mark..]
                .iter()
                .map(|p| p.kind.as_str())
                .collect();
            let kinds: Vec<String> = kinds.into_iter().collect();
            self.check(
                name,
                CheckState::Failed,
                format!(
                    "{n} problem{} ({})",
                    if n == 1 { "" } else { "s" },
                    kinds.join(", ")
                ),
            );
        }
    }
}
