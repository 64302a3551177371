use super::*;
use IpError::*;
use SpecialRange::*;

fn v4(ip: [u8; 4], prefix_len: u8, gateway: [u8; 4]) -> PublicIpv4Config {
    PublicIpv4Config {
        ip: Ipv4Cidr { ip, prefix_len },
        gateway,
    }
}

// One case per line reads as a table; keep rustfmt from splitting them.
#[rustfmt::skip]
#[test]
fn ipv4_validation_table() {
    let cases: &[(&str, PublicIpv4Config, Result<(), IpError>)] = &[
        // accepted
        ("plain /24", v4([185, 69, 166, 10], 24, [185, 69, 166, 1]), Ok(())),
        ("gateway at top of subnet", v4([185, 69, 166, 10], 24, [185, 69, 166, 254]), Ok(())),
        ("/30 both hosts used", v4([185, 69, 166, 1], 30, [185, 69, 166, 2]), Ok(())),
        ("/8 widest accepted", v4([45, 1, 2, 3], 8, [45, 0, 0, 1]), Ok(())),
        ("just below 10/8", v4([9, 255, 255, 1], 24, [9, 255, 255, 2]), Ok(())),
        ("just above 172.16/12", v4([172, 32, 0, 5], 24, [172, 32, 0, 1]), Ok(())),
        ("just below 172.16/12", v4([172, 15, 255, 5], 24, [172, 15, 255, 1]), Ok(())),
        ("100.128 is outside CGNAT", v4([100, 128, 0, 5], 24, [100, 128, 0, 1]), Ok(())),
        ("198.20 is outside benchmarking", v4([198, 20, 0, 5], 24, [198, 20, 0, 1]), Ok(())),
        ("223.255 last unicast /8", v4([223, 255, 255, 5], 24, [223, 255, 255, 1]), Ok(())),
        // prefix
        ("/31 rejected", v4([185, 69, 166, 0], 31, [185, 69, 166, 1]), Err(PrefixOutOfRange)),
        ("/32 rejected", v4([185, 69, 166, 10], 32, [185, 69, 166, 1]), Err(PrefixOutOfRange)),
        ("/7 rejected", v4([185, 69, 166, 10], 7, [185, 69, 166, 1]), Err(PrefixOutOfRange)),
        ("/0 rejected", v4([185, 69, 166, 10], 0, [185, 69, 166, 1]), Err(PrefixOutOfRange)),
        ("/33 rejected", v4([185, 69, 166, 10], 33, [185, 69, 166, 1]), Err(PrefixOutOfRange)),
        // special ranges for the address
        ("10/8", v4([10, 0, 0, 5], 24, [10, 0, 0, 1]), Err(IpNotPublic(Private))),
        ("172.16/12 low", v4([172, 16, 0, 5], 24, [172, 16, 0, 1]), Err(IpNotPublic(Private))),
        ("172.16/12 high", v4([172, 31, 255, 5], 24, [172, 31, 255, 1]), Err(IpNotPublic(Private))),
        ("192.168/16", v4([192, 168, 1, 5], 24, [192, 168, 1, 1]), Err(IpNotPublic(Private))),
        ("loopback", v4([127, 0, 0, 1], 8, [127, 0, 0, 2]), Err(IpNotPublic(Loopback))),
        ("link-local", v4([169, 254, 1, 5], 16, [169, 254, 1, 1]), Err(IpNotPublic(LinkLocal))),
        ("CGNAT low", v4([100, 64, 0, 5], 24, [100, 64, 0, 1]), Err(IpNotPublic(SharedCgnat))),
        ("CGNAT high", v4([100, 127, 255, 5], 24, [100, 127, 255, 1]), Err(IpNotPublic(SharedCgnat))),
        ("multicast", v4([224, 0, 0, 5], 24, [224, 0, 0, 1]), Err(IpNotPublic(Multicast))),
        ("multicast top", v4([239, 255, 255, 5], 24, [239, 255, 255, 1]), Err(IpNotPublic(Multicast))),
        ("reserved 240/4", v4([240, 0, 0, 5], 24, [240, 0, 0, 1]), Err(IpNotPublic(Reserved))),
        ("limited broadcast", v4([255, 255, 255, 255], 24, [255, 255, 255, 1]), Err(IpNotPublic(Broadcast))),
        ("unspecified", v4([0, 0, 0, 0], 24, [0, 0, 0, 1]), Err(IpNotPublic(Unspecified))),
        ("this network", v4([0, 1, 2, 3], 24, [0, 1, 2, 1]), Err(IpNotPublic(ThisNetwork))),
        ("TEST-NET-1", v4([192, 0, 2, 5], 24, [192, 0, 2, 1]), Err(IpNotPublic(Documentation))),
        ("TEST-NET-2", v4([198, 51, 100, 5], 24, [198, 51, 100, 1]), Err(IpNotPublic(Documentation))),
        ("TEST-NET-3", v4([203, 0, 113, 5], 24, [203, 0, 113, 1]), Err(IpNotPublic(Documentation))),
        ("benchmarking", v4([198, 19, 0, 5], 24, [198, 19, 0, 1]), Err(IpNotPublic(Benchmarking))),
        ("IETF protocol", v4([192, 0, 0, 5], 24, [192, 0, 0, 1]), Err(IpNotPublic(ProtocolAssignment))),
        ("6to4 relay", v4([192, 88, 99, 5], 24, [192, 88, 99, 1]), Err(IpNotPublic(Relay6to4))),
        // the gateway gets the same class check
        ("private gateway", v4([185, 69, 166, 10], 24, [192, 168, 1, 1]), Err(GatewayNotPublic(Private))),
        ("loopback gateway", v4([185, 69, 166, 10], 24, [127, 0, 0, 1]), Err(GatewayNotPublic(Loopback))),
        ("broadcast gateway", v4([185, 69, 166, 10], 24, [255, 255, 255, 255]), Err(GatewayNotPublic(Broadcast))),
        // subnet rules
        ("gateway equals ip", v4([185, 69, 166, 10], 24, [185, 69, 166, 10]), Err(GatewayEqualsIp)),
        ("gateway outside subnet", v4([185, 69, 166, 10], 24, [185, 69, 167, 1]), Err(GatewayNotInSubnet)),
        ("gateway outside /30", v4([185, 69, 166, 1], 30, [185, 69, 166, 5]), Err(GatewayNotInSubnet)),
        ("ip is network", v4([185, 69, 166, 0], 24, [185, 69, 166, 1]), Err(IpIsNetworkAddress)),
        ("ip is broadcast", v4([185, 69, 166, 255], 24, [185, 69, 166, 1]), Err(IpIsBroadcastAddress)),
        ("ip is /30 broadcast", v4([185, 69, 166, 3], 30, [185, 69, 166, 1]), Err(IpIsBroadcastAddress)),
        ("gateway is network", v4([185, 69, 166, 10], 24, [185, 69, 166, 0]), Err(GatewayIsNetworkAddress)),
        ("gateway is broadcast", v4([185, 69, 166, 10], 24, [185, 69, 166, 255]), Err(GatewayIsBroadcastAddress)),
        ("gateway is /8 network", v4([45, 1, 2, 3], 8, [45, 0, 0, 0]), Err(GatewayIsNetworkAddress)),
    ];
    assert!(cases.len() >= 25);
    for (name, config, expected) in cases {
        assert_eq!(validate_public_ipv4(config), *expected, "case `{name}`");
    }
}

