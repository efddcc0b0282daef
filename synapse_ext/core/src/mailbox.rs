//! The bridge between network threads and a PostgreSQL process's main thread.
//!
//! Only the main thread of a PostgreSQL process may call into PostgreSQL. Network code runs
//! on a tokio thread and asks the main thread for database work through a [`Mailbox`]: each
//! [`Envelope`] carries a request and a one-shot reply channel. Posting a request also
//! writes to an `eventfd`, whose descriptor the main thread adds to its `WaitEventSet`
//! next to its latch, so it wakes for requests, signals and postmaster death alike and
//! never has to poll.
//!
//! Invariants:
//! - a request is either delivered to the main thread or refused at once with
//!   [`MailboxError::Full`] / [`MailboxError::Closed`]; posting never blocks a network thread;
//! - every wake-up the main thread sees is followed by [`Inbox::drain`], which empties both
//!   the eventfd counter and the queue, so no request waits for a later wake-up.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, TrySendError};
use tokio::sync::oneshot;

/// Why a request did not get an answer.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MailboxError {
    /// The main thread has too many requests queued; the caller should fail fast.
    #[error("the main thread has {0} requests queued and takes no more")]
    Full(usize),
    /// The main thread has exited (worker shutting down).
    #[error("the main thread is no longer taking requests")]
    Closed,
    /// The main thread did not answer within the caller's deadline.
    #[error("the main thread did not answer within {0:?}")]
    TimedOut(Duration),
}

/// One request on its way to the main thread, with the channel its answer goes back on.
pub struct Envelope<Req, Resp> {
    pub request: Req,
    reply: oneshot::Sender<Resp>,
}

impl<Req, Resp> Envelope<Req, Resp> {
    /// Answers the request. An answer nobody waits for any more (the caller timed out) is
    /// dropped silently.
    pub fn answer(self, response: Resp) {
        let _ = self.reply.send(response);
    }
}

/// An `eventfd` the main thread can wait on; writing to it makes the descriptor readable.
#[derive(Debug)]
struct WakeFd(OwnedFd);

