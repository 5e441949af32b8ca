//! The exposition formats a request's `Accept` allows. One is served: the
//! text format 0.0.4 that the `prometheus` crate's `TextEncoder` writes.
//! Prometheus 2 and 3 list it in every `Accept` they send (with OpenMetrics
//! and, from 3.0, text format 1.0.0 ranked above it, and `*/*` last).

use actix_web::http::header::{Accept, Header, Quality, QualityItem};
use actix_web::mime::Mime;
use actix_web::HttpRequest;

/// How specifically `range` names the text format 0.0.4, if it covers it.
fn covers(range: &Mime) -> Option<u8> {
    match (range.type_().as_str(), range.subtype().as_str()) {
        ("*", "*") => Some(0),
        ("text", "*") => Some(1),
        ("text", "plain") => match range.get_param("version").map(|v| v.as_str()) {
            None => Some(2),
            Some("0.0.4") => Some(3),
            Some(_) => None,
        },
        _ => None,
    }
}

/// Whether the text format may be sent: the most specific range covering
/// it has a quality above zero (`text/plain;version=0.0.4;q=0` refuses it
/// whatever `*/*` says).
pub fn text_allowed(ranges: &[QualityItem<Mime>]) -> bool {
    ranges
        .iter()
        .filter_map(|r| covers(&r.item).map(|specific| (specific, r.quality)))
        .max()
        .is_some_and(|(_, q)| q > Quality::ZERO)
}

/// Whether the client asks for an exposition by name (a versioned
/// `text/plain`, OpenMetrics or the protocol buffer format), as Prometheus
/// does; a browser or `curl` does not.
pub fn exposition_asked(ranges: &[QualityItem<Mime>]) -> bool {
    ranges.iter().filter(|r| r.quality > Quality::ZERO).any(|r| {
        let m = &r.item;
        (m.type_() == "text" && m.subtype() == "plain" && m.get_param("version").is_some())
            || (m.type_() == "application"
                && (m.subtype() == "openmetrics-text" || m.subtype() == "vnd.google.protobuf"))
    })
}

/// The ranges of the request's `Accept`; none if it has none, or one that
/// does not parse (then anything may be sent).
pub fn accepted(req: &HttpRequest) -> Option<Vec<QualityItem<Mime>>> {
    Accept::parse(req).ok().map(|a| a.0).filter(|r| !r.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ranges(accept: &str) -> Vec<QualityItem<Mime>> {
        accept.split(',').map(|r| r.trim().parse().unwrap()).collect()
    }

    #[test]
    fn prometheus_is_served_the_text_format() {
        for accept in [
            "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,\
             text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
            "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,\
             application/openmetrics-text;version=0.0.1;escaping=allow-utf-8;q=0.5,\
             text/plain;version=1.0.0;escaping=allow-utf-8;q=0.4,text/plain;version=0.0.4;escaping=allow-utf-8;q=0.3,\
             */*;q=0.2",
        ] {
            assert!(text_allowed(&ranges(accept)), "{accept}");
            assert!(exposition_asked(&ranges(accept)), "{accept}");
        }
    }

    #[test]
    fn the_most_specific_range_decides() {
        for (accept, allowed) in [
            ("*/*", true),
            ("text/*;q=0.1", true),
            ("text/plain", true),
            ("text/plain;version=0.0.4", true),
            ("application/openmetrics-text;version=1.0.0", false),
            ("text/plain;version=1.0.0", false),
            ("application/json", false),
            ("text/plain;version=0.0.4;q=0,*/*", false),
            ("text/plain;q=0,text/plain;version=0.0.4;q=0.2", true),
            ("text/*;q=0,*/*", false),
        ] {
            assert_eq!(text_allowed(&ranges(accept)), allowed, "{accept}");
        }
    }

    #[test]
    fn only_a_named_exposition_is_asked_for() {
        for (accept, asked) in [
            ("*/*", false),
            ("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", false),
            ("text/plain", false),
            ("text/plain;version=0.0.4", true),
            ("application/openmetrics-text;version=1.0.0", true),
            ("application/openmetrics-text;q=0,*/*", false),
            ("application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited,*/*;q=0.1", true),
        ] {
            assert_eq!(exposition_asked(&ranges(accept)), asked, "{accept}");
        }
    }
}
