//! Access control against the real binary: signed connection tokens minted by PyJWT
//! (tests/python/mint.py; HS256, ES256, EdDSA and RS256), public channels, origins, the admin
//! token, expiry in the sweep (4001), SIGHUP reloads. Every refusal is checked for its
//! status, its body and its counter, and a subscriber that was admitted keeps receiving
//! everything throughout.

#[macro_use]
mod common;

use common::*;
use serde_json::json;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const MINT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/mint.py");
const SECRET: &str = "test-secret-0123456789abcdef0123456789";
const ORIGIN: &str = "https://app.example.test";

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn python(args: &[&str], stdin: &str) -> String {
    let mut child = Command::new("python3")
        .arg(MINT)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn python3 (.ci/run installs it): {e}"));
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !err.contains("No module named"),
        "tests/access.rs needs PyJWT and cryptography (`.ci/run` installs them: python3 -m pip install PyJWT cryptography):\n{err}"
    );
    assert!(out.status.success(), "mint.py {args:?} failed: {err}");
    String::from_utf8(out.stdout).unwrap()
}

/// One token per request `{alg, key, claims[, headers]}`, signed by PyJWT.
fn mint(reqs: &[serde_json::Value]) -> Vec<String> {
    let input: String = reqs.iter().map(|r| format!("{r}\n")).collect();
    let tokens: Vec<String> = python(&["sign"], &input).lines().map(str::to_string).collect();
    assert_eq!(tokens.len(), reqs.len());
    tokens
}

fn mint1(alg: &str, key: &Path, claims: serde_json::Value) -> String {
    mint(&[json!({"alg": alg, "key": key, "claims": claims})]).remove(0)
}

/// A key pair made by Python's cryptography: (private.pem, public.pem).
fn keygen(alg: &str, dir: &TempDir) -> (PathBuf, PathBuf) {
    python(&["keygen", alg, dir.path().to_str().unwrap()], "");
    (dir.join("private.pem"), dir.join("public.pem"))
}

fn secret_file(dir: &TempDir, name: &str, secret: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, format!("{secret}\n")).unwrap();
    p
}

/// The upgrade's answer: Ok(client) on 101, else the refusal.
fn upgrade(s: &Server, target: &str, extra: &[(&str, &str)]) -> Result<WsClient, HttpResponse> {
    WsClient::connect_with(s.ws, target, extra)
}

#[track_caller]
fn refused(s: &Server, target: &str, extra: &[(&str, &str)], status: u16, body: &str) -> HttpResponse {
    match upgrade(s, target, extra) {
        Ok(_) => panic!("{target} {extra:?}: upgraded, expected {status} {body:?}"),
        Err(r) => {
            assert_eq!(r.status, status, "{target} {extra:?}: {r:?}");
            assert!(r.body_text().contains(body), "{target} {extra:?}: body {:?} lacks {body:?}", r.body_text());
            r
        }
    }
}

/// The token with the first character of its signature changed (a whole 6 bits of it,
/// unlike the last character, part of which base64url leaves unused).
fn tamper(token: &str) -> String {
    let at = token.rfind('.').unwrap() + 1;
    let swap = if token.as_bytes()[at] == b'A' { "B" } else { "A" };
    format!("{}{swap}{}", &token[..at], &token[at + 1..])
}

fn refusals(s: &Server, reason: &str) -> f64 {
    s.metric0("crier_connections_refused_total", &[("reason", reason)])
}

