//! The fake API server's HTTP/1.1: one thread per connection, keep-alive,
//! Content-Length bodies for lists and errors, chunked bodies for watches.
//! A connection is cut (with a reset, as a crashed server's) when the
//! store's epoch moves on.

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader, ErrorKind, Read as _, Write as _},
    net::{TcpListener, TcpStream},
    sync::{Arc, atomic::Ordering},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use portmap_testkit::lock;
use serde_json::Value;

use super::{
    Shared,
    store::{Filter, Selector, Store},
    wire::{self, Kind},
};

/// How often blocked reads and waits look at the epoch.
const TICK: Duration = Duration::from_millis(50);
/// The longest watch, whatever the client asks (kube-apiserver's
/// `--min-request-timeout` is 1800 s; tests need far less).
const MAX_WATCH: Duration = Duration::from_secs(600);

pub(super) fn accept_loop(listener: TcpListener, shared: &Arc<Shared>) -> Result<()> {
    let addr = listener.local_addr()?;
    listener.set_nonblocking(true)?;
    let mut listener = Some(listener);
    let mut conns: Vec<JoinHandle<()>> = Vec::new();
    while !shared.shutdown.load(Ordering::SeqCst) {
        let up = lock(&shared.store).up;
        if !up {
            // Refused, as a server that is not running.
            listener = None;
        } else if listener.is_none() {
            // SO_REUSEADDR (std sets it): the port's TIME_WAITs do not matter.
            let l = TcpListener::bind(addr).with_context(|| format!("binding {addr} again"))?;
            l.set_nonblocking(true)?;
            listener = Some(l);
        }
        match listener.as_ref().map(TcpListener::accept) {
            Some(Ok((stream, _))) => {
                let s = shared.clone();
                conns.push(std::thread::spawn(move || serve(stream, &s)));
            }
            Some(Err(e)) if e.kind() != ErrorKind::WouldBlock => return Err(e.into()),
            _ => std::thread::sleep(Duration::from_millis(10)),
        }
        conns.retain(|c| !c.is_finished());
    }
    for c in conns {
        let _ = c.join();
    }
    Ok(())
}

/// A parsed request.
struct Request {
    method: String,
    path: String,
    query: BTreeMap<String, String>,
    body: Vec<u8>,
}

impl Request {
    fn q(&self, key: &str) -> &str {
        self.query.get(key).map_or("", String::as_str)
    }
}

/// Why a connection ends.
enum End {
    /// The epoch moved on: cut with a reset.
    Cut,
    /// The client closed it, or failed.
    Closed,
}

fn serve(stream: TcpStream, shared: &Arc<Shared>) {
    let epoch = lock(&shared.store).epoch;
    let conn = Conn { shared, epoch };
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(TICK));
    let _ = stream.set_nodelay(true);
    let Ok(read_half) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half);
    let mut out = stream;
    let end = loop {
        let request = match conn.read_request(&mut reader) {
            Ok(r) => r,
            Err(end) => break end,
        };
        let line = if request.query.is_empty() {
            format!("{} {}", request.method, request.path)
        } else {
            let q: Vec<String> = request
                .query
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            format!("{} {}?{}", request.method, request.path, q.join("&"))
        };
        lock(&shared.store).requests.push(line);
        if let Err(end) = conn.respond(&mut out, &request) {
            break end;
        }
    };
    if matches!(end, End::Cut) {
        reset(&out);
    }
}

