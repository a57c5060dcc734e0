//! The models llamactl knows: where each comes from, the folder it lands in, how many shards it has,
//! and what is present locally.
//!
//! Local state is judged from files only. A model folder is *verified* when its
//! `.llamactl-verified.json` marker (written by `download` after every file passed its md5 check)
//! lists each file of `checklist.chk` with the md5 that checklist names, and each such file still has
//! the size and modification time recorded in the marker. Anything else that is complete is
//! *present* (unverified); `llamactl verify` can then check it the slow way.
use anyhow::Result;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::UNIX_EPOCH;

/// Where a model's files come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Meta's emailed signed URL, `*` replaced by `{folder}/{file}` (download.sh's scheme).
    MetaSignedUrl { remote_folder: &'static str },
    /// Only from the Hugging Face Hub; the Meta files live under `original/` in the repo.
    HuggingFace,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Model {
    /// The name users type (case-insensitive), e.g. `8B-instruct`, `Llama3.1-405B:bf16-mp16`.
    pub name: &'static str,
    /// llama-models' descriptor (`Llama-3-8B-Instruct`, `Llama3.1-405B:bf16-mp16`): what Meta's
    /// `llama` CLI calls the model and, with `:` as `-`, its folder under `checkpoints/`.
    pub descriptor: &'static str,
    pub family: &'static str,
    pub source: Source,
    /// The Hugging Face repository holding the same weights.
    pub hf_repo: &'static str,
    /// Folder under the download directory (the one Meta's downloads create).
    pub local_folder: &'static str,
    /// Model-parallel size: number of `consolidated.NN.pth` files.
    pub shards: usize,
    /// The fp8 release: FFN weights stored as float8_e4m3fn, with one `fp8_scales_{rank}.pt` per shard.
    pub fp8: bool,
    /// Approximate total bytes of the shards, for disk-space estimates and the listing.
    pub approx_bytes: u64,
}

const GB: u64 = 1_000_000_000;
const LLAMA3_8B: u64 = 16_060 * GB / 1000;
const LLAMA3_70B: u64 = 141_100 * GB / 1000;
/// Meta's per-shard sizes of the 405B releases (llama-models `sku_list.py`), times the shard count.
const LLAMA31_405B_MP8: u64 = 8 * 101_470_976_045;
const LLAMA31_405B_MP16: u64 = 16 * 51_268_302_389;
const LLAMA31_405B_FP8: u64 = 8 * 60_903_742_309;

/// A Llama 3 model from download.sh's list: a Hub model that Meta's signed URL also serves.
const fn signed(
    name: &'static str,
    descriptor: &'static str,
    remote_folder: &'static str,
    hf_repo: &'static str,
    local_folder: &'static str,
    shards: usize,
    approx_bytes: u64,
) -> Model {
    Model {
        descriptor,
        source: Source::MetaSignedUrl { remote_folder },
        ..hub(name, "Llama 3", hf_repo, local_folder, shards, approx_bytes)
    }
}

/// A later release: `local_folder` is the folder Meta's download for it creates.
const fn hub(
    name: &'static str,
    family: &'static str,
    hf_repo: &'static str,
    local_folder: &'static str,
    shards: usize,
    approx_bytes: u64,
) -> Model {
    Model {
        name,
        descriptor: name,
        family,
        source: Source::HuggingFace,
        hf_repo,
        local_folder,
        shards,
        fp8: false,
        approx_bytes,
    }
}

const fn fp8(m: Model) -> Model {
    Model { fp8: true, ..m }
}

/// Every known Llama 3.x text model. The first four are what download.sh offers for Llama 3; names
/// and folders of the later ones are llama-models' (`sku_list.py`: descriptor and download folder).
pub(crate) const MODELS: &[Model] = &[
    signed(
        "8B",
        "Llama-3-8B",
        "8b_pre_trained",
        "meta-llama/Meta-Llama-3-8B",
        "Meta-Llama-3-8B",
        1,
        LLAMA3_8B,
    ),
    signed(
        "8B-instruct",
        "Llama-3-8B-Instruct",
        "8b_instruction_tuned",
        "meta-llama/Meta-Llama-3-8B-Instruct",
        "Meta-Llama-3-8B-Instruct",
        1,
        LLAMA3_8B,
    ),
    signed(
        "70B",
        "Llama-3-70B",
        "70b_pre_trained",
        "meta-llama/Meta-Llama-3-70B",
        "Meta-Llama-3-70B",
        8,
        LLAMA3_70B,
    ),
    signed(
        "70B-instruct",
        "Llama-3-70B-Instruct",
        "70b_instruction_tuned",
        "meta-llama/Meta-Llama-3-70B-Instruct",
        "Meta-Llama-3-70B-Instruct",
        8,
        LLAMA3_70B,
    ),
    hub(
        "Llama3.1-8B",
        "Llama 3.1",
        "meta-llama/Llama-3.1-8B",
        "Llama-3.1-8B",
        1,
        LLAMA3_8B,
    ),
    hub(
        "Llama3.1-8B-Instruct",
        "Llama 3.1",
        "meta-llama/Llama-3.1-8B-Instruct",
        "Llama-3.1-8B-Instruct",
        1,
        LLAMA3_8B,
    ),
    hub(
        "Llama3.1-70B",
        "Llama 3.1",
        "meta-llama/Llama-3.1-70B",
        "Llama-3.1-70B",
        8,
        LLAMA3_70B,
    ),
    hub(
        "Llama3.1-70B-Instruct",
        "Llama 3.1",
        "meta-llama/Llama-3.1-70B-Instruct",
        "Llama-3.1-70B-Instruct",
        8,
        LLAMA3_70B,
    ),
    // 405B: the fp8 release is the default variant; bf16 comes as MP 8 and as MP 16.
    fp8(hub(
        "Llama3.1-405B",
        "Llama 3.1",
        "meta-llama/Llama-3.1-405B-FP8",
        "Llama-3.1-405B",
        8,
        LLAMA31_405B_FP8,
    )),
    hub(
        "Llama3.1-405B:bf16-mp8",
        "Llama 3.1",
        "meta-llama/Llama-3.1-405B",
        "Llama-3.1-405B-MP8",
        8,
        LLAMA31_405B_MP8,
    ),
    hub(
        "Llama3.1-405B:bf16-mp16",
        "Llama 3.1",
        "meta-llama/Llama-3.1-405B",
        "Llama-3.1-405B-MP16",
        16,
        LLAMA31_405B_MP16,
    ),
    fp8(hub(
        "Llama3.1-405B-Instruct",
        "Llama 3.1",
        "meta-llama/Llama-3.1-405B-Instruct-FP8",
        "Llama-3.1-405B-Instruct",
        8,
        LLAMA31_405B_FP8,
    )),
    hub(
        "Llama3.1-405B-Instruct:bf16-mp8",
        "Llama 3.1",
        "meta-llama/Llama-3.1-405B-Instruct",
        "Llama-3.1-405B-Instruct-MP8",
        8,
        LLAMA31_405B_MP8,
    ),
    hub(
        "Llama3.1-405B-Instruct:bf16-mp16",
        "Llama 3.1",
        "meta-llama/Llama-3.1-405B-Instruct",
        "Llama-3.1-405B-Instruct-MP16",
        16,
        LLAMA31_405B_MP16,
    ),
    hub(
        "Llama3.2-1B",
        "Llama 3.2",
        "meta-llama/Llama-3.2-1B",
        "Llama-3.2-1B",
        1,
        2_470 * GB / 1000,
    ),
    hub(
        "Llama3.2-1B-Instruct",
        "Llama 3.2",
        "meta-llama/Llama-3.2-1B-Instruct",
        "Llama-3.2-1B-Instruct",
        1,
        2_470 * GB / 1000,
    ),
    hub(
        "Llama3.2-3B",
        "Llama 3.2",
        "meta-llama/Llama-3.2-3B",
        "Llama-3.2-3B",
        1,
        6_430 * GB / 1000,
    ),
    hub(
        "Llama3.2-3B-Instruct",
        "Llama 3.2",
        "meta-llama/Llama-3.2-3B-Instruct",
        "Llama-3.2-3B-Instruct",
        1,
        6_430 * GB / 1000,
    ),
    hub(
        "Llama3.3-70B-Instruct",
        "Llama 3.3",
        "meta-llama/Llama-3.3-70B-Instruct",
        "Llama-3.3-70B-Instruct",
        8,
        LLAMA3_70B,
    ),
];

/// Look a model up by name, ignoring case.
pub(crate) fn find(name: &str) -> Option<&'static Model> {
    let name = name.trim();
    MODELS.iter().find(|m| m.name.eq_ignore_ascii_case(name))
}

