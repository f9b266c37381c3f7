//! Whether XDP may drop an interface's frames once it has captured them: only on a dedicated
//! mirror port, which carries nothing the host wants. Loopback, or any interface with an IP
//! address, carries the host's own traffic as well: dropping there took the host's loopback
//! down, the API's own connections included (`calltap run --interface lo`, issue #14).
//!
//! `[capture] drop_after_capture` unset (auto) decides per interface; `true` or `false` is the
//! operator's word for every interface. An IPv6 link-local address (fe80::/10) does not count:
//! the kernel gives one to every interface that is up with IPv6 on, mirror ports included.

use std::{ffi::CStr, io, net::IpAddr};

use serde::Serialize;

/// What XDP does with a frame after capture.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AfterCapture {
    Drop,
    Pass,
}

impl AfterCapture {
    pub fn as_str(self) -> &'static str {
        match self {
            AfterCapture::Drop => "drop",
            AfterCapture::Pass => "pass",
        }
    }
}

/// The decision for one interface, and why (for the log and the run summary).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DropDecision {
    pub after_capture: AfterCapture,
    pub reason: String,
    /// The interface carries the host's own traffic (loopback, or it has an address).
    pub host_traffic: bool,
}

/// What the decision rests on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InterfaceFacts {
    pub loopback: bool,
    /// Its addresses, IPv6 link-local ones left out.
    pub addresses: Vec<IpAddr>,
}

impl InterfaceFacts {
    /// Reads `interface`'s flags and addresses (getifaddrs).
    pub fn read(interface: &str) -> io::Result<InterfaceFacts> {
        let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
        // SAFETY: getifaddrs fills `head` with a list we free below.
        if unsafe { libc::getifaddrs(&mut head) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let mut facts = InterfaceFacts::default();
        let mut found = false;
        let mut cur = head;
        while !cur.is_null() {
            // SAFETY: `cur` is a node of the list getifaddrs returned, alive until freeifaddrs.
            let ifa = unsafe { &*cur };
            cur = ifa.ifa_next;
            if ifa.ifa_name.is_null()
                // SAFETY: ifa_name is a NUL-terminated string owned by the list (not null).
                || unsafe { CStr::from_ptr(ifa.ifa_name) }.to_bytes() != interface.as_bytes()
            {
                continue;
            }
            found = true;
            facts.loopback |= ifa.ifa_flags & libc::IFF_LOOPBACK as u32 != 0;
            // SAFETY: a non-null ifa_addr points at a sockaddr of the family it names.
            if let Some(addr) = unsafe { ip_of(ifa.ifa_addr) } {
                if !is_ipv6_link_local(&addr) {
                    facts.addresses.push(addr);
                }
            }
        }
        // SAFETY: the list getifaddrs returned, freed once.
        unsafe { libc::freeifaddrs(head) };
        if !found {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no interface {interface}"),
            ));
        }
        Ok(facts)
    }
}

/// The IP address in a sockaddr, if it holds one.
///
/// # Safety
/// `sa` is null or points at a valid sockaddr of the family in its `sa_family`.
unsafe fn ip_of(sa: *const libc::sockaddr) -> Option<IpAddr> {
    if sa.is_null() {
        return None;
    }
    // SAFETY: per the contract, the family field is readable and says which struct this is.
    match i32::from(unsafe { (*sa).sa_family }) {
        libc::AF_INET => {
            // SAFETY: an AF_INET sockaddr is a sockaddr_in.
            let v4 = unsafe { &*sa.cast::<libc::sockaddr_in>() };
            // s_addr holds the address's bytes in network order.
            Some(IpAddr::from(v4.sin_addr.s_addr.to_ne_bytes()))
        }
        libc::AF_INET6 => {
            // SAFETY: an AF_INET6 sockaddr is a sockaddr_in6.
            let v6 = unsafe { &*sa.cast::<libc::sockaddr_in6>() };
            Some(IpAddr::from(v6.sin6_addr.s6_addr))
        }
        _ => None,
    }
}

fn is_ipv6_link_local(addr: &IpAddr) -> bool {
    matches!(addr, IpAddr::V6(a) if a.segments()[0] & 0xffc0 == 0xfe80)
}

