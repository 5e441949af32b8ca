//! What of the app's exposition is re-exposed, and how, merged line by
//! line as the answer arrives: only the app's own families (by prefix), its
//! build info renamed, and the per-client `source` label (a client's
//! address: unbounded) merged away as each type allows. So every bound
//! counts merged series, never clients. A family that cannot be merged
//! right, or outgrows a bound, is dropped alone and named; the rest is
//! re-exposed. A line that is not the text format fails the whole answer:
//! nothing half-read is exported. The result is the `prometheus` crate's
//! model, which the daemon's own exposition encodes.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;

use prometheus::proto::{
    Bucket, Counter, Gauge, Histogram, Metric, MetricFamily, MetricType, Quantile, Summary,
};

use super::exposition::{self, suffix_in, Labels, Line, Type};

/// The app's own families: cloud link, sessions, time sync, DC power.
/// Never its Go runtime's (`go_*`, `process_*`, `promhttp_*`).
pub const PREFIXES: [&str; 4] = ["jetkvm_cloud_", "jetkvm_connection_", "jetkvm_timesync_", "jetkvm_dc_"];

/// The app's build info, and the name it is re-exposed under (the daemon
/// has a build info of its own).
const BUILD_INFO: (&str, &str) = ("jetkvm_build_info", "jetkvm_app_build_info");

/// The label merged away.
const SOURCE: &str = "source";

/// Families met in one answer, kept or not.
pub const MAX_FAMILIES: usize = 500;
/// Merged series of all the kept families.
pub const MAX_SERIES: usize = 1000;
/// Lines the merged families write (each bucket, sum and count one).
pub const MAX_SAMPLES: usize = 5000;
/// Bucket bounds of one histogram; quantiles of one summary.
pub const MAX_BUCKETS: usize = 64;
pub const MAX_QUANTILES: usize = 16;
/// Bytes kept of the answer: names, help texts and label sets.
pub const MAX_KEPT_BYTES: usize = 256 * 1024;
/// The longest name or help text kept.
const MAX_NAME: usize = 256;
const MAX_HELP: usize = 1024;

/// Whether a family of the app's is re-exposed (under its name, or renamed).
pub fn kept(name: &str) -> bool {
    name == BUILD_INFO.0 || PREFIXES.iter().any(|p| name.starts_with(p))
}

/// What an answer gave: the families re-exposed, and those dropped, each
/// with why.
#[derive(Debug, Default)]
pub struct Merged {
    pub families: Vec<MetricFamily>,
    pub dropped: Vec<(String, String)>,
}

/// One answer being read.
pub struct Merger {
    families: Vec<Fam>,
    /// What the kept families hold, against the bounds.
    series: usize,
    bytes: usize,
    hasher: RandomState,
}

/// A family met: every one is remembered (by name and type, to place the
/// lines after it); only a kept one holds its samples, merged.
struct Fam {
    name: String,
    help: String,
    kind: Type,
    kept: bool,
    /// Whether a sample was read: a HELP or TYPE after one starts another.
    sampled: bool,
    dropped: Option<String>,
    groups: Vec<Group>,
    /// Groups by the hash of their labels.
    index: HashMap<u64, Vec<usize>>,
    bytes: usize,
}

/// One merged series: its labels (sorted, `source` and empty ones left
/// out) and what was added up.
struct Group {
    labels: Vec<(String, String)>,
    acc: Acc,
}

enum Acc {
    Value(f64),
    Hist(Hist),
    Summary(Summed),
}

/// A merged histogram: each bound's cumulative count and how many series
/// gave it (the +Inf bucket is left to the encoder, which writes it from
/// the count), the sum, the count, and how many series gave a count.
#[derive(Default)]
struct Hist {
    buckets: Vec<(f64, u64, usize)>,
    sum: f64,
    count: u64,
    series: usize,
}

/// A merged summary: its quantiles (kept only for a series that had no
/// other to merge with), sum, count, series, and whether a quantile came
/// twice.
#[derive(Default)]
struct Summed {
    quantiles: Vec<(f64, f64)>,
    sum: f64,
    count: u64,
    series: usize,
    twice: bool,
}

impl Default for Merger {
    fn default() -> Self {
        Merger { families: Vec::new(), series: 0, bytes: 0, hasher: RandomState::new() }
    }
}

