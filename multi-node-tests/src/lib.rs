//! Harness for tests that run ractor_replicated nodes as separate OS processes
//! on 127.0.0.1: each node is the `node` binary of this crate, driven through
//! its stdin and stdout one line at a time.
//!
//! Every process is killed (SIGKILL) and reaped when its [`NodeProcess`] is
//! dropped, so a failing or panicking test leaves nothing behind. A node whose
//! test process dies anyway sees its stdin close and exits.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use test_support::eventually_blocking;

pub mod faults;
pub mod ledger;

use faults::Network;
pub use test_support::free_port;

/// How long one command may take before the test fails.
const ANSWER_BOUND: Duration = Duration::from_secs(60);

/// One node process.
pub struct NodeProcess {
    name: String,
    child: Child,
    stdin: ChildStdin,
    answers: Receiver<String>,
    last_words: Arc<Mutex<VecDeque<String>>>,
}

impl NodeProcess {
    /// Starts `binary` as node `name` on `port`, dialling `seeds` and counting
    /// `members` as the cluster, keeping its keys durable in `data` if given,
    /// with `extra` arguments; returns once it printed `ready`.
    pub fn start(
        binary: &Path,
        name: &str,
        port: u16,
        seeds: &[String],
        members: &[String],
        data: Option<&Path>,
        extra: &[String],
    ) -> Self {
        let stderr = if std::env::var_os("RUST_LOG").is_some() {
            Stdio::inherit()
        } else {
            Stdio::piped()
        };
        let mut command = Command::new(binary);
        command
            .args(["--name", name, "--port", &port.to_string()])
            .args(["--seeds", &seeds.join(","), "--members", &members.join(",")]);
        if let Some(data) = data {
            command.arg("--data").arg(data);
        }
        command.args(extra);
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start {}: {err}", binary.display()));
        let stdin = child.stdin.take().expect("piped stdin");
        // The last lines the node wrote to stderr (a panic message, say), for
        // the failure report.
        let last_words = Arc::new(Mutex::new(VecDeque::new()));
        if let Some(stderr) = child.stderr.take() {
            let last_words = last_words.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    let mut lines = last_words.lock().unwrap_or_else(|p| p.into_inner());
                    if lines.len() == 20 {
                        lines.pop_front();
                    }
                    lines.push_back(line);
                }
            });
        }
        let stdout = child.stdout.take().expect("piped stdout");
        let (sender, answers) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        let mut node = Self {
            name: name.to_string(),
            child,
            stdin,
            answers,
            last_words,
        };
        let first = node.next_line();
        assert_eq!(first, "ready", "{name} did not start");
        node
    }

    /// The node's operating-system process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The node's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn next_line(&mut self) -> String {
        match self.answers.recv_timeout(ANSWER_BOUND) {
            Ok(line) => line,
            Err(err) => {
                // Give the stderr reader a moment to collect a dying node's
                // last words.
                std::thread::sleep(Duration::from_millis(200));
                let last_words = self
                    .last_words
                    .lock()
                    .map(|w| w.clone())
                    .unwrap_or_default();
                panic!(
                    "{} gave no answer within {ANSWER_BOUND:?}: {err}; its stderr ended with:\n{}",
                    self.name,
                    Vec::from(last_words).join("\n")
                )
            }
        }
    }

    /// Sends one command and returns its answer, `Err` for a refused command.
    pub fn ask(&mut self, command: &str) -> Result<Value, String> {
        writeln!(self.stdin, "{command}")
            .and_then(|()| self.stdin.flush())
            .unwrap_or_else(|err| panic!("{} does not take commands: {err}", self.name));
        let line = self.next_line();
        let answer: Value = serde_json::from_str(&line)
            .unwrap_or_else(|err| panic!("{} answered {line:?}: {err}", self.name));
        match (answer.get("ok"), answer.get("err")) {
            (Some(value), _) => Ok(value.clone()),
            (_, Some(err)) => Err(err.as_str().unwrap_or_default().to_string()),
            _ => panic!("{} answered {line:?}", self.name),
        }
    }

    /// Like [`ask`](Self::ask), but a refused command fails the test.
    pub fn must(&mut self, command: &str) -> Value {
        self.ask(command)
            .unwrap_or_else(|err| panic!("{} refused {command:?}: {err}", self.name))
    }

    /// How many records of the background writer `prefix` the node's
    /// entity acknowledged so far.
    pub fn progress(&mut self, prefix: &str) -> u64 {
        self.must(&format!("progress {prefix}"))
            .as_u64()
            .unwrap_or(0)
    }

    /// Freezes (SIGSTOP) or thaws (SIGCONT) the process: a frozen node keeps
    /// its TCP sessions open but says nothing, like a node behind a blackholed
    /// link.
    pub fn signal(&mut self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .expect("the kill command runs");
        assert!(status.success(), "kill {signal} {} failed", self.name);
    }

    /// Kills the process with SIGKILL, as a crash would, and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        // A frozen process must be thawed to be reaped promptly.
        let _ = Command::new("kill")
            .args(["-CONT", &self.child.id().to_string()])
            .stderr(Stdio::null())
            .status();
        self.kill();
    }
}

