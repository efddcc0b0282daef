//! Per-node circuit breakers: a node that keeps failing is skipped at once ("open")
//! instead of costing every statement a connection attempt, and is tried again after a
//! backoff ("half-open": the next statement is the trial).
//!
//! Fed by two sources: connection errors (`failure`, `success`) and SWIM (`swim`): a
//! member SWIM declares FAILED opens its breaker at once, one it sees ALIVE again is
//! half-open, so the next statement goes through without waiting for the backoff.

/// A breaker's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    /// Statements go to the node.
    Closed,
    /// Statements fail at once until `retry_at_ms`.
    Open,
    /// The next statement is a trial: success closes, failure opens again (longer).
    HalfOpen,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half-open",
        }
    }

    pub fn to_u32(self) -> u32 {
        self as u32
    }

    pub fn from_u32(v: u32) -> BreakerState {
        match v {
            1 => BreakerState::Open,
            2 => BreakerState::HalfOpen,
            _ => BreakerState::Closed,
        }
    }
}

/// Consecutive connection failures that open a closed breaker.
pub const FAILURE_THRESHOLD: u32 = 3;
/// The first wait before a trial, doubled after each failed trial up to the maximum.
pub const FIRST_BACKOFF_MS: i64 = 1_000;
pub const MAX_BACKOFF_MS: i64 = 30_000;

/// One node's breaker (kept in shared memory as plain numbers).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Breaker {
    pub state: BreakerState,
    /// Consecutive failures (closed) since the last success.
    pub failures: u32,
    pub opened_at_ms: i64,
    pub retry_at_ms: i64,
    pub backoff_ms: i64,
}

impl Default for Breaker {
    fn default() -> Self {
        Breaker {
            state: BreakerState::Closed,
            failures: 0,
            opened_at_ms: 0,
            retry_at_ms: 0,
            backoff_ms: FIRST_BACKOFF_MS,
        }
    }
}

/// What SWIM says of a member.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Swim {
    Alive,
    Suspected,
    Failed,
}

impl Breaker {
    /// Whether a statement may go to the node now; `Err(retry_at_ms)` if not. An open
    /// breaker whose backoff has passed lets this statement through as the trial.
    pub fn allow(&mut self, now_ms: i64) -> Result<(), i64> {
        match self.state {
            BreakerState::Closed | BreakerState::HalfOpen => Ok(()),
            BreakerState::Open if now_ms >= self.retry_at_ms => {
                self.state = BreakerState::HalfOpen;
                Ok(())
            }
            BreakerState::Open => Err(self.retry_at_ms),
        }
    }

    /// The node answered.
    pub fn success(&mut self) {
        *self = Breaker::default();
    }

    /// A connection to the node failed or was lost.
    pub fn failure(&mut self, now_ms: i64) {
        match self.state {
            BreakerState::Closed => {
                self.failures += 1;
                if self.failures >= FAILURE_THRESHOLD {
                    self.open(now_ms, FIRST_BACKOFF_MS);
                }
            }
            BreakerState::HalfOpen => {
                let backoff = (self.backoff_ms * 2).min(MAX_BACKOFF_MS);
                self.open(now_ms, backoff);
            }
            BreakerState::Open => {}
        }
    }

    /// SWIM's view of the node changed.
    pub fn swim(&mut self, now_ms: i64, view: Swim) {
        match (view, self.state) {
            (Swim::Failed, BreakerState::Open) => {}
            (Swim::Failed, _) => self.open(now_ms, self.backoff_ms.max(FIRST_BACKOFF_MS)),
            (Swim::Alive, BreakerState::Open) => self.state = BreakerState::HalfOpen,
            _ => {}
        }
    }

    fn open(&mut self, now_ms: i64, backoff_ms: i64) {
        self.state = BreakerState::Open;
        self.opened_at_ms = now_ms;
        self.backoff_ms = backoff_ms;
        self.retry_at_ms = now_ms + backoff_ms;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_failures_open_and_a_trial_after_the_backoff_closes() {
        let mut b = Breaker::default();
        b.failure(0);
        b.failure(1);
        assert_eq!(b.state, BreakerState::Closed);
        assert_eq!(b.allow(2), Ok(()));
        b.failure(2);
        assert_eq!(b.state, BreakerState::Open);
        assert_eq!(b.allow(500), Err(2 + FIRST_BACKOFF_MS));
        assert_eq!(b.allow(2 + FIRST_BACKOFF_MS), Ok(()));
        assert_eq!(b.state, BreakerState::HalfOpen);
        b.success();
        assert_eq!(b, Breaker::default());
    }

    #[test]
    fn a_failed_trial_doubles_the_backoff_up_to_the_maximum() {
        let mut b = Breaker::default();
        let mut now = 0;
        for _ in 0..FAILURE_THRESHOLD {
            b.failure(now);
        }
        let mut expected = FIRST_BACKOFF_MS;
        for _ in 0..10 {
            now = b.retry_at_ms;
            assert_eq!(b.allow(now), Ok(()));
            b.failure(now);
            expected = (expected * 2).min(MAX_BACKOFF_MS);
            assert_eq!(b.retry_at_ms - now, expected);
        }
        assert_eq!(b.backoff_ms, MAX_BACKOFF_MS);
    }

    #[test]
    fn swim_opens_at_once_and_alive_lets_the_next_statement_try() {
        let mut b = Breaker::default();
        b.swim(10, Swim::Suspected);
        assert_eq!(b.state, BreakerState::Closed);
        b.swim(20, Swim::Failed);
        assert_eq!(b.state, BreakerState::Open);
        assert!(b.allow(21).is_err());
        b.swim(30, Swim::Alive);
        assert_eq!(b.state, BreakerState::HalfOpen);
        assert_eq!(b.allow(31), Ok(()));
        b.success();
        assert_eq!(b.state, BreakerState::Closed);
    }
}
