//! Links, addresses and routes over rtnetlink; taps through the tun driver's ioctls. Every
//! helper is idempotent: "already exists" and "already gone" are success.

use std::{
    ffi::CString,
    fs::OpenOptions,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::AsRawFd,
    path::Path,
};

use anyhow::{Context, Result};
use futures::TryStreamExt;
use ipnet::Ipv4Net;
use rtnetlink::{
    packet_route::{
        address::{AddressAttribute, AddressMessage},
        link::{LinkAttribute, LinkMessage},
        route::{RouteAttribute, RouteMessage},
        AddressFamily,
    },
    Handle, LinkBridge, LinkUnspec, LinkVeth, RouteMessageBuilder,
};

use crate::netns;

/// A netlink handle for the namespace at `ns`, or for ours. Needs a tokio runtime.
pub async fn handle(ns: Option<&Path>) -> Result<Handle> {
    let (connection, handle, _) = match ns {
        None => rtnetlink::new_connection().context("opening rtnetlink")?,
        Some(ns) => {
            let runtime = tokio::runtime::Handle::current();
            let ns = ns.to_path_buf();
            tokio::task::spawn_blocking(move || {
                netns::run_in(&ns, move || {
                    let _entered = runtime.enter();
                    rtnetlink::new_connection().context("opening rtnetlink")
                })
            })
            .await??
        }
    };
    tokio::spawn(connection);
    Ok(handle)
}

fn errno_is(e: &rtnetlink::Error, errno: i32) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m) if m.raw_code().abs() == errno)
}

/// The index of the link called `name`, if it exists.
pub async fn index(h: &Handle, name: &str) -> Result<Option<u32>> {
    Ok(get(h, name).await?.map(|m| m.header.index))
}

pub async fn get(h: &Handle, name: &str) -> Result<Option<LinkMessage>> {
    let mut links = h.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(link) => Ok(link),
        Err(e) if errno_is(&e, libc::ENODEV) => Ok(None),
        Err(e) => Err(e).with_context(|| format!("looking up link {name}")),
    }
}

/// Names of all links whose name starts with `prefix`.
pub async fn names_with_prefix(h: &Handle, prefix: &str) -> Result<Vec<String>> {
    let mut links = h.link().get().execute();
    let mut names = vec![];
    while let Some(link) = links.try_next().await.context("listing links")? {
        for attr in link.attributes {
            if let LinkAttribute::IfName(name) = attr {
                if name.starts_with(prefix) {
                    names.push(name);
                }
            }
        }
    }
    Ok(names)
}

async fn require(h: &Handle, name: &str) -> Result<u32> {
    index(h, name)
        .await?
        .with_context(|| format!("link {name} vanished"))
}

/// A bridge called `name`, up.
pub async fn ensure_bridge(h: &Handle, name: &str) -> Result<u32> {
    if index(h, name).await?.is_none() {
        let add = h.link().add(LinkBridge::new(name).build()).execute().await;
        match add {
            Err(e) if !errno_is(&e, libc::EEXIST) => {
                return Err(e).with_context(|| format!("creating bridge {name}"))
            }
            _ => {}
        }
    }
    let index = require(h, name).await?;
    set_up(h, index).await?;
    Ok(index)
}

/// A veth pair `name` <-> `peer`, both in this namespace (unless `peer` already moved).
pub async fn ensure_veth(h: &Handle, name: &str, peer: &str) -> Result<u32> {
    if index(h, name).await?.is_none() {
        let add = h
            .link()
            .add(LinkVeth::new(name, peer).build())
            .execute()
            .await;
        match add {
            Err(e) if !errno_is(&e, libc::EEXIST) => {
                return Err(e).with_context(|| format!("creating veth {name}"))
            }
            _ => {}
        }
    }
    require(h, name).await
}

pub async fn set_up(h: &Handle, index: u32) -> Result<()> {
    h.link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .context("setting a link up")
}

/// Puts link `index` on bridge `bridge`.
pub async fn set_master(h: &Handle, index: u32, bridge: u32) -> Result<()> {
    h.link()
        .set(LinkUnspec::new_with_index(index).controller(bridge).build())
        .execute()
        .await
        .context("adding a link to a bridge")
}

/// Makes bridge port `index` isolated (or not): isolated ports reach only the bridge's
/// non-isolated ports, never each other.
pub async fn set_port_isolated(h: &Handle, index: u32, isolated: bool) -> Result<()> {
    // Port attributes go in RTM_NEWLINK (the kernel ignores them in RTM_SETLINK).
    h.link()
        .set_port(
            rtnetlink::LinkBridgePort::new(index)
                .isolated(isolated)
                .build(),
        )
        .execute()
        .await
        .context("setting a bridge port's isolation")
}

