//! Starting helper threads inside a PostgreSQL process.
//!
//! PostgreSQL delivers SIGTERM, SIGHUP, SIGUSR1 and friends to the process and expects its
//! main thread to run the handlers (they set latches and flags that only the main thread
//! reads). A thread that could receive those signals would run the handlers on the wrong
//! stack at the wrong time, so every helper thread starts with **all** signals blocked and
//! keeps them blocked for its whole life. The caller's signal mask is restored afterwards.

use std::io;
use std::thread::JoinHandle;

/// Spawns a named thread whose signal mask blocks every signal.
pub fn spawn_with_signals_blocked<F, T>(name: &str, f: F) -> io::Result<JoinHandle<T>>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let _restore = block_all_signals()?;
    // The new thread inherits the calling thread's (now fully blocked) mask.
    std::thread::Builder::new().name(name.to_owned()).spawn(f)
}

/// Restores the saved signal mask of the calling thread when dropped.
struct MaskGuard(libc::sigset_t);

impl Drop for MaskGuard {
    fn drop(&mut self) {
        // SAFETY: restores a mask previously returned by pthread_sigmask for this thread.
        unsafe {
            libc::pthread_sigmask(libc::SIG_SETMASK, &self.0, std::ptr::null_mut());
        }
    }
}

fn block_all_signals() -> io::Result<MaskGuard> {
    // SAFETY: sigset_t is plain data; sigfillset initialises it before use, and
    // pthread_sigmask writes the previous mask into `old`.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        let rc = libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        Ok(MaskGuard(old))
    }
}

/// Whether `signal` is blocked in the calling thread.
pub fn signal_blocked(signal: libc::c_int) -> bool {
    // SAFETY: queries the current mask into a zeroed sigset_t.
    unsafe {
        let mut current: libc::sigset_t = std::mem::zeroed();
        libc::pthread_sigmask(libc::SIG_SETMASK, std::ptr::null(), &mut current);
        libc::sigismember(&current, signal) == 1
    }
}

/// A helper thread running one tokio runtime with signals blocked, until its future ends or
/// [`NetThread::stop`] is called. The runtime's own worker threads are started from this
/// thread and inherit its fully blocked signal mask.
pub struct NetThread {
    thread: Option<JoinHandle<()>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    done: crossbeam_channel::Receiver<()>,
}

impl NetThread {
    /// Starts thread `name` running `work` on a fresh runtime with `workers` threads
    /// (1: everything on this one thread).
    pub fn spawn<F>(name: &str, workers: usize, work: F) -> io::Result<NetThread>
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (done_tx, done_rx) = crossbeam_channel::bounded(1);
        let thread = spawn_with_signals_blocked(name, move || {
            let mut builder = if workers > 1 {
                let mut b = tokio::runtime::Builder::new_multi_thread();
                b.worker_threads(workers);
                b
            } else {
                tokio::runtime::Builder::new_current_thread()
            };
            let runtime = builder.enable_all().build().expect("tokio runtime");
            runtime.block_on(async move {
                tokio::select! {
                    _ = stop_rx => {}
                    _ = work => {}
                }
            });
            runtime.shutdown_timeout(std::time::Duration::from_millis(100));
            let _ = done_tx.send(());
        })?;
        Ok(NetThread {
            thread: Some(thread),
            stop: Some(stop_tx),
            done: done_rx,
        })
    }

    /// Whether the thread's work has ended on its own.
    pub fn is_finished(&self) -> bool {
        !self.done.is_empty()
    }

    /// Gives the thread's work `grace` to end on its own (after the caller asked it to,
    /// its own way), then stops it as [`NetThread::stop`] does.
    pub fn stop_after(self, grace: std::time::Duration, within: std::time::Duration) -> bool {
        if self.done.recv_timeout(grace).is_ok() {
            let mut this = self;
            if let Some(thread) = this.thread.take() {
                let _ = thread.join();
            }
            return true;
        }
        self.stop(within)
    }

    /// Asks the thread to stop and waits at most `within`; returns whether it stopped.
    pub fn stop(mut self, within: std::time::Duration) -> bool {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let stopped = self.done.recv_timeout(within).is_ok();
        if stopped {
            if let Some(thread) = self.thread.take() {
                let _ = thread.join();
            }
        }
        stopped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helper_threads_block_signals_and_the_caller_keeps_its_mask() {
        assert!(!signal_blocked(libc::SIGTERM));
        let seen = spawn_with_signals_blocked("probe", || {
            [libc::SIGTERM, libc::SIGHUP, libc::SIGUSR1, libc::SIGINT].map(signal_blocked)
        })
        .unwrap()
        .join()
        .unwrap();
        assert_eq!(seen, [true; 4]);
        assert!(
            !signal_blocked(libc::SIGTERM),
            "the caller's mask must be restored"
        );
    }
}
