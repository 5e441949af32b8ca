//! The command line: `serve`, `check-config`, `--help`, `--version`.
//! Parsing is here; the work is in `server` and `config`.

use std::ffi::OsString;
use std::path::PathBuf;

use crate::config::{Config, DEFAULT_PATH};

const USAGE: &str = "\
jetkvm-metrics: authenticated Prometheus metrics for the JetKVM

USAGE:
    jetkvm-metrics serve [--config FILE] [--pidfile FILE] [--ports-file FILE]
                         [--user UID:GID]
    jetkvm-metrics check-config [--config FILE]
    jetkvm-metrics token new [--keep-previous DURATION] [--config FILE]
    jetkvm-metrics token revoke|status [--config FILE]
    jetkvm-metrics probe [--config FILE] [--require-app]
    jetkvm-metrics --help | --version

COMMANDS:
    serve         Run the daemon: serve /, /healthz and an authenticated
                  /metrics until SIGTERM or SIGINT. SIGHUP re-reads the
                  device's auth state and forgets remembered credentials.
    check-config  Validate the configuration: syntax, values, and what serve
                  needs here (roots, certificates). Prints OK, or one line per
                  error and exits 1. Named paths not usable on this machine
                  now (a filesystem, an unreadable token or device file) are
                  warnings on stderr; the device not being set up is fine.
    token new     Create a read-only metrics token, print it once on stdout
                  and store only its SHA-256 in token_file. Running it again
                  rotates: the previous token stops working at once or,
                  with --keep-previous DURATION (e.g. 10m, at most 24h),
                  once that time is up, so Prometheus can be given the new
                  token without a failed scrape.
    token revoke  Remove the token.
    token status  Say whether a token is set and since when (never the token).
    probe         Ask the daemon this configuration describes, from the
                  device itself, whether it serves: connect where it listens
                  (loopback for a wildcard), speak TLS where it does and
                  check the certificate it serves is the configured one, send
                  no credential, and expect /healthz to answer with this
                  system's version. Prints what answered, or why not and
                  exits 1. The system update confirms a new slot with it.
                  With --require-app, also that the device's app runs whole
                  (each of its processes by role): on a system with the
                  app, a slot is kept only if both hold.

OPTIONS:
    -c, --config FILE  Configuration file (TOML). Without it,
                       /etc/jetkvm-metrics/config.toml is read if it exists,
                       else built-in defaults apply. A named file that is
                       missing or invalid is an error.
    -p, --pidfile FILE (serve) Write the daemon's pid here once it is
                       listening; removed when it stops.
        --ports-file FILE
                       (serve) Write each listener's bound address here once
                       it is listening, a line each: ROLE ADDRESS (general,
                       metrics_service); removed when it stops.
    -u, --user UID:GID (serve) Once listening, become this user and group
                       (ids, as `id -u` and `id -g` print them), keeping
                       only CAP_DAC_READ_SEARCH (to read the device's
                       root-only files), with no_new_privs. Needs root.
    -h, --help         Print this help.
    -V, --version      Print the version.

ENVIRONMENT:
    RUST_LOG           Log filter for stderr (default: info), e.g. debug.
";

enum Command {
    Serve,
    CheckConfig,
    Probe,
    Token(TokenCommand),
}

#[derive(Clone, Copy)]
enum TokenCommand {
    /// With how long the previous token keeps working, in seconds.
    New(u64),
    Revoke,
    Status,
}

struct Args {
    command: Command,
    config: Option<PathBuf>,
    pidfile: Option<PathBuf>,
    ports_file: Option<PathBuf>,
    user: Option<String>,
    require_app: bool,
}

enum Parsed {
    Run(Args),
    Help,
    Version,
}

fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Parsed, String> {
    use lexopt::prelude::*;
    let mut p = lexopt::Parser::from_iter(args);
    let mut command = None;
    let mut config = None;
    let mut pidfile = None;
    let mut ports_file = None;
    let mut user = None;
    let mut require_app = false;
    let mut keep_previous = None;
    while let Some(arg) = p.next().map_err(|e| e.to_string())? {
        match arg {
            Short('h') | Long("help") => return Ok(Parsed::Help),
            Short('V') | Long("version") => return Ok(Parsed::Version),
            Short('c') | Long("config") => {
                config = Some(PathBuf::from(p.value().map_err(|e| e.to_string())?));
            }
            Short('p') | Long("pidfile") => {
                pidfile = Some(PathBuf::from(p.value().map_err(|e| e.to_string())?));
            }
            Long("ports-file") => {
                ports_file = Some(PathBuf::from(p.value().map_err(|e| e.to_string())?));
            }
            Long("require-app") => require_app = true,
            Long("keep-previous") => keep_previous = Some(keep_previous_value(&mut p)?),
            Short('u') | Long("user") => {
                user = Some(p.value().map_err(|e| e.to_string())?.to_string_lossy().into_owned());
            }
            Value(v) if command.is_none() => {
                command = Some(match v.to_str() {
                    Some("serve") => Command::Serve,
                    Some("check-config") => Command::CheckConfig,
                    Some("probe") => Command::Probe,
                    Some("token") => Command::Token(token_command(&mut p)?),
                    Some("help") => return Ok(Parsed::Help),
                    _ => return Err(format!("unknown command {:?} (try --help)", v.to_string_lossy())),
                });
            }
            other => return Err(format!("{} (try --help)", other.unexpected())),
        }
    }
    if require_app && !matches!(command, Some(Command::Probe)) {
        return Err("--require-app is an option of probe (try --help)".into());
    }
    if let Some(keep) = keep_previous {
        match &mut command {
            Some(Command::Token(TokenCommand::New(k))) => *k = keep,
            _ => return Err("--keep-previous is an option of token new (try --help)".into()),
        }
    }
    match command {
        Some(Command::Serve) => {
            Ok(Parsed::Run(Args { command: Command::Serve, config, pidfile, ports_file, user, require_app }))
        }
        Some(_) if pidfile.is_some() => Err("--pidfile is an option of serve (try --help)".into()),
        Some(_) if ports_file.is_some() => Err("--ports-file is an option of serve (try --help)".into()),
        Some(_) if user.is_some() => Err("--user is an option of serve (try --help)".into()),
        Some(command) => Ok(Parsed::Run(Args { command, config, pidfile, ports_file, user, require_app })),
        None => Err("missing command: serve, check-config, token or probe (try --help)".into()),
    }
}

/// `token`'s subcommand, the next value.
fn token_command(p: &mut lexopt::Parser) -> Result<TokenCommand, String> {
    let sub = p.value().map_err(|_| "token: missing new, revoke or status".to_owned())?;
    match sub.to_str() {
        Some("new") => Ok(TokenCommand::New(0)),
        Some("revoke") => Ok(TokenCommand::Revoke),
        Some("status") => Ok(TokenCommand::Status),
        _ => Err(format!("token: unknown command {:?}: new, revoke or status", sub.to_string_lossy())),
    }
}

/// `--keep-previous`'s duration, in seconds.
fn keep_previous_value(p: &mut lexopt::Parser) -> Result<u64, String> {
    let v = p.value().map_err(|e| e.to_string())?;
    let d =
        crate::config::parse_duration(&v.to_string_lossy()).map_err(|e| format!("--keep-previous: {e}"))?;
    if d.as_secs() > crate::auth::token::MAX_KEEP_PREVIOUS {
        return Err("--keep-previous: at most 24h".into());
    }
    if d.as_secs() == 0 {
        return Err("--keep-previous: at least 1s".into());
    }
    Ok(d.as_secs())
}

/// Runs the command line and returns the exit code.
pub fn main(args: impl IntoIterator<Item = OsString>) -> i32 {
    // lexopt's from_iter takes the first item as the program name.
    let parsed = match parse(args) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("jetkvm-metrics: {e}");
            return 2;
        }
    };
    match parsed {
        Parsed::Help => {
            print!("{USAGE}");
            0
        }
        Parsed::Version => {
            println!("jetkvm-metrics {} ({})", env!("CARGO_PKG_VERSION"), crate::TARGET);
            0
        }
        Parsed::Run(Args { command: Command::CheckConfig, config, .. }) => check_config(config),
        Parsed::Run(Args { command: Command::Serve, config, pidfile, ports_file, user, .. }) => {
            let announce =
                crate::server::Announce { pidfile: pidfile.as_deref(), ports_file: ports_file.as_deref() };
            serve(config, &announce, user)
        }
        Parsed::Run(Args { command: Command::Token(t), config, .. }) => token(t, config),
        Parsed::Run(Args { command: Command::Probe, config, require_app, .. }) => probe(config, require_app),
    }
}

