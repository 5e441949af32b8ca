//! What of the app's exposition is re-exposed, and how: only the app's own
//! families (by prefix), its build info renamed, and the per-client
//! `source` label (a client's address: unbounded) merged away as each type
//! allows. The result is the `prometheus` crate's model.

use prometheus::proto::{
    Bucket, Counter, Gauge, Histogram, Metric, MetricFamily, MetricType, Quantile, Summary,
};

use std::borrow::Cow;
use std::collections::HashMap;

use super::exposition::{Family, Sample, Type};

/// The app's own families: cloud link, sessions, time sync, DC power.
/// Never its Go runtime's (`go_*`, `process_*`, `promhttp_*`).
pub const PREFIXES: [&str; 4] = ["jetkvm_cloud_", "jetkvm_connection_", "jetkvm_timesync_", "jetkvm_dc_"];

/// The app's build info, and the name it is re-exposed under (the daemon
/// has a build info of its own).
const BUILD_INFO: (&str, &str) = ("jetkvm_build_info", "jetkvm_app_build_info");

/// The label merged away.
const SOURCE: &str = "source";

/// The most series re-exposed, after merging.
pub const MAX_SERIES: usize = 1000;

/// The families kept, merged. A family whose samples cannot be merged
/// correctly (histograms of different buckets, a negative count) fails the
/// whole: nothing is re-exposed rather than a wrong sum.
pub fn merge(families: Vec<Family>) -> Result<Vec<MetricFamily>, String> {
    let mut out = Vec::new();
    let mut series = 0;
    for f in families.iter().filter(|f| kept(f.name)) {
        let name = if f.name == BUILD_INFO.0 { BUILD_INFO.1 } else { f.name };
        let metrics = match f.kind {
            Type::Counter => plain(f, counter, |acc, v| *acc += v)?,
            // Untyped is re-exposed as a gauge: the crate's encoder writes
            // no untyped family.
            Type::Gauge | Type::Untyped => plain(f, gauge, max_assign)?,
            Type::Histogram => histograms(f)?,
            Type::Summary => summaries(f)?,
        };
        if metrics.is_empty() {
            continue;
        }
        series += metrics.len();
        if series > MAX_SERIES {
            return Err(format!("more than {MAX_SERIES} series"));
        }
        let mut mf = MetricFamily::default();
        mf.set_name(name.to_owned());
        mf.set_help(f.help.clone().into_owned());
        mf.set_field_type(match f.kind {
            Type::Counter => MetricType::COUNTER,
            Type::Histogram => MetricType::HISTOGRAM,
            Type::Summary => MetricType::SUMMARY,
            Type::Gauge | Type::Untyped => MetricType::GAUGE,
        });
        mf.set_metric(metrics);
        out.push(mf);
    }
    Ok(out)
}

/// Whether a family of the app's is re-exposed (under its name, or renamed).
pub fn kept(name: &str) -> bool {
    name == BUILD_INFO.0 || PREFIXES.iter().any(|p| name.starts_with(p))
}

/// A gauge keeps the highest value: for the app's timestamps the latest,
/// which is what a freshness alert needs; its "reset" marker (-1) loses to
/// any real value. NaN loses too.
fn max_assign(acc: &mut f64, v: f64) {
    if acc.is_nan() || v > *acc {
        *acc = v;
    }
}

/// The labels that identify a merged series, borrowed from the text.
type Key<'a> = Vec<(&'a str, &'a str)>;

/// The labels that identify a merged series: all but `source` (and the
/// one named by `except`), sorted by name.
fn key<'a>(labels: &'a [(&'a str, Cow<'a, str>)], except: &str) -> Key<'a> {
    let mut k: Key =
        labels.iter().filter(|(n, _)| *n != SOURCE && *n != except).map(|(n, v)| (*n, &**v)).collect();
    k.sort_unstable();
    k
}