/// A cluster of node processes on loopback; every node lists every other as a
/// seed and as a member. Nodes can be killed and restarted under the same name
/// and port.
pub struct LoopbackCluster {
    binary: PathBuf,
    names: Vec<String>,
    ports: Vec<u16>,
    nodes: Vec<Option<NodeProcess>>,
    data: Option<PathBuf>,
    extra: Vec<String>,
    network: Option<Network>,
    /// Where the test's files go (writer logs), removed on drop.
    scratch: PathBuf,
}

impl LoopbackCluster {
    /// A cluster of `size` nodes, none started yet.
    pub fn new(binary: impl Into<PathBuf>, label: &str, size: usize) -> Self {
        Self {
            binary: binary.into(),
            names: (0..size).map(|i| format!("{label}-{i}")).collect(),
            ports: (0..size).map(|_| free_port()).collect(),
            nodes: (0..size).map(|_| None).collect(),
            data: None,
            extra: Vec::new(),
            network: None,
            scratch: std::env::temp_dir().join(format!(
                "ractor_replicated-{label}-scratch-{}",
                std::process::id()
            )),
        }
    }

    /// Nodes reach each other only through a [`Network`] of fault-injecting
    /// proxies, one per directed link (so every seed is an alias).
    pub fn with_link_faults(mut self) -> Self {
        self.network = Some(Network::new(&self.ports));
        self
    }

    /// The proxies between the nodes; panics without
    /// [`with_link_faults`](Self::with_link_faults).
    pub fn network(&self) -> &Network {
        self.network
            .as_ref()
            .expect("the cluster runs with link faults")
    }

    /// A file in the cluster's scratch directory (removed with the cluster).
    pub fn scratch_file(&self, name: &str) -> PathBuf {
        let _ = std::fs::create_dir_all(&self.scratch);
        self.scratch.join(name)
    }

    /// Every node also gets `arguments` on its command line.
    pub fn with_node_arguments(mut self, arguments: &[&str]) -> Self {
        self.extra = arguments.iter().map(|a| a.to_string()).collect();
        self
    }

    /// A cluster whose nodes keep every key durable in their own sled
    /// database, in a temporary directory removed when the cluster is dropped.
    pub fn durable(binary: impl Into<PathBuf>, label: &str, size: usize) -> Self {
        let mut cluster = Self::new(binary, label, size);
        let base =
            std::env::temp_dir().join(format!("ractor_replicated-{label}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        cluster.data = Some(base);
        cluster
    }

    /// Starts every node and waits until each reaches every other.
    pub fn start_all(&mut self) {
        for i in 0..self.names.len() {
            self.start(i);
        }
        self.wait_connected();
    }

    /// Starts (or restarts) node `i`.
    pub fn start(&mut self, i: usize) {
        let seeds: Vec<String> = match &self.network {
            Some(network) => network.seeds_of(i),
            None => self
                .ports
                .iter()
                .map(|port| format!("127.0.0.1:{port}"))
                .collect(),
        };
        self.nodes[i] = None;
        let data = self.data.as_ref().map(|base| base.join(&self.names[i]));
        self.nodes[i] = Some(NodeProcess::start(
            &self.binary,
            &self.names[i],
            self.ports[i],
            &seeds,
            &self.names,
            data.as_deref(),
            &self.extra,
        ));
    }

    /// Kills node `i` with SIGKILL.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut node) = self.nodes[i].take() {
            node.kill();
        }
    }

    /// Node `i`, which must be running.
    pub fn node(&mut self, i: usize) -> &mut NodeProcess {
        self.nodes[i].as_mut().expect("the node is running")
    }

    /// The running nodes.
    pub fn running(&mut self) -> impl Iterator<Item = &mut NodeProcess> {
        self.nodes.iter_mut().flatten()
    }

    /// The name of node `i`.
    pub fn name_of(&self, i: usize) -> &str {
        &self.names[i]
    }

