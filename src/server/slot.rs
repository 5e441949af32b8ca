//! The facts of one connection: what a request knows about it
//! ([`ConnInfo`], actix connection data) and its place under the cap
//! ([`Slot`]: busy or idle, evicted, closing).

use std::cell::{Cell, OnceCell};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// What a request knows about its connection (actix connection data).
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// Whether the client is on this device: from loopback, or from the
    /// address the connection came in on (a TCP handshake cannot be
    /// completed from elsewhere with that source).
    pub same_host: bool,
    /// The identity of a client certificate the mTLS handshake verified.
    pub client_cert: OnceCell<String>,
    /// Whether the connection is TLS.
    pub encrypted: Cell<bool>,
    pub slot: Arc<Slot>,
}

/// One open connection.
pub struct Slot {
    pub(super) id: u64,
    /// The client's address (IPv4-mapped IPv6 as IPv4).
    pub(super) client: IpAddr,
    /// In its TLS handshake (holding a turn).
    pub(super) handshaking: AtomicBool,
    /// Requests being handled right now.
    pub(super) busy: AtomicUsize,
    /// Since when no request has been in progress and nothing written.
    pub(super) idle_since: Mutex<Instant>,
    /// Bytes came in since the connection went idle: a request head begun.
    pub(super) read_while_idle: AtomicBool,
    /// Busy or idle changed.
    pub(super) changed: Notify,
    /// Chosen to close for a new connection; it stays counted until it has.
    pub(super) evicted: AtomicBool,
    /// The answer in progress says `Connection: close`: actix closes the
    /// connection once it is written.
    pub(super) closing: AtomicBool,
    pub(super) evict: Notify,
}

impl Slot {
    /// Marks a request in progress until the guard is dropped.
    pub fn busy(self: &Arc<Self>) -> BusyGuard {
        self.busy.fetch_add(1, Ordering::AcqRel);
        self.read_while_idle.store(false, Ordering::Release);
        self.changed.notify_one();
        BusyGuard(self.clone())
    }

    /// Marks the request in progress as waiting for its client (a body)
    /// until the guard is dropped: the connection counts as idle meanwhile,
    /// for the cap and the idle deadline.
    pub fn waiting_for_input(self: &Arc<Self>) -> WaitingGuard {
        if self.busy.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.touch();
            self.changed.notify_one();
        }
        WaitingGuard(self.clone())
    }

    /// Whether the answer to the request in progress must close the
    /// connection: it was evicted while the request came in.
    pub fn close_after_response(&self) -> bool {
        let evicted = self.evicted.load(Ordering::Acquire);
        if evicted {
            self.closing.store(true, Ordering::Release);
        }
        evicted
    }

    /// A request being handled, or an answer being written before the
    /// connection closes.
    pub(super) fn in_progress(&self) -> bool {
        self.busy.load(Ordering::Acquire) > 0 || self.closing.load(Ordering::Acquire)
    }

    pub(super) fn touch(&self) {
        *self.idle_since.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }
}

pub struct BusyGuard(Arc<Slot>);

/// A request waiting for its client; busy again when dropped.
pub struct WaitingGuard(Arc<Slot>);

impl Drop for WaitingGuard {
    fn drop(&mut self) {
        self.0.busy.fetch_add(1, Ordering::AcqRel);
        self.0.changed.notify_one();
    }
}

impl Drop for BusyGuard {
    fn drop(&mut self) {
        if self.0.busy.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.touch();
            self.0.changed.notify_one();
        }
    }
}

/// Why a connection with nothing in progress ends.
pub(super) enum Idle {
    /// Chosen for eviction, and no answer is being written.
    Evicted,
    /// No request and no write for the header timeout; `partial`: part of a
    /// request head had arrived.
    Timeout { partial: bool },
}

/// Resolves once the connection has had no request in progress and no
/// write for `limit`, or once it is evicted with nothing in progress. One
/// evicted in the moment a request arrived answers that request with
/// `Connection: close` (see `routes`), and actix closes it after writing.
pub(super) async fn idle_deadline(slot: &Slot, limit: Duration) -> Idle {
    loop {
        if slot.busy.load(Ordering::Acquire) > 0 {
            slot.changed.notified().await;
            continue;
        }
        if slot.evicted.load(Ordering::Acquire) && !slot.closing.load(Ordering::Acquire) {
            return Idle::Evicted;
        }
        let deadline = *slot.idle_since.lock().unwrap_or_else(|p| p.into_inner()) + limit;
        if Instant::now() >= deadline {
            return Idle::Timeout { partial: slot.read_while_idle.load(Ordering::Acquire) };
        }
        tokio::select! {
            () = tokio::time::sleep_until(deadline.into()) => {}
            () = slot.changed.notified() => {}
            () = slot.evict.notified() => {}
        }
    }
}