impl Merger {
    /// Reads one line (without its newline).
    pub fn feed(&mut self, line: &str) -> Result<(), String> {
        match exposition::line(line)? {
            Line::Nothing => Ok(()),
            Line::Help(name, help) => {
                self.for_comment(name)?;
                let f = self.families.last_mut().expect("one exists");
                if f.kept && f.dropped.is_none() {
                    let mut budget = Budget { series: &mut self.series, bytes: &mut self.bytes };
                    if let Err(why) = f.set_help(&help, &mut budget) {
                        f.drop_for(why, &mut budget);
                    }
                }
                Ok(())
            }
            Line::Type(name, kind) => {
                self.for_comment(name)?.kind = kind;
                Ok(())
            }
            Line::Sample(name, rest) => self.sample(name, rest),
        }
    }

    /// The family a HELP or TYPE line speaks of: the last one, if it has
    /// that name and no sample yet; else a new one.
    fn for_comment(&mut self, name: &str) -> Result<&mut Fam, String> {
        let same = self.families.last().is_some_and(|f| f.name == name && !f.sampled);
        if !same {
            self.start(name)?;
        }
        Ok(self.families.last_mut().expect("one exists"))
    }

    fn start(&mut self, name: &str) -> Result<(), String> {
        if name.len() > MAX_NAME {
            return Err(format!("a name over {MAX_NAME} bytes"));
        }
        if self.families.iter().any(|f| f.name == name) {
            return Err(format!("{name:?}: a family met twice"));
        }
        if self.families.len() == MAX_FAMILIES {
            return Err(format!("more than {MAX_FAMILIES} families"));
        }
        self.families.push(Fam {
            name: name.to_owned(),
            help: String::new(),
            kind: Type::Untyped,
            kept: kept(name),
            sampled: false,
            dropped: None,
            groups: Vec::new(),
            index: HashMap::new(),
            bytes: 0,
        });
        Ok(())
    }

    fn sample(&mut self, name: &str, rest: &str) -> Result<(), String> {
        let suffix = match self.families.last().and_then(|f| suffix_in(&f.name, f.kind, name)) {
            Some(s) => s,
            None => {
                // A sample with no `# TYPE` before it is a family of its own.
                self.start(name)?;
                ""
            }
        };
        let f = self.families.last_mut().expect("one exists");
        f.sampled = true;
        if !f.kept || f.dropped.is_some() {
            return Ok(());
        }
        let (labels, value) = exposition::sample(rest)?;
        let mut budget = Budget { series: &mut self.series, bytes: &mut self.bytes };
        if let Err(why) = f.add(suffix, &labels, value, &self.hasher, &mut budget) {
            f.drop_for(why, &mut budget);
        }
        Ok(())
    }

    /// The answer read: each kept family built, those that cannot be, or
    /// collide with another's names, or outgrow the lines allowed, dropped.
    pub fn finish(self) -> Merged {
        let mut out = Merged::default();
        let mut built: Vec<(String, Type, String, Vec<Metric>)> = Vec::new();
        for f in self.families.into_iter().filter(|f| f.kept) {
            let name = if f.name == BUILD_INFO.0 { BUILD_INFO.1.to_owned() } else { f.name.clone() };
            match f.dropped.clone().map_or_else(|| f.build(), Err) {
                Ok(metrics) if metrics.is_empty() => {}
                Ok(metrics) => built.push((name, f.kind, f.help, metrics)),
                Err(why) => out.dropped.push((name, why)),
            }
        }
        let collide = collisions(&built);
        let mut lines = 0;
        for (name, kind, help, metrics) in built {
            let written: usize = metrics.iter().map(|m| lines_of(kind, m)).sum();
            if let Some(other) = collide.get(&name) {
                out.dropped.push((name, format!("its names collide with {other}'s")));
            } else if lines + written > MAX_SAMPLES {
                out.dropped.push((name, format!("{written} lines past the {MAX_SAMPLES} allowed")));
            } else {
                lines += written;
                out.families.push(family(name, kind, help, metrics));
            }
        }
        out
    }
}

/// The kept families' series and bytes, against their bounds.
struct Budget<'a> {
    series: &'a mut usize,
    bytes: &'a mut usize,
}

impl Fam {
    /// Its help text, as a reader of the line it is written on will see
    /// it: cut to [`MAX_HELP`], then no trailing blank. A second one
    /// replaces the first.
    fn set_help(&mut self, help: &str, b: &mut Budget) -> Result<(), String> {
        let mut end = help.len().min(MAX_HELP);
        while !help.is_char_boundary(end) {
            end -= 1;
        }
        let help = help[..end].trim_end_matches([' ', '\t', '\r']);
        let kept = *b.bytes - self.help.len();
        if kept + help.len() > MAX_KEPT_BYTES {
            return Err(format!("its help past the {} KiB kept", MAX_KEPT_BYTES / 1024));
        }
        *b.bytes = kept + help.len();
        self.bytes = self.bytes - self.help.len() + help.len();
        self.help = help.to_owned();
        Ok(())
    }

