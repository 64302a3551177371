//! Sessions with the agent inside a guest (`zos exec`, `zos shell`, `zos ps`, `zos kill`).
//!
//! The hypervisor serves the guest's agent port on a unix socket in the VM's directory; the
//! executor keeps one connection to it per VM (the socket takes one client) and multiplexes
//! the deployers' sessions over it by session id. A deployer's session arrives as a signed
//! HTTP request upgraded to the same frame protocol (`zos_guest_agent`); the node relays only
//! input, terminal size and signals from the deployer, and only the agent's answers back.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU32, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use anyhow::{anyhow, Context, Result};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::{unix::OwnedWriteHalf, UnixStream},
    sync::mpsc,
};
use tracing::{debug, info};
use zos_guest_agent::{Frame, Kind, HEADER_LEN};

/// Frames buffered per session before the agent link waits for the deployer to read.
const SESSION_QUEUE: usize = 64;
/// How long the agent may take to acknowledge a session (it answers at once when it runs).
pub const ACK_TIMEOUT: Duration = Duration::from_secs(10);
/// A write to the agent that takes longer means the guest stopped reading: the link is
/// dropped (the next session connects again).
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Reads one frame from an async stream; `Ok(None)` at a clean end between frames.
pub async fn read_frame(r: &mut (impl AsyncRead + Unpin)) -> std::io::Result<Option<Frame>> {
    let mut header = [0u8; HEADER_LEN];
    let mut got = 0;
    while got < HEADER_LEN {
        match r.read(&mut header[got..]).await? {
            0 if got == 0 => return Ok(None),
            0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            n => got += n,
        }
    }
    let (session, kind, len) = Frame::parse_header(&header)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).await?;
    Ok(Some(Frame {
        session,
        kind,
        payload,
    }))
}

pub async fn write_frame(w: &mut (impl AsyncWrite + Unpin), frame: &Frame) -> std::io::Result<()> {
    w.write_all(&frame.encode()).await?;
    w.flush().await
}

/// The connections to the agents of this node's guests, by agent socket.
#[derive(Default)]
pub struct AgentLinks {
    links: Mutex<HashMap<PathBuf, Arc<Link>>>,
}

/// One connection to one guest's agent.
struct Link {
    socket: PathBuf,
    /// To drop this link from the map when it fails.
    links: std::sync::Weak<AgentLinks>,
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    sessions: Mutex<HashMap<u32, mpsc::Sender<Frame>>>,
    next_id: AtomicU32,
}

/// A session on a link: frames from the agent arrive on `frames`; dropping it ends the
/// session (its process group is killed if it still runs).
pub struct AgentSession {
    id: u32,
    link: Arc<Link>,
    pub frames: mpsc::Receiver<Frame>,
    ended: bool,
}

impl AgentLinks {
    /// The link to the agent behind `socket`, connecting when there is none.
    async fn link(self: &Arc<Self>, socket: &Path) -> Result<Arc<Link>> {
        if let Some(link) = self
            .links
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(socket)
        {
            return Ok(link.clone());
        }
        let stream = UnixStream::connect(socket)
            .await
            .with_context(|| format!("connecting to the guest agent port {}", socket.display()))?;
        let (mut reader, writer) = stream.into_split();
        // Ids start at a random point: frames of an earlier connection's sessions that are
        // still in flight never land in this connection's sessions.
        let mut seed = [0u8; 4];
        getrandom::getrandom(&mut seed).context("random source")?;
        let link = Arc::new(Link {
            socket: socket.to_path_buf(),
            links: Arc::downgrade(self),
            writer: tokio::sync::Mutex::new(writer),
            sessions: Mutex::default(),
            next_id: AtomicU32::new(u32::from_be_bytes(seed) | 1),
        });
        {
            let mut links = self.links.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(existing) = links.get(socket) {
                // Another request connected first: use its link (ours closes when dropped).
                return Ok(existing.clone());
            }
            links.insert(socket.to_path_buf(), link.clone());
        }
        let routed = link.clone();
        tokio::spawn(async move {
            let end = loop {
                match read_frame(&mut reader).await {
                    Ok(Some(frame)) => routed.route(frame),
                    Ok(None) => break "closed".to_string(),
                    Err(e) => break e.to_string(),
                }
            };
            debug!(socket = %routed.socket.display(), %end, "guest agent link ended");
            routed.evict();
        });
        Ok(link)
    }

