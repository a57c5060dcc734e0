//! Chat prompts: Meta's Llama 3 dialog format, and Hugging Face Jinja chat templates.
//!
//! Meta's layout: `<|begin_of_text|>`, then per message `<|start_header_id|>` role
//! `<|end_header_id|>` "\n\n" content.strip() `<|eot_id|>`, then an open assistant header. The
//! content is encoded with special-token text as plain text, so a user cannot inject headers.
use super::{py_strip, AllowedSpecial, Tokenizer, TokenizerKind};
use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: &str, content: &str) -> Message {
        Message {
            role: role.to_string(),
            content: content.to_string(),
        }
    }
}

/// Roles Llama 3 knows; `tool` is Llama 3.1's name for the `ipython` header.
const ROLES: [&str; 5] = ["system", "user", "assistant", "ipython", "tool"];

/// A dialog from JSON: `[{"role": ..., "content": ...}, ...]`. `what` names the source in errors.
pub fn parse_dialog(json: &str, what: &str) -> Result<Vec<Message>> {
    let dialog: Vec<Message> = serde_json::from_str(json).map_err(|e| {
        anyhow!(
            "{what}: expected a JSON list of {{\"role\": ..., \"content\": ...}} messages ({e})"
        )
    })?;
    if dialog.is_empty() {
        bail!("{what}: the dialog has no messages");
    }
    Ok(dialog)
}

fn check_dialog(dialog: &[Message]) -> Result<()> {
    if dialog.is_empty() {
        bail!("the dialog has no messages");
    }
    for (i, m) in dialog.iter().enumerate() {
        if !ROLES.contains(&m.role.as_str()) {
            bail!(
                "message {i}: unknown role {:?} (expected one of {})",
                m.role,
                ROLES.join(", ")
            );
        }
    }
    Ok(())
}

fn special(tok: &Tokenizer, name: &str) -> Result<u32> {
    tok.token_id(name).ok_or_else(|| {
        anyhow!(
            "{}: has no {name} token, so it cannot use the Llama 3 chat format",
            tok.source().display()
        )
    })
}

/// `<|start_header_id|>` role `<|end_header_id|>` "\n\n".
fn encode_header(tok: &Tokenizer, role: &str) -> Result<Vec<u32>> {
    let role = if role == "tool" { "ipython" } else { role };
    let mut ids = vec![special(tok, "<|start_header_id|>")?];
    ids.extend(tok.encode(role, false, false, AllowedSpecial::None)?);
    ids.push(special(tok, "<|end_header_id|>")?);
    ids.extend(tok.encode("\n\n", false, false, AllowedSpecial::None)?);
    Ok(ids)
}

/// One message: header, stripped content, `<|eot_id|>`.
fn encode_message(tok: &Tokenizer, message: &Message) -> Result<Vec<u32>> {
    let mut ids = encode_header(tok, &message.role)?;
    ids.extend(tok.encode(
        py_strip(&message.content),
        false,
        false,
        AllowedSpecial::None,
    )?);
    ids.push(special(tok, "<|eot_id|>")?);
    Ok(ids)
}

/// Meta's `ChatFormat.encode_dialog_prompt`: the prompt for the assistant's next turn.
pub fn encode_dialog_prompt(tok: &Tokenizer, dialog: &[Message]) -> Result<Vec<u32>> {
    check_dialog(dialog)?;
    let mut ids = vec![special(tok, "<|begin_of_text|>")?];
    for m in dialog {
        ids.extend(encode_message(tok, m)?);
    }
    ids.extend(encode_header(tok, "assistant")?);
    Ok(ids)
}

/// How a model turns a dialog into a prompt.
#[derive(Clone, Debug)]
pub enum ChatFormat {
    /// Meta's Llama 3 format, built from token ids.
    Llama3,
    /// A Jinja template from the model's tokenizer_config.json or chat_template.jinja, rendered
    /// to text and encoded with special-token text recognised.
    Template {
        source: String,
        bos_token: String,
        eos_token: String,
    },
}

impl ChatFormat {
    /// Meta dirs use the Llama 3 format; HF dirs their own template when they have one, else
    /// the Llama 3 format.
    pub fn for_model_dir(dir: &Path) -> Result<ChatFormat> {
        if dir.join("tokenizer.json").is_file() {
            return Self::from_hf_dir(dir);
        }
        Ok(ChatFormat::Llama3)
    }

    /// The format that goes with a tokenizer file (its directory's template for tokenizer.json).
    pub fn for_tokenizer(tok: &Tokenizer) -> Result<ChatFormat> {
        match tok.kind() {
            TokenizerKind::Tiktoken => Ok(ChatFormat::Llama3),
            TokenizerKind::HuggingFace => {
                Self::from_hf_dir(tok.source().parent().unwrap_or(Path::new(".")))
            }
        }
    }

