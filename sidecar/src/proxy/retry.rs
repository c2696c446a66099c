//! Retry decisions for upstream outcomes, and the wait before the next attempt.

use std::time::{Duration, SystemTime};

use axum::http::{HeaderMap, StatusCode};

use crate::config::routing::RetryConfig;

/// Effect of one upstream outcome on the request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// 2xx: hand the response on.
    Success,
    /// 4xx other than 429: the request itself is at fault, so another attempt or target
    /// would return the same. The target is healthy.
    ClientError,
    /// 429, 5xx, connect errors and timeouts before the first byte: worth another
    /// attempt, and counted against the target's health.
    Retryable,
}

pub fn classify_status(status: StatusCode) -> Class {
    if status.is_success() {
        Class::Success
    } else if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
        Class::Retryable
    } else {
        Class::ClientError
    }
}

/// Reads the delay a provider asked for: `retry-after-ms` (sent by OpenAI and Azure
/// OpenAI), else `Retry-After` as seconds or an HTTP date (RFC 9110 section 10.2.3).
pub fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    if let Some(ms) = text("retry-after-ms").and_then(|v| v.parse::<f64>().ok())
        && ms.is_finite()
        && ms >= 0.0
    {
        return Some(Duration::from_secs_f64(ms / 1000.0));
    }
    let value = text("retry-after")?;
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Returns the wait before retry number `retry` (0 for the first retry): exponential
/// backoff with equal jitter, so the wait lies between half and all of
/// `initial * 2^retry`, capped at the maximum. A `Retry-After` longer than that is
/// waited for instead.
pub fn delay(config: &RetryConfig, retry: u32, retry_after: Option<Duration>) -> Duration {
    let exponential = config
        .initial_backoff
        .saturating_mul(2u32.saturating_pow(retry.min(16)))
        .min(config.max_backoff);
    let half = exponential / 2;
    let jitter = half.mul_f64(fastrand::f64());
    let backoff = half + jitter;
    match retry_after {
        Some(asked) => asked.max(backoff),
        None => backoff,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn config() -> RetryConfig {
        RetryConfig {
            max_attempts_per_target: 3,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(1_000),
            max_retry_after: Duration::from_secs(10),
        }
    }

    #[test]
    fn statuses_are_classified() {
        assert_eq!(classify_status(StatusCode::OK), Class::Success);
        assert_eq!(classify_status(StatusCode::BAD_REQUEST), Class::ClientError);
        assert_eq!(classify_status(StatusCode::NOT_FOUND), Class::ClientError);
        assert_eq!(
            classify_status(StatusCode::TOO_MANY_REQUESTS),
            Class::Retryable
        );
        assert_eq!(
            classify_status(StatusCode::SERVICE_UNAVAILABLE),
            Class::Retryable
        );
        assert_eq!(
            classify_status(StatusCode::INTERNAL_SERVER_ERROR),
            Class::Retryable
        );
    }

    #[test]
    fn backoff_doubles_within_jitter_and_cap() {
        let config = config();
        for (retry, full_ms) in [
            (0, 100),
            (1, 200),
            (2, 400),
            (3, 800),
            (4, 1_000),
            (30, 1_000),
        ] {
            for _ in 0..50 {
                let wait = delay(&config, retry, None);
                assert!(
                    wait >= Duration::from_millis(full_ms / 2),
                    "retry {retry}: {wait:?} below half of {full_ms} ms"
                );
                assert!(
                    wait <= Duration::from_millis(full_ms),
                    "retry {retry}: {wait:?} above {full_ms} ms"
                );
            }
        }
    }

    #[test]
    fn retry_after_raises_the_wait() {
        let wait = delay(&config(), 0, Some(Duration::from_secs(2)));
        assert_eq!(wait, Duration::from_secs(2));
        let short = delay(&config(), 3, Some(Duration::from_millis(1)));
        assert!(short >= Duration::from_millis(400), "{short:?}");
    }

    #[test]
    fn retry_after_header_forms_parse() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut headers = HeaderMap::new();
        assert_eq!(retry_after(&headers, now), None);

        headers.insert("retry-after", HeaderValue::from_static("3"));
        assert_eq!(retry_after(&headers, now), Some(Duration::from_secs(3)));

        let date = httpdate::fmt_http_date(now + Duration::from_secs(7));
        headers.insert(
            "retry-after",
            HeaderValue::from_str(&date).expect("header value"),
        );
        assert_eq!(retry_after(&headers, now), Some(Duration::from_secs(7)));

        headers.insert("retry-after", HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&headers, now), None);

        headers.insert("retry-after-ms", HeaderValue::from_static("250"));
        assert_eq!(retry_after(&headers, now), Some(Duration::from_millis(250)));
    }

    #[test]
    fn past_retry_after_date_means_no_wait() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut headers = HeaderMap::new();
        let date = httpdate::fmt_http_date(now - Duration::from_secs(60));
        headers.insert(
            "retry-after",
            HeaderValue::from_str(&date).expect("header value"),
        );
        assert_eq!(retry_after(&headers, now), Some(Duration::ZERO));
    }
}
