//! The cluster's sockets: [`ClusterNode`](super::ClusterNode) accepts and
//! dials TCP connections itself and hands them to ractor_cluster as external
//! streams, so that it can
//! * ask a seed which node it is before dialling it (a [`NAME_PROBE`]
//!   answered by the accepting ClusterNode), and label every connection, so
//!   that a seed's node is known by name whatever address it advertises and
//!   a connected node is never dialled again;
//! * bound what a peer that has not authenticated yet can cost: a cap on such
//!   connections, a deadline to authenticate, and no frame larger than
//!   [`PRE_AUTH_FRAME_LIMIT`] read before authentication (the rest of a larger
//!   one waits in the kernel's socket buffer, not in this process);
//! * with [`TlsConfig`], secure every connection (name probes included) with
//!   rustls before anything else is read.

use crate::error::Chain;
use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use std::future::Future;

use ractor::ActorRef;
use ractor_cluster::node::NodeServerSessionInformation;
use ractor_cluster::{
    BoxRead, BoxWrite, ClusterBidiStream, NodeEventSubscription, NodeServerMessage,
    NodeSessionMessage,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::{ClientConfig, ServerConfig};
use tokio_rustls::{TlsAcceptor, TlsConnector, TlsStream};

/// The largest frame read from a peer before it has authenticated. The
/// handshake's frames are a few hundred bytes.
pub const PRE_AUTH_FRAME_LIMIT: u64 = 64 << 10;

/// How long a dial may take to connect.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How often a reader holding back a large frame looks again whether its
/// peer has authenticated.
const RECHECK: Duration = Duration::from_millis(10);

/// Counters of the node's connections, for monitoring and tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectionStats {
    /// Dials of seeds that reached their TCP port.
    pub dials: u64,
    /// Inbound connections accepted.
    pub accepted: u64,
    /// Inbound connections refused because too many had not authenticated.
    pub refused: u64,
    /// Connections closed for not authenticating in time.
    pub timed_out: u64,
    /// Sessions that authenticated (and won ractor_cluster's election
    /// between duplicate connections).
    pub authenticated: u64,
    /// TLS handshakes that failed, inbound or outbound: a peer without a
    /// certificate this node trusts, or one that does not trust this node's.
    pub tls_failed: u64,
}

/// TLS for every connection of a [`ClusterNode`](super::ClusterNode), with
/// rustls (the version ractor_cluster uses, re-exported as
/// [`rustls`](super::rustls)).
///
/// `server` secures inbound connections; make it require client
/// certificates (a `WebPkiClientVerifier` over the cluster's CA) so that
/// only nodes with a certificate of that CA get in. `client` secures
/// outbound connections and checks the peer's certificate for
/// `server_name`: every node's certificate must be valid for that one name
/// (say `cluster.internal`), whatever address it is dialled at. A failed
/// handshake closes the connection before a byte of ractor_cluster is read,
/// and is counted in [`ConnectionStats::tls_failed`].
#[derive(Clone)]
pub struct TlsConfig {
    acceptor: TlsAcceptor,
    connector: TlsConnector,
    server_name: ServerName<'static>,
}

impl TlsConfig {
    /// TLS with `server` inbound and `client` outbound, checking peers'
    /// certificates for `server_name`; an error if that is not a valid DNS
    /// name or IP address.
    pub fn new(
        server: Arc<ServerConfig>,
        client: Arc<ClientConfig>,
        server_name: &str,
    ) -> crate::Result<Self> {
        let server_name = ServerName::try_from(server_name.to_string())
            .map_err(|err| crate::Error::start("TLS: the server name", err))?;
        Ok(Self {
            acceptor: TlsAcceptor::from(server),
            connector: TlsConnector::from(client),
            server_name,
        })
    }
}

impl std::fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConfig")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

/// A connection's bytes: plain TCP, or TLS over TCP.
enum Link {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Link {
    /// Secures an accepted connection, if the node uses TLS.
    async fn accepted(stream: TcpStream, tls: Option<&TlsConfig>) -> io::Result<Self> {
        match tls {
            None => Ok(Self::Plain(stream)),
            Some(tls) => Ok(Self::Tls(Box::new(
                tls.acceptor.accept(stream).await?.into(),
            ))),
        }
    }

