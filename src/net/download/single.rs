//! One file over one connection: resume from the part's end, retry from the current offset.
use super::segmented::{self, SegError};
use super::*;

/// Outcome of one HTTP attempt.
enum Attempt {
    /// The part is complete at this size.
    Complete(u64),
    /// Transient trouble; `progressed` when bytes were written in this attempt; `connect` when
    /// the request got no answer at all.
    Retry {
        reason: String,
        progressed: bool,
        connect: Option<ConnectFailure>,
    },
}

impl Http {
    /// Bring `dest.part` to completion; returns (size, digest, bytes fetched, bytes reused).
    pub(super) fn fetch_part(
        &self,
        req: &FileRequest,
        progress: &FileProgress,
    ) -> Result<(u64, Option<String>, u64, u64), HttpError> {
        let part = part_path(&req.dest);
        if let Some(dir) = req.dest.parent() {
            if !dir.as_os_str().is_empty() {
                std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
            }
        }
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&part)
            .map_err(|e| io_err(&part, e))?;
        lock_exclusive(&file, &part)?;
        let mut meta = PartMeta::load(&req.dest).unwrap_or_default();
        if meta.segments.is_some() {
            match segmented::run(self, req, &file, &part, &mut meta, None, progress) {
                Ok(done) => return Ok(done),
                Err(SegError::Http(e)) => return Err(e),
                Err(SegError::Fallback(why)) => {
                    progress.note(&format!("one connection: {why}"));
                    meta = abandon_segments(&mut file, &part, &req.dest)?;
                }
            }
        }
        let mut offset = file.metadata().map_err(|e| io_err(&part, e))?.len();
        let known_size = req.expected_size.or(meta.size);
        if offset > 0 && known_size.is_some_and(|s| offset > s) {
            offset = 0;
        }
        if offset > 0 && meta == PartMeta::default() && req.expected_digest.is_none() {
            // Nothing ties these bytes to the remote object and nothing will check them: start over.
            offset = 0;
        }
        file.set_len(offset).map_err(|e| io_err(&part, e))?;
        let mut hasher = HashPipe::new(req.hash);
        if offset > 0 {
            progress.note("hashing kept part");
            hash_prefix(&mut file, offset, &mut hasher).map_err(|e| io_err(&part, e))?;
            progress.note("");
        }
        let resumed_from = offset;
        if let Some(s) = known_size {
            progress.set_len(s);
        }
        progress.set_position(offset);
        file.seek(SeekFrom::Start(offset))
            .map_err(|e| io_err(&part, e))?;

