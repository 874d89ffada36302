//! Small helpers from the seed's `blitzen.utils`.

use std::net::IpAddr;

/// The address of the interface this machine uses to reach other hosts — what other machines
/// of the LAN should connect to — rather than `127.0.1.1`. Found by asking the kernel which
/// route and source address it would use; no packet is sent. Falls back to `127.0.0.1` on a
/// machine with no route out.
pub fn get_local_ip() -> IpAddr {
    crate::distributed::local_ip().unwrap_or(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_ip_is_not_the_debian_hostname_alias() {
        let ip = get_local_ip();
        assert_ne!(ip.to_string(), "127.0.1.1");
        assert!(!ip.is_unspecified());
    }
}
