//! What a VM is made of, and the guest configuration channel.
//!
//! The channel is an uncompressed cpio archive appended to the project's initramfs (the kernel
//! unpacks concatenated archives in order). It holds `/zos/config/` with one file per setting;
//! the guest `/init` reads it. Layout (all files optional except `root`):
//!
//! | file | content |
//! |---|---|
//! | `root` | `none`, `virtiofs <tag>` or `disk <serial>` |
//! | `rootfs_size_mib` | size of the tmpfs writable layer in container mode |
//! | `rootfs_disk` | serial of a disk holding the writable layer instead (formatted if blank) |
//! | `mounts` | lines `<serial> <absolute path>` (an all-zero disk is formatted ext2 first; the executor's disks come formatted ext4) |
//! | `shares` | lines `<virtio-fs tag> <absolute path>`: host directories (volumes) mounted read-write |
//! | `hostname` | one line |
//! | `net` | lines `<mac> <address/prefix> <gateway or ->` |
//! | `ssh_authorized_keys` | installed as `/root/.ssh/authorized_keys` |
//! | `env/<NAME>` | the value of environment variable NAME |
//! | `argv/<i>` | the i-th word of the entrypoint, split on the host with POSIX shell quoting |
//!
//! The archive also carries `/dev/console` so the kernel has a console before `/init` runs.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use anyhow::{bail, ensure, Context, Result};

use crate::cpio::CpioWriter;

/// Tag of the root filesystem's virtio-fs export.
pub const ROOTFS_TAG: &str = "zosroot";

/// Longest virtio-blk serial QEMU passes to the guest.
pub const MAX_DISK_ID_LEN: usize = 20;

/// Longest virtio-fs tag the device carries.
pub const MAX_SHARE_TAG_LEN: usize = 36;

/// A virtual machine as the hypervisor backends see it. Built by the executor's VM driver from
/// a `VmSpec` (see README.md for the mapping).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct VmConfig {
    /// Unique on the node; `[a-z0-9_-]`, 1..=48 bytes. Names the cgroup and log lines.
    pub name: String,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub boot: BootMode,
    pub disks: Vec<DiskAttachment>,
    /// Host directories shared into the guest over virtio-fs (the executor's volumes).
    #[serde(default)]
    pub shares: Vec<SharedDir>,
    pub nics: Vec<NicConfig>,
    pub guest: GuestConfig,
    /// The network namespace the hypervisor runs in, where the NICs' taps are; `None`: ours.
    pub netns: Option<PathBuf>,
}

/// What the guest's root filesystem is.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum BootMode {
    /// No root filesystem: the entrypoint runs in the project's initramfs (busybox). For
    /// diagnostics, probes and tests.
    Initramfs,
    /// Container mode: `rootfs_dir` (e.g. a zos-image FUSE mount) is exported read-only over
    /// virtio-fs and overlaid with a writable layer; the entrypoint runs chrooted in it.
    Container {
        rootfs_dir: PathBuf,
        writable: WritableLayer,
    },
    /// Full-disk image: the attached disk with this id holds the root filesystem (whole disk
    /// or its first mountable partition). Without an entrypoint its `/sbin/init` takes over.
    Disk { root_disk: String },
}

/// Where container mode keeps the guest's writes.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum WritableLayer {
    /// Guest memory, bounded; lost when the guest stops.
    Tmpfs { size_mib: u64 },
    /// An attached disk (by id), formatted by the guest when blank; survives restarts.
    Disk(String),
}

/// A raw disk file attached as a virtio-blk device.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DiskAttachment {
    /// The guest finds the disk by this virtio-blk serial: `[A-Za-z0-9_-]`, at most 20 bytes.
    pub id: String,
    /// A raw (usually sparse) file.
    pub path: PathBuf,
    /// Where the guest mounts it (absolute), or `None` to leave it as a bare block device.
    pub mount: Option<String>,
    pub read_only: bool,
}

/// A host directory the guest mounts read-write over virtio-fs, served by its own virtiofsd:
/// several guests may share one, and its content outlives them.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SharedDir {
    /// The virtio-fs tag the guest mounts by: `[a-z0-9_-]`, at most 36 bytes.
    pub tag: String,
    /// The host directory (absolute).
    pub dir: PathBuf,
    /// Where the guest mounts it (absolute, not /).
    pub mount: String,
}

