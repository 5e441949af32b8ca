//! Who may read `/metrics`. Each credential type has its own module; the
//! one place that combines them is [`Authenticator::decide`].
//!
//! The rule is "any": a request is allowed if any credential it presents is
//! valid. In order:
//! 1. a client certificate verified by the mTLS listener;
//! 2. the metrics token (bearer, or as the basic-auth password), whatever
//!    the device's state;
//! 3. the device's state: no-password mode passes everything; missing,
//!    unreadable, torn or not-set-up state refuses (fail closed);
//! 4. the device's session cookie;
//! 5. the device password by basic auth (unless `auth.device_password`
//!    is false): remembered verdicts for this client first, then bcrypt if
//!    the client's failure budget allows (`ratelimit`).
//!
//! The settings page uses the same decision without the read-only
//! credentials (`decide_settings`): only whoever the device itself lets in
//! (steps 3-5) may manage the token.
//!
//! Only passwords cost budget: the other secrets are 128 or more random
//! bits and are checked whatever the budget. A password this client proved
//! is still accepted over budget, and one it was told is wrong is refused
//! again, both at no cost. Any other password, right or wrong, gets the
//! same answer over budget, 429: nothing can be learnt about the device
//! password. Other refusals of a client over budget are 429 too, at no
//! cost. A request with no credential at all costs nothing and is never
//! 429: a web page can make the owner's browser send those.

pub mod basic;
pub mod client_cert;
pub mod cookie;
mod outcome;
pub mod ratelimit;
pub mod token;

use std::net::IpAddr;
use std::sync::Arc;

use crate::config::Config;
use crate::crypto::Mac;
use crate::device::{AuthMode, DeviceState};
use basic::{Authorization, PasswordVerifier, Verdict};
use ratelimit::{Checked, FailureLimiter, Guess};
use token::TokenStore;

pub use outcome::{Malformed, Method, Outcome, Reason};

/// What a request asks to be allowed.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Use {
    Metrics,
    Settings,
}

/// What the listener knows about a request, in plain values: this module
/// does not know the web framework.
pub struct Request<'a> {
    /// Every `Authorization` header value, in order.
    pub authorization: &'a [&'a [u8]],
    /// Every `Cookie` header value, in order.
    pub cookies: &'a [&'a [u8]],
    pub peer: IpAddr,
    /// The identity of a client certificate the mTLS handshake verified.
    pub client_cert: Option<&'a str>,
}

pub struct Authenticator {
    device: Arc<DeviceState>,
    passwords: PasswordVerifier,
    tokens: Arc<TokenStore>,
    limiter: FailureLimiter,
    device_password: bool,
    /// Keys the settings page's anti-CSRF values; new at every start.
    forms: Mac,
}

impl Authenticator {
    pub fn new(config: &Config, device: Arc<DeviceState>) -> Self {
        let a = &config.auth;
        Authenticator {
            device,
            passwords: PasswordVerifier::new(a.bcrypt_concurrency, a.bcrypt_queue, a.cache_entries),
            tokens: Arc::new(TokenStore::new(config.token_file.clone())),
            limiter: FailureLimiter::new(
                a.failure_burst,
                a.failure_interval,
                a.unverified_interval,
                a.tracked_clients,
            ),
            device_password: a.device_password,
            forms: Mac::new_random(),
        }
    }

    pub fn device(&self) -> &DeviceState {
        &self.device
    }

    pub fn tokens(&self) -> &Arc<TokenStore> {
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
        self.budgeted(req, Use::Metrics).await
    }

    /// May this request use the settings page? Only the device's own
    /// credentials: the session cookie, the device password, or none in
    /// no-password mode; never the read-only token or a client
    /// certificate. When allowed, also the anti-CSRF value its forms must
    /// carry, bound to the credential (the session, the password's hash):
    /// it changes at logout, at a password change and at every start.
    pub async fn decide_settings(&self, req: &Request<'_>) -> (Outcome, Option<String>) {
        let outcome = self.budgeted(req, Use::Settings).await;
        let Outcome::Allow(method) = outcome else { return (outcome, None) };
        let Ok(device) = self.device.current().await else {
            return (Outcome::Deny(Reason::DeviceConfigUnavailable), None);
        };
        let bound: &[u8] = match method {
            Method::Cookie => device.session_token.as_deref().unwrap_or_default().as_bytes(),
            Method::Password => device.hashed_password.as_deref().unwrap_or_default().as_bytes(),
            _ => b"",
        };
        let mac = self.forms.sign(&[b"settings form", method.label().as_bytes(), bound]);
        (outcome, Some(crate::crypto::hex(&mac)))
    }

