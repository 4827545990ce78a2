//! JWT verification for the signaling endpoint.
//!
//! A [`Verifier`] is built once from [`AuthConfig`] (an HS256 secret and/or
//! public keys read from PEM files) and then checks tokens with the clock
//! passed in by the caller; nothing here reads the system clock.
//!
//! The key decides the algorithm, never the token: an HS256 secret accepts
//! only HS256, and a public key accepts only the algorithm configured for it.
//! The header's `kid` picks the public key (a token without `kid` is fine when
//! exactly one public key is configured). `alg: none`, unknown algorithms and
//! `crit` extensions are refused before any signature is checked. After the
//! signature, `exp` (required) and `nbf` (optional) are checked against `now`
//! with `auth.leeway_s`, then `iss` and `aud` when configured, then the
//! claims the server needs: `sub`, an optional `name` and exactly one scope,
//! `instance` or `location`.
//!
//! In dev mode the verifier holds a random HS256 secret and can also issue
//! tokens ([`Verifier::issue_hs256`]).
//!
//! ```
//! use state::auth::{AuthConfig, Scope, TokenRequest, Verifier};
//!
//! let verifier = Verifier::dev(&AuthConfig::default(), "a random secret printed at start");
//! let request = TokenRequest {
//!     sub: "u1".into(),
//!     name: Some("Ann".into()),
//!     scope: Scope::Instance("demo".into()),
//!     ttl_s: 3600,
//! };
//! let token = verifier.issue_hs256(&request, 1_700_000_000).unwrap();
//! let claims = verifier.verify(&token, 1_700_000_100).unwrap();
//! assert_eq!(claims.sub, "u1");
//! assert!(claims.scope.allows("demo", "lobby"));
//! ```

use std::collections::HashSet;
use std::fmt;
use std::path::PathBuf;

use jsonwebtoken::crypto::CryptoProvider;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header};
use serde::{Deserialize, Serialize};

/// Longest `sub`, `name` and scope id accepted in a token or issued.
pub const CLAIM_BYTES_MAX: usize = 256;
/// Most public keys one node accepts.
pub const PUBLIC_KEYS_MAX: usize = 64;
/// Shortest `auth.hs256_secret` accepted from configuration.
pub const HS256_SECRET_BYTES_MIN: usize = 32;
/// Longest lifetime of a dev token.
pub const DEV_TOKEN_TTL_S_MAX: u64 = 86_400;
/// Lifetime of a dev token whose request names none.
pub const DEV_TOKEN_TTL_S_DEFAULT: u64 = 3_600;
/// Longest piece of a token (a `kid`, an `alg`) repeated in an error message.
const ECHO_CHARS_MAX: usize = 64;

/// The `auth` section of the node's configuration.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Shared secret for HS256 tokens (at least 32 bytes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hs256_secret: Option<String>,
    /// Public keys for RS256, ES256 and EdDSA tokens, chosen by `kid`.
    pub public_keys: Vec<PublicKeyConfig>,
    /// When set, tokens must carry exactly this `iss`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// When set, tokens must carry this value in `aud` (a string or a list).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway_s: u64,
    /// Longer tokens are refused before any parsing.
    pub token_bytes_max: usize,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            hs256_secret: None,
            public_keys: Vec::new(),
            issuer: None,
            audience: None,
            leeway_s: 30,
            token_bytes_max: 8_192,
        }
    }
}

// Written by hand so that the secret never reaches a log.
impl fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthConfig")
            .field(
                "hs256_secret",
                &self.hs256_secret.as_ref().map(|_| "[redacted]"),
            )
            .field("public_keys", &self.public_keys)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("leeway_s", &self.leeway_s)
            .field("token_bytes_max", &self.token_bytes_max)
            .finish()
    }
}

/// One public key: its `kid`, the one algorithm it verifies and its PEM file
/// (SubjectPublicKeyInfo, `-----BEGIN PUBLIC KEY-----`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublicKeyConfig {
    pub kid: String,
    pub algorithm: KeyAlgorithm,
    pub pem_file: PathBuf,
}

