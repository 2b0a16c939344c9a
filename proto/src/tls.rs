//! A member's TLS credentials (cluster CA, its certificate and key) and the rustls
//! configurations built from them: servers require a client certificate from the cluster CA,
//! clients verify the server against the cluster CA. TLS 1.3 only, ring only (rustls's
//! default aws-lc-rs provider mixed with quinn's ring provider panics at run time).
//!
//! This module must not decide what a role may do; it only establishes who the peer is.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::identity::{Identity, IdentityError};

/// File name of the cluster CA certificate inside a credentials directory.
pub const CA_CERT_FILE: &str = "ca.pem";
/// File name of the cluster CA key inside the directory `umbra certs init` writes. Keep it
/// offline in production; nodes never read it.
pub const CA_KEY_FILE: &str = "ca.key";

/// ALPN protocol id. Carries the major protocol version so a peer from an incompatible
/// release is refused during the handshake rather than on its first frame.
pub const ALPN_PROTOCOL: &[u8] = b"umbra/1";

/// Why credentials could not be loaded or turned into a TLS configuration.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// A file does not exist.
    #[error(
        "{path} does not exist; copy the cluster's CA certificate (ca.pem) there, or for a new \
         cluster create the CA and every member's certificate with `umbra certs init --out DIR`"
    )]
    Missing {
        /// The missing file.
        path: PathBuf,
    },
    /// A member's own certificate or key does not exist.
    #[error(
        "{path} does not exist; issue {identity}'s certificate from the cluster CA with \
         `{}`",
        add_command(dir, identity)
    )]
    MissingMember {
        /// The missing file.
        path: PathBuf,
        /// The credentials directory.
        dir: PathBuf,
        /// The member whose file it is.
        identity: Identity,
    },
    /// A member's certificate names another member.
    #[error(
        "{path} is the certificate of {found}, not of {identity}; issue {identity}'s own with \
         `{}`",
        add_command(dir, identity)
    )]
    WrongIdentity {
        /// The certificate file.
        path: PathBuf,
        /// The credentials directory.
        dir: PathBuf,
        /// The member loading it.
        identity: Identity,
        /// The identity the certificate carries.
        found: Identity,
    },
    /// A file exists but could not be read.
    #[error("cannot read {path}: {source}")]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A file does not hold what it should (PEM certificate or PKCS#8/SEC1 key).
    #[error(
        "{what} in {path} cannot be parsed ({reason}); replace it with the cluster's own file, \
         or re-issue a member's with `umbra certs add --dir DIR --role ROLE --id ID`"
    )]
    Garbled {
        /// The file (or a description of the in-memory source).
        path: PathBuf,
        /// "certificate" or "private key".
        what: &'static str,
        /// What the parser said.
        reason: String,
    },
    /// The certificate does not carry a usable Umbra identity.
    #[error("certificate {path}: {source}")]
    Identity {
        /// The certificate file.
        path: PathBuf,
        /// What is wrong with its identity.
        #[source]
        source: IdentityError,
    },
    /// The private key does not belong to the certificate, or rustls refused the material.
    #[error("TLS configuration refused: {0}")]
    Tls(#[from] rustls::Error),
}

/// A member's credentials: the cluster CA it trusts, its own certificate and private key,
/// and the identity read from that certificate.
#[derive(Debug)]
pub struct Credentials {
    ca: CertificateDer<'static>,
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
    identity: Identity,
}

impl Clone for Credentials {
    fn clone(&self) -> Self {
        Self {
            ca: self.ca.clone(),
            cert: self.cert.clone(),
            key: self.key.clone_key(),
            identity: self.identity.clone(),
        }
    }
}

