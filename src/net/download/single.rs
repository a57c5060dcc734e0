//! One file over one connection: resume from the part's end, retry from the current offset.
use super::client::{pause_or_stop, Http};
use super::error::{interrupted, io_err, HttpError};
use super::hash::HashPipe;
use super::part::{self, PartMeta, Reservation};
use super::range::{self, Ranged, Span};
use super::request::{FileRequest, PartDone};
use super::response::{classify_status, content_length, io_reason, looks_like_markup, markup_type};
use crate::net::reach::ConnectFailure;
use crate::net::retry::{Pace, Tries};
use crate::net::signed_url::redact;
use crate::progress::Task;
use reqwest::blocking::Response;
use reqwest::StatusCode;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};

/// Outcome of one HTTP attempt.
enum Attempt {
    /// The part is complete at this size.
    Complete(u64),
    /// Transient trouble; `progressed` when this attempt's bytes came at the floor rate or above
    /// (see [`Pace`]); `connect` when the request got no answer at all.
    Retry {
        reason: String,
        progressed: bool,
        connect: Option<ConnectFailure>,
    },
}

impl Attempt {
    fn retry(reason: impl Into<String>) -> Self {
        Attempt::Retry {
            reason: reason.into(),
            progressed: false,
            connect: None,
        }
    }
}

/// One file streamed into its part: where the part stands and what has been hashed.
pub(crate) struct Stream<'a> {
    http: &'a Http,
    req: &'a FileRequest,
    progress: &'a dyn Task,
    shown: String,
    file: File,
    /// Bytes of the part on disk (and hashed, in order).
    offset: u64,
    hasher: HashPipe,
    meta: PartMeta,
    fetched: u64,
    kept: u64,
    tries: Tries<'a>,
}

impl<'a> Stream<'a> {
    /// Take over the part: its bytes are kept (and hashed) when they can be tied to the remote
    /// object or will be checked against a digest, else it starts over.
    pub(crate) fn open(
        http: &'a Http,
        req: &'a FileRequest,
        mut file: File,
        meta: PartMeta,
        progress: &'a dyn Task,
    ) -> Result<Self, HttpError> {
        let part = &req.part;
        let mut offset = file.metadata().map_err(|e| io_err(part, e))?.len();
        let known_size = req.expected_size.or(meta.size);
        if offset > 0 && known_size.is_some_and(|s| offset > s) {
            offset = 0;
        }
        if offset > 0 && meta == PartMeta::default() && req.expected_digest.is_none() {
            // Nothing ties these bytes to the remote object and nothing will check them: start over.
            offset = 0;
        }
        file.set_len(offset).map_err(|e| io_err(part, e))?;
        let mut hasher = HashPipe::new(req.hash);
        if offset > 0 {
            progress.note("hashing kept part");
            hasher
                .prefix(&mut file, offset)
                .map_err(|e| io_err(part, e))?;
            progress.note("");
        }
        if let Some(s) = known_size {
            progress.set_len(s);
        }
        progress.set_position(offset);
        file.seek(SeekFrom::Start(offset))
            .map_err(|e| io_err(part, e))?;
        Ok(Self {
            http,
            req,
            progress,
            shown: redact(&req.url),
            file,
            offset,
            hasher,
            meta,
            fetched: 0,
            kept: offset,
            tries: Tries::new(http.config()),
        })
    }

    pub(crate) fn offset(&self) -> u64 {
        self.offset
    }

    pub(crate) fn file(&self) -> &File {
        &self.file
    }

    /// Segmented transfer gave up on this part (it has holes): start it afresh as one stream.
    pub(crate) fn abandon_segments(&mut self, why: &str) -> Result<(), HttpError> {
        self.progress.note(&format!("one connection: {why}"));
        self.meta = part::abandon_segments(&mut self.file, &self.req.part)?;
        self.restart()
    }

    /// Wait after a failed try, or end with the error that stops the transfer.
    pub(crate) fn pause(
        &mut self,
        reason: String,
        connect: Option<&ConnectFailure>,
    ) -> Result<(), HttpError> {
        pause_or_stop(
            &mut self.tries,
            &self.shown,
            reason,
            connect,
            Some(self.progress),
        )
    }

    /// Fetch until the part is complete; `first` is a response already open at byte 0.
    pub(crate) fn run(mut self, mut first: Option<Response>) -> Result<PartDone, HttpError> {
        loop {
            interrupted()?;
            match self.attempt(first.take())? {
                Attempt::Complete(size) => return self.finish(size),
                Attempt::Retry {
                    reason,
                    progressed,
                    connect,
                } => {
                    if progressed {
                        self.tries.progressed();
                    }
                    self.pause(reason, connect.as_ref())?;
                }
            }
        }
    }

    fn finish(self, size: u64) -> Result<PartDone, HttpError> {
        self.file
            .sync_all()
            .map_err(|e| io_err(&self.req.part, e))?;
        if let Some(want) = self.req.expected_size.filter(|w| *w != size) {
            part::discard(&self.req.part);
            return Err(HttpError::ErrorBody {
                url: self.shown,
                what: format!("{size} bytes where {want} were expected"),
            });
        }
        Ok(PartDone {
            size,
            digest: self.hasher.finish(),
            fetched: self.fetched,
            kept: self.kept,
        })
    }

    /// Throw away what the part holds: the object is fetched again from byte 0.
    fn restart(&mut self) -> Result<(), HttpError> {
        self.offset = 0;
        self.hasher.reset();
        self.progress.set_position(0);
        part::truncate(&mut self.file, &self.req.part)
    }

