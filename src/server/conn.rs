//! A connection from accept to close, around actix's HTTP/1 dispatcher:
//! the per-listener and per-client connection caps, which evict an idle
//! connection of the client holding the most; the TLS handshake (a new
//! context per connection, so rotated files apply at once; a few at once,
//! one per client); and the deadlines actix does not keep: a request head
//! must arrive within `header_timeout` of the connection going idle or its
//! handshake ending (actix times only the first request), and a write may
//! stall at most `write_timeout` (actix has no write timeout).

use std::cell::{Cell, OnceCell};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use actix_http::{HttpService, KeepAlive};
use actix_server::{GracefulShutdownSignal, ServerBuilder};
use actix_service::{fn_factory, fn_service, map_config, Service, ServiceFactory};
use actix_tls::accept::openssl::{Acceptor, TlsStream};
use actix_tls::accept::TlsError;
use actix_web::dev::{AppConfig, Extensions};
use actix_web::rt::net::TcpStream;

use super::listener::Listener;
use super::routes;
use super::slot::{idle_deadline, ConnInfo, Idle, Slot};
use super::state::State;
use super::timed::{Conn, Timed};
use super::tracker::{Admitted, Tracker};
use crate::auth::{client_cert, Reason};
use crate::telemetry::HttpError;
use crate::tls::device::{Following, Serving};

/// OpenSSL's reason code for "peer did not return a certificate".
const NO_PEER_CERT: i32 = 199;
/// Time a closing connection gets to flush its last response.
const DISCONNECT_GRACE: Duration = Duration::from_secs(1);

/// Adds `socket` to `builder`: plain, TLS, or following the device's TLS,
/// as `listener` says.
pub fn listen(
    builder: ServerBuilder,
    socket: std::net::TcpListener,
    state: Arc<State>,
    listener: Arc<Listener>,
    graceful: GracefulShutdownSignal,
) -> io::Result<ServerBuilder> {
    let name = listener.role.label();
    builder.listen(name, socket, move || connections(state.clone(), listener.clone(), graceful.clone()))
}

/// actix's HTTP/1 service for one listener, over our connection type.
fn http<S: Conn>(
    state: &Arc<State>,
    listener: &Arc<Listener>,
    graceful: GracefulShutdownSignal,
) -> impl ServiceFactory<
    (S, Option<SocketAddr>),
    Config = (),
    Response = (),
    Error = actix_http::error::DispatchError,
    InitError = (),
> {
    let limits = &state.config.limits;
    let app = routes::app(state.clone(), listener.clone());
    HttpService::build()
        // Our own deadline (`idle_deadline`) closes idle connections first.
        .keep_alive(KeepAlive::Timeout(limits.header_timeout + Duration::from_secs(1)))
        .client_request_timeout(Duration::ZERO)
        .client_disconnect_timeout(DISCONNECT_GRACE)
        // A client that shuts down its write side after the request still
        // gets the answer.
        .h1_allow_half_closed(true)
        .on_connect_ext(|io: &S, ext: &mut Extensions| {
            ext.insert(io.info().clone());
        })
        .graceful_shutdown_signal(move || {
            let g = graceful.clone();
            async move { g.notified().await }
        })
        .h1(map_config(app, |_| AppConfig::default()))
}

