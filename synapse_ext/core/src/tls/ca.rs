//! The cluster's certificate authority: created at `init_cluster`, its key kept sealed
//! under the cluster secret; it signs node certificates from their signing requests and
//! signs the revocation lists.
//!
//! A node makes its own key and asks for a certificate with a signing request; the key
//! never leaves the node. The leader decides what the certificate says (the node's name,
//! the hosts it is reached on, its id in a URI SAN), not the request.

use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams,
    CertificateSigningRequestParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, RevokedCertParams, SanType, SerialNumber,
};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::secret::ClusterSecret;
use super::TlsError;

/// How long the CA itself is valid. Node certificates live `synapse.cert_lifetime`.
pub const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Certificates start this long before they are made, for clocks a little behind.
pub const BACKDATE: Duration = Duration::from_secs(300);

/// What the catalog keeps of the CA: its certificate and its key, sealed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaBundle {
    pub cert_pem: String,
    pub sealed_key: String,
}

/// The URI SAN naming node `id` of cluster `cluster_id` in its certificate.
pub fn node_uri(cluster_id: &str, id: u64) -> String {
    format!("synapse://{cluster_id}/node/{id}")
}

fn seal_context(cluster_id: &str) -> String {
    format!("synapse ca key {cluster_id}")
}

fn to_time(t: SystemTime) -> time::OffsetDateTime {
    time::OffsetDateTime::from(t)
}

fn rcgen_error(what: &str) -> impl Fn(rcgen::Error) -> TlsError + '_ {
    move |e| TlsError::Certificate(format!("{what}: {e}"))
}

/// A random positive serial of 16 bytes (RFC 5280 allows up to 20).
fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    SystemRandom::new()
        .fill(&mut bytes)
        .expect("the system random source works");
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    SerialNumber::from_slice(&bytes)
}

fn ca_params(cluster_id: &str, now: SystemTime) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "SynapseDB");
    dn.push(
        DnType::CommonName,
        format!("SynapseDB cluster CA {cluster_id}"),
    );
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = to_time(now - BACKDATE);
    params.not_after = to_time(now + CA_LIFETIME);
    params.serial_number = Some(random_serial());
    params.key_identifier_method = KeyIdMethod::Sha256;
    params
}

/// Creates the CA of a new cluster; its key comes back sealed under `secret`.
pub fn create_ca(
    cluster_id: &str,
    secret: &ClusterSecret,
    now: SystemTime,
) -> Result<CaBundle, TlsError> {
    let key = KeyPair::generate().map_err(rcgen_error("making the CA key"))?;
    let cert = ca_params(cluster_id, now)
        .self_signed(&key)
        .map_err(rcgen_error("signing the CA certificate"))?;
    let key_pem = Zeroizing::new(key.serialize_pem());
    Ok(CaBundle {
        cert_pem: cert.pem(),
        sealed_key: secret.seal(&seal_context(cluster_id), key_pem.as_bytes()),
    })
}

/// What a node certificate names.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeCertSpec {
    pub cluster_id: String,
    pub node_id: u64,
    pub name: String,
    /// Host names and IP addresses the node is reached on.
    pub hosts: Vec<String>,
}

impl NodeCertSpec {
    /// The certificate's SANs: every host (as an IP address or a DNS name), the node's
    /// name when it is a valid DNS name, and the node's URI.
    fn sans(&self) -> Result<Vec<SanType>, TlsError> {
        let mut sans = vec![];
        for host in self.hosts.iter().chain(std::iter::once(&self.name)) {
            let san = match host.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => match host.clone().try_into() {
                    Ok(dns) => SanType::DnsName(dns),
                    Err(_) if host == &self.name => continue,
                    Err(_) => {
                        return Err(TlsError::Certificate(format!(
                            "\"{host}\" is neither an IP address nor a DNS name"
                        )))
                    }
                },
            };
            if !sans.contains(&san) {
                sans.push(san);
            }
        }
        let uri = node_uri(&self.cluster_id, self.node_id)
            .try_into()
            .map_err(rcgen_error("the node URI"))?;
        sans.push(SanType::URI(uri));
        Ok(sans)
    }
}

/// A node's freshly made key and its signing request.
pub struct NodeKey {
    pub key_pem: Zeroizing<String>,
    pub csr_pem: String,
}