    async fn budgeted(&self, req: &Request<'_>, purpose: Use) -> Outcome {
        // Over budget as the request arrived (what the request itself
        // spends does not turn its own answer into a 429).
        let over = if credential_less(req) { None } else { self.limiter.over_budget(req.peer) };
        let outcome = self.credentials(req, purpose).await;
        match (outcome, over) {
            (Outcome::Allow(_), _) => self.limiter.allowed(req.peer),
            (Outcome::Deny(_), Some(retry)) => return Outcome::Limited(retry),
            _ => {}
        }
        outcome
    }

    async fn credentials(&self, req: &Request<'_>, purpose: Use) -> Outcome {
        let authorization = basic::parse(req.authorization);
        // The token first: it does not depend on the device's state.
        let presented = match &authorization {
            Ok(Some(Authorization::Bearer(t))) => Some(t.as_bytes()),
            Ok(Some(Authorization::Basic(p))) => Some(p.as_bytes()),
            _ => None,
        };
        let mut token_refusal = None;
        if let Some(presented) = presented {
            match self.tokens.check(presented) {
                token::Check::Valid if purpose == Use::Settings => {
                    return Outcome::Deny(Reason::ReadOnlyCredential)
                }
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
        let Ok(cookies) = cookie::session_tokens(req.cookies) else {
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
                self.password(hash, req.peer, password.as_bytes()).await
            }
            Some(Authorization::Bearer(_)) => Outcome::Deny(token_refusal.unwrap_or(Reason::BadToken)),
            Some(Authorization::Other) => Outcome::Deny(Reason::UnsupportedScheme),
            None if !cookies.is_empty() => Outcome::Deny(Reason::BadCookie),
            None => Outcome::Deny(Reason::MissingCredentials),
        }
    }

    async fn password(&self, hash: &str, peer: IpAddr, password: &[u8]) -> Outcome {
        if password.len() > basic::MAX_PASSWORD {
            return Outcome::Deny(Reason::PasswordTooLong);
        }
        match self.passwords.recall(hash, peer, password) {
            Some(true) => return Outcome::Allow(Method::Password),
            Some(false) => return Outcome::Deny(Reason::BadPassword),
            None => {}
        }
        let ticket = match self.limiter.guess(peer, &self.passwords.fingerprint(hash, peer, password)) {
            Guess::KnownWrong => return Outcome::Deny(Reason::BadPassword),
            Guess::InFlight => return Outcome::Deny(Reason::Busy),
            // Right and wrong alike: nothing is checked.
            Guess::Limited(retry) => return Outcome::Limited(retry),
            Guess::Check(ticket) => ticket,
        };
        if !self.limiter.known_good(peer) && self.limiter.take_unverified().is_err() {
            ticket.finish(Checked::NotRun);
            return Outcome::Deny(Reason::Throttled);
        }
        let (checked, outcome) = match self.passwords.verify(hash, peer, password).await {
            Verdict::Ok => (Checked::Right, Outcome::Allow(Method::Password)),
            Verdict::Wrong => (Checked::Wrong, Outcome::Deny(Reason::BadPassword)),
            Verdict::Busy => (Checked::NotRun, Outcome::Deny(Reason::Busy)),
        };
        ticket.finish(checked);
        outcome
    }
}

/// No `Authorization` header and no session cookie: nothing to guess with.
fn credential_less(req: &Request<'_>) -> bool {
    req.authorization.is_empty() && cookie::session_tokens(req.cookies).is_ok_and(|t| t.is_empty())
}

#[cfg(test)]
mod tests {
    //! The rule and the budget, step by step, against a device config in a
    //! temporary directory (the integration tests drive the same through
    //! HTTP).