fn v6(ip: u128, prefix_len: u8, gateway: u128) -> PublicIpv6Config {
    PublicIpv6Config {
        ip: Ipv6Cidr {
            ip: ip.to_be_bytes(),
            prefix_len,
        },
        gateway: gateway.to_be_bytes(),
    }
}

#[rustfmt::skip]
#[test]
fn ipv6_validation_table() {
    let public = 0x2a02_1802_005e_0000_0000_0000_0000_0010u128;
    let public_gw = 0x2a02_1802_005e_0000_0000_0000_0000_0001u128;
    let link_local = 0xfe80_0000_0000_0000_0000_0000_0000_0001u128;
    let cases: &[(&str, PublicIpv6Config, Result<(), IpError>)] = &[
        ("public with in-subnet gateway", v6(public, 64, public_gw), Ok(())),
        ("public with link-local gateway", v6(public, 64, link_local), Ok(())),
        ("/128 with link-local gateway", v6(public, 128, link_local), Ok(())),
        ("/15 rejected", v6(public, 15, public_gw), Err(PrefixOutOfRange)),
        ("/129 rejected", v6(public, 129, public_gw), Err(PrefixOutOfRange)),
        ("unspecified", v6(0, 64, public_gw), Err(IpNotPublic(Unspecified))),
        ("loopback", v6(1, 128, link_local), Err(IpNotPublic(Loopback))),
        ("unique local", v6(0xfd00 << 112 | 5, 64, link_local), Err(IpNotPublic(Private))),
        ("link-local ip", v6(link_local, 64, link_local + 1), Err(IpNotPublic(LinkLocal))),
        ("multicast", v6(0xff02 << 112 | 1, 64, link_local), Err(IpNotPublic(Multicast))),
        ("documentation", v6(0x2001_0db8 << 96 | 5, 64, link_local), Err(IpNotPublic(Documentation))),
        ("documentation 3fff", v6(0x3fff << 112 | 5, 64, link_local), Err(IpNotPublic(Documentation))),
        ("teredo", v6(0x2001_0000 << 96 | 5, 64, link_local), Err(IpNotPublic(Teredo))),
        ("benchmarking", v6(0x2001_0002 << 96 | 5, 64, link_local), Err(IpNotPublic(Benchmarking))),
        ("6to4", v6(0x2002 << 112 | 5, 64, link_local), Err(IpNotPublic(Relay6to4))),
        ("ipv4-mapped", v6(0xffff_c0a8_0001, 96, link_local), Err(IpNotPublic(NotGlobalUnicast))),
        ("private gateway", v6(public, 64, 0xfd00 << 112 | 1), Err(GatewayNotPublic(Private))),
        ("gateway equals ip", v6(public, 64, public), Err(GatewayEqualsIp)),
        ("gateway outside subnet", v6(public, 64, public_gw + (1 << 64)), Err(GatewayNotInSubnet)),
        ("ip is subnet-router anycast", v6(public & !0xffff, 64, public_gw), Err(IpIsNetworkAddress)),
        ("gateway is subnet-router anycast", v6(public, 64, public & !0xffff), Err(GatewayIsNetworkAddress)),
    ];
    for (name, config, expected) in cases {
        assert_eq!(validate_public_ipv6(config), *expected, "case `{name}`");
    }
}

