//! A small membership helper that makes a cluster of real processes just work.
//!
//! ractor_cluster connects nodes, but it neither reconnects nor notices a
//! silent peer. [`ClusterNode`] starts a NodeServer and a membership actor that
//! * dials the configured seed nodes and redials them, with exponential
//!   backoff, whenever no session to them exists (after a disconnect, a peer
//!   restart, or a lost duplicate-connection election: the session list, not
//!   the disconnect events, decides);
//! * sends a heartbeat to every peer's membership actor and stops a session
//!   whose peer stayed silent past the timeout, so that it is redialled (a
//!   blackholed link otherwise stays "up" forever);
//! * gives Replicators a [`ProcessGroupDiscovery`], which finds peer
//!   Replicators through a scoped process group (one NodeServer per process).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use ractor::message::{BoxedDowncastErr, SerializedMessage};
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef};
use ractor_cluster::{NodeServer, NodeServerMessage};

use crate::error::{Error, Result};
use crate::remote_cast;

mod discovery;

pub use discovery::ProcessGroupDiscovery;

/// The process-group scope of everything ractor_replicated registers.
pub const SCOPE: &str = "ractor_replicated";
const MEMBERSHIP_GROUP: &str = "membership";
const MEMBERSHIP_VARIANT: &str = "ractor_replicated.membership.v1";
const MEMBERSHIP_NAME_PREFIX: &str = "ractor_replicated.membership@";

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
    /// Nodes to dial, as the `host:port` they advertise. Every node may list
    /// every other; duplicate connections are resolved by ractor_cluster.
    pub seeds: Vec<String>,
    /// How often heartbeats go to every peer. Default 500 ms.
    pub heartbeat_interval: Duration,
    /// A peer silent for this long has its session stopped (then redialled).
    /// Default 3 s.
    pub heartbeat_timeout: Duration,
    /// First and largest delay between dials of an unreachable seed.
    /// Defaults 50 ms and 2 s.
    pub redial_backoff: (Duration, Duration),
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
            redial_backoff: (Duration::from_millis(50), Duration::from_secs(2)),
        }
    }

    /// Dials these `host:port` addresses and keeps dialling them.
    pub fn with_seeds(mut self, seeds: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.seeds = seeds.into_iter().map(Into::into).collect();
        self
    }

    fn own_address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// A running node: its NodeServer and its membership actor.
pub struct ClusterNode {
    name: String,
    server: ActorRef<NodeServerMessage>,
    membership: ActorRef<MembershipMessage>,
}

impl ClusterNode {
    /// Starts the NodeServer and the membership actor.
    pub async fn start(config: ClusterConfig) -> Result<Self> {
        let listen = config.listen_addr.unwrap_or_else(|| {
            config
                .host
                .parse()
                .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
        });
        let server = NodeServer::new(
            config.port,
            config.cookie.clone(),
            config.name.clone(),
            config.host.clone(),
            None,
            None,
        )
        .with_listen_addr(listen);
        let (server, _) = Actor::spawn(None, server, ())
            .await
            .map_err(|err| Error::Start {
                what: "the NodeServer",
                reason: err.to_string(),
            })?;
        let name = config.name.clone();
        let arguments = (config, server.clone());
        let (membership, _) = Actor::spawn(
            Some(format!("{MEMBERSHIP_NAME_PREFIX}{name}")),
            Membership,
            arguments,
        )
        .await
        .map_err(|err| Error::Start {
            what: "the membership actor",
            reason: err.to_string(),
        })?;
        Ok(Self {
            name,
            server,
            membership,
        })
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
        peer_sessions(&self.server).await.into_keys().collect()
    }

    /// Stops the membership actor and the NodeServer (closing every session).
    pub async fn stop(&self) {
        let _ = self.membership.stop_and_wait(None, None).await;
        let _ = self.server.stop_and_wait(None, None).await;
    }
}

/// Authenticated sessions by peer node name, with the `host:port` the peer
/// advertises.
async fn peer_sessions(
    server: &ActorRef<NodeServerMessage>,
) -> BTreeMap<String, (String, ActorCell)> {
    let sessions = match server
        .call(NodeServerMessage::GetSessions, Some(Duration::from_secs(1)))
        .await
    {
        Ok(ractor::rpc::CallResult::Success(sessions)) => sessions,
        _ => return BTreeMap::new(),
    };
    sessions
        .into_values()
        .filter_map(|session| {
            let peer = session.peer_name?;
            let node = peer.name.split('@').next()?.to_string();
            Some((node, (peer.connection_string, session.actor.get_cell())))
        })
        .collect()
}

/// The membership actor's messages; only heartbeats cross the network.
pub struct MembershipMessage(Inbound);

