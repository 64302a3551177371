//! Validation of farm and node fields, the IP indexes of node addresses, and small helpers
//! the calls share.

use super::*;

impl<T: Config> Pallet<T> {
    pub(crate) fn now_ms() -> u64 {
        u64::try_from(T::Time::now().as_millis()).unwrap_or(u64::MAX)
    }

    pub(crate) fn lowercase(name: &FarmName) -> FarmName {
        // Same length as the input, so nothing is ever truncated.
        FarmName::truncate_from(name.iter().map(u8::to_ascii_lowercase).collect())
    }

    /// Validates a farm name and returns its index key.
    pub(crate) fn name_key(name: &FarmName) -> Result<FarmName, Error<T>> {
        ensure!(
            name.len() as u32 >= MIN_FARM_NAME_LEN,
            Error::<T>::FarmNameTooShort
        );
        ensure!(
            name.iter()
                .all(|c| c.is_ascii_alphanumeric() || *c == b'_' || *c == b'-'),
            Error::<T>::FarmNameInvalidCharacter
        );
        Ok(Self::lowercase(name))
    }

    /// Removes a farm without nodes and every index entry pointing at it; returns how many
    /// pool addresses were released.
    pub(crate) fn remove_farm_entries(farm_id: FarmId, farm: &Farm<T>) -> u32 {
        for entry in farm.public_ips.iter() {
            IpOwner::<T>::remove(entry.config.ip.ip);
            Self::release_deposit(DepositItem::FarmIp(entry.config.ip.ip));
        }
        Self::release_deposit(DepositItem::Farm(farm_id));
        FarmIdByName::<T>::remove(Self::lowercase(&farm.name));
        FarmNodeCount::<T>::remove(farm_id);
        FarmsUnderRemoval::<T>::remove(farm_id);
        Farms::<T>::remove(farm_id);
        farm.public_ips.len() as u32
    }

    /// The entry of `ip` in the farm's pool.
    pub(crate) fn pool_entry(farm: &Farm<T>, ip: [u8; 4]) -> Result<PublicIpEntry, Error<T>> {
        farm.public_ips
            .iter()
            .find(|e| e.config.ip.ip == ip)
            .copied()
            .ok_or(Error::<T>::IpNotInFarm)
    }

    /// Removes `ip` from the pool of `farm` (stored as `farm_id`) with its index entry and
    /// deposit.
    pub(crate) fn drop_pool_ip(farm_id: FarmId, mut farm: Farm<T>, ip: [u8; 4]) {
        farm.public_ips.retain(|e| e.config.ip.ip != ip);
        IpOwner::<T>::remove(ip);
        Self::release_deposit(DepositItem::FarmIp(ip));
        Farms::<T>::insert(farm_id, farm);
    }

    /// The node itself or the owner of its farm.
    pub(crate) fn ensure_node_or_farm_owner(
        node: &Node<T>,
        who: &T::AccountId,
    ) -> Result<(), Error<T>> {
        if who != &node.account {
            let farm = Farms::<T>::get(node.farm_id).ok_or(Error::<T>::FarmNotFound)?;
            ensure!(&farm.owner == who, Error::<T>::NotNodeOrFarmOwner);
        }
        Ok(())
    }

    /// Fails with `FarmBeingRemoved` while governance removes the farm.
    pub(crate) fn ensure_farm_not_frozen(farm_id: FarmId) -> Result<(), Error<T>> {
        ensure!(
            !FarmsUnderRemoval::<T>::contains_key(farm_id),
            Error::<T>::FarmBeingRemoved
        );
        Ok(())
    }

    pub(crate) fn owned_farm(farm_id: FarmId, who: &T::AccountId) -> Result<Farm<T>, Error<T>> {
        let farm = Farms::<T>::get(farm_id).ok_or(Error::<T>::FarmNotFound)?;
        ensure!(&farm.owner == who, Error::<T>::NotFarmOwner);
        Ok(farm)
    }

    pub(crate) fn check_node_fields(
        box_key: &BoxKey,
        location: &Location,
        public_config: Option<&PublicConfig>,
        executor_version: &ExecutorVersion,
    ) -> DispatchResult {
        // The all-zero point is a low-order x25519 key: sealing to it protects nothing.
        ensure!(box_key.iter().any(|b| *b != 0), Error::<T>::InvalidBoxKey);
        ensure!(
            (-MAX_LATITUDE..=MAX_LATITUDE).contains(&location.latitude)
                && (-MAX_LONGITUDE..=MAX_LONGITUDE).contains(&location.longitude),
            Error::<T>::InvalidCoordinates
        );
        ensure!(
            core::str::from_utf8(&location.city).is_ok()
                && core::str::from_utf8(&location.country).is_ok(),
            Error::<T>::InvalidLocationName
        );
        ensure!(
            !executor_version.is_empty() && executor_version.iter().all(|c| c.is_ascii_graphic()),
            Error::<T>::InvalidExecutorVersion
        );
        if let Some(config) = public_config {
            Self::check_public_config(config)?;
        }
        Ok(())
    }

