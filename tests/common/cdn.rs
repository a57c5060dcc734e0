//! A small CDN for tests and benchmarks: plain HTTP/1.1 on 127.0.0.1, one thread per connection,
//! emulating Meta's CloudFront download links closely enough to exercise `llamactl download`.
//!
//! - Links: `http://ADDR/*?Policy=…&Signature=…&Key-Pair-Id=…`; the Policy is CloudFront base64 JSON
//!   with the expiry; the Signature names a link with an optional download count. An expired policy,
//!   an unknown signature or a used-up count is a 403 with an XML body, as CloudFront answers.
//! - `Range: bytes=N-` → 206 with `Content-Range`; `If-Range` with a stale validator → 200; a range
//!   at or past the end → 416 `bytes */LEN`. Unknown paths → 404 with an XML body.
//! - Faults, consumed one per matching request: drop the connection after N body bytes (reset), one
//!   500, a stall, a short body (clean close), a Content-Length larger than the body, an HTML page,
//!   a body trickled slowly.
//! - Counters: body bytes served per path and a log of requests.
#![allow(dead_code)]

use base64::Engine;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Clone)]
pub enum Body {
    Memory(Arc<Vec<u8>>),
    Disk(Arc<PathBuf>, u64),
}

impl Body {
    fn len(&self) -> u64 {
        match self {
            Body::Memory(v) => v.len() as u64,
            Body::Disk(_, n) => *n,
        }
    }
}

#[derive(Clone, Debug)]
pub enum Fault {
    /// Reset the connection after this many body bytes.
    DropAfter(u64),
    /// Answer 500 with a small body.
    Status500,
    /// Send this many body bytes, then go silent for the duration, then close.
    Stall(u64, Duration),
    /// Announce the full length, send this many bytes, close cleanly.
    ShortBody(u64),
    /// Announce this many extra bytes in Content-Length, send the real body, close.
    LongerLength(u64),
    /// 200 with an HTML page where the file should be.
    Html,
    /// Send the body in pieces of 64 bytes at this many bytes per second: never a stall, always slow.
    Trickle(u64),
}

struct Link {
    uses_left: Option<u32>,
}

#[derive(Clone, Debug)]
pub struct Request {
    pub path: String,
    pub range: Option<String>,
    pub if_range: Option<String>,
    pub status: u16,
}

#[derive(Default)]
struct State {
    files: HashMap<String, (Body, String)>,
    links: HashMap<String, Link>,
    faults: Vec<(String, Fault)>,
    throttle: Option<u64>,
    served: HashMap<String, u64>,
    log: Vec<Request>,
    next_sig: u64,
}

#[derive(Clone)]
pub struct Cdn {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
}

fn md5_hex(data: &[u8]) -> String {
    use md5::Digest;
    hex::encode(md5::Md5::digest(data))
}

pub fn cloudfront_b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD
        .encode(data)
        .chars()
        .map(|c| match c {
            '+' => '-',
            '=' => '_',
            '/' => '~',
            c => c,
        })
        .collect()
}

