//! Reading containers' logs as conmon writes them (its `k8s-file` driver, the CRI
//! log format): one line per piece of output, `<RFC 3339 time> <stdout|stderr>
//! <F|P> <message>`, F for a piece that ends a line and P for a partial one (conmon
//! reads the pipes 8 KiB at a time, and a line may be written in several calls).
//! Readers get the messages back as whole lines, stdout and stderr in the order
//! conmon wrote them, each stream's pieces joined.
//!
//! Size limit. With `--log-size-max N`, conmon 2.1.6 counts the bytes it wrote to
//! the file since it opened it, and before a line that would take the count past N
//! it *replaces* the file: it fsyncs and closes it, creates `<path>.tmp` empty,
//! renames that over `<path>` and writes on into the new file. Nothing is kept of
//! the old file (no `.1` as kubelet rotation keeps), so the log holds the lines
//! since the last replacement: at most N bytes, or one line's pieces (8 KiB plus
//! the prefixes) when a single line is longer. Tried by hand with N = 1024 and 200
//! lines of 94 bytes: the inode changed at each replacement, the file never passed
//! 1024 bytes, and only the last lines were left. So:
//! - a reader that opened the old file still reads it to its end (the open file
//!   outlives the rename), and everything conmon wrote to it was written before
//!   the rename;
//! - a follower notices the replacement by the path naming another inode, reads
//!   the rest of the file it has, then the new file from its start, and loses
//!   nothing, unless the file was replaced twice between two looks (then the
//!   lines of the middle file are gone before anyone could open it);
//! - a line split into pieces may have its first pieces in the old file and the
//!   rest in the new one: pieces are joined across the replacement.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::paths::Paths;
use super::record::PodRecord;

/// Partial pieces are joined up to this many bytes; a longer line is passed on in
/// parts of this size (without a newline but at its end), so memory stays bounded.
const MAX_LINE: usize = 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// One line of a CRI log file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry<'a> {
    pub stream: Stream,
    /// A piece of a line, continued by the stream's next entry.
    pub partial: bool,
    /// The output, without the newline that ends the file's line.
    pub message: &'a [u8],
}

/// Parses one line of a CRI log file (without its newline); None when it is not
/// in the format.
pub fn parse(line: &[u8]) -> Option<Entry<'_>> {
    let mut fields = line.splitn(4, |b| *b == b' ');
    let timestamp = fields.next()?;
    let stream = match fields.next()? {
        b"stdout" => Stream::Stdout,
        b"stderr" => Stream::Stderr,
        _ => return None,
    };
    // Tags are colon-separated; the first says full or partial.
    let partial = match fields.next()?.split(|b| *b == b':').next()? {
        b"F" => false,
        b"P" => true,
        _ => return None,
    };
    if timestamp.is_empty() {
        return None;
    }
    Some(Entry {
        stream,
        partial,
        message: fields.next().unwrap_or_default(),
    })
}

/// Joins the pieces of partial lines, per stream, into whole lines.
#[derive(Debug, Default)]
struct Joiner {
    /// Pieces seen of stdout's and stderr's current line.
    pending: [Vec<u8>; 2],
}

impl Joiner {
    fn push(&mut self, line: &[u8], out: &mut Vec<Vec<u8>>) {
        let Some(entry) = parse(line) else {
            // Not written by conmon: shown as it is rather than lost.
            let mut whole = line.to_vec();
            whole.push(b'\n');
            out.push(whole);
            return;
        };
        let pending = &mut self.pending[entry.stream as usize];
        pending.extend_from_slice(entry.message);
        if !entry.partial {
            pending.push(b'\n');
            out.push(std::mem::take(pending));
        } else if pending.len() >= MAX_LINE {
            out.push(std::mem::take(pending));
        }
    }

    /// Passes on the unfinished lines: their container has ended.
    fn finish(&mut self, out: &mut Vec<Vec<u8>>) {
        for pending in &mut self.pending {
            if !pending.is_empty() {
                out.push(std::mem::take(pending));
            }
        }
    }
}

