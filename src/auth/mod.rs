//! Who may read `/metrics`. Each credential type has its own module; the
//! one place that combines them is [`Authenticator::decide`]. The rule is
//! "any": a request is allowed if any credential it presents is valid for
//! the device's current state. Unusable device state refuses (fail closed).

pub mod basic;
pub mod cookie;

use std::sync::Arc;

use hyper::header::HeaderMap;

use crate::config::Config;
use crate::device::{AuthMode, DeviceState, Unavailable};
use basic::{Authorization, PasswordVerifier, Verdict};

/// A credential header that does not parse: answered 400.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Malformed;

/// How a request was allowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// The device's browser session cookie.
    Cookie,
    /// Basic auth with the device password.
    Password,
    /// The device runs without a password: everything passes.
    NoPassword,
}

impl Method {
    pub const ALL: [Method; 3] = [Method::Cookie, Method::Password, Method::NoPassword];

    pub fn label(self) -> &'static str {
        match self {
            Method::Cookie => "cookie",
            Method::Password => "password",
            Method::NoPassword => "no_password",
        }
    }
}

/// Why a request was refused. Logged and counted; never sent to the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    MissingCredentials,
    MalformedAuthorization,
    MalformedCookie,
    UnsupportedScheme,
    BadCookie,
    BadPassword,
    PasswordTooLong,
    DeviceNotSetUp,
    DeviceConfigUnavailable,
    /// Too many bcrypt verifications already waiting.
    Busy,
}

impl Reason {
    pub const ALL: [Reason; 10] = [
        Reason::MissingCredentials,
        Reason::MalformedAuthorization,
        Reason::MalformedCookie,
        Reason::UnsupportedScheme,
        Reason::BadCookie,
        Reason::BadPassword,
        Reason::PasswordTooLong,
        Reason::DeviceNotSetUp,
        Reason::DeviceConfigUnavailable,
        Reason::Busy,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Reason::MissingCredentials => "missing_credentials",
            Reason::MalformedAuthorization => "malformed_authorization",
            Reason::MalformedCookie => "malformed_cookie",
            Reason::UnsupportedScheme => "unsupported_scheme",
            Reason::BadCookie => "bad_cookie",
            Reason::BadPassword => "bad_password",
            Reason::PasswordTooLong => "password_too_long",
            Reason::DeviceNotSetUp => "device_not_set_up",
            Reason::DeviceConfigUnavailable => "device_config_unavailable",
            Reason::Busy => "busy",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Allow(Method),
    Deny(Reason),
}

pub struct Authenticator {
    device: Arc<DeviceState>,
    passwords: PasswordVerifier,
}

impl Authenticator {
    pub fn new(config: &Config, device: Arc<DeviceState>) -> Self {
        let a = &config.auth;
        Authenticator {
            device,
            passwords: PasswordVerifier::new(a.bcrypt_concurrency, a.bcrypt_queue, a.cache_entries),
        }
    }

    pub fn device(&self) -> &DeviceState {
        &self.device
    }

    /// Drops remembered credentials and cached device state (SIGHUP).
    pub fn reset(&self) {
        self.passwords.forget();
        self.device.invalidate();
    }

    /// The one decision: may this request read metrics?
    pub async fn decide(&self, headers: &HeaderMap) -> Outcome {
        let device = match self.device.current().await {
            Ok(d) => d,
            Err(Unavailable::Missing | Unavailable::Unreadable(_) | Unavailable::Invalid(_)) => {
                return Outcome::Deny(Reason::DeviceConfigUnavailable);
            }
        };
        match device.mode {
            // As on the device's own routes: no password, no questions.
            AuthMode::NoPassword => return Outcome::Allow(Method::NoPassword),
            AuthMode::NotSetUp => return Outcome::Deny(Reason::DeviceNotSetUp),
            AuthMode::Password => {}
        }
        let Ok(authorization) = basic::parse(headers) else {
            return Outcome::Deny(Reason::MalformedAuthorization);
        };
        let Ok(cookies) = cookie::session_tokens(headers) else {
            return Outcome::Deny(Reason::MalformedCookie);
        };
        if let Some(token) = &device.session_token {
            if cookie::matches(&cookies, token) {
                return Outcome::Allow(Method::Cookie);
            }
        }
        match authorization {
            Some(Authorization::Basic(password)) => {
                let Some(hash) = &device.hashed_password else {
                    return Outcome::Deny(Reason::BadPassword);
                };
                match self.passwords.verify(hash, &password).await {
                    Verdict::Ok => Outcome::Allow(Method::Password),
                    Verdict::Wrong => Outcome::Deny(Reason::BadPassword),
                    Verdict::TooLong => Outcome::Deny(Reason::PasswordTooLong),
                    Verdict::Busy => Outcome::Deny(Reason::Busy),
                }
            }
            Some(Authorization::Bearer(_) | Authorization::Other) => Outcome::Deny(Reason::UnsupportedScheme),
            None if !cookies.is_empty() => Outcome::Deny(Reason::BadCookie),
            None => Outcome::Deny(Reason::MissingCredentials),
        }
    }
}
