//! A small membership helper that makes a cluster of real processes just work.
//!
//! ractor_cluster connects nodes, but it neither reconnects nor notices a
//! silent peer. [`ClusterNode`] starts a NodeServer and a membership actor that
//! * accepts connections on the node's port and dials the configured seed
//!   nodes itself (module `transport`), with a cap on connections that have
//!   not authenticated yet, a deadline to authenticate and no large frame
//!   read before authentication;
//! * asks each seed which node it is before dialling it (a name probe that
//!   the other ClusterNode answers), or learns it from the seed's first
//!   session, and decides whether a seed is connected by that name, never by
//!   the address the node advertises (seeds behind NAT, DNS aliases or
//!   proxies never match it); it dials, with exponential backoff, only seeds
//!   whose node has no session, so it never dials a connected node (two
//!   nodes dialling each other at the same moment still get two sessions,
//!   and ractor_cluster keeps one);
//! * sends a heartbeat to every peer's membership actor and stops a session
//!   whose peer stayed silent past the timeout, so that it is redialled (a
//!   blackholed link otherwise stays "up" forever);
//! * secures every connection with TLS when configured ([`TlsConfig`]);
//! * publishes membership events ([`MemberEvent`]) to subscribers, the
//!   node's Replicator among them;
//! * gives Replicators and entities a [`ProcessGroupDiscovery`], which finds
//!   their counterparts through monitored process groups (one NodeServer per
//!   process).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::message::{BoxedDowncastErr, SerializedMessage};
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef};
use ractor_cluster::{NodeServer, NodeServerMessage};

use crate::discovery::ProcessGroupDiscovery;
use crate::error::{Chain, Component, Error, Result, Unavailability};
use crate::remote_cast;
use crate::timers::Timers;

mod transport;

pub use tokio_rustls::rustls;
pub use transport::{ConnectionStats, TlsConfig, NAME_PROBE, PRE_AUTH_FRAME_LIMIT};
use transport::{Connections, SessionEvent, SessionEvents};

const MEMBERSHIP_VARIANT: &str = "ractor_replicated.membership.v1";
const REMOVED_VARIANT: &str = "ractor_replicated.membership.removed.v1";
const MEMBERSHIP_NAME_PREFIX: &str = "ractor_replicated.membership@";
/// How many closed connection labels the membership actor remembers (see
/// `MembershipState::closed`).
const CLOSED_REMEMBERED: usize = 256;
/// How long a node that lost its last session stays up, waiting for a
/// session that replaces it (see `MembershipState::leaving`).
const DOWN_GRACE: Duration = Duration::from_millis(250);

/// How to run one node of a cluster.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// The node's name, unique in the cluster; also the Replicator's node name.
    pub name: String,
    /// The host peers reach this node at; advertised to them.
    pub host: String,
    /// The TCP port to listen on.
    pub port: u16,
    /// The address to bind; default: `host` if it is an IP address, else all
    /// interfaces.
    pub listen_addr: Option<IpAddr>,
    /// The shared secret every node of the cluster must use.
    pub cookie: String,
    /// Nodes to dial, as `host:port` addresses that reach them: what they
    /// advertise, or an alias (a DNS name, a NAT or proxy address). Every
    /// node may list every other, and itself.
    pub seeds: Vec<String>,
    /// How often heartbeats go to every peer. Default 500 ms.
    pub heartbeat_interval: Duration,
    /// A peer silent for this long has its session stopped (then redialled).
    /// Default 3 s.
    pub heartbeat_timeout: Duration,
    /// First and largest delay between dials of an unreachable seed.
    /// Defaults 50 ms and 1 s.
    pub redial_backoff: (Duration, Duration),
    /// The largest frame accepted from an authenticated peer; a larger one
    /// closes the session. Default 16 MiB (ractor_cluster's default); keep it
    /// above every Replicator's `max_message_bytes`.
    pub max_frame_bytes: u64,
    /// How many inbound connections may wait for authentication at once;
    /// more are refused. Default 64.
    pub max_unauthenticated: usize,
    /// How long a connection may take to authenticate before it is closed.
    /// Default 10 s.
    pub auth_timeout: Duration,
    /// TLS for every connection, inbound and outbound; default none (the
    /// cookie authenticates, nothing is encrypted).
    pub tls: Option<TlsConfig>,
}

