//! Health of one upstream target, learned from real traffic and active checks: the
//! circuit breaker plus exponentially weighted moving averages of errors and latency.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::breaker::{BreakerStatus, CircuitBreaker, Ticket};
use crate::config::routing::BreakerConfig;

/// Weight of the newest outcome in the moving averages. At 0.2 an outcome's weight
/// halves about every three requests, so the figures follow the last ten or so.
pub const EWMA_WEIGHT: f64 = 0.2;
/// Error rate above which a target with a closed breaker reports `degraded`.
const DEGRADED_ERROR_RATE: f64 = 0.5;

/// Outcome counters and moving averages of one target.
#[derive(Debug, Default)]
struct Passive {
    requests: u64,
    failures: u64,
    /// Moving average of failures, 0 to 1; `None` before the first outcome.
    error_rate: Option<f64>,
    /// Moving average of the time to response headers, in seconds.
    latency_secs: Option<f64>,
    last_error: Option<String>,
    last_outcome: Option<Instant>,
}

impl Passive {
    fn record(
        &mut self,
        success: bool,
        latency: Option<Duration>,
        error: Option<&str>,
        now: Instant,
    ) {
        self.requests += 1;
        let sample = if success { 0.0 } else { 1.0 };
        self.error_rate = Some(ewma(self.error_rate, sample));
        if let Some(latency) = latency {
            self.latency_secs = Some(ewma(self.latency_secs, latency.as_secs_f64()));
        }
        if !success {
            self.failures += 1;
            self.last_error = error.map(str::to_owned);
        }
        self.last_outcome = Some(now);
    }
}

fn ewma(previous: Option<f64>, sample: f64) -> f64 {
    match previous {
        Some(previous) => EWMA_WEIGHT * sample + (1.0 - EWMA_WEIGHT) * previous,
        None => sample,
    }
}

/// Health of one target, shared by every request and the admin server.
#[derive(Debug)]
pub struct TargetHealth {
    pub name: String,
    breaker: Mutex<CircuitBreaker>,
    passive: Mutex<Passive>,
}

/// Health of one target as `/readyz` shows it.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TargetSnapshot {
    /// `ok`, `degraded` (high recent error rate or half-open breaker), `down` (breaker
    /// open) or `unknown` (no outcome yet).
    pub state: &'static str,
    pub breaker: &'static str,
    pub requests: u64,
    pub failures: u64,
    pub error_rate: Option<f64>,
    pub latency_ms: Option<f64>,
    pub last_error: Option<String>,
    /// Seconds since the last request or check finished.
    pub idle_secs: Option<u64>,
}

impl TargetHealth {
    pub fn new(name: &str, breaker: BreakerConfig) -> Arc<TargetHealth> {
        Arc::new(TargetHealth {
            name: name.to_owned(),
            breaker: Mutex::new(CircuitBreaker::new(breaker, Instant::now())),
            passive: Mutex::new(Passive::default()),
        })
    }

    fn breaker(&self) -> MutexGuard<'_, CircuitBreaker> {
        // The guarded data stays consistent even if a holder panicked, because every
        // update is a few plain assignments.
        self.breaker.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn passive(&self) -> MutexGuard<'_, Passive> {
        self.passive.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Asks the breaker for permission to send a request; `None` while it is open or a
    /// half-open probe is already in flight.
    pub fn acquire(self: &Arc<Self>) -> Option<Permit> {
        let ticket = self.breaker().try_acquire(Instant::now())?;
        if ticket == Ticket::Probe {
            tracing::info!(target.name = %self.name, "circuit breaker half-open; sending one probe request");
        }
        Some(Permit {
            health: Arc::clone(self),
            ticket,
            started: Instant::now(),
            finished: false,
        })
    }

    /// Records a failure after the request's permit was already settled, such as a
    /// stream that broke after its headers arrived.
    pub fn record_late_failure(&self, reason: &str) {
        let now = Instant::now();
        self.passive().record(false, None, Some(reason), now);
        let changed = self.breaker().record(Ticket::Normal, false, now);
        self.log_transition(changed, reason);
    }

    fn finish(&self, ticket: Ticket, success: bool, latency: Duration, error: Option<&str>) {
        let now = Instant::now();
        self.passive().record(success, Some(latency), error, now);
        let changed = self.breaker().record(ticket, success, now);
        self.log_transition(changed, error.unwrap_or("request succeeded"));
    }

