//! TCP sockets through netlink `sock_diag`, the kernel's socket dump: on a
//! machine with a large connection hash table, reading `/proc/net/tcp`
//! walks every bucket several times per read and costs milliseconds; the
//! dump costs microseconds. The request carries a filter, so the kernel
//! sends only the sockets on the counted ports, and they are counted as
//! they are read. Used when `proc_root` is the live `/proc` and the kernel
//! has the dump; the text tables remain the source otherwise (fixtures, a
//! kernel without `inet_diag`).

use std::io;

const NETLINK_SOCK_DIAG: libc::c_int = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_DUMP: u16 = 0x300;
/// nlmsghdr is 16 bytes; inet_diag_req_v2 is 56; then the filter's
/// netlink attribute header.
const HEAD_LEN: usize = 16 + 56 + 4;
const INET_DIAG_REQ_BYTECODE: u16 = 1;
// Filter operations (<linux/inet_diag.h>): each is {code, yes, no}, a
// port comparison followed by a second op whose `no` holds the port.
const BC_JMP: u8 = 1;
const BC_S_GE: u8 = 2;
const BC_S_LE: u8 = 3;
/// One port's test: `sport >= p`, `sport <= p`, then a jump to the end
/// (accept) for every port but the last.
const BLOCK: usize = 20;

struct Fd(libc::c_int);

impl Drop for Fd {
    fn drop(&mut self) {
        // SAFETY: closing a descriptor we own.
        unsafe { libc::close(self.0) };
    }
}

/// The netlink socket, kept between scrapes: making and closing one per
/// dump cost more than the dumps on the board. Dropped after any error, so
/// that nothing left of a broken dump is read as the next one's. With it,
/// the request, built once: the kernel returns only sockets on the counted
/// ports.
pub struct Diag {
    kept: std::sync::Mutex<Kept>,
}

struct Kept {
    fd: Option<Fd>,
    request: Vec<u8>,
    /// Address families (IPv4, IPv6) this kernel has no TCP dump for: its
    /// `inet_diag` or `tcp_diag` is a module not loaded, or not built. Not
    /// asked again: each request would have the kernel run `modprobe` for
    /// it, and wait for it (1.7 ms a scrape on the board, whose image has
    /// neither module).
    absent: [bool; 2],
}

impl Diag {
    /// For `ports`, the ones every `count` is given.
    pub fn new(ports: &[u16]) -> Diag {
        Diag { kept: std::sync::Mutex::new(Kept { fd: None, request: request(ports), absent: [false; 2] }) }
    }
}

/// Whether an error says the kernel has no such dump (or no sock_diag).
fn no_dump(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOENT | libc::EAFNOSUPPORT | libc::EPROTONOSUPPORT))
}

/// The dump request, its family left for `dump` to set. Its filter is the
/// kernel's bytecode for "the local port is one of `ports`": per port, a
/// failed test goes on to the next port's block and a match jumps to the
/// end; past the last block is a reject. The kernel checks every jump when
/// it takes the request. Without ports that fit one attribute, no filter.
fn request(ports: &[u16]) -> Vec<u8> {
    let code_len = (ports.len() * BLOCK).saturating_sub(4);
    let filter = !ports.is_empty() && HEAD_LEN + code_len <= u16::MAX as usize;
    let len = if filter { HEAD_LEN + code_len } else { HEAD_LEN - 4 };
    let mut req = Vec::with_capacity(len);
    req.extend_from_slice(&(len as u32).to_ne_bytes());
    req.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    req.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    req.extend_from_slice(&1u32.to_ne_bytes()); // sequence; port id 0: the kernel's
    req.extend_from_slice(&0u32.to_ne_bytes());
    // inet_diag_req_v2: family (set per dump), TCP, no extensions, every
    // state, a zero socket id (match all).
    req.extend_from_slice(&[0, libc::IPPROTO_TCP as u8, 0, 0]);
    req.extend_from_slice(&0xfffu32.to_ne_bytes());
    req.resize(16 + 56, 0);
    if filter {
        req.extend_from_slice(&((4 + code_len) as u16).to_ne_bytes());
        req.extend_from_slice(&INET_DIAG_REQ_BYTECODE.to_ne_bytes());
        let op = |req: &mut Vec<u8>, code: u8, yes: u8, no: u16| {
            req.extend_from_slice(&[code, yes]);
            req.extend_from_slice(&no.to_ne_bytes());
        };
        for (i, port) in ports.iter().enumerate() {
            op(&mut req, BC_S_GE, 8, BLOCK as u16);
            op(&mut req, 0, 0, *port);
            op(&mut req, BC_S_LE, 8, BLOCK as u16 - 8);
            op(&mut req, 0, 0, *port);
            if i + 1 < ports.len() {
                // Always taken: `no` to the end. `yes` only walks the
                // kernel's check along the code.
                op(&mut req, BC_JMP, 4, (code_len - (i + 1) * BLOCK + 4) as u16);
            }
        }
    }
    debug_assert_eq!(req.len(), len);
    req
}

