//! The tests every store backend must pass, as a macro that expands to one test per case.
//!
//! Each case is a `pub async fn(store: &dyn Store)` here;
//! [`store_conformance_tests!`](crate::store_conformance_tests) turns them into tests
//! for one backend:
//!
//! ```text
//! skiff::store_conformance_tests!(async {
//!     let dir = tempfile::tempdir().unwrap();
//!     let store = EmbeddedStore::open(&dir.path().join("store.redb")).unwrap();
//!     (store, dir)
//! });
//! ```
//!
//! The argument is an expression, evaluated once per test, of a future resolving to
//! `(store, guard)`: `store` implements [`Store`]; `guard` is kept alive until the test
//! ends (a temp dir, a server process) and dropped after it. Each test expands to a
//! multi-threaded `#[tokio::test]`, so the caller depends on tokio with `macros`.
//!
//! The factory should give each test a fresh store. Each case writes only under its
//! own key prefix (`/conformance/<case>/`) and judges revisions against the ones it
//! wrote, so the cases also pass on a store that already holds other data as long as
//! nothing else writes to it meanwhile (e.g. one server shared by tests run with
//! `--test-threads=1`); only `revision_starts_at_zero_and_counts_changes` needs an
//! empty store. Transactions stay under 128 ops and values under 1.5 MiB, etcd's
//! default limits.

use std::time::Duration;

use futures::StreamExt;

use super::{Event, EventKind, KeyValue, Revision, Store, StoreError, Txn, WatchStream};

/// How long a case waits for an expected event before failing.
const EVENT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a case watches for an event that must not come. The watcher is then
/// waiting for the next change, so the write after it checks that writes wake it.
const QUIET_PERIOD: Duration = Duration::from_millis(200);

/// Expands to one test per conformance case; see the [module docs](crate::store::conformance).
#[macro_export]
macro_rules! store_conformance_tests {
    (@cases $factory:expr; $($case:ident),+ $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let (store, _guard) = $factory.await;
                $crate::store::conformance::$case(&store).await;
            }
        )+
    };
    ($factory:expr) => {
        $crate::store_conformance_tests!(@cases $factory;
            revision_starts_at_zero_and_counts_changes,
            get_of_a_missing_key_is_none,
            put_then_get,
            overwrite_keeps_create_revision,
            list_is_sorted_by_plain_byte_prefix,
            multi_op_txn_lands_at_one_revision,
            compare_and_swap_succeeds_at_the_current_revision,
            failed_compare_is_a_conflict_and_writes_nothing,
            create_only_conflicts_when_the_key_exists,
            delete_of_a_missing_key_changes_nothing,
            watch_from_zero_sees_only_later_changes,
            watch_replays_from_a_past_revision_then_continues_live,
            watch_from_a_future_revision_waits_for_it,
            watch_filters_by_prefix,
            events_carry_the_previous_value,
            txn_events_share_a_revision_and_keep_op_order,
            resumed_watch_has_no_gap_and_no_duplicate,
            watch_from_before_compaction_fails,
            watch_from_the_compaction_point_replays,
            compaction_keeps_current_values,
            compacting_backwards_is_a_no_op,
            compact_to_a_future_revision_fails,
            concurrent_compare_and_swap_loses_no_update,
            thousand_keys_are_listed,
            one_mib_value_round_trips,
            slow_watcher_gets_every_change_in_order,
        );
    };
}

fn prefix(case: &str) -> String {
    format!("/conformance/{case}/")
}

async fn put(store: &dyn Store, key: &str, value: &str) -> Revision {
    store
        .txn(Txn::new().put(key, value))
        .await
        .unwrap_or_else(|error| panic!("put {key}: {error}"))
}

async fn get(store: &dyn Store, key: &str) -> Option<KeyValue> {
    store
        .get(key)
        .await
        .unwrap_or_else(|error| panic!("get {key}: {error}"))
        .0
}

async fn revision(store: &dyn Store) -> Revision {
    store.revision().await.expect("revision")
}

async fn watch(store: &dyn Store, prefix: &str, from: Revision) -> WatchStream {
    store
        .watch(prefix, from)
        .await
        .unwrap_or_else(|error| panic!("watch {prefix} from {from}: {error}"))
}

