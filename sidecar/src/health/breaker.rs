//! A per-target circuit breaker: closed while the target responds, open after too many
//! failures (consecutive, or a share of a sliding window), half-open after a cooldown,
//! when exactly one probe request may pass and its outcome closes or reopens it.
//!
//! Every method takes the current time, so tests drive the clock without sleeping.

use std::time::{Duration, Instant};

use crate::config::routing::BreakerConfig;

/// Buckets of the failure-ratio window; ten keeps the window's edge within a tenth of
/// its length of the configured value.
const WINDOW_BUCKETS: usize = 10;

/// State as reported in `/readyz` and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerStatus {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerStatus::Closed => "closed",
            BreakerStatus::Open => "open",
            BreakerStatus::HalfOpen => "half_open",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Closed,
    Open { until: Instant },
    HalfOpen { probe_in_flight: bool },
}

/// Permission to send one request, from [`CircuitBreaker::try_acquire`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ticket {
    /// A request through a closed breaker.
    Normal,
    /// The single request a half-open breaker lets through.
    Probe,
}

#[derive(Clone, Copy, Debug, Default)]
struct Bucket {
    /// Index of the bucket-length interval since the breaker was created.
    epoch: u64,
    successes: u32,
    failures: u32,
}

#[derive(Debug)]
pub struct CircuitBreaker {
    config: BreakerConfig,
    state: State,
    consecutive_failures: u32,
    created: Instant,
    buckets: [Bucket; WINDOW_BUCKETS],
}

impl CircuitBreaker {
    pub fn new(config: BreakerConfig, now: Instant) -> CircuitBreaker {
        CircuitBreaker {
            config,
            state: State::Closed,
            consecutive_failures: 0,
            created: now,
            buckets: [Bucket::default(); WINDOW_BUCKETS],
        }
    }

    /// Returns the state at `now`; an open breaker whose cooldown has passed reports
    /// half-open, because the next request will be its probe.
    pub fn status(&self, now: Instant) -> BreakerStatus {
        match self.state {
            State::Closed => BreakerStatus::Closed,
            State::Open { until } if now >= until => BreakerStatus::HalfOpen,
            State::Open { .. } => BreakerStatus::Open,
            State::HalfOpen { .. } => BreakerStatus::HalfOpen,
        }
    }

    /// Decides whether a request may go to the target now. `None` means skip it.
    pub fn try_acquire(&mut self, now: Instant) -> Option<Ticket> {
        match self.state {
            State::Closed => Some(Ticket::Normal),
            State::Open { until } if now >= until => {
                self.state = State::HalfOpen {
                    probe_in_flight: true,
                };
                Some(Ticket::Probe)
            }
            State::Open { .. } => None,
            State::HalfOpen {
                probe_in_flight: true,
            } => None,
            State::HalfOpen {
                probe_in_flight: false,
            } => {
                self.state = State::HalfOpen {
                    probe_in_flight: true,
                };
                Some(Ticket::Probe)
            }
        }
    }

    /// Gives back a probe ticket whose request ended without an outcome (the client went
    /// away), so the next request can probe instead.
    pub fn release(&mut self, ticket: Ticket) {
        if ticket == Ticket::Probe && matches!(self.state, State::HalfOpen { .. }) {
            self.state = State::HalfOpen {
                probe_in_flight: false,
            };
        }
    }

    /// Records the outcome of a request sent with `ticket`. Returns the new status when
    /// the breaker changed state.
    pub fn record(&mut self, ticket: Ticket, success: bool, now: Instant) -> Option<BreakerStatus> {
        let before = self.status(now);
        match (ticket, self.state) {
            (Ticket::Probe, State::HalfOpen { .. }) => {
                if success {
                    self.close();
                } else {
                    self.open(now);
                }
            }
            (Ticket::Normal, State::Closed) => {
                self.count(success, now);
                if success {
                    self.consecutive_failures = 0;
                } else {
                    self.consecutive_failures += 1;
                    if self.should_open(now) {
                        self.open(now);
                    }
                }
            }
            // A request that started before the breaker opened, finishing late: its
            // outcome is older than the decision already taken.
            _ => {}
        }
        let after = self.status(now);
        (after != before).then_some(after)
    }

    fn should_open(&self, now: Instant) -> bool {
        if self.consecutive_failures >= self.config.consecutive_failures {
            return true;
        }
        let (successes, failures) = self.window_totals(now);
        let total = successes + failures;
        total >= self.config.minimum_requests
            && f64::from(failures) / f64::from(total) >= self.config.failure_ratio
    }

    fn open(&mut self, now: Instant) {
        self.state = State::Open {
            until: now + self.config.cooldown,
        };
        self.reset_counts();
    }

    fn close(&mut self) {
        self.state = State::Closed;
        self.reset_counts();
    }

    fn reset_counts(&mut self) {
        self.consecutive_failures = 0;
        self.buckets = [Bucket::default(); WINDOW_BUCKETS];
    }

    fn bucket_length(&self) -> Duration {
        (self.config.window / WINDOW_BUCKETS as u32).max(Duration::from_millis(1))
    }

    fn epoch(&self, now: Instant) -> u64 {
        let elapsed = now.saturating_duration_since(self.created);
        (elapsed.as_nanos() / self.bucket_length().as_nanos()) as u64
    }

    fn count(&mut self, success: bool, now: Instant) {
        let epoch = self.epoch(now);
        let bucket = &mut self.buckets[(epoch % WINDOW_BUCKETS as u64) as usize];
        if bucket.epoch != epoch {
            *bucket = Bucket {
                epoch,
                ..Bucket::default()
            };
        }
        if success {
            bucket.successes += 1;
        } else {
            bucket.failures += 1;
        }
    }

