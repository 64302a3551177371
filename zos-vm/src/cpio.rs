//! A minimal writer for the `newc` cpio format, enough for the configuration appendix the guest
//! kernel unpacks over the initramfs: directories, regular files and character device nodes.

/// One archive member. Paths are relative (no leading `/`).
enum Entry {
    Dir(String),
    File(String, Vec<u8>, u32),
    CharDev(String, u32, u32),
}

#[derive(Default)]
pub struct CpioWriter {
    entries: Vec<Entry>,
}

impl CpioWriter {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn dir(&mut self, path: &str) -> &mut Self {
        self.entries.push(Entry::Dir(path.to_string()));
        self
    }

    pub fn file(&mut self, path: &str, data: impl Into<Vec<u8>>, mode: u32) -> &mut Self {
        self.entries
            .push(Entry::File(path.to_string(), data.into(), mode));
        self
    }

    pub fn char_dev(&mut self, path: &str, major: u32, minor: u32) -> &mut Self {
        self.entries
            .push(Entry::CharDev(path.to_string(), major, minor));
        self
    }

    /// The archive, terminated by the `TRAILER!!!` member and padded to 512 bytes (the kernel
    /// accepts concatenated archives; padding keeps the next one aligned).
    pub fn finish(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (ino, e) in self.entries.iter().enumerate() {
            let ino = ino as u32 + 1;
            match e {
                Entry::Dir(p) => header(&mut out, ino, 0o040755, 2, 0, 0, 0, p, &[]),
                Entry::File(p, data, mode) => header(
                    &mut out,
                    ino,
                    0o100000 | (mode & 0o7777),
                    1,
                    0,
                    0,
                    0,
                    p,
                    data,
                ),
                Entry::CharDev(p, maj, min) => {
                    header(&mut out, ino, 0o020600, 1, *maj, *min, 0, p, &[])
                }
            }
        }
        header(&mut out, 0, 0, 1, 0, 0, 0, "TRAILER!!!", &[]);
        while out.len() % 512 != 0 {
            out.push(0);
        }
        out
    }
}

#[allow(clippy::too_many_arguments)]
fn header(
    out: &mut Vec<u8>,
    ino: u32,
    mode: u32,
    nlink: u32,
    rdev_major: u32,
    rdev_minor: u32,
    mtime: u32,
    name: &str,
    data: &[u8],
) {
    let fields = [
        ino,
        mode,
        0, // uid
        0, // gid
        nlink,
        mtime,
        data.len() as u32,
        0, // dev major
        0, // dev minor
        rdev_major,
        rdev_minor,
        name.len() as u32 + 1,
        0, // check
    ];
    out.extend_from_slice(b"070701");
    for f in fields {
        out.extend_from_slice(format!("{f:08x}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    pad4(out);
    out.extend_from_slice(data);
    pad4(out);
}

fn pad4(out: &mut Vec<u8>) {
    while out.len() % 4 != 0 {
        out.push(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_newc() {
        let mut w = CpioWriter::new();
        w.dir("zos").file("zos/a", b"hi".to_vec(), 0o644);
        let a = w.finish();
        assert_eq!(&a[..6], b"070701");
        assert_eq!(a.len() % 512, 0);
        // header 110 bytes + "zos\0" padded to 116
        assert_eq!(&a[110..113], b"zos");
        assert_eq!(&a[116..122], b"070701");
        let text = String::from_utf8_lossy(&a);
        assert!(text.contains("zos/a\0"));
        assert!(text.contains("TRAILER!!!"));
    }
}
