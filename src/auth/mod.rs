//! Who may read `/metrics`. Each credential type has its own module; the
//! one place that combines them is [`Authenticator::decide`].
//!
//! The rule is "any": a request is allowed if any credential it presents is
//! valid. In order:
//! 1. a client certificate verified by the mTLS listener;
//! 2. a client over its failure budget gets no bcrypt work: only checks
//!    that cost microseconds (token, cookie, a remembered password) are
//!    made, and anything else is answered 429 — so a misconfigured job does
//!    not lock out good jobs of the same Prometheus, and guessing is cut off;
//! 3. the metrics token (bearer, or as the basic-auth password), whatever
//!    the device's state;
//! 4. the device's state: no-password mode passes everything; missing,
//!    unreadable, torn or not-set-up state refuses (fail closed);
//! 5. the device's session cookie;
//! 6. the device password by basic auth (unless `auth.device_password`
//!    is false), through bcrypt remembered per credential.
//!
//! Every refusal counts against the client's failure budget; a refusal of a
//! client over its budget is answered 429 rather than 401.

pub mod basic;
pub mod client_cert;
pub mod cookie;
pub mod ratelimit;
pub mod token;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::header::HeaderMap;

use crate::config::Config;
use crate::device::{AuthMode, DeviceState};
use basic::{Authorization, PasswordVerifier, Verdict};
use ratelimit::FailureLimiter;
use token::TokenStore;

/// A credential header that does not parse: answered 400.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Malformed;

/// How a request was allowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// A client certificate on the mTLS metrics listener.
    ClientCert,
    /// The read-only metrics token.
    Token,
    /// The device's browser session cookie.
    Cookie,
    /// Basic auth with the device password.
    Password,
    /// The device runs without a password: everything passes.
    NoPassword,
}

impl Method {
    pub const ALL: [Method; 5] =
        [Method::ClientCert, Method::Token, Method::Cookie, Method::Password, Method::NoPassword];

    pub fn label(self) -> &'static str {
        match self {
            Method::ClientCert => "client_cert",
            Method::Token => "token",
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
    BadToken,
    /// The token file exists but cannot be read or parsed.
    TokenUnavailable,
    BadCookie,
    BadPassword,
    PasswordTooLong,
    /// Basic auth with a password while `auth.device_password = false`.
    DevicePasswordDisabled,
    DeviceNotSetUp,
    DeviceConfigUnavailable,
    /// Too many bcrypt verifications already waiting.
    Busy,
    /// The client used up its failure budget.
    RateLimited,
    /// mTLS handshake without a client certificate.
    ClientCertMissing,
    /// A client certificate that does not verify against `ca_certs`
    /// (unknown CA, expired, ...).
    ClientCertInvalid,
    /// A verified client certificate outside `client_allowed_sans`.
    ClientCertNotAllowed,
}

impl Reason {
    pub const ALL: [Reason; 17] = [
        Reason::MissingCredentials,
        Reason::MalformedAuthorization,
        Reason::MalformedCookie,
        Reason::UnsupportedScheme,
        Reason::BadToken,
        Reason::TokenUnavailable,
        Reason::BadCookie,
        Reason::BadPassword,
        Reason::PasswordTooLong,
        Reason::DevicePasswordDisabled,
        Reason::DeviceNotSetUp,
        Reason::DeviceConfigUnavailable,
        Reason::Busy,
        Reason::RateLimited,
        Reason::ClientCertMissing,
        Reason::ClientCertInvalid,
        Reason::ClientCertNotAllowed,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Reason::MissingCredentials => "missing_credentials",
            Reason::MalformedAuthorization => "malformed_authorization",
            Reason::MalformedCookie => "malformed_cookie",
            Reason::UnsupportedScheme => "unsupported_scheme",
            Reason::BadToken => "bad_token",
            Reason::TokenUnavailable => "token_unavailable",
            Reason::BadCookie => "bad_cookie",
            Reason::BadPassword => "bad_password",
            Reason::PasswordTooLong => "password_too_long",
            Reason::DevicePasswordDisabled => "device_password_disabled",
            Reason::DeviceNotSetUp => "device_not_set_up",
            Reason::DeviceConfigUnavailable => "device_config_unavailable",
            Reason::Busy => "busy",
            Reason::RateLimited => "rate_limited",
            Reason::ClientCertMissing => "client_cert_missing",
            Reason::ClientCertInvalid => "client_cert_invalid",
            Reason::ClientCertNotAllowed => "client_cert_not_allowed",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Allow(Method),
    Deny(Reason),
    /// Over the failure budget: 429 with this `Retry-After`.
    Limited(Duration),
}

/// What the listener knows about a request.
pub struct Request<'a> {
    pub headers: &'a HeaderMap,
    pub peer: IpAddr,
    /// The identity of a client certificate the mTLS handshake verified.
    pub client_cert: Option<&'a str>,
}

pub struct Authenticator {
    device: Arc<DeviceState>,
    passwords: PasswordVerifier,
    tokens: TokenStore,
    limiter: FailureLimiter,
    device_password: bool,
}

impl Authenticator {
    pub fn new(config: &Config, device: Arc<DeviceState>) -> Self {
        let a = &config.auth;
        Authenticator {
            device,
            passwords: PasswordVerifier::new(a.bcrypt_concurrency, a.bcrypt_queue, a.cache_entries),
            tokens: TokenStore::new(config.token_file.clone()),
            limiter: FailureLimiter::new(a.failure_burst, a.failure_interval, a.tracked_clients),
            device_password: a.device_password,
        }
    }

