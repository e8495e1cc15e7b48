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
