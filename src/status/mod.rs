//! The status listener (`[status]` in the configuration): OpenMetrics text at `GET /metrics`
//! and the live streams at `GET /status`, which `dialbackd status` prints as a table.
//!
//! In scope: each accepted connection is served on a short-lived thread of its own (at most
//! [`MAX_ACTIVE`] at once; as many more get `503`, and beyond that connections are closed:
//! the accept loop never waits for a client), which reads one
//! request within [`MAX_REQUEST`](http::MAX_REQUEST) bytes and [`REQUEST_TIMEOUT`], answers it
//! and closes; the `/status` text ([`status_text`]: tab-separated values, one stream a line);
//! the registry each stream keeps up to date ([`StreamInfo`]); and the client side of
//! `dialbackd status` ([`client`]). Out of scope: what is counted (`metrics`), accepting
//! (`net`).

pub mod client;
pub mod http;
mod info;

pub use info::{Detail, Direction, Pair, StreamInfo, StreamState};

use crate::inbox::Handle;
use crate::metrics::{self, Gauges};
use crate::router::Router;
use http::{HttpError, Method, Request, Response};
use std::fmt::Write as _;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Requests served at once; as many more are answered `503`, and beyond that connections are
/// closed at once.
pub const MAX_ACTIVE: usize = 4;
/// How long a client may take to send its request head.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// The same, and for writing, when it is only told `503`.
const BUSY_TIMEOUT: Duration = Duration::from_secs(1);
/// How long writing the response (and lingering for the client to read it) may take.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Stack of a status thread (rendering works on the heap).
const STACK_SIZE: usize = 128 * 1024;
/// The OpenMetrics media type (OpenMetrics 1.0 §Overall Structure).
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The media type of `/status`.
pub const STATUS_TYPE: &str = "text/tab-separated-values; charset=utf-8";
/// The first line of `/status`: the format and its version.
pub const STATUS_MAGIC: &str = "# dialbackd status 1";
/// The columns of `/status`, in order (new ones are added at the end).
pub const COLUMNS: [&str; 11] = [
    "id",
    "direction",
    "state",
    "peer",
    "tls",
    "age_s",
    "idle_s",
    "queued",
    "domains",
    "auth",
    "bidi",
];

static ACTIVE: AtomicUsize = AtomicUsize::new(0);

/// When the process started (first asked at start-up, by [`started`]).
static STARTED: OnceLock<u64> = OnceLock::new();

/// Note the process start time (for `dialbackd_start_time_seconds`); idempotent.
pub fn started() -> u64 {
    *STARTED.get_or_init(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    })
}

/// Gives its place under [`MAX_ACTIVE`] back when the request is done, on every path.
struct Slot;