#[test]
fn hs256_tokens_grant_channels_and_every_refusal_is_counted() {
    let dir = TempDir::new();
    let key = secret_file(&dir, "secret", SECRET);
    let other = secret_file(&dir, "other", "another-secret-0123456789abcdef0123456789");
    let origins = format!("{ORIGIN},https://*.pages.example.test");
    let s = Server::builder(Driver::Epoll)
        .args(["--jwt-key-file", key.to_str().unwrap(), "--public-channels", "news,prices.*"])
        .args(["--allowed-origins", &origins])
        .start();
    let t = now();
    let ok = json!({"exp": t + 600, "iat": t, "sub": "user-42", "channels": ["user.42.*", "team"]});
    let tokens = mint(&[
        json!({"alg": "HS256", "key": key, "claims": ok}),
        json!({"alg": "HS256", "key": key, "claims": {"exp": t - 1, "channels": ["user.42.*"]}}),
        json!({"alg": "HS256", "key": key, "claims": {"exp": t + 600, "nbf": t + 300, "channels": ["team"]}}),
        json!({"alg": "HS256", "key": key, "claims": {"exp": t + 600, "iat": t + 300, "channels": ["team"]}}),
        json!({"alg": "HS256", "key": key, "claims": {"channels": ["team"]}}),
        json!({"alg": "HS256", "key": other, "claims": {"exp": t + 600, "channels": ["team"]}}),
        json!({"alg": "none", "claims": {"exp": t + 600, "channels": ["team"]}}),
        json!({"alg": "HS512", "key": key, "claims": {"exp": t + 600, "channels": ["team"]}}),
        json!({"alg": "HS256", "key": key, "claims": {"exp": t + 600, "channels": "team"}}),
        json!({"alg": "HS256", "key": key, "claims": {"exp": t + 600, "channels": ["bad name"]}}),
    ]);
    let [good, expired, nbf, iat, no_exp, bad_sig, none, hs512, not_list, bad_pattern] = &tokens[..] else {
        unreachable!()
    };
    let origin = [("Origin", ORIGIN)];

    // Admitted: public channels without a token; granted ones with it, either way it comes.
    let mut public = upgrade(&s, "/ws?channels=news,prices.eur", &origin).expect("public channels need no token");
    let mut by_query = upgrade(&s, &format!("/ws?channels=user.42.inbox,news&token={good}"), &origin).unwrap();
    let bearer = format!("Bearer {good}");
    let mut by_header =
        upgrade(&s, "/ws?channels=team", &[("Origin", "https://a.pages.example.test"), ("Authorization", &bearer)])
            .expect("Authorization: Bearer, an origin matching the subdomain pattern");
    let mut no_origin = upgrade(&s, "/ws?channels=news", &[]).expect("no Origin header: a non-browser client");
    s.wait_connections(4);

    // Every refusal: status, body, counter.
    let missing = refused(&s, "/ws?channels=news,team", &origin, 401, "invalid token: missing");
    assert_eq!(missing.header("www-authenticate"), Some("Bearer"), "{missing:?}");
    refused(&s, "/ws?channels=prices", &origin, 401, "invalid token: missing"); // prices.* is not prices
    let q = |tok: &str| format!("/ws?channels=team&token={tok}");
    refused(
        &s,
        &format!("/ws?channels=user.43.inbox&token={good}"),
        &origin,
        403,
        "channel not allowed: user.43.inbox",
    );
    refused(&s, &format!("/ws?channels=news,user.42&token={good}"), &origin, 403, "channel not allowed: user.42");
    refused(&s, &q(expired), &origin, 401, "invalid token: expired");
    refused(&s, &q(nbf), &origin, 401, "invalid token: not valid yet");
    refused(&s, &q(iat), &origin, 401, "invalid token: issued in the future");
    refused(&s, &q(no_exp), &origin, 401, "invalid token: no exp claim");
    refused(&s, &q(bad_sig), &origin, 401, "invalid token: bad signature");
    refused(&s, &q(none), &origin, 401, "(this server accepts HS256 only)");
    refused(&s, &q(hs512), &origin, 401, "invalid token: wrong algorithm");
    refused(&s, &q(not_list), &origin, 401, "invalid token: malformed claims");
    refused(&s, &q(bad_pattern), &origin, 401, "invalid token: bad channels claim");
    refused(&s, &q("not.a.jwt"), &origin, 401, "invalid token: malformed token");
    refused(&s, &q(&tamper(good)), &origin, 401, "invalid token: bad signature");
    let bad_bearer = format!("Bearer {bad_sig}");
    refused(&s, "/ws?channels=team", &[("Origin", ORIGIN), ("Authorization", &bad_bearer)], 401, "bad signature");
    refused(&s, &q(good), &[("Origin", "https://evil.test")], 403, "origin not allowed: https://evil.test");
    refused(&s, &q(good), &[("Origin", "https://pages.example.test")], 403, "origin not allowed");
    refused(&s, &q(good), &[("Origin", "http://app.example.test")], 403, "origin not allowed");

    for (reason, n) in [
        ("token_missing", 2.0),
        ("channel_forbidden", 2.0),
        ("token_expired", 1.0),
        ("token_invalid", 11.0),
        ("origin_forbidden", 3.0),
    ] {
        assert_eq!(refusals(&s, reason), n, "crier_connections_refused_total{{reason=\"{reason}\"}}");
    }

    // The admitted ones heard everything meant for them, through all of that.
    s.publish("news", "n1");
    s.publish("user.42.inbox", "u1");
    s.publish("team", "t1");
    s.publish("prices.eur", "p1");
    assert_eq!(public.expect_text(), "n1");
    assert_eq!(public.expect_text(), "p1");
    assert_eq!(by_query.expect_text(), "n1");
    assert_eq!(by_query.expect_text(), "u1");
    assert_eq!(by_header.expect_text(), "t1");
    assert_eq!(no_origin.expect_text(), "n1");
    for c in [&mut public, &mut by_query, &mut by_header, &mut no_origin] {
        c.expect_silence(Duration::from_millis(200));
    }
    assert!(!s.log_text().contains("user-42"), "sub is logged at debug level only, and no token ever");
    assert!(!s.log_text().contains(&good[..40]), "no token in the log");
}

