//! What deciding who gets in can end in, and the words for it: how a
//! request was allowed, why it was refused, and a credential that does not
//! parse. Every credential module and the decision share them.

use std::time::Duration;

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
    /// The shared bcrypt budget of clients not yet known good is spent.
    Throttled,
    /// The client used up its failure budget.
    RateLimited,
    /// mTLS handshake without a client certificate.
    ClientCertMissing,
    /// A client certificate that does not verify against `ca_certs`
    /// (unknown CA, expired, ...).
    ClientCertInvalid,
    /// A verified client certificate outside `client_allowed_sans`.
    ClientCertNotAllowed,
    /// The metrics token presented to the settings page: it only reads.
    ReadOnlyCredential,
    /// A settings form posted from another site, or without the anti-CSRF
    /// value of the session it claims.
    CrossSiteRequest,
}

impl Reason {
    pub const ALL: [Reason; 20] = [
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
        Reason::Throttled,
        Reason::RateLimited,
        Reason::ClientCertMissing,
        Reason::ClientCertInvalid,
        Reason::ClientCertNotAllowed,
        Reason::ReadOnlyCredential,
        Reason::CrossSiteRequest,
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
            Reason::Throttled => "throttled",
            Reason::RateLimited => "rate_limited",
            Reason::ClientCertMissing => "client_cert_missing",
            Reason::ClientCertInvalid => "client_cert_invalid",
            Reason::ClientCertNotAllowed => "client_cert_not_allowed",
            Reason::ReadOnlyCredential => "read_only_credential",
            Reason::CrossSiteRequest => "cross_site_request",
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

/// A header value as HTTP allows it and `to_str` would accept: visible
/// ASCII and tabs.
pub(super) fn visible_ascii(v: &[u8]) -> Result<&str, Malformed> {
    if v.iter().all(|b| *b == b'\t' || (0x20..0x7f).contains(b)) {
        std::str::from_utf8(v).map_err(|_| Malformed)
    } else {
        Err(Malformed)
    }
}
