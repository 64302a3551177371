//! Packets on a peer link: each IPv6 packet travels as a frame (a 2-byte big-endian length,
//! then the packet) on an encrypted stream. What arrives is untrusted: a frame is bounded, a
//! packet must be well-formed IPv6, its source must be in the sending peer's own /64 (the one
//! its key derives) so no participant can speak for another, and its destination must be in
//! the overlay.

use std::net::Ipv6Addr;

use crate::address::{in_overlay, NodeSubnet};

/// The largest packet a frame carries (the overlay's MTU is below it).
pub const MAX_PACKET: usize = 65_535;
const IPV6_HEADER: usize = 40;

/// A frame that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("an empty frame")]
    Empty,
}

/// Why a packet from a peer is dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    #[error("{0} bytes: shorter than an IPv6 header")]
    TooShort(usize),
    #[error("IP version {0}, not 6")]
    NotIpv6(u8),
    #[error("the header says {header} payload bytes, the packet has {actual}")]
    LengthMismatch { header: usize, actual: usize },
    #[error("source {from} is not in the sending peer's subnet {peer}: spoofed")]
    Spoofed { from: Ipv6Addr, peer: NodeSubnet },
    #[error("destination {0} is outside the overlay")]
    NotOverlay(Ipv6Addr),
    #[error("destination {0} is not this participant's")]
    NotOurs(Ipv6Addr),
}

/// `packet` as a frame.
pub fn frame(packet: &[u8]) -> Vec<u8> {
    assert!(
        !packet.is_empty() && packet.len() <= MAX_PACKET,
        "a packet of {} bytes cannot be framed",
        packet.len()
    );
    let mut out = Vec::with_capacity(packet.len() + 2);
    out.extend_from_slice(&(packet.len() as u16).to_be_bytes());
    out.extend_from_slice(packet);
    out
}

/// Splits a byte stream into packets, whatever the stream's chunking.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    /// Where the next frame starts in `buf`: consumed frames are dropped once per push, not
    /// once per packet (which would copy the buffer for every small frame).
    start: usize,
}

impl FrameDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds bytes read from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete packet, if one has arrived. The buffer never holds more than one
    /// frame beyond what the caller pushed: frames are at most 2 + [`MAX_PACKET`] bytes.
    pub fn next_packet(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        let rest = &self.buf[self.start..];
        if rest.len() < 2 {
            return Ok(None);
        }
        let len = u16::from_be_bytes([rest[0], rest[1]]) as usize;
        if len == 0 {
            return Err(FrameError::Empty);
        }
        if rest.len() < 2 + len {
            return Ok(None);
        }
        let packet = rest[2..2 + len].to_vec();
        self.start += 2 + len;
        Ok(Some(packet))
    }
}

/// Source and destination of a well-formed IPv6 packet.
pub fn addresses(packet: &[u8]) -> Result<(Ipv6Addr, Ipv6Addr), PacketError> {
    if packet.len() < IPV6_HEADER {
        return Err(PacketError::TooShort(packet.len()));
    }
    let version = packet[0] >> 4;
    if version != 6 {
        return Err(PacketError::NotIpv6(version));
    }
    let header = u16::from_be_bytes([packet[4], packet[5]]) as usize;
    let actual = packet.len() - IPV6_HEADER;
    if header != actual {
        return Err(PacketError::LengthMismatch { header, actual });
    }
    let mut src = [0u8; 16];
    src.copy_from_slice(&packet[8..24]);
    let mut dst = [0u8; 16];
    dst.copy_from_slice(&packet[24..40]);
    Ok((Ipv6Addr::from(src), Ipv6Addr::from(dst)))
}

/// Accepts a packet from the peer owning `peer` only when it is well-formed, comes from that
/// peer's /64, and goes into the overlay. Returns its destination.
pub fn check_from_peer(packet: &[u8], peer: NodeSubnet) -> Result<Ipv6Addr, PacketError> {
    let (source, destination) = addresses(packet)?;
    if !peer.contains(&source) {
        return Err(PacketError::Spoofed { from: source, peer });
    }
    if !in_overlay(&destination) {
        return Err(PacketError::NotOverlay(destination));
    }
    Ok(destination)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(src: Ipv6Addr, dst: Ipv6Addr, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0u8; IPV6_HEADER];
        p[0] = 0x60;
        p[4..6].copy_from_slice(&(payload.len() as u16).to_be_bytes());
        p[6] = 58; // ICMPv6
        p[7] = 64;
        p[8..24].copy_from_slice(&src.octets());
        p[24..40].copy_from_slice(&dst.octets());
        p.extend_from_slice(payload);
        p
    }

    #[test]
    fn only_a_peers_own_addresses_pass() {
        let a = NodeSubnet::of_key(&[1; 32]);
        let b = NodeSubnet::of_key(&[2; 32]);
        let vm_of_a = a.workload(9, "web");
        let ok = packet(vm_of_a, b.host(), b"ping");
        assert_eq!(check_from_peer(&ok, a), Ok(b.host()));
        // The same packet arriving from b's link: b cannot speak for a's VM.
        assert_eq!(
            check_from_peer(&ok, b),
            Err(PacketError::Spoofed {
                from: vm_of_a,
                peer: b
            })
        );
        let out = packet(a.host(), "2001:db8::1".parse().unwrap(), b"");
        assert!(matches!(
            check_from_peer(&out, a),
            Err(PacketError::NotOverlay(_))
        ));
    }

    #[test]
    fn malformed_packets_are_refused_with_a_reason() {
        let a = NodeSubnet::of_key(&[1; 32]);
        assert_eq!(
            check_from_peer(&[0x60; 10], a),
            Err(PacketError::TooShort(10))
        );
        let mut v4 = packet(a.host(), a.host(), b"x");
        v4[0] = 0x45;
        assert_eq!(check_from_peer(&v4, a), Err(PacketError::NotIpv6(4)));
        let mut lying = packet(a.host(), a.host(), b"abc");
        lying[5] = 200;
        assert_eq!(
            check_from_peer(&lying, a),
            Err(PacketError::LengthMismatch {
                header: 200,
                actual: 3
            })
        );
    }

    #[test]
    fn frames_survive_any_chunking_and_empty_frames_are_refused() {
        let a = NodeSubnet::of_key(&[1; 32]);
        let packets: Vec<Vec<u8>> = (0..5)
            .map(|i| {
                packet(
                    a.host(),
                    a.workload(i, "x"),
                    &vec![i as u8; 100 * i as usize],
                )
            })
            .collect();
        let stream: Vec<u8> = packets.iter().flat_map(|p| frame(p)).collect();
        for chunk in [1, 3, 7, 64, stream.len()] {
            let mut d = FrameDecoder::new();
            let mut got = Vec::new();
            for piece in stream.chunks(chunk) {
                d.push(piece);
                while let Some(p) = d.next_packet().unwrap() {
                    got.push(p);
                }
            }
            assert_eq!(got, packets, "chunks of {chunk}");
        }
        let mut d = FrameDecoder::new();
        d.push(&[0, 0, 1]);
        assert_eq!(d.next_packet(), Err(FrameError::Empty));
    }
}