async fn next_event(stream: &mut WatchStream) -> Event {
    match tokio::time::timeout(EVENT_TIMEOUT, stream.next()).await {
        Err(_) => panic!("no event within {EVENT_TIMEOUT:?}"),
        Ok(None) => panic!("the watch ended"),
        Ok(Some(Err(error))) => panic!("the watch failed: {error}"),
        Ok(Some(Ok(event))) => event,
    }
}

async fn assert_no_event(stream: &mut WatchStream) {
    if let Ok(item) = tokio::time::timeout(QUIET_PERIOD, stream.next()).await {
        panic!("expected no event, got {item:?}");
    }
}

/// The kind, key and revision of the next event.
async fn next_change(stream: &mut WatchStream) -> (EventKind, String, Revision) {
    let event = next_event(stream).await;
    (event.kind, event.kv.key, event.kv.mod_revision)
}

fn put_change(key: &str, revision: Revision) -> (EventKind, String, Revision) {
    (EventKind::Put, key.to_owned(), revision)
}

fn conflict(result: Result<Revision, StoreError>) -> (String, Revision, Revision) {
    match result {
        Err(StoreError::Conflict {
            key,
            expected,
            actual,
        }) => (key, expected, actual),
        other => panic!("expected a conflict, got {other:?}"),
    }
}

fn compacted_error(result: Result<WatchStream, StoreError>) -> (Revision, Revision) {
    match result {
        Err(StoreError::Compacted {
            requested,
            compacted,
        }) => (requested, compacted),
        Err(other) => panic!("expected a compaction error, got {other}"),
        Ok(_) => panic!("expected a compaction error, got a watch"),
    }
}

pub async fn revision_starts_at_zero_and_counts_changes(store: &dyn Store) {
    let p = prefix("revision");
    assert_eq!(revision(store).await, 0);
    assert_eq!(store.compacted().await.expect("compacted"), 0);
    assert_eq!(put(store, &format!("{p}a"), "1").await, 1);
    let two_keys = Txn::new()
        .put(format!("{p}b"), "2")
        .put(format!("{p}c"), "3");
    assert_eq!(store.txn(two_keys).await.expect("txn"), 2);
    assert_eq!(revision(store).await, 2);
    assert_eq!(put(store, &format!("{p}a"), "4").await, 3);
    assert_eq!(revision(store).await, 3);
}

pub async fn get_of_a_missing_key_is_none(store: &dyn Store) {
    let p = prefix("get-missing");
    let written = put(store, &format!("{p}present"), "x").await;
    let (kv, read_at) = store.get(&format!("{p}absent")).await.expect("get");
    assert_eq!(kv, None);
    assert_eq!(read_at, written);
}

pub async fn put_then_get(store: &dyn Store) {
    let key = format!("{}key", prefix("put-get"));
    let written = put(store, &key, "value").await;
    let (kv, read_at) = store.get(&key).await.expect("get");
    assert_eq!(
        kv,
        Some(KeyValue {
            key: key.clone(),
            value: b"value".to_vec(),
            create_revision: written,
            mod_revision: written,
            version: 1,
        })
    );
    assert_eq!(read_at, written);
}

pub async fn overwrite_keeps_create_revision(store: &dyn Store) {
    let key = format!("{}key", prefix("overwrite"));
    let created = put(store, &key, "one").await;
    let second = put(store, &key, "two").await;
    assert_eq!(second, created + 1);
    let third = put(store, &key, "three").await;
    let kv = get(store, &key).await.expect("the key exists");
    assert_eq!(kv.value, b"three");
    assert_eq!(kv.create_revision, created);
    assert_eq!(kv.mod_revision, third);
    assert_eq!(kv.version, 3);
}

