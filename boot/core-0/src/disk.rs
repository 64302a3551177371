//! The node's one piece of state: its data directory (identity seed, executor state, workload
//! data) on the first disk, in an ext4 filesystem labelled [`LABEL`] that core-0 creates on a
//! blank disk. A disk holding anything else is never written: the node then keeps its data in
//! memory, and a new identity is made (and registered) at every boot.
//!
//! Every other disk is capacity for workloads: a blank one is formatted ext4 labelled
//! [`CAPACITY_LABEL`], and each such filesystem is mounted under the data directory's
//! `capacity/<filesystem UUID>`, where the executor places workload disks. Foreign disks are
//! never written here either.

use std::{
    io::{self, Read},
    path::{Path, PathBuf},
};

/// The filesystem label of a node's data disk.
pub const LABEL: &str = "zos-node";
/// The filesystem label of a disk given to workloads.
pub const CAPACITY_LABEL: &str = "zos-capacity";
/// How much of a disk's start must be zero for it to count as blank.
pub const BLANK_PREFIX: usize = 1024 * 1024;

const EXT_SUPERBLOCK: usize = 1024;
const EXT_MAGIC: u16 = 0xEF53;

/// What a disk holds, from its first [`BLANK_PREFIX`] bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DiskContents {
    /// Only zeros: free to format.
    Blank,
    /// A node data filesystem made by core-0.
    NodeData,
    /// A capacity filesystem made by core-0, with its UUID (32 hex digits).
    Capacity(String),
    /// Something else (a partition table, another filesystem, data): left untouched.
    Foreign(&'static str),
}

/// Classifies a disk by its head (a shorter slice is a disk smaller than the prefix).
pub fn classify(head: &[u8]) -> DiskContents {
    if head.iter().all(|b| *b == 0) {
        return DiskContents::Blank;
    }
    let sb = head.get(EXT_SUPERBLOCK..EXT_SUPERBLOCK + 136);
    if let Some(sb) = sb {
        let magic = u16::from_le_bytes([sb[56], sb[57]]);
        if magic == EXT_MAGIC {
            let label = &sb[120..136];
            let end = label.iter().position(|b| *b == 0).unwrap_or(label.len());
            return match &label[..end] {
                l if l == LABEL.as_bytes() => DiskContents::NodeData,
                l if l == CAPACITY_LABEL.as_bytes() => {
                    DiskContents::Capacity(hex::encode(&sb[104..120]))
                }
                _ => DiskContents::Foreign("another ext filesystem"),
            };
        }
    }
    if head.get(512..520) == Some(b"EFI PART") {
        return DiskContents::Foreign("a GPT partition table");
    }
    if head.get(510..512) == Some(&[0x55, 0xAA]) {
        return DiskContents::Foreign("a boot sector or MBR partition table");
    }
    DiskContents::Foreign("data")
}

/// Whether a block device name is a disk a node may keep its data on (not a loop, RAM,
/// optical, floppy, network or virtual mapper device).
pub fn is_candidate(name: &str) -> bool {
    const NOT_DISKS: [&str; 9] = ["loop", "ram", "zram", "sr", "fd", "nbd", "dm-", "md", "mtd"];
    !name.is_empty() && !NOT_DISKS.iter().any(|p| name.starts_with(p))
}

/// The disks in `sys_block` (`/sys/block`) by name, skipping non-disks, removable media (the
/// boot stick) and read-only devices.
pub fn disks(sys_block: &Path) -> Vec<String> {
    let flag = |name: &str, attr: &str| {
        std::fs::read_to_string(sys_block.join(name).join(attr)).is_ok_and(|v| v.trim() == "1")
    };
    let Ok(entries) = std::fs::read_dir(sys_block) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| {
            is_candidate(n)
                && !flag(n, "removable")
                && !flag(n, "ro")
                // NVMe multipath paths (no device node of their own) and empty devices.
                && !flag(n, "hidden")
                && std::fs::read_to_string(sys_block.join(n).join("size"))
                    .is_ok_and(|v| v.trim().parse::<u64>().is_ok_and(|sectors| sectors > 0))
        })
        .collect();
    names.sort();
    names
}

/// The first of [`disks`]: the one that holds the node's data.
pub fn first_disk(sys_block: &Path) -> Option<String> {
    disks(sys_block).into_iter().next()
}

/// The first [`BLANK_PREFIX`] bytes of a device (fewer if it is smaller).
pub fn read_head(device: &Path) -> io::Result<Vec<u8>> {
    let mut head = Vec::with_capacity(BLANK_PREFIX);
    std::fs::File::open(device)?
        .take(BLANK_PREFIX as u64)
        .read_to_end(&mut head)?;
    Ok(head)
}

/// Whether the last [`BLANK_PREFIX`] bytes of a device are zero: a backup GPT and RAID
/// superblocks (md 0.90/1.0) live at the end of a disk whose start may be blank.
pub fn tail_is_blank(device: &Path) -> io::Result<bool> {
    use std::io::{Seek, SeekFrom};
    let mut f = std::fs::File::open(device)?;
    let size = f.seek(SeekFrom::End(0))?;
    f.seek(SeekFrom::Start(size.saturating_sub(BLANK_PREFIX as u64)))?;
    let mut tail = Vec::with_capacity(BLANK_PREFIX);
    f.take(BLANK_PREFIX as u64).read_to_end(&mut tail)?;
    Ok(tail.iter().all(|b| *b == 0))
}

