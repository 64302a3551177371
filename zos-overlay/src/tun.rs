//! The overlay's TUN device: the participant's address on it, the overlay prefix routed
//! through it, and two pumps between it and the participant's packet channels.

use std::{
    io::{Read, Write},
    sync::Arc,
};

use anyhow::{Context, Result};
use tokio::{io::unix::AsyncFd, sync::mpsc};

use crate::address::{NodeSubnet, OVERLAY_PREFIX, OVERLAY_PREFIX_LEN};

/// The default MTU: what fits a typical link's packet with room to spare, so a participant's
/// packets cross any bridge or tap unfragmented.
pub const MTU: u32 = 1400;

/// A configured TUN device.
pub struct Tun {
    fd: AsyncFd<std::fs::File>,
    pub name: String,
}

impl Tun {
    /// Creates `name` with `<subnet>::1/64`, `mtu` and a route for the whole overlay prefix,
    /// and sets it up. With `netns`, the device is moved into that namespace (created when
    /// missing, IPv6 forwarding on) before it is configured: a node routes its VMs' addresses
    /// there, never in its own namespace. The device stays this process's.
    pub async fn create(
        name: &str,
        subnet: NodeSubnet,
        mtu: u32,
        netns: Option<&str>,
    ) -> Result<Self> {
        anyhow::ensure!(
            (1280..=65_535).contains(&mtu),
            "an MTU of {mtu}: IPv6 needs at least 1280, a frame carries at most 65535"
        );
        let file = zos_net::link::open_tun(name)?;
        let here = zos_net::link::handle(None).await?;
        let mut index = zos_net::link::index(&here, name)
            .await?
            .with_context(|| format!("tun device {name} vanished"))?;
        let ns = match netns {
            Some(ns) => {
                let path = zos_net::netns::create(ns)?;
                zos_net::netns::sysctl(Some(&path), "net.ipv6.conf.all.forwarding", "1")?;
                zos_net::link::move_to(&here, index, &path).await?;
                Some(path)
            }
            None => None,
        };
        let h = zos_net::link::handle(ns.as_deref()).await?;
        if ns.is_some() {
            index = zos_net::link::index(&h, name)
                .await?
                .with_context(|| format!("tun device {name} did not arrive in its namespace"))?;
        }
        zos_net::link::set_mtu(&h, index, mtu).await?;
        zos_net::link::ensure_address(&h, index, subnet.host(), 64).await?;
        zos_net::link::set_up(&h, index).await?;
        zos_net::link::replace_route6(&h, OVERLAY_PREFIX, OVERLAY_PREFIX_LEN, index).await?;
        // SAFETY: a File owns its fd, which stays open and the same until the AsyncFd drops it.
        let fd = unsafe { AsyncFd::register(file) }
            .map_err(|e| std::io::Error::from(e))
            .context("registering the tun with tokio")?;
        Ok(Self {
            fd,
            name: name.to_string(),
        })
    }

    async fn read_packet(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            let mut guard = self.fd.readable().await?;
            match guard.try_io(|fd| fd.get_ref().read(buf)) {
                Ok(result) => return result,
                Err(_would_block) => continue,
            }
        }
    }

    async fn write_packet(&self, packet: &[u8]) -> std::io::Result<()> {
        loop {
            let mut guard = self.fd.writable().await?;
            match guard.try_io(|fd| fd.get_ref().write(packet)) {
                Ok(result) => return result.map(|_| ()),
                Err(_would_block) => continue,
            }
        }
    }
}

/// Moves packets from the device into `to_overlay` and from `from_overlay` onto the device
/// until either side closes.
pub async fn pump(
    tun: Tun,
    to_overlay: mpsc::Sender<Vec<u8>>,
    mut from_overlay: mpsc::Receiver<Vec<u8>>,
) -> Result<()> {
    let tun = Arc::new(tun);
    let reader = {
        let tun = tun.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65_536];
            loop {
                let n = tun.read_packet(&mut buf).await?;
                if n > 0 && to_overlay.send(buf[..n].to_vec()).await.is_err() {
                    return Ok::<_, std::io::Error>(());
                }
            }
        })
    };
    let written = async {
        while let Some(packet) = from_overlay.recv().await {
            if let Err(e) = tun.write_packet(&packet).await {
                // A packet the kernel refuses (say, while the device goes down) is dropped.
                tracing::debug!("writing to the tun: {e}");
            }
        }
    };
    tokio::select! {
        read = reader => read.context("the tun reader")?.context("reading the tun")?,
        () = written => {}
    }
    Ok(())
}
