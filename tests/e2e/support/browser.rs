//! The user's browser: `tests/oidc/browse.mjs` signs in at the provider
//! (login and consent pages, its own fresh cookie jar) and reports where the
//! provider redirected it.

use super::oidc_dir;
use super::process::clean_command;

/// Signs `user` in at `authorize_url` and returns the redirect URL
/// (`…?code=…&state=…`) without opening it: what a person would paste.
pub fn sign_in(authorize_url: &str, user: &str) -> String {
    browse(authorize_url, user, false).0
}

/// Signs `user` in and opens the redirect like a browser would (the farm's
/// loopback listener receives it); returns the HTTP status of that page.
pub fn sign_in_and_follow(authorize_url: &str, user: &str) -> u16 {
    let (redirect, followed) = browse(authorize_url, user, true);
    followed
        .unwrap_or_else(|| panic!("browse.mjs --follow printed no FOLLOWED line after {redirect}"))
}

fn browse(authorize_url: &str, user: &str, follow: bool) -> (String, Option<u16>) {
    let oidc = oidc_dir();
    let mut cmd = clean_command("node");
    cmd.arg(oidc.join("browse.mjs"))
        .arg(authorize_url)
        .args(["--user", user]);
    if follow {
        cmd.arg("--follow");
    }
    let out = cmd.output().expect("run browse.mjs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "browse.mjs as {user} failed ({}): {stderr}\nstdout: {stdout}",
        out.status
    );
    let mut lines = stdout.lines();
    let redirect = lines
        .next()
        .unwrap_or_else(|| panic!("browse.mjs printed nothing; stderr: {stderr}"))
        .to_string();
    let followed = lines.find_map(|l| l.strip_prefix("FOLLOWED ")).map(|s| {
        s.trim()
            .parse()
            .unwrap_or_else(|_| panic!("bad FOLLOWED line: {s}"))
    });
    (redirect, followed)
}
