//! A fault-injecting HTTP/1.1 proxy for the fault report (`scripts/faults`) and for tests:
//! it sits in front of a real server (docker-registry, or moto behind [`crate::s3_rig`])
//! and, for a seeded share of requests, answers 429 with `Retry-After`, answers 503, or
//! passes the request on and cuts the connection (RST) in the middle of the answer. It can
//! flip one byte of chosen answers, and hold the first request of a kind (before or after
//! passing it on) so a test can kill the client at that exact point. Every request is
//! logged with its arrival time and what was done to it.
//!
//! Decisions are reproducible: whether a request is faulted depends only on the seed, the
//! request's kind (method, path with upload ids blanked, part number) and how many of that
//! kind came before, not on how concurrent requests interleave.

use crate::{read_body, read_head, strip_framing};
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What was done to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Answered 429 with `Retry-After: N` (seconds); not passed on.
    TooMany,
    /// Answered 503; not passed on.
    Unavailable,
    /// Passed on (the server acted on it), then the answer was cut mid-body with a reset.
    Reset,
    /// Passed on, and one byte of the answer's body flipped.
    Flip,
    /// Held by a trap (the client was killed meanwhile).
    Held,
}

/// The error bodies the proxy's own answers carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// Distribution's JSON errors.
    Registry,
    /// S3's XML errors.
    S3,
}

/// One request as the proxy saw it.
#[derive(Debug, Clone)]
pub struct Logged {
    /// When its head had arrived.
    pub at: Instant,
    /// Method and path (with query), as sent.
    pub line: String,
    /// Its kind (what the seeded decision and the retry matching use).
    pub kind: String,
    /// How many of this kind came before it.
    pub nth: u32,
    pub fault: Option<Fault>,
}

/// Decides which requests may be faulted and which answers get a byte flipped.
pub type Pick = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// The faults to inject.
#[derive(Clone)]
pub struct Faults {
    pub seed: u64,
    /// Per mille of eligible requests that get a fault (100 = 10%).
    pub per_mille: u32,
    /// The faults drawn from, equally likely.
    pub kinds: Vec<Fault>,
    /// Which requests may be faulted (by request head).
    pub eligible: Pick,
    /// `Retry-After` of a 429, in seconds.
    pub retry_after_secs: u64,
    /// Answers (by request head) whose body gets one byte flipped, every time.
    pub flip: Option<Pick>,
    pub flavor: Flavor,
    /// Overrides the seeded draw: the fault (or none) for a request head and how many of
    /// its kind came before (a test's exact script, e.g. "the first GET of a.bin: 429").
    pub script: Option<Script>,
}

/// A fault by request head and the count of its kind before it.
pub type Script = Arc<dyn Fn(&str, u32) -> Option<Fault> + Send + Sync>;

impl Faults {
    /// No faults: the proxy only logs (and traps).
    pub fn none(flavor: Flavor) -> Self {
        Self {
            seed: 0,
            per_mille: 0,
            kinds: Vec::new(),
            eligible: Arc::new(|_| false),
            retry_after_secs: 1,
            flip: None,
            flavor,
            script: None,
        }
    }

    /// Exactly the faults `script` names (and none else).
    pub fn scripted(flavor: Flavor, retry_after_secs: u64, script: Script) -> Self {
        Self {
            retry_after_secs,
            script: Some(script),
            ..Self::none(flavor)
        }
    }

    /// `per_mille` of all requests get a 429 (with `Retry-After`), a 503 or a reset.
    pub fn transient(flavor: Flavor, seed: u64, per_mille: u32, retry_after_secs: u64) -> Self {
        Self {
            seed,
            per_mille,
            kinds: vec![Fault::TooMany, Fault::Unavailable, Fault::Reset],
            eligible: Arc::new(|_| true),
            retry_after_secs,
            flip: None,
            flavor,
            script: None,
        }
    }
}

/// When a trap springs relative to passing the request on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    /// The request never reaches the server.
    Before,
    /// The server acts on it; its answer never reaches the client.
    After,
}

struct Trap {
    pick: Pick,
    hold: Hold,
    sprung: mpsc::Sender<String>,
}

struct Shared {
    upstream: String,
    faults: Faults,
    log: Mutex<Vec<Logged>>,
    seen: Mutex<HashMap<String, u32>>,
    trap: Mutex<Option<Trap>>,
    released: AtomicBool,
    stop: AtomicBool,
}