/// Look a model up by name or descriptor (either spelling of its store folder), ignoring case.
pub(crate) fn find_any(name: &str) -> Option<&'static Model> {
    let name = name.trim();
    find(name).or_else(|| {
        MODELS.iter().find(|m| {
            m.descriptor.eq_ignore_ascii_case(name) || m.store_folder().eq_ignore_ascii_case(name)
        })
    })
}

/// The model whose store folder is `folder` (exact, as Meta's CLI names it).
pub(crate) fn by_store_folder(folder: &str) -> Option<&'static Model> {
    MODELS.iter().find(|m| m.store_folder() == folder)
}

/// The models a Meta signed URL can fetch (download.sh's list, in its order).
pub(crate) fn signed_url_models() -> impl Iterator<Item = &'static Model> {
    MODELS
        .iter()
        .filter(|m| matches!(m.source, Source::MetaSignedUrl { .. }))
}

/// Files at the top of a download directory.
pub(crate) const TOP_LEVEL_FILES: [&str; 2] = ["LICENSE", "USE_POLICY"];

/// Name of the marker a verified download leaves in a model folder.
const VERIFIED_MARKER: &str = ".llamactl-verified.json";

impl Model {
    /// Its folder under Meta's `checkpoints/` dir: the descriptor with `:` as `-` (llama-stack's
    /// `model_local_dir`).
    pub fn store_folder(&self) -> String {
        self.descriptor.replace(':', "-")
    }