    /// Secures a dialled connection, if the node uses TLS.
    async fn dialled(stream: TcpStream, tls: Option<&TlsConfig>) -> io::Result<Self> {
        match tls {
            None => Ok(Self::Plain(stream)),
            Some(tls) => Ok(Self::Tls(Box::new(
                tls.connector
                    .connect(tls.server_name.clone(), stream)
                    .await?
                    .into(),
            ))),
        }
    }
}

impl AsyncRead for Link {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(stream) => Pin::new(stream).poll_read(cx, buf),
            Self::Tls(stream) => Pin::new(stream.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Link {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(stream) => Pin::new(stream).poll_write(cx, buf),
            Self::Tls(stream) => Pin::new(stream.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(stream) => Pin::new(stream).poll_flush(cx),
            Self::Tls(stream) => Pin::new(stream.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(stream) => Pin::new(stream).poll_shutdown(cx),
            Self::Tls(stream) => Pin::new(stream.as_mut()).poll_shutdown(cx),
        }
    }
}

#[derive(Default)]
struct Counters {
    dials: AtomicU64,
    accepted: AtomicU64,
    refused: AtomicU64,
    timed_out: AtomicU64,
    authenticated: AtomicU64,
    tls_failed: AtomicU64,
}

/// A connection not authenticated yet.
struct Pending {
    inbound: bool,
    opened: Instant,
    flags: Arc<Flags>,
    session: Option<ActorRef<NodeSessionMessage>>,
}

/// What ractor_cluster's events tell a connection's reader.
#[derive(Default)]
struct Flags {
    /// The session authenticated: its reader stops holding frames back.
    authenticated: AtomicBool,
}

/// The connections this node opened or accepted that have not authenticated
/// yet, by label; shared by the accept loop, the dials, ractor_cluster's
/// session events and the membership actor.
#[derive(Default)]
pub(crate) struct Connections {
    pending: Mutex<HashMap<String, Pending>>,
    next: AtomicU64,
    counters: Counters,
}

impl Connections {
    /// Registers a new connection to or from `peer` and returns its label and
    /// the flags its reader shares.
    fn open(&self, inbound: bool, peer: &str) -> (String, Arc<Flags>) {
        let number = self.next.fetch_add(1, Ordering::Relaxed);
        let label = format!(
            "{} #{number} {peer}",
            if inbound { INBOUND_PREFIX } else { DIAL_PREFIX }
        );
        let flags = Arc::new(Flags::default());
        self.lock().insert(
            label.clone(),
            Pending {
                inbound,
                opened: Instant::now(),
                flags: flags.clone(),
                session: None,
            },
        );
        (label, flags)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Pending>> {
        // A panic while holding this lock leaves a map that is still valid.
        self.pending
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn unauthenticated_inbound(&self) -> usize {
        self.lock().values().filter(|p| p.inbound).count()
    }

    fn session_opened(&self, label: &str, session: ActorRef<NodeSessionMessage>) {
        match self.lock().get_mut(label) {
            Some(pending) => pending.session = Some(session),
            // One of this node's connections that was given up on (it did
            // not authenticate in time) before its session started.
            None if is_ours(label) => session.stop(Some("not authenticated in time".into())),
            None => {}
        }
    }

    fn session_authenticated(&self, label: &str) {
        self.counters.authenticated.fetch_add(1, Ordering::Relaxed);
        if let Some(pending) = self.lock().remove(label) {
            pending.flags.authenticated.store(true, Ordering::Release);
        }
    }

    fn session_closed(&self, label: &str) {
        self.lock().remove(label);
    }

    /// Closes the connections that did not authenticate within `timeout`.
    pub(crate) fn close_unauthenticated(&self, timeout: Duration) {
        let now = Instant::now();
        let expired: Vec<(String, Pending)> = {
            let mut pending = self.lock();
            let labels: Vec<String> = pending
                .iter()
                .filter(|(_, p)| now.duration_since(p.opened) > timeout)
                .map(|(label, _)| label.clone())
                .collect();
            labels
                .into_iter()
                .filter_map(|label| pending.remove(&label).map(|p| (label, p)))
                .collect()
        };
        for (label, pending) in &expired {
            tracing::warn!(
                connection = label,
                "peer did not authenticate in time; closing"
            );
            if let Some(session) = &pending.session {
                session.stop(Some("not authenticated in time".into()));
            }
        }
        self.counters
            .timed_out
            .fetch_add(expired.len() as u64, Ordering::Relaxed);
    }

    pub(crate) fn stats(&self) -> ConnectionStats {
        let c = &self.counters;
        ConnectionStats {
            dials: c.dials.load(Ordering::Relaxed),
            accepted: c.accepted.load(Ordering::Relaxed),
            refused: c.refused.load(Ordering::Relaxed),
            timed_out: c.timed_out.load(Ordering::Relaxed),
            authenticated: c.authenticated.load(Ordering::Relaxed),
            tls_failed: c.tls_failed.load(Ordering::Relaxed),
        }
    }
}

const DIAL_PREFIX: &str = "dial";
const INBOUND_PREFIX: &str = "inbound";

/// Whether `label` names a connection this node accepted or dialled (the
/// NodeServer's own listener labels its sessions with a bare address).
fn is_ours(label: &str) -> bool {
    label.starts_with(&format!("{DIAL_PREFIX} #"))
        || label.starts_with(&format!("{INBOUND_PREFIX} #"))
}

/// The seed a connection label was dialled for, if it was dialled.
pub(crate) fn dialled_seed(label: &str) -> Option<&str> {
    let rest = label.strip_prefix(DIAL_PREFIX)?.strip_prefix(" #")?;
    Some(rest.split_once(' ')?.1)
}

/// The first bytes of a connection that asks which node listens here. As a
/// ractor_cluster frame header it would announce an impossible length, so no
/// ractor_cluster peer ever sends it; a plain NodeServer that gets it closes
/// the connection.
pub const NAME_PROBE: &[u8; 8] = b"\xffrr-name";

/// The longest answer to a [`NAME_PROBE`]: a node name and a newline.
const MAX_NAME_ANSWER: usize = 256;

/// How long a probe waits for its answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Secures `stream` with `secure`, counting a failed TLS handshake.
async fn secure<F: Future<Output = io::Result<Link>>>(
    secure: F,
    connections: &Connections,
    peer: &str,
) -> io::Result<Link> {
    secure.await.inspect_err(|err| {
        connections
            .counters
            .tls_failed
            .fetch_add(1, Ordering::Relaxed);
        tracing::warn!(peer, error = %Chain(&err), "closed a connection: the TLS handshake failed");
    })
}

/// Accepts connections on `listener` for `server` until the task is
/// aborted; answers name probes with `name`.
pub(crate) async fn accept(
    listener: TcpListener,
    server: ActorRef<NodeServerMessage>,
    connections: Arc<Connections>,
    name: String,
    tls: Option<TlsConfig>,
    max_unauthenticated: usize,
    auth_timeout: Duration,
) {
    loop {
        let (stream, address) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                // Out of file descriptors and the like: pause, then go on.
                tracing::warn!(error = %Chain(&err), "cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if connections.unauthenticated_inbound() >= max_unauthenticated {
            connections.counters.refused.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                peer = %address,
                "refused a connection: too many have not authenticated yet"
            );
            continue;
        }
        let _ = stream.set_nodelay(true);
        let (label, flags) = connections.open(true, &address.to_string());
        connections
            .counters
            .accepted
            .fetch_add(1, Ordering::Relaxed);
        let (server, connections, name) = (server.clone(), connections.clone(), name.clone());
        let tls = tls.clone();
        tokio::spawn(async move {
            let peer = address.to_string();
            let opening = async {
                let link = Link::accepted(stream, tls.as_ref());
                read_prefix(secure(link, &connections, &peer).await?).await
            };
            let first = tokio::time::timeout(auth_timeout, opening).await;
            let (stream, prefix) = match first {
                Ok(Ok((mut stream, prefix))) if prefix == NAME_PROBE => {
                    let answer = format!("{name}\n");
                    let _ =
                        tokio::io::AsyncWriteExt::write_all(&mut stream, answer.as_bytes()).await;
                    connections.session_closed(&label);
                    return;
                }
                Ok(Ok(read)) => read,
                Ok(Err(_)) | Err(_) => {
                    connections.session_closed(&label);
                    return;
                }
            };
            let stream = Box::new(GuardedStream {
                stream,
                prefix,
                label: label.clone(),
                flags,
            });
            let opened = NodeServerMessage::ConnectionOpenedExternal {
                stream,
                is_server: true,
            };
            if server.cast(opened).is_err() {
                connections.session_closed(&label);
            }
        });
    }
}

/// The first 8 bytes of `stream` (fewer if it closes first).
async fn read_prefix(mut stream: Link) -> io::Result<(Link, Vec<u8>)> {
    use tokio::io::AsyncReadExt;
    let mut prefix = vec![0u8; NAME_PROBE.len()];
    let mut filled = 0;
    while filled < prefix.len() {
        let read = stream.read(&mut prefix[filled..]).await?;
        if read == 0 {
            break;
        }
        filled += read;
    }
    prefix.truncate(filled);
    Ok((stream, prefix))
}

/// Asks `seed` which node listens there; `Ok(None)` if it answers but is
/// not a ClusterNode (a plain NodeServer closes the connection).
pub(crate) async fn probe(
    seed: &str,
    tls: Option<&TlsConfig>,
    connections: &Connections,
) -> io::Result<Option<String>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ask = async {
        let stream = TcpStream::connect(seed).await?;
        let mut stream = secure(Link::dialled(stream, tls), connections, seed).await?;
        stream.write_all(NAME_PROBE).await?;
        let mut answer = Vec::new();
        let mut chunk = [0u8; MAX_NAME_ANSWER];
        loop {
            let read = stream.read(&mut chunk).await?;
            if read == 0 || answer.len() + read > MAX_NAME_ANSWER {
                return Ok(None);
            }
            answer.extend_from_slice(&chunk[..read]);
            if answer.ends_with(b"\n") {
                answer.pop();
                return Ok(String::from_utf8(answer).ok().filter(|n| !n.is_empty()));
            }
        }
    };
    tokio::time::timeout(CONNECT_TIMEOUT + PROBE_TIMEOUT, ask)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no answer to the name probe"))?
}

/// Dials `seed` for `server`; the label of the new connection once its TCP
/// connection is up.
pub(crate) async fn dial(
    server: &ActorRef<NodeServerMessage>,
    seed: &str,
    connections: &Connections,
    tls: Option<&TlsConfig>,
) -> io::Result<String> {
    let connect = async {
        let stream = TcpStream::connect(seed).await?;
        let _ = stream.set_nodelay(true);
        secure(Link::dialled(stream, tls), connections, seed).await
    };
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, connect)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
    let (label, flags) = connections.open(false, seed);
    connections.counters.dials.fetch_add(1, Ordering::Relaxed);
    let stream = Box::new(GuardedStream {
        stream,
        prefix: Vec::new(),
        label: label.clone(),
        flags,
    });
    if let Err(err) = ractor_cluster::client_connect_external(server, stream).await {
        connections.session_closed(&label);
        return Err(io::Error::other(err.to_string()));
    }
    Ok(label)
}

/// A session event, as the membership actor hears of it.
pub(crate) enum SessionEvent {
    /// The session on connection `label` authenticated with node `node`.
    Authenticated { label: String, node: String },
    /// The session on connection `label` with node `node` has synchronised
    /// its process groups: the peer's actors are visible.
    Ready { label: String, node: String },
    /// The session on connection `label` closed; `node` if the peer named
    /// itself before.
    Closed { label: String, node: Option<String> },
}

/// Keeps [`Connections`] in step with ractor_cluster's sessions and forwards
/// the events to the membership actor. Runs inside the NodeServer: it only
/// updates a map and forwards.
pub(crate) struct SessionEvents<F: Fn(SessionEvent) + Send + 'static> {
    pub(crate) connections: Arc<Connections>,
    pub(crate) forward: F,
}

/// The node name of a session's peer (`name@host` on the wire).
pub(crate) fn peer_node(session: &NodeServerSessionInformation) -> Option<String> {
    let name = &session.peer_name.as_ref()?.name;
    Some(name.split('@').next().unwrap_or(name).to_string())
}

impl<F: Fn(SessionEvent) + Send + 'static> NodeEventSubscription for SessionEvents<F> {
    fn node_session_opened(&self, session: NodeServerSessionInformation) {
        self.connections
            .session_opened(&session.peer_addr, session.actor);
    }