pub async fn list_is_sorted_by_plain_byte_prefix(store: &dyn Store) {
    let p = prefix("list");
    let other = prefix("list-other");
    let keys = ["a/bc", "b", "a/b/c", "a/b", "ab", "a/a"];
    let mut txn = Txn::new().put(format!("{other}a/b"), "elsewhere");
    for key in keys {
        txn = txn.put(format!("{p}{key}"), key);
    }
    let written = store.txn(txn).await.expect("txn");

    let (all, read_at) = store.list(&p).await.expect("list");
    let mut expected: Vec<String> = keys.iter().map(|key| format!("{p}{key}")).collect();
    expected.sort();
    assert_eq!(
        all.iter().map(|kv| kv.key.clone()).collect::<Vec<_>>(),
        expected
    );
    assert_eq!(read_at, written);
    assert!(all.iter().all(|kv| kv.mod_revision == written));

    // A prefix is a plain byte prefix: "a/b" matches "a/bc" too, not "a/a" or "ab".
    let (under, _) = store.list(&format!("{p}a/b")).await.expect("list");
    let under: Vec<(String, Vec<u8>)> = under.into_iter().map(|kv| (kv.key, kv.value)).collect();
    assert_eq!(
        under,
        vec![
            (format!("{p}a/b"), b"a/b".to_vec()),
            (format!("{p}a/b/c"), b"a/b/c".to_vec()),
            (format!("{p}a/bc"), b"a/bc".to_vec()),
        ]
    );
    let (none, _) = store.list(&format!("{p}zz")).await.expect("list");
    assert_eq!(none, Vec::new());
}

pub async fn multi_op_txn_lands_at_one_revision(store: &dyn Store) {
    let p = prefix("multi-op");
    let before = put(store, &format!("{p}c"), "doomed").await;
    let txn = Txn::new()
        .put(format!("{p}a"), "1")
        .put(format!("{p}b"), "2")
        .delete(format!("{p}c"));
    let written = store.txn(txn).await.expect("txn");
    assert_eq!(written, before + 1);
    assert_eq!(revision(store).await, written);
    for key in ["a", "b"] {
        let kv = get(store, &format!("{p}{key}")).await.expect("written");
        assert_eq!((kv.create_revision, kv.mod_revision), (written, written));
    }
    assert_eq!(get(store, &format!("{p}c")).await, None);
}

pub async fn compare_and_swap_succeeds_at_the_current_revision(store: &dyn Store) {
    let p = prefix("cas");
    let (key, other) = (format!("{p}key"), format!("{p}other"));
    let created = put(store, &key, "one").await;
    let other_at = put(store, &other, "x").await;
    let swap = Txn::new()
        .when(&key, created)
        .when(&other, other_at)
        .put(&key, "two");
    let swapped = store.txn(swap).await.expect("the compares hold");
    let kv = get(store, &key).await.expect("the key exists");
    assert_eq!(kv.value, b"two");
    assert_eq!(kv.mod_revision, swapped);
}

pub async fn failed_compare_is_a_conflict_and_writes_nothing(store: &dyn Store) {
    let p = prefix("conflict");
    let (a, b, c) = (format!("{p}a"), format!("{p}b"), format!("{p}c"));
    let a_at = put(store, &a, "a").await;
    let b_at = put(store, &b, "b").await;
    let txn = Txn::new()
        .when(&a, a_at)
        .when(&b, a_at)
        .when(&a, b_at)
        .put(&a, "changed")
        .put(&c, "new")
        .delete(&b);
    // The first failing compare is reported.
    assert_eq!(conflict(store.txn(txn).await), (b.clone(), a_at, b_at));
    assert_eq!(revision(store).await, b_at);
    let a_now = get(store, &a).await.expect("a is untouched");
    assert_eq!((a_now.value, a_now.mod_revision), (b"a".to_vec(), a_at));
    assert!(get(store, &b).await.is_some(), "b must not be deleted");
    assert_eq!(get(store, &c).await, None);
}

pub async fn create_only_conflicts_when_the_key_exists(store: &dyn Store) {
    let key = format!("{}key", prefix("create-only"));
    let create = || Txn::new().when(&key, 0).put(&key, "first");
    let created = store.txn(create()).await.expect("the key is absent");
    let again = store
        .txn(Txn::new().when(&key, 0).put(&key, "second"))
        .await;
    assert_eq!(conflict(again), (key.clone(), 0, created));
    assert_eq!(get(store, &key).await.expect("exists").value, b"first");

    store.txn(Txn::new().delete(&key)).await.expect("delete");
    let recreated = store.txn(create()).await.expect("absent again");
    let kv = get(store, &key).await.expect("exists");
    assert_eq!((kv.create_revision, kv.version), (recreated, 1));
}

