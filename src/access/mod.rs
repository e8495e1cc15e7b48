//! Access control, decided once per connection at the handshake: the `Origin` allowlist,
//! signed connection tokens (JWT) granting channels, public channels, and the admin
//! endpoint's bearer token.
//!
//! [`Access`] is built at start from the validated settings, shared (`Arc`) by every shard
//! and the admin endpoint, and reloaded in place on SIGHUP (the key files only; a
//! connection already admitted is never re-checked, it keeps its token's expiry).
//! A shard calls [`Access::admit`] at one point, after the request head parsed; what a
//! connection keeps is [`Grant::expires`], four bytes that the shard's sweep compares.
//! Nothing here runs per message.

pub mod jwt;
pub mod pattern;

use std::sync::RwLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::channel::ChannelName;
use crate::config::AccessSettings;
use crate::ops::metrics::RefuseReason;
use crate::ws::handshake::{Credentials, bearer};
use crate::ws::http;
use jwt::{KeyRing, TokenError};

/// What an admitted connection keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Grant {
    /// Unix seconds at which the sweep closes the connection with 4001 (its token's
    /// `exp`); 0: never (no token was used).
    pub expires: u32,
}

/// Why an upgrade was refused by access control.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// 401: no token where one is needed, or a token that does not verify.
    Token(TokenError),
    /// 403: a channel neither public nor granted by the token.
    Channel(String),
    /// 403: an `Origin` not in `--allowed-origins` (or none, with `--require-origin`).
    Origin(Option<String>),
}

impl Refusal {
    pub fn reason(&self) -> RefuseReason {
        match self {
            Refusal::Token(TokenError::Missing) => RefuseReason::TokenMissing,
            Refusal::Token(TokenError::Expired) => RefuseReason::TokenExpired,
            Refusal::Token(TokenError::Invalid(_)) => RefuseReason::TokenInvalid,
            Refusal::Channel(_) => RefuseReason::ChannelForbidden,
            Refusal::Origin(_) => RefuseReason::OriginForbidden,
        }
    }

    /// The complete HTTP response.
    pub fn response(&self) -> Vec<u8> {
        let (status, body, extra): (&str, String, &[(&str, &str)]) = match self {
            // RFC 6750 §3: a 401 names the scheme.
            Refusal::Token(e) => {
                ("401 Unauthorized", format!("invalid token: {e}\n"), &[("WWW-Authenticate", "Bearer")])
            }
            Refusal::Channel(c) => ("403 Forbidden", format!("channel not allowed: {c}\n"), &[]),
            Refusal::Origin(Some(o)) => ("403 Forbidden", format!("origin not allowed: {}\n", shown(o)), &[]),
            Refusal::Origin(None) => (
                "403 Forbidden",
                "origin required: this server takes only browser pages (--require-origin)\n".into(),
                &[],
            ),
        };
        http::response(status, "text/plain; charset=utf-8", extra, body.as_bytes())
    }
}

/// Printable, bounded excerpt of a client's header for an error body.
fn shown(v: &str) -> String {
    v.chars().take(100).map(|c| if c.is_control() { '?' } else { c }).collect()
}

/// Unix time in seconds (token times are wall-clock times).
pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Access control in force; shared by every shard and the admin endpoint.
pub struct Access {
    settings: AccessSettings,
    keys: Option<RwLock<KeyRing>>,
    admin_token: RwLock<Option<Vec<u8>>>,
}

impl Access {
    /// Reads the key files; an error names the setting.
    pub fn load(settings: &AccessSettings) -> Result<Self, String> {
        let keys = settings.jwt.as_ref().map(KeyRing::new).transpose()?.map(RwLock::new);
        let admin_token = RwLock::new(settings.admin_token_file.as_ref().map(|p| read_admin_token(p)).transpose()?);
        if keys.is_some() && settings.allowed_origins.is_empty() {
            tracing::warn!(
                "--jwt-key-file is set but --allowed-origins is not: pages on any site may connect with a token they hold; list your sites' origins"
            );
        }
        Ok(Self { settings: settings.clone(), keys, admin_token })
    }

    /// Access control that allows everything (no settings): for tests and benches.
    pub fn open() -> Self {
        Self { settings: AccessSettings::default(), keys: None, admin_token: RwLock::new(None) }
    }

