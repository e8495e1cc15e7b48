//! Signed connection tokens: the key (`--jwt-key-file`, `--jwt-algorithm`), and checking
//! one token. Signatures and the registered claims `exp`, `iss`, `aud` are checked by the
//! `jsonwebtoken` crate; this file only picks its settings, reads crier's own claims
//! (`channels`, `nbf`/`iat` with a small leeway, `sub`) and names each failure.

use std::time::Instant;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use super::pattern::ChannelPattern;
use crate::config::{JwtAlgorithm, JwtSettings};

/// Shortest HMAC secret accepted: RFC 7518 §3.2 asks for at least the hash's size (HS256:
/// 256 bits).
pub const MIN_SECRET_BYTES: usize = 32;
/// How far in the future `nbf` and `iat` may lie (clocks of the minting backend and of
/// crier disagree by that much). `exp` gets none: a connection is closed at `exp` exactly.
pub const CLOCK_LEEWAY_SECS: u64 = 5;

/// The claims crier reads (others are ignored). Times are JSON numbers (RFC 7519 §2
/// NumericDate, which may have a fraction).
#[derive(Debug, Deserialize)]
struct Claims {
    exp: Option<f64>,
    nbf: Option<f64>,
    iat: Option<f64>,
    sub: Option<String>,
    #[serde(default)]
    channels: Vec<String>,
}

/// A token that passed every check.
#[derive(Debug, Clone)]
pub struct Verified {
    /// Unix seconds after which the connection must be closed.
    pub exp: u64,
    pub channels: Vec<ChannelPattern>,
    pub sub: Option<String>,
}

/// Why a token was refused: the text after `invalid token: `.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenError {
    Missing,
    Expired,
    Invalid(String),
}

impl std::fmt::Display for TokenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenError::Missing => {
                f.write_str("missing: these channels need a token (?token= on the URL or Authorization: Bearer)")
            }
            TokenError::Expired => f.write_str("expired"),
            TokenError::Invalid(why) => f.write_str(why),
        }
    }
}

/// The verification key(s) in force: the current one and, for `--jwt-rotation-window`
/// after a reload, the previous one until its deadline.
pub struct KeyRing {
    current: DecodingKey,
    previous: Option<(DecodingKey, Instant)>,
    validation: Validation,
    algorithm: JwtAlgorithm,
}

fn algorithm(a: JwtAlgorithm) -> Algorithm {
    match a {
        JwtAlgorithm::HS256 => Algorithm::HS256,
        JwtAlgorithm::HS384 => Algorithm::HS384,
        JwtAlgorithm::HS512 => Algorithm::HS512,
        JwtAlgorithm::RS256 => Algorithm::RS256,
        JwtAlgorithm::RS384 => Algorithm::RS384,
        JwtAlgorithm::RS512 => Algorithm::RS512,
        JwtAlgorithm::PS256 => Algorithm::PS256,
        JwtAlgorithm::PS384 => Algorithm::PS384,
        JwtAlgorithm::PS512 => Algorithm::PS512,
        JwtAlgorithm::ES256 => Algorithm::ES256,
        JwtAlgorithm::ES384 => Algorithm::ES384,
        JwtAlgorithm::EdDSA => Algorithm::EdDSA,
    }
}

/// Reads and parses the key file; the error names the setting and the fix.
pub fn load_key(s: &JwtSettings) -> Result<DecodingKey, String> {
    let path = s.key_file.display();
    let bytes = std::fs::read(&s.key_file).map_err(|e| format!("--jwt-key-file {path}: cannot read: {e}"))?;
    let is_pem = bytes.windows(11).any(|w| w == b"-----BEGIN ");
    if s.algorithm.is_hmac() {
        if is_pem {
            // A public key used as an HMAC secret lets anyone who has the public key sign
            // tokens (the classic algorithm confusion): never.
            return Err(format!(
                "--jwt-key-file {path} holds a PEM key but --jwt-algorithm is {:?}: set --jwt-algorithm to the key's (RS256, ES256, EdDSA, …)",
                s.algorithm
            ));
        }
        let secret = bytes.trim_ascii_end();
        if secret.len() < MIN_SECRET_BYTES {
            return Err(format!(
                "--jwt-key-file {path}: an {:?} secret must be at least {MIN_SECRET_BYTES} bytes (RFC 7518 §3.2), this one has {} (e.g. `openssl rand -hex 32 > {path}`)",
                s.algorithm,
                secret.len()
            ));
        }
        return DecodingKey::from_secret(secret).map_err(|e| format!("--jwt-key-file {path}: {e}"));
    }
    if !is_pem {
        return Err(format!(
            "--jwt-key-file {path}: --jwt-algorithm {:?} needs a PEM public key (-----BEGIN PUBLIC KEY-----)",
            s.algorithm
        ));
    }
    let key = match s.algorithm {
        JwtAlgorithm::ES256 | JwtAlgorithm::ES384 => DecodingKey::from_ec_pem(&bytes),
        JwtAlgorithm::EdDSA => DecodingKey::from_ed_pem(&bytes),
        _ => DecodingKey::from_rsa_pem(&bytes),
    };
    key.map_err(|e| {
        let private = if bytes.windows(11).any(|w| w == b"PRIVATE KEY") {
            " (this is a private key: give crier the public key only, e.g. `openssl pkey -in key.pem -pubout`)"
        } else {
            ""
        };
        format!("--jwt-key-file {path}: not a {:?} public key: {e}{private}", s.algorithm)
    })
}