/// The crypto provider every Umbra TLS configuration uses: ring.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl Credentials {
    /// Loads `ca.pem`, `<role>-<id>.pem` and `<role>-<id>.key` from `dir` (the layout
    /// `umbra certs init` writes), and checks that the certificate carries `identity`.
    pub fn load(dir: &Path, identity: &Identity) -> Result<Credentials, CredentialError> {
        let stem = identity.file_stem();
        let cert_path = dir.join(format!("{stem}.pem"));
        let ca_path = dir.join(CA_CERT_FILE);
        let credentials =
            Credentials::load_files(&ca_path, &cert_path, &dir.join(format!("{stem}.key")))
                .map_err(|err| match err {
                    CredentialError::Missing { path } if path != ca_path => {
                        CredentialError::MissingMember {
                            path,
                            dir: dir.to_owned(),
                            identity: identity.clone(),
                        }
                    }
                    other => other,
                })?;
        if &credentials.identity != identity {
            return Err(CredentialError::WrongIdentity {
                path: cert_path,
                dir: dir.to_owned(),
                identity: identity.clone(),
                found: credentials.identity,
            });
        }
        Ok(credentials)
    }

    /// Loads credentials from three explicit PEM files.
    pub fn load_files(
        ca_path: &Path,
        cert_path: &Path,
        key_path: &Path,
    ) -> Result<Credentials, CredentialError> {
        let ca = read(ca_path)?;
        let cert = read(cert_path)?;
        let key = read(key_path)?;
        Credentials::from_pem_labelled((&ca, ca_path), (&cert, cert_path), (&key, key_path))
    }

    /// Builds credentials from PEM text held in memory.
    pub fn from_pem(
        ca_pem: &str,
        cert_pem: &str,
        key_pem: &str,
    ) -> Result<Credentials, CredentialError> {
        Credentials::from_pem_labelled(
            (ca_pem.as_bytes(), Path::new("<ca pem>")),
            (cert_pem.as_bytes(), Path::new("<certificate pem>")),
            (key_pem.as_bytes(), Path::new("<key pem>")),
        )
    }

    fn from_pem_labelled(
        (ca_pem, ca_path): (&[u8], &Path),
        (cert_pem, cert_path): (&[u8], &Path),
        (key_pem, key_path): (&[u8], &Path),
    ) -> Result<Credentials, CredentialError> {
        let ca = parse_cert(ca_pem, ca_path)?;
        let cert = parse_cert(cert_pem, cert_path)?;
        let key =
            PrivateKeyDer::from_pem_slice(key_pem).map_err(|err| CredentialError::Garbled {
                path: key_path.to_owned(),
                what: "private key",
                reason: err.to_string(),
            })?;
        let identity =
            Identity::from_certificate(&cert).map_err(|source| CredentialError::Identity {
                path: cert_path.to_owned(),
                source,
            })?;
        // Catch a key from another member now, with the file names in hand, rather than as
        // an opaque handshake failure later.
        let signing_key = crypto_provider()
            .key_provider
            .load_private_key(key.clone_key())
            .map_err(|err| CredentialError::Garbled {
                path: key_path.to_owned(),
                what: "private key",
                reason: err.to_string(),
            })?;
        CertifiedKey::new(vec![cert.clone()], signing_key)
            .keys_match()
            .map_err(|err| CredentialError::Garbled {
                path: key_path.to_owned(),
                what: "private key",
                reason: format!("it does not belong to {} ({err})", cert_path.display()),
            })?;
        Ok(Credentials {
            ca,
            cert,
            key,
            identity,
        })
    }

    /// Whose credentials these are.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// This member's certificate.
    pub fn certificate(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// The key QUIC stateless-reset tokens are derived from: a hash of this member's private
    /// key, so it is secret and the same in every incarnation of the member. A member that
    /// restarts (after SIGKILL, say) can then reset its peers' stale connections the moment
    /// their next packet arrives, instead of leaving them to the idle timeout (RFC 9000
    /// § 10.3). Two processes holding the same key and address are the only way to collide,
    /// and that is the same member.
    pub(crate) fn stateless_reset_key(&self) -> ring::hmac::Key {
        let secret = self.derive_secret(b"umbra quic stateless reset key v1\0");
        ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret)
    }

    /// The key of the connection-id generator, stable across restarts for the same reason
    /// as [`Credentials::stateless_reset_key`]: a restarted endpoint only answers packets
    /// whose connection id its generator recognises as one of its own.
    pub(crate) fn connection_id_key(&self) -> u64 {
        let secret = self.derive_secret(b"umbra quic connection id key v1\0");
        let mut key = [0u8; 8];
        key.copy_from_slice(&secret[..8]);
        u64::from_le_bytes(key)
    }

    fn derive_secret(&self, label: &[u8]) -> [u8; 32] {
        let mut context = ring::digest::Context::new(&ring::digest::SHA256);
        context.update(label);
        context.update(self.key.secret_der());
        let mut secret = [0u8; 32];
        secret.copy_from_slice(context.finish().as_ref());
        secret
    }

    fn roots(&self) -> Result<Arc<RootCertStore>, CredentialError> {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca.clone())?;
        Ok(Arc::new(roots))
    }

    /// A rustls server configuration that presents this certificate and requires a client
    /// certificate issued by the cluster CA.
    pub fn server_config(&self) -> Result<rustls::ServerConfig, CredentialError> {
        let provider = crypto_provider();
        let verifier = WebPkiClientVerifier::builder_with_provider(self.roots()?, provider.clone())
            .build()
            .map_err(|err| rustls::Error::General(err.to_string()))?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(vec![self.cert.clone()], self.key.clone_key())?;
        config.alpn_protocols = vec![ALPN_PROTOCOL.to_vec()];
        Ok(config)
    }

    /// A rustls client configuration that verifies servers against the cluster CA and
    /// presents this certificate.
    pub fn client_config(&self) -> Result<rustls::ClientConfig, CredentialError> {
        let mut config = rustls::ClientConfig::builder_with_provider(crypto_provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(self.roots()?)
            .with_client_auth_cert(vec![self.cert.clone()], self.key.clone_key())?;
        config.alpn_protocols = vec![ALPN_PROTOCOL.to_vec()];
        Ok(config)
    }
}

/// The command that issues `identity`'s certificate from the CA in `dir`.
fn add_command(dir: &Path, identity: &Identity) -> String {
    format!(
        "umbra certs add --dir {} --role {} --id {}",
        dir.display(),
        identity.role().as_str(),
        identity.id()
    )
}

fn read(path: &Path) -> Result<Vec<u8>, CredentialError> {
    std::fs::read(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            CredentialError::Missing {
                path: path.to_owned(),
            }
        } else {
            CredentialError::Unreadable {
                path: path.to_owned(),
                source,
            }
        }
    })
}

fn parse_cert(pem: &[u8], path: &Path) -> Result<CertificateDer<'static>, CredentialError> {
    CertificateDer::from_pem_slice(pem).map_err(|err| CredentialError::Garbled {
        path: path.to_owned(),
        what: "certificate",
        reason: err.to_string(),
    })
}