impl ClusterConfig {
    /// A node named `name` listening on `host:port` with `cookie`, no seeds and
    /// the default timings.
    pub fn new(
        name: impl Into<String>,
        host: impl Into<String>,
        port: u16,
        cookie: impl Into<String>,
    ) -> Self {
        Self {
            name: name.into(),
            host: host.into(),
            port,
            listen_addr: None,
            cookie: cookie.into(),
            seeds: Vec::new(),
            heartbeat_interval: Duration::from_millis(500),
            heartbeat_timeout: Duration::from_secs(3),
            redial_backoff: (Duration::from_millis(50), Duration::from_secs(1)),
            max_frame_bytes: ractor_cluster::DEFAULT_MAX_INBOUND_FRAME_SIZE,
            max_unauthenticated: 64,
            auth_timeout: Duration::from_secs(10),
            tls: None,
        }
    }

    /// Secures every connection of the node with `tls`. Every node of the
    /// cluster must use TLS: a plain connection to a TLS node fails its
    /// handshake.
    pub fn with_tls(mut self, tls: TlsConfig) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Dials these `host:port` addresses and keeps dialling them.
    pub fn with_seeds(mut self, seeds: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.seeds = seeds.into_iter().map(Into::into).collect();
        self
    }

    fn listen_address(&self) -> SocketAddr {
        let ip = self.listen_addr.unwrap_or_else(|| {
            self.host
                .parse()
                .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
        });
        SocketAddr::new(ip, self.port)
    }
}

/// A change in the nodes this node is connected to, as
/// [`ClusterNode::subscribe`] delivers it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MemberEvent {
    /// Node `0` is connected: its session authenticated and its actors
    /// (process groups) are visible here.
    Up(String),
    /// Node `0` is no longer connected: it stopped, the link broke, or it
    /// stayed silent past the heartbeat timeout, and no new session
    /// replaced the last one within 250 ms. It may come back.
    Down(String),
    /// Node `0` left the cluster for good ([`ClusterNode::remove_member`]).
    Removed(String),
}

impl ractor::Message for MemberEvent {}

/// A running node: its NodeServer and its membership actor.
pub struct ClusterNode {
    name: String,
    server: ActorRef<NodeServerMessage>,
    membership: ActorRef<MembershipMessage>,
    connections: Arc<Connections>,
    connected: tokio::sync::watch::Receiver<BTreeSet<String>>,
}

impl ClusterNode {
    /// Binds the node's port, starts the NodeServer and the membership actor.
    pub async fn start(config: ClusterConfig) -> Result<Self> {
        let address = config.listen_address();
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .map_err(|err| Error::Listen {
                address,
                source: Arc::new(err),
            })?;
        // The NodeServer always runs a listener of its own; this node's
        // connections come through the one above, so it listens on an
        // ephemeral loopback port that nobody is told about.
        let server = NodeServer::new(
            0,
            config.cookie.clone(),
            config.name.clone(),
            config.host.clone(),
            None,
            None,
        )
        .with_listen_addr(IpAddr::V4(Ipv4Addr::LOCALHOST))
        .with_max_inbound_frame_size(config.max_frame_bytes);
        let (server, _) = Actor::spawn(None, server, ())
            .await
            .map_err(|err| Error::start("the NodeServer", err))?;
        let name = config.name.clone();
        let connections = Arc::new(Connections::default());
        let (connected_sender, connected) = tokio::sync::watch::channel(BTreeSet::new());
        let arguments = MembershipArguments {
            config,
            server: server.clone(),
            listener,
            connections: connections.clone(),
            connected: connected_sender,
        };
        let spawned = Actor::spawn(
            Some(format!("{MEMBERSHIP_NAME_PREFIX}{name}")),
            Membership,
            arguments,
        )
        .await;
        let membership = match spawned {
            Ok((membership, _)) => membership,
            Err(err) => {
                let _ = server.stop_and_wait(None, None).await;
                return Err(Error::start("the membership actor", err));
            }
        };
        Ok(Self {
            name,
            server,
            membership,
            connections,
            connected,
        })
    }

