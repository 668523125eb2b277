//! `init`: everything a first `serve` needs, in the current directory.

use std::path::Path;

use anyhow::{bail, Context, Result};
use relogin_farm::config;
use relogin_farm::secret::Secret;
use relogin_farm::store::{write_private_file, write_secret_file, Cipher};

/// Never overwrites: an existing file is a reason to stop, not to replace it.
pub fn run(config_path: &Path, tls: bool) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    let data = Path::new("data");
    let key_file = data.join("farm.key");
    let token_file = data.join("admin.token");
    let tls_files = tls.then(|| config::TlsFiles {
        cert_file: data.join("tls.crt"),
        key_file: data.join("tls.key"),
    });
    let mut files = vec![config_path, &key_file, &token_file];
    if let Some(t) = &tls_files {
        files.extend([t.cert_file.as_path(), t.key_file.as_path()]);
    }
    for f in files {
        if f.exists() {
            bail!(
                "{} already exists; init does not overwrite anything",
                f.display()
            );
        }
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(data)
        .context("creating data/")?;
    write_secret_file(&key_file, &Cipher::generate_key_text()).context("writing the store key")?;
    let token = Secret::new(format!("rfa_{}", random_token()));
    write_secret_file(&token_file, &token).context("writing the admin token")?;
    let fingerprint = match &tls_files {
        Some(t) => Some(write_self_signed(t)?),
        None => None,
    };
    let driver_dir = std::path::absolute(relogin_farm::browser::runner::INSTALL_DIR)?;
    let driver = relogin_farm::browser::runner::driver_cli_js_in(&driver_dir);
    // 0600: a farm.toml may come to hold a client secret.
    write_private_file(
        config_path,
        config::init_template(
            &token_file.display().to_string(),
            &driver.display().to_string(),
            tls_files.as_ref(),
        )
        .as_bytes(),
    )
    .with_context(|| format!("writing {}", config_path.display()))?;
    println!(
        "wrote {} (edit the [[provider]] section)",
        config_path.display()
    );
    println!(
        "wrote {} (0600) — back it up: without it the database cannot be read",
        key_file.display()
    );
    println!(
        "wrote {} (0600) — the admin API token",
        token_file.display()
    );
    if let (Some(t), Some(fingerprint)) = (&tls_files, fingerprint) {
        println!(
            "wrote {} and {} (0600) — a self-signed certificate for {}",
            t.cert_file.display(),
            t.key_file.display(),
            relogin_farm::listener::tls::host_names().join(", ")
        );
        println!("certificate SHA-256 fingerprint: {fingerprint}");
        println!(
            "clients on other machines trust that certificate (copy {}; the CLI: \
             RELOGIN_FARM_CA_FILE); set server.listen to an address they reach",
            t.cert_file.display()
        );
    }
    println!(
        "installing the Playwright driver into {} (npm ci)…",
        driver_dir.display()
    );
    super::runtime()?
        .block_on(relogin_farm::browser::runner::install_driver(&driver_dir))
        .map_err(anyhow::Error::msg)
        .context("the browser relogin needs the Playwright driver")?;
    println!("installed {}", driver.display());
    println!(
        "next: relogin-farm serve --config {}",
        config_path.display()
    );
    Ok(())
}

/// Writes a new self-signed certificate and its key (both 0600); returns
/// the certificate's fingerprint.
fn write_self_signed(files: &config::TlsFiles) -> Result<String> {
    let made = relogin_farm::listener::tls::self_signed(relogin_farm::listener::tls::host_names())
        .context("generating the TLS certificate")?;
    write_secret_file(&files.key_file, &made.key_pem).context("writing the TLS key")?;
    write_secret_file(&files.cert_file, &Secret::new(made.cert_pem))
        .context("writing the TLS certificate")?;
    Ok(made.fingerprint)
}

fn random_token() -> String {
    let key = Cipher::generate_key_text();
    key.expose()
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .collect()
}
