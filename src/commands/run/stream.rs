//! Completions printed while they are generated, in input order: the first unfinished one
//! streams token by token; the text of a later one is held until every one before it is done,
//! then printed at once and streamed from there. Text leaves only on UTF-8 boundaries (the
//! tokenizer's stream decoder), and stdout is flushed after every step, terminal or pipe.
use crate::runner::generate::{Generation, Step};
use crate::tokenizer::{StreamDecoder, Tokenizer};
use anyhow::Result;
use std::io::Write;

/// What comes before completion `i` (its prompt, or its dialog) and ends where the text starts.
pub(super) type Head<'a> = &'a dyn Fn(&mut dyn Write, usize) -> std::io::Result<()>;

pub(super) struct OrderedStream<'a> {
    decoders: Vec<StreamDecoder<'a>>,
    /// Decoded text not yet printed, per completion.
    held: Vec<String>,
    /// The logprobs of each finished completion (`None`: still running).
    done: Vec<Option<Vec<f32>>>,
    /// The completion being printed, and whether its head is out.
    next: usize,
    head_out: bool,
    head: Head<'a>,
    logprobs: bool,
}

impl<'a> OrderedStream<'a> {
    pub(super) fn new(tok: &'a Tokenizer, n: usize, head: Head<'a>, logprobs: bool) -> Self {
        Self {
            decoders: (0..n).map(|_| tok.stream_decoder()).collect(),
            held: vec![String::new(); n],
            done: vec![None; n],
            next: 0,
            head_out: false,
            head,
            logprobs,
        }
    }

    /// Take one step of completion `i` and print what is ready.
    pub(super) fn step(&mut self, i: usize, step: Step) -> Result<()> {
        match step {
            Step::Token(id) => {
                let text = self.decoders[i].push(id)?;
                self.held[i].push_str(&text);
            }
            Step::Done(g) => self.finish(i, g)?,
        }
        self.print_ready(&mut std::io::stdout().lock())?;
        Ok(())
    }

    fn finish(&mut self, i: usize, g: &Generation) -> Result<()> {
        let tail = self.decoders[i].finish()?;
        self.held[i].push_str(&tail);
        self.done[i] = Some(g.logprobs.clone());
        Ok(())
    }

    /// Print the held text of the current completion and of every one after it whose turn came.
    fn print_ready(&mut self, out: &mut dyn Write) -> std::io::Result<()> {
        while self.next < self.held.len() {
            let i = self.next;
            if !self.head_out {
                (self.head)(out, i)?;
                self.head_out = true;
            }
            out.write_all(std::mem::take(&mut self.held[i]).as_bytes())?;
            let Some(logprobs) = &self.done[i] else { break };
            writeln!(out)?;
            if self.logprobs {
                writeln!(out, "  logprobs: {logprobs:?}")?;
            }
            writeln!(out, "\n==================================\n")?;
            self.next += 1;
            self.head_out = false;
        }
        out.flush()
    }
}
