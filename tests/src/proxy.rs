//! A TCP proxy on 127.0.0.1 that a test puts between two Blitzen processes to make their link
//! slow or silent: [`Proxy::throttle`] limits both directions to some bytes per second,
//! [`Proxy::freeze`] stops forwarding while both sockets stay open (a pulled cable, a NAT that
//! dropped the mapping, a host that lost power), [`Proxy::thaw`] resumes, [`Proxy::cut`] closes
//! every connection (a proxy or a firewall that resets them). It also keeps every byte it
//! forwards ([`Proxy::recorded`]: what an eavesdropper on the link sees) and can flip one byte
//! of what it forwards next ([`Proxy::tamper`]: an attacker on the path).
//!
//! Each connection is two threads copying bytes, one per direction. Dropping the proxy closes
//! every connection and stops its threads.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// What the pumps obey.
#[derive(Debug, Default)]
struct State {
    /// Bytes per second in each direction; `None`: as fast as the sockets go.
    rate: Option<u64>,
    /// Nothing is forwarded while set.
    frozen: bool,
    /// The proxy was dropped.
    stopped: bool,
    /// Every socket, to shut them down on drop.
    sockets: Vec<TcpStream>,
    /// Every byte forwarded, both directions.
    recorded: Vec<u8>,
    /// The direction in which the next chunk forwarded gets one byte flipped.
    tamper: Option<Direction>,
}

/// A direction through the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From the side that connected to the proxy to the upstream.
    Up,
    /// From the upstream back.
    Down,
}

#[derive(Debug, Default)]
struct Control {
    state: Mutex<State>,
    changed: Condvar,
}

impl Control {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A running proxy.
#[derive(Debug)]
pub struct Proxy {
    /// `127.0.0.1:PORT` to connect to instead of the upstream.
    pub addr: String,
    control: Arc<Control>,
}

impl Proxy {
    /// Listens on a free port of 127.0.0.1 and forwards every connection to `upstream`.
    pub fn start(upstream: &str) -> io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?.to_string();
        let control = Arc::new(Control::default());
        let upstream = upstream.to_string();
        let shared = control.clone();
        std::thread::Builder::new().name("proxy-accept".into()).spawn(move || {
            for client in listener.incoming() {
                if shared.lock().stopped {
                    break;
                }
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(&upstream) else { continue };
                let _ = (client.set_nodelay(true), server.set_nodelay(true));
                if let Err(e) = connect_pumps(&shared, client, server) {
                    eprintln!("proxy: cannot forward a connection: {e}");
                }
            }
        })?;
        Ok(Self { addr, control })
    }

    /// Limits each direction to `bytes_per_second`.
    pub fn throttle(&self, bytes_per_second: u64) {
        self.control.lock().rate = Some(bytes_per_second.max(1));
        self.control.changed.notify_all();
    }

    /// Stops forwarding; both sockets stay open.
    pub fn freeze(&self) {
        self.control.lock().frozen = true;
        self.control.changed.notify_all();
    }

    /// Cuts every connection made so far (both ends see it closed); new ones are forwarded.
    pub fn cut(&self) {
        let sockets = std::mem::take(&mut self.control.lock().sockets);
        for socket in sockets {
            let _ = socket.shutdown(Shutdown::Both);
        }
    }

    /// Everything forwarded so far, both directions.
    pub fn recorded(&self) -> Vec<u8> {
        self.control.lock().recorded.clone()
    }

    /// Flips one byte in the middle of the next chunk forwarded in `direction`.
    pub fn tamper(&self, direction: Direction) {
        self.control.lock().tamper = Some(direction);
    }

    /// Forwards again what waited and what comes.
    pub fn thaw(&self) {
        self.control.lock().frozen = false;
        self.control.changed.notify_all();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let sockets = {
            let mut state = self.control.lock();
            state.stopped = true;
            std::mem::take(&mut state.sockets)
        };
        self.control.changed.notify_all();
        for socket in sockets {
            let _ = socket.shutdown(Shutdown::Both);
        }
        // Wake the accept loop so it sees `stopped`.
        let _ = TcpStream::connect(&self.addr);
    }
}

fn connect_pumps(control: &Arc<Control>, client: TcpStream, server: TcpStream) -> io::Result<()> {
    {
        let mut state = control.lock();
        state.sockets.push(client.try_clone()?);
        state.sockets.push(server.try_clone()?);
    }
    let up = (client.try_clone()?, server.try_clone()?, Direction::Up);
    for (from, to, direction) in [up, (server, client, Direction::Down)] {
        let control = control.clone();
        let name = format!("proxy-{direction:?}");
        std::thread::Builder::new()
            .name(name)
            .spawn(move || pump(&control, from, to, direction))?;
    }
    Ok(())
}

/// Copies `from` to `to` under the proxy's rules until either side closes.
fn pump(control: &Control, mut from: TcpStream, mut to: TcpStream, direction: Direction) {
    let mut buf = vec![0u8; 64 * 1024];
    // Throttling: bytes sent since `window` began, paced to the rate.
    let mut window = Instant::now();
    let mut sent_in_window = 0u64;
    loop {
        let chunk = match control.lock().rate {
            // A tenth of a second's worth at a time, so the pace is smooth.
            Some(rate) => (rate / 10).clamp(1, buf.len() as u64) as usize,
            None => buf.len(),
        };
        let n = match from.read(&mut buf[..chunk]) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let rate = {
            let mut state = control.lock();
            while state.frozen && !state.stopped {
                state = control.changed.wait(state).unwrap_or_else(PoisonError::into_inner);
            }
            if state.stopped {
                break;
            }
            if state.tamper == Some(direction) {
                state.tamper = None;
                buf[n / 2] ^= 0x20;
            }
            state.recorded.extend_from_slice(&buf[..n]);
            state.rate
        };
        if let Some(rate) = rate {
            sent_in_window += n as u64;
            let due = Duration::from_secs_f64(sent_in_window as f64 / rate as f64);
            let elapsed = window.elapsed();
            if due > elapsed {
                // Pacing is the point of a throttle: wait out the time these bytes cost.
                std::thread::sleep(due - elapsed);
            }
            if window.elapsed() > Duration::from_secs(1) {
                window = Instant::now();
                sent_in_window = 0;
            }
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}
