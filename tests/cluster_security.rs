//! Who gets into a cluster of `ClusterNode`s: nodes over TLS with
//! certificates of the cluster's authority, not a node with another
//! authority's certificate, not a node without TLS, and not a node with
//! another cookie.

use std::sync::Arc;
use std::time::Duration;

use ractor_replicated::cluster::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use ractor_replicated::cluster::rustls::server::WebPkiClientVerifier;
use ractor_replicated::cluster::rustls::{ClientConfig, RootCertStore, ServerConfig};
use ractor_replicated::cluster::{ClusterConfig, ClusterNode, TlsConfig};
use ractor_replicated::ddata::{
    DistributedData, Key, ReadConsistency, ReplicatorConfig, WriteConsistency,
};
use ractor_replicated::discovery::SessionDiscovery;
use ractor_replicated::GCounter;
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyPair,
};
use test_support::{eventually, free_port, COOKIE};

const BOUND: Duration = Duration::from_secs(15);
/// The name every node's certificate is valid for.
const CLUSTER_NAME: &str = "cluster.test";

/// A certificate authority.
struct Authority {
    certificate: Certificate,
    key: KeyPair,
}

impl Authority {
    fn new() -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let certificate = params.self_signed(&key).unwrap();
        Self { certificate, key }
    }

    /// TLS settings of a node with a certificate of this authority, trusting
    /// only this authority.
    fn node_tls(&self) -> TlsConfig {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec![CLUSTER_NAME.to_string()]).unwrap();
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let certificate = params
            .signed_by(&key, &self.certificate, &self.key)
            .unwrap();
        let chain: Vec<CertificateDer<'static>> = vec![certificate.der().clone()];
        let private = PrivateKeyDer::try_from(key.serialize_der()).unwrap();
        let mut roots = RootCertStore::empty();
        roots.add(self.certificate.der().clone()).unwrap();
        let roots = Arc::new(roots);
        let verifier = WebPkiClientVerifier::builder(roots.clone())
            .build()
            .unwrap();
        let server = ServerConfig::builder()
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), private.clone_key())
            .unwrap();
        let client = ClientConfig::builder()
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, private)
            .unwrap();
        TlsConfig::new(Arc::new(server), Arc::new(client), CLUSTER_NAME).unwrap()
    }
}

fn node_config(name: &str, port: u16, seed: u16) -> ClusterConfig {
    ClusterConfig::new(name, "127.0.0.1", port, COOKIE).with_seeds([format!("127.0.0.1:{seed}")])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_with_certificates_of_the_cluster_authority_connect_over_tls_and_replicate() {
    let authority = Authority::new();
    let (port_a, port_b) = (free_port(), free_port());
    let a = ClusterNode::start(node_config("tls-a", port_a, port_b).with_tls(authority.node_tls()))
        .await
        .unwrap();
    let b = ClusterNode::start(node_config("tls-b", port_b, port_a).with_tls(authority.node_tls()))
        .await
        .unwrap();
    eventually("both nodes connected over TLS", BOUND, || async {
        a.connected_peers().await == ["tls-b"] && b.connected_peers().await == ["tls-a"]
    })
    .await;

    // Data goes both ways through the encrypted sessions.
    let replicator = |node: &ClusterNode| {
        ReplicatorConfig::new(node.name())
            .with_discovery(SessionDiscovery::new(node.server().clone()))
    };
    let dd_a = DistributedData::start(replicator(&a)).await.unwrap();
    let dd_b = DistributedData::start(replicator(&b)).await.unwrap();
    eventually("the replicators see each other", BOUND, || async {
        dd_a.reachable_peers().await.is_ok_and(|p| p.len() == 1)
    })
    .await;
    let key: Key<GCounter> = Key::new("secret");
    let all = WriteConsistency::All {
        timeout: Duration::from_secs(5),
    };
    let written = dd_a
        .update(&key, all, |c, me| c.apply(c.increment(me, 7)))
        .await
        .unwrap();
    assert_eq!(written.acknowledged_by.len(), 2);
    let read = dd_b.get(&key, ReadConsistency::Local).await.unwrap();
    assert_eq!(read.map(|c| c.value()), Some(7));
    assert_eq!(a.connection_stats().tls_failed, 0);
    assert_eq!(b.connection_stats().tls_failed, 0);

    dd_a.stop().await;
    dd_b.stop().await;
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_another_authoritys_certificate_or_without_tls_is_refused() {
    let cluster = Authority::new();
    let stranger = Authority::new();
    let (port_a, port_b, port_c) = (free_port(), free_port(), free_port());
    let a = ClusterNode::start(
        ClusterConfig::new("member", "127.0.0.1", port_a, COOKIE).with_tls(cluster.node_tls()),
    )
    .await
    .unwrap();
    let impostor =
        ClusterNode::start(node_config("impostor", port_b, port_a).with_tls(stranger.node_tls()))
            .await
            .unwrap();
    let plain = ClusterNode::start(node_config("plain", port_c, port_a))
        .await
        .unwrap();
    // Both keep redialling; each attempt fails its handshake on both ends.
    eventually("several handshakes refused", BOUND, || async {
        a.connection_stats().tls_failed >= 4 && impostor.connection_stats().tls_failed >= 2
    })
    .await;
    assert!(a.connected_peers().await.is_empty());
    assert!(impostor.connected_peers().await.is_empty());
    assert!(plain.connected_peers().await.is_empty());
    assert_eq!(a.connection_stats().authenticated, 0);
    a.stop().await;
    impostor.stop().await;
    plain.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_another_cookie_never_authenticates_and_keeps_redialling() {
    let (port_a, port_b) = (free_port(), free_port());
    let a = ClusterNode::start(ClusterConfig::new("cookie-a", "127.0.0.1", port_a, COOKIE))
        .await
        .unwrap();
    let b = ClusterNode::start(
        ClusterConfig::new("cookie-b", "127.0.0.1", port_b, "another cookie")
            .with_seeds([format!("127.0.0.1:{port_a}")]),
    )
    .await
    .unwrap();
    eventually("several dials refused at authentication", BOUND, || async {
        b.connection_stats().dials >= 3 && a.connection_stats().accepted >= 3
    })
    .await;
    assert!(a.connected_peers().await.is_empty());
    assert!(b.connected_peers().await.is_empty());
    assert_eq!(a.connection_stats().authenticated, 0);
    assert_eq!(b.connection_stats().authenticated, 0);
    a.stop().await;
    b.stop().await;
}
