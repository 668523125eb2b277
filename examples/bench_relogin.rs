//! The Rust side of `scripts/bench-relogin`: browser relogins through the
//! farm's own engine (`BrowserPool::run_login`, one persistent profile,
//! Debian's Chromium), timed run by run.
//!
//!   cargo run --release --example bench_relogin -- run \
//!       --issuer http://127.0.0.1:PORT --redirect-uri http://127.0.0.1:PORT2/callback \
//!       --user bench-rust --profiles /tmp/bench-profiles --mode live --runs 7
//!   cargo run --release --example bench_relogin -- flags   # the Chromium flags of a default launch, one a line
//!
//! Every run gets a fresh PKCE authorize URL. `full` ends the provider's
//! sessions (`POST /__test/end-sessions`, test provider only) before each
//! run so the login form shows; `live` keeps the session the warm-up run
//! made. One untimed warm-up run comes first. Prints one JSON line per run:
//! `{"impl":"rust","mode":"live","run":1,"ms":…,"redirect_ms":…}`, where
//! `redirect_ms` runs from the browser launch to the captured redirect and
//! `ms` is the whole relogin up to the clean close. With `--paced` each run
//! (warm-up included) waits for a line on stdin, so a caller can interleave
//! implementations; EOF ends the process.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use clap::{Parser, Subcommand, ValueEnum};
use rand::RngCore;
use relogin_farm::browser::{BrowserConfig, BrowserPool, LoginScript, Vars};
use relogin_farm::secret::Secret;
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, BufReader, Lines, Stdin};
use url::Url;

/// The test provider's login, as a person would record it.
const SCRIPT: &str = r##"provider = "bench"
step = [
  { goto = "${authorize_url}" },
  { fill = "#username", value = "${secret:username}", optional = true },
  { fill = "#password", value = "${secret:password}", optional = true },
  { click = "#submit", optional = true },
  { click = "#allow", optional = true },
]
"##;

const RUN_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Parser)]
#[command(about = "Times browser relogins through relogin-farm's engine")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Prints the Chromium flags the engine launches with, one a line.
    Flags,
    /// Runs the flow and prints one JSON line per run.
    Run(Box<RunArgs>),
}

#[derive(clap::Args)]
struct RunArgs {
    /// The provider's issuer (discovery at <issuer>/.well-known/openid-configuration).
    #[arg(long)]
    issuer: Url,
    /// A redirect URI registered for client `daemon-web`; nothing needs to listen there.
    #[arg(long)]
    redirect_uri: Url,
    /// Test-provider user; the password is `<user>-password`.
    #[arg(long)]
    user: String,
    /// Profiles dir; the profile is `<profiles>/<user>`.
    #[arg(long)]
    profiles: PathBuf,
    #[arg(long, value_enum)]
    mode: Mode,
    /// Timed runs, after one untimed warm-up run.
    #[arg(long, default_value_t = 7)]
    runs: usize,
    /// Wait for a line on stdin before each run (warm-up included).
    #[arg(long)]
    paced: bool,
    /// Where scripts/playwright (the driver) lives.
    #[arg(long, default_value = env!("CARGO_MANIFEST_DIR"))]
    project: PathBuf,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// The profile holds a live provider session: no login form.
    Live,
    /// Sessions ended first: username, password, submit.
    Full,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Live => "live",
            Mode::Full => "full",
        }
    }

    /// The steps that must act in a timed run (the warm-up may also consent).
    fn expected_steps(self) -> &'static [usize] {
        match self {
            Mode::Live => &[0],
            Mode::Full => &[0, 1, 2, 3],
        }
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Flags => {
            relogin_farm::config::BrowserSettings::default()
                .engine()
                .chromium_args()
                .iter()
                .for_each(|f| println!("{f}"));
            Ok(())
        }
        Command::Run(args) => Bench::new(*args).await?.run().await,
    }
}

struct Bench {
    args: RunArgs,
    pool: BrowserPool,
    script: LoginScript,
    authorize_endpoint: Url,
    http: reqwest::Client,
}

