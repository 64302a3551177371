//! Gateway domains belong to one farm. A node's gateway domain, its parent domains and its
//! subdomains may be declared only by nodes of the farm that declared it first, so another
//! farm's node can neither take a domain's names (which are unique per domain) nor claim them
//! through a parent domain (an FQDN under a node's domain is held as a name).
//!
//! [`GatewayDomainFarm`] records each declared domain's farm and how many of its nodes declare
//! it; [`GatewayDomainsBelow`] counts, per farm, the declarations below each parent domain, so
//! a new domain is checked in a bounded number of reads: itself, each of its parents (at most
//! [`MAX_GATEWAY_DOMAIN_LABELS`]), and two entries of the farms below it.

use super::*;
use frame_support::weights::Weight;

/// A gateway domain has at least this many labels (`gw.example.com` has 3), so no farm takes a
/// top-level domain (`com`) or a registrable domain's parent (`co.uk`, `example.com`) and with
/// it every domain below.
pub const MIN_GATEWAY_DOMAIN_LABELS: u32 = 3;
/// A gateway domain has at most this many labels: bounds the parents checked and counted per
/// declaration.
pub const MAX_GATEWAY_DOMAIN_LABELS: u32 = 8;

/// A domain as the index keys it: lowercase (DNS names are case-insensitive).
pub(crate) fn normalized(domain: &[u8]) -> Domain {
    Domain::truncate_from(domain.to_ascii_lowercase())
}

/// The proper parents of `domain`, nearest first (`a.b.c` -> `b.c`, `c`).
fn parents(domain: &[u8]) -> impl Iterator<Item = &[u8]> {
    domain
        .iter()
        .enumerate()
        .filter(|(_, c)| **c == b'.')
        .map(move |(i, _)| &domain[i + 1..])
}

/// Whether a declared domain has an allowed number of labels.
pub(crate) fn has_allowed_depth(domain: &[u8]) -> bool {
    let labels = parents(domain).count().saturating_add(1);
    (MIN_GATEWAY_DOMAIN_LABELS as usize..=MAX_GATEWAY_DOMAIN_LABELS as usize).contains(&labels)
}

impl<T: Config> Pallet<T> {
    /// Fails with `GatewayDomainOfAnotherFarm` if another farm declared `domain`, one of its
    /// parents or one of its subdomains.
    pub(crate) fn ensure_domain_free_for(farm_id: FarmId, domain: &[u8]) -> DispatchResult {
        let domain = normalized(domain);
        let held_elsewhere = |d: &[u8]| {
            GatewayDomainFarm::<T>::get(normalized(d)).is_some_and(|(farm, _)| farm != farm_id)
        };
        ensure!(
            !held_elsewhere(&domain) && !parents(&domain).any(held_elsewhere),
            Error::<T>::GatewayDomainOfAnotherFarm
        );
        // At most one of the farms below is `farm_id`: two entries tell whether another is.
        ensure!(
            !GatewayDomainsBelow::<T>::iter_key_prefix(&domain)
                .take(2)
                .any(|farm| farm != farm_id),
            Error::<T>::GatewayDomainOfAnotherFarm
        );
        Ok(())
    }

    /// Counts one more declaration of `domain` by a node of `farm_id` (checked free first).
    pub(crate) fn declare_domain(farm_id: FarmId, domain: &[u8]) {
        let domain = normalized(domain);
        GatewayDomainFarm::<T>::mutate(&domain, |entry| {
            let nodes = entry.map_or(0, |(_, n)| n).saturating_add(1);
            *entry = Some((farm_id, nodes));
        });
        for parent in parents(&domain) {
            GatewayDomainsBelow::<T>::mutate(normalized(parent), farm_id, |n| {
                *n = n.saturating_add(1)
            });
        }
    }

    /// Counts one declaration of `domain` by a node of `farm_id` less; a domain no node
    /// declares any more is free for every farm.
    pub(crate) fn withdraw_domain(farm_id: FarmId, domain: &[u8]) {
        let domain = normalized(domain);
        GatewayDomainFarm::<T>::mutate_exists(&domain, |entry| match entry {
            Some((farm, nodes)) if *farm == farm_id && *nodes > 1 => *nodes -= 1,
            Some((farm, _)) if *farm == farm_id => *entry = None,
            _ => {}
        });
        for parent in parents(&domain) {
            GatewayDomainsBelow::<T>::mutate_exists(normalized(parent), farm_id, |n| match n {
                Some(count) if *count > 1 => *count -= 1,
                _ => *n = None,
            });
        }
    }

    /// Moves a node's domain declaration from `old` to `new`: the new one checked first, so a
    /// refusal changes nothing.
    pub(crate) fn move_node_domain(
        farm_id: FarmId,
        old: Option<&PublicConfig>,
        new: Option<&PublicConfig>,
    ) -> DispatchResult {
        let domain_of =
            |c: Option<&PublicConfig>| c.and_then(|c| c.domain.as_ref()).map(|d| normalized(d));
        let (old, new) = (domain_of(old), domain_of(new));
        if old == new {
            return Ok(());
        }
        if let Some(domain) = &new {
            Self::ensure_domain_free_for(farm_id, domain)?;
        }
        if let Some(domain) = &old {
            Self::withdraw_domain(farm_id, domain);
        }
        if let Some(domain) = &new {
            Self::declare_domain(farm_id, domain);
        }
        Ok(())
    }

    /// What moving a domain may cost: the new domain and its parents read (the check), two
    /// entries of the farms below, then the old and the new domain with their parents read
    /// and written.
    pub fn domain_index_weight() -> Weight {
        let labels = u64::from(MAX_GATEWAY_DOMAIN_LABELS);
        let moved = labels.saturating_mul(2);
        T::DbWeight::get().reads_writes(labels.saturating_add(2).saturating_add(moved), moved)
    }

    /// try_state: the index counts exactly the domains the nodes declare.
    #[cfg(any(feature = "try-runtime", feature = "std"))]
    pub(crate) fn check_domain_index() -> Result<(), sp_runtime::TryRuntimeError> {
        use alloc::collections::BTreeMap;
        let mut declared: BTreeMap<Domain, (FarmId, u32)> = BTreeMap::new();
        let mut below: BTreeMap<(Domain, FarmId), u32> = BTreeMap::new();
        for node in Nodes::<T>::iter_values() {
            let Some(domain) = node.public_config.as_ref().and_then(|c| c.domain.as_ref()) else {
                continue;
            };
            let domain = normalized(domain);
            let entry = declared.entry(domain.clone()).or_insert((node.farm_id, 0));
            frame_support::ensure!(
                entry.0 == node.farm_id,
                "two farms declare one gateway domain"
            );
            entry.1 = entry.1.saturating_add(1);
            for parent in parents(&domain) {
                let n = below.entry((normalized(parent), node.farm_id)).or_default();
                *n = n.saturating_add(1);
            }
        }
        frame_support::ensure!(
            GatewayDomainFarm::<T>::iter().collect::<BTreeMap<_, _>>() == declared,
            "the gateway domain index does not match the nodes"
        );
        frame_support::ensure!(
            GatewayDomainsBelow::<T>::iter()
                .map(|(d, f, n)| ((d, f), n))
                .collect::<BTreeMap<_, _>>()
                == below,
            "the parent domain counts do not match the nodes"
        );
        Ok(())
    }
}