/// The algorithms a public key can be pinned to.
#[allow(clippy::upper_case_acronyms)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum KeyAlgorithm {
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    RS256,
    /// ECDSA on P-256 with SHA-256.
    ES256,
    /// Ed25519.
    EdDSA,
}

impl KeyAlgorithm {
    /// The name used in a JWT header's `alg` and in configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyAlgorithm::RS256 => "RS256",
            KeyAlgorithm::ES256 => "ES256",
            KeyAlgorithm::EdDSA => "EdDSA",
        }
    }

    fn from_jwt_name(name: &str) -> Option<KeyAlgorithm> {
        match name {
            "RS256" => Some(KeyAlgorithm::RS256),
            "ES256" => Some(KeyAlgorithm::ES256),
            "EdDSA" => Some(KeyAlgorithm::EdDSA),
            _ => None,
        }
    }

    fn jwt(self) -> Algorithm {
        match self {
            KeyAlgorithm::RS256 => Algorithm::RS256,
            KeyAlgorithm::ES256 => Algorithm::ES256,
            KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        }
    }

    fn key_description(self) -> &'static str {
        match self {
            KeyAlgorithm::RS256 => "an RSA public key",
            KeyAlgorithm::ES256 => "an EC P-256 public key",
            KeyAlgorithm::EdDSA => "an Ed25519 public key",
        }
    }
}

impl fmt::Display for KeyAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a token lets its holder join.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// One instance, by id.
    Instance(String),
    /// Any instance of a location, by location id.
    Location(String),
}

impl Scope {
    /// Whether this scope admits its holder to `instance_id`, an instance of
    /// `location_id`.
    pub fn allows(&self, instance_id: &str, location_id: &str) -> bool {
        match self {
            Scope::Instance(id) => id == instance_id,
            Scope::Location(id) => id == location_id,
        }
    }

    /// The instance or location id.
    pub fn id(&self) -> &str {
        match self {
            Scope::Instance(id) | Scope::Location(id) => id,
        }
    }
}

/// The claims of a verified token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claims {
    /// The user id, 1..=256 bytes.
    pub sub: String,
    /// The display name, at most 256 bytes.
    pub name: Option<String>,
    pub scope: Scope,
    /// Expiry, seconds since 1970.
    pub exp: u64,
}

/// Why a token was refused. [`AuthError::reason`] labels it for metrics.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    #[error("no token: the request carries no JWT")]
    Missing,
    #[error("token is {bytes} bytes, more than auth.token_bytes_max ({max_bytes})")]
    TooLarge { bytes: usize, max_bytes: usize },
    #[error("malformed token: {0}")]
    Malformed(String),
    #[error("token algorithm refused: {0}")]
    Algorithm(String),
    #[error("unknown token key: {0}")]
    UnknownKey(String),
    #[error("bad token signature: the token was not signed by the configured key, or was altered")]
    Signature,
    #[error("token expired at {exp_unix_s} (now {now_unix_s}, leeway {leeway_s} s)")]
    Expired {
        exp_unix_s: u64,
        now_unix_s: u64,
        leeway_s: u64,
    },
    #[error("token not valid before {nbf_unix_s} (now {now_unix_s}, leeway {leeway_s} s)")]
    NotYetValid {
        nbf_unix_s: u64,
        now_unix_s: u64,
        leeway_s: u64,
    },
    #[error("token `iss` is missing or differs from auth.issuer")]
    Issuer,
    #[error("token `aud` is missing or does not include auth.audience")]
    Audience,
    #[error("bad token claims: {0}")]
    Claims(String),
}

impl AuthError {
    /// A stable snake_case label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::TooLarge { .. } => "too_large",
            AuthError::Malformed(_) => "malformed",
            AuthError::Algorithm(_) => "algorithm",
            AuthError::UnknownKey(_) => "unknown_key",
            AuthError::Signature => "signature",
            AuthError::Expired { .. } => "expired",
            AuthError::NotYetValid { .. } => "not_yet_valid",
            AuthError::Issuer => "issuer",
            AuthError::Audience => "audience",
            AuthError::Claims(_) => "claims",
        }
    }
}