#[test]
fn es256_eddsa_and_rs256_keys_with_issuer_and_audience() {
    for alg in ["ES256", "EdDSA", "RS256"] {
        let dir = TempDir::new();
        let (private, public) = keygen(alg, &dir);
        let other_dir = TempDir::new();
        let (other_private, _) = keygen(alg, &other_dir);
        let hs = secret_file(&dir, "hs", SECRET);
        let s = Server::builder(Driver::Epoll)
            .args(["--jwt-key-file", public.to_str().unwrap(), "--jwt-algorithm", alg])
            .args(["--jwt-issuer", "backend", "--jwt-audience", "crier"])
            .start();
        let t = now();
        let claims = |iss: &str, aud: &str| json!({"exp": t + 600, "iss": iss, "aud": aud, "channels": ["room.*"]});
        let tokens = mint(&[
            json!({"alg": alg, "key": private, "claims": claims("backend", "crier")}),
            json!({"alg": alg, "key": private, "claims": claims("someone", "crier")}),
            json!({"alg": alg, "key": private, "claims": claims("backend", "other")}),
            json!({"alg": alg, "key": other_private, "claims": claims("backend", "crier")}),
            json!({"alg": "HS256", "key": hs, "claims": claims("backend", "crier")}),
            json!({"alg": alg, "key": private, "claims": {"exp": t + 600, "aud": "crier", "channels": ["room.*"]}}),
            json!({"alg": alg, "key": private, "claims": {"exp": t + 600, "iss": "backend", "channels": ["room.*"]}}),
        ]);
        let target = |tok: &str| format!("/ws?channels=room.1&token={tok}");
        let mut c = upgrade(&s, &target(&tokens[0]), &[]).unwrap_or_else(|r| panic!("{alg}: {r:?}"));
        refused(&s, &target(&tokens[1]), &[], 401, "invalid token: wrong issuer");
        refused(&s, &target(&tokens[2]), &[], 401, "invalid token: wrong audience");
        refused(&s, &target(&tokens[3]), &[], 401, "invalid token: bad signature");
        let pinned = format!("invalid token: wrong algorithm (this server accepts {alg} only)");
        refused(&s, &target(&tokens[4]), &[], 401, &pinned);
        refused(&s, &target(&tokens[5]), &[], 401, "invalid token: no iss claim");
        refused(&s, &target(&tokens[6]), &[], 401, "invalid token: no aud claim");
        assert_eq!(refusals(&s, "token_invalid"), 6.0, "{alg}");
        s.publish("room.1", "hello");
        assert_eq!(c.expect_text(), "hello", "{alg}");
    }
}