impl Drop for Slot {
    fn drop(&mut self) {
        ACTIVE.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Serve a connection accepted on the status listener, on its own thread: answered when fewer
/// than [`MAX_ACTIVE`] are being served, told `503` when fewer than [`MAX_ACTIVE`] more are
/// waiting for that, closed at once otherwise. Never blocks the caller.
pub fn accept(router: &Arc<Router>, sock: mio::net::TcpStream, peer: SocketAddr) {
    let n = ACTIVE.fetch_add(1, Ordering::AcqRel);
    let slot = Slot;
    if n >= 2 * MAX_ACTIVE {
        log::debug!("status {peer}: busy, closing");
        return;
    }
    let busy = n >= MAX_ACTIVE;
    let router = router.clone();
    let sock = TcpStream::from(sock);
    let spawned = std::thread::Builder::new()
        .name("status".into())
        .stack_size(STACK_SIZE)
        .spawn(move || {
            let _slot = slot;
            serve(&router, sock, peer, busy);
        });
    if let Err(e) = spawned {
        log::warn!("status {peer}: cannot start a thread: {e}");
    }
}

/// Read one request, answer it (`503` when `busy`), close.
fn serve(router: &Router, mut sock: TcpStream, peer: SocketAddr, busy: bool) {
    if sock.set_nonblocking(false).is_err() {
        return;
    }
    let bound = if busy { BUSY_TIMEOUT } else { REQUEST_TIMEOUT };
    let (resp, head_only) = match http::read_request(&mut sock, bound) {
        Ok(_) if busy => {
            log::debug!("status {peer}: busy, answering 503");
            let resp = Response::text(503, "Service Unavailable", "busy, try again\n");
            (resp, false)
        }
        Ok(req) => {
            log::debug!(
                "status {peer}: {:?} {}",
                req.method,
                crate::logsafe::peer(&req.path)
            );
            (respond(router, &req), req.method == Method::Head)
        }
        Err(e) => {
            log::debug!("status {peer}: {e:?}");
            match e.status() {
                Some((code, reason)) => (Response::text(code, reason, error_text(&e)), false),
                None => return,
            }
        }
    };
    let bytes = http::response_bytes(&resp, head_only, SystemTime::now());
    http::send_and_close(
        &mut sock,
        &bytes,
        if busy { BUSY_TIMEOUT } else { WRITE_TIMEOUT },
    );
}

fn error_text(e: &HttpError) -> String {
    match e {
        HttpError::BadRequest(why) => format!("bad request: {why}\n"),
        HttpError::TooLarge => format!("the request head is over {} bytes\n", http::MAX_REQUEST),
        HttpError::Version => "only HTTP/1.x is spoken here\n".into(),
        HttpError::Timeout | HttpError::Closed => "the request did not arrive in time\n".into(),
    }
}

/// The response to a well-formed request.
pub fn respond(router: &Router, req: &Request) -> Response {
    let known = matches!(req.path.as_str(), "/metrics" | "/status");
    if !known {
        return Response::text(404, "Not Found", "not found: try /metrics or /status\n");
    }
    if req.method == Method::Other {
        return Response::text(405, "Method Not Allowed", "only GET and HEAD\n");
    }
    let handles = router.stream_handles();
    if req.path == "/metrics" {
        Response {
            status: 200,
            reason: "OK",
            content_type: OPENMETRICS,
            body: metrics::render(&gauges(router, &handles)),
        }
    } else {
        Response {
            status: 200,
            reason: "OK",
            content_type: STATUS_TYPE,
            body: status_text(&handles),
        }
    }
}

/// The gauges of `router` now, counting the streams among `handles`.
pub fn gauges(router: &Router, handles: &[Handle]) -> Gauges {
    let mut g = Gauges {
        queued_bytes: router.queued_bytes().used() as u64,
        queued_bytes_limit: router.ctx().config.limits.queued_bytes as u64,
        dns: router.resolver().cache_stats(),
        start_time: started(),
        ..Gauges::default()
    };
    for h in handles {
        let (d, s) = h.info().kind_and_state();
        g.count_stream(d, s);
        g.inbox_stanzas += h.queued() as u64;
        g.core_queued += h.info().core_queued() as u64;
    }
    g
}

/// The `/status` text: [`STATUS_MAGIC`], the [`COLUMNS`], then one line per stream, fields
/// separated by tabs (none of them can hold a tab or a newline: domains and addresses are
/// validated). `peer` and `tls` are `-` when there is none; `domains` lists the stream's pairs
/// as `from→to` (a component's domain alone), separated by spaces, each followed by `?` while
/// it is being verified; `auth` says how the verified pairs were authenticated (`external`,
/// `dialback`, `external,dialback`, or `-` when none is, and for components); `bidi` is `yes`
/// when XEP-0288 bidi was negotiated on the stream, else `no`.
pub fn status_text(handles: &[Handle]) -> String {
    let mut rows: Vec<&Handle> = handles.iter().collect();
    rows.sort_by_key(|h| h.id());
    let mut out = format!("{STATUS_MAGIC}\n{}\n", COLUMNS.join("\t"));
    for h in rows {
        let info = h.info();
        let d = info.detail();
        let queued = h.queued() + info.core_queued();
        let domains: Vec<String> = d
            .pairs
            .iter()
            .map(|p| {
                let mark = if p.verified { "" } else { "?" };
                if p.from == p.to {
                    // A component: its domain.
                    format!("{}{mark}", p.to)
                } else {
                    format!("{}→{}{mark}", p.from, p.to)
                }
            })
            .collect();
        let _ = writeln!(
            out,
            "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{queued}\t{}\t{}\t{}",
            h.id(),
            d.direction.as_str(),
            d.state.as_str(),
            d.peer.map_or("-".to_string(), |a| a.to_string()),
            d.tls.as_deref().unwrap_or("-"),
            info.age().as_secs(),
            info.idle().as_secs(),
            domains.join(" "),
            auth(&d),
            if d.bidi { "yes" } else { "no" },
        );
    }
    out
}

/// How a server stream's verified pairs were authenticated: `external` (SASL EXTERNAL),
/// `dialback`, both as `external,dialback`, or `-` (none verified yet, or a component).
fn auth(d: &Detail) -> &'static str {
    if d.direction == Direction::Component {
        return "-";
    }
    let verified = d.pairs.iter().filter(|p| p.verified);
    let (external, dialback) = verified.fold((false, false), |(e, db), p| {
        (e || p.external, db || !p.external)
    });
    match (external, dialback) {
        (true, true) => "external,dialback",
        (true, false) => "external",
        (false, true) => "dialback",
        (false, false) => "-",
    }
}

#[cfg(test)]
mod tests;
