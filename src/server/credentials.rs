//! A request's credentials, out of actix's header map as soon as the
//! request arrives (see [`hold_credentials`]), and the plain values the
//! decision sees.

use actix_web::dev::ServiceRequest;
use actix_web::http::header::{self, HeaderValue};
use actix_web::HttpMessage;

use super::slot::ConnInfo;
use crate::auth;
use crate::crypto::Secret;

/// A request's `Authorization` and `Cookie` values, in buffers wiped when
/// the request is done with them.
#[derive(Default)]
pub struct Credentials {
    authorization: Vec<Secret>,
    cookies: Vec<Secret>,
}

impl Credentials {
    pub fn authorization(&self) -> Vec<&[u8]> {
        self.authorization.iter().map(Secret::as_bytes).collect()
    }

    pub fn cookies(&self) -> Vec<&[u8]> {
        self.cookies.iter().map(Secret::as_bytes).collect()
    }
}

/// Moves the credential headers out of the request's header map into
/// [`Credentials`] in its extensions, and copies every other header value
/// out of the connection's read buffer. actix's header values are views of
/// that buffer, and it keeps the last request heads (maps and all) pooled
/// for reuse: without this, the raw head, `Authorization` included, would
/// outlive its connection unwiped. Now the buffer is freed, and wiped by
/// the allocator, when the connection ends, and the credentials when the
/// request is.
pub(super) fn hold_credentials(req: &mut ServiceRequest) {
    let mut held = Credentials::default();
    let headers = req.headers_mut();
    let views: Vec<_> = headers.drain().collect();
    let mut name = None;
    for (n, value) in views {
        // `drain` names only the first value of each header.
        let Some(n) = n.or(name.take()) else { continue };
        if n == header::AUTHORIZATION {
            held.authorization.push(Secret::from_slice(value.as_bytes()));
        } else if n == header::COOKIE {
            held.cookies.push(Secret::from_slice(value.as_bytes()));
        } else if let Ok(copy) = HeaderValue::from_bytes(value.as_bytes()) {
            headers.append(n.clone(), copy);
        }
        name = Some(n);
    }
    req.extensions_mut().insert(held);
}

/// The request's credentials, taken: wiped when the caller drops them.
pub(super) fn take_credentials(ext: &mut actix_web::dev::Extensions) -> Credentials {
    ext.remove::<Credentials>().unwrap_or_default()
}

/// What the auth decision sees of a request: plain values.
pub(super) fn auth_request<'a>(
    authorization: &'a [&'a [u8]],
    cookies: &'a [&'a [u8]],
    conn: &'a ConnInfo,
) -> auth::Request<'a> {
    auth::Request {
        authorization,
        cookies,
        peer: conn.peer.ip(),
        client_cert: conn.client_cert.get().map(String::as_str),
    }
}