/// Series in order of first appearance, each with its accumulator, found
/// by their labels through an index (thousands of distinct label sets must
/// not cost a scan each).
struct Groups<'a, T> {
    list: Vec<(Key<'a>, T)>,
    index: HashMap<Key<'a>, usize>,
}

impl<'a, T> Groups<'a, T> {
    fn new() -> Self {
        Groups { list: Vec::new(), index: HashMap::new() }
    }

    /// The series of `key`, and whether it was there before; past
    /// [`MAX_SERIES`] in one family, an error.
    fn entry(&mut self, key: Key<'a>, new: impl FnOnce() -> T) -> Result<(&mut T, bool), String> {
        if let Some(&i) = self.index.get(&key) {
            return Ok((&mut self.list[i].1, true));
        }
        if self.list.len() == MAX_SERIES {
            return Err(format!("more than {MAX_SERIES} series"));
        }
        self.index.insert(key.clone(), self.list.len());
        self.list.push((key, new()));
        Ok((&mut self.list.last_mut().expect("just pushed").1, false))
    }
}

/// Adds a count to a sum of counts; past u64, the answer is refused.
fn add(f: &Family, acc: &mut u64, n: u64) -> Result<(), String> {
    *acc = acc.checked_add(n).ok_or_else(|| format!("{}: counts too large to add", f.name))?;
    Ok(())
}

fn plain(f: &Family, make: fn(f64) -> Metric, fold: fn(&mut f64, f64)) -> Result<Vec<Metric>, String> {
    let mut groups = Groups::new();
    for s in f.samples.iter().filter(|s| s.suffix.is_empty()) {
        if let (acc, true) = groups.entry(key(&s.labels, ""), || s.value)? {
            fold(acc, s.value);
        }
    }
    Ok(groups.list.into_iter().map(|(k, v)| labelled(make(v), &k)).collect())
}

/// One merged histogram: its bucket bounds (the +Inf one left to the
/// encoder, which writes it from the count), each bound's cumulative count
/// and how many series added to it, its sum and count.
#[derive(Default)]
struct Hist {
    buckets: Vec<(f64, u64, usize)>,
    sum: f64,
    count: u64,
    series: usize,
}