    /// SIGHUP: re-reads the JWT key and the admin token. A file that cannot be used leaves
    /// the one in force in place (and is logged); nobody is disconnected either way.
    pub fn reload(&self) {
        if let (Some(ring), Some(s)) = (&self.keys, &self.settings.jwt) {
            match jwt::load_key(s) {
                Ok(fresh) => {
                    let until = (!s.rotation_window.is_zero()).then(|| Instant::now() + s.rotation_window);
                    if let Ok(mut guard) = ring.write() {
                        guard.rotate(fresh, until);
                    }
                    let window = humantime::format_duration(s.rotation_window);
                    tracing::info!(
                        "SIGHUP: --jwt-key-file {} reloaded (previous key verifies for {window})",
                        s.key_file.display()
                    );
                }
                Err(e) => tracing::error!("SIGHUP: {e}; the key in force stays"),
            }
        }
        if let Some(path) = &self.settings.admin_token_file {
            match read_admin_token(path) {
                Ok(t) => {
                    if let Ok(mut g) = self.admin_token.write() {
                        *g = Some(t);
                    }
                    tracing::info!("SIGHUP: --admin-token-file {} reloaded", path.display());
                }
                Err(e) => tracing::error!("SIGHUP: {e}; the admin token in force stays"),
            }
        }
    }

    /// Decides one upgrade: the origin first, then the token and every channel asked for
    /// (the broadcast channel, which every connection hears, needs nothing).
    pub fn admit(&self, creds: &Credentials, channels: &[ChannelName], now: u64) -> Result<Grant, Refusal> {
        self.check_origin(creds.origin.as_deref())?;
        let Some(keys) = &self.keys else {
            return Ok(Grant::default()); // no key: every channel is public
        };
        let public = |c: &ChannelName| self.settings.public_channels.iter().any(|p| p.matches(c));
        let Some(token) = creds.token.as_deref().filter(|t| !t.is_empty()) else {
            return match channels.iter().find(|c| !c.is_broadcast() && !public(c)) {
                Some(_) => Err(Refusal::Token(TokenError::Missing)),
                None => Ok(Grant::default()),
            };
        };
        let verified =
            keys.read().map_err(|_| Refusal::Token(TokenError::Invalid("key unavailable".into())))?.verify(token, now);
        let verified = verified.map_err(Refusal::Token)?;
        if let Some(c) =
            channels.iter().find(|c| !c.is_broadcast() && !public(c) && !verified.channels.iter().any(|p| p.matches(c)))
        {
            return Err(Refusal::Channel(c.to_string()));
        }
        tracing::debug!(sub = verified.sub.as_deref().unwrap_or(""), exp = verified.exp, "token accepted");
        // u32 Unix seconds last until 2106; a later exp is "never" in practice.
        Ok(Grant { expires: verified.exp.min(u64::from(u32::MAX)) as u32 })
    }

    fn check_origin(&self, origin: Option<&str>) -> Result<(), Refusal> {
        let allowed = &self.settings.allowed_origins;
        match origin {
            None if self.settings.require_origin => Err(Refusal::Origin(None)),
            None => Ok(()),
            Some(o) if allowed.is_empty() || allowed.iter().any(|p| p.matches(o)) => Ok(()),
            Some(o) => Err(Refusal::Origin(Some(o.to_string()))),
        }
    }

    /// Whether an admin request may proceed: always without `--admin-token-file`, else
    /// only with `Authorization: Bearer <the token>`.
    pub fn admin_allows(&self, authorization: Option<&[u8]>) -> bool {
        let Ok(guard) = self.admin_token.read() else { return false };
        let Some(expected) = guard.as_deref() else { return true };
        let given = authorization.and_then(bearer).unwrap_or(b"");
        constant_time_eq(given, expected)
    }
}

/// Compares without an early exit on the first differing byte, so the time taken does not
/// tell a guesser how much of the admin token they have right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = u8::from(a.len() != b.len());
    for (i, &y) in b.iter().enumerate() {
        diff |= a.get(i).copied().unwrap_or(0) ^ y;
    }
    diff == 0
}

