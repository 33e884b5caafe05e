//! What the tests of ractor_replicated share: several ractor_cluster nodes
//! in one test process, on loopback, each with a Replicator that finds its
//! peers through its NodeServer's sessions; free ports; seeded randomness;
//! listeners and supervisors for the actor tests.

use std::collections::BTreeSet;
use std::future::Future;
use std::net::{Ipv4Addr, TcpListener};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, SupervisionEvent};
use ractor_cluster::{NodeServer, NodeServerMessage};
use ractor_replicated::ddata::{CoreConfig, DistributedData, ReplicatorConfig};
use ractor_replicated::discovery::SessionDiscovery;
use ractor_replicated::persistence::{
    Effect, EventHandler, EventMeta, ReplicatedEventSourcedActor, ReplicationContext,
};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

pub const COOKIE: &str = "in-process-test-cookie";

pub struct TestNode {
    pub name: String,
    pub port: u16,
    pub server: ActorRef<NodeServerMessage>,
    pub dd: DistributedData,
}

impl TestNode {
    /// Stops the Replicator and the NodeServer (its sessions close, peers see it go).
    pub async fn shut_down(&self) {
        self.dd.stop().await;
        let _ = self.server.stop_and_wait(None, None).await;
    }
}

/// A loopback port that was free a moment ago, for a node to bind
/// (ractor_cluster reports no bound port).
///
/// It lies below the kernel's range of ephemeral ports, so that no outgoing
/// connection and no port-0 listener (the fault proxies) takes it between
/// now and the node's bind, or while the node is down between a kill and a
/// restart; and this process never hands it out twice.
pub fn free_port() -> u16 {
    static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    let (low, high) = (10_000u16, ephemeral_low.max(11_000));
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|p| p.into_inner());
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos())
        ^ std::process::id();
    let span = u32::from(high - low);
    for attempt in 0..span {
        let port = low + ((seed.wrapping_add(attempt.wrapping_mul(7_919))) % span) as u16;
        if handed_out.contains(&port) {
            continue;
        }
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            handed_out.insert(port);
            return port;
        }
    }
    panic!("no free loopback port between {low} and {high}");
}

/// Node names are process-global in ractor: every cluster gets its own prefix.
fn unique_prefix(label: &str) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!("{label}-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

pub fn test_core_config() -> CoreConfig {
    CoreConfig {
        gossip_interval: Duration::from_millis(100),
        ..CoreConfig::default()
    }
}

/// `size` nodes, fully connected, every Replicator seeing every other.
pub async fn cluster(label: &str, size: usize, core: CoreConfig) -> Vec<TestNode> {
    cluster_with(label, size, core, |_, config| config).await
}

/// Like [`cluster`], with node `i`'s Replicator configured by `configure(i, config)`.
pub async fn cluster_with(
    label: &str,
    size: usize,
    core: CoreConfig,
    configure: impl Fn(usize, ReplicatorConfig) -> ReplicatorConfig,
) -> Vec<TestNode> {
    let prefix = unique_prefix(label);
    let mut nodes = Vec::new();
    for i in 0..size {
        let name = format!("{prefix}-n{i}");
        let port = free_port();
        let server = NodeServer::new(
            port,
            COOKIE.into(),
            name.clone(),
            "127.0.0.1".into(),
            None,
            None,
        )
        .with_listen_addr(Ipv4Addr::LOCALHOST.into());
        let (server, _) = Actor::spawn(None, server, ())
            .await
            .expect("node server starts");
        let config = configure(i, replicator_config(&name, &server, core.clone()));
        let dd = DistributedData::start(config)
            .await
            .expect("replicator starts");
        nodes.push(TestNode {
            name,
            port,
            server,
            dd,
        });
    }
    for i in 0..size {
        for j in i + 1..size {
            let address = (Ipv4Addr::LOCALHOST, nodes[j].port);
            eventually("a connection", Duration::from_secs(10), || async {
                ractor_cluster::client_connect(&nodes[i].server, address)
                    .await
                    .is_ok()
            })
            .await;
        }
    }
    for node in &nodes {
        eventually("every peer discovered", Duration::from_secs(10), || async {
            node.dd
                .reachable_peers()
                .await
                .is_ok_and(|p| p.len() == size - 1)
        })
        .await;
    }
    nodes
}

/// The Replicator configuration of a test node.
pub fn replicator_config(
    name: &str,
    server: &ActorRef<NodeServerMessage>,
    core: CoreConfig,
) -> ReplicatorConfig {
    ReplicatorConfig::new(name)
        .with_discovery(SessionDiscovery::new(server.clone()))
        .with_core(core)
}

pub use tempfile::TempDir;

/// A fresh directory under the system's temporary directory, removed when
/// dropped, named after `label`.
pub fn temp_dir(label: &str) -> TempDir {
    tempfile::Builder::new()
        .prefix(&format!("ractor_replicated-{label}-"))
        .tempdir()
        .expect("a temporary directory")
}

/// Polls `check` until it holds; panics after `bound`.
pub async fn eventually<F, Fut>(what: &str, bound: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + bound;
    let mut poll = tokio::time::interval(Duration::from_millis(10));
    loop {
        poll.tick().await;
        if check().await {
            return;
        }
        give_up_after(deadline, bound, what);
    }
}

/// [`eventually`] for a check that blocks (one that asks real processes),
/// outside an async runtime.
pub fn eventually_blocking(what: &str, bound: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + bound;
    while !check() {
        give_up_after(deadline, bound, what);
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Panics once `deadline` has passed, saying that `what` was not reached
/// within `bound`.
fn give_up_after(deadline: Instant, bound: Duration, what: &str) {
    assert!(
        Instant::now() < deadline,
        "not reached within {bound:?}: {what}"
    );
}

/// An actor that forwards every message it receives into a channel.
pub struct Forwarder<M>(std::marker::PhantomData<fn() -> M>);

impl<M: ractor::Message> Actor for Forwarder<M> {
    type Msg = M;
    type State = mpsc::UnboundedSender<M>;
    type Arguments = mpsc::UnboundedSender<M>;

    async fn pre_start(
        &self,
        _myself: ActorRef<M>,
        sender: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(sender)
    }

    async fn handle(
        &self,
        _myself: ActorRef<M>,
        message: M,
        sender: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let _ = sender.send(message);
        Ok(())
    }
}

/// A listener actor and the channel its messages arrive on.
pub async fn listener<M: ractor::Message>() -> (ActorRef<M>, mpsc::UnboundedReceiver<M>) {
    let (sender, receiver) = mpsc::unbounded_channel();
    let (actor, _) = Actor::spawn(None, Forwarder::<M>(std::marker::PhantomData), sender)
        .await
        .expect("listener starts");
    (actor, receiver)
}

/// The next message on `receiver` that `accept` takes, within `bound`.
pub async fn next_matching<M>(
    receiver: &mut mpsc::UnboundedReceiver<M>,
    bound: Duration,
    mut accept: impl FnMut(&M) -> bool,
) -> M {
    tokio::time::timeout(bound, async {
        loop {
            let message = receiver.recv().await.expect("listener channel open");
            if accept(&message) {
                return message;
            }
        }
    })
    .await
    .expect("the expected notification arrived in time")
}

/// SplitMix64: the seeded randomness of the deterministic simulations, so a
/// seed replays a run exactly.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..bound` (0 if `bound` is 0).
    pub fn below(&mut self, bound: u64) -> u64 {
        self.next_u64() % bound.max(1)
    }

    /// An index into a collection of `len` items.
    pub fn index(&mut self, len: usize) -> usize {
        self.below(len as u64) as usize
    }

    /// A number in `low..=high`.
    pub fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.below(high - low + 1)
    }

    /// True with `probability`.
    pub fn chance(&mut self, probability: f64) -> bool {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= probability
    }

    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            items.swap(i, self.index(i + 1));
        }
    }
}

