//! The control API (`--api-socket PATH`): HTTP/1.1 with JSON bodies on a
//! Unix socket, for the orchestrator of a cloud host. The endpoints are in
//! [`routes`] (and docs/api.md); this module owns the socket and the
//! connections.
//!
//! One thread serves the socket, one connection at a time, each closed after
//! its response (`Connection: close`). Requests are parsed by `httparse`
//! (the parser under hyper: zero-copy, no allocation, fuzzed upstream); this
//! module only reads bytes into a bounded buffer and frames the body by
//! `Content-Length`. Why not a server crate: `tiny_http` starts a thread per
//! waiting connection without a bound (a client that opens connections and
//! sends nothing would make efivmm spawn threads without end), and the async
//! servers bring a runtime. One thread with hard limits is what a VMM wants:
//!
//! - a request's head is at most [`MAX_HEAD`] bytes and its body at most
//!   [`MAX_BODY`] (431 and 413 otherwise, nothing more is read);
//! - a connection has [`REQUEST_TIME`] to deliver its whole request (else
//!   408) and its response is written with the same limit, so a client that
//!   connects and waits, or never reads, holds the API thread for at most
//!   that long and never a guest's vCPU;
//! - host variable calls take the runtime lock once per firmware call, like
//!   a guest's call: a flood of requests costs a guest call at most one
//!   firmware call's wait (measured: docs/api.md); host writes pay their
//!   commit budget on this thread before they take the lock
//!   ([`routes::HostBudget`]), never with it held.
//!
//! The socket is created with mode 0600 (the mode is set on the socket
//! before `bind`, so the path never exists with a wider one). A socket file
//! left by an efivmm that is gone is replaced; a live one (something
//! answers a connect) or any other kind of file is refused. The file is
//! removed when the guest stops.
//!
//! The thread runs under its own seccomp filter (`confine::Role::Api`): the
//! firmware-call set of a vCPU thread plus accepting, reading and writing
//! sockets.

mod routes;

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::confine::Filter;
use crate::vm::Shared;

/// The most bytes of a request's line and headers.
pub const MAX_HEAD: usize = 16 << 10;
/// The largest body: a PUT of the largest variable (1 MiB, hex: 2 MiB) and
/// its JSON around it.
pub const MAX_BODY: usize = (2 * sandbox_abi::DATA_SIZE as usize) + 4096;
/// The time a client has to send its request, and again to take the response.
pub const REQUEST_TIME: Duration = Duration::from_secs(2);
/// The most headers a request may have.
const MAX_HEADERS: usize = 32;

/// The control API's socket, bound and listening.
pub struct Listener {
    socket: UnixListener,
    path: PathBuf,
    /// The socket file's device and inode: only this file is removed at the end.
    id: (u64, u64),
}

impl Listener {
    /// Creates the socket at `path` (mode 0600) and listens on it.
    pub fn bind(path: &Path) -> Result<Self, String> {
        let shown = path.display();
        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_socket() => {
                if UnixStream::connect(path).is_ok() {
                    return Err(format!(
                        "{shown}: another process is serving this socket (another efivmm?); give another --api-socket path"
                    ));
                }
                tracing::info!("replacing the stale socket {shown}");
                std::fs::remove_file(path).map_err(|e| format!("cannot remove the stale socket {shown}: {e}"))?;
            }
            Ok(_) => return Err(format!("{shown} exists and is not a socket: give a new path for --api-socket")),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("{shown}: {e}")),
        }
        let socket = bind_private(path).map_err(|e| format!("cannot create the API socket {shown}: {e}"))?;
        socket.set_nonblocking(true).map_err(|e| format!("{shown}: {e}"))?;
        let meta = std::fs::symlink_metadata(path).map_err(|e| format!("{shown}: {e}"))?;
        tracing::info!(path = %shown, "control API listening");
        Ok(Listener { socket, path: path.to_path_buf(), id: (meta.dev(), meta.ino()) })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        // Only the file this listener created (a later efivmm may have
        // replaced a path it believed stale).
        let ours = std::fs::symlink_metadata(&self.path).is_ok_and(|m| (m.dev(), m.ino()) == self.id);
        if ours {
            if let Err(e) = std::fs::remove_file(&self.path) {
                tracing::warn!("cannot remove the API socket {}: {e}", self.path.display());
            }
        }
    }
}