    /// Sends `subscriber` a [`MemberEvent`] whenever a node connects,
    /// disconnects or is removed, starting with an `Up` for every node
    /// connected now and a `Removed` for every node removed and not back. Events come from ractor_cluster's session events: no
    /// polling. A subscriber that stopped is dropped.
    pub fn subscribe<M>(&self, subscriber: ActorRef<M>) -> Result<()>
    where
        M: ractor::Message + From<MemberEvent>,
    {
        subscribe_to(&self.membership, subscriber)
    }

    /// Tells every subscriber, here and on every other node, that node
    /// `node` left the cluster for good (decommissioned), as
    /// [`MemberEvent::Removed`]. A Replicator started from
    /// [`replicator_config`](Self::replicator_config) then stops counting it
    /// for `Majority` and `All`, and no node dials it any more.
    ///
    /// Nodes connected now hear of it at once and pass it on; a node that
    /// connects later hears of it from the nodes it connects to. A removed
    /// node that connects again is a member again (an `Up`), and a node
    /// ignores a removal it hears from a peer while it is connected to the
    /// removed node.
    pub fn remove_member(&self, node: impl Into<String>) -> Result<()> {
        self.membership
            .cast(MembershipMessage(Inbound::Remove(node.into())))
            .map_err(|_| membership_stopped())
    }

    /// Waits until at least `count` other nodes are connected (see
    /// [`MemberEvent::Up`]), and returns their names; an
    /// [`Error::NotConnected`] after `timeout`.
    pub async fn wait_until_connected(
        &self,
        count: usize,
        timeout: Duration,
    ) -> Result<Vec<String>> {
        let mut connected = self.connected.clone();
        let waited =
            tokio::time::timeout(timeout, connected.wait_for(|nodes| nodes.len() >= count)).await;
        match waited {
            Ok(Ok(nodes)) => Ok(nodes.iter().cloned().collect()),
            _ => Err(Error::NotConnected {
                required: count,
                connected: self.connected.borrow().iter().cloned().collect(),
                waited: timeout,
            }),
        }
    }

    /// The nodes connected now (see [`MemberEvent::Up`]).
    pub fn members_up(&self) -> Vec<String> {
        self.connected.borrow().iter().cloned().collect()
    }

    /// The configuration of this node's Replicator: its node name, discovery
    /// through this node's process groups, and this node's membership
    /// events. The Replicator subscribes to them when it starts (again after
    /// a restart): a node removed with [`remove_member`](Self::remove_member)
    /// no longer counts for `Majority` and `All`.
    pub fn replicator_config(&self) -> crate::ddata::ReplicatorConfig {
        crate::ddata::ReplicatorConfig::new(self.name.clone())
            .with_discovery(self.discovery())
            .with_membership(MemberEvents(self.membership.clone()))
    }

    /// The configuration of this node's replica `replica` of entity
    /// `persistence_id`: discovery through this node's process groups, and
    /// this node's membership events, to which the entity subscribes when it
    /// starts (again after a restart), so that a node removed with
    /// [`remove_member`](Self::remove_member) no longer holds its
    /// compaction back. `replica.node()` must be this node's name.
    pub fn entity_config(
        &self,
        persistence_id: impl Into<String>,
        replica: crate::ReplicaId,
    ) -> crate::persistence::EntityConfig {
        if replica.node() != self.name {
            tracing::warn!(
                replica = %replica,
                node = self.name,
                "an entity's replica id names another node than its cluster node"
            );
        }
        crate::persistence::EntityConfig::new(persistence_id, replica)
            .with_discovery(self.discovery())
            .with_membership(MemberEvents(self.membership.clone()))
    }

    /// The entity type `name` run by this node as `replica`, as
    /// [`EntityType::new`](crate::persistence::EntityType::new)
    /// makes it, with discovery through this node's process groups and
    /// this node's membership events. `replica.node()` must be this node's
    /// name.
    pub fn entity_type<B, R, J>(
        &self,
        name: impl Into<String>,
        replica: crate::ReplicaId,
        journal: J,
        factory: impl Fn(&str) -> (B, R) + Send + Sync + 'static,
    ) -> crate::persistence::EntityType<B, R, J>
    where
        B: crate::persistence::ReplicatedEventSourcedActor,
    {
        if replica.node() != self.name {
            tracing::warn!(
                replica = %replica,
                node = self.name,
                "an entity type's replica id names another node than its cluster node"
            );
        }
        crate::persistence::EntityType::new(name, replica, journal, factory)
            .with_discovery(self.discovery())
            .with_membership(MemberEvents(self.membership.clone()))
    }