/// Why [`Verifier::from_config`] refused the `auth` section.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthConfigError {
    #[error(
        "no JWT keys configured: set auth.hs256_secret or auth.public_keys, or run in dev mode"
    )]
    NoKeys,
    #[error(
        "auth.hs256_secret is {bytes} bytes; use at least {min_bytes} random bytes \
         (for example `openssl rand -base64 32`)"
    )]
    WeakSecret { bytes: usize, min_bytes: usize },
    #[error("auth.public_keys lists {count} keys; at most {max} are supported")]
    TooManyKeys { count: usize, max: usize },
    #[error("auth.public_keys: kid {kid:?} is invalid: {reason}")]
    BadKid { kid: String, reason: String },
    #[error("auth.public_keys: kid {0:?} is listed twice; give each key its own kid")]
    DuplicateKid(String),
    #[error("auth.public_keys kid {kid:?}: cannot read PEM file {path}: {error}")]
    ReadPem {
        kid: String,
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("auth.public_keys kid {kid:?}: PEM file {path}: {reason}")]
    InvalidPem {
        kid: String,
        path: PathBuf,
        reason: String,
    },
}

/// A dev token to issue: `{"sub":"u1","name":"Ann","instance":"demo","ttl_s":3600}`
/// (or `"location"` instead of `"instance"`; `ttl_s` defaults to an hour).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "TokenRequestJson", into = "TokenRequestJson")]
pub struct TokenRequest {
    pub sub: String,
    pub name: Option<String>,
    pub scope: Scope,
    pub ttl_s: u64,
}

/// The JSON shape of a [`TokenRequest`]: the scope as a plain key.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenRequestJson {
    sub: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    instance: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    location: Option<String>,
    #[serde(default = "default_ttl_s")]
    ttl_s: u64,
}

fn default_ttl_s() -> u64 {
    DEV_TOKEN_TTL_S_DEFAULT
}

impl TryFrom<TokenRequestJson> for TokenRequest {
    type Error = String;

    fn try_from(json: TokenRequestJson) -> Result<Self, Self::Error> {
        let scope = scope_from(json.instance, json.location)?;
        Ok(TokenRequest {
            sub: json.sub,
            name: json.name,
            scope,
            ttl_s: json.ttl_s,
        })
    }
}

impl From<TokenRequest> for TokenRequestJson {
    fn from(request: TokenRequest) -> Self {
        let (instance, location) = match request.scope {
            Scope::Instance(id) => (Some(id), None),
            Scope::Location(id) => (None, Some(id)),
        };
        TokenRequestJson {
            sub: request.sub,
            name: request.name,
            instance,
            location,
            ttl_s: request.ttl_s,
        }
    }
}

/// Checks tokens against the configured keys, issuer, audience and limits.
/// Cheap to share by reference; holds no state that changes.
pub struct Verifier {
    hs256: Option<Hs256Key>,
    public_keys: Vec<PublicKey>,
    issuer: Option<String>,
    audience: Option<String>,
    leeway_s: u64,
    token_bytes_max: usize,
}

struct Hs256Key {
    decoding: DecodingKey,
    encoding: EncodingKey,
}

impl Hs256Key {
    fn new(secret: &str) -> Self {
        Hs256Key {
            decoding: DecodingKey::from_secret(secret.as_bytes()),
            encoding: EncodingKey::from_secret(secret.as_bytes()),
        }
    }
}

struct PublicKey {
    kid: String,
    algorithm: KeyAlgorithm,
    decoding: DecodingKey,
}

// Written by hand: kids and algorithms only, never key material.
impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys: Vec<(&str, KeyAlgorithm)> = self
            .public_keys
            .iter()
            .map(|k| (k.kid.as_str(), k.algorithm))
            .collect();
        f.debug_struct("Verifier")
            .field("hs256", &self.hs256.is_some())
            .field("public_keys", &keys)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("leeway_s", &self.leeway_s)
            .field("token_bytes_max", &self.token_bytes_max)
            .finish()
    }
}