/// The proxy (see the module docs). Stopped on drop.
pub struct FaultProxy {
    /// `127.0.0.1:PORT`.
    pub addr: String,
    shared: Arc<Shared>,
}

impl FaultProxy {
    /// In front of `upstream` (`HOST:PORT` or `http://HOST:PORT`).
    pub fn start(upstream: &str, faults: Faults) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        listener.set_nonblocking(true).unwrap();
        let shared = Arc::new(Shared {
            upstream: upstream.trim_start_matches("http://").to_string(),
            faults,
            log: Mutex::new(Vec::new()),
            seen: Mutex::new(HashMap::new()),
            trap: Mutex::new(None),
            released: AtomicBool::new(false),
            stop: AtomicBool::new(false),
        });
        let s = shared.clone();
        std::thread::spawn(move || {
            while !s.stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let s = s.clone();
                        std::thread::spawn(move || {
                            let _ = handle(client, &s);
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        Self { addr, shared }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request so far, in arrival order.
    pub fn log(&self) -> Vec<Logged> {
        let mut l = self.shared.log.lock().unwrap().clone();
        l.sort_by_key(|e| e.at);
        l
    }

    /// Arms a trap: the first request `pick` matches is held (see [`Hold`]) until
    /// [`release`](Self::release), then its connection is closed without an answer.
    /// The receiver gets its request line when it arrives (or, for [`Hold::After`], once
    /// the server has answered it).
    pub fn trap(&self, pick: Pick, hold: Hold) -> mpsc::Receiver<String> {
        let (tx, rx) = mpsc::channel();
        self.shared.released.store(false, Ordering::SeqCst);
        *self.shared.trap.lock().unwrap() = Some(Trap {
            pick,
            hold,
            sprung: tx,
        });
        rx
    }

    /// Lets a held request go (its connection is closed, unanswered).
    pub fn release(&self) {
        self.shared.released.store(true, Ordering::SeqCst);
    }

    /// For every 429 answered: whether the next request of the same kind came no sooner
    /// than `Retry-After` said. Returns (429s followed by a retry, of those the ones that
    /// came too soon, the shortest gap seen).
    pub fn retry_after_check(&self) -> RetryAfterCheck {
        let log = self.log();
        let wait = Duration::from_secs(self.shared.faults.retry_after_secs);
        let mut c = RetryAfterCheck::default();
        for (i, e) in log.iter().enumerate() {
            // Kinds many clients share, the registry ping (`GET /v2/`) and a repository's
            // upload sessions (`POST …/blobs/uploads/`, PATCH/PUT of a session id): the
            // next one of the kind may be anybody's, not the retry. Counted apart.
            if e.fault != Some(Fault::TooMany) {
                continue;
            }
            if e.kind.starts_with("GET /v2/?") || e.kind.contains("/blobs/uploads/") {
                c.unmatched += 1;
                continue;
            }
            c.answered += 1;
            let Some(next) = log[i + 1..]
                .iter()
                .find(|n| n.kind == e.kind && n.nth == e.nth + 1)
            else {
                continue;
            };
            let gap = next.at.duration_since(e.at);
            c.retried += 1;
            c.shortest = Some(c.shortest.map_or(gap, |s: Duration| s.min(gap)));
            if gap < wait {
                c.too_soon += 1;
                if c.examples.len() < 3 {
                    c.examples
                        .push(format!("{} again after {} ms", e.line, gap.as_millis()));
                }
            }
        }
        c
    }

    /// Requests so far that got each fault.
    pub fn injected(&self) -> HashMap<&'static str, usize> {
        let mut m = HashMap::new();
        for e in self.shared.log.lock().unwrap().iter() {
            if let Some(f) = e.fault {
                let name = match f {
                    Fault::TooMany => "429",
                    Fault::Unavailable => "503",
                    Fault::Reset => "reset",
                    Fault::Flip => "flip",
                    Fault::Held => "held",
                };
                *m.entry(name).or_default() += 1;
            }
        }
        m
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.shared.released.store(true, Ordering::SeqCst);
    }
}

/// What [`FaultProxy::retry_after_check`] found.
#[derive(Debug, Default, Clone)]
pub struct RetryAfterCheck {
    /// 429s whose retry could be told apart (see [`FaultProxy::retry_after_check`]).
    pub answered: usize,
    /// 429s on requests many clients share (registry pings, upload sessions): not matched.
    pub unmatched: usize,
    pub retried: usize,
    pub too_soon: usize,
    pub shortest: Option<Duration>,
    pub examples: Vec<String>,
}

/// A request's kind: method, path with id-like segments blanked, the part number.
pub fn kind(head: &str) -> String {
    let line = head.lines().next().unwrap_or("");
    let mut it = line.split_whitespace();
    let method = it.next().unwrap_or("");
    let uri = it.next().unwrap_or("");
    let (path, query) = uri.split_once('?').unwrap_or((uri, ""));
    let path: Vec<&str> = path
        .split('/')
        .map(|seg| {
            let idish = seg.len() >= 32
                && !seg.starts_with("sha256:")
                && seg.chars().all(|c| c.is_ascii_hexdigit() || c == '-');
            if idish { "*" } else { seg }
        })
        .collect();
    let mut q: Vec<&str> = query
        .split('&')
        .filter(|p| {
            p.starts_with("partNumber=")
                || p.starts_with("list-type=")
                || *p == "uploads"
                || p.starts_with("uploadId")
        })
        .map(|p| {
            if p.starts_with("uploadId") {
                "uploadId"
            } else {
                p
            }
        })
        .collect();
    q.sort();
    format!("{method} {}?{}", path.join("/"), q.join("&"))
}

fn draw(seed: u64, kind: &str, nth: u32) -> u64 {
    // SipHash with fixed keys: the same on every run and machine.
    #[allow(deprecated)]
    let mut h = std::hash::SipHasher::new_with_keys(seed, 0x5eed);
    kind.hash(&mut h);
    nth.hash(&mut h);
    h.finish()
}

fn error_answer(flavor: Flavor, status: u16, retry_after: Option<u64>) -> Vec<u8> {
    let (ctype, body) = match (flavor, status) {
        (Flavor::Registry, 429) => (
            "application/json",
            r#"{"errors":[{"code":"TOOMANYREQUESTS","message":"slow down (fault proxy)"}]}"#,
        ),
        (Flavor::Registry, _) => (
            "application/json",
            r#"{"errors":[{"code":"UNAVAILABLE","message":"unavailable (fault proxy)"}]}"#,
        ),
        (Flavor::S3, 429) => (
            "application/xml",
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>SlowDown</Code><Message>Please reduce your request rate (fault proxy).</Message></Error>",
        ),
        (Flavor::S3, _) => (
            "application/xml",
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>ServiceUnavailable</Code><Message>Service is unable to handle request (fault proxy).</Message></Error>",
        ),
    };
    let reason = if status == 429 {
        "Too Many Requests"
    } else {
        "Service Unavailable"
    };
    let mut head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if let Some(s) = retry_after {
        head.push_str(&format!("Retry-After: {s}\r\n"));
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(body.as_bytes());
    out
}

/// Closes a connection with a reset (RST), as a dropped or crashed peer does.
fn reset(s: TcpStream) {
    let sock = socket2::Socket::from(s);
    let _ = sock.set_linger(Some(Duration::ZERO));
    drop(sock);
}

fn handle(mut client: TcpStream, s: &Shared) -> std::io::Result<()> {
    client.set_nonblocking(false)?;
    client.set_read_timeout(Some(Duration::from_secs(300)))?;
    let head = read_head(&mut client)?;
    let at = Instant::now();
    let body = read_body(&mut client, &head, false)?;
    let head_text = String::from_utf8_lossy(&head).to_string();
    let line = head_text
        .lines()
        .next()
        .unwrap_or("")
        .rsplit_once(' ')
        .map(|(a, _)| a.to_string())
        .unwrap_or_default();
    let k = kind(&head_text);
    let nth = {
        let mut seen = s.seen.lock().unwrap();
        let n = seen.entry(k.clone()).or_insert(0);
        *n += 1;
        *n - 1
    };
    let f = &s.faults;
    let trapped = {
        let mut t = s.trap.lock().unwrap();
        if t.as_ref().is_some_and(|t| (t.pick)(&head_text)) {
            t.take()
        } else {
            None
        }
    };
    let mut fault = None;
    if let Some(script) = f.script.as_ref().filter(|_| trapped.is_none()) {
        fault = script(&head_text, nth);
    } else if trapped.is_none()
        && !f.kinds.is_empty()
        && (f.eligible)(&head_text)
        && draw(f.seed, &k, nth) % 1000 < u64::from(f.per_mille)
    {
        fault = Some(f.kinds[(draw(f.seed ^ 0xfa17, &k, nth) % f.kinds.len() as u64) as usize]);
    }
    let flip = trapped.is_none() && f.flip.as_ref().is_some_and(|p| p(&head_text));
    let logged = |fault| {
        s.log.lock().unwrap().push(Logged {
            at,
            line: line.clone(),
            kind: k.clone(),
            nth,
            fault,
        })
    };
    if let Some(t) = trapped {
        logged(Some(Fault::Held));
        if t.hold == Hold::After {
            let _ = forward(s, &head_text, &body);
        }
        let _ = t.sprung.send(line.clone());
        let deadline = Instant::now() + Duration::from_secs(120);
        while !s.released.load(Ordering::SeqCst) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        reset(client);
        return Ok(());
    }
    match fault {
        Some(Fault::TooMany) => {
            logged(fault);
            client.write_all(&error_answer(f.flavor, 429, Some(f.retry_after_secs)))?;
            return client.shutdown(std::net::Shutdown::Both);
        }
        Some(Fault::Unavailable) => {
            logged(fault);
            client.write_all(&error_answer(f.flavor, 503, None))?;
            return client.shutdown(std::net::Shutdown::Both);
        }
        _ => {}
    }
    let (resp_head, mut resp_body) = forward(s, &head_text, &body)?;
    let status: u16 = resp_head
        .split_whitespace()
        .nth(1)
        .and_then(|x| x.parse().ok())
        .unwrap_or(502);
    let flipped = flip && (200..300).contains(&status) && !resp_body.is_empty();
    if flipped {
        let i = resp_body.len() / 2;
        resp_body[i] ^= 0x01;
    }
    logged(if flipped { Some(Fault::Flip) } else { fault });
    let is_head = head_text.starts_with("HEAD ");
    let mut lines: Vec<String> = if is_head {
        resp_head
            .split("\r\n")
            .filter(|l| !l.is_empty() && !l.to_ascii_lowercase().starts_with("connection:"))
            .map(str::to_string)
            .collect()
    } else {
        strip_framing(&resp_head)
    };
    if !is_head {
        lines.push(format!("Content-Length: {}", resp_body.len()));
    }
    lines.push("Connection: close".into());
    let mut out = format!("{}\r\n\r\n", lines.join("\r\n")).into_bytes();
    let head_len = out.len();
    out.extend_from_slice(&resp_body);
    if fault == Some(Fault::Reset) {
        // Mid-body when there is a body; else in the middle of the head.
        let cut = if resp_body.len() >= 2 {
            head_len + resp_body.len() / 2
        } else {
            head_len / 2
        };
        client.write_all(&out[..cut])?;
        client.flush()?;
        reset(client);
        return Ok(());
    }
    client.write_all(&out)?;
    client.shutdown(std::net::Shutdown::Both)
}

/// Passes a request on; returns the answer's head (text) and body.
fn forward(s: &Shared, head: &str, body: &[u8]) -> std::io::Result<(String, Vec<u8>)> {
    let mut up = TcpStream::connect(&s.upstream)?;
    up.set_read_timeout(Some(Duration::from_secs(300)))?;
    let mut lines = strip_framing(head);
    lines.push(format!("Content-Length: {}", body.len()));
    lines.push("Connection: close".into());
    up.write_all(format!("{}\r\n\r\n", lines.join("\r\n")).as_bytes())?;
    up.write_all(body)?;
    let resp_head = read_head(&mut up)?;
    let resp_body = if head.starts_with("HEAD ") {
        Vec::new()
    } else {
        read_body(&mut up, &resp_head, true)?
    };
    Ok((String::from_utf8_lossy(&resp_head).to_string(), resp_body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_blank_upload_ids_and_keep_part_numbers() {
        let a = kind(
            "PATCH /v2/app/blobs/uploads/0f7c1e2a-7c8e-4b0e-9d1e-3a2b1c0d9e8f?_state=xyz HTTP/1.1\r\n\r\n",
        );
        assert_eq!(a, "PATCH /v2/app/blobs/uploads/*?");
        let p = kind("PUT /dst/big.bin?partNumber=3&uploadId=abc HTTP/1.1\r\n\r\n");
        assert_eq!(p, "PUT /dst/big.bin?partNumber=3&uploadId");
        assert_eq!(draw(7, &p, 0), draw(7, &p, 0));
        assert_ne!(draw(7, &p, 0), draw(7, &p, 1));
    }
}
