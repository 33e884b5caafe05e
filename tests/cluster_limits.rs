//! What a connection that has not authenticated can cost a `ClusterNode`: a
//! bounded number of them at once, a bounded time each, and no large frame
//! read before authentication; and the name probe that lets a node tell which
//! node a seed address reaches.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use ractor::Actor;
use ractor_cluster::NodeServer;
use ractor_replicated::cluster::{ClusterConfig, ClusterNode, NAME_PROBE};
use test_support::{eventually, free_port, COOKIE};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Whether the node closes `stream` within `bound` (reads end or fail).
async fn closed_within(stream: &mut TcpStream, bound: Duration) -> bool {
    let mut buffer = [0u8; 1024];
    let deadline = Instant::now() + bound;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buffer)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_connections_are_capped_held_to_small_frames_and_closed_in_time() {
    let port = free_port();
    let mut config = ClusterConfig::new("guarded", "127.0.0.1", port, COOKIE);
    config.max_unauthenticated = 4;
    config.auth_timeout = Duration::from_secs(2);
    let node = ClusterNode::start(config).await.unwrap();

    // Each announces a frame of 15 MiB and sends as much of it as the node
    // takes. A node that read it would buffer 15 MiB per connection; this
    // one reads nothing past the header, so the kernel's buffers fill and
    // the writes stop until the node closes the connection.
    let mut attackers = Vec::new();
    for _ in 0..10 {
        let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port))
            .await
            .unwrap();
        let _ = stream.write_all(&(15u64 << 20).to_be_bytes()).await;
        attackers.push(stream);
    }
    let payload = vec![0u8; 15 << 20];
    for stream in &mut attackers[..4] {
        let sent =
            tokio::time::timeout(Duration::from_millis(500), stream.write_all(&payload)).await;
        assert!(
            !matches!(sent, Ok(Ok(()))),
            "the node read a frame of an unauthenticated peer"
        );
    }
    for stream in &mut attackers {
        assert!(closed_within(stream, Duration::from_secs(10)).await);
    }
    let stats = node.connection_stats();
    assert_eq!(stats.accepted, 4, "{stats:?}");
    assert_eq!(stats.refused, 6, "{stats:?}");
    assert_eq!(stats.timed_out, 4, "{stats:?}");

    // The node still takes a well-behaved peer.
    let peer = NodeServer::new(
        free_port(),
        COOKIE.into(),
        "well-behaved".into(),
        "127.0.0.1".into(),
        None,
        None,
    );
    let (peer, _) = Actor::spawn(None, peer, ()).await.unwrap();
    ractor_cluster::client_connect(&peer, (Ipv4Addr::LOCALHOST, port))
        .await
        .unwrap();
    eventually("the peer is connected", Duration::from_secs(10), || async {
        node.connected_peers().await == ["well-behaved"]
    })
    .await;
    let _ = peer.stop_and_wait(None, None).await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_probe_is_answered_with_the_node_name() {
    let port = free_port();
    let node = ClusterNode::start(ClusterConfig::new("probed", "127.0.0.1", port, COOKIE))
        .await
        .unwrap();
    let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port))
        .await
        .unwrap();
    stream.write_all(NAME_PROBE).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    assert_eq!(answer, "probed\n");
    assert_eq!(node.connection_stats().authenticated, 0);
    node.stop().await;
}