    /// The node's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The NodeServer.
    pub fn server(&self) -> &ActorRef<NodeServerMessage> {
        &self.server
    }

    /// Discovery of peer Replicators for
    /// [`ReplicatorConfig::with_discovery`](crate::ddata::ReplicatorConfig::with_discovery).
    pub fn discovery(&self) -> ProcessGroupDiscovery {
        ProcessGroupDiscovery::new()
    }

    /// The names of the nodes with an authenticated session to this one.
    pub async fn connected_peers(&self) -> Vec<String> {
        peer_sessions(&self.server)
            .await
            .map(|sessions| sessions.into_keys().collect())
            .unwrap_or_default()
    }

    /// Counters of the node's connections since it started.
    pub fn connection_stats(&self) -> ConnectionStats {
        self.connections.stats()
    }

    /// Stops the membership actor (and with it the listener) and the
    /// NodeServer (closing every session).
    pub async fn stop(&self) {
        let _ = self.membership.stop_and_wait(None, None).await;
        let _ = self.server.stop_and_wait(None, None).await;
    }
}

/// A node's membership actor, for the actors that subscribe to it when they
/// start.
#[derive(Clone)]
pub(crate) struct MemberEvents(ActorRef<MembershipMessage>);

impl MemberEvents {
    /// Subscribes `subscriber`; a failure is logged, since the subscriber
    /// is starting and works without the events, only less well.
    pub(crate) fn subscribe<M>(&self, subscriber: ActorRef<M>)
    where
        M: ractor::Message + From<MemberEvent>,
    {
        if let Err(err) = subscribe_to(&self.0, subscriber) {
            tracing::warn!(error = %Chain(&err), "cannot follow membership events");
        }
    }
}

/// Subscribes `subscriber` to the events of the membership actor `membership`.
fn membership_stopped() -> Error {
    Error::Unavailable {
        actor: Component::Membership,
        reason: Unavailability::Stopped,
    }
}

fn subscribe_to<M>(membership: &ActorRef<MembershipMessage>, subscriber: ActorRef<M>) -> Result<()>
where
    M: ractor::Message + From<MemberEvent>,
{
    let deliver = Box::new(move |event: MemberEvent| subscriber.cast(M::from(event)).is_ok());
    membership
        .cast(MembershipMessage(Inbound::Subscribe(deliver)))
        .map_err(|_| membership_stopped())
}

/// Authenticated sessions by peer node name: their connection's label and
/// their session actor.
type Sessions = BTreeMap<String, (String, ActorCell)>;

/// The authenticated sessions; `None` if the NodeServer did not answer in
/// time.
async fn peer_sessions(server: &ActorRef<NodeServerMessage>) -> Option<Sessions> {
    let sessions = match server
        .call(NodeServerMessage::GetSessions, Some(Duration::from_secs(1)))
        .await
    {
        Ok(ractor::rpc::CallResult::Success(sessions)) => sessions,
        _ => return None,
    };
    let sessions = sessions
        .into_values()
        .filter_map(|session| {
            let node = transport::peer_node(&session)?;
            Some((node, (session.peer_addr, session.actor.get_cell())))
        })
        .collect();
    Some(sessions)
}

/// The membership actor's messages; heartbeats and removals cross the network.
pub struct MembershipMessage(Inbound);

/// Delivers a membership event; false once its subscriber is gone.
type Deliver = Box<dyn Fn(MemberEvent) -> bool + Send>;

enum Inbound {
    Heartbeat {
        from: String,
    },
    Subscribe(Deliver),
    /// The local node removes a member ([`ClusterNode::remove_member`]).
    Remove(String),
    /// A peer says that a member was removed.
    Removed {
        node: String,
    },
    Undecodable(String),
    Tick,
    /// A dial of `seed` ended: the label of its connection, or why not.
    Dialled {
        seed: String,
        outcome: std::result::Result<String, String>,
    },
    /// `seed` answered the name probe: it is `node`.
    Probed {
        seed: String,
        node: String,
    },
    Session(SessionEvent),
}

impl ractor::Message for MembershipMessage {
    fn serializable() -> bool {
        true
    }

