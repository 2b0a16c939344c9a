//! `certs::init` and `certs::add` write files that load and make working endpoints, keys are
//! private, and loading points at the problem when a file is missing, garbled or mismatched.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use anyhow::Context;
use umbra_proto::certs::{self, CertsError, Layout};
use umbra_proto::{
    ClientOutcome, ClientRequest, ClientRequestBody, ClientResponse, CredentialError, Credentials,
    Endpoint, EndpointError, Identity, Role, StreamKind, TransportConfig,
};

const DEADLINE: Duration = Duration::from_secs(20);

async fn within<F: std::future::Future>(what: &str, fut: F) -> anyhow::Result<F::Output> {
    tokio::time::timeout(DEADLINE, fut)
        .await
        .with_context(|| format!("{what} did not finish within {DEADLINE:?}"))
}

#[test]
fn init_writes_every_member_with_private_keys() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let layout = Layout {
        orchestrators: 5,
        regions: vec!["us-east".into(), "eu-west".into()],
        operators: vec!["admin".into(), "ci".into()],
    };
    let issued = certs::init(&layout, dir.path())?;
    assert_eq!(issued.members.len(), 9);
    let key_mode = |path: &std::path::Path| -> anyhow::Result<u32> {
        Ok(std::fs::metadata(path)?.permissions().mode() & 0o777)
    };
    assert_eq!(key_mode(&dir.path().join("ca.key"))?, 0o600);
    for (identity, cert, key) in &issued.members {
        assert_eq!(key_mode(key)?, 0o600, "{}", key.display());
        assert!(cert.exists());
        let loaded = Credentials::load(dir.path(), identity)?;
        assert_eq!(loaded.identity(), identity);
    }
    // Validity: from shortly before now, for the documented periods.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs() as i64;
    for (file, validity) in [
        ("ca.pem", certs::CA_VALIDITY),
        ("orchestrator-1.pem", certs::MEMBER_VALIDITY),
    ] {
        let pem = std::fs::read(dir.path().join(file))?;
        let (_, pem) = x509_parser::pem::parse_x509_pem(&pem)?;
        let cert = pem.parse_x509()?;
        let not_before = cert.validity().not_before.timestamp();
        let not_after = cert.validity().not_after.timestamp();
        assert!(not_before <= now && now - not_before <= 2 * 3600, "{file}");
        let days = (not_after - now) / 86_400;
        assert!(
            (days - validity.whole_days()).abs() <= 1,
            "{file}: {days} days"
        );
    }

    // A second init into the same directory would replace the CA; it is refused.
    assert!(matches!(
        certs::init(&layout, dir.path()),
        Err(CertsError::CaExists { .. })
    ));
    Ok(())
}

#[test]
fn bad_layouts_are_refused_with_a_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let no_orchestrators = Layout {
        orchestrators: 0,
        ..Layout::default()
    };
    assert!(matches!(
        certs::init(&no_orchestrators, dir.path()),
        Err(CertsError::Layout(_))
    ));
    let bad_region = Layout {
        regions: vec!["EU West".into()],
        ..Layout::default()
    };
    let err = certs::init(&bad_region, dir.path()).expect_err("bad region id");
    assert!(err.to_string().contains("a-z, 0-9"), "{err}");
    let twice = Layout {
        regions: vec!["eu-west".into(), "eu-west".into()],
        ..Layout::default()
    };
    assert!(matches!(
        certs::init(&twice, dir.path()),
        Err(CertsError::Layout(_))
    ));
    assert!(
        !dir.path().join("ca.pem").exists(),
        "nothing is written for a bad layout"
    );
}

#[test]
fn loading_names_the_missing_garbled_or_mismatched_file() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    certs::init(&Layout::default(), dir.path())?;
    let one = Identity::orchestrator(1);

    let missing = Credentials::load(dir.path(), &Identity::orchestrator(9)).unwrap_err();
    assert!(
        matches!(missing, CredentialError::MissingMember { .. }),
        "{missing}"
    );
    // A missing member is issued from the cluster's CA, never by a new CA.
    let add = format!(
        "umbra certs add --dir {} --role orchestrator --id 9",
        dir.path().display()
    );
    assert!(missing.to_string().contains(&add), "{missing}");
    assert!(!missing.to_string().contains("certs init"), "{missing}");

    let no_ca = tempfile::tempdir()?;
    let missing_ca = Credentials::load(no_ca.path(), &one).unwrap_err();
    assert!(
        matches!(missing_ca, CredentialError::Missing { .. }),
        "{missing_ca}"
    );
    assert!(
        missing_ca
            .to_string()
            .contains("copy the cluster's CA certificate"),
        "{missing_ca}"
    );

    let copy = tempfile::tempdir()?;
    for file in ["ca.pem", "orchestrator-1.pem", "orchestrator-1.key"] {
        std::fs::copy(dir.path().join(file), copy.path().join(file))?;
    }
    std::fs::write(copy.path().join("orchestrator-1.pem"), "not a certificate")?;
    let garbled = Credentials::load(copy.path(), &one).unwrap_err();
    assert!(
        matches!(
            garbled,
            CredentialError::Garbled {
                what: "certificate",
                ..
            }
        ),
        "{garbled}"
    );

    // orchestrator-2's key beside orchestrator-1's certificate.
    std::fs::copy(
        dir.path().join("orchestrator-1.pem"),
        copy.path().join("orchestrator-1.pem"),
    )?;
    std::fs::copy(
        dir.path().join("orchestrator-2.key"),
        copy.path().join("orchestrator-1.key"),
    )?;
    let mismatched = Credentials::load(copy.path(), &one).unwrap_err();
    assert!(
        mismatched.to_string().contains("does not belong to"),
        "{mismatched}"
    );

    // A certificate saved under another member's name.
    std::fs::copy(
        dir.path().join("orchestrator-2.pem"),
        copy.path().join("orchestrator-1.pem"),
    )?;
    std::fs::copy(
        dir.path().join("orchestrator-2.key"),
        copy.path().join("orchestrator-1.key"),
    )?;
    let renamed = Credentials::load(copy.path(), &one).unwrap_err();
    assert!(
        renamed
            .to_string()
            .contains("is the certificate of orchestrator/2, not of orchestrator/1"),
        "{renamed}"
    );
    assert!(
        renamed.to_string().contains("--role orchestrator --id 1"),
        "{renamed}"
    );
    Ok(())
}

