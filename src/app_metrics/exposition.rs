//! A reader of the Prometheus text format (version 0.0.4), as the device's
//! app writes it, one line at a time: the answer is read as it arrives and
//! merged line by line (`merge`), never held whole. Ours because no
//! maintained crate fits the binary: the most used one brings `regex` and
//! `chrono` (+680 KB on the device, see the README). It reads untrusted
//! text, so every size is bounded. It borrows from the line (a value is
//! copied only to unescape it); a sample's labels and value are read only
//! for a family the caller keeps: most of the app's exposition is its Go
//! runtime's.

use std::borrow::Cow;

/// What a family declares in its `# TYPE` line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Type {
    Counter,
    Gauge,
    Histogram,
    Summary,
    Untyped,
}

/// One line of the text.
#[derive(Debug, PartialEq)]
pub enum Line<'a> {
    /// Empty, or a comment other than HELP and TYPE.
    Nothing,
    Help(&'a str, Cow<'a, str>),
    Type(&'a str, Type),
    /// A sample's name, and what follows it (read by [`sample`] if wanted).
    Sample(&'a str, &'a str),
}

pub type Labels<'a> = Vec<(&'a str, Cow<'a, str>)>;

/// The most labels on one sample.
pub const MAX_LABELS: usize = 16;

/// What one line says; a malformed one is an error.
pub fn line(line: &str) -> Result<Line<'_>, String> {
    let line = line.trim_matches([' ', '\t', '\r']);
    if line.is_empty() {
        return Ok(Line::Nothing);
    }
    if let Some(comment) = line.strip_prefix('#') {
        return comment_line(comment);
    }
    let end = line.find(['{', ' ', '\t']).unwrap_or(line.len());
    let (name, rest) = line.split_at(end);
    if !is_metric_name(name) {
        return Err(format!("{name:?} is not a metric name"));
    }
    Ok(Line::Sample(name, rest))
}

/// `# HELP name text` and `# TYPE name type`; any other comment is nothing.
fn comment_line(comment: &str) -> Result<Line<'_>, String> {
    let mut words = comment.trim_start_matches([' ', '\t']).splitn(2, [' ', '\t']);
    let keyword = words.next().unwrap_or("");
    if keyword != "HELP" && keyword != "TYPE" {
        return Ok(Line::Nothing);
    }
    let rest = words.next().unwrap_or("").trim_start_matches([' ', '\t']);
    let (name, arg) = rest.split_once([' ', '\t']).unwrap_or((rest, ""));
    if !is_metric_name(name) {
        return Err(format!("{keyword}: {name:?} is not a metric name"));
    }
    if keyword == "HELP" {
        return Ok(Line::Help(name, unescape(arg, false)?));
    }
    let kind = match arg.trim_matches([' ', '\t']) {
        "counter" => Type::Counter,
        "gauge" => Type::Gauge,
        "histogram" => Type::Histogram,
        "summary" => Type::Summary,
        "untyped" => Type::Untyped,
        other => return Err(format!("TYPE: {other:?} is not a metric type")),
    };
    Ok(Line::Type(name, kind))
}

/// The suffix of a sample named `name`, if it is one of the family
/// `family`'s (of type `kind`).
pub fn suffix_in<'a>(family: &str, kind: Type, name: &'a str) -> Option<&'a str> {
    let suffix = name.strip_prefix(family)?;
    matches!(
        (kind, suffix),
        (_, "") | (Type::Histogram, "_bucket" | "_sum" | "_count") | (Type::Summary, "_sum" | "_count")
    )
    .then_some(suffix)
}

/// `{label="value",...} value [timestamp]`: what follows a sample's name.
pub fn sample(mut rest: &str) -> Result<(Labels<'_>, f64), String> {
    let mut labels = Vec::new();
    if let Some(after) = rest.strip_prefix('{') {
        rest = label_set(after, &mut labels)?;
    }
    let mut fields = rest.split([' ', '\t']).filter(|f| !f.is_empty());
    let value = fields.next().ok_or("no value")?;
    let value = parse_value(value).ok_or_else(|| format!("{value:?} is not a number"))?;
    if let Some(ts) = fields.next() {
        ts.parse::<i64>().map_err(|_| format!("{ts:?} is not a timestamp"))?;
    }
    if fields.next().is_some() {
        return Err("text after the timestamp".into());
    }
    Ok((labels, value))
}

/// Reads `label="value",...}` into `labels`; returns what follows the `}`.
fn label_set<'a>(mut rest: &'a str, labels: &mut Labels<'a>) -> Result<&'a str, String> {
    loop {
        rest = rest.trim_start_matches([' ', '\t']);
        if let Some(after) = rest.strip_prefix('}') {
            return Ok(after);
        }
        let eq = rest.find('=').ok_or("a label without \"=\"")?;
        let name = rest[..eq].trim_end_matches([' ', '\t']);
        if !is_label_name(name) {
            return Err(format!("{name:?} is not a label name"));
        }
        // `__name__` and the like are Prometheus's own: one would fail the
        // whole scrape there, the daemon's metrics with it.
        if name.starts_with("__") {
            return Err(format!("{name:?} is a reserved label name"));
        }
        if labels.iter().any(|(n, _)| *n == name) {
            return Err(format!("label {name:?} twice"));
        }
        if labels.len() == MAX_LABELS {
            return Err(format!("more than {MAX_LABELS} labels"));
        }
        let quoted = rest[eq + 1..].trim_start_matches([' ', '\t']);
        let quoted = quoted.strip_prefix('"').ok_or("a label value without quotes")?;
        let close = closing_quote(quoted).ok_or("a label value without its closing quote")?;
        labels.push((name, unescape(&quoted[..close], true)?));
        rest = quoted[close + 1..].trim_start_matches([' ', '\t']);
        if let Some(after) = rest.strip_prefix(',') {
            rest = after;
        } else if !rest.starts_with('}') {
            return Err("labels not separated by \",\"".into());
        }
    }
}