    fn window_totals(&self, now: Instant) -> (u32, u32) {
        let epoch = self.epoch(now);
        self.buckets
            .iter()
            .filter(|b| b.epoch + (WINDOW_BUCKETS as u64) > epoch && b.epoch <= epoch)
            .fold((0, 0), |(s, f), b| (s + b.successes, f + b.failures))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> BreakerConfig {
        BreakerConfig {
            consecutive_failures: 3,
            failure_ratio: 0.5,
            minimum_requests: 10,
            window: Duration::from_secs(10),
            cooldown: Duration::from_secs(5),
        }
    }

    fn fail(breaker: &mut CircuitBreaker, now: Instant) -> Option<BreakerStatus> {
        let ticket = breaker
            .try_acquire(now)
            .expect("breaker lets the request pass");
        breaker.record(ticket, false, now)
    }

    fn succeed(breaker: &mut CircuitBreaker, now: Instant) -> Option<BreakerStatus> {
        let ticket = breaker
            .try_acquire(now)
            .expect("breaker lets the request pass");
        breaker.record(ticket, true, now)
    }

    #[test]
    fn opens_after_consecutive_failures() {
        let start = Instant::now();
        let mut breaker = CircuitBreaker::new(config(), start);
        assert_eq!(fail(&mut breaker, start), None);
        assert_eq!(fail(&mut breaker, start), None);
        assert_eq!(fail(&mut breaker, start), Some(BreakerStatus::Open));
        assert_eq!(breaker.try_acquire(start), None);
        assert_eq!(breaker.status(start), BreakerStatus::Open);
    }

    #[test]
    fn success_resets_consecutive_count() {
        let start = Instant::now();
        let mut breaker = CircuitBreaker::new(config(), start);
        fail(&mut breaker, start);
        fail(&mut breaker, start);
        succeed(&mut breaker, start);
        fail(&mut breaker, start);
        fail(&mut breaker, start);
        assert_eq!(breaker.status(start), BreakerStatus::Closed);
    }

    #[test]
    fn opens_on_failure_ratio() {
        let start = Instant::now();
        let mut breaker = CircuitBreaker::new(config(), start);
        // Alternating outcomes never reach three in a row, but half of ten fail.
        for i in 0..9 {
            if i % 2 == 0 {
                succeed(&mut breaker, start);
            } else {
                fail(&mut breaker, start);
            }
        }
        assert_eq!(breaker.status(start), BreakerStatus::Closed, "9 requests");
        assert_eq!(fail(&mut breaker, start), Some(BreakerStatus::Open));
    }

    #[test]
    fn old_outcomes_leave_the_window() {
        let start = Instant::now();
        let mut breaker = CircuitBreaker::new(config(), start);
        for _ in 0..4 {
            succeed(&mut breaker, start);
            fail(&mut breaker, start);
        }
        let later = start + Duration::from_secs(11);
        // The eight outcomes above are out of the window, so these two are all it holds.
        succeed(&mut breaker, later);
        assert_eq!(fail(&mut breaker, later), None);
        assert_eq!(breaker.window_totals(later), (1, 1));
    }

    #[test]
    fn half_opens_after_cooldown_with_one_probe() {
        let start = Instant::now();
        let mut breaker = CircuitBreaker::new(config(), start);
        for _ in 0..3 {
            fail(&mut breaker, start);
        }
        let before_cooldown = start + Duration::from_millis(4_999);
        assert_eq!(breaker.try_acquire(before_cooldown), None);
        let after = start + Duration::from_secs(5);
        assert_eq!(breaker.status(after), BreakerStatus::HalfOpen);
        assert_eq!(breaker.try_acquire(after), Some(Ticket::Probe));
        assert_eq!(
            breaker.try_acquire(after),
            None,
            "second request while probing"
        );
        assert_eq!(
            breaker.record(Ticket::Probe, true, after),
            Some(BreakerStatus::Closed)
        );
        assert_eq!(breaker.try_acquire(after), Some(Ticket::Normal));
    }

    #[test]
    fn failed_probe_reopens() {
        let start = Instant::now();
        let mut breaker = CircuitBreaker::new(config(), start);
        for _ in 0..3 {
            fail(&mut breaker, start);
        }
        let after = start + Duration::from_secs(5);
        let ticket = breaker.try_acquire(after).expect("probe");
        assert_eq!(
            breaker.record(ticket, false, after),
            Some(BreakerStatus::Open)
        );
        assert_eq!(breaker.try_acquire(after + Duration::from_secs(4)), None);
        assert_eq!(
            breaker.try_acquire(after + Duration::from_secs(5)),
            Some(Ticket::Probe)
        );
    }

    #[test]
    fn released_probe_lets_the_next_request_probe() {
        let start = Instant::now();
        let mut breaker = CircuitBreaker::new(config(), start);
        for _ in 0..3 {
            fail(&mut breaker, start);
        }
        let after = start + Duration::from_secs(5);
        let ticket = breaker.try_acquire(after).expect("probe");
        breaker.release(ticket);
        assert_eq!(breaker.try_acquire(after), Some(Ticket::Probe));
    }

    #[test]
    fn late_outcome_does_not_change_an_open_breaker() {
        let start = Instant::now();
        let mut breaker = CircuitBreaker::new(config(), start);
        let late = breaker.try_acquire(start).expect("normal");
        for _ in 0..3 {
            fail(&mut breaker, start);
        }
        assert_eq!(breaker.record(late, true, start), None);
        assert_eq!(breaker.status(start), BreakerStatus::Open);
    }
}
