//! Issuing the cluster's certificates with rcgen: a CA, and for each member a certificate
//! whose SAN URI `umbra://<role>/<id>` carries its role and id, plus the DNS names clients
//! verify servers against. `umbra certs init` is a thin shell over [`init`].
//!
//! This module writes files into the directory it is given and nowhere else; it must not
//! overwrite an existing CA (that would silently split the cluster into two trust domains).

use std::io::Write;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

use crate::identity::{Identity, IdentityError, Role};
use crate::tls::{CA_CERT_FILE, CA_KEY_FILE};

/// Default number of orchestrators: the smallest Raft group that survives one loss.
pub const DEFAULT_ORCHESTRATORS: u64 = 3;
/// Default agent regions, matching the demo's three regions.
pub const DEFAULT_REGIONS: [&str; 3] = ["us-east", "eu-west", "ap-south"];
/// Default operator name.
pub const DEFAULT_OPERATORS: [&str; 1] = ["admin"];
/// The CA is valid for ten years: replacing it means re-issuing every member at once.
pub const CA_VALIDITY: time::Duration = time::Duration::days(3650);
/// Member certificates are valid for two years; re-issue with `umbra certs add` before then.
pub const MEMBER_VALIDITY: time::Duration = time::Duration::days(730);
/// Certificates start being valid an hour before they were issued, so a node whose clock
/// runs a little behind the issuer's still accepts them (clock skew between machines).
pub const CLOCK_SKEW_ALLOWANCE: time::Duration = time::Duration::hours(1);

/// Why certificates could not be issued.
#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    /// The layout is unusable.
    #[error("invalid cluster layout: {0}")]
    Layout(String),
    /// A member name is not a valid id.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// The output directory already holds a CA; issuing a second one would split the cluster.
    #[error(
        "{path} already exists; refusing to replace the cluster CA. Use another --out directory, or `umbra certs add` to issue more members from this CA"
    )]
    CaExists {
        /// The existing CA certificate.
        path: PathBuf,
    },
    /// The CA to issue from is missing or unreadable.
    #[error(
        "cannot use the cluster CA in {dir}: {reason}; run `umbra certs init --out {dir}` first"
    )]
    NoCa {
        /// The directory that should hold `ca.pem` and `ca.key`.
        dir: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A file could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// rcgen refused to build a certificate.
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
}

/// Who is in the cluster: the certificates [`init`] issues.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// Orchestrators get node ids 1..=orchestrators.
    pub orchestrators: u64,
    /// One agent certificate per region id.
    pub regions: Vec<String>,
    /// One operator certificate per name.
    pub operators: Vec<String>,
}

impl Default for Layout {
    fn default() -> Self {
        Layout {
            orchestrators: DEFAULT_ORCHESTRATORS,
            regions: DEFAULT_REGIONS.iter().map(|r| r.to_string()).collect(),
            operators: DEFAULT_OPERATORS.iter().map(|o| o.to_string()).collect(),
        }
    }
}

impl Layout {
    /// Checks the layout and returns every identity in it, orchestrators first.
    pub fn identities(&self) -> Result<Vec<Identity>, CertsError> {
        if self.orchestrators == 0 {
            return Err(CertsError::Layout(
                "at least one orchestrator is needed (--orchestrators 3 is the usual choice)"
                    .into(),
            ));
        }
        let mut identities: Vec<Identity> = (1..=self.orchestrators)
            .map(Identity::orchestrator)
            .collect();
        for region in &self.regions {
            identities.push(Identity::new(Role::Agent, region.clone())?);
        }
        for operator in &self.operators {
            identities.push(Identity::new(Role::Operator, operator.clone())?);
        }
        let mut seen = std::collections::BTreeSet::new();
        for identity in &identities {
            if !seen.insert(identity) {
                return Err(CertsError::Layout(format!("{identity} is listed twice")));
            }
        }
        Ok(identities)
    }
}

/// What [`init`] or [`add`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issued {
    /// The CA certificate.
    pub ca_cert: PathBuf,
    /// The operator API's bearer token (mode 0600), written by [`init`] only: the file the
    /// nodes' `[api] token_file` and the CLI's `--token-file` name.
    pub api_token: Option<PathBuf>,
    /// Each member and its (certificate, key) files.
    pub members: Vec<(Identity, PathBuf, PathBuf)>,
}

