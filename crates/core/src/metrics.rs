//! herd's Prometheus endpoint, the format part: herd's own series (built with
//! `prometheus-client`), and the series the instances expose themselves, read in Prometheus'
//! text format and merged into one exposition with `app` and `instance` labels — so one scrape
//! sees every instance of a cluster instead of one at random (docs/metrics.md).
//!
//! It parses what instances send and never trusts it: a line it cannot read is dropped and
//! counted, a label herd sets (`app`, `instance`) that the instance set too is kept as
//! `exported_app` / `exported_instance` (Prometheus' own convention), and a family seen with two
//! types keeps the first.

use std::collections::HashMap;
use std::fmt::Write;

/// The content type of what [`Exposition::finish`] returns.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// One metric family of the merged output: its help, type and samples, in first-seen order.
#[derive(Debug, Default)]
struct Family {
    help: Option<String>,
    kind: Option<String>,
    samples: Vec<String>,
    /// With sums: each series without the `instance` label (`name{app=…,…}`), in first-seen
    /// order, and the sum of its instances' values.
    sums: Vec<(String, f64)>,
    sum_index: HashMap<String, usize>,
}

impl Family {
    /// Whether its samples can be added up across instances: a counter's, or a histogram's
    /// buckets, sum and count. (A summary's quantiles cannot; a gauge's sum rarely means
    /// anything. Both stay per instance.)
    fn summable(&self) -> bool {
        matches!(self.kind.as_deref(), Some("counter" | "histogram"))
    }
}

/// What the instances sent, merged.
#[derive(Debug, Default)]
pub struct Exposition {
    order: Vec<String>,
    families: HashMap<String, Family>,
    /// Counters and histograms summed per app (the `instance` label left out) instead of one
    /// series per instance: `GET /metrics?sum=app`.
    sum: bool,
    /// Lines of the instances' texts that were not valid and were dropped.
    pub dropped_lines: u64,
}

impl Exposition {
    /// An empty exposition; with `sum`, counters and histograms are summed per app.
    pub fn new(sum: bool) -> Self {
        Self {
            sum,
            ..Self::default()
        }
    }

    /// Adds an instance's exposition text, every sample labelled with `labels` (first).
    pub fn add(&mut self, labels: &[(&str, &str)], text: &str) {
        // The families this text declared (by `# TYPE`), to attribute `_total`, `_bucket`…
        let mut declared: HashMap<String, String> = HashMap::new();
        // herd's labels, written once for every sample of this instance (and, for sums,
        // without `instance`).
        let mut prefix = String::new();
        let mut sum_prefix = String::new();
        for (k, v) in labels {
            if !prefix.is_empty() {
                prefix.push(',');
            }
            let _ = write!(prefix, "{k}=\"{}\"", escape(v));
            if *k != "instance" {
                if !sum_prefix.is_empty() {
                    sum_prefix.push(',');
                }
                let _ = write!(sum_prefix, "{k}=\"{}\"", escape(v));
            }
        }
        for line in text.lines() {
            let line = line.trim_end_matches('\r');
            if line.trim().is_empty() {
                continue;
            }
            if let Some(rest) = line.strip_prefix('#') {
                self.comment(rest, &mut declared);
                continue;
            }
            match relabel(line, labels, &prefix) {
                Some((name, sample)) => {
                    let family = family_of(&name, &declared);
                    let sum = self.sum;
                    let f = self.family(family);
                    if sum && f.summable() {
                        if let Some((series, value)) =
                            relabel(line, labels, &sum_prefix).and_then(|(_, s)| split_value(&s))
                        {
                            f.add_to_sum(series, value);
                        }
                    } else {
                        f.samples.push(sample);
                    }
                }
                None => self.dropped_lines += 1,
            }
        }
    }

    fn family(&mut self, name: String) -> &mut Family {
        if !self.families.contains_key(&name) {
            self.order.push(name.clone());
        }
        self.families.entry(name).or_default()
    }

    /// `# HELP name text` and `# TYPE name kind`; other comments are dropped.
    fn comment(&mut self, rest: &str, declared: &mut HashMap<String, String>) {
        let rest = rest.trim_start();
        let (what, rest) = rest.split_once(' ').unwrap_or((rest, ""));
        let (name, value) = rest
            .trim_start()
            .split_once(' ')
            .unwrap_or((rest.trim(), ""));
        if !valid_name(name) {
            return;
        }
        match what {
            "HELP" => {
                let f = self.family(name.to_string());
                f.help.get_or_insert_with(|| value.to_string());
            }
            "TYPE" => {
                let kind = value.trim();
                if !matches!(
                    kind,
                    "counter" | "gauge" | "histogram" | "summary" | "untyped"
                ) {
                    self.dropped_lines += 1;
                    return;
                }
                declared.insert(name.to_string(), kind.to_string());
                let f = self.family(name.to_string());
                f.kind.get_or_insert_with(|| kind.to_string());
            }
            _ => {}
        }
    }

