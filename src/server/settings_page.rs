//! The settings page as text: a model of what it shows ([`Page`], gathered
//! once by `settings`), and pure functions for the page and for the
//! Prometheus jobs it offers to paste.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::OnceLock;

use super::listener::Role;
use crate::device::AuthMode;

const STYLE: &str = "body{font-family:sans-serif;max-width:52em;margin:1em auto;padding:0 1em;color:#222}\
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.6em}\
table{border-collapse:collapse}td,th{border:1px solid #bbb;padding:.3em .6em;text-align:left}\
pre{background:#f4f4f4;padding:.6em;overflow-x:auto}\
.warn{background:#fff3cd;border:1px solid #e0b000;padding:.6em}\
.new{background:#e7f6e7;border:1px solid #3a3;padding:.6em}\
form{display:inline-block;margin-right:1em}button{padding:.3em 1em}";

/// Where the pasted jobs expect their secret files.
const TOKEN_FILE: &str = "/etc/prometheus/jetkvm-token";
const PASSWORD_FILE: &str = "/etc/prometheus/jetkvm-password";
const CA_FILE: &str = "/etc/prometheus/jetkvm-ca.crt";
/// The CA of the metrics service's own certificates, and Prometheus' client
/// certificate for mTLS.
const SERVICE_CA_FILE: &str = "/etc/prometheus/jetkvm-metrics-ca.crt";
const CLIENT_CERT: &str =
    "      cert_file: /etc/prometheus/prometheus.crt\n      key_file: /etc/prometheus/prometheus.key\n";

/// The page a refused visitor gets: the browser's prompt for the device
/// password, and nothing else.
pub const UNAUTHORIZED: &str =
    "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>JetKVM metrics</title></head>\n\
<body><h1>Unauthorized</h1><p>Sign in to the device first.</p></body></html>\n";

/// The page's Content-Security-Policy: nothing but its own inline style,
/// forms posting only here, no framing.
pub fn csp() -> &'static str {
    static CSP: OnceLock<String> = OnceLock::new();
    CSP.get_or_init(|| {
        use base64::Engine;
        let hash = base64::engine::general_purpose::STANDARD.encode(openssl::sha::sha256(STYLE.as_bytes()));
        format!(
            "default-src 'none'; style-src 'sha256-{hash}'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
        )
    })
}

/// What a POST just did.
pub enum Done {
    /// The new token, shown this once.
    Created(String),
    /// Whether there was a token to revoke.
    Revoked(bool),
    Failed(String),
}

/// The token file as the page tells it.
pub enum TokenState {
    /// Set, since this Unix time.
    Set(u64),
    Absent,
    /// Not usable (every token is refused), and why.
    Unusable(String),
}

/// One listener's TLS as a person reads it.
pub struct Tls {
    pub description: String,
    /// Metrics reach it over HTTPS.
    pub https: bool,
    /// The server name a client verifies, if known.
    pub server_name: Option<String>,
    pub mtls: bool,
}

pub struct Listener {
    pub role: Role,
    pub address: SocketAddr,
    pub serves_metrics: bool,
    pub tls: Tls,
}

/// Everything the page shows, gathered once.
pub struct Page {
    /// This page came over TLS.
    pub encrypted: bool,
    /// The device's auth mode, if its state loaded.
    pub auth_mode: Option<AuthMode>,
    /// `auth.device_password`.
    pub device_password: bool,
    pub done: Option<Done>,
    pub token: TokenState,
    /// The anti-CSRF value for the forms.
    pub csrf: String,
    pub listeners: Vec<Listener>,
    /// The device's CA can be downloaded (`/settings/ca.crt`).
    pub device_ca: bool,
    /// The host the browser reached this page by, for the jobs' target.
    pub host: String,
}

/// The whole page.
pub fn render(page: &Page) -> String {
    let mut p = String::with_capacity(8192);
    let _ = write!(
        p,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<title>JetKVM metrics settings</title><style>{STYLE}</style></head>\n<body>\n<h1>JetKVM metrics settings</h1>\n"
    );
    if !page.encrypted && page.auth_mode == Some(AuthMode::Password) {
        p.push_str(
            "<p class=\"warn\" id=\"plain-warning\"><strong>This page came over plain HTTP.</strong> \
The device's session cookie or password crossed the network in clear to reach it. \
Turn on TLS in the device's settings: this port then serves HTTPS with the device's certificate.</p>\n",
        );
    }
    done(&mut p, page.done.as_ref());
    token(&mut p, &page.token, &page.csrf);
    listeners(&mut p, page);
    if let Some(at) = page.listeners.iter().find(|l| l.serves_metrics) {
        p.push_str(
            "<h2>Prometheus</h2>\n<p>A job for each way in; put the secret in the file it names.</p>\n",
        );
        let target = format!("{}:{}", page.host, at.address.port());
        for job in jobs(at, &target, page.auth_mode, page.device_password) {
            let _ =
                write!(p, "<h3>{}</h3>\n<pre id=\"job-{}\">{}</pre>\n", job.title, job.id, escape(&job.yaml));
            if job.id == "password" && !at.tls.https {
                p.push_str("<p class=\"warn\">Over plain HTTP this job sends the device password in clear on every scrape.</p>\n");
            }
        }
    }
    p.push_str("</body></html>\n");
    p
}

