//! `llamactl convert --to gguf SRC_DIR DEST.gguf`: gathers the Hugging Face JSON files the GGUF
//! metadata comes from (read from an HF dir, or built in memory from a Meta dir exactly as
//! `convert --to hf` writes them), checks the tokenizer is Llama 3's, then streams the file
//! through `ops::gguf` into `DEST.gguf.part` and renames it when complete.
use crate::checkpoint::hf_config::{self, ModelKind};
use crate::checkpoint::{self, Layout, ModelDir};
use crate::cli::ConvertArgs;
use crate::commands::reporters::{Options as Shown, ProgressReporter};
use crate::formats::{gguf, DType};
use crate::human::human_bytes;
use crate::ops::gguf::{self as export, FileType, HfDocs, Options};
use crate::output::AtomicFile;
use crate::tokenizer::hf_files::{tokenizer_config_json, tokenizer_json};
use crate::tokenizer::{AllowedSpecial, SpecialNames, Tokenizer};
use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The text llama.cpp's converter encodes to recognise a BPE pre-tokenizer, and the sha256 of
/// the ids (Python's `str(list)`) that identifies Llama 3's (`llama-bpe`).
const PRE_CHECK_TEXT: &str = "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u{200d}🌫\u{fe0f} (multiple emojis concatenated) ✅ 🦙🦙 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ ------======= нещо на Български ''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, 'RE you sure? 'M not sure I'll make it, 'D you like some tea? We'Ve a'lL";
const LLAMA_BPE_HASH: &str = "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5";

pub fn run(args: &ConvertArgs, instruct: bool) -> Result<i32> {
    let src = &args.src_dir;
    let dst = &args.dst_dir;
    let file_type = args
        .dtype
        .as_ref()
        .map(|d| FileType::parse(&d.0))
        .transpose()?;
    crate::output::check_file_dst_outside_src(src, dst)?;
    let out = AtomicFile::create(dst, args.force)?;
    let layout = checkpoint::detect(src)?;
    let (docs, tok) = match layout {
        Layout::Meta => meta_docs(src, instruct)?,
        Layout::Hf => hf_docs(src, args.instruct || args.base)?,
    };
    check_llama3_pretokenizer(&tok)?;
    let dir = ModelDir::open(src)?;
    let name = src
        .canonicalize()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_default();
    let opts = Options {
        file_type,
        name,
        pre_tokenizer: "llama-bpe".into(),
    };
    let plan = export::plan(&dir, &docs, &opts)?;
    let kind = if layout == Layout::Meta {
        "Meta"
    } else {
        "Hugging Face"
    };
    write_plan(&plan, out, src, kind, dst)
}

/// `convert --to gguf IN.gguf OUT.gguf --dtype TYPE`: re-quantize an f32/f16/bf16 GGUF file.
pub fn run_from_gguf(args: &ConvertArgs) -> Result<i32> {
    let (src, dst) = (&args.src_dir, &args.dst_dir);
    if !gguf::is_gguf(src) {
        bail!(
            "{}: a file, but not a GGUF file; the source is a model directory or a GGUF file",
            src.display()
        );
    }
    let Some(d) = &args.dtype else {
        bail!(
            "{}: a GGUF source needs --dtype (the type to quantize to)",
            src.display()
        );
    };
    let ft = FileType::parse(&d.0)?;
    crate::output::check_file_dst_outside_src(src, dst)?;
    let file = gguf::GgufFile::open(src)?;
    if let Some(p) = file.problems().first() {
        bail!("{}: {p}", src.display());
    }
    let out = AtomicFile::create(dst, args.force)?;
    let plan = export::plan_from_gguf(&file, ft).with_context(|| format!("{}", src.display()))?;
    write_plan(&plan, out, src, "GGUF", dst)
}

