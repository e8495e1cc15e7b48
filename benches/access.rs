//! The cost of access control per handshake: `Access::admit` with no key (everything
//! public), with an HS256, an ES256 and an EdDSA key, for a token granting a prefix pattern
//! and a connection asking for two channels. `cargo bench --bench access`.

use std::time::Duration;

use crier::access::pattern::{ChannelPattern, OriginPattern};
use crier::access::{Access, unix_now};
use crier::channel::ChannelName;
use crier::config::{AccessSettings, JwtAlgorithm, JwtSettings};
use crier::ws::handshake::Credentials;
use criterion::{Criterion, criterion_group, criterion_main};
use jsonwebtoken::{Algorithm, EncodingKey, Header};

const SECRET: &[u8] = b"bench-secret-0123456789abcdef0123456789";
// A P-256 key pair made for this bench only (it protects nothing).
const EC_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgy3gcU4P6p6bdDaq/
MmfPXRJfz6cDCUGfwTD0NQkRTFuhRANCAASdkqhl6Z55xQVUBxHKGw0xk2I7YZXQ
nTid/1iTKo+xoaX0alE7hBlUWRU1Oy+1AAvYbNSk1dIMX1D6JFxABBLc
-----END PRIVATE KEY-----
";
const EC_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEnZKoZemeecUFVAcRyhsNMZNiO2GV
0J04nf9YkyqPsaGl9GpRO4QZVFkVNTsvtQAL2GzUpNXSDF9Q+iRcQAQS3A==
-----END PUBLIC KEY-----
";

// An Ed25519 key pair made for this bench only.
const ED_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEILVf2MHgxKY/iU77/pWwtJZsQGKnpohFXV6buwHXMvok
-----END PRIVATE KEY-----
";
const ED_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MCowBQYDK2VwAyEAopTQHV9yA4E7ulZoHnngawGRFFc1fP4/+tU2NbLuzVc=
-----END PUBLIC KEY-----
";

fn access(algorithm: JwtAlgorithm, key: &[u8]) -> Access {
    let path = std::env::temp_dir().join(format!("crier-bench-access-{}-{algorithm:?}", std::process::id()));
    std::fs::write(&path, key).unwrap();
    let settings = AccessSettings {
        jwt: Some(JwtSettings {
            key_file: path.clone(),
            algorithm,
            issuer: None,
            audience: None,
            rotation_window: Duration::ZERO,
        }),
        public_channels: ChannelPattern::parse_list("news").unwrap(),
        allowed_origins: OriginPattern::parse_list("https://app.example.com").unwrap(),
        require_origin: false,
        admin_token_file: None,
    };
    let a = Access::load(&settings).unwrap();
    let _ = std::fs::remove_file(path);
    a
}

fn token(alg: Algorithm, key: &EncodingKey) -> String {
    let claims = serde_json::json!({"exp": unix_now() + 3600, "sub": "user-42", "channels": ["user.42.*", "team.7"]});
    jsonwebtoken::encode(&Header::new(alg), &claims, key).unwrap()
}

fn admit(c: &mut Criterion) {
    let channels: Vec<ChannelName> = ["news", "user.42.inbox"].iter().map(|n| ChannelName::parse(n).unwrap()).collect();
    let origin = Some("https://app.example.com".to_string());
    let hs = token(Algorithm::HS256, &EncodingKey::from_secret(SECRET).unwrap());
    let es = token(Algorithm::ES256, &EncodingKey::from_ec_pem(EC_PRIVATE.as_bytes()).unwrap());
    let ed = token(Algorithm::EdDSA, &EncodingKey::from_ed_pem(ED_PRIVATE.as_bytes()).unwrap());
    let cases = [
        ("no_key", Access::open(), None),
        ("hs256", access(JwtAlgorithm::HS256, SECRET), Some(hs)),
        ("es256", access(JwtAlgorithm::ES256, EC_PUBLIC.as_bytes()), Some(es)),
        ("eddsa", access(JwtAlgorithm::EdDSA, ED_PUBLIC.as_bytes()), Some(ed)),
    ];
    let mut g = c.benchmark_group("access_admit");
    for (name, access, token) in cases {
        let creds = Credentials { token, origin: origin.clone() };
        let now = unix_now();
        assert!(access.admit(&creds, &channels, now).is_ok(), "{name}");
        g.bench_function(name, |b| b.iter(|| access.admit(&creds, &channels, now).unwrap()));
    }
    g.finish();
}

criterion_group!(benches, admit);
criterion_main!(benches);