/// A Unix socket bound at `path` with mode 0600 from the start: Linux gives
/// the file the socket inode's mode (less the umask), so the mode is set on
/// the socket before `bind`.
fn bind_private(path: &Path) -> std::io::Result<UnixListener> {
    use std::os::fd::{FromRawFd, OwnedFd};
    use std::os::unix::ffi::OsStrExt;
    // SAFETY: socket(2) with constant arguments; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new descriptor this function owns from here on.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: fchmod on a descriptor this function owns.
    if unsafe { libc::fchmod(fd.as_raw_fd(), 0o600) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: sockaddr_un is plain data; all zeroes is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("a socket path has at most {} bytes and no NUL", addr.sun_path.len() - 1),
        ));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    // SAFETY: `addr` is a valid sockaddr_un of at least `len` bytes (the
    // path and its NUL fit, checked above); `fd` is an open socket.
    if unsafe { libc::bind(fd.as_raw_fd(), (&raw const addr).cast(), len as libc::socklen_t) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: listen(2) on the bound socket this function owns.
    if unsafe { libc::listen(fd.as_raw_fd(), 64) } != 0 {
        let e = std::io::Error::last_os_error();
        let _ = std::fs::remove_file(path);
        return Err(e);
    }
    Ok(UnixListener::from(fd))
}

/// One parsed request.
#[derive(Debug)]
pub(crate) struct Request {
    pub method: String,
    /// The path, still percent-encoded.
    pub path: String,
    /// The query string (after `?`), if any.
    pub query: Option<String>,
    /// Whether the client asked for `text/plain` (the Prometheus form of
    /// `/metrics`).
    pub accepts_text: bool,
    pub body: Vec<u8>,
}

/// One response.
#[derive(Debug)]
pub(crate) struct Response {
    pub code: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    /// `Allow:` for a 405.
    pub allow: Option<&'static str>,
}

impl Response {
    pub fn json(code: u16, value: &serde_json::Value) -> Self {
        let mut body = serde_json::to_vec(value).unwrap_or_default();
        body.push(b'\n');
        Response { code, content_type: "application/json", body, allow: None }
    }

    pub fn error(code: u16, why: impl Into<String>) -> Self {
        Self::json(code, &serde_json::json!({ "error": why.into() }))
    }
}