    /// Shard file names: `consolidated.00.pth` ….
    fn shard_files(&self) -> Vec<String> {
        (0..self.shards)
            .map(|i| format!("consolidated.{i:02}.pth"))
            .collect()
    }

    /// Every file of the model folder, checklist last (download fetches it first on its own).
    pub fn files(&self) -> Vec<String> {
        let mut v = self.shard_files();
        if self.fp8 {
            v.extend((0..self.shards).map(crate::checkpoint::fp8::scales_name));
        }
        v.extend(["params.json", "tokenizer.model", "checklist.chk"].map(String::from));
        v
    }

    /// The remote folder for signed-URL downloads, if this model has one.
    pub fn remote_folder(&self) -> Option<&'static str> {
        match self.source {
            Source::MetaSignedUrl { remote_folder } => Some(remote_folder),
            Source::HuggingFace => None,
        }
    }

    /// Where the files come from, in words.
    pub fn source_text(&self) -> String {
        match self.source {
            Source::MetaSignedUrl { remote_folder } => {
                format!("meta-url:{remote_folder} | hf:{}", self.hf_repo)
            }
            Source::HuggingFace => format!("hf:{} (original/)", self.hf_repo),
        }
    }
}

/// `checklist.chk` as (file name → lower-case md5). Any unusable line (not md5sum syntax, or an
/// absolute / `..` name) makes the whole checklist untrusted: an error page saved under that name
/// must never pass as a checklist.
pub(crate) fn parse_checklist(text: &str) -> Result<BTreeMap<String, String>> {
    let (entries, bad) = crate::checkpoint::checklist::parse(text);
    if let Some(b) = bad.first() {
        anyhow::bail!("line {}: {}", b.line, b.reason);
    }
    if entries.is_empty() {
        anyhow::bail!("no entries");
    }
    Ok(entries.into_iter().map(|e| (e.name, e.md5)).collect())
}