    pub fn device(&self) -> &DeviceState {
        &self.device
    }

    pub fn tokens(&self) -> &TokenStore {
        &self.tokens
    }

    /// Whether the device password is accepted at all.
    pub fn device_password_enabled(&self) -> bool {
        self.device_password
    }

    /// Drops remembered credentials and cached state (SIGHUP).
    pub fn reset(&self) {
        self.passwords.forget();
        self.device.invalidate();
        self.tokens.invalidate();
    }

    /// The one decision: may this request read metrics?
    pub async fn decide(&self, req: &Request<'_>) -> Outcome {
        if req.client_cert.is_some() {
            return Outcome::Allow(Method::ClientCert);
        }
        let budget = self.limiter.check(req.peer);
        let outcome = self.credentials(req.headers, budget.is_ok()).await;
        match (outcome, budget) {
            (Outcome::Deny(_), Err(retry)) => Outcome::Limited(retry),
            (Outcome::Deny(_), Ok(())) => {
                self.limiter.record_failure(req.peer);
                outcome
            }
            _ => outcome,
        }
    }

    /// `may_bcrypt`: whether a password not remembered may be checked.
    async fn credentials(&self, headers: &HeaderMap, may_bcrypt: bool) -> Outcome {
        let authorization = basic::parse(headers);
        // The token first: it does not depend on the device's state.
        let presented = match &authorization {
            Ok(Some(Authorization::Bearer(t))) => Some(t.as_bytes()),
            Ok(Some(Authorization::Basic(p))) => Some(p.as_slice()),
            _ => None,
        };
        let mut token_refusal = None;
        if let Some(presented) = presented {
            match self.tokens.check(presented) {
                token::Check::Valid => return Outcome::Allow(Method::Token),
                token::Check::Unavailable => token_refusal = Some(Reason::TokenUnavailable),
                token::Check::Invalid | token::Check::NoToken => token_refusal = Some(Reason::BadToken),
            }
        }
        let device = match self.device.current().await {
            Ok(d) => d,
            Err(_) => return Outcome::Deny(token_refusal.unwrap_or(Reason::DeviceConfigUnavailable)),
        };
        match device.mode {
            // As on the device's own routes: no password, no questions.
            AuthMode::NoPassword => return Outcome::Allow(Method::NoPassword),
            AuthMode::NotSetUp => return Outcome::Deny(token_refusal.unwrap_or(Reason::DeviceNotSetUp)),
            AuthMode::Password => {}
        }
        let Ok(authorization) = authorization else {
            return Outcome::Deny(Reason::MalformedAuthorization);
        };
        let Ok(cookies) = cookie::session_tokens(headers) else {
            return Outcome::Deny(Reason::MalformedCookie);
        };
        if let Some(session) = &device.session_token {
            if cookie::matches(&cookies, session) {
                return Outcome::Allow(Method::Cookie);
            }
        }
        match authorization {
            Some(Authorization::Basic(_)) if !self.device_password => {
                Outcome::Deny(Reason::DevicePasswordDisabled)
            }
            Some(Authorization::Basic(password)) => {
                let Some(hash) = &device.hashed_password else {
                    return Outcome::Deny(Reason::BadPassword);
                };
                match self.passwords.verify(hash, &password, may_bcrypt).await {
                    Verdict::Ok => Outcome::Allow(Method::Password),
                    Verdict::Wrong => Outcome::Deny(Reason::BadPassword),
                    Verdict::TooLong => Outcome::Deny(Reason::PasswordTooLong),
                    Verdict::Busy => Outcome::Deny(Reason::Busy),
                    Verdict::NotRemembered => Outcome::Deny(Reason::RateLimited),
                }
            }
            Some(Authorization::Bearer(_)) => Outcome::Deny(token_refusal.unwrap_or(Reason::BadToken)),
            Some(Authorization::Other) => Outcome::Deny(Reason::UnsupportedScheme),
            None if !cookies.is_empty() => Outcome::Deny(Reason::BadCookie),
            None => Outcome::Deny(Reason::MissingCredentials),
        }
    }
}