/// Bytes sent to a remote actor as a message of any variant: garbage on the
/// wire, to check that receivers reject it without harm.
pub struct RawBytes {
    pub variant: &'static str,
    pub bytes: Vec<u8>,
}

impl ractor::Message for RawBytes {
    fn serializable() -> bool {
        true
    }
    fn serialize(
        self,
    ) -> Result<ractor::message::SerializedMessage, ractor::message::BoxedDowncastErr> {
        Ok(ractor::message::SerializedMessage::Cast {
            variant: self.variant.to_string(),
            args: self.bytes,
            metadata: None,
        })
    }
}

/// Spawns a supervisor's child, linked to the supervisor given; called again
/// for every restart.
pub type SpawnChild = Arc<
    dyn Fn(ActorCell) -> Pin<Box<dyn Future<Output = Result<(), ActorProcessingErr>> + Send>>
        + Send
        + Sync,
>;

/// A user's supervisor: it spawns its child and spawns it again whenever it
/// stops, counting the restarts.
pub struct Restarter;

impl Actor for Restarter {
    type Msg = ();
    type State = (SpawnChild, Arc<AtomicUsize>);
    type Arguments = (SpawnChild, Arc<AtomicUsize>);

    async fn pre_start(
        &self,
        myself: ActorRef<()>,
        arguments: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        (arguments.0)(myself.get_cell()).await?;
        Ok(arguments)
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<()>,
        event: SupervisionEvent,
        (spawn, restarts): &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let stopped = matches!(
            event,
            SupervisionEvent::ActorTerminated(..) | SupervisionEvent::ActorFailed(..)
        );
        // The event may carry the stopped child's state, which holds its
        // store or journal open.
        drop(event);
        if stopped {
            restarts.fetch_add(1, Ordering::SeqCst);
            // As a supervisor should: the stopped child's name or store may
            // be held a moment longer on a busy machine.
            let mut attempt = 0;
            while let Err(err) = spawn(myself.get_cell()).await {
                attempt += 1;
                eprintln!("restart attempt {attempt} failed: {err}");
                if attempt == 10 {
                    return Err(err);
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        Ok(())
    }
}

/// An entity that records entries in the order it applies them: an
/// order-sensitive state, so replicas agree only if they apply the same
/// events in the same order. A command records one entry and answers how
/// many there are.
pub struct Ledger;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Recorded(pub String);

impl EventHandler for Ledger {
    type Event = Recorded;
    type State = Vec<String>;

    fn apply(&self, state: &mut Vec<String>, event: &Recorded, _: EventMeta<'_>) {
        state.push(event.0.clone());
    }
}

impl ReplicatedEventSourcedActor for Ledger {
    type Command = String;
    type Reply = usize;

    fn handle_command(
        &self,
        state: &Vec<String>,
        entry: String,
        _: ReplicationContext<'_>,
    ) -> Effect<Recorded, usize> {
        Effect::persist([Recorded(entry)]).then_reply(state.len() + 1)
    }
}
