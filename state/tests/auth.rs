#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `state::auth` against tokens signed by jsonwebtoken with the test keys in
//! `tests/keys/` (test-only keys, see the README there).

use std::path::PathBuf;

use jsonwebtoken::crypto::CryptoProvider;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use state::auth::{
    AuthConfig, AuthConfigError, AuthError, KeyAlgorithm, PublicKeyConfig, Scope, TokenRequest,
    Verifier,
};

const NOW: u64 = 1_700_000_000;
const SECRET: &str = "test-only-hs256-secret-0123456789abcdef";
const ISSUER: &str = "https://auth.example.test";
const AUDIENCE: &str = "instanceserver";
/// `{"alg":"none","typ":"JWT"}` in base64url.
const NONE_HEADER_B64: &str = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0";

fn key_path(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/keys")
        .join(file)
}

fn file_stem(algorithm: KeyAlgorithm) -> &'static str {
    match algorithm {
        KeyAlgorithm::RS256 => "rs256",
        KeyAlgorithm::ES256 => "es256",
        KeyAlgorithm::EdDSA => "eddsa",
    }
}

fn kid(algorithm: KeyAlgorithm) -> String {
    format!("{}-key", file_stem(algorithm))
}

fn jwt_algorithm(algorithm: KeyAlgorithm) -> Algorithm {
    match algorithm {
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
    }
}

fn private_key(algorithm: KeyAlgorithm) -> EncodingKey {
    let pem = std::fs::read(key_path(&format!("{}-private.pem", file_stem(algorithm)))).unwrap();
    match algorithm {
        KeyAlgorithm::RS256 => EncodingKey::from_rsa_pem(&pem),
        KeyAlgorithm::ES256 => EncodingKey::from_ec_pem(&pem),
        KeyAlgorithm::EdDSA => EncodingKey::from_ed_pem(&pem),
    }
    .unwrap()
}

fn public_key(algorithm: KeyAlgorithm) -> PublicKeyConfig {
    PublicKeyConfig {
        kid: kid(algorithm),
        algorithm,
        pem_file: key_path(&format!("{}-public.pem", file_stem(algorithm))),
    }
}

fn claims() -> Value {
    json!({
        "sub": "u1",
        "name": "Ann",
        "instance": "demo",
        "iss": ISSUER,
        "aud": AUDIENCE,
        "iat": NOW,
        "nbf": NOW,
        "exp": NOW + 600,
    })
}

fn claims_with(key: &str, value: Value) -> Value {
    let mut claims = claims();
    claims[key] = value;
    claims
}

fn claims_without(key: &str) -> Value {
    let mut claims = claims();
    claims.as_object_mut().unwrap().remove(key);
    claims
}

