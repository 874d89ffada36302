//! A network cable with faults, in user space: a TAP device at each end, in two namespaces, and
//! one thread each way copying frames between them after a delay (with jitter), dropping some.
//!
//! It does what `tc netem` would, for kernels without it (the machine these tests run on has no
//! `sch_netem`: `tc qdisc add … netem` answers "Specified qdisc kind is unknown"). Each frame is
//! held until its own time — delay plus a uniform jitter — so, as with netem, jitter may reorder
//! frames. A thread waits in `poll` for the next frame or the next due time, whichever comes
//! first, and for the cable's drop.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec, poll};
use rustix::fs::{Mode, OFlags};

/// What a cable does to the frames on it, each way.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Faults {
    /// How long each frame takes.
    pub delay: Duration,
    /// Added to or taken from the delay, uniformly, frame by frame.
    pub jitter: Duration,
    /// The share of frames lost, from 0 to 1.
    pub loss: f64,
}

/// A cable between two TAP devices; it is cut when dropped.
#[derive(Debug)]
pub struct Wire {
    /// Closing it wakes both threads, which end.
    stop: Option<OwnedFd>,
    threads: Vec<JoinHandle<()>>,
}

impl Drop for Wire {
    fn drop(&mut self) {
        self.stop.take();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// Opens the TAP device `name` of the namespace `namespace` (made beforehand by `ip tuntap add
/// … mode tap`), from a thread that enters that namespace: the device is looked up by name
/// where the opening thread is.
fn open_tap(namespace: &str, name: &str) -> io::Result<OwnedFd> {
    let (namespace, name) = (namespace.to_string(), name.to_string());
    let opener = std::thread::spawn(move || -> io::Result<OwnedFd> {
        let ns = rustix::fs::open(
            format!("/run/netns/{namespace}"),
            OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        rustix::thread::move_into_link_name_space(
            ns.as_fd(),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )?;
        let tap = rustix::fs::open("/dev/net/tun", OFlags::RDWR | OFlags::CLOEXEC, Mode::empty())?;
        // SAFETY: `ifreq` is a plain C structure for which all zero bytes are valid.
        #[allow(unsafe_code)]
        let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
        if name.len() >= request.ifr_name.len() {
            return Err(io::Error::other(format!("device name `{name}` is too long")));
        }
        for (slot, byte) in request.ifr_name.iter_mut().zip(name.bytes()) {
            *slot = byte as libc::c_char;
        }
        request.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
        // SAFETY: TUNSETIFF reads and writes one `ifreq`, which `request` is, for the duration
        // of the call, on a descriptor of /dev/net/tun that this function owns.
        #[allow(unsafe_code)]
        let result = unsafe { libc::ioctl(tap.as_raw_fd(), libc::TUNSETIFF, &mut request) };
        if result < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(tap)
    });
    opener.join().map_err(|_| io::Error::other("the thread opening a TAP device panicked"))?
}

/// Joins the TAP devices `a` (in namespace `a_ns`) and `b` (in `b_ns`) with a cable that does
/// `faults` to every frame, each way.
pub fn connect(a_ns: &str, a: &str, b_ns: &str, b: &str, faults: Faults) -> io::Result<Wire> {
    let (a, b) = (open_tap(a_ns, a)?, open_tap(b_ns, b)?);
    let (stop_read, stop) = rustix::pipe::pipe()?;
    let a = std::sync::Arc::new(a);
    let b = std::sync::Arc::new(b);
    let mut threads = Vec::new();
    for (from, to, seed) in [(a.clone(), b.clone(), 1), (b, a, 2)] {
        let stop = stop_read.try_clone()?;
        threads.push(std::thread::spawn(move || carry(&from, &to, &stop, faults, seed)));
    }
    Ok(Wire { stop: Some(stop), threads })
}

/// Copies frames from `from` to `to` with `faults`, until `stop` closes.
fn carry(from: &OwnedFd, to: &OwnedFd, stop: &OwnedFd, faults: Faults, seed: u64) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut held: BinaryHeap<Reverse<(Instant, u64, Vec<u8>)>> = BinaryHeap::new();
    let mut number = 0u64;
    let mut buf = vec![0u8; 65536];
    loop {
        let now = Instant::now();
        while held.peek().is_some_and(|Reverse((due, ..))| *due <= now) {
            if let Some(Reverse((_, _, frame))) = held.pop() {
                // A device that is down refuses frames: they are lost, as on a pulled cable.
                let _ = rustix::io::write(to, &frame);
            }
        }
        let wait = held.peek().map(|Reverse((due, ..))| due.saturating_duration_since(now));
        let timeout = wait
            .map(|w| Timespec { tv_sec: w.as_secs() as i64, tv_nsec: i64::from(w.subsec_nanos()) });
        let mut fds = [PollFd::new(from, PollFlags::IN), PollFd::new(stop, PollFlags::IN)];
        match poll(&mut fds, timeout.as_ref()) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(_) => return,
        }
        if !fds[1].revents().is_empty() {
            return;
        }
        if fds[0].revents().contains(PollFlags::IN) {
            let Ok(n) = rustix::io::read(from, &mut buf) else { continue };
            if rng.f64() < faults.loss {
                continue;
            }
            let jitter = faults.jitter.as_secs_f64() * (2.0 * rng.f64() - 1.0);
            let delay = (faults.delay.as_secs_f64() + jitter).max(0.0);
            number += 1;
            held.push(Reverse((
                Instant::now() + Duration::from_secs_f64(delay),
                number,
                buf[..n].to_vec(),
            )));
        }
    }
}