    /// Starts a session: sends `request` (JSON of a `zos_guest_agent::Request`) to the agent
    /// behind `socket` and waits for its acknowledgement (its first frame), which is returned.
    pub async fn open(
        self: &Arc<Self>,
        socket: &Path,
        request: &[u8],
    ) -> Result<(AgentSession, Frame)> {
        let link = self.link(socket).await?;
        let id = link.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(SESSION_QUEUE);
        link.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, tx);
        let mut session = AgentSession {
            id,
            link,
            frames: rx,
            ended: false,
        };
        session.send(Kind::Open, request.to_vec()).await?;
        let first = tokio::time::timeout(ACK_TIMEOUT, session.frames.recv())
            .await
            .map_err(|_| {
                anyhow!("the guest's agent does not answer (the guest is still booting, or its image runs without the agent)")
            })?
            .ok_or_else(|| anyhow!("the connection to the guest's agent closed"))?;
        if matches!(first.kind, Kind::Exit | Kind::Error) {
            session.ended = true;
        }
        Ok((session, first))
    }
}

impl Link {
    /// Hands a frame to its session. Never waits: a session whose deployer does not keep up
    /// is ended (its process killed) rather than stalling the guest's other sessions.
    fn route(&self, frame: Frame) {
        let id = frame.session;
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let full = match sessions.get(&id) {
            Some(to) => matches!(to.try_send(frame), Err(mpsc::error::TrySendError::Full(_))),
            None => return,
        };
        if full {
            // Dropping its sender ends the session; the relay then kills its process.
            sessions.remove(&id);
            info!(socket = %self.socket.display(), session = id, "agent session ended: its deployer does not read its output");
        }
    }

    /// Drops this link: its sessions see their channel close; the next request connects again.
    fn evict(self: &Arc<Self>) {
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        if let Some(links) = self.links.upgrade() {
            let mut map = links.links.lock().unwrap_or_else(|p| p.into_inner());
            if map.get(&self.socket).is_some_and(|l| Arc::ptr_eq(l, self)) {
                map.remove(&self.socket);
            }
        }
    }

    /// Writes a frame to the agent, bounded in time; a failed link is dropped.
    async fn write(self: &Arc<Self>, frame: &Frame) -> Result<()> {
        let written = tokio::time::timeout(WRITE_TIMEOUT, async {
            let mut writer = self.writer.lock().await;
            write_frame(&mut *writer, frame).await
        })
        .await;
        match written {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                self.evict();
                Err(anyhow!(e).context("writing to the guest agent"))
            }
            Err(_) => {
                self.evict();
                Err(anyhow!(
                    "the guest's agent does not read (for {} s)",
                    WRITE_TIMEOUT.as_secs()
                ))
            }
        }
    }
}

impl AgentSession {
    /// Sends a frame of this session to the agent.
    pub async fn send(&self, kind: Kind, payload: Vec<u8>) -> Result<()> {
        self.link.write(&Frame::new(self.id, kind, payload)).await
    }

    /// Marks the session ended (the agent sent Exit or Error): nothing to kill on drop.
    pub fn ended(&mut self) {
        self.ended = true;
    }
}

impl Drop for AgentSession {
    fn drop(&mut self) {
        self.link
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
        if !self.ended {
            // The deployer went away: its processes go too (as an ssh session's do).
            let link = self.link.clone();
            let id = self.id;
            tokio::spawn(async move {
                let _ = link.write(&Frame::signal(id, libc::SIGKILL)).await;
                info!(socket = %link.socket.display(), session = id, "agent session abandoned by the deployer: its processes killed");
            });
        }
    }
}
