//! The watch cache: one store watch per kind, decoded once and shared by every watch
//! of that kind (the agent's own loops and API clients alike), as the Kubernetes API
//! server's watch cache. Without it each watcher decoded each change for itself: a
//! pod bound to a node was decoded by the scheduler, the pod worker, four
//! controllers, cluster DNS and every API watch.
//!
//! A kind's cache is started by its first watch. It holds the current objects (so a
//! change carries the object's previous state without decoding the store's copy) and
//! a window of the latest changes, so a watch from a recent revision (the usual list
//! then watch) replays from memory. A watch from before the window, or while the
//! cache is not following the store, is served by the store itself.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use futures::StreamExt;
use log::{debug, warn};
use tokio::sync::{mpsc, watch};

use super::Change;
use crate::api::encryption::SecretBox;
use crate::api::registry::{kind_prefix, stored_object};
use crate::model::{Kind, Object};
use crate::store::{EventKind, Revision, Store};

/// Changes kept per kind for watches that start a little behind the cache.
const WINDOW: usize = 1024;

/// How long after losing the store's watch the cache lists again.
const RELIST_DELAY: Duration = Duration::from_secs(1);

/// The caches of every kind watched so far.
pub struct WatchCache {
    store: Weak<dyn Store>,
    secrets: Arc<SecretBox>,
    kinds: Mutex<HashMap<Kind, Arc<KindCache>>>,
}

/// What a watch served from the cache starts with: the changes it missed, then
/// the live ones.
pub struct Subscription {
    pub missed: Vec<Arc<Change>>,
    pub live: mpsc::UnboundedReceiver<Arc<Change>>,
}

/// Whether a kind's cache follows the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Following {
    /// Listing for the first time.
    Starting,
    Yes,
    /// Lost the store's watch; listing again.
    No,
}

struct KindCache {
    state: Mutex<State>,
    following: watch::Sender<Following>,
}

/// One kind's objects as of `revision`, plus the changes after `window_start`.
#[derive(Default)]
struct State {
    objects: HashMap<String, Arc<Object>>,
    revision: Revision,
    window: VecDeque<Arc<Change>>,
    window_start: Revision,
    subscribers: Vec<mpsc::UnboundedSender<Arc<Change>>>,
}

impl WatchCache {
    pub fn new(store: &Arc<dyn Store>, secrets: Arc<SecretBox>) -> Self {
        Self {
            store: Arc::downgrade(store),
            secrets,
            kinds: Mutex::new(HashMap::new()),
        }
    }

    /// The changes of `kind` after revision `after`, or None when the cache cannot
    /// serve them (too far back, or not following the store).
    pub async fn subscribe(&self, kind: Kind, after: Revision) -> Option<Subscription> {
        let cache = self.kind(kind);
        let mut following = cache.following.subscribe();
        // The first watch of a kind waits for the first list; a failure to list
        // leaves the watch to the store, which reports the failure.
        let now = *following
            .wait_for(|f| *f != Following::Starting)
            .await
            .ok()?;
        if now != Following::Yes {
            return None;
        }
        let mut state = lock(&cache.state);
        if after < state.window_start {
            return None;
        }
        let missed = state
            .window
            .iter()
            .filter(|c| c.revision > after)
            .cloned()
            .collect();
        let (sender, live) = mpsc::unbounded_channel();
        state.subscribers.push(sender);
        Some(Subscription { missed, live })
    }

    /// The object at store key `key` as the cache last saw it, when the kind's
    /// cache follows the store. It may be a moment behind: a write based on it
    /// must compare its revision.
    pub fn get(&self, kind: Kind, key: &str) -> Option<Arc<Object>> {
        let cache = lock(&self.kinds).get(&kind)?.clone();
        if *cache.following.borrow() != Following::Yes {
            return None;
        }
        let state = lock(&cache.state);
        state.objects.get(key).cloned()
    }