/// Preflight free space, stream the file into `DEST.part`, rename, report.
fn write_plan(
    plan: &export::Plan,
    out: AtomicFile,
    src: &Path,
    kind: &str,
    dst: &Path,
) -> Result<i32> {
    let size = plan.file_size()?;
    crate::util::ensure_free_disk(out.part_path(), size)?;
    eprintln!(
        "converting {} ({kind}) -> {} (GGUF {}, {})",
        src.display(),
        dst.display(),
        plan.file_type.name(),
        human_bytes(size)
    );
    let start = Instant::now();
    let mut progress = ProgressReporter::stderr(Shown::new("progress"));
    let clamped = export::write(plan, out.file(), &progress)
        .with_context(|| format!("{}", out.part_path().display()))?;
    progress.finish();
    let dst = out.commit()?;
    report_clamped(&clamped);
    let secs = start.elapsed().as_secs_f64();
    eprintln!(
        "wrote {} tensors ({}) in {secs:.1}s ({}/s)",
        plan.header.tensors.len(),
        human_bytes(size),
        human_bytes((size as f64 / secs.max(1e-3)) as u64)
    );
    for line in type_summary(plan) {
        eprintln!("{line}");
    }
    println!("{}", dst.display());
    Ok(0)
}

/// The HF files of a Meta checkpoint, as `convert --to hf` would write them.
fn meta_docs(src: &Path, instruct: bool) -> Result<(HfDocs, Tokenizer)> {
    let p = checkpoint::Params::read(&src.join("params.json"))?;
    let vocab = p.vocab().ok_or_else(|| {
        anyhow!(
            "{}: vocab_size -1 marks a Llama 2 checkpoint; GGUF export handles Llama 3 models only",
            src.join("params.json").display()
        )
    })?;
    let model = src.join("tokenizer.model");
    if !model.is_file() {
        bail!(
            "{}: not found; a GGUF file needs the tokenizer",
            model.display()
        );
    }
    let tok = Tokenizer::from_tiktoken_file(&model, SpecialNames::for_meta_dir(src)?)?;
    let kind = ModelKind {
        instruct,
        tied: false,
        dtype: DType::BF16,
    };
    let max_len = hf_config::max_position_embeddings(&p);
    let docs = HfDocs {
        config: hf_config::config_json(&p, vocab, &kind),
        generation: Some(hf_config::generation_config_json(&p, instruct)),
        tokenizer: tokenizer_json(&tok)?,
        tokenizer_config: Some(tokenizer_config_json(&tok, instruct, max_len)?),
        chat_template_files: None,
    };
    eprintln!(
        "{} model (from {})",
        if instruct { "instruct" } else { "base" },
        if instruct {
            "--instruct or the directory name"
        } else {
            "--base or the directory name"
        }
    );
    Ok((docs, tok))
}

fn read_json(path: &Path) -> Result<Option<Value>> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    serde_json::from_str(&text)
        .map(Some)
        .with_context(|| format!("{}: invalid JSON", path.display()))
}

/// The chat template(s) stored beside tokenizer_config.json, where llama.cpp's converter looks:
/// `chat_template.jinja` (a list of `{name, template}` when `additional_chat_templates/*.jinja`
/// exist, `default` first, the others by file name), else `chat_template.json`'s `chat_template`.
fn chat_template_files(src: &Path) -> Result<Option<Value>> {
    let read = |p: &Path| {
        std::fs::read_to_string(p).with_context(|| format!("{}: cannot read", p.display()))
    };
    let jinja = src.join("chat_template.jinja");
    if !jinja.is_file() {
        return Ok(read_json(&src.join("chat_template.json"))?
            .and_then(|doc| doc.get("chat_template").cloned()));
    }
    let default = read(&jinja)?;
    let extra_dir = src.join("additional_chat_templates");
    let mut extra: Vec<PathBuf> = match std::fs::read_dir(&extra_dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "jinja") && p.is_file())
            .collect(),
        Err(_) => Vec::new(),
    };
    if extra.is_empty() {
        return Ok(Some(Value::String(default)));
    }
    extra.sort();
    let mut list = vec![serde_json::json!({"name": "default", "template": default})];
    for p in &extra {
        let name = p.file_stem().unwrap_or_default().to_string_lossy();
        list.push(serde_json::json!({"name": name, "template": read(p)?}));
    }
    Ok(Some(Value::Array(list)))
}