fn policy_expiry(policy: &str) -> Option<u64> {
    let std: String = policy
        .chars()
        .map(|c| match c {
            '-' => '+',
            '_' => '=',
            '~' => '/',
            c => c,
        })
        .collect();
    let bytes = base64::engine::general_purpose::STANDARD.decode(std).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    v.pointer("/Statement/0/Condition/DateLessThan/AWS:EpochTime")?
        .as_u64()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

impl Cdn {
    pub fn start() -> Cdn {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        let addr = listener.local_addr().expect("local addr");
        let state = Arc::new(Mutex::new(State::default()));
        let st = state.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let st = st.clone();
                std::thread::spawn(move || {
                    let _ = serve(conn, &st);
                });
            }
        });
        Cdn { addr, state }
    }

    /// Serve `data` at `path` (no leading slash), with an ETag of its md5.
    pub fn put(&self, path: &str, data: Vec<u8>) {
        let etag = format!("\"{}\"", md5_hex(&data));
        lock(&self.state)
            .files
            .insert(path.to_string(), (Body::Memory(Arc::new(data)), etag));
    }

    /// Serve a file from disk at `path`; the ETag is derived from its size and mtime.
    pub fn put_file(&self, path: &str, file: PathBuf) -> std::io::Result<()> {
        let meta = std::fs::metadata(&file)?;
        let mtime = meta
            .modified()?
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let etag = format!("\"{:x}-{:x}\"", meta.len(), mtime);
        lock(&self.state).files.insert(
            path.to_string(),
            (Body::Disk(Arc::new(file), meta.len()), etag),
        );
        Ok(())
    }

    /// Give a file a new validator, as a re-upload of the object would.
    pub fn set_etag(&self, path: &str, etag: &str) {
        if let Some(f) = lock(&self.state).files.get_mut(path) {
            f.1 = etag.to_string();
        }
    }

    pub fn remove(&self, path: &str) {
        lock(&self.state).files.remove(path);
    }

    /// A link valid for `valid_for` seconds (negative: already expired) and `uses` requests.
    pub fn link(&self, valid_for: i64, uses: Option<u32>) -> String {
        let mut st = lock(&self.state);
        st.next_sig += 1;
        let sig = format!("SIGxyz{}Q~", st.next_sig * 7919);
        st.links.insert(sig.clone(), Link { uses_left: uses });
        let expiry = (now() as i64 + valid_for).max(0);
        let policy = format!(
            r#"{{"Statement":[{{"Resource":"http://{}/*","Condition":{{"DateLessThan":{{"AWS:EpochTime":{expiry}}}}}}}]}}"#,
            self.addr
        );
        format!(
            "http://{}/*?Policy={}&Signature={sig}&Key-Pair-Id=APKATESTKEYPAIR&Download-Request-ID=4242",
            self.addr,
            cloudfront_b64(policy.as_bytes())
        )
    }

    pub fn fault(&self, path: &str, fault: Fault) {
        lock(&self.state).faults.push((path.to_string(), fault));
    }

    /// Limit every connection to about this many bytes per second (None: unlimited).
    pub fn throttle(&self, bytes_per_sec: Option<u64>) {
        lock(&self.state).throttle = bytes_per_sec;
    }

    pub fn served(&self, path: &str) -> u64 {
        lock(&self.state).served.get(path).copied().unwrap_or(0)
    }

    pub fn requests(&self) -> Vec<Request> {
        lock(&self.state).log.clone()
    }
}

fn xml_error(code: &str, message: &str) -> String {
    format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>{message}</Message></Error>")
}

fn respond_small(
    conn: &mut TcpStream,
    status: &str,
    ctype: &str,
    extra: &str,
    body: &str,
) -> std::io::Result<()> {
    write!(
        conn,
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n{body}",
        body.len()
    )?;
    conn.flush()
}

