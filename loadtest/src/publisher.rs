//! The publisher: one writer and one reader thread per crier publish socket. Writers follow
//! a fixed timetable (message `seq` is due at `start + (seq-1)/rate`) and never wait for
//! replies; the payload carries the scheduled time, so a server that stalls the socket
//! shows up as latency. Readers count the pipelined `+OK <seq>` / `-ERR` replies.
//! In the `channels` workload each message goes to the channel its timetable names, with
//! that channel's own sequence number in the payload.

use crate::cli::PublishSpec;
use crate::payload;
use crate::report::SocketSummary;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Connected publish sockets, ready to go.
pub struct Connected {
    streams: Vec<(PathBuf, UnixStream)>,
}

pub fn connect(paths: &[PathBuf]) -> Result<Connected, String> {
    let mut streams = Vec::new();
    for p in paths {
        let s = UnixStream::connect(p).map_err(|e| format!("cannot connect to publish socket {}: {e}", p.display()))?;
        streams.push((p.clone(), s));
    }
    Ok(Connected { streams })
}

/// Sends PING on every socket and waits for +PONG (checks we talk to a crier).
pub fn ping(c: &Connected, timeout: Duration) -> Result<(), String> {
    for (p, s) in &c.streams {
        let mut s = s.try_clone().map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
        s.write_all(b"PING\r\n").map_err(|e| format!("{}: {e}", p.display()))?;
        let mut line = String::new();
        // Read byte-wise so nothing past the reply is buffered away.
        let mut b = [0u8; 1];
        while !line.ends_with('\n') {
            use std::io::Read;
            match s.read(&mut b) {
                Ok(1) => line.push(b[0] as char),
                Ok(_) => return Err(format!("{}: closed while waiting for +PONG", p.display())),
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                    return Err(format!("{}: no answer to PING within {timeout:?}: is crier running?", p.display()));
                }
                Err(e) => return Err(format!("{}: no answer to PING: {e}", p.display())),
            }
        }
        if line.trim_end() != "+PONG" {
            return Err(format!("{}: PING answered with {:?}", p.display(), line.trim_end()));
        }
        s.set_read_timeout(None).map_err(|e| e.to_string())?;
    }
    Ok(())
}

struct SocketStats {
    written: AtomicU64,
    acked: AtomicU64,
    errors: AtomicU64,
    max_lag_ns: AtomicU64,
    /// When the last message was written, ns after the first was due.
    last_write_ns: AtomicU64,
    writer_done: AtomicBool,
}

/// Per socket: path, counters, writer thread (its error), reader thread.
type SocketThreads = (PathBuf, Arc<SocketStats>, JoinHandle<Option<String>>, JoinHandle<ReaderOut>);

pub struct Running {
    handles: Vec<SocketThreads>,
    started: Instant,
    stop: Arc<AtomicBool>,
}

struct ReaderOut {
    first_errors: Vec<String>,
    error: Option<String>,
}

/// Starts publishing `spec.count` messages; message 1 is due at `start` (`start_unix_ns`).
pub fn start(c: Connected, spec: &PublishSpec, start: Instant, start_unix_ns: u64, deadline: Instant) -> Running {
    let stop = Arc::new(AtomicBool::new(false));
    let mut handles = Vec::new();
    for (path, stream) in c.streams {
        let stats = Arc::new(SocketStats {
            written: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            max_lag_ns: AtomicU64::new(0),
            last_write_ns: AtomicU64::new(0),
            writer_done: AtomicBool::new(false),
        });
        let rstream = stream.try_clone().expect("clone unix stream");
        let (st, spec2, stop2) = (stats.clone(), spec.clone(), stop.clone());
        let writer = std::thread::Builder::new()
            .name("publish-writer".into())
            .spawn(move || {
                let r = write_loop(stream, &spec2, start, start_unix_ns, deadline, &st, &stop2);
                st.writer_done.store(true, Ordering::SeqCst);
                r
            })
            .expect("spawn writer");
        let st = stats.clone();
        let reader = std::thread::Builder::new()
            .name("publish-reader".into())
            .spawn(move || read_loop(rstream, deadline, &st))
            .expect("spawn reader");
        handles.push((path, stats, writer, reader));
    }
    Running { handles, started: start, stop }
}