    /// A GGUF file's `tokenizer.chat_template`, else the Llama 3 format.
    pub fn for_gguf(f: &crate::formats::gguf::GgufFile, tok: &Tokenizer) -> ChatFormat {
        use crate::formats::gguf::Value;
        let Some(source) = f.get("tokenizer.chat_template").and_then(Value::as_str) else {
            return ChatFormat::Llama3;
        };
        let text = |id: Option<u32>| {
            id.and_then(|i| tok.token_bytes(i))
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default()
        };
        ChatFormat::Template {
            source: source.to_string(),
            bos_token: text(tok.bos_id()),
            eos_token: text(tok.eos_id()),
        }
    }

    fn from_hf_dir(dir: &Path) -> Result<ChatFormat> {
        let cfg_path = dir.join("tokenizer_config.json");
        let cfg: serde_json::Value = if cfg_path.is_file() {
            let data = std::fs::read(&cfg_path)
                .with_context(|| format!("{}: cannot read", cfg_path.display()))?;
            serde_json::from_slice(&data)
                .map_err(|e| anyhow!("{}: not valid JSON ({e})", cfg_path.display()))?
        } else {
            serde_json::Value::Null
        };
        let token_text = |key: &str| {
            let v = &cfg[key];
            v.as_str()
                .or_else(|| v["content"].as_str())
                .unwrap_or("")
                .to_string()
        };
        let jinja = dir.join("chat_template.jinja");
        let source = if jinja.is_file() {
            Some(
                std::fs::read_to_string(&jinja)
                    .with_context(|| format!("{}: cannot read as UTF-8 text", jinja.display()))?,
            )
        } else {
            match &cfg["chat_template"] {
                serde_json::Value::String(s) => Some(s.clone()),
                // A list of named templates: the "default" one.
                serde_json::Value::Array(list) => list
                    .iter()
                    .find(|t| t["name"].as_str() == Some("default"))
                    .and_then(|t| t["template"].as_str())
                    .map(str::to_string),
                _ => None,
            }
        };
        Ok(match source {
            Some(source) => ChatFormat::Template {
                source,
                bos_token: token_text("bos_token"),
                eos_token: token_text("eos_token"),
            },
            None => ChatFormat::Llama3,
        })
    }

    /// Prompt ids for the assistant's next turn.
    pub fn encode(&self, tok: &Tokenizer, dialog: &[Message]) -> Result<Vec<u32>> {
        match self {
            ChatFormat::Llama3 => encode_dialog_prompt(tok, dialog),
            ChatFormat::Template {
                source,
                bos_token,
                eos_token,
            } => {
                let text = render_chat_template(source, dialog, bos_token, eos_token, true)?;
                tok.encode(&text, false, false, AllowedSpecial::All)
            }
        }
    }
}

/// Renders a Hugging Face chat template the way transformers does (trim_blocks, lstrip_blocks,
/// loop controls, `raise_exception`, `strftime_now`, Python's `tojson` spacing and string methods).
pub fn render_chat_template(
    template: &str,
    messages: &[Message],
    bos_token: &str,
    eos_token: &str,
    add_generation_prompt: bool,
) -> Result<String> {
    use minijinja::{context, Environment, Error, ErrorKind};
    if messages.is_empty() {
        bail!("the dialog has no messages");
    }
    let mut env = Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_unknown_method_callback(jinja::python_methods);
    env.add_function("raise_exception", |msg: String| -> Result<String, Error> {
        Err(Error::new(ErrorKind::InvalidOperation, msg))
    });
    env.add_function("strftime_now", |fmt: String| jinja::strftime_now(&fmt));
    env.add_filter("tojson", jinja::tojson);
    env.add_filter("trim", jinja::trim);
    let tmpl = env
        .template_from_str(template)
        .map_err(|e| anyhow!("chat template: {e}"))?;
    // transformers passes tools and documents as None when absent; templates test `is not none`.
    tmpl.render(context! {
        messages => messages,
        tools => (),
        documents => (),
        bos_token => bos_token,
        eos_token => eos_token,
        add_generation_prompt => add_generation_prompt,
    })
    .map_err(|e| anyhow!("chat template: {e}"))
}

mod jinja {
    //! The parts of Python's Jinja environment that chat templates lean on.
    use minijinja::value::{Kwargs, ValueKind};
    use minijinja::{Error, ErrorKind, State, Value};

    fn bad(msg: String) -> Error {
        Error::new(ErrorKind::InvalidOperation, msg)
    }

