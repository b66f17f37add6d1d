//! `dialbackd status`: ask the status listener for `/status` and print the live streams as a
//! table, like `prosodyctl shell s2s:show()`.

use super::{COLUMNS, STATUS_MAGIC};
use crate::config::Config;
use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::time::Duration;

/// How long connecting, and then the whole exchange, may take.
pub const TIMEOUT: Duration = Duration::from_secs(10);
/// The most bytes of response read.
const MAX_RESPONSE: u64 = 64 * 1024 * 1024;

/// The address to ask, from the configuration: its `[status] listen`, with an unspecified
/// address (`0.0.0.0`, `::`) replaced by loopback.
///
/// # Errors
/// The status listener is off in `config`: the message says how to turn it on.
pub fn address(config: &Config) -> Result<SocketAddr, String> {
    let Some(st) = &config.status else {
        return Err(format!(
            "the status listener is off in {}: enable [status] in the config \
             (e.g. [status] with listen = \"127.0.0.1:5280\") and restart dialbackd",
            config.path.display()
        ));
    };
    let mut addr = st.listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        });
    }
    Ok(addr)
}

/// `GET path` from the status listener at `addr`: the body of a `200` response.
///
/// # Errors
/// A message naming the address: unreachable (with the hint to enable `[status]`), a
/// malformed answer, or a status other than 200.
pub fn fetch(addr: SocketAddr, path: &str) -> Result<String, String> {
    let unreachable = |e: io::Error| {
        format!(
            "cannot reach the status listener at {addr}: {e}; is dialbackd running, with \
             [status] enabled in its config?"
        )
    };
    let mut sock = TcpStream::connect_timeout(&addr, TIMEOUT).map_err(unreachable)?;
    sock.set_read_timeout(Some(TIMEOUT)).map_err(unreachable)?;
    sock.set_write_timeout(Some(TIMEOUT)).map_err(unreachable)?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    sock.write_all(req.as_bytes()).map_err(unreachable)?;
    let mut raw = Vec::new();
    sock.take(MAX_RESPONSE)
        .read_to_end(&mut raw)
        .map_err(|e| format!("reading the answer of {addr}: {e}"))?;
    body_of(&raw).map_err(|e| format!("{addr}: {e}"))
}

/// The body of a raw `200` response (checked against its `Content-Length`).
fn body_of(raw: &[u8]) -> Result<String, String> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or("not an HTTP response (no end of headers)")?;
    let status = head.lines().next().unwrap_or_default();
    let code = status.split(' ').nth(1).unwrap_or_default();
    if !status.starts_with("HTTP/1.") || code != "200" {
        return Err(format!("the status listener answered {status:?}"));
    }
    let length = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse::<usize>().ok())?
    });
    if length.is_some_and(|n| n != body.len()) {
        return Err("the answer was cut short".into());
    }
    Ok(body.to_string())
}