/// Closes with RST rather than FIN: the peer sees the connection fail.
fn reset(stream: &TcpStream) {
    use std::os::fd::AsRawFd as _;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket fd, and a pointer to a linger of the size given.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            std::ptr::from_ref(&linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

struct Conn<'a> {
    shared: &'a Arc<Shared>,
    epoch: u64,
}

impl Conn<'_> {
    fn cut(&self, store: &Store) -> bool {
        self.shared.shutdown.load(Ordering::SeqCst) || store.epoch != self.epoch
    }

    fn is_cut(&self) -> bool {
        self.cut(&lock(&self.shared.store))
    }

    /// Reads until `done` says what was read is enough, looking at the
    /// epoch between timeouts.
    fn read_more(&self, reader: &mut BufReader<TcpStream>, buf: &mut Vec<u8>) -> Result<(), End> {
        loop {
            if self.is_cut() {
                return Err(End::Cut);
            }
            match reader.read_until(b'\n', buf) {
                Ok(0) => return Err(End::Closed),
                Ok(_) if buf.ends_with(b"\n") => return Ok(()),
                Ok(_) => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => return Err(End::Closed),
            }
        }
    }

    fn read_request(&self, reader: &mut BufReader<TcpStream>) -> Result<Request, End> {
        let mut head = Vec::new();
        loop {
            self.read_more(reader, &mut head)?;
            if head.ends_with(b"\r\n\r\n") || head == b"\r\n" {
                break;
            }
        }
        let head = String::from_utf8_lossy(&head).into_owned();
        let mut lines = head.lines();
        let mut first = lines.next().unwrap_or_default().split_whitespace();
        let method = first.next().unwrap_or_default().to_string();
        let target = first.next().unwrap_or_default();
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let mut length = 0;
        for line in lines {
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; length];
        let mut got = 0;
        while got < length {
            if self.is_cut() {
                return Err(End::Cut);
            }
            match reader.read(&mut body[got..]) {
                Ok(0) => return Err(End::Closed),
                Ok(n) => got += n,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => return Err(End::Closed),
            }
        }
        Ok(Request {
            method,
            path: path.to_string(),
            query: parse_query(query),
            body,
        })
    }

    fn respond(&self, out: &mut TcpStream, r: &Request) -> Result<(), End> {
        let kind = Kind::ALL.into_iter().find(|k| k.path() == r.path);
        let watch = matches!(r.q("watch"), "true" | "1");
        let events = r
            .path
            .strip_prefix("/apis/events.k8s.io/v1/namespaces/")
            .and_then(|rest| rest.split_once("/events"));
        let sent = match (r.method.as_str(), kind, events) {
            ("GET", Some(kind), _) if watch => return self.watch(out, kind, r),
            ("GET", Some(kind), _) => self.list(kind, r),
            ("POST", None, Some((ns, ""))) => match serde_json::from_slice::<Value>(&r.body) {
                Ok(event) => {
                    let stored = self.shared.update(|s| s.post_event(ns, event));
                    (201, wire::go_json(&stored))
                }
                Err(e) => (400, wire::status(400, "BadRequest", &e.to_string())),
            },
            ("PATCH", None, Some((_, name))) => {
                let name = name.trim_start_matches('/');
                let store = lock(&self.shared.store);
                let found = store
                    .events
                    .iter()
                    .rev()
                    .find(|e| e["metadata"]["name"] == name);
                match found {
                    Some(e) => (200, wire::go_json(e)),
                    None => (404, not_found(&format!("events.events.k8s.io \"{name}\""))),
                }
            }
            _ => (
                404,
                wire::status(
                    404,
                    "NotFound",
                    "the server could not find the requested resource",
                ),
            ),
        };
        let (code, body) = sent;
        let head = format!(
            "HTTP/1.1 {code} {}\r\nAudit-Id: {}\r\nCache-Control: no-cache, private\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            reason(code),
            audit_id(),
            body.len()
        );
        write_all(out, head.as_bytes())?;
        write_all(out, body.as_bytes())
    }

    fn list(&self, kind: Kind, r: &Request) -> (u16, String) {
        let filter = filter(r);
        let limit: usize = r.q("limit").parse().unwrap_or(0);
        let start = match r.q("continue") {
            "" => None,
            token => match decode_continue(token) {
                Some(start) => Some(start),
                None => {
                    let m = "continue key is not valid: invalid continue token";
                    return (400, wire::status(400, "BadRequest", m));
                }
            },
        };
        let store = lock(&self.shared.store);
        let items: Vec<(String, &Value)> = store
            .objects
            .iter()
            .filter(|((k, _, _), v)| *k == kind && filter.matches(v))
            .map(|((_, ns, name), v)| {
                let key = if ns.is_empty() {
                    name.clone()
                } else {
                    format!("{ns}/{name}")
                };
                (key, v)
            })
            .filter(|(key, _)| start.as_ref().is_none_or(|s| key.as_str() >= s.as_str()))
            .collect();
        let page = if limit == 0 {
            items.len()
        } else {
            limit.min(items.len())
        };
        let more = items.len() - page;
        let token = (more > 0).then(|| encode_continue(store.rv, &items[page - 1].0));
        let cont = token.as_deref().map(|t| (t, more as u64));
        let objects: Vec<&Value> = items[..page].iter().map(|(_, v)| *v).collect();
        (200, wire::list(kind, store.rv, cont, &objects))
    }

    fn watch(&self, out: &mut TcpStream, kind: Kind, r: &Request) -> Result<(), End> {
        let filter = filter(r);
        let from: u64 = r.q("resourceVersion").parse().unwrap_or(0);
        let timeout = r
            .q("timeoutSeconds")
            .parse()
            .map_or(MAX_WATCH, Duration::from_secs)
            .min(MAX_WATCH);
        let bookmarks = r.q("allowWatchBookmarks") == "true";
        let head = format!(
            "HTTP/1.1 200 OK\r\nAudit-Id: {}\r\nCache-Control: no-cache, private\r\n\
             Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
            audit_id()
        );
        write_all(out, head.as_bytes())?;
        let deadline = Instant::now() + timeout;
        let mut last_bookmark = Instant::now();
        let mut sent = from;
        let mut first = true;
        loop {
            let mut lines = Vec::new();
            let mut store = lock(&self.shared.store);
            loop {
                if self.cut(&store) {
                    return Err(End::Cut);
                }
                if first && from == 0 {
                    // No resourceVersion: the current state as ADDED events.
                    for ((k, _, _), v) in &store.objects {
                        if *k == kind && filter.matches(v) {
                            lines.push(wire::event("ADDED", v));
                        }
                    }
                    sent = store.rv;
                } else if sent < store.compacted {
                    lines.push(wire::expired(sent, store.compacted));
                    drop(store);
                    for line in &lines {
                        chunk(out, line)?;
                    }
                    return write_all(out, b"0\r\n\r\n");
                } else {
                    for c in store.history.iter().filter(|c| c.rv > sent) {
                        if c.kind == kind && filter.matches(&c.object) {
                            lines.push(wire::event(c.type_, &c.object));
                        }
                    }
                    sent = store.rv;
                }
                first = false;
                let bookmark_due =
                    bookmarks && last_bookmark.elapsed() >= self.shared.bookmark_every;
                if !lines.is_empty() || bookmark_due || Instant::now() >= deadline {
                    if bookmark_due && lines.is_empty() {
                        lines.push(wire::bookmark(kind, sent));
                        last_bookmark = Instant::now();
                    }
                    break;
                }
                store = self
                    .shared
                    .changed
                    .wait_timeout(store, TICK)
                    .map_or_else(|p| p.into_inner().0, |(g, _)| g);
            }
            drop(store);
            for line in &lines {
                chunk(out, line)?;
            }
            if Instant::now() >= deadline {
                return write_all(out, b"0\r\n\r\n");
            }
        }
    }
}