/// Whether a device may be formatted now: blank at its start and its end (read again right
/// before formatting).
pub fn still_blank(device: &Path) -> io::Result<bool> {
    Ok(classify(&read_head(device)?) == DiskContents::Blank && tail_is_blank(device)?)
}

/// Mounts a node data filesystem (ext4) at `target`.
pub fn mount_data(device: &Path, target: &Path) -> io::Result<()> {
    crate::system::mount_at(
        device,
        target,
        Some("ext4"),
        libc::MS_NOSUID | libc::MS_NODEV,
        None,
    )
}

/// Mounts a memory-backed data directory at `target` (no usable disk).
pub fn mount_memory(target: &Path) -> io::Result<()> {
    crate::system::mount_at(
        Path::new("tmpfs"),
        target,
        Some("tmpfs"),
        libc::MS_NOSUID | libc::MS_NODEV,
        Some("mode=0700"),
    )
}

/// A block device's size in bytes.
pub fn size_bytes(device: &Path) -> io::Result<u64> {
    use std::io::{Seek, SeekFrom};
    std::fs::File::open(device)?.seek(SeekFrom::End(0))
}

/// The device node of a disk name.
pub fn device(name: &str) -> PathBuf {
    Path::new("/dev").join(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ext_head(label: &[u8]) -> Vec<u8> {
        let mut head = vec![0u8; BLANK_PREFIX];
        head[EXT_SUPERBLOCK + 56..EXT_SUPERBLOCK + 58].copy_from_slice(&EXT_MAGIC.to_le_bytes());
        head[EXT_SUPERBLOCK + 120..EXT_SUPERBLOCK + 120 + label.len()].copy_from_slice(label);
        head
    }

    #[test]
    fn only_a_blank_disk_is_formatted_and_only_ours_is_mounted() {
        assert_eq!(classify(&vec![0; BLANK_PREFIX]), DiskContents::Blank);
        assert_eq!(classify(&[]), DiskContents::Blank);
        assert_eq!(classify(&ext_head(b"zos-node")), DiskContents::NodeData);
        assert_eq!(
            classify(&ext_head(b"zos-node-x")),
            DiskContents::Foreign("another ext filesystem")
        );
        assert_eq!(
            classify(&ext_head(b"home")),
            DiskContents::Foreign("another ext filesystem")
        );
        let mut capacity = ext_head(b"zos-capacity");
        capacity[EXT_SUPERBLOCK + 104..EXT_SUPERBLOCK + 120].copy_from_slice(&[0xab; 16]);
        assert_eq!(classify(&capacity), DiskContents::Capacity("ab".repeat(16)));
        let mut mbr = vec![0u8; BLANK_PREFIX];
        mbr[510] = 0x55;
        mbr[511] = 0xAA;
        assert!(matches!(classify(&mbr), DiskContents::Foreign(_)));
        let mut gpt = vec![0u8; BLANK_PREFIX];
        gpt[512..520].copy_from_slice(b"EFI PART");
        assert_eq!(
            classify(&gpt),
            DiskContents::Foreign("a GPT partition table")
        );
        // One stray byte anywhere in the first MiB: not blank, so never formatted.
        let mut stray = vec![0u8; BLANK_PREFIX];
        stray[BLANK_PREFIX - 1] = 1;
        assert_eq!(classify(&stray), DiskContents::Foreign("data"));
        // A short, non-zero head (a tiny disk) is classified without reading past its end.
        assert_eq!(classify(&[1, 2, 3]), DiskContents::Foreign("data"));
    }

    #[test]
    fn a_disk_with_a_signature_at_its_end_is_not_blank() {
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("disk");
        let f = std::fs::File::create(&disk).unwrap();
        f.set_len(4 * BLANK_PREFIX as u64).unwrap();
        assert!(still_blank(&disk).unwrap());
        use std::os::unix::fs::FileExt;
        f.write_all_at(b"EFI PART", 4 * BLANK_PREFIX as u64 - 512)
            .unwrap();
        assert!(!still_blank(&disk).unwrap());
    }

    #[test]
    fn the_first_fixed_writable_disk_is_chosen() {
        let dir = tempfile::tempdir().unwrap();
        for (name, removable, ro, hidden, size) in [
            ("sr0", "0", "0", "0", "100"),
            ("loop0", "0", "0", "0", "100"),
            ("nvme0c0n1", "0", "0", "1", "100"),
            ("vda", "0", "0", "0", "0"),
            ("vdb", "0", "0", "0", "100"),
            ("sda", "1", "0", "0", "100"),
            ("nvme0n1", "0", "1", "0", "100"),
            ("vdc", "0", "0", "0", "100"),
        ] {
            let d = dir.path().join(name);
            std::fs::create_dir(&d).unwrap();
            std::fs::write(d.join("removable"), removable).unwrap();
            std::fs::write(d.join("ro"), ro).unwrap();
            std::fs::write(d.join("hidden"), hidden).unwrap();
            std::fs::write(d.join("size"), size).unwrap();
        }
        assert_eq!(first_disk(dir.path()).as_deref(), Some("vdb"));
        assert_eq!(disks(dir.path()), ["vdb", "vdc"]);
        assert_eq!(first_disk(&dir.path().join("missing")), None);
    }
}