impl Bench {
    async fn new(args: RunArgs) -> Result<Bench> {
        let http = reqwest::Client::new();
        let authorize_endpoint = discover_authorize_endpoint(&http, &args.issuer).await?;
        // The driver wants an absolute profile path.
        let profiles = std::path::absolute(&args.profiles)?;
        let cfg = BrowserConfig {
            max_concurrent: 1,
            artifacts_dir: profiles.join("artifacts"),
            profiles_dir: profiles,
            ..relogin_farm::config::BrowserSettings::defaults_under(&args.project).engine()
        };
        Ok(Bench {
            pool: BrowserPool::new(cfg),
            script: LoginScript::parse(SCRIPT).map_err(|e| anyhow!("bench script: {e}"))?,
            authorize_endpoint,
            http,
            args,
        })
    }

    async fn run(&self) -> Result<()> {
        let mut stdin = BufReader::new(tokio::io::stdin()).lines();
        for run in 0..=self.args.runs {
            if self.args.paced && !go_ahead(&mut stdin).await? {
                break;
            }
            self.run_once(run).await?;
        }
        Ok(())
    }

    /// Run 0 is the warm-up.
    async fn run_once(&self, run: usize) -> Result<()> {
        let args = &self.args;
        if args.mode == Mode::Full {
            self.end_sessions().await?;
        }
        let password = format!("{}-password", args.user);
        let vars = Vars::new()
            .with_authorize_url(self.authorize_url())
            .with_secret("username", Secret::new(args.user.as_str()))
            .with_secret("password", Secret::new(password));
        let started = Instant::now();
        let outcome = self
            .pool
            .run_login(
                &args.user,
                &self.script,
                &vars,
                &args.redirect_uri,
                RUN_TIMEOUT,
            )
            .await
            .map_err(|f| anyhow!("run {run}: {f}"))?;
        let whole = started.elapsed();
        let expected = args.mode.expected_steps();
        if run > 0 && outcome.steps_acted != expected {
            bail!(
                "run {run}: steps {:?} acted, expected {expected:?} for mode {}",
                outcome.steps_acted,
                args.mode.name()
            );
        }
        let ms = |d: Duration| (d.as_secs_f64() * 10_000.0).round() / 10.0;
        let line = json!({
            "impl": "rust",
            "mode": args.mode.name(),
            "run": run,
            "warmup": run == 0,
            "ms": ms(whole),
            "redirect_ms": ms(outcome.elapsed),
            "steps": outcome.steps_acted,
        });
        println!("{line}");
        Ok(())
    }

    /// `<authorize endpoint>?client_id=daemon-web&…` with a fresh state and
    /// PKCE S256 challenge (the verifier is not kept: nothing redeems the code).
    fn authorize_url(&self) -> Url {
        let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(random_b64url().as_bytes()));
        let mut url = self.authorize_endpoint.clone();
        url.query_pairs_mut()
            .append_pair("client_id", "daemon-web")
            .append_pair("response_type", "code")
            .append_pair("redirect_uri", self.args.redirect_uri.as_str())
            .append_pair("scope", "openid")
            .append_pair("state", &random_b64url())
            .append_pair("code_challenge", &challenge)
            .append_pair("code_challenge_method", "S256");
        url
    }

    async fn end_sessions(&self) -> Result<()> {
        let url = self.args.issuer.join("/__test/end-sessions")?;
        self.http
            .post(url)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .context("POST /__test/end-sessions")?;
        Ok(())
    }
}

async fn discover_authorize_endpoint(http: &reqwest::Client, issuer: &Url) -> Result<Url> {
    let url = format!(
        "{}/.well-known/openid-configuration",
        issuer.as_str().trim_end_matches('/')
    );
    let doc: serde_json::Value = http
        .get(&url)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .with_context(|| format!("discovery at {url}"))?
        .json()
        .await?;
    let endpoint = doc["authorization_endpoint"]
        .as_str()
        .ok_or_else(|| anyhow!("{url} has no authorization_endpoint"))?;
    Ok(Url::parse(endpoint)?)
}

/// 32 random bytes, base64url without padding (43 characters).
fn random_b64url() -> String {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Waits for the caller's next line; `false` on EOF.
async fn go_ahead(stdin: &mut Lines<BufReader<Stdin>>) -> Result<bool> {
    Ok(stdin.next_line().await?.is_some())
}
