//! Channel names: the validated identifiers subscribers ask for and publishers publish to.
//!
//! A [`ChannelName`] can only be built by [`ChannelName::parse`] (or [`ChannelName::broadcast`]),
//! so every name that reaches the hub or a shard's subscriber table is already valid. Names
//! are cheap to clone (`Arc<str>`) because each shard keeps its own copy in its tables.

use std::fmt;
use std::sync::Arc;

/// Longest channel name accepted, in bytes.
pub const MAX_CHANNEL_LEN: usize = 64;

/// The name of the broadcast channel, heard by every connection.
pub const BROADCAST: &str = "*";

/// A validated channel name: 1–64 bytes of `A-Z a-z 0-9 _ - . :`, or `*` (broadcast).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelName(Arc<str>);

/// A map keyed by channel on a hot path (every broadcast looks its channel up on every
/// shard): foldhash, several times cheaper than std's SipHash on short names, and seeded per
/// map at random, so client-chosen channel names cannot be picked to collide.
pub type ChannelMap<V> = std::collections::HashMap<ChannelName, V, foldhash::fast::RandomState>;

/// Why a channel name was refused; the text is sent back to the client or publisher.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelNameError {
    #[error("channel name is empty")]
    Empty,
    #[error("channel name is longer than {MAX_CHANNEL_LEN} bytes")]
    TooLong,
    #[error("channel name has a character outside A-Z a-z 0-9 _ - . :")]
    BadChar,
}

impl ChannelName {
    /// Validates `s` as a channel name.
    pub fn parse(s: &str) -> Result<Self, ChannelNameError> {
        if s == BROADCAST {
            return Ok(Self::broadcast());
        }
        if s.is_empty() {
            return Err(ChannelNameError::Empty);
        }
        if s.len() > MAX_CHANNEL_LEN {
            return Err(ChannelNameError::TooLong);
        }
        if !s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':')) {
            return Err(ChannelNameError::BadChar);
        }
        Ok(Self(Arc::from(s)))
    }

    /// The broadcast channel `*`.
    pub fn broadcast() -> Self {
        Self(Arc::from(BROADCAST))
    }

    /// True for the broadcast channel, which every connection hears.
    pub fn is_broadcast(&self) -> bool {
        &*self.0 == BROADCAST
    }

    /// The name as text (access control matches it against patterns).
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", &*self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_documented_charset() {
        for ok in ["flights", "a", "gate:B32", "x.y-z_1", "*", &"a".repeat(64)] {
            assert_eq!(ChannelName::parse(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn refuses_bad_names() {
        assert_eq!(ChannelName::parse(""), Err(ChannelNameError::Empty));
        assert_eq!(ChannelName::parse(&"a".repeat(65)), Err(ChannelNameError::TooLong));
        for bad in ["a b", "é", "a/b", "**", "a,b", "a\r\n"] {
            assert_eq!(ChannelName::parse(bad), Err(ChannelNameError::BadChar), "{bad}");
        }
    }

    /// The rule as the README states it: "1 to 64 characters from `A-Z a-z 0-9 _ - . :`",
    /// and `*` for the broadcast channel. Written from the text, not from `parse`.
    fn documented_rule(s: &str) -> bool {
        const SET: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-.:";
        s == "*" || ((1..=64).contains(&s.chars().count()) && s.chars().all(|c| SET.contains(c)))
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]
        /// Any string: mostly characters of the set and its ASCII neighbours (so that long
        /// valid names, and names one character off, are common), sometimes any character.
        #[test]
        fn accepts_exactly_the_documented_set(s in "([A-Za-z0-9_.:*,/ \\-]|[\\x00-\\x7f]|\\PC){0,70}") {
            let parsed = ChannelName::parse(&s);
            proptest::prop_assert_eq!(parsed.is_ok(), documented_rule(&s), "{:?}: {:?}", s, parsed);
            if let Ok(name) = parsed {
                proptest::prop_assert_eq!(name.to_string(), s);
            }
        }
    }

    #[test]
    fn every_ascii_character_alone_and_in_a_long_name() {
        for b in 0u8..=127 {
            let c = char::from(b);
            let alone = c.to_string();
            assert_eq!(ChannelName::parse(&alone).is_ok(), documented_rule(&alone), "{c:?}");
            let long = format!("{}{c}", "a".repeat(63));
            assert_eq!(ChannelName::parse(&long).is_ok(), documented_rule(&long), "{c:?} in 64");
        }
    }

    #[test]
    fn broadcast_is_recognised() {
        assert!(ChannelName::parse("*").unwrap().is_broadcast());
        assert!(!ChannelName::parse("flights").unwrap().is_broadcast());
    }
}
