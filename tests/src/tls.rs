//! TLS for the rig: a test CA made with `openssl` at test time, server certificates it signs
//! (with the IP SAN 127.0.0.1), a token signer whose RS256 JWTs docker-registry accepts
//! (`auth: token`), and an https token realm ([`TlsTokenServer`]) that hands one such token
//! to every request and logs each request head (so a test sees who sent which login).

use crate::{read_body, read_head, require};
use anyhow::{Context, Result, bail};
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn openssl(args: &[&str], cwd: &Path) -> Result<Vec<u8>> {
    let out = Command::new(require("openssl"))
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .output()
        .context("running openssl")?;
    if !out.status.success() {
        bail!(
            "openssl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out.stdout)
}

/// A self-signed certificate authority in its own temp dir.
pub struct TestCa {
    dir: tempfile::TempDir,
    /// Its certificate (PEM): what a client must trust.
    pub cert: PathBuf,
}

impl TestCa {
    pub fn new(name: &str) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        std::fs::write(
            dir.path().join("ca.cnf"),
            format!(
                "[req]\ndistinguished_name=dn\nx509_extensions=v3\nprompt=no\n[dn]\nCN={name}\n[v3]\nbasicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\nsubjectKeyIdentifier=hash\n"
            ),
        )?;
        openssl(
            &[
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-config", "ca.cnf",
                "-keyout", "ca.key", "-out", "ca.crt",
            ],
            dir.path(),
        )?;
        let cert = dir.path().join("ca.crt");
        Ok(Self { dir, cert })
    }

    /// A server certificate for 127.0.0.1 (IP SAN) signed by this CA: (certificate, key).
    pub fn issue(&self, name: &str) -> Result<(PathBuf, PathBuf)> {
        let d = self.dir.path();
        std::fs::write(
            d.join(format!("{name}.ext")),
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
        )?;
        let (key, csr, crt) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.crt"),
        );
        openssl(
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                "/CN=127.0.0.1",
                "-keyout",
                &key,
                "-out",
                &csr,
            ],
            d,
        )?;
        openssl(
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "1",
                "-extfile",
                &format!("{name}.ext"),
                "-out",
                &crt,
            ],
            d,
        )?;
        Ok((d.join(crt), d.join(key)))
    }

    /// A certificate directory tree as /etc/containers/certs.d: `ROOT/ADDRESS/ca.crt`.
    pub fn certs_d(&self, root: &Path, address: &str) -> Result<()> {
        let d = root.join(address);
        std::fs::create_dir_all(&d)?;
        std::fs::copy(&self.cert, d.join("ca.crt"))?;
        Ok(())
    }
}

/// Signs registry tokens (RS256 JWTs with the signer's certificate in `x5c`), as Docker
/// Hub's auth service does; its certificate is the registry's `rootcertbundle`.
pub struct TokenSigner {
    dir: tempfile::TempDir,
    pub cert: PathBuf,
    pub service: String,
    pub issuer: String,
}

fn b64url(b: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

impl TokenSigner {
    pub fn new() -> Result<Self> {
        let dir = tempfile::tempdir()?;
        openssl(
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "1",
                "-subj",
                "/CN=transfer-hub-test-token-signer",
                "-keyout",
                "signer.key",
                "-out",
                "signer.pem",
            ],
            dir.path(),
        )?;
        let cert = dir.path().join("signer.pem");
        Ok(Self {
            dir,
            cert,
            service: "transfer-hub-test".into(),
            issuer: "transfer-hub-test".into(),
        })
    }

    /// A token valid for an hour granting `actions` (e.g. "pull,push") on `repos`.
    pub fn token(&self, repos: &[&str], actions: &[&str]) -> Result<String> {
        use base64::Engine as _;
        let pem = std::fs::read_to_string(&self.cert)?;
        let der_b64: String = pem
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect::<Vec<_>>()
            .concat();
        // Check it is base64 DER (as x5c wants it).
        base64::engine::general_purpose::STANDARD.decode(&der_b64)?;
        let header = serde_json::json!({"typ": "JWT", "alg": "RS256", "x5c": [der_b64]});
        let now = chrono::Utc::now().timestamp();
        let access: Vec<serde_json::Value> = repos
            .iter()
            .map(|r| serde_json::json!({"type": "repository", "name": r, "actions": actions}))
            .collect();
        let claims = serde_json::json!({
            "iss": self.issuer, "sub": "puller", "aud": self.service,
            "exp": now + 3600, "nbf": now - 60, "iat": now - 60,
            "jti": format!("{}", fastrand::u64(..)), "access": access,
        });
        let signing_input = format!(
            "{}.{}",
            b64url(header.to_string().as_bytes()),
            b64url(claims.to_string().as_bytes())
        );
        let input = self.dir.path().join("input");
        std::fs::write(&input, &signing_input)?;
        let sig = openssl(
            &["dgst", "-sha256", "-sign", "signer.key", "input"],
            self.dir.path(),
        )?;
        Ok(format!("{signing_input}.{}", b64url(&sig)))
    }
}

/// An https token realm on 127.0.0.1 (its certificate from a [`TestCa`]): answers every
/// request with `{"token": TOKEN}` and logs every request head. Stopped on drop.
pub struct TlsTokenServer {
    pub addr: String,
    stop: Arc<AtomicBool>,
    requests: Arc<Mutex<Vec<String>>>,
}

impl TlsTokenServer {
    pub fn start(cert: &Path, key: &Path, token: String) -> Result<Self> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(cert)?.collect::<Result<_, _>>()?;
        let key = PrivateKeyDer::from_pem_file(key)?;
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
        let config = Arc::new(config);
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?.to_string();
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let requests: Arc<Mutex<Vec<String>>> = Default::default();
        let (stop2, requests2) = (stop.clone(), requests.clone());
        let body = serde_json::json!({"token": token, "access_token": token, "expires_in": 3600})
            .to_string();
        std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((tcp, _)) => {
                        let (config, requests, body) =
                            (config.clone(), requests2.clone(), body.clone());
                        std::thread::spawn(move || {
                            let _ = (|| -> Result<()> {
                                tcp.set_nonblocking(false)?;
                                tcp.set_read_timeout(Some(Duration::from_secs(30)))?;
                                let conn = rustls::ServerConnection::new(config)?;
                                let mut s = rustls::StreamOwned::new(conn, tcp);
                                let head = read_head(&mut s)?;
                                let _ = read_body(&mut s, &head, false)?;
                                requests
                                    .lock()
                                    .unwrap()
                                    .push(String::from_utf8_lossy(&head).to_string());
                                let out = format!(
                                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                                    body.len()
                                );
                                s.write_all(out.as_bytes())?;
                                s.conn.send_close_notify();
                                s.flush()?;
                                Ok(())
                            })();
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        Ok(Self {
            addr,
            stop,
            requests,
        })
    }

    /// Every request head received so far (TLS decrypted).
    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for TlsTokenServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
