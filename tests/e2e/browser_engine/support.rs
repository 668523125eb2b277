//! Test fixtures: the real test OIDC provider (started by the e2e
//! harness's `support::provider`), PKCE authorize URLs, a pool on a private
//! profiles dir, and process checks. Also compiled into `tests/headed.rs`,
//! beside the e2e `support` module it uses.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Once;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use relogin_farm::browser::runner::{doctor, BrowserConfig, BrowserPool, LoginOutcome, RunFailure};
use relogin_farm::browser::script::{LoginScript, Vars};
use relogin_farm::config::BrowserSettings;
use relogin_farm::secret::Secret;
use sha2::{Digest, Sha256};
use url::Url;

pub use crate::support::free_port;
use crate::support::provider::Provider as OidcProvider;
use crate::support::{oidc_dir, repo_root};

/// The provider's access-token lifetime (its own default).
const ACCESS_TTL_S: u32 = 5;

/// The example script shipped in `scripts/login/`, with the user name
/// from a secret so it serves any test user.
pub fn demo_script() -> String {
    include_str!("../../../scripts/login/demo-alice.toml")
        .replace(r#"value = "alice""#, r#"value = "${secret:username}""#)
}

/// For users without a second factor (no `totp` secret to expand).
pub const PASSWORD_SCRIPT: &str = r##"provider = "demo"
[[step]]
goto = "${authorize_url}"
[[step]]
fill = "#username"
value = "${secret:username}"
optional = true
[[step]]
fill = "#password"
value = "${secret:password}"
optional = true
[[step]]
click = "#submit"
optional = true
[[step]]
click = "#allow"
optional = true
"##;

pub fn script(text: &str) -> LoginScript {
    LoginScript::parse(text).unwrap()
}

/// Fails loudly (never skips) when something the browser needs is missing.
pub fn require_tools() {
    static CHECKED: Once = Once::new();
    CHECKED.call_once(|| {
        oidc_dir();
        let cfg = BrowserSettings::defaults_under(repo_root()).engine();
        // Its own thread: callers are async tests, already inside a runtime.
        let problems = std::thread::spawn(move || {
            tokio::runtime::Runtime::new()
                .unwrap()
                .block_on(doctor(&cfg))
        })
        .join()
        .unwrap();
        assert!(
            problems.is_empty(),
            "browser tests need these fixed first:\n{}",
            problems
                .iter()
                .map(|p| format!("  {}\n    fix: {}", p.problem, p.fix))
                .collect::<String>()
        );
    });
}

/// A pool whose profiles and artifacts live in a fresh temp dir.
pub struct TestPool {
    pub pool: BrowserPool,
    pub dir: tempfile::TempDir,
}

impl TestPool {
    pub fn new(max_concurrent: usize) -> TestPool {
        TestPool::with_allowed_hosts(max_concurrent, &[])
    }

    /// A pool whose relogin pages may only be on `hosts` (and the run's
    /// authorize and redirect hosts); none: any host.
    pub fn with_allowed_hosts(max_concurrent: usize, hosts: &[&str]) -> TestPool {
        require_tools();
        let dir = tempfile::tempdir().unwrap();
        let cfg = BrowserConfig {
            max_concurrent,
            profiles_dir: dir.path().join("profiles"),
            artifacts_dir: dir.path().join("artifacts"),
            allowed_hosts: hosts.iter().map(|h| h.to_string()).collect(),
            ..BrowserSettings::defaults_under(repo_root()).engine()
        };
        TestPool {
            pool: BrowserPool::new(cfg),
            dir,
        }
    }

    /// Runs `script` on `profile` against the test provider, within
    /// [`RUN_TIMEOUT`].
    pub async fn login(
        &self,
        provider: &Provider,
        profile: &str,
        script: &LoginScript,
        vars: &Vars,
    ) -> Result<LoginOutcome, RunFailure> {
        self.pool
            .run_login(profile, script, vars, &provider.redirect_uri, RUN_TIMEOUT)
            .await
    }

    /// Chromium processes (not zombies) whose command line names this
    /// pool's profiles dir, i.e. browsers this test started.
    pub fn chromium_pids(&self) -> Vec<u32> {
        chromium_pids_under(&self.dir.path().join("profiles"))
    }

    /// Distinct profiles with a running Chromium right now.
    pub fn running_profiles(&self) -> usize {
        let needle = format!(
            "--user-data-dir={}",
            self.dir.path().join("profiles").display()
        );
        let mut dirs: Vec<String> = pgrep(&needle)
            .into_iter()
            .filter_map(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).ok())
            .filter_map(|cmd| {
                cmd.split(|b| *b == 0)
                    .map(|a| String::from_utf8_lossy(a).to_string())
                    .find(|a| a.starts_with(&needle))
            })
            .collect();
        dirs.sort();
        dirs.dedup();
        dirs.len()
    }

    /// Asserts no browser of this pool is left (zombies are reaped by init
    /// a moment later; they have no command line and do not match).
    pub fn assert_no_chromium_left(&self) {
        let pids = self.chromium_pids();
        assert!(
            pids.is_empty(),
            "chromium still running after the runs: {pids:?}"
        );
    }
}

