//! Metric families in the `prometheus` crate's model, and the text
//! exposition its `TextEncoder` writes. Collectors build families here with
//! a small builder; nothing in this project formats exposition text.
//!
//! A collector's [`Families`] are kept from one scrape to the next: a
//! scrape that finds the same families and label sets as the last one only
//! writes new values into them. Building them afresh allocated a `Metric`
//! and its label strings for every sample, and sorted and freed them all,
//! on every scrape (docs/DESIGN.md, "Why the families are kept between scrapes").
//! Each family also keeps its text, written by `TextEncoder` again only
//! after a value or label set in it changed: most of a scrape's families
//! (sizes, limits, link attributes, idle connections) read the same as
//! last time.

use prometheus::proto::{Counter, Gauge, LabelPair, Metric, MetricFamily, MetricType};
use prometheus::{Encoder, TextEncoder};

/// Content type of the text format, as Prometheus negotiates it.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
}

impl Kind {
    fn metric_type(self) -> MetricType {
        match self {
            Kind::Counter => MetricType::COUNTER,
            Kind::Gauge => MetricType::GAUGE,
        }
    }
}

/// The families one collector hands over, kept between its updates. An
/// update starts with [`Families::begin`], names its families and samples
/// in any order, and ends with [`Families::finish`]: a family or label set
/// the update did not name is gone, a new one is added, and each family's
/// samples are sorted by label values (as `prometheus::Registry` sorts them).
#[derive(Default)]
pub struct Families {
    slots: Vec<Slot>,
    /// Slots named by this update: `slots[..used]`.
    used: usize,
    /// This update's number: a sample already stamped with it was written
    /// twice in one update.
    update: u32,
    /// Whether the last update finished. One that did not (its collector
    /// failed half-way) may have added samples out of order: the next
    /// update sorts and compacts every family.
    finished: bool,
}

/// One family and where its samples were.
struct Slot {
    family: MetricFamily,
    /// Where the update's k-th sample went last time: a sample's label set
    /// is checked there first, so an unchanged update never searches.
    order: Vec<u32>,
    /// For each sample, the update that last wrote it.
    stamps: Vec<u32>,
    /// Samples named by this update.
    emitted: usize,
    /// Whether this update added, moved or repeated a sample: sort and
    /// compact on finish.
    changed: bool,
    /// The family's text as `TextEncoder` wrote it, and whether the family
    /// changed since.
    text: Vec<u8>,
    stale: bool,
}

impl Families {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts an update.
    pub fn begin(&mut self) {
        let unfinished = !std::mem::replace(&mut self.finished, false);
        self.update = self.update.wrapping_add(1);
        self.used = 0;
        for s in &mut self.slots {
            s.emitted = 0;
            s.changed = unfinished;
        }
    }

    /// Ends an update: what it did not name goes, and moved or new samples
    /// are sorted. Only after a finished update are the families whole.
    pub fn finish(&mut self) {
        self.slots.truncate(self.used);
        for s in &mut self.slots {
            if s.changed || s.emitted != s.family.get_metric().len() {
                s.compact(self.update);
            }
        }
        self.finished = true;
    }

    /// The families of the last finished update.
    pub fn iter(&self) -> impl Iterator<Item = &MetricFamily> {
        self.slots[..self.used].iter().map(|s| &s.family)
    }

    /// The families of the last finished update with their text, written
    /// again for those that changed. A family without samples has none.
    pub fn encoded(&mut self) -> impl Iterator<Item = (&MetricFamily, &[u8])> {
        let encoder = TextEncoder::new();
        self.slots[..self.used].iter_mut().map(move |s| {
            if s.stale {
                s.text.clear();
                if !s.family.get_metric().is_empty() {
                    if let Err(e) = encoder.encode(std::slice::from_ref(&s.family), &mut s.text) {
                        log::error!("encoding metrics: {e}");
                        s.text.clear();
                    }
                }
                s.text.shrink_to(s.text.len() * 2);
                s.stale = false;
            }
            (&s.family, &s.text[..])
        })
    }