    fn node_session_disconnected(&self, session: NodeServerSessionInformation) {
        self.connections.session_closed(&session.peer_addr);
        (self.forward)(SessionEvent::Closed {
            node: peer_node(&session),
            label: session.peer_addr,
        });
    }

    fn node_session_authenticated(&self, session: NodeServerSessionInformation) {
        self.connections.session_authenticated(&session.peer_addr);
        if let Some(node) = peer_node(&session) {
            (self.forward)(SessionEvent::Authenticated {
                label: session.peer_addr,
                node,
            });
        }
    }

    fn node_session_ready(&self, session: NodeServerSessionInformation) {
        if let Some(node) = peer_node(&session) {
            (self.forward)(SessionEvent::Ready {
                label: session.peer_addr,
                node,
            });
        }
    }
}

/// A connection whose reader holds back frames above
/// [`PRE_AUTH_FRAME_LIMIT`] until its session has authenticated.
struct GuardedStream {
    stream: Link,
    /// Bytes already read from `stream` (while looking for a name probe).
    prefix: Vec<u8>,
    label: String,
    flags: Arc<Flags>,
}

impl ClusterBidiStream for GuardedStream {
    fn split(self: Box<Self>) -> (BoxRead, BoxWrite) {
        // Plain TCP splits into halves that need no lock between them.
        let (read, write): (BoxRead, BoxWrite) = match self.stream {
            Link::Plain(stream) => {
                let (read, write) = stream.into_split();
                (Box::new(read), Box::new(write))
            }
            Link::Tls(stream) => {
                let (read, write) = tokio::io::split(*stream);
                (Box::new(read), Box::new(write))
            }
        };
        let reader = FrameGuard {
            inner: Prefixed {
                prefix: self.prefix,
                at: 0,
                inner: read,
            },
            flags: self.flags,
            header: [0; 8],
            header_filled: 0,
            payload_left: 0,
            held_back: false,
            recheck: None,
        };
        (Box::new(reader), Box::new(write))
    }