pub fn chromium_pids_under(dir: &Path) -> Vec<u32> {
    pgrep(&dir.display().to_string())
}

/// `pgrep -f PATTERN` (fixed string), excluding ourselves.
fn pgrep(pattern: &str) -> Vec<u32> {
    let escaped = regex_escape(pattern);
    let out = Command::new("pgrep")
        .args(["-f", "--"])
        .arg(&escaped)
        .output()
        .expect("pgrep");
    let me = std::process::id();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .filter(|pid| *pid != me)
        .collect()
}

fn regex_escape(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            let special = "\\.+*?()|[]{}^$".contains(c);
            special
                .then_some('\\')
                .into_iter()
                .chain(std::iter::once(c))
        })
        .collect()
}

/// The test OIDC provider (tests/oidc/provider.mjs), started as the e2e
/// tests start it; killed on drop.
pub struct Provider {
    _oidc: OidcProvider,
    /// Its log (kept while it runs).
    _dir: tempfile::TempDir,
    pub issuer: Url,
    pub redirect_uri: Url,
}

impl Provider {
    /// Starts a provider whose client `daemon-web` redirects to a free
    /// loopback port where nothing listens (the browser must not need it).
    pub fn start() -> Provider {
        Provider::start_with_redirect(free_port())
    }

    pub fn start_with_redirect(callback_port: u16) -> Provider {
        require_tools();
        let dir = tempfile::tempdir().unwrap();
        let redirect_uri = format!("http://127.0.0.1:{callback_port}/callback");
        let oidc = OidcProvider::start_with_redirect(
            &dir.path().join("provider.log"),
            ACCESS_TTL_S,
            redirect_uri.clone(),
        );
        Provider {
            issuer: Url::parse(&oidc.issuer).unwrap(),
            redirect_uri: Url::parse(&redirect_uri).unwrap(),
            _oidc: oidc,
            _dir: dir,
        }
    }

    /// A fresh authorize request (PKCE S256) for client daemon-web.
    pub fn authorize(&self) -> Authorize {
        let verifier = random_token();
        let challenge = b64url(&Sha256::digest(verifier.as_bytes()));
        let state = random_token();
        let mut url = self.issuer.join("/auth").unwrap();
        url.query_pairs_mut()
            .append_pair("client_id", "daemon-web")
            .append_pair("response_type", "code")
            .append_pair("redirect_uri", self.redirect_uri.as_str())
            .append_pair("scope", "openid offline_access")
            .append_pair("code_challenge", &challenge)
            .append_pair("code_challenge_method", "S256")
            .append_pair("state", &state);
        Authorize {
            url,
            verifier,
            state,
        }
    }

    /// Variables for `user`: username, password and (for `totp-` users)
    /// the TOTP seed the provider gives out for tests.
    pub async fn vars(&self, user: &str, password: &str) -> (Vars, Authorize) {
        let auth = self.authorize();
        let mut vars = Vars::new()
            .with_authorize_url(auth.url.clone())
            .with_secret("username", Secret::new(user))
            .with_secret("password", Secret::new(password));
        if let Some(seed) = self.totp_seed(user).await {
            vars = vars.with_secret("totp", Secret::new(seed));
        }
        (vars, auth)
    }

    pub async fn totp_seed(&self, user: &str) -> Option<String> {
        let url = self.issuer.join(&format!("/__test/users/{user}")).unwrap();
        let body: serde_json::Value = reqwest::get(url).await.unwrap().json().await.unwrap();
        body["totp_seed"].as_str().map(str::to_string)
    }

    /// Ends every browser session at the provider: the next authorize shows
    /// the login form again.
    pub async fn end_sessions(&self) {
        let url = self.issuer.join("/__test/end-sessions").unwrap();
        let resp = reqwest::Client::new().post(url).send().await.unwrap();
        assert!(resp.status().is_success());
    }