    /// Appends the merged families to `out`.
    pub fn write(&self, out: &mut String) {
        for name in &self.order {
            let Some(f) = self.families.get(name) else {
                continue;
            };
            if f.samples.is_empty() && f.sums.is_empty() {
                continue;
            }
            if let Some(help) = &f.help {
                let _ = writeln!(out, "# HELP {name} {help}");
            }
            if let Some(kind) = &f.kind {
                let _ = writeln!(out, "# TYPE {name} {kind}");
            }
            for s in &f.samples {
                out.push_str(s);
                out.push('\n');
            }
            for (series, v) in &f.sums {
                let _ = writeln!(out, "{series} {}", format_value(*v));
            }
        }
    }
}

impl Family {
    fn add_to_sum(&mut self, series: String, value: f64) {
        match self.sum_index.get(&series) {
            Some(&i) => {
                if let Some((_, total)) = self.sums.get_mut(i) {
                    *total += value;
                }
            }
            None => {
                self.sum_index.insert(series.clone(), self.sums.len());
                self.sums.push((series, value));
            }
        }
    }
}

/// A relabelled sample split into its series (`name{…}`) and value (a timestamp is dropped:
/// a sum is of now).
fn split_value(sample: &str) -> Option<(String, f64)> {
    let end = sample.rfind('}')?;
    let series = sample.get(..=end)?;
    let value = sample.get(end + 1..)?.split_whitespace().next()?;
    let v = match value {
        "+Inf" | "Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v.parse().ok()?,
    };
    Some((series.to_string(), v))
}

/// A value as Prometheus' text format writes it.
fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{v}")
    }
}

/// The family a sample belongs to: its own name, or the declared family it is a part of
/// (`x_total` of counter `x`, `x_bucket`/`x_sum`/`x_count` of histogram or summary `x`).
fn family_of(name: &str, declared: &HashMap<String, String>) -> String {
    if declared.contains_key(name) {
        return name.to_string();
    }
    for suffix in ["_total", "_created", "_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix) {
            if declared.contains_key(base) {
                return base.to_string();
            }
        }
    }
    name.to_string()
}

/// Whether `name` is a metric (or label) name Prometheus takes: `[a-zA-Z_:][a-zA-Z0-9_:]*`.
fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// A sample line with `labels` put first (a label the sample has too is renamed
/// `exported_<name>`); `None` if the line is not a sample.
fn relabel(line: &str, labels: &[(&str, &str)], prefix: &str) -> Option<(String, String)> {
    let line = line.trim_start();
    let end = line.find(['{', ' ', '\t']).unwrap_or(line.len());
    let (name, rest) = line.split_at(end);
    if !valid_name(name) {
        return None;
    }
    let (theirs, rest) = match rest.strip_prefix('{') {
        Some(r) => parse_labels(r)?,
        None => (Vec::new(), rest),
    };
    let value = rest.trim();
    let mut parts = value.split_whitespace();
    let v = parts.next()?;
    if !valid_value(v) {
        return None;
    }
    if let Some(ts) = parts.next() {
        ts.parse::<i64>().ok()?;
    }
    if parts.next().is_some() {
        return None;
    }
    let mut out = String::with_capacity(line.len() + prefix.len() + 4);
    out.push_str(name);
    out.push('{');
    out.push_str(prefix);
    let mut first = prefix.is_empty();
    for (k, val) in &theirs {
        if !first {
            out.push(',');
        }
        first = false;
        if labels.iter().any(|(ours, _)| ours == k) {
            out.push_str("exported_");
        }
        // The value is kept as it was written (escapes included).
        let _ = write!(out, "{k}=\"{val}\"");
    }
    out.push('}');
    out.push(' ');
    out.push_str(value);
    Some((name.to_string(), out))
}

/// The labels after `{`: `(name, raw escaped value)` pairs, and what follows `}`.
fn parse_labels(s: &str) -> Option<(Vec<(String, String)>, &str)> {
    let mut out = Vec::new();
    let mut rest = s.trim_start();
    loop {
        if let Some(after) = rest.strip_prefix('}') {
            return Some((out, after));
        }
        let eq = rest.find('=')?;
        let (key, after) = rest.split_at(eq);
        let key = key.trim();
        if !valid_name(key) || key.starts_with("__") {
            return None;
        }
        let after = after.get(1..)?.trim_start().strip_prefix('"')?;
        // The value ends at the first `"` not escaped by a backslash.
        let mut end = None;
        let mut escaped = false;
        for (i, c) in after.char_indices() {
            match c {
                '\\' if !escaped => escaped = true,
                '"' if !escaped => {
                    end = Some(i);
                    break;
                }
                '\n' => return None,
                _ => escaped = false,
            }
        }
        let end = end?;
        let (value, after) = after.split_at(end);
        out.push((key.to_string(), value.to_string()));
        rest = after.get(1..)?.trim_start();
        if let Some(r) = rest.strip_prefix(',') {
            rest = r.trim_start();
        }
    }
}