    /// One request (unless `pre` is already open) and its body, until it ends or fails.
    fn attempt(&mut self, pre: Option<Response>) -> Result<Attempt, HttpError> {
        let mut pace = Pace::start(self.http.config());
        let resp = match pre {
            Some(r) => r,
            None => {
                let ranged = (self.offset > 0).then(|| Ranged {
                    span: Span::From(self.offset),
                    validator: self.meta.if_range(),
                });
                match self.http.send(&self.req.url, &self.req.headers, ranged) {
                    Ok(r) => r,
                    Err(failed) => {
                        return Ok(Attempt::Retry {
                            reason: failed.reason,
                            progressed: false,
                            connect: failed.connect,
                        })
                    }
                }
            }
        };
        let resp = match self.accept(resp)? {
            Ok(resp) => resp,
            Err(instead) => return Ok(instead),
        };
        let total = self.check_start(&resp)?;
        let stopped = self.copy_body(resp, total, &mut pace)?;
        let reason = match (stopped, total) {
            (Some(reason), _) => reason,
            (None, Some(t)) if self.offset < t => {
                format!("connection closed at byte {} of {t}", self.offset)
            }
            (None, _) => return Ok(Attempt::Complete(self.offset)),
        };
        Ok(Attempt::Retry {
            reason: pace.explain(reason),
            progressed: pace.progressed(),
            connect: None,
        })
    }

    /// The status of an answer: `Ok(resp)` when its body holds the next bytes of the file, else
    /// what to do instead. The record learns the object's validator and size.
    fn accept(&mut self, resp: Response) -> Result<Result<Response, Attempt>, HttpError> {
        match resp.status() {
            StatusCode::OK => {
                if self.offset > 0 {
                    // The server ignored the range (or If-Range said the object changed).
                    self.restart()?;
                }
                self.meta = PartMeta::from_headers(resp.headers(), content_length(resp.headers()));
            }
            StatusCode::PARTIAL_CONTENT => match range::content_range(resp.headers()) {
                Some((start, total)) if start == self.offset => {
                    if self
                        .meta
                        .size
                        .is_some_and(|s| total.is_some_and(|t| t != s))
                    {
                        self.restart()?;
                        return Ok(Err(Attempt::retry("the remote file changed size")));
                    }
                    self.meta.size = self.meta.size.or(total);
                }
                _ => {
                    self.restart()?;
                    return Ok(Err(Attempt::retry("the server answered a different range")));
                }
            },
            StatusCode::RANGE_NOT_SATISFIABLE => {
                if range::unsatisfiable_total(resp.headers()) == Some(self.offset) {
                    return Ok(Err(Attempt::Complete(self.offset)));
                }
                self.restart()?;
                return Ok(Err(Attempt::retry(
                    "the kept part does not fit the remote file",
                )));
            }
            s => return classify_status(s, resp, &self.shown).map(|r| Err(Attempt::retry(r))),
        }
        if self.meta.size.is_some() {
            self.meta.save(&self.req.part)?;
        }
        Ok(Ok(resp))
    }

    /// Before the first byte of a body: refuse an error page or a body far too small. Returns
    /// the file's size when known.
    fn check_start(&self, resp: &Response) -> Result<Option<u64>, HttpError> {
        let total = self.meta.size.or(self.req.expected_size);
        if let Some(t) = total {
            self.progress.set_len(t);
        }
        let error_body = |what: String| HttpError::ErrorBody {
            url: self.shown.clone(),
            what,
        };
        if let Some(ct) = markup_type(resp.headers()).filter(|_| self.req.reject_markup) {
            return Err(error_body(format!(
                "the server sent a {ct} page instead of the file"
            )));
        }
        if let (0, Some(want), Some(got)) = (
            self.offset,
            self.req.expected_size,
            content_length(resp.headers()),
        ) {
            if got < want / 2 {
                return Err(error_body(format!(
                    "the server sent {got} bytes where {want} were expected"
                )));
            }
        }
        Ok(total)
    }

    /// Copy the body to the part until it ends (`None`), a read fails or the bytes come slower
    /// than the floor rate (the reason).
    fn copy_body(
        &mut self,
        mut resp: Response,
        total: Option<u64>,
        pace: &mut Pace,
    ) -> Result<Option<String>, HttpError> {
        let need = total.map_or(0, |t| t.saturating_sub(self.offset));
        let mut reservation = match total {
            Some(_) => Reservation::claim(&self.req.part, need, self.req.check_space)?,
            None => None,
        };
        // Reads land directly in a hasher buffer; each piece is written to the part at once (so
        // a killed run keeps it) and the full buffer then moves to the hasher without a copy.
        let mut buf = self.hasher.buffer();
        let mut filled = 0;
        let stopped = loop {
            interrupted()?;
            if filled == buf.len() {
                self.hasher.submit(buf, filled);
                buf = self.hasher.buffer();
                filled = 0;
            }
            let n = match resp.read(&mut buf[filled..]) {
                Ok(0) => break None,
                Ok(n) => n,
                Err(e) => break Some(io_reason(&e)),
            };
            let chunk = &buf[filled..filled + n];
            if self.offset == 0 && self.req.reject_markup && looks_like_markup(chunk) {
                self.restart()?;
                return Err(HttpError::ErrorBody {
                    url: self.shown.clone(),
                    what: "the server sent an HTML/XML page instead of the file".into(),
                });
            }
            self.file
                .write_all(chunk)
                .map_err(|e| io_err(&self.req.part, e))?;
            if let Some(r) = reservation.as_mut() {
                r.wrote(n as u64);
            }
            filled += n;
            self.offset += n as u64;
            self.fetched += n as u64;
            self.progress.advance(n as u64);
            if let Some(slow) = pace.add(n as u64) {
                break Some(slow);
            }
        };
        self.hasher.submit(buf, filled);
        Ok(stopped)
    }
}