pub async fn delete_of_a_missing_key_changes_nothing(store: &dyn Store) {
    let p = prefix("delete-missing");
    let marker = format!("{p}marker");
    let before = put(store, &marker, "1").await;
    let mut stream = watch(store, &p, before + 1).await;
    let unchanged = store
        .txn(Txn::new().delete(format!("{p}absent")))
        .await
        .expect("deleting an absent key is not an error");
    assert_eq!(unchanged, before);
    assert_eq!(revision(store).await, before);
    assert_no_event(&mut stream).await;
    // The next event is this put, at the next revision.
    let after = put(store, &marker, "2").await;
    assert_eq!(after, before + 1);
    assert_eq!(next_change(&mut stream).await, put_change(&marker, after));
}

pub async fn watch_from_zero_sees_only_later_changes(store: &dyn Store) {
    let p = prefix("watch-zero");
    put(store, &format!("{p}old"), "old").await;
    let mut stream = watch(store, &p, 0).await;
    assert_no_event(&mut stream).await;
    let new = format!("{p}new");
    let written = put(store, &new, "new").await;
    assert_eq!(next_change(&mut stream).await, put_change(&new, written));
}

pub async fn watch_replays_from_a_past_revision_then_continues_live(store: &dyn Store) {
    let p = prefix("watch-replay");
    let keys: Vec<String> = (1..=4).map(|i| format!("{p}k{i}")).collect();
    let mut revisions = Vec::new();
    for key in &keys[..3] {
        revisions.push(put(store, key, "v").await);
    }
    let mut stream = watch(store, &p, revisions[1]).await;
    assert_eq!(
        next_change(&mut stream).await,
        put_change(&keys[1], revisions[1])
    );
    assert_eq!(
        next_change(&mut stream).await,
        put_change(&keys[2], revisions[2])
    );
    assert_no_event(&mut stream).await;
    let live = put(store, &keys[3], "v").await;
    assert_eq!(next_change(&mut stream).await, put_change(&keys[3], live));
}

pub async fn watch_from_a_future_revision_waits_for_it(store: &dyn Store) {
    let p = prefix("watch-future");
    let now = put(store, &format!("{p}k0"), "v").await;
    let mut stream = watch(store, &p, now + 3).await;
    for i in 1..=2 {
        put(store, &format!("{p}k{i}"), "v").await;
    }
    assert_no_event(&mut stream).await;
    put(store, &format!("{p}k3"), "v").await;
    assert_eq!(
        next_change(&mut stream).await,
        put_change(&format!("{p}k3"), now + 3)
    );
}

pub async fn watch_filters_by_prefix(store: &dyn Store) {
    let p = prefix("watch-prefix");
    let watched = format!("{p}in/");
    let mut stream = watch(store, &watched, 0).await;
    put(store, &format!("{p}out/x"), "v").await;
    assert_no_event(&mut stream).await;
    let first = put(store, &format!("{watched}y"), "v").await;
    put(store, &format!("{p}inside"), "v").await;
    let second = put(store, &format!("{watched}z"), "v").await;
    assert_eq!(
        next_change(&mut stream).await,
        put_change(&format!("{watched}y"), first)
    );
    assert_eq!(
        next_change(&mut stream).await,
        put_change(&format!("{watched}z"), second)
    );
}

pub async fn events_carry_the_previous_value(store: &dyn Store) {
    let key = format!("{}key", prefix("prev-kv"));
    let created = put(store, &key, "one").await;
    let mut stream = watch(store, &key, created).await;
    let overwritten = put(store, &key, "two").await;
    let deleted = store.txn(Txn::new().delete(&key)).await.expect("delete");

    let create = next_event(&mut stream).await;
    assert_eq!((create.kind, create.prev_kv), (EventKind::Put, None));
    let first = KeyValue {
        key: key.clone(),
        value: b"one".to_vec(),
        create_revision: created,
        mod_revision: created,
        version: 1,
    };
    assert_eq!(create.kv, first);

    let overwrite = next_event(&mut stream).await;
    assert_eq!(overwrite.kind, EventKind::Put);
    assert_eq!(overwrite.prev_kv, Some(first));
    let second = KeyValue {
        key: key.clone(),
        value: b"two".to_vec(),
        create_revision: created,
        mod_revision: overwritten,
        version: 2,
    };
    assert_eq!(overwrite.kv, second);

    let delete = next_event(&mut stream).await;
    assert_eq!(delete.kind, EventKind::Delete);
    assert_eq!(
        delete.kv,
        KeyValue {
            key: key.clone(),
            value: Vec::new(),
            create_revision: 0,
            mod_revision: deleted,
            version: 0,
        }
    );
    assert_eq!(delete.prev_kv, Some(second));
}