#[test]
fn an_expired_token_is_closed_4001_by_the_sweep_and_others_stay() {
    let dir = TempDir::new();
    let key = secret_file(&dir, "secret", SECRET);
    let s = Server::builder(Driver::Epoll)
        .args(["--jwt-key-file", key.to_str().unwrap(), "--public-channels", "news"])
        .args(["--ping-interval", "1s", "--idle-timeout", "30s"])
        .start();
    let long = mint1("HS256", &key, json!({"exp": now() + 600, "channels": ["live"]}));
    // A token 4 s from expiry once minted (Python may be slow to start on a busy machine:
    // mint again until at least 2 s are left to connect with it).
    let (exp, short) = (0..5)
        .map(|_| {
            let exp = now() + 4;
            (exp, mint1("HS256", &key, json!({"exp": exp, "channels": ["live"]})))
        })
        .find(|(exp, _)| now() + 2 <= *exp)
        .expect("minting a token took over 2 s, five times");
    let mut dies = upgrade(&s, &format!("/ws?channels=live,news&token={short}"), &[]).unwrap();
    let mut stays = upgrade(&s, &format!("/ws?channels=live&token={long}"), &[]).unwrap();
    let mut public = upgrade(&s, "/ws?channels=news", &[]).unwrap();
    s.wait_connections(3);
    s.publish("live", "before");
    assert_eq!(dies.expect_text(), "before");
    // The close frame: 4001, reason "token expired", at or after exp and within the sweep's
    // tick (at most 250 ms with --ping-interval 1s; 2 s allowed for a busy machine).
    let deadline = Instant::now() + Duration::from_secs(10);
    let close = loop {
        let f = dies.read_frame(deadline.saturating_duration_since(Instant::now())).expect("a close frame");
        if f.opcode == OP_CLOSE {
            break f;
        }
    };
    let at = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64();
    assert_eq!(close.close_code(), Some(4001));
    assert_eq!(&close.payload[2..], b"token expired");
    assert!(at >= exp as f64, "closed before exp: {at} < {exp}");
    assert!(at < exp as f64 + 2.0, "the sweep closes within a tick of exp: {at} vs {exp}");
    s.wait_metric("crier_connections_closed_total", &[("reason", "token_expired")], IO_TIMEOUT, "== 1", |v| v == 1.0);
    s.publish("live", "after");
    s.publish("news", "n");
    assert_eq!(stays.expect_text(), "before");
    assert_eq!(stays.expect_text(), "after");
    assert_eq!(public.expect_text(), "n");
    assert_eq!(s.metric0("crier_connections", &[]), 2.0, "the others stay");
}

#[test]
fn sighup_reloads_the_key_and_drops_nobody() {
    let dir = TempDir::new();
    let key = secret_file(&dir, "secret", SECRET);
    let old = dir.join("old");
    std::fs::copy(&key, &old).unwrap();
    let new_secret = "the-new-secret-0123456789abcdef0123456789";
    let new = secret_file(&dir, "new", new_secret);
    let s =
        Server::builder(Driver::Epoll).args(["--jwt-key-file", key.to_str().unwrap(), "--log-level", "debug"]).start();
    let claims = json!({"exp": now() + 600, "channels": ["c"], "sub": "user-7"});
    let old_token = mint1("HS256", &old, claims.clone());
    let new_token = mint1("HS256", &new, claims);
    let target = |t: &str| format!("/ws?channels=c&token={t}");
    let mut kept = upgrade(&s, &target(&old_token), &[]).unwrap();
    refused(&s, &target(&new_token), &[], 401, "bad signature");
    // `sub` is logged at debug level only (the HS256 test runs at info and checks it is not).
    s.wait_log(IO_TIMEOUT, |l| l.contains("DEBUG") && l.contains("token accepted") && l.contains("user-7"))
        .expect("sub logged at debug level");

    // A file that cannot be used: the key in force stays.
    std::fs::write(&key, "short\n").unwrap();
    s.signal(libc::SIGHUP);
    s.wait_log(IO_TIMEOUT, |l| l.contains("SIGHUP") && l.contains("the key in force stays"))
        .expect("reload error logged");
    assert!(upgrade(&s, &target(&old_token), &[]).is_ok(), "the old key still verifies after a failed reload");

    std::fs::write(&key, format!("{new_secret}\n")).unwrap();
    s.signal(libc::SIGHUP);
    s.wait_log(IO_TIMEOUT, |l| l.contains("reloaded")).expect("reload logged");
    let mut fresh = upgrade(&s, &target(&new_token), &[]).expect("the new key verifies");
    refused(&s, &target(&old_token), &[], 401, "bad signature"); // no rotation window by default
    s.publish("c", "m");
    assert_eq!(kept.expect_text(), "m", "a connection admitted under the old key stays");
    assert_eq!(fresh.expect_text(), "m");
    assert_eq!(s.metric0("crier_connections_closed_total", &[("reason", "token_expired")]), 0.0);
}