impl KeyRing {
    pub fn new(s: &JwtSettings) -> Result<Self, String> {
        let mut validation = Validation::new(algorithm(s.algorithm));
        validation.leeway = 0;
        // A configured issuer or audience must be present, not merely right when present.
        let mut required = vec!["exp"];
        required.extend(s.issuer.as_ref().map(|_| "iss"));
        required.extend(s.audience.as_ref().map(|_| "aud"));
        validation.set_required_spec_claims(&required);
        // nbf is checked below, with CLOCK_LEEWAY_SECS.
        validation.validate_nbf = false;
        if let Some(iss) = &s.issuer {
            validation.set_issuer(&[iss]);
        }
        match &s.audience {
            Some(aud) => validation.set_audience(&[aud]),
            // Without --jwt-audience an `aud` claim is not checked (crier names no audience).
            None => validation.validate_aud = false,
        }
        Ok(Self { current: load_key(s)?, previous: None, validation, algorithm: s.algorithm })
    }

    /// After a reload: `fresh` verifies from now on, and the key it replaces until
    /// `previous_until` (if given).
    pub fn rotate(&mut self, fresh: DecodingKey, previous_until: Option<Instant>) {
        let old = std::mem::replace(&mut self.current, fresh);
        self.previous = previous_until.map(|until| (old, until));
    }

    /// Checks one token at Unix time `now`.
    pub fn verify(&self, token: &str, now: u64) -> Result<Verified, TokenError> {
        let mut result = jsonwebtoken::decode::<Claims>(token, &self.current, &self.validation);
        if let (Err(e), Some((old, until))) = (&result, &self.previous)
            && *e.kind() == ErrorKind::InvalidSignature
            && Instant::now() < *until
        {
            result = jsonwebtoken::decode::<Claims>(token, old, &self.validation);
        }
        let claims = result.map_err(|e| self.explain(e.kind(), jsonwebtoken::decode_header(token).is_err()))?.claims;
        let exp = claims.exp.unwrap_or(0.0);
        if exp <= now as f64 {
            return Err(TokenError::Expired);
        }
        let future = (now + CLOCK_LEEWAY_SECS) as f64;
        if claims.nbf.is_some_and(|nbf| nbf > future) {
            return Err(TokenError::Invalid("not valid yet (nbf is in the future)".into()));
        }
        if claims.iat.is_some_and(|iat| iat > future) {
            return Err(TokenError::Invalid("issued in the future (iat; are the clocks in sync?)".into()));
        }
        let channels = claims
            .channels
            .iter()
            .map(|c| ChannelPattern::parse(c))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TokenError::Invalid(format!("bad channels claim: {e}")))?;
        Ok(Verified { exp: exp as u64, channels, sub: claims.sub })
    }

    /// `header_unreadable`: the header did not parse (an algorithm jsonwebtoken does not
    /// know, such as `none`, fails there too).
    fn explain(&self, kind: &ErrorKind, header_unreadable: bool) -> TokenError {
        let why = match kind {
            ErrorKind::ExpiredSignature => return TokenError::Expired,
            ErrorKind::InvalidSignature => "bad signature".to_string(),
            ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm => {
                format!("wrong algorithm (this server accepts {:?} only)", self.algorithm)
            }
            ErrorKind::MissingRequiredClaim(c) => format!("no {c} claim ({c} is required)"),
            ErrorKind::InvalidClaimFormat(c) => format!("bad {c} claim"),
            ErrorKind::InvalidIssuer => "wrong issuer (iss)".to_string(),
            ErrorKind::InvalidAudience => "wrong audience (aud)".to_string(),
            ErrorKind::Json(_) if header_unreadable => {
                format!("unknown algorithm or malformed header (this server accepts {:?} only)", self.algorithm)
            }
            ErrorKind::Json(_) => "malformed claims (channels must be a list of strings, sub a string)".to_string(),
            _ => "malformed token (expected header.payload.signature in base64url)".to_string(),
        };
        TokenError::Invalid(why)
    }
}
