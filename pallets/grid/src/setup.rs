//! Set-up helpers for other pallets' tests and benchmarks: the grid's own paths, so what they
//! create is what the extrinsics would.

use super::*;

#[cfg(any(feature = "std", feature = "runtime-benchmarks"))]
impl<T: Config> Pallet<T> {
    /// A valid public IPv4 address in 45.0.0.0/8 derived from `seed`, for tests and benchmarks.
    /// Distinct seeds below 2^24 - 3 give distinct addresses.
    pub fn test_ip(seed: u32) -> PublicIpv4Config {
        // Hosts 2 ..= 2^24 - 2: never the network, the gateway (.0.0.1) or the broadcast.
        let host = 2 + seed % ((1 << 24) - 3);
        let ip = (45u32 << 24 | host).to_be_bytes();
        PublicIpv4Config {
            ip: zos_primitives::Ipv4Cidr { ip, prefix_len: 8 },
            gateway: [45, 0, 0, 1],
        }
    }

    /// Creates a farm with `ip_count` public IPs and an online node in it, through the same
    /// paths as the extrinsics. For other pallets' tests and benchmarks, which need a node to
    /// place contracts on.
    pub fn setup_online_node(
        farm_owner: T::AccountId,
        node_account: T::AccountId,
        capacity: Resources,
        ip_count: u32,
    ) -> Result<(FarmId, NodeId), DispatchError> {
        use frame_system::RawOrigin;
        let farm_id = NextFarmId::<T>::get();
        let mut name = b"farm-".to_vec();
        name.extend_from_slice(alloc::format!("{farm_id}").as_bytes());
        Self::create_farm(
            RawOrigin::Signed(farm_owner.clone()).into(),
            FarmName::truncate_from(name),
        )?;
        for i in 0..ip_count {
            let seed = farm_id.wrapping_mul(4096).wrapping_add(i);
            Self::add_farm_ip(
                RawOrigin::Signed(farm_owner.clone()).into(),
                farm_id,
                Self::test_ip(seed),
            )
            .map_err(|e| e.error)?;
        }
        Self::authorize_node(
            RawOrigin::Signed(farm_owner.clone()).into(),
            farm_id,
            node_account.clone(),
        )?;
        Self::register_node(
            RawOrigin::Signed(node_account.clone()).into(),
            farm_id,
            capacity,
            [7u8; 32],
            Location::default(),
            None,
            ExecutorVersion::truncate_from(b"v0.1.0".to_vec()),
        )?;
        let node_id = NodeIdByAccount::<T>::get(&node_account).ok_or(Error::<T>::NotANode)?;
        Self::heartbeat(RawOrigin::Signed(node_account).into()).map_err(|e| e.error)?;
        Ok((farm_id, node_id))
    }
}