    /// Redeems the code at the token endpoint: proves the captured redirect
    /// is a real, unused authorization code for this PKCE verifier.
    pub async fn redeem(&self, redirect: &Url, auth: &Authorize) -> serde_json::Value {
        let query: std::collections::HashMap<_, _> = redirect.query_pairs().into_owned().collect();
        assert_eq!(query.get("state"), Some(&auth.state), "state round-trips");
        let code = query.get("code").expect("redirect carries a code");
        let resp = reqwest::Client::new()
            .post(self.issuer.join("/token").unwrap())
            .form(&[
                ("grant_type", "authorization_code"),
                ("code", code),
                ("redirect_uri", self.redirect_uri.as_str()),
                ("client_id", "daemon-web"),
                ("code_verifier", &auth.verifier),
            ])
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let body: serde_json::Value = resp.json().await.unwrap();
        assert!(status.is_success(), "token endpoint said {status}: {body}");
        body
    }
}

pub struct Authorize {
    pub url: Url,
    pub verifier: String,
    pub state: String,
}

fn random_token() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let seed = format!(
        "{nanos}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    b64url(&Sha256::digest(seed.as_bytes()))
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

pub const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// Serves `html` at `/` on a loopback port, forever (test lifetime).
pub async fn serve_html(html: String) -> Url {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = Url::parse(&format!("http://{}/", listener.local_addr().unwrap())).unwrap();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let html = html.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 8192];
                let _ = sock.read(&mut buf).await;
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    html.len()
                );
                let _ = sock.write_all(head.as_bytes()).await;
                let _ = sock.write_all(html.as_bytes()).await;
            });
        }
    });
    url
}

/// An 8-bit RGB or RGBA, non-interlaced PNG (what Chromium's screenshots
/// are), decoded to rows of RGB pixels.
pub struct Png {
    pub width: usize,
    pub height: usize,
    rgb: Vec<[u8; 3]>,
}

impl Png {
    pub fn read(path: &Path) -> Png {
        let bytes = std::fs::read(path).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
        let (mut pos, mut header, mut data) = (8, None, Vec::new());
        while pos + 8 <= bytes.len() {
            let len = u32::from_be_bytes(bytes[pos..pos + 4].try_into().unwrap()) as usize;
            let kind = &bytes[pos + 4..pos + 8];
            let body = &bytes[pos + 8..pos + 8 + len];
            match kind {
                b"IHDR" => header = Some(body.to_vec()),
                b"IDAT" => data.extend_from_slice(body),
                _ => {}
            }
            pos += 12 + len;
        }
        let h = header.expect("IHDR");
        let width = u32::from_be_bytes(h[0..4].try_into().unwrap()) as usize;
        let height = u32::from_be_bytes(h[4..8].try_into().unwrap()) as usize;
        let channels = match (h[8], h[9], h[12]) {
            (8, 2, 0) => 3,
            (8, 6, 0) => 4,
            other => panic!("unsupported PNG (depth, colour type, interlace) {other:?}"),
        };
        let mut raw = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::ZlibDecoder::new(&data[..]), &mut raw)
            .unwrap();
        let stride = width * channels;
        let mut prev = vec![0u8; stride];
        let mut rgb = Vec::with_capacity(width * height);
        for row in raw.chunks(stride + 1).take(height) {
            let (filter, line) = (row[0], &row[1..]);
            let mut cur = vec![0u8; stride];
            for i in 0..stride {
                let a = if i >= channels { cur[i - channels] } else { 0 } as i16;
                let b = prev[i] as i16;
                let c = if i >= channels { prev[i - channels] } else { 0 } as i16;
                let predictor = match filter {
                    0 => 0,
                    1 => a,
                    2 => b,
                    3 => (a + b) / 2,
                    4 => {
                        let p = a + b - c;
                        let (pa, pb, pc) = ((p - a).abs(), (p - b).abs(), (p - c).abs());
                        if pa <= pb && pa <= pc {
                            a
                        } else if pb <= pc {
                            b
                        } else {
                            c
                        }
                    }
                    f => panic!("bad PNG filter {f}"),
                };
                cur[i] = line[i].wrapping_add(predictor as u8);
            }
            rgb.extend(cur.chunks(channels).map(|p| [p[0], p[1], p[2]]));
            prev = cur;
        }
        Png { width, height, rgb }
    }

    /// The distinct colours in the rectangle `x0..x1` × `y0..y1`.
    pub fn colours_in(&self, x0: usize, y0: usize, x1: usize, y1: usize) -> Vec<[u8; 3]> {
        assert!(
            x1 <= self.width && y1 <= self.height,
            "the box is inside the image"
        );
        let mut colours: Vec<[u8; 3]> = (y0..y1)
            .flat_map(|y| (x0..x1).map(move |x| (x, y)))
            .map(|(x, y)| self.rgb[y * self.width + x])
            .collect();
        colours.sort();
        colours.dedup();
        colours
    }
}
