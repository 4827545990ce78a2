//! Where bots get their tokens: minted here from the node's HS256 secret
//! (what a backend that shares the secret does), or asked from a dev-mode
//! node's `/v1/dev/token`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use state::auth::{AuthConfig, Scope, TokenRequest, Verifier};

/// Lifetime of a minted token: longer than any run.
pub const TOKEN_TTL_S: u64 = 24 * 3600;

#[derive(Clone)]
pub enum TokenSource {
    /// Mint HS256 tokens with this key (the node's `auth.hs256_secret`).
    Secret(Arc<Verifier>),
    /// Ask the node's dev endpoint.
    Dev,
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TokenSource::Secret(_) => "TokenSource::Secret(..)",
            TokenSource::Dev => "TokenSource::Dev",
        })
    }
}

impl TokenSource {
    /// `Some(secret)`: mint with it; `None`: the dev endpoint.
    pub fn new(secret: Option<&str>) -> TokenSource {
        match secret {
            Some(s) => TokenSource::Secret(Arc::new(Verifier::dev(&AuthConfig::default(), s))),
            None => TokenSource::Dev,
        }
    }

    /// A token for `user` scoped to `instance`.
    pub async fn token(
        &self,
        http: SocketAddr,
        user: &str,
        instance: &str,
    ) -> Result<String, String> {
        match self {
            TokenSource::Secret(verifier) => {
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_err(|e| e.to_string())?
                    .as_secs();
                let request = TokenRequest {
                    sub: user.to_string(),
                    name: Some(user.to_string()),
                    scope: Scope::Instance(instance.to_string()),
                    ttl_s: TOKEN_TTL_S,
                };
                verifier
                    .issue_hs256(&request, now)
                    .map_err(|e| e.to_string())
            }
            TokenSource::Dev => net::client::dev_token(http, user, instance)
                .await
                .map_err(|e| e.to_string()),
        }
    }
}