/// One file as recorded in the verified marker.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct VerifiedFile {
    pub md5: String,
    size: u64,
    mtime_ns: u128,
}

impl VerifiedFile {
    /// Record `path` as having `md5` (checked by the caller).
    pub(crate) fn of(path: &Path, md5: &str) -> std::io::Result<Self> {
        let meta = std::fs::metadata(path)?;
        Ok(Self {
            md5: md5.to_ascii_lowercase(),
            size: meta.len(),
            mtime_ns: mtime_ns(&meta),
        })
    }

    /// Whether `path` still looks like the file that was verified.
    pub(crate) fn matches(&self, path: &Path) -> bool {
        std::fs::metadata(path)
            .map(|m| m.len() == self.size && mtime_ns(&m) == self.mtime_ns)
            .unwrap_or(false)
    }
}

fn mtime_ns(meta: &std::fs::Metadata) -> u128 {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// Read a model folder's verified marker (empty when absent or unreadable).
pub(crate) fn read_marker(folder: &Path) -> BTreeMap<String, VerifiedFile> {
    std::fs::read_to_string(folder.join(VERIFIED_MARKER))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default()
}

/// Write a model folder's verified marker atomically.
pub(crate) fn write_marker(folder: &Path, files: &BTreeMap<String, VerifiedFile>) -> Result<()> {
    let text = serde_json::to_string_pretty(files)?;
    crate::output::write_atomic(&folder.join(VERIFIED_MARKER), text.as_bytes())
}

/// What is on disk for one model.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub(crate) struct LocalStatus {
    /// "absent", "partial", "present" or "verified".
    pub state: &'static str,
    pub files_present: usize,
    pub files_expected: usize,
    /// Bytes of the model's files on disk (complete files and `.part` files).
    pub bytes_on_disk: u64,
}

/// Look at `dir/<local_folder>` and say what is there.
pub(crate) fn local_status(model: &Model, dir: &Path) -> LocalStatus {
    folder_status(model, &dir.join(model.local_folder))
}

/// Say what of `model` is in `folder`.
pub(crate) fn folder_status(model: &Model, folder: &Path) -> LocalStatus {
    let files = model.files();
    let mut present = 0;
    let mut bytes = 0;
    for f in &files {
        let p = folder.join(f);
        if let Ok(m) = std::fs::metadata(&p) {
            present += 1;
            bytes += m.len();
        } else if let Ok(m) = std::fs::metadata(folder.join(format!("{f}.part"))) {
            bytes += m.len();
        }
    }
    let state = if present == 0 && bytes == 0 {
        "absent"
    } else if present < files.len() {
        "partial"
    } else if is_verified(folder) {
        "verified"
    } else {
        "present"
    };
    LocalStatus {
        state,
        files_present: present,
        files_expected: files.len(),
        bytes_on_disk: bytes,
    }
}

/// `verified` (see [`is_verified`]), `changed` (a marker exists but a file or the checklist
/// changed since) or `never` (no marker).
pub(crate) fn verified_state(folder: &Path) -> &'static str {
    if !folder.join(VERIFIED_MARKER).exists() {
        "never"
    } else if is_verified(folder) {
        "verified"
    } else {
        "changed"
    }
}