#[test]
fn cidr_helpers() {
    let c = Ipv4Cidr {
        ip: [185, 69, 166, 10],
        prefix_len: 24,
    };
    assert_eq!(c.network(), [185, 69, 166, 0]);
    assert_eq!(c.broadcast(), [185, 69, 166, 255]);
    assert!(c.contains([185, 69, 166, 77]));
    assert!(!c.contains([185, 69, 167, 77]));
    // Degenerate prefixes must not panic on shifts.
    let all = Ipv4Cidr {
        ip: [1, 2, 3, 4],
        prefix_len: 0,
    };
    assert!(all.contains([200, 1, 1, 1]));
    let host = Ipv4Cidr {
        ip: [1, 2, 3, 4],
        prefix_len: 200,
    };
    assert_eq!(host.network(), [1, 2, 3, 4]);
    assert_eq!(host.broadcast(), [1, 2, 3, 4]);
    let v6all = Ipv6Cidr {
        ip: [0xab; 16],
        prefix_len: 0,
    };
    assert!(v6all.contains([0; 16]));
}

#[test]
fn public_addresses_classify_as_none() {
    for ip in [
        [1, 1, 1, 1],
        [8, 8, 8, 8],
        [185, 69, 166, 10],
        [223, 255, 255, 255],
    ] {
        assert_eq!(classify_ipv4(ip), None, "{ip:?}");
    }
    assert_eq!(
        classify_ipv6((0x2606_4700u128 << 96 | 1).to_be_bytes()),
        None
    );
}

#[test]
fn ip_error_fits_in_a_module_error() {
    use frame_support::traits::PalletError as _;
    // A pallet error variant holding an IpError must stay within the 4-byte module error.
    assert!(IpError::MAX_ENCODED_SIZE + 1 <= frame_support::MAX_MODULE_ERROR_ENCODED_SIZE);
}

#[test]
fn a_test_network_may_count_documentation_ranges_as_public() {
    let doc = v4([198, 51, 100, 5], 24, [198, 51, 100, 1]);
    assert_eq!(
        validate_public_ipv4(&doc),
        Err(IpError::IpNotPublic(SpecialRange::Documentation))
    );
    assert_eq!(validate_public_ipv4_in(&doc, true), Ok(()));
    // Only documentation ranges: private ones stay refused.
    let private = v4([10, 1, 2, 5], 24, [10, 1, 2, 1]);
    assert_eq!(
        validate_public_ipv4_in(&private, true),
        Err(IpError::IpNotPublic(SpecialRange::Private))
    );
}

#[test]
fn documentation_ipv6_counts_as_public_only_when_asked() {
    let doc = PublicIpv6Config {
        ip: Ipv6Cidr {
            ip: (0x2001_0db8_0001u128 << 80 | 2).to_be_bytes(),
            prefix_len: 64,
        },
        gateway: (0x2001_0db8_0001u128 << 80 | 1).to_be_bytes(),
    };
    assert_eq!(
        validate_public_ipv6(&doc),
        Err(IpError::IpNotPublic(SpecialRange::Documentation))
    );
    assert_eq!(validate_public_ipv6_in(&doc, true), Ok(()));
}

#[test]
fn vm_addresses_are_deterministic_inside_the_subnet_and_avoid_taken_ones() {
    let node = PublicIpv6Config {
        ip: Ipv6Cidr {
            ip: (0x2001_0db8_0001u128 << 80 | 2).to_be_bytes(),
            prefix_len: 64,
        },
        gateway: (0xfe80u128 << 112 | 1).to_be_bytes(),
    };
    let a = node.vm_address(7, b"pip").unwrap();
    assert_eq!(node.vm_address(7, b"pip"), Some(a));
    assert!(node.ip.contains(a));
    assert_ne!(a, node.ip.ip);
    assert_ne!(a, node.ip.network());
    assert_ne!(node.vm_address(8, b"pip"), Some(a));
    assert_ne!(node.vm_address(7, b"pip2"), Some(a));
    // Too narrow a subnet for hash-derived addresses.
    let narrow = PublicIpv6Config {
        ip: Ipv6Cidr {
            prefix_len: 96,
            ..node.ip
        },
        ..node
    };
    assert_eq!(narrow.vm_address(7, b"pip"), None);
}