impl WakeFd {
    fn new() -> io::Result<Self> {
        // SAFETY: eventfd has no memory-safety preconditions; the result is checked below.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a freshly created descriptor that nothing else owns.
        Ok(WakeFd(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a valid u64 to our own eventfd. A full counter
        // (EAGAIN) already means "readable", so the result needs no handling.
        unsafe {
            libc::write(self.0.as_raw_fd(), (&one as *const u64).cast(), 8);
        }
    }

    fn clear(&self) {
        let mut counter: u64 = 0;
        // SAFETY: reads 8 bytes into a valid u64 from our own non-blocking eventfd; EAGAIN
        // (nothing pending) is the expected "already clear" outcome.
        unsafe {
            libc::read(self.0.as_raw_fd(), (&mut counter as *mut u64).cast(), 8);
        }
    }
}

/// The network side: posts requests to the main thread. Cheap to clone.
pub struct Mailbox<Req, Resp> {
    queue: Sender<Envelope<Req, Resp>>,
    wake: Arc<WakeFd>,
    capacity: usize,
}

impl<Req, Resp> Clone for Mailbox<Req, Resp> {
    fn clone(&self) -> Self {
        Mailbox {
            queue: self.queue.clone(),
            wake: Arc::clone(&self.wake),
            capacity: self.capacity,
        }
    }
}

/// The main-thread side: a descriptor to wait on and the queue to drain.
pub struct Inbox<Req, Resp> {
    queue: Receiver<Envelope<Req, Resp>>,
    wake: Arc<WakeFd>,
}

/// Creates a mailbox holding at most `capacity` unanswered requests.
pub fn mailbox<Req, Resp>(capacity: usize) -> io::Result<(Mailbox<Req, Resp>, Inbox<Req, Resp>)> {
    let (tx, rx) = crossbeam_channel::bounded(capacity);
    let wake = Arc::new(WakeFd::new()?);
    Ok((
        Mailbox {
            queue: tx,
            wake: Arc::clone(&wake),
            capacity,
        },
        Inbox { queue: rx, wake },
    ))
}

impl<Req, Resp> Mailbox<Req, Resp> {
    /// Posts a request without waiting; the receiver yields the answer.
    pub fn post(&self, request: Req) -> Result<oneshot::Receiver<Resp>, MailboxError> {
        let (reply, answer) = oneshot::channel();
        match self.queue.try_send(Envelope { request, reply }) {
            Ok(()) => {
                self.wake.wake();
                Ok(answer)
            }
            Err(TrySendError::Full(_)) => Err(MailboxError::Full(self.capacity)),
            Err(TrySendError::Disconnected(_)) => Err(MailboxError::Closed),
        }
    }

    /// Posts a request and waits at most `deadline` for its answer.
    pub async fn call(&self, request: Req, deadline: Duration) -> Result<Resp, MailboxError> {
        let answer = self.post(request)?;
        match tokio::time::timeout(deadline, answer).await {
            Ok(Ok(response)) => Ok(response),
            // The envelope was dropped unanswered: the main thread is gone.
            Ok(Err(_)) => Err(MailboxError::Closed),
            Err(_) => Err(MailboxError::TimedOut(deadline)),
        }
    }
}

impl<Req, Resp> Inbox<Req, Resp> {
    /// The descriptor to add to the main thread's wait set (readable when requests wait).
    pub fn wake_fd(&self) -> RawFd {
        self.wake.0.as_raw_fd()
    }

    /// Takes every queued request, in arrival order, and hands each to `handle`.
    /// Returns how many were handled.
    pub fn drain(&self, mut handle: impl FnMut(Envelope<Req, Resp>)) -> usize {
        // Clear first: a request posted while we drain re-arms the descriptor.
        self.wake.clear();
        let mut handled = 0;
        while let Ok(envelope) = self.queue.try_recv() {
            handle(envelope);
            handled += 1;
        }
        handled
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn readable(fd: RawFd) -> bool {
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, zero timeout.
        let n = unsafe { libc::poll(&mut pfd, 1, 0) };
        n == 1 && pfd.revents & libc::POLLIN != 0
    }

    #[test]
    fn posting_makes_the_wake_descriptor_readable_until_drained() {
        let (mailbox, inbox) = mailbox::<u32, u32>(8).unwrap();
        assert!(!readable(inbox.wake_fd()));
        let _a = mailbox.post(1).unwrap();
        let _b = mailbox.post(2).unwrap();
        assert!(readable(inbox.wake_fd()));
        let mut seen = vec![];
        assert_eq!(inbox.drain(|e| seen.push(e.request)), 2);
        assert_eq!(seen, vec![1, 2]);
        assert!(!readable(inbox.wake_fd()));
    }

    #[test]
    fn a_full_mailbox_refuses_at_once() {
        let (mailbox, _inbox) = mailbox::<u32, u32>(2).unwrap();
        let _a = mailbox.post(1).unwrap();
        let _b = mailbox.post(2).unwrap();
        assert_eq!(mailbox.post(3).unwrap_err(), MailboxError::Full(2));
    }

    #[test]
    fn a_closed_inbox_is_reported() {
        let (mailbox, inbox) = mailbox::<u32, u32>(2).unwrap();
        drop(inbox);
        assert_eq!(mailbox.post(1).unwrap_err(), MailboxError::Closed);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn answers_from_another_thread_reach_every_caller() {
        let (mailbox, inbox) = mailbox::<u64, u64>(64).unwrap();
        let main = std::thread::spawn(move || {
            let mut answered = 0;
            while answered < 200 {
                let mut pfd = libc::pollfd {
                    fd: inbox.wake_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one valid pollfd; waits up to 1 s.
                unsafe { libc::poll(&mut pfd, 1, 1000) };
                answered += inbox.drain(|e| {
                    let r = e.request * 2;
                    e.answer(r)
                });
            }
        });
        let mut calls = vec![];
        for i in 0..200u64 {
            let m = mailbox.clone();
            calls.push(tokio::spawn(async move {
                loop {
                    match m.call(i, Duration::from_secs(5)).await {
                        Err(MailboxError::Full(_)) => tokio::task::yield_now().await,
                        other => return other,
                    }
                }
            }));
        }
        for (i, c) in calls.into_iter().enumerate() {
            assert_eq!(c.await.unwrap(), Ok(i as u64 * 2));
        }
        main.join().unwrap();
    }

    #[tokio::test]
    async fn an_unanswered_call_times_out() {
        let (mailbox, _inbox) = mailbox::<u32, u32>(2).unwrap();
        let err = mailbox
            .call(1, Duration::from_millis(50))
            .await
            .unwrap_err();
        assert_eq!(err, MailboxError::TimedOut(Duration::from_millis(50)));
    }

    #[tokio::test]
    async fn an_envelope_dropped_unanswered_reports_closed() {
        let (mailbox, inbox) = mailbox::<u32, u32>(2).unwrap();
        let answer = mailbox.post(7).unwrap();
        inbox.drain(drop);
        assert!(answer.await.is_err());
    }
}