    use std::time::Duration;

    use super::*;
    use std::path::PathBuf;

    /// bcrypt of "right" at cost 4, in the device's `$2a$` form.
    fn hash() -> String {
        bcrypt::hash_with_result("right", 4).unwrap().format_for_version(bcrypt::Version::TwoA)
    }

    fn password_mode(session: &str) -> String {
        format!(
            r#"{{"localAuthMode":"password","hashed_password":"{}","local_auth_token":"{session}"}}"#,
            hash()
        )
    }

    /// An authenticator over a device config (`None`: no file), in a
    /// directory removed on drop.
    struct Scene {
        dir: PathBuf,
        _tmp: tempfile::TempDir,
        auth: Authenticator,
    }

    fn scene(device: Option<&str>, tweak: impl FnOnce(&mut Config)) -> Scene {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let mut config = Config {
            device_config: dir.join("kvm_config.json"),
            token_file: dir.join("token.sha256"),
            ..Config::default()
        };
        if let Some(d) = device {
            std::fs::write(&config.device_config, d).unwrap();
        }
        tweak(&mut config);
        let device = Arc::new(DeviceState::new(config.device_config.clone()));
        Scene { auth: Authenticator::new(&config, device), dir, _tmp: tmp }
    }

    fn basic(password: &str) -> Vec<u8> {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD.encode(format!("admin:{password}"));
        format!("Basic {b64}").into_bytes()
    }

    /// The decision for these header values from `peer`.
    async fn decide(s: &Scene, authorization: &[&[u8]], cookies: &[&[u8]], peer: &str) -> Outcome {
        let peer: IpAddr = peer.parse().unwrap();
        s.auth.decide(&Request { authorization, cookies, peer, client_cert: None }).await
    }

    #[tokio::test]
    async fn a_verified_client_certificate_is_enough_whatever_the_device() {
        let s = scene(None, |_| {});
        let r =
            Request { authorization: &[], cookies: &[], peer: [127, 0, 0, 1].into(), client_cert: Some("p") };
        assert_eq!(s.auth.decide(&r).await, Outcome::Allow(Method::ClientCert));
    }

    #[tokio::test]
    async fn the_token_works_in_every_device_state_and_never_opens_settings() {
        let s = scene(None, |_| {});
        let (token, _) = token::create(&s.dir.join("token.sha256"), 0).unwrap();
        let bearer = format!("Bearer {token}").into_bytes();
        // No device config at all: the token still reads metrics.
        assert_eq!(decide(&s, &[&bearer], &[], "127.0.0.1").await, Outcome::Allow(Method::Token));
        // As the basic-auth password too.
        assert_eq!(decide(&s, &[&basic(&token)], &[], "127.0.0.1").await, Outcome::Allow(Method::Token));
        // Without it, the missing device state refuses (fail closed).
        assert_eq!(decide(&s, &[], &[], "127.0.0.1").await, Outcome::Deny(Reason::DeviceConfigUnavailable));
        let r = Request {
            authorization: &[&bearer],
            cookies: &[],
            peer: [127, 0, 0, 1].into(),
            client_cert: None,
        };
        assert_eq!(s.auth.decide_settings(&r).await.0, Outcome::Deny(Reason::ReadOnlyCredential));
    }