fn filter(r: &Request) -> Filter {
    Filter {
        labels: Selector::parse(r.q("labelSelector")),
        fields: Selector::parse(r.q("fieldSelector")),
    }
}

fn chunk(out: &mut TcpStream, data: &str) -> Result<(), End> {
    write_all(out, format!("{:x}\r\n{data}\r\n", data.len()).as_bytes())
}

fn write_all(out: &mut TcpStream, bytes: &[u8]) -> Result<(), End> {
    out.write_all(bytes).map_err(|_| End::Closed)?;
    out.flush().map_err(|_| End::Closed)
}

fn not_found(what: &str) -> String {
    wire::status(404, "NotFound", &format!("{what} not found"))
}

fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        404 => "Not Found",
        _ => "Error",
    }
}

/// A fresh UUID-shaped audit id.
fn audit_id() -> String {
    use std::sync::atomic::AtomicU64;
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("a0d1e7c2-0000-4000-8000-{n:012x}")
}

fn parse_query(query: &str) -> BTreeMap<String, String> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (unescape(k), unescape(v))
        })
        .collect()
}

/// Undoes URL form encoding (`%XX`, `+`).
fn unescape(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// A continue token as kube-apiserver makes them: unpadded URL-safe base64
/// of `{"v":"meta.k8s.io/v1","rv":RV,"start":"KEY\u0000"}`.
fn encode_continue(rv: u64, last_key: &str) -> String {
    let start = Value::String(format!("{last_key}\u{0}")).to_string();
    let json = format!(r#"{{"v":"meta.k8s.io/v1","rv":{rv},"start":{start}}}"#);
    let mut out = String::new();
    for group in json.as_bytes().chunks(3) {
        let n = group
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, b)| acc | u32::from(*b) << (16 - 8 * i));
        for i in 0..=group.len() {
            out.push(char::from(B64[(n >> (18 - 6 * i) & 63) as usize]));
        }
    }
    out
}

/// The `start` key of a continue token.
fn decode_continue(token: &str) -> Option<String> {
    let mut bits = 0u32;
    let mut count = 0;
    let mut bytes = Vec::new();
    for c in token.bytes() {
        let v = B64.iter().position(|b| *b == c)? as u32;
        bits = bits << 6 | v;
        count += 6;
        if count >= 8 {
            count -= 8;
            bytes.push((bits >> count & 0xff) as u8);
        }
    }
    let v: Value = serde_json::from_slice(&bytes).ok()?;
    Some(v["start"].as_str()?.to_string())
}

/// For the unit tests: a token that does not parse.
#[cfg(test)]
fn check(token: &str) -> Result<String> {
    match decode_continue(token) {
        Some(s) => Ok(s),
        None => anyhow::bail!("not a continue token: {token}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continue_tokens_round_trip_as_the_api_server_writes_them() {
        let token = encode_continue(48213, "shop/web-7q9xk");
        assert_eq!(
            token,
            "eyJ2IjoibWV0YS5rOHMuaW8vdjEiLCJydiI6NDgyMTMsInN0YXJ0Ijoic2hvcC93ZWItN3E5eGtcdTAwMDAifQ"
        );
        assert_eq!(check(&token).unwrap(), "shop/web-7q9xk\u{0}");
        assert!(check("!!").is_err());
    }

    #[test]
    fn queries_are_unescaped() {
        let q = parse_query("labelSelector=%21a%2Fb%2C%21c&watch=true&x=a+b");
        assert_eq!(q["labelSelector"], "!a/b,!c");
        assert_eq!(q["watch"], "true");
        assert_eq!(q["x"], "a b");
    }
}
