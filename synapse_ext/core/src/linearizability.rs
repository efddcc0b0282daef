//! A linearizability checker for histories of registers (cluster settings), in the manner
//! of Porcupine: the history is split per key (registers compose), and each key's history
//! is searched for a legal sequential order consistent with real time (Wing & Gong's
//! algorithm with Lowe's memoisation of (linearized set, state) pairs).
//!
//! An operation whose outcome is unknown (the client gave up or lost its connection) may
//! have taken effect at any time after it was invoked: it is given an infinite return
//! time and no required result. Reads with unknown outcome constrain nothing and are
//! dropped.

use std::collections::{BTreeMap, HashSet};

/// What a client asked, and what it was told.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Set the register; `ok` false means the outcome is unknown.
    Set { value: String, ok: bool },
    /// Read the register; `None` = unset. `observed` is `None` when the read failed.
    Get { observed: Option<Option<String>> },
    /// Compare-and-set; `applied` is `None` when the outcome is unknown.
    Cas {
        expected: Option<String>,
        value: String,
        applied: Option<bool>,
    },
}

/// One operation of a client on one key, with its invocation and completion times (any
/// monotonic unit). `returned` is ignored for operations with unknown outcome.
#[derive(Clone, Debug)]
pub struct Event {
    pub key: String,
    pub op: Op,
    pub invoked: u64,
    pub returned: u64,
}

impl Event {
    fn unknown_outcome(&self) -> bool {
        matches!(
            self.op,
            Op::Set { ok: false, .. } | Op::Cas { applied: None, .. }
        )
    }
}

/// Applies `op` to `state`; returns the new state when the op's recorded result is
/// possible from `state`.
fn step(state: &Option<String>, op: &Op) -> Option<Option<String>> {
    match op {
        Op::Set { value, .. } => Some(Some(value.clone())),
        Op::Get {
            observed: Some(seen),
        } => (seen == state).then(|| state.clone()),
        Op::Get { observed: None } => Some(state.clone()),
        Op::Cas {
            expected,
            value,
            applied,
        } => {
            let matches = expected == state;
            match applied {
                Some(true) if matches => Some(Some(value.clone())),
                Some(false) if !matches => Some(state.clone()),
                Some(_) => None,
                // Unknown outcome: it applied exactly when the comparison held.
                None => Some(if matches {
                    Some(value.clone())
                } else {
                    state.clone()
                }),
            }
        }
    }
}

/// The keys whose histories have no linearization (empty: the history is linearizable).
pub fn check(history: &[Event]) -> Vec<String> {
    let mut by_key: BTreeMap<&str, Vec<&Event>> = BTreeMap::new();
    for e in history {
        if matches!(e.op, Op::Get { observed: None }) {
            continue;
        }
        by_key.entry(&e.key).or_default().push(e);
    }
    by_key
        .into_iter()
        .filter(|(_, ops)| !check_key(ops))
        .map(|(k, _)| k.to_owned())
        .collect()
}

