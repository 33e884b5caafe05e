//! The node processes of the examples: each example runs itself again as
//! `--node INDEX PORTS...` and talks to its children over stdin and stdout.

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// A node process talking to the orchestrator over stdin and stdout.
pub struct NodeProcess {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
}

impl NodeProcess {
    /// Starts this program again as node `index` of a cluster on `ports`,
    /// with `extra` arguments.
    pub fn start(index: usize, ports: &[u16], extra: &[&str]) -> Self {
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
pub fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("an ephemeral port");
    listener.local_addr().expect("its address").port()
}
