//! Aborting connected UDP sockets that the load balancer pinned to a backend that
//! has since been removed (the destroy pass).
//!
//! connect() on a UDP socket picks a backend once; afterwards the socket sends there
//! and no hook runs again (the sendmsg hooks only see datagrams with an address).
//! When backends go away, user space puts them in `DESTROY_TARGETS` and reads the
//! `iter/udp` program in every network namespace that may hold load-balanced
//! sockets; the program calls the `bpf_sock_destroy` kfunc (Linux 6.5+) on each UDP
//! socket whose peer is such a backend and whose (cookie, peer) is in `REVERSE_SK`,
//! i.e. that skiff balanced there. The application gets ECONNABORTED and its next
//! connect() goes through connect4/6 again. This is what Cilium does.
//!
//! aya 0.14 cannot resolve kfunc calls, so [`KernelObject::prepare`] patches the
//! running kernel's BTF id of `bpf_sock_destroy` into the call instruction the
//! program emits, and the `struct sock_common` offsets the program reads into its
//! read-only global.

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use aya::maps::{HashMap, MapData, MapError};
use aya::programs::links::LinkError;
use aya::programs::{Iter, ProgramError};
use aya::{Btf, BtfError, Ebpf};
use log::{debug, warn};
use object::{Object, ObjectSection};
use skiff_ebpf_common::{
    DESTROY_UDP_SECTION, DestroyRecord, MAX_DESTROY_TARGETS, SOCK_DESTROY_PLACEHOLDER,
    ServiceBackendKey, SockOffsets, patch_kfunc_calls,
};

use super::btf;

/// The socket iterator's function name in the object.
pub const DESTROY_PROGRAM: &str = "skiff_destroy_udp";
/// The kfunc the iterator calls.
const SOCK_DESTROY_KFUNC: &str = "bpf_sock_destroy";

