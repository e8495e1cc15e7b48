//! The flight board example (`examples/flight-board/`), run as the README says: the two
//! commands of "Example: a live flight board" (`cargo build --release`, then `run.sh`, which
//! starts the release crier, the publisher and the page server), then the page in Debian's
//! headless Chromium (`tests/browser/flight-board.mjs`, playwright-core): the board fills,
//! rows change every second, and each board shown is exactly the message crier delivered
//! under the same sequence number to a second, plain WebSocket subscriber. A screenshot is
//! left at `target/tmp/flight-board.png`. Ctrl-C (SIGINT to run.sh's process group) stops
//! all of it.
//!
//! Needs Chromium, playwright-core (tests/browser/node_modules) and python3: scripts/test.sh
//! installs them.

#[macro_use]
mod common;

use common::*;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const HEADING: &str = "## Example: a live flight board";
/// Boards the page must show (each a different update).
const UPDATES: usize = 4;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `bash -c cmd` in the checkout, as a reader would type it, in its own process group.
fn shell(cmd: &str, envs: &[(&str, String)]) -> Command {
    let mut c = Command::new("bash");
    c.args(["-c", cmd]).current_dir(repo()).stdin(Stdio::null()).process_group(0);
    without_outside_settings(&mut c);
    for (k, v) in envs {
        c.env(k, v);
    }
    c
}

/// run.sh and everything it started (its process group), stopped as Ctrl-C would.
struct Running {
    child: Child,
    pid: i32,
}

impl Running {
    fn interrupt(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        // SAFETY: signals to the process group this test created for run.sh.
        unsafe { libc::kill(-self.pid, libc::SIGINT) };
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: as above; SIGKILL only if Ctrl-C did not stop it.
            unsafe { libc::kill(-self.pid, libc::SIGKILL) };
            let _ = self.child.wait();
        }
    }
}

/// The `m <channel> <seq> <epoch>\n<json>` messages a plain subscriber got, by seq.
fn collect_published(ws: &mut WsClient, until_seq: u64, into: &mut BTreeMap<u64, serde_json::Value>) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while into.keys().next_back().is_none_or(|&s| s < until_seq) {
        assert!(Instant::now() < deadline, "the subscriber did not get seq {until_seq}; got {:?}", into.keys());
        let m = ws.recv(Duration::from_secs(10)).expect("a message from crier");
        let text = m.text();
        let (header, body) = text.split_once('\n').expect("an envelope header");
        let f: Vec<&str> = header.split(' ').collect();
        assert_eq!((f[0], f[1]), ("m", "flights"), "{header}");
        into.insert(f[2].parse().unwrap(), serde_json::from_str(body).expect("the board is JSON"));
    }
}