fn sign(algorithm: Algorithm, kid: Option<&str>, claims: &Value, key: &EncodingKey) -> String {
    // Pin the backend as the verifier does, whichever test runs first.
    let provider: &'static CryptoProvider = &jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER;
    let _ = provider.install_default();
    let mut header = Header::new(algorithm);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

fn sign_hs256(claims: &Value) -> String {
    sign(
        Algorithm::HS256,
        None,
        claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
}

fn sign_with(algorithm: KeyAlgorithm, kid: Option<&str>, claims: &Value) -> String {
    sign(
        jwt_algorithm(algorithm),
        kid,
        claims,
        &private_key(algorithm),
    )
}

fn hs256_config() -> AuthConfig {
    AuthConfig {
        hs256_secret: Some(SECRET.into()),
        issuer: Some(ISSUER.into()),
        audience: Some(AUDIENCE.into()),
        ..AuthConfig::default()
    }
}

fn public_keys_config(algorithms: &[KeyAlgorithm]) -> AuthConfig {
    AuthConfig {
        public_keys: algorithms.iter().map(|&a| public_key(a)).collect(),
        issuer: Some(ISSUER.into()),
        audience: Some(AUDIENCE.into()),
        ..AuthConfig::default()
    }
}

fn all_public_keys() -> Verifier {
    let config = public_keys_config(&[
        KeyAlgorithm::RS256,
        KeyAlgorithm::ES256,
        KeyAlgorithm::EdDSA,
    ]);
    Verifier::from_config(&config).unwrap()
}

fn hs256() -> Verifier {
    Verifier::from_config(&hs256_config()).unwrap()
}

fn expected_claims() -> state::auth::Claims {
    state::auth::Claims {
        sub: "u1".into(),
        name: Some("Ann".into()),
        scope: Scope::Instance("demo".into()),
        exp: NOW + 600,
    }
}

/// The payload part of a token.
fn payload_of(token: &str) -> &str {
    token.split('.').nth(1).unwrap()
}

/// `token` with its payload replaced by `other`'s.
fn splice_payload(token: &str, other: &str) -> String {
    let parts: Vec<&str> = token.split('.').collect();
    format!("{}.{}.{}", parts[0], payload_of(other), parts[2])
}

#[test]
fn hs256_token_verifies() {
    let token = sign_hs256(&claims());
    assert_eq!(hs256().verify(&token, NOW + 1).unwrap(), expected_claims());
}

fn assert_public_key_verifies(algorithm: KeyAlgorithm) {
    let verifier = all_public_keys();
    let token = sign_with(algorithm, Some(&kid(algorithm)), &claims());
    assert_eq!(
        verifier.verify(&token, NOW + 1).unwrap(),
        expected_claims(),
        "{algorithm}"
    );
}

#[test]
fn rs256_token_verifies() {
    assert_public_key_verifies(KeyAlgorithm::RS256);
}

#[test]
fn es256_token_verifies() {
    assert_public_key_verifies(KeyAlgorithm::ES256);
}

#[test]
fn eddsa_token_verifies() {
    assert_public_key_verifies(KeyAlgorithm::EdDSA);
}

#[test]
fn single_public_key_needs_no_kid() {
    let verifier = Verifier::from_config(&public_keys_config(&[KeyAlgorithm::EdDSA])).unwrap();
    let token = sign_with(KeyAlgorithm::EdDSA, None, &claims());
    assert_eq!(verifier.verify(&token, NOW).unwrap(), expected_claims());
}

#[test]
fn several_public_keys_need_a_kid() {
    let token = sign_with(KeyAlgorithm::ES256, None, &claims());
    let err = all_public_keys().verify(&token, NOW).unwrap_err();
    assert!(matches!(err, AuthError::UnknownKey(_)), "{err}");
}

#[test]
fn expired_beyond_leeway_is_refused() {
    let token = sign_hs256(&claims());
    let exp = NOW + 600;
    let err = hs256().verify(&token, exp + 31).unwrap_err();
    assert_eq!(
        err,
        AuthError::Expired {
            exp_unix_s: exp,
            now_unix_s: exp + 31,
            leeway_s: 30
        }
    );
    assert_eq!(err.reason(), "expired");
    assert_eq!(
        err.to_string(),
        format!("token expired at {exp} (now {}, leeway 30 s)", exp + 31)
    );
}

#[test]
fn expired_within_leeway_is_accepted() {
    let token = sign_hs256(&claims());
    assert!(hs256().verify(&token, NOW + 600 + 30).is_ok());
}

#[test]
fn missing_exp_is_refused() {
    let token = sign_hs256(&claims_without("exp"));
    let err = hs256().verify(&token, NOW).unwrap_err();
    assert!(matches!(err, AuthError::Claims(_)), "{err}");
}

#[test]
fn nbf_in_the_future_is_refused() {
    let token = sign_hs256(&claims_with("nbf", json!(NOW + 120)));
    let err = hs256().verify(&token, NOW).unwrap_err();
    assert_eq!(
        err,
        AuthError::NotYetValid {
            nbf_unix_s: NOW + 120,
            now_unix_s: NOW,
            leeway_s: 30
        }
    );
    // Within the leeway the clock skew is forgiven.
    let token = sign_hs256(&claims_with("nbf", json!(NOW + 20)));
    assert!(hs256().verify(&token, NOW).is_ok());
}

#[test]
fn wrong_audience_is_refused() {
    let verifier = hs256();
    let token = sign_hs256(&claims_with("aud", json!("someone-else")));
    assert_eq!(
        verifier.verify(&token, NOW).unwrap_err(),
        AuthError::Audience
    );
    let token = sign_hs256(&claims_without("aud"));
    assert_eq!(
        verifier.verify(&token, NOW).unwrap_err(),
        AuthError::Audience
    );
    let token = sign_hs256(&claims_with("aud", json!(["someone-else"])));
    assert_eq!(
        verifier.verify(&token, NOW).unwrap_err(),
        AuthError::Audience
    );
}

#[test]
fn audience_list_containing_ours_is_accepted() {
    let token = sign_hs256(&claims_with("aud", json!(["other", AUDIENCE])));
    assert!(hs256().verify(&token, NOW).is_ok());
}

#[test]
fn wrong_issuer_is_refused() {
    let verifier = hs256();
    let token = sign_hs256(&claims_with("iss", json!("https://evil.example.test")));
    assert_eq!(verifier.verify(&token, NOW).unwrap_err(), AuthError::Issuer);
    let token = sign_hs256(&claims_without("iss"));
    assert_eq!(verifier.verify(&token, NOW).unwrap_err(), AuthError::Issuer);
}

#[test]
fn issuer_and_audience_are_ignored_when_not_configured() {
    let config = AuthConfig {
        hs256_secret: Some(SECRET.into()),
        ..AuthConfig::default()
    };
    let verifier = Verifier::from_config(&config).unwrap();
    let token = sign_hs256(&claims_with("iss", json!("anyone")));
    assert!(verifier.verify(&token, NOW).is_ok());
}

#[test]
fn alg_none_is_refused() {
    let valid = sign_hs256(&claims());
    let token = format!("{NONE_HEADER_B64}.{}.", payload_of(&valid));
    let err = hs256().verify(&token, NOW).unwrap_err();
    assert!(matches!(err, AuthError::Algorithm(_)), "{err}");
    assert_eq!(err.reason(), "algorithm");
    let err = all_public_keys().verify(&token, NOW).unwrap_err();
    assert!(matches!(err, AuthError::Algorithm(_)), "{err}");
}

#[test]
fn hs256_token_is_refused_by_rs256_only_verifier() {
    let verifier = Verifier::from_config(&public_keys_config(&[KeyAlgorithm::RS256])).unwrap();
    // Signed with the RSA public key file's bytes as an HMAC secret: the
    // classic algorithm-confusion attack.
    let public_pem = std::fs::read(key_path("rs256-public.pem")).unwrap();
    let forged = sign(
        Algorithm::HS256,
        None,
        &claims(),
        &EncodingKey::from_secret(&public_pem),
    );
    let err = verifier.verify(&forged, NOW).unwrap_err();
    assert!(matches!(err, AuthError::Algorithm(_)), "{err}");
    let with_kid = sign(
        Algorithm::HS256,
        Some(&kid(KeyAlgorithm::RS256)),
        &claims(),
        &EncodingKey::from_secret(&public_pem),
    );
    let err = verifier.verify(&with_kid, NOW).unwrap_err();
    assert!(matches!(err, AuthError::Algorithm(_)), "{err}");
}

#[test]
fn rs256_token_naming_an_es256_key_is_refused() {
    let token = sign_with(
        KeyAlgorithm::RS256,
        Some(&kid(KeyAlgorithm::ES256)),
        &claims(),
    );
    let err = all_public_keys().verify(&token, NOW).unwrap_err();
    assert!(matches!(err, AuthError::Algorithm(_)), "{err}");
}

#[test]
fn public_key_algorithm_is_refused_by_hs256_only_verifier() {
    let token = sign_with(KeyAlgorithm::EdDSA, None, &claims());
    let err = hs256().verify(&token, NOW).unwrap_err();
    assert!(matches!(err, AuthError::Algorithm(_)), "{err}");
}

#[test]
fn unknown_kid_is_refused() {
    let token = sign_with(KeyAlgorithm::ES256, Some("retired-key"), &claims());
    let err = all_public_keys().verify(&token, NOW).unwrap_err();
    assert!(
        matches!(err, AuthError::UnknownKey(ref m) if m.contains("retired-key")),
        "{err}"
    );
    assert_eq!(err.reason(), "unknown_key");
}

#[test]
fn tampered_payload_is_refused() {
    let admin = claims_with("sub", json!("admin"));
    let hs = sign_hs256(&claims());
    let tampered = splice_payload(&hs, &sign_hs256(&admin));
    assert_eq!(
        hs256().verify(&tampered, NOW).unwrap_err(),
        AuthError::Signature
    );

    let verifier = all_public_keys();
    for algorithm in [
        KeyAlgorithm::RS256,
        KeyAlgorithm::ES256,
        KeyAlgorithm::EdDSA,
    ] {
        let key_id = kid(algorithm);
        let token = sign_with(algorithm, Some(&key_id), &claims());
        let tampered = splice_payload(&token, &sign_with(algorithm, Some(&key_id), &admin));
        assert_eq!(
            verifier.verify(&tampered, NOW).unwrap_err(),
            AuthError::Signature,
            "{algorithm}"
        );
    }
}

#[test]
fn wrong_hs256_secret_is_refused() {
    let token = sign(
        Algorithm::HS256,
        None,
        &claims(),
        &EncodingKey::from_secret(b"another-secret-another-secret-another"),
    );
    assert_eq!(
        hs256().verify(&token, NOW).unwrap_err(),
        AuthError::Signature
    );
}

#[test]
fn missing_or_double_scope_is_refused() {
    let token = sign_hs256(&claims_without("instance"));
    let err = hs256().verify(&token, NOW).unwrap_err();
    assert!(
        matches!(err, AuthError::Claims(ref m) if m.contains("instance")),
        "{err}"
    );
    assert_eq!(err.reason(), "claims");

    let token = sign_hs256(&claims_with("location", json!("lobby")));
    let err = hs256().verify(&token, NOW).unwrap_err();
    assert!(matches!(err, AuthError::Claims(_)), "{err}");
}

#[test]
fn location_scope_is_read() {
    let mut claims = claims_without("instance");
    claims["location"] = json!("lobby");
    let verified = hs256().verify(&sign_hs256(&claims), NOW).unwrap();
    assert_eq!(verified.scope, Scope::Location("lobby".into()));
    assert!(verified.scope.allows("any-instance", "lobby"));
    assert!(!verified.scope.allows("any-instance", "other"));
}

#[test]
fn bad_sub_and_name_are_refused() {
    for claims in [
        claims_without("sub"),
        claims_with("sub", json!("")),
        claims_with("sub", json!("x".repeat(257))),
        claims_with("sub", json!(42)),
        claims_with("name", json!("x".repeat(257))),
    ] {
        let err = hs256().verify(&sign_hs256(&claims), NOW).unwrap_err();
        assert!(matches!(err, AuthError::Claims(_)), "{claims}: {err}");
    }
}

#[test]
fn scope_allows_only_its_target() {
    let instance = Scope::Instance("demo".into());
    assert!(instance.allows("demo", "lobby"));
    assert!(!instance.allows("other", "demo"));
    let location = Scope::Location("lobby".into());
    assert!(location.allows("demo", "lobby"));
    assert!(!location.allows("lobby", "hall"));
}

#[test]
fn shapeless_tokens_are_refused() {
    let verifier = hs256();
    assert_eq!(verifier.verify("", NOW).unwrap_err(), AuthError::Missing);
    for token in ["abc", "a.b", "a.b.c.d", "!!!.e30.sig", "e30.e30.!!!"] {
        let err = verifier.verify(token, NOW).unwrap_err();
        assert!(matches!(err, AuthError::Malformed(_)), "{token}: {err}");
    }
    let huge = format!("{}.e30.", "a".repeat(9_000));
    let err = verifier.verify(&huge, NOW).unwrap_err();
    assert_eq!(
        err,
        AuthError::TooLarge {
            bytes: huge.len(),
            max_bytes: 8_192
        }
    );
    assert_eq!(err.reason(), "too_large");
}

#[test]
fn no_keys_fails_from_config() {
    let err = Verifier::from_config(&AuthConfig::default()).unwrap_err();
    assert!(matches!(err, AuthConfigError::NoKeys));
    assert_eq!(
        err.to_string(),
        "no JWT keys configured: set auth.hs256_secret or auth.public_keys, or run in dev mode"
    );
}

#[test]
fn missing_pem_file_names_the_path() {
    let mut config = public_keys_config(&[KeyAlgorithm::RS256]);
    config.public_keys[0].pem_file = key_path("does-not-exist.pem");
    let err = Verifier::from_config(&config).unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, AuthConfigError::ReadPem { .. }), "{message}");
    assert!(
        message.contains(&key_path("does-not-exist.pem").display().to_string()),
        "{message}"
    );
    assert!(message.contains("rs256-key"), "{message}");
}

