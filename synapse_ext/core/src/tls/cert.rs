//! What a certificate says, read back from its PEM or DER form: for the
//! `synapse.certificates` view, renewal decisions and checking who a peer is.

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::TlsError;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertInfo {
    /// Lower-case hex.
    pub serial: String,
    pub common_name: String,
    /// From the `synapse://<cluster>/node/<id>` URI SAN, when there is one.
    pub cluster_id: Option<String>,
    pub node_id: Option<u64>,
    /// DNS names and IP addresses, in the certificate's order.
    pub sans: Vec<String>,
    pub not_before_unix: i64,
    pub not_after_unix: i64,
    /// SHA-256 of the DER form, lower-case hex.
    pub fingerprint: String,
}

impl CertInfo {
    pub fn from_pem(pem: &str) -> Result<CertInfo, TlsError> {
        let der = first_pem_block(pem, "CERTIFICATE")?;
        CertInfo::from_der(&der)
    }

    pub fn from_der(der: &[u8]) -> Result<CertInfo, TlsError> {
        let bad = |e: String| TlsError::Certificate(format!("unreadable certificate: {e}"));
        let (_, cert) = X509Certificate::from_der(der).map_err(|e| bad(e.to_string()))?;
        let common_name = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .unwrap_or_default()
            .to_string();
        let mut sans = vec![];
        let (mut cluster_id, mut node_id) = (None, None);
        if let Ok(Some(ext)) = cert.subject_alternative_name() {
            for name in &ext.value.general_names {
                match name {
                    GeneralName::DNSName(dns) => sans.push(dns.to_string()),
                    GeneralName::IPAddress(bytes) => {
                        let ip = match bytes.len() {
                            4 => <[u8; 4]>::try_from(*bytes).ok().map(std::net::IpAddr::from),
                            16 => <[u8; 16]>::try_from(*bytes)
                                .ok()
                                .map(std::net::IpAddr::from),
                            _ => None,
                        };
                        if let Some(ip) = ip {
                            sans.push(ip.to_string());
                        }
                    }
                    GeneralName::URI(uri) => {
                        if let Some((c, n)) = parse_node_uri(uri) {
                            cluster_id = Some(c);
                            node_id = Some(n);
                        }
                    }
                    _ => {}
                }
            }
        }
        Ok(CertInfo {
            serial: hex::encode(cert.raw_serial()),
            common_name,
            cluster_id,
            node_id,
            sans,
            not_before_unix: cert.validity().not_before.timestamp(),
            not_after_unix: cert.validity().not_after.timestamp(),
            fingerprint: hex::encode(ring::digest::digest(&ring::digest::SHA256, der)),
        })
    }

    pub fn not_after(&self) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(self.not_after_unix.max(0) as u64)
    }

    pub fn not_before(&self) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(self.not_before_unix.max(0) as u64)
    }

    /// Time left before expiry at `now` (zero once expired).
    pub fn remaining(&self, now: SystemTime) -> Duration {
        self.not_after().duration_since(now).unwrap_or_default()
    }
}

fn parse_node_uri(uri: &str) -> Option<(String, u64)> {
    let rest = uri.strip_prefix("synapse://")?;
    let (cluster, id) = rest.split_once("/node/")?;
    Some((cluster.to_string(), id.parse().ok()?))
}

/// The DER bytes of the first PEM block labelled `label`.
pub fn first_pem_block(pem: &str, label: &str) -> Result<Vec<u8>, TlsError> {
    pem_blocks(pem, label)?
        .into_iter()
        .next()
        .ok_or_else(|| TlsError::Certificate(format!("no {label} in the PEM text")))
}

/// The DER bytes of every PEM block labelled `label`.
pub fn pem_blocks(pem: &str, label: &str) -> Result<Vec<Vec<u8>>, TlsError> {
    use rustls::pki_types::pem::{PemObject, SectionKind};
    let mut out = vec![];
    for section in <(SectionKind, Vec<u8>)>::pem_slice_iter(pem.as_bytes()) {
        let (kind, der) =
            section.map_err(|e| TlsError::Certificate(format!("bad PEM text: {e:?}")))?;
        let kind_label = match kind {
            SectionKind::Certificate => "CERTIFICATE",
            SectionKind::Crl => "X509 CRL",
            SectionKind::Csr => "CERTIFICATE REQUEST",
            SectionKind::PrivateKey => "PRIVATE KEY",
            _ => "",
        };
        if kind_label == label {
            out.push(der);
        }
    }
    Ok(out)
}
