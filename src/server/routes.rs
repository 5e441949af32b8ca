//! What each listener answers, declared in one place: the route table, with
//! each path's methods stated once (a method a path does not answer is 405
//! with its `Allow`), the middleware on each route (see `middleware`), and
//! the handlers of the small pages. The decision itself is
//! `auth::Authenticator::decide`, which sees plain values, never actix
//! types.

use std::rc::Rc;
use std::sync::Arc;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceFactory, ServiceRequest, ServiceResponse};
use actix_web::http::header;
use actix_web::http::header::{AcceptEncoding, Encoding, Header};
use actix_web::http::{Method, StatusCode};
use actix_web::middleware::from_fn;
use actix_web::{
    guard, web, App, Error, FromRequest, Handler, HttpRequest, HttpResponse, Resource, Responder, Route,
};

use super::formats;
use super::listener::{Listener, Role};
use super::middleware::{authenticate, follow_device, request};
use super::refusal::{method_not_allowed, text};
use super::settings;
use super::slot::ConnInfo;
use super::state::State;
use crate::metrics;

/// The landing page, with `$more` after the link to the metrics.
macro_rules! landing {
    ($more:literal) => {
        concat!(
            "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>JetKVM metrics</title></head>\n",
            "<body><h1>JetKVM metrics</h1><p><a href=\"/metrics\">Metrics</a> (authentication required)</p>",
            $more,
            "</body></html>\n"
        )
    };
}
const LANDING: &str = landing!(
    "\n<p><a href=\"/settings\">Settings</a>: the metrics token, TLS, Prometheus jobs (sign in to the device first)</p>"
);
const LANDING_METRICS_SERVICE: &str = landing!("");

/// The methods a path answers: its route's guard and its `Allow`.
#[derive(Clone, Copy)]
enum Methods {
    /// GET and HEAD: every page and `/metrics`.
    Read,
    /// POST: the token form.
    Post,
}

impl Methods {
    fn allow(self) -> &'static str {
        match self {
            Methods::Read => "GET, HEAD",
            Methods::Post => "POST",
        }
    }

    fn allows(self, m: &Method) -> bool {
        match self {
            Methods::Read => m == Method::GET || m == Method::HEAD,
            Methods::Post => m == Method::POST,
        }
    }

    fn route(self) -> Route {
        match self {
            Methods::Read => web::route().guard(guard::Any(guard::Get()).or(guard::Head())),
            Methods::Post => web::post(),
        }
    }
}

/// `path` answering `methods` with `route`; any other method is 405.
fn resource(path: &str, methods: Methods, route: Route) -> Resource {
    web::resource(path).route(route).default_service(web::to(move |state: web::Data<State>| async move {
        method_not_allowed(&state, methods.allow())
    }))
}

/// `path` answering `methods` with `handler`.
fn answer<F, Args>(path: &str, methods: Methods, handler: F) -> Resource
where
    F: Handler<Args>,
    Args: FromRequest + 'static,
    F::Output: Responder + 'static,
{
    resource(path, methods, methods.route().to(handler))
}

/// The routes of one listener.
pub fn app(
    state: Arc<State>,
    listener: Arc<Listener>,
) -> App<
    impl ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse<impl MessageBody>,
        Error = Error,
        InitError = (),
    >,
> {
    let serves_metrics = listener.serves_metrics;
    let general = listener.role == Role::General;
    App::new()
        .app_data(web::Data::from(state))
        .app_data(web::Data::from(listener))
        .wrap(from_fn(request))
        .service(answer("/", Methods::Read, landing))
        .service(answer("/healthz", Methods::Read, healthz))
        .configure(move |cfg| {
            if general {
                cfg.service(
                    web::scope("/settings")
                        .wrap(from_fn(settings::page_headers))
                        .service(answer("", Methods::Read, settings::page))
                        .service(answer("/token", Methods::Post, settings::token_action))
                        .service(answer("/ca.crt", Methods::Read, settings::ca)),
                );
            }
        })
        .configure(move |cfg| {
            if serves_metrics {
                // Innermost first: the scrape, the device's state as of
                // now, the one decision.
                let scrape =
                    Methods::Read.route().to(scrape).wrap(from_fn(follow_device)).wrap(from_fn(authenticate));
                cfg.service(resource("/metrics", Methods::Read, scrape));
            } else {
                cfg.service(answer("/metrics", Methods::Read, moved));
            }
        })
        .default_service(web::to(not_found))
}