pub async fn txn_events_share_a_revision_and_keep_op_order(store: &dyn Store) {
    let p = prefix("txn-events");
    put(store, &format!("{p}c"), "doomed").await;
    let mut stream = watch(store, &p, 0).await;
    // Deliberately not in key order.
    let txn = Txn::new()
        .put(format!("{p}d"), "1")
        .put(format!("{p}a"), "2")
        .delete(format!("{p}c"))
        .put(format!("{p}b"), "3");
    let written = store.txn(txn).await.expect("txn");
    let mut changes = Vec::new();
    for _ in 0..4 {
        changes.push(next_change(&mut stream).await);
    }
    assert_eq!(
        changes,
        vec![
            put_change(&format!("{p}d"), written),
            put_change(&format!("{p}a"), written),
            (EventKind::Delete, format!("{p}c"), written),
            put_change(&format!("{p}b"), written),
        ]
    );
}

pub async fn resumed_watch_has_no_gap_and_no_duplicate(store: &dyn Store) {
    let p = prefix("resume");
    let key = |i: usize| format!("{p}k{i:02}");
    let mut written = Vec::new();
    for i in 0..10 {
        written.push(put_change(&key(i), put(store, &key(i), "v").await));
    }
    let mut first = watch(store, &p, written[0].2).await;
    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.push(next_change(&mut first).await);
    }
    drop(first);
    for i in 10..15 {
        written.push(put_change(&key(i), put(store, &key(i), "v").await));
    }
    let last_seen = seen.last().expect("four events").2;
    let mut resumed = watch(store, &p, last_seen + 1).await;
    while seen.len() < written.len() {
        seen.push(next_change(&mut resumed).await);
    }
    assert_eq!(seen, written);
}

/// Five puts under `p`, their revisions, then a compaction to the third.
async fn five_puts_compacted_at_the_third(store: &dyn Store, p: &str) -> Vec<Revision> {
    let mut revisions = Vec::new();
    for i in 0..5 {
        revisions.push(put(store, &format!("{p}k{i}"), "v").await);
    }
    store.compact(revisions[2]).await.expect("compact");
    assert_eq!(store.compacted().await.expect("compacted"), revisions[2]);
    revisions
}

pub async fn watch_from_before_compaction_fails(store: &dyn Store) {
    let p = prefix("compaction-before");
    let revisions = five_puts_compacted_at_the_third(store, &p).await;
    assert_eq!(
        compacted_error(store.watch(&p, revisions[1]).await),
        (revisions[1], revisions[2])
    );
}

pub async fn watch_from_the_compaction_point_replays(store: &dyn Store) {
    let p = prefix("compaction-point");
    let revisions = five_puts_compacted_at_the_third(store, &p).await;
    let mut stream = watch(store, &p, revisions[2]).await;
    for (i, revision) in revisions.iter().enumerate().skip(2) {
        assert_eq!(
            next_change(&mut stream).await,
            put_change(&format!("{p}k{i}"), *revision)
        );
    }
}

pub async fn compaction_keeps_current_values(store: &dyn Store) {
    let p = prefix("compaction-values");
    let (a, b, c) = (format!("{p}a"), format!("{p}b"), format!("{p}c"));
    put(store, &a, "a1").await;
    put(store, &b, "b1").await;
    put(store, &a, "a2").await;
    put(store, &c, "c1").await;
    store.txn(Txn::new().delete(&b)).await.expect("delete");
    let (before, at) = store.list(&p).await.expect("list");
    store.compact(at).await.expect("compact");
    let (after, _) = store.list(&p).await.expect("list");
    assert_eq!(after, before);
    let values: Vec<&[u8]> = after.iter().map(|kv| kv.value.as_slice()).collect();
    assert_eq!(values, [b"a2".as_slice(), b"c1"]);
}

