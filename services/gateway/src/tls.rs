//! HTTPS: the certificate chain and private key of `DME_TLS_CERT` and `DME_TLS_KEY`, loaded into
//! a rustls server configuration at start-up, so a wrong file stops the gateway with its name
//! instead of failing every handshake later.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use dme_storage::tls::{certificates, private_key, PemError};
use rustls::ServerConfig;

/// The server configuration for `cert` and `key` (PEM files): `None` for plain HTTP when
/// neither is given. The crypto provider is ring's, the one every TLS client of dme (async-nats,
/// reqwest) already uses; the protocol versions are rustls' safe defaults (TLS 1.2 and 1.3).
///
/// # Errors
/// When only one of the two is given, a file cannot be read or holds no certificate (or no
/// private key), or the key is not the certificate's or of a kind rustls does not take.
pub(crate) fn server_config(
    cert: Option<&Path>,
    key: Option<&Path>,
) -> Result<Option<ServerConfig>, TlsError> {
    let (cert, key) = match (cert, key) {
        (Some(cert), Some(key)) => (cert, key),
        (None, None) => return Ok(None),
        _ => return Err(TlsError::Incomplete),
    };
    let chain = certificates(cert, "DME_TLS_CERT")?;
    let private = private_key(key, "DME_TLS_KEY")?;
    let config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .and_then(|builder| {
                builder
                    .with_no_client_auth()
                    .with_single_cert(chain, private)
            })
            .map_err(|source| TlsError::Refused {
                cert: cert.to_path_buf(),
                key: key.to_path_buf(),
                source,
            })?;
    Ok(Some(config))
}

/// HTTPS settings that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate without its key, or a key without its certificate.
    #[error("DME_TLS_CERT and DME_TLS_KEY go together: give both (HTTPS) or neither (HTTP)")]
    Incomplete,
    /// A file that cannot be used.
    #[error(transparent)]
    File(#[from] PemError),
    /// rustls refused the pair (a key that is not the certificate's, an unsupported kind).
    #[error("the certificate {cert} and key {key} cannot serve HTTPS")]
    Refused {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// rustls' reason.
        #[source]
        source: rustls::Error,
    },
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::{server_config, TlsError};

    /// A self-signed certificate for `localhost` and another's key, written to `dir` as PEM:
    /// `(cert, key, foreign key)`.
    fn files(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
        let made = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let other = rcgen::KeyPair::generate().unwrap();
        let paths = (
            dir.join("cert.pem"),
            dir.join("key.pem"),
            dir.join("other-key.pem"),
        );
        std::fs::write(&paths.0, made.cert.pem()).unwrap();
        std::fs::write(&paths.1, made.signing_key.serialize_pem()).unwrap();
        std::fs::write(&paths.2, other.serialize_pem()).unwrap();
        paths
    }

    fn refusal(cert: Option<&Path>, key: Option<&Path>) -> TlsError {
        server_config(cert, key).expect_err("refused")
    }

    #[test]
    fn neither_file_is_plain_http() {
        assert!(server_config(None, None).expect("plain HTTP").is_none());
    }

    #[test]
    fn a_pair_of_pem_files_serves_https() {
        let dir = tempfile::tempdir().expect("a folder");
        let (cert, key, _) = files(dir.path());
        let config = server_config(Some(&cert), Some(&key)).expect("loads");
        assert!(config.is_some());
    }

    #[test]
    fn bad_settings_say_which_file_is_wrong() {
        let dir = tempfile::tempdir().expect("a folder");
        let (cert, key, other) = files(dir.path());

        let e = refusal(Some(&cert), None).to_string();
        assert!(e.contains("go together"), "{e}");
        let e = refusal(None, Some(&key)).to_string();
        assert!(e.contains("go together"), "{e}");

        let missing = dir.path().join("missing.pem");
        let e = refusal(Some(&missing), Some(&key)).to_string();
        assert!(
            e.contains("DME_TLS_CERT") && e.contains("missing.pem"),
            "{e}"
        );

        // The files swapped: the key file holds no certificate, the certificate no key.
        let e = refusal(Some(&key), Some(&key)).to_string();
        assert!(
            e.contains("DME_TLS_CERT") && e.contains("no PEM certificate"),
            "{e}"
        );
        let e = refusal(Some(&cert), Some(&cert)).to_string();
        assert!(
            e.contains("DME_TLS_KEY") && e.contains("no PEM private key"),
            "{e}"
        );

        let e = refusal(Some(&cert), Some(&other));
        assert!(matches!(e, TlsError::Refused { .. }), "{e}");
    }
}