/// Moves link `index` into the namespace at `ns`.
pub async fn move_to(h: &Handle, index: u32, ns: &Path) -> Result<()> {
    let file = std::fs::File::open(ns).with_context(|| format!("opening {}", ns.display()))?;
    h.link()
        .set(
            LinkUnspec::new_with_index(index)
                .setns_by_fd(file.as_raw_fd())
                .build(),
        )
        .execute()
        .await
        .context("moving a link into a namespace")
}

/// Deletes the link called `name`; fine when it does not exist.
pub async fn delete(h: &Handle, name: &str) -> Result<()> {
    let Some(index) = index(h, name).await? else {
        return Ok(());
    };
    match h.link().del(index).execute().await {
        Err(e) if !errno_is(&e, libc::ENODEV) => {
            Err(e).with_context(|| format!("deleting link {name}"))
        }
        _ => Ok(()),
    }
}

/// Sets `addr/prefix` (IPv4 or IPv6) on link `index` (kept when already there).
pub async fn ensure_address(
    h: &Handle,
    index: u32,
    addr: impl Into<IpAddr>,
    prefix: u8,
) -> Result<()> {
    let addr = addr.into();
    match h.address().add(index, addr, prefix).execute().await {
        Err(e) if !errno_is(&e, libc::EEXIST) => {
            Err(e).with_context(|| format!("adding address {addr}/{prefix}"))
        }
        _ => Ok(()),
    }
}

/// Routes `dest` through link `index` (replacing any route for `dest`).
pub async fn replace_route(h: &Handle, dest: Ipv4Net, index: u32) -> Result<()> {
    let route = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(dest.network(), dest.prefix_len())
        .output_interface(index)
        .build();
    replace(h, route, || format!("routing {dest}")).await
}

/// Sets the default route through `gateway` on link `index`, reachable on that link without a
/// route of its own (onlink).
pub async fn replace_default_route(h: &Handle, gateway: Ipv4Addr, index: u32) -> Result<()> {
    let route = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(Ipv4Addr::UNSPECIFIED, 0)
        .gateway(gateway)
        .output_interface(index)
        .onlink()
        .build();
    replace(h, route, || format!("default route via {gateway}")).await
}

/// Routes the IPv6 prefix `dest/prefix` through link `index` (replacing any route for it).
pub async fn replace_route6(h: &Handle, dest: Ipv6Addr, prefix: u8, index: u32) -> Result<()> {
    let route = RouteMessageBuilder::<Ipv6Addr>::new()
        .destination_prefix(dest, prefix)
        .output_interface(index)
        .build();
    replace(h, route, || format!("routing {dest}/{prefix}")).await
}

/// Removes the route for `dest/prefix` through link `index`; fine when there is none.
pub async fn delete_route6(h: &Handle, dest: Ipv6Addr, prefix: u8, index: u32) -> Result<()> {
    let route = RouteMessageBuilder::<Ipv6Addr>::new()
        .destination_prefix(dest, prefix)
        .output_interface(index)
        .build();
    match h.route().del(route).execute().await {
        Err(e) if !errno_is(&e, libc::ESRCH) && !errno_is(&e, libc::ENOENT) => {
            Err(e).with_context(|| format!("removing the route for {dest}/{prefix}"))
        }
        _ => Ok(()),
    }
}

/// Sets link `index`'s MTU.
pub async fn set_mtu(h: &Handle, index: u32, mtu: u32) -> Result<()> {
    h.link()
        .set(LinkUnspec::new_with_index(index).mtu(mtu).build())
        .execute()
        .await
        .with_context(|| format!("setting MTU {mtu}"))
}

async fn replace(h: &Handle, route: RouteMessage, what: impl FnOnce() -> String) -> Result<()> {
    h.route()
        .add(route)
        .replace()
        .execute()
        .await
        .with_context(what)
}

/// The IPv4 addresses (with prefix length) on link `index`.
pub async fn ipv4_addresses(h: &Handle, index: u32) -> Result<Vec<(Ipv4Addr, u8)>> {
    Ok(ipv4_address_messages(h, index)
        .await?
        .into_iter()
        .map(|(ip, prefix, _)| (ip, prefix))
        .collect())
}

/// Removes every IPv4 address of link `index` but `keep` (e.g. an old gateway after the
/// network's subnet changed).
pub async fn remove_addresses_except(h: &Handle, index: u32, keep: (Ipv4Addr, u8)) -> Result<()> {
    for (ip, prefix, msg) in ipv4_address_messages(h, index).await? {
        if (ip, prefix) == keep {
            continue;
        }
        match h.address().del(msg).execute().await {
            Err(e) if !errno_is(&e, libc::EADDRNOTAVAIL) => {
                return Err(e).context("removing a stale address")
            }
            _ => {}
        }
    }
    Ok(())
}