    /// Adds a sample (its suffix, labels and value) to its merged series.
    fn add(
        &mut self,
        suffix: &str,
        labels: &Labels,
        value: f64,
        hasher: &RandomState,
        b: &mut Budget,
    ) -> Result<(), String> {
        match self.kind {
            Type::Counter => {
                if !(value.is_finite() && value >= 0.0) {
                    return Err(format!("{value} is not a counter's value"));
                }
                if let (Acc::Value(acc), false) =
                    self.entry(key(labels, ""), || Acc::Value(value), hasher, b)?
                {
                    *acc += value;
                    if !acc.is_finite() {
                        return Err("counters whose sum is not finite".into());
                    }
                }
            }
            // Untyped is re-exposed as a gauge: the crate's encoder writes
            // no untyped family. A gauge keeps the highest value: for the
            // app's timestamps the latest, which is what a freshness alert
            // needs; its "reset" marker (-1) loses to any real value, NaN
            // to anything.
            Type::Gauge | Type::Untyped => {
                match self.entry(key(labels, ""), || Acc::Value(value), hasher, b)? {
                    (Acc::Value(acc), false) if acc.is_nan() || value > *acc => *acc = value,
                    _ => {}
                }
            }
            Type::Histogram => {
                let Acc::Hist(h) = self.entry(key(labels, "le"), || Acc::Hist(Hist::default()), hasher, b)?.0
                else {
                    unreachable!("a histogram's groups are histograms")
                };
                h.add(suffix, labels, value)?;
            }
            Type::Summary => {
                let Acc::Summary(s) =
                    self.entry(key(labels, "quantile"), || Acc::Summary(Summed::default()), hasher, b)?.0
                else {
                    unreachable!("a summary's groups are summaries")
                };
                s.add(suffix, labels, value)?;
            }
        }
        Ok(())
    }

    /// The merged series of `key`, and whether it is new; one more past
    /// the bounds is an error (the family is then dropped).
    fn entry(
        &mut self,
        key: Vec<(&str, &str)>,
        new: impl FnOnce() -> Acc,
        hasher: &RandomState,
        b: &mut Budget,
    ) -> Result<(&mut Acc, bool), String> {
        let h = hasher.hash_one(&key);
        let same = |g: &Group| {
            g.labels.len() == key.len() && g.labels.iter().zip(&key).all(|(a, b)| (&*a.0, &*a.1) == *b)
        };
        if let Some(&i) = self.index.get(&h).and_then(|c| c.iter().find(|&&i| same(&self.groups[i]))) {
            return Ok((&mut self.groups[i].acc, false));
        }
        let size: usize = key.iter().map(|(n, v)| n.len() + v.len()).sum();
        if *b.series + 1 > MAX_SERIES {
            return Err(format!("more than {MAX_SERIES} series after merging"));
        }
        if *b.bytes + size > MAX_KEPT_BYTES {
            return Err(format!("labels past the {} KiB kept", MAX_KEPT_BYTES / 1024));
        }
        *b.series += 1;
        *b.bytes += size;
        self.bytes += size;
        self.index.entry(h).or_default().push(self.groups.len());
        let labels = key.iter().map(|(n, v)| ((*n).to_owned(), (*v).to_owned())).collect();
        self.groups.push(Group { labels, acc: new() });
        Ok((&mut self.groups.last_mut().expect("just pushed").acc, true))
    }

    /// Lets the family go, saying why; what it held is given back.
    fn drop_for(&mut self, why: String, b: &mut Budget) {
        *b.series -= self.groups.len();
        *b.bytes -= self.bytes;
        self.groups = Vec::new();
        self.index = HashMap::new();
        self.bytes = 0;
        self.dropped = Some(why);
    }

    /// Its merged series in the crate's model, or why it cannot be one.
    fn build(&self) -> Result<Vec<Metric>, String> {
        self.groups
            .iter()
            .map(|g| {
                let mut m = match &g.acc {
                    Acc::Value(v) if self.kind == Type::Counter => counter(*v),
                    Acc::Value(v) => gauge(*v),
                    Acc::Hist(h) => h.build()?,
                    Acc::Summary(s) => s.build()?,
                };
                let pairs: Vec<(&str, &str)> = g.labels.iter().map(|(n, v)| (&**n, &**v)).collect();
                m.set_label(crate::metrics::label_pairs(&pairs));
                Ok(m)
            })
            .collect()
    }
}