    /// `str.strip()` and friends, `dict.items()/keys()/values()/get()`.
    pub(super) fn python_methods(
        _: &State,
        v: &Value,
        name: &str,
        args: &[Value],
    ) -> Result<Value, Error> {
        if let Some(s) = v.as_str() {
            let arg = |i: usize| args.get(i).and_then(|a| a.as_str());
            let strip_set = |c: char, set: Option<&str>| match set {
                Some(set) => set.contains(c),
                None => crate::tokenizer::py_isspace(c),
            };
            return Ok(match name {
                "strip" => Value::from(s.trim_matches(|c| strip_set(c, arg(0)))),
                "lstrip" => Value::from(s.trim_start_matches(|c| strip_set(c, arg(0)))),
                "rstrip" => Value::from(s.trim_end_matches(|c| strip_set(c, arg(0)))),
                "upper" => Value::from(s.to_uppercase()),
                "lower" => Value::from(s.to_lowercase()),
                "startswith" => Value::from(arg(0).is_some_and(|p| s.starts_with(p))),
                "endswith" => Value::from(arg(0).is_some_and(|p| s.ends_with(p))),
                "replace" => match (arg(0), arg(1)) {
                    (Some(a), Some(b)) => Value::from(s.replace(a, b)),
                    _ => return Err(bad("str.replace takes two strings".into())),
                },
                "split" => match arg(0) {
                    Some(sep) => Value::from(s.split(sep).map(Value::from).collect::<Vec<_>>()),
                    None => Value::from(s.split_whitespace().map(Value::from).collect::<Vec<_>>()),
                },
                "title" => {
                    let mut out = String::with_capacity(s.len());
                    let mut prev_letter = false;
                    for c in s.chars() {
                        if prev_letter {
                            out.extend(c.to_lowercase());
                        } else {
                            out.extend(c.to_uppercase());
                        }
                        prev_letter = c.is_alphabetic();
                    }
                    Value::from(out)
                }
                _ => return Err(bad(format!("string has no method {name}"))),
            });
        }
        if v.kind() == ValueKind::Map {
            let pairs = || -> Result<Vec<(Value, Value)>, Error> {
                v.try_iter()?
                    .map(|k| {
                        let val = v.get_item(&k)?;
                        Ok((k, val))
                    })
                    .collect()
            };
            return Ok(match name {
                "items" => Value::from(
                    pairs()?
                        .into_iter()
                        .map(|(k, v)| Value::from(vec![k, v]))
                        .collect::<Vec<_>>(),
                ),
                "keys" => Value::from(pairs()?.into_iter().map(|p| p.0).collect::<Vec<_>>()),
                "values" => Value::from(pairs()?.into_iter().map(|p| p.1).collect::<Vec<_>>()),
                "get" => {
                    let key = args.first().cloned().unwrap_or_default();
                    let got = v.get_item(&key)?;
                    if got.is_undefined() {
                        args.get(1).cloned().unwrap_or(Value::from(()))
                    } else {
                        got
                    }
                }
                _ => return Err(bad(format!("mapping has no method {name}"))),
            });
        }
        Err(bad(format!("{} has no method {name}", v.kind())))
    }

    /// Jinja's `trim`: Python's `str.strip()`.
    pub(super) fn trim(s: String, chars: Option<String>) -> String {
        match chars {
            Some(set) => s.trim_matches(|c| set.contains(c)).to_string(),
            None => crate::tokenizer::py_strip(&s).to_string(),
        }
    }

    /// transformers' `tojson`: `json.dumps(x, ensure_ascii=False, indent=indent)`.
    pub(super) fn tojson(v: Value, kwargs: Kwargs) -> Result<String, Error> {
        let indent: Option<usize> = kwargs.get("indent")?;
        kwargs.assert_all_used()?;
        let json = serde_json::to_value(&v).map_err(|e| bad(format!("tojson: {e}")))?;
        let mut out = String::new();
        dump(&json, indent, 0, &mut out);
        Ok(out)
    }

    fn dump(v: &serde_json::Value, indent: Option<usize>, level: usize, out: &mut String) {
        use serde_json::Value as J;
        let newline = |out: &mut String, level: usize| {
            if let Some(n) = indent {
                out.push('\n');
                out.push_str(&" ".repeat(n * level));
            }
        };
        let sep = if indent.is_some() { "," } else { ", " };
        match v {
            J::Array(a) if !a.is_empty() => {
                out.push('[');
                for (i, x) in a.iter().enumerate() {
                    if i > 0 {
                        out.push_str(sep);
                    }
                    newline(out, level + 1);
                    dump(x, indent, level + 1, out);
                }
                newline(out, level);
                out.push(']');
            }
            J::Object(m) if !m.is_empty() => {
                out.push('{');
                for (i, (k, x)) in m.iter().enumerate() {
                    if i > 0 {
                        out.push_str(sep);
                    }
                    newline(out, level + 1);
                    dump_str(k, out);
                    out.push_str(": ");
                    dump(x, indent, level + 1, out);
                }
                newline(out, level);
                out.push('}');
            }
            J::String(s) => dump_str(s, out),
            other => out.push_str(&other.to_string()),
        }
    }