/// The index of the first `"` not escaped by a backslash.
fn closing_quote(s: &str) -> Option<usize> {
    let mut escaped = false;
    for (i, b) in s.bytes().enumerate() {
        match b {
            _ if escaped => escaped = false,
            b'\\' => escaped = true,
            b'"' => return Some(i),
            _ => {}
        }
    }
    None
}

/// `\\` and `\n` (and `\"` in a label value); any other escape is an error.
fn unescape(s: &str, quotes: bool) -> Result<Cow<'_, str>, String> {
    if !s.contains('\\') {
        return Ok(Cow::Borrowed(s));
    }
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('\\') => out.push('\\'),
            Some('n') => out.push('\n'),
            Some('"') if quotes => out.push('"'),
            other => {
                return Err(format!("unknown escape \"\\{}\"", other.map(String::from).unwrap_or_default()))
            }
        }
    }
    Ok(Cow::Owned(out))
}

/// A float as Prometheus reads it (Go's `ParseFloat`): digits, and `NaN`,
/// `Inf`, `+Inf`, `-Inf`, `Infinity` in any case (the `prometheus` crate's
/// encoder writes `inf`). Rust's own reading is the same but for Go's hex
/// floats, which no exposition writes.
fn parse_value(s: &str) -> Option<f64> {
    s.parse().ok()
}

fn is_metric_name(s: &str) -> bool {
    let mut bytes = s.bytes();
    matches!(bytes.next(), Some(b'a'..=b'z' | b'A'..=b'Z' | b'_' | b':'))
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':')
}

fn is_label_name(s: &str) -> bool {
    let mut bytes = s.bytes();
    matches!(bytes.next(), Some(b'a'..=b'z' | b'A'..=b'Z' | b'_'))
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels<'a>(pairs: &[(&'a str, &'a str)]) -> Labels<'a> {
        pairs.iter().map(|(n, v)| (*n, Cow::Borrowed(*v))).collect()
    }

    #[test]
    fn each_kind_of_line() {
        assert_eq!(
            line("# HELP a_total Pings, \\\\ and \\n.").unwrap(),
            Line::Help("a_total", "Pings, \\ and \n.".into())
        );
        assert_eq!(line("# TYPE h histogram").unwrap(), Line::Type("h", Type::Histogram));
        assert_eq!(line("# a comment").unwrap(), Line::Nothing);
        assert_eq!(line("  \r").unwrap(), Line::Nothing);
        assert_eq!(line("a_total{b=\"c\"} 3").unwrap(), Line::Sample("a_total", "{b=\"c\"} 3"));
        let (l, v) = sample("{type=\"cloud\",source=\"x\\\"y\"} 3 1700000000000").unwrap();
        assert_eq!((l, v), (labels(&[("type", "cloud"), ("source", "x\"y")]), 3.0));
        assert_eq!(sample("{a=\"1\",} -Inf").unwrap(), (labels(&[("a", "1")]), f64::NEG_INFINITY));
        for (v, want) in
            [("+Inf", f64::INFINITY), ("inf", f64::INFINITY), ("-infinity", f64::NEG_INFINITY), ("1e3", 1e3)]
        {
            assert_eq!(sample(&format!(" {v}")).unwrap().1, want, "{v}");
        }
        assert_eq!(suffix_in("h", Type::Histogram, "h_bucket"), Some("_bucket"));
        assert_eq!(suffix_in("h", Type::Gauge, "h_bucket"), None);
    }

    #[test]
    fn malformed_lines_say_why() {
        for (text, why) in [
            ("9b 2", "\"9b\" is not a metric name"),
            ("a{b=\"1\" 2", "labels not separated by \",\""),
            ("a{b=\"1} 2", "a label value without its closing quote"),
            ("a{b=1} 2", "a label value without quotes"),
            ("a{b=\"1\",b=\"2\"} 2", "label \"b\" twice"),
            ("a{__name__=\"b\"} 2", "\"__name__\" is a reserved label name"),
            ("a{b=\"\\t\"} 2", "unknown escape \"\\t\""),
            ("a 1x", "\"1x\" is not a number"),
            ("a 1 2 3", "text after the timestamp"),
            ("a 1 x", "\"x\" is not a timestamp"),
            ("a", "no value"),
            ("# TYPE a kind", "TYPE: \"kind\" is not a metric type"),
        ] {
            let got = match line(text) {
                Ok(Line::Sample(_, rest)) => sample(rest).map(|_| ()),
                other => other.map(|_| ()),
            };
            assert_eq!(got.unwrap_err(), why, "{text:?}");
        }
        let wide: String = (0..=MAX_LABELS).map(|i| format!("l{i}=\"v\",")).collect();
        assert!(sample(&format!("{{{wide}}} 1")).unwrap_err().ends_with("more than 16 labels"));
    }
}
