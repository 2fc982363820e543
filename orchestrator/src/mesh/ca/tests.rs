use std::os::unix::fs::PermissionsExt;
use std::sync::Mutex as StdMutex;

use rustls::pki_types::UnixTime;
use webpki::{EndEntityCert, KeyUsage, anchor_from_trusted_cert};

use super::*;

fn identity() -> Identity {
    Identity::new("cluster.local", "shop", "web")
}

fn new_ca(now: SystemTime) -> Ca {
    Ca::new(&CaMaterial::generate(now).expect("CA")).expect("CA from its material")
}

/// Whether webpki accepts `leaf` from `ca` for `usage` at `at`.
fn valid_at(ca: &Ca, leaf: &CertificateDer<'_>, at: SystemTime, usage: KeyUsage) -> bool {
    let anchor = anchor_from_trusted_cert(ca.root()).expect("anchor");
    let parsed = EndEntityCert::try_from(leaf).expect("leaf parses");
    let seconds = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("after 1970");
    parsed
        .verify_for_usage(
            &[webpki::ring::ECDSA_P256_SHA256],
            &[anchor],
            &[],
            UnixTime::since_unix_epoch(seconds),
            usage,
            None,
            None,
        )
        .is_ok()
}

#[test]
fn issues_a_leaf_naming_only_the_identity_for_a_day() {
    let now = SystemTime::now();
    let ca = new_ca(now);
    let key = KeyPair::generate().expect("key");
    let leaf = ca
        .issue(&identity(), &key, now, DEFAULT_TTL)
        .expect("issued");

    let parsed = EndEntityCert::try_from(&leaf).expect("parses");
    assert_eq!(
        parsed.valid_uri_names().collect::<Vec<_>>(),
        ["spiffe://cluster.local/ns/shop/sa/web"]
    );
    assert_eq!(parsed.valid_dns_names().count(), 0);

    // Both ends of a tunnel use it: server and client authentication.
    assert!(valid_at(&ca, &leaf, now, KeyUsage::server_auth()));
    assert!(valid_at(&ca, &leaf, now, KeyUsage::client_auth()));
    // Valid from a minute back (clock skew), until the TTL ends.
    let second = Duration::from_secs(1);
    assert!(valid_at(
        &ca,
        &leaf,
        now - CLOCK_SKEW + second,
        KeyUsage::server_auth()
    ));
    assert!(!valid_at(
        &ca,
        &leaf,
        now - CLOCK_SKEW - second,
        KeyUsage::server_auth()
    ));
    assert!(valid_at(
        &ca,
        &leaf,
        now + DEFAULT_TTL - second,
        KeyUsage::server_auth()
    ));
    assert!(!valid_at(
        &ca,
        &leaf,
        now + DEFAULT_TTL + second,
        KeyUsage::server_auth()
    ));
    // Another CA does not vouch for it.
    assert!(!valid_at(&new_ca(now), &leaf, now, KeyUsage::server_auth()));
}

#[test]
fn renews_at_half_life_with_a_new_key() {
    let start = SystemTime::now();
    let time = Arc::new(StdMutex::new(start));
    let clock_time = time.clone();
    let clock: Clock = Arc::new(move || *clock_time.lock().expect("clock"));
    let ttl = Duration::from_secs(3600);
    let certificates = Certificates::new(Arc::new(new_ca(start)), ttl, clock);
    let set = |at: SystemTime| *time.lock().expect("clock") = at;

    let first = certificates.get(&identity()).expect("issued");
    assert_eq!(first.renew_at(), start + ttl / 2);
    set(start + ttl / 2 - Duration::from_secs(1));
    let cached = certificates.get(&identity()).expect("cached");
    assert!(Arc::ptr_eq(&first, &cached), "renewed before half-life");

    set(start + ttl / 2);
    let renewed = certificates.get(&identity()).expect("renewed");
    assert!(!Arc::ptr_eq(&first, &renewed), "not renewed at half-life");
    assert_eq!(renewed.issued_at, start + ttl / 2);
    assert_ne!(
        first.certified.cert[0], renewed.certified.cert[0],
        "the same certificate after renewal"
    );

    // Each identity has its own certificate.
    let other = Identity::new("cluster.local", "shop", "db");
    let theirs = certificates.get(&other).expect("issued");
    let parsed = EndEntityCert::try_from(&theirs.certified.cert[0]).expect("parses");
    assert_eq!(
        parsed.valid_uri_names().collect::<Vec<_>>(),
        ["spiffe://cluster.local/ns/shop/sa/db"]
    );
}

#[test]
fn keeps_its_key_in_a_0600_file_and_refuses_a_readable_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let now = SystemTime::now();
    let created = CaMaterial::load_or_create(dir.path(), now).expect("created");
    let key_path = dir.path().join(KEY_FILE);
    let mode = fs::metadata(&key_path)
        .expect("key file")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    let loaded = CaMaterial::load_or_create(dir.path(), now).expect("loaded");
    assert_eq!(loaded, created, "a second start made a new CA");

    fs::set_permissions(&key_path, fs::Permissions::from_mode(0o644)).expect("chmod");
    let error = CaMaterial::load_or_create(dir.path(), now).expect_err("accepted a 0644 key");
    assert!(
        matches!(error, CaError::KeyFileMode { mode: 0o644, .. }),
        "{error}"
    );
    assert!(
        error
            .to_string()
            .contains("mode 0644 lets others read the CA key"),
        "{error}"
    );
    // Nothing was replaced: the refusal is not a reason to make a new CA.
    assert_eq!(fs::read_to_string(&key_path).expect("key"), created.key_pem);
}

#[test]
fn refuses_a_certificate_of_another_key() {
    let now = SystemTime::now();
    let one = CaMaterial::generate(now).expect("CA");
    let other = CaMaterial::generate(now).expect("CA");
    let mixed = CaMaterial {
        key_pem: one.key_pem,
        cert_pem: other.cert_pem.clone(),
    };
    assert!(matches!(Ca::new(&mixed), Err(CaError::KeyMismatch)));
    let garbage = CaMaterial {
        key_pem: "not a key".into(),
        cert_pem: other.cert_pem.clone(),
    };
    assert!(matches!(Ca::new(&garbage), Err(CaError::Key(_))));
}