/// The decision for an interface: `setting` is `[capture] drop_after_capture` (None: auto),
/// `facts` what the interface is, or why it could not be read (then frames pass: a drop on an
/// interface that may carry the host's traffic is the harm to avoid).
pub fn decide(setting: Option<bool>, facts: &io::Result<InterfaceFacts>) -> DropDecision {
    let host_traffic = carries_host_traffic(facts);
    let (after_capture, reason) = match (setting, facts) {
        (Some(true), _) => (AfterCapture::Drop, "drop_after_capture = true".to_string()),
        (Some(false), _) => (AfterCapture::Pass, "drop_after_capture = false".to_string()),
        (None, Err(e)) => (
            AfterCapture::Pass,
            format!("its addresses could not be read: {e}"),
        ),
        (None, Ok(f)) if f.loopback => (AfterCapture::Pass, "loopback".to_string()),
        (None, Ok(f)) => match f.addresses.first() {
            Some(a) => (AfterCapture::Pass, format!("it has IP address {a}")),
            None => (
                AfterCapture::Drop,
                "dedicated mirror port: no IP address".to_string(),
            ),
        },
    };
    DropDecision {
        after_capture,
        reason,
        host_traffic,
    }
}

/// For a capture that can only copy frames (AF_PACKET): they always pass.
pub fn copy_only(facts: &io::Result<InterfaceFacts>) -> DropDecision {
    DropDecision {
        after_capture: AfterCapture::Pass,
        reason: "AF_PACKET only copies frames".into(),
        host_traffic: carries_host_traffic(facts),
    }
}

/// Loopback, or an interface with an address (unknown counts as yes).
fn carries_host_traffic(facts: &io::Result<InterfaceFacts>) -> bool {
    match facts {
        Ok(f) => f.loopback || !f.addresses.is_empty(),
        Err(_) => true,
    }
}

impl DropDecision {
    /// Says, for `interface`, which mode was chosen and why.
    pub fn log(&self, interface: &str) {
        match self.after_capture {
            AfterCapture::Drop if self.host_traffic => log::warn!(
                "{interface}: dropping captured frames after capture ({}), the host's own traffic on it included",
                self.reason
            ),
            AfterCapture::Drop => log::info!(
                "{interface}: dropping captured frames after capture ({})",
                self.reason
            ),
            AfterCapture::Pass if self.reason.starts_with("drop_after_capture") => {
                log::info!("{interface}: passing frames ({})", self.reason)
            }
            AfterCapture::Pass => log::info!(
                "{interface}: passing frames ({}); set drop_after_capture = true to drop",
                self.reason
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(loopback: bool, addresses: &[&str]) -> io::Result<InterfaceFacts> {
        Ok(InterfaceFacts {
            loopback,
            addresses: addresses
                .iter()
                .map(|a| a.parse().expect("address"))
                .collect(),
        })
    }

    #[test]
    fn auto_drops_only_on_a_port_without_addresses() {
        let d = decide(None, &facts(false, &[]));
        assert_eq!(d.after_capture, AfterCapture::Drop);
        assert_eq!(d.reason, "dedicated mirror port: no IP address");
        let d = decide(None, &facts(true, &["127.0.0.1", "::1"]));
        assert_eq!(
            (d.after_capture, d.reason.as_str()),
            (AfterCapture::Pass, "loopback")
        );
        let d = decide(None, &facts(false, &["198.19.4.2"]));
        assert_eq!(d.after_capture, AfterCapture::Pass);
        assert_eq!(d.reason, "it has IP address 198.19.4.2");
        let d = decide(None, &facts(false, &["2001:db8::2"]));
        assert_eq!(d.after_capture, AfterCapture::Pass);
        let unreadable = Err(io::Error::other("gone"));
        assert_eq!(decide(None, &unreadable).after_capture, AfterCapture::Pass);
    }

    #[test]
    fn the_operators_setting_wins_everywhere() {
        for (f, host) in [
            (facts(true, &[]), true),
            (facts(false, &["10.0.0.1"]), true),
            (facts(false, &[]), false),
        ] {
            let d = decide(Some(true), &f);
            assert_eq!(
                (d.after_capture, d.host_traffic),
                (AfterCapture::Drop, host)
            );
            assert_eq!(decide(Some(false), &f).after_capture, AfterCapture::Pass);
        }
    }

    #[test]
    fn loopback_is_read_as_loopback_and_link_local_ipv6_does_not_count() {
        let lo = InterfaceFacts::read("lo").expect("lo exists");
        assert!(lo.loopback);
        assert!(lo.addresses.iter().all(|a| !is_ipv6_link_local(a)));
        assert!(is_ipv6_link_local(&"fe80::1".parse().expect("address")));
        assert!(!is_ipv6_link_local(&"fec0::1".parse().expect("address")));
        assert!(InterfaceFacts::read("no-such-if0").is_err());
    }
}