    /// Validates a node's public configuration: usable public IPv4 and IPv6 addresses and a
    /// valid DNS name. Whether the addresses are free is checked by `move_node_ips`.
    pub(crate) fn check_public_config(config: &PublicConfig) -> DispatchResult {
        if let Some(v4) = &config.ipv4 {
            validate_public_ipv4_in(v4, DocumentationIpsArePublic::<T>::get())
                .map_err(Error::<T>::InvalidPublicIpv4)?;
        }
        if let Some(v6) = &config.ipv6 {
            validate_public_ipv6_in(v6, DocumentationIpsArePublic::<T>::get())
                .map_err(Error::<T>::InvalidPublicIpv6)?;
        }
        if let Some(domain) = &config.domain {
            ensure!(is_valid_domain(domain), Error::<T>::InvalidDomain);
            ensure!(
                domains::has_allowed_depth(domain),
                Error::<T>::GatewayDomainLabelCount
            );
        }
        Ok(())
    }

    /// Moves the IP and gateway domain index entries of node `node_id` (of farm `farm_id`)
    /// from its `old` public configuration to `new`. Keeping an address or a domain is not a
    /// conflict; a new address held by a farm pool or another node, or a domain of another
    /// farm, is refused, with nothing changed.
    pub(crate) fn move_node_ips(
        node_id: NodeId,
        farm_id: FarmId,
        old: Option<&PublicConfig>,
        new: Option<&PublicConfig>,
    ) -> DispatchResult {
        Self::move_node_domain(farm_id, old, new)?;
        let (old_v4, new_v4) = (Self::config_ipv4(old), Self::config_ipv4(new));
        let (old_v6, new_v6) = (Self::config_ipv6(old), Self::config_ipv6(new));
        if let Some(ip) = new_v4.filter(|_| new_v4 != old_v4) {
            ensure!(
                !IpOwner::<T>::contains_key(ip),
                Error::<T>::IpAlreadyRegistered
            );
        }
        if let Some(ip) = new_v6.filter(|_| new_v6 != old_v6) {
            ensure!(
                !Ipv6Owner::<T>::contains_key(ip),
                Error::<T>::Ipv6AlreadyRegistered
            );
        }
        if new_v4 != old_v4 {
            if let Some(ip) = old_v4 {
                IpOwner::<T>::remove(ip);
            }
            if let Some(ip) = new_v4 {
                IpOwner::<T>::insert(ip, IpHolder::Node(node_id));
            }
        }
        if new_v6 != old_v6 {
            if let Some(ip) = old_v6 {
                Ipv6Owner::<T>::remove(ip);
            }
            if let Some(ip) = new_v6 {
                Ipv6Owner::<T>::insert(ip, node_id);
            }
        }
        Ok(())
    }

    pub(crate) fn config_ipv6(public_config: Option<&PublicConfig>) -> Option<[u8; 16]> {
        public_config.and_then(|c| c.ipv6).map(|c| c.ip.ip)
    }

    pub(crate) fn config_ipv4(public_config: Option<&PublicConfig>) -> Option<[u8; 4]> {
        public_config.and_then(|c| c.ipv4).map(|c| c.ip.ip)
    }

    pub(crate) fn free_of(node: &Node<T>) -> Resources {
        node.capacity
            .with_cru_overcommit(T::CruOvercommit::get())
            .saturating_sub(&node.reserved)
    }

    pub(crate) fn status_of(node: &Node<T>) -> NodeStatus {
        match node.last_heartbeat {
            Some(hb)
                if Self::now_ms().saturating_sub(hb.timestamp_ms)
                    <= T::HeartbeatTimeoutMs::get() =>
            {
                NodeStatus::Online
            }
            _ => NodeStatus::Offline,
        }
    }
}

/// RFC 1123 host name: dot-separated labels of 1-63 letters, digits and inner hyphens.
fn is_valid_domain(domain: &[u8]) -> bool {
    !domain.is_empty()
        && domain.split(|c| *c == b'.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .iter()
                    .all(|c| c.is_ascii_alphanumeric() || *c == b'-')
                && label.first() != Some(&b'-')
                && label.last() != Some(&b'-')
        })
}
