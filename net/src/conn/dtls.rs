//! str0m's DTLS (dimpl over aws-lc), with dimpl's configuration built once
//! per process instead of once per connection.
//!
//! Building a dimpl `Config` validates its crypto provider by running a key
//! exchange on every group it supports (P-384, P-256, X25519): about 60% of
//! what accepting a join cost the shard (`cargo bench -p bench --bench
//! join`). The configuration is immutable and shared by `Arc`; each
//! connection still gets its own DTLS state, random generator and ECDHE keys.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use str0m::crypto::CryptoError;
use str0m::crypto::dtls::{
    DtlsCert, DtlsImplError, DtlsInstance, DtlsOutput, DtlsProvider, DtlsVersion, ProtocolVersion,
};

/// The provider: str0m's aws-lc one but for the cached configuration.
#[derive(Debug)]
pub struct SharedConfigDtls {
    /// The configuration for the MTU the first connection asked for (every
    /// connection of the node asks for the same one).
    config: OnceLock<(Option<usize>, Arc<dimpl::Config>)>,
}

/// The one instance str0m's `CryptoProvider` points at.
pub static SHARED_CONFIG_DTLS: SharedConfigDtls = SharedConfigDtls {
    config: OnceLock::new(),
};

fn build(mtu: Option<usize>) -> Result<dimpl::Config, CryptoError> {
    // ICE has checked the peer's address before DTLS starts: no cookie
    // round trip (as str0m's own provider).
    let mut builder = dimpl::Config::builder()
        .with_crypto_provider(dimpl::crypto::aws_lc_rs::default_provider())
        .use_server_cookie(false);
    if let Some(mtu) = mtu {
        builder = builder.mtu(mtu);
    }
    builder
        .build()
        .map_err(|e| CryptoError::Other(format!("dimpl config: {e}")))
}

impl SharedConfigDtls {
    fn config(&self, mtu: Option<usize>) -> Result<Arc<dimpl::Config>, CryptoError> {
        if let Some((cached_mtu, config)) = self.config.get() {
            if *cached_mtu == mtu {
                return Ok(config.clone());
            }
            // Another MTU than the node's: built for this connection alone,
            // at the full price the cache exists to avoid.
            tracing::debug!(
                ?mtu,
                ?cached_mtu,
                "DTLS configuration built for one connection"
            );
            return Ok(Arc::new(build(mtu)?));
        }
        let config = Arc::new(build(mtu)?);
        let (cached_mtu, cached) = self.config.get_or_init(|| (mtu, config.clone()));
        Ok(if *cached_mtu == mtu {
            cached.clone()
        } else {
            config
        })
    }
}

impl DtlsProvider for SharedConfigDtls {
    fn generate_certificate(&self) -> Option<DtlsCert> {
        dimpl::certificate::generate_self_signed_certificate().ok()
    }

    fn new_dtls(
        &self,
        cert: &DtlsCert,
        now: Instant,
        dtls_version: DtlsVersion,
        mtu: Option<usize>,
    ) -> Result<Box<dyn DtlsInstance>, CryptoError> {
        let config = self.config(mtu)?;
        let dtls = match dtls_version {
            DtlsVersion::Dtls12 => dimpl::Dtls::new_12(config, cert.clone(), now),
            DtlsVersion::Dtls13 => dimpl::Dtls::new_13(config, cert.clone(), now),
            DtlsVersion::Auto => dimpl::Dtls::new_auto(config, cert.clone(), now),
            other => {
                return Err(CryptoError::Other(format!(
                    "unsupported DTLS version: {other}"
                )));
            }
        };
        Ok(Box::new(Instance(dtls)))
    }
}

/// One connection's DTLS state.
struct Instance(dimpl::Dtls);

impl std::fmt::Debug for Instance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DtlsInstance")
    }
}

impl DtlsInstance for Instance {
    fn set_active(&mut self, active: bool) {
        self.0.set_active(active);
    }

    fn handle_packet(&mut self, packet: &[u8]) -> Result<(), DtlsImplError> {
        self.0.handle_packet(packet)
    }

    fn poll_output<'a>(&mut self, buf: &'a mut [u8]) -> DtlsOutput<'a> {
        self.0.poll_output(buf)
    }

    fn handle_timeout(&mut self, now: Instant) -> Result<(), DtlsImplError> {
        self.0.handle_timeout(now)
    }

    fn send_application_data(&mut self, data: &[u8]) -> Result<usize, DtlsImplError> {
        self.0.send_application_data(data)
    }

    fn is_active(&self) -> bool {
        self.0.is_active()
    }

    fn protocol_version(&self) -> Option<ProtocolVersion> {
        self.0.protocol_version()
    }

    fn is_closing(&self) -> bool {
        self.0.is_closing()
    }

    fn is_closed(&self) -> bool {
        self.0.is_closed()
    }

    fn close(&mut self) -> Result<(), DtlsImplError> {
        self.0.close()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_configuration_serves_every_connection_of_the_same_mtu() {
        let provider = SharedConfigDtls {
            config: OnceLock::new(),
        };
        let a = provider.config(Some(1150)).expect("builds");
        let b = provider.config(Some(1150)).expect("builds");
        assert!(Arc::ptr_eq(&a, &b), "built twice");
        let other = provider.config(Some(1400)).expect("builds");
        assert!(!Arc::ptr_eq(&a, &other));
        assert_eq!(other.mtu(), 1400);
        assert_eq!(a.mtu(), 1150);
    }
}