fn read_admin_token(path: &std::path::Path) -> Result<Vec<u8>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("--admin-token-file {}: cannot read: {e}", path.display()))?;
    let token = bytes.trim_ascii().to_vec();
    if token.is_empty() || token.iter().any(|b| !b.is_ascii_graphic()) {
        return Err(format!(
            "--admin-token-file {}: the token must be one line of printable ASCII without spaces (e.g. `openssl rand -hex 32`)",
            path.display()
        ));
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::pattern::{ChannelPattern, OriginPattern};
    use crate::config::{JwtAlgorithm, JwtSettings};

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn access(public: &str, origins: &str) -> (Access, std::path::PathBuf) {
        let path = std::env::temp_dir().join(format!("crier-access-unit-{}-{public}", std::process::id()));
        std::fs::write(&path, SECRET).unwrap();
        let settings = AccessSettings {
            jwt: Some(JwtSettings {
                key_file: path.clone(),
                algorithm: JwtAlgorithm::HS256,
                issuer: None,
                audience: None,
                rotation_window: std::time::Duration::ZERO,
            }),
            public_channels: ChannelPattern::parse_list(public).unwrap(),
            allowed_origins: OriginPattern::parse_list(origins).unwrap(),
            require_origin: false,
            admin_token_file: None,
        };
        (Access::load(&settings).unwrap(), path)
    }

    fn token(claims: serde_json::Value) -> Option<String> {
        let key = jsonwebtoken::EncodingKey::from_secret(SECRET).unwrap();
        Some(jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap())
    }

    fn chans(names: &[&str]) -> Vec<ChannelName> {
        names.iter().map(|n| ChannelName::parse(n).unwrap()).collect()
    }

    #[test]
    fn admits_by_token_and_public_channels() {
        let (a, path) = access("news,prices.*", "https://*.example.com");
        let now = unix_now();
        let creds = |t: Option<String>| Credentials { token: t, origin: Some("https://app.example.com".into()) };
        // Public channels need no token and get no expiry.
        assert_eq!(a.admit(&creds(None), &chans(&["news", "prices.eur", "*"]), now), Ok(Grant { expires: 0 }));
        assert_eq!(
            a.admit(&creds(None), &chans(&["news", "user.1.inbox"]), now),
            Err(Refusal::Token(TokenError::Missing))
        );
        let t = token(serde_json::json!({"exp": now + 60, "channels": ["user.1.*"], "sub": "u1"}));
        let g = a.admit(&creds(t.clone()), &chans(&["news", "user.1.inbox"]), now).unwrap();
        assert_eq!(g.expires as u64, now + 60);
        let r = a.admit(&creds(t), &chans(&["user.2.inbox"]), now).unwrap_err();
        assert_eq!(r, Refusal::Channel("user.2.inbox".into()));
        assert!(String::from_utf8(r.response()).unwrap().starts_with("HTTP/1.1 403 Forbidden\r\n"));
        let expired = token(serde_json::json!({"exp": now, "channels": ["*"]}));
        assert_eq!(a.admit(&creds(expired), &chans(&["a"]), now), Err(Refusal::Token(TokenError::Expired)));
        let no_exp = token(serde_json::json!({"channels": ["*"]}));
        let e = a.admit(&creds(no_exp), &chans(&["a"]), now).unwrap_err();
        assert_eq!(e.reason(), RefuseReason::TokenInvalid);
        assert!(String::from_utf8(e.response()).unwrap().contains("invalid token: no exp claim"));
        let other_origin = Credentials { token: None, origin: Some("https://evil.test".into()) };
        assert_eq!(a.admit(&other_origin, &[], now), Err(Refusal::Origin(Some("https://evil.test".into()))));
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn bearer_and_admin_token() {
        assert_eq!(bearer(b"Bearer abc "), Some(&b"abc"[..]));
        assert_eq!(bearer(b"bearer  abc"), Some(&b"abc"[..]));
        assert_eq!(bearer(b"Basic abc"), None);
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(
            !constant_time_eq(b"abd", b"abc") && !constant_time_eq(b"ab", b"abc") && !constant_time_eq(b"abcd", b"abc")
        );
        let open = Access::open();
        assert!(open.admin_allows(None));
        *open.admin_token.write().unwrap() = Some(b"s3cret".to_vec());
        assert!(!open.admin_allows(None) && !open.admin_allows(Some(b"Bearer nope")));
        assert!(open.admin_allows(Some(b"Bearer s3cret")));
    }
}