    fn log_transition(&self, changed: Option<BreakerStatus>, reason: &str) {
        match changed {
            Some(BreakerStatus::Open) => {
                tracing::warn!(target.name = %self.name, reason, "circuit breaker opened")
            }
            Some(BreakerStatus::Closed) => {
                tracing::info!(target.name = %self.name, "circuit breaker closed")
            }
            Some(BreakerStatus::HalfOpen) | None => {}
        }
    }

    pub fn breaker_status(&self) -> BreakerStatus {
        self.breaker().status(Instant::now())
    }

    /// Time since the last outcome, or `None` before the first one.
    pub fn idle_for(&self, now: Instant) -> Option<Duration> {
        self.passive()
            .last_outcome
            .map(|at| now.saturating_duration_since(at))
    }

    pub fn snapshot(&self) -> TargetSnapshot {
        let now = Instant::now();
        let breaker = self.breaker_status();
        let passive = self.passive();
        let state = match (breaker, passive.error_rate) {
            (BreakerStatus::Open, _) => "down",
            (BreakerStatus::HalfOpen, _) => "degraded",
            (BreakerStatus::Closed, None) => "unknown",
            (BreakerStatus::Closed, Some(rate)) if rate > DEGRADED_ERROR_RATE => "degraded",
            (BreakerStatus::Closed, Some(_)) => "ok",
        };
        TargetSnapshot {
            state,
            breaker: breaker.as_str(),
            requests: passive.requests,
            failures: passive.failures,
            error_rate: passive.error_rate.map(round3),
            latency_ms: passive.latency_secs.map(|secs| round3(secs * 1000.0)),
            last_error: passive.last_error.clone(),
            idle_secs: passive
                .last_outcome
                .map(|at| now.saturating_duration_since(at).as_secs()),
        }
    }

    /// Moving averages for metrics: error rate (0 to 1) and latency in seconds.
    pub fn averages(&self) -> (Option<f64>, Option<f64>) {
        let passive = self.passive();
        (passive.error_rate, passive.latency_secs)
    }
}

fn round3(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}

/// Permission to send one request to a target. Report its outcome with
/// [`Permit::success`] or [`Permit::failure`]; a permit dropped without an outcome (the
/// client went away) gives a half-open probe slot back.
#[derive(Debug)]
pub struct Permit {
    health: Arc<TargetHealth>,
    ticket: Ticket,
    started: Instant,
    finished: bool,
}

impl Permit {
    /// Records that the target responded; latency is measured from the permit's creation.
    pub fn success(mut self) {
        self.finished = true;
        self.health
            .finish(self.ticket, true, self.started.elapsed(), None);
    }

    /// Records a failure with a short reason (status or error class, never content).
    pub fn failure(mut self, reason: &str) {
        self.finished = true;
        self.health
            .finish(self.ticket, false, self.started.elapsed(), Some(reason));
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.finished {
            self.health.breaker().release(self.ticket);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker_config() -> BreakerConfig {
        BreakerConfig {
            consecutive_failures: 2,
            failure_ratio: 1.0,
            minimum_requests: 100,
            window: Duration::from_secs(10),
            cooldown: Duration::from_secs(60),
        }
    }

    #[test]
    fn averages_follow_outcomes() {
        let health = TargetHealth::new("a", breaker_config());
        assert_eq!(health.snapshot().state, "unknown");
        health.acquire().expect("closed").success();
        let snapshot = health.snapshot();
        assert_eq!(snapshot.state, "ok");
        assert_eq!(snapshot.error_rate, Some(0.0));
        health.acquire().expect("closed").failure("status 503");
        let snapshot = health.snapshot();
        assert_eq!(snapshot.error_rate, Some(0.2));
        assert_eq!(snapshot.failures, 1);
        assert_eq!(snapshot.requests, 2);
        assert_eq!(snapshot.last_error.as_deref(), Some("status 503"));
    }

    #[test]
    fn open_breaker_reports_down() {
        let health = TargetHealth::new("a", breaker_config());
        health.acquire().expect("closed").failure("connect error");
        health.acquire().expect("closed").failure("connect error");
        let snapshot = health.snapshot();
        assert_eq!(snapshot.state, "down");
        assert_eq!(snapshot.breaker, "open");
        assert!(health.acquire().is_none());
    }

    #[test]
    fn ewma_weights_the_newest_sample() {
        assert_eq!(ewma(None, 1.0), 1.0);
        assert!((ewma(Some(1.0), 0.0) - 0.8).abs() < 1e-9);
    }
}