    fn kind(&self, kind: Kind) -> Arc<KindCache> {
        let mut kinds = lock(&self.kinds);
        if let Some(cache) = kinds.get(&kind) {
            return cache.clone();
        }
        let cache = Arc::new(KindCache {
            state: Mutex::new(State::default()),
            following: watch::Sender::new(Following::Starting),
        });
        kinds.insert(kind, cache.clone());
        tokio::spawn(follow(
            kind,
            self.store.clone(),
            self.secrets.clone(),
            cache.clone(),
        ));
        cache
    }
}

/// Keeps `cache` current until the store goes away: list, then watch from there;
/// when the watch fails, the cache's watchers end (they list again, as after any
/// failed watch) and the cache lists again.
async fn follow(
    kind: Kind,
    store: Weak<dyn Store>,
    secrets: Arc<SecretBox>,
    cache: Arc<KindCache>,
) {
    let prefix = kind_prefix(kind, None);
    loop {
        let Some(current) = store.upgrade() else {
            return;
        };
        let listed = current.list(&prefix).await;
        let watched = match listed {
            Ok((kvs, revision)) => {
                let objects = kvs
                    .into_iter()
                    .filter_map(|kv| {
                        let key = kv.key.clone();
                        decoded(&secrets, kv).map(|o| (key, Arc::new(o)))
                    })
                    .collect();
                let changes = current.watch(&prefix, revision + 1).await;
                changes.map(|changes| (objects, revision, changes))
            }
            Err(e) => Err(e),
        };
        drop(current);
        match watched {
            Ok((objects, revision, mut changes)) => {
                {
                    let mut state = lock(&cache.state);
                    *state = State {
                        objects,
                        revision,
                        window: VecDeque::new(),
                        window_start: revision,
                        subscribers: Vec::new(),
                    };
                }
                cache.following.send_replace(Following::Yes);
                while let Some(event) = changes.next().await {
                    match event {
                        Ok(event) => apply(&cache, &secrets, event),
                        Err(e) => {
                            warn!("watch cache of {}: {e}; listing again", kind.plural());
                            break;
                        }
                    }
                }
                debug!("watch cache of {}: the store's watch ended", kind.plural());
            }
            Err(e) => warn!("watch cache of {}: {e}; listing again", kind.plural()),
        }
        cache.following.send_replace(Following::No);
        lock(&cache.state).subscribers.clear();
        tokio::time::sleep(RELIST_DELAY).await;
    }
}

/// Records one store change and hands it to every watcher.
fn apply(cache: &KindCache, secrets: &SecretBox, event: crate::store::Event) {
    let revision = event.kv.mod_revision;
    let mut state = lock(&cache.state);
    let key = event.kv.key.clone();
    let change = match event.kind {
        EventKind::Put => {
            let Some(object) = decoded(secrets, event.kv).map(Arc::new) else {
                return;
            };
            let previous = state.objects.insert(key, object.clone());
            Change {
                revision,
                kind: EventKind::Put,
                object,
                previous,
            }
        }
        EventKind::Delete => {
            let Some(previous) = state.objects.remove(&key) else {
                return;
            };
            Change::deleted(previous, revision)
        }
    };
    let change = Arc::new(change);
    state.revision = revision;
    state.window.push_back(change.clone());
    while state.window.len() > WINDOW {
        if let Some(oldest) = state.window.pop_front() {
            state.window_start = oldest.revision;
        }
    }
    state
        .subscribers
        .retain(|subscriber| subscriber.send(change.clone()).is_ok());
}

/// A stored object, or None (logged) when it cannot be read: a watch skips it,
/// as the cache must not stop for one bad key.
fn decoded(secrets: &SecretBox, kv: crate::store::KeyValue) -> Option<Object> {
    match stored_object(secrets, &kv) {
        Ok(object) => Some(object),
        Err(e) => {
            warn!("watch cache: {e}");
            None
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain data that is still whole.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
