//! TLS for Postgres connections: verify-full against one CA bundle, or nothing at all.

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
    /// Plain TCP. Only for a local cell: [`Tls::choose`] is where that rule lives.
    Disabled,
}

impl Tls {
    /// The one place the TLS rule is decided: with a CA bundle, verify-full; without
    /// one, plain TCP only when the cell is local (`allows_plain_tcp`, from the cell
    /// document's `environment`); otherwise a `ConfigurationError`, never a silent
    /// downgrade.
    pub fn choose(allows_plain_tcp: bool, ca_bundle: Option<PathBuf>) -> Result<Self, PgError> {
        match (ca_bundle, allows_plain_tcp) {
            (Some(ca_bundle), _) => Ok(Self::VerifyFull { ca_bundle }),
            (None, true) => Ok(Self::Disabled),
            (None, false) => Err(PgError::configuration(
                "choosing TLS for an AWS cell".into(),
                "no CA bundle is configured: set the RDS CA bundle path; plain TCP is only for local cells".into(),
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
    fn plain_tcp_only_for_local_cells() {
        use switchyard_errors::{Catalogued, ErrorName};
        let bundle = PathBuf::from("/opt/rds/global-bundle.pem");
        assert_eq!(
            Tls::choose(false, Some(bundle.clone())).expect("aws with bundle"),
            Tls::VerifyFull {
                ca_bundle: bundle.clone()
            }
        );
        assert_eq!(
            Tls::choose(true, Some(bundle.clone())).expect("local with bundle"),
            Tls::VerifyFull { ca_bundle: bundle }
        );
        assert_eq!(Tls::choose(true, None).expect("local"), Tls::Disabled);
        let err = Tls::choose(false, None).expect_err("aws without bundle");
        assert_eq!(err.error_name(), ErrorName::ConfigurationError);
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