#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("writing the destroy targets: {0}")]
    Targets(#[source] MapError),
    #[error("running the UDP socket iterator: {0}")]
    Program(#[from] ProgramError),
    #[error("opening the UDP socket iterator: {0}")]
    Link(#[from] LinkError),
    #[error("network namespace {}: {source}", path.display())]
    Netns { path: PathBuf, source: io::Error },
    #[error("reading the UDP socket iterator: {0}")]
    Read(#[source] io::Error),
    #[error("the UDP socket iterator's thread panicked")]
    Thread,
}

/// Why this kernel cannot destroy sockets (the rest of the dataplane still works).
#[derive(Debug, thiserror::Error)]
pub enum Unsupported {
    #[error("the kernel's BTF: {0}")]
    KernelBtf(#[from] BtfError),
    #[error("the kernel's BTF: {0}")]
    Offsets(#[from] btf::BtfError),
    #[error("the eBPF object: {0}")]
    Object(String),
}

/// The eBPF object, prepared for the running kernel.
pub struct KernelObject {
    /// The object's bytes, 8-byte aligned as aya's ELF parser requires.
    words: Vec<u64>,
    len: usize,
    /// What the socket iterator needs, or why it cannot run here.
    pub destroy: Result<DestroySupport, Unsupported>,
}

/// The kernel facts the socket iterator is loaded with.
pub struct DestroySupport {
    pub btf: Btf,
    pub offsets: SockOffsets,
}

impl KernelObject {
    /// Copies `object` and patches the kfunc call of the socket iterator for the
    /// running kernel. When that fails, the object is unchanged and the iterator is
    /// not to be loaded.
    pub fn prepare(object: &[u8]) -> Self {
        let mut words = vec![0u64; object.len().div_ceil(8)];
        for (word, chunk) in words.iter_mut().zip(object.chunks(8)) {
            let mut bytes = [0u8; 8];
            bytes[..chunk.len()].copy_from_slice(chunk);
            *word = u64::from_ne_bytes(bytes);
        }
        let mut prepared = Self {
            words,
            len: object.len(),
            destroy: Err(Unsupported::Object("not prepared".into())),
        };
        // patch() writes to the object only once every check has passed.
        prepared.destroy = prepared.patch();
        prepared
    }

    pub fn bytes(&self) -> &[u8] {
        // SAFETY: the u64s are initialised memory of at least `len` bytes, any byte
        // is a valid u8, and u8 has no alignment requirement.
        unsafe { std::slice::from_raw_parts(self.words.as_ptr().cast::<u8>(), self.len) }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in bytes(), and the borrow of `words` is exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.words.as_mut_ptr().cast::<u8>(), self.len) }
    }

    fn patch(&mut self) -> Result<DestroySupport, Unsupported> {
        let kernel = Btf::from_sys_fs()?;
        let layout = btf::Btf::from_file(Path::new(btf::VMLINUX_BTF))?;
        let kfunc = layout.func_id(SOCK_DESTROY_KFUNC)?;
        let offset = |member| layout.member_offset("sock_common", member);
        let offsets = SockOffsets {
            family: offset("skc_family")?,
            daddr: offset("skc_daddr")?,
            dport: offset("skc_dport")?,
            v6_daddr: offset("skc_v6_daddr")?,
        };

        let range = {
            let file = object::File::parse(self.bytes())
                .map_err(|e| Unsupported::Object(e.to_string()))?;
            let section = file
                .section_by_name(DESTROY_UDP_SECTION)
                .ok_or_else(|| Unsupported::Object(format!("no section {DESTROY_UDP_SECTION}")))?;
            section.file_range().ok_or_else(|| {
                Unsupported::Object(format!("section {DESTROY_UDP_SECTION} has no data"))
            })?
        };
        let code = usize::try_from(range.0)
            .ok()
            .zip(usize::try_from(range.1).ok())
            .and_then(|(start, size)| self.bytes_mut().get_mut(start..start.checked_add(size)?))
            .ok_or_else(|| Unsupported::Object("section out of bounds".into()))?;
        match patch_kfunc_calls(code, SOCK_DESTROY_PLACEHOLDER, kfunc) {
            0 => Err(Unsupported::Object(format!(
                "no call to {SOCK_DESTROY_KFUNC} in {DESTROY_UDP_SECTION}"
            ))),
            _ => Ok(DestroySupport {
                btf: kernel,
                offsets,
            }),
        }
    }
}

/// The loaded socket iterator and where to run it.
pub struct SocketDestroyer {
    namespaces: Vec<PathBuf>,
    destroyed: u64,
}

impl SocketDestroyer {
    /// Loads the iterator program. `namespaces` are network namespace files, or
    /// directories of them (as /run/netns), visited besides the caller's own.
    pub fn load(
        ebpf: &mut Ebpf,
        btf: &Btf,
        namespaces: Vec<PathBuf>,
    ) -> Result<Self, ProgramError> {
        iter_program(ebpf)?.load("udp", btf)?;
        Ok(Self {
            namespaces,
            destroyed: 0,
        })
    }

    /// Sockets destroyed since load.
    pub fn destroyed(&self) -> u64 {
        self.destroyed
    }

    /// Destroys the load-balanced UDP sockets connected to `targets` (backends of
    /// the services that chose them) in every namespace. Returns how many.
    pub fn destroy(
        &mut self,
        ebpf: &mut Ebpf,
        map: &mut HashMap<MapData, ServiceBackendKey, u8>,
        targets: &[ServiceBackendKey],
    ) -> Result<usize, SocketError> {
        let mut destroyed = 0;
        for chunk in targets.chunks(MAX_DESTROY_TARGETS as usize) {
            let mut result = Ok(());
            for key in chunk {
                result = map.insert(key, 1, 0).map_err(SocketError::Targets);
                if result.is_err() {
                    break;
                }
            }
            let passed = result.and_then(|()| self.run_everywhere(ebpf));
            // The targets only mean something during the pass.
            for key in chunk {
                if let Err(e) = map.remove(key) {
                    debug!("removing destroy target: {e}");
                }
            }
            destroyed += passed?;
        }
        self.destroyed += destroyed as u64;
        Ok(destroyed)
    }

    /// Runs the iterator in the caller's namespace and each configured one; the
    /// first error is returned after every namespace had its pass.
    fn run_everywhere(&self, ebpf: &mut Ebpf) -> Result<usize, SocketError> {
        let program = iter_program(ebpf)?;
        let mut destroyed = 0;
        let mut first_error = None;
        let mut visit = |netns: Option<&Path>| -> Result<(), SocketError> {
            let link_id = program.attach()?;
            let link = program.take_link(link_id)?;
            let output = match netns {
                None => read_iterator(link)?,
                Some(path) => match in_namespace(path, move || read_iterator(link)) {
                    Err(SocketError::Netns { source, .. }) if vanished(&source) => {
                        debug!("skipping {}: {source}", path.display());
                        return Ok(());
                    }
                    other => other?,
                },
            };
            for record in records(&output) {
                if record.result != 0 {
                    warn!(
                        "bpf_sock_destroy on socket {} failed: {}",
                        record.cookie,
                        io::Error::from_raw_os_error(-record.result)
                    );
                } else {
                    destroyed += 1;
                }
            }
            Ok(())
        };
        for netns in std::iter::once(None).chain(namespaces(&self.namespaces).iter().map(Some)) {
            if let Err(e) = visit(netns.map(PathBuf::as_path)) {
                first_error.get_or_insert(e);
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(destroyed),
        }
    }
}

fn iter_program(ebpf: &mut Ebpf) -> Result<&mut Iter, ProgramError> {
    ebpf.program_mut(DESTROY_PROGRAM)
        .ok_or(ProgramError::NotLoaded)?
        .try_into()
}

/// Opens the iterator and reads it to the end: the program runs on every socket.
fn read_iterator(link: aya::programs::iter::IterLink) -> Result<Vec<u8>, SocketError> {
    let mut file = link.into_file()?;
    let mut output = Vec::new();
    file.read_to_end(&mut output).map_err(SocketError::Read)?;
    Ok(output)
}

/// Runs `f` on a thread that entered the network namespace at `path`: an iterator
/// walks the sockets of the namespace it was opened in.
fn in_namespace<T: Send>(
    path: &Path,
    f: impl FnOnce() -> Result<T, SocketError> + Send,
) -> Result<T, SocketError> {
    let netns_error = |source| SocketError::Netns {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(netns_error)?;
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                // SAFETY: setns changes only this thread's namespace; the fd is open.
                if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(netns_error(io::Error::last_os_error()));
                }
                f()
            })
            .join()
            .unwrap_or(Err(SocketError::Thread))
    })
}

