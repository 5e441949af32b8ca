//! A reader of the Prometheus text format (version 0.0.4), as the device's
//! app writes it. Ours because no maintained crate fits the binary: the most
//! used one brings `regex` and `chrono` (+680 KB on the device, see the
//! README). It reads untrusted text, so every size is bounded: the caller
//! bounds the text, this bounds what is kept from it. It borrows from the
//! text (a value is copied only to unescape it), and skips unread the
//! samples of a family the caller does not keep: most of the app's
//! exposition is its Go runtime's.

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

/// One family: its `# HELP` and `# TYPE` lines and its samples, in order.
#[derive(Debug, PartialEq)]
pub struct Family<'a> {
    pub name: &'a str,
    pub help: Cow<'a, str>,
    pub kind: Type,
    /// Whether its samples were read (the caller keeps it).
    pub kept: bool,
    pub samples: Vec<Sample<'a>>,
}

/// One sample line: `suffix` is what follows the family's name (empty, or
/// `_bucket`, `_sum`, `_count`); a timestamp is read and dropped.
#[derive(Debug, PartialEq)]
pub struct Sample<'a> {
    pub suffix: &'a str,
    pub labels: Labels<'a>,
    pub value: f64,
}

pub type Labels<'a> = Vec<(&'a str, Cow<'a, str>)>;

/// The most families and samples kept, and labels on one sample.
pub const MAX_FAMILIES: usize = 500;
pub const MAX_SAMPLES: usize = 5000;
pub const MAX_LABELS: usize = 16;

/// Reads the text, the samples of the families `keep` says yes to; the
/// first malformed line fails the whole of it (a half-read exposition would
/// export a wrong sum), naming its number.
pub fn parse<'a>(text: &'a str, keep: impl Fn(&str) -> bool) -> Result<Vec<Family<'a>>, String> {
    let mut r = Reader { families: Vec::new(), samples: 0, keep };
    for (i, line) in text.split('\n').enumerate() {
        r.line(line).map_err(|e| format!("line {}: {e}", i + 1))?;
    }
    Ok(r.families)
}

/// One reading: the families so far, the samples read, what is kept.
struct Reader<'a, K> {
    families: Vec<Family<'a>>,
    samples: usize,
    keep: K,
}

impl<'a, K: Fn(&str) -> bool> Reader<'a, K> {
    fn line(&mut self, line: &'a str) -> Result<(), String> {
        let line = line.trim_matches([' ', '\t']);
        if line.is_empty() {
            return Ok(());
        }
        if let Some(comment) = line.strip_prefix('#') {
            return self.comment(comment);
        }
        let end = line.find(['{', ' ', '\t']).unwrap_or(line.len());
        let (name, rest) = line.split_at(end);
        if !is_metric_name(name) {
            return Err(format!("{name:?} is not a metric name"));
        }
        let suffix = match self.families.last().and_then(|f| suffix_in(f, name)) {
            Some(s) => s,
            None => {
                // A sample with no `# TYPE` before it is a family of its own.
                self.start(name)?;
                ""
            }
        };
        let family = self.families.last_mut().expect("one exists");
        if !family.kept {
            return Ok(());
        }
        self.samples += 1;
        if self.samples > MAX_SAMPLES {
            return Err(format!("more than {MAX_SAMPLES} samples"));
        }
        let (labels, value) = sample(rest)?;
        family.samples.push(Sample { suffix, labels, value });
        Ok(())
    }

    /// `# HELP name text` and `# TYPE name type`; any other comment is skipped.
    fn comment(&mut self, comment: &'a str) -> Result<(), String> {
        let mut words = comment.trim_start_matches([' ', '\t']).splitn(2, [' ', '\t']);
        let keyword = words.next().unwrap_or("");
        if keyword != "HELP" && keyword != "TYPE" {
            return Ok(());
        }
        let rest = words.next().unwrap_or("").trim_start_matches([' ', '\t']);
        let (name, arg) = rest.split_once([' ', '\t']).unwrap_or((rest, ""));
        if !is_metric_name(name) {
            return Err(format!("{keyword}: {name:?} is not a metric name"));
        }
        let same = self.families.last().is_some_and(|f| f.name == name && f.samples.is_empty());
        if !same {
            self.start(name)?;
        }
        let family = self.families.last_mut().expect("one exists");
        if keyword == "HELP" {
            family.help = unescape(arg, false)?;
        } else {
            family.kind = match arg.trim_matches([' ', '\t']) {
                "counter" => Type::Counter,
                "gauge" => Type::Gauge,
                "histogram" => Type::Histogram,
                "summary" => Type::Summary,
                "untyped" => Type::Untyped,
                other => return Err(format!("TYPE: {other:?} is not a metric type")),
            };
        }
        Ok(())
    }

    fn start(&mut self, name: &'a str) -> Result<(), String> {
        if self.families.iter().any(|f| f.name == name) {
            return Err(format!("{name:?}: a family met twice"));
        }
        if self.families.len() == MAX_FAMILIES {
            return Err(format!("more than {MAX_FAMILIES} families"));
        }
        let kept = (self.keep)(name);
        self.families.push(Family {
            name,
            help: Cow::Borrowed(""),
            kind: Type::Untyped,
            kept,
            samples: Vec::new(),
        });
        Ok(())
    }
}

