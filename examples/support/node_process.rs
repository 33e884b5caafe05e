//! The node processes of the examples: each example runs itself again as
//! `--node INDEX PORTS...` and talks to its children over stdin and stdout.

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A node process talking to the orchestrator over stdin and stdout.
pub struct NodeProcess {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
}

impl NodeProcess {
    /// Starts this program again as node `index` of a cluster on `ports`,
    /// with `extra` arguments.
    fn start(index: usize, ports: &[u16], extra: &[String]) -> Self {
        let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
        let mut command = Command::new(std::env::current_exe().expect("this program's path"));
        command.args(["--node", &index.to_string(), &ports.join(",")]);
        command.args(extra);
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("a node process starts");
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = child.stdout.take().expect("piped stdout");
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            stdin,
            lines,
        }
    }

    /// Sends one line.
    pub fn send(&mut self, command: &str) {
        writeln!(self.stdin, "{command}").expect("the node takes commands");
        self.stdin.flush().expect("the node takes commands");
    }

    /// The next line, within 30 s.
    pub fn answer(&mut self) -> String {
        self.lines
            .recv_timeout(Duration::from_secs(30))
            .expect("the node answers within 30 s")
    }

    /// Sends one line and returns the answer.
    pub fn ask(&mut self, command: &str) -> String {
        self.send(command);
        self.answer()
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port that was free a moment ago.
fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("an ephemeral port");
    listener.local_addr().expect("its address").port()
}

/// Starts `count` node processes of this program on free ports of
/// 127.0.0.1, node `i` with `arguments(i)`, and waits until each has said
/// `ready` and then answers `peers` with the number of the others (30 s at
/// most).
pub fn start_connected(count: usize, arguments: impl Fn(usize) -> Vec<String>) -> Vec<NodeProcess> {
    let ports: Vec<u16> = (0..count).map(|_| free_port()).collect();
    let mut nodes: Vec<NodeProcess> = (0..count)
        .map(|i| NodeProcess::start(i, &ports, &arguments(i)))
        .collect();
    for node in &mut nodes {
        assert_eq!(node.answer(), "ready");
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while !nodes
        .iter_mut()
        .all(|node| node.ask("peers") == (count - 1).to_string())
    {
        assert!(
            Instant::now() < deadline,
            "the nodes did not find each other"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    nodes
}
