//! A persistent `WaitEventSet` for background workers: the process latch, postmaster death
//! and any number of descriptors (such as a [`synapse_core::mailbox::Inbox`]'s eventfd).
//!
//! Waiting through PostgreSQL's own machinery keeps signals, latches and postmaster death
//! handled exactly as in core PostgreSQL. Postmaster death exits the process
//! (`WL_EXIT_ON_PM_DEATH`), as PostgreSQL's own workers do.

use std::os::fd::RawFd;
use std::time::Duration;

use pgrx::pg_sys;

/// What woke a [`WaitSet::wait`] up.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Woken {
    pub latch: bool,
    /// Positions (as returned by [`WaitSet::add_readable`]) of descriptors that became readable.
    pub readable: u64,
    pub timeout: bool,
}

/// A wait event set that lives as long as the worker.
pub struct WaitSet {
    set: *mut pg_sys::WaitEventSet,
}

impl WaitSet {
    /// Creates a set with room for `descriptors` readable descriptors beside the latch and
    /// postmaster death.
    pub fn new(descriptors: usize) -> Self {
        // SAFETY: main thread of a started process; TopMemoryContext outlives the worker,
        // and MyLatch is this process's latch, valid for its whole life.
        let set = unsafe {
            let set = pg_sys::CreateWaitEventSet(pg_sys::TopMemoryContext, 2 + descriptors as i32);
            pg_sys::AddWaitEventToSet(
                set,
                pg_sys::WL_LATCH_SET,
                pg_sys::PGINVALID_SOCKET,
                pg_sys::MyLatch,
                std::ptr::null_mut(),
            );
            pg_sys::AddWaitEventToSet(
                set,
                pg_sys::WL_EXIT_ON_PM_DEATH,
                pg_sys::PGINVALID_SOCKET,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            );
            set
        };
        WaitSet { set }
    }

    /// Adds a descriptor to wake up for when it becomes readable; returns its position.
    pub fn add_readable(&mut self, fd: RawFd) -> i32 {
        // SAFETY: `self.set` was created with room for it; the caller keeps `fd` open for
        // the life of the set.
        unsafe {
            pg_sys::AddWaitEventToSet(
                self.set,
                pg_sys::WL_SOCKET_READABLE,
                fd,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            )
        }
    }

    /// Waits until the latch is set, a descriptor is readable, or `timeout` passes. Resets
    /// the latch when it was set, so the caller only has to act on the flags it reads next.
    pub fn wait(&mut self, timeout: Option<Duration>) -> Woken {
        let timeout_ms =
            timeout.map_or(-1, |t| t.as_millis().min(i32::MAX as u128) as libc::c_long);
        let mut events = [pg_sys::WaitEvent {
            pos: 0,
            events: 0,
            fd: 0,
            user_data: std::ptr::null_mut(),
        }; 8];
        // SAFETY: `events` has room for the 8 events we ask for.
        let n = unsafe {
            pg_sys::WaitEventSetWait(
                self.set,
                timeout_ms,
                events.as_mut_ptr(),
                events.len() as i32,
                pg_sys::PG_WAIT_EXTENSION,
            )
        };
        let mut woken = Woken {
            timeout: n == 0,
            ..Woken::default()
        };
        for event in &events[..n.max(0) as usize] {
            if event.events & pg_sys::WL_LATCH_SET != 0 {
                woken.latch = true;
                // SAFETY: resetting our own latch on the main thread.
                unsafe { pg_sys::ResetLatch(pg_sys::MyLatch) };
            }
            if event.events & pg_sys::WL_SOCKET_READABLE != 0 && event.pos < 64 {
                woken.readable |= 1 << event.pos;
            }
        }
        woken
    }
}

impl Drop for WaitSet {
    fn drop(&mut self) {
        // SAFETY: the set was created by CreateWaitEventSet and is freed once.
        unsafe { pg_sys::FreeWaitEventSet(self.set) };
    }
}