/// The files `init` writes make working endpoints for every role: an orchestrator serves,
/// an operator reaches it on a client stream, an agent serves too, and an operator
/// certificate cannot be used to serve. A member added later with `certs::add` joins.
#[tokio::test]
async fn issued_files_build_working_endpoints() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    certs::init(&Layout::default(), dir.path())?;
    let orchestrator = Credentials::load(dir.path(), &Identity::orchestrator(1))?;
    let server = Endpoint::server(
        "127.0.0.1:0".parse()?,
        &orchestrator,
        TransportConfig::default(),
    )?;
    let addr = server.local_addr()?;
    let accepting = server.clone();
    let served = tokio::spawn(async move {
        let mut peers = Vec::new();
        while let Some(incoming) = accepting.accept().await {
            let conn = incoming.establish().await.context("establish")?;
            let mut stream = conn.accept_stream().await.context("accept stream")?;
            let request: ClientRequest =
                stream.recv().await.context("recv")?.context("no request")?;
            stream
                .send(&ClientResponse {
                    id: request.id,
                    outcome: ClientOutcome::Applied {
                        result: b"ok".to_vec(),
                    },
                })
                .await?;
            peers.push((conn.peer().clone(), stream.kind()));
            // Dropping a connection abandons unsent data: let the client read the answer
            // and hang up first.
            let _ = tokio::time::timeout(DEADLINE, conn.closed()).await;
            if peers.len() == 2 {
                return anyhow::Ok(peers);
            }
        }
        anyhow::bail!("endpoint closed early")
    });

    let admin = Credentials::load(dir.path(), &Identity::new(Role::Operator, "admin")?)?;
    let err = Endpoint::server("127.0.0.1:0".parse()?, &admin, TransportConfig::default())
        .expect_err("operators only connect");
    assert!(matches!(err, EndpointError::CannotServe { .. }), "{err}");
    let operator = Endpoint::client("127.0.0.1:0".parse()?, &admin, TransportConfig::default())?;
    let conn = within(
        "connect",
        operator.connect(addr, &Role::Orchestrator.server_name()),
    )
    .await??;
    let mut stream = within("open", conn.open_stream(StreamKind::Client)).await??;
    stream
        .send(&ClientRequest {
            id: 41,
            body: ClientRequestBody::Propose {
                command: b"set a 1".to_vec(),
            },
        })
        .await?;
    let response: ClientResponse = within("response", stream.recv())
        .await??
        .context("no response")?;
    assert_eq!(response.id, 41);
    assert_eq!(
        response.outcome,
        ClientOutcome::Applied {
            result: b"ok".to_vec()
        }
    );
    drop((stream, conn));

    // A fourth orchestrator issued later from the same CA is accepted on the Raft stream.
    certs::add(dir.path(), &[Identity::orchestrator(4)])?;
    let four = Credentials::load(dir.path(), &Identity::orchestrator(4))?;
    let newcomer = Endpoint::server("127.0.0.1:0".parse()?, &four, TransportConfig::default())?;
    let conn4 = within(
        "connect",
        newcomer.connect(addr, &Identity::orchestrator(1).server_name()),
    )
    .await??;
    let mut stream = within("open", conn4.open_stream(StreamKind::Raft)).await??;
    stream
        .send(&ClientRequest {
            id: 42,
            body: ClientRequestBody::LeaderInfo,
        })
        .await?;
    let response: ClientResponse = within("response", stream.recv())
        .await??
        .context("no response")?;
    assert_eq!(response.id, 42);
    drop((stream, conn4));

    let peers = within("server", served).await???;
    assert_eq!(
        peers,
        vec![
            (Identity::new(Role::Operator, "admin")?, StreamKind::Client),
            (Identity::orchestrator(4), StreamKind::Raft),
        ]
    );

    // An agent certificate serves as well.
    let agent = Credentials::load(dir.path(), &Identity::new(Role::Agent, "ap-south")?)?;
    Endpoint::server("127.0.0.1:0".parse()?, &agent, TransportConfig::default())?;
    server.close();
    Ok(())
}
