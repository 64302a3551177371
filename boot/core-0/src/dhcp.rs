//! A DHCPv4 client (RFC 2131): the first lease on a NIC at boot, then kept for as long as the
//! node runs.
//!
//! DISCOVER, OFFER, REQUEST, ACK over a UDP socket bound to the interface, with the broadcast
//! flag set so that replies reach an interface that has no address yet. A held lease is
//! extended at half its time from the server that gave it, from any server after 7/8 of it,
//! and dropped when it expires or a server refuses it ([`Keeper`]). Replies are untrusted
//! input: every option length is checked, and a reply for another transaction or hardware
//! address is ignored.

use std::{
    io,
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
    os::fd::AsRawFd,
    time::{Duration, Instant},
};

const MAGIC: [u8; 4] = [99, 130, 83, 99];
const HEADER: usize = 236;
const DISCOVER: u8 = 1;
const OFFER: u8 = 2;
const REQUEST: u8 = 3;
const ACK: u8 = 5;
const NAK: u8 = 6;
/// A shorter lease is kept as if it were this long: a server handing out zero-second leases
/// would otherwise have the node negotiate in a tight loop.
pub const MIN_LEASE_SECS: u32 = 4;

/// What a server offered or acknowledged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub kind: u8,
    pub xid: u32,
    pub chaddr: [u8; 6],
    pub address: Ipv4Addr,
    pub server: Option<Ipv4Addr>,
    pub netmask: Option<Ipv4Addr>,
    pub router: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    pub lease_secs: Option<u32>,
}

/// A configured lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub interface: String,
    pub address: Ipv4Addr,
    pub prefix_len: u8,
    pub router: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    pub server: Ipv4Addr,
    /// The lease time the server gave; `None` (or `u32::MAX`) for a lease that never ends.
    pub lease_secs: Option<u32>,
}

/// Builds a client message: DISCOVER, or REQUEST for `requested` from `server`.
pub fn encode(
    kind: u8,
    xid: u32,
    mac: [u8; 6],
    requested: Option<(Ipv4Addr, Ipv4Addr)>,
) -> Vec<u8> {
    let mut p = vec![0u8; HEADER];
    p[0] = 1; // BOOTREQUEST
    p[1] = 1; // Ethernet
    p[2] = 6;
    p[4..8].copy_from_slice(&xid.to_be_bytes());
    p[10..12].copy_from_slice(&0x8000u16.to_be_bytes()); // broadcast replies: no address yet
    p[28..34].copy_from_slice(&mac);
    p.extend_from_slice(&MAGIC);
    p.extend_from_slice(&[53, 1, kind]);
    if let Some((address, server)) = requested {
        p.extend_from_slice(&[50, 4]);
        p.extend_from_slice(&address.octets());
        p.extend_from_slice(&[54, 4]);
        p.extend_from_slice(&server.octets());
    }
    // Subnet mask, router, DNS, lease time.
    p.extend_from_slice(&[55, 4, 1, 3, 6, 51, 255]);
    p
}

/// A REQUEST that extends the lease on `address` (RENEWING and REBINDING: the address in
/// `ciaddr`, no requested address or server identifier, replies sent to the address).
pub fn encode_extension(xid: u32, mac: [u8; 6], address: Ipv4Addr) -> Vec<u8> {
    let mut p = encode(REQUEST, xid, mac, None);
    p[10..12].copy_from_slice(&0u16.to_be_bytes());
    p[12..16].copy_from_slice(&address.octets());
    p
}

fn ip(b: &[u8]) -> Option<Ipv4Addr> {
    <[u8; 4]>::try_from(b).ok().map(Ipv4Addr::from)
}