#[test]
fn rotation_window_keeps_the_previous_key_for_a_while() {
    let dir = TempDir::new();
    let key = secret_file(&dir, "secret", SECRET);
    let old = dir.join("old");
    std::fs::copy(&key, &old).unwrap();
    let s = Server::builder(Driver::Epoll)
        .args(["--jwt-key-file", key.to_str().unwrap(), "--jwt-rotation-window", "2s"])
        .start();
    let old_token = mint1("HS256", &old, json!({"exp": now() + 600, "channels": ["c"]}));
    let target = format!("/ws?channels=c&token={old_token}");
    std::fs::write(&key, "the-new-secret-0123456789abcdef0123456789\n").unwrap();
    s.signal(libc::SIGHUP);
    let reloaded = Instant::now();
    s.wait_log(IO_TIMEOUT, |l| l.contains("reloaded")).expect("reload logged");
    assert!(upgrade(&s, &target, &[]).is_ok(), "within the window the previous key verifies");
    wait_until(Duration::from_secs(10), "the rotation window to end", || upgrade(&s, &target, &[]).is_err());
    assert!(reloaded.elapsed() >= Duration::from_secs(2), "the previous key stopped early");
    refused(&s, &target, &[], 401, "bad signature");
}

#[test]
fn require_origin_refuses_clients_without_one() {
    let s = Server::builder(Driver::Epoll).args(["--require-origin"]).start();
    refused(&s, "/ws?channels=a", &[], 403, "origin required");
    let mut c = upgrade(&s, "/ws?channels=a", &[("Origin", "https://anywhere.test")]).expect("any origin, no list");
    assert_eq!(refusals(&s, "origin_forbidden"), 1.0);
    s.publish("a", "x");
    assert_eq!(c.expect_text(), "x");
}

#[test]
fn without_a_key_everything_stays_public_and_tokens_are_ignored() {
    let s = Server::start(Driver::Epoll);
    let mut c = upgrade(&s, "/ws?channels=anything&token=whatever", &[("Origin", "https://x.test")]).unwrap();
    s.publish("anything", "x");
    assert_eq!(c.expect_text(), "x");
    assert!(!s.log_text().contains("--allowed-origins is not"), "no warning without a key");
}

fn admin_request(s: &Server, path: &str, auth: Option<&str>) -> HttpResponse {
    let auth = auth.map(|a| format!("Authorization: {a}\r\n")).unwrap_or_default();
    http_raw(s.admin_addr(), format!("GET {path} HTTP/1.0\r\nHost: x\r\n{auth}\r\n").as_bytes()).unwrap()
}

#[test]
fn admin_token_guards_metrics_but_not_healthz() {
    let dir = TempDir::new();
    let token = secret_file(&dir, "admin", "adm1n-t0ken");
    let key = secret_file(&dir, "secret", SECRET);
    let s = Server::builder(Driver::Epoll)
        .args(["--admin-token-file", token.to_str().unwrap(), "--jwt-key-file", key.to_str().unwrap()])
        .start();
    assert!(s.log_text().contains("--allowed-origins is not"), "a key without an origin list is warned about");
    assert_eq!(admin_request(&s, "/healthz", None).status, 200, "/healthz stays open for probes");
    for (auth, why) in
        [(None, "no token"), (Some("Bearer wrong"), "wrong token"), (Some("Basic adm1n-t0ken"), "scheme")]
    {
        let r = admin_request(&s, "/metrics", auth);
        assert_eq!(r.status, 401, "{why}: {r:?}");
        assert_eq!(r.header("www-authenticate"), Some("Bearer"));
        assert!(!r.body_text().contains("crier_"), "{why}: no metrics leak");
    }
    assert_eq!(admin_request(&s, "/nope", None).status, 401, "every admin route");
    let r = admin_request(&s, "/metrics", Some("Bearer adm1n-t0ken"));
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(metric_value(&r.body_text(), "crier_admin_unauthorized_total", &[]), Some(4.0));
    // SIGHUP re-reads it.
    std::fs::write(&token, "s3cond\n").unwrap();
    s.signal(libc::SIGHUP);
    s.wait_log(IO_TIMEOUT, |l| l.contains("--admin-token-file") && l.contains("reloaded")).expect("reload logged");
    assert_eq!(admin_request(&s, "/metrics", Some("Bearer adm1n-t0ken")).status, 401);
    assert_eq!(admin_request(&s, "/metrics", Some("Bearer s3cond")).status, 200);
}

