//! Failpoints for tests (`synapse.failpoints`, superuser only): make a distributed commit
//! fail at a chosen step, to test that recovery finishes what the coordinator left.
//!
//! The setting is a comma-separated list of `point:action`. Points:
//! - `after_prepare`: every participant prepared, before the commit decision;
//! - `after_decision`: the decision recorded, before any `COMMIT PREPARED`;
//! - `between_commit_prepared`: after the first participant's `COMMIT PREPARED`.
//!
//! Actions:
//! - `error`: an ERROR (before the decision: the transaction rolls back) or, after the
//!   decision, a WARNING and no further `COMMIT PREPARED` (recovery finishes);
//! - `crash`: SIGKILL to the postmaster and to this backend: the node dies as in a power
//!   failure, mid-commit;
//! - `pause`: waits here until the backend is killed (a test then crashes the node).

use pgrx::pg_sys;
use pgrx::prelude::*;

use crate::gucs;

/// A step of the commit where a failpoint may fire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Point {
    AfterPrepare,
    AfterDecision,
    BetweenCommitPrepared,
}

impl Point {
    fn name(self) -> &'static str {
        match self {
            Point::AfterPrepare => "after_prepare",
            Point::AfterDecision => "after_decision",
            Point::BetweenCommitPrepared => "between_commit_prepared",
        }
    }
}

/// What a failpoint does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Error,
    Crash,
    Pause,
}

/// The action set for `point`, if any.
pub fn action(point: Point) -> Option<Action> {
    let setting = gucs::failpoints();
    parse(&setting)
        .ok()?
        .into_iter()
        .find(|(p, _)| *p == point)
        .map(|(_, a)| a)
}

/// Parses a `synapse.failpoints` value.
pub fn parse(setting: &str) -> Result<Vec<(Point, Action)>, String> {
    let mut out = Vec::new();
    for item in setting.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (point, act) = item
            .split_once(':')
            .ok_or_else(|| format!("\"{item}\" is not point:action"))?;
        let point = [
            Point::AfterPrepare,
            Point::AfterDecision,
            Point::BetweenCommitPrepared,
        ]
        .into_iter()
        .find(|p| p.name() == point.trim())
        .ok_or_else(|| format!("unknown failpoint \"{}\"", point.trim()))?;
        let act = match act.trim() {
            "error" => Action::Error,
            "crash" => Action::Crash,
            "pause" => Action::Pause,
            other => return Err(format!("unknown failpoint action \"{other}\"")),
        };
        out.push((point, act));
    }
    Ok(out)
}

/// Fires `point`'s failpoint if one is set. `Error` is returned to the caller, which knows
/// whether it may raise at this step; `Crash` and `Pause` do not return.
pub fn hit(point: Point, gid: &str) -> Option<Action> {
    let act = action(point)?;
    match act {
        Action::Error => Some(act),
        Action::Crash => {
            log!(
                "synapse: failpoint {} crashes this node (transaction {gid})",
                point.name()
            );
            // SAFETY: signals to this node's postmaster and to ourselves.
            unsafe {
                libc::kill(pg_sys::PostmasterPid, libc::SIGKILL);
                libc::kill(pg_sys::MyProcPid, libc::SIGKILL);
            }
            loop {
                std::hint::spin_loop();
            }
        }
        Action::Pause => {
            log!(
                "synapse: failpoint {} pauses transaction {gid}",
                point.name()
            );
            loop {
                // SAFETY: waits on our own latch on the main thread; only a kill or the
                // postmaster's death ends it.
                unsafe {
                    pg_sys::WaitLatch(
                        pg_sys::MyLatch,
                        (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH)
                            as i32,
                        1000,
                        pg_sys::PG_WAIT_EXTENSION,
                    );
                    pg_sys::ResetLatch(pg_sys::MyLatch);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lists_and_refuses_unknown_names() {
        assert_eq!(parse("").unwrap(), vec![]);
        assert_eq!(
            parse("after_prepare:error, after_decision:crash").unwrap(),
            vec![
                (Point::AfterPrepare, Action::Error),
                (Point::AfterDecision, Action::Crash)
            ]
        );
        assert!(parse("after_prepare").is_err());
        assert!(parse("nowhere:error").is_err());
        assert!(parse("after_prepare:explode").is_err());
    }
}