    fn dump_str(s: &str, out: &mut String) {
        out.push('"');
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '\u{8}' => out.push_str("\\b"),
                '\u{c}' => out.push_str("\\f"),
                c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
                c => out.push(c),
            }
        }
        out.push('"');
    }

    /// `strftime_now(fmt)` in UTC (transformers uses local time), for the common directives.
    pub(super) fn strftime_now(fmt: &str) -> Result<String, Error> {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()) as i64;
        Ok(strftime(fmt, secs))
    }

    pub(super) fn strftime(fmt: &str, secs: i64) -> String {
        const MONTHS: [&str; 12] = [
            "January",
            "February",
            "March",
            "April",
            "May",
            "June",
            "July",
            "August",
            "September",
            "October",
            "November",
            "December",
        ];
        const DAYS: [&str; 7] = [
            "Thursday",
            "Friday",
            "Saturday",
            "Sunday",
            "Monday",
            "Tuesday",
            "Wednesday",
        ];
        let days = secs.div_euclid(86_400);
        let tod = secs.rem_euclid(86_400);
        // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let d = doy - (153 * mp + 2) / 5 + 1;
        let m = if mp < 10 { mp + 3 } else { mp - 9 };
        let y = yoe + era * 400 + i64::from(m <= 2);
        let weekday = DAYS[days.rem_euclid(7) as usize];
        let month = MONTHS[(m - 1) as usize];
        let mut out = String::new();
        let mut it = fmt.chars();
        while let Some(c) = it.next() {
            if c != '%' {
                out.push(c);
                continue;
            }
            match it.next() {
                Some('Y') => out.push_str(&y.to_string()),
                Some('y') => out.push_str(&format!("{:02}", y.rem_euclid(100))),
                Some('m') => out.push_str(&format!("{m:02}")),
                Some('d') => out.push_str(&format!("{d:02}")),
                Some('e') => out.push_str(&format!("{d:>2}")),
                Some('B') => out.push_str(month),
                Some('b') => out.push_str(&month[..3]),
                Some('A') => out.push_str(weekday),
                Some('a') => out.push_str(&weekday[..3]),
                Some('H') => out.push_str(&format!("{:02}", tod / 3600)),
                Some('M') => out.push_str(&format!("{:02}", tod / 60 % 60)),
                Some('S') => out.push_str(&format!("{:02}", tod % 60)),
                Some('%') => out.push('%'),
                Some(other) => {
                    out.push('%');
                    out.push(other);
                }
                None => out.push('%'),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama3_template_renders_meta_layout() {
        let msgs = [
            Message::new("system", " Be brief. "),
            Message::new("user", "hi\n"),
        ];
        let out = render_chat_template(
            crate::tokenizer::hf_files::LLAMA3_CHAT_TEMPLATE,
            &msgs,
            "<|begin_of_text|>",
            "<|eot_id|>",
            true,
        )
        .unwrap();
        assert_eq!(
            out,
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
        );
    }

    #[test]
    fn template_helpers() {
        let msgs = [Message::new("user", "  x  ")];
        let t = "{% if messages[0]['role'] != 'user' %}{{ raise_exception('bad') }}{% endif %}\
                 {{ messages[0].content.strip() }}|{{ {'a': [1, 'é\"']} | tojson }}|{{ 'ab'.upper() }}";
        assert_eq!(
            render_chat_template(t, &msgs, "", "", false).unwrap(),
            "x|{\"a\": [1, \"é\\\"\"]}|AB"
        );
        let t = "{{ raise_exception('Only user and assistant roles are supported') }}";
        let err = render_chat_template(t, &msgs, "", "", false)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("Only user and assistant roles are supported"),
            "{err}"
        );
        assert!(
            render_chat_template("{{ strftime_now('%d %b %Y') }}", &msgs, "", "", false)
                .unwrap()
                .len()
                == 11
        );
    }

    #[test]
    fn strftime_dates() {
        // 2024-07-26 00:00:00 UTC, a Friday.
        assert_eq!(
            jinja::strftime("%d %b %Y %A %H:%M:%S", 1_721_952_000),
            "26 Jul 2024 Friday 00:00:00"
        );
        assert_eq!(jinja::strftime("%Y-%m-%d", 951_782_400), "2000-02-29");
    }

    #[test]
    fn dialog_errors() {
        assert!(parse_dialog("[]", "stdin")
            .unwrap_err()
            .to_string()
            .contains("no messages"));
        assert!(parse_dialog("{}", "stdin")
            .unwrap_err()
            .to_string()
            .contains("expected a JSON list"));
        let err = check_dialog(&[Message::new("robot", "x")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown role \"robot\""), "{err}");
    }
}
