//! A fault-injecting HTTP proxy for tests: it forwards loopback connections to a plain-HTTP
//! registry and, for the requests its rules select (method, a path substring, the nth
//! occurrence and how many times), refuses them, resets or stalls them part-way through the
//! blob, slows them to a trickle, or answers an error status (with or without `Retry-After`,
//! or with a registry's own error body) without forwarding, or forwards them without a header. Every connection carries one
//! request (`Connection: close` is forced), so each request is seen and counted.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// Longest request or response head read.
const MAX_HEAD: usize = 64 << 10;
/// How long a stalled connection is held open at most (the client gives up well before).
const MAX_STALL: Duration = Duration::from_secs(300);

/// What happens to a selected request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The connection is reset (RST) before any answer.
    Refuse,
    /// The connection is reset after `after` bytes of the body: the request body for a PATCH
    /// (an upload), the response body otherwise (a download).
    Reset { after: u64 },
    /// After `after` bytes of that body nothing more is forwarded; the connection stays open
    /// until the client gives up.
    Stall { after: u64 },
    /// That body is forwarded at about this many bytes per second.
    Trickle { bytes_per_second: u64 },
    /// Answered with this status (and `Retry-After: <seconds>` if given), not forwarded.
    Status { code: u16, retry_after: Option<u64> },
    /// Answered with this status and this JSON body, not forwarded: a registry's refusal.
    Answer { code: u16, body: String },
    /// Forwarded, with this header left out of the response: a registry that does not send it.
    DropHeader { name: String },
    /// Forwarded, with this header left out of the request: a registry that ignores it (e.g.
    /// `Range`, answered with the whole blob). Selects only requests that carry the header.
    DropRequestHeader { name: String },
}

impl Fault {
    /// What OpenShift's integrated registry answers to a manifest pushed by digest alone: the
    /// API server refuses the ImageStreamMapping without a tag, and the registry passes that on
    /// as a 500 with the error code UNKNOWN.
    pub fn openshift_untagged_refusal() -> Fault {
        Fault::Answer {
            code: 500,
            body: concat!(
                r#"{"errors":[{"code":"UNKNOWN","message":"unknown error","#,
                r#""detail":"ImageStreamMapping.image.openshift.io \"ws\" is invalid: tag: Required value"}]}"#
            )
            .to_owned(),
        }
    }
}

/// Selects requests: `method` (any if `None`), a substring of the path, and which of the
/// matching requests (1-based `nth`, then `times` in a row; `u32::MAX` for all from then on).
#[derive(Clone, Debug)]
pub struct Rule {
    method: Option<String>,
    path: String,
    nth: u32,
    times: u32,
    fault: Fault,
}

impl Rule {
    /// The first request whose method is `method` (`"*"` for any) and whose path contains
    /// `path`.
    pub fn new(method: &str, path: &str, fault: Fault) -> Rule {
        Rule {
            method: (method != "*").then(|| method.to_ascii_uppercase()),
            path: path.to_owned(),
            nth: 1,
            times: 1,
            fault,
        }
    }

    /// Starting from the `n`th matching request (1-based).
    pub fn nth(mut self, n: u32) -> Rule {
        self.nth = n.max(1);
        self
    }

    /// For `n` matching requests in a row.
    pub fn times(mut self, n: u32) -> Rule {
        self.times = n;
        self
    }

    /// For every matching request from the `nth` on.
    pub fn always(self) -> Rule {
        self.times(u32::MAX)
    }

    fn matches(&self, method: &str, path: &str) -> bool {
        self.method.as_deref().is_none_or(|m| m == method) && path.contains(&self.path)
    }
}

/// One request the proxy saw, and the fault it got.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub fault: Option<Fault>,
}

struct State {
    rules: Vec<(Rule, u32)>,
    seen: Vec<Seen>,
}

/// A running proxy; stops accepting when dropped (connections in flight finish on their own).
pub struct FaultProxy {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
}

impl FaultProxy {
    /// Listens on a free loopback port and forwards to `upstream` (`HOST:PORT`, plain HTTP).
    pub fn start(upstream: &str, rules: Vec<Rule>) -> io::Result<FaultProxy> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State {
            rules: rules.into_iter().map(|r| (r, 0)).collect(),
            seen: Vec::new(),
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let (state2, stop2, upstream) = (state.clone(), stop.clone(), upstream.to_owned());
        thread::spawn(move || {
            for client in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = client else { continue };
                let (state, stop, upstream) = (state2.clone(), stop2.clone(), upstream.clone());
                thread::spawn(move || {
                    let _ = serve(client, &upstream, &state, &stop);
                });
            }
        });
        Ok(FaultProxy { addr, state, stop })
    }

    /// `127.0.0.1:PORT`, to use in place of the registry's host.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// Every request seen so far, in arrival order.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }

    /// How many requests got a fault.
    pub fn injected(&self) -> usize {
        self.seen().iter().filter(|s| s.fault.is_some()).count()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
    }
}

