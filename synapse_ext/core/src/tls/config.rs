//! rustls configurations for a node, from its TLS files, and a handle that swaps them when
//! the certificate is renewed or the revocation list changes: connections made afterwards
//! use the new ones, connections already open keep theirs.

use std::sync::{Arc, RwLock};

use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use zeroize::Zeroizing;

use super::cert::{pem_blocks, CertInfo};
use super::TlsError;

/// The `ring` provider, as DESIGN.md asks (not aws-lc).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A node's TLS material: the cluster CA, its own certificate and key, and the CRLs.
#[derive(Clone)]
pub struct NodeTls {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: Zeroizing<String>,
    pub crl_pems: Vec<String>,
}

impl std::fmt::Debug for NodeTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeTls").finish_non_exhaustive()
    }
}

fn tls_error(what: &str) -> impl Fn(rustls::Error) -> TlsError + '_ {
    move |e| TlsError::Config(format!("{what}: {e}"))
}

impl NodeTls {
    fn roots(&self) -> Result<Arc<RootCertStore>, TlsError> {
        let mut roots = RootCertStore::empty();
        for der in pem_blocks(&self.ca_pem, "CERTIFICATE")? {
            roots
                .add(CertificateDer::from(der))
                .map_err(tls_error("the cluster CA certificate"))?;
        }
        if roots.is_empty() {
            return Err(TlsError::Config("no cluster CA certificate".into()));
        }
        Ok(Arc::new(roots))
    }

    fn crls(&self) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
        let mut out = vec![];
        for pem in &self.crl_pems {
            out.extend(
                pem_blocks(pem, "X509 CRL")?
                    .into_iter()
                    .map(CertificateRevocationListDer::from),
            );
        }
        Ok(out)
    }

    fn chain_and_key(
        &self,
    ) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
        use rustls::pki_types::pem::PemObject;
        let chain: Vec<CertificateDer<'static>> = pem_blocks(&self.cert_pem, "CERTIFICATE")?
            .into_iter()
            .map(CertificateDer::from)
            .collect();
        if chain.is_empty() {
            return Err(TlsError::Config("no node certificate".into()));
        }
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes())
            .map_err(|e| TlsError::Config(format!("the node key: {e:?}")))?;
        Ok((chain, key))
    }

    /// A server that requires a client certificate from the cluster CA, not revoked.
    pub fn server_config(&self) -> Result<ServerConfig, TlsError> {
        let provider = provider();
        let verifier = WebPkiClientVerifier::builder_with_provider(self.roots()?, provider.clone())
            .with_crls(self.crls()?)
            .build()
            .map_err(|e| TlsError::Config(format!("the client verifier: {e}")))?;
        let (chain, key) = self.chain_and_key()?;
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(tls_error("protocol versions"))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .map_err(tls_error("the node certificate"))?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(config)
    }

    /// A client that presents the node certificate and accepts only servers certified by
    /// the cluster CA, not revoked, for the host name it dialled.
    pub fn client_config(&self) -> Result<ClientConfig, TlsError> {
        let provider = provider();
        let verifier = WebPkiServerVerifier::builder_with_provider(self.roots()?, provider.clone())
            .with_crls(self.crls()?)
            .build()
            .map_err(|e| TlsError::Config(format!("the server verifier: {e}")))?;
        let (chain, key) = self.chain_and_key()?;
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(tls_error("protocol versions"))?
            .with_webpki_verifier(verifier)
            .with_client_auth_cert(chain, key)
            .map_err(tls_error("the node certificate"))?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(config)
    }
}

struct Current {
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
    cluster_id: String,
    cert: CertInfo,
}

/// The configurations in force; cheap to clone, shared by the server and every client.
#[derive(Clone)]
pub struct Tls(Arc<RwLock<Current>>);

impl Tls {
    pub fn new(material: &NodeTls, cluster_id: &str) -> Result<Tls, TlsError> {
        Ok(Tls(Arc::new(RwLock::new(Tls::build(
            material, cluster_id,
        )?))))
    }

    fn build(material: &NodeTls, cluster_id: &str) -> Result<Current, TlsError> {
        Ok(Current {
            server: Arc::new(material.server_config()?),
            client: Arc::new(material.client_config()?),
            cluster_id: cluster_id.to_string(),
            cert: CertInfo::from_pem(&material.cert_pem)?,
        })
    }

    /// Installs new material for connections made from now on.
    pub fn update(&self, material: &NodeTls) -> Result<(), TlsError> {
        let cluster_id = self.cluster_id();
        let next = Tls::build(material, &cluster_id)?;
        *self.0.write().expect("tls lock") = next;
        Ok(())
    }

    pub fn server(&self) -> Arc<ServerConfig> {
        self.0.read().expect("tls lock").server.clone()
    }

    pub fn client(&self) -> Arc<ClientConfig> {
        self.0.read().expect("tls lock").client.clone()
    }

    pub fn cluster_id(&self) -> String {
        self.0.read().expect("tls lock").cluster_id.clone()
    }

    /// This node's certificate in force.
    pub fn cert(&self) -> CertInfo {
        self.0.read().expect("tls lock").cert.clone()
    }
}