    /// Starts (or goes on with) a family; its samples follow through
    /// [`Family::sample`].
    pub fn family(&mut self, name: &str, help: &str, kind: Kind) -> Family<'_> {
        let i = self.slot(name);
        let slot = &mut self.slots[i];
        if slot.family.get_field_type() != kind.metric_type() || slot.family.help() != help {
            slot.family.set_help(help.to_owned());
            slot.family.set_field_type(kind.metric_type());
            slot.family.mut_metric().clear();
            slot.order.clear();
            slot.stamps.clear();
            slot.emitted = 0;
            slot.changed = true;
            slot.stale = true;
        }
        Family { slot, kind, update: self.update }
    }

    /// A family with a single unlabelled sample.
    pub fn single(&mut self, name: &str, help: &str, kind: Kind, value: f64) {
        self.family(name, help, kind).sample(&[], value);
    }

    /// Families built elsewhere (the app's, re-exposed): they replace what
    /// the last update had under their names.
    pub fn extend(&mut self, families: impl IntoIterator<Item = MetricFamily>) {
        for mut family in families {
            sort_samples(&mut family);
            let i = self.slot(family.name());
            let slot = &mut self.slots[i];
            // Taken as it is: nothing of it to compact on finish.
            slot.emitted = family.get_metric().len();
            slot.order.clear();
            slot.order.extend(0..slot.emitted as u32);
            slot.stamps.clear();
            slot.stamps.resize(slot.emitted, self.update);
            slot.changed = false;
            if slot.family != family {
                slot.stale = true;
                slot.family = family;
            }
        }
    }

    /// The slot of `name` for this update: where it was last time, moved
    /// into place, or new.
    fn slot(&mut self, name: &str) -> usize {
        let used = self.used;
        if let Some(i) = self.slots[..used].iter().position(|s| s.family.name() == name) {
            return i; // named twice in one update: its samples go on
        }
        let i = match self.slots[used..].iter().position(|s| s.family.name() == name) {
            Some(i) => used + i,
            None => {
                let mut family = MetricFamily::default();
                family.set_name(name.to_owned());
                self.slots.push(Slot {
                    family,
                    order: Vec::new(),
                    stamps: Vec::new(),
                    emitted: 0,
                    changed: true,
                    text: Vec::new(),
                    stale: true,
                });
                self.slots.len() - 1
            }
        };
        self.slots.swap(used, i);
        self.used += 1;
        used
    }
}

impl Slot {
    /// Drops the samples this update did not name and sorts the rest,
    /// keeping `order` pointing at each sample's new place.
    fn compact(&mut self, update: u32) {
        let emitted = &self.order[..self.emitted];
        let mut old: Vec<Option<Metric>> = self.family.take_metric().into_iter().map(Some).collect();
        let mut seen = vec![false; old.len()];
        let mut kept: Vec<u32> = Vec::with_capacity(emitted.len());
        for &i in emitted {
            if !std::mem::replace(&mut seen[i as usize], true) {
                kept.push(i);
            }
        }
        kept.sort_by(|&a, &b| by_labels(old[a as usize].as_ref(), old[b as usize].as_ref()));
        let mut place = vec![0u32; old.len()];
        let mut metrics = Vec::with_capacity(kept.len());
        for (new, &i) in kept.iter().enumerate() {
            place[i as usize] = new as u32;
            metrics.extend(old[i as usize].take());
        }
        self.order.truncate(self.emitted);
        for i in &mut self.order {
            *i = place[*i as usize];
        }
        self.stamps.clear();
        self.stamps.resize(metrics.len(), update);
        self.family.set_metric(metrics);
        self.stale = true;
    }
}

/// A family being written by one update.
pub struct Family<'a> {
    slot: &'a mut Slot,
    kind: Kind,
    update: u32,
}

