//! The gateway's certificates: one per host (or a wildcard for a domain), kept on disk (0600
//! files in a 0700 directory) and chosen by the client's SNI.

use std::{
    collections::HashMap,
    fmt, fs,
    io::Write,
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{anyhow, bail, Context, Result};
use rustls::{
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};
use rustls_pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};

use crate::routes::is_valid_host;

/// A host's certificate as served.
pub struct StoredCert {
    pub key: Arc<CertifiedKey>,
    /// When the leaf certificate expires.
    pub not_after: SystemTime,
}

/// The certificates, by host name (`*.domain` for a wildcard).
pub struct CertStore {
    dir: PathBuf,
    certs: RwLock<HashMap<String, Arc<StoredCert>>>,
}

impl fmt::Debug for CertStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertStore")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

fn is_valid_cert_name(name: &str) -> bool {
    is_valid_host(name.strip_prefix("*.").unwrap_or(name))
}

/// A directory name for a certificate name (`*` cannot start a file name safely).
fn dir_name(name: &str) -> String {
    name.replacen('*', "_wildcard", 1)
}

impl CertStore {
    /// Opens (creating) the store at `dir` and loads every certificate in it; one that does
    /// not parse is skipped with a warning (and replaced by the next issuance).
    pub fn open(dir: &Path) -> Result<Self> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating {}", dir.display()))?;
        let store = Self {
            dir: dir.to_path_buf(),
            certs: RwLock::default(),
        };
        for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
            let entry = entry?;
            let Some(name) = entry
                .file_name()
                .to_str()
                .map(|n| n.replacen("_wildcard", "*", 1))
            else {
                continue;
            };
            if !is_valid_cert_name(&name) {
                continue;
            }
            let path = entry.path();
            let loaded = fs::read(path.join("cert.pem"))
                .and_then(|chain| Ok((chain, fs::read(path.join("key.pem"))?)))
                .map_err(anyhow::Error::from)
                .and_then(|(chain, key)| parse(&chain, &key));
            match loaded {
                Ok(cert) => {
                    store
                        .certs
                        .write()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(name, cert);
                }
                Err(e) => tracing::warn!(%name, "skipping a stored certificate: {e:#}"),
            }
        }
        Ok(store)
    }

    /// Checks and stores a certificate chain (PEM, leaf first) and its private key (PEM) for
    /// `name`, then serves it.
    pub fn install(&self, name: &str, chain_pem: &[u8], key_pem: &[u8]) -> Result<()> {
        if !is_valid_cert_name(name) {
            bail!("`{name}` is not a valid certificate name");
        }
        let cert = parse(chain_pem, key_pem)?;
        let dir = self.dir.join(dir_name(name));
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)?;
        write_private(&dir.join("key.pem"), key_pem)?;
        write_private(&dir.join("cert.pem"), chain_pem)?;
        self.certs
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_string(), cert);
        Ok(())
    }

    /// When the certificate served for exactly `name` expires.
    pub fn not_after(&self, name: &str) -> Option<SystemTime> {
        self.certs
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .map(|c| c.not_after)
    }

    /// The certificate a client asking for `host` gets: of the host's own and the wildcard of
    /// its parent domain, the one that expires last (a host's own certificate left from before
    /// a wildcard is not renewed any more).
    pub fn lookup(&self, host: &str) -> Option<Arc<StoredCert>> {
        let certs = self.certs.read().unwrap_or_else(|e| e.into_inner());
        let own = certs.get(host).cloned();
        let wildcard = host
            .split_once('.')
            .and_then(|(_, parent)| certs.get(&format!("*.{parent}")).cloned());
        match (own, wildcard) {
            (Some(own), Some(wildcard)) if wildcard.not_after > own.not_after => Some(wildcard),
            (own, wildcard) => own.or(wildcard),
        }
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let host = hello.server_name()?.to_ascii_lowercase();
        self.lookup(&host).map(|c| c.key.clone())
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))
}

/// Parses a PEM chain and key into what rustls serves, checking that they belong together.
pub(crate) fn parse(chain_pem: &[u8], key_pem: &[u8]) -> Result<Arc<StoredCert>> {
    let chain = CertificateDer::pem_slice_iter(chain_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow!("certificate chain: {e:?}"))?;
    let leaf = chain
        .first()
        .ok_or_else(|| anyhow!("the certificate chain is empty"))?;
    let not_after = not_after(leaf)?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| anyhow!("private key: {e:?}"))?;
    let signing_key = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| anyhow!("private key: {e}"))?;
    let certified = CertifiedKey::new(chain, signing_key);
    certified
        .keys_match()
        .map_err(|e| anyhow!("the key does not match the certificate: {e}"))?;
    Ok(Arc::new(StoredCert {
        key: Arc::new(certified),
        not_after,
    }))
}

fn not_after(leaf: &CertificateDer<'_>) -> Result<SystemTime> {
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref())
        .map_err(|e| anyhow!("leaf certificate: {e}"))?;
    let secs = cert.validity().not_after.timestamp();
    Ok(UNIX_EPOCH + Duration::from_secs(secs.max(0) as u64))
}