#[test]
fn private_key_file_is_refused_as_public_key() {
    let mut config = public_keys_config(&[KeyAlgorithm::ES256]);
    config.public_keys[0].pem_file = key_path("es256-private.pem");
    let err = Verifier::from_config(&config).unwrap_err();
    assert!(matches!(err, AuthConfigError::InvalidPem { .. }), "{err}");
    assert!(err.to_string().contains("private key"), "{err}");
}

#[test]
fn key_of_the_wrong_type_is_refused() {
    let mut config = public_keys_config(&[KeyAlgorithm::ES256]);
    config.public_keys[0].pem_file = key_path("rs256-public.pem");
    let err = Verifier::from_config(&config).unwrap_err();
    assert!(matches!(err, AuthConfigError::InvalidPem { .. }), "{err}");
    assert!(err.to_string().contains("es256-key"), "{err}");
}

#[test]
fn duplicate_kid_is_refused() {
    let mut config = public_keys_config(&[KeyAlgorithm::RS256, KeyAlgorithm::ES256]);
    config.public_keys[1].kid = config.public_keys[0].kid.clone();
    let err = Verifier::from_config(&config).unwrap_err();
    assert!(
        matches!(err, AuthConfigError::DuplicateKid(ref kid) if kid == "rs256-key"),
        "{err}"
    );
}