fn done(p: &mut String, done: Option<&Done>) {
    match done {
        Some(Done::Created(t)) => {
            let _ = writeln!(
                p,
                "<div class=\"new\"><p><strong>New metrics token</strong> (shown this once; any previous token no longer works):</p>\
<pre id=\"new-token\">{}</pre><p>Save it as <code>{TOKEN_FILE}</code> on the Prometheus host.</p></div>",
                escape(t)
            );
        }
        Some(Done::Revoked(true)) => p.push_str("<p class=\"new\" id=\"done\">Token revoked.</p>\n"),
        Some(Done::Revoked(false)) => p.push_str("<p class=\"new\" id=\"done\">No token was set.</p>\n"),
        Some(Done::Failed(e)) => {
            let _ = writeln!(p, "<p class=\"warn\" id=\"done\">Failed: {}</p>", escape(e));
        }
        None => {}
    }
}

fn token(p: &mut String, state: &TokenState, csrf: &str) {
    p.push_str("<h2>Read-only metrics token</h2>\n");
    let has_token = match state {
        TokenState::Set(since) => {
            let _ = writeln!(
                p,
                "<p id=\"token-state\">A token is set, since {}.</p>",
                crate::wording::rfc3339(*since)
            );
            true
        }
        TokenState::Absent => {
            p.push_str("<p id=\"token-state\">No token is set.</p>\n");
            false
        }
        TokenState::Unusable(e) => {
            let _ = writeln!(
                p,
                "<p class=\"warn\" id=\"token-state\">The token file cannot be used ({}): every token is refused.</p>",
                escape(e)
            );
            true
        }
    };
    let csrf = escape(csrf);
    let form = |action: &str, id: &str, label: &str| {
        format!(
            "<form method=\"post\" action=\"/settings/token\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
<button type=\"submit\" name=\"action\" value=\"{action}\" id=\"{id}\">{label}</button></form>"
        )
    };
    p.push_str(&form("create", "create", if has_token { "Rotate token" } else { "Create token" }));
    if has_token {
        p.push_str(&form("revoke", "revoke", "Revoke token"));
    }
    p.push_str("\n<p>The token only reads metrics; it cannot open this page.</p>\n");
}

fn listeners(p: &mut String, page: &Page) {
    p.push_str(
        "<h2>Listeners</h2>\n<table><tr><th>Listener</th><th>Address</th><th>Serves</th><th>TLS</th></tr>\n",
    );
    for l in &page.listeners {
        let serves = match (l.role, l.serves_metrics) {
            (Role::General, true) => "this page, /metrics",
            (Role::General, false) => "this page",
            (Role::MetricsService, _) => "/metrics",
        };
        let _ = writeln!(
            p,
            "<tr id=\"listener-{0}\"><td>{0}</td><td>{1}</td><td>{serves}</td><td>{2}</td></tr>",
            l.role.label(),
            l.address,
            escape(&l.tls.description)
        );
    }
    p.push_str("</table>\n");
    if page.device_ca {
        let _ = writeln!(
            p,
            "<p><a href=\"/settings/ca.crt\" id=\"ca\">Download the device's CA certificate</a> \
for Prometheus' <code>ca_file</code> (<code>{CA_FILE}</code> below).</p>"
        );
    }
}

/// A Prometheus job to paste.
#[derive(Debug)]
pub struct Job {
    pub id: &'static str,
    pub title: &'static str,
    pub yaml: String,
}

/// The jobs that scrape `at` (the listener serving metrics) as `target`: a
/// client certificate on the mTLS service; none in no-password mode; else
/// the token, and the device password where the device has one and it is
/// accepted.
pub fn jobs(at: &Listener, target: &str, auth_mode: Option<AuthMode>, device_password: bool) -> Vec<Job> {
    let job = |id, title, auth: &str| Job { id, title, yaml: job_yaml(at, target, auth) };
    if at.tls.mtls {
        return vec![job("mtls", "Client certificate (mTLS)", "")];
    }
    if auth_mode == Some(AuthMode::NoPassword) {
        return vec![job("open", "No password (the device runs without one)", "")];
    }
    let token = format!("    authorization:\n      type: Bearer\n      credentials_file: {TOKEN_FILE}\n");
    let mut out = vec![job("token", "Metrics token", &token)];
    if auth_mode == Some(AuthMode::Password) && device_password {
        let pw = format!("    basic_auth:\n      username: admin\n      password_file: {PASSWORD_FILE}\n");
        out.push(job("password", "Device password", &pw));
    }
    out
}

