//! TLS to NATS: the certificate authorities to trust and the client certificate of
//! [`NatsArgs`], checked once at start-up and applied to a connection's options; and the one
//! reader of PEM files ([`certificates`], [`private_key`]), which the gateway's HTTPS uses too.
//!
//! async-nats reads the files again on every (re)connection; checking them here first turns a
//! wrong path or a file that is not PEM into a start-up error that names the file, instead of a
//! connection retried until the start-up deadline.

use std::path::{Path, PathBuf};

use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::{NatsArgs, StoreError};

/// The TLS settings of a NATS connection, their files checked.
#[derive(Debug, Clone, Default)]
pub(crate) struct NatsTls {
    /// A PEM file of the roots to trust instead of the system's; TLS is required when set.
    ca: Option<PathBuf>,
    /// A client certificate and its private key (PEM files).
    client: Option<(PathBuf, PathBuf)>,
}

impl NatsTls {
    /// The TLS settings of `args` (`DME_NATS_CA`, `DME_NATS_CERT`, `DME_NATS_KEY`), each file
    /// read and parsed once.
    ///
    /// # Errors
    /// [`StoreError::Nats`] when a file cannot be read or holds no certificate (or no key), or
    /// a certificate is given without its key or a key without its certificate.
    pub(crate) fn from_args(args: &NatsArgs) -> Result<NatsTls, StoreError> {
        Self::check(args).map_err(|e| StoreError::Nats {
            op: "read the TLS settings",
            source: Box::new(e),
        })
    }

    fn check(args: &NatsArgs) -> Result<NatsTls, TlsError> {
        if let Some(ca) = &args.nats_ca {
            certificates(ca, "DME_NATS_CA")?;
        }
        // Read once to check them; async-nats reads them again at each connection.
        let client = match (&args.nats_cert, &args.nats_key) {
            (Some(cert), Some(key)) => {
                certificates(cert, "DME_NATS_CERT")?;
                private_key(key, "DME_NATS_KEY")?;
                Some((cert.clone(), key.clone()))
            }
            (None, None) => None,
            _ => return Err(TlsError::Incomplete),
        };
        Ok(NatsTls {
            ca: args.nats_ca.clone(),
            client,
        })
    }

    /// `options` with these settings: the roots to trust and TLS required when a CA is given,
    /// the client certificate when one is. Without either, the URL decides (`tls://` asks for
    /// TLS with the system's roots, and so does a server that requires it).
    pub(crate) fn apply(&self, options: async_nats::ConnectOptions) -> async_nats::ConnectOptions {
        let options = match &self.ca {
            Some(ca) => options.add_root_certificates(ca.clone()).require_tls(true),
            None => options,
        };
        match &self.client {
            Some((cert, key)) => options
                .add_client_certificate(cert.clone(), key.clone())
                .require_tls(true),
            None => options,
        }
    }
}

/// The certificates of the PEM file `path`, named by `setting` in errors: at least one.
///
/// # Errors
/// When the file cannot be read, is not PEM or holds no certificate.
pub fn certificates(
    path: &Path,
    setting: &'static str,
) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| PemError::read(setting, path, e))?;
    if certs.is_empty() {
        return Err(PemError::Missing {
            setting,
            path: path.to_path_buf(),
            what: "certificate",
        });
    }
    Ok(certs)
}

/// The private key of the PEM file `path`, named by `setting` in errors.
///
/// # Errors
/// When the file cannot be read, is not PEM or holds no private key.
pub fn private_key(path: &Path, setting: &'static str) -> Result<PrivateKeyDer<'static>, PemError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| match e {
        pem::Error::NoItemsFound => PemError::Missing {
            setting,
            path: path.to_path_buf(),
            what: "private key",
        },
        e => PemError::read(setting, path, e),
    })
}

/// A PEM file a setting names that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PemError {
    /// The file could not be read or is not PEM.
    #[error("{setting}: cannot read {path}: {reason}")]
    Unreadable {
        /// The setting that names the file.
        setting: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A PEM file without what it should hold.
    #[error("{setting}: {path} holds no PEM {what}")]
    Missing {
        /// The setting that names the file.
        setting: &'static str,
        /// The file.
        path: PathBuf,
        /// `certificate` or `private key`.
        what: &'static str,
    },
}