    fn peer_label(&self) -> Option<String> {
        Some(self.label.clone())
    }
}

/// `prefix`, then `inner`.
struct Prefixed<R> {
    prefix: Vec<u8>,
    at: usize,
    inner: R,
}

impl<R: AsyncRead + Unpin> AsyncRead for Prefixed<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.at < this.prefix.len() {
            let n = (this.prefix.len() - this.at).min(buf.remaining());
            buf.put_slice(&this.prefix[this.at..this.at + n]);
            this.at += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

/// Follows ractor_cluster's framing (a big-endian u64 length, then the
/// payload) until the session authenticates, then gets out of the way (the
/// NodeSession enforces its own frame limit from then on).
struct FrameGuard<R> {
    inner: R,
    flags: Arc<Flags>,
    header: [u8; 8],
    header_filled: usize,
    payload_left: u64,
    /// The current frame is above the limit: read none of it before the
    /// session authenticates.
    held_back: bool,
    recheck: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<R: AsyncRead + Unpin> AsyncRead for FrameGuard<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.flags.authenticated.load(Ordering::Acquire) {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        if this.held_back {
            let recheck = this
                .recheck
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(RECHECK)));
            if recheck.as_mut().poll(cx).is_ready() {
                this.recheck = None;
                // Woken to look again at the flag.
                cx.waker().wake_by_ref();
            }
            return Poll::Pending;
        }
        // Read at most up to the end of the current header or payload, so
        // that every header is seen; through a small buffer, since nothing
        // before authentication is large.
        let want = if this.payload_left > 0 {
            this.payload_left.min(8 << 10) as usize
        } else {
            8 - this.header_filled
        };
        let mut chunk = [0u8; 8 << 10];
        let want = want.min(buf.remaining());
        let mut limited = ReadBuf::new(&mut chunk[..want]);
        match Pin::new(&mut this.inner).poll_read(cx, &mut limited) {
            Poll::Ready(Ok(())) => {}
            other => return other,
        }
        let read = limited.filled();
        buf.put_slice(read);
        if this.payload_left > 0 {
            this.payload_left -= read.len() as u64;
        } else {
            this.header[this.header_filled..this.header_filled + read.len()].copy_from_slice(read);
            this.header_filled += read.len();
            if this.header_filled == 8 {
                this.header_filled = 0;
                this.payload_left = u64::from_be_bytes(this.header);
                this.held_back = this.payload_left > PRE_AUTH_FRAME_LIMIT;
            }
        }
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn frame(len: usize) -> Vec<u8> {
        let mut bytes = (len as u64).to_be_bytes().to_vec();
        bytes.extend(std::iter::repeat_n(7u8, len));
        bytes
    }

