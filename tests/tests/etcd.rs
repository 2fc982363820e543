//! skiff on a real etcd (Debian's etcd-server, one member per test on loopback): the
//! store conformance suite against the etcd backend, watches that outlive an etcd
//! restart, and agents that keep their state in etcd.

use std::time::Duration;

use futures::StreamExt;
use skiff::store::etcd::EtcdStore;
use skiff::store::{Store, Txn};
use skiff_tests::etcd::EtcdServer;

/// A fresh etcd and a store connected to it.
async fn etcd_store() -> (EtcdStore, EtcdServer) {
    let server = tokio::task::spawn_blocking(EtcdServer::start)
        .await
        .expect("start etcd");
    let store = EtcdStore::connect(&server.config())
        .await
        .expect("connect to etcd");
    (store, server)
}

mod conformance {
    skiff::store_conformance_tests!(super::etcd_store());
}

const TIMEOUT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_resumes_across_an_etcd_restart_without_gap_or_duplicate() {
    let (store, mut server) = etcd_store().await;
    let put = |key: String| {
        let store = store.clone();
        async move { store.txn(Txn::new().put(key, "v")).await.expect("put") }
    };
    let mut expected = Vec::new();
    for i in 0..3 {
        expected.push(put(format!("/resume/{i}")).await);
    }
    let mut stream = store.watch("/resume/", expected[0]).await.expect("watch");
    let mut seen = Vec::new();
    for _ in 0..2 {
        let event = tokio::time::timeout(TIMEOUT, stream.next()).await;
        seen.push(
            event
                .expect("an event")
                .expect("open")
                .expect("ok")
                .kv
                .mod_revision,
        );
    }
    tokio::task::block_in_place(|| server.kill_and_restart());
    for i in 3..6 {
        expected.push(put(format!("/resume/{i}")).await);
    }
    while seen.len() < expected.len() {
        let event = tokio::time::timeout(TIMEOUT, stream.next()).await;
        seen.push(
            event
                .expect("an event")
                .expect("open")
                .expect("ok")
                .kv
                .mod_revision,
        );
    }
    assert_eq!(seen, expected);
}