#[test]
fn bad_access_settings_stop_start_up_with_the_setting_named() {
    let dir = TempDir::new();
    let short = secret_file(&dir, "short", "tooshort");
    let ec = TempDir::new();
    let (private, public) = keygen("ES256", &ec);
    let secret = secret_file(&dir, "secret", SECRET);
    let missing = dir.join("missing");
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec!["--public-channels".into(), "news".into()], "--public-channels needs --jwt-key-file"),
        (vec!["--jwt-audience".into(), "x".into()], "--jwt-audience needs --jwt-key-file"),
        (vec!["--jwt-key-file".into(), path(&short)], "at least 32 bytes"),
        (vec!["--jwt-key-file".into(), path(&public)], "holds a PEM key but --jwt-algorithm is HS256"),
        (
            vec!["--jwt-key-file".into(), path(&secret), "--jwt-algorithm".into(), "ES256".into()],
            "needs a PEM public key",
        ),
        (
            vec!["--jwt-key-file".into(), path(&private), "--jwt-algorithm".into(), "ES256".into()],
            "give crier the public key only",
        ),
        (vec!["--jwt-key-file".into(), path(&missing)], "cannot read"),
        (vec!["--jwt-algorithm".into(), "XS256".into()], "XS256"),
        (vec!["--allowed-origins".into(), "example.com".into()], "--allowed-origins"),
        (vec!["--allowed-origins".into(), "https://a.*.com".into()], "wildcard"),
        (vec!["--public-channels".into(), "a*b".into(), "--jwt-key-file".into(), path(&secret)], "--public-channels"),
        (vec!["--admin-token-file".into(), path(&missing)], "--admin-token-file"),
    ];
    for (args, want) in cases {
        let out = Server::builder(Driver::Epoll).args(args.clone()).run_expect_exit(Duration::from_secs(20));
        assert!(!out.became_ready, "{args:?} must not start");
        assert!(out.status.is_some_and(|s| !s.success()), "{args:?}: {:?}", out.status);
        assert!(out.stderr.contains(want), "{args:?}: stderr lacks {want:?}:\n{}", out.stderr);
    }
}

