//! `crier publish`: a small blocking client of the publisher socket, for scripts.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::process::ExitCode;

use super::protocol::encode_pub;
use crate::config::{PublishArgs, default_publish_socket};
use crate::ws::frame::MessageKind;

/// Runs `crier publish`. Prints each sequence number; exits 1 with the server's reason on a
/// refusal, 2 when the server cannot be reached or the input cannot be read.
pub fn run(args: &PublishArgs) -> ExitCode {
    // Checked here, with the server's words: sent as is, a name with a space would split the
    // command line and be refused as a malformed length instead.
    if let Err(e) = crate::channel::ChannelName::parse(&args.channel) {
        eprintln!("crier publish: refused: bad channel name '{}': {e}", args.channel);
        return ExitCode::from(1);
    }
    if args.redis.is_some() || args.redis_cluster.is_some() {
        // `--redis` / `--redis-cluster`: straight through Redis, no local crier needed (src/cluster/).
        return crate::cluster::publish_client::run(args);
    }
    let path = match &args.publish_socket {
        Some(p) => p.clone(),
        None => {
            let path = default_publish_socket();
            // The default's name can be guessed: connect only if its directory is private,
            // or another local user could be the one listening (and reading the payload).
            if let Some(Err(e)) = path.parent().map(|dir| super::private_dir(dir, false)) {
                eprintln!("crier publish: {e}");
                return ExitCode::from(2);
            }
            path
        }
    };
    let stream = match UnixStream::connect(&path) {
        Ok(s) => s,
        Err(e) => {
            eprintln!(
                "crier publish: cannot connect to {}: {e} (is `crier serve` running? set --publish-socket or CRIER_PUBLISH_SOCKET)",
                path.display()
            );
            return ExitCode::from(2);
        }
    };
    let kind = if args.binary { MessageKind::Binary } else { MessageKind::Text };
    let channel = args.channel.clone();
    let reader = match stream.try_clone() {
        Ok(s) => BufReader::new(s),
        Err(e) => {
            eprintln!("crier publish: {e}");
            return ExitCode::from(2);
        }
    };
    let mut writer = stream;
    let sent = if args.lines {
        // Pipelined: a thread sends every line while this one reads the replies.
        std::thread::spawn(move || -> Result<usize, String> {
            let mut count = 0;
            let mut out = Vec::new();
            for line in std::io::stdin().lock().split(b'\n') {
                let mut line = line.map_err(|e| format!("reading stdin: {e}"))?;
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                out.clear();
                encode_pub(&channel, kind, &line, &mut out);
                if writer.write_all(&out).is_err() {
                    break; // the server closed the connection; its reply says why
                }
                count += 1;
            }
            let _ = writer.shutdown(std::net::Shutdown::Write);
            Ok(count)
        })
    } else {
        let payload = match args.message.as_deref() {
            Some(m) if m != "-" => Ok(m.as_bytes().to_vec()),
            _ => {
                let mut v = Vec::new();
                std::io::stdin().read_to_end(&mut v).map(|_| v).map_err(|e| format!("reading stdin: {e}"))
            }
        };
        std::thread::spawn(move || -> Result<usize, String> {
            let payload = payload?;
            let mut out = Vec::new();
            encode_pub(&channel, kind, &payload, &mut out);
            let _ = writer.write_all(&out);
            let _ = writer.shutdown(std::net::Shutdown::Write);
            Ok(1)
        })
    };
    let mut stdout = std::io::stdout().lock();
    let mut failed = false;
    for line in reader.lines() {
        let Ok(line) = line else { break };
        if let Some(seq) = line.strip_prefix("+OK ") {
            let _ = writeln!(stdout, "{seq}");
        } else if let Some(reason) = line.strip_prefix("-ERR ") {
            eprintln!("crier publish: refused: {reason}");
            failed = true;
            break;
        } else {
            eprintln!("crier publish: unexpected reply: {line}");
            failed = true;
            break;
        }
    }
    let _ = stdout.flush();
    match sent.join() {
        Ok(Err(e)) => {
            eprintln!("crier publish: {e}");
            ExitCode::from(2)
        }
        _ if failed => ExitCode::from(1),
        _ => ExitCode::SUCCESS,
    }
}