fn write_loop(
    stream: UnixStream,
    spec: &PublishSpec,
    start: Instant,
    start_unix_ns: u64,
    deadline: Instant,
    st: &SocketStats,
    stop: &AtomicBool,
) -> Option<String> {
    let mut w = BufWriter::with_capacity(64 * 1024, &stream);
    let kind = if spec.binary { "binary" } else { "text" };
    let mut buf = Vec::with_capacity(spec.size);
    let mut head = Vec::with_capacity(64);
    let schedule = spec.schedule.as_deref();
    // Channels mode: messages so far per channel (the next one's channel sequence number).
    let mut chseq: Vec<u64> = schedule.map_or(Vec::new(), |s| vec![0; s.iter().max().map_or(0, |&m| m as usize + 1)]);
    for seq in 1..=spec.count {
        let off = spec.offset_ns(seq);
        let due = start + Duration::from_nanos(off);
        let now = Instant::now();
        if due > now {
            // Caught up: push out what is buffered, then wait for the timetable.
            if let Err(e) = w.flush() {
                return Some(format!("write: {e}"));
            }
            std::thread::sleep(due - now);
        } else {
            let lag = (now - due).as_nanos() as u64;
            st.max_lag_ns.fetch_max(lag, Ordering::Relaxed);
        }
        if stop.load(Ordering::Relaxed) || Instant::now() >= deadline {
            return Some("stopped before the end (deadline)".into());
        }
        head.clear();
        match schedule {
            Some(s) => {
                let ch = s[seq as usize - 1];
                chseq[ch as usize] += 1;
                payload::encode_channel_into(&mut buf, seq, start_unix_ns + off, ch, chseq[ch as usize], spec.size);
                let _ = write!(head, "PUB ch{ch} {} {kind}\r\n", buf.len());
            }
            None => {
                payload::encode_into(&mut buf, seq, start_unix_ns + off, spec.size);
                let _ = write!(head, "PUB {} {} {kind}\r\n", spec.channel, buf.len());
            }
        }
        let r = w.write_all(&head).and_then(|_| w.write_all(&buf)).and_then(|_| w.write_all(b"\r\n"));
        if let Err(e) = r {
            return Some(format!("write: {e}"));
        }
        st.written.fetch_add(1, Ordering::SeqCst);
        st.last_write_ns.store(start.elapsed().as_nanos() as u64, Ordering::SeqCst);
    }
    w.flush().err().map(|e| format!("write: {e}"))
}

fn read_loop(stream: UnixStream, deadline: Instant, st: &SocketStats) -> ReaderOut {
    let _ = stream.set_read_timeout(Some(Duration::from_millis(100)));
    let mut r = BufReader::new(stream);
    let mut out = ReaderOut { first_errors: Vec::new(), error: None };
    let mut line = Vec::new();
    loop {
        let replies = st.acked.load(Ordering::SeqCst) + st.errors.load(Ordering::SeqCst);
        if st.writer_done.load(Ordering::SeqCst) && replies >= st.written.load(Ordering::SeqCst) {
            return out;
        }
        if Instant::now() >= deadline {
            out.error = Some("deadline passed while waiting for replies".into());
            return out;
        }
        match r.read_until(b'\n', &mut line) {
            Ok(0) => {
                out.error = Some("server closed the publish socket".into());
                return out;
            }
            Ok(_) if line.ends_with(b"\n") => {
                let text = String::from_utf8_lossy(&line).trim_end().to_string();
                line.clear();
                if text.starts_with("+OK") {
                    st.acked.fetch_add(1, Ordering::SeqCst);
                } else {
                    st.errors.fetch_add(1, Ordering::SeqCst);
                    if out.first_errors.len() < 5 {
                        out.first_errors.push(text);
                    }
                }
            }
            Ok(_) => {} // partial line, keep reading
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(e) => {
                out.error = Some(format!("read: {e}"));
                return out;
            }
        }
    }
}

impl Running {
    /// Messages written so far to the slowest socket (for the progress line).
    pub fn written(&self) -> u64 {
        self.handles.iter().map(|(_, s, _, _)| s.written.load(Ordering::Relaxed)).min().unwrap_or(0)
    }

