//! A node's TLS files under `$PGDATA/synapse/tls/` (directory 0700, keys 0600):
//!
//! - `ca.pem`: the cluster CA certificate;
//! - `node.pem`, `node.key`: this node's certificate and key;
//! - `crl.pem`: the revocation list in force;
//! - `pending.key`: a key waiting for its certificate (joining or renewing);
//! - `ssl.conf`: PostgreSQL's SSL settings pointing at these files, which
//!   `postgresql.conf` includes (`include_if_exists = 'synapse/tls/ssl.conf'`), so that
//!   PostgreSQL serves SSL with the node certificate once the node has one.
//!
//! Every file is written whole to a temporary name and renamed, so a crash leaves either
//! the old file or the new one.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rcgen::KeyPair;
use zeroize::Zeroizing;

use super::config::NodeTls;

pub struct TlsFiles {
    dir: PathBuf,
}

fn other(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

impl TlsFiles {
    pub fn new(dir: PathBuf) -> TlsFiles {
        TlsFiles { dir }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn ensure_dir(&self) -> io::Result<()> {
        fs::create_dir_all(&self.dir)?;
        fs::set_permissions(&self.dir, fs::Permissions::from_mode(0o700))
    }

    fn write(&self, name: &str, contents: &[u8], mode: u32) -> io::Result<()> {
        self.ensure_dir()?;
        let tmp = self.path(&format!("{name}.tmp"));
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.write_all(contents)?;
        file.sync_all()?;
        fs::rename(&tmp, self.path(name))?;
        fs::File::open(&self.dir)?.sync_all()
    }

    fn read(&self, name: &str) -> io::Result<Option<String>> {
        match fs::read_to_string(self.path(name)) {
            Ok(text) => Ok(Some(text)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// A signing request for `name` over the pending key, made first if there is none.
    pub fn certificate_request(&self, name: &str) -> io::Result<String> {
        let key_pem = match self.read("pending.key")? {
            Some(pem) => Zeroizing::new(pem),
            None => {
                let key = KeyPair::generate().map_err(other)?;
                let pem = Zeroizing::new(key.serialize_pem());
                self.write("pending.key", pem.as_bytes(), 0o600)?;
                pem
            }
        };
        let key = KeyPair::from_pem(&key_pem).map_err(other)?;
        super::ca::signing_request(&key, name).map_err(other)
    }

    /// Installs the certificate issued for the pending key, with the CA and CRL; checks
    /// first that they form a usable configuration.
    pub fn install_issued(&self, ca_pem: &str, crl_pem: &str, cert_pem: &str) -> io::Result<()> {
        let key_pem = self
            .read("pending.key")?
            .map(Zeroizing::new)
            .ok_or_else(|| {
                io::Error::other("no key is waiting for a certificate (pending.key is missing)")
            })?;
        self.install(&NodeTls {
            ca_pem: ca_pem.into(),
            cert_pem: cert_pem.into(),
            key_pem,
            crl_pems: vec![crl_pem.into()],
        })?;
        let _ = fs::remove_file(self.path("pending.key"));
        Ok(())
    }

    /// Writes a whole configuration (key last, so `node.key` never pairs with an older
    /// certificate for long), after checking it.
    pub fn install(&self, tls: &NodeTls) -> io::Result<()> {
        tls.server_config().map_err(other)?;
        self.write("ca.pem", tls.ca_pem.as_bytes(), 0o644)?;
        self.write("crl.pem", tls.crl_pems.concat().as_bytes(), 0o644)?;
        self.write("node.pem", tls.cert_pem.as_bytes(), 0o644)?;
        self.write("node.key", tls.key_pem.as_bytes(), 0o600)?;
        self.write_pg_ssl_conf()
    }

    /// Writes `ssl.conf`: PostgreSQL serves SSL with the node certificate and checks client
    /// certificates against the cluster CA and CRL.
    pub fn write_pg_ssl_conf(&self) -> io::Result<()> {
        let path = |f: &str| self.path(f).to_string_lossy().replace('\'', "''");
        let conf = format!(
            "# Written by SynapseDB: PostgreSQL's SSL with this node's certificate.\n\
             ssl = on\n\
             ssl_cert_file = '{}'\n\
             ssl_key_file = '{}'\n\
             ssl_ca_file = '{}'\n\
             ssl_crl_file = '{}'\n",
            path("node.pem"),
            path("node.key"),
            path("ca.pem"),
            path("crl.pem"),
        );
        self.write("ssl.conf", conf.as_bytes(), 0o644)
    }

    pub fn write_crl(&self, crl_pem: &str) -> io::Result<()> {
        self.write("crl.pem", crl_pem.as_bytes(), 0o644)
    }

    /// The installed configuration, if this node has one.
    pub fn load(&self) -> io::Result<Option<NodeTls>> {
        let (Some(ca_pem), Some(cert_pem), Some(key_pem)) = (
            self.read("ca.pem")?,
            self.read("node.pem")?,
            self.read("node.key")?,
        ) else {
            return Ok(None);
        };
        Ok(Some(NodeTls {
            ca_pem,
            cert_pem,
            key_pem: Zeroizing::new(key_pem),
            crl_pems: self.read("crl.pem")?.into_iter().collect(),
        }))
    }

    /// Forgets everything (the node left its cluster).
    pub fn remove_all(&self) -> io::Result<()> {
        match fs::remove_dir_all(&self.dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}