    fn guard(
        reader: tokio::io::DuplexStream,
        flags: &Arc<Flags>,
    ) -> FrameGuard<tokio::io::DuplexStream> {
        FrameGuard {
            inner: reader,
            flags: flags.clone(),
            header: [0; 8],
            header_filled: 0,
            payload_left: 0,
            held_back: false,
            recheck: None,
        }
    }

    #[tokio::test]
    async fn small_frames_pass_unchanged_before_authentication() {
        let (mut writer, reader) = tokio::io::duplex(1 << 20);
        let flags = Arc::new(Flags::default());
        let mut guarded = guard(reader, &flags);
        let sent: Vec<u8> = [frame(10), frame(0), frame(5_000)].concat();
        writer.write_all(&sent).await.unwrap();
        drop(writer);
        let mut received = Vec::new();
        guarded.read_to_end(&mut received).await.unwrap();
        assert_eq!(received, sent);
    }

    #[tokio::test]
    async fn a_large_frame_waits_for_authentication() {
        let (mut writer, reader) = tokio::io::duplex(1 << 20);
        let flags = Arc::new(Flags::default());
        let mut guarded = guard(reader, &flags);
        let big = frame(PRE_AUTH_FRAME_LIMIT as usize + 1);
        writer.write_all(&big).await.unwrap();
        let mut header = [0u8; 8];
        guarded.read_exact(&mut header).await.unwrap();
        let mut payload = vec![0u8; big.len() - 8];
        let early =
            tokio::time::timeout(Duration::from_millis(100), guarded.read_exact(&mut payload))
                .await;
        assert!(
            early.is_err(),
            "nothing of the payload is read before authentication"
        );
        flags.authenticated.store(true, Ordering::Release);
        guarded.read_exact(&mut payload).await.unwrap();
        assert_eq!(payload, big[8..]);
    }

    #[test]
    fn a_dialled_label_names_its_seed() {
        let connections = Connections::default();
        let (label, _) = connections.open(false, "10.0.0.2:4000");
        assert_eq!(dialled_seed(&label), Some("10.0.0.2:4000"));
        let (inbound, _) = connections.open(true, "10.0.0.3:5555");
        assert_eq!(dialled_seed(&inbound), None);
        assert_eq!(connections.unauthenticated_inbound(), 1);
        connections.session_authenticated(&inbound);
        assert_eq!(connections.unauthenticated_inbound(), 0);
    }
}