impl Family<'_> {
    pub fn sample(&mut self, labels: &[(&str, &str)], value: f64) -> &mut Self {
        let slot = &mut *self.slot;
        let k = slot.emitted;
        let metrics = slot.family.mut_metric();
        let hint = slot.order.get(k).map(|&i| i as usize);
        let i = match hint.filter(|&i| metrics.get(i).is_some_and(|m| same_labels(m, labels))) {
            Some(i) => i,
            None => {
                slot.changed = true;
                metrics.iter().position(|m| same_labels(m, labels)).unwrap_or_else(|| {
                    let mut m = Metric::default();
                    m.set_label(label_pairs(labels));
                    metrics.push(m);
                    slot.stamps.push(self.update.wrapping_sub(1));
                    metrics.len() - 1
                })
            }
        };
        // A label set written twice in this update: the family has fewer
        // distinct samples than were written, so finish compacts it.
        if std::mem::replace(&mut slot.stamps[i], self.update) == self.update {
            slot.changed = true;
        }
        let m = &mut metrics[i];
        let old = match self.kind {
            Kind::Counter => m.get_counter().get_value(),
            Kind::Gauge => m.get_gauge().get_value(),
        };
        if old.to_bits() != value.to_bits() || slot.changed {
            slot.stale = true;
            match self.kind {
                Kind::Counter => m.set_counter(counter(value)),
                Kind::Gauge => m.set_gauge(gauge(value)),
            }
        }
        if k < slot.order.len() {
            slot.order[k] = i as u32;
        } else {
            slot.order.push(i as u32);
        }
        slot.emitted += 1;
        self
    }
}

fn counter(value: f64) -> Counter {
    let mut c = Counter::default();
    c.set_value(value);
    c
}

fn gauge(value: f64) -> Gauge {
    let mut g = Gauge::default();
    g.set_value(value);
    g
}

fn same_labels(m: &Metric, labels: &[(&str, &str)]) -> bool {
    let pairs = m.get_label();
    pairs.len() == labels.len()
        && pairs.iter().zip(labels).all(|(p, (k, v))| p.name() == *k && p.value() == *v)
}

/// The order `prometheus::Registry` gives a family's samples: by label
/// values, a shorter label set first.
fn by_labels(a: Option<&Metric>, b: Option<&Metric>) -> std::cmp::Ordering {
    let (a, b) = (a.map(Metric::get_label).unwrap_or_default(), b.map(Metric::get_label).unwrap_or_default());
    a.len().cmp(&b.len()).then_with(|| a.iter().map(LabelPair::value).cmp(b.iter().map(LabelPair::value)))
}

fn sort_samples(family: &mut MetricFamily) {
    family.mut_metric().sort_by(|a, b| by_labels(Some(a), Some(b)));
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
    // callers drop before.
    if let Err(e) = TextEncoder::new().encode(families, &mut buf) {
        log::error!("encoding metrics: {e}");
    }
    buf
}

/// The text exposition of families from many owners, as
/// `prometheus::Registry::gather` would order them: by name, families of
/// one name merged, none without samples. Only a merge copies. What the
/// kept texts are checked against.
#[cfg(test)]
pub fn encode_gathered(families: Vec<&MetricFamily>) -> Vec<u8> {
    let mut buf = Vec::with_capacity(32 * 1024);
    write_gathered(families.into_iter().map(|f| (f, &[][..])).collect(), &mut buf);
    buf
}

