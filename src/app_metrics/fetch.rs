//! One HTTP/1.0 GET of the app's `/metrics` on loopback, on the runtime the
//! server runs on (never blocking its one worker), its body handed to the
//! merge line by line as it arrives: never held whole, so the app's many
//! clients (one series each before merging) cost time, not memory. Ours
//! because the stack's client (`awc`) adds 445 KB to the device's binary
//! for a request this simple (see the README); the head is read by
//! `httparse`, which actix already links. HTTP/1.0 asks for a plain body:
//! no chunks, no keep-alive, no compression (none is offered).

use std::io;
use std::net::SocketAddr;

use nix::sys::socket::{setsockopt, sockopt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::merge::Merger;

/// The most bytes read of an answer's body, and the longest line in it.
pub const MAX_BODY: usize = 16 << 20;
pub const MAX_LINE: usize = 16 * 1024;
/// The longest head, and the most header fields in it.
const MAX_HEAD: usize = 8 * 1024;
const MAX_HEADERS: usize = 32;

/// The text format's media type, the one asked for.
const ACCEPT: &str = "text/plain;version=0.0.4";

/// Why the app's metrics were not had.
#[derive(Debug, PartialEq, Eq)]
pub enum Failure {
    /// Nothing listens: the app is down or serves no metrics.
    Refused(String),
    /// The app asks for credentials (`401` or `403`): its newer builds
    /// may protect `/metrics`.
    Unauthorized(String),
    Other(String),
}

/// Asks the app and merges its answer into `merger`, if it is a complete
/// `200` in the text format. The caller bounds the time taken.
pub async fn get(addr: SocketAddr, merger: &mut Merger) -> Result<(), Failure> {
    let mut stream = TcpStream::connect(addr).await.map_err(|e| {
        let msg = format!("connecting to {addr}: {e}");
        if e.kind() == io::ErrorKind::ConnectionRefused {
            Failure::Refused(msg)
        } else {
            Failure::Other(msg)
        }
    })?;
    // Closed with a reset once read, not a FIN: the app, which closes
    // first, then keeps no TIME_WAIT socket on its port for a minute after
    // every scrape, and `connection_ports` does not count this daemon.
    let abort = libc::linger { l_onoff: 1, l_linger: 0 };
    setsockopt(&stream, sockopt::Linger, &abort)
        .map_err(|e| Failure::Other(format!("{addr}: SO_LINGER: {e}")))?;
    let request = format!(
        "GET /metrics HTTP/1.0\r\nHost: {addr}\r\nAccept: {ACCEPT}\r\nUser-Agent: jetkvm-metrics\r\n\r\n"
    );
    let other = |e: String| Failure::Other(format!("{addr}: {e}"));
    stream.write_all(request.as_bytes()).await.map_err(|e| other(format!("asking: {e}")))?;
    let mut pending = Vec::with_capacity(16 * 1024);
    let (length, body_start) = read_head(&mut stream, &mut pending).await.map_err(|e| match e {
        Failure::Other(e) => other(e),
        Failure::Unauthorized(e) => Failure::Unauthorized(format!("{addr}: {e}")),
        refused => refused,
    })?;
    pending.drain(..body_start);
    let read = read_body(&mut stream, pending, merger).await.map_err(other)?;
    if length.is_some_and(|n| n != read) {
        return Err(other("a body shorter or longer than its Content-Length".into()));
    }
    Ok(())
}

/// Reads until the head is whole; its Content-Length, if any, and where
/// the body starts in what was read.
async fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<(Option<usize>, usize), Failure> {
    let mut chunk = vec![0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return head(&buf[..end + 4]).map(|length| (length, end + 4));
        }
        if buf.len() > MAX_HEAD {
            return Err(Failure::Other(format!("a head over {} KiB", MAX_HEAD / 1024)));
        }
        let n = stream.read(&mut chunk).await.map_err(|e| Failure::Other(format!("reading: {e}")))?;
        if n == 0 {
            return Err(Failure::Other("an answer without a complete head".into()));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Hands the body to the merge one line at a time, as it arrives; the
/// bytes it had.
async fn read_body(
    stream: &mut TcpStream,
    mut pending: Vec<u8>,
    merger: &mut Merger,
) -> Result<usize, String> {
    let mut chunk = vec![0u8; 16 * 1024];
    let mut read = pending.len();
    let mut lines = Lines::default();
    loop {
        lines.feed(&mut pending, merger)?;
        let n = stream.read(&mut chunk).await.map_err(|e| format!("reading: {e}"))?;
        if n == 0 {
            break;
        }
        read += n;
        if read > MAX_BODY {
            return Err(format!("a body over {} MiB", MAX_BODY >> 20));
        }
        pending.extend_from_slice(&chunk[..n]);
    }
    // The last line, if the text does not end with a newline.
    lines.feed(&mut pending, merger)?;
    if !pending.is_empty() {
        lines.one(&pending, merger)?;
    }
    Ok(read)
}

/// Lines taken from a buffer as they complete, numbered for messages.
#[derive(Default)]
pub struct Lines {
    number: usize,
}

impl Lines {
    /// Merges every whole line of `pending`, leaving the part of one.
    pub fn feed(&mut self, pending: &mut Vec<u8>, merger: &mut Merger) -> Result<(), String> {
        let mut start = 0;
        while let Some(nl) = pending[start..].iter().position(|&b| b == b'\n') {
            self.one(&pending[start..start + nl], merger)?;
            start += nl + 1;
        }
        pending.drain(..start);
        if pending.len() > MAX_LINE {
            return Err(format!("line {}: over {} KiB", self.number + 1, MAX_LINE / 1024));
        }
        Ok(())
    }

    fn one(&mut self, line: &[u8], merger: &mut Merger) -> Result<(), String> {
        self.number += 1;
        let n = self.number;
        let line = std::str::from_utf8(line).map_err(|_| format!("line {n}: not UTF-8"))?;
        merger.feed(line).map_err(|e| format!("line {n}: {e}"))
    }
}

/// A whole head: a `200` in the text format, plain (its Content-Length,
/// if it says one), or why not.
pub fn head(bytes: &[u8]) -> Result<Option<usize>, Failure> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    let other = |e: String| Failure::Other(e);
    match response.parse(bytes) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(other("an answer without a complete head".into())),
        Err(e) => return Err(other(format!("not an HTTP answer ({e})"))),
    }
    match response.code {
        Some(200) => {}
        Some(code @ (401 | 403)) => {
            return Err(Failure::Unauthorized(format!("/metrics asks for credentials ({code})")))
        }
        code => return Err(other(format!("answered {}", code.unwrap_or(0)))),
    }
    let mut length = None;
    for h in response.headers.iter() {
        let value =
            std::str::from_utf8(h.value).map_err(|_| other("a header that is not text".into()))?.trim();
        match h.name.to_ascii_lowercase().as_str() {
            "content-length" => {
                length = Some(value.parse::<usize>().map_err(|_| other("a malformed Content-Length".into()))?)
            }
            "transfer-encoding" | "content-encoding" if !value.eq_ignore_ascii_case("identity") => {
                return Err(other(format!("an encoded body ({}: {value})", h.name)));
            }
            "content-type" if !value.starts_with("text/plain") => {
                return Err(other(format!("not the text format (Content-Type: {value})")));
            }
            _ => {}
        }
    }
    Ok(length)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_plain_200_in_the_text_format_is_read() {
        let ok = b"HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: 4\r\n\r\n";
        assert_eq!(head(ok), Ok(Some(4)));
        assert_eq!(head(b"HTTP/1.1 200 OK\r\n\r\n"), Ok(None));
        let asks = Failure::Unauthorized("/metrics asks for credentials (401)".into());
        assert_eq!(head(b"HTTP/1.1 401 Unauthorized\r\n\r\n"), Err(asks));
        for (answer, why) in [
            (&b"HTTP/1.0 404 Not Found\r\n\r\n"[..], "answered 404"),
            (b"SSH-2.0-OpenSSH\r\n\r\n", "not an HTTP answer (invalid HTTP version)"),
            (
                b"HTTP/1.0 200 OK\r\nContent-Encoding: gzip\r\n\r\n",
                "an encoded body (Content-Encoding: gzip)",
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                "an encoded body (Transfer-Encoding: chunked)",
            ),
            (
                b"HTTP/1.0 200 OK\r\nContent-Type: text/html\r\n\r\n",
                "not the text format (Content-Type: text/html)",
            ),
            (b"HTTP/1.0 200 OK\r\nContent-Length: x\r\n\r\n", "a malformed Content-Length"),
            (b"HTTP/1.0 200 OK\r\nbroken\r\n\r\n", "not an HTTP answer (invalid header name)"),
        ] {
            assert_eq!(head(answer), Err(Failure::Other(why.into())), "{answer:?}");
        }
    }

    #[test]
    fn lines_are_merged_as_they_complete_and_a_long_one_is_refused() {
        let mut merger = Merger::default();
        let mut lines = Lines::default();
        let mut pending = b"# TYPE jetkvm_dc_x gauge\njetkvm_dc_x 1".to_vec();
        lines.feed(&mut pending, &mut merger).unwrap();
        assert_eq!(pending, b"jetkvm_dc_x 1");
        pending.extend_from_slice(b"\n");
        lines.feed(&mut pending, &mut merger).unwrap();
        assert!(pending.is_empty());
        assert_eq!(merger.finish().families.len(), 1);
        let mut pending = vec![b'#'; MAX_LINE + 1];
        let err = Lines::default().feed(&mut pending, &mut Merger::default()).unwrap_err();
        assert_eq!(err, "line 1: over 16 KiB");
    }
}