/// The suffix of a sample named `name`, if it is one of `f`'s.
fn suffix_in<'a>(f: &Family, name: &'a str) -> Option<&'a str> {
    let suffix = name.strip_prefix(f.name)?;
    matches!(
        (f.kind, suffix),
        (_, "") | (Type::Histogram, "_bucket" | "_sum" | "_count") | (Type::Summary, "_sum" | "_count")
    )
    .then_some(suffix)
}

/// `{label="value",...} value [timestamp]`: what follows a sample's name.
fn sample(mut rest: &str) -> Result<(Labels<'_>, f64), String> {
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

/// A Go float as the format writes it: digits, `NaN`, `+Inf`, `-Inf`.
fn parse_value(s: &str) -> Option<f64> {
    match s {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        // Rust also reads "inf" and "infinity" in any case: not the format's.
        _ if s.bytes().any(|b| b.is_ascii_alphabetic() && b != b'e' && b != b'E') => None,
        _ => s.parse().ok(),
    }
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

    fn all(text: &str) -> Result<Vec<Family<'_>>, String> {
        parse(text, |_| true)
    }

    #[test]
    fn families_with_help_type_and_samples() {
        let text = "# HELP a_total Pings, \\\\ and \\n.\n# TYPE a_total counter\n\
                    a_total{type=\"cloud\",source=\"x\\\"y\"} 3 1700000000000\n\
                    # TYPE h histogram\nh_bucket{le=\"0.5\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 0.75\nh_count 2\n\
                    # a comment\n\nloose{a=\"1\",} -Inf\n";
        let f = all(text).unwrap();
        assert_eq!(f.len(), 3);
        assert_eq!((f[0].name, &*f[0].help, f[0].kind), ("a_total", "Pings, \\ and \n.", Type::Counter));
        let want = labels(&[("type", "cloud"), ("source", "x\"y")]);
        assert_eq!(f[0].samples, [Sample { suffix: "", labels: want, value: 3.0 }]);
        assert_eq!((f[1].kind, f[1].samples.len(), f[1].samples[3].suffix), (Type::Histogram, 4, "_count"));
        assert_eq!(f[1].samples[1].labels, labels(&[("le", "+Inf")]));
        assert_eq!(
            (f[2].name, f[2].kind, f[2].samples[0].value),
            ("loose", Type::Untyped, f64::NEG_INFINITY)
        );
        // A family not kept: its samples are not read, not even checked.
        let f = parse("# TYPE go_x gauge\ngo_x{a=\"1} 2\nb 1\n", |n| n != "go_x").unwrap();
        assert_eq!((f[0].kept, f[0].samples.len(), f[1].samples.len()), (false, 0, 1));
    }

    #[test]
    fn malformed_lines_fail_the_whole_text_and_say_where() {
        for (text, why) in [
            ("a 1\n9b 2\n", "line 2: \"9b\" is not a metric name"),
            ("a{b=\"1\" 2\n", "line 1: labels not separated by \",\""),
            ("a{b=\"1} 2\n", "line 1: a label value without its closing quote"),
            ("a{b=1} 2\n", "line 1: a label value without quotes"),
            ("a{b=\"1\",b=\"2\"} 2\n", "line 1: label \"b\" twice"),
            ("a{__name__=\"b\"} 2\n", "line 1: \"__name__\" is a reserved label name"),
            ("a{b=\"\\t\"} 2\n", "line 1: unknown escape \"\\t\""),
            ("a infinity\n", "line 1: \"infinity\" is not a number"),
            ("a 1 2 3\n", "line 1: text after the timestamp"),
            ("a 1 x\n", "line 1: \"x\" is not a timestamp"),
            ("a\n", "line 1: no value"),
            ("# TYPE a gauge\na 1\nb 1\na 2\n", "line 4: \"a\": a family met twice"),
            ("# TYPE a kind\n", "line 1: TYPE: \"kind\" is not a metric type"),
        ] {
            assert_eq!(all(text).unwrap_err(), why, "{text:?}");
        }
    }

    #[test]
    fn sizes_are_bounded() {
        let many: String = (0..=MAX_SAMPLES).map(|i| format!("a{{i=\"{i}\"}} 1\n")).collect();
        assert_eq!(
            all(&many).unwrap_err(),
            format!("line {}: more than {MAX_SAMPLES} samples", MAX_SAMPLES + 1)
        );
        let families: String = (0..=MAX_FAMILIES).map(|i| format!("a{i} 1\n")).collect();
        assert!(all(&families).unwrap_err().ends_with("more than 500 families"));
        let wide: String = (0..=MAX_LABELS).map(|i| format!("l{i}=\"v\",")).collect();
        assert!(all(&format!("a{{{wide}}} 1\n")).unwrap_err().ends_with("more than 16 labels"));
    }
}
