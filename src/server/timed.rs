//! The stream under HTTP (and TLS): a write deadline, and the connection's
//! facts carried along for actix to hand to requests.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_tls::accept::openssl::TlsStream;
use actix_web::rt::net::{ActixStream, Ready, TcpStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::slot::ConnInfo;

/// A stream actix serves: it knows its connection.
pub trait Conn: AsyncRead + AsyncWrite + Unpin + 'static {
    fn info(&self) -> &Rc<ConnInfo>;
}

impl Conn for Timed<TcpStream> {
    fn info(&self) -> &Rc<ConnInfo> {
        &self.info
    }
}

impl Conn for TlsStream<Timed<TcpStream>> {
    fn info(&self) -> &Rc<ConnInfo> {
        &self.get_ref().info
    }
}

/// The TCP stream under HTTP (and TLS), carrying what requests know of
/// their connection: fails a write that makes no progress for `timeout`,
/// so a client that stops reading cannot hold a connection and its
/// buffers; and tells the slot what moved.
pub struct Timed<T> {
    pub(super) inner: T,
    timeout: Duration,
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
    pub(super) info: Rc<ConnInfo>,
}

impl<T> Timed<T> {
    pub(super) fn new(inner: T, timeout: Duration, info: Rc<ConnInfo>) -> Self {
        Timed { inner, timeout, stalled: None, info }
    }

    fn check_stall<R>(&mut self, cx: &mut Context<'_>, poll: Poll<io::Result<R>>) -> Poll<io::Result<R>> {
        match poll {
            Poll::Ready(r) => {
                self.stalled = None;
                Poll::Ready(r)
            }
            Poll::Pending => {
                let timeout = self.timeout;
                let sleep = self.stalled.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                match sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "write stalled")))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn wrote(&self, n: usize) {
        let slot = &self.info.slot;
        if n > 0 && slot.busy.load(Ordering::Acquire) == 0 {
            slot.touch();
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Timed<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let p = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(p, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.info.slot.read_while_idle.store(true, Ordering::Release);
        }
        p
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Timed<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let p = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = p {
            self.wrote(n);
        }
        self.check_stall(cx, p)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let p = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = p {
            self.wrote(n);
        }
        self.check_stall(cx, p)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let p = Pin::new(&mut self.inner).poll_flush(cx);
        self.check_stall(cx, p)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// What actix's TLS acceptor needs of the stream under it.
impl<T: ActixStream> ActixStream for Timed<T> {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<Ready>> {
        self.inner.poll_read_ready(cx)
    }

    fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<Ready>> {
        self.inner.poll_write_ready(cx)
    }
}
