//! Kernel-side logging through aya-log: debug records reach user space only when the
//! level asks for them. Its own test binary, because it installs the global logger.

use std::net::SocketAddr;
use std::sync::Mutex;

use log::{LevelFilter, Log, Metadata, Record};
use skiff::dataplane::{Balancing, Frontend};
use skiff_tests::lab::Lab;

static RECORDS: Mutex<Vec<(log::Level, String)>> = Mutex::new(Vec::new());

struct Capture;

impl Log for Capture {
    fn enabled(&self, _: &Metadata) -> bool {
        true
    }
    fn log(&self, record: &Record) {
        RECORDS
            .lock()
            .expect("records")
            .push((record.level(), record.args().to_string()));
    }
    fn flush(&self) {}
}

/// The kernel-side records emitted while connecting once to each VIP.
fn records_at(level: LevelFilter) -> Vec<(log::Level, String)> {
    let mut lab = Lab::with_ebpf_log(level);
    let mut logger = lab.dataplane.take_logger().expect("logging is on");
    let v4 = lab.backends("127.0.0.1", 1);
    let v6 = lab.backends("::1", 1);
    let vip4: SocketAddr = "10.96.7.1:80".parse().unwrap();
    let vip6: SocketAddr = "[fd00:10:96::7]:80".parse().unwrap();
    lab.dataplane
        .upsert_service(
            &Frontend::tcp(vip4),
            &Balancing::from([v4[0].addr()].to_vec()),
        )
        .unwrap();
    lab.dataplane
        .upsert_service(
            &Frontend::tcp(vip6),
            &Balancing::from([v6[0].addr()].to_vec()),
        )
        .unwrap();
    assert_eq!(lab.connect(vip4, 1), ["backend-0"]);
    assert_eq!(lab.connect(vip6, 1), ["backend-0"]);

    RECORDS.lock().unwrap().clear();
    logger.flush();
    let records = std::mem::take(&mut *RECORDS.lock().unwrap());
    let expected = [
        format!("connect4 10.96.7.1:80 -> 127.0.0.1:{}", v4[0].addr().port()),
        format!(
            "connect6 [fd00:10:96::7]:80 -> [::1]:{}",
            v6[0].addr().port()
        ),
    ];
    if level >= LevelFilter::Debug {
        for line in &expected {
            assert!(
                records
                    .iter()
                    .any(|(l, m)| *l == log::Level::Debug && m.contains(line.as_str())),
                "no {line:?} in {records:?}"
            );
        }
    }
    records
}

#[test]
fn debug_records_are_emitted_only_when_enabled() {
    log::set_logger(&Capture).expect("only this test sets the logger");
    log::set_max_level(LevelFilter::Trace);

    assert_eq!(records_at(LevelFilter::Debug).len(), 2);
    // At info the kernel side does not even write the records.
    assert_eq!(records_at(LevelFilter::Info), vec![]);
    // Off (the default) gives no log reader at all.
    let mut lab = Lab::new();
    assert!(lab.dataplane.take_logger().is_none());
}