/// jsonwebtoken picks its crypto backend from a process-wide default. Install
/// the RustCrypto one so that the choice never depends on which features
/// other crates turn on; an `Err` only means a provider is already installed.
fn install_crypto_provider() {
    let provider: &'static CryptoProvider = &jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER;
    let _ = provider.install_default();
}

impl Verifier {
    /// Builds a verifier from the `auth` section, reading every PEM file.
    pub fn from_config(config: &AuthConfig) -> Result<Verifier, AuthConfigError> {
        install_crypto_provider();
        if config.hs256_secret.is_none() && config.public_keys.is_empty() {
            return Err(AuthConfigError::NoKeys);
        }
        if config.public_keys.len() > PUBLIC_KEYS_MAX {
            return Err(AuthConfigError::TooManyKeys {
                count: config.public_keys.len(),
                max: PUBLIC_KEYS_MAX,
            });
        }
        let hs256 = match &config.hs256_secret {
            Some(secret) if secret.len() < HS256_SECRET_BYTES_MIN => {
                return Err(AuthConfigError::WeakSecret {
                    bytes: secret.len(),
                    min_bytes: HS256_SECRET_BYTES_MIN,
                });
            }
            Some(secret) => Some(Hs256Key::new(secret)),
            None => None,
        };
        let mut kids = HashSet::with_capacity(config.public_keys.len());
        let mut public_keys = Vec::with_capacity(config.public_keys.len());
        for key in &config.public_keys {
            check_kid(&key.kid)?;
            if !kids.insert(key.kid.as_str()) {
                return Err(AuthConfigError::DuplicateKid(key.kid.clone()));
            }
            public_keys.push(load_public_key(key)?);
        }
        Ok(Verifier {
            hs256,
            public_keys,
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            leeway_s: config.leeway_s,
            token_bytes_max: config.token_bytes_max,
        })
    }

    /// A dev-mode verifier: HS256 with `secret` (any length; the binary makes
    /// a random one), issuer, audience and limits from `config`. The
    /// configured public keys are not used.
    pub fn dev(config: &AuthConfig, secret: &str) -> Verifier {
        install_crypto_provider();
        Verifier {
            hs256: Some(Hs256Key::new(secret)),
            public_keys: Vec::new(),
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            leeway_s: config.leeway_s,
            token_bytes_max: config.token_bytes_max,
        }
    }

    /// Whether [`Verifier::issue_hs256`] can work (an HS256 secret is held).
    pub fn can_issue(&self) -> bool {
        self.hs256.is_some()
    }