fn open() -> io::Result<Fd> {
    // SAFETY: plain socket(2) call.
    let fd =
        unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, NETLINK_SOCK_DIAG) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Fd(fd))
}

/// Counts the TCP sockets of one address family into `counts[port index]
/// [state index as in tcp::STATES]`.
fn dump(fd: &Fd, family: u8, req: &mut [u8], ports: &[u16], counts: &mut [[u64; 11]]) -> io::Result<()> {
    req[16] = family;
    // SAFETY: sending a buffer we own, of its length.
    let sent = unsafe { libc::send(fd.0, req.as_ptr().cast(), req.len(), 0) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    // One buffer per thread, reused: a fresh one per scrape costs page faults.
    thread_local!(static BUF: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0u8; 32 * 1024]));
    BUF.with(|buf| receive(fd, &mut buf.borrow_mut(), ports, counts))
}

fn receive(fd: &Fd, buf: &mut [u8], ports: &[u16], counts: &mut [[u64; 11]]) -> io::Result<()> {
    loop {
        // SAFETY: receiving into a buffer we own, of its length.
        let n = unsafe { libc::recv(fd.0, buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if parse(&buf[..n as usize], ports, counts)? {
            return Ok(());
        }
    }
}

/// Counts one datagram of netlink messages; `Ok(true)` at the end of the
/// dump. A socket on a port not listed (no filter) is passed over.
fn parse(mut b: &[u8], ports: &[u16], counts: &mut [[u64; 11]]) -> io::Result<bool> {
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "malformed sock_diag message");
    while b.len() >= 16 {
        let len = u32::from_ne_bytes(b[0..4].try_into().map_err(|_| bad())?) as usize;
        let kind = u16::from_ne_bytes(b[4..6].try_into().map_err(|_| bad())?);
        if len < 16 || len > b.len() {
            return Err(bad());
        }
        match kind {
            NLMSG_DONE => return Ok(true),
            NLMSG_ERROR => {
                let errno = b.get(16..20).map(|e| i32::from_ne_bytes(e.try_into().unwrap_or([0; 4])));
                return Err(io::Error::from_raw_os_error(errno.map(|e| -e).unwrap_or(libc::EIO)));
            }
            SOCK_DIAG_BY_FAMILY => {
                // inet_diag_msg: family, state, timer, retrans, then the
                // socket id whose first field is the source port (big-endian).
                let msg = &b[16..len];
                if msg.len() < 8 {
                    return Err(bad());
                }
                let state = msg[1];
                let port = u16::from_be_bytes([msg[4], msg[5]]);
                if let (1..=11, Some(i)) = (state, ports.iter().position(|p| *p == port)) {
                    counts[i][state as usize - 1] += 1;
                }
            }
            _ => {}
        }
        // Messages are aligned to 4 bytes.
        let next = (len + 3) & !3;
        b = b.get(next..).unwrap_or(&[]);
    }
    Ok(false)
}

impl Diag {
    /// Counts the TCP sockets on `ports` (those it was made for), IPv4
    /// and IPv6, into `counts` (one row per port). IPv6 may be absent from
    /// the kernel; without the IPv4 dump this is an error every time,
    /// asked of the kernel once.
    pub fn count(&self, ports: &[u16], counts: &mut [[u64; 11]]) -> io::Result<()> {
        let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        let Kept { fd, request, absent } = &mut *kept;
        let unsupported = || io::Error::new(io::ErrorKind::Unsupported, "no TCP socket dump in this kernel");
        if absent[0] {
            return Err(unsupported());
        }
        let sock = match fd.take() {
            Some(sock) => sock,
            None => open().inspect_err(|e| absent[0] = no_dump(e))?,
        };
        if let Err(e) = dump(&sock, libc::AF_INET as u8, request, ports, counts) {
            if no_dump(&e) {
                absent[0] = true;
                return Err(unsupported());
            }
            return Err(e);
        }
        if !absent[1] {
            match dump(&sock, libc::AF_INET6 as u8, request, ports, counts) {
                Ok(()) => {}
                Err(e) if no_dump(&e) => absent[1] = true,
                Err(e) => return Err(e),
            }
        }
        *fd = Some(sock);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_the_listed_ports_only() {
        let listen = || std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let (a, between, b) = (listen(), listen(), listen());
        let port = |l: &std::net::TcpListener| l.local_addr().unwrap().port();
        let _conns: Vec<_> = [(&a, 2), (&between, 3), (&b, 1)]
            .iter()
            .flat_map(|(l, n)| (0..*n).map(|_| std::net::TcpStream::connect(("127.0.0.1", port(l))).unwrap()))
            .collect();
        let ports = [port(&a), port(&b)];
        let diag = Diag::new(&ports);
        // Twice: the second dump on the kept socket.
        for _ in 0..2 {
            let mut counts = [[0u64; 11]; 2];
            diag.count(&ports, &mut counts).unwrap();
            // listen (index 9) and established (0), each port its own.
            assert_eq!((counts[0][9], counts[0][0]), (1, 2), "{counts:?}");
            assert_eq!((counts[1][9], counts[1][0]), (1, 1), "{counts:?}");
        }
    }

    /// The kernel's filter interpreter (inet_diag_bc_run), for the ops
    /// the request uses: whether a socket on `sport` is dumped.
    fn run(code: &[u8], sport: u16) -> bool {
        let mut at = 0usize;
        let mut len = code.len() as isize;
        while len > 0 {
            let (kind, yes, no) = (code[at], code[at + 1], u16::from_ne_bytes([code[at + 2], code[at + 3]]));
            let port = || u16::from_ne_bytes([code[at + 6], code[at + 7]]);
            let taken = match kind {
                BC_JMP => false,
                BC_S_GE => sport >= port(),
                BC_S_LE => sport <= port(),
                other => panic!("op {other}"),
            };
            let step = if taken { yes as usize } else { no as usize };
            at += step;
            len -= step as isize;
        }
        len == 0
    }

    #[test]
    fn the_filter_passes_exactly_the_listed_ports() {
        for ports in [&[80u16][..], &[80, 443, 8554], &[65535, 1, 3000, 2999]] {
            let req = request(ports);
            assert_eq!(u32::from_ne_bytes(req[0..4].try_into().unwrap()) as usize, req.len());
            let attr = &req[16 + 56..];
            assert_eq!(u16::from_ne_bytes([attr[0], attr[1]]) as usize, attr.len());
            let code = &attr[4..];
            for sport in 0..=u16::MAX {
                assert_eq!(run(code, sport), ports.contains(&sport), "{ports:?} {sport}");
            }
        }
        // No ports, or more than one attribute holds: no filter.
        assert_eq!(request(&[]).len(), 16 + 56);
        let many: Vec<u16> = (1..=4000).collect();
        assert_eq!(request(&many).len(), 16 + 56);
    }

    #[test]
    fn malformed_datagrams() {
        let mut counts = [[0u64; 11]; 1];
        let ports = [80];
        assert!(parse(&[0u8; 15], &ports, &mut counts).is_ok());
        let mut short = vec![0u8; 16];
        short[0] = 8; // length below the header
        assert!(parse(&short, &ports, &mut counts).is_err());
        let mut long = vec![0u8; 16];
        long[0] = 200; // longer than the datagram
        assert!(parse(&long, &ports, &mut counts).is_err());
        let mut done = vec![0u8; 16];
        done[0] = 16;
        done[4..6].copy_from_slice(&NLMSG_DONE.to_ne_bytes());
        assert!(parse(&done, &ports, &mut counts).unwrap());
    }
}