async fn landing(listener: web::Data<Listener>) -> HttpResponse {
    let page = if listener.role == Role::General { LANDING } else { LANDING_METRICS_SERVICE };
    HttpResponse::Ok().content_type("text/html; charset=utf-8").body(page)
}

/// `ok`, and to a client on the device itself the system version, so that
/// `probe` can tell this daemon from anything else on the port. The
/// version is not told to the LAN.
///
/// Asked by Prometheus (an `Accept` naming an exposition), it answers an
/// empty exposition instead: a job without credentials that is `up` while
/// the metrics job is not tells a refused credential from a device that
/// cannot be reached.
async fn healthz(req: HttpRequest, state: web::Data<State>) -> HttpResponse {
    // Either answer depends on Accept: no cache may hand one to the other.
    let mut r = if formats::accepted(&req)
        .is_some_and(|r| formats::exposition_asked(&r) && formats::text_allowed(&r))
    {
        HttpResponse::Ok().content_type(metrics::CONTENT_TYPE).finish()
    } else {
        let same_host = req.conn_data::<Rc<ConnInfo>>().is_some_and(|c| c.same_host);
        match same_host.then(|| crate::collectors::system_version(&state.config.version_file)) {
            Some(Ok(version)) => text(StatusCode::OK, format!("ok {version}\n")),
            _ => text(StatusCode::OK, "ok\n"),
        }
    };
    r.headers_mut().insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-store"));
    r.headers_mut().insert(header::VARY, header::HeaderValue::from_static("Accept"));
    r
}

/// Any other path: 404 to a read, 405 to anything else.
async fn not_found(req: HttpRequest, state: web::Data<State>) -> HttpResponse {
    if Methods::Read.allows(req.method()) {
        text(StatusCode::NOT_FOUND, "not found\n")
    } else {
        method_not_allowed(&state, Methods::Read.allow())
    }
}

/// `/metrics` on the general listener once the metrics service has it.
async fn moved(state: web::Data<State>) -> HttpResponse {
    let port = state.metrics_port().unwrap_or_default();
    text(StatusCode::NOT_FOUND, format!("metrics are served by the metrics service on port {port}\n"))
}

/// What a scrape's answer depends on besides its path.
const VARY: &str = "Accept, Accept-Encoding";

/// A scrape: the device app asked for its metrics first (within its
/// deadline), then every collector run (the exporter's own state among them)
/// and encoded with the daemon's counters. The body goes out as it is, never
/// gzipped: on the board gzip cost as much CPU as encrypting a body four
/// times larger does, and kept 300 KiB more resident (docs/DESIGN.md, "Why the
/// body is not compressed"). A client that refuses it, or the text format
/// (see `formats`), gets 406.
async fn scrape(req: HttpRequest, state: web::Data<State>) -> HttpResponse {
    // No header, or one that does not parse, accepts it.
    let refused = AcceptEncoding::parse(&req)
        .is_ok_and(|accept| accept.negotiate([Encoding::identity()].iter()).is_none());
    if refused {
        state.telemetry.bad_request();
        return HttpResponse::NotAcceptable().insert_header((header::VARY, VARY)).body("identity\n");
    }
    if formats::accepted(&req).is_some_and(|r| !formats::text_allowed(&r)) {
        state.telemetry.bad_request();
        return HttpResponse::NotAcceptable()
            .insert_header((header::VARY, VARY))
            .body(format!("{}\n", metrics::CONTENT_TYPE));
    }
    // Counted here, past the 406s: a scrape is one that gets metrics.
    state.telemetry.scrape();
    let _turn = state.scrape_turn.lock().await;
    if let Some(bridge) = &state.app_metrics {
        bridge.refresh().await;
    }
    state.collectors.prepare().await;
    HttpResponse::Ok()
        .content_type(metrics::CONTENT_TYPE)
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header((header::VARY, VARY))
        .body(state.collectors.scrape(&mut state.telemetry.families()))
}
