//! VMs' cards on the overlay network. The overlay daemon's TUN lives in a namespace of its own
//! (the overlay namespace), the only place where IPv6 forwarding is on: the node itself never
//! routes between its own links, and its uplinks keep taking router advertisements.
//!
//! VMs reach that namespace at layer 2. Their overlay cards are ports of one bridge in the
//! underlay, `<prefix>-ovb`, whose other port is a veth into the overlay namespace. That end,
//! `<prefix>-ovr`, carries `fe80::1` (each guest's next hop for the overlay prefix) and a /128
//! route for each VM's address. Each card is a public-card port ([`crate::public`]): it speaks
//! only as its own MAC and address, sends no router advertisements and never reaches the node.

use std::{net::Ipv6Addr, path::Path};

use anyhow::{Context, Result};

use super::{blocking, Networks};
use crate::{link, netns, public::PublicCard, NetId};

/// The guests' next hop for the overlay prefix: the overlay namespace's end of the veth.
pub const OVERLAY_GATEWAY: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);

impl Networks {
    /// The overlay bridge, its underlay port and the overlay namespace's end.
    fn overlay_links(&self) -> (String, String, String) {
        let p = self.prefix();
        (format!("{p}-ovb"), format!("{p}-ovu"), format!("{p}-ovr"))
    }

    /// Creates (or completes) the bridge and the veth into `overlay_ns`, and turns IPv6
    /// forwarding on there.
    pub async fn ensure_overlay(&self, overlay_ns: &Path) -> Result<()> {
        let (bridge, under, over) = self.overlay_links();
        let host = link::handle(self.underlay()).await?;
        let inner = link::handle(Some(overlay_ns))
            .await
            .with_context(|| format!("the overlay namespace {}", overlay_ns.display()))?;
        let bridge_index = link::ensure_bridge(&host, &bridge).await?;
        if link::index(&inner, &over).await?.is_none() {
            // A half-made pair (a crash in between) is made again.
            link::delete(&host, &under).await?;
            link::delete(&host, &over).await?;
            link::ensure_veth(&host, &under, &over).await?;
            let moved = link::index(&host, &over)
                .await?
                .with_context(|| format!("veth end {over} vanished"))?;
            link::move_to(&host, moved, overlay_ns).await?;
        }
        let under_index = link::index(&host, &under)
            .await?
            .with_context(|| format!("veth end {under} is missing (remove {over} to remake it)"))?;
        for name in [&bridge, &under] {
            self.no_ipv6(name).await?;
        }
        link::set_master(&host, under_index, bridge_index).await?;
        link::set_up(&host, under_index).await?;
        link::set_up(&host, bridge_index).await?;
        let ns = overlay_ns.to_path_buf();
        let dad = format!("net.ipv6.conf.{over}.accept_dad");
        blocking(move || {
            netns::sysctl(Some(&ns), "net.ipv6.conf.all.forwarding", "1")?;
            // fe80::1 is ours alone on this link: usable at once, without a DAD delay.
            netns::sysctl(Some(&ns), &dad, "0")
        })
        .await?;
        let over_index = link::index(&inner, &over)
            .await?
            .with_context(|| format!("veth end {over} vanished"))?;
        link::ensure_address(&inner, over_index, OVERLAY_GATEWAY, 64).await?;
        link::set_up(&inner, over_index).await
    }

    /// A VM's overlay card `tap` with `mac` and `address`, openable by `owner`: on the
    /// overlay bridge, with `address` routed to it in `overlay_ns`. Returns the tap's name.
    pub async fn attach_overlay_tap(
        &self,
        overlay_ns: &Path,
        tap: &NetId,
        mac: [u8; 6],
        address: Ipv6Addr,
        owner: Option<u32>,
    ) -> Result<String> {
        self.ensure_overlay(overlay_ns).await?;
        let (bridge, _, over) = self.overlay_links();
        let card = PublicCard {
            mac,
            ipv4: None,
            ipv6: Some(address),
        };
        let name = self.attach_public_tap(&bridge, tap, &card, owner).await?;
        // VMs reach only the overlay namespace's end, never each other at layer 2: no VM can
        // answer for fe80::1, the others' next hop.
        let host = link::handle(self.underlay()).await?;
        let tap_index = link::index(&host, &name)
            .await?
            .with_context(|| format!("tap {name} vanished"))?;
        link::set_port_isolated(&host, tap_index, true).await?;
        let inner = link::handle(Some(overlay_ns)).await?;
        let index = link::index(&inner, &over)
            .await?
            .with_context(|| format!("veth end {over} vanished"))?;
        link::replace_route6(&inner, address, 128, index).await?;
        Ok(name)
    }

    /// Removes a VM's overlay card and its route; fine when gone.
    pub async fn detach_overlay_tap(
        &self,
        overlay_ns: &Path,
        link_name: &str,
        address: Ipv6Addr,
    ) -> Result<()> {
        self.detach_public(link_name).await?;
        if !netns::is_mounted(overlay_ns) {
            return Ok(());
        }
        let (_, _, over) = self.overlay_links();
        let inner = link::handle(Some(overlay_ns)).await?;
        if let Some(index) = link::index(&inner, &over).await? {
            link::delete_route6(&inner, address, 128, index).await?;
        }
        Ok(())
    }
}