/// Creates `out_dir` if needed and writes a new cluster CA (`ca.pem`, `ca.key`), for every
/// member of `layout` `<role>-<id>.pem` and `<role>-<id>.key`, and the operator API's bearer
/// token ([`API_TOKEN_FILE`]: 32 random bytes as hex). Keys and the token are written with
/// mode 0600. Refuses to run if `out_dir` already has a CA.
pub fn init(layout: &Layout, out_dir: &Path) -> Result<Issued, CertsError> {
    let identities = layout.identities()?;
    let ca_cert_path = out_dir.join(CA_CERT_FILE);
    if ca_cert_path.exists() {
        return Err(CertsError::CaExists { path: ca_cert_path });
    }
    std::fs::create_dir_all(out_dir).map_err(|source| CertsError::Write {
        path: out_dir.to_owned(),
        source,
    })?;

    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::default();
    set_validity(&mut ca_params, CA_VALIDITY);
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, "Umbra cluster CA");
    name.push(DnType::OrganizationName, "Umbra");
    ca_params.distinguished_name = name;
    let ca_cert = ca_params.self_signed(&ca_key)?;

    // The key first, so a crash between the two writes never leaves a CA certificate
    // without its key (which would make `init` refuse and `add` fail).
    write_file(&out_dir.join(CA_KEY_FILE), &ca_key.serialize_pem(), true)?;
    write_file(&ca_cert_path, &ca_cert.pem(), false)?;

    let issuer = Issuer::new(ca_params, ca_key);
    let mut members = Vec::with_capacity(identities.len());
    for identity in identities {
        members.push(issue_member(&issuer, &identity, out_dir)?);
    }
    let api_token = out_dir.join(API_TOKEN_FILE);
    let bytes: [u8; 32] = rand::random();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    write_file(&api_token, &format!("{hex}\n"), true)?;
    Ok(Issued {
        ca_cert: ca_cert_path,
        api_token: Some(api_token),
        members,
    })
}

/// The operator API token [`init`] writes beside the CA.
pub const API_TOKEN_FILE: &str = "api-token";

/// Issues certificates for more members from the CA already in `dir` (for example a
/// fourth orchestrator joining the Raft group). Existing member files are overwritten.
pub fn add(dir: &Path, identities: &[Identity]) -> Result<Issued, CertsError> {
    let no_ca = |reason: String| CertsError::NoCa {
        dir: dir.to_owned(),
        reason,
    };
    let ca_cert_path = dir.join(CA_CERT_FILE);
    let ca_pem = std::fs::read_to_string(&ca_cert_path)
        .map_err(|err| no_ca(format!("{}: {err}", ca_cert_path.display())))?;
    let key_path = dir.join(CA_KEY_FILE);
    let key_pem = std::fs::read_to_string(&key_path)
        .map_err(|err| no_ca(format!("{}: {err}", key_path.display())))?;
    let ca_key = KeyPair::from_pem(&key_pem)
        .map_err(|err| no_ca(format!("{} is garbled: {err}", key_path.display())))?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key)
        .map_err(|err| no_ca(format!("{} is garbled: {err}", ca_cert_path.display())))?;
    let mut members = Vec::with_capacity(identities.len());
    for identity in identities {
        members.push(issue_member(&issuer, identity, dir)?);
    }
    Ok(Issued {
        ca_cert: ca_cert_path,
        api_token: None,
        members,
    })
}

fn issue_member(
    issuer: &Issuer<'_, KeyPair>,
    identity: &Identity,
    dir: &Path,
) -> Result<(Identity, PathBuf, PathBuf), CertsError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    set_validity(&mut params, MEMBER_VALIDITY);
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, identity.to_string());
    name.push(DnType::OrganizationName, "Umbra");
    params.distinguished_name = name;
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.subject_alt_names = vec![SanType::URI(identity.uri().try_into()?)];
    // Operators only ever connect; orchestrators and agents also serve, so they get the DNS
    // names clients verify them against and the serverAuth usage.
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    if identity.role() != Role::Operator {
        params
            .extended_key_usages
            .push(ExtendedKeyUsagePurpose::ServerAuth);
        params
            .subject_alt_names
            .push(SanType::DnsName(identity.server_name().try_into()?));
        params
            .subject_alt_names
            .push(SanType::DnsName(identity.role().server_name().try_into()?));
    }
    let cert = params.signed_by(&key, issuer)?;
    let stem = identity.file_stem();
    let cert_path = dir.join(format!("{stem}.pem"));
    let key_path = dir.join(format!("{stem}.key"));
    write_file(&key_path, &key.serialize_pem(), true)?;
    write_file(&cert_path, &cert.pem(), false)?;
    Ok((identity.clone(), cert_path, key_path))
}

fn set_validity(params: &mut CertificateParams, validity: time::Duration) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - CLOCK_SKEW_ALLOWANCE;
    params.not_after = now + validity;
}

fn write_file(path: &Path, contents: &str, secret: bool) -> Result<(), CertsError> {
    use std::os::unix::fs::OpenOptionsExt;
    let wrap = |source| CertsError::Write {
        path: path.to_owned(),
        source,
    };
    // Keys are created 0600 from the start, not chmodded afterwards, so there is no window
    // in which another user can read them.
    let mode = if secret { 0o600 } else { 0o644 };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(wrap)?;
    if secret {
        // An existing file keeps its old mode under `mode()`; force it.
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(wrap)?;
    }
    file.write_all(contents.as_bytes()).map_err(wrap)?;
    file.sync_all().map_err(wrap)
}
