//! Real NGINX in front of crier: the shipped sample (`deploy/nginx/crier.conf`) turned into
//! a plain-HTTP site on loopback, and the main configuration that runs it from a temporary
//! directory as any user.

use std::path::Path;

/// The sample's upstream and `location /ws` as a plain-HTTP site listening on
/// `127.0.0.1:listen_port`: the port-80 redirect block and the TLS lines are dropped, and
/// the sample's upstream servers are replaced by `upstream_lines` (each a whole `server …;`
/// directive), in the sample's place.
pub fn nginx_plain_site(sample: &str, upstream_lines: &[String], listen_port: u16) -> String {
    let redirect_start = sample.find("server {\n    listen 80;").expect("the sample's port-80 redirect block");
    let redirect_end = redirect_start + sample[redirect_start..].find("}\n").expect("end of the redirect block") + 2;
    let sample = format!("{}{}", &sample[..redirect_start], &sample[redirect_end..]);
    let mut site = String::new();
    let mut upstream_done = false;
    for line in sample.lines() {
        let t = line.trim();
        if t.starts_with("server 10.") {
            if !upstream_done {
                for u in upstream_lines {
                    site.push_str(&format!("    {u}\n"));
                }
                upstream_done = true;
            }
            continue;
        }
        if t.starts_with("ssl_") || t.starts_with("listen [::]") {
            continue;
        }
        site.push_str(&line.replace("listen 443 ssl;", &format!("listen 127.0.0.1:{listen_port};")));
        site.push('\n');
    }
    assert!(upstream_done, "the sample has no `server 10.…` upstream lines to replace");
    site
}

/// An NGINX main configuration that keeps every file under `dir` and includes `site`
/// (a file name in `dir`), so that it runs in the foreground as any user.
pub fn nginx_main_conf(dir: &Path, site: &str, worker_connections: u32) -> String {
    format!(
        "worker_processes 1;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\nevents {{ worker_connections {worker_connections}; }}\n\
         http {{\n access_log off;\n client_body_temp_path {d}/body;\n proxy_temp_path {d}/proxy;\n fastcgi_temp_path {d}/fcgi;\n \
         uwsgi_temp_path {d}/uwsgi;\n scgi_temp_path {d}/scgi;\n include {d}/{site};\n}}\n",
        d = dir.display()
    )
}

/// A real NGINX in the foreground (`nginx -p DIR -c DIR/nginx.conf`) serving the shipped
/// sample's upstream (`least_conn`) and `location /ws` on plain HTTP on
/// `127.0.0.1:listen_port`, in front of `upstreams`; SIGKILLed (by PID) when dropped.
pub struct Nginx {
    child: std::process::Child,
    pub port: u16,
}

impl Nginx {
    /// Writes the site and the main configuration into `dir` (which must outlive it) and
    /// waits until NGINX accepts connections.
    pub fn start(upstreams: &[std::net::SocketAddr], listen_port: u16, dir: &Path) -> Nginx {
        let found = std::process::Command::new("sh").arg("-c").arg("command -v nginx").output();
        assert!(
            found.is_ok_and(|o| o.status.success()),
            "nginx is not installed: apt-get install -y nginx-light (scripts/test.sh installs it)"
        );
        let sample = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/nginx/crier.conf")).unwrap();
        let lines: Vec<String> =
            upstreams.iter().map(|a| format!("server {a} max_fails=3 fail_timeout=10s;")).collect();
        let site = nginx_plain_site(&sample, &lines, listen_port);
        assert!(site.contains("least_conn;"), "the sample balances with least_conn");
        std::fs::write(dir.join("site.conf"), site).unwrap();
        std::fs::write(dir.join("nginx.conf"), nginx_main_conf(dir, "site.conf", 1024)).unwrap();
        let child = std::process::Command::new("nginx")
            .arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn nginx");
        let mut n = Nginx { child, port: listen_port };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::net::TcpStream::connect(n.addr()).is_err() {
            if let Ok(Some(st)) = n.child.try_wait() {
                let log = std::fs::read_to_string(dir.join("error.log")).unwrap_or_default();
                panic!("nginx exited ({st}) before listening:\n{log}");
            }
            assert!(std::time::Instant::now() < deadline, "nginx not listening on {} after 10 s", n.addr());
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        n
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.port))
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM (fast shutdown: the master stops its worker too, which a SIGKILL of the
        // master would leave behind) to the PID of the child spawned above; SIGKILL if it
        // is still there after 5 s.
        // SAFETY: a signal to our own child's PID, not yet reaped.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while matches!(self.child.try_wait(), Ok(None)) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