    fn serialize(self) -> std::result::Result<SerializedMessage, BoxedDowncastErr> {
        match self.0 {
            Inbound::Heartbeat { from } => remote_cast::encode(MEMBERSHIP_VARIANT, &from),
            Inbound::Removed { node } => remote_cast::encode(REMOVED_VARIANT, &node),
            _ => Err(BoxedDowncastErr),
        }
    }

    fn deserialize(message: SerializedMessage) -> std::result::Result<Self, BoxedDowncastErr> {
        let removal = matches!(&message, SerializedMessage::Cast { variant, .. } if variant == REMOVED_VARIANT);
        let inbound = if removal {
            remote_cast::decode(REMOVED_VARIANT, message).map(|node| Inbound::Removed { node })
        } else {
            remote_cast::decode(MEMBERSHIP_VARIANT, message).map(|from| Inbound::Heartbeat { from })
        };
        Ok(Self(inbound.unwrap_or_else(Inbound::Undecodable)))
    }
}

struct Membership;

struct MembershipArguments {
    config: ClusterConfig,
    server: ActorRef<NodeServerMessage>,
    listener: tokio::net::TcpListener,
    connections: Arc<Connections>,
    connected: tokio::sync::watch::Sender<BTreeSet<String>>,
}

struct Seed {
    address: String,
    /// The node this address reached, learnt from its first session.
    node: Option<String>,

    backoff: Duration,
    next_dial: Instant,
    /// When the dial in progress started; it ends when a session it opened
    /// authenticates or closes, or when it fails to connect.
    dialling_since: Option<Instant>,
}

struct MembershipState {
    config: ClusterConfig,
    server: ActorRef<NodeServerMessage>,
    connections: Arc<Connections>,
    seeds: Vec<Seed>,
    /// When each peer was last heard from, or its session first seen.
    last_heard: HashMap<String, Instant>,
    next_heartbeat: Instant,
    timers: Timers,
    acceptor: Option<tokio::task::JoinHandle<()>>,
    /// Authenticated sessions by connection label, with their node.
    authenticated: HashMap<String, String>,
    /// Of those, the sessions whose process groups are synchronised.
    ready: HashMap<String, String>,
    /// The labels of the connections closed last. ractor delivers a
    /// session's end (a supervision event) ahead of messages it sent
    /// before, so its Authenticated or Ready can arrive after its Closed:
    /// taken in, it would make a stopped node up for good. Labels are never
    /// reused, and such late events come within moments.
    closed: VecDeque<String>,
    connected: tokio::sync::watch::Sender<BTreeSet<String>>,
    subscribers: Vec<Deliver>,
    /// Nodes removed from the cluster and not connected since.
    removed: BTreeSet<String>,
    /// Nodes up that lost their last session, since when. One stays up for
    /// `DOWN_GRACE`: ractor delivers a session's end ahead of the messages
    /// it sent before, so when a session replaces a duplicate, the old
    /// one's Closed can arrive before the new one's Authenticated, and the
    /// node would flap down and up (seen under load).
    leaving: HashMap<String, Instant>,
    /// Nodes that came up and have not been told of `removed` yet.
    newcomers: Vec<String>,
}

impl MembershipState {
    fn seed_mut(&mut self, address: &str) -> Option<&mut Seed> {
        self.seeds.iter_mut().find(|seed| seed.address == address)
    }

    /// Publishes the nodes that came up or went down since last time. A
    /// node is up from its first ready session until it has had no
    /// authenticated one for `DOWN_GRACE`: when ractor_cluster replaces a
    /// duplicate session, the new one authenticates before the old one
    /// closes, but the events may arrive the other way round.
    fn publish_changes(&mut self) {
        let before = self.connected.borrow().clone();
        let still: BTreeSet<&String> = self.authenticated.values().collect();
        let mut now: BTreeSet<String> = self
            .ready
            .values()
            .cloned()
            .chain(before.iter().filter(|node| still.contains(node)).cloned())
            .collect();
        self.leaving
            .retain(|node, _| before.contains(node) && !now.contains(node));
        let at = Instant::now();
        for node in before.difference(&now).cloned().collect::<Vec<_>>() {
            let since = *self.leaving.entry(node.clone()).or_insert(at);
            if at.duration_since(since) < DOWN_GRACE {
                now.insert(node);
            }
        }
        if now == before {
            return;
        }
        let events: Vec<MemberEvent> = now
            .difference(&before)
            .map(|node| MemberEvent::Up(node.clone()))
            .chain(
                before
                    .difference(&now)
                    .map(|node| MemberEvent::Down(node.clone())),
            )
            .collect();
        self.connected.send_replace(now);
        for event in events {
            tracing::info!(?event, "membership changed");
            if let MemberEvent::Up(node) = &event {
                // Back, so a member again.
                self.removed.remove(node);
                self.newcomers.push(node.clone());
            }
            self.publish(event);
        }
    }

