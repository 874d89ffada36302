//! Hosts of a test's own, on real addresses: network namespaces joined by a bridge.
//!
//! A [`Network`] is a "switch" namespace holding a bridge, and one namespace per [`Host`], each
//! with one veth cable into the bridge and an address `10.77.0.N/24` — private, and reachable
//! only inside the namespaces this network made (nothing is routed out of them, and the
//! machine's own namespace never sees these links). A process runs on a host by
//! `ip netns exec` ([`Network::command`]). Links can be cut and mended ([`Network::cut`]) and
//! slowed to a rate ([`Network::limit`], a token bucket); a host made with
//! [`Network::faulty_host`] has a cable with latency, jitter and loss instead (see [`crate::wire`]).
//! Everything is removed when the network is dropped.
//!
//! Making namespaces needs root (`CAP_NET_ADMIN`); the suite runs as root, as CI does. Without it
//! [`Network::new`] says so.

use std::ffi::OsStr;
use std::io;
use std::process::{Command, Stdio};

use crate::wire::{self, Faults, Wire};

/// Hosts in namespaces of their own, joined by a switch; removed when dropped.
#[derive(Debug)]
pub struct Network {
    /// The prefix of every namespace's name: this process and the network's label.
    tag: String,
    /// The switch's namespace.
    switch: String,
    /// The hosts' namespaces, made so far.
    hosts: Vec<String>,
    /// The faulty hosts' cables.
    wires: Vec<Wire>,
}

/// One host of a [`Network`].
#[derive(Debug, Clone)]
pub struct Host {
    /// Its namespace.
    pub namespace: String,
    /// Its address, `10.77.0.N`.
    pub addr: String,
    /// Its cable's end in the switch.
    port: String,
}

/// Runs `ip` with `args`; its stderr in the error.
fn ip(args: &[&str]) -> io::Result<()> {
    run(Command::new("ip").args(args))
}

fn run(command: &mut Command) -> io::Result<()> {
    let out = command.stdin(Stdio::null()).output().map_err(|e| {
        io::Error::other(format!("cannot run {command:?}: {e} (iproute2 is needed)"))
    })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "{command:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

impl Network {
    /// A network with no host yet; `label` tells its namespaces from other tests'.
    pub fn new(label: &str) -> io::Result<Self> {
        if !rustix::process::geteuid().is_root() {
            return Err(io::Error::other(
                "these tests make network namespaces, which needs root (CAP_NET_ADMIN): run the \
                 suite as root, as CI does",
            ));
        }
        let tag = format!("blz-{}-{label}", std::process::id());
        let switch = format!("{tag}-sw");
        ip(&["netns", "add", &switch])?;
        let network = Self { tag, switch, hosts: Vec::new(), wires: Vec::new() };
        ip(&["-n", &network.switch, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &network.switch, "link", "set", "br0", "up"])?;
        Ok(network)
    }

    /// A new host named `name`, cabled into the switch.
    pub fn host(&mut self, name: &str) -> io::Result<Host> {
        let (n, namespace) = self.new_namespace(name)?;
        let (port, end) = (format!("p{n}"), format!("h{n}"));
        let sw = self.switch.as_str();
        ip(&["-n", sw, "link", "add", &port, "type", "veth", "peer", "name", &end])?;
        ip(&["-n", sw, "link", "set", &end, "netns", &namespace])?;
        ip(&["-n", &namespace, "link", "set", &end, "name", "eth0"])?;
        self.plug(n, namespace, port)
    }

    /// A new host named `name`, whose cable into the switch does `faults` to every frame.
    pub fn faulty_host(&mut self, name: &str, faults: Faults) -> io::Result<Host> {
        let (n, namespace) = self.new_namespace(name)?;
        let port = format!("p{n}");
        ip(&["-n", &namespace, "tuntap", "add", "dev", "eth0", "mode", "tap"])?;
        ip(&["-n", &self.switch, "tuntap", "add", "dev", &port, "mode", "tap"])?;
        self.wires.push(wire::connect(&namespace, "eth0", &self.switch, &port, faults)?);
        self.plug(n, namespace, port)
    }

    fn new_namespace(&mut self, name: &str) -> io::Result<(usize, String)> {
        let n = self.hosts.len() + 1;
        let namespace = format!("{}-{name}", self.tag);
        ip(&["netns", "add", &namespace])?;
        self.hosts.push(namespace.clone());
        Ok((n, namespace))
    }

    /// Gives host `n` its address and plugs its cable (`eth0` there, `port` in the switch) in.
    fn plug(&self, n: usize, namespace: String, port: String) -> io::Result<Host> {
        let sw = self.switch.as_str();
        let addr = format!("10.77.0.{n}");
        ip(&["-n", &namespace, "addr", "add", &format!("{addr}/24"), "dev", "eth0"])?;
        ip(&["-n", &namespace, "link", "set", "eth0", "up"])?;
        ip(&["-n", &namespace, "link", "set", "lo", "up"])?;
        ip(&["-n", sw, "link", "set", &port, "master", "br0"])?;
        ip(&["-n", sw, "link", "set", &port, "up"])?;
        Ok(Host { namespace, addr, port })
    }

    /// `program` run on `host`.
    pub fn command(&self, host: &Host, program: impl AsRef<OsStr>) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &host.namespace]).arg(program);
        command
    }

    /// Pulls `host`'s cable out of the switch: nothing gets through either way, and neither
    /// end is told.
    pub fn cut(&self, host: &Host) -> io::Result<()> {
        ip(&["-n", &self.switch, "link", "set", &host.port, "down"])
    }

    /// Plugs `host`'s cable back in.
    pub fn mend(&self, host: &Host) -> io::Result<()> {
        ip(&["-n", &self.switch, "link", "set", &host.port, "up"])
    }

    /// Limits `host`'s link to `rate` (as `tc` writes it: `1mbit`) each way.
    pub fn limit(&self, host: &Host, rate: &str) -> io::Result<()> {
        for (namespace, dev) in [(&self.switch, host.port.as_str()), (&host.namespace, "eth0")] {
            run(Command::new("ip")
                .args(["netns", "exec", namespace, "tc", "qdisc", "replace"])
                .args([
                    "dev", dev, "root", "tbf", "rate", rate, "burst", "32kbit", "latency", "400ms",
                ]))?;
        }
        Ok(())
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        self.wires.clear();
        // Deleting a namespace removes its end of each cable, and with it the other end.
        for namespace in self.hosts.iter().chain(std::iter::once(&self.switch)) {
            let _ = ip(&["netns", "del", namespace]);
        }
    }
}
