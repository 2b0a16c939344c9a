//! BIND key files as `[dns] tsig_key_file` names them: what `tsig-keygen` writes parses (the
//! real program's output, not a copy of it), and each mistake is refused with a message that
//! says what to write and never quotes the secret.

use hickory_proto::rr::rdata::tsig::TsigAlgorithm;
use umbra_dns::rfc2136::TsigKey;
use umbra_testkit::installed;

/// A secret no message may show (32 bytes, base64).
const SECRET: &str = "nQfVU/x8lKoGrSssq8YNvSVgdnTyp/mX2NN8Z/nnzKU=";

#[test]
fn what_tsig_keygen_writes_parses() -> anyhow::Result<()> {
    let keygen = installed("tsig-keygen", "bind9")?;
    for (algorithm, expected) in [
        ("hmac-sha256", TsigAlgorithm::HmacSha256),
        ("hmac-sha512", TsigAlgorithm::HmacSha512),
    ] {
        let out = std::process::Command::new(&keygen)
            .args(["-a", algorithm, "umbra-update"])
            .output()?;
        anyhow::ensure!(out.status.success(), "tsig-keygen failed: {out:?}");
        let text = String::from_utf8(out.stdout)?;
        let key = TsigKey::from_bind_key_file(&text, "keygen output")?;
        assert_eq!(key.name, "umbra-update");
        assert_eq!(key.algorithm, expected);
        assert!(
            key.secret.len() >= 32,
            "{algorithm}: {} bytes",
            key.secret.len()
        );
        assert!(
            text.contains(&key.secret_base64()),
            "the secret read back as written"
        );
    }
    Ok(())
}

#[test]
fn comments_and_layout_do_not_matter() {
    let text = format!(
        "# made by hand\n// for the umbra.test zone\n/* a\n block */ key \"k1.umbra\"{{algorithm HMAC-SHA384;secret \"{SECRET}\";}};\n"
    );
    let key = TsigKey::from_bind_key_file(&text, "f").unwrap();
    assert_eq!(key.name, "k1.umbra");
    assert_eq!(key.algorithm, TsigAlgorithm::HmacSha384);
    assert_eq!(key.secret_base64(), SECRET);
}

#[test]
fn mistakes_are_refused_saying_what_to_write() {
    let cases = [
        ("", "it ends where `key` should come"),
        ("zone \"x\" {};", "does not start with `key`"),
        ("key \"k\" { algorithm hmac-sha256; };", "has no secret"),
        (
            &*format!("key \"k\" {{ secret \"{SECRET}\"; }};"),
            "has no algorithm",
        ),
        (
            &*format!("key \"k\" {{ algorithm hmac-md5; secret \"{SECRET}\"; }};"),
            "cannot sign updates here",
        ),
        (
            &*format!("key \"k\" {{ algorithm hmac-sha256; secret \"{SECRET}\" }};"),
            "a `;` should end each statement",
        ),
        (
            &*format!("key \"k\" {{ algorithm hmac-sha256; secret \"{SECRET}\"; }}"),
            "it ends where `;` should come",
        ),
        (
            &*format!(
                "key \"k\" {{ algorithm hmac-sha256; secret \"{SECRET}\"; }}; key \"j\" {{ }};"
            ),
            "exactly one key",
        ),
        (
            "key \"k\" { algorithm hmac-sha256; secret \"c2hvcnQ=\"; };",
            "use at least 16",
        ),
        (
            "key \"k\" { algorithm hmac-sha256; secret \"not base64!\"; };",
            "is not base64",
        ),
        (
            &*format!("key \"k\" {{ algorithm hmac-sha256; secret \"{SECRET}; }};"),
            "never closed",
        ),
        (
            &*format!("key \"k\" {{ algorithm hmac-sha256; owner x; secret \"{SECRET}\"; }};"),
            "unexpected \"owner\"",
        ),
    ];
    for (text, expected) in cases {
        let message = TsigKey::from_bind_key_file(text, "/etc/umbra/update.key")
            .expect_err(expected)
            .to_string();
        assert!(
            message.contains(expected),
            "{message:?} should say {expected:?}"
        );
        assert!(message.contains("/etc/umbra/update.key"), "{message}");
        assert!(message.contains("tsig-keygen -a hmac-sha256"), "{message}");
        assert!(!message.contains(SECRET), "the secret leaked: {message}");
    }
}

#[test]
fn a_missing_file_names_the_path() {
    let message = TsigKey::read_bind_key_file(std::path::Path::new("/nonexistent/update.key"))
        .unwrap_err()
        .to_string();
    assert!(message.contains("/nonexistent/update.key"), "{message}");
}