/// A namespace that went away while being visited, or a file that is not one (a
/// mount point left behind): nothing to destroy there.
fn vanished(error: &io::Error) -> bool {
    matches!(error.raw_os_error(), Some(libc::ENOENT | libc::EINVAL))
}

/// The namespace files named by `configured` (files, or directories of them), each
/// namespace once and without the caller's own.
fn namespaces(configured: &[PathBuf]) -> Vec<PathBuf> {
    let mut seen = HashSet::new();
    if let Ok(own) = std::fs::metadata("/proc/thread-self/ns/net") {
        seen.insert((own.dev(), own.ino()));
    }
    let mut out = Vec::new();
    for path in configured {
        let mut candidates = Vec::new();
        match std::fs::read_dir(path) {
            Ok(entries) => {
                candidates.extend(entries.filter_map(|e| e.ok().map(|e| e.path())));
                candidates.sort();
            }
            Err(_) => candidates.push(path.clone()),
        }
        for candidate in candidates {
            // A namespace's identity is its nsfs inode; a file we cannot stat has
            // vanished.
            if let Ok(meta) = std::fs::metadata(&candidate)
                && meta.is_file()
                && seen.insert((meta.dev(), meta.ino()))
            {
                out.push(candidate);
            }
        }
    }
    out
}

/// The records the iterator wrote: one per socket it destroyed.
fn records(output: &[u8]) -> impl Iterator<Item = DestroyRecord> + '_ {
    output
        .chunks_exact(DestroyRecord::SIZE)
        .filter_map(|chunk| chunk.try_into().ok().map(DestroyRecord::from_bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_read_back_whole() {
        let mut output = Vec::new();
        for (cookie, result) in [(7u64, 0i32), (9, -libc::EOPNOTSUPP)] {
            let record = DestroyRecord {
                cookie,
                result,
                _pad: 0,
            };
            output.extend_from_slice(&record.to_bytes());
        }
        output.extend_from_slice(&[1, 2, 3]); // a torn tail is ignored
        let read: Vec<(u64, i32)> = records(&output).map(|r| (r.cookie, r.result)).collect();
        assert_eq!(read, [(7, 0), (9, -libc::EOPNOTSUPP)]);
    }

    #[test]
    fn namespaces_are_listed_once_each() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["b", "a"] {
            std::fs::write(dir.path().join(name), b"").unwrap();
        }
        let a = dir.path().join("a");
        let missing = dir.path().join("gone");
        let listed = namespaces(&[
            a.clone(),
            dir.path().to_path_buf(),
            missing,
            "/proc/self/ns/net".into(), // the caller's own namespace
        ]);
        assert_eq!(listed, [a, dir.path().join("b")]);
    }

    #[test]
    fn a_vanished_namespace_is_not_an_error() {
        assert!(vanished(&io::Error::from_raw_os_error(libc::ENOENT)));
        assert!(vanished(&io::Error::from_raw_os_error(libc::EINVAL)));
        assert!(!vanished(&io::Error::from_raw_os_error(libc::EPERM)));
    }
}