/// The HF files of an HF directory, read as they are.
fn hf_docs(src: &Path, flag_given: bool) -> Result<(HfDocs, Tokenizer)> {
    if flag_given {
        eprintln!(
            "note: --instruct/--base are ignored for a Hugging Face source; its tokenizer_config.json decides"
        );
    }
    let need = |name: &str| -> Result<Value> {
        read_json(&src.join(name))?.ok_or_else(|| {
            anyhow!(
                "{}: not found; a GGUF file needs it",
                src.join(name).display()
            )
        })
    };
    let docs = HfDocs {
        config: need("config.json")?,
        generation: read_json(&src.join("generation_config.json"))?,
        tokenizer: need("tokenizer.json")?,
        tokenizer_config: read_json(&src.join("tokenizer_config.json"))?,
        chat_template_files: chat_template_files(src)?,
    };
    let tok = Tokenizer::from_file(&src.join("tokenizer.json"))?;
    Ok((docs, tok))
}

/// Refuse a tokenizer whose pre-tokenizer llama.cpp would not recognise as Llama 3's: encode the
/// converter's probe text (with the beginning-of-text token) and compare the ids' hash.
fn check_llama3_pretokenizer(tok: &Tokenizer) -> Result<()> {
    let ids = tok
        .encode(PRE_CHECK_TEXT, true, false, AllowedSpecial::None)
        .with_context(|| format!("{}: not a Llama 3 tokenizer", tok.source().display()))?;
    let list: Vec<String> = ids.iter().map(u32::to_string).collect();
    let hash = hex::encode(Sha256::digest(format!("[{}]", list.join(", ")).as_bytes()));
    if hash != LLAMA_BPE_HASH {
        bail!(
            "{}: this tokenizer splits text differently from Llama 3's (pre-tokenizer hash {hash}); \
             only Llama 3 tokenizers (llama.cpp's `llama-bpe`) are supported",
            tok.source().display()
        );
    }
    Ok(())
}

/// How many tensors of each GGML type the file holds and, for every type but the file type's
/// own, why those tensors have it.
fn type_summary(plan: &export::Plan) -> Vec<String> {
    let base = plan.file_type.weight_type();
    let mut counts: Vec<(String, usize)> = Vec::new();
    let mut why: Vec<(String, String, Vec<&str>)> = Vec::new();
    for t in &plan.header.tensors {
        let name = t.ggml_type.name();
        match counts.iter_mut().find(|(n, _)| *n == name) {
            Some((_, c)) => *c += 1,
            None => counts.push((name.clone(), 1)),
        }
        if t.ggml_type == base {
            continue;
        }
        let reason = wider_reason(&t.shape, base, plan.file_type.name());
        match why.iter_mut().find(|(n, r, _)| *n == name && *r == reason) {
            Some((_, _, names)) => names.push(&t.name),
            None => why.push((name, reason, vec![&t.name])),
        }
    }
    counts.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let list: Vec<String> = counts.iter().map(|(n, c)| format!("{c} {n}")).collect();
    let mut lines = vec![format!("tensor types: {}", list.join(", "))];
    for (name, reason, names) in why {
        let shown: Vec<&str> = names.iter().take(3).copied().collect();
        let more = match names.len() {
            n if n > 3 => format!(", and {} more", n - 3),
            _ => String::new(),
        };
        lines.push(format!(
            "  {} {name}: {reason} ({}{more})",
            names.len(),
            shown.join(", ")
        ));
    }
    lines
}

/// Why a tensor of this shape is not of the file type's own tensor type.
fn wider_reason(shape: &[u64], base: gguf::GgmlType, file_type: &str) -> String {
    let cols = shape.last().copied().unwrap_or(1);
    match base.block_size() {
        _ if shape.len() <= 1 => {
            "1-D tensors (norms, rope factors) are F32 in every GGUF file".into()
        }
        Some(b) if !cols.is_multiple_of(b) => format!(
            "rows of {cols} values are not whole {} blocks of {b}",
            base.name()
        ),
        _ => format!("llama-quantize's rule for {file_type} gives these more bits"),
    }
}

fn report_clamped(clamped: &[(String, u64)]) {
    let total: u64 = clamped.iter().map(|(_, n)| n).sum();
    if total == 0 {
        return;
    }
    eprintln!(
        "warning: {total} values were outside the float16 range and were clamped to +/-65504:"
    );
    for (name, n) in clamped.iter().take(10) {
        eprintln!("  {name}: {n}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama3_tokenizer_passes_the_pretokenizer_check() {
        let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/tokenizer.model");
        let tok = Tokenizer::from_tiktoken_file(&model, SpecialNames::Llama3).unwrap();
        check_llama3_pretokenizer(&tok).unwrap();
    }
}
