//! Hostile input on every listener: malformed credentials, odd methods and
//! paths, oversized and split requests, garbage TLS records. Each gets a
//! clean 4xx or a closed connection, is counted, and the process lives.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use bcrypt::Version;

use crate::util::*;

/// Sends bytes, returns the status line's code, or None if the server
/// closed without answering.
fn status_of(addr: SocketAddr, bytes: &[u8]) -> Option<u16> {
    exchange(TcpStream::connect(addr).unwrap(), bytes).ok().map(|r| r.status)
}

fn alive(d: &mut Daemon) {
    assert!(d.child.try_wait().unwrap().is_none(), "daemon died:\n{}", d.log());
    assert_eq!(d.get("/healthz", &[]).status, 200);
}

#[test]
fn malformed_credentials_never_pass_and_never_crash() {
    let mut d = Daemon::start(
        "[auth]\nfailure_burst = 10000\n",
        Some(&password_mode(&hash("pw", Version::TwoA, 4), "4c0a7f3e-8a9b-4e1d-9f6c-2b7d5e3a1c90")),
    );
    let long = "A".repeat(7000);
    let authorizations: Vec<Vec<u8>> = vec![
        b"Basic".to_vec(),
        b"Basic ".to_vec(),
        b"Basic ====".to_vec(),
        b"Basic Og==".to_vec(), // ":" — empty user and password
        b"Basic OnB3".to_vec(), // ":pw" with no user: that is valid
        b"basic OnB3".to_vec(),
        b"BASIC OnB3".to_vec(),
        b"Basic  OnB3".to_vec(),
        b"Basic OnB3 extra".to_vec(),
        b"Basic \x00OnB3".to_vec(),
        b"Bearer ".to_vec(),
        b"Bearer jkm_".to_vec(),
        format!("Bearer {long}").into_bytes(),
        format!("Basic {long}").into_bytes(),
        b"Negotiate abc".to_vec(),
        b"Digest username=\"admin\"".to_vec(),
        b"\xff\xfe\xfd".to_vec(),
        b"Basic \xc3\xa9\xc3\xa9".to_vec(),
        b",,,,".to_vec(),
    ];
    let mut passed = 0;
    for a in &authorizations {
        let mut req =
            b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nAuthorization: ".to_vec();
        req.extend_from_slice(a);
        req.extend_from_slice(b"\r\n\r\n");
        let code = status_of(d.addr, &req);
        if code == Some(200) {
            passed += 1;
        } else {
            assert!(
                matches!(code, Some(400) | Some(401) | None),
                "{:?} -> {code:?}",
                String::from_utf8_lossy(a)
            );
        }
    }
    // Only the well-formed basic credentials with the right password pass
    // (three spellings of the scheme, and a doubled space).
    assert_eq!(passed, 4);
    let cookies: Vec<&[u8]> = vec![
        b"authToken",
        b"authToken=",
        b"=authToken",
        b";;;;",
        b"authToken=4c0a7f3e-8a9b-4e1d-9f6c-2b7d5e3a1c9",
        b"authToken=4c0a7f3e-8a9b-4e1d-9f6c-2b7d5e3a1c900",
        b"AUTHTOKEN=4c0a7f3e-8a9b-4e1d-9f6c-2b7d5e3a1c90",
        b"authToken=\"4c0a7f3e",
        b"authToken=\x01\x02",
        b"authToken=\xff",
    ];
    for c in &cookies {
        let mut req = b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nCookie: ".to_vec();
        req.extend_from_slice(c);
        req.extend_from_slice(b"\r\n\r\n");
        let code = status_of(d.addr, &req);
        assert!(matches!(code, Some(400) | Some(401) | None), "{:?} -> {code:?}", String::from_utf8_lossy(c));
    }
    alive(&mut d);
}

