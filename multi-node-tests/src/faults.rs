//! Link faults between node processes: one loopback TCP proxy per directed
//! link (the connections node `a` dials to node `b`), each open, cut or
//! blackholed.
//!
//! * **Open** forwards bytes both ways.
//! * **Cut** closes every connection through the proxy at once, as a TCP reset
//!   would, and closes new ones as soon as they are accepted: both sides see
//!   the disconnect.
//! * **Blackhole** keeps connections open but forwards nothing: bytes wait in
//!   the kernel's socket buffers (the sender's writes eventually block), as
//!   when packets are dropped and TCP keeps retransmitting. Healing delivers
//!   them in order, unless a heartbeat timeout closed the session first.
//!
//! A node reaches its peers only through the proxies, so every seed is an
//! alias of the address the peer advertises. The proxies run on a runtime of
//! their own, and stop with the [`Network`].

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// The state of one directed link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Link {
    /// Bytes flow.
    Open,
    /// Connections are closed at once.
    Cut,
    /// Connections stay open, bytes wait.
    Blackhole,
}

struct Proxy {
    address: SocketAddr,
    state: Arc<watch::Sender<Link>>,
}

/// The proxies between `n` nodes.
pub struct Network {
    /// Runs the proxies; dropping it stops them.
    _runtime: tokio::runtime::Runtime,
    proxies: BTreeMap<(usize, usize), Proxy>,
}

impl Network {
    /// A proxy for every ordered pair of the nodes listening on `ports`, all
    /// links open.
    pub fn new(ports: &[u16]) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("the proxy runtime starts");
        let mut proxies = BTreeMap::new();
        for (from, _) in ports.iter().enumerate() {
            for (to, &port) in ports.iter().enumerate() {
                if from == to {
                    continue;
                }
                let target = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
                let proxy = runtime.block_on(start_proxy(target));
                proxies.insert((from, to), proxy);
            }
        }
        Self {
            _runtime: runtime,
            proxies,
        }
    }

    /// The addresses node `from` dials to reach every other node.
    pub fn seeds_of(&self, from: usize) -> Vec<String> {
        self.proxies
            .iter()
            .filter(|((a, _), _)| *a == from)
            .map(|(_, proxy)| proxy.address.to_string())
            .collect()
    }

    /// Sets the link between `a` and `b`, both directions.
    pub fn set(&self, a: usize, b: usize, link: Link) {
        for pair in [(a, b), (b, a)] {
            if let Some(proxy) = self.proxies.get(&pair) {
                proxy.state.send_replace(link);
            }
        }
    }

    /// Every link between a node of `side` and a node outside it becomes
    /// `link`; links inside each side stay as they are.
    pub fn partition(&self, side: &[usize], link: Link) {
        for &(a, b) in self.proxies.keys() {
            if side.contains(&a) != side.contains(&b) {
                self.set(a, b, link);
            }
        }
    }

    /// Opens every link.
    pub fn heal(&self) {
        for proxy in self.proxies.values() {
            proxy.state.send_replace(Link::Open);
        }
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        // Closing every connection makes the pumps end before the runtime
        // is torn down.
        for proxy in self.proxies.values() {
            proxy.state.send_replace(Link::Cut);
        }
    }
}

async fn start_proxy(target: SocketAddr) -> Proxy {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .expect("bind a proxy port");
    let address = listener.local_addr().expect("the proxy's address");
    let (state, _) = watch::channel(Link::Open);
    let state = Arc::new(state);
    tokio::spawn(accept(listener, target, state.clone()));
    Proxy { address, state }
}

async fn accept(listener: TcpListener, target: SocketAddr, state: Arc<watch::Sender<Link>>) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            // Out of file descriptors and the like: the link stays, try again.
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            continue;
        };
        if *state.borrow() == Link::Cut {
            continue;
        }
        let state = state.clone();
        tokio::spawn(async move {
            let Ok(server) = TcpStream::connect(target).await else {
                return;
            };
            let _ = (client.set_nodelay(true), server.set_nodelay(true));
            let (client_read, client_write) = client.into_split();
            let (server_read, server_write) = server.into_split();
            tokio::join!(
                pump(client_read, server_write, state.subscribe()),
                pump(server_read, client_write, state.subscribe()),
            );
        });
    }
}

/// Copies `from` to `to` while the link is open; waits while it is
/// blackholed; ends (closing `to`) when it is cut or either side closes.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut link: watch::Receiver<Link>,
) {
    let mut buffer = vec![0u8; 64 << 10];
    loop {
        if !wait_open(&mut link).await {
            break;
        }
        let read = tokio::select! {
            read = from.read(&mut buffer) => read,
            _ = link.changed() => continue,
        };
        let n = match read {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        // Bytes already read wait here if the link turns black meanwhile,
        // and a cut ends a write that the other side does not take.
        if !wait_open(&mut link).await {
            break;
        }
        let written = tokio::select! {
            written = to.write_all(&buffer[..n]) => written.is_ok(),
            _ = wait_cut(&mut link) => false,
        };
        if !written {
            break;
        }
    }
    let _ = to.shutdown().await;
}

/// Returns once the link is cut.
async fn wait_cut(link: &mut watch::Receiver<Link>) {
    while *link.borrow_and_update() != Link::Cut {
        if link.changed().await.is_err() {
            return;
        }
    }
}

/// Waits until the link is open; false if it is cut.
async fn wait_open(link: &mut watch::Receiver<Link>) -> bool {
    loop {
        match *link.borrow_and_update() {
            Link::Open => return true,
            Link::Cut => return false,
            Link::Blackhole => {}
        }
        if link.changed().await.is_err() {
            return false;
        }
    }
}
