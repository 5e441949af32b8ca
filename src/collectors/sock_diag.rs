//! TCP sockets through netlink `sock_diag`, the kernel's socket dump: on a
//! machine with a large connection hash table, reading `/proc/net/tcp`
//! walks every bucket several times per read and costs milliseconds; the
//! dump costs microseconds. Used when `proc_root` is the live `/proc`; the
//! text tables remain the source for any other root (fixtures).

use std::io;

const NETLINK_SOCK_DIAG: libc::c_int = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_DUMP: u16 = 0x300;
/// nlmsghdr is 16 bytes; inet_diag_req_v2 is 56.
const REQ_LEN: usize = 16 + 56;

struct Fd(libc::c_int);

impl Drop for Fd {
    fn drop(&mut self) {
        // SAFETY: closing a descriptor we own.
        unsafe { libc::close(self.0) };
    }
}

/// The netlink socket, kept between scrapes: making and closing one per
/// dump cost more than the dumps on the board. Dropped after any error, so
/// that nothing left of a broken dump is read as the next one's.
#[derive(Default)]
pub struct Diag(std::sync::Mutex<Option<Fd>>);

fn open() -> io::Result<Fd> {
    // SAFETY: plain socket(2) call.
    let fd =
        unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, NETLINK_SOCK_DIAG) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Fd(fd))
}

/// (local port, state index as in `tcp::STATES`) of every TCP socket of
/// one address family, appended to `out`.
fn dump(fd: &Fd, family: u8, out: &mut Vec<(u16, u8)>) -> io::Result<()> {
    let mut req = [0u8; REQ_LEN];
    req[0..4].copy_from_slice(&(REQ_LEN as u32).to_ne_bytes());
    req[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    req[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    req[8..12].copy_from_slice(&1u32.to_ne_bytes()); // sequence; port id 0: the kernel's
    req[16] = family;
    req[17] = libc::IPPROTO_TCP as u8;
    // No extensions, then every state; the socket id is zero: match all.
    req[20..24].copy_from_slice(&0xfffu32.to_ne_bytes());
    // SAFETY: sending a buffer we own, of its length.
    let sent = unsafe { libc::send(fd.0, req.as_ptr().cast(), req.len(), 0) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    // One buffer per thread, reused: a fresh one per scrape costs page faults.
    thread_local!(static BUF: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0u8; 32 * 1024]));
    BUF.with(|buf| receive(fd, &mut buf.borrow_mut(), out))
}

fn receive(fd: &Fd, buf: &mut [u8], out: &mut Vec<(u16, u8)>) -> io::Result<()> {
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
        if parse(&buf[..n as usize], out)? {
            return Ok(());
        }
    }
}

/// Parses one datagram of netlink messages; `Ok(true)` at the end of the
/// dump.
fn parse(mut b: &[u8], out: &mut Vec<(u16, u8)>) -> io::Result<bool> {
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
                if (1..=11).contains(&state) {
                    out.push((port, state - 1));
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
    /// Every TCP socket, IPv4 and IPv6. IPv6 may be absent from the kernel.
    pub fn tcp_sockets(&self) -> io::Result<Vec<(u16, u8)>> {
        let mut kept = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let fd = match kept.take() {
            Some(fd) => fd,
            None => open()?,
        };
        let mut all = Vec::new();
        dump(&fd, libc::AF_INET as u8, &mut all)?;
        match dump(&fd, libc::AF_INET6 as u8, &mut all) {
            Ok(()) => {}
            Err(e)
                if e.raw_os_error() == Some(libc::ENOENT) || e.raw_os_error() == Some(libc::EAFNOSUPPORT) => {
            }
            Err(e) => return Err(e),
        }
        *kept = Some(fd);
        Ok(all)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sees_a_listener_and_its_connections() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let _c1 = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let _c2 = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let diag = Diag::default();
        // Twice: the second dump on the kept socket.
        let _ = diag.tcp_sockets().unwrap();
        let socks = diag.tcp_sockets().unwrap();
        let mine: Vec<_> = socks.iter().filter(|(p, _)| *p == port).collect();
        assert_eq!(mine.iter().filter(|(_, s)| *s == 9).count(), 1, "{mine:?}"); // listen
        assert_eq!(mine.iter().filter(|(_, s)| *s == 0).count(), 2, "{mine:?}");
        // established
    }

    #[test]
    fn malformed_datagrams() {
        let mut out = Vec::new();
        assert!(parse(&[0u8; 15], &mut out).is_ok());
        let mut short = vec![0u8; 16];
        short[0] = 8; // length below the header
        assert!(parse(&short, &mut out).is_err());
        let mut long = vec![0u8; 16];
        long[0] = 200; // longer than the datagram
        assert!(parse(&long, &mut out).is_err());
        let mut done = vec![0u8; 16];
        done[0] = 16;
        done[4..6].copy_from_slice(&NLMSG_DONE.to_ne_bytes());
        assert!(parse(&done, &mut out).unwrap());
    }
}
