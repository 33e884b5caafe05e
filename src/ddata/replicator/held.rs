//! Messages for peers this node has no route to yet.
//!
//! A peer can message this node before discovery has found the way back to
//! it (its process-group entry arrives after its first message), and a route
//! can break (its proxy stops) with messages still to send. An answer such as
//! a `WriteAck` lost then makes the writer time out although the write
//! reached this node. So messages without a route wait here, bounded in
//! number of peers, bytes and age, until discovery finds the peer.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use crate::ddata::core::PeerName;
use crate::ddata::wire::PeerMessage;

/// Peers whose messages can wait at once; messages for more are dropped.
const MAX_PEERS: usize = 64;
/// Bytes (by [`PeerMessage::budget`]) that can wait for one peer; the oldest
/// go first beyond that.
const MAX_BYTES_PER_PEER: usize = 8 << 20;
/// Bytes that can wait for all peers together; beyond that new messages are
/// dropped.
const MAX_BYTES: usize = 32 << 20;
/// How long a message waits for its peer's route at most. Anti-entropy and
/// request resends cover what expires.
pub(crate) const MAX_AGE: Duration = Duration::from_secs(10);

#[derive(Default)]
struct Queue {
    messages: VecDeque<(Instant, usize, PeerMessage)>,
    bytes: usize,
}

/// Messages waiting for a route, per peer.
#[derive(Default)]
pub(crate) struct Held {
    queues: BTreeMap<PeerName, Queue>,
    bytes: usize,
}

impl Held {
    /// Keeps `message` for `peer` until [`take`](Self::take).
    pub(crate) fn hold(&mut self, peer: &str, message: PeerMessage, now: Instant) {
        if !self.queues.contains_key(peer) && self.queues.len() >= MAX_PEERS {
            drop_messages(peer, 1, "too many peers without a route");
            return;
        }
        let queue = self.queues.entry(peer.to_string()).or_default();
        let size = message.budget();
        let mut evicted = 0;
        while !queue.messages.is_empty() && queue.bytes + size > MAX_BYTES_PER_PEER {
            if let Some((_, bytes, _)) = queue.messages.pop_front() {
                queue.bytes -= bytes;
                self.bytes -= bytes;
                evicted += 1;
            }
        }
        if evicted > 0 {
            drop_messages(peer, evicted, "too many bytes waiting for one peer");
        }
        if self.bytes + size > MAX_BYTES {
            drop_messages(peer, 1, "too many bytes waiting for all peers");
        } else {
            queue.bytes += size;
            self.bytes += size;
            queue.messages.push_back((now, size, message));
        }
        self.queues.retain(|_, queue| !queue.messages.is_empty());
    }

    /// The messages waiting for `peer`, oldest first.
    pub(crate) fn take(&mut self, peer: &str) -> Vec<PeerMessage> {
        let Some(queue) = self.queues.remove(peer) else {
            return Vec::new();
        };
        self.bytes -= queue.bytes;
        queue.messages.into_iter().map(|(_, _, m)| m).collect()
    }

    /// Drops messages older than [`MAX_AGE`].
    pub(crate) fn expire(&mut self, now: Instant) {
        let mut expired = Vec::new();
        for (peer, queue) in &mut self.queues {
            let mut count = 0;
            while let Some((at, bytes, _)) = queue.messages.front() {
                if now.duration_since(*at) <= MAX_AGE {
                    break;
                }
                queue.bytes -= *bytes;
                self.bytes -= *bytes;
                queue.messages.pop_front();
                count += 1;
            }
            if count > 0 {
                expired.push((peer.clone(), count));
            }
        }
        self.queues.retain(|_, queue| !queue.messages.is_empty());
        for (peer, count) in expired {
            drop_messages(&peer, count, "no route within the waiting time");
        }
    }
}

fn drop_messages(peer: &str, count: u64, why: &str) {
    tracing::warn!(
        peer,
        count,
        why,
        "dropped messages for a peer without a route; anti-entropy will repair"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(request: u64) -> PeerMessage {
        PeerMessage::WriteAck { request }
    }

    #[test]
    fn messages_wait_in_order_until_taken() {
        let mut held = Held::default();
        let now = Instant::now();
        held.hold("b", ack(1), now);
        held.hold("c", ack(2), now);
        held.hold("b", ack(3), now);
        assert_eq!(held.take("b"), [ack(1), ack(3)]);
        assert!(held.take("b").is_empty());
        assert_eq!(held.take("c"), [ack(2)]);
    }

    #[test]
    fn old_messages_expire_and_new_ones_stay() {
        let mut held = Held::default();
        let start = Instant::now();
        held.hold("b", ack(1), start);
        held.hold("b", ack(2), start + MAX_AGE);
        held.expire(start + MAX_AGE + Duration::from_millis(1));
        assert_eq!(held.take("b"), [ack(2)]);
    }

    #[test]
    fn bytes_and_peers_are_bounded() {
        let mut held = Held::default();
        let now = Instant::now();
        let big = PeerMessage::Request {
            keys: vec!["k".repeat(1 << 20)],
            buckets: Vec::new(),
        };
        for _ in 0..20 {
            held.hold("b", big.clone(), now);
        }
        let kept = held.take("b").len();
        assert!(
            kept * big.budget() <= MAX_BYTES_PER_PEER && kept >= 7,
            "{kept}"
        );
        for peer in 0..MAX_PEERS + 10 {
            held.hold(&format!("p{peer}"), ack(0), now);
        }
        assert_eq!(held.queues.len(), MAX_PEERS);
    }
}