/// Makes a key for node `name` and a request to certify it.
pub fn new_node_key(name: &str) -> Result<NodeKey, TlsError> {
    let key = KeyPair::generate().map_err(rcgen_error("making a node key"))?;
    Ok(NodeKey {
        key_pem: Zeroizing::new(key.serialize_pem()),
        csr_pem: signing_request(&key, name)?,
    })
}

/// A request to certify `key` for node `name` (PEM). The CA decides what the certificate
/// says; the request only proves the key.
pub fn signing_request(key: &KeyPair, name: &str) -> Result<String, TlsError> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    params
        .serialize_request(key)
        .and_then(|csr| csr.pem())
        .map_err(rcgen_error("making a signing request"))
}

/// A revoked certificate, as the CRL lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revoked {
    /// The serial in lower-case hex, as `synapse.certificates` shows it.
    pub serial: String,
    pub at_unix_ms: u64,
}

/// The CA key in clear (PEM). Only signing and the tests that look for leaks use it.
pub fn open_ca_key(
    bundle: &CaBundle,
    cluster_id: &str,
    secret: &ClusterSecret,
) -> Result<Zeroizing<String>, TlsError> {
    let key_pem = secret.open(&seal_context(cluster_id), &bundle.sealed_key)?;
    String::from_utf8(key_pem.to_vec())
        .map(Zeroizing::new)
        .map_err(|_| TlsError::Certificate("the CA key is not PEM".into()))
}

/// The CA with its key opened: only on the leader, only while it signs.
pub struct Signer {
    issuer: Issuer<'static, KeyPair>,
}

impl Signer {
    pub fn open(
        bundle: &CaBundle,
        cluster_id: &str,
        secret: &ClusterSecret,
    ) -> Result<Signer, TlsError> {
        let key_pem = open_ca_key(bundle, cluster_id, secret)?;
        let key = KeyPair::from_pem(&key_pem).map_err(rcgen_error("reading the CA key"))?;
        let issuer = Issuer::from_ca_cert_pem(&bundle.cert_pem, key)
            .map_err(rcgen_error("reading the CA certificate"))?;
        Ok(Signer { issuer })
    }

    /// Certifies the key of `csr_pem` as the node `spec` describes, for `lifetime`.
    pub fn issue(
        &self,
        csr_pem: &str,
        spec: &NodeCertSpec,
        now: SystemTime,
        lifetime: Duration,
    ) -> Result<String, TlsError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(rcgen_error("reading the node's signing request"))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "SynapseDB");
        dn.push(DnType::OrganizationalUnitName, spec.cluster_id.as_str());
        dn.push(DnType::CommonName, spec.name.as_str());
        params.distinguished_name = dn;
        params.subject_alt_names = spec.sans()?;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.not_before = to_time(now - BACKDATE.min(lifetime / 4));
        params.not_after = to_time(now + lifetime);
        params.serial_number = Some(random_serial());
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&csr.public_key, &self.issuer)
            .map_err(rcgen_error("signing the node certificate"))?;
        Ok(cert.pem())
    }

    /// A CRL numbered `number` listing `revoked`, valid until `next_update`.
    pub fn crl(
        &self,
        number: u64,
        revoked: &[Revoked],
        now: SystemTime,
        next_update: SystemTime,
    ) -> Result<String, TlsError> {
        let revoked_certs = revoked
            .iter()
            .map(|r| {
                let serial = hex::decode(&r.serial).map_err(|_| {
                    TlsError::Certificate(format!("\"{}\" is not a hex serial", r.serial))
                })?;
                Ok(RevokedCertParams {
                    serial_number: SerialNumber::from_slice(&serial),
                    revocation_time: to_time(
                        SystemTime::UNIX_EPOCH + Duration::from_millis(r.at_unix_ms),
                    ),
                    reason_code: None,
                    invalidity_date: None,
                })
            })
            .collect::<Result<Vec<_>, TlsError>>()?;
        let params = CertificateRevocationListParams {
            this_update: to_time(now - BACKDATE),
            next_update: to_time(next_update),
            crl_number: SerialNumber::from(number),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: KeyIdMethod::Sha256,
        };
        params
            .signed_by(&self.issuer)
            .map_err(rcgen_error("signing the revocation list"))?
            .pem()
            .map_err(rcgen_error("encoding the revocation list"))
    }
}