    /// Verifies `token` at `now_unix_s` and returns its claims.
    pub fn verify(&self, token: &str, now_unix_s: u64) -> Result<Claims, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        if token.len() > self.token_bytes_max {
            return Err(AuthError::TooLarge {
                bytes: token.len(),
                max_bytes: self.token_bytes_max,
            });
        }
        let malformed = || {
            AuthError::Malformed("expected three base64url parts: header.payload.signature".into())
        };
        let (message, signature) = token.rsplit_once('.').ok_or_else(malformed)?;
        let (header_b64, payload_b64) = message.split_once('.').ok_or_else(malformed)?;
        if payload_b64.contains('.') {
            return Err(malformed());
        }
        let header = parse_header(header_b64)?;
        let (key, algorithm) = self.select_key(&header)?;
        check_signature(message, signature, key, algorithm)?;
        let payload = parse_payload(payload_b64)?;
        let exp = self.check_time(&payload, now_unix_s)?;
        self.check_issuer_audience(&payload)?;
        payload.into_claims(exp)
    }

    /// Issues an HS256 token for `request`, valid from `now_unix_s` for
    /// `request.ttl_s`, with `iss` and `aud` from the configuration.
    pub fn issue_hs256(
        &self,
        request: &TokenRequest,
        now_unix_s: u64,
    ) -> Result<String, AuthError> {
        let Some(hs256) = &self.hs256 else {
            return Err(AuthError::Algorithm(
                "cannot issue HS256 tokens: no HS256 secret is configured (dev mode or \
                 auth.hs256_secret)"
                    .into(),
            ));
        };
        check_request(request).map_err(AuthError::Claims)?;
        let (instance, location) = match &request.scope {
            Scope::Instance(id) => (Some(id.as_str()), None),
            Scope::Location(id) => (None, Some(id.as_str())),
        };
        let claims = IssuedClaims {
            sub: &request.sub,
            name: request.name.as_deref(),
            instance,
            location,
            iss: self.issuer.as_deref(),
            aud: self.audience.as_deref(),
            iat: now_unix_s,
            nbf: now_unix_s,
            exp: now_unix_s.saturating_add(request.ttl_s),
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &hs256.encoding)
            .map_err(|e| AuthError::Claims(format!("cannot sign the token: {e}")))?;
        if token.len() > self.token_bytes_max {
            return Err(AuthError::TooLarge {
                bytes: token.len(),
                max_bytes: self.token_bytes_max,
            });
        }
        Ok(token)
    }

    /// Picks the key for the token's header; the key, not the header, fixes
    /// the algorithm.
    fn select_key(&self, header: &TokenHeader) -> Result<(&DecodingKey, Algorithm), AuthError> {
        if header.alg == "HS256" {
            return match &self.hs256 {
                Some(hs256) => Ok((&hs256.decoding, Algorithm::HS256)),
                None => Err(AuthError::Algorithm(format!(
                    "alg \"HS256\" is refused: no auth.hs256_secret is configured; this server \
                     accepts {}",
                    self.accepted()
                ))),
            };
        }
        let Some(algorithm) = KeyAlgorithm::from_jwt_name(&header.alg) else {
            return Err(AuthError::Algorithm(format!(
                "alg {:?} is refused; this server accepts {}",
                clip(&header.alg),
                self.accepted()
            )));
        };
        let key = match header.kid.as_deref() {
            Some(kid) => self
                .public_keys
                .iter()
                .find(|k| k.kid == kid)
                .ok_or_else(|| {
                    AuthError::UnknownKey(format!(
                        "kid {:?} is not in auth.public_keys (known kids: {})",
                        clip(kid),
                        self.kids()
                    ))
                })?,
            None => match self.public_keys.as_slice() {
                [only] => only,
                [] => {
                    return Err(AuthError::Algorithm(format!(
                        "alg {algorithm} is refused: no auth.public_keys are configured; this \
                         server accepts {}",
                        self.accepted()
                    )));
                }
                keys => {
                    return Err(AuthError::UnknownKey(format!(
                        "the token header has no kid and {} public keys are configured; set kid \
                         to one of {}",
                        keys.len(),
                        self.kids()
                    )));
                }
            },
        };
        if key.algorithm != algorithm {
            return Err(AuthError::Algorithm(format!(
                "alg {algorithm} does not match key {:?}, which verifies {} only",
                key.kid, key.algorithm
            )));
        }
        Ok((&key.decoding, key.algorithm.jwt()))
    }

    /// `exp` is required, `nbf` optional; both get the leeway. Returns `exp`.
    fn check_time(&self, payload: &TokenPayload, now_unix_s: u64) -> Result<u64, AuthError> {
        let Some(exp) = &payload.exp else {
            return Err(AuthError::Claims(
                "the token has no `exp`; tokens must expire".into(),
            ));
        };
        let exp_unix_s = numeric_date(exp, "exp")?;
        if now_unix_s > exp_unix_s.saturating_add(self.leeway_s) {
            return Err(AuthError::Expired {
                exp_unix_s,
                now_unix_s,
                leeway_s: self.leeway_s,
            });
        }
        if let Some(nbf) = &payload.nbf {
            let nbf_unix_s = numeric_date(nbf, "nbf")?;
            if nbf_unix_s > now_unix_s.saturating_add(self.leeway_s) {
                return Err(AuthError::NotYetValid {
                    nbf_unix_s,
                    now_unix_s,
                    leeway_s: self.leeway_s,
                });
            }
        }
        Ok(exp_unix_s)
    }

    /// Without `auth.audience` the `aud` claim is not looked at: the node
    /// then has no name a token could be addressed to.
    fn check_issuer_audience(&self, payload: &TokenPayload) -> Result<(), AuthError> {
        if let Some(issuer) = &self.issuer
            && payload.iss.as_deref() != Some(issuer.as_str())
        {
            return Err(AuthError::Issuer);
        }
        if let Some(audience) = &self.audience {
            let addressed = match &payload.aud {
                Some(TokenAudience::One(aud)) => aud == audience,
                Some(TokenAudience::Many(auds)) => auds.iter().any(|aud| aud == audience),
                None => false,
            };
            if !addressed {
                return Err(AuthError::Audience);
            }
        }
        Ok(())
    }

    /// What this verifier accepts, for error messages.
    fn accepted(&self) -> String {
        let mut accepted: Vec<String> = Vec::with_capacity(self.public_keys.len() + 1);
        if self.hs256.is_some() {
            accepted.push("HS256".into());
        }
        for key in &self.public_keys {
            accepted.push(format!("{} (kid {:?})", key.algorithm, key.kid));
        }
        if accepted.is_empty() {
            "nothing".into()
        } else {
            accepted.join(", ")
        }
    }

    fn kids(&self) -> String {
        let kids: Vec<String> = self
            .public_keys
            .iter()
            .map(|k| format!("{:?}", k.kid))
            .collect();
        if kids.is_empty() {
            "none".into()
        } else {
            kids.join(", ")
        }
    }
}