/// The labels that identify a merged series: all but `source` and the one
/// named by `except`, and none with an empty value (which Prometheus reads
/// as no label), sorted by name.
fn key<'a>(labels: &'a Labels, except: &str) -> Vec<(&'a str, &'a str)> {
    let mut k: Vec<(&str, &str)> = labels
        .iter()
        .filter(|(n, v)| *n != SOURCE && *n != except && !v.is_empty())
        .map(|(n, v)| (*n, &**v))
        .collect();
    k.sort_unstable();
    k
}

/// The number in a label (`le`, `quantile`).
fn label_number(labels: &Labels, name: &str) -> Option<f64> {
    labels.iter().find(|(n, _)| *n == name)?.1.parse::<f64>().ok().filter(|b| !b.is_nan())
}

/// A count as the format writes it: a whole, non-negative number.
fn count(suffix: &str, v: f64) -> Result<u64, String> {
    if v >= 0.0 && v.fract() == 0.0 && v < 2f64.powi(53) {
        Ok(v as u64)
    } else {
        Err(format!("{suffix}: {v} is not a count"))
    }
}

/// Adds a count to a sum of counts; past u64, the family is dropped.
fn add_count(acc: &mut u64, n: u64) -> Result<(), String> {
    *acc = acc.checked_add(n).ok_or("counts too large to add")?;
    Ok(())
}

impl Hist {
    fn add(&mut self, suffix: &str, labels: &Labels, value: f64) -> Result<(), String> {
        match suffix {
            "_bucket" => {
                let bound = label_number(labels, "le").ok_or("a bucket without a number in \"le\"")?;
                if bound == f64::INFINITY {
                    return Ok(());
                }
                let n = count(suffix, value)?;
                let full = self.buckets.len() == MAX_BUCKETS;
                match self.buckets.iter_mut().find(|b| b.0 == bound) {
                    Some(b) => {
                        add_count(&mut b.1, n)?;
                        b.2 += 1;
                    }
                    None if full => return Err(format!("more than {MAX_BUCKETS} buckets")),
                    None => self.buckets.push((bound, n, 1)),
                }
            }
            "_sum" => self.sum += value,
            "_count" => {
                add_count(&mut self.count, count(suffix, value)?)?;
                self.series += 1;
            }
            _ => return Err(format!("a histogram's sample {suffix:?}")),
        }
        Ok(())
    }

    /// Sums of cumulative counts are right only when every series has the
    /// same bounds, each counted once per series; and cumulative counts
    /// never fall. A histogram without its count is not one.
    fn build(&self) -> Result<Metric, String> {
        if self.series == 0 {
            return Err("a histogram without _count".into());
        }
        if self.buckets.iter().any(|b| b.2 != self.series) {
            return Err("series with different buckets".into());
        }
        if self.sum.is_nan() {
            return Err("a sum that is not a number".into());
        }
        let mut buckets = self.buckets.clone();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        if buckets.windows(2).any(|w| w[1].1 < w[0].1) || buckets.last().is_some_and(|b| b.1 > self.count) {
            return Err("cumulative counts that fall".into());
        }
        let mut hist = Histogram::default();
        hist.set_sample_count(self.count);
        hist.set_sample_sum(self.sum);
        hist.set_bucket(
            buckets
                .iter()
                .map(|&(bound, n, _)| {
                    let mut b = Bucket::default();
                    b.set_upper_bound(bound);
                    b.set_cumulative_count(n);
                    b
                })
                .collect(),
        );
        let mut m = Metric::default();
        m.set_histogram(hist);
        Ok(m)
    }
}

impl Summed {
    fn add(&mut self, suffix: &str, labels: &Labels, value: f64) -> Result<(), String> {
        match suffix {
            "" => {
                let q = label_number(labels, "quantile")
                    .filter(|q| (0.0..=1.0).contains(q))
                    .ok_or("a quantile without a number from 0 to 1")?;
                // Two series' quantiles: not to be kept, nor told apart;
                // only one series' distinct quantiles count.
                self.twice |= self.quantiles.iter().any(|(seen, _)| *seen == q);
                if !self.twice {
                    if self.quantiles.len() == MAX_QUANTILES {
                        return Err(format!("more than {MAX_QUANTILES} quantiles"));
                    }
                    self.quantiles.push((q, value));
                }
            }
            "_sum" => self.sum += value,
            "_count" => {
                add_count(&mut self.count, count(suffix, value)?)?;
                self.series += 1;
            }
            _ => return Err(format!("a summary's sample {suffix:?}")),
        }
        Ok(())
    }