/// One attempt's log file, read as conmon writes it, across its replacements.
#[derive(Debug)]
pub struct LogFile {
    path: PathBuf,
    file: File,
    /// Device and inode of `file`, to notice conmon replacing the path.
    identity: (u64, u64),
    /// The start of a file line conmon is still writing.
    carry: Vec<u8>,
    joiner: Joiner,
}

fn identity(file: &File) -> io::Result<(u64, u64)> {
    let meta = file.metadata()?;
    Ok((meta.dev(), meta.ino()))
}

impl LogFile {
    pub fn open(path: &Path) -> io::Result<LogFile> {
        let file = File::open(path)?;
        Ok(LogFile {
            path: path.to_path_buf(),
            identity: identity(&file)?,
            file,
            carry: Vec::new(),
            joiner: Joiner::default(),
        })
    }

    /// Appends the lines written since the last call to `out`: the rest of the
    /// file, then, when conmon has replaced it, the new file from its start.
    pub fn read_new(&mut self, out: &mut Vec<Vec<u8>>) -> io::Result<()> {
        self.drain(out)?;
        let replaced = match std::fs::metadata(&self.path) {
            Ok(meta) => (meta.dev(), meta.ino()) != self.identity,
            // Gone with its pod: there is nothing newer to read.
            Err(e) if e.kind() == io::ErrorKind::NotFound => false,
            Err(e) => return Err(e),
        };
        if replaced {
            let file = match File::open(&self.path) {
                Ok(file) => file,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(e),
            };
            // conmon ends the old file's lines before replacing it; an unended one
            // was not conmon's and stays a line of its own.
            if !self.carry.is_empty() {
                let line = std::mem::take(&mut self.carry);
                self.joiner.push(&line, out);
            }
            self.identity = identity(&file)?;
            self.file = file;
            self.drain(out)?;
        }
        Ok(())
    }

    /// Appends what is left unfinished: the attempt has ended.
    pub fn finish(&mut self, out: &mut Vec<Vec<u8>>) {
        if !self.carry.is_empty() {
            let line = std::mem::take(&mut self.carry);
            self.joiner.push(&line, out);
        }
        self.joiner.finish(out);
    }

    /// Reads the open file to its end.
    fn drain(&mut self, out: &mut Vec<Vec<u8>>) -> io::Result<()> {
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            let read = match self.file.read(&mut buffer) {
                Ok(0) => return Ok(()),
                Ok(read) => read,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            let mut rest = &buffer[..read];
            while let Some(end) = rest.iter().position(|b| *b == b'\n') {
                if self.carry.is_empty() {
                    self.joiner.push(&rest[..end], out);
                } else {
                    self.carry.extend_from_slice(&rest[..end]);
                    let line = std::mem::take(&mut self.carry);
                    self.joiner.push(&line, out);
                }
                rest = &rest[end + 1..];
            }
            self.carry.extend_from_slice(rest);
        }
    }
}

/// The last `tail` of `lines` (all of them when None).
fn keep_last(mut lines: Vec<Vec<u8>>, tail: Option<usize>) -> Vec<Vec<u8>> {
    if let Some(tail) = tail
        && lines.len() > tail
    {
        lines.drain(..lines.len() - tail);
    }
    lines
}

/// The lines of a log file as they are now, or the last `tail` of them.
pub fn read(mut file: LogFile, tail: Option<usize>) -> io::Result<Vec<Vec<u8>>> {
    let mut lines = Vec::new();
    file.read_new(&mut lines)?;
    file.finish(&mut lines);
    Ok(keep_last(lines, tail))
}

/// The log files of one container of a pod on this node, one per attempt.
#[derive(Debug, Clone)]
pub struct ContainerLogs {
    pub paths: Paths,
    pub namespace: String,
    pub pod: String,
    pub uid: String,
    pub container: String,
}

/// What follows once a follower has read an attempt's file to its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum After {
    /// The attempt may write more.
    Wait,
    /// The container was started again: read on in the next attempt's file.
    Next,
    /// The container ended and will not run again, or the pod is gone.
    End,
}

impl ContainerLogs {
    pub fn open(&self, attempt: u32) -> io::Result<LogFile> {
        LogFile::open(&self.paths.log(
            &self.namespace,
            &self.pod,
            &self.uid,
            &self.container,
            attempt,
        ))
    }