impl PemError {
    fn read(setting: &'static str, path: &Path, error: pem::Error) -> PemError {
        let reason = match error {
            pem::Error::Io(e) => e.to_string(),
            e => format!("not PEM ({e})"),
        };
        PemError::Unreadable {
            setting,
            path: path.to_path_buf(),
            reason,
        }
    }
}

/// TLS settings that cannot be used.
#[derive(Debug, thiserror::Error)]
enum TlsError {
    /// A file that cannot be used.
    #[error(transparent)]
    File(#[from] PemError),
    /// A client certificate without its key, or a key without its certificate.
    #[error(
        "DME_NATS_CERT and DME_NATS_KEY go together: give both (a client certificate) or neither"
    )]
    Incomplete,
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use clap::Parser;

    use super::NatsTls;
    use crate::NatsArgs;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        nats: NatsArgs,
    }

    fn args(flags: &[&str]) -> NatsArgs {
        let mut argv = vec!["test"];
        argv.extend_from_slice(flags);
        Cli::try_parse_from(argv).expect("flags parse").nats
    }

    /// The error `flags` get, with its cause.
    fn error(flags: &[&str]) -> String {
        let e = NatsTls::from_args(&args(flags)).expect_err("refused");
        let source = std::error::Error::source(&e).map(ToString::to_string);
        format!("{e}: {}", source.unwrap_or_default())
    }

    /// A self-signed certificate, as `openssl req -x509 -newkey ec` writes it.
    const CERT: &str = "-----BEGIN CERTIFICATE-----
MIIBfDCCASOgAwIBAgIUXStnMk6aeLyQ2AzIFDtvR/EV1/4wCgYIKoZIzj0EAwIw
FDESMBAGA1UEAwwJbG9jYWxob3N0MB4XDTI2MTEyOTA3NTY1NVoXDTM2MTEyNjA3
NTY1NVowFDESMBAGA1UEAwwJbG9jYWxob3N0MFkwEwYHKoZIzj0CAQYIKoZIzj0D
AQcDQgAEmRQIK+5exSHjkjKmUBnf/znfHCwWWJcWPcawSnF5HzDd61AhhaJRo+1b
fdmTVW6AbkLhXiEcuE4EjNUfR+PybqNTMFEwHQYDVR0OBBYEFIY1miCRkjidj3DN
nWpZzIbxSx5tMB8GA1UdIwQYMBaAFIY1miCRkjidj3DNnWpZzIbxSx5tMA8GA1Ud
EwEB/wQFMAMBAf8wCgYIKoZIzj0EAwIDRwAwRAIgETcir4KbWwNmM3ZGjVRThIIu
+R8BwthbAP3aBdvW7fICIDW63eAFmSUOWjvhpPL667Ig2EtOfqo5fe9F9C/adqzI
-----END CERTIFICATE-----
";

    #[test]
    fn no_settings_leave_the_url_to_decide() {
        let tls = NatsTls::from_args(&args(&[])).expect("no TLS is fine");
        assert!(tls.ca.is_none() && tls.client.is_none());
    }

    #[test]
    fn files_are_checked_at_start_up() {
        let dir = tempfile::tempdir().expect("a folder");
        let missing = dir.path().join("missing.pem");
        let e = error(&["--nats-ca", missing.to_str().unwrap()]);
        assert!(
            e.contains("DME_NATS_CA") && e.contains("missing.pem"),
            "{e}"
        );

        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let e = error(&["--nats-ca", empty.to_str().unwrap()]);
        assert!(e.contains("holds no PEM certificate"), "{e}");

        let cert = dir.path().join("cert.pem");
        std::fs::write(&cert, CERT).unwrap();
        let tls = NatsTls::from_args(&args(&["--nats-ca", cert.to_str().unwrap()]))
            .expect("a PEM certificate is a CA file");
        assert_eq!(tls.ca, Some(PathBuf::from(&cert)));

        // The certificate file holds no key.
        let e = error(&[
            "--nats-cert",
            cert.to_str().unwrap(),
            "--nats-key",
            cert.to_str().unwrap(),
        ]);
        assert!(
            e.contains("DME_NATS_KEY") && e.contains("private key"),
            "{e}"
        );
    }

    #[test]
    fn a_client_certificate_needs_its_key() {
        let e = error(&["--nats-cert", "/x.pem"]);
        assert!(e.contains("go together"), "{e}");
        let e = error(&["--nats-key", "/x.pem"]);
        assert!(e.contains("go together"), "{e}");
    }
}
