//! The console pump: copies a guest's serial console from the hypervisor's socket into
//! `console.log`, rotating to `console.log.1` when the log reaches its size bound.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{bail, Context, Result};
use tokio::{
    fs::{File, OpenOptions},
    io::{AsyncReadExt, AsyncWriteExt},
    net::UnixStream,
    task::JoinHandle,
};

/// Appends to `path`, keeping at most about `2 * max_bytes` on disk (current + one rotated).
pub struct RotatingLog {
    path: PathBuf,
    max_bytes: u64,
    file: File,
    size: u64,
}

impl RotatingLog {
    pub async fn open(path: &Path, max_bytes: u64) -> Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .await
            .with_context(|| format!("opening {}", path.display()))?;
        let size = file.metadata().await?.len();
        Ok(Self {
            path: path.to_path_buf(),
            max_bytes: max_bytes.max(4096),
            file,
            size,
        })
    }

    pub fn rotated_path(path: &Path) -> PathBuf {
        let mut p = path.as_os_str().to_owned();
        p.push(".1");
        PathBuf::from(p)
    }

    pub async fn write(&mut self, mut data: &[u8]) -> Result<()> {
        while !data.is_empty() {
            if self.size >= self.max_bytes {
                self.rotate().await?;
            }
            let room = (self.max_bytes - self.size) as usize;
            let n = room.min(data.len());
            self.file.write_all(&data[..n]).await?;
            self.size += n as u64;
            data = &data[n..];
        }
        Ok(())
    }

    async fn rotate(&mut self) -> Result<()> {
        self.file.flush().await?;
        tokio::fs::rename(&self.path, Self::rotated_path(&self.path))
            .await
            .with_context(|| format!("rotating {}", self.path.display()))?;
        self.file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .await?;
        self.size = 0;
        Ok(())
    }
}

/// Connects to the console socket (retrying while the hypervisor creates it) and starts
/// copying. The task ends when the hypervisor closes the socket.
pub async fn start_pump(socket: &Path, log: &Path, max_bytes: u64) -> Result<JoinHandle<()>> {
    let stream = connect_retry(socket, Duration::from_secs(10)).await?;
    let mut log = RotatingLog::open(log, max_bytes).await?;
    Ok(tokio::spawn(async move {
        let mut stream = stream;
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => {
                    if let Err(e) = log.write(&buf[..n]).await {
                        tracing::warn!(error = %e, "console log write failed");
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "console socket closed");
                    break;
                }
            }
        }
        let _ = log.file.flush().await;
    }))
}

/// Connects to a unix socket a just-started process is about to create.
pub async fn connect_retry(path: &Path, timeout: Duration) -> Result<UnixStream> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match UnixStream::connect(path).await {
            Ok(s) => return Ok(s),
            Err(e) => {
                if tokio::time::Instant::now() >= deadline {
                    bail!("connecting to {}: {e}", path.display());
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// Reads the rotated and current console logs (oldest first), lossily as text.
pub fn read_console(log: &Path) -> String {
    let mut out = Vec::new();
    if let Ok(b) = std::fs::read(RotatingLog::rotated_path(log)) {
        out.extend(b);
    }
    if let Ok(b) = std::fs::read(log) {
        out.extend(b);
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn rotation_bounds_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        let mut log = RotatingLog::open(&path, 4096).await.unwrap();
        for i in 0..300u32 {
            log.write(
                format!("line {i:05} ..........................................\n").as_bytes(),
            )
            .await
            .unwrap();
        }
        log.file.flush().await.unwrap();
        let cur = std::fs::metadata(&path).unwrap().len();
        let old = std::fs::metadata(RotatingLog::rotated_path(&path))
            .unwrap()
            .len();
        assert!(cur <= 4096 && old == 4096, "cur {cur} old {old}");
        assert!(read_console(&path).contains("line 00299"));
        assert!(!read_console(&path).contains("line 00000"));
    }
}