        let shown = redact(&req.url);
        let mut fetched = 0u64;
        let mut failures = 0u32;
        let mut fc = FirstContact::new();
        let mut first = None;
        if offset == 0 && req.connections > 1 {
            // Ask for a range from the start: a 206 proves ranges work and tells the size.
            match self.send(&req.url, &req.headers, Some((0, None))) {
                Ok(resp) => {
                    let total = (resp.status() == StatusCode::PARTIAL_CONTENT)
                        .then(|| parse_content_range(resp.headers()))
                        .flatten()
                        .and_then(|(start, total)| (start == 0).then_some(total).flatten());
                    let n = total
                        .map(|t| (t / self.cfg.segment_min.max(1)).min(req.connections as u64))
                        .unwrap_or(0);
                    let page = req.reject_markup && is_markup_type(resp.headers());
                    match total {
                        Some(t) if n >= 2 && !page && req.expected_size.is_none_or(|e| e == t) => {
                            meta = PartMeta::from_headers(resp.headers(), Some(t));
                            meta.segments = Some(segmented::plan(t, n as usize));
                            meta.save(&req.dest)?;
                            match segmented::run(
                                self,
                                req,
                                &file,
                                &part,
                                &mut meta,
                                Some(resp),
                                progress,
                            ) {
                                Ok(done) => return Ok(done),
                                Err(SegError::Http(e)) => return Err(e),
                                Err(SegError::Fallback(why)) => {
                                    progress.note(&format!("one connection: {why}"));
                                    meta = abandon_segments(&mut file, &part, &req.dest)?;
                                }
                            }
                        }
                        _ => first = Some(resp),
                    }
                }
                Err(failed) => match self.first_contact(&mut fc, failed.connect.as_ref())? {
                    Some(wait) => interruptible_sleep(wait)?,
                    None => {
                        failures += 1;
                        backoff_sleep(&self.cfg, failures, progress, &failed.reason);
                    }
                },
            }
        }
        loop {
            interrupted()?;
            let attempt = self.attempt(
                first.take(),
                req,
                &shown,
                &mut file,
                &part,
                &mut offset,
                &mut hasher,
                &mut meta,
                &mut fetched,
                progress,
            )?;
            match attempt {
                Attempt::Complete(size) => {
                    file.sync_all().map_err(|e| io_err(&part, e))?;
                    if let Some(want) = req.expected_size {
                        if size != want {
                            let _ = std::fs::remove_file(&part);
                            let _ = std::fs::remove_file(meta_path(&req.dest));
                            return Err(HttpError::ErrorBody {
                                url: shown,
                                what: format!("{size} bytes where {want} were expected"),
                            });
                        }
                    }
                    return Ok((size, hasher.finish(), fetched, resumed_from));
                }
                Attempt::Retry {
                    reason,
                    progressed,
                    connect,
                } => {
                    if let Some(wait) = self.first_contact(&mut fc, connect.as_ref())? {
                        interruptible_sleep(wait)?;
                        continue;
                    }
                    // A link that keeps delivering is not failing: count only stuck attempts.
                    if progressed {
                        failures = 0;
                    }
                    failures += 1;
                    if failures > self.cfg.retries {
                        return Err(HttpError::Network {
                            url: shown,
                            attempts: failures,
                            last: reason,
                        });
                    }
                    backoff_sleep(&self.cfg, failures, progress, &reason);
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn attempt(
        &self,
        pre: Option<reqwest::blocking::Response>,
        req: &FileRequest,
        shown: &str,
        file: &mut File,
        part: &Path,
        offset: &mut u64,
        hasher: &mut HashPipe,
        meta: &mut PartMeta,
        fetched: &mut u64,
        progress: &FileProgress,
    ) -> Result<Attempt, HttpError> {
        let range = (*offset > 0).then(|| (*offset, meta.if_range()));
        let sent = match pre {
            Some(r) => Ok(r),
            None => self.send(&req.url, &req.headers, range),
        };
        let resp = match sent {
            Ok(r) => r,
            Err(failed) => {
                return Ok(Attempt::Retry {
                    reason: failed.reason,
                    progressed: false,
                    connect: failed.connect,
                })
            }
        };
        let status = resp.status();
        let restart = |file: &mut File, offset: &mut u64, hasher: &mut HashPipe| {
            *offset = 0;
            hasher.reset();
            progress.set_position(0);
            file.set_len(0)
                .and_then(|_| file.seek(SeekFrom::Start(0)).map(|_| ()))
                .map_err(|e| io_err(part, e))
        };
        let body_len = content_length(resp.headers());
        match status {
            StatusCode::OK => {
                if *offset > 0 {
                    // The server ignored the range (or If-Range said the object changed).
                    restart(file, offset, hasher)?;
                }
                *meta = PartMeta::from_headers(resp.headers(), body_len);
            }
            StatusCode::PARTIAL_CONTENT => match parse_content_range(resp.headers()) {
                Some((start, total)) if start == *offset => {
                    if meta.size.is_some_and(|s| total.is_some_and(|t| t != s)) {
                        restart(file, offset, hasher)?;
                        return Ok(Attempt::Retry {
                            reason: "the remote file changed size".into(),
                            progressed: false,
                            connect: None,
                        });
                    }
                    if meta.size.is_none() {
                        meta.size = total;
                    }
                }
                _ => {
                    restart(file, offset, hasher)?;
                    return Ok(Attempt::Retry {
                        reason: "the server answered a different range".into(),
                        progressed: false,
                        connect: None,
                    });
                }
            },
            StatusCode::RANGE_NOT_SATISFIABLE => {
                let total = resp
                    .headers()
                    .get(header::CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|s| s.strip_prefix("bytes */"))
                    .and_then(|s| s.trim().parse::<u64>().ok());
                if total == Some(*offset) {
                    return Ok(Attempt::Complete(*offset));
                }
                restart(file, offset, hasher)?;
                return Ok(Attempt::Retry {
                    reason: "the kept part does not fit the remote file".into(),
                    progressed: false,
                    connect: None,
                });
            }
            s => {
                return classify_status(s, resp, shown).map(|reason| Attempt::Retry {
                    reason,
                    progressed: false,
                    connect: None,
                })
            }
        }
        if meta.size.is_some() {
            meta.save(&req.dest)?;
        }
        let total = meta.size.or(req.expected_size);
        if let Some(t) = total {
            progress.set_len(t);
        }
        if req.reject_markup && is_markup_type(resp.headers()) {
            let ct = resp
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            return Err(HttpError::ErrorBody {
                url: shown.to_string(),
                what: format!("the server sent a {ct} page instead of the file"),
            });
        }
        if *offset == 0 {
            if let (Some(want), Some(got)) = (req.expected_size, body_len) {
                if got < want / 2 {
                    return Err(HttpError::ErrorBody {
                        url: shown.to_string(),
                        what: format!("the server sent {got} bytes where {want} were expected"),
                    });
                }
            }
        }

        let mut reservation = match total {
            Some(t) if req.check_space => {
                let dir = part.parent().unwrap_or(Path::new("."));
                Some(Reservation::claim(dir, t.saturating_sub(*offset))?)
            }
            _ => None,
        };
        let mut resp = resp;
        let start = *offset;
        // Reads land directly in a hasher buffer; each piece is written to the part at once (so
        // a killed run keeps it) and the full buffer then moves to the hasher without a copy.
        let mut buf = hasher.buffer();
        let mut filled = 0;
        let stopped = loop {
            interrupted()?;
            if filled == buf.len() {
                hasher.submit(buf, filled);
                buf = hasher.buffer();
                filled = 0;
            }
            let n = match resp.read(&mut buf[filled..]) {
                Ok(0) => break None,
                Ok(n) => n,
                Err(e) => break Some(io_reason(&e)),
            };
            let chunk = &buf[filled..filled + n];
            if *offset == 0 && req.reject_markup && looks_like_markup(chunk) {
                restart(file, offset, hasher)?;
                return Err(HttpError::ErrorBody {
                    url: shown.to_string(),
                    what: "the server sent an HTML/XML page instead of the file".into(),
                });
            }
            file.write_all(chunk).map_err(|e| io_err(part, e))?;
            if let Some(r) = reservation.as_mut() {
                r.wrote(n as u64);
            }
            filled += n;
            *offset += n as u64;
            *fetched += n as u64;
            progress.inc(n as u64);
        };
        hasher.submit(buf, filled);
        let progressed = *offset > start;
        match (stopped, total) {
            (Some(reason), _) => Ok(Attempt::Retry {
                reason,
                progressed,
                connect: None,
            }),
            (None, Some(t)) if *offset < t => Ok(Attempt::Retry {
                reason: format!("connection closed at byte {} of {t}", *offset),
                progressed,
                connect: None,
            }),
            (None, _) => Ok(Attempt::Complete(*offset)),
        }
    }
}

/// Drop a segmented part (it has holes) so a single stream can start it afresh.
fn abandon_segments(file: &mut File, part: &Path, dest: &Path) -> Result<PartMeta, HttpError> {
    file.set_len(0)
        .and_then(|_| file.seek(SeekFrom::Start(0)).map(|_| ()))
        .map_err(|e| io_err(part, e))?;
    let _ = std::fs::remove_file(meta_path(dest));
    Ok(PartMeta::default())
}