enum Inbound {
    Heartbeat { from: String },
    Undecodable(String),
    Tick,
    Dialled { seed: String, connected: bool },
}

impl ractor::Message for MembershipMessage {
    fn serializable() -> bool {
        true
    }

    fn serialize(self) -> std::result::Result<SerializedMessage, BoxedDowncastErr> {
        match self.0 {
            Inbound::Heartbeat { from } => remote_cast::encode(MEMBERSHIP_VARIANT, &from),
            _ => Err(BoxedDowncastErr),
        }
    }

    fn deserialize(message: SerializedMessage) -> std::result::Result<Self, BoxedDowncastErr> {
        Ok(Self(
            match remote_cast::decode(MEMBERSHIP_VARIANT, message) {
                Ok(from) => Inbound::Heartbeat { from },
                Err(reason) => Inbound::Undecodable(reason),
            },
        ))
    }
}

struct Membership;

struct Seed {
    address: String,
    backoff: Duration,
    next_dial: Instant,
    dialling: bool,
}

struct MembershipState {
    config: ClusterConfig,
    server: ActorRef<NodeServerMessage>,
    seeds: Vec<Seed>,
    /// When each peer was last heard from, or its session first seen.
    last_heard: HashMap<String, Instant>,
    next_heartbeat: Instant,
    ticker: Option<ractor::concurrency::JoinHandle<()>>,
}

impl Actor for Membership {
    type Msg = MembershipMessage;
    type State = MembershipState;
    type Arguments = (ClusterConfig, ActorRef<NodeServerMessage>);

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        (config, server): Self::Arguments,
    ) -> std::result::Result<Self::State, ActorProcessingErr> {
        ractor::pg::join_scoped(
            SCOPE.into(),
            MEMBERSHIP_GROUP.into(),
            vec![myself.get_cell()],
        );
        let own = config.own_address();
        let now = Instant::now();
        let seeds = config
            .seeds
            .iter()
            .filter(|seed| **seed != own)
            .map(|address| Seed {
                address: address.clone(),
                backoff: config.redial_backoff.0,
                next_dial: now,
                dialling: false,
            })
            .collect();
        let tick = config
            .heartbeat_interval
            .min(config.redial_backoff.0)
            .max(Duration::from_millis(10));
        let ticker = myself.send_interval(tick, || MembershipMessage(Inbound::Tick));
        let _ = myself.cast(MembershipMessage(Inbound::Tick));
        Ok(MembershipState {
            config,
            server,
            seeds,
            last_heard: HashMap::new(),
            next_heartbeat: now,
            ticker: Some(ticker),
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> std::result::Result<(), ActorProcessingErr> {
        if let Some(ticker) = state.ticker.take() {
            ticker.abort();
        }
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
            Inbound::Dialled { seed, connected } => {
                if let Some(seed_state) = state.seeds.iter_mut().find(|s| s.address == seed) {
                    seed_state.dialling = false;
                    if !connected {
                        tracing::debug!(seed, "seed not reachable; redialling later");
                    }
                }
            }
            Inbound::Tick => tick(&myself, state).await,
        }
        Ok(())
    }
}

async fn tick(myself: &ActorRef<MembershipMessage>, state: &mut MembershipState) {
    let now = Instant::now();
    let sessions = peer_sessions(&state.server).await;
    let connected: BTreeSet<&str> = sessions
        .values()
        .map(|(address, _)| address.as_str())
        .collect();

    for seed in &mut state.seeds {
        if connected.contains(seed.address.as_str()) {
            seed.backoff = state.config.redial_backoff.0;
            continue;
        }
        if seed.dialling || now < seed.next_dial {
            continue;
        }
        seed.dialling = true;
        seed.next_dial = now + seed.backoff;
        seed.backoff = (seed.backoff * 2).min(state.config.redial_backoff.1);
        let (server, address, me) = (state.server.clone(), seed.address.clone(), myself.clone());
        tokio::spawn(async move {
            let connected = ractor_cluster::client_connect(&server, address.as_str())
                .await
                .is_ok();
            let _ = me.cast(MembershipMessage(Inbound::Dialled {
                seed: address,
                connected,
            }));
        });
    }

    if now >= state.next_heartbeat {
        state.next_heartbeat = now + state.config.heartbeat_interval;
        for member in
            ractor::pg::get_scoped_members(&SCOPE.to_string(), &MEMBERSHIP_GROUP.to_string())
        {
            if member.get_id().is_local() {
                continue;
            }
            let heartbeat = MembershipMessage(Inbound::Heartbeat {
                from: state.config.name.clone(),
            });
            let _ = member.send_message(heartbeat);
        }
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