fn probe(path: Option<PathBuf>, require_app: bool) -> i32 {
    crate::crypto::init();
    let Some(config) = load(path.as_deref()) else { return 1 };
    let app = || {
        if require_app {
            crate::probe::app_runs(&config).map(|a| format!("; {a}"))
        } else {
            Ok(String::new())
        }
    };
    match crate::probe::run(&config).and_then(|said| Ok(said + &app()?)) {
        Ok(said) => {
            println!("{said}");
            0
        }
        Err(e) => {
            eprintln!("jetkvm-metrics: probe: {e}");
            1
        }
    }
}

/// Loads the configuration, or prints one line per problem on stderr.
fn load(path: Option<&std::path::Path>) -> Option<Config> {
    match crate::startup::load(path) {
        Ok(c) => Some(c),
        Err(problems) => {
            for p in &problems {
                eprintln!("jetkvm-metrics: {p}");
            }
            None
        }
    }
}

fn token(command: TokenCommand, path: Option<PathBuf>) -> i32 {
    use crate::auth::token;
    let Some(config) = load(path.as_deref()) else { return 1 };
    let file = &config.token_file;
    let result = match command {
        TokenCommand::New(keep) => token::create(file, keep).map(|(t, kept)| {
            // The token on stdout alone, so it can be piped into a file.
            println!("{t}");
            match kept {
                None => eprintln!(
                    "stored the token's SHA-256 in {}; any previous token no longer works",
                    file.display()
                ),
                Some(until) => eprintln!(
                    "stored the token's SHA-256 in {}; the previous token works {keep} s more, until {}",
                    file.display(),
                    crate::wording::rfc3339(until)
                ),
            }
        }),
        TokenCommand::Revoke => token::revoke(file).map(|had| {
            if had {
                println!("token revoked ({})", file.display());
            } else {
                println!("no token was set ({})", file.display());
            }
        }),
        TokenCommand::Status => token::status(file).map(|r| match r {
            Some(r) => {
                println!("token set since {} ({})", crate::wording::rfc3339(r.created), file.display());
                if let Some((_, until)) = r.previous {
                    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
                    let ended = now.map(|n| n.as_secs() >= until).unwrap_or(false);
                    let verb = if ended { "worked" } else { "works" };
                    println!("the previous token {verb} until {}", crate::wording::rfc3339(until));
                }
            }
            None => println!("no token ({})", file.display()),
        }),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("jetkvm-metrics: token_file {e}");
            1
        }
    }
}

/// Errors on stdout and exit 1; warnings (paths not usable on this machine
/// now) on stderr, which alone still pass.
fn check_config(path: Option<PathBuf>) -> i32 {
    let (errors, warnings) = match crate::startup::load(path.as_deref()) {
        Ok(c) => {
            let checked = crate::startup::check(&c);
            (checked.errors, checked.warnings)
        }
        Err(problems) => (problems, Vec::new()),
    };
    for w in &warnings {
        eprintln!("warning: {w}");
    }
    if errors.is_empty() {
        println!("OK");
        0
    } else {
        for e in &errors {
            println!("{e}");
        }
        1
    }
}

fn serve(path: Option<PathBuf>, announce: &crate::server::Announce, user: Option<String>) -> i32 {
    crate::crypto::init();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let Some(config) = load(path.as_deref()) else { return 1 };
    let user = match user.as_deref().map(crate::privilege::user).transpose() {
        Ok(u) => u,
        Err(e) => {
            eprintln!("jetkvm-metrics: {e}");
            return 1;
        }
    };
    // The metrics service's certificates are checked when it is built.
    if let Some(p) = crate::startup::roots(&config).first() {
        eprintln!("jetkvm-metrics: {p}");
        return 1;
    }
    if path.is_none() && config.source != DEFAULT_PATH {
        log::info!("no {DEFAULT_PATH}: using built-in defaults");
    }
    crate::tuning::at_start();
    match crate::server::run(config, announce, user.as_ref()) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("jetkvm-metrics: {e}");
            1
        }
    }
}
