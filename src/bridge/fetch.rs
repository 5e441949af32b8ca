//! One HTTP/1.0 GET of the app's `/metrics` on loopback, on the runtime the
//! server runs on (never blocking its one worker). Ours because the stack's
//! client (`awc`) adds 445 KB to the device's binary for a request this
//! simple (see the README). HTTP/1.0 asks for a plain body: no chunks, no
//! keep-alive, no compression (none is offered).

use std::io;
use std::net::SocketAddr;

use nix::sys::socket::{setsockopt, sockopt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The largest answer read, head included; a larger one is refused.
pub const MAX_ANSWER: usize = 256 * 1024;

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

/// The body of a `200 OK` answer in the text format. The caller bounds the
/// time taken.
pub async fn get(addr: SocketAddr) -> Result<String, Failure> {
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
    exchange(&mut stream, addr).await
}

async fn exchange(stream: &mut TcpStream, addr: SocketAddr) -> Result<String, Failure> {
    let request = format!(
        "GET /metrics HTTP/1.0\r\nHost: {addr}\r\nAccept: {ACCEPT}\r\nUser-Agent: jetkvm-metrics\r\n\r\n"
    );
    let other = Failure::Other;
    stream.write_all(request.as_bytes()).await.map_err(|e| other(format!("asking {addr}: {e}")))?;
    let mut answer = Vec::with_capacity(16 * 1024);
    stream
        .take(MAX_ANSWER as u64 + 1)
        .read_to_end(&mut answer)
        .await
        .map_err(|e| other(format!("reading {addr}: {e}")))?;
    if answer.len() > MAX_ANSWER {
        return Err(other(format!("{addr}: an answer over {} KiB", MAX_ANSWER / 1024)));
    }
    if matches!(status(&answer), Some("401" | "403")) {
        return Err(Failure::Unauthorized(format!("{addr}: /metrics asks for credentials")));
    }
    body(answer).map_err(|e| other(format!("{addr}: {e}")))
}

/// The status code of an answer's first line.
fn status(answer: &[u8]) -> Option<&str> {
    let line = answer.split(|&b| b == b'\r').next()?;
    std::str::from_utf8(line).ok()?.strip_prefix("HTTP/1.")?.get(2..5)
}

/// The body of a whole answer, if it is a complete `200` in the text format.
pub fn body(answer: Vec<u8>) -> Result<String, String> {
    let end = answer.windows(4).position(|w| w == b"\r\n\r\n").ok_or("an answer without a complete head")?;
    let head = std::str::from_utf8(&answer[..end]).map_err(|_| "a head that is not text")?;
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or("");
    let code = status.strip_prefix("HTTP/1.").and_then(|s| s.get(2..5));
    if code != Some("200") {
        return Err(format!("answered {:?}", status.chars().take(40).collect::<String>()));
    }
    let mut length = None;
    for line in lines {
        let (name, value) = line.split_once(':').ok_or("a malformed header")?;
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => {
                length = Some(value.parse::<usize>().map_err(|_| "a malformed Content-Length")?)
            }
            "transfer-encoding" | "content-encoding" if !value.eq_ignore_ascii_case("identity") => {
                return Err(format!("an encoded body ({name}: {value})"));
            }
            "content-type" if !value.starts_with("text/plain") => {
                return Err(format!("not the text format (Content-Type: {value})"));
            }
            _ => {}
        }
    }
    let mut body = answer;
    body.drain(..end + 4);
    if length.is_some_and(|n| n != body.len()) {
        return Err("a body shorter or longer than its Content-Length".into());
    }
    String::from_utf8(body).map_err(|_| "a body that is not UTF-8".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_complete_plain_200_gives_a_body() {
        let ok =
            b"HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: 4\r\n\r\na 1\n";
        assert_eq!(body(ok.to_vec()).unwrap(), "a 1\n");
        assert_eq!(body(b"HTTP/1.1 200 OK\r\n\r\n".to_vec()).unwrap(), "");
        assert_eq!(status(b"HTTP/1.1 401 Unauthorized\r\n\r\n"), Some("401"));
        assert_eq!(status(b"SSH-2.0-OpenSSH\r\n"), None);
        for (answer, why) in [
            (
                &b"HTTP/1.0 200 OK\r\nContent-Length: 9\r\n\r\na 1\n"[..],
                "a body shorter or longer than its Content-Length",
            ),
            (b"HTTP/1.0 404 Not Found\r\n\r\n", "answered \"HTTP/1.0 404 Not Found\""),
            (b"SSH-2.0-OpenSSH\r\n\r\n", "answered \"SSH-2.0-OpenSSH\""),
            (
                b"HTTP/1.0 200 OK\r\nContent-Encoding: gzip\r\n\r\nx",
                "an encoded body (Content-Encoding: gzip)",
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n",
                "an encoded body (Transfer-Encoding: chunked)",
            ),
            (
                b"HTTP/1.0 200 OK\r\nContent-Type: text/html\r\n\r\n",
                "not the text format (Content-Type: text/html)",
            ),
            (b"HTTP/1.0 200 OK\r\nbroken\r\n\r\n", "a malformed header"),
            (b"HTTP/1.0 200 OK\r\n", "an answer without a complete head"),
            (b"HTTP/1.0 200 OK\r\n\r\n\xff", "a body that is not UTF-8"),
        ] {
            assert_eq!(body(answer.to_vec()).unwrap_err(), why);
        }
    }
}
