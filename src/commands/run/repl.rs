//! `run --chat` without `--dialogs`: the interactive chat. Input (line editing, history,
//! multi-line messages) is [`super::input`]; this is the dialog, its KV cache and the replies.
//!
//! The KV cache carries over between turns: each turn's prompt is the whole dialog in the chat
//! format, and only the part after what the cache already holds is run, so turn N costs its new
//! tokens. A message that cannot fit is refused and changes nothing. Ctrl-C while a reply is
//! written stops it (a [`crate::signal::SoftStop`]); at the prompt, or pressed twice, it leaves
//! with 130.
use super::input::{prompt_stderr, Input, Source};
use super::{chat_format, gen_params, Session};
use crate::cli::RunArgs;
use crate::runner::generate::{generate, Step};
use crate::signal::SoftStop;
use crate::tokenizer::chat::{ChatFormat, Message};
use anyhow::Result;
use std::io::Write;

const REPL_HELP: &str = "commands: /system TEXT (set the system prompt and start over), /reset (forget the dialog), /help, /quit (or Ctrl-D)\n\
end a line with \\ to go on on the next one, or put a message between lines of \"\"\"";

pub(super) fn chat_repl(s: &mut Session, args: &RunArgs) -> Result<i32> {
    let mut input = Source::open()?;
    let format = chat_format(s)?;
    let mut chat = Chat {
        system: None,
        dialog: Vec::new(),
        cached: Vec::new(),
        turn: 0,
    };
    if input.interactive() {
        eprintln!("chatting with {}\n{REPL_HELP}", s.ckpt_dir.display());
        if let Some(path) = input.history() {
            eprintln!(
                "Up/Down recall earlier messages (kept in {})",
                path.display()
            );
        }
    }
    loop {
        let text = match input.message()? {
            Input::Message(t) => t,
            Input::End => return Ok(0),
            Input::Interrupted => return Ok(crate::signal::exit_code(libc::SIGINT)),
        };
        let text = text.trim();
        if text.is_empty() {
            continue;
        }
        if let Some(cmd) = text.strip_prefix('/') {
            if !chat.command(cmd) {
                return Ok(0);
            }
            continue;
        }
        let Some(prompt) = chat.prompt(s, &format, text)? else {
            continue;
        };
        if input.interactive() {
            prompt_stderr("assistant> ");
        }
        chat.reply(s, args, prompt)?;
    }
}

/// The state of a REPL chat.
struct Chat {
    system: Option<String>,
    dialog: Vec<Message>,
    /// The tokens whose keys and values the cache holds, position by position.
    cached: Vec<u32>,
    turn: u64,
}

impl Chat {
    /// Run a `/command`; false means leave.
    fn command(&mut self, cmd: &str) -> bool {
        let (name, rest) = cmd.split_once(' ').unwrap_or((cmd, ""));
        match name {
            "quit" | "exit" | "q" => return false,
            "reset" => {
                self.dialog.clear();
                eprintln!("(dialog cleared)");
            }
            "system" => {
                let text = rest.trim();
                self.system = (!text.is_empty()).then(|| text.to_string());
                self.dialog.clear();
                eprintln!(
                    "{}",
                    if self.system.is_some() {
                        "(system prompt set; dialog cleared)"
                    } else {
                        "(system prompt removed; dialog cleared)"
                    }
                );
            }
            "help" => eprintln!("{REPL_HELP}"),
            other => eprintln!("unknown command /{other}; {REPL_HELP}"),
        }
        true
    }

    /// The dialog with the user's `text` added, as prompt ids. The oldest exchanges (never the
    /// system prompt) are dropped until a reply has room; when the message does not fit even
    /// alone, it is refused (None) and the dialog stays as it was.
    fn prompt(&mut self, s: &Session, format: &ChatFormat, text: &str) -> Result<Option<Vec<u32>>> {
        let max_seq = s.cache.max_seq();
        let mut dialog = self.dialog.clone();
        dialog.push(Message::new("user", text));
        let mut dropped = 0;
        loop {
            let mut full: Vec<Message> = self
                .system
                .iter()
                .map(|t| Message::new("system", t))
                .collect();
            full.extend(dialog.iter().cloned());
            let ids = format.encode(&s.tok, &full)?;
            // A reply needs at least one position after the prompt.
            if ids.len() + 1 < max_seq {
                if dropped > 0 {
                    eprintln!("(the dialog outgrew --max-seq-len {max_seq}: dropped the oldest {dropped} exchange(s))");
                }
                self.dialog = dialog;
                return Ok(Some(ids));
            }
            if dialog.len() <= 1 {
                eprintln!(
                    "that message is {} tokens in the chat format{}; --max-seq-len {max_seq} takes at most {} before a reply. Not sent; the dialog is as it was.",
                    ids.len(),
                    if self.system.is_some() { " with the system prompt" } else { "" },
                    max_seq - 2
                );
                return Ok(None);
            }
            dialog.drain(..2.min(dialog.len() - 1));
            dropped += 1;
        }
    }

    /// Generate and stream the reply to `prompt`, reusing the cached prefix, and record it.
    fn reply(&mut self, s: &mut Session, args: &RunArgs, prompt: Vec<u32>) -> Result<()> {
        let mut params = gen_params(args, s);
        params.logprobs = false;
        // A different sampling stream per turn, reproducible from --seed.
        params.seed = args.seed.wrapping_add(self.turn);
        self.turn += 1;
        let reuse = self
            .cached
            .iter()
            .zip(&prompt)
            .take_while(|(a, b)| a == b)
            .count()
            .min(prompt.len() - 1);
        let mut decoder = s.tok.stream_decoder();
        let mut out = std::io::stdout();
        let stop = SoftStop::begin();
        let (gens, st) = generate(
            &s.model,
            &mut s.cache,
            std::slice::from_ref(&prompt),
            reuse,
            &params,
            &mut |_, step| {
                if let Step::Token(id) = step {
                    if let Ok(text) = decoder.push(id) {
                        let _ = out.write_all(text.as_bytes());
                        let _ = out.flush();
                    }
                }
                !stop.requested()
            },
        )?;
        let stopped = stop.requested();
        drop(stop);
        s.memory.sample();
        let tail = decoder.finish().unwrap_or_default();
        writeln!(out, "{tail}")?;
        out.flush()?;
        let g = gens.into_iter().next().unwrap_or_default();
        let mut row = prompt;
        row.extend(&g.tokens);
        row.truncate(st.cache_len);
        self.cached = row;
        eprintln!(
            "({}{} new prompt tokens, {} reused from the cache; {} generated, {:.1} tokens/s)",
            if stopped { "stopped; " } else { "" },
            st.prefill_tokens,
            reuse,
            g.tokens.len(),
            st.decode_tokens_per_s()
        );
        let reply = s.tok.decode(&g.tokens)?;
        self.dialog.push(Message::new("assistant", &reply));
        Ok(())
    }
}