/// A network interface backed by an existing host tap device (created by the network driver).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NicConfig {
    pub tap: String,
    pub mac: [u8; 6],
    /// IPv4 address with prefix length the guest sets on the interface.
    pub address: Option<(Ipv4Addr, u8)>,
    /// The default route's next hop, on this interface.
    pub gateway: Option<Ipv4Addr>,
    /// More routes through this interface: (destination, prefix length, next hop).
    pub routes: Vec<(Ipv4Addr, u8, Ipv4Addr)>,
    /// IPv6 address with prefix length (static: the guest ignores router advertisements and
    /// skips duplicate address detection on this interface).
    pub address6: Option<(std::net::Ipv6Addr, u8)>,
    /// The IPv6 default route's next hop, on this interface.
    pub gateway6: Option<std::net::Ipv6Addr>,
    /// More IPv6 routes through this interface: (destination, prefix length, next hop).
    #[serde(default)]
    pub routes6: Vec<(std::net::Ipv6Addr, u8, std::net::Ipv6Addr)>,
}

/// What the guest's init applies before running the entrypoint.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GuestConfig {
    pub hostname: String,
    pub env: Vec<(String, String)>,
    /// A command line with POSIX shell quoting (no expansion); empty for none.
    pub entrypoint: String,
    pub ssh_keys: Vec<String>,
}

impl NicConfig {
    pub fn mac_string(&self) -> String {
        self.mac
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    }
}

fn is_name(s: &str, max: usize, extra: &[char]) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || extra.contains(&c))
}

