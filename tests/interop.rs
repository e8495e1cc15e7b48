//! Interoperability with a WebSocket implementation nobody here wrote: Python `websockets`
//! with permessage-deflate on (tests/python/subscribe.py). `.ci/run` installs it.

#[macro_use]
mod common;

use common::*;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn python_has_websockets() -> Result<(), String> {
    let out = Command::new("python3")
        .args(["-c", "import websockets; print(websockets.__version__)"])
        .output()
        .map_err(|e| format!("cannot run python3: {e}"))?;
    if out.status.success() { Ok(()) } else { Err(String::from_utf8_lossy(&out.stderr).into_owned()) }
}

both_drivers! {
    fn python_websockets_with_deflate(d) {
        if let Err(e) = python_has_websockets() {
            panic!("this test needs python3 with the `websockets` package (`.ci/run` installs it, or `pip install websockets`): {e}");
        }
        let s = Server::start(d);
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/subscribe.py");
        let n = 20;
        let url = format!("ws://{}/ws?channels=scores", s.ws);
        let mut child = Command::new("python3")
            .args([script, &url, &n.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn python3");
        let pid = child.id();
        // Kills the script if the test fails before it exits (disarmed once it is reaped).
        struct Kill(u32);
        impl Drop for Kill {
            fn drop(&mut self) {
                if self.0 != 0 {
                    // SAFETY: signal to the PID of the child this test spawned.
                    unsafe { libc::kill(self.0 as libc::pid_t, libc::SIGKILL) };
                }
            }
        }
        let mut guard = Kill(pid);
        let rx = spawn_line_reader(child.stdout.take().unwrap());
        let next = |what: &str| {
            rx.recv_timeout(Duration::from_secs(20))
                .unwrap_or_else(|_| panic!("subscribe.py printed no {what} line"))
        };
        let ext = next("EXTENSIONS");
        assert_eq!(ext, format!("EXTENSIONS {DEFLATE_ANSWER}"), "negotiated extension header");
        let neg = next("NEGOTIATED");
        assert!(neg.contains("permessage-deflate"), "websockets did not enable deflate: {neg}");
        s.wait_connections(1);

        let mut expected = Vec::new();
        let mut p = s.publisher();
        for i in 0..n - 2 {
            if i % 5 == 4 {
                let b: Vec<u8> = (0..2000u32).map(|j| (j % 7) as u8 + i as u8).collect();
                p.publish("scores", &b, true);
                expected.push(format!("BINARY {}", hex(&b)));
            } else {
                let t = format!("{{\"match\":{i},\"score\":\"{}\"}} {}", i * 3, compressible_text(1500));
                p.publish("scores", t.as_bytes(), false);
                expected.push(format!("TEXT {}", hex(t.as_bytes())));
            }
        }
        // Small and incompressible ones on the broadcast channel.
        p.publish("*", "é".as_bytes(), false);
        expected.push(format!("TEXT {}", hex("é".as_bytes())));
        let noise = random_bytes(3, 700);
        p.publish("*", &noise, true);
        expected.push(format!("BINARY {}", hex(&noise)));
        assert_eq!(expected.len(), n);

        for (i, want) in expected.iter().enumerate() {
            let got = next("message");
            assert!(got == *want, "message {i}: got {:.120}…, want {:.120}…", got, want);
        }
        let done = next("DONE");
        assert_eq!(done, "DONE 1000", "python's close handshake");
        let (tx2, rx2) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx2.send(child.wait_with_output());
        });
        let out = rx2.recv_timeout(Duration::from_secs(20)).expect("subscribe.py did not exit").unwrap();
        guard.0 = 0;
        assert!(out.status.success(), "subscribe.py failed: {}", String::from_utf8_lossy(&out.stderr));
        // The messages really went out compressed.
        s.wait_metric("crier_bytes_written_total", &[("encoding", "deflate")], IO_TIMEOUT, "> 0", |v| v > 0.0);
        s.wait_metric("crier_connections_closed_total", &[("reason", "client")], IO_TIMEOUT, ">= 1", |v| v >= 1.0);
    }
}
