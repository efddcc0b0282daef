//! The dissemination queue: state changes waiting to be piggybacked on outgoing messages.
//!
//! Each update is sent a bounded number of times (`retransmit_mult * ceil(log10(n + 1))`,
//! memberlist's budget), the least-sent first, and a newer update about a member replaces
//! the older one still queued.

use super::node::Update;

#[derive(Debug, Default)]
pub struct Broadcasts {
    queue: Vec<Queued>,
}

#[derive(Debug)]
struct Queued {
    update: Update,
    sent: u32,
}

impl Broadcasts {
    /// Queues `update`, replacing any queued update about the same member.
    pub fn push(&mut self, update: Update) {
        self.queue.retain(|q| q.update.name != update.name);
        self.queue.push(Queued { update, sent: 0 });
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Up to `max` updates to piggyback, the least-sent first; each counts as sent once,
    /// and is dropped after `limit` sends.
    pub fn take(&mut self, max: usize, limit: u32) -> Vec<Update> {
        self.queue.sort_by_key(|q| q.sent);
        let mut out = Vec::new();
        for q in self.queue.iter_mut().take(max) {
            q.sent += 1;
            out.push(q.update.clone());
        }
        self.queue.retain(|q| q.sent < limit);
        out
    }
}

/// How many times an update is sent in a cluster of `members`.
pub fn retransmit_limit(mult: u32, members: usize) -> u32 {
    let scale = ((members + 1) as f64).log10().ceil().max(1.0) as u32;
    mult * scale
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::swim::node::State;

    fn update(name: &str, incarnation: u64) -> Update {
        Update {
            name: name.into(),
            state: State::Suspected,
            incarnation,
            by: "x".into(),
        }
    }

    #[test]
    fn newer_updates_replace_older_and_the_budget_is_bounded() {
        let mut b = Broadcasts::default();
        b.push(update("a", 1));
        b.push(update("b", 1));
        b.push(update("a", 2));
        assert_eq!(b.len(), 2);
        let first = b.take(10, 2);
        assert_eq!(first.len(), 2);
        assert!(first.iter().any(|u| u.name == "a" && u.incarnation == 2));
        assert_eq!(b.take(10, 2).len(), 2);
        assert!(b.is_empty(), "each update is sent at most twice");
        assert_eq!(retransmit_limit(4, 5), 4);
        assert_eq!(retransmit_limit(4, 1000), 16);
    }

    #[test]
    fn the_least_sent_go_first() {
        let mut b = Broadcasts::default();
        b.push(update("a", 1));
        b.take(1, 10);
        b.push(update("b", 1));
        assert_eq!(b.take(1, 10)[0].name, "b");
    }
}