/// The marker covers every checklist entry with the checklist's md5 and unchanged files.
pub(crate) fn is_verified(folder: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(folder.join("checklist.chk")) else {
        return false;
    };
    let Ok(list) = parse_checklist(&text) else {
        return false;
    };
    let marker = read_marker(folder);
    list.iter().all(|(name, md5)| {
        marker
            .get(name)
            .is_some_and(|v| &v.md5 == md5 && v.matches(&folder.join(name)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_files() {
        assert_eq!(
            find("70b-INSTRUCT").unwrap().local_folder,
            "Meta-Llama-3-70B-Instruct"
        );
        assert!(find("13B").is_none());
        let names: Vec<_> = signed_url_models().map(|m| m.name).collect();
        assert_eq!(names, ["8B", "8B-instruct", "70B", "70B-instruct"]);
        let f = find("70B").unwrap().files();
        assert_eq!(f.len(), 11);
        assert_eq!(f[7], "consolidated.07.pth");
        assert!(find("Llama3.2-1B").unwrap().remote_folder().is_none());
    }

    #[test]
    fn every_llama3x_text_release_with_meta_folders() {
        let fp8 = find("llama3.1-405b").unwrap();
        assert!(fp8.fp8);
        assert_eq!((fp8.shards, fp8.local_folder), (8, "Llama-3.1-405B"));
        let files = fp8.files();
        assert_eq!(files.len(), 8 + 8 + 3);
        assert!(files.contains(&"fp8_scales_7.pt".to_string()));
        for (name, folder, mp) in [
            ("Llama3.1-405B:bf16-mp8", "Llama-3.1-405B-MP8", 8),
            ("Llama3.1-405B:bf16-mp16", "Llama-3.1-405B-MP16", 16),
            ("Llama3.1-405B-Instruct", "Llama-3.1-405B-Instruct", 8),
            (
                "Llama3.1-405B-Instruct:bf16-mp16",
                "Llama-3.1-405B-Instruct-MP16",
                16,
            ),
            ("Llama3.2-1B-Instruct", "Llama-3.2-1B-Instruct", 1),
            ("Llama3.2-3B-Instruct", "Llama-3.2-3B-Instruct", 1),
        ] {
            let m = find(name).unwrap();
            assert_eq!((m.local_folder, m.shards), (folder, mp), "{name}");
            assert_eq!(m.files().len(), mp * (1 + usize::from(m.fp8)) + 3);
        }
        let mut names: Vec<_> = MODELS.iter().map(|m| m.name.to_ascii_lowercase()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), MODELS.len(), "names are unique ignoring case");
    }

    #[test]
    fn fp8_folder_needs_its_scales() {
        let d = tempfile::tempdir().unwrap();
        let m = find("Llama3.1-405B-Instruct").unwrap();
        let folder = d.path().join(m.local_folder);
        std::fs::create_dir(&folder).unwrap();
        for f in m.files().iter().filter(|f| !f.starts_with("fp8_scales_")) {
            std::fs::write(folder.join(f), b"x").unwrap();
        }
        let st = local_status(m, d.path());
        assert_eq!(
            (st.state, st.files_present, st.files_expected),
            ("partial", 11, 19)
        );
        for r in 0..8 {
            std::fs::write(folder.join(format!("fp8_scales_{r}.pt")), b"x").unwrap();
        }
        assert_eq!(local_status(m, d.path()).state, "present");
    }

    #[test]
    fn checklist_parsing() {
        let t = "0123456789abcdef0123456789ABCDEF  consolidated.00.pth\r\nfedcba9876543210fedcba9876543210 *params.json\n\n";
        let m = parse_checklist(t).unwrap();
        assert_eq!(m["consolidated.00.pth"], "0123456789abcdef0123456789abcdef");
        assert!(m.contains_key("params.json"));
        assert!(parse_checklist("<html>").is_err());
        assert!(parse_checklist("").is_err());
    }

    #[test]
    fn verified_marker_tracks_changes() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("params.json");
        std::fs::write(&f, b"{}").unwrap();
        let md5 = "99914b932bd37a50b983c5e7c90ae93b";
        std::fs::write(
            d.path().join("checklist.chk"),
            format!("{md5}  params.json\n"),
        )
        .unwrap();
        assert!(!is_verified(d.path()));
        let mut m = BTreeMap::new();
        m.insert(
            "params.json".to_string(),
            VerifiedFile::of(&f, md5).unwrap(),
        );
        write_marker(d.path(), &m).unwrap();
        assert!(is_verified(d.path()));
        std::fs::write(&f, b"{\"a\":1}").unwrap();
        assert!(!is_verified(d.path()));
    }
}
