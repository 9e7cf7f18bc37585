//! The local cell's own certificate authority, made fresh for every cell: what the RDS CA
//! is to an AWS cell. Every server of the cell serves a certificate it issued, and every
//! connection the functions make verifies against its bundle (`ca.pem` in the run
//! directory), through the same code path as the RDS bundle.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};

use crate::CellError;

/// A certificate and its private key, PEM; what a server needs to serve TLS.
#[derive(Debug, Clone)]
pub struct ServerTls {
    pub cert_pem: String,
    pub key_pem: String,
    /// The bundle clients verify this certificate with.
    pub ca_bundle: PathBuf,
}

/// The CA: its key stays in memory and is gone with the cell.
pub struct CellCa {
    issuer: Issuer<'static, KeyPair>,
    bundle: PathBuf,
}

impl std::fmt::Debug for CellCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CellCa")
            .field("bundle", &self.bundle)
            .finish_non_exhaustive()
    }
}

impl CellCa {
    /// A new CA named after the cell, its certificate written to `bundle` (world-readable:
    /// the database servers read it too, as a subscription's `sslrootcert`).
    pub fn generate(name: &str, bundle: &Path) -> Result<Self, CellError> {
        let err = |what: &str, e: rcgen::Error| CellError::Setup(format!("cell CA {what}: {e}"));
        let mut params =
            CertificateParams::new(Vec::<String>::new()).map_err(|e| err("params", e))?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(
            DnType::CommonName,
            format!("switchyard local cell CA {name}"),
        );
        let key = KeyPair::generate().map_err(|e| err("key", e))?;
        let cert = params
            .self_signed(&key)
            .map_err(|e| err("certificate", e))?;
        fs::write(bundle, cert.pem())
            .map_err(|e| CellError::Setup(format!("{}: {e}", bundle.display())))?;
        fs::set_permissions(bundle, fs::Permissions::from_mode(0o644))
            .map_err(|e| CellError::Setup(format!("{}: {e}", bundle.display())))?;
        Ok(Self {
            issuer: Issuer::new(params, key),
            bundle: bundle.to_owned(),
        })
    }

    /// The PEM bundle clients verify with.
    pub fn bundle(&self) -> &Path {
        &self.bundle
    }

    /// A server certificate for every name and address in `names` (an entry that parses
    /// as an IP address becomes an IP SAN, anything else a DNS name). An address is named
    /// a second time as a DNS name: PostgreSQL 14's libpq matches a host only against
    /// DNS names, and on AWS every host a server dials (an endpoint) is one — the old
    /// blue's subscription to green dials green's endpoint with verify-full.
    pub fn issue(&self, names: &[&str]) -> Result<ServerTls, CellError> {
        let err = |what: &str, e: rcgen::Error| {
            CellError::Setup(format!("certificate for {names:?}: {what}: {e}"))
        };
        let mut params =
            CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
                .map_err(|e| err("params", e))?;
        for name in names {
            if name.parse::<std::net::IpAddr>().is_ok() {
                let dns = (*name).try_into().map_err(|e| err("DNS name", e))?;
                params.subject_alt_names.push(SanType::DnsName(dns));
            }
        }
        if let Some(first) = names.first() {
            params.distinguished_name.push(DnType::CommonName, *first);
        }
        let key = KeyPair::generate().map_err(|e| err("key", e))?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| err("signing", e))?;
        Ok(ServerTls {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            ca_bundle: self.bundle.clone(),
        })
    }
}