    /// Sums and counts add up; quantiles do not, so they are kept only for
    /// a series that had no other to merge with.
    fn build(&self) -> Result<Metric, String> {
        if self.series == 0 {
            return Err("a summary without _count".into());
        }
        if self.sum.is_nan() {
            return Err("a sum that is not a number".into());
        }
        let mut summary = Summary::default();
        summary.set_sample_sum(self.sum);
        summary.set_sample_count(self.count);
        if self.series == 1 && !self.twice {
            let mut quantiles = self.quantiles.clone();
            quantiles.sort_by(|a, b| a.0.total_cmp(&b.0));
            summary.set_quantile(
                quantiles
                    .into_iter()
                    .map(|(q, v)| {
                        let mut quantile = Quantile::default();
                        quantile.set_quantile(q);
                        quantile.set_value(v);
                        quantile
                    })
                    .collect(),
            );
        }
        let mut m = Metric::default();
        m.set_summary(summary);
        Ok(m)
    }
}

/// The names a family writes: its own, and its histogram's or summary's
/// suffixed ones.
fn names_of(name: &str, kind: Type) -> Vec<String> {
    let suffixes: &[&str] = match kind {
        Type::Histogram => &["", "_bucket", "_sum", "_count"],
        Type::Summary => &["", "_sum", "_count"],
        _ => &[""],
    };
    suffixes.iter().map(|s| format!("{name}{s}")).collect()
}

/// Each family whose names another family also writes (a gauge `x_count`
/// beside a histogram `x`), with one of those others: both are dropped, as
/// their lines could not be told apart.
fn collisions(built: &[(String, Type, String, Vec<Metric>)]) -> HashMap<String, String> {
    let mut writer: HashMap<String, &str> = HashMap::new();
    let mut out = HashMap::new();
    for (name, kind, _, _) in built {
        for written in names_of(name, *kind) {
            if let Some(other) = writer.insert(written, name) {
                out.insert(name.clone(), other.to_owned());
                out.insert(other.to_owned(), name.clone());
            }
        }
    }
    out
}

/// The lines a merged series writes.
fn lines_of(kind: Type, m: &Metric) -> usize {
    match kind {
        Type::Histogram => m.get_histogram().get_bucket().len() + 3,
        Type::Summary => m.get_summary().get_quantile().len() + 2,
        _ => 1,
    }
}

fn family(name: String, kind: Type, help: String, metrics: Vec<Metric>) -> MetricFamily {
    let mut mf = MetricFamily::default();
    mf.set_name(name);
    mf.set_help(help);
    mf.set_field_type(match kind {
        Type::Counter => MetricType::COUNTER,
        Type::Histogram => MetricType::HISTOGRAM,
        Type::Summary => MetricType::SUMMARY,
        Type::Gauge | Type::Untyped => MetricType::GAUGE,
    });
    mf.set_metric(metrics);
    mf
}

fn counter(v: f64) -> Metric {
    let mut c = Counter::default();
    c.set_value(v);
    let mut m = Metric::default();
    m.set_counter(c);
    m
}

fn gauge(v: f64) -> Metric {
    let mut g = Gauge::default();
    g.set_value(v);
    let mut m = Metric::default();
    m.set_gauge(g);
    m
}

