//! The two kinds of pattern access control matches: channel patterns (`--public-channels`
//! and a token's `channels` claim) and origin patterns (`--allowed-origins`). Pure: parsed
//! once (a setting at start, a claim at the handshake), matched without allocating.

use crate::channel::ChannelName;

/// A channel name, or a prefix ending in `*` (`user.42.*` matches `user.42.inbox` and
/// `user.42.a.b`, not `user.42` itself); a lone `*` matches every channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChannelPattern {
    Exact(String),
    Prefix(String),
}

impl ChannelPattern {
    /// Parses one pattern. A `*` is allowed only at the end; the rest must be made of the
    /// characters of a channel name (`A-Z a-z 0-9 _ - . :`).
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (body, prefix) = match s.strip_suffix('*') {
            Some(body) => (body, true),
            None => (s, false),
        };
        if !prefix && s.is_empty() {
            return Err("empty channel pattern".into());
        }
        let ok = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':');
        if body.len() > crate::channel::MAX_CHANNEL_LEN || !body.bytes().all(ok) {
            let shown: String = s.chars().take(80).collect();
            return Err(format!(
                "{shown:?} is not a channel name or a prefix pattern like user.42.* (names: 1-64 of A-Z a-z 0-9 _ - . :)"
            ));
        }
        Ok(if prefix { Self::Prefix(body.to_string()) } else { Self::Exact(body.to_string()) })
    }

    /// Parses a comma-separated list (empty items are skipped).
    pub fn parse_list(s: &str) -> Result<Vec<Self>, String> {
        s.split(',').filter(|p| !p.trim().is_empty()).map(Self::parse).collect()
    }

    pub fn matches(&self, channel: &ChannelName) -> bool {
        self.matches_str(channel.as_str())
    }

    pub fn matches_str(&self, name: &str) -> bool {
        match self {
            Self::Exact(e) => e == name,
            Self::Prefix(p) => name.len() > p.len() && name.starts_with(p.as_str()),
        }
    }
}

/// An allowed `Origin` (RFC 6454 §6.2 serialization: `scheme://host[:port]`): exact, or
/// `scheme://*.domain[:port]`, which matches every subdomain of `domain` at any depth but
/// not `domain` itself. Compared without regard to ASCII case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OriginPattern {
    Exact(String),
    /// `scheme://`, and `.domain[:port]` the host must end with.
    Subdomains {
        scheme: String,
        suffix: String,
    },
}

impl OriginPattern {
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim().to_ascii_lowercase();
        let Some((scheme, rest)) = s.split_once("://") else {
            return Err(format!("{s:?} is not an origin: expected scheme://host[:port], e.g. https://app.example.com"));
        };
        if scheme.is_empty() || rest.is_empty() || rest.contains(['/', '?', '#', ' ']) {
            return Err(format!(
                "{s:?} is not an origin: expected scheme://host[:port] with no path, e.g. https://app.example.com"
            ));
        }
        match rest.strip_prefix("*.") {
            Some(domain) if !domain.is_empty() && !domain.contains('*') => {
                Ok(Self::Subdomains { scheme: format!("{scheme}://"), suffix: format!(".{domain}") })
            }
            _ if rest.contains('*') => {
                Err(format!("{s:?}: a wildcard is allowed only as the first label, as in https://*.example.com"))
            }
            _ => Ok(Self::Exact(s)),
        }
    }

    pub fn parse_list(s: &str) -> Result<Vec<Self>, String> {
        s.split(',').filter(|p| !p.trim().is_empty()).map(Self::parse).collect()
    }

    pub fn matches(&self, origin: &str) -> bool {
        let origin = origin.trim();
        match self {
            Self::Exact(e) => e.eq_ignore_ascii_case(origin),
            Self::Subdomains { scheme, suffix } => {
                let Some(host) = strip_prefix_ci(origin, scheme) else { return false };
                host.len() > suffix.len()
                    && host.is_char_boundary(host.len() - suffix.len())
                    && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
                    // The label before the suffix must be a host label, not another port or
                    // a user part.
                    && host[..host.len() - suffix.len()].bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
            }
        }
    }
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix).then(|| &s[prefix.len()..])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ch(s: &str) -> ChannelName {
        ChannelName::parse(s).unwrap()
    }

    #[test]
    fn channel_patterns() {
        let p = ChannelPattern::parse("user.42.*").unwrap();
        assert!(p.matches(&ch("user.42.inbox")) && p.matches(&ch("user.42.a.b")));
        assert!(!p.matches(&ch("user.42")) && !p.matches(&ch("user.420.x")) && !p.matches(&ch("user.4")));
        let e = ChannelPattern::parse("news").unwrap();
        assert!(e.matches(&ch("news")) && !e.matches(&ch("news2")));
        let all = ChannelPattern::parse("*").unwrap();
        assert!(all.matches(&ch("anything")));
        assert!(ChannelPattern::parse("us*er").is_err());
        assert!(ChannelPattern::parse("a b").is_err());
        assert!(ChannelPattern::parse("").is_err());
        assert_eq!(ChannelPattern::parse_list("a, b.*,,").unwrap().len(), 2);
    }

    #[test]
    fn origin_patterns() {
        let exact = OriginPattern::parse("https://App.example.com").unwrap();
        assert!(exact.matches("https://app.example.com") && exact.matches("HTTPS://APP.EXAMPLE.COM"));
        assert!(!exact.matches("https://app.example.com:8443") && !exact.matches("http://app.example.com"));
        let sub = OriginPattern::parse("https://*.example.com").unwrap();
        assert!(sub.matches("https://a.example.com") && sub.matches("https://a.b.example.com"));
        assert!(!sub.matches("https://example.com"), "the bare domain is not a subdomain");
        assert!(!sub.matches("https://evil-example.com") && !sub.matches("https://a.example.com.evil.net"));
        assert!(!sub.matches("http://a.example.com") && !sub.matches("https://a.example.com:8443"));
        assert!(!sub.matches("https://x@a.example.com") && !sub.matches("null"));
        let port = OriginPattern::parse("http://*.local.test:8080").unwrap();
        assert!(port.matches("http://a.local.test:8080") && !port.matches("http://a.local.test"));
        for bad in ["example.com", "https://a.example.com/path", "https://a.*.com", "https://", "https://*."] {
            assert!(OriginPattern::parse(bad).is_err(), "{bad}");
        }
    }
}
