//! Interface and namespace names. Linux allows 15 bytes per interface name, so every name is
//! `<prefix><role><id>`: a node prefix of at most 3 characters, one role letter and a 10-digit
//! hex id (40 bits, derived by the caller from what the network or card belongs to).

use std::fmt;

/// Longest interface name Linux accepts (IFNAMSIZ - 1).
pub const MAX_IFNAME: usize = 15;

/// Distinguishes this node's objects from another node's on the same host.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Prefix(String);

impl Prefix {
    /// 1-3 characters `[a-z0-9]`, starting with a letter.
    pub fn new(text: &str) -> anyhow::Result<Self> {
        let ok = (1..=3).contains(&text.len())
            && text.starts_with(|c: char| c.is_ascii_lowercase())
            && text
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        anyhow::ensure!(
            ok,
            "network name prefix {text:?} must be 1-3 characters [a-z0-9] starting with a letter"
        );
        Ok(Self(text.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A network's or a network card's id: 10 lowercase hex digits.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NetId(String);

impl NetId {
    pub const LEN: usize = 10;

    pub fn new(text: &str) -> anyhow::Result<Self> {
        anyhow::ensure!(
            text.len() == Self::LEN
                && text
                    .chars()
                    .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)),
            "network id {text:?} must be {} lowercase hex digits",
            Self::LEN
        );
        Ok(Self(text.to_string()))
    }

    /// The id of the first 5 bytes of `hash` (e.g. a BLAKE3 of what the object belongs to).
    pub fn from_hash(hash: &[u8]) -> Self {
        let hex: String = hash.iter().take(5).map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex.len(), Self::LEN, "a hash has at least 5 bytes");
        Self(hex)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NetId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What an interface is for; the letter in its name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The network's bridge in the underlay.
    Bridge,
    /// The underlay end of the veth between bridge and network namespace.
    VethUnderlay,
    /// The network-namespace end of that veth (carries `.1`).
    VethLan,
    /// The WireGuard tunnel (in the network namespace).
    WireGuard,
    /// A VM's tap on the bridge.
    Tap,
    /// The underlay end of a network's outbound (internet) link.
    OutboundUnderlay,
    /// The network-namespace end of the outbound link.
    OutboundInside,
}

impl Role {
    fn letter(self) -> char {
        match self {
            Role::Bridge => 'b',
            Role::VethUnderlay => 'v',
            Role::VethLan => 'l',
            Role::WireGuard => 'w',
            Role::Tap => 't',
            Role::OutboundUnderlay => 'o',
            Role::OutboundInside => 'i',
        }
    }
}

/// `<prefix><role><id>`, at most 15 bytes by construction.
pub fn ifname(prefix: &Prefix, role: Role, id: &NetId) -> String {
    let name = format!("{prefix}{}{id}", role.letter());
    debug_assert!(name.len() <= MAX_IFNAME);
    name
}

/// The network namespace of a network: `<prefix>-net-<id>`.
pub fn netns_name(prefix: &Prefix, id: &NetId) -> String {
    format!("{prefix}-net-{id}")
}

/// The id in a name made by [`netns_name`], for finding this node's leftovers.
pub fn netns_id(prefix: &Prefix, name: &str) -> Option<NetId> {
    name.strip_prefix(&format!("{prefix}-net-"))
        .and_then(|id| NetId::new(id).ok())
}

/// The role and id of an interface name made by [`ifname`] with this prefix.
pub fn parse_ifname(prefix: &Prefix, name: &str) -> Option<(Role, NetId)> {
    let rest = name.strip_prefix(prefix.as_str())?;
    let mut chars = rest.chars();
    let role = match chars.next()? {
        'b' => Role::Bridge,
        'v' => Role::VethUnderlay,
        'l' => Role::VethLan,
        'w' => Role::WireGuard,
        't' => Role::Tap,
        'o' => Role::OutboundUnderlay,
        'i' => Role::OutboundInside,
        _ => return None,
    };
    NetId::new(chars.as_str()).ok().map(|id| (role, id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_linux_and_parse_back() {
        let p = Prefix::new("z9a").unwrap();
        let id = NetId::from_hash(&[0xab; 32]);
        for role in [
            Role::Bridge,
            Role::VethUnderlay,
            Role::VethLan,
            Role::WireGuard,
            Role::Tap,
            Role::OutboundUnderlay,
            Role::OutboundInside,
        ] {
            let name = ifname(&p, role, &id);
            assert!(name.len() <= MAX_IFNAME, "{name}");
            assert_eq!(parse_ifname(&p, &name), Some((role, id.clone())));
        }
        // Another node's prefix never parses as ours.
        let other = Prefix::new("z9").unwrap();
        assert_eq!(parse_ifname(&other, &ifname(&p, Role::Tap, &id)), None);
        assert_eq!(netns_id(&p, &netns_name(&p, &id)), Some(id));
    }

    #[test]
    fn bad_prefixes_and_ids_are_refused() {
        for bad in ["", "abcd", "9a", "A", "a-b"] {
            assert!(Prefix::new(bad).is_err(), "{bad:?}");
        }
        for bad in ["", "abc", "ABCDEF0123", "abcdef012g", "abcdef01234"] {
            assert!(NetId::new(bad).is_err(), "{bad:?}");
        }
    }
}