/// Each IPv4 address of link `index` with its prefix length and netlink message.
async fn ipv4_address_messages(
    h: &Handle,
    index: u32,
) -> Result<Vec<(Ipv4Addr, u8, AddressMessage)>> {
    let mut addresses = h.address().get().set_link_index_filter(index).execute();
    let mut found = vec![];
    while let Some(msg) = addresses.try_next().await.context("listing addresses")? {
        let local = msg.attributes.iter().find_map(|a| match a {
            AddressAttribute::Local(IpAddr::V4(ip)) => Some(*ip),
            _ => None,
        });
        if let Some(ip) = local {
            found.push((ip, msg.header.prefix_len, msg));
        }
    }
    Ok(found)
}

/// The IPv4 destinations routed through link `index` in the main table.
pub async fn routes_via(h: &Handle, index: u32) -> Result<Vec<(Ipv4Net, RouteMessage)>> {
    Ok(routes(h)
        .await?
        .into_iter()
        .filter(|(_, oif, _)| *oif == Some(index))
        .map(|(net, _, route)| (net, route))
        .collect())
}

/// Every IPv4 route of the main table with a destination: (destination, output link, route).
pub async fn routes(h: &Handle) -> Result<Vec<(Ipv4Net, Option<u32>, RouteMessage)>> {
    let mut routes = h
        .route()
        .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute();
    let mut found = vec![];
    while let Some(route) = routes.try_next().await.context("listing routes")? {
        if route.header.address_family != AddressFamily::Inet {
            continue;
        }
        let mut oif = None;
        let mut dst = None;
        for attr in &route.attributes {
            match attr {
                RouteAttribute::Oif(i) => oif = Some(*i),
                RouteAttribute::Destination(
                    rtnetlink::packet_route::route::RouteAddress::Inet(a),
                ) => dst = Some(*a),
                _ => {}
            }
        }
        if let Some(dst) = dst {
            if let Ok(net) = Ipv4Net::new(dst, route.header.destination_prefix_length) {
                found.push((net, oif, route));
            }
        }
    }
    Ok(found)
}

pub async fn delete_route(h: &Handle, route: RouteMessage) -> Result<()> {
    match h.route().del(route).execute().await {
        Err(e) if !errno_is(&e, libc::ESRCH) => Err(e).context("deleting a route"),
        _ => Ok(()),
    }
}

/// Opens `/dev/net/tun` and attaches it to the tun/tap device `name` with `flags` (created
/// when absent), in this thread's namespace.
fn attach_tun(name: &str, flags: libc::c_int) -> Result<std::fs::File> {
    let tun = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .context("opening /dev/net/tun")?;
    #[repr(C)]
    struct IfReq {
        name: [u8; libc::IFNAMSIZ],
        flags: libc::c_short,
        _pad: [u8; 22],
    }
    let c = CString::new(name)?;
    let bytes = c.as_bytes_with_nul();
    anyhow::ensure!(
        bytes.len() <= libc::IFNAMSIZ,
        "device name {name:?} too long"
    );
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: flags as libc::c_short,
        _pad: [0; 22],
    };
    req.name[..bytes.len()].copy_from_slice(bytes);
    // SAFETY: a valid tun fd and an ifreq-sized buffer, as TUNSETIFF expects.
    if unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETIFF, &mut req) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("attaching to tun/tap device {name}"));
    }
    Ok(tun)
}

/// A persistent tap called `name` (in this thread's namespace), usable by `owner` when given,
/// so that a hypervisor opens it by name. Fine when it exists.
pub fn create_tap(name: &str, owner: Option<u32>) -> Result<()> {
    let tun = attach_tun(name, libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR)?;
    if let Some(uid) = owner {
        // SAFETY: TUNSETOWNER takes the uid by value.
        if unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETOWNER, uid as libc::c_ulong) } != 0 {
            return Err(std::io::Error::last_os_error()).context("setting the tap's owner");
        }
    }
    // SAFETY: TUNSETPERSIST takes a flag by value.
    if unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETPERSIST, 1 as libc::c_ulong) } != 0 {
        return Err(std::io::Error::last_os_error()).context("making the tap persistent");
    }
    Ok(())
}

/// A layer-3 tun device called `name` for IP packets without a packet-info header, open in
/// non-blocking mode. It lives as long as the returned file.
pub fn open_tun(name: &str) -> Result<std::fs::File> {
    let tun = attach_tun(name, libc::IFF_TUN | libc::IFF_NO_PI)?;
    // SAFETY: F_GETFL/F_SETFL on a valid fd.
    let flags = unsafe { libc::fcntl(tun.as_raw_fd(), libc::F_GETFL) };
    if flags < 0
        || unsafe { libc::fcntl(tun.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0
    {
        return Err(std::io::Error::last_os_error()).context("making the tun non-blocking");
    }
    Ok(tun)
}
