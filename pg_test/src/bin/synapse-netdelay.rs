//! Delays every packet that iptables hands to an NFQUEUE by a fixed time, keeping their
//! order: the `delay=MS` of `scripts/cluster netem` on kernels built without the netem
//! queueing discipline (CONFIG_NET_SCH_NETEM), such as the one our CI runs on.
//!
//! `scripts/cluster` starts it inside a node's network namespace, then adds
//! `iptables -t mangle -A OUTPUT -o eth0 -j NFQUEUE --queue-num Q --queue-bypass`, so each
//! packet the node sends waits here until its time has come. On SIGTERM or SIGINT the
//! packets still held are let go at once, so clearing the delay loses nothing.
//!
//! Usage: synapse-netdelay QUEUE DELAY_MS

use std::collections::VecDeque;
use std::io::ErrorKind;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nfq::{Message, Queue, Verdict};

/// Bytes of each packet copied to us: we never read the payload, only hold the packet.
const COPY_RANGE: u16 = 0;
/// Packets the kernel keeps for us; a full queue lets packets through (fail open).
const KERNEL_QUEUE_LEN: u32 = 65_536;
/// How often we look for new packets (the queue has no descriptor to wait on): a packet's
/// delay is counted from when we see it, so this bounds the delay's error.
const POLL: Duration = Duration::from_millis(1);

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn request_stop(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let parsed = match args.as_slice() {
        [_, queue, delay] => queue.parse::<u16>().ok().zip(delay.parse::<u64>().ok()),
        _ => None,
    };
    let Some((queue_num, delay_ms)) = parsed else {
        eprintln!("usage: synapse-netdelay QUEUE DELAY_MS");
        return ExitCode::from(2);
    };
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(
            libc::SIGTERM,
            request_stop as extern "C" fn(libc::c_int) as libc::sighandler_t,
        );
        libc::signal(
            libc::SIGINT,
            request_stop as extern "C" fn(libc::c_int) as libc::sighandler_t,
        );
    }
    match run(queue_num, Duration::from_millis(delay_ms)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("synapse-netdelay: queue {queue_num}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(queue_num: u16, delay: Duration) -> std::io::Result<()> {
    let mut queue = Queue::open()?;
    queue.bind(queue_num)?;
    queue.set_copy_range(queue_num, COPY_RANGE)?;
    queue.set_queue_max_len(queue_num, KERNEL_QUEUE_LEN)?;
    queue.set_fail_open(queue_num, true)?;
    queue.set_nonblocking(true);
    // Tell the script we are bound (only now may it send packets our way) and who to stop.
    println!("ready {}", std::process::id());

    let mut held: VecDeque<(Instant, Message)> = VecDeque::new();
    while !STOP.load(Ordering::Relaxed) {
        loop {
            match queue.recv() {
                Ok(mut msg) => {
                    msg.set_verdict(Verdict::Accept);
                    held.push_back((Instant::now() + delay, msg));
                }
                Err(e)
                    if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted =>
                {
                    break
                }
                Err(e) => return Err(e),
            }
        }
        let now = Instant::now();
        while held.front().is_some_and(|(due, _)| *due <= now) {
            let (_, msg) = held.pop_front().expect("front checked");
            queue.verdict(msg)?;
        }
        let wait = held.front().map_or(POLL, |(due, _)| {
            due.saturating_duration_since(now).min(POLL)
        });
        std::thread::sleep(wait);
    }
    for (_, msg) in held {
        queue.verdict(msg)?;
    }
    Ok(())
}
