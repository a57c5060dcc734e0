//! The chat REPL's input: messages from a line editor with history on a terminal, or lines of
//! piped stdin, with the same multi-line rules for both.
//!
//! A line ending in `\` continues on the next one; a line starting with `"""` opens a block that
//! a line ending in `"""` closes. On a terminal the editor is rustyline (Emacs keys, Up/Down
//! history, Ctrl-R search); each message is added to the history file as it is sent.
use anyhow::{Context, Result};
use rustyline::error::ReadlineError;
use rustyline::history::DefaultHistory;
use rustyline::{Config, Editor};
use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;

const PROMPT: &str = "user> ";
const MORE: &str = "...> ";
const BLOCK: &str = "\"\"\"";

/// What the user did at the prompt.
pub(super) enum Input {
    Message(String),
    /// Ctrl-D or the end of piped input.
    End,
    /// Ctrl-C at the prompt.
    Interrupted,
}

pub(super) enum Source {
    Terminal {
        editor: Box<Editor<(), DefaultHistory>>,
        history: Option<PathBuf>,
    },
    /// Lines of stdin; `prompt`: stdin is a terminal (stdout is not), so prompts go to stderr.
    Piped {
        lines: std::io::Lines<std::io::StdinLock<'static>>,
        prompt: bool,
    },
}

impl Source {
    /// The line editor when stdin and stdout are terminals, else plain lines of stdin.
    pub(super) fn open() -> Result<Source> {
        let tty_in = std::io::stdin().is_terminal();
        if !(tty_in && std::io::stdout().is_terminal()) {
            return Ok(Source::Piped {
                lines: std::io::stdin().lock().lines(),
                prompt: tty_in,
            });
        }
        let config = Config::builder()
            .max_history_size(1000)?
            .history_ignore_dups(true)?
            .auto_add_history(false)
            .build();
        let mut editor = Box::new(Editor::with_config(config).context("starting the line editor")?);
        let history = history_path();
        if let Some(path) = &history {
            // A first run has no file yet; an unreadable one only loses the recall.
            if path.exists() {
                if let Err(e) = editor.load_history(path) {
                    eprintln!(
                        "note: {}: cannot read the chat history ({e})",
                        path.display()
                    );
                }
            }
        }
        Ok(Source::Terminal { editor, history })
    }

    /// Someone types the input: prompts and notes are shown.
    pub(super) fn interactive(&self) -> bool {
        match self {
            Source::Terminal { .. } => true,
            Source::Piped { prompt, .. } => *prompt,
        }
    }

    /// Where the history is kept, if anywhere.
    pub(super) fn history(&self) -> Option<&PathBuf> {
        match self {
            Source::Terminal { history, .. } => history.as_ref(),
            Source::Piped { .. } => None,
        }
    }

    /// The next message, its continuation lines joined with newlines.
    pub(super) fn message(&mut self) -> Result<Input> {
        let first = match self.line(PROMPT)? {
            Some(Line::Text(l)) => l,
            Some(Line::Interrupted) => return Ok(Input::Interrupted),
            None => return Ok(Input::End),
        };
        let text = match first.trim_start().strip_prefix(BLOCK) {
            Some(rest) => self.block(rest)?,
            None => self.continued(first)?,
        };
        let Some(text) = text else {
            return Ok(Input::Interrupted);
        };
        if let Source::Terminal { editor, history } = self {
            if !text.trim().is_empty() {
                let _ = editor.add_history_entry(text.trim());
                if let Some(path) = history {
                    if let Err(e) = editor.append_history(path) {
                        eprintln!(
                            "note: {}: cannot save the chat history ({e})",
                            path.display()
                        );
                        *history = None;
                    }
                }
            }
        }
        Ok(Input::Message(text))
    }

    /// Lines ending in `\` and the ones after them. None: Ctrl-C.
    fn continued(&mut self, first: String) -> Result<Option<String>> {
        let mut text = first;
        while text.ends_with('\\') {
            text.pop();
            text.push('\n');
            match self.line(MORE)? {
                Some(Line::Text(l)) => text.push_str(&l),
                Some(Line::Interrupted) => return Ok(None),
                None => break,
            }
        }
        Ok(Some(text))
    }

    /// A `"""` block from the text after its opening quotes to a line ending in `"""`.
    fn block(&mut self, rest: &str) -> Result<Option<String>> {
        let mut lines = vec![rest.to_string()];
        loop {
            let last = lines.last().map_or("", |l| l.trim_end());
            if let Some(body) = last.strip_suffix(BLOCK) {
                let body = body.to_string();
                lines.pop();
                lines.push(body);
                break;
            }
            match self.line(MORE)? {
                Some(Line::Text(l)) => lines.push(l),
                Some(Line::Interrupted) => return Ok(None),
                None => break,
            }
        }
        Ok(Some(lines.join("\n")))
    }

    fn line(&mut self, prompt_text: &str) -> Result<Option<Line>> {
        match self {
            Source::Terminal { editor, .. } => match editor.readline(prompt_text) {
                Ok(l) => Ok(Some(Line::Text(l))),
                Err(ReadlineError::Eof) => Ok(None),
                Err(ReadlineError::Interrupted) => Ok(Some(Line::Interrupted)),
                Err(e) => Err(e).context("reading the terminal"),
            },
            Source::Piped { lines, prompt } => {
                if *prompt {
                    prompt_stderr(prompt_text);
                }
                match lines.next() {
                    Some(l) => Ok(Some(Line::Text(l.context("reading stdin")?))),
                    None => Ok(None),
                }
            }
        }
    }
}

enum Line {
    Text(String),
    Interrupted,
}

/// `$XDG_DATA_HOME/llamactl/chat_history`, else `~/.local/share/llamactl/chat_history`; None
/// (with a note) when neither is known or the folder cannot be made.
fn history_path() -> Option<PathBuf> {
    let base = match std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(std::env::var_os("HOME")?).join(".local/share"),
    };
    let dir = base.join("llamactl");
    if let Err(e) = std::fs::create_dir_all(&dir) {
        eprintln!(
            "note: {}: cannot keep the chat history there ({e})",
            dir.display()
        );
        return None;
    }
    Some(dir.join("chat_history"))
}

/// Write `text` to stderr at once (the prompts of piped mode).
pub(super) fn prompt_stderr(text: &str) {
    eprint!("{text}");
    std::io::stderr().flush().ok();
}