/// Wing & Gong search over one register's history, starting from the unset register.
fn check_key(ops: &[&Event]) -> bool {
    let n = ops.len();
    assert!(n <= 4096, "history too long for one key");
    // Events in time order: (time, is_return, op). Calls sort before returns at equal
    // times, so operations touching at an instant count as concurrent.
    let mut events: Vec<(u64, bool, usize)> = Vec::with_capacity(2 * n);
    for (i, e) in ops.iter().enumerate() {
        events.push((e.invoked, false, i));
        let ret = if e.unknown_outcome() {
            u64::MAX
        } else {
            e.returned.max(e.invoked)
        };
        events.push((ret, true, i));
    }
    events.sort();
    // A doubly linked list over `events`, so entries can be lifted and restored.
    let len = events.len();
    let mut next: Vec<usize> = (1..=len).collect();
    let mut prev: Vec<usize> = (0..len).map(|i| i.wrapping_sub(1)).collect();
    let head_sentinel = len; // index of the virtual head
    next.push(0);
    prev.push(usize::MAX);
    if len > 0 {
        prev[0] = head_sentinel;
    }
    let mut return_pos = vec![0usize; n];
    let mut call_pos = vec![0usize; n];
    for (pos, &(_, is_ret, op)) in events.iter().enumerate() {
        if is_ret {
            return_pos[op] = pos;
        } else {
            call_pos[op] = pos;
        }
    }
    let lift = |next: &mut Vec<usize>, prev: &mut Vec<usize>, pos: usize| {
        let (p, q) = (prev[pos], next[pos]);
        next[p] = q;
        if q < len {
            prev[q] = p;
        }
    };
    let unlift = |next: &mut Vec<usize>, prev: &mut Vec<usize>, pos: usize| {
        let (p, q) = (prev[pos], next[pos]);
        next[p] = pos;
        if q < len {
            prev[q] = pos;
        }
    };

    let mut linearized = vec![false; n];
    let mut state: Option<String> = None;
    let mut stack: Vec<(usize, Option<String>)> = Vec::new(); // (op, state before)
    let mut seen: HashSet<(Vec<u64>, Option<String>)> = HashSet::new();
    let bits = |linearized: &[bool]| -> Vec<u64> {
        let mut words = vec![0u64; linearized.len().div_ceil(64)];
        for (i, &l) in linearized.iter().enumerate() {
            if l {
                words[i / 64] |= 1 << (i % 64);
            }
        }
        words
    };

    let mut cursor = next[head_sentinel];
    loop {
        if cursor >= len {
            // Every remaining entry is lifted: all operations are linearized.
            return true;
        }
        let (_, is_ret, op) = events[cursor];
        if !is_ret {
            // Try to linearize `op` now.
            if let Some(new_state) = step(&state, &ops[op].op) {
                linearized[op] = true;
                let key = (bits(&linearized), new_state.clone());
                if seen.insert(key) {
                    stack.push((op, state.clone()));
                    state = new_state;
                    lift(&mut next, &mut prev, call_pos[op]);
                    lift(&mut next, &mut prev, return_pos[op]);
                    cursor = next[head_sentinel];
                    continue;
                }
                linearized[op] = false;
            }
            cursor = next[cursor];
        } else {
            // A return reached before its call was linearized: backtrack.
            let Some((op, before)) = stack.pop() else {
                return false;
            };
            linearized[op] = false;
            state = before;
            unlift(&mut next, &mut prev, return_pos[op]);
            unlift(&mut next, &mut prev, call_pos[op]);
            cursor = next[call_pos[op]];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(v: &str, t: (u64, u64)) -> Event {
        Event {
            key: "k".into(),
            op: Op::Set {
                value: v.into(),
                ok: true,
            },
            invoked: t.0,
            returned: t.1,
        }
    }
    fn get(v: Option<&str>, t: (u64, u64)) -> Event {
        Event {
            key: "k".into(),
            op: Op::Get {
                observed: Some(v.map(str::to_owned)),
            },
            invoked: t.0,
            returned: t.1,
        }
    }
    fn cas(e: Option<&str>, v: &str, applied: Option<bool>, t: (u64, u64)) -> Event {
        Event {
            key: "k".into(),
            op: Op::Cas {
                expected: e.map(str::to_owned),
                value: v.into(),
                applied,
            },
            invoked: t.0,
            returned: t.1,
        }
    }

    #[test]
    fn sequential_history_is_linearizable() {
        let h = [
            get(None, (0, 1)),
            set("a", (2, 3)),
            get(Some("a"), (4, 5)),
            cas(Some("a"), "b", Some(true), (6, 7)),
            get(Some("b"), (8, 9)),
        ];
        assert!(check(&h).is_empty());
    }

    #[test]
    fn a_stale_read_after_a_completed_write_is_caught() {
        let h = [set("a", (0, 1)), set("b", (2, 3)), get(Some("a"), (4, 5))];
        assert_eq!(check(&h), vec!["k".to_owned()]);
    }

    #[test]
    fn concurrent_operations_may_take_effect_in_either_order() {
        // set a overlaps everything: it can land after set b, so the last read may see a.
        let h = [
            set("a", (0, 10)),
            get(None, (1, 3)),
            set("b", (5, 6)),
            get(Some("a"), (7, 8)),
        ];
        assert!(check(&h).is_empty());
        // ...but not once a read has seen a before b was written.
        let h = [
            set("a", (0, 10)),
            get(Some("a"), (1, 2)),
            set("b", (5, 6)),
            get(Some("a"), (7, 8)),
        ];
        assert!(!check(&h).is_empty());
        let h = [set("a", (0, 4)), set("b", (5, 6)), get(Some("a"), (7, 8))];
        assert!(!check(&h).is_empty());
    }

    #[test]
    fn unknown_outcomes_may_apply_late_or_never() {
        // The unknown set of "x" may land long after its client gave up.
        let h = [
            Event {
                key: "k".into(),
                op: Op::Set {
                    value: "x".into(),
                    ok: false,
                },
                invoked: 0,
                returned: 1,
            },
            get(None, (2, 3)),
            get(Some("x"), (4, 5)),
        ];
        assert!(check(&h).is_empty());
        // A failed compare-and-set must still respect its comparison.
        let h = [
            set("a", (0, 1)),
            cas(Some("z"), "y", None, (2, 3)),
            get(Some("y"), (4, 5)),
        ];
        assert!(!check(&h).is_empty());
    }

    #[test]
    fn a_failed_cas_must_have_seen_another_value() {
        let h = [set("a", (0, 1)), cas(Some("a"), "b", Some(false), (2, 3))];
        assert!(!check(&h).is_empty());
    }
}
