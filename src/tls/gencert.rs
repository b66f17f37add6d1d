//! `dialbackd gen-cert DOMAIN --out DIR`: a self-signed certificate for dialback-only set-ups.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::TlsError;
use crate::domain::Domain;

/// Make a self-signed certificate (SAN dNSName = `domain`, CN = `domain`, ECDSA P-256) and its
/// key with rcgen, and write them to `out_dir/DOMAIN.crt` and `out_dir/DOMAIN.key` (mode 0600).
/// Existing files are never overwritten. Returns (certificate path, key path).
///
/// Such a certificate passes dialback-mode peers only; peers that check certificates (pkix)
/// fall back to dialback or refuse it.
///
/// # Errors
/// `domain` is an IP literal, `out_dir` cannot be created or written, either file exists, or
/// key generation fails.
pub fn gen_cert(domain: &Domain, out_dir: &Path) -> Result<(PathBuf, PathBuf), TlsError> {
    if domain.as_str().starts_with('[') {
        return Err(TlsError(format!(
            "gen-cert {domain}: IP literals are not supported"
        )));
    }
    std::fs::create_dir_all(out_dir).map_err(|e| {
        TlsError(format!(
            "gen-cert: cannot create {}: {e}",
            out_dir.display()
        ))
    })?;
    let cert_path = out_dir.join(format!("{domain}.crt"));
    let key_path = out_dir.join(format!("{domain}.key"));
    for p in [&cert_path, &key_path] {
        if p.exists() {
            return Err(TlsError(format!(
                "gen-cert: {} already exists; refusing to overwrite it",
                p.display()
            )));
        }
    }
    let key = rcgen::KeyPair::generate()
        .map_err(|e| TlsError(format!("gen-cert {domain}: key generation failed: {e}")))?;
    let mut params = rcgen::CertificateParams::new(vec![domain.as_str().to_owned()])
        .map_err(|e| TlsError(format!("gen-cert {domain}: {e}")))?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, domain.as_str());
    let cert = params
        .self_signed(&key)
        .map_err(|e| TlsError(format!("gen-cert {domain}: signing failed: {e}")))?;
    // The key first: if it cannot be written, no certificate is left behind without its key.
    write_new(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
    if let Err(e) = write_new(&cert_path, cert.pem().as_bytes(), 0o644) {
        let _ = std::fs::remove_file(&key_path);
        return Err(e);
    }
    Ok((cert_path, key_path))
}

/// Create `path` (failing if it exists) with `mode`, and write `data` to it.
fn write_new(path: &Path, data: &[u8], mode: u32) -> Result<(), TlsError> {
    let err = |e: std::io::Error| TlsError(format!("gen-cert: {}: {e}", path.display()));
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(err)?;
    let written = f.write_all(data).and_then(|()| f.sync_all());
    if let Err(e) = written {
        drop(f);
        let _ = std::fs::remove_file(path);
        return Err(err(e));
    }
    Ok(())
}