#[test]
fn the_readme_commands_show_a_live_flight_board() {
    let browser = browser_dir();
    let cmds = readme_commands(HEADING);
    assert_eq!(cmds.len(), 2, "{HEADING:?} promises two commands: {cmds:?}");
    assert!(cmds[1].contains("examples/flight-board/run.sh"), "the second command starts the example: {cmds:?}");

    // 1. Build (a no-op when the release binary is up to date).
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let built = shell(&cmds[0], &[]).env("CARGO", &cargo).status().expect("run the README's first command");
    assert!(built.success(), "{:?} failed: {built}", cmds[0]);

    // 2. Start it, on free ports (the defaults may be taken by other tests).
    let (ws_port, admin_port, page_port) = (free_port(), free_port(), free_port());
    let envs = [
        ("CRIER_LISTEN", format!("127.0.0.1:{ws_port}")),
        ("CRIER_ADMIN_LISTEN", format!("127.0.0.1:{admin_port}")),
        ("FLIGHT_BOARD_PORT", page_port.to_string()),
    ];
    let mut child = shell(&cmds[1], &envs).stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().unwrap();
    let pid = child.id() as i32;
    let stdout = child.stdout.take().unwrap();
    let mut running = Running { child, pid };
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let url = loop {
        let line = rx.recv_timeout(Duration::from_secs(30)).expect("run.sh prints the page's address");
        if let Some(rest) = line.strip_prefix("flight board: open ") {
            break rest.split_whitespace().next().unwrap().to_string();
        }
    };
    assert_eq!(url, format!("http://127.0.0.1:{page_port}/?crier=http://127.0.0.1:{ws_port}"));
    let page_addr = format!("127.0.0.1:{page_port}").parse().unwrap();
    wait_until(Duration::from_secs(10), "the page server", || http_get(page_addr, "/").is_ok_and(|r| r.status == 200));

    // A second subscriber, to compare the page with what crier delivered.
    let ws_addr = format!("127.0.0.1:{ws_port}").parse().unwrap();
    let mut sub =
        WsClient::connect_with(ws_addr, "/ws?channels=flights&last=1", &[("Sec-WebSocket-Protocol", "crier.v1")])
            .expect("subscribe to flights");

    // 3. The page, in Chromium.
    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("flight-board.png");
    let _ = std::fs::remove_file(&shot);
    let out = Command::new("node")
        .arg(browser.join("flight-board.mjs"))
        .args([&url, shot.to_str().unwrap(), &UPDATES.to_string()])
        .env("CHROMIUM", CHROMIUM)
        .stdin(Stdio::null())
        .output()
        .expect("run node (apt-get install nodejs)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let context = format!("flight-board.mjs: {}\n{stdout}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && !stdout.contains("\nfatal"), "{context}");
    assert!(shot.exists(), "no screenshot\n{context}");
    eprintln!("screenshot: {}", shot.display());

    let boards: Vec<serde_json::Value> =
        stdout.lines().filter_map(|l| l.strip_prefix("board ")).map(|j| serde_json::from_str(j).unwrap()).collect();
    assert_eq!(boards.len(), UPDATES, "{context}");
    let seqs: Vec<u64> = boards.iter().map(|b| b["seq"].as_str().unwrap().parse().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "updates arrive in order: {seqs:?}");
    let headers: Vec<&str> = boards[0]["headers"].as_array().unwrap().iter().map(|h| h.as_str().unwrap()).collect();
    assert_eq!(headers, ["Departs", "Flight", "Destination", "Gate", "Status", "Updated"]);

    let mut published = BTreeMap::new();
    collect_published(&mut sub, *seqs.last().unwrap(), &mut published);
    let mut changed_rows = 0;
    for (i, b) in boards.iter().enumerate() {
        assert_eq!(b["state"], "live", "{b}");
        let rows = b["rows"].as_array().unwrap();
        assert!(rows.len() >= 10, "a full board: {b}");
        let msg = &published[&seqs[i]];
        let flights = msg["flights"].as_array().unwrap();
        assert_eq!(rows.len(), flights.len(), "board #{} has the message's rows", seqs[i]);
        for (row, f) in rows.iter().zip(flights) {
            let cells: Vec<&str> = row.as_array().unwrap().iter().map(|c| c.as_str().unwrap()).collect();
            assert_eq!(
                cells[..5],
                [&f["departs"], &f["flight"], &f["destination"], &f["gate"], &f["status"]].map(|v| v.as_str().unwrap()),
                "board #{}: the page shows what crier delivered",
                seqs[i]
            );
            assert!(cells[5].contains(':'), "an update time: {cells:?}");
        }
        assert_eq!(b["changed"], msg["changed"], "the changed flight is highlighted");
        if i > 0 && boards[i - 1]["rows"] != b["rows"] {
            changed_rows += 1;
        }
    }
    assert!(changed_rows >= UPDATES - 2, "the board changes from update to update: {boards:?}");

    // 4. Ctrl-C stops crier, the publisher and the page server.
    drop(sub);
    let st = running.interrupt(Duration::from_secs(15));
    assert!(st.is_some(), "run.sh did not stop on Ctrl-C");
    wait_until(Duration::from_secs(5), "crier and the page server to be gone", || {
        std::net::TcpStream::connect(ws_addr).is_err() && std::net::TcpStream::connect(page_addr).is_err()
    });
}

#[test]
fn run_sh_passes_shellcheck_and_publish_py_compiles() {
    let out = Command::new("shellcheck")
        .arg(repo().join("examples/flight-board/run.sh"))
        .output()
        .expect("shellcheck is not installed: apt-get install -y shellcheck (scripts/test.sh installs it)");
    assert!(out.status.success(), "shellcheck run.sh:\n{}", String::from_utf8_lossy(&out.stdout));
    let out = Command::new("python3")
        .args(["-m", "py_compile"])
        .arg(repo().join("examples/flight-board/publish.py"))
        .env("PYTHONPYCACHEPREFIX", std::env::temp_dir().join("crier-pycache"))
        .output()
        .expect("python3 (apt-get install python3)");
    assert!(out.status.success(), "publish.py: {}", String::from_utf8_lossy(&out.stderr));
}