/// A sample value: a float, or `+Inf`, `-Inf`, `NaN`.
fn valid_value(v: &str) -> bool {
    matches!(v, "+Inf" | "-Inf" | "Inf" | "NaN") || v.parse::<f64>().is_ok()
}

/// A label value as Prometheus' text format writes it.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    const PROM_CLIENT: &str = "# HELP http_requests_total Requests served\n# TYPE http_requests_total counter\nhttp_requests_total{route=\"/\",code=\"200\"} 7\n\n# HELP rt Response time\n# TYPE rt histogram\nrt_bucket{le=\"0.1\"} 3\nrt_bucket{le=\"+Inf\"} 4\nrt_sum 0.25\nrt_count 4\n";

    #[test]
    fn instances_merge_into_one_family_each_with_their_labels() {
        let mut e = Exposition::default();
        e.add(&[("app", "web"), ("instance", "0")], PROM_CLIENT);
        e.add(&[("app", "web"), ("instance", "1")], PROM_CLIENT);
        let mut out = String::new();
        e.write(&mut out);
        assert_eq!(out.matches("# TYPE http_requests_total counter").count(), 1);
        assert_eq!(out.matches("# TYPE rt histogram").count(), 1);
        assert!(out.contains(
            "http_requests_total{app=\"web\",instance=\"1\",route=\"/\",code=\"200\"} 7\n"
        ));
        assert!(out.contains("rt_bucket{app=\"web\",instance=\"0\",le=\"+Inf\"} 4\n"));
        assert!(out.contains("rt_count{app=\"web\",instance=\"1\"} 4\n"));
        // A histogram's lines stay under its one TYPE line.
        let t = out.find("# TYPE rt histogram").unwrap();
        assert!(out.find("rt_sum{").unwrap() > t);
        assert_eq!(e.dropped_lines, 0);
    }

    #[test]
    fn garbage_is_dropped_and_counted_and_clashing_labels_are_exported() {
        let mut e = Exposition::default();
        let text = "not a metric line at all\n9bad 1\nok{a=\"x\"} notanumber\nok{a=\"x} 1\nok{instance=\"theirs\",b=\"q\\\"uote\"} 2 1700000000000\nok 3 4 5\n# TYPE ok weird\n";
        e.add(&[("app", "a"), ("instance", "0")], text);
        let mut out = String::new();
        e.write(&mut out);
        assert_eq!(
            out,
            "ok{app=\"a\",instance=\"0\",exported_instance=\"theirs\",b=\"q\\\"uote\"} 2 1700000000000\n"
        );
        assert_eq!(e.dropped_lines, 6);
    }

    #[test]
    fn on_request_counters_and_histograms_are_summed_per_app_and_gauges_stay() {
        let text = format!(
            "{PROM_CLIENT}# TYPE mem gauge\nmem 10\n# TYPE lat summary\nlat{{quantile=\"0.5\"}} 1\nlat_sum 2\nlat_count 2\n"
        );
        let mut e = Exposition::new(true);
        e.add(&[("app", "api"), ("instance", "0")], &text);
        e.add(
            &[("app", "api"), ("instance", "1")],
            &text.replace(" 7\n", " 5 1700000000000\n"),
        );
        e.add(&[("app", "web"), ("instance", "0")], &text);
        let mut out = String::new();
        e.write(&mut out);
        assert!(
            out.contains("http_requests_total{app=\"api\",route=\"/\",code=\"200\"} 12\n"),
            "{out}"
        );
        assert!(
            out.contains("http_requests_total{app=\"web\",route=\"/\",code=\"200\"} 7\n"),
            "{out}"
        );
        assert!(
            out.contains("rt_bucket{app=\"api\",le=\"+Inf\"} 8\n"),
            "{out}"
        );
        assert!(out.contains("rt_sum{app=\"api\"} 0.5\n"), "{out}");
        assert!(
            out.contains("mem{app=\"api\",instance=\"1\"} 10\n"),
            "{out}"
        );
        assert!(
            out.contains("lat{app=\"api\",instance=\"0\",quantile=\"0.5\"} 1\n"),
            "{out}"
        );
        assert!(
            !out.contains("http_requests_total{app=\"api\",instance"),
            "{out}"
        );
        assert_eq!(out.matches("# TYPE http_requests_total counter").count(), 1);
        // Without the request, one series per instance as before.
        let mut e = Exposition::default();
        e.add(&[("app", "api"), ("instance", "0")], &text);
        let mut out = String::new();
        e.write(&mut out);
        assert!(
            out.contains(
                "http_requests_total{app=\"api\",instance=\"0\",route=\"/\",code=\"200\"} 7\n"
            ),
            "{out}"
        );
    }

    #[test]
    fn label_values_are_escaped() {
        let mut e = Exposition::default();
        e.add(&[("app", "we\"b\\")], "x 1\n");
        let mut out = String::new();
        e.write(&mut out);
        assert_eq!(out, "x{app=\"we\\\"b\\\\\"} 1\n");
    }
}