fn histograms(f: &Family) -> Result<Vec<Metric>, String> {
    let mut groups: Groups<Hist> = Groups::new();
    for s in &f.samples {
        let (h, _) = groups.entry(key(&s.labels, "le"), Hist::default)?;
        match s.suffix {
            "_bucket" => {
                let le = s.labels.iter().find(|(n, _)| *n == "le").map(|(_, v)| &**v);
                let bound = le.and_then(|v| v.parse::<f64>().ok().filter(|b| !b.is_nan()));
                let bound =
                    bound.ok_or_else(|| format!("{}: a bucket without a number in \"le\"", f.name))?;
                if bound == f64::INFINITY {
                    continue;
                }
                let n = count(f, s)?;
                match h.buckets.iter_mut().find(|b| b.0 == bound) {
                    Some(b) => {
                        add(f, &mut b.1, n)?;
                        b.2 += 1;
                    }
                    None => h.buckets.push((bound, n, 1)),
                }
            }
            "_sum" => h.sum += s.value,
            "_count" => {
                add(f, &mut h.count, count(f, s)?)?;
                h.series += 1;
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    for (k, mut h) in groups.list {
        // Sums of cumulative counts are right only when every series has
        // the same bounds: each bound counted once per series. A histogram
        // without its count is not one (no made-up zero).
        if h.series == 0 {
            return Err(format!("{}: a histogram without _count", f.name));
        }
        if h.buckets.iter().any(|b| b.2 != h.series) {
            return Err(format!("{}: series with different buckets", f.name));
        }
        h.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut hist = Histogram::default();
        hist.set_sample_count(h.count);
        hist.set_sample_sum(h.sum);
        hist.set_bucket(
            h.buckets
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
        out.push(labelled(m, &k));
    }
    Ok(out)
}

/// A merged summary: its quantiles, sum, count, how many series, and
/// whether a quantile came twice (two series' quantiles).
type Summed = (Vec<(f64, f64)>, f64, u64, usize, bool);

/// Summaries: sums and counts add up; quantiles do not, so they are kept
/// only for a series that had no other to merge with.
fn summaries(f: &Family) -> Result<Vec<Metric>, String> {
    let mut groups: Groups<Summed> = Groups::new();
    for s in &f.samples {
        let (g, _) = groups.entry(key(&s.labels, "quantile"), Default::default)?;
        match s.suffix {
            "" => {
                let q =
                    s.labels.iter().find(|(n, _)| *n == "quantile").and_then(|(_, v)| v.parse::<f64>().ok());
                let q = q.ok_or_else(|| format!("{}: a quantile without a number", f.name))?;
                // Two series' quantiles: not to be kept, nor told apart.
                g.4 |= g.0.iter().any(|(seen, _)| *seen == q);
                g.0.push((q, s.value));
            }
            "_sum" => g.1 += s.value,
            "_count" => {
                add(f, &mut g.2, count(f, s)?)?;
                g.3 += 1;
            }
            _ => {}
        }
    }
    if groups.list.iter().any(|(_, g)| g.3 == 0) {
        return Err(format!("{}: a summary without _count", f.name));
    }
    Ok(groups
        .list
        .into_iter()
        .map(|(k, (quantiles, sum, n, series, twice))| {
            let mut summary = Summary::default();
            summary.set_sample_sum(sum);
            summary.set_sample_count(n);
            if series == 1 && !twice {
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
            labelled(m, &k)
        })
        .collect())
}

/// A count as the format writes it: a whole, non-negative number.
fn count(f: &Family, s: &Sample) -> Result<u64, String> {
    let v = s.value;
    if v >= 0.0 && v.fract() == 0.0 && v < 2f64.powi(53) {
        Ok(v as u64)
    } else {
        Err(format!("{}{}: {v} is not a count", f.name, s.suffix))
    }
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

fn labelled(mut m: Metric, labels: &[(&str, &str)]) -> Metric {
    m.set_label(crate::metrics::label_pairs(labels));
    m
}

#[cfg(test)]
mod tests {
    use super::super::exposition::parse;
    use super::*;

    fn text(families: Vec<MetricFamily>) -> String {
        crate::metrics::encode(&families).into_iter().map(char::from).collect()
    }

    #[test]
    fn only_the_apps_families_and_its_build_info_renamed() {
        let t = "# TYPE go_goroutines gauge\ngo_goroutines 9\n# TYPE jetkvm_build_info gauge\n\
                 jetkvm_build_info{version=\"0.4.8\"} 1\n# TYPE promhttp_metric_handler_requests_total counter\n\
                 promhttp_metric_handler_requests_total{code=\"200\"} 3\n# TYPE jetkvm_timesync_status gauge\n\
                 jetkvm_timesync_status 1\n# TYPE jetkvm_other gauge\njetkvm_other 1\n";
        assert_eq!(
            text(merge(parse(t, |_| true).unwrap()).unwrap()),
            "# TYPE jetkvm_app_build_info gauge\njetkvm_app_build_info{version=\"0.4.8\"} 1\n\
             # TYPE jetkvm_timesync_status gauge\njetkvm_timesync_status 1\n"
        );
    }

    #[test]
    fn counters_add_gauges_keep_the_highest_without_source() {
        let t = "# HELP jetkvm_connection_ping_sent_total Pings.\n# TYPE jetkvm_connection_ping_sent_total counter\n\
                 jetkvm_connection_ping_sent_total{type=\"local\",source=\"10.0.0.2\"} 3\n\
                 jetkvm_connection_ping_sent_total{type=\"local\",source=\"10.0.0.3\"} 4\n\
                 jetkvm_connection_ping_sent_total{type=\"cloud\",source=\"api.jetkvm.com\"} 5\n\
                 # TYPE jetkvm_connection_last_ping_timestamp_seconds gauge\n\
                 jetkvm_connection_last_ping_timestamp_seconds{type=\"local\",source=\"10.0.0.2\"} 1700000100\n\
                 jetkvm_connection_last_ping_timestamp_seconds{type=\"local\",source=\"10.0.0.3\"} -1\n";
        assert_eq!(
            text(merge(parse(t, |_| true).unwrap()).unwrap()),
            "# HELP jetkvm_connection_ping_sent_total Pings.\n# TYPE jetkvm_connection_ping_sent_total counter\n\
             jetkvm_connection_ping_sent_total{type=\"local\"} 7\njetkvm_connection_ping_sent_total{type=\"cloud\"} 5\n\
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
            text(merge(parse(&t, |_| true).unwrap()).unwrap()),
            "# TYPE jetkvm_connection_ping_duration_seconds histogram\n\
             jetkvm_connection_ping_duration_seconds_bucket{type=\"local\",le=\"0.1\"} 4\n\
             jetkvm_connection_ping_duration_seconds_bucket{type=\"local\",le=\"+Inf\"} 7\n\
             jetkvm_connection_ping_duration_seconds_sum{type=\"local\"} 1\n\
             jetkvm_connection_ping_duration_seconds_count{type=\"local\"} 7\n\
             # TYPE jetkvm_dc_s summary\njetkvm_dc_s_sum 5\njetkvm_dc_s_count 3\n\
             # TYPE jetkvm_dc_one summary\njetkvm_dc_one{quantile=\"0.9\"} 3\njetkvm_dc_one_sum 3\njetkvm_dc_one_count 1\n"
        );
    }

    #[test]
    fn what_cannot_be_merged_fails_the_whole() {
        let t = "# TYPE jetkvm_dc_h histogram\njetkvm_dc_h_bucket{source=\"a\",le=\"1\"} 1\njetkvm_dc_h_count{source=\"a\"} 1\n\
                 jetkvm_dc_h_bucket{source=\"b\",le=\"2\"} 1\njetkvm_dc_h_count{source=\"b\"} 1\n";
        assert_eq!(
            merge(parse(t, |_| true).unwrap()).unwrap_err(),
            "jetkvm_dc_h: series with different buckets"
        );
        let t = "# TYPE jetkvm_dc_h histogram\njetkvm_dc_h_bucket{le=\"1\"} -1\njetkvm_dc_h_count 1\n";
        assert_eq!(merge(parse(t, |_| true).unwrap()).unwrap_err(), "jetkvm_dc_h_bucket: -1 is not a count");
        let many: String = (0..=MAX_SERIES).map(|i| format!("jetkvm_dc_x{{i=\"{i}\"}} 1\n")).collect();
        assert_eq!(merge(parse(&many, |_| true).unwrap()).unwrap_err(), "more than 1000 series");
        // Counts whose sum leaves u64; a histogram or a summary without its count.
        let big: String =
            (0..2049).map(|i| format!("jetkvm_dc_h_count{{source=\"{i}\"}} 9007199254740991\n")).collect();
        let t = format!("# TYPE jetkvm_dc_h histogram\n{big}");
        assert_eq!(merge(parse(&t, |_| true).unwrap()).unwrap_err(), "jetkvm_dc_h: counts too large to add");
        let t = "# TYPE jetkvm_dc_h histogram\njetkvm_dc_h_sum 3\n";
        assert_eq!(
            merge(parse(t, |_| true).unwrap()).unwrap_err(),
            "jetkvm_dc_h: a histogram without _count"
        );
        let t = "# TYPE jetkvm_dc_s summary\njetkvm_dc_s{quantile=\"0.5\"} 1\n";
        assert_eq!(merge(parse(t, |_| true).unwrap()).unwrap_err(), "jetkvm_dc_s: a summary without _count");
    }
}
