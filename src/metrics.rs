//! Metric families in the `prometheus` crate's model, and the text
//! exposition its `TextEncoder` writes. Collectors build families here with
//! a small builder; nothing in this project formats exposition text.

use prometheus::proto::{Counter, Gauge, LabelPair, Metric, MetricFamily, MetricType};
use prometheus::{Encoder, TextEncoder};

/// Content type of the text format, as Prometheus negotiates it.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
}

/// The families one collector (or the exporter itself) hands over.
#[derive(Default)]
pub struct Families(Vec<MetricFamily>);

impl Families {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts a family; its samples follow through [`Family::sample`].
    pub fn family(&mut self, name: &str, help: &str, kind: Kind) -> Family<'_> {
        let mut f = MetricFamily::default();
        f.set_name(name.to_owned());
        f.set_help(help.to_owned());
        f.set_field_type(match kind {
            Kind::Counter => MetricType::COUNTER,
            Kind::Gauge => MetricType::GAUGE,
        });
        self.0.push(f);
        Family { family: self.0.last_mut().expect("just pushed"), kind }
    }

    /// A family with a single unlabelled sample.
    pub fn single(&mut self, name: &str, help: &str, kind: Kind, value: f64) {
        self.family(name, help, kind).sample(&[], value);
    }

    /// Families built elsewhere (the app's, re-exposed).
    pub fn extend(&mut self, families: impl IntoIterator<Item = MetricFamily>) {
        self.0.extend(families);
    }

    pub fn into_vec(self) -> Vec<MetricFamily> {
        self.0
    }
}

pub struct Family<'a> {
    family: &'a mut MetricFamily,
    kind: Kind,
}

impl Family<'_> {
    pub fn sample(&mut self, labels: &[(&str, &str)], value: f64) -> &mut Self {
        let mut m = Metric::default();
        m.set_label(label_pairs(labels));
        match self.kind {
            Kind::Counter => {
                let mut c = Counter::default();
                c.set_value(value);
                m.set_counter(c);
            }
            Kind::Gauge => {
                let mut g = Gauge::default();
                g.set_value(value);
                m.set_gauge(g);
            }
        }
        self.family.mut_metric().push(m);
        self
    }
}

/// Label pairs in the crate's model, in the order given.
pub fn label_pairs(labels: &[(&str, &str)]) -> Vec<LabelPair> {
    labels
        .iter()
        .map(|(k, v)| {
            let mut l = LabelPair::default();
            l.set_name((*k).to_owned());
            l.set_value((*v).to_owned());
            l
        })
        .collect()
}

/// The text exposition of `families`, in the order given.
pub fn encode(families: &[MetricFamily]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(32 * 1024);
    // Writing into a Vec only fails on a family without samples, which
    // callers drop before (`prometheus::Registry::gather` prunes them).
    if let Err(e) = TextEncoder::new().encode(families, &mut buf) {
        log::error!("encoding metrics: {e}");
    }
    buf
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_encode_with_escaped_labels() {
        let mut f = Families::new();
        f.family("x_total", "Help with \\ and\nnewline.", Kind::Counter)
            .sample(&[("a", "q\"b\\c\nd")], 3.0)
            .sample(&[("a", "e")], 0.25);
        f.single("y", "A gauge.", Kind::Gauge, -2.0);
        let text = String::from_utf8(encode(&f.into_vec())).unwrap();
        assert_eq!(
            text,
            "# HELP x_total Help with \\\\ and\\nnewline.\n# TYPE x_total counter\n\
             x_total{a=\"q\\\"b\\\\c\\nd\"} 3\nx_total{a=\"e\"} 0.25\n\
             # HELP y A gauge.\n# TYPE y gauge\ny -2\n"
        );
    }
}