fn check_kid(kid: &str) -> Result<(), AuthConfigError> {
    let reason = if kid.is_empty() {
        "it is empty"
    } else if kid.len() > CLAIM_BYTES_MAX {
        "it is longer than 256 bytes"
    } else {
        return Ok(());
    };
    Err(AuthConfigError::BadKid {
        kid: clip(kid).to_string(),
        reason: reason.into(),
    })
}

/// Reads and checks one public key, so that a bad file fails at start
/// rather than refusing every token.
fn load_public_key(config: &PublicKeyConfig) -> Result<PublicKey, AuthConfigError> {
    let pem = std::fs::read(&config.pem_file).map_err(|error| AuthConfigError::ReadPem {
        kid: config.kid.clone(),
        path: config.pem_file.clone(),
        error,
    })?;
    let invalid = |reason: String| AuthConfigError::InvalidPem {
        kid: config.kid.clone(),
        path: config.pem_file.clone(),
        reason,
    };
    if pem
        .windows(b"PRIVATE KEY".len())
        .any(|w| w == b"PRIVATE KEY")
    {
        return Err(invalid(
            "it holds a private key; configure the public key instead \
             (`openssl pkey -in private.pem -pubout -out public.pem`)"
                .into(),
        ));
    }
    let algorithm = config.algorithm;
    let decoded = match algorithm {
        KeyAlgorithm::RS256 => DecodingKey::from_rsa_pem(&pem),
        KeyAlgorithm::ES256 => DecodingKey::from_ec_pem(&pem),
        KeyAlgorithm::EdDSA => DecodingKey::from_ed_pem(&pem),
    };
    let decoding = decoded.map_err(|e| {
        invalid(format!(
            "not {} in PEM (`-----BEGIN PUBLIC KEY-----`), as {algorithm} needs: {e}",
            algorithm.key_description()
        ))
    })?;
    check_usable(&decoding, algorithm).map_err(|e| {
        invalid(format!(
            "not a usable {} for {algorithm}: {e}",
            algorithm.key_description()
        ))
    })?;
    Ok(PublicKey {
        kid: config.kid.clone(),
        algorithm,
        decoding,
    })
}