    /// True when every writer has written its last message.
    pub fn writers_done(&self) -> bool {
        self.handles.iter().all(|(_, s, _, _)| s.writer_done.load(Ordering::SeqCst))
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    /// Waits for writers and readers (readers stop at the deadline at the latest).
    /// Returns per-socket results, the seconds from the first due time to the last write,
    /// and the number of messages written to every socket.
    pub fn join(self) -> (Vec<SocketSummary>, f64, u64) {
        let mut out = Vec::new();
        let mut published = u64::MAX;
        let mut last_write = 0u64;
        for (path, st, w, r) in self.handles {
            let werr = w.join().unwrap_or(Some("writer panicked".into()));
            let rout = r.join().unwrap_or(ReaderOut { first_errors: vec![], error: Some("reader panicked".into()) });
            let written = st.written.load(Ordering::SeqCst);
            published = published.min(written);
            last_write = last_write.max(st.last_write_ns.load(Ordering::SeqCst));
            out.push(SocketSummary {
                path: display(&path),
                written,
                acked: st.acked.load(Ordering::SeqCst),
                errors: st.errors.load(Ordering::SeqCst),
                first_errors: rout.first_errors,
                max_lag_ms: st.max_lag_ns.load(Ordering::SeqCst) as f64 / 1e6,
                error: werr.or(rout.error),
            });
        }
        let _ = self.started;
        (out, last_write as f64 / 1e9, if published == u64::MAX { 0 } else { published })
    }
}

fn display(p: &Path) -> String {
    p.display().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::net::UnixListener;

    /// A fake crier publish socket: answers PING, acks every PUB with +OK n, and returns
    /// the payloads it got.
    fn fake_crier(path: &Path) -> JoinHandle<Vec<(String, Vec<u8>)>> {
        let l = UnixListener::bind(path).unwrap();
        std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            let mut w = s.try_clone().unwrap();
            let mut r = BufReader::new(s);
            let mut got = Vec::new();
            let mut line = String::new();
            let mut n = 0;
            loop {
                line.clear();
                if r.read_line(&mut line).unwrap() == 0 {
                    return got;
                }
                let parts: Vec<&str> = line.split_whitespace().collect();
                match parts[0] {
                    "PING" => w.write_all(b"+PONG\r\n").unwrap(),
                    "PUB" => {
                        let len: usize = parts[2].parse().unwrap();
                        let mut p = vec![0; len + 2];
                        r.read_exact(&mut p).unwrap();
                        assert_eq!(&p[len..], b"\r\n");
                        p.truncate(len);
                        n += 1;
                        if parts[1] == "bad" {
                            w.write_all(b"-ERR nope\r\n").unwrap();
                        } else {
                            w.write_all(format!("+OK {n}\r\n").as_bytes()).unwrap();
                        }
                        got.push((parts[3].to_string(), p));
                    }
                    _ => panic!("unexpected {line}"),
                }
            }
        })
    }

    #[test]
    fn publishes_on_schedule_to_every_socket() {
        let dir = std::env::temp_dir().join(format!("crier-load-pub-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (a, b) = (dir.join("a.sock"), dir.join("b.sock"));
        let (fa, fb) = (fake_crier(&a), fake_crier(&b));
        let c = connect(&[a.clone(), b.clone()]).unwrap();
        ping(&c, Duration::from_secs(5)).unwrap();
        let spec = PublishSpec {
            sockets: vec![a, b],
            channel: "chan".into(),
            binary: true,
            size: 64,
            rate: 200.0,
            count: 20,
            schedule: None,
        };
        let t0 = 1_000_000_000_000u64;
        let started = Instant::now();
        let run = start(c, &spec, started, t0, started + Duration::from_secs(20));
        let (socks, secs, published) = run.join();
        assert_eq!(published, 20);
        // 20 messages at 200/s: the last is due at 95 ms.
        assert!((0.094..1.0).contains(&secs), "{secs}");
        for s in &socks {
            assert_eq!((s.written, s.acked, s.errors), (20, 20, 0), "{s:?}");
            assert!(s.error.is_none(), "{s:?}");
        }
        for f in [fa, fb] {
            let got = f.join().unwrap();
            assert_eq!(got.len(), 20);
            for (i, (kind, p)) in got.iter().enumerate() {
                assert_eq!(kind, "binary");
                assert_eq!(p.len(), 64);
                let seq = i as u64 + 1;
                assert_eq!(payload::decode(p), Some((seq, t0 + spec.offset_ns(seq))));
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn counts_refusals() {
        let dir = std::env::temp_dir().join(format!("crier-load-pub2-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let a = dir.join("a.sock");
        let f = fake_crier(&a);
        let spec = PublishSpec {
            sockets: vec![a.clone()],
            channel: "bad".into(),
            binary: false,
            size: 40,
            rate: 1000.0,
            count: 3,
            schedule: None,
        };
        let now = Instant::now();
        let run = start(connect(&[a]).unwrap(), &spec, now, 1, now + Duration::from_secs(20));
        let (socks, _, _) = run.join();
        assert_eq!((socks[0].acked, socks[0].errors), (0, 3));
        assert_eq!(socks[0].first_errors[0], "-ERR nope");
        f.join().unwrap();
        assert!(connect(&[dir.join("missing.sock")]).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