#[test]
fn short_hs256_secret_is_refused() {
    let config = AuthConfig {
        hs256_secret: Some("short".into()),
        ..AuthConfig::default()
    };
    let err = Verifier::from_config(&config).unwrap_err();
    assert!(
        matches!(err, AuthConfigError::WeakSecret { bytes: 5, .. }),
        "{err}"
    );
}

#[test]
fn dev_tokens_round_trip() {
    let config = AuthConfig {
        issuer: Some(ISSUER.into()),
        audience: Some(AUDIENCE.into()),
        ..AuthConfig::default()
    };
    let verifier = Verifier::dev(&config, "a random dev secret");
    assert!(verifier.can_issue());
    let request: TokenRequest =
        serde_json::from_str(r#"{"sub":"u1","name":"Ann","instance":"demo","ttl_s":3600}"#)
            .unwrap();
    assert_eq!(request.scope, Scope::Instance("demo".into()));
    let token = verifier.issue_hs256(&request, NOW).unwrap();
    let claims = verifier.verify(&token, NOW + 10).unwrap();
    assert_eq!(claims.sub, "u1");
    assert_eq!(claims.name.as_deref(), Some("Ann"));
    assert_eq!(claims.exp, NOW + 3600);
    assert!(matches!(
        verifier.verify(&token, NOW + 3600 + 31).unwrap_err(),
        AuthError::Expired { .. }
    ));
    // Issued with nbf = now: not valid before, beyond the leeway.
    assert!(matches!(
        verifier.verify(&token, NOW - 31).unwrap_err(),
        AuthError::NotYetValid { .. }
    ));
}

#[test]
fn token_request_json_shapes() {
    let location: TokenRequest =
        serde_json::from_str(r#"{"sub":"u2","location":"lobby"}"#).unwrap();
    assert_eq!(location.scope, Scope::Location("lobby".into()));
    assert_eq!(location.name, None);
    assert_eq!(location.ttl_s, 3600);
    let round_trip: TokenRequest =
        serde_json::from_str(&serde_json::to_string(&location).unwrap()).unwrap();
    assert_eq!(round_trip, location);
    for bad in [
        r#"{"sub":"u1"}"#,
        r#"{"sub":"u1","instance":"a","location":"b"}"#,
        r#"{"sub":"u1","instance":"a","admin":true}"#,
    ] {
        assert!(serde_json::from_str::<TokenRequest>(bad).is_err(), "{bad}");
    }
}

#[test]
fn issuing_checks_the_request() {
    let verifier = Verifier::dev(&AuthConfig::default(), "a random dev secret");
    let mut request = TokenRequest {
        sub: String::new(),
        name: None,
        scope: Scope::Instance("demo".into()),
        ttl_s: 60,
    };
    assert!(matches!(
        verifier.issue_hs256(&request, NOW),
        Err(AuthError::Claims(_))
    ));
    request.sub = "u1".into();
    request.ttl_s = 0;
    assert!(matches!(
        verifier.issue_hs256(&request, NOW),
        Err(AuthError::Claims(_))
    ));
}

#[test]
fn issuing_needs_an_hs256_secret() {
    let verifier = all_public_keys();
    assert!(!verifier.can_issue());
    let request = TokenRequest {
        sub: "u1".into(),
        name: None,
        scope: Scope::Instance("demo".into()),
        ttl_s: 60,
    };
    assert!(verifier.issue_hs256(&request, NOW).is_err());
}

#[test]
fn debug_output_hides_the_secret() {
    let verifier = hs256();
    let debug = format!("{verifier:?}");
    assert!(!debug.contains(SECRET), "{debug}");
    let debug = format!("{:?}", hs256_config());
    assert!(!debug.contains(SECRET), "{debug}");
    let debug = format!("{:?}", all_public_keys());
    assert!(
        debug.contains("rs256-key") && debug.contains("EdDSA"),
        "{debug}"
    );
}

#[test]
fn config_deserializes_with_defaults() {
    let config: AuthConfig = serde_json::from_value(json!({
        "public_keys": [{"kid": "k1", "algorithm": "EdDSA", "pem_file": "keys/k1.pem"}],
        "audience": "instanceserver",
    }))
    .unwrap();
    assert_eq!(config.leeway_s, 30);
    assert_eq!(config.token_bytes_max, 8_192);
    assert_eq!(config.public_keys[0].algorithm, KeyAlgorithm::EdDSA);
    assert!(serde_json::from_value::<AuthConfig>(json!({"hs256": "x"})).is_err());
}
