//! The Prometheus text exposition format 0.0.4: a writer that keeps each
//! metric family's HELP/TYPE header and samples together and escapes label
//! values. It owns formatting only; what is measured lives in `collectors`.

use std::fmt::Write;

/// Content type of the text format, as Prometheus negotiates it.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
}

/// A buffer of complete metric families.
#[derive(Default)]
pub struct Exposition {
    buf: String,
}

impl Exposition {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts a family. Every family is written whole by one caller, so the
    /// header is never repeated.
    pub fn family(&mut self, name: &str, help: &str, kind: Kind) -> Family<'_> {
        let kind = match kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        };
        let _ = writeln!(self.buf, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.buf, "# TYPE {name} {kind}");
        Family { out: &mut self.buf, name: name.to_owned() }
    }

    /// Shorthand for a family with a single unlabelled sample.
    pub fn single(&mut self, name: &str, help: &str, kind: Kind, value: f64) {
        self.family(name, help, kind).sample(&[], value);
    }

    /// Appends everything another exposition holds.
    pub fn append(&mut self, other: Exposition) {
        self.buf.push_str(&other.buf);
    }

    pub fn as_str(&self) -> &str {
        &self.buf
    }

    pub fn into_string(self) -> String {
        self.buf
    }
}

pub struct Family<'a> {
    out: &'a mut String,
    name: String,
}

impl Family<'_> {
    pub fn sample(&mut self, labels: &[(&str, &str)], value: f64) -> &mut Self {
        self.out.push_str(&self.name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                self.out.push_str(k);
                self.out.push_str("=\"");
                escape_label_into(self.out, v);
                self.out.push('"');
            }
            self.out.push('}');
        }
        self.out.push(' ');
        write_value(self.out, value);
        self.out.push('\n');
        self
    }
}

fn write_value(out: &mut String, v: f64) {
    if v.is_nan() {
        out.push_str("NaN");
    } else if v.is_infinite() {
        out.push_str(if v > 0.0 { "+Inf" } else { "-Inf" });
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        // Integers print without a fraction; Rust's `Display` for f64 never
        // uses an exponent, which the format also accepts.
        let _ = write!(out, "{}", v as i64);
    } else {
        let _ = write!(out, "{v}");
    }
}

fn escape_label_into(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

fn escape_help(h: &str) -> String {
    h.replace('\\', "\\\\").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_family_with_escaped_labels() {
        let mut e = Exposition::new();
        e.family("x_total", "Help with \\ and\nnewline.", Kind::Counter)
            .sample(&[("a", "q\"b\\c\nd")], 3.0)
            .sample(&[], 0.25);
        assert_eq!(
            e.as_str(),
            "# HELP x_total Help with \\\\ and\\nnewline.\n# TYPE x_total counter\n\
             x_total{a=\"q\\\"b\\\\c\\nd\"} 3\nx_total 0.25\n"
        );
    }

    #[test]
    fn special_values() {
        let mut s = String::new();
        for v in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, -2.0, 1e20, 1.5] {
            write_value(&mut s, v);
            s.push(' ');
        }
        assert_eq!(s, "NaN +Inf -Inf -2 100000000000000000000 1.5 ");
    }
}
