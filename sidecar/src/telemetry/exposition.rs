//! Content negotiation for `/metrics`: OpenMetrics for scrapers that accept it, else the
//! Prometheus text format 0.0.4.
//!
//! prometheus-client encodes only OpenMetrics. The two formats share the sample lines
//! and differ in the metadata: OpenMetrics names a counter family without its `_total`
//! suffix, adds `# UNIT` lines and ends with `# EOF`. Tools that read only the older
//! format, such as `promtool check metrics` of Prometheus 2.42 (Debian 12), then find
//! `_total` samples without help or type, so the older format is rebuilt here from the
//! OpenMetrics text.

use axum::http::{HeaderMap, HeaderValue, header};

/// Content type of OpenMetrics text.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Content type of the Prometheus text format 0.0.4.
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Returns whether the request's `Accept` header lists OpenMetrics.
pub fn accepts_openmetrics(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .any(|value| value.contains("application/openmetrics-text"))
}

/// Returns the body and content type of the response to a scrape, given the
/// OpenMetrics text of a registry.
pub fn negotiate(headers: &HeaderMap, openmetrics: String) -> (String, HeaderValue) {
    if accepts_openmetrics(headers) {
        (
            openmetrics,
            HeaderValue::from_static(OPENMETRICS_CONTENT_TYPE),
        )
    } else {
        (
            to_text_format(&openmetrics),
            HeaderValue::from_static(TEXT_CONTENT_TYPE),
        )
    }
}

/// Rewrites OpenMetrics text as Prometheus text format 0.0.4: counter and info families
/// get the suffix their samples carry, `unknown` becomes `untyped`, and `# UNIT` and
/// `# EOF` lines are dropped.
pub fn to_text_format(openmetrics: &str) -> String {
    let mut text = String::with_capacity(openmetrics.len());
    // OpenMetrics puts a family's HELP before its TYPE, and only the TYPE line shows
    // whether the name needs a suffix, so the HELP line waits for it.
    let mut pending_help: Option<(&str, &str)> = None;
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            flush_help(&mut text, pending_help.take());
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            pending_help = Some((name, help));
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let (suffix, kind) = match kind {
                "counter" => ("_total", "counter"),
                "info" => ("_info", "gauge"),
                "unknown" => ("", "untyped"),
                // State sets and gauge histograms have no 0.0.4 type, so their samples
                // pass as untyped.
                "stateset" | "gaugehistogram" => ("", "untyped"),
                other => ("", other),
            };
            match pending_help.take() {
                Some((help_name, help)) if help_name == name => {
                    text.push_str(&format!("# HELP {name}{suffix} {help}\n"));
                }
                other => flush_help(&mut text, other),
            }
            text.push_str(&format!("# TYPE {name}{suffix} {kind}\n"));
            continue;
        }
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        flush_help(&mut text, pending_help.take());
        text.push_str(line);
        text.push('\n');
    }
    flush_help(&mut text, pending_help.take());
    text
}

fn flush_help(text: &mut String, help: Option<(&str, &str)>) {
    if let Some((name, help)) = help {
        text.push_str(&format!("# HELP {name} {help}\n"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPENMETRICS: &str = "# HELP requests Requests served.\n\
        # TYPE requests counter\n\
        requests_total{route=\"chat\"} 3\n\
        # HELP latency_seconds Request latency.\n\
        # TYPE latency_seconds histogram\n\
        # UNIT latency_seconds seconds\n\
        latency_seconds_sum 0.5\n\
        latency_seconds_count 1\n\
        latency_seconds_bucket{le=\"+Inf\"} 1\n\
        # HELP rules Rules loaded.\n\
        # TYPE rules gauge\n\
        rules 4\n\
        # EOF\n";

    #[test]
    fn counter_family_gets_total_suffix() {
        let text = to_text_format(OPENMETRICS);

        assert!(
            text.contains("# HELP requests_total Requests served.\n"),
            "{text}"
        );
        assert!(text.contains("# TYPE requests_total counter\n"), "{text}");
        assert!(
            text.contains("requests_total{route=\"chat\"} 3\n"),
            "{text}"
        );
    }

    #[test]
    fn unit_and_eof_lines_are_dropped() {
        let text = to_text_format(OPENMETRICS);

        assert!(!text.contains("# UNIT"), "{text}");
        assert!(!text.contains("# EOF"), "{text}");
        assert!(
            text.contains("# TYPE latency_seconds histogram\n"),
            "{text}"
        );
        assert!(text.contains("# TYPE rules gauge\nrules 4\n"), "{text}");
    }

    #[test]
    fn accept_header_selects_format() {
        let mut headers = HeaderMap::new();
        assert!(!accepts_openmetrics(&headers));

        headers.insert(
            header::ACCEPT,
            HeaderValue::from_static(
                "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
            ),
        );
        assert!(accepts_openmetrics(&headers));
    }
}
