//! Who a peer is: a [`Role`] and an id, carried in its certificate as a SAN URI
//! `umbra://<role>/<id>` (e.g. `umbra://orchestrator/1`, `umbra://agent/eu-west`), plus the DNS
//! names a client verifies a server against (`<role>.umbra` and `<id>.<role>.umbra`).
//!
//! This module parses and formats identities; it must not decide what a role may do (that is
//! `StreamKind::permits` in `endpoint`) and must not trust a certificate it was handed:
//! only certificates that rustls already verified against the cluster CA are read here.

use std::fmt;

use rustls_pki_types::CertificateDer;
use serde::{Deserialize, Serialize};

/// URI scheme of the identity SAN.
pub const IDENTITY_URI_SCHEME: &str = "umbra";

/// DNS suffix of the names servers are verified against. Not a real domain: the names exist
/// only inside certificates, and clients pass them as the TLS server name.
pub const CLUSTER_DNS_SUFFIX: &str = "umbra";

/// Longest id accepted: one DNS label (RFC 1035 § 2.3.4), because the id is used as one.
pub const MAX_ID_CHARS: usize = 63;

/// What a certificate's holder is allowed to be in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Role {
    /// A Raft member running `umbra-orchestrator`.
    Orchestrator,
    /// A region agent running `umbra-agent`.
    Agent,
    /// A human or tool using the operator API (`umbra` CLI).
    Operator,
}

impl Role {
    /// Every role, in a stable order.
    pub const ALL: [Role; 3] = [Role::Orchestrator, Role::Agent, Role::Operator];

    /// The lowercase name used in URIs, DNS names and file names.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Orchestrator => "orchestrator",
            Role::Agent => "agent",
            Role::Operator => "operator",
        }
    }

    /// Parses the lowercase name.
    pub fn parse(name: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|role| role.as_str() == name)
    }

    /// The TLS server name any server of this role answers to: `<role>.umbra`. Connect with
    /// it when any member of the role will do (e.g. "some orchestrator").
    pub fn server_name(self) -> String {
        format!("{}.{CLUSTER_DNS_SUFFIX}", self.as_str())
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why an identity was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// The id is empty, too long, or has characters other than `a-z`, `0-9` and `-`.
    #[error(
        "invalid id {id:?}: use 1 to {MAX_ID_CHARS} characters from a-z, 0-9 and '-', not starting or ending with '-'"
    )]
    InvalidId {
        /// The id as given.
        id: String,
    },
    /// The role name is not one of orchestrator, agent, operator.
    #[error("unknown role {role:?}: expected orchestrator, agent or operator")]
    UnknownRole {
        /// The role as given.
        role: String,
    },
    /// The certificate could not be parsed as X.509.
    #[error("certificate is not valid X.509: {reason}")]
    BadCertificate {
        /// What the parser said.
        reason: String,
    },
    /// The certificate has no `umbra://<role>/<id>` SAN URI.
    #[error(
        "certificate carries no umbra://<role>/<id> identity; issue it with `umbra certs init`"
    )]
    NoIdentity,
    /// The certificate has more than one identity URI, which would make its role ambiguous.
    #[error("certificate carries {count} umbra:// identities; exactly one is allowed")]
    Ambiguous {
        /// How many identity URIs were found.
        count: usize,
    },
}

/// A cluster member's identity: its role and its node or region id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Identity {
    role: Role,
    id: String,
}

impl Identity {
    /// An identity, with the id checked (it becomes a DNS label and a file name).
    pub fn new(role: Role, id: impl Into<String>) -> Result<Identity, IdentityError> {
        let id = id.into();
        let valid = !id.is_empty()
            && id.len() <= MAX_ID_CHARS
            && id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !id.starts_with('-')
            && !id.ends_with('-');
        if !valid {
            return Err(IdentityError::InvalidId { id });
        }
        Ok(Identity { role, id })
    }

    /// An orchestrator's identity from its Raft node id.
    pub fn orchestrator(node_id: u64) -> Identity {
        Identity {
            role: Role::Orchestrator,
            id: node_id.to_string(),
        }
    }

    /// The role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The node or region id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The SAN URI: `umbra://<role>/<id>`.
    pub fn uri(&self) -> String {
        format!("{IDENTITY_URI_SCHEME}://{}/{}", self.role, self.id)
    }

    /// Parses `umbra://<role>/<id>`.
    pub fn from_uri(uri: &str) -> Result<Identity, IdentityError> {
        let rest = uri
            .strip_prefix(IDENTITY_URI_SCHEME)
            .and_then(|rest| rest.strip_prefix("://"))
            .ok_or(IdentityError::NoIdentity)?;
        let (role, id) = rest.split_once('/').ok_or(IdentityError::NoIdentity)?;
        let role = Role::parse(role).ok_or_else(|| IdentityError::UnknownRole {
            role: role.to_owned(),
        })?;
        Identity::new(role, id)
    }

    /// The TLS server name of exactly this member: `<id>.<role>.umbra`. Connect with it
    /// when a specific peer is meant (e.g. Raft node 2).
    pub fn server_name(&self) -> String {
        format!("{}.{}.{CLUSTER_DNS_SUFFIX}", self.id, self.role)
    }

    /// The base name of this identity's files: `<role>-<id>` (`orchestrator-1.pem`).
    pub fn file_stem(&self) -> String {
        format!("{}-{}", self.role, self.id)
    }

    /// Reads the identity from a DER certificate's `umbra://` SAN URI.
    pub fn from_certificate(cert: &CertificateDer<'_>) -> Result<Identity, IdentityError> {
        use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
        let (_, parsed) = X509Certificate::from_der(cert.as_ref()).map_err(|err| {
            IdentityError::BadCertificate {
                reason: err.to_string(),
            }
        })?;
        let san = parsed
            .subject_alternative_name()
            .map_err(|err| IdentityError::BadCertificate {
                reason: err.to_string(),
            })?
            .ok_or(IdentityError::NoIdentity)?;
        let uris: Vec<&str> = san
            .value
            .general_names
            .iter()
            .filter_map(|name| match name {
                GeneralName::URI(uri) if uri.starts_with(IDENTITY_URI_SCHEME) => Some(*uri),
                _ => None,
            })
            .collect();
        match uris.as_slice() {
            [] => Err(IdentityError::NoIdentity),
            [uri] => Identity::from_uri(uri),
            more => Err(IdentityError::Ambiguous { count: more.len() }),
        }
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.role, self.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_round_trips() {
        for (role, id) in [
            (Role::Orchestrator, "1"),
            (Role::Agent, "eu-west"),
            (Role::Operator, "admin"),
        ] {
            let identity = Identity::new(role, id).unwrap();
            assert_eq!(Identity::from_uri(&identity.uri()).unwrap(), identity);
        }
        assert_eq!(
            Identity::orchestrator(3).uri(),
            "umbra://orchestrator/3".to_owned()
        );
    }

    #[test]
    fn bad_ids_and_roles_are_refused() {
        for id in ["", "-a", "a-", "EU", "a/b", "a.b", &"x".repeat(64)] {
            assert!(
                matches!(
                    Identity::new(Role::Agent, id),
                    Err(IdentityError::InvalidId { .. })
                ),
                "{id:?}"
            );
        }
        assert!(matches!(
            Identity::from_uri("umbra://king/1"),
            Err(IdentityError::UnknownRole { .. })
        ));
        assert!(matches!(
            Identity::from_uri("https://orchestrator/1"),
            Err(IdentityError::NoIdentity)
        ));
    }
}