/// Builds the verifier once to catch keys of the wrong curve or size.
/// RSA keys are only parsed when a token is checked, so a broken RSA key
/// shows as signature failures.
fn check_usable(key: &DecodingKey, algorithm: KeyAlgorithm) -> Result<(), String> {
    if algorithm == KeyAlgorithm::EdDSA {
        // The Ed25519 verifier slices the first 32 bytes without checking.
        let bytes = key.try_get_as_bytes().map_err(|e| e.to_string())?;
        if bytes.len() != 32 {
            return Err(format!(
                "the key is {} bytes, an Ed25519 key is 32",
                bytes.len()
            ));
        }
    }
    let provider = &jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER;
    (provider.verifier_factory)(&algorithm.jwt(), key)
        .map(drop)
        .map_err(|e| e.to_string())
}

fn check_signature(
    message: &str,
    signature: &str,
    key: &DecodingKey,
    algorithm: Algorithm,
) -> Result<(), AuthError> {
    match jsonwebtoken::crypto::verify(signature, message.as_bytes(), key, algorithm) {
        Ok(true) => Ok(()),
        Ok(false) => Err(AuthError::Signature),
        Err(e) => match e.kind() {
            ErrorKind::Base64(_) => Err(AuthError::Malformed(
                "the signature is not base64url".into(),
            )),
            _ => Err(AuthError::Signature),
        },
    }
}

/// The header fields that matter; others are ignored.
#[derive(Deserialize)]
struct TokenHeader {
    alg: String,
    kid: Option<String>,
    crit: Option<serde_json::Value>,
}

fn parse_header(header_b64: &str) -> Result<TokenHeader, AuthError> {
    let json = base64url_decode(header_b64)
        .ok_or_else(|| AuthError::Malformed("the header is not base64url".into()))?;
    let header: TokenHeader = serde_json::from_slice(&json).map_err(|e| {
        AuthError::Malformed(format!(
            "the header is not a JSON object with a string `alg`: {e}"
        ))
    })?;
    if header.crit.is_some() {
        return Err(AuthError::Malformed(
            "the header has `crit` extensions, which this server does not support".into(),
        ));
    }
    Ok(header)
}

/// The payload fields that matter; others (`iat`, `jti`, ...) are ignored.
#[derive(Deserialize)]
struct TokenPayload {
    sub: Option<String>,
    name: Option<String>,
    instance: Option<String>,
    location: Option<String>,
    exp: Option<serde_json::Number>,
    nbf: Option<serde_json::Number>,
    iss: Option<String>,
    aud: Option<TokenAudience>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum TokenAudience {
    One(String),
    Many(Vec<String>),
}

fn parse_payload(payload_b64: &str) -> Result<TokenPayload, AuthError> {
    let json = base64url_decode(payload_b64)
        .ok_or_else(|| AuthError::Malformed("the payload is not base64url".into()))?;
    serde_json::from_slice(&json).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => AuthError::Claims(e.to_string()),
        _ => AuthError::Malformed(format!("the payload is not JSON: {e}")),
    })
}

impl TokenPayload {
    fn into_claims(self, exp: u64) -> Result<Claims, AuthError> {
        let sub = self
            .sub
            .ok_or_else(|| AuthError::Claims("the token has no `sub`".into()))?;
        check_text("sub", &sub, 1).map_err(AuthError::Claims)?;
        if let Some(name) = &self.name {
            check_text("name", name, 0).map_err(AuthError::Claims)?;
        }
        let scope = scope_from(self.instance, self.location).map_err(AuthError::Claims)?;
        check_text(scope_key(&scope), scope.id(), 1).map_err(AuthError::Claims)?;
        Ok(Claims {
            sub,
            name: self.name,
            scope,
            exp,
        })
    }
}

fn scope_from(instance: Option<String>, location: Option<String>) -> Result<Scope, String> {
    match (instance, location) {
        (Some(id), None) => Ok(Scope::Instance(id)),
        (None, Some(id)) => Ok(Scope::Location(id)),
        (None, None) => Err("no scope: set `instance` or `location`".into()),
        (Some(_), Some(_)) => Err("both `instance` and `location` are set; set exactly one".into()),
    }
}

fn scope_key(scope: &Scope) -> &'static str {
    match scope {
        Scope::Instance(_) => "instance",
        Scope::Location(_) => "location",
    }
}