fn is_env_key(k: &str) -> bool {
    let mut chars = k.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A guest mount point the init script can take as one word.
fn check_mount_path(m: &str, what: &str) -> Result<()> {
    ensure!(
        m.starts_with('/') && m.len() > 1 && !m.contains(char::is_whitespace) && !m.contains('\0'),
        "mount path {m:?} of {what} must be absolute, not /, without whitespace"
    );
    Ok(())
}

fn single_line(s: &str) -> bool {
    !s.contains('\n') && !s.contains('\r') && !s.contains('\0')
}

impl VmConfig {
    /// Checks everything the backends and the guest init rely on. Errors here are permanent:
    /// the same config will never start.
    pub fn validate(&self) -> Result<()> {
        ensure!(
            is_name(&self.name, 48, &['-', '_']),
            "VM name {:?} is not [a-z0-9_-]{{1,48}}",
            self.name
        );
        ensure!(
            (1..=255).contains(&self.vcpus),
            "vcpus must be 1..=255, not {}",
            self.vcpus
        );
        ensure!(
            self.memory_mib >= 64,
            "memory must be at least 64 MiB, not {}",
            self.memory_mib
        );
        let mut ids = std::collections::HashSet::new();
        for d in &self.disks {
            ensure!(
                !d.id.is_empty()
                    && d.id.len() <= MAX_DISK_ID_LEN
                    && d.id
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
                "disk id {:?} is not [A-Za-z0-9_-]{{1,20}}",
                d.id
            );
            ensure!(
                ids.insert(d.id.as_str()),
                "disk id {:?} is used twice",
                d.id
            );
            if let Some(m) = &d.mount {
                check_mount_path(m, &format!("disk {}", d.id))?;
            }
        }
        let mut tags = std::collections::HashSet::from([ROOTFS_TAG]);
        for s in &self.shares {
            ensure!(
                is_name(&s.tag, MAX_SHARE_TAG_LEN, &['-', '_']),
                "share tag {:?} is not [a-z0-9_-]{{1,{MAX_SHARE_TAG_LEN}}}",
                s.tag
            );
            ensure!(
                tags.insert(s.tag.as_str()),
                "share tag {:?} is used twice",
                s.tag
            );
            ensure!(
                s.dir.is_absolute(),
                "shared directory {} must be absolute",
                s.dir.display()
            );
            check_mount_path(&s.mount, &format!("share {}", s.tag))?;
            // Shares are mounted after the disks: one above a disk would hide it.
            for d in &self.disks {
                if let Some(m) = &d.mount {
                    let below = Path::new(m).starts_with(Path::new(&s.mount));
                    ensure!(
                        !below,
                        "disk {} at {m} would be hidden by share {} at {}: mount it elsewhere",
                        d.id,
                        s.tag,
                        s.mount
                    );
                }
            }
        }
        match &self.boot {
            BootMode::Initramfs => {}
            BootMode::Container {
                rootfs_dir,
                writable,
            } => {
                ensure!(
                    rootfs_dir.is_absolute(),
                    "container root {} must be absolute",
                    rootfs_dir.display()
                );
                match writable {
                    WritableLayer::Tmpfs { size_mib } => {
                        ensure!(*size_mib > 0, "tmpfs layer of 0 MiB")
                    }
                    WritableLayer::Disk(id) => ensure!(
                        ids.contains(id.as_str()),
                        "writable layer disk {id:?} is not attached"
                    ),
                }
            }
            BootMode::Disk { root_disk } => {
                ensure!(
                    ids.contains(root_disk.as_str()),
                    "root disk {root_disk:?} is not attached"
                )
            }
        }
        for n in &self.nics {
            ensure!(
                !n.tap.is_empty()
                    && n.tap.len() < 16
                    && n.tap
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
                "tap name {:?} is not a valid interface name",
                n.tap
            );
            if let Some((_, prefix)) = n.address {
                ensure!(prefix <= 32, "prefix /{prefix} is not IPv4");
            }
        }
        let g = &self.guest;
        ensure!(
            g.hostname.is_empty() || is_name(&g.hostname.to_ascii_lowercase(), 63, &['-']),
            "hostname {:?} is not a DNS label",
            g.hostname
        );
        for (k, v) in &g.env {
            ensure!(is_env_key(k), "environment variable name {k:?} is invalid");
            ensure!(!v.contains('\0'), "environment variable {k} contains NUL");
        }
        for key in &g.ssh_keys {
            ensure!(
                single_line(key) && !key.trim().is_empty(),
                "an SSH key must be one non-empty line"
            );
        }
        self.entrypoint_argv()?;
        Ok(())
    }

    /// The entrypoint's words (shell quoting, no expansion).
    pub fn entrypoint_argv(&self) -> Result<Vec<String>> {
        let ep = self.guest.entrypoint.trim();
        if ep.is_empty() {
            return Ok(Vec::new());
        }
        match shlex::split(ep) {
            Some(words) if !words.is_empty() => {
                for w in &words {
                    ensure!(!w.contains('\0'), "entrypoint contains NUL");
                }
                Ok(words)
            }
            _ => bail!("entrypoint {ep:?} is not valid shell words (unbalanced quotes?)"),
        }
    }

    pub fn disk(&self, id: &str) -> Option<&DiskAttachment> {
        self.disks.iter().find(|d| d.id == id)
    }

    /// The configuration channel: a cpio archive to append to the base initramfs.
    pub fn config_appendix(&self) -> Result<Vec<u8>> {
        self.validate()?;
        let mut w = CpioWriter::new();
        w.dir("dev")
            .char_dev("dev/console", 5, 1)
            .dir("zos")
            .dir("zos/config");
        let c = |name: &str| format!("zos/config/{name}");
        let root = match &self.boot {
            BootMode::Initramfs => "none".to_string(),
            BootMode::Container { writable, .. } => {
                match writable {
                    WritableLayer::Tmpfs { size_mib } => {
                        w.file(&c("rootfs_size_mib"), format!("{size_mib}\n"), 0o644);
                    }
                    WritableLayer::Disk(id) => {
                        w.file(&c("rootfs_disk"), format!("{id}\n"), 0o644);
                    }
                }
                format!("virtiofs {ROOTFS_TAG}")
            }
            BootMode::Disk { root_disk } => format!("disk {root_disk}"),
        };
        w.file(&c("root"), format!("{root}\n"), 0o644);
        let mounts: String = self
            .disks
            .iter()
            .filter_map(|d| d.mount.as_ref().map(|m| format!("{} {}\n", d.id, m)))
            .collect();
        if !mounts.is_empty() {
            w.file(&c("mounts"), mounts, 0o644);
        }
        let shares: String = self
            .shares
            .iter()
            .map(|s| format!("{} {}\n", s.tag, s.mount))
            .collect();
        if !shares.is_empty() {
            w.file(&c("shares"), shares, 0o644);
        }
        let hostname = if self.guest.hostname.is_empty() {
            &self.name
        } else {
            &self.guest.hostname
        };
        w.file(
            &c("hostname"),
            format!("{}\n", hostname.replace('_', "-")),
            0o644,
        );
        let gateway_text = |gw: Option<String>| gw.unwrap_or_else(|| "-".into());
        let net: String = self
            .nics
            .iter()
            .flat_map(|n| {
                let v4 = n.address.map(|(ip, prefix)| {
                    let gw = gateway_text(n.gateway.map(|g| g.to_string()));
                    let routes: String = n
                        .routes
                        .iter()
                        .map(|(dest, len, via)| format!(" {dest}/{len}={via}"))
                        .collect();
                    format!("{} {ip}/{prefix} {gw}{routes}\n", n.mac_string())
                });
                // A second line for the same card: the guest adds both families to it.
                let v6 = n.address6.map(|(ip, prefix)| {
                    let gw = gateway_text(n.gateway6.map(|g| g.to_string()));
                    let routes: String = n
                        .routes6
                        .iter()
                        .map(|(dest, len, via)| format!(" {dest}/{len}={via}"))
                        .collect();
                    format!("{} {ip}/{prefix} {gw}{routes}\n", n.mac_string())
                });
                v4.into_iter().chain(v6)
            })
            .collect();
        if !net.is_empty() {
            w.file(&c("net"), net, 0o644);
        }
        if !self.guest.ssh_keys.is_empty() {
            let keys: String = self
                .guest
                .ssh_keys
                .iter()
                .map(|k| format!("{}\n", k.trim()))
                .collect();
            w.file(&c("ssh_authorized_keys"), keys, 0o600);
        }
        if !self.guest.env.is_empty() {
            w.dir(&c("env"));
            for (k, v) in &self.guest.env {
                w.file(&c(&format!("env/{k}")), v.as_bytes().to_vec(), 0o600);
            }
        }
        let argv = self.entrypoint_argv()?;
        if !argv.is_empty() {
            w.dir(&c("argv"));
            for (i, word) in argv.iter().enumerate() {
                w.file(&c(&format!("argv/{i}")), word.as_bytes().to_vec(), 0o644);
            }
        }
        Ok(w.finish())
    }

    /// Host directory exported over virtio-fs, if any.
    pub fn rootfs_dir(&self) -> Option<&PathBuf> {
        match &self.boot {
            BootMode::Container { rootfs_dir, .. } => Some(rootfs_dir),
            _ => None,
        }
    }

    /// Whether the guest RAM must be shareable with vhost-user daemons (virtiofsd).
    pub fn needs_shared_memory(&self) -> bool {
        self.rootfs_dir().is_some() || !self.shares.is_empty()
    }

    /// Ensures every attached disk file exists (the Disk driver creates them).
    pub fn check_disk_files(&self) -> Result<()> {
        for d in &self.disks {
            let meta = std::fs::metadata(&d.path)
                .with_context(|| format!("disk {} ({})", d.id, d.path.display()))?;
            ensure!(
                meta.is_file(),
                "disk {} ({}) is not a regular file",
                d.id,
                d.path.display()
            );
        }
        if let Some(dir) = self.rootfs_dir() {
            ensure!(
                dir.is_dir(),
                "container root {} is not a directory",
                dir.display()
            );
        }
        for s in &self.shares {
            ensure!(
                s.dir.is_dir(),
                "shared directory {} ({}) is not a directory",
                s.tag,
                s.dir.display()
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> VmConfig {
        VmConfig {
            name: "vm1".into(),
            vcpus: 1,
            memory_mib: 256,
            boot: BootMode::Initramfs,
            disks: vec![],
            shares: vec![],
            nics: vec![],
            netns: None,
            guest: GuestConfig::default(),
        }
    }

    #[test]
    fn entrypoint_words_are_not_expanded() {
        let mut c = base();
        c.guest.entrypoint = r#"sh -c "echo $HOME; echo 'a b'""#.into();
        assert_eq!(
            c.entrypoint_argv().unwrap(),
            vec!["sh", "-c", "echo $HOME; echo 'a b'"]
        );
        c.guest.entrypoint = "sh -c \"unbalanced".into();
        assert!(c.validate().is_err());
    }

    #[test]
    fn validation_refuses_bad_fields() {
        let mut c = base();
        c.guest.env = vec![("1BAD".into(), "x".into())];
        assert!(c.validate().is_err());
        let mut c = base();
        c.guest.ssh_keys = vec!["ssh-ed25519 AAA\nevil".into()];
        assert!(c.validate().is_err());
        let mut c = base();
        c.boot = BootMode::Disk {
            root_disk: "nope".into(),
        };
        assert!(c.validate().is_err());
        let mut c = base();
        c.disks = vec![DiskAttachment {
            id: "this-id-is-longer-than-twenty".into(),
            path: "/x".into(),
            mount: None,
            read_only: false,
        }];
        assert!(c.validate().is_err());
        let share = |tag: &str, mount: &str| SharedDir {
            tag: tag.into(),
            dir: "/srv/v".into(),
            mount: mount.into(),
        };
        let mut c = base();
        c.disks = vec![DiskAttachment {
            id: "db".into(),
            path: "/x".into(),
            mount: Some("/srv/db".into()),
            read_only: false,
        }];
        c.shares = vec![share("vol0", "/srv")];
        assert!(c.validate().is_err(), "a share above a disk hides it");
        c.shares = vec![share("vol0", "/srv/db/files")];
        c.validate().unwrap();
        for bad in [
            vec![share(ROOTFS_TAG, "/data")],
            vec![share("vol0", "/a"), share("vol0", "/b")],
            vec![share("Vol0", "/data")],
            vec![share("vol0", "data")],
            vec![share("vol0", "/da ta")],
        ] {
            let mut c = base();
            c.shares = bad.clone();
            assert!(c.validate().is_err(), "{bad:?} accepted");
        }
        let mut c = base();
        c.shares = vec![share("vol0", "/data"), share("vol1", "/logs")];
        c.validate().unwrap();
        let a = String::from_utf8_lossy(&c.config_appendix().unwrap()).to_string();
        assert!(a.contains("vol0 /data\nvol1 /logs\n"), "{a}");
    }

    #[test]
    fn appendix_carries_settings() {
        let mut c = base();
        c.guest.env = vec![("GREETING".into(), "hello world".into())];
        c.guest.entrypoint = "echo hi".into();
        let a = String::from_utf8_lossy(&c.config_appendix().unwrap()).to_string();
        for needle in [
            "zos/config/root",
            "none\n",
            "zos/config/env/GREETING",
            "hello world",
            "zos/config/argv/1",
            "dev/console",
        ] {
            assert!(a.contains(needle), "missing {needle}");
        }
    }

    /// The initramfs with the config appendix carries the tenant's environment and keys: on
    /// the host only its owner may read it, even where an older copy was world-readable.
    #[test]
    fn the_config_channel_file_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let base_initramfs = dir.path().join("base.cpio");
        std::fs::write(&base_initramfs, b"070701").unwrap();
        let out = dir.path().join("initrd");
        std::fs::write(&out, b"old").unwrap();
        std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o644)).unwrap();
        let mut c = base();
        c.guest.env = vec![("TOKEN".into(), "secret".into())];
        let mut assets = crate::GuestAssets {
            kernel: dir.path().join("vmlinuz"),
            initramfs: base_initramfs.clone(),
            kernel_version: "test".into(),
            kernel_blake3: String::new(),
            initramfs_blake3: blake3::hash(b"070701").to_hex().to_string(),
        };
        crate::qemu::write_initrd(&assets, &c, &out).unwrap();
        let mode = std::fs::metadata(&out).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "mode {mode:o}");
        // A base changed since it was built is refused.
        std::fs::write(&base_initramfs, b"070702").unwrap();
        let err = crate::qemu::write_initrd(&assets, &c, &out)
            .unwrap_err()
            .to_string();
        assert!(err.contains("changed since it was built"), "{err}");
        assets.initramfs_blake3.clear();
        crate::qemu::write_initrd(&assets, &c, &out).unwrap();
    }
}