fn path(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

/// An attacker hammers the upgrade with bad, expired and oversized tokens: each is refused
/// and counted, crier's memory stays where it was, and an admitted subscriber receives
/// every message published meanwhile.
#[test]
fn a_flood_of_bad_tokens_costs_nothing_and_harms_no_one() {
    let dir = TempDir::new();
    let key = secret_file(&dir, "secret", SECRET);
    let s = Server::builder(Driver::Epoll).args(["--jwt-key-file", key.to_str().unwrap()]).start();
    let t = now();
    let good = mint1("HS256", &key, json!({"exp": t + 600, "channels": ["c"]}));
    let expired = mint1("HS256", &key, json!({"exp": t - 10, "channels": ["c"]}));
    // A token whose claims list as many patterns as fit in the 8 KiB request head.
    let many: Vec<String> = (0..700).map(|i| format!("u{i}.*")).collect();
    let fat = mint1("HS256", &key, json!({"exp": t + 600, "channels": many}));
    let mut sub = upgrade(&s, &format!("/ws?channels=c&token={good}"), &[]).unwrap();
    let mut p = s.publisher();
    let rss0 = s.rss_bytes();
    let bad = [tamper(&good), expired, "x.y.z".repeat(1000), fat];
    let rounds = 300;
    for i in 0..rounds {
        let tok = &bad[i % bad.len()];
        let target = format!("/ws?channels=c&token={tok}");
        let r = http_raw(s.ws, upgrade_request(s.ws, &target, &[]).as_bytes()).unwrap();
        assert!(matches!(r.status, 401 | 403 | 431), "round {i}: {r:?}");
        if i % 10 == 0 {
            p.publish("c", format!("m{}", i / 10).as_bytes(), false);
        }
    }
    for i in 0..rounds / 10 {
        assert_eq!(sub.expect_text(), format!("m{i}"));
    }
    let refused: f64 = ["token_invalid", "token_expired", "header_too_large"].iter().map(|r| refusals(&s, r)).sum();
    assert_eq!(refused, rounds as f64, "every refusal counted");
    let grew = s.rss_bytes().saturating_sub(rss0);
    assert!(grew < 8 << 20, "RSS grew {grew} bytes over {rounds} refused handshakes");
}

/// The README's "Access control" example, as written: its Python backend (PyJWT) mints
/// the token, crier started with the README's flags admits the page's channels with it.
#[test]
fn the_readme_example_works() {
    let readme = readme();
    let section = &readme[readme.find("## Access control").expect("an Access control section")..];
    let code = |lang: &str| {
        let start = section.find(&format!("```{lang}\n")).unwrap_or_else(|| panic!("a {lang} block")) + lang.len() + 4;
        section[start..start + section[start..].find("```").unwrap()].to_string()
    };
    let dir = TempDir::new();
    let secret = dir.join("jwt.secret");
    let out = Command::new("openssl").args(["rand", "-hex", "32"]).output().expect("openssl (.ci/run installs it)");
    std::fs::write(&secret, &out.stdout).unwrap();
    // The backend as written, on a free port and with the test's secret file.
    let served = "HTTPServer((\"127.0.0.1\", 8000), Handler).serve_forever()";
    let backend = code("python");
    assert!(backend.contains(served) && backend.contains("/etc/crier/jwt.secret"), "{backend}");
    let backend = backend.replace("/etc/crier/jwt.secret", secret.to_str().unwrap()).replace(
        served,
        "srv = HTTPServer((\"127.0.0.1\", 0), Handler)\nprint(srv.server_address[1], flush=True)\nsrv.serve_forever()",
    );
    let mut py = Command::new("python3")
        .args(["-c", &backend])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3 (.ci/run installs it)");
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(py.stdout.take().unwrap()), &mut line).unwrap();
    let port: u16 = line.trim().parse().unwrap_or_else(|_| panic!("backend printed {line:?} (is PyJWT installed?)"));
    // crier with the README's flags.
    let sh = code("sh");
    let flags = sh[sh.find("crier serve").unwrap() + "crier serve".len()..].replace("\\\n", " ");
    let flags: Vec<String> = flags
        .split_whitespace()
        .map(|f| f.trim_matches('\'').replace("/etc/crier/jwt.secret", secret.to_str().unwrap()))
        .collect();
    assert!(flags.contains(&"--public-channels".to_string()), "{flags:?}");
    let s = Server::builder(Driver::Epoll).args(flags).start();
    let token = http_get(format!("127.0.0.1:{port}").parse().unwrap(), "/crier-token").unwrap().body_text();
    // SAFETY: signal to the PID of the child this test spawned.
    unsafe { libc::kill(py.id() as libc::pid_t, libc::SIGKILL) };
    let _ = py.wait();
    let html = code("html");
    assert!(html.contains("channels: [\"news\", \"user.42.inbox\", \"team.7\"]"), "{html}");
    let origin = [("Origin", "https://app.example.com")];
    let mut page = upgrade(&s, &format!("/ws?channels=news,user.42.inbox,team.7&token={token}"), &origin)
        .expect("the page's channels, with the backend's token");
    refused(&s, &format!("/ws?channels=user.43.inbox&token={token}"), &origin, 403, "channel not allowed");
    refused(&s, "/ws?channels=user.42.inbox", &origin, 401, "invalid token: missing");
    refused(&s, &format!("/ws?channels=news&token={token}"), &[("Origin", "https://other.test")], 403, "origin");
    s.publish("user.42.inbox", "hi");
    assert_eq!(page.expect_text(), "hi");
}
