//! The names the device answers to. In no-password mode every route opens
//! for whoever reaches it, so a site that rebinds its own name to the
//! device's address could read it from a visitor's browser; there, a
//! request is answered only if its `Host` is one of these: an address,
//! `localhost`, `jetkvm.local`, this system's host name (alone or
//! `.local`), a name of the owner's own certificate (`tls_mode` custom), or
//! one of `host_names`. A certificate the device issued itself names
//! nothing here: it issues one for any name a client asks for.

use actix_web::http::header::{self, HeaderMap};

use super::listener::Listener;
use crate::config::Config;
use crate::tls::device::{device_names, Serving, DEFAULT_HOST};

/// The host name the client used, without its port (brackets kept for
/// IPv6); `jetkvm.local` when it sent none.
pub fn request_host(headers: &HeaderMap) -> String {
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or(DEFAULT_HOST);
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split_once(']').map(|(a, _)| format!("[{a}]")).unwrap_or_default(),
        None => host.rsplit_once(':').map(|(a, _)| a).unwrap_or(host).to_owned(),
    };
    if name.is_empty() {
        DEFAULT_HOST.into()
    } else {
        name
    }
}

/// Whether `name` (as [`request_host`] gives it) is one the device answers
/// to.
pub fn known(name: &str, config: &Config, listener: &Listener) -> bool {
    let name = name.trim_start_matches('[').trim_end_matches(']');
    if name.parse::<std::net::IpAddr>().is_ok()
        || name.eq_ignore_ascii_case("localhost")
        || device_names(&config.host_names).iter().any(|h| h.eq_ignore_ascii_case(name))
    {
        return true;
    }
    match listener.device_tls.as_ref().map(|d| d.serving()) {
        Some(Serving::Tls(b)) if b.mode == crate::device::TlsMode::Custom => {
            b.hosts.iter().any(|h| h.eq_ignore_ascii_case(name))
        }
        _ => false,
    }
}