#[test]
fn odd_methods_paths_and_framing() {
    let mut d = Daemon::start("", Some(&no_password_mode()));
    let cases: Vec<(&[u8], &[u16])> = vec![
        (b"DELETE /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n", &[405]),
        (b"OPTIONS * HTTP/1.1\r\nHost: localhost\r\n\r\n", &[405]),
        (b"CONNECT x:443 HTTP/1.1\r\nHost: localhost\r\n\r\n", &[400, 405]),
        (b"TRACE / HTTP/1.1\r\nHost: localhost\r\n\r\n", &[405]),
        (b"BREW /pot HTTP/1.1\r\nHost: localhost\r\n\r\n", &[405]),
        (b"GET /../../etc/passwd HTTP/1.1\r\nHost: localhost\r\n\r\n", &[404, 400]),
        (b"GET /metrics/../metrics HTTP/1.1\r\nHost: localhost\r\n\r\n", &[404]),
        (b"GET //metrics HTTP/1.1\r\nHost: localhost\r\n\r\n", &[404]),
        (b"GET /METRICS HTTP/1.1\r\nHost: localhost\r\n\r\n", &[404]),
        (b"GET /metrics%00 HTTP/1.1\r\nHost: localhost\r\n\r\n", &[404]),
        (b"GET http://evil/metrics HTTP/1.1\r\nHost: localhost\r\n\r\n", &[200]),
        (b"GET /metrics HTTP/1.0\r\n\r\n", &[200]),
        (b"GET /metrics\r\n\r\n", &[400]),
        (b"GET\r\n\r\n", &[400]),
        (b"\r\n\r\n\r\n", &[400]),
        (b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nContent-Length: -1\r\n\r\n", &[400]),
        (b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello", &[400]),
        (b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", &[200, 400]),
        (b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nX\x00Y: z\r\n\r\n", &[400]),
        (b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n Folded: header\r\n\r\n", &[400]),
        (b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nNoColon\r\n\r\n", &[400]),
        (b"\x16\x03\x01\x00\x05\x01\x00\x00\x01\x00", &[400]),
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", &[400, 405]),
    ];
    for (req, want) in &cases {
        let code = status_of(d.addr, req);
        assert!(
            code.is_none() || want.contains(&code.unwrap()),
            "{:?} -> {code:?}, want {want:?}",
            String::from_utf8_lossy(req)
        );
    }
    // A request sent one byte at a time is still served.
    let mut s = TcpStream::connect(d.addr).unwrap();
    for b in b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n" {
        s.write_all(&[*b]).unwrap();
        std::thread::sleep(Duration::from_millis(2));
    }
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).unwrap();
    assert_eq!(parse_response(&buf).unwrap().status, 200);
    // Pipelined requests are answered in order.
    let mut s = TcpStream::connect(d.addr).unwrap();
    s.write_all(
        b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\nGET /nope HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).unwrap();
    let text = String::from_utf8_lossy(&buf);
    let first = text.find("200 OK").unwrap();
    let second = text.find("404 Not Found").unwrap();
    assert!(first < second);
    alive(&mut d);
    let t = d.get("/metrics", &[]).text();
    assert!(sample(&t, "jetkvm_exporter_http_errors_total{reason=\"parse\"}").unwrap() >= 5.0);
    assert!(sample(&t, "jetkvm_exporter_http_bad_requests_total").unwrap() >= 4.0);
}

#[test]
fn garbage_on_the_tls_listener_is_counted_and_harmless() {
    let ca = pki::ca("ca");
    let server = pki::leaf(&ca, "s", &["localhost"], false, -1, 30);
    let dir = TempDir::new();
    dir.write("kvm_config.json", &no_password_mode());
    dir.write("s.crt", &server.cert_pem());
    dir.write("s.key", &server.key_pem());
    let config = dir.write(
        "config.toml",
        &format!(
            "listen_addr = \"127.0.0.1:0\"\ndevice_config = \"{0}/kvm_config.json\"\ntoken_file = \"{0}/t\"\nfilesystems = []\n\
             [metrics_service]\nenabled = true\nlisten_addr = \"127.0.0.1:0\"\n\
             [[metrics_service.keypairs]]\ncert_file = \"{0}/s.crt\"\nkey_file = \"{0}/s.key\"\n",
            dir.0.display()
        ),
    );
    let mut d = Daemon::start_with(dir, &config);
    let addr = d.metrics_addr.unwrap();
    let records: Vec<Vec<u8>> = vec![
        vec![],
        b"\x16".to_vec(),
        b"\x16\x03\x01\xff\xff".to_vec(), // record longer than sent
        b"\x16\x03\x01\x00\x04\x01\x00\x00\x00".to_vec(), // empty ClientHello
        b"\x15\x03\x03\x00\x02\x02\x28".to_vec(), // alert first
        b"\x17\x03\x03\x00\x05hello".to_vec(), // application data first
        vec![0x16, 0x03, 0x01, 0x40, 0x00].into_iter().chain(std::iter::repeat_n(0x41u8, 0x4000)).collect(),
        b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n".to_vec(),
        (0..=255u8).collect(),
    ];
    for r in &records {
        let buf = match exchange(TcpStream::connect(addr).unwrap(), r) {
            Ok(resp) => resp.body,
            Err(buf) => buf,
        };
        assert!(!String::from_utf8_lossy(&buf).contains("jetkvm_"), "metrics leaked for {r:?}");
    }
    alive(&mut d);
    let t = TlsClient::new(&ca.cert_pem()).get(addr, "/metrics", &[]).unwrap().resp.text();
    assert!(sample(&t, "jetkvm_exporter_http_errors_total{reason=\"tls_handshake\"}").unwrap() >= 6.0, "{t}");
}