fn job_yaml(at: &Listener, target: &str, auth: &str) -> String {
    let mut y = "scrape_configs:\n  - job_name: jetkvm\n".to_owned();
    if at.tls.https {
        y.push_str("    scheme: https\n    tls_config:\n");
        let ca = if at.role == Role::General && !at.tls.mtls { CA_FILE } else { SERVICE_CA_FILE };
        let _ = writeln!(y, "      ca_file: {ca}");
        if at.tls.mtls {
            y.push_str(CLIENT_CERT);
        }
        if let Some(n) = &at.tls.server_name {
            let _ = writeln!(y, "      server_name: {n}");
        }
    }
    y.push_str(auth);
    let _ = write!(y, "    static_configs:\n      - targets: [\"{target}\"]\n");
    y
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listener(role: Role, https: bool, mtls: bool, server_name: Option<&str>) -> Listener {
        Listener {
            role,
            address: "127.0.0.1:3080".parse().unwrap(),
            serves_metrics: true,
            tls: Tls { description: String::new(), https, server_name: server_name.map(str::to_owned), mtls },
        }
    }

    fn ids(jobs: &[Job]) -> Vec<&str> {
        jobs.iter().map(|j| j.id).collect()
    }

    #[test]
    fn which_jobs_for_which_device() {
        let plain = listener(Role::General, false, false, None);
        let t = "kvm:3080";
        assert_eq!(ids(&jobs(&plain, t, Some(AuthMode::Password), true)), ["token", "password"]);
        assert_eq!(ids(&jobs(&plain, t, Some(AuthMode::Password), false)), ["token"]);
        assert_eq!(ids(&jobs(&plain, t, Some(AuthMode::NoPassword), true)), ["open"]);
        // A device whose state did not load: the token works whatever it is.
        assert_eq!(ids(&jobs(&plain, t, None, true)), ["token"]);
        let mtls = listener(Role::MetricsService, true, true, None);
        assert_eq!(ids(&jobs(&mtls, t, Some(AuthMode::Password), true)), ["mtls"]);
    }

    #[test]
    fn plain_jobs_carry_no_tls_and_their_secret_file() {
        let plain = listener(Role::General, false, false, None);
        let jobs = jobs(&plain, "kvm:3080", Some(AuthMode::Password), true);
        assert_eq!(
            jobs[0].yaml,
            "scrape_configs:\n  - job_name: jetkvm\n    authorization:\n      type: Bearer\n      \
credentials_file: /etc/prometheus/jetkvm-token\n    static_configs:\n      - targets: [\"kvm:3080\"]\n"
        );
        assert!(jobs[1].yaml.contains(
            "basic_auth:\n      username: admin\n      password_file: /etc/prometheus/jetkvm-password\n"
        ));
        assert!(!jobs.iter().any(|j| j.yaml.contains("scheme: https")));
    }

    #[test]
    fn https_jobs_name_the_ca_and_server_name() {
        let device = listener(Role::General, true, false, Some("jetkvm.local"));
        let y = &jobs(&device, "kvm:3080", Some(AuthMode::Password), true)[0].yaml;
        assert!(y.contains("    scheme: https\n    tls_config:\n      ca_file: /etc/prometheus/jetkvm-ca.crt\n      server_name: jetkvm.local\n"), "{y}");
        let service = listener(Role::MetricsService, true, false, None);
        let y = &jobs(&service, "kvm:3081", None, true)[0].yaml;
        assert!(
            y.contains("      ca_file: /etc/prometheus/jetkvm-metrics-ca.crt\n    authorization:"),
            "{y}"
        );
        let mtls = listener(Role::MetricsService, true, true, None);
        let y = &jobs(&mtls, "kvm:3081", None, true)[0].yaml;
        assert!(y.contains("ca_file: /etc/prometheus/jetkvm-metrics-ca.crt\n      cert_file: /etc/prometheus/prometheus.crt\n      key_file: /etc/prometheus/prometheus.key\n"), "{y}");
        assert!(!y.contains("authorization") && !y.contains("basic_auth"), "{y}");
    }

    #[test]
    fn the_page_escapes_what_it_did_not_write() {
        let page = Page {
            encrypted: false,
            auth_mode: Some(AuthMode::Password),
            device_password: true,
            done: Some(Done::Failed("<script>".into())),
            token: TokenState::Unusable("a \"b\"".into()),
            csrf: "x\"y".into(),
            listeners: vec![listener(Role::General, false, false, None)],
            device_ca: false,
            host: "<kvm>".into(),
        };
        let html = render(&page);
        assert!(html.contains("Failed: &lt;script&gt;") && !html.contains("<script>"));
        assert!(html.contains("value=\"x&quot;y\"") && html.contains("a &quot;b&quot;"));
        assert!(html.contains("id=\"plain-warning\"") && html.contains("[&quot;&lt;kvm&gt;:3080&quot;]"));
        assert!(html.contains("id=\"job-password\"") && html.contains("sends the device password in clear"));
    }
}