    /// Tells the nodes that came up whom the cluster removed while they were
    /// away.
    async fn tell_newcomers(&mut self) {
        let newcomers = std::mem::take(&mut self.newcomers);
        if newcomers.is_empty() || self.removed.is_empty() {
            return;
        }
        let Some(sessions) = peer_sessions(&self.server).await else {
            tracing::warn!("the NodeServer did not list its sessions; new members miss removals");
            return;
        };
        for node in &newcomers {
            for removed in &self.removed {
                tell_membership(&sessions, Some(node), || Inbound::Removed {
                    node: removed.clone(),
                });
            }
        }
    }

    /// Removes `node` from the cluster, as this node's user asked or as a
    /// peer said, and passes the news on to every peer once.
    async fn remove(&mut self, node: String, from_peer: bool) {
        if node == self.config.name {
            tracing::warn!("a peer says this node was removed; it stays");
            return;
        }
        if from_peer && self.connected.borrow().contains(&node) {
            tracing::debug!(node, "a peer says a connected node was removed; ignored");
            return;
        }
        if !self.removed.insert(node.clone()) {
            return;
        }
        tracing::info!(node, "member removed");
        self.publish(MemberEvent::Removed(node.clone()));
        match peer_sessions(&self.server).await {
            Some(sessions) => {
                tell_membership(&sessions, None, || Inbound::Removed { node: node.clone() })
            }
            None => tracing::warn!(
                node,
                "the NodeServer did not list its sessions; peers miss a removal"
            ),
        }
    }

    fn publish(&mut self, event: MemberEvent) {
        self.subscribers.retain(|deliver| deliver(event.clone()));
    }

    /// Learns from a session event which nodes are up, and which node a
    /// dialled seed reaches (ending the dial).
    fn session_event(&mut self, event: SessionEvent) {
        let late = match &event {
            SessionEvent::Authenticated { label, .. } | SessionEvent::Ready { label, .. } => {
                self.closed.contains(label)
            }
            SessionEvent::Closed { .. } => false,
        };
        if late {
            tracing::debug!("a session event after the session closed; ignored");
            return;
        }
        let (label, node) = match event {
            SessionEvent::Authenticated { label, node } => {
                self.authenticated.insert(label.clone(), node.clone());
                (label, Some(node))
            }
            SessionEvent::Ready { label, node } => {
                self.ready.insert(label, node);
                self.publish_changes();
                return;
            }
            SessionEvent::Closed { label, node } => {
                self.authenticated.remove(&label);
                self.ready.remove(&label);
                if self.closed.len() == CLOSED_REMEMBERED {
                    self.closed.pop_front();
                }
                self.closed.push_back(label.clone());
                self.publish_changes();
                (label, node)
            }
        };
        let Some(address) = transport::dialled_seed(&label).map(str::to_string) else {
            return;
        };
        let Some(seed) = self.seed_mut(&address) else {
            return;
        };
        seed.dialling_since = None;
        if let Some(node) = node {
            seed.learn(node);
        }
    }
}

impl Seed {
    fn learn(&mut self, node: String) {
        if self.node.as_ref() != Some(&node) {
            tracing::debug!(seed = self.address, node, "seed reaches node");
        }
        self.node = Some(node);
    }
}