    /// Streams `file` (of `attempt`; the last `tail` lines of what is there first)
    /// to `emit` as lines are written, looking every `poll`, and goes on with the
    /// next attempt's file when the container restarts. Ends when the container
    /// has ended for good or the pod is gone, or when `emit` returns false (it is
    /// called at every look, with no lines when there are none, so that it can
    /// say the reader went away). Blocking.
    pub fn follow(
        &self,
        mut attempt: u32,
        mut file: LogFile,
        tail: Option<usize>,
        poll: Duration,
        mut emit: impl FnMut(Vec<Vec<u8>>) -> bool,
    ) -> io::Result<()> {
        let mut lines = Vec::new();
        file.read_new(&mut lines)?;
        if !emit(keep_last(lines, tail)) {
            return Ok(());
        }
        loop {
            // The state first, then the file: when the state says the attempt is
            // over, the read after it has everything the attempt wrote.
            let after = self.after(attempt);
            let mut lines = Vec::new();
            file.read_new(&mut lines)?;
            if after != After::Wait {
                file.finish(&mut lines);
            }
            if after == After::Next {
                match self.open(attempt + 1) {
                    Ok(next) => {
                        attempt += 1;
                        file = next;
                    }
                    // Removed with its pod meanwhile.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        emit(lines);
                        return Ok(());
                    }
                    Err(e) => return Err(e),
                }
            }
            if !emit(lines) || after == After::End {
                return Ok(());
            }
            if after == After::Wait {
                std::thread::sleep(poll);
            }
        }
    }

    /// What the pod's record says of the container after `attempt`. A container
    /// that ended with nothing waiting (no back-off, no failed start) is not
    /// started again: the pod worker restarts at once or records why it waits.
    fn after(&self, attempt: u32) -> After {
        let record = PodRecord::load(&self.paths.record(&self.uid));
        let Some(container) = record
            .as_ref()
            .and_then(|r| r.containers.get(&self.container))
        else {
            return After::End;
        };
        if container.attempt > attempt {
            After::Next
        } else if container.running.is_none()
            && container.terminated.is_some()
            && container.waiting.is_none()
        {
            After::End
        } else {
            After::Wait
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;
    use crate::runtime::record::{ContainerRecord, Running, Terminated, Waiting};

    const TIME: &str = "2026-11-22T05:55:20.191967542+00:00";

    fn entry(stream: &str, tag: &str, message: &str) -> String {
        format!("{TIME} {stream} {tag} {message}\n")
    }

    fn text(lines: &[Vec<u8>]) -> Vec<String> {
        lines
            .iter()
            .map(|l| String::from_utf8_lossy(l).into_owned())
            .collect()
    }

    #[test]
    fn parses_cri_lines() {
        assert_eq!(
            parse(format!("{TIME} stdout F hello world").as_bytes()),
            Some(Entry {
                stream: Stream::Stdout,
                partial: false,
                message: b"hello world"
            })
        );
        assert_eq!(
            parse(format!("{TIME} stderr P  two  spaces ").as_bytes()),
            Some(Entry {
                stream: Stream::Stderr,
                partial: true,
                message: b" two  spaces "
            })
        );
        // An empty line, and tags after the first.
        assert_eq!(
            parse(format!("{TIME} stdout F:x ").as_bytes()).map(|e| e.message),
            Some(&b""[..])
        );
        assert_eq!(
            parse(format!("{TIME} stdout F").as_bytes()).map(|e| e.message),
            Some(&b""[..])
        );
        for bad in [
            "hello",
            "",
            &format!("{TIME} stdin F x"),
            &format!("{TIME} stdout X x"),
            " stdout F x",
        ] {
            assert_eq!(parse(bad.as_bytes()), None, "{bad:?}");
        }
    }

    #[test]
    fn joins_partial_pieces_per_stream() {
        let mut joiner = Joiner::default();
        let mut out = Vec::new();
        for line in [
            entry("stdout", "P", "hel"),
            entry("stderr", "F", "oops"),
            entry("stdout", "P", "lo "),
            entry("stdout", "F", "world"),
            entry("stderr", "P", "unfinished"),
            "not a CRI line\n".to_string(),
        ] {
            joiner.push(line.trim_end_matches('\n').as_bytes(), &mut out);
        }
        assert_eq!(text(&out), ["oops\n", "hello world\n", "not a CRI line\n"]);
        joiner.finish(&mut out);
        assert_eq!(text(&out[3..]), ["unfinished"]);
    }

    #[test]
    fn a_very_long_line_is_passed_on_in_parts() {
        let mut joiner = Joiner::default();
        let mut out = Vec::new();
        let piece = "x".repeat(8192);
        for _ in 0..(MAX_LINE / 8192 + 1) {
            joiner.push(entry("stdout", "P", &piece).trim_end().as_bytes(), &mut out);
        }
        joiner.push(entry("stdout", "F", "end").trim_end().as_bytes(), &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].len(), MAX_LINE);
        assert_eq!(out[1], format!("{piece}end\n").into_bytes());
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        let lines = |n: usize| (0..n).map(|i| vec![i as u8]).collect::<Vec<_>>();
        assert_eq!(keep_last(lines(5), Some(2)), vec![vec![3], vec![4]]);
        assert_eq!(keep_last(lines(1), Some(2)), vec![vec![0]]);
        assert!(keep_last(lines(3), Some(0)).is_empty());
        assert_eq!(keep_last(lines(3), None).len(), 3);
    }

    fn append(path: &Path, text: &str) {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        file.write_all(text.as_bytes()).unwrap();
    }

    /// What conmon does at its size limit: a new file renamed over the old one.
    fn replace(path: &Path, text: &str) {
        let temporary = path.with_extension("log.tmp");
        std::fs::write(&temporary, text).unwrap();
        std::fs::rename(&temporary, path).unwrap();
    }

    #[test]
    fn reads_lines_written_across_file_replacements() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("1.log");
        append(&path, &entry("stdout", "F", "one"));
        // A file line conmon is halfway through writing.
        append(&path, &format!("{TIME} stdout P tw"));
        let mut file = LogFile::open(&path).unwrap();
        let mut out = Vec::new();
        file.read_new(&mut out).unwrap();
        assert_eq!(text(&out), ["one\n"]);

        append(&path, "o-\n");
        // The line's end lands in the next file.
        replace(&path, &entry("stdout", "F", "two"));
        file.read_new(&mut out).unwrap();
        assert_eq!(text(&out), ["one\n", "two-two\n"]);

        replace(&path, "");
        append(&path, &entry("stderr", "F", "three"));
        file.read_new(&mut out).unwrap();
        file.read_new(&mut out).unwrap();
        assert_eq!(text(&out), ["one\n", "two-two\n", "three\n"]);

        // Removed with its pod: nothing more, no error.
        std::fs::remove_file(&path).unwrap();
        file.read_new(&mut out).unwrap();
        assert_eq!(out.len(), 3);
    }

    #[test]
    fn read_returns_the_tail_and_unfinished_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("1.log");
        for i in 0..5 {
            append(&path, &entry("stdout", "F", &format!("line {i}")));
        }
        append(&path, &entry("stdout", "P", "no newline"));
        let all = read(LogFile::open(&path).unwrap(), None).unwrap();
        assert_eq!(all.len(), 6);
        assert_eq!(text(&all[5..]), ["no newline"]);
        let tail = read(LogFile::open(&path).unwrap(), Some(2)).unwrap();
        assert_eq!(text(&tail), ["line 4\n", "no newline"]);
    }

    fn logs(dir: &Path) -> ContainerLogs {
        ContainerLogs {
            paths: Paths {
                pods: dir.join("pods"),
                netns: dir.join("netns"),
                logs: dir.join("logs"),
                cgroup_parent: "/skiff-test".into(),
            },
            namespace: "default".into(),
            pod: "p".into(),
            uid: "u1".into(),
            container: "c".into(),
        }
    }

    fn save_record(logs: &ContainerLogs, container: ContainerRecord) {
        let mut record = PodRecord {
            uid: logs.uid.clone(),
            ..PodRecord::default()
        };
        record.containers.insert(logs.container.clone(), container);
        record.save(&logs.paths.record(&logs.uid)).unwrap();
    }

    fn log_path(logs: &ContainerLogs, attempt: u32) -> PathBuf {
        let path = logs.paths.log(
            &logs.namespace,
            &logs.pod,
            &logs.uid,
            &logs.container,
            attempt,
        );
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        path
    }

    fn running(attempt: u32) -> ContainerRecord {
        ContainerRecord {
            attempt,
            running: Some(Running {
                id: format!("u1-c-{attempt}"),
                started_at: TIME.into(),
                started_unix: 0,
            }),
            ..ContainerRecord::default()
        }
    }

    fn ended(attempt: u32, waiting: Option<&str>) -> ContainerRecord {
        ContainerRecord {
            attempt,
            terminated: Some(Terminated {
                id: format!("u1-c-{attempt}"),
                exit_code: 1,
                reason: "Error".into(),
                message: None,
                started_at: None,
                finished_at: TIME.into(),
            }),
            waiting: waiting.map(|reason| Waiting {
                reason: reason.into(),
                message: None,
            }),
            ..ContainerRecord::default()
        }
    }

    /// Follows in a thread, handing over what arrives; the test then plays the
    /// pod worker and conmon.
    fn spawn_follow(
        logs: &ContainerLogs,
        tail: Option<usize>,
    ) -> (
        std::sync::mpsc::Receiver<String>,
        std::thread::JoinHandle<io::Result<()>>,
    ) {
        let (tx, rx) = std::sync::mpsc::channel();
        let logs = logs.clone();
        let handle = std::thread::spawn(move || {
            let file = logs.open(1)?;
            logs.follow(1, file, tail, Duration::from_millis(10), |lines| {
                text(&lines).into_iter().all(|l| tx.send(l).is_ok())
            })
        });
        (rx, handle)
    }

    fn next(rx: &std::sync::mpsc::Receiver<String>) -> String {
        rx.recv_timeout(Duration::from_secs(5)).expect("a line")
    }

    #[test]
    fn follow_goes_on_across_replacements_and_restarts_until_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let logs = logs(dir.path());
        let first = log_path(&logs, 1);
        save_record(&logs, running(1));
        for line in ["old", "older", "recent"] {
            append(&first, &entry("stdout", "F", line));
        }
        let (rx, handle) = spawn_follow(&logs, Some(1));
        assert_eq!(next(&rx), "recent\n");
        append(&first, &entry("stderr", "F", "later"));
        assert_eq!(next(&rx), "later\n");
        replace(&first, &entry("stdout", "F", "after replacement"));
        assert_eq!(next(&rx), "after replacement\n");

        // Ended and backing off: still followed; then restarted.
        append(&first, &entry("stdout", "P", "last words"));
        save_record(&logs, ended(1, Some("CrashLoopBackOff")));
        std::thread::sleep(Duration::from_millis(50));
        assert!(!handle.is_finished());
        append(&log_path(&logs, 2), &entry("stdout", "F", "attempt 2"));
        save_record(&logs, running(2));
        assert_eq!(next(&rx), "last words");
        assert_eq!(next(&rx), "attempt 2\n");

        // Ended for good: the rest, then the end.
        append(&log_path(&logs, 2), &entry("stdout", "F", "bye"));
        save_record(&logs, ended(2, None));
        assert_eq!(next(&rx), "bye\n");
        handle.join().unwrap().unwrap();
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn follow_ends_when_the_pod_is_removed_or_the_reader_goes() {
        let dir = tempfile::tempdir().unwrap();
        let logs = logs(dir.path());
        append(&log_path(&logs, 1), &entry("stdout", "F", "hi"));
        save_record(&logs, running(1));
        let (rx, handle) = spawn_follow(&logs, None);
        assert_eq!(next(&rx), "hi\n");
        std::fs::remove_dir_all(dir.path().join("pods")).unwrap();
        handle.join().unwrap().unwrap();

        save_record(&logs, running(1));
        let (rx, handle) = spawn_follow(&logs, None);
        assert_eq!(next(&rx), "hi\n");
        drop(rx);
        append(&log_path(&logs, 1), &entry("stdout", "F", "unread"));
        handle.join().unwrap().unwrap();
    }
}
