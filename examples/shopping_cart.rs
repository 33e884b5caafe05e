//! The classic OR-Set shopping cart, on a cluster of three real processes.
//!
//! `cargo run --release --example shopping_cart` starts three node processes
//! of this same program on 127.0.0.1. They find each other through the
//! membership helper, then edit one cart at the same time: adds and removes,
//! including an add and a remove of the same item on different nodes. The
//! program prints every node's cart once they agree, and how long that took.
//!
//! With `-- --durable DIR`, every node keeps the cart in a sled database under
//! DIR: run it twice and the second run starts from the first run's cart.

use std::time::{Duration, Instant};

use ractor_replicated::cluster::{ClusterConfig, ClusterNode};
use ractor_replicated::ddata::{
    DistributedData, Durability, Key, KeySelection, ReadConsistency, ReplicatorConfig, SledStore,
    WriteConsistency,
};
use ractor_replicated::ORSet;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

#[path = "support/node_process.rs"]
mod node_process;

use node_process::start_connected;

const NODES: usize = 3;
const CART: &str = "cart/alice";

/// What each node does to the cart, all at the same moment. Node 2 removes
/// milk while nodes 0 and 1 add it: a remove only takes away the adds it has
/// seen, so milk survives unless node 2 saw both adds first.
const SCRIPTS: [&[(&str, &str)]; NODES] = [
    &[
        ("add", "milk"),
        ("add", "eggs"),
        ("add", "bread"),
        ("remove", "eggs"),
    ],
    &[("add", "coffee"), ("add", "milk"), ("remove", "bread")],
    &[("add", "apples"), ("remove", "milk"), ("add", "tea")],
];

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let durable = args.iter().position(|arg| arg == "--durable").map(|at| {
        args.get(at + 1)
            .expect("--durable takes a directory")
            .clone()
    });
    match args.iter().position(|arg| arg == "--node") {
        Some(at) => {
            let index: usize = args[at + 1].parse().expect("--node takes an index");
            let ports: Vec<u16> = args[at + 2]
                .split(',')
                .map(|p| p.parse().expect("a port"))
                .collect();
            node(index, ports, durable);
        }
        None => orchestrate(durable),
    }
}

fn orchestrate(durable: Option<String>) {
    let started = Instant::now();
    let mut nodes = start_connected(NODES, |_| {
        durable
            .iter()
            .flat_map(|dir| ["--durable".to_string(), dir.clone()])
            .collect()
    });
    println!(
        "{NODES} node processes up and connected after {} ms",
        started.elapsed().as_millis()
    );
    if let Some(dir) = &durable {
        for (i, node) in nodes.iter_mut().enumerate() {
            println!("  node-{i} cart recovered from {dir}: {}", node.ask("cart"));
        }
    }
    for (i, script) in SCRIPTS.iter().enumerate() {
        let steps: Vec<String> = script
            .iter()
            .map(|(op, item)| format!("{op} {item}"))
            .collect();
        println!("  node-{i} will: {}", steps.join(", "));
    }

    let go = Instant::now();
    for node in &mut nodes {
        node.send("go");
    }
    for node in &mut nodes {
        assert_eq!(node.answer(), "done");
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let carts = loop {
        let carts: Vec<String> = nodes.iter_mut().map(|node| node.ask("cart")).collect();
        if carts.iter().all(|cart| cart == &carts[0]) {
            break carts;
        }
        assert!(
            Instant::now() < deadline,
            "the carts did not converge: {carts:?}"
        );
        std::thread::sleep(Duration::from_millis(1));
    };
    let converged = go.elapsed();
    for (i, cart) in carts.iter().enumerate() {
        println!("node-{i} cart: {cart}");
    }
    println!(
        "identical on all {NODES} nodes {:.1} ms after the concurrent edits began",
        converged.as_secs_f64() * 1000.0
    );
    for node in &mut nodes {
        node.send("quit");
    }
}

#[tokio::main]
async fn node(index: usize, ports: Vec<u16>, durable: Option<String>) {
    let name = format!("node-{index}");
    let seeds = ports.iter().map(|port| format!("127.0.0.1:{port}"));
    let config = ClusterConfig::new(&name, "127.0.0.1", ports[index], "shopping-cart-demo")
        .with_seeds(seeds);
    let cluster = ClusterNode::start(config)
        .await
        .expect("the node server starts");
    let members = (0..ports.len())
        .filter(|i| *i != index)
        .map(|i| format!("node-{i}"));
    let mut replicator = ReplicatorConfig::new(&name)
        .with_discovery(cluster.discovery())
        .with_members(members);
    if let Some(dir) = durable {
        let store = SledStore::open(std::path::Path::new(&dir).join(&name), &name)
            .expect("the cart store opens");
        replicator = replicator.with_durability(Durability::new(store, KeySelection::All));
    }
    let dd = DistributedData::start(replicator)
        .await
        .expect("the replicator starts");
    let cart: Key<ORSet<String>> = Key::new(CART);

    let mut stdout = tokio::io::stdout();
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    stdout.write_all(b"ready\n").await.expect("stdout");
    stdout.flush().await.expect("stdout");
    while let Ok(Some(command)) = lines.next_line().await {
        let reply = match command.as_str() {
            "peers" => dd
                .reachable_peers()
                .await
                .map_or(0, |peers| peers.len())
                .to_string(),
            "go" => {
                for (op, item) in SCRIPTS[index] {
                    let (add, item) = (*op == "add", item.to_string());
                    dd.update(&cart, WriteConsistency::Local, move |set, me| {
                        let op = if add {
                            set.add(me, item)
                        } else {
                            set.remove(&item)
                        };
                        set.apply(op);
                    })
                    .await
                    .expect("a local update");
                }
                "done".into()
            }
            "cart" => {
                let set = dd
                    .get(&cart, ReadConsistency::Local)
                    .await
                    .expect("a local read");
                let items: Vec<String> = set
                    .map(|set| set.iter().cloned().collect())
                    .unwrap_or_default();
                serde_json::to_string(&items).expect("a list of strings")
            }
            _ => break,
        };
        stdout
            .write_all(format!("{reply}\n").as_bytes())
            .await
            .expect("stdout");
        stdout.flush().await.expect("stdout");
    }
    dd.stop().await;
    cluster.stop().await;
}