/// A whole text merged, as the bridge reads an answer: for tests and
/// fuzzing.
pub fn merge_text(text: &str) -> Result<Merged, String> {
    let mut m = Merger::default();
    for (i, line) in text.split('\n').enumerate() {
        m.feed(line).map_err(|e| format!("line {}: {e}", i + 1))?;
    }
    Ok(m.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(merged: &Merged) -> String {
        crate::metrics::encode(&merged.families).into_iter().map(char::from).collect()
    }

    fn merged(t: &str) -> Merged {
        merge_text(t).unwrap()
    }

    fn dropped(m: &Merged) -> Vec<(&str, &str)> {
        m.dropped.iter().map(|(n, w)| (n.as_str(), w.as_str())).collect()
    }

    #[test]
    fn only_the_apps_families_and_its_build_info_renamed() {
        let t = "# TYPE go_goroutines gauge\ngo_goroutines 9\n# TYPE jetkvm_build_info gauge\n\
                 jetkvm_build_info{version=\"0.4.8\"} 1\n# TYPE promhttp_metric_handler_requests_total counter\n\
                 promhttp_metric_handler_requests_total{code=\"200\"} 3\n# TYPE jetkvm_timesync_status gauge\n\
                 jetkvm_timesync_status 1\n# TYPE jetkvm_other gauge\njetkvm_other 1\n";
        assert_eq!(
            text(&merged(t)),
            "# TYPE jetkvm_app_build_info gauge\njetkvm_app_build_info{version=\"0.4.8\"} 1\n\
             # TYPE jetkvm_timesync_status gauge\njetkvm_timesync_status 1\n"
        );
    }

    #[test]
    fn counters_add_gauges_keep_the_highest_without_source_or_empty_labels() {
        let t = "# HELP jetkvm_connection_ping_sent_total Pings.\n# TYPE jetkvm_connection_ping_sent_total counter\n\
                 jetkvm_connection_ping_sent_total{type=\"local\",source=\"10.0.0.2\"} 3\n\
                 jetkvm_connection_ping_sent_total{type=\"local\",source=\"10.0.0.3\"} 4\n\
                 jetkvm_connection_ping_sent_total{type=\"cloud\",source=\"api.jetkvm.com\"} 5\n\
                 jetkvm_connection_ping_sent_total{type=\"cloud\",source=\"\",zone=\"\"} 1\n\
                 # TYPE jetkvm_connection_last_ping_timestamp_seconds gauge\n\
                 jetkvm_connection_last_ping_timestamp_seconds{type=\"local\",source=\"10.0.0.2\"} 1700000100\n\
                 jetkvm_connection_last_ping_timestamp_seconds{type=\"local\",source=\"10.0.0.3\"} -1\n";
        assert_eq!(
            text(&merged(t)),
            "# HELP jetkvm_connection_ping_sent_total Pings.\n# TYPE jetkvm_connection_ping_sent_total counter\n\
             jetkvm_connection_ping_sent_total{type=\"local\"} 7\njetkvm_connection_ping_sent_total{type=\"cloud\"} 6\n\
             # TYPE jetkvm_connection_last_ping_timestamp_seconds gauge\n\
             jetkvm_connection_last_ping_timestamp_seconds{type=\"local\"} 1700000100\n"
        );
    }

    #[test]
    fn histograms_add_bucket_by_bucket_and_summaries_drop_merged_quantiles() {
        let h = |src: &str, a: u32, b: u32| {
            format!(
                "jetkvm_connection_ping_duration_seconds_bucket{{type=\"local\",source=\"{src}\",le=\"0.1\"}} {a}\n\
                 jetkvm_connection_ping_duration_seconds_bucket{{type=\"local\",source=\"{src}\",le=\"+Inf\"}} {b}\n\
                 jetkvm_connection_ping_duration_seconds_sum{{type=\"local\",source=\"{src}\"}} 0.5\n\
                 jetkvm_connection_ping_duration_seconds_count{{type=\"local\",source=\"{src}\"}} {b}\n"
            )
        };
        let t = format!(
            "# TYPE jetkvm_connection_ping_duration_seconds histogram\n{}{}\
             # TYPE jetkvm_dc_s summary\njetkvm_dc_s{{source=\"a\",quantile=\"0.5\"}} 2\njetkvm_dc_s_sum{{source=\"a\"}} 4\n\
             jetkvm_dc_s_count{{source=\"a\"}} 2\njetkvm_dc_s_sum{{source=\"b\"}} 1\njetkvm_dc_s_count{{source=\"b\"}} 1\n\
             # TYPE jetkvm_dc_one summary\njetkvm_dc_one{{quantile=\"0.9\"}} 3\njetkvm_dc_one_sum 3\njetkvm_dc_one_count 1\n",
            h("a", 1, 2),
            h("b", 3, 5)
        );
        assert_eq!(
            text(&merged(&t)),
            "# TYPE jetkvm_connection_ping_duration_seconds histogram\n\
             jetkvm_connection_ping_duration_seconds_bucket{type=\"local\",le=\"0.1\"} 4\n\
             jetkvm_connection_ping_duration_seconds_bucket{type=\"local\",le=\"+Inf\"} 7\n\
             jetkvm_connection_ping_duration_seconds_sum{type=\"local\"} 1\n\
             jetkvm_connection_ping_duration_seconds_count{type=\"local\"} 7\n\
             # TYPE jetkvm_dc_s summary\njetkvm_dc_s_sum 5\njetkvm_dc_s_count 3\n\
             # TYPE jetkvm_dc_one summary\njetkvm_dc_one{quantile=\"0.9\"} 3\njetkvm_dc_one_sum 3\njetkvm_dc_one_count 1\n"
        );
    }

    /// 10,000 clients of the app (IPv6 temporary addresses get there
    /// alone): each limit counts merged series, so all of it comes through.
    #[test]
    fn ten_thousand_sources_merge_into_a_few_series() {
        let mut t = String::from("# TYPE jetkvm_connection_ping_sent_total counter\n");
        for i in 0..10_000 {
            t += &format!("jetkvm_connection_ping_sent_total{{type=\"local\",source=\"fd00::{i:x}\"}} 2\n");
        }
        t += "# TYPE jetkvm_connection_ping_duration_seconds histogram\n";
        for i in 0..10_000 {
            let s = format!("type=\"local\",source=\"fd00::{i:x}\"");
            t += &format!(
                "jetkvm_connection_ping_duration_seconds_bucket{{{s},le=\"0.1\"}} 1\n\
                 jetkvm_connection_ping_duration_seconds_bucket{{{s},le=\"+Inf\"}} 1\n\
                 jetkvm_connection_ping_duration_seconds_sum{{{s}}} 0.05\n\
                 jetkvm_connection_ping_duration_seconds_count{{{s}}} 1\n"
            );
        }
        t += "# TYPE jetkvm_dc_power_watts gauge\njetkvm_dc_power_watts 12.5\n";
        let m = merged(&t);
        assert!(m.dropped.is_empty(), "{:?}", m.dropped);
        let out = text(&m);
        assert!(out.contains("jetkvm_connection_ping_sent_total{type=\"local\"} 20000\n"), "{out}");
        assert!(
            out.contains("jetkvm_connection_ping_duration_seconds_count{type=\"local\"} 10000\n"),
            "{out}"
        );
        assert!(out.contains("jetkvm_dc_power_watts 12.5\n"), "{out}");
    }

    /// Past a bound, or not mergeable: that family alone is dropped, and
    /// named with why; the rest comes through.
    #[test]
    fn a_family_past_a_bound_or_not_mergeable_is_dropped_alone() {
        let good = "# TYPE jetkvm_timesync_status gauge\njetkvm_timesync_status 1\n";
        let many: String = (0..=MAX_SERIES).map(|i| format!("jetkvm_dc_x{{i=\"{i}\"}} 1\n")).collect();
        let buckets: String =
            (0..=MAX_BUCKETS).map(|i| format!("jetkvm_dc_h_bucket{{le=\"{i}\"}} {i}\n")).collect();
        for (hostile, why) in [
            (many, "more than 1000 series after merging"),
            (format!("# TYPE jetkvm_dc_h histogram\n{buckets}jetkvm_dc_h_count 99\n"), "more than 64 buckets"),
            (
                "# TYPE jetkvm_dc_h histogram\njetkvm_dc_h_bucket{source=\"a\",le=\"1\"} 1\njetkvm_dc_h_count{source=\"a\"} 1\n\
                 jetkvm_dc_h_bucket{source=\"b\",le=\"2\"} 1\njetkvm_dc_h_count{source=\"b\"} 1\n"
                    .into(),
                "series with different buckets",
            ),
            (
                "# TYPE jetkvm_dc_h histogram\njetkvm_dc_h_bucket{le=\"1\"} 5\njetkvm_dc_h_bucket{le=\"2\"} 3\njetkvm_dc_h_count 5\n".into(),
                "cumulative counts that fall",
            ),
            ("# TYPE jetkvm_dc_h histogram\njetkvm_dc_h_bucket{le=\"1\"} -1\njetkvm_dc_h_count 1\n".into(), "_bucket: -1 is not a count"),
            ("# TYPE jetkvm_dc_h histogram\njetkvm_dc_h_sum 3\n".into(), "a histogram without _count"),
            ("# TYPE jetkvm_dc_s summary\njetkvm_dc_s{quantile=\"0.5\"} 1\n".into(), "a summary without _count"),
            ("# TYPE jetkvm_dc_s summary\njetkvm_dc_s{quantile=\"2\"} 1\njetkvm_dc_s_count 1\n".into(), "a quantile without a number from 0 to 1"),
            (
                "# TYPE jetkvm_dc_c counter\njetkvm_dc_c{source=\"a\"} +Inf\njetkvm_dc_c{source=\"b\"} -Inf\n".into(),
                "inf is not a counter's value",
            ),
            (
                "# TYPE jetkvm_dc_h histogram\njetkvm_dc_h_sum{source=\"a\"} +Inf\njetkvm_dc_h_count{source=\"a\"} 1\n\
                 jetkvm_dc_h_sum{source=\"b\"} -Inf\njetkvm_dc_h_count{source=\"b\"} 1\n"
                    .into(),
                "a sum that is not a number",
            ),
        ] {
            let m = merged(&format!("{hostile}{good}"));
            let name = m.dropped.first().map(|(n, _)| n.clone()).unwrap_or_default();
            assert_eq!(dropped(&m), [(name.as_str(), why)], "{why}");
            assert_eq!(text(&m), good, "{why}");
        }
        // Counters whose sum leaves the floats; many clients' quantiles
        // (dropped, not counted); a help given twice, counted once.
        let m = merged(
            "# TYPE jetkvm_dc_c counter\njetkvm_dc_c{source=\"a\"} 1e308\njetkvm_dc_c{source=\"b\"} 1e308\n",
        );
        assert_eq!(dropped(&m), [("jetkvm_dc_c", "counters whose sum is not finite")]);
        let clients: String = (0..20)
            .map(|c| {
                (0..3)
                    .map(|q| format!("jetkvm_dc_q{{source=\"{c}\",quantile=\"0.{q}\"}} 1\n"))
                    .collect::<String>()
            })
            .collect();
        let m =
            merged(&format!("# TYPE jetkvm_dc_q summary\n{clients}jetkvm_dc_q_sum 1\njetkvm_dc_q_count 1\n"));
        assert!(m.dropped.is_empty(), "{:?}", m.dropped);
        assert_eq!(text(&m), "# TYPE jetkvm_dc_q summary\njetkvm_dc_q_sum 1\njetkvm_dc_q_count 1\n");
        let help = format!("# HELP jetkvm_dc_h {}\n", "h".repeat(1000)).repeat(400);
        let m = merged(&format!("{help}jetkvm_dc_h 1\n"));
        assert!(m.dropped.is_empty(), "{:?}", m.dropped);
        // Counts whose sum leaves u64.
        let big: String =
            (0..2049).map(|i| format!("jetkvm_dc_h_count{{source=\"{i}\"}} 9007199254740991\n")).collect();
        let m = merged(&format!("# TYPE jetkvm_dc_h histogram\n{big}"));
        assert_eq!(dropped(&m), [("jetkvm_dc_h", "counts too large to add")]);
    }

    /// A histogram `x` beside a gauge `x_count`: their lines could not be
    /// told apart, so neither is re-exposed. Nor lines past the total.
    #[test]
    fn names_that_collide_and_lines_past_the_total_are_dropped() {
        let t = "# TYPE jetkvm_dc_x histogram\njetkvm_dc_x_bucket{le=\"1\"} 1\njetkvm_dc_x_count 1\n\
                 # TYPE jetkvm_dc_x_count gauge\njetkvm_dc_x_count 7\n# TYPE jetkvm_dc_y gauge\njetkvm_dc_y 1\n";
        let m = merged(t);
        assert_eq!(
            dropped(&m),
            [
                ("jetkvm_dc_x", "its names collide with jetkvm_dc_x_count's"),
                ("jetkvm_dc_x_count", "its names collide with jetkvm_dc_x's")
            ]
        );
        assert_eq!(text(&m), "# TYPE jetkvm_dc_y gauge\njetkvm_dc_y 1\n");
        // 800 histograms of 8 buckets (11 lines each): past 5,000 lines,
        // the family that crosses is dropped; the one before stays.
        let mut t = String::from("# TYPE jetkvm_dc_a gauge\njetkvm_dc_a 1\n# TYPE jetkvm_dc_h histogram\n");
        for i in 0..800 {
            for le in 0..8 {
                t += &format!("jetkvm_dc_h_bucket{{i=\"{i}\",le=\"{le}\"}} 1\n");
            }
            t += &format!("jetkvm_dc_h_count{{i=\"{i}\"}} 1\n");
        }
        let m = merged(&t);
        assert_eq!(dropped(&m), [("jetkvm_dc_h", "8800 lines past the 5000 allowed")]);
        assert_eq!(text(&m), "# TYPE jetkvm_dc_a gauge\njetkvm_dc_a 1\n");
    }

    #[test]
    fn what_is_not_the_text_format_fails_the_whole_and_says_where() {
        for (t, why) in [
            ("jetkvm_dc_x 1\n9b 2\n", "line 2: \"9b\" is not a metric name"),
            ("# TYPE a gauge\na 1\nb 1\na 2\n", "line 4: \"a\": a family met twice"),
            ("jetkvm_dc_x{a=\"1} 2\n", "line 1: a label value without its closing quote"),
        ] {
            assert_eq!(merge_text(t).unwrap_err(), why, "{t:?}");
        }
        let long = format!("{} 1\n", "a".repeat(MAX_NAME + 1));
        assert_eq!(merge_text(&long).unwrap_err(), "line 1: a name over 256 bytes");
        let families: String = (0..=MAX_FAMILIES).map(|i| format!("a{i} 1\n")).collect();
        assert!(merge_text(&families).unwrap_err().ends_with("more than 500 families"));
        // A family not kept: its samples are not read, not even checked.
        let m = merged("# TYPE go_x gauge\ngo_x{a=\"1} 2\njetkvm_dc_b 1\n");
        assert_eq!(text(&m), "# TYPE jetkvm_dc_b gauge\njetkvm_dc_b 1\n");
    }
}