/// Picks the fault for a request, counting it against every rule it matches.
fn choose(state: &Mutex<State>, method: &str, path: &str, head: &str) -> Option<Fault> {
    let mut state = state.lock().unwrap();
    let mut chosen = None;
    for (rule, count) in &mut state.rules {
        // Dropping a header selects only the requests that carry it.
        let applies = match &rule.fault {
            Fault::DropRequestHeader { name } => has_header(head, name),
            _ => true,
        };
        if applies && rule.matches(method, path) {
            *count += 1;
            let active = *count >= rule.nth && *count - rule.nth < rule.times;
            if active && chosen.is_none() {
                chosen = Some(rule.fault.clone());
            }
        }
    }
    state.seen.push(Seen {
        method: method.to_owned(),
        path: path.to_owned(),
        fault: chosen.clone(),
    });
    chosen
}

fn serve(
    mut client: TcpStream,
    upstream: &str,
    state: &Mutex<State>,
    stop: &AtomicBool,
) -> io::Result<()> {
    let (head, rest) = read_head(&mut client)?;
    let text = String::from_utf8_lossy(&head).into_owned();
    let mut words = text.split_whitespace();
    let method = words.next().unwrap_or_default().to_owned();
    let path = words.next().unwrap_or_default().to_owned();
    let fault = choose(state, &method, &path, &text);
    match &fault {
        Some(Fault::Refuse) => return reset(&client),
        Some(Fault::Status { code, retry_after }) => {
            let body =
                format!(r#"{{"errors":[{{"code":"UNAVAILABLE","message":"injected {code}"}}]}}"#);
            return answer(&mut client, *code, *retry_after, &body);
        }
        Some(Fault::Answer { code, body }) => return answer(&mut client, *code, None, body),
        _ => {}
    }
    let mut server = TcpStream::connect(upstream)?;
    let request = match &fault {
        Some(Fault::DropRequestHeader { name }) => lines_without(&text, name),
        _ => text,
    };
    server.write_all(&close_connection(&request))?;
    server.write_all(&rest)?;
    // The fault applies to the upload body for PATCH, to the response body otherwise.
    let (up_fault, down_fault) = if method == "PATCH" {
        (fault, None)
    } else {
        (None, fault)
    };
    let (client2, server2) = (client.try_clone()?, server.try_clone()?);
    thread::scope(|scope| {
        let up = scope.spawn(|| {
            let mut from = &client2;
            match pipe(&mut from, &server2, &client2, up_fault.as_ref(), stop) {
                Ok(Outcome::Reset) => {
                    let _ = reset(&client2);
                    let _ = server2.shutdown(Shutdown::Both);
                }
                _ => {
                    let _ = server2.shutdown(Shutdown::Write);
                }
            }
        });
        let down = (|| {
            let (mut head, rest) = read_head(&mut server)?;
            if let Some(Fault::DropHeader { name }) = &down_fault {
                head = without_header(&head, name);
            }
            client.write_all(&head)?;
            let mut body = io::Cursor::new(rest).chain(&server);
            pipe(&mut body, &client, &client, down_fault.as_ref(), stop)
        })();
        match down {
            Ok(Outcome::Reset) | Err(_) => {
                let _ = reset(&client);
            }
            Ok(Outcome::Done) => {
                let _ = client.shutdown(Shutdown::Write);
            }
        }
        let _ = server.shutdown(Shutdown::Both);
        up.join().expect("upload pipe");
    });
    Ok(())
}

enum Outcome {
    Done,
    Reset,
}

/// Copies a body from `from` to `to` until EOF, applying `fault`; a stall waits for `client`
/// to give up.
fn pipe(
    from: &mut dyn Read,
    mut to: &TcpStream,
    client: &TcpStream,
    fault: Option<&Fault>,
    stop: &AtomicBool,
) -> io::Result<Outcome> {
    let mut sent = 0u64;
    let mut buf = vec![0u8; 16 << 10];
    loop {
        let limit = match fault {
            Some(Fault::Reset { after }) | Some(Fault::Stall { after }) => {
                let left = after.saturating_sub(sent);
                if left == 0 {
                    return match fault {
                        Some(Fault::Reset { .. }) => Ok(Outcome::Reset),
                        _ => stall(client, stop),
                    };
                }
                left.min(buf.len() as u64) as usize
            }
            Some(Fault::Trickle { bytes_per_second }) => {
                (*bytes_per_second / 10).clamp(1, buf.len() as u64) as usize
            }
            _ => buf.len(),
        };
        let n = from.read(&mut buf[..limit])?;
        if n == 0 {
            return Ok(Outcome::Done);
        }
        to.write_all(&buf[..n])?;
        sent += n as u64;
        if let Some(Fault::Trickle { bytes_per_second }) = fault {
            thread::sleep(Duration::from_secs_f64(
                n as f64 / (*bytes_per_second).max(1) as f64,
            ));
        }
    }
}

/// Holds the connection without forwarding until the client closes its side (even with
/// unread data: `POLLRDHUP`), the proxy stops, or [`MAX_STALL`] passes; then resets it.
fn stall(client: &TcpStream, stop: &AtomicBool) -> io::Result<Outcome> {
    use std::os::fd::AsRawFd;
    let started = Instant::now();
    while started.elapsed() < MAX_STALL && !stop.load(Ordering::SeqCst) {
        let mut poll = libc::pollfd {
            fd: client.as_raw_fd(),
            events: libc::POLLRDHUP,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let ready = unsafe { libc::poll(&mut poll, 1, 100) };
        if ready != 0 && (ready < 0 || poll.revents != 0) {
            break;
        }
    }
    Ok(Outcome::Reset)
}

/// Reads up to the end of an HTTP head; returns it and whatever was read past it.
fn read_head(stream: &mut TcpStream) -> io::Result<(Vec<u8>, Vec<u8>)> {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = data.split_off(end + 4);
            return Ok((data, rest));
        }
        if data.len() > MAX_HEAD {
            return Err(io::Error::other("HTTP head too large"));
        }
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed before the end of the HTTP head",
            ));
        }
        data.extend_from_slice(&buf[..n]);
    }
}