    /// Waits until every running node's Replicator reaches every other running one.
    pub fn wait_connected(&mut self) {
        let running = self.nodes.iter().flatten().count();
        for node in self.nodes.iter_mut().flatten() {
            eventually_blocking("every peer reachable", Duration::from_secs(30), || {
                node.must("peers").as_array().map_or(0, Vec::len) == running - 1
            });
        }
    }

    /// Asks every running node `command` until all answer the same, within
    /// `bound`; returns the common answer.
    pub fn converged(&mut self, command: &str, bound: Duration) -> Value {
        let mut answers = Vec::new();
        eventually_blocking(&format!("all nodes agree on {command:?}"), bound, || {
            answers = self.running().map(|node| node.must(command)).collect();
            answers.iter().all(|answer| answer == &answers[0])
        });
        answers.swap_remove(0)
    }
}

impl Drop for LoopbackCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
        if let Some(base) = &self.data {
            let _ = std::fs::remove_dir_all(base);
        }
        let _ = std::fs::remove_dir_all(&self.scratch);
    }
}

/// What a node's background writer (`write-background`) logged: which writes
/// it attempted, which were acknowledged, which failed and why.
#[derive(Debug, Default)]
pub struct WriterLog {
    /// Writes started.
    pub attempted: BTreeSet<u64>,
    /// Writes acknowledged at their consistency level.
    pub acked: BTreeSet<u64>,
    /// Writes that returned an error, with it.
    pub failed: BTreeMap<u64, String>,
    /// Whether the writer finished.
    pub done: bool,
}

impl WriterLog {
    /// Reads the log at `path` (empty if there is none yet).
    pub fn read(path: &Path) -> Self {
        let mut log = Self::default();
        let text = std::fs::read_to_string(path).unwrap_or_default();
        for line in text.lines() {
            let mut words = line.splitn(3, ' ');
            let (kind, n) = (words.next(), words.next().and_then(|n| n.parse().ok()));
            match (kind, n) {
                (Some("attempt"), Some(n)) => {
                    log.attempted.insert(n);
                }
                (Some("ack"), Some(n)) => {
                    log.acked.insert(n);
                }
                (Some("fail"), Some(n)) => {
                    log.failed
                        .insert(n, words.next().unwrap_or_default().to_string());
                }
                (Some("done"), _) => log.done = true,
                _ => {}
            }
        }
        log
    }
}

/// The `node` binary built next to the running program, for the benchmark
/// programs of this crate; panics with the build command if it is missing.
pub fn sibling_node_binary() -> PathBuf {
    let binary = std::env::current_exe()
        .expect("this program's path")
        .with_file_name("node");
    assert!(
        binary.exists(),
        "{} is missing: run `cargo build --release -p multi-node-tests` first",
        binary.display()
    );
    binary
}

/// The `p` quantile (0 to 1) of non-empty sorted samples, nearest rank.
pub fn percentile(sorted: &[u64], p: f64) -> u64 {
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// CPU time, in nanoseconds, that the live threads of process `pid` have run
/// so far (the kernel's scheduler counters, finer than clock ticks); threads
/// that ended no longer count.
pub fn cpu_nanos(pid: u32) -> u64 {
    let Ok(threads) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    threads
        .filter_map(|thread| {
            let schedstat = std::fs::read_to_string(thread.ok()?.path().join("schedstat")).ok()?;
            schedstat.split_whitespace().next()?.parse::<u64>().ok()
        })
        .sum()
}

/// TCP payload bytes sent and received so far over the open connections of
/// process `pid`, from the kernel's socket counters (`ss`); connections that
/// closed no longer count.
pub fn socket_bytes(pid: u32) -> (u64, u64) {
    let output = Command::new("ss")
        .args(["-tinpH", "state", "established"])
        .output()
        .unwrap_or_else(|err| panic!("cannot run ss: {err}"));
    let text = String::from_utf8_lossy(&output.stdout);
    let owner = format!("pid={pid},");
    let (mut sent, mut received) = (0, 0);
    let mut ours = false;
    for line in text.lines() {
        // A socket's first line names its process; the indented next line
        // holds its counters.
        if !line.starts_with(char::is_whitespace) {
            ours = line.contains(&owner);
            continue;
        }
        if !ours {
            continue;
        }
        for field in line.split_whitespace() {
            let counter = |name: &str| -> Option<u64> { field.strip_prefix(name)?.parse().ok() };
            if let Some(bytes) = counter("bytes_sent:") {
                sent += bytes;
            }
            if let Some(bytes) = counter("bytes_received:") {
                received += bytes;
            }
        }
    }
    (sent, received)
}
