//! `llamactl show MODEL [--json]`: one model in detail (`store::describe`), resolved from a
//! catalog name, descriptor, Hub repo id or path (`store::resolve`).
use crate::cli::ShowArgs;
use crate::human::human_bytes;
use crate::store::{describe, resolve};
use anyhow::Result;
use serde_json::Value;

pub(crate) fn run(args: &ShowArgs) -> Result<i32> {
    let path = resolve::model_path(&args.model, resolve::Want::Any)?;
    let mut doc = describe::describe(&path)?;
    doc["model"] = Value::String(args.model.display().to_string());
    if args.json {
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        print(&doc);
    }
    Ok(0)
}

fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn token(v: &Value) -> String {
    format!("{} {}", s(&v["id"]), s(&v["text"]))
}

fn row(k: &str, v: String) {
    println!("{k:<14}{v}");
}

fn print(d: &Value) {
    row("model", s(&d["model"]));
    row("path", s(&d["path"]));
    let mp = match &d["mp"] {
        Value::Null => String::new(),
        v => format!(", MP {v}"),
    };
    row("format", format!("{}{mp}", s(&d["format"])));
    if let Some(ft) = d["file_type"].as_str() {
        row("file type", ft.into());
    }
    print_params(&d["params"]);
    if let Some(groups) = d["dtypes"].as_object() {
        let list = |ts: &Value| {
            ts.as_array().map_or(String::new(), |a| {
                a.iter().map(s).collect::<Vec<_>>().join("/")
            })
        };
        let parts: Vec<String> = groups
            .iter()
            .map(|(g, ts)| format!("{g} {}", list(ts)))
            .collect();
        row("dtypes", parts.join(", "));
    }
    print_tokenizer(&d["tokenizer"]);
    row("chat template", s(&d["chat_template"]));
    if let Some(g) = d["generation"].as_object() {
        let parts: Vec<String> = g
            .iter()
            .filter(|(k, _)| *k != "source")
            .map(|(k, v)| format!("{k} {}", s(v)))
            .collect();
        row(
            "generation",
            format!("{} ({})", parts.join(", "), s(&g["source"])),
        );
    }
    row("verified", s(&d["verified"]));
    print_files(&d["files"]);
}

fn print_params(p: &Value) {
    if p.is_null() {
        return;
    }
    row(
        "params",
        format!(
            "dim {}, layers {}, heads {}, kv heads {}, vocab {}",
            s(&p["dim"]),
            s(&p["n_layers"]),
            s(&p["n_heads"]),
            s(&p["n_kv_heads"]),
            s(&p["vocab_size"])
        ),
    );
    row("context", s(&p["context_length"]));
    row("rope theta", s(&p["rope_theta"]));
    row("rope scaling", s(&p["rope_scaling"]));
}

fn print_tokenizer(t: &Value) {
    if t.is_null() {
        row("tokenizer", "none found".into());
        return;
    }
    row(
        "tokenizer",
        format!("{}, {} tokens", s(&t["kind"]), s(&t["vocab_size"])),
    );
    row(
        "bos / eos",
        format!("{} / {}", token(&t["bos"]), token(&t["eos"])),
    );
    let stops: Vec<String> = t["stop_tokens"]
        .as_array()
        .map_or(Vec::new(), |a| a.iter().map(token).collect());
    row("stop tokens", stops.join(", "));
}

fn print_files(files: &Value) {
    let Some(files) = files.as_array() else {
        return;
    };
    let total: u64 = files.iter().filter_map(|f| f["bytes"].as_u64()).sum();
    row(
        "files",
        format!("{} files, {}", files.len(), human_bytes(total)),
    );
    for f in files {
        let bytes = human_bytes(f["bytes"].as_u64().unwrap_or(0));
        println!("{:<14}  {bytes:>10}  {}", "", s(&f["name"]));
    }
}
