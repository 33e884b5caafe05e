//! A replicated event-sourced counter on a cluster of three real processes.
//!
//! `cargo run --release --example replicated_counter` starts three node
//! processes of this same program on 127.0.0.1. Each runs a replica of the
//! entity `counter-1`, journaling its events in sled. All three increment at
//! the same time, and node 2 resets the counter while the others are still
//! incrementing. The reset is concurrent with increments it has not seen: the
//! counter's resolver puts a reset after every increment it is concurrent
//! with, so it clears them ("reset wins"). Every node applies the same events
//! in the same order and prints the same value.

use std::cmp::Ordering;
use std::time::{Duration, Instant};

use ractor_replicated::cluster::{ClusterConfig, ClusterNode};
use ractor_replicated::persistence::{
    Effect, EventEnvelope, EventHandler, EventMeta, ReplicatedEntity, ReplicatedEventSourcedActor,
    ReplicationContext, ResolveWith, SledJournal,
};
use ractor_replicated::ReplicaId;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

#[path = "support/node_process.rs"]
mod node_process;

use node_process::start_connected;

const NODES: usize = 3;
const INCREMENTS: u64 = 200;

struct Counter;

enum Command {
    Increment(u64),
    Reset,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
enum Event {
    Incremented(u64),
    WasReset,
}

/// The value, and how many resets and increments made it.
#[derive(Clone, Debug, Default)]
struct State {
    value: u64,
    increments: u64,
    resets: u64,
    /// Increments applied before the last reset: it cleared them.
    cleared: u64,
}

impl EventHandler for Counter {
    type Event = Event;
    type State = State;

    fn apply(&self, state: &mut State, event: &Event, _: EventMeta<'_>) {
        match event {
            Event::Incremented(by) => {
                state.value += by;
                state.increments += 1;
            }
            Event::WasReset => {
                state.value = 0;
                state.resets += 1;
                state.cleared = state.increments;
            }
        }
    }
}

impl ReplicatedEventSourcedActor for Counter {
    type Command = Command;
    type Reply = ();

    fn handle_command(
        &self,
        _: &State,
        command: Command,
        _: ReplicationContext<'_>,
    ) -> Effect<Event, ()> {
        match command {
            Command::Increment(by) => Effect::persist([Event::Incremented(by)]),
            Command::Reset => Effect::persist([Event::WasReset]),
        }
    }
}

/// Of two concurrent events, increments go first and resets last, so a reset
/// clears the increments it raced with. Pure and deterministic, as the
/// resolver contract asks; ties fall back to the origin and sequence number.
fn reset_wins(first: &EventEnvelope<Event>, second: &EventEnvelope<Event>) -> Ordering {
    let rank = |e: &EventEnvelope<Event>| matches!(e.event, Event::WasReset);
    rank(first).cmp(&rank(second))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.iter().position(|arg| arg == "--node") {
        Some(at) => {
            let index: usize = args[at + 1].parse().expect("--node takes an index");
            let ports: Vec<u16> = args[at + 2]
                .split(',')
                .map(|p| p.parse().expect("a port"))
                .collect();
            let journal = args[at + 3].clone();
            node(index, ports, journal);
        }
        None => orchestrate(),
    }
}

fn orchestrate() {
    let journals = std::env::temp_dir().join(format!("replicated_counter-{}", std::process::id()));
    let started = Instant::now();
    let mut nodes = start_connected(NODES, |i| {
        vec![journals.join(format!("node-{i}")).display().to_string()]
    });
    println!(
        "{NODES} node processes up, replicas of counter-1 connected after {} ms",
        started.elapsed().as_millis()
    );
    println!("  every node increments {INCREMENTS} times by 1; node-2 resets after 50 of its own");

    let go = Instant::now();
    for node in &mut nodes {
        node.send("go");
    }
    for node in &mut nodes {
        assert_eq!(node.answer(), "done");
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let expected_events = (NODES as u64 * INCREMENTS + 1).to_string();
    let states = loop {
        let states: Vec<String> = nodes.iter_mut().map(|node| node.ask("state")).collect();
        let complete = nodes
            .iter_mut()
            .all(|node| node.ask("events") == expected_events);
        if complete && states.iter().all(|state| state == &states[0]) {
            break states;
        }
        assert!(
            Instant::now() < deadline,
            "the replicas did not converge: {states:?}"
        );
        std::thread::sleep(Duration::from_millis(1));
    };
    let converged = go.elapsed();
    for (i, state) in states.iter().enumerate() {
        println!("node-{i}: {state}");
    }
    println!(
        "identical on all {NODES} nodes {:.1} ms after the concurrent commands began",
        converged.as_secs_f64() * 1000.0
    );
    for node in &mut nodes {
        node.send("quit");
    }
    drop(nodes);
    let _ = std::fs::remove_dir_all(&journals);
}

#[tokio::main]
async fn node(index: usize, ports: Vec<u16>, journal: String) {
    let name = format!("node-{index}");
    let seeds = ports.iter().map(|port| format!("127.0.0.1:{port}"));
    let config = ClusterConfig::new(&name, "127.0.0.1", ports[index], "replicated-counter-demo")
        .with_seeds(seeds);
    let cluster = ClusterNode::start(config)
        .await
        .expect("the node server starts");
    let journal = SledJournal::open(&journal).expect("the journal opens");
    // The journal is new on every run, so the replica id may stay the node name.
    let config = cluster.entity_config("counter-1", ReplicaId::new(name.as_str(), 0));
    let counter = ReplicatedEntity::spawn(Counter, ResolveWith(reset_wins), journal, config)
        .await
        .expect("the entity starts");

    let mut stdout = tokio::io::stdout();
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    stdout.write_all(b"ready\n").await.expect("stdout");
    stdout.flush().await.expect("stdout");
    while let Ok(Some(command)) = lines.next_line().await {
        let reply = match command.as_str() {
            "peers" => counter
                .stats()
                .await
                .map_or(0, |stats| stats.reachable_peers.len())
                .to_string(),
            "go" => {
                for n in 0..INCREMENTS {
                    if index == 2 && n == 50 {
                        counter.command(Command::Reset).await.expect("journaled");
                    }
                    counter
                        .command(Command::Increment(1))
                        .await
                        .expect("journaled");
                }
                "done".into()
            }
            "events" => counter
                .stats()
                .await
                .map_or(0, |stats| stats.events)
                .to_string(),
            "state" => {
                let state = counter.state().await.expect("the entity answers");
                format!(
                    "value {} ({} increments, {} cleared by the reset)",
                    state.value, state.increments, state.cleared
                )
            }
            _ => break,
        };
        stdout
            .write_all(format!("{reply}\n").as_bytes())
            .await
            .expect("stdout");
        stdout.flush().await.expect("stdout");
    }
    counter.stop().await;
    cluster.stop().await;
}