/// One listener's connections, each under the cap. actix's HTTP service
/// (and the App in it) is made for each connection, not once per worker:
/// it runs a clock that wakes twice a second for as long as it exists, and
/// a daemon with no connection should not wake.
fn connections(
    state: Arc<State>,
    listener: Arc<Listener>,
    graceful: GracefulShutdownSignal,
) -> impl ServiceFactory<TcpStream, Config = (), Response = (), Error = (), InitError = ()> {
    fn_factory(move || {
        let (state, listener, graceful) = (state.clone(), listener.clone(), graceful.clone());
        async move {
            let limits = &state.config.limits;
            let tracker = Rc::new(Tracker::new(limits.max_connections, limits.max_connections_per_client));
            Ok(fn_service(move |tcp: TcpStream| {
                let (state, listener, graceful, tracker) =
                    (state.clone(), listener.clone(), graceful.clone(), tracker.clone());
                async move {
                    let Some((admitted, io)) = accept(&state, &tracker, tcp) else { return Ok(()) };
                    let tls = match (&listener.tls, &listener.device_tls) {
                        (Some(t), _) => {
                            let built = t.current();
                            Some((built.acceptor.clone(), t.mtls()))
                        }
                        (None, Some(device)) => match device_tls(&state, device, &admitted.slot, &io).await {
                            Some(DeviceChoice::Tls(acceptor)) => Some((acceptor, false)),
                            Some(DeviceChoice::Plain) => None,
                            None => return Ok(()),
                        },
                        (None, None) => None,
                    };
                    match tls {
                        None => serve(&state, &listener, graceful, &admitted.slot, io).await,
                        Some((acceptor, mtls)) => {
                            let Some(stream) = handshake(&state, acceptor, mtls, &admitted, io).await else {
                                return Ok(());
                            };
                            // The head deadline counts from here: a slow
                            // handshake does not eat the request's time.
                            admitted.slot.read_while_idle.store(false, Ordering::Release);
                            admitted.slot.touch();
                            serve(&state, &listener, graceful, &admitted.slot, stream).await
                        }
                    }
                    Ok(())
                }
            }))
        }
    })
}

/// HTTP on an admitted (and, for TLS, handshaken) connection.
async fn serve<S: Conn>(
    state: &Arc<State>,
    listener: &Arc<Listener>,
    graceful: GracefulShutdownSignal,
    slot: &Slot,
    io: S,
) {
    let peer = io.info().peer;
    let Ok(http) = http::<S>(state, listener, graceful).new_service(()).await else { return };
    watch(state, slot, http.call((io, Some(peer)))).await;
}

enum DeviceChoice {
    Tls(openssl::ssl::SslAcceptor),
    /// Plain HTTP: the device's TLS is off, or a client spoke plain HTTP
    /// while it is on (then every request is refused, see `routes`).
    Plain,
}

/// How a connection on the listener that follows the device's TLS is
/// served. With the device's TLS on, the first byte tells a TLS client (a
/// handshake record) from a plain one; it must come within the header
/// timeout. `None`: the connection ends here.
async fn device_tls(
    state: &State,
    device: &Following,
    slot: &Slot,
    io: &Timed<TcpStream>,
) -> Option<DeviceChoice> {
    let serving = device.current().await;
    if matches!(serving, Serving::Off) {
        return Some(DeviceChoice::Plain);
    }
    let mut first = [0u8; 1];
    let peeked = tokio::select! {
        r = tokio::time::timeout(state.config.limits.header_timeout, io.inner.peek(&mut first)) => r,
        () = slot.evict.notified() => {
            state.telemetry.evicted();
            return None;
        }
    };
    match (peeked, serving) {
        (Err(_), _) => {
            state.telemetry.http_error(HttpError::Timeout);
            None
        }
        (Ok(Ok(0)) | Ok(Err(_)), _) => None,
        // A TLS handshake record.
        (Ok(Ok(_)), Serving::Tls(built)) if first[0] == 0x16 => {
            Some(DeviceChoice::Tls(built.acceptor.clone()))
        }
        (Ok(Ok(_)), _) if first[0] == 0x16 => {
            // No certificate to answer with yet.
            state.telemetry.http_error(HttpError::TlsHandshake);
            None
        }
        (Ok(Ok(_)), _) => Some(DeviceChoice::Plain),
    }
}

/// A slot under the cap for a new connection, or `None` (counted) if every
/// open connection is busy.
fn accept(state: &State, tracker: &Rc<Tracker>, tcp: TcpStream) -> Option<(Admitted, Timed<TcpStream>)> {
    let peer = tcp.peer_addr().ok()?;
    let local = tcp.local_addr().ok()?;
    let peer_ip = peer.ip().to_canonical();
    let slot = tracker.admit(peer_ip, &state.telemetry)?;
    let admitted = Admitted { tracker: tracker.clone(), slot };
    let _ = tcp.set_nodelay(true);
    let info = Rc::new(ConnInfo {
        peer,
        same_host: peer_ip.is_loopback() || peer_ip == local.ip().to_canonical(),
        client_cert: OnceCell::new(),
        encrypted: Cell::new(false),
        slot: admitted.slot.clone(),
    });
    Some((admitted, Timed::new(tcp, state.config.limits.write_timeout, info)))
}