fn check_text(key: &str, value: &str, bytes_min: usize) -> Result<(), String> {
    if value.len() < bytes_min {
        return Err(format!("`{key}` is empty"));
    }
    if value.len() > CLAIM_BYTES_MAX {
        return Err(format!(
            "`{key}` is {} bytes, more than the {CLAIM_BYTES_MAX} allowed",
            value.len()
        ));
    }
    Ok(())
}

fn check_request(request: &TokenRequest) -> Result<(), String> {
    check_text("sub", &request.sub, 1)?;
    if let Some(name) = &request.name {
        check_text("name", name, 0)?;
    }
    check_text(scope_key(&request.scope), request.scope.id(), 1)?;
    if !(1..=DEV_TOKEN_TTL_S_MAX).contains(&request.ttl_s) {
        return Err(format!(
            "`ttl_s` is {}; it must be within 1..={DEV_TOKEN_TTL_S_MAX}",
            request.ttl_s
        ));
    }
    Ok(())
}

/// The claims of an issued dev token.
#[derive(Serialize)]
struct IssuedClaims<'a> {
    sub: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    instance: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    location: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    iss: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    aud: Option<&'a str>,
    iat: u64,
    nbf: u64,
    exp: u64,
}

/// A JWT NumericDate: seconds since 1970, possibly fractional (rounded
/// down).
fn numeric_date(value: &serde_json::Number, key: &str) -> Result<u64, AuthError> {
    if let Some(seconds) = value.as_u64() {
        return Ok(seconds);
    }
    match value.as_f64() {
        Some(seconds) if seconds.is_finite() && seconds >= 0.0 && seconds < u64::MAX as f64 => {
            Ok(seconds as u64)
        }
        _ => Err(AuthError::Claims(format!(
            "`{key}` is {value}; it must be a non-negative number of seconds since 1970"
        ))),
    }
}

/// Decodes unpadded base64url (RFC 7515 §2) and refuses anything else,
/// including set bits left over after the last byte.
fn base64url_decode(text: &str) -> Option<Vec<u8>> {
    if text.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(text.len() / 4 * 3 + 2);
    let mut acc: u32 = 0;
    let mut bits: u32 = 0;
    for byte in text.bytes() {
        let sextet = match byte {
            b'A'..=b'Z' => byte - b'A',
            b'a'..=b'z' => byte - b'a' + 26,
            b'0'..=b'9' => byte - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(sextet);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push(((acc >> bits) & 0xff) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    if acc != 0 {
        return None;
    }
    Some(out)
}

/// At most [`ECHO_CHARS_MAX`] characters of token text, for error messages.
fn clip(text: &str) -> &str {
    match text.char_indices().nth(ECHO_CHARS_MAX) {
        Some((end, _)) => &text[..end],
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64url_decodes_all_lengths() {
        assert_eq!(base64url_decode(""), Some(vec![]));
        assert_eq!(base64url_decode("Zg"), Some(b"f".to_vec()));
        assert_eq!(base64url_decode("Zm8"), Some(b"fo".to_vec()));
        assert_eq!(base64url_decode("Zm9v"), Some(b"foo".to_vec()));
        assert_eq!(base64url_decode("Zm9vYg"), Some(b"foob".to_vec()));
        assert_eq!(base64url_decode("-_8"), Some(vec![0xfb, 0xff]));
    }

    #[test]
    fn base64url_refuses_padding_and_other_alphabets() {
        assert_eq!(base64url_decode("Zg=="), None);
        assert_eq!(base64url_decode("+/8"), None);
        assert_eq!(base64url_decode("Z"), None);
        // "Zh" leaves a set bit after the byte: not canonical.
        assert_eq!(base64url_decode("Zh"), None);
    }

    #[test]
    fn clip_keeps_char_boundaries() {
        let long = "é".repeat(100);
        assert_eq!(clip(&long).chars().count(), ECHO_CHARS_MAX);
        assert_eq!(clip("kid"), "kid");
    }
}