/// Reads a server message; `None` for anything that is not a well-formed BOOTREPLY.
pub fn decode(p: &[u8]) -> Option<Reply> {
    if p.len() < HEADER + 4 || p[0] != 2 || p[1] != 1 || p[2] != 6 || p[HEADER..HEADER + 4] != MAGIC
    {
        return None;
    }
    let mut r = Reply {
        kind: 0,
        xid: u32::from_be_bytes(p[4..8].try_into().ok()?),
        chaddr: p[28..34].try_into().ok()?,
        address: ip(&p[16..20])?,
        server: None,
        netmask: None,
        router: None,
        dns: Vec::new(),
        lease_secs: None,
    };
    let mut opts = &p[HEADER + 4..];
    while let Some((&code, rest)) = opts.split_first() {
        match code {
            0 => {
                opts = rest;
                continue;
            }
            255 => break,
            _ => {}
        }
        let (&len, rest) = rest.split_first()?;
        let value = rest.get(..len as usize)?;
        opts = &rest[len as usize..];
        match code {
            53 if len == 1 => r.kind = value[0],
            1 => r.netmask = ip(value),
            3 => r.router = value.get(..4).and_then(ip),
            6 => r.dns = value.chunks_exact(4).filter_map(ip).take(3).collect(),
            51 => r.lease_secs = <[u8; 4]>::try_from(value).ok().map(u32::from_be_bytes),
            54 => r.server = ip(value),
            _ => {}
        }
    }
    (r.kind != 0).then_some(r)
}

/// The prefix length of a contiguous netmask; `None` for a mask with holes.
pub fn prefix_len(mask: Ipv4Addr) -> Option<u8> {
    let m = u32::from(mask);
    let len = m.leading_ones();
    (m.checked_shl(len).unwrap_or(0) == 0).then_some(len as u8)
}

fn bound_socket(interface: &str) -> io::Result<UdpSocket> {
    let sock = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68))?;
    sock.set_broadcast(true)?;
    let name = interface.as_bytes();
    // SAFETY: setsockopt reads `name.len()` bytes from a live slice.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_BINDTODEVICE,
            name.as_ptr().cast(),
            name.len() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(sock)
}

fn wait_for(
    sock: &UdpSocket,
    xid: u32,
    mac: [u8; 6],
    kinds: &[u8],
    deadline: Instant,
) -> io::Result<Option<Reply>> {
    let mut buf = [0u8; 1500];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(None);
        }
        sock.set_read_timeout(Some(left))?;
        match sock.recv_from(&mut buf) {
            Ok((n, _)) => {
                if let Some(r) = decode(&buf[..n]) {
                    if r.xid == xid && r.chaddr == mac && kinds.contains(&r.kind) {
                        return Ok(Some(r));
                    }
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(None)
            }
            Err(e) => return Err(e),
        }
    }
}

/// One DISCOVER/OFFER/REQUEST/ACK exchange on `interface`, within `timeout`.
pub fn negotiate(
    interface: &str,
    mac: [u8; 6],
    xid: u32,
    timeout: Duration,
) -> io::Result<Option<Lease>> {
    let sock = bound_socket(interface)?;
    let to = SocketAddrV4::new(Ipv4Addr::BROADCAST, 67);
    let deadline = Instant::now() + timeout;
    sock.send_to(&encode(DISCOVER, xid, mac, None), to)?;
    // An offer without a server identifier cannot be requested: wait for another.
    let (offer, server) = loop {
        let Some(offer) = wait_for(&sock, xid, mac, &[OFFER], deadline)? else {
            return Ok(None);
        };
        if let Some(server) = offer.server {
            break (offer, server);
        }
    };
    sock.send_to(
        &encode(REQUEST, xid, mac, Some((offer.address, server))),
        to,
    )?;
    let Some(ack) = wait_for(&sock, xid, mac, &[ACK, NAK], deadline)? else {
        return Ok(None);
    };
    if ack.kind == NAK || ack.address.is_unspecified() {
        return Ok(None);
    }
    let mask = ack
        .netmask
        .or(offer.netmask)
        .unwrap_or(Ipv4Addr::new(255, 255, 255, 0));
    Ok(Some(Lease {
        interface: interface.to_string(),
        address: ack.address,
        prefix_len: prefix_len(mask).unwrap_or(24),
        router: ack.router.or(offer.router),
        dns: if ack.dns.is_empty() {
            offer.dns
        } else {
            ack.dns
        },
        server,
        lease_secs: ack.lease_secs.or(offer.lease_secs),
    }))
}