/// The TLS handshake with a context built from the files of now. On the
/// mTLS listener a certificate problem is an auth failure with its reason,
/// and a verified certificate's identity goes with the connection.
async fn handshake(
    state: &State,
    ssl: openssl::ssl::SslAcceptor,
    mtls: bool,
    admitted: &Admitted,
    io: Timed<TcpStream>,
) -> Option<TlsStream<Timed<TcpStream>>> {
    let peer = io.info.peer;
    let slot = &admitted.slot;
    let limit = state.config.limits.header_timeout;
    // A turn is taken once the client has spoken (its ClientHello is
    // there), so a connection that says nothing never holds one.
    let turn = tokio::select! {
        r = tokio::time::timeout(limit, async {
            io.inner.readable().await.ok()?;
            Some(admitted.tracker.handshake_turn(slot).await)
        }) => r,
        () = slot.evict.notified() => {
            state.telemetry.evicted();
            return None;
        }
    };
    let Ok(Some(_turn)) = turn else {
        state.telemetry.http_error(HttpError::Timeout);
        return None;
    };
    let mut acceptor = Acceptor::new(ssl);
    acceptor.set_handshake_timeout(limit);
    let service = ServiceFactory::<Timed<TcpStream>>::new_service(&acceptor, ()).await.ok()?;
    let result = tokio::select! {
        r = service.call(io) => r,
        () = slot.evict.notified() => {
            state.telemetry.evicted();
            return None;
        }
    };
    match result {
        Ok(stream) => {
            stream.get_ref().info.encrypted.set(true);
            if mtls {
                // The handshake required and verified it; no certificate
                // here would be an OpenSSL bug, and is refused like one.
                let identity = client_cert::identity(&*stream.ssl().peer_certificate()?);
                let _ = stream.get_ref().info.client_cert.set(identity);
            }
            Some(stream)
        }
        Err(TlsError::Timeout) => {
            state.telemetry.http_error(HttpError::Timeout);
            None
        }
        Err(TlsError::Tls(e)) => {
            // Given by the verify callback, in the failure's own errors.
            let recorded = e.ssl_error().and_then(crate::tls::rejection);
            let no_cert =
                e.ssl_error().is_some_and(|s| s.errors().iter().any(|x| x.reason_code() == NO_PEER_CERT));
            match recorded.or((mtls && no_cert).then_some(Reason::ClientCertMissing)) {
                Some(reason) => {
                    state.telemetry.auth_failure(reason);
                    state.refusal_log.log(|| format!("refused TLS client {peer}: {}", reason.label()));
                }
                None => {
                    state.telemetry.http_error(HttpError::TlsHandshake);
                    log::debug!("TLS handshake with {peer}: {e}");
                }
            }
            None
        }
        Err(TlsError::Service(never)) => match never {},
    }
}

/// Runs the HTTP connection until it ends, it is evicted while idle, or it
/// stays idle too long.
async fn watch(
    state: &State,
    slot: &Slot,
    conn: impl Future<Output = Result<(), actix_http::error::DispatchError>>,
) {
    let limit = state.config.limits.header_timeout;
    tokio::pin!(conn);
    tokio::select! {
        r = &mut conn => {
            if let Err(e) = r {
                state.telemetry.http_error(classify(&e));
                log::debug!("connection: {e}");
            }
        }
        idle = idle_deadline(slot, limit) => match idle {
            Idle::Evicted => state.telemetry.evicted(),
            // Idle keep-alive ends quietly; a head begun and not finished
            // in time is a timeout.
            Idle::Timeout { partial: true } => state.telemetry.http_error(HttpError::Timeout),
            Idle::Timeout { partial: false } => {}
        },
    }
}

fn classify(e: &actix_http::error::DispatchError) -> HttpError {
    use actix_http::error::{DispatchError, ParseError};
    match e {
        DispatchError::Parse(ParseError::TooLarge) => HttpError::TooLarge,
        DispatchError::Parse(_) => HttpError::Parse,
        DispatchError::SlowRequestTimeout => HttpError::Timeout,
        DispatchError::Io(io) if io.kind() == io::ErrorKind::TimedOut => HttpError::Timeout,
        _ => HttpError::Io,
    }
}