/// The request head with `Connection: close` in place of any `Connection` header.
fn close_connection(head: &str) -> Vec<u8> {
    (lines_without(head, "connection") + "Connection: close\r\n\r\n").into_bytes()
}

/// A response head without the header `name`.
fn without_header(head: &[u8], name: &str) -> Vec<u8> {
    (lines_without(&String::from_utf8_lossy(head), name) + "\r\n").into_bytes()
}

/// Whether an HTTP head has the header `name`.
fn has_header(head: &str, name: &str) -> bool {
    head.split("\r\n").any(|line| is_header(line, name))
}

/// Whether a line of an HTTP head is the header `name`.
fn is_header(line: &str, name: &str) -> bool {
    line.split(':')
        .next()
        .is_some_and(|n| n.eq_ignore_ascii_case(name))
}

/// The lines of an HTTP head, each ending in CRLF, without the header `name` and without the
/// empty line that ends the head.
fn lines_without(head: &str, name: &str) -> String {
    let kept = head
        .split("\r\n")
        .filter(|line| !line.is_empty() && !is_header(line, name));
    kept.map(|line| format!("{line}\r\n")).collect()
}

/// Closes with a reset (SO_LINGER 0), as a peer that drops the connection does.
fn reset(stream: &TcpStream) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt with a valid socket and a correctly sized `linger`.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    stream.shutdown(Shutdown::Both)
}

/// Answers `code` with `body` without forwarding; the request body, if any, is read and
/// dropped so the client sees the answer rather than a reset.
fn answer(
    client: &mut TcpStream,
    code: u16,
    retry_after: Option<u64>,
    body: &str,
) -> io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {code} Injected\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if let Some(seconds) = retry_after {
        head.push_str(&format!("Retry-After: {seconds}\r\n"));
    }
    head.push_str("\r\n");
    client.write_all(head.as_bytes())?;
    client.write_all(body.as_bytes())?;
    client.shutdown(Shutdown::Write)?;
    client.set_read_timeout(Some(Duration::from_secs(10)))?;
    let _ = io::copy(client, &mut io::sink());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_select_by_method_path_and_occurrence() {
        let state = Mutex::new(State {
            rules: vec![
                (
                    Rule::new("GET", "/blobs/", Fault::Refuse).nth(2).times(2),
                    0,
                ),
                (
                    Rule::new(
                        "*",
                        "/manifests/",
                        Fault::Status {
                            code: 503,
                            retry_after: None,
                        },
                    )
                    .always(),
                    0,
                ),
            ],
            seen: Vec::new(),
        });
        let faults: Vec<_> = (0..5)
            .map(|_| choose(&state, "GET", "/v2/r/blobs/sha256:1", ""))
            .collect();
        assert_eq!(
            faults,
            [None, Some(Fault::Refuse), Some(Fault::Refuse), None, None]
        );
        assert_eq!(choose(&state, "HEAD", "/v2/r/blobs/sha256:1", ""), None);
        for method in ["GET", "PUT", "GET"] {
            assert!(matches!(
                choose(&state, method, "/v2/r/manifests/latest", ""),
                Some(Fault::Status { code: 503, .. })
            ));
        }
        assert_eq!(state.lock().unwrap().seen.len(), 9);
    }

    #[test]
    fn requests_are_forwarded_with_connection_close() {
        let head = "GET /v2/ HTTP/1.1\r\nHost: x\r\nconnection: keep-alive\r\n\r\n";
        assert_eq!(
            String::from_utf8(close_connection(head)).unwrap(),
            "GET /v2/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        );
    }
}
