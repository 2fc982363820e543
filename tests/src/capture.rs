//! Packet captures for the mesh tests: tcpdump on an interface (loopback, or a
//! pod's host-side veth inside a node's namespace) writing a pcap file, and the
//! TCP segments read back from it, to show what crossed the wire in plaintext.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::unique_name;

/// tcpdump writing to a file; stopped on drop.
pub struct Capture {
    child: Child,
    file: tempfile::NamedTempFile,
}

impl Capture {
    /// A capture on `lo` of these TCP ports.
    pub fn on_loopback(ports: &[u16]) -> Self {
        let filter = ports
            .iter()
            .map(|p| format!("tcp port {p}"))
            .collect::<Vec<_>>()
            .join(" or ");
        Self::start(Command::new("tcpdump"), "lo", &filter)
    }

    /// A capture on `interface` with the tcpdump `filter`, run as `tcpdump` (a
    /// command for the program, e.g. set up to start in a node's namespace).
    pub fn start(mut tcpdump: Command, interface: &str, filter: &str) -> Self {
        let file = tempfile::Builder::new()
            .prefix(&unique_name("skiff-mesh-capture"))
            .suffix(".pcap")
            .tempfile()
            .expect("capture file");
        let mut child = tcpdump
            .args(["-i", interface, "-n", "-U", "-s", "0", "-w"])
            .arg(file.path())
            .arg(filter)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("tcpdump (Debian package tcpdump; `cargo xtask setup` installs it)");
        // tcpdump says "listening on <interface>" once its filter is attached.
        let stderr = child.stderr.take().expect("tcpdump stderr");
        let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stderr));
        let listening = lines.next().and_then(Result::ok).unwrap_or_default();
        assert!(
            listening.contains(&format!("listening on {interface}")),
            "tcpdump did not start: {listening:?}"
        );
        // Keep draining stderr so tcpdump never blocks on it.
        std::thread::spawn(move || lines.for_each(drop));
        Self { child, file }
    }

    /// The TCP payloads captured so far, each with its ports.
    pub fn segments(&self) -> Vec<Segment> {
        parse_pcap(&std::fs::read(self.file.path()).expect("read the capture"))
    }

    /// Waits until a segment carrying `sentinel` is in the file: everything sent
    /// before it is then there too (one capture, in order).
    pub fn flush_through(&self, sentinel: &[u8]) -> Vec<Segment> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let segments = self.segments();
            if segments.iter().any(|s| contains(&s.payload, sentinel)) {
                return segments;
            }
            assert!(
                Instant::now() < deadline,
                "the capture never showed the sentinel"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

/// One captured TCP segment.
pub struct Segment {
    pub source_port: u16,
    pub destination_port: u16,
    pub payload: Vec<u8>,
}

impl Segment {
    pub fn port(&self, port: u16) -> bool {
        self.source_port == port || self.destination_port == port
    }
}

/// The TCP segments of a pcap file of Ethernet frames carrying IPv4 or IPv6.
pub fn parse_pcap(data: &[u8]) -> Vec<Segment> {
    let u16_be = |b: &[u8], at: usize| u16::from_be_bytes([b[at], b[at + 1]]);
    let u32_le = |b: &[u8], at: usize| u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
    let mut segments = Vec::new();
    if data.len() < 24 {
        return segments;
    }
    assert_eq!(
        u32_le(data, 0),
        0xa1b2_c3d4,
        "not a little-endian pcap file"
    );
    assert_eq!(u32_le(data, 20), 1, "not Ethernet frames");
    let mut at = 24;
    while at + 16 <= data.len() {
        let captured = u32_le(data, at + 8) as usize;
        let Some(frame) = data.get(at + 16..at + 16 + captured) else {
            break; // written half-way
        };
        at += 16 + captured;
        if frame.len() < 14 {
            continue;
        }
        let ip = &frame[14..];
        // The TCP segment of an IPv4 or IPv6 packet (no extension headers).
        let tcp = match u16_be(frame, 12) {
            0x0800 if ip.len() >= 20 && ip[9] == 6 => {
                let header = usize::from(ip[0] & 0x0f) * 4;
                let total = usize::from(u16_be(ip, 2)).min(ip.len());
                ip.get(header..total)
            }
            0x86dd if ip.len() >= 40 && ip[6] == 6 => {
                let total = (40 + usize::from(u16_be(ip, 4))).min(ip.len());
                ip.get(40..total)
            }
            _ => None,
        };
        let Some(tcp) = tcp.filter(|t| t.len() >= 20) else {
            continue;
        };
        let tcp_header = usize::from(tcp[12] >> 4) * 4;
        segments.push(Segment {
            source_port: u16_be(tcp, 0),
            destination_port: u16_be(tcp, 2),
            payload: tcp.get(tcp_header..).unwrap_or_default().to_vec(),
        });
    }
    segments
}

/// Segments to or from `port` whose payload holds `needle`.
pub fn carrying(segments: &[Segment], port: u16, needle: &str) -> usize {
    segments
        .iter()
        .filter(|s| s.port(port) && contains(&s.payload, needle.as_bytes()))
        .count()
}

pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The payload bytes of every segment to or from `port`, in capture order.
pub fn stream_of(segments: &[Segment], port: u16) -> Vec<u8> {
    segments
        .iter()
        .filter(|s| s.port(port))
        .flat_map(|s| s.payload.iter().copied())
        .collect()
}