    #[tokio::test]
    async fn device_states_fail_closed_and_no_password_passes() {
        for (device, want) in [
            (r#"{"localAuthMode":""}"#, Outcome::Deny(Reason::DeviceNotSetUp)),
            (r#"{"localAuthMode":"pass"#, Outcome::Deny(Reason::DeviceConfigUnavailable)),
            ("", Outcome::Deny(Reason::DeviceConfigUnavailable)),
            (r#"{"localAuthMode":"noPassword"}"#, Outcome::Allow(Method::NoPassword)),
        ] {
            let s = scene(Some(device), |_| {});
            assert_eq!(decide(&s, &[], &[], "127.0.0.1").await, want, "{device}");
        }
    }

    #[tokio::test]
    async fn cookie_and_password_in_password_mode() {
        let s = scene(Some(&password_mode("sess")), |_| {});
        let ok = |m| Outcome::Allow(m);
        assert_eq!(decide(&s, &[], &[b"a=1; authToken=sess"], "127.0.0.1").await, ok(Method::Cookie));
        assert_eq!(
            decide(&s, &[], &[b"authToken=other"], "127.0.0.1").await,
            Outcome::Deny(Reason::BadCookie)
        );
        assert_eq!(decide(&s, &[&basic("right")], &[], "127.0.0.1").await, ok(Method::Password));
        assert_eq!(
            decide(&s, &[&basic("wrong")], &[], "127.0.0.1").await,
            Outcome::Deny(Reason::BadPassword)
        );
        assert_eq!(decide(&s, &[], &[], "127.0.0.1").await, Outcome::Deny(Reason::MissingCredentials));
        assert_eq!(
            decide(&s, &[b"Digest x"], &[], "127.0.0.1").await,
            Outcome::Deny(Reason::UnsupportedScheme)
        );
        assert_eq!(
            decide(&s, &[b"Basic !!!"], &[], "127.0.0.1").await,
            Outcome::Deny(Reason::MalformedAuthorization)
        );
        let long = "x".repeat(basic::MAX_PASSWORD + 1);
        assert_eq!(
            decide(&s, &[&basic(&long)], &[], "127.0.0.1").await,
            Outcome::Deny(Reason::PasswordTooLong)
        );
        // A session after logout ("") matches nothing.
        let s = scene(Some(&password_mode("")), |_| {});
        assert_eq!(decide(&s, &[], &[b"authToken="], "127.0.0.1").await, Outcome::Deny(Reason::BadCookie));
        // The device password can be refused on metrics altogether.
        let s = scene(Some(&password_mode("sess")), |c| c.auth.device_password = false);
        assert_eq!(
            decide(&s, &[&basic("right")], &[], "127.0.0.1").await,
            Outcome::Deny(Reason::DevicePasswordDisabled)
        );
        assert_eq!(decide(&s, &[], &[b"authToken=sess"], "127.0.0.1").await, ok(Method::Cookie));
    }

    #[tokio::test]
    async fn over_budget_only_proved_and_random_secrets_pass_and_repeats_are_free() {
        let s = scene(Some(&password_mode("sess")), |c| {
            c.auth.failure_burst = 2;
            c.auth.failure_interval = Duration::from_secs(3600);
        });
        let a = "192.0.2.1";
        assert_eq!(decide(&s, &[&basic("right")], &[], a).await, Outcome::Allow(Method::Password));
        for w in ["w1", "w2"] {
            assert_eq!(decide(&s, &[&basic(w)], &[], a).await, Outcome::Deny(Reason::BadPassword));
        }
        // Over budget: a new password, right or wrong, is not checked.
        let limited = |o| matches!(o, Outcome::Limited(_));
        assert!(limited(decide(&s, &[&basic("w3")], &[], a).await));
        // The password this address proved, and the cookie, still pass.
        assert_eq!(decide(&s, &[&basic("right")], &[], a).await, Outcome::Allow(Method::Password));
        assert_eq!(decide(&s, &[], &[b"authToken=sess"], a).await, Outcome::Allow(Method::Cookie));
        // Another address proves nothing for this one, and has its own budget.
        assert_eq!(decide(&s, &[&basic("right")], &[], "192.0.2.2").await, Outcome::Allow(Method::Password));
        // Repeating what was tried costs nothing more: the debt stays where
        // it is, as its Retry-After shows.
        let Outcome::Limited(before) = decide(&s, &[&basic("w3")], &[], a).await else { panic!() };
        for _ in 0..20 {
            assert!(limited(decide(&s, &[&basic("w3")], &[], a).await));
            assert!(limited(decide(&s, &[&basic("w1")], &[], a).await));
        }
        let Outcome::Limited(after) = decide(&s, &[&basic("w3")], &[], a).await else { panic!() };
        assert!(after <= before, "{before:?} -> {after:?}");
        // No credential at all: never 429, never a cost.
        assert_eq!(decide(&s, &[], &[b"theme=dark"], a).await, Outcome::Deny(Reason::MissingCredentials));
    }
}