/// What happened to a held lease at its next deadline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kept {
    /// `server` extended the lease by `secs` (the same address).
    Extended { server: Ipv4Addr, secs: u32 },
    /// The address may no longer be used: drop it and negotiate a new lease.
    Lost(String),
}

/// Keeps one lease (RFC 2131 4.4.5): from T1 (half the lease) a REQUEST to the server that gave
/// it, from T2 (7/8) a broadcast one to any server, each retried within its phase; a NAK or the
/// lease's end loses it.
#[derive(Debug)]
pub struct Keeper {
    pub lease: Lease,
    mac: [u8; 6],
    xid: u32,
    obtained: Instant,
}

impl Keeper {
    /// Starts keeping `lease`, obtained now; `None` for a lease that never ends.
    pub fn new(lease: Lease, mac: [u8; 6], xid: u32) -> Option<Self> {
        if lease.lease_secs.is_none_or(|secs| secs == u32::MAX) {
            return None;
        }
        Some(Self {
            lease,
            mac,
            xid,
            obtained: Instant::now(),
        })
    }

    fn after(&self, eighths: u32) -> Instant {
        let secs = u64::from(self.lease.lease_secs.unwrap_or(0).max(MIN_LEASE_SECS));
        self.obtained + Duration::from_millis(secs * 1000 * u64::from(eighths) / 8)
    }

    /// When the lease is first extended (T1).
    pub fn renew_at(&self) -> Instant {
        self.after(4)
    }

    /// When the lease ends.
    pub fn expires_at(&self) -> Instant {
        self.after(8)
    }