pub async fn compacting_backwards_is_a_no_op(store: &dyn Store) {
    let p = prefix("compaction-backwards");
    let revisions = five_puts_compacted_at_the_third(store, &p).await;
    store
        .compact(revisions[1])
        .await
        .expect("compacting to an older revision is not an error");
    store
        .compact(revisions[2])
        .await
        .expect("compacting to the same revision is not an error");
    assert_eq!(store.compacted().await.expect("compacted"), revisions[2]);
    assert_eq!(
        compacted_error(store.watch(&p, revisions[1]).await),
        (revisions[1], revisions[2])
    );
}

pub async fn compact_to_a_future_revision_fails(store: &dyn Store) {
    let p = prefix("compaction-future");
    let now = put(store, &format!("{p}k"), "v").await;
    let compacted = store.compacted().await.expect("compacted");
    match store.compact(now + 1).await {
        Err(StoreError::FutureRevision { requested, current }) => {
            assert_eq!((requested, current), (now + 1, now));
        }
        other => panic!("expected a future-revision error, got {other:?}"),
    }
    assert_eq!(store.compacted().await.expect("compacted"), compacted);
}

pub async fn concurrent_compare_and_swap_loses_no_update(store: &dyn Store) {
    const TASKS: u64 = 8;
    const INCREMENTS: u64 = 25;
    let counter = format!("{}counter", prefix("concurrent-cas"));
    let increment_many = || async {
        for _ in 0..INCREMENTS {
            loop {
                let current = get(store, &counter).await;
                let (value, at) = current.map_or((0, 0), |kv| {
                    let text = String::from_utf8(kv.value).expect("a number");
                    (text.parse::<u64>().expect("a number"), kv.mod_revision)
                });
                let swap = Txn::new()
                    .when(&counter, at)
                    .put(&counter, (value + 1).to_string());
                match store.txn(swap).await {
                    Ok(_) => break,
                    Err(StoreError::Conflict { .. }) => continue,
                    Err(error) => panic!("increment: {error}"),
                }
            }
        }
    };
    futures::future::join_all((0..TASKS).map(|_| increment_many())).await;
    let kv = get(store, &counter).await.expect("the counter exists");
    assert_eq!(kv.value, (TASKS * INCREMENTS).to_string().as_bytes());
    assert_eq!(kv.version, TASKS * INCREMENTS);
}

pub async fn thousand_keys_are_listed(store: &dyn Store) {
    let p = prefix("thousand");
    let key = |i: usize| format!("{p}{i:04}");
    for chunk in 0..10 {
        let txn = (chunk * 100..(chunk + 1) * 100)
            .fold(Txn::new(), |txn, i| txn.put(key(i), i.to_string()));
        store.txn(txn).await.expect("txn");
    }
    let (listed, _) = store.list(&p).await.expect("list");
    assert_eq!(listed.len(), 1000);
    for (i, kv) in listed.iter().enumerate() {
        assert_eq!(kv.key, key(i));
        assert_eq!(kv.value, i.to_string().as_bytes());
    }
}

pub async fn one_mib_value_round_trips(store: &dyn Store) {
    let key = format!("{}big", prefix("one-mib"));
    let value: Vec<u8> = (0..1024 * 1024).map(|i| (i % 251) as u8).collect();
    let written = store
        .txn(Txn::new().put(&key, value.clone()))
        .await
        .expect("put");
    assert_eq!(get(store, &key).await.expect("exists").value, value);
    let mut stream = watch(store, &key, written).await;
    assert_eq!(next_event(&mut stream).await.kv.value, value);
}

pub async fn slow_watcher_gets_every_change_in_order(store: &dyn Store) {
    const TXNS: usize = 50;
    const OPS: usize = 100;
    let p = prefix("slow-watcher");
    let key = |i: usize| format!("{p}{i:05}");
    let mut stream = watch(store, &p, 0).await;
    let mut revisions = Vec::new();
    for t in 0..TXNS {
        let txn = (t * OPS..(t + 1) * OPS).fold(Txn::new(), |txn, i| txn.put(key(i), "v"));
        revisions.push(store.txn(txn).await.expect("txn"));
    }
    // Only now does the watcher start reading.
    for i in 0..TXNS * OPS {
        assert_eq!(
            next_change(&mut stream).await,
            put_change(&key(i), revisions[i / OPS])
        );
    }
}