fn serve(conn: TcpStream, state: &Mutex<State>) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut conn = conn;
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let target = line.split_whitespace().nth(1).unwrap_or("/").to_string();
    let mut range = None;
    let mut if_range = None;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h == "\r\n" || h == "\n" {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            let v = v.trim().to_string();
            match k.trim().to_ascii_lowercase().as_str() {
                "range" => range = Some(v),
                "if-range" => if_range = Some(v),
                _ => {}
            }
        }
    }
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let path = path.trim_start_matches('/').to_string();
    let param = |name: &str| {
        query.split('&').find_map(|kv| {
            kv.split_once('=')
                .filter(|(k, _)| *k == name)
                .map(|(_, v)| v)
        })
    };

    let mut st = lock(state);
    let log = |st: &mut State, status: u16| {
        st.log.push(Request {
            path: path.clone(),
            range: range.clone(),
            if_range: if_range.clone(),
            status,
        })
    };
    // CloudFront checks the policy and signature before anything else.
    let expired = param("Policy")
        .and_then(policy_expiry)
        .is_none_or(|e| e <= now());
    let link_ok = match param("Signature").and_then(|s| st.links.get_mut(s)) {
        Some(link) if !expired => match &mut link.uses_left {
            Some(0) => false,
            Some(n) => {
                *n -= 1;
                true
            }
            None => true,
        },
        _ => false,
    };
    if !link_ok {
        log(&mut st, 403);
        drop(st);
        return respond_small(
            &mut conn,
            "403 Forbidden",
            "application/xml",
            "",
            &xml_error("AccessDenied", "Access denied"),
        );
    }
    let Some((body, etag)) = st.files.get(&path).cloned() else {
        log(&mut st, 404);
        drop(st);
        return respond_small(
            &mut conn,
            "404 Not Found",
            "application/xml",
            "",
            &xml_error("NoSuchKey", "The specified key does not exist."),
        );
    };
    let fault = st
        .faults
        .iter()
        .position(|(p, _)| *p == path)
        .map(|i| st.faults.remove(i).1);
    let throttle = match &fault {
        Some(Fault::Trickle(rate)) => Some(*rate),
        _ => st.throttle,
    };
    let len = body.len();
    let mut start = 0u64;
    let mut end = len; // exclusive
    let mut partial = false;
    if let Some(r) = &range {
        let valid = if_range.as_ref().is_none_or(|v| v == &etag);
        let spec = r.strip_prefix("bytes=").and_then(|s| s.split_once('-'));
        if let (true, Some((a, b))) = (valid, spec) {
            if let Ok(n) = a.parse::<u64>() {
                if n >= len {
                    log(&mut st, 416);
                    drop(st);
                    return respond_small(
                        &mut conn,
                        "416 Range Not Satisfiable",
                        "application/xml",
                        &format!("Content-Range: bytes */{len}\r\n"),
                        &xml_error("InvalidRange", "The requested range is not satisfiable"),
                    );
                }
                start = n;
                end = b
                    .parse::<u64>()
                    .map_or(len, |e| (e + 1).min(len))
                    .max(start);
                partial = true;
            }
        }
    }
    match &fault {
        Some(Fault::Status500) => {
            log(&mut st, 500);
            drop(st);
            return respond_small(
                &mut conn,
                "500 Internal Server Error",
                "text/plain",
                "",
                "oops",
            );
        }
        Some(Fault::Html) => {
            log(&mut st, 200);
            drop(st);
            return respond_small(
                &mut conn,
                "200 OK",
                "text/html",
                "",
                "<!DOCTYPE html><html><body>Access denied</body></html>",
            );
        }
        _ => {}
    }
    log(&mut st, if partial { 206 } else { 200 });
    drop(st);

    let remaining = end - start;
    let announced = match &fault {
        Some(Fault::LongerLength(extra)) => remaining + extra,
        _ => remaining,
    };
    let mut head = if partial {
        format!(
            "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {start}-{}/{len}\r\n",
            end - 1
        )
    } else {
        "HTTP/1.1 200 OK\r\n".to_string()
    };
    head.push_str(&format!(
        "Content-Type: application/octet-stream\r\nContent-Length: {announced}\r\nETag: {etag}\r\nLast-Modified: Tue, 16 Apr 2024 00:00:00 GMT\r\nAccept-Ranges: bytes\r\nConnection: close\r\n\r\n"
    ));
    conn.write_all(head.as_bytes())?;

    let limit = match &fault {
        Some(Fault::DropAfter(n)) | Some(Fault::ShortBody(n)) | Some(Fault::Stall(n, _)) => {
            (*n).min(remaining)
        }
        _ => remaining,
    };
    if throttle.is_some() {
        // A small send buffer keeps "served" close to what the client has actually taken in.
        set_sndbuf(&conn, 32 << 10);
    }
    let chunk = match (&fault, throttle) {
        (Some(Fault::Trickle(_)), _) => 64,
        (_, Some(_)) => 16 << 10,
        _ => 256 << 10,
    };
    let mut buf = vec![0u8; chunk];
    let mut sent = 0u64;
    let t0 = std::time::Instant::now();
    while sent < limit {
        let n = (limit - sent).min(chunk as u64) as usize;
        let pos = start + sent;
        match &body {
            Body::Memory(v) => buf[..n].copy_from_slice(&v[pos as usize..pos as usize + n]),
            Body::Disk(p, _) => {
                std::fs::File::open(p.as_path())?.read_exact_at(&mut buf[..n], pos)?
            }
        }
        if let Some(rate) = throttle {
            let due = Duration::from_secs_f64((sent + n as u64) as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(t0.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        conn.write_all(&buf[..n])?;
        sent += n as u64;
        *lock(state).served.entry(path.clone()).or_insert(0) += n as u64;
    }
    match fault {
        Some(Fault::DropAfter(_)) => {
            // Both handles close on return; with linger 0 that close is a reset.
            reset(&conn);
            return Ok(());
        }
        Some(Fault::Stall(_, d)) => {
            conn.flush()?;
            std::thread::sleep(d);
        }
        _ => {}
    }
    conn.flush()?;
    let _ = conn.shutdown(std::net::Shutdown::Write);
    // Drain what the client may still send so the close is clean.
    let _ = reader
        .get_mut()
        .set_read_timeout(Some(Duration::from_millis(200)));
    let mut sink = [0u8; 1024];
    let _ = reader.get_mut().read(&mut sink);
    Ok(())
}

fn set_sndbuf(conn: &TcpStream, bytes: libc::c_int) {
    use std::os::fd::AsRawFd;
    // SAFETY: setsockopt on a socket we own, with a correctly sized int.
    unsafe {
        libc::setsockopt(
            conn.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            &bytes as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// Close with RST instead of FIN, as a dropped connection looks to the client.
fn reset(conn: &TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on a socket we own, with a correctly sized linger struct.
    unsafe {
        libc::setsockopt(
            conn.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}