/// The text exposition of families from many owners, as
/// `prometheus::Registry::gather` would order them: by name, families of
/// one name merged, none without samples; into `out`. Each family comes
/// with its text (see [`Families::encoded`]); an empty one is written here.
pub fn write_gathered(mut families: Vec<(&MetricFamily, &[u8])>, out: &mut impl std::io::Write) {
    families.retain(|(f, _)| !f.get_metric().is_empty());
    families.sort_by(|a, b| a.0.name().cmp(b.0.name()));
    let encoder = TextEncoder::new();
    for same in families.chunk_by(|a, b| a.0.name() == b.0.name()) {
        let written = match same {
            [(_, text)] if !text.is_empty() => out.write_all(text).map_err(prometheus::Error::from),
            [(one, _)] => encoder.encode(std::slice::from_ref(*one), out),
            _ => {
                let mut merged = same[0].0.clone();
                merged.mut_metric().extend(same[1..].iter().flat_map(|f| f.0.get_metric().iter().cloned()));
                sort_samples(&mut merged);
                encoder.encode(std::slice::from_ref(&merged), out)
            }
        };
        if let Err(e) = written {
            log::error!("encoding metrics: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The exposition from the kept texts, checked against `TextEncoder`
    /// writing the same families afresh.
    fn text(f: &mut Families) -> String {
        let fresh = encode_gathered(f.iter().collect());
        let mut kept = Vec::new();
        write_gathered(f.encoded().collect(), &mut kept);
        assert_eq!(String::from_utf8(kept).unwrap(), String::from_utf8(fresh.clone()).unwrap());
        String::from_utf8(fresh).unwrap()
    }

    #[test]
    fn kept_texts_follow_every_change() {
        let mut f = Families::new();
        let steps: [&[(&str, f64)]; 7] = [
            &[("a", 1.0), ("b", 2.0)],
            &[("a", 1.0), ("b", 2.0)], // unchanged: texts as they were
            &[("a", 1.0), ("b", 2.5)], // a value
            &[("b", 2.5), ("c", 0.0)], // a label set gone, one new
            &[],                       // no samples: no family
            &[("c", f64::NAN), ("a", -0.0)],
            &[("c", f64::NAN), ("a", 0.0)], // the sign of zero is a change
        ];
        for (i, step) in steps.iter().enumerate() {
            update(&mut f, step);
            let t = text(&mut f);
            assert_eq!(t.is_empty(), step.is_empty(), "step {i}: {t}");
        }
        assert!(text(&mut f).contains("x{a=\"a\"} 0\n"));
        // A family's help changing, and families from elsewhere.
        f.begin();
        f.single("x", "Other help.", Kind::Gauge, 1.0);
        f.finish();
        assert!(text(&mut f).contains("Other help."));
        let mut app = MetricFamily::default();
        app.set_name("z".into());
        app.set_help("Z.".into());
        app.set_field_type(MetricType::GAUGE);
        let mut m = Metric::default();
        m.set_gauge(gauge(1.0));
        app.mut_metric().push(m);
        for value in [1.0, 1.0, 7.0] {
            app.mut_metric()[0].set_gauge(gauge(value));
            f.begin();
            f.extend([app.clone()]);
            f.finish();
            assert!(text(&mut f).ends_with(&format!("z {value}\n")));
        }
    }

    /// One update of `f` with `samples` in family `x`.
    fn update(f: &mut Families, samples: &[(&str, f64)]) {
        f.begin();
        let mut x = f.family("x", "X.", Kind::Gauge);
        for (v, n) in samples {
            x.sample(&[("a", v)], *n);
        }
        f.finish();
    }

    #[test]
    fn families_encode_with_escaped_labels() {
        let mut f = Families::new();
        f.begin();
        f.single("y", "A gauge.", Kind::Gauge, -2.0);
        f.family("x_total", "Help with \\ and\nnewline.", Kind::Counter)
            .sample(&[("a", "q\"b\\c\nd")], 3.0)
            .sample(&[("a", "e")], 0.25);
        f.finish();
        assert_eq!(
            text(&mut f),
            "# HELP x_total Help with \\\\ and\\nnewline.\n# TYPE x_total counter\n\
             x_total{a=\"e\"} 0.25\nx_total{a=\"q\\\"b\\\\c\\nd\"} 3\n\
             # HELP y A gauge.\n# TYPE y gauge\ny -2\n"
        );
    }

    #[test]
    fn an_unchanged_update_only_writes_values() {
        let mut f = Families::new();
        update(&mut f, &[("b", 1.0), ("a", 2.0)]);
        let before: Vec<*const Metric> =
            f.iter().next().unwrap().get_metric().iter().map(|m| m as *const _).collect();
        update(&mut f, &[("b", 3.0), ("a", 4.0)]);
        let after: Vec<*const Metric> =
            f.iter().next().unwrap().get_metric().iter().map(|m| m as *const _).collect();
        assert_eq!(before, after, "the same metrics, not new ones");
        assert!(!f.slots[0].changed);
        assert_eq!(text(&mut f), "# HELP x X.\n# TYPE x gauge\nx{a=\"a\"} 4\nx{a=\"b\"} 3\n");
    }

    #[test]
    fn a_new_label_set_extends_and_a_vanished_one_leaves() {
        let mut f = Families::new();
        update(&mut f, &[("b", 1.0), ("a", 2.0)]);
        update(&mut f, &[("c", 5.0), ("a", 6.0)]);
        assert_eq!(text(&mut f), "# HELP x X.\n# TYPE x gauge\nx{a=\"a\"} 6\nx{a=\"c\"} 5\n");
        // The order of this update is remembered: the next one is exact.
        update(&mut f, &[("c", 7.0), ("a", 8.0)]);
        assert!(!f.slots[0].changed);
        assert_eq!(text(&mut f), "# HELP x X.\n# TYPE x gauge\nx{a=\"a\"} 8\nx{a=\"c\"} 7\n");
        update(&mut f, &[]);
        assert_eq!(text(&mut f), "", "a family without samples is not written");
    }

    #[test]
    fn a_family_not_named_leaves_and_one_named_twice_goes_on() {
        let mut f = Families::new();
        f.begin();
        f.single("b", "B.", Kind::Gauge, 1.0);
        f.single("a", "A.", Kind::Counter, 2.0);
        f.finish();
        f.begin();
        f.family("a", "A.", Kind::Counter).sample(&[("l", "1")], 3.0);
        f.family("a", "A.", Kind::Counter).sample(&[("l", "0")], 4.0);
        f.finish();
        assert_eq!(text(&mut f), "# HELP a A.\n# TYPE a counter\na{l=\"0\"} 4\na{l=\"1\"} 3\n");
        // A family whose type changed starts again.
        f.begin();
        f.single("a", "A.", Kind::Gauge, 5.0);
        f.finish();
        assert_eq!(text(&mut f), "# HELP a A.\n# TYPE a gauge\na 5\n");
    }

    #[test]
    fn families_of_one_name_from_two_owners_are_merged() {
        let (mut one, mut two) = (Families::new(), Families::new());
        update(&mut one, &[("z", 1.0)]);
        update(&mut two, &[("m", 2.0)]);
        two.begin();
        two.family("x", "X.", Kind::Gauge).sample(&[("a", "m")], 2.0);
        two.single("w", "W.", Kind::Gauge, 0.5);
        two.finish();
        let all = encode_gathered(one.iter().chain(two.iter()).collect());
        assert_eq!(
            String::from_utf8(all).unwrap(),
            "# HELP w W.\n# TYPE w gauge\nw 0.5\n# HELP x X.\n# TYPE x gauge\nx{a=\"m\"} 2\nx{a=\"z\"} 1\n"
        );
    }

    #[test]
    fn an_update_that_did_not_finish_is_sorted_and_compacted_by_the_next() {
        let mut f = Families::new();
        update(&mut f, &[("a", 1.0), ("c", 3.0)]);
        // A collector fails half-way: a sample added at the end, one of
        // another family, and no finish.
        f.begin();
        f.family("x", "X.", Kind::Gauge).sample(&[("a", "a")], 1.0).sample(&[("a", "b")], 2.0);
        f.single("z", "Z.", Kind::Gauge, 9.0);
        update(&mut f, &[("a", 4.0), ("b", 5.0), ("c", 6.0)]);
        assert_eq!(text(&mut f), "# HELP x X.\n# TYPE x gauge\nx{a=\"a\"} 4\nx{a=\"b\"} 5\nx{a=\"c\"} 6\n");
    }

    #[test]
    fn a_label_set_written_twice_leaves_no_stale_sample() {
        let mut f = Families::new();
        update(&mut f, &[("a", 1.0), ("a", 2.0), ("b", 3.0)]);
        assert_eq!(text(&mut f), "# HELP x X.\n# TYPE x gauge\nx{a=\"a\"} 2\nx{a=\"b\"} 3\n");
        update(&mut f, &[("a", 4.0), ("a", 5.0)]);
        assert_eq!(text(&mut f), "# HELP x X.\n# TYPE x gauge\nx{a=\"a\"} 5\n");
    }

    #[test]
    fn families_from_elsewhere_replace_their_names() {
        let mut f = Families::new();
        update(&mut f, &[("a", 1.0)]);
        let mut other = Families::new();
        update(&mut other, &[("q", 3.0), ("p", 2.0)]);
        let given: Vec<MetricFamily> = other.iter().cloned().collect();
        f.begin();
        f.extend(given);
        f.finish();
        assert_eq!(text(&mut f), "# HELP x X.\n# TYPE x gauge\nx{a=\"p\"} 2\nx{a=\"q\"} 3\n");
    }
}