/// The `/status` text as a table: one row per stream, columns aligned, ages human-readable,
/// and a count at the end.
///
/// # Errors
/// The text is not the `/status` format this version reads.
pub fn table(status: &str) -> Result<String, String> {
    let mut lines = status.lines();
    if lines.next() != Some(STATUS_MAGIC) {
        return Err("the answer is not in the status format this dialbackd reads".into());
    }
    if lines.next() != Some(COLUMNS.join("\t").as_str()) {
        return Err("the answer's columns are not those this dialbackd reads".into());
    }
    let mut rows: Vec<[String; 11]> = vec![[
        "ID",
        "DIRECTION",
        "STATE",
        "PEER",
        "TLS",
        "AGE",
        "IDLE",
        "QUEUED",
        "AUTH",
        "BIDI",
        "DOMAINS",
    ]
    .map(String::from)];
    for line in lines.filter(|l| !l.is_empty()) {
        rows.push(row(line)?);
    }
    let n = rows.len() - 1;
    let mut widths = [0usize; 11];
    for r in &rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for r in &rows {
        let mut line = String::new();
        for (i, cell) in r.iter().enumerate() {
            if i + 1 == r.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<w$}  ", w = widths[i]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    let _ = writeln!(out, "{n} stream{}", if n == 1 { "" } else { "s" });
    Ok(out)
}

/// One `/status` line as table cells (the domains last, as the widest).
fn row(line: &str) -> Result<[String; 11], String> {
    let f: Vec<&str> = line.split('\t').collect();
    let [id, dir, state, peer, tls, age, idle, queued, domains, auth, bidi] = f[..] else {
        return Err(format!("a malformed status line: {line:?}"));
    };
    let secs = |s: &str| {
        s.parse::<u64>()
            .map(duration)
            .map_err(|_| format!("a malformed status line: {line:?}"))
    };
    let tls = if tls == "-" {
        "no".to_string()
    } else {
        format!("yes ({tls})")
    };
    let domains = domains
        .split(' ')
        .filter(|p| !p.is_empty())
        .map(|p| match p.strip_suffix('?') {
            Some(p) => format!("{} (verifying)", p.replace('→', " → ")),
            None => p.replace('→', " → "),
        })
        .collect::<Vec<_>>()
        .join(", ");
    Ok([
        id.into(),
        dir.into(),
        state.into(),
        peer.into(),
        tls,
        secs(age)?,
        secs(idle)?,
        queued.into(),
        auth.into(),
        bidi.into(),
        if domains.is_empty() {
            "-".into()
        } else {
            domains
        },
    ])
}

/// `42s`, `3m07s`, `2h05m`, `3d04h`.
fn duration(s: u64) -> String {
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, s / 60 % 60),
        _ => format!("{}d{:02}h", s / 86400, s / 3600 % 24),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_aligns_streams_and_reads_pairs_and_tls() {
        let text = format!(
            "{STATUS_MAGIC}\n{}\n\
             3\ts2s_in\topen\t127.0.0.1:40000\tTLSv1.3\t75\t4\t0\tb.test→a.test c.test→a.test?\t\
             external\tyes\n\
             12\ts2s_out\tnegotiating\t-\t-\t3700\t0\t5\ta.test→b.test?\t-\tno\n",
            COLUMNS.join("\t")
        );
        let t = table(&text).unwrap();
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 4, "{t}");
        assert!(lines[0].starts_with("ID  DIRECTION"), "{t}");
        assert!(lines[0].contains("QUEUED  AUTH      BIDI  DOMAINS"), "{t}");
        assert!(lines[1].contains("0       external  yes   b.test"), "{t}");
        assert!(lines[2].contains("5       -         no    a.test"), "{t}");
        assert!(
            lines[1].contains("yes (TLSv1.3)")
                && lines[1].contains("1m15s")
                && lines[1].contains("b.test → a.test, c.test → a.test (verifying)"),
            "{t}"
        );
        assert!(lines[2].contains("no") && lines[2].contains("1h01m"), "{t}");
        // Columns line up: DOMAINS starts at the same place on every line.
        let col = lines[0].find("DOMAINS").unwrap();
        assert_eq!(lines[1].find("b.test →"), Some(col), "{t}");
        assert_eq!(lines[3], "2 streams");
    }

    #[test]
    fn a_foreign_or_broken_answer_is_an_error_not_a_panic() {
        assert!(table("<html>").is_err());
        let head = format!("{STATUS_MAGIC}\n{}\n", COLUMNS.join("\t"));
        assert_eq!(
            table(&head).unwrap(),
            "ID  DIRECTION  STATE  PEER  TLS  AGE  IDLE  QUEUED  AUTH  BIDI  DOMAINS\n0 streams\n"
        );
        assert!(table(&format!("{head}1\ts2s_in\n")).is_err());
        assert!(table(&format!("{head}1\ts2s_in\topen\t-\t-\tx\t0\t0\t\t-\tno\n")).is_err());
        // A line of the format before the auth and bidi columns.
        assert!(table(&format!("{head}1\ts2s_in\topen\t-\t-\t1\t0\t0\t\n")).is_err());
        assert!(body_of(b"HTTP/1.1 404 Not Found\r\n\r\nno").is_err());
        assert!(body_of(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nshort").is_err());
        assert_eq!(
            body_of(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").unwrap(),
            "ok"
        );
    }

    #[test]
    fn durations_read_at_a_glance() {
        assert_eq!(duration(0), "0s");
        assert_eq!(duration(59), "59s");
        assert_eq!(duration(61), "1m01s");
        assert_eq!(duration(7260), "2h01m");
        assert_eq!(duration(90000), "1d01h");
    }
}
