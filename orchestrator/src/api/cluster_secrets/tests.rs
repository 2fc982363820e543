use super::*;
use crate::store::embedded::EmbeddedStore;

const CLUSTER: &str = "etcd://test:2379";

/// A store, and state directories for two agents.
struct Fixture {
    _dir: tempfile::TempDir,
    store: EmbeddedStore,
    first: PathBuf,
    second: PathBuf,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(&dir.path().join("store.redb")).unwrap();
    let (first, second) = (dir.path().join("first"), dir.path().join("second"));
    std::fs::create_dir(&first).unwrap();
    std::fs::create_dir(&second).unwrap();
    Fixture {
        _dir: dir,
        store,
        first,
        second,
    }
}

fn joining(token: &JoinToken) -> Membership {
    Membership {
        join: true,
        token: Some(token.clone()),
    }
}

#[tokio::test]
async fn the_first_agent_creates_the_secrets_and_a_joining_one_opens_them() {
    let f = fixture();
    let first = obtain(&f.store, CLUSTER, &Membership::default(), &f.first)
        .await
        .unwrap();
    assert!(first.created);
    assert!(first.token.expose().starts_with("skiff1::"));
    assert_eq!(first.secrets.encryption_key.len(), encryption::KEY_LEN);
    // The store holds them sealed: neither the token nor the key is in clear.
    let (stored, _) = f.store.get(BOOTSTRAP_KEY).await.unwrap();
    let stored = String::from_utf8(stored.unwrap().value).unwrap();
    assert!(!stored.contains(&first.secrets.api_token), "{stored}");
    assert!(!stored.contains(&BASE64.encode(&first.secrets.encryption_key)));

    let second = obtain(&f.store, CLUSTER, &joining(&first.token), &f.second)
        .await
        .unwrap();
    assert!(!second.created);
    assert_eq!(second.secrets, first.secrets);

    // Saved, the join token lets the agent start again without --token.
    first.save(&f.first).unwrap();
    let again = obtain(&f.store, CLUSTER, &Membership::default(), &f.first)
        .await
        .unwrap();
    assert_eq!(again.secrets, first.secrets);
    assert_eq!(again.token, first.token);
    let api_token = std::fs::read_to_string(f.first.join(TOKEN_FILE)).unwrap();
    assert_eq!(api_token.trim(), first.secrets.api_token);
}