    /// Sleeps until T1, then tries to extend the lease until it is extended or lost.
    pub fn next(&mut self) -> io::Result<Kept> {
        let rebind_at = self.after(7);
        let expires_at = self.expires_at();
        std::thread::sleep(self.renew_at().saturating_duration_since(Instant::now()));
        let sock = match bound_socket(&self.lease.interface) {
            Ok(sock) => sock,
            // No way to ask (the NIC is gone, the port taken): past its end the lease is lost
            // all the same.
            Err(e) if Instant::now() >= expires_at => {
                return Ok(Kept::Lost(format!(
                    "lease of {} expired; it could not be extended ({e})",
                    self.lease.address
                )))
            }
            Err(e) => return Err(e),
        };
        loop {
            let now = Instant::now();
            if now >= expires_at {
                return Ok(Kept::Lost(format!(
                    "lease of {} expired with no server answering",
                    self.lease.address
                )));
            }
            // Unicast to our server until T2, then to any server; each try waits half the
            // phase's remaining time, between 1 s and 60 s (the RFC's 60 s is a floor for
            // long leases; short ones need shorter waits to try at all before T2).
            let (to, phase_end) = if now < rebind_at {
                (self.lease.server, rebind_at)
            } else {
                (Ipv4Addr::BROADCAST, expires_at)
            };
            let wait =
                ((phase_end - now) / 2).clamp(Duration::from_secs(1), Duration::from_secs(60));
            self.xid = self.xid.wrapping_add(1);
            let message = encode_extension(self.xid, self.mac, self.lease.address);
            if let Err(e) = sock.send_to(&message, SocketAddrV4::new(to, 67)) {
                // No route (a cable pulled): the phase goes on until its end.
                std::thread::sleep(wait.min(phase_end.saturating_duration_since(now)));
                if e.kind() != io::ErrorKind::NetworkUnreachable {
                    crate::say!("{}: DHCP extension not sent: {e}", self.lease.interface);
                }
                continue;
            }
            // A try never outlasts its phase: the broadcast starts at T2 sharp.
            let deadline = (now + wait).min(phase_end);
            let Some(reply) = wait_for(&sock, self.xid, self.mac, &[ACK, NAK], deadline)? else {
                continue;
            };
            if reply.kind == NAK {
                return Ok(Kept::Lost(format!(
                    "a DHCP server refused the lease of {} (NAK)",
                    self.lease.address
                )));
            }
            if reply.address != self.lease.address {
                return Ok(Kept::Lost(format!(
                    "a DHCP server acknowledged {} instead of {}",
                    reply.address, self.lease.address
                )));
            }
            let secs = reply.lease_secs.unwrap_or(u32::MAX);
            self.obtained = Instant::now();
            self.lease.lease_secs = Some(secs);
            if let Some(server) = reply.server {
                self.lease.server = server;
            }
            return Ok(Kept::Extended {
                server: self.lease.server,
                secs,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_reply(kind: u8, xid: u32, mac: [u8; 6], options: &[u8]) -> Vec<u8> {
        let mut p = encode(DISCOVER, xid, mac, None);
        p.truncate(HEADER + 4);
        p[0] = 2;
        p[16..20].copy_from_slice(&[10, 0, 2, 15]);
        p.extend_from_slice(&[53, 1, kind]);
        p.extend_from_slice(options);
        p.push(255);
        p
    }

    #[test]
    fn an_offer_is_read_with_its_options() {
        let mac = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
        let p = server_reply(
            OFFER,
            7,
            mac,
            &[
                1, 4, 255, 255, 255, 0, 3, 4, 10, 0, 2, 2, 6, 8, 10, 0, 2, 3, 1, 1, 1, 1, 54, 4,
                10, 0, 2, 2, 51, 4, 0, 0, 0x0e, 0x10, 0,
            ],
        );
        let r = decode(&p).unwrap();
        assert_eq!((r.kind, r.xid, r.chaddr), (OFFER, 7, mac));
        assert_eq!(r.address, Ipv4Addr::new(10, 0, 2, 15));
        assert_eq!(r.router, Some(Ipv4Addr::new(10, 0, 2, 2)));
        assert_eq!(
            r.dns,
            [Ipv4Addr::new(10, 0, 2, 3), Ipv4Addr::new(1, 1, 1, 1)]
        );
        assert_eq!(r.server, Some(Ipv4Addr::new(10, 0, 2, 2)));
        assert_eq!(r.lease_secs, Some(3600));
        assert_eq!(prefix_len(r.netmask.unwrap()), Some(24));
    }

    #[test]
    fn hostile_replies_are_ignored_not_trusted() {
        let mac = [2, 0, 0, 0, 0, 1];
        // An option whose length runs past the packet.
        assert_eq!(decode(&server_reply(OFFER, 1, mac, &[6, 200, 1, 2])), None);
        // No message type.
        let mut p = server_reply(OFFER, 1, mac, &[]);
        p.truncate(HEADER + 4);
        assert_eq!(decode(&p), None);
        // A request echoed back, truncated packets, a wrong magic cookie.
        assert_eq!(decode(&encode(DISCOVER, 1, mac, None)), None);
        for n in [0, 10, HEADER, HEADER + 3] {
            assert_eq!(decode(&server_reply(OFFER, 1, mac, &[])[..n]), None);
        }
        let mut p = server_reply(OFFER, 1, mac, &[]);
        p[HEADER] = 0;
        assert_eq!(decode(&p), None);
        // Odd-length DNS lists keep only whole addresses; a mask with holes has no prefix.
        let r = decode(&server_reply(ACK, 1, mac, &[6, 6, 9, 9, 9, 9, 1, 2])).unwrap();
        assert_eq!(r.dns, [Ipv4Addr::new(9, 9, 9, 9)]);
        assert_eq!(prefix_len(Ipv4Addr::new(255, 0, 255, 0)), None);
        assert_eq!(prefix_len(Ipv4Addr::new(255, 255, 255, 255)), Some(32));
        assert_eq!(prefix_len(Ipv4Addr::new(0, 0, 0, 0)), Some(0));
    }

    #[test]
    fn a_request_names_the_offer_and_its_server() {
        let p = encode(
            REQUEST,
            9,
            [1; 6],
            Some((Ipv4Addr::new(10, 0, 2, 15), Ipv4Addr::new(10, 0, 2, 2))),
        );
        let opts = &p[HEADER + 4..];
        assert_eq!(&opts[..3], &[53, 1, REQUEST]);
        assert_eq!(&opts[3..9], &[50, 4, 10, 0, 2, 15]);
        assert_eq!(&opts[9..15], &[54, 4, 10, 0, 2, 2]);
        assert_eq!(u16::from_be_bytes([p[10], p[11]]), 0x8000);
    }
}
