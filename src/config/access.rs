//! Settings of access control (`crate::access`): signed connection tokens, public
//! channels, allowed origins, the admin token. Flattened into `ServeArgs`, so each is a
//! flag, a `CRIER_*` variable and a `--config` key like every other setting.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};

use super::{ConfigError, parse_duration};
use crate::access::pattern::{ChannelPattern, OriginPattern};

/// The one JWT algorithm crier accepts (`--jwt-algorithm`); a token signed with any other
/// is refused, whatever its header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "UPPER")]
pub enum JwtAlgorithm {
    /// HMAC with SHA-256: the key file holds the shared secret.
    HS256,
    HS384,
    HS512,
    /// RSA PKCS#1 v1.5 with SHA-256: the key file holds the PEM public key.
    RS256,
    RS384,
    RS512,
    /// RSA-PSS with SHA-256 (PEM public key).
    PS256,
    PS384,
    PS512,
    /// ECDSA P-256 with SHA-256 (PEM public key).
    ES256,
    /// ECDSA P-384 with SHA-384 (PEM public key).
    ES384,
    /// Ed25519 (PEM public key).
    #[value(name = "EdDSA")]
    EdDSA,
}

impl JwtAlgorithm {
    /// A shared-secret algorithm (the key file is the secret, not a PEM public key).
    pub fn is_hmac(self) -> bool {
        matches!(self, Self::HS256 | Self::HS384 | Self::HS512)
    }
}

/// Access-control settings of `crier serve` (see README, "Access control").
#[derive(Args, Debug, Clone)]
pub struct AccessArgs {
    /// Require a signed token (JWT) to subscribe to any channel but --public-channels: the
    /// file holds the HS* secret (trailing whitespace removed; at least 32 bytes) or the PEM
    /// public key for RS*/PS*/ES*/EdDSA. Re-read on SIGHUP. [default: none, every channel is
    /// public]
    #[arg(long, env = "CRIER_JWT_KEY_FILE", value_name = "PATH")]
    pub jwt_key_file: Option<PathBuf>,

    /// The one algorithm tokens may be signed with; any other is refused.
    #[arg(
        long,
        env = "CRIER_JWT_ALGORITHM",
        value_enum,
        default_value = "HS256",
        ignore_case = true,
        value_name = "ALG"
    )]
    pub jwt_algorithm: JwtAlgorithm,

    /// Tokens must carry this `iss` claim. [default: not checked]
    #[arg(long, env = "CRIER_JWT_ISSUER", value_name = "ISS")]
    pub jwt_issuer: Option<String>,

    /// Tokens must carry this in their `aud` claim. [default: not checked]
    #[arg(long, env = "CRIER_JWT_AUDIENCE", value_name = "AUD")]
    pub jwt_audience: Option<String>,

    /// After a SIGHUP loads a new key, the previous key still verifies new connections for
    /// this long (0: the old key stops at once). Open connections are never re-checked.
    #[arg(long, env = "CRIER_JWT_ROTATION_WINDOW", default_value = "0s", value_parser = parse_duration, value_name = "DURATION")]
    pub jwt_rotation_window: Duration,

    /// With --jwt-key-file: channels anyone may subscribe to without a token,
    /// comma-separated names or prefix patterns (`news,prices.*`). [default: none]
    #[arg(long, env = "CRIER_PUBLIC_CHANNELS", value_name = "PATTERNS")]
    pub public_channels: Option<String>,

    /// Origins whose pages may connect (the `Origin` header of the upgrade), comma-separated,
    /// exact (`https://app.example.com`) or subdomain patterns (`https://*.example.com`);
    /// others get 403. [default: every origin]
    #[arg(long, env = "CRIER_ALLOWED_ORIGINS", value_name = "ORIGINS")]
    pub allowed_origins: Option<String>,

    /// Refuse upgrades without an `Origin` header (non-browser clients send none).
    #[arg(long, env = "CRIER_REQUIRE_ORIGIN", default_value = "false", action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub require_origin: bool,

    /// /metrics and every admin route but /healthz require `Authorization: Bearer <token>`
    /// with the token this file holds (trailing whitespace removed). Re-read on SIGHUP.
    /// [default: none, the admin port is open to whoever reaches it]
    #[arg(long, env = "CRIER_ADMIN_TOKEN_FILE", value_name = "PATH")]
    pub admin_token_file: Option<PathBuf>,
}

/// Token verification settings (present only with `--jwt-key-file`).
#[derive(Debug, Clone)]
pub struct JwtSettings {
    pub key_file: PathBuf,
    pub algorithm: JwtAlgorithm,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    pub rotation_window: Duration,
}

/// The validated access-control settings.
#[derive(Debug, Clone, Default)]
pub struct AccessSettings {
    pub jwt: Option<JwtSettings>,
    pub public_channels: Vec<ChannelPattern>,
    /// Empty: every origin.
    pub allowed_origins: Vec<OriginPattern>,
    pub require_origin: bool,
    pub admin_token_file: Option<PathBuf>,
}

impl AccessArgs {
    pub fn resolve(self) -> Result<AccessSettings, ConfigError> {
        let err = |s: String| Err(ConfigError(s));
        let public_channels = match &self.public_channels {
            Some(p) => ChannelPattern::parse_list(p).map_err(|e| ConfigError(format!("--public-channels: {e}")))?,
            None => Vec::new(),
        };
        let allowed_origins = match &self.allowed_origins {
            Some(o) => OriginPattern::parse_list(o).map_err(|e| ConfigError(format!("--allowed-origins: {e}")))?,
            None => Vec::new(),
        };
        let jwt = match self.jwt_key_file {
            Some(key_file) => Some(JwtSettings {
                key_file,
                algorithm: self.jwt_algorithm,
                issuer: self.jwt_issuer,
                audience: self.jwt_audience,
                rotation_window: self.jwt_rotation_window,
            }),
            None => {
                // Settings that only mean something with a key: a typo'd deployment
                // would otherwise run with every channel open.
                for (set, name) in [
                    (self.public_channels.is_some(), "--public-channels"),
                    (self.jwt_issuer.is_some(), "--jwt-issuer"),
                    (self.jwt_audience.is_some(), "--jwt-audience"),
                ] {
                    if set {
                        return err(format!(
                            "{name} needs --jwt-key-file: without a key every channel is public and no token is read"
                        ));
                    }
                }
                None
            }
        };
        Ok(AccessSettings {
            jwt,
            public_channels,
            allowed_origins,
            require_origin: self.require_origin,
            admin_token_file: self.admin_token_file,
        })
    }
}
