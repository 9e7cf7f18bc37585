//! TLS for Postgres connections: verify-full against one CA bundle; plain TCP only where
//! a PgBouncer fleet serves no TLS.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use tokio_postgres_rustls::MakeRustlsConnect;
use tracing::warn;

use crate::PgError;

/// How a connection is secured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tls {
    /// The server's certificate must chain to a CA in the PEM bundle at `ca_bundle`
    /// (e.g. the RDS global bundle) and name the host connected to.
    /// Nothing else is trusted: not the system store, not a built-in list.
    VerifyFull {
        /// Path of a PEM file holding one or more CA certificates.
        ca_bundle: PathBuf,
    },
    /// Plain TCP. Never a database connection of the functions ([`Tls::for_databases`]
    /// cannot choose it): only a PgBouncer fleet whose cell document says it serves no
    /// TLS (its listener inside the VPC), and test fixtures.
    Disabled,
}

impl Tls {
    /// The one place the rule for database connections is decided: verify-full against
    /// the deployment's CA bundle (the RDS bundle on AWS, the local cell's own CA here),
    /// and without a bundle a `ConfigurationError`, never a silent downgrade.
    pub fn for_databases(ca_bundle: Option<PathBuf>) -> Result<Self, PgError> {
        match ca_bundle {
            Some(ca_bundle) => Ok(Self::VerifyFull { ca_bundle }),
            None => Err(PgError::configuration(
                "choosing TLS for a database connection".into(),
                "no CA bundle is configured: set SWITCHYARD_CA_BUNDLE to the RDS CA bundle (the local cell's CA locally); every database connection is verify-full".into(),
            )),
        }
    }
}

/// Builds the connector for verify-full: aws-lc-rs named explicitly (no process-wide
/// default provider is consulted or installed), roots from the bundle only, and the
/// default WebPKI verifier, which checks the chain and the host name.
pub(crate) async fn verify_full(ca_bundle: &Path) -> Result<MakeRustlsConnect, PgError> {
    let roots = load_roots(ca_bundle).await?;
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| {
        PgError::configuration(
            "building the TLS client configuration".into(),
            e.to_string(),
        )
    })?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

async fn load_roots(ca_bundle: &Path) -> Result<RootCertStore, PgError> {
    let context = || format!("loading the CA bundle {}", ca_bundle.display());
    let pem = tokio::fs::read(ca_bundle).await.map_err(|e| {
        PgError::configuration(
            context(),
            format!("cannot read it ({e}); check the cell's CA bundle path"),
        )
    })?;
    let certificates = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PgError::configuration(context(), format!("it is not valid PEM ({e})")))?;
    let mut roots = RootCertStore::empty();
    let (added, ignored) = roots.add_parsable_certificates(certificates);
    if added == 0 {
        return Err(PgError::configuration(
            context(),
            format!(
                "it holds no usable CA certificate ({ignored} unparsable); \
                 point it at a PEM file of CA certificates"
            ),
        ));
    }
    if ignored > 0 {
        // One odd certificate in a vendor bundle should not block the others.
        warn!(path = %ca_bundle.display(), added, ignored, "ignored unparsable certificates in the ca bundle");
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    #[test]
    fn databases_are_verify_full_or_nothing() {
        let bundle = PathBuf::from("/opt/rds/global-bundle.pem");
        assert_eq!(
            Tls::for_databases(Some(bundle.clone())).expect("with a bundle"),
            Tls::VerifyFull { ca_bundle: bundle }
        );
        let err = Tls::for_databases(None).expect_err("without a bundle");
        assert_eq!(err.error_name(), ErrorName::ConfigurationError);
        assert!(err.to_string().contains("SWITCHYARD_CA_BUNDLE"), "{err}");
    }

    use super::*;
    use switchyard_errors::{Catalogued, ErrorName};

    fn temp_file(name: &str, contents: &[u8]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "switchyard-postgres-tls-{}-{name}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        let path = dir.join("bundle.pem");
        std::fs::write(&path, contents).expect("write bundle");
        path
    }

    async fn expect_configuration_error(path: &Path, fragment: &str) {
        let error = verify_full(path)
            .await
            .err()
            .expect("bundle must be rejected");
        assert!(matches!(error.error_name(), ErrorName::ConfigurationError));
        let message = error.to_string();
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(message.contains(fragment), "{message}");
    }

    #[tokio::test]
    async fn missing_bundle_is_a_configuration_error_naming_the_path() {
        let path = std::env::temp_dir().join("switchyard-no-such-dir/ca.pem");
        expect_configuration_error(&path, "cannot read it").await;
    }

    #[tokio::test]
    async fn empty_bundle_is_a_configuration_error() {
        let path = temp_file("empty", b"");
        expect_configuration_error(&path, "no usable CA certificate").await;
    }

    #[tokio::test]
    async fn bundle_without_certificates_is_a_configuration_error() {
        let path = temp_file("garbage", b"this is not a certificate\n");
        expect_configuration_error(&path, "no usable CA certificate").await;
    }

    #[tokio::test]
    async fn broken_pem_is_a_configuration_error() {
        let path = temp_file(
            "broken",
            b"-----BEGIN CERTIFICATE-----\nnot base64 at all!\n-----END CERTIFICATE-----\n",
        );
        expect_configuration_error(&path, "not valid PEM").await;
    }

    #[tokio::test]
    async fn loads_a_ca_bundle() {
        let ca = rcgen::CertificateParams::new(Vec::<String>::new())
            .expect("params")
            .self_signed(&rcgen::KeyPair::generate().expect("key"))
            .expect("self-signed");
        let path = temp_file("good", ca.pem().as_bytes());
        verify_full(&path).await.expect("bundle loads");
    }
}