/// Serves the socket until the guest stops (the stop event), then removes it.
pub(crate) fn serve(listener: Listener, shared: Arc<Shared>, filter: Option<Filter>) {
    if let Some(filter) = filter {
        if let Err(e) = filter.install() {
            shared.request_crash(format!("the control API's thread: {e}"));
            return;
        }
    }
    let stop_fd = shared.stop_fd();
    let mut budget = routes::HostBudget::new();
    loop {
        let mut fds = [
            libc::pollfd { fd: listener.socket.as_raw_fd(), events: libc::POLLIN, revents: 0 },
            libc::pollfd { fd: stop_fd, events: libc::POLLIN, revents: 0 },
        ];
        // SAFETY: `fds` is an array of two valid pollfds that outlives the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            tracing::error!("the control API stops: poll: {e}");
            return;
        }
        if fds[1].revents != 0 {
            return;
        }
        match listener.socket.accept() {
            Ok((stream, _)) => handle(stream, &shared, &mut budget),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                // Out of descriptors, say: wait a little rather than spin.
                tracing::warn!("control API: accept: {e}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// Reads one request from `stream`, answers it and closes the connection.
fn handle(mut stream: UnixStream, shared: &Shared, budget: &mut routes::HostBudget) {
    let started = Instant::now();
    let response = match read_request(&mut stream, started) {
        Ok(request) => {
            let response = routes::route(&request, shared, budget);
            tracing::debug!(method = %request.method, path = %request.path, code = response.code, "API request");
            response
        }
        Err(None) => return, // the client went away
        Err(Some(response)) => response,
    };
    shared.count_api_request(response.code >= 400);
    if let Err(e) = write_response(&mut stream, &response, Instant::now() + REQUEST_TIME) {
        tracing::debug!("control API: the response was not delivered: {e}");
    }
}

/// Reads and parses a request; `Err(Some(r))`: answer `r`; `Err(None)`:
/// the client closed the connection before sending a request.
fn read_request(stream: &mut UnixStream, started: Instant) -> Result<Request, Option<Response>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let timed_out = || Some(Response::error(408, format!("the request did not arrive within {REQUEST_TIME:?}")));
    let mut read_some = |stream: &mut UnixStream, buf: &mut Vec<u8>, limit: usize| -> Result<usize, Option<Response>> {
        let left = REQUEST_TIME.checked_sub(started.elapsed()).filter(|d| !d.is_zero()).ok_or_else(timed_out)?;
        stream.set_read_timeout(Some(left)).map_err(|_| None)?;
        let want = chunk.len().min(limit.saturating_sub(buf.len()).max(1));
        match stream.read(&mut chunk[..want]) {
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                Ok(n)
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                Err(timed_out())
            }
            // Nothing read (a signal): the caller looks again.
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => Ok(usize::MAX),
            Err(_) => Err(None),
        }
    };
    // The head.
    let (head_len, method, target, content_length, expect_continue, accepts_text) = loop {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut parsed = httparse::Request::new(&mut headers);
        match parsed.parse(&buf) {
            Ok(httparse::Status::Complete(len)) => {
                let method = parsed.method.unwrap_or_default().to_string();
                let target = parsed.path.unwrap_or_default().to_string();
                let mut content_length = 0usize;
                let (mut expect_continue, mut accepts_text) = (false, false);
                for h in parsed.headers.iter() {
                    let value = std::str::from_utf8(h.value).unwrap_or("").trim();
                    if h.name.eq_ignore_ascii_case("content-length") {
                        content_length = value.parse().map_err(|_| {
                            Some(Response::error(400, format!("Content-Length `{value}` is not a number")))
                        })?;
                    } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                        return Err(Some(Response::error(
                            411,
                            "chunked bodies are not accepted: send the body with a Content-Length",
                        )));
                    } else if h.name.eq_ignore_ascii_case("expect") && value.eq_ignore_ascii_case("100-continue") {
                        expect_continue = true;
                    } else if h.name.eq_ignore_ascii_case("accept") && value.starts_with("text/plain") {
                        accepts_text = true;
                    }
                }
                break (len, method, target, content_length, expect_continue, accepts_text);
            }
            Ok(httparse::Status::Partial) => {
                if buf.len() >= MAX_HEAD {
                    return Err(Some(Response::error(431, format!("the request's head exceeds {MAX_HEAD} bytes"))));
                }
                if read_some(stream, &mut buf, MAX_HEAD)? == 0 {
                    // Closed: nothing to answer if nothing came.
                    return Err(if buf.is_empty() { None } else { Some(Response::error(400, "incomplete request")) });
                }
            }
            Err(httparse::Error::TooManyHeaders) => {
                return Err(Some(Response::error(431, format!("more than {MAX_HEADERS} headers"))));
            }
            Err(e) => return Err(Some(Response::error(400, format!("not an HTTP/1.1 request: {e}")))),
        }
    };
    if content_length > MAX_BODY {
        return Err(Some(Response::error(
            413,
            format!("the body of {content_length} bytes exceeds {MAX_BODY} (a variable holds at most 1 MiB)"),
        )));
    }
    if expect_continue && buf.len() - head_len < content_length {
        let _ = stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n");
    }
    let mut body = buf.split_off(head_len);
    while body.len() < content_length {
        if read_some(stream, &mut body, content_length)? == 0 {
            return Err(Some(Response::error(
                400,
                format!("the body ended after {} of its {content_length} bytes", body.len()),
            )));
        }
    }
    if body.len() > content_length {
        // Pipelined requests are not served (each connection takes one).
        body.truncate(content_length);
    }
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_string(), Some(q.to_string())),
        None => (target, None),
    };
    Ok(Request { method, path, query, accepts_text, body })
}

/// Writes the response by `deadline` (a client that reads slowly, or not
/// at all, is cut off then, however large the response).
fn write_response(stream: &mut UnixStream, r: &Response, deadline: Instant) -> std::io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
        r.code,
        reason(r.code),
        r.content_type,
        r.body.len()
    );
    if let Some(allow) = r.allow {
        head.push_str(&format!("Allow: {allow}\r\n"));
    }
    head.push_str("\r\n");
    for part in [head.as_bytes(), &r.body] {
        let mut rest = part;
        while !rest.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(std::io::ErrorKind::TimedOut.into());
            }
            stream.set_write_timeout(Some(left))?;
            match stream.write(rest) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(n) => rest = &rest[n..],
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

/// The reason phrase of the status codes the API uses.
fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        202 => "Accepted",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        507 => "Insufficient Storage",
        _ => "",
    }
}