impl Actor for Membership {
    type Msg = MembershipMessage;
    type State = MembershipState;
    type Arguments = MembershipArguments;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        arguments: Self::Arguments,
    ) -> std::result::Result<Self::State, ActorProcessingErr> {
        let MembershipArguments {
            config,
            server,
            listener,
            connections,
            connected,
        } = arguments;
        let events = myself.clone();
        server.cast(NodeServerMessage::SubscribeToEvents {
            id: format!("{MEMBERSHIP_NAME_PREFIX}{}", config.name),
            subscription: Box::new(SessionEvents {
                connections: connections.clone(),
                forward: move |event| {
                    let _ = events.cast(MembershipMessage(Inbound::Session(event)));
                },
            }),
        })?;
        let acceptor = tokio::spawn(transport::accept(
            listener,
            server.clone(),
            connections.clone(),
            config.name.clone(),
            config.tls.clone(),
            config.max_unauthenticated,
            config.auth_timeout,
        ));
        let now = Instant::now();
        let seeds = config
            .seeds
            .iter()
            .map(|address| Seed {
                address: address.clone(),
                node: None,
                backoff: config.redial_backoff.0,
                next_dial: now,
                dialling_since: None,
            })
            .collect();
        let tick = config
            .heartbeat_interval
            .min(config.redial_backoff.0)
            .max(Duration::from_millis(10));
        let mut state = MembershipState {
            config,
            server,
            connections,
            seeds,
            last_heard: HashMap::new(),
            next_heartbeat: now,
            timers: Timers::default(),
            acceptor: Some(acceptor),
            authenticated: HashMap::new(),
            ready: HashMap::new(),
            closed: VecDeque::new(),
            leaving: HashMap::new(),
            connected,
            subscribers: Vec::new(),
            removed: BTreeSet::new(),
            newcomers: Vec::new(),
        };
        state
            .timers
            .every(&myself, tick, || MembershipMessage(Inbound::Tick));
        let _ = myself.cast(MembershipMessage(Inbound::Tick));
        Ok(state)
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> std::result::Result<(), ActorProcessingErr> {
        if let Some(acceptor) = state.acceptor.take() {
            acceptor.abort();
        }
        let _ = state
            .server
            .cast(NodeServerMessage::UnsubscribeToEvents(format!(
                "{MEMBERSHIP_NAME_PREFIX}{}",
                state.config.name
            )));
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> std::result::Result<(), ActorProcessingErr> {
        match message.0 {
            Inbound::Heartbeat { from } => {
                state.last_heard.insert(from, Instant::now());
            }
            Inbound::Undecodable(reason) => {
                tracing::warn!(reason, "rejected an undecodable membership message");
            }
            Inbound::Subscribe(deliver) => {
                let up = state.connected.borrow().clone();
                let now = up
                    .into_iter()
                    .map(MemberEvent::Up)
                    .chain(state.removed.iter().cloned().map(MemberEvent::Removed));
                if now.into_iter().all(&deliver) {
                    state.subscribers.push(deliver);
                }
            }
            Inbound::Remove(node) => state.remove(node, false).await,
            Inbound::Removed { node } => state.remove(node, true).await,
            Inbound::Dialled { seed, outcome } => match (outcome, state.seed_mut(&seed)) {
                (Ok(label), _) => tracing::debug!(seed, connection = label, "seed dialled"),
                (Err(reason), Some(seed_state)) => {
                    seed_state.dialling_since = None;
                    tracing::debug!(seed, reason, "seed not reachable; redialling later");
                }
                (Err(_), None) => {}
            },
            Inbound::Session(event) => {
                state.session_event(event);
                state.tell_newcomers().await;
            }
            Inbound::Probed { seed, node } => {
                if let Some(seed) = state.seed_mut(&seed) {
                    seed.learn(node);
                    // Dial at the next tick if that node has no session.
                    seed.dialling_since = None;
                    seed.next_dial = Instant::now();
                }
            }
            Inbound::Tick => tick(&myself, state).await,
        }
        Ok(())
    }
}

/// Sends what `message` builds to the membership actor of node `to`, or of
/// every node with a session, through the proxy that node's session holds.
/// (Process groups would find them with one node per process, but with
/// several, proxies of different sessions share ids there and one session's
/// end removes another's.)
fn tell_membership(sessions: &Sessions, to: Option<&str>, message: impl Fn() -> Inbound) {
    for (node, (_, session)) in sessions {
        if to.is_some_and(|to| to != node) {
            continue;
        }
        let name = format!("{MEMBERSHIP_NAME_PREFIX}{node}");
        let proxy = session
            .get_children()
            .into_iter()
            .find(|proxy| proxy.get_name().as_deref() == Some(name.as_str()));
        if let Some(proxy) = proxy {
            let _ = proxy.send_message(MembershipMessage(message()));
        }
    }
}

async fn tick(myself: &ActorRef<MembershipMessage>, state: &mut MembershipState) {
    // Nodes whose grace ran out go down.
    state.publish_changes();
    let now = Instant::now();
    state
        .connections
        .close_unauthenticated(state.config.auth_timeout);
    // A dial whose session never reported back (it could not even start)
    // is over once it had the time to connect and authenticate.
    let dial_bound = transport::CONNECT_TIMEOUT + state.config.auth_timeout;
    let Some(sessions) = peer_sessions(&state.server).await else {
        // Without the session list nothing can be decided: dialling now
        // could open a second session to a connected node.
        tracing::debug!("the NodeServer did not list its sessions in time");
        return;
    };
    if now >= state.next_heartbeat {
        state.next_heartbeat = now + state.config.heartbeat_interval;
        tell_membership(&sessions, None, || Inbound::Heartbeat {
            from: state.config.name.clone(),
        });
    }
    let own = state.config.name.clone();
    for seed in &mut state.seeds {
        // A seed is connected when its node has a session, dialled or
        // accepted, whatever address the node advertises.
        let connected = match &seed.node {
            Some(node) => *node == own || sessions.contains_key(node),
            None => false,
        };
        if seed
            .node
            .as_ref()
            .is_some_and(|node| state.removed.contains(node))
        {
            continue;
        }
        if connected {
            seed.backoff = state.config.redial_backoff.0;
            continue;
        }
        let dialling = seed
            .dialling_since
            .is_some_and(|since| now.duration_since(since) < dial_bound);
        if dialling || now < seed.next_dial {
            continue;
        }
        seed.dialling_since = Some(now);
        seed.next_dial = now + seed.backoff;
        seed.backoff = (seed.backoff * 2).min(state.config.redial_backoff.1);
        let (server, address, me) = (state.server.clone(), seed.address.clone(), myself.clone());
        let connections = state.connections.clone();
        let tls = state.config.tls.clone();
        // A seed not known by name is asked for it first: dialling a node
        // that is connected already would open a duplicate session.
        let probe_first = seed.node.is_none();
        tokio::spawn(async move {
            if probe_first {
                match transport::probe(&address, tls.as_ref(), &connections).await {
                    Ok(Some(node)) => {
                        let _ = me.cast(MembershipMessage(Inbound::Probed {
                            seed: address,
                            node,
                        }));
                        return;
                    }
                    // Not a ClusterNode: its sessions will tell its name.
                    Ok(None) => {}
                    Err(err) => {
                        let outcome = Err(err.to_string());
                        let _ = me.cast(MembershipMessage(Inbound::Dialled {
                            seed: address,
                            outcome,
                        }));
                        return;
                    }
                }
            }
            let outcome = transport::dial(&server, &address, &connections, tls.as_ref())
                .await
                .map_err(|err| err.to_string());
            let _ = me.cast(MembershipMessage(Inbound::Dialled {
                seed: address,
                outcome,
            }));
        });
    }

    // A session first seen counts as heard from, so a new peer gets a full
    // timeout to send its first heartbeat.
    state
        .last_heard
        .retain(|node, _| sessions.contains_key(node));
    for (node, (_, session)) in &sessions {
        let heard = *state.last_heard.entry(node.clone()).or_insert(now);
        if now.duration_since(heard) > state.config.heartbeat_timeout {
            tracing::warn!(
                peer = node,
                "peer silent past the heartbeat timeout; closing its session"
            );
            session.stop(Some("heartbeat timeout".into()));
            state.last_heard.remove(node);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::golden::{pinned_bytes, pinned_text};

    #[test]
    fn golden_membership_messages() {
        for (name, message, variant) in [
            (
                "membership_heartbeat",
                Inbound::Heartbeat {
                    from: "node-a".into(),
                },
                MEMBERSHIP_VARIANT,
            ),
            (
                "membership_removed",
                Inbound::Removed {
                    node: "node-b".into(),
                },
                REMOVED_VARIANT,
            ),
        ] {
            let Ok(SerializedMessage::Cast {
                variant: sent,
                args,
                ..
            }) = ractor::Message::serialize(MembershipMessage(message))
            else {
                panic!("{name} is a cast");
            };
            assert_eq!(sent, variant);
            pinned_bytes(name, &args);
        }
        pinned_text(
            "membership_variants.txt",
            &format!("{MEMBERSHIP_VARIANT}\n{REMOVED_VARIANT}\n"),
        );
    }
}