#[tokio::test]
async fn joining_needs_the_right_token_and_an_existing_cluster() {
    let f = fixture();
    let token = JoinToken::parse("correct-horse-battery-staple").unwrap();
    let err = obtain(&f.store, CLUSTER, &joining(&token), &f.second)
        .await
        .unwrap_err();
    assert!(
        matches!(err, ClusterSecretsError::NoCluster { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("without --join"), "{err}");

    let no_token = Membership {
        join: true,
        token: None,
    };
    let err = obtain(&f.store, CLUSTER, &no_token, &f.second)
        .await
        .unwrap_err();
    assert!(matches!(err, ClusterSecretsError::NoToken), "{err}");

    let creating = Membership {
        join: false,
        token: Some(token.clone()),
    };
    let first = obtain(&f.store, CLUSTER, &creating, &f.first)
        .await
        .unwrap();
    assert_eq!(first.token, token);

    let wrong = JoinToken::parse("incorrect-horse-battery-staple").unwrap();
    let err = obtain(&f.store, CLUSTER, &joining(&wrong), &f.second)
        .await
        .unwrap_err();
    assert!(
        matches!(err, ClusterSecretsError::WrongToken { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("wrong token"), "{err}");

    // Without --join and without a token, a second agent does not take over.
    let err = obtain(&f.store, CLUSTER, &Membership::default(), &f.second)
        .await
        .unwrap_err();
    assert!(
        matches!(err, ClusterSecretsError::AlreadyExists { .. }),
        "{err}"
    );
    // None of the failures wrote anything.
    assert_eq!(std::fs::read_dir(&f.second).unwrap().count(), 0);
}

/// A store where another first agent creates the cluster (with `winner`'s token)
/// between this agent's read of the bootstrap key and its write.
struct Racing {
    inner: EmbeddedStore,
    winner: std::sync::Mutex<Option<JoinToken>>,
}

#[async_trait::async_trait]
impl Store for Racing {
    async fn revision(&self) -> Result<crate::store::Revision, StoreError> {
        self.inner.revision().await
    }
    async fn get(
        &self,
        key: &str,
    ) -> Result<(Option<crate::store::KeyValue>, crate::store::Revision), StoreError> {
        self.inner.get(key).await
    }
    async fn list(
        &self,
        prefix: &str,
    ) -> Result<(Vec<crate::store::KeyValue>, crate::store::Revision), StoreError> {
        self.inner.list(prefix).await
    }
    async fn txn(&self, txn: Txn) -> Result<crate::store::Revision, StoreError> {
        let winner = self.winner.lock().unwrap().take();
        if let Some(token) = winner {
            let secrets = first_secrets(Path::new("/nonexistent")).unwrap();
            let sealed = seal(&secrets, &token, 1).unwrap();
            self.inner
                .txn(Txn::new().put(BOOTSTRAP_KEY, sealed))
                .await?;
        }
        self.inner.txn(txn).await
    }
    async fn watch(
        &self,
        prefix: &str,
        from: crate::store::Revision,
    ) -> Result<crate::store::WatchStream, StoreError> {
        self.inner.watch(prefix, from).await
    }
    async fn compact(&self, revision: crate::store::Revision) -> Result<(), StoreError> {
        self.inner.compact(revision).await
    }
    async fn compacted(&self) -> Result<crate::store::Revision, StoreError> {
        self.inner.compacted().await
    }
}

#[tokio::test]
async fn of_two_first_agents_racing_one_creates_the_cluster() {
    let given = JoinToken::parse("a-token-both-were-given").unwrap();
    let racing = |f: Fixture, winner: &JoinToken| {
        let store = Racing {
            inner: f.store,
            winner: std::sync::Mutex::new(Some(winner.clone())),
        };
        (store, f.first, f._dir)
    };
    // Both given the same token: the loser joins what the winner created.
    let (store, dir, _keep) = racing(fixture(), &given);
    let with_token = Membership {
        join: false,
        token: Some(given.clone()),
    };
    let lost = obtain(&store, CLUSTER, &with_token, &dir).await.unwrap();
    assert!(!lost.created);
    let (stored, _) = store.get(BOOTSTRAP_KEY).await.unwrap();
    assert_eq!(
        open(&stored.unwrap().value, &given, CLUSTER).unwrap(),
        lost.secrets
    );

    // Each with a token of its own: the loser must join with the winner's.
    let (store, dir, _keep) = racing(fixture(), &JoinToken::generate());
    let err = obtain(&store, CLUSTER, &Membership::default(), &dir)
        .await
        .unwrap_err();
    assert!(matches!(err, ClusterSecretsError::Raced { .. }), "{err}");
    assert!(err.to_string().contains("--join --token"), "{err}");
}

#[tokio::test]
async fn an_agent_that_ran_before_bootstrap_data_keeps_its_key_and_token() {
    let f = fixture();
    let local = load_or_create_local(&f.first).unwrap();
    let first = obtain(&f.store, CLUSTER, &Membership::default(), &f.first)
        .await
        .unwrap();
    assert_eq!(first.secrets.encryption_key, local.encryption_key);
    assert_eq!(first.secrets.api_token, local.api_token);
}

#[tokio::test]
async fn every_agent_of_a_cluster_shares_one_mesh_ca() {
    let f = fixture();
    let first = obtain(&f.store, CLUSTER, &Membership::default(), &f.first)
        .await
        .unwrap();
    let ca = first
        .secrets
        .mesh_ca
        .clone()
        .expect("the first agent creates a mesh CA");
    let (stored, _) = f.store.get(BOOTSTRAP_KEY).await.unwrap();
    let stored = String::from_utf8(stored.unwrap().value).unwrap();
    assert!(!stored.contains("PRIVATE KEY"), "the CA key is sealed");
    let second = obtain(&f.store, CLUSTER, &joining(&first.token), &f.second)
        .await
        .unwrap();
    assert_eq!(second.secrets.mesh_ca, Some(ca));
}

#[tokio::test]
async fn bootstrap_data_from_before_the_mesh_gets_a_ca_once() {
    let f = fixture();
    let token = JoinToken::generate();
    let old = ClusterSecrets {
        encryption_key: vec![1; encryption::KEY_LEN],
        api_token: "t".into(),
        mesh_ca: None,
    };
    let sealed = seal(&old, &token, 1).unwrap();
    f.store
        .txn(Txn::new().when(BOOTSTRAP_KEY, 0).put(BOOTSTRAP_KEY, sealed))
        .await
        .unwrap();
    let first = obtain(&f.store, CLUSTER, &joining(&token), &f.first)
        .await
        .unwrap();
    let ca = first.secrets.mesh_ca.clone().expect("a CA was added");
    assert_eq!(first.secrets.api_token, old.api_token);
    let second = obtain(&f.store, CLUSTER, &joining(&token), &f.second)
        .await
        .unwrap();
    assert_eq!(second.secrets.mesh_ca, Some(ca), "the added CA was stored");
}

#[test]
fn tokens_are_long_enough_and_hidden_from_debug_output() {
    assert!(JoinToken::parse("short").is_err());
    assert!(JoinToken::parse("sixteen chars!!!").is_err());
    let token = JoinToken::parse("  sixteen-chars!!!\n").unwrap();
    assert_eq!(token.expose(), "sixteen-chars!!!");
    assert_ne!(JoinToken::generate(), JoinToken::generate());
    assert_eq!(format!("{token:?}"), "JoinToken(..)");
    let secrets = ClusterSecrets {
        encryption_key: vec![1; encryption::KEY_LEN],
        api_token: "visible?".into(),
        mesh_ca: None,
    };
    assert!(!format!("{secrets:?}").contains("visible"));
}

#[test]
fn tampered_bootstrap_data_is_refused() {
    let token = JoinToken::generate();
    let secrets = ClusterSecrets {
        encryption_key: vec![1; encryption::KEY_LEN],
        api_token: "t".into(),
        mesh_ca: None,
    };
    let sealed = seal(&secrets, &token, 1).unwrap();
    assert_eq!(open(&sealed, &token, CLUSTER).unwrap(), secrets);
    let mut stored: serde_json::Value = serde_json::from_slice(&sealed).unwrap();
    stored["iterations"] = 2.into();
    let tampered = serde_json::to_vec(&stored).unwrap();
    assert!(matches!(
        open(&tampered, &token, CLUSTER),
        Err(ClusterSecretsError::WrongToken { .. })
    ));
    let err = open(b"not json", &token, CLUSTER).unwrap_err();
    assert!(err.to_string().contains("unreadable"), "{err}");
}
