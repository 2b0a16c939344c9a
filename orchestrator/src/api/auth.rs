//! The operator API's bearer token: loaded from a file, compared in constant time, never
//! printed. `Debug` shows only that a token is there.
//!
//! This module must not log or format the token's value anywhere.

use std::path::{Path, PathBuf};

use subtle::ConstantTimeEq;

/// Shortest token accepted: 16 characters. A token shorter than that can be guessed by
/// someone who holds an operator certificate; `openssl rand -hex 32` gives 64.
pub const MIN_TOKEN_CHARS: usize = 16;

/// Why a token file is unusable.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The file could not be read.
    #[error(
        "cannot read the API token file {path}: {source}; `umbra certs init` writes one (api-token beside the CA), or create it with `openssl rand -hex 32 > {path}`"
    )]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The token is too short or has characters an HTTP header cannot carry.
    #[error(
        "the API token in {path} must be one line of at least {MIN_TOKEN_CHARS} visible ASCII characters; create one with `openssl rand -hex 32 > {path}`"
    )]
    Unusable {
        /// The file.
        path: PathBuf,
    },
}

/// A bearer token.
#[derive(Clone)]
pub struct BearerToken {
    value: String,
}

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BearerToken(<redacted>)")
    }
}

impl BearerToken {
    /// Reads the token from `path` (surrounding whitespace, such as the final newline, is
    /// ignored).
    pub fn load(path: &Path) -> Result<Self, TokenError> {
        let text = std::fs::read_to_string(path).map_err(|source| TokenError::Unreadable {
            path: path.to_owned(),
            source,
        })?;
        Self::new(text.trim()).ok_or_else(|| TokenError::Unusable {
            path: path.to_owned(),
        })
    }

    /// A token from its value, if usable: at least [`MIN_TOKEN_CHARS`] visible ASCII
    /// characters (what an `Authorization` header can carry unchanged).
    pub fn new(value: &str) -> Option<Self> {
        let usable = value.len() >= MIN_TOKEN_CHARS && value.bytes().all(|b| b.is_ascii_graphic());
        usable.then(|| Self {
            value: value.to_owned(),
        })
    }

    /// The `Authorization` header value that carries this token.
    pub fn header_value(&self) -> String {
        format!("Bearer {}", self.value)
    }

    /// Whether `presented` is this token. Both sides are hashed first, so the comparison
    /// takes the same time whatever the presented token's length or content.
    pub fn matches(&self, presented: &str) -> bool {
        let expected = ring::digest::digest(&ring::digest::SHA256, self.value.as_bytes());
        let presented = ring::digest::digest(&ring::digest::SHA256, presented.as_bytes());
        expected.as_ref().ct_eq(presented.as_ref()).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_only_the_same_token() {
        let token = BearerToken::new("0123456789abcdef0123").expect("usable");
        assert!(token.matches("0123456789abcdef0123"));
        assert!(!token.matches("0123456789abcdef0124"));
        assert!(!token.matches("0123456789abcdef012"));
        assert!(!token.matches(""));
    }

    #[test]
    fn short_or_unprintable_tokens_are_refused() {
        assert!(BearerToken::new("short").is_none());
        assert!(BearerToken::new("0123456789abcdef 0123").is_none());
        assert!(BearerToken::new("0123456789abcdef\u{e9}").is_none());
    }

    #[test]
    fn debug_does_not_show_the_token() {
        let token = BearerToken::new("0123456789abcdef0123").expect("usable");
        assert!(!format!("{token:?}").contains("0123"));
    }

    #[test]
    fn load_trims_the_newline_and_names_the_file_on_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("token");
        std::fs::write(&path, "0123456789abcdef0123\n").expect("write");
        let token = BearerToken::load(&path).expect("loads");
        assert!(token.matches("0123456789abcdef0123"));
        let missing = dir.path().join("missing");
        let error = BearerToken::load(&missing).expect_err("missing file");
        assert!(error.to_string().contains("missing"), "{error}");
    }
}
