//! Interface configuration through the classic ioctls: enough for a lease (up, address,
//! netmask, default route) without a netlink stack in PID 1.

use std::{
    ffi::CString,
    io,
    net::Ipv4Addr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use crate::dhcp::Lease;

fn control_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the descriptor is owned right away.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn request(name: &str) -> io::Result<libc::ifreq> {
    let c = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let bytes = c.as_bytes_with_nul();
    // SAFETY: ifreq is plain old data; all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    if bytes.len() > req.ifr_name.len() {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    for (d, s) in req.ifr_name.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    Ok(req)
}

fn ioctl(fd: &OwnedFd, op: libc::c_ulong, arg: *mut libc::c_void) -> io::Result<()> {
    // SAFETY: every caller passes the structure `op` expects.
    if unsafe { libc::ioctl(fd.as_raw_fd(), op as _, arg) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn sockaddr(a: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(a).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size; this is how the API is used.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

/// Ethernet-like interfaces (with a device behind them), in name order.
pub fn nics() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir("/sys/class/net")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().join("device").exists())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    names.sort();
    names
}

/// Brings an interface up.
pub fn up(name: &str) -> io::Result<()> {
    let fd = control_socket()?;
    let mut req = request(name)?;
    ioctl(
        &fd,
        libc::SIOCGIFFLAGS,
        (&mut req as *mut libc::ifreq).cast(),
    )?;
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    unsafe { req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    ioctl(
        &fd,
        libc::SIOCSIFFLAGS,
        (&mut req as *mut libc::ifreq).cast(),
    )
}

/// An interface's hardware address.
pub fn mac(name: &str) -> io::Result<[u8; 6]> {
    let fd = control_socket()?;
    let mut req = request(name)?;
    ioctl(
        &fd,
        libc::SIOCGIFHWADDR,
        (&mut req as *mut libc::ifreq).cast(),
    )?;
    // SAFETY: SIOCGIFHWADDR filled the hwaddr member.
    let data = unsafe { req.ifr_ifru.ifru_hwaddr.sa_data };
    Ok(std::array::from_fn(|i| data[i] as u8))
}

/// Applies a lease: address, netmask, default route, resolvers.
pub fn apply(lease: &Lease) -> io::Result<()> {
    configure(lease)?;
    let resolv: String = lease
        .dns
        .iter()
        .map(|d| format!("nameserver {d}\n"))
        .collect();
    std::fs::create_dir_all("/etc")?;
    std::fs::write("/etc/resolv.conf", resolv)
}

/// Gives a lease's interface its address, netmask and default route.
pub fn configure(lease: &Lease) -> io::Result<()> {
    let fd = control_socket()?;
    let mut req = request(&lease.interface)?;
    req.ifr_ifru.ifru_addr = sockaddr(lease.address);
    ioctl(
        &fd,
        libc::SIOCSIFADDR,
        (&mut req as *mut libc::ifreq).cast(),
    )?;
    let mask = u32::MAX
        .checked_shl(32 - u32::from(lease.prefix_len))
        .unwrap_or(0);
    req.ifr_ifru.ifru_netmask = sockaddr(Ipv4Addr::from(mask));
    ioctl(
        &fd,
        libc::SIOCSIFNETMASK,
        (&mut req as *mut libc::ifreq).cast(),
    )?;
    if let Some(router) = lease.router {
        // SAFETY: rtentry is plain old data; all zeroes is "no value" for each field.
        let mut route: libc::rtentry = unsafe { std::mem::zeroed() };
        route.rt_dst = sockaddr(Ipv4Addr::UNSPECIFIED);
        route.rt_genmask = sockaddr(Ipv4Addr::UNSPECIFIED);
        route.rt_gateway = sockaddr(router);
        route.rt_flags = libc::RTF_UP | libc::RTF_GATEWAY;
        match ioctl(
            &fd,
            libc::SIOCADDRT,
            (&mut route as *mut libc::rtentry).cast(),
        ) {
            Err(e) if e.raw_os_error() != Some(libc::EEXIST) => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

/// Takes an interface's IPv4 address away (and the routes through it): a lost lease's address
/// must not be used any more.
pub fn clear(interface: &str) -> io::Result<()> {
    let fd = control_socket()?;
    let mut req = request(interface)?;
    req.ifr_ifru.ifru_addr = sockaddr(Ipv4Addr::UNSPECIFIED);
    ioctl(
        &fd,
        libc::SIOCSIFADDR,
        (&mut req as *mut libc::ifreq).cast(),
    )
}
