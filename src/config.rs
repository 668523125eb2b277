//! relogin-farm's configuration.
//!
//! Each `[section]` is declared once, as a `config_section!` table of its
//! keys (see "The key tables" below): the struct, its defaults, the reading,
//! the environment variable names and the README's key table all come from
//! it.
//!
//! Layers, lowest first: built-in defaults, the TOML file, `RELOGIN_FARM_*`
//! environment variables, command-line flags ([`Overrides`]). The file is
//! parsed into a plain [`toml::Table`] and read key by key through a
//! `Section`, which removes what it reads: whatever is left over is an
//! unknown key, and every error names the key by its full path
//! (`scheduler.refresh_margin`, `provider[1].client_id`) plus, when an
//! environment variable supplied the value, that variable. The environment is
//! passed in as pairs rather than read from the process, so all of this is
//! testable without touching global state.
//!
//! Secrets (admin token, store key, client secrets, webhook keys) are held
//! as [`Secret`] from the moment they are read and no error message ever
//! contains one. Webhook URLs are treated as secrets too (chat services put
//! the credential in the path): errors never quote them and `Debug` shows
//! only their origin.
//! Relative paths are kept relative: the caller resolves them.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::{self, Display};
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;
use std::{fs, io};

use toml::{Table, Value};
use url::Url;

use crate::domain::provider::{BodyFormat, Class, LoginKind, Rule};
use crate::events::EventKind;
use crate::secret::Secret;

pub mod presets;

/// The documented example configuration, also the `relogin-farm init`
/// template (see [`init_template`]).
pub const EXAMPLE_TOML: &str = include_str!("../config.example.toml");

/// Prefix of every environment variable the configuration reads.
pub const ENV_PREFIX: &str = "RELOGIN_FARM_";

/// `RELOGIN_FARM_*` variables that other parts of relogin-farm read, so the
/// configuration must not reject them as unknown. An entry ending in `*`
/// matches every variable starting with the part before it. Add to this list
/// when a new such variable appears.
pub const OTHER_ENV_VARS: &[&str] = &[
    "RELOGIN_FARM_CONFIG",
    "RELOGIN_FARM_DEMO_*",
    "RELOGIN_FARM_CA_FILE",
    "RELOGIN_FARM_URL",
    "RELOGIN_FARM_CLIENT_KEY",
];

/// Upper bound on every duration: far beyond any sensible setting, and low
/// enough that adding it to a timestamp can never overflow downstream.
const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// Authorization request parameters relogin-farm sets itself; letting
/// `extra_authorize_params` override them would break the login flow.
const RESERVED_AUTHORIZE_PARAMS: &[&str] = &[
    "client_id",
    "code_challenge",
    "code_challenge_method",
    "redirect_uri",
    "response_type",
    "scope",
    "state",
];

/// Token request parameters relogin-farm sets itself; `token_params` may
/// not give them.
const RESERVED_TOKEN_PARAMS: &[&str] = &[
    "client_id",
    "code",
    "code_verifier",
    "device_code",
    "grant_type",
    "redirect_uri",
    "refresh_token",
    "scope",
    "state",
];

/// Chromium flags relogin-farm (or the Playwright driver) sets itself;
/// `browser.extra_args` may not give them. Playwright rejects the first
/// three outright; `--headless` is what `browser.headless` controls.
const RESERVED_CHROMIUM_ARGS: &[&str] = &[
    "--user-data-dir",
    "--remote-debugging-pipe",
    "--remote-debugging-port",
    "--headless",
];

// ---------------------------------------------------------------------------
// Public types
// ---------------------------------------------------------------------------

/// The whole configuration, validated.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Config {
    pub server: ServerConfig,
    pub store: StoreConfig,
    pub backup: BackupConfig,
    pub scheduler: SchedulerConfig,
    pub rotation: RotationConfig,
    pub log: LogConfig,
    pub events: EventsConfig,
    pub digest: DigestConfig,
    /// `[[webhook]]` blocks, in file order (the index is the `N` of their
    /// `RELOGIN_FARM_WEBHOOK_<N>_SECRET` variables).
    pub webhooks: Vec<WebhookConfig>,
    pub browser: BrowserSettings,
    /// `[[provider]]` blocks, in file order; names are unique.
    pub providers: Vec<ProviderConfig>,
}

impl WebhookConfig {
    /// Whether events of `kind` go to this webhook.
    pub fn wants(&self, kind: &str) -> bool {
        self.events.is_empty() || self.events.iter().any(|k| k == kind)
    }
}

impl fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("url", &RedactedUrl(&self.url))
            .field("events", &self.events)
            .field("secret", &self.secret)
            .field("max_attempts", &self.max_attempts)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// A URL shown as its origin only: `https://hooks.example.com/***`.
struct RedactedUrl<'a>(&'a Url);

impl fmt::Debug for RedactedUrl<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{}/***\"", self.0.origin().ascii_serialization())
    }
}

/// Where a provider's OAuth endpoints come from.
#[derive(Debug, Clone, PartialEq)]
pub enum Endpoints {
    /// OIDC discovery from `<issuer>/.well-known/openid-configuration`.
    Discovery { issuer: Url },
    Manual {
        authorize_url: Url,
        token_url: Url,
        introspection_url: Option<Url>,
    },
    /// A device-flow provider without discovery (`login = "device"`): no
    /// authorize URL.
    Device {
        device_authorization_url: Url,
        token_url: Url,
    },
}

/// Command-line flags; they beat every other layer.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub listen: Option<SocketAddr>,
    /// Also moves the default `store.key_file` along with it.
    pub store_path: Option<PathBuf>,
    pub log_level: Option<String>,
}

/// How a lease picks among a provider's usable accounts (owned by the
/// domain, which decides with it).
pub use crate::domain::{Rate, Strategy};

crate::named_enum! {
    /// How a webhook's body is written (`webhook.format`).
    #[derive(Default)]
    pub enum WebhookFormat {
        /// The event as JSON.
        #[default]
        Json = "json",
        /// The event's text (a digest: its plain-text summary), for push
        /// services that show the body as it is (ntfy, Gotify).
        Text = "text",
    }
}

crate::named_enum! {
    /// Log line format.
    #[derive(Default)]
    pub enum LogFormat {
        #[default]
        Text = "text",
        Json = "json",
    }
}

/// A string that is none of an enum's spellings.
pub use crate::names::ParseEnumError;

/// Why the configuration could not be loaded. Every variant names the key or
/// environment variable at fault; none ever contains a secret value.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {}", path.display())]
    ReadFile { path: PathBuf, source: io::Error },
    #[error("TOML syntax error at line {line}, column {column}: {message}")]
    Syntax {
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{key}: unknown key")]
    UnknownKey { key: String },
    #[error("{key}: missing")]
    Missing { key: String },
    /// `key` is the full key name, with ` (from VAR)` when the environment
    /// set it, or the variable's name for variables without a key.
    #[error("{key}: {reason}")]
    Invalid { key: String, reason: String },
    #[error("{var}: unknown variable ({reason})")]
    UnknownEnv { var: String, reason: String },
    #[error("{key}: cannot read secret file {}", path.display())]
    SecretFile {
        key: String,
        path: PathBuf,
        source: io::Error,
    },
}

type Result<T, E = ConfigError> = std::result::Result<T, E>;

// ---------------------------------------------------------------------------
// Defaults outside the key tables: derived defaults
// ---------------------------------------------------------------------------

/// `farm.key` next to the database, so moving `store.path` (or passing
/// `--store-path`) moves the key along unless `key_file` is set.
fn default_key_file(store_path: &Path) -> PathBuf {
    store_path.with_file_name("farm.key")
}

/// `backups/` next to the database; moves with it like [`default_key_file`].
fn default_backup_dir(store_path: &Path) -> PathBuf {
    store_path.with_file_name("backups")
}

// ---------------------------------------------------------------------------
// The key tables
// ---------------------------------------------------------------------------

/// One key of a `[section]`, as documented: the README's key table and the
/// check of `config.example.toml` are made from these.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyDoc {
    /// Full name: `server.listen`.
    pub key: String,
    /// The Rust type it is read into.
    pub ty: &'static str,
    /// The built-in default as it is written in the file (`"10m"`, `8`), or
    /// `None` when it is not one value (derived from another key, or none).
    pub default: Option<Value>,
    /// The default as the README shows it.
    pub shown_default: String,
    /// The environment variable that sets it, if any.
    pub env: Option<String>,
    /// What it means (its doc comment, one line).
    pub doc: String,
}

/// How the environment can set a key.
enum KeyEnv {
    /// Its own variable, [`env_var`] of the key (a `[section]`'s scalars).
    Scalar,
    /// Not at all.
    None,
    /// Some other way, spelled out (a block's secret).
    Other(&'static str),
}

impl KeyDoc {
    #[allow(clippy::too_many_arguments)]
    fn new(
        section: &str,
        name: &str,
        ty: &'static str,
        env: KeyEnv,
        default: Option<Value>,
        shown: Option<&str>,
        required: bool,
        doc: &[&str],
    ) -> Self {
        let key = format!("{section}.{name}");
        let shown_default = match (shown, &default) {
            (Some(shown), _) => shown.to_owned(),
            (None, Some(default)) => show_value(default),
            (None, None) if required => REQUIRED.to_owned(),
            (None, None) => NO_DEFAULT.to_owned(),
        };
        KeyDoc {
            env: match env {
                KeyEnv::Scalar => Some(env_var(&key)),
                KeyEnv::None => None,
                KeyEnv::Other(text) => Some(text.to_owned()),
            },
            ty,
            shown_default,
            default: default.filter(|_| shown.is_none()),
            doc: doc.iter().map(|l| l.trim()).collect::<Vec<_>>().join(" "),
            key,
        }
    }
}

/// A default as people read it: strings without their quotes.
fn show_value(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Declares a `[section]`, or the table of a repeated block, from one table
/// of its keys, generating the struct (one field per key, plus `extra`
/// fields the section's own code fills in), `read` (each key from the
/// environment, else the file, else the default, through the named `Section`
/// reader, whose errors name the key), and `keys()` (the [`KeyDoc`]s behind
/// `RELOGIN_FARM_*` names, the README table and the example-file check). A
/// `[section]` also gets its `Default`.
///
/// Adding a key is one entry (plus its doc comment):
///
/// ```text
/// /// What it means, one sentence (this is the README's text).
/// name: Type = default => reader(args);
/// ```
///
/// * `default` is the value as written in the TOML file (`"10m"`, `8`,
///   `true`); it goes through the reader like a configured value, so it is
///   validated too. Append `, shown "text"` when the real default is derived
///   by the section's own code (the key is then fixed up after `read`).
///   Without a default, the key ends in `, required` (absent: the error
///   `<key>: missing`, reported after unknown keys) or `, optional` (its type
///   is `Option<_>`, absent is `None`).
/// * `reader` is a `Section` method: `duration()`, `duration_or_zero()`,
///   `count(1..=16)`, `boolean()`, `path()`, `url()`, `parsed("what",
///   parse_fn)`, `table()` (a nested `[a.b]` table, itself declared by this
///   macro), … A check that needs a new rule gets a parse function, named here.
/// * A `[section]`'s keys get `RELOGIN_FARM_<SECTION>_<KEY>`; append
///   `, no_env` for keys the environment cannot set (arrays). A `block` (a
///   table that may repeat, `[[provider]]`) has no such variables; a key the
///   environment sets some other way (a block's secret) says how with
///   `, env "RELOGIN_FARM_…"` before the `=>`.
/// * Keys under `given` are read, checked and documented like the others but
///   are no fields: the `extra(sec)` expressions turn them into fields
///   (cross-key rules such as `issuer` vs `authorize_url`); these run after
///   every key is read, see the values by name and may use `?`.
/// * Then list the key in `config.example.toml` and run
///   `UPDATE_README=1 cargo test --lib config::tests::readme_key_table`.
macro_rules! config_section {
    (
        $(#[$meta:meta])*
        pub struct $ty:ident in $section:literal block { $($body:tt)* } $($rest:tt)*
    ) => {
        config_section!(@table [block] $(#[$meta])* pub struct $ty in $section { $($body)* } $($rest)*);
    };
    (
        $(#[$meta:meta])*
        pub struct $ty:ident in $section:literal { $($body:tt)* } $($rest:tt)*
    ) => {
        config_section!(@table [] $(#[$meta])* pub struct $ty in $section { $($body)* } $($rest)*);
    };
    (
        @table $mode:tt
        $(#[$meta:meta])*
        pub struct $ty:ident in $section:literal {
            $(
                $(#[doc = $doc:literal])*
                $field:ident : $fty:ty $(= $default:expr $(, shown $shown:literal)?)?
                    $(, env $env:literal)?
                    => $reader:ident ( $($arg:expr),* ) $(, $flag:ident)* ;
            )+
        }
        $(given {
            $(
                $(#[doc = $gdoc:literal])*
                $gfield:ident : $gty:ty $(= $gdefault:expr $(, shown $gshown:literal)?)?
                    $(, env $genv:literal)?
                    => $greader:ident ( $($garg:expr),* ) $(, $gflag:ident)* ;
            )+
        })?
        $(extra $(($xsec:ident))? {
            $(
                $(#[$xmeta:meta])*
                $xfield:ident : $xty:ty = $xvalue:expr ;
            )*
        })?
    ) => {
        $(#[$meta])*
        #[derive(Clone, PartialEq)]
        pub struct $ty {
            $( $(#[doc = $doc])* pub $field: $fty, )+
            $($( $(#[$xmeta])* pub $xfield: $xty, )*)?
        }

        impl $ty {
            /// The table's keys, in declaration order.
            pub fn keys() -> Vec<KeyDoc> {
                vec![
                    $(config_section!(@key $section $mode $field $fty
                        [$($default)?] [$($($shown)?)?] [$($env)?] [$($flag)*] [$($doc)*]),)+
                    $($(config_section!(@key $section $mode $gfield $gty
                        [$($gdefault)?] [$($($gshown)?)?] [$($genv)?] [$($gflag)*] [$($gdoc)*]),)+)?
                ]
            }
        }

        impl ReadTable for $ty {
            /// Reads every key of the table, rejects unknown ones, then
            /// checks required keys and computes the `extra` fields.
            fn read(sec: &mut Section<'_>) -> Result<Self> {
                $(config_section!(@read sec $field [$($default)?] $reader($($arg),*));)+
                $($(config_section!(@read sec $gfield [$($gdefault)?] $greader($($garg),*));)+)?
                sec.finish()?;
                $(
                    let $field: $fty = config_section!(@value sec, stringify!($field), $field,
                        [$($default)?] $($flag)*);
                )+
                $($(
                    let $gfield: $gty = config_section!(@value sec, stringify!($gfield), $gfield,
                        [$($gdefault)?] $($gflag)*);
                )+)?
                $(
                    $(let $xsec: &Section<'_> = &*sec;)?
                    $(let $xfield: $xty = $xvalue;)*
                )?
                Ok($ty { $($field,)+ $($($xfield,)*)? })
            }
        }

        config_section!(@default $ty $section $mode);
    };
    (@key $section:literal $mode:tt $field:ident $fty:ty
        [$($default:expr)?] [$($shown:literal)?] [$($env:literal)?] [$($flag:ident)*]
        [$($doc:literal)*]) => {{
        config_section!(@flags $($flag)*);
        KeyDoc::new(
            $section,
            stringify!($field),
            stringify!($fty),
            config_section!(@env $mode [$($env)?] $($flag)*),
            None $(.or(Some(Value::from($default))))?,
            None $(.or(Some($shown)))?,
            config_section!(@required $($flag)*),
            &[$($doc),*],
        )
    }};
    (@flags) => {};
    (@flags no_env $($flag:ident)*) => { config_section!(@flags $($flag)*) };
    (@flags required $($flag:ident)*) => { config_section!(@flags $($flag)*) };
    (@flags optional $($flag:ident)*) => { config_section!(@flags $($flag)*) };
    (@flags $other:ident $($flag:ident)*) => {
        compile_error!(concat!("unknown key flag `", stringify!($other), "`"))
    };
    (@read $sec:ident $field:ident [$($default:expr)?] $reader:ident ($($arg:expr),*)) => {
        $($sec.default_to(stringify!($field), Value::from($default));)?
        let $field = $sec.$reader(stringify!($field) $(, $arg)*)?;
    };
    (@env $mode:tt [$env:literal] $($flag:ident)*) => { KeyEnv::Other($env) };
    (@env [block] [] $($flag:ident)*) => { KeyEnv::None };
    (@env [] []) => { KeyEnv::Scalar };
    (@env [] [] no_env $($flag:ident)*) => { KeyEnv::None };
    (@env [] [] $other:ident $($flag:ident)*) => { config_section!(@env [] [] $($flag)*) };
    (@required) => { false };
    (@required required $($flag:ident)*) => { true };
    (@required $other:ident $($flag:ident)*) => { config_section!(@required $($flag)*) };
    (@value $sec:ident, $key:expr, $v:ident, [$default:expr] $($flag:ident)*) => {
        $v.expect("a key with a default has a value")
    };
    (@value $sec:ident, $key:expr, $v:ident, [] required $($flag:ident)*) => {
        $sec.required($key, $v)?
    };
    (@value $sec:ident, $key:expr, $v:ident, [] optional $($flag:ident)*) => { $v };
    (@value $sec:ident, $key:expr, $v:ident, [] $other:ident $($flag:ident)*) => {
        config_section!(@value $sec, $key, $v, [] $($flag)*)
    };
    (@value $sec:ident, $key:expr, $v:ident, []) => {
        compile_error!("a key without a default is `required` or `optional`")
    };
    (@default $ty:ident $section:literal [block]) => {};
    (@default $ty:ident $section:literal []) => {
        impl Default for $ty {
            fn default() -> Self {
                let env = EnvLayer::default();
                Self::read(&mut Section::new($section.to_owned(), Table::new(), &env))
                    .expect("the built-in defaults are valid")
            }
        }
    };
}

/// A table `config_section!` declared: how its keys are read.
trait ReadTable: Sized {
    fn read(sec: &mut Section<'_>) -> Result<Self>;
}

config_section! {
    /// `[server]`: the HTTP API.
    #[derive(Debug)]
    pub struct ServerConfig in "server" {
        /// API address (port 0: any free port; the farm prints `LISTENING http://…`).
        listen: SocketAddr = "127.0.0.1:8377" => parsed("socket address", SocketAddr::from_str);
        /// A lease's longest life (never longer than its token).
        lease_ttl: Duration = "10m" => duration();
        /// A request's head must arrive whole within this of its first byte (of the accept, TLS handshake included, for a connection's first request); see [Security](#security).
        header_read_timeout: Duration = "10s" => duration();
        /// A connection on which nothing moves for this long, while none of its requests is being handled, is closed.
        idle_timeout: Duration = "60s" => duration();
        /// Client connections open at once; never more than the open-file limit less 256 kept for the farm's own work.
        max_connections: usize = 1024, shown "open-file limit − 256, at most 1024" => count(1..=1_000_000);
        /// Client connections open at once from one IP address; more are closed at once.
        max_connections_per_ip: usize = 256 => count(1..=1_000_000);
    }
    given {
        /// File holding the admin token (or `RELOGIN_FARM_ADMIN_TOKEN`, the token itself).
        admin_token_file: Option<SecretRef>, env "RELOGIN_FARM_ADMIN_TOKEN_FILE"
            => secret_file(), optional;
        /// HTTPS: PEM certificate chain (with `tls_key_file`; both or neither), read again on SIGHUP; `init --tls` makes a self-signed pair.
        tls_cert_file: Option<PathBuf> => path(), optional, no_env;
        /// HTTPS: PEM private key of `tls_cert_file`.
        tls_key_file: Option<PathBuf> => path(), optional, no_env;
    }
    extra(sec) {
        /// `server.tls_cert_file` and `server.tls_key_file` (PEM), both or
        /// neither; read by the listener (at start and on SIGHUP).
        tls: Option<TlsFiles> = tls_files(sec, tls_cert_file, tls_key_file)?;
        /// Whether `max_connections` was configured (else the listener
        /// derives it from the open-file limit).
        max_connections_configured: bool = !sec.is_default("max_connections");
        /// From `RELOGIN_FARM_ADMIN_TOKEN`, or read from
        /// `RELOGIN_FARM_ADMIN_TOKEN_FILE` / `server.admin_token_file`.
        admin_token: Option<Secret> = resolve_secret(
            sec.env.admin_token.clone(),
            SecretVars { value: None, file: admin_token_file },
        )?;
    }
}

/// The certificate chain and private key of the HTTPS listener.
#[derive(Debug, Clone, PartialEq)]
pub struct TlsFiles {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

config_section! {
    /// `[store]`: the database and its key.
    #[derive(Debug)]
    pub struct StoreConfig in "store" {
        /// SQLite database.
        path: PathBuf = "data/farm.db" => path();
        /// 32-byte key, base64 (or `RELOGIN_FARM_KEY`, the key itself).
        // Not read here: the store reads (or creates) it.
        key_file: PathBuf = "data/farm.key", shown "<dir of path>/farm.key" => path();
        /// How long leases and reports (the usage history) are kept; the sweep prunes older ones.
        lease_retention: Duration = "30d" => duration();
    }
    extra {
        /// From `RELOGIN_FARM_KEY` (base64 of 32 bytes); when set the store uses
        /// it instead of [`Self::key_file`].
        key: Option<Secret> = None;
    }
}

config_section! {
    /// `[backup]`: scheduled copies of the database (see `store::backup`).
    #[derive(Debug)]
    pub struct BackupConfig in "backup" {
        /// Cron (seconds field, UTC) of the database backup; `""` disables.
        // `None` when disabled; `Schedule::source` gives the expression back.
        schedule: Option<cron::Schedule> = "0 30 3 * * *" => parsed("cron expression", parse_cron);
        /// Where backups go (0700, files 0600).
        dir: PathBuf = "data/backups", shown "<dir of store.path>/backups" => path();
        /// Backups kept (1 to 1000); the oldest are removed first.
        keep: usize = 7 => count(1..=1000);
    }
}

config_section! {
    /// `[scheduler]`: when tokens are refreshed.
    #[derive(Debug)]
    pub struct SchedulerConfig in "scheduler" {
        /// Refresh when less than this is left (at most half the token's life).
        refresh_margin: Duration = "5m" => duration();
        /// Cron (seconds field) of the health sweep; `""` disables.
        sweep: Option<cron::Schedule> = "0 */5 * * * *" => parsed("cron expression", parse_cron);
        /// Refresh grants in flight at once (1 to 1024).
        max_concurrent_refreshes: usize = 8 => count(1..=1024);
        /// Longest scheduler sleep, so it catches up soon after a suspend.
        max_sleep: Duration = "30s" => duration();
        /// First backoff after a transient refresh failure; it doubles up to `retry_max`.
        retry_initial: Duration = "5s" => duration();
        /// Longest backoff after a transient refresh failure.
        retry_max: Duration = "5m" => duration();
    }
}

config_section! {
    /// `[rotation]`: which account a lease gets.
    #[derive(Debug)]
    pub struct RotationConfig in "rotation" {
        /// `round-robin`, `least-used`, `fill-first` (by `priority`, lowest first), `sticky` (same `session` → same account).
        strategy: Strategy = "round-robin" => parsed("strategy", Strategy::from_str);
        /// Never hand out a token with less validity left (0s allowed).
        min_validity: Duration = "30s" => duration_or_zero();
        /// Cooldown after a rate-limit report that does not say how long (0s allowed).
        default_cooldown: Duration = "60s" => duration_or_zero();
        /// Cap on any cooldown, including a client's `retry_after_s`.
        max_cooldown: Duration = "6h" => duration();
        /// Requests each client key may make to `/credential/*`, as `COUNT/s`, `COUNT/min` or `COUNT/h`: up to COUNT at once, refilled evenly; beyond it 429 + `Retry-After`. The admin token is not limited.
        client_rate: Rate = "6000/min" => parsed("rate", Rate::from_str);
    }
}

config_section! {
    /// `[log]`.
    #[derive(Debug)]
    pub struct LogConfig in "log" {
        /// tracing `EnvFilter` directive (`RUST_LOG` wins).
        // Only checked for being non-empty here; the caller parses it.
        level: String = "info" => parsed("log level", parse_log_level);
        /// Log line format: `text` or `json`.
        format: LogFormat = "text" => parsed("log format", LogFormat::from_str);
    }
}

config_section! {
    /// `[events]`: the event log and its live broadcast.
    #[derive(Debug)]
    pub struct EventsConfig in "events" {
        /// How long events are kept; the sweep prunes older ones.
        retention: Duration = "30d" => duration();
        /// Events the live broadcast holds for a slow subscriber before it catches up from the database (16 to 65536).
        buffer: usize = 1024 => count(16..=65536);
    }
}

/// `browser.max_concurrent`'s default on this machine: one browser per two
/// CPUs (of those the process may use), 1 to 4.
fn browsers_per_machine() -> i64 {
    browsers_for_cpus(std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// One browser per two CPUs, 1 to 4. A relogin alone keeps about two cores
/// busy (Chromium's browser, renderer and GPU processes run side by side),
/// so a second browser on two cores makes each relogin twice as slow and all
/// of them no sooner, for another browser's memory
/// (`scripts/bench-recovery`). At most four: each holds ~400 MB while it runs.
fn browsers_for_cpus(cpus: usize) -> i64 {
    (cpus / 2).clamp(1, 4) as i64
}

config_section! {
    /// `[browser]`: the Chromium that relogin drives through Playwright.
    #[derive(Debug)]
    pub struct BrowserSettings in "browser" {
        /// `false`: never launch a browser; an account that needs a relogin waits for a person.
        enabled: bool = true => boolean();
        /// The Chromium executable.
        chromium: PathBuf = "/usr/bin/chromium" => path();
        /// The Node.js executable that runs the Playwright driver.
        node: PathBuf = "/usr/bin/node" => path();
        /// The Playwright driver's `cli.js` (npm playwright-core).
        driver: PathBuf = "scripts/playwright/node_modules/playwright-core/cli.js" => path();
        /// Run Chromium without a window.
        headless: bool = true => boolean();
        /// Browsers running at once (1 to 16).
        max_concurrent: usize = browsers_per_machine(), shown "one per two CPUs, 1 to 4" => count(1..=16);
        /// Browser relogins the recovery ladder starts at one provider in a minute (1 to 600), evenly spaced, so a provider that lost every session at once is not stormed; a person's relogin is not counted.
        relogins_per_minute: u32 = 60 => count(1..=600);
        /// One persistent profile per account below this directory.
        profiles_dir: PathBuf = "profiles" => path();
        /// Screenshots of failed relogins.
        artifacts_dir: PathBuf = "data/artifacts" => path();
        /// Limit on one whole scripted relogin.
        relogin_timeout: Duration = "2m" => duration();
        /// How long the Playwright driver (node, ~120 MB) stays up after the last browser closed, so a burst of relogins starts it once (0s: never lingers).
        driver_linger: Duration = "30s" => duration_or_zero();
        /// Extra Chromium flags, each starting with `-`; none of the flags the farm sets itself.
        extra_args: Vec<String> = Vec::<String>::new() => chromium_args(), no_env;
        /// First backoff after a failed relogin; it doubles up to `retry_max`.
        retry_initial: Duration = "5m" => duration();
        /// Longest backoff after a failed relogin.
        retry_max: Duration = "6h" => duration();
        /// Chromium's sandbox: `"auto"` (on unless the farm runs as root), `true` or `false` (`--no-sandbox`).
        sandbox: Sandbox = "auto" => sandbox();
        /// Hosts a relogin's pages may be on (`*.example.com` also matches subdomains), besides the provider's authorize and redirect hosts; empty: any. Schemes other than http(s) are refused either way.
        allowed_hosts: Vec<String> = Vec::<String>::new() => host_names(), no_env;
        /// An admin page's remote browser session ends after this long without input from the page.
        session_idle: Duration = "10m" => duration();
        /// An admin page's remote browser session ends this long after it started, in use or not.
        session_max: Duration = "1h" => duration();
        /// Cron (seconds field, UTC) of the canary logins: each active account with a login script logs in with its full script in a fresh browser context (no cookies), one at a time, spread until the next round (at most an hour); a failure is a `canary_failed` event, the account keeps serving its tokens; `""` disables.
        canary: Option<cron::Schedule> = "0 0 15 * * *" => parsed("cron expression", parse_cron);
    }
}

config_section! {
    /// `[digest]`: the summary of the night, as one `digest` event.
    #[derive(Debug)]
    pub struct DigestConfig in "digest" {
        /// Cron (seconds field, UTC) of the `digest` event (what happened per provider since the previous one); `""` disables.
        schedule: Option<cron::Schedule> = "0 0 7 * * *" => parsed("cron expression", parse_cron);
    }
}

pub use crate::browser::runner::Sandbox;

/// [`KeyDoc::shown_default`] of a key without a default.
const NO_DEFAULT: &str = "—";
/// [`KeyDoc::shown_default`] of a key that must be given.
const REQUIRED: &str = "required";

impl Config {
    /// Every key, in file order: each `[section]`'s, then the blocks'
    /// (`webhook.url` is the `url` of every `[[webhook]]`).
    pub fn keys() -> Vec<KeyDoc> {
        [table_keys(), block_keys()].concat()
    }

    /// The README's key table (Markdown), made from [`Config::keys`].
    pub fn keys_markdown() -> String {
        let mut out =
            String::from("| key | environment variable | default | meaning |\n|---|---|---|---|\n");
        let code = |text: &str| match text {
            NO_DEFAULT | REQUIRED => text.to_owned(),
            _ => format!("`{text}`"),
        };
        for k in Self::keys() {
            out.push_str(&format!(
                "| `{}` | {} | {} | {} |\n",
                k.key,
                code(k.env.as_deref().unwrap_or(NO_DEFAULT)),
                code(&k.shown_default),
                k.doc.replace('|', "\\|")
            ));
        }
        out
    }
}

/// The keys the `[section]` tables declare, in file order.
fn table_keys() -> Vec<KeyDoc> {
    [
        ServerConfig::keys(),
        StoreConfig::keys(),
        BackupConfig::keys(),
        SchedulerConfig::keys(),
        RotationConfig::keys(),
        LogConfig::keys(),
        EventsConfig::keys(),
        DigestConfig::keys(),
        BrowserSettings::keys(),
    ]
    .concat()
}

/// The keys of the blocks that may repeat, and of their nested tables.
fn block_keys() -> Vec<KeyDoc> {
    [
        WebhookConfig::keys(),
        ProviderConfig::keys(),
        ProxyConfig::keys(),
        IdentityConfig::keys(),
    ]
    .concat()
}

/// Scalar keys that the environment may override, each through the variable
/// [`env_var`] names. Secrets are not listed: they have their own variables.
fn env_keys() -> Vec<String> {
    table_keys()
        .into_iter()
        .filter(|k| k.env.as_deref() == Some(env_var(&k.key).as_str()))
        .map(|k| k.key)
        .collect()
}

// ---------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------

impl Config {
    /// Loads `path` (or only defaults if it is absent and `must_exist` is
    /// false), then applies `env` (pass `std::env::vars()`) and the flags.
    pub fn load(
        path: &Path,
        must_exist: bool,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &Overrides,
    ) -> Result<Config> {
        let table = match fs::read_to_string(path) {
            Ok(text) => parse_toml(&text)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound && !must_exist => Table::new(),
            Err(source) => {
                return Err(ConfigError::ReadFile {
                    path: path.to_owned(),
                    source,
                })
            }
        };
        Self::from_table(table, env, overrides)
    }

    /// Like [`Config::load`] with the file's text given directly.
    pub fn from_toml_str(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &Overrides,
    ) -> Result<Config> {
        Self::from_table(parse_toml(text)?, env, overrides)
    }

    fn from_table(
        table: Table,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &Overrides,
    ) -> Result<Config> {
        let env = EnvLayer::new(env)?;
        let mut root = Section::new(String::new(), table, &env);
        // Take every known top-level key first, so a misspelled section is
        // reported as such rather than as whatever it was missing.
        let mut server = root.child("server")?;
        let store = root.child("store")?;
        let backup = root.child("backup")?;
        let scheduler = root.child("scheduler")?;
        let rotation = root.child("rotation")?;
        let mut log = root.child("log")?;
        let mut events = root.child("events")?;
        let mut digest = root.child("digest")?;
        let webhooks = root.take("webhook");
        let browser = root.child("browser")?;
        let mut providers = root.take("provider");
        root.finish()?;
        presets::apply_all(&mut providers)?;

        let store = StoreConfig::build(store, &env, overrides.store_path.as_deref())?;
        let mut config = Config {
            server: ServerConfig::read(&mut server)?,
            backup: BackupConfig::build(backup, &store.path)?,
            store,
            scheduler: SchedulerConfig::build(scheduler)?,
            rotation: RotationConfig::build(rotation)?,
            log: LogConfig::read(&mut log)?,
            events: EventsConfig::read(&mut events)?,
            digest: DigestConfig::read(&mut digest)?,
            webhooks: read_blocks("webhook", webhooks, &env)?,
            browser: BrowserSettings::build(browser)?,
            providers: read_blocks("provider", providers, &env)?,
        };
        check_webhooks(&config.webhooks, &env)?;
        check_providers(&config.providers, &env)?;
        config.apply_flags(overrides)?;
        Ok(config)
    }

    /// The flags layer. `store_path` is applied in [`StoreConfig::build`]
    /// because the default key file depends on it.
    fn apply_flags(&mut self, overrides: &Overrides) -> Result<()> {
        if let Some(listen) = overrides.listen {
            self.server.listen = listen;
        }
        if let Some(level) = &overrides.log_level {
            check_log_level(level).map_err(|reason| ConfigError::Invalid {
                key: "log.level (from the command line)".to_owned(),
                reason: reason.to_owned(),
            })?;
            self.log.level = level.clone();
        }
        Ok(())
    }
}

/// The `relogin-farm init` template: [`EXAMPLE_TOML`] with its
/// `admin_token_file` pointing at `admin_token_file` (which the caller is
/// expected to create: loading fails while it is missing), its
/// `browser.driver` at `driver` (absolute: the farm may run from anywhere)
/// and, given `tls`, its commented-out TLS keys set to those files
/// (`init --tls`).
pub fn init_template(admin_token_file: &str, driver: &str, tls: Option<&TlsFiles>) -> String {
    let line =
        |key: &str, path: &Path| format!("{key} = {}", Value::String(path.display().to_string()));
    let mut text = EXAMPLE_TOML
        .replacen(
            EXAMPLE_ADMIN_TOKEN_LINE,
            &line("admin_token_file", Path::new(admin_token_file)),
            1,
        )
        .replacen(EXAMPLE_DRIVER_LINE, &line("driver", Path::new(driver)), 1);
    if let Some(tls) = tls {
        for (commented, key, path) in [
            (EXAMPLE_TLS_CERT_LINE, "tls_cert_file", &tls.cert_file),
            (EXAMPLE_TLS_KEY_LINE, "tls_key_file", &tls.key_file),
        ] {
            text = text.replacen(commented, &line(key, path), 1);
        }
    }
    text
}

const EXAMPLE_TLS_CERT_LINE: &str = "# tls_cert_file = \"data/tls.crt\"";
const EXAMPLE_TLS_KEY_LINE: &str = "# tls_key_file = \"data/tls.key\"";
const EXAMPLE_ADMIN_TOKEN_LINE: &str = "admin_token_file = \"data/admin.token\"";
const EXAMPLE_DRIVER_LINE: &str =
    "driver = \"scripts/playwright/node_modules/playwright-core/cli.js\"";

/// The name of the environment variable that overrides scalar `key`:
/// `RELOGIN_FARM_<SECTION>_<KEY>`, except `store.key_file`, which is
/// `RELOGIN_FARM_KEY_FILE` so that it reads as the pair of `RELOGIN_FARM_KEY`.
pub fn env_var(key: &str) -> String {
    if key == "store.key_file" {
        return format!("{ENV_PREFIX}KEY_FILE");
    }
    format!("{ENV_PREFIX}{}", key.replace('.', "_").to_ascii_uppercase())
}

/// Parses the file's text. The error carries only the parser's message and
/// the position, never the offending line, which may hold a secret.
fn parse_toml(text: &str) -> Result<Table> {
    text.parse::<Table>().map_err(|e| {
        let offset = e.span().map_or(0, |span| span.start);
        let (line, column) = line_column(text, offset);
        ConfigError::Syntax {
            line,
            column,
            message: e.message().trim_end().to_owned(),
        }
    })
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

// ---------------------------------------------------------------------------
// Sections: what the tables cannot say (secrets, derived defaults, checks
// that combine keys)
// ---------------------------------------------------------------------------

/// `tls_cert_file` and `tls_key_file` of `[server]`: both or neither.
fn tls_files(
    sec: &Section<'_>,
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
) -> Result<Option<TlsFiles>> {
    match (cert_file, key_file) {
        (Some(cert_file), Some(key_file)) => Ok(Some(TlsFiles {
            cert_file,
            key_file,
        })),
        (None, None) => Ok(None),
        (Some(_), None) => Err(sec.invalid(
            "tls_cert_file",
            "needs server.tls_key_file too (give both or neither)",
        )),
        (None, Some(_)) => Err(sec.invalid(
            "tls_key_file",
            "needs server.tls_cert_file too (give both or neither)",
        )),
    }
}

impl StoreConfig {
    fn build(mut sec: Section<'_>, env: &EnvLayer, path_flag: Option<&Path>) -> Result<Self> {
        let mut store = Self::read(&mut sec)?;
        if env.store_key.is_some() && sec.set_by_env("key_file") {
            return Err(conflict(
                &format!("{ENV_PREFIX}KEY"),
                &env_var("store.key_file"),
            ));
        }
        if let Some(path) = path_flag {
            store.path = path.to_path_buf();
        }
        if sec.is_default("key_file") {
            store.key_file = default_key_file(&store.path);
        }
        store.key = env.store_key.clone();
        Ok(store)
    }
}

impl BackupConfig {
    fn build(mut sec: Section<'_>, store_path: &Path) -> Result<Self> {
        let mut backup = Self::read(&mut sec)?;
        if sec.is_default("dir") {
            backup.dir = default_backup_dir(store_path);
        }
        Ok(backup)
    }
}

impl SchedulerConfig {
    fn build(mut sec: Section<'_>) -> Result<Self> {
        let s = Self::read(&mut sec)?;
        sec.at_least("retry_max", s.retry_max, "retry_initial", s.retry_initial)?;
        Ok(s)
    }
}

impl RotationConfig {
    fn build(mut sec: Section<'_>) -> Result<Self> {
        let r = Self::read(&mut sec)?;
        sec.at_least(
            "max_cooldown",
            r.max_cooldown,
            "default_cooldown",
            r.default_cooldown,
        )?;
        Ok(r)
    }
}

impl BrowserSettings {
    /// How many browsers relogins may run at once, in words (`check-config`,
    /// the start-up log): `max_concurrent`'s default depends on the machine.
    pub fn at_once(&self) -> String {
        if self.enabled {
            format!("at most {} at once", self.max_concurrent)
        } else {
            "off".to_owned()
        }
    }

    /// The browser engine's settings: its paths made absolute (Chromium
    /// refuses a relative profile directory, and a later `chdir` must not
    /// break the driver lookup), the sandbox decided for this process.
    pub fn engine(&self) -> crate::browser::BrowserConfig {
        use crate::browser::BrowserConfig;
        let abs = BrowserConfig::absolute;
        BrowserConfig {
            chromium: self.chromium.clone(),
            node: self.node.clone(),
            driver_cli_js: abs(&self.driver),
            headless: self.headless,
            extra_args: self.extra_args.clone(),
            sandbox: self
                .sandbox
                .applies(crate::browser::runner::running_as_root()),
            allowed_hosts: self.allowed_hosts.clone(),
            max_concurrent: self.max_concurrent,
            profiles_dir: abs(&self.profiles_dir),
            artifacts_dir: abs(&self.artifacts_dir),
            driver_linger: self.driver_linger,
        }
    }

    /// The defaults, with their relative paths (driver, profiles,
    /// artifacts) under `dir` instead of the working directory: what a
    /// farm whose config sits in `dir` gets (tests, benches, `doctor`).
    pub fn defaults_under(dir: &Path) -> Self {
        let d = Self::default();
        BrowserSettings {
            driver: dir.join(&d.driver),
            profiles_dir: dir.join(&d.profiles_dir),
            artifacts_dir: dir.join(&d.artifacts_dir),
            ..d
        }
    }

    fn build(mut sec: Section<'_>) -> Result<Self> {
        let b = Self::read(&mut sec)?;
        sec.at_least("retry_max", b.retry_max, "retry_initial", b.retry_initial)?;
        Ok(b)
    }
}

fn parse_log_level(level: &str) -> Result<String, &'static str> {
    check_log_level(level).map(|()| level.to_owned())
}

/// Only emptiness is checked: the real parser (`EnvFilter`) lives with the
/// caller, and an empty directive would silently mean "errors only".
fn check_log_level(level: &str) -> Result<(), &'static str> {
    if level.trim().is_empty() {
        return Err("must not be empty");
    }
    Ok(())
}

/// `""` (or blanks) disables the job. A 5-field expression gets a hint,
/// since classic cron syntax has no seconds field and is the usual mistake.
fn parse_cron(expr: &str) -> Result<Option<cron::Schedule>, String> {
    let expr = expr.trim();
    if expr.is_empty() {
        return Ok(None);
    }
    if expr.split_whitespace().count() == 5 {
        return Err(format!(
            "needs 6 or 7 fields, seconds first (e.g. \"0 {expr}\")"
        ));
    }
    let schedule =
        cron::Schedule::from_str(expr).map_err(|e| describe_cron_error(&e.to_string()))?;
    Ok(Some(schedule))
}

/// cron's errors repeat the expression with a caret line under it; keep just
/// the explanation (or the position when there is none) for a one-line error.
fn describe_cron_error(error: &str) -> String {
    let mut lines = error.lines();
    let _expression = lines.next();
    let position = lines.next().and_then(|caret| caret.find('^'));
    let explanation = lines.collect::<Vec<_>>().join(" ");
    match (explanation.trim(), position) {
        ("", Some(pos)) => format!("unexpected input at character {}", pos + 1),
        ("", None) => "invalid".to_owned(),
        (text, _) => text.to_owned(),
    }
}

// ---------------------------------------------------------------------------
// Providers
// ---------------------------------------------------------------------------

config_section! {
    /// One `[[provider]]`: an OAuth provider whose accounts the farm keeps
    /// logged in.
    #[derive(Debug)]
    pub struct ProviderConfig in "provider" block {
        /// Unique; lowercase letters, digits, `_` and `-`, starting with a letter or digit.
        name: String => parsed("name", parse_provider_name), required;
        /// Defaults for this block's keys from a provider's own public client (`google`, `entra`, `keycloak`, `authentik`, `github`, `openai-codex`; see [Providers](#providers)); the block's own keys win, and endpoint keys of its own replace all of the preset's.
        preset: Option<String> => parsed("preset", presets::parse_name), optional;
        /// The OAuth client's id.
        client_id: String => non_empty_string(), required;
        /// Scopes to request (`offline_access` usually gets the refresh token).
        scopes: Vec<String> = Vec::<String>::new() => scopes();
        /// Where the provider sends the browser back after a login.
        redirect_uri: Url => url(), required;
        /// Extra query parameters of the authorization request; not the ones the farm sets itself.
        extra_authorize_params: BTreeMap<String, String> = Table::new() => authorize_params();
        /// How accounts log in: `"code"` (authorization code + PKCE, back on `redirect_uri`) or `"device"` (RFC 8628: a user code entered at the provider's page while the farm polls; with `device_authorization_url` + `token_url`, or `issuer`).
        login: LoginKind = "code" => parsed("login kind", LoginKind::from_str);
        /// How long a started login waits for its redirect.
        login_timeout: Duration = "10m" => duration();
        /// Default login script for this provider's accounts (an account's own one wins).
        // Not read here: the login code reads it.
        login_script: Option<PathBuf> => path(), optional;
        /// The provider revokes the grant when a spent refresh token is presented again: after a crash mid-refresh, an account with a login script is logged in by the browser instead of replaying its refresh token.
        reuse_detection: bool = false => boolean();
        /// After a canary login (`browser.canary`) replaced an account's tokens, revoke the refresh token it replaced at the provider's revocation endpoint (RFC 7009, from discovery). Only for providers that give each login a grant of its own: where all of a client's tokens for a user are one grant (Google; `oidc-provider`), revoking the old token revokes the new one too, so it is off by default.
        revoke_replaced: bool = false => boolean();
        /// How the token requests' bodies are sent: `"form"` (RFC 6749) or `"json"` (a JSON object; the code exchange then also carries `state`).
        token_request: BodyFormat = "form" => parsed("body format", BodyFormat::from_str);
        /// The refresh grant's body format when it differs from `token_request`; absent: as `token_request`.
        refresh_request: Option<BodyFormat> => parsed("body format", BodyFormat::from_str), optional;
        /// Extra parameters of every token request's body (strings); not the ones the farm sets itself.
        token_params: BTreeMap<String, String> = Table::new() => string_table(RESERVED_TOKEN_PARAMS);
        /// Extra headers of every token request (such as `user-agent`), names lowercased.
        token_headers: BTreeMap<String, String> = Table::new() => header_values();
        /// Send `scope` (the `scopes`) with the refresh grant too; some providers narrow the grant without it, others refuse it.
        refresh_scope: bool = false => boolean();
        /// An access token's lifetime when the token answer has no `expires_in` and the token is no JWT with an `exp`.
        default_token_ttl: Duration = "1h" => duration();
        /// `[[provider.token_errors]]`: the provider's own rules for its token endpoint's error answers, tried before the built-in ones (see [Providers](#providers)); each has `class = "dead"` (needs a login) or `"transient"` (back off, keep the refresh token) and any of `status` (a code or `[low, high]`), `error` (the error code) and `html` (true: an HTML page).
        token_errors: Vec<Rule> = Vec::<String>::new() => token_errors();
        /// An HTTP(S) proxy for every request the farm sends to this provider (discovery, token endpoint), as `http://[user:password@]host:port`; absent: direct (or the usual `HTTPS_PROXY` variables).
        egress_proxy: Option<Secret> => proxy_url(), optional;
        /// `[provider.proxy]`: the rotating proxy at `/proxy/<name>/…` (see [Point your tools at the farm](#point-your-tools-at-the-farm)); absent: none.
        proxy: Option<ProxyConfig> => table(), optional;
        /// Where an account's identity is read (see [Identity](#identity)); absent: the id_token's `sub`, when there is an id_token.
        identity: Option<IdentityConfig> => table(), optional;
    }
    given {
        /// OIDC issuer; the endpoints come from its discovery document. Or give `authorize_url` and `token_url`, not both.
        issuer: Option<Url> => url(), optional;
        /// Authorization endpoint, without discovery (with `token_url`).
        authorize_url: Option<Url> => url(), optional;
        /// Token endpoint, without discovery (with `authorize_url`).
        token_url: Option<Url> => url(), optional;
        /// Device authorization endpoint (`login = "device"`, with `token_url`; no `authorize_url`).
        device_authorization_url: Option<Url> => url(), optional;
        /// Introspection endpoint, without discovery (optional).
        introspection_url: Option<Url> => url(), optional;
        /// Client secret of a confidential client; the variable (`NAME`: the name uppercased, `-` as `_`) wins over this key and `client_secret_file`.
        client_secret: Option<SecretRef>, env "RELOGIN_FARM_PROVIDER_<NAME>_CLIENT_SECRET"
            => secret(), optional;
        /// File holding the client secret (not with `client_secret`).
        client_secret_file: Option<SecretRef>, env "RELOGIN_FARM_PROVIDER_<NAME>_CLIENT_SECRET_FILE"
            => secret_file(), optional;
    }
    extra(sec) {
        /// From `issuer`, or `authorize_url` + `token_url` (+ `introspection_url`).
        endpoints: Endpoints =
            resolve_endpoints(sec, login, issuer, authorize_url, token_url, device_authorization_url, introspection_url)?;
        /// From the environment, else `client_secret(_file)`.
        client_secret: Option<Secret> = resolve_secret(
            sec.env.client_secrets.get(&env_name(&name)).cloned().unwrap_or_default(),
            SecretVars { value: client_secret, file: client_secret_file },
        )?;
    }
}

config_section! {
    /// `[provider.proxy]`: where `/proxy/<provider>/<path>` forwards to and how.
    #[derive(Debug)]
    pub struct ProxyConfig in "provider.proxy" block {
        /// Requests to `/proxy/<provider>/<path>` go to `<upstream>/<path>`.
        upstream: Url => url(), required;
        /// Added to every upstream request, comma-merged with the client's value (names lowercased).
        headers: BTreeMap<String, String> = Table::new() => header_values();
        /// The header that carries the account's token (lowercased).
        auth_header: String = "authorization" => parsed("header name", parse_header_name);
        /// Put before the token with a space (`""`: the bare token).
        auth_scheme: String = "Bearer" => parsed("scheme", parse_auth_scheme);
        /// A header the client already sends that keys its sticky session (besides `x-relogin-session`), lowercased.
        session_header: Option<String> => parsed("header name", parse_header_name), optional;
        /// Largest request body in bytes, buffered to be replayed on failover; above: 413.
        max_body: usize = 32 * 1024 * 1024 => count(1..=1024 * 1024 * 1024);
        /// Upstream statuses that move the request to the next account.
        failover_on: Vec<u16> = vec![401, 429, 529] => statuses();
        /// Accounts tried per request, the first one included (1 to 10).
        max_attempts: usize = 3 => count(1..=10);
        /// Headers read for a 429's reset time after `retry-after-ms` and `retry-after` (lowercased).
        reset_headers: Vec<String> = vec!["anthropic-ratelimit-unified-reset"] => header_names();
        /// Prefixes of the rate-limit headers kept as the account's quota (lowercased).
        quota_headers: Vec<String> = vec!["anthropic-ratelimit-", "x-ratelimit-", "x-codex-"]
            => header_names();
        /// Connecting to the upstream.
        connect_timeout: Duration = "10s" => duration();
        /// From the request sent to the upstream's status line.
        first_byte_timeout: Duration = "10m" => duration();
        /// Longest silence between two chunks of an answer; then the answer is cut.
        idle_timeout: Duration = "5m" => duration();
        /// A usage endpoint asked with each enabled account's token (as the proxy sends it, with `headers`); its JSON answer is shown on the account as `quota.usage` (see [Point your tools at the farm](#point-your-tools-at-the-farm)); absent: not polled.
        usage_url: Option<Url> => url(), optional;
        /// When `usage_url` is asked (cron with seconds; `""`: never). Usage endpoints answer from counters and cost no quota.
        usage_schedule: Option<cron::Schedule> = "0 */5 * * * *" => parsed("cron expression", parse_cron);
        /// The longest one account's usage poll may take, answer included.
        usage_timeout: Duration = "30s" => duration();
    }
}

config_section! {
    /// `identity = { … }` of a `[[provider]]`: whose tokens a login got.
    #[derive(Debug)]
    pub struct IdentityConfig in "provider.identity" block {
        /// `id_token`, `access_token` (a JWT access token's claims) or `userinfo` (the answer of the userinfo endpoint, or `url`, to the new access token).
        from: IdentitySource = "id_token" => parsed("source", parse_identity_source);
        /// The claim path: one key per element, taken whole (`["https://api.openai.com/auth", "chatgpt_account_id"]`).
        claim: Vec<String> = vec!["sub"] => claim_path();
        /// The provider's own profile endpoint, asked with `from = "userinfo"`; absent: the OIDC discovery's `userinfo_endpoint`.
        url: Option<Url> => url(), optional;
    }
}

/// Where an identity is read from (`provider.identity.from`).
pub type IdentitySource = crate::domain::identity::Source;

fn parse_identity_source(text: &str) -> Result<IdentitySource, String> {
    IdentitySource::parse(text).ok_or_else(|| {
        format!(
            "expected {}",
            crate::domain::identity::Source::NAMES.join(" | ")
        )
    })
}

impl IdentityConfig {
    /// The rule the farm applies (configured: a login must yield it).
    pub fn rule(config: Option<&IdentityConfig>) -> crate::domain::identity::Rule {
        match config {
            None => crate::domain::identity::Rule::default(),
            Some(c) => crate::domain::identity::Rule {
                from: c.from,
                claim: c.claim.clone(),
                required: true,
            },
        }
    }
}

/// The table's defaults with a placeholder upstream, for tests that build a
/// proxy's settings by hand.
#[cfg(test)]
impl Default for ProxyConfig {
    fn default() -> Self {
        read_table("provider.proxy", "upstream = \"http://127.0.0.1/\"")
            .expect("the built-in defaults are valid")
    }
}

/// Reads `text` as one table of `T` (tests).
#[cfg(test)]
fn read_table<T: ReadTable>(path: &str, text: &str) -> Result<T> {
    let env = EnvLayer::default();
    T::read(&mut Section::new(path.to_owned(), parse_toml(text)?, &env))
}

/// The blocks' rules across blocks: names are unique (also as their
/// environment spelling: `a-b` and `a_b` would share one client secret
/// variable), and every client secret variable names a provider.
fn check_providers(providers: &[ProviderConfig], env: &EnvLayer) -> Result<()> {
    for (i, provider) in providers.iter().enumerate() {
        let Some((j, other)) = providers[..i]
            .iter()
            .enumerate()
            .find(|(_, p)| env_name(&p.name) == env_name(&provider.name))
        else {
            continue;
        };
        let reason = if other.name == provider.name {
            format!("duplicate name {:?} (also provider[{j}])", provider.name)
        } else {
            format!(
                "name {:?} clashes with provider[{j}] {:?}: both use {}",
                provider.name,
                other.name,
                client_secret_var(&env_name(&provider.name))
            )
        };
        return Err(ConfigError::Invalid {
            key: format!("provider[{i}].name"),
            reason,
        });
    }
    let known: BTreeSet<String> = providers.iter().map(|p| env_name(&p.name)).collect();
    if let Some((name, vars)) = env
        .client_secrets
        .iter()
        .find(|(name, _)| !known.contains(*name))
    {
        return Err(ConfigError::UnknownEnv {
            var: vars.var_name(),
            reason: format!("no [[provider]] whose name uppercases to {name}"),
        });
    }
    Ok(())
}

fn parse_auth_scheme(scheme: &str) -> Result<String, &'static str> {
    if scheme.contains(char::is_whitespace) {
        Err("must be one word (or \"\" for the bare token)")
    } else {
        Ok(scheme.to_owned())
    }
}

/// An HTTP header name (token characters), lowercased.
fn parse_header_name(name: &str) -> Result<String, &'static str> {
    let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if name.is_empty() || !name.bytes().all(token) {
        return Err("use letters, digits and - only");
    }
    Ok(name.to_ascii_lowercase())
}

/// Either `issuer` (discovery) or `authorize_url` + `token_url` (plus
/// optional `introspection_url`); mixing them is ambiguous, so rejected.
#[allow(clippy::too_many_arguments)]
fn resolve_endpoints(
    sec: &Section<'_>,
    login: LoginKind,
    issuer: Option<Url>,
    authorize_url: Option<Url>,
    token_url: Option<Url>,
    device_authorization_url: Option<Url>,
    introspection_url: Option<Url>,
) -> Result<Endpoints> {
    match (login, device_authorization_url) {
        (LoginKind::Code, Some(_)) => {
            return Err(sec.invalid("device_authorization_url", "only with login = \"device\""))
        }
        (LoginKind::Device, Some(device_authorization_url)) => {
            if issuer.is_some() || authorize_url.is_some() || introspection_url.is_some() {
                let key = if issuer.is_some() {
                    "issuer"
                } else if authorize_url.is_some() {
                    "authorize_url"
                } else {
                    "introspection_url"
                };
                return Err(sec.invalid(
                    key,
                    "not with device_authorization_url (a device login needs only it and token_url)",
                ));
            }
            let token_url = token_url.ok_or_else(|| sec.missing("token_url"))?;
            return Ok(Endpoints::Device {
                device_authorization_url,
                token_url,
            });
        }
        (LoginKind::Device, None) if issuer.is_none() => return Err(sec.invalid(
            "device_authorization_url",
            "missing: login = \"device\" needs device_authorization_url and token_url, or issuer",
        )),
        _ => {}
    }
    match (issuer, authorize_url, token_url) {
        (Some(issuer), None, None) => match introspection_url {
            None => Ok(Endpoints::Discovery { issuer }),
            Some(_) => Err(sec.invalid(
                "introspection_url",
                "only with authorize_url and token_url; with issuer, discovery finds it",
            )),
        },
        (Some(_), _, _) => Err(sec.invalid(
            "issuer",
            "give either issuer or authorize_url and token_url, not both",
        )),
        (None, Some(authorize_url), Some(token_url)) => Ok(Endpoints::Manual {
            authorize_url,
            token_url,
            introspection_url,
        }),
        (None, Some(_), None) => Err(sec.missing("token_url")),
        (None, None, Some(_)) => Err(sec.missing("authorize_url")),
        (None, None, None) => Err(sec.invalid(
            "issuer",
            "missing: give issuer (OIDC discovery) or authorize_url and token_url",
        )),
    }
}

pub fn parse_provider_name(name: &str) -> Result<String, &'static str> {
    let mut bytes = name.bytes();
    let first_ok = bytes
        .next()
        .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if first_ok
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
    {
        Ok(name.to_owned())
    } else {
        Err("use lowercase letters, digits, '_' and '-', starting with a letter or digit")
    }
}

/// A provider name as it appears in its environment variables.
fn env_name(provider: &str) -> String {
    provider.to_ascii_uppercase().replace('-', "_")
}

fn client_secret_var(env_name: &str) -> String {
    format!("{ENV_PREFIX}PROVIDER_{env_name}_CLIENT_SECRET")
}

/// The variable that gives `provider`'s client secret.
pub fn provider_secret_var(provider: &str) -> String {
    client_secret_var(&env_name(provider))
}

fn parse_http_url(text: &str) -> Result<Url, String> {
    let url = Url::parse(text).map_err(|e| e.to_string())?;
    match url.scheme() {
        "http" | "https" => Ok(url),
        other => Err(format!("scheme must be http or https, not {other}")),
    }
}

// ---------------------------------------------------------------------------
// Webhooks
// ---------------------------------------------------------------------------

config_section! {
    /// One `[[webhook]]`: each event of a kind it wants is POSTed to `url` as
    /// JSON, signed with HMAC-SHA256 when a secret is set.
    pub struct WebhookConfig in "webhook" block {
        /// http or https. May carry a credential (in its path or user info): errors never quote it, logs show only its origin.
        url: Url => secret_url(), required;
        /// Event kinds to send, each once (see [Events and webhooks](#events-and-webhooks)); `[]`: every kind.
        // Use `WebhookConfig::wants`.
        events: Vec<String> = Vec::<String>::new() => event_kinds();
        /// Deliveries per event at most, the first one included (1 to 20); retries back off exponentially.
        max_attempts: u32 = 6 => count(1..=20);
        /// How long one request may take.
        timeout: Duration = "10s" => duration();
        /// The body: `json` (the event, signed) or `text` (its plain text — a `digest` as lines — as `text/plain`, for ntfy/Gotify-style push endpoints).
        format: WebhookFormat = "json" => parsed("webhook format", WebhookFormat::from_str);
    }
    given {
        /// HMAC key; without one, requests are sent unsigned. The variable (`N`: the block's 0-based position in the file) wins over this key and `secret_file`.
        secret: Option<SecretRef>, env "RELOGIN_FARM_WEBHOOK_<N>_SECRET" => secret(), optional;
        /// File holding the HMAC key (not with `secret`).
        secret_file: Option<SecretRef>, env "RELOGIN_FARM_WEBHOOK_<N>_SECRET_FILE"
            => secret_file(), optional;
    }
    extra(sec) {
        /// From the environment, else `secret(_file)`; `None`: unsigned.
        secret: Option<Secret> = resolve_secret(
            sec.index
                .and_then(|i| sec.env.webhook_secrets.get(&i))
                .cloned()
                .unwrap_or_default(),
            SecretVars { value: secret, file: secret_file },
        )?;
    }
}

/// Every webhook secret variable's index is a `[[webhook]]`'s.
fn check_webhooks(webhooks: &[WebhookConfig], env: &EnvLayer) -> Result<()> {
    if let Some((&index, vars)) = env.webhook_secrets.range(webhooks.len()..).next() {
        return Err(ConfigError::UnknownEnv {
            var: vars.var_name(),
            reason: format!(
                "no [[webhook]] with index {index} (indexes start at 0; there {})",
                match webhooks.len() {
                    1 => "is 1".to_owned(),
                    n => format!("are {n}"),
                }
            ),
        });
    }
    Ok(())
}

/// `WEBHOOK_<N>_SECRET[_FILE]` → (`N`, is it the `_FILE` one). `N` is
/// decimal without leading zeros, so two variables never share an index.
fn parse_webhook_secret_var(short: &str) -> Option<(usize, bool)> {
    let rest = short.strip_prefix("WEBHOOK_")?;
    let (index, is_file) = match rest.strip_suffix("_SECRET_FILE") {
        Some(index) => (index, true),
        None => (rest.strip_suffix("_SECRET")?, false),
    };
    let canonical =
        index.bytes().all(|b| b.is_ascii_digit()) && (index == "0" || !index.starts_with('0'));
    if !canonical {
        return None;
    }
    Some((index.parse().ok()?, is_file))
}

// ---------------------------------------------------------------------------
// Secrets
// ---------------------------------------------------------------------------

/// A secret as configured, before any file is read: the value itself or the
/// file holding it, plus the key or variable that gave it, for errors.
#[derive(Clone)]
struct SecretRef {
    name: String,
    source: SecretSource,
}

#[derive(Clone)]
enum SecretSource {
    Inline(Secret),
    File(PathBuf),
}

/// The `x` / `x_file` pair through which one layer may give a secret.
#[derive(Clone, Default)]
struct SecretVars {
    value: Option<SecretRef>,
    file: Option<SecretRef>,
}

impl SecretVars {
    /// The one secret this layer gives; both forms at once is an error
    /// because which should win would be a guess.
    fn one(self) -> Result<Option<SecretRef>> {
        match (self.value, self.file) {
            (Some(value), Some(file)) => Err(conflict(&value.name, &file.name)),
            (value, file) => Ok(value.or(file)),
        }
    }

    /// The name of the key or variable that gave the secret (`""` if none).
    fn var_name(&self) -> String {
        self.value
            .as_ref()
            .or(self.file.as_ref())
            .map_or_else(String::new, |s| s.name.clone())
    }
}

/// The secret from the environment if it gives one, else from the file.
/// Only the winning source is read, so an overridden secret file may be
/// absent.
fn resolve_secret(from_env: SecretVars, from_file: SecretVars) -> Result<Option<Secret>> {
    let from_env = from_env.one()?;
    let from_file = from_file.one()?;
    from_env.or(from_file).map(SecretRef::load).transpose()
}

impl SecretRef {
    fn load(self) -> Result<Secret> {
        let secret = match self.source {
            SecretSource::Inline(secret) => secret,
            SecretSource::File(path) => read_secret_file(&self.name, path)?,
        };
        if secret.is_empty() {
            return Err(ConfigError::Invalid {
                key: self.name,
                reason: "the secret is empty".to_owned(),
            });
        }
        Ok(secret)
    }
}

/// Reads a secret file, dropping one trailing newline (`echo` and editors add
/// it; anything else is part of the secret). Errors name the key and path,
/// never the content.
fn read_secret_file(name: &str, path: PathBuf) -> Result<Secret> {
    if path.as_os_str().is_empty() {
        return Err(ConfigError::Invalid {
            key: name.to_owned(),
            reason: "empty path".to_owned(),
        });
    }
    crate::secret::read_secret_file(&path).map_err(|source| ConfigError::SecretFile {
        key: name.to_owned(),
        path,
        source,
    })
}

/// Only the shape is checked (base64, standard or URL-safe alphabet, padding
/// optional, decoding to exactly 32 bytes), so a mistyped key fails at
/// startup naming the variable; the store does the decoding.
fn is_base64_key(text: &str) -> bool {
    let body = text.trim_end_matches('=');
    body.len() == 43
        && text.len() - body.len() <= 1
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+/-_".contains(&b))
}

fn conflict(first: &str, second: &str) -> ConfigError {
    ConfigError::Invalid {
        key: first.to_owned(),
        reason: format!("conflicts with {second}; set only one"),
    }
}

// ---------------------------------------------------------------------------
// Environment
// ---------------------------------------------------------------------------

/// One environment variable overriding a scalar key.
struct EnvValue {
    var: String,
    value: String,
}

/// The `RELOGIN_FARM_*` environment, sorted by what each variable sets.
#[derive(Default)]
struct EnvLayer {
    /// Scalar overrides by full key name (`scheduler.refresh_margin`),
    /// consulted by [`Section::take`].
    scalars: BTreeMap<String, EnvValue>,
    admin_token: SecretVars,
    store_key: Option<Secret>,
    /// Client secrets by the provider part of their variable (`DEMO`).
    client_secrets: BTreeMap<String, SecretVars>,
    /// Webhook secrets by the index in their variable.
    webhook_secrets: BTreeMap<usize, SecretVars>,
}

impl EnvLayer {
    fn new(vars: impl IntoIterator<Item = (String, String)>) -> Result<Self> {
        let scalar_vars: BTreeMap<String, String> = env_keys()
            .into_iter()
            .map(|key| (env_var(&key), key))
            .collect();
        let mut vars: Vec<(String, String)> = vars
            .into_iter()
            .filter(|(var, _)| var.starts_with(ENV_PREFIX) && !is_other_env_var(var))
            .collect();
        // Sorted so that which error gets reported does not depend on the
        // environment's order.
        vars.sort();
        let mut layer = EnvLayer::default();
        for (var, value) in vars {
            let short = &var[ENV_PREFIX.len()..];
            if let Some(key) = scalar_vars.get(&var) {
                layer.scalars.insert(key.clone(), EnvValue { var, value });
            } else if short == "ADMIN_TOKEN" {
                layer.admin_token.value = Some(SecretRef::inline(var, value));
            } else if short == "ADMIN_TOKEN_FILE" {
                layer.admin_token.file = Some(SecretRef::file(var, value));
            } else if short == "KEY" {
                if !is_base64_key(&value) {
                    return Err(ConfigError::Invalid {
                        key: var,
                        reason: "expected base64 of 32 bytes (44 characters)".to_owned(),
                    });
                }
                layer.store_key = Some(Secret::new(value));
            } else if let Some((provider, is_file)) = parse_client_secret_var(short) {
                let slot = layer.client_secrets.entry(provider.to_owned()).or_default();
                if is_file {
                    slot.file = Some(SecretRef::file(var, value));
                } else {
                    slot.value = Some(SecretRef::inline(var, value));
                }
            } else if let Some((index, is_file)) = parse_webhook_secret_var(short) {
                let slot = layer.webhook_secrets.entry(index).or_default();
                if is_file {
                    slot.file = Some(SecretRef::file(var, value));
                } else {
                    slot.value = Some(SecretRef::inline(var, value));
                }
            } else {
                return Err(ConfigError::UnknownEnv {
                    var,
                    reason: "not a relogin-farm setting; unset it or fix its name".to_owned(),
                });
            }
        }
        Ok(layer)
    }
}

impl SecretRef {
    fn inline(name: String, value: String) -> Self {
        SecretRef {
            name,
            source: SecretSource::Inline(Secret::new(value)),
        }
    }

    fn file(name: String, path: impl Into<PathBuf>) -> Self {
        SecretRef {
            name,
            source: SecretSource::File(path.into()),
        }
    }
}

fn is_other_env_var(var: &str) -> bool {
    OTHER_ENV_VARS
        .iter()
        .any(|known| match known.strip_suffix('*') {
            Some(prefix) => var.starts_with(prefix),
            None => var == *known,
        })
}

/// `PROVIDER_<NAME>_CLIENT_SECRET[_FILE]` → (`NAME`, is it the `_FILE` one).
fn parse_client_secret_var(short: &str) -> Option<(&str, bool)> {
    let rest = short.strip_prefix("PROVIDER_")?;
    let (name, is_file) = match rest.strip_suffix("_CLIENT_SECRET_FILE") {
        Some(name) => (name, true),
        None => (rest.strip_suffix("_CLIENT_SECRET")?, false),
    };
    (!name.is_empty()).then_some((name, is_file))
}

// ---------------------------------------------------------------------------
// Reading typed values out of a table
// ---------------------------------------------------------------------------

/// One TOML table being read. Each read removes its key, so the keys left at
/// [`Section::finish`] are unknown ones. Reads see the environment's value
/// where there is one (the env layer), else the file's.
struct Section<'a> {
    /// Full path of this table: `""` for the root, `scheduler`, `provider[1]`.
    path: String,
    table: Table,
    env: &'a EnvLayer,
    /// Keys that neither the file nor the environment set, whose built-in
    /// default [`Section::default_to`] put in.
    defaulted: BTreeSet<String>,
    /// A `[[block]]`'s position in its array (the `N` of its variables).
    index: Option<usize>,
}

impl<'a> Section<'a> {
    fn new(path: String, table: Table, env: &'a EnvLayer) -> Self {
        Section {
            path,
            table,
            env,
            defaulted: BTreeSet::new(),
            index: None,
        }
    }

    /// Gives `key` its built-in default when neither the file nor the
    /// environment sets it; the default is then read (and checked) like a
    /// configured value.
    fn default_to(&mut self, key: &str, default: Value) {
        if !self.table.contains_key(key) && !self.set_by_env(key) {
            self.table.insert(key.to_owned(), default);
            self.defaulted.insert(key.to_owned());
        }
    }

    /// Whether `key` got its built-in default (see [`Section::default_to`]).
    fn is_default(&self, key: &str) -> bool {
        self.defaulted.contains(key)
    }

    fn full(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    /// The key's name for errors, with the variable that set it, if any.
    fn name(&self, key: &str) -> String {
        let full = self.full(key);
        match self.env.scalars.get(&full) {
            Some(env) => format!("{full} (from {})", env.var),
            None => full,
        }
    }

    fn set_by_env(&self, key: &str) -> bool {
        self.env.scalars.contains_key(&self.full(key))
    }

    fn take(&mut self, key: &str) -> Option<Value> {
        let from_file = self.table.remove(key);
        match self.env.scalars.get(&self.full(key)) {
            Some(env) => Some(Value::String(env.value.clone())),
            None => from_file,
        }
    }

    /// A nested table (`[provider.proxy]` of a `[[provider]]`), read as a
    /// `T` (`None` when absent).
    fn table<T: ReadTable>(&mut self, key: &str) -> Result<Option<T>> {
        match self.take(key) {
            None => Ok(None),
            Some(Value::Table(table)) => {
                T::read(&mut Section::new(self.full(key), table, self.env)).map(Some)
            }
            Some(other) => Err(wrong_type(self.name(key), "a table", &other)),
        }
    }

    /// A sub-table (empty when absent), e.g. `[server]` of the root.
    fn child(&mut self, key: &str) -> Result<Section<'a>> {
        match self.table.remove(key) {
            None => Ok(Section::new(self.full(key), Table::new(), self.env)),
            Some(Value::Table(table)) => Ok(Section::new(self.full(key), table, self.env)),
            Some(other) => Err(wrong_type(self.full(key), "a table", &other)),
        }
    }

    /// Rejects the keys nobody read. Call it after reading every key but
    /// before checks that combine keys, so a misspelled key is reported as
    /// unknown rather than as the key it was meant to be being missing.
    fn finish(&self) -> Result<()> {
        match self.table.keys().next() {
            Some(key) => Err(ConfigError::UnknownKey {
                key: self.full(key),
            }),
            None => Ok(()),
        }
    }

    fn invalid(&self, key: &str, reason: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            key: self.name(key),
            reason: reason.into(),
        }
    }

    fn missing(&self, key: &str) -> ConfigError {
        ConfigError::Missing {
            key: self.name(key),
        }
    }

    fn required<T>(&self, key: &str, value: Option<T>) -> Result<T> {
        value.ok_or_else(|| self.missing(key))
    }

    /// Errors name the type found but never the value: it may be a secret.
    fn string(&mut self, key: &str) -> Result<Option<String>> {
        match self.take(key) {
            None => Ok(None),
            Some(Value::String(text)) => Ok(Some(text)),
            Some(other) => Err(wrong_type(self.name(key), "a string", &other)),
        }
    }

    fn non_empty_string(&mut self, key: &str) -> Result<Option<String>> {
        self.parsed(key, "value", |s| {
            if s.trim().is_empty() {
                Err("must not be empty")
            } else {
                Ok(s.to_owned())
            }
        })
    }

    /// A string turned into `T` by `parse`. The error quotes the value, so
    /// this is never used for secrets.
    fn parsed<T, E: Display>(
        &mut self,
        key: &str,
        what: &str,
        parse: impl FnOnce(&str) -> Result<T, E>,
    ) -> Result<Option<T>> {
        let Some(text) = self.string(key)? else {
            return Ok(None);
        };
        match parse(&text) {
            Ok(value) => Ok(Some(value)),
            Err(e) => Err(self.invalid(key, format!("invalid {what} {text:?}: {e}"))),
        }
    }

    /// A humantime duration, more than zero.
    fn duration(&mut self, key: &str) -> Result<Option<Duration>> {
        let duration = self.duration_or_zero(key)?;
        if duration == Some(Duration::ZERO) {
            return Err(self.invalid(key, "must be more than 0s"));
        }
        Ok(duration)
    }

    fn duration_or_zero(&mut self, key: &str) -> Result<Option<Duration>> {
        let duration = self.parsed(key, "duration", humantime::parse_duration)?;
        if duration.is_some_and(|d| d > MAX_DURATION) {
            return Err(self.invalid(key, "must be at most 365 days"));
        }
        Ok(duration)
    }

    /// Checks `value` (of `key`) ≥ `floor` (of `floor_key`), both read by now.
    fn at_least(&self, key: &str, value: Duration, floor_key: &str, floor: Duration) -> Result<()> {
        if value < floor {
            return Err(self.invalid(
                key,
                format!(
                    "{} must be at least {} ({})",
                    humantime::format_duration(value),
                    self.full(floor_key),
                    humantime::format_duration(floor)
                ),
            ));
        }
        Ok(())
    }

    /// An integer in `range`. The environment can only give strings, so a
    /// string is accepted there (and only there).
    fn count<T: TryFrom<usize>>(
        &mut self,
        key: &str,
        range: RangeInclusive<usize>,
    ) -> Result<Option<T>> {
        let from_env = self.set_by_env(key);
        let number = match self.take(key) {
            None => return Ok(None),
            Some(Value::Integer(n)) => n,
            Some(Value::String(text)) if from_env => text
                .trim()
                .parse::<i64>()
                .map_err(|_| self.invalid(key, format!("invalid integer {text:?}")))?,
            Some(other) => return Err(wrong_type(self.name(key), "an integer", &other)),
        };
        match usize::try_from(number) {
            Ok(n) if range.contains(&n) => match T::try_from(n) {
                Ok(n) => Ok(Some(n)),
                Err(_) => unreachable!("a count's range fits its type"),
            },
            _ => Err(self.invalid(
                key,
                format!(
                    "must be between {} and {}, not {number}",
                    range.start(),
                    range.end()
                ),
            )),
        }
    }

    fn path(&mut self, key: &str) -> Result<Option<PathBuf>> {
        self.parsed(key, "path", |s| {
            if s.is_empty() {
                Err("must not be empty")
            } else {
                Ok(PathBuf::from(s))
            }
        })
    }

    fn url(&mut self, key: &str) -> Result<Option<Url>> {
        self.parsed(key, "URL", parse_http_url)
    }

    /// Like [`Section::url`], for a URL that may hold a credential: the
    /// error never quotes it (the `url` crate's messages do not either).
    fn secret_url(&mut self, key: &str) -> Result<Option<Url>> {
        let Some(text) = self.string(key)? else {
            return Ok(None);
        };
        parse_http_url(&text)
            .map(Some)
            .map_err(|e| self.invalid(key, format!("invalid URL: {e}")))
    }

    /// `true` or `false`. The environment can only give strings, so the
    /// strings `true` and `false` are accepted there (and only there).
    fn boolean(&mut self, key: &str) -> Result<Option<bool>> {
        let from_env = self.set_by_env(key);
        match self.take(key) {
            None => Ok(None),
            Some(Value::Boolean(b)) => Ok(Some(b)),
            Some(Value::String(text)) if from_env => match text.trim() {
                "true" => Ok(Some(true)),
                "false" => Ok(Some(false)),
                _ => Err(self.invalid(
                    key,
                    format!("invalid boolean {text:?}: expected true or false"),
                )),
            },
            Some(other) => Err(wrong_type(self.name(key), "true or false", &other)),
        }
    }

    /// An array of strings, each checked by `check` (which gets the item's
    /// full key for its error).
    fn string_list(
        &mut self,
        key: &str,
        mut check: impl FnMut(&str, &str) -> Result<()>,
    ) -> Result<Option<Vec<String>>> {
        let Some(value) = self.take(key) else {
            return Ok(None);
        };
        let Value::Array(items) = value else {
            return Err(wrong_type(self.name(key), "an array of strings", &value));
        };
        let mut list = Vec::with_capacity(items.len());
        for (i, item) in items.into_iter().enumerate() {
            let item_key = format!("{}[{i}]", self.name(key));
            let Value::String(text) = item else {
                return Err(wrong_type(item_key, "a string", &item));
            };
            check(&item_key, &text)?;
            list.push(text);
        }
        Ok(Some(list))
    }

    /// Event kinds from [`EventKind::NAMES`], each at most once.
    fn event_kinds(&mut self, key: &str) -> Result<Option<Vec<String>>> {
        let mut seen = BTreeMap::new();
        self.string_list(key, |item_key, kind| {
            if !EventKind::NAMES.contains(&kind) {
                return Err(ConfigError::Invalid {
                    key: item_key.to_owned(),
                    reason: format!(
                        "unknown event kind {kind:?}: expected one of {}",
                        EventKind::NAMES.join(" | ")
                    ),
                });
            }
            if let Some(first) = seen.insert(kind.to_owned(), item_key.to_owned()) {
                return Err(ConfigError::Invalid {
                    key: item_key.to_owned(),
                    reason: format!("duplicate event kind {kind:?} (also {first})"),
                });
            }
            Ok(())
        })
    }

    /// Chromium command-line flags: each starts with `-` (anything else
    /// would be opened as a URL) and is none of [`RESERVED_CHROMIUM_ARGS`].
    fn chromium_args(&mut self, key: &str) -> Result<Option<Vec<String>>> {
        self.string_list(key, |item_key, arg| {
            let invalid = |reason: String| ConfigError::Invalid {
                key: item_key.to_owned(),
                reason,
            };
            let name = arg.split_once('=').map_or(arg, |(name, _)| name);
            if !name.starts_with('-') || name.trim_start_matches('-').is_empty() {
                return Err(invalid(format!(
                    "invalid Chromium flag {arg:?}: must be --name or --name=value"
                )));
            }
            let canonical = format!("--{}", name.trim_start_matches('-'));
            if RESERVED_CHROMIUM_ARGS.contains(&canonical.as_str()) {
                return Err(invalid(format!(
                    "{name} is reserved: relogin-farm sets it itself{}",
                    if canonical == "--headless" {
                        " (use browser.headless)"
                    } else {
                        ""
                    }
                )));
            }
            Ok(())
        })
    }

    /// `"auto"`, `true` or `false` (from the environment: those as strings).
    fn sandbox(&mut self, key: &str) -> Result<Option<Sandbox>> {
        let from_env = self.set_by_env(key);
        let expected = "\"auto\", true or false";
        match self.take(key) {
            None => Ok(None),
            Some(Value::Boolean(true)) => Ok(Some(Sandbox::On)),
            Some(Value::Boolean(false)) => Ok(Some(Sandbox::Off)),
            Some(Value::String(text)) => match text.trim() {
                "auto" => Ok(Some(Sandbox::Auto)),
                "true" if from_env => Ok(Some(Sandbox::On)),
                "false" if from_env => Ok(Some(Sandbox::Off)),
                _ => Err(self.invalid(key, format!("invalid value {text:?}: expected {expected}"))),
            },
            Some(other) => Err(wrong_type(self.name(key), expected, &other)),
        }
    }

    /// Host names (`login.example.com`, or `*.example.com` for it and its
    /// subdomains): no scheme, port or path.
    fn host_names(&mut self, key: &str) -> Result<Option<Vec<String>>> {
        self.string_list(key, |item_key, host| {
            let name = host.strip_prefix("*.").unwrap_or(host);
            let valid = !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-'));
            if valid {
                return Ok(());
            }
            Err(ConfigError::Invalid {
                key: item_key.to_owned(),
                reason: format!(
                    "invalid host {host:?}: a host name such as \"login.example.com\" or \"*.example.com\" (no scheme, port or path)"
                ),
            })
        })
    }

    fn secret(&mut self, key: &str) -> Result<Option<SecretRef>> {
        Ok(self
            .string(key)?
            .map(|value| SecretRef::inline(self.name(key), value)))
    }

    fn secret_file(&mut self, key: &str) -> Result<Option<SecretRef>> {
        Ok(self
            .path(key)?
            .map(|path| SecretRef::file(self.name(key), path)))
    }

    /// A claim path: at least one key, none empty.
    fn claim_path(&mut self, key: &str) -> Result<Option<Vec<String>>> {
        let list = self.string_list(key, |item_key, name| {
            if name.is_empty() {
                return Err(ConfigError::Invalid {
                    key: item_key.to_owned(),
                    reason: "must not be empty".into(),
                });
            }
            Ok(())
        })?;
        if list.as_ref().is_some_and(|l| l.is_empty()) {
            return Err(self.invalid(key, "must name at least one key"));
        }
        Ok(list)
    }

    /// OAuth scope tokens: non-empty, no whitespace (the request joins them
    /// with spaces).
    fn scopes(&mut self, key: &str) -> Result<Option<Vec<String>>> {
        self.string_list(key, |item_key, scope| {
            if scope.is_empty() || scope.contains(char::is_whitespace) {
                return Err(ConfigError::Invalid {
                    key: item_key.to_owned(),
                    reason: format!("invalid scope {scope:?}: must be non-empty, without spaces"),
                });
            }
            Ok(())
        })
    }

    /// Header names (or prefixes of them), lowercased.
    fn header_names(&mut self, key: &str) -> Result<Option<Vec<String>>> {
        let list = self.string_list(key, |item_key, name| {
            parse_header_name(name)
                .map(|_| ())
                .map_err(|reason| ConfigError::Invalid {
                    key: item_key.to_owned(),
                    reason: format!("invalid header name {name:?}: {reason}"),
                })
        })?;
        Ok(list.map(|l| l.iter().map(|n| n.to_ascii_lowercase()).collect()))
    }

    /// HTTP status codes (100..=599), such as `[401, 429, 529]`.
    fn statuses(&mut self, key: &str) -> Result<Option<Vec<u16>>> {
        let Some(value) = self.take(key) else {
            return Ok(None);
        };
        let Value::Array(items) = value else {
            return Err(wrong_type(
                self.name(key),
                "an array of status codes",
                &value,
            ));
        };
        let mut list = Vec::with_capacity(items.len());
        for (i, item) in items.into_iter().enumerate() {
            let item_key = format!("{}[{i}]", self.name(key));
            match item {
                Value::Integer(n) if (100..=599).contains(&n) => list.push(n as u16),
                Value::Integer(n) => {
                    return Err(ConfigError::Invalid {
                        key: item_key,
                        reason: format!("must be an HTTP status between 100 and 599, not {n}"),
                    })
                }
                other => return Err(wrong_type(item_key, "an integer", &other)),
            }
        }
        Ok(Some(list))
    }

    /// A table of header names to string values (names lowercased).
    fn header_values(&mut self, key: &str) -> Result<Option<BTreeMap<String, String>>> {
        let Some(value) = self.take(key) else {
            return Ok(None);
        };
        let Value::Table(table) = value else {
            return Err(wrong_type(self.name(key), "a table of strings", &value));
        };
        let mut headers = BTreeMap::new();
        for (name, value) in table {
            let item_key = format!("{}.{name}", self.name(key));
            let name = parse_header_name(&name).map_err(|reason| ConfigError::Invalid {
                key: item_key.clone(),
                reason: format!("invalid header name: {reason}"),
            })?;
            let Value::String(value) = value else {
                return Err(wrong_type(item_key, "a string", &value));
            };
            if value.bytes().any(|b| b.is_ascii_control()) {
                return Err(ConfigError::Invalid {
                    key: item_key,
                    reason: "control characters are not allowed in a header value".to_owned(),
                });
            }
            headers.insert(name, value);
        }
        Ok(Some(headers))
    }

    /// The extra authorization request parameters.
    fn authorize_params(&mut self, key: &str) -> Result<Option<BTreeMap<String, String>>> {
        self.string_table(key, RESERVED_AUTHORIZE_PARAMS)
    }

    /// A table of string values that must not touch the parameters
    /// relogin-farm sets itself (`reserved`).
    fn string_table(
        &mut self,
        key: &str,
        reserved: &[&str],
    ) -> Result<Option<BTreeMap<String, String>>> {
        let Some(value) = self.take(key) else {
            return Ok(None);
        };
        let Value::Table(table) = value else {
            return Err(wrong_type(self.name(key), "a table of strings", &value));
        };
        let mut params = BTreeMap::new();
        for (param, value) in table {
            let param_key = format!("{}.{param}", self.name(key));
            if reserved.contains(&param.as_str()) {
                return Err(ConfigError::Invalid {
                    key: param_key,
                    reason: "reserved: relogin-farm sets this parameter itself".to_owned(),
                });
            }
            let Value::String(value) = value else {
                return Err(wrong_type(param_key, "a string", &value));
            };
            params.insert(param, value);
        }
        Ok(Some(params))
    }

    /// `[[provider.token_errors]]`: classification rules, in order.
    fn token_errors(&mut self, key: &str) -> Result<Option<Vec<Rule>>> {
        let Some(value) = self.take(key) else {
            return Ok(None);
        };
        let Value::Array(items) = value else {
            return Err(wrong_type(
                self.name(key),
                "an array of tables ([[provider.token_errors]])",
                &value,
            ));
        };
        let mut rules = Vec::with_capacity(items.len());
        for (i, item) in items.into_iter().enumerate() {
            let item_key = format!("{}[{i}]", self.name(key));
            let Value::Table(mut table) = item else {
                return Err(wrong_type(item_key, "a table", &item));
            };
            rules.push(read_rule(&item_key, &mut table)?);
        }
        Ok(Some(rules))
    }

    /// A proxy URL (`http` or `https`); it may hold a password, so it is
    /// kept as a secret and never quoted.
    fn proxy_url(&mut self, key: &str) -> Result<Option<Secret>> {
        let Some(url) = self.secret_url(key)? else {
            return Ok(None);
        };
        if url.host_str().is_none_or(str::is_empty) {
            return Err(self.invalid(key, "invalid URL: no host"));
        }
        Ok(Some(Secret::new(url.to_string())))
    }
}

/// One `[[provider.token_errors]]` rule; its keys are named under `key`.
fn read_rule(key: &str, table: &mut Table) -> Result<Rule> {
    if let Some(unknown) = table
        .keys()
        .find(|k| !["status", "error", "html", "class"].contains(&k.as_str()))
    {
        return Err(ConfigError::UnknownKey {
            key: format!("{key}.{unknown}"),
        });
    }
    let invalid = |name: &str, reason: String| ConfigError::Invalid {
        key: format!("{key}.{name}"),
        reason,
    };
    let status = |n: &Value| match n {
        Value::Integer(n) if (100..=599).contains(n) => Ok(*n as u16),
        other => Err(invalid(
            "status",
            format!(
                "expected an HTTP status between 100 and 599, found {}",
                other
            ),
        )),
    };
    let rule = Rule {
        status: match table.remove("status") {
            None => None,
            Some(Value::Array(pair)) if pair.len() == 2 => {
                let (lo, hi) = (status(&pair[0])?, status(&pair[1])?);
                if lo > hi {
                    return Err(invalid("status", format!("[{lo}, {hi}] is empty")));
                }
                Some((lo, hi))
            }
            Some(one @ Value::Integer(_)) => Some((status(&one)?, status(&one)?)),
            Some(other) => {
                return Err(wrong_type(
                    format!("{key}.status"),
                    "a status or [low, high]",
                    &other,
                ))
            }
        },
        error: match table.remove("error") {
            None => None,
            Some(Value::String(code)) if !code.trim().is_empty() => Some(code),
            Some(other) => return Err(wrong_type(format!("{key}.error"), "an error code", &other)),
        },
        html: match table.remove("html") {
            None => None,
            Some(Value::Boolean(b)) => Some(b),
            Some(other) => return Err(wrong_type(format!("{key}.html"), "true or false", &other)),
        },
        class: match table.remove("class") {
            Some(Value::String(c)) if c == "dead" => Class::Dead,
            Some(Value::String(c)) if c == "transient" => Class::Transient,
            None => {
                return Err(ConfigError::Missing {
                    key: format!("{key}.class"),
                })
            }
            Some(other) => {
                return Err(invalid(
                    "class",
                    format!("expected \"dead\" or \"transient\", found {other}"),
                ))
            }
        },
    };
    Ok(rule)
}

/// `[[key]]` blocks (`value` is what the root had under `key`), each read as
/// a `T` under `key[i]`.
fn read_blocks<T: ReadTable>(key: &str, value: Option<Value>, env: &EnvLayer) -> Result<Vec<T>> {
    let items = match value {
        None => Vec::new(),
        Some(Value::Array(items)) => items,
        Some(other) => {
            let expected = format!("an array of tables ([[{key}]])");
            return Err(wrong_type(key.to_owned(), &expected, &other));
        }
    };
    let mut blocks = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let path = format!("{key}[{i}]");
        let Value::Table(table) = item else {
            return Err(wrong_type(path, "a table", &item));
        };
        let mut sec = Section::new(path, table, env);
        sec.index = Some(i);
        blocks.push(T::read(&mut sec)?);
    }
    Ok(blocks)
}

fn wrong_type(key: String, expected: &str, found: &Value) -> ConfigError {
    ConfigError::Invalid {
        key,
        reason: format!("expected {expected}, found {}", found.type_str()),
    }
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use serde::Deserialize;

    use super::*;

    type Env = Vec<(String, String)>;

    const fn minutes(n: u64) -> Duration {
        Duration::from_secs(n * 60)
    }

    fn env(pairs: &[(&str, &str)]) -> Env {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn load(text: &str, vars: &[(&str, &str)]) -> Result<Config> {
        Config::from_toml_str(text, env(vars), &Overrides::default())
    }

    /// The error's text as a user could ever see it: Display, Debug and the
    /// whole source chain.
    /// Each `(toml, env, expected)` is refused with an error starting with
    /// `expected`, and no part of the error shows `secret`.
    fn assert_refused_without_leaking(secret: &str, failures: Vec<(String, Env, &str)>) {
        for (text, vars, expected) in failures {
            let e = Config::from_toml_str(&text, vars, &Overrides::default()).unwrap_err();
            let shown = all_text(&e);
            assert!(
                e.to_string().starts_with(expected),
                "got {e}, want {expected}"
            );
            assert!(!shown.contains(secret), "secret leaked: {shown}");
        }
    }

    fn all_text(e: &ConfigError) -> String {
        let mut text = format!("{e} / {e:?}");
        let mut source = e.source();
        while let Some(s) = source {
            text.push_str(&format!(" / {s} / {s:?}"));
            source = s.source();
        }
        text
    }

    fn err(text: &str, vars: &[(&str, &str)]) -> String {
        match load(text, vars) {
            Ok(_) => panic!("expected an error for {text:?} with {vars:?}"),
            Err(e) => e.to_string(),
        }
    }

    const MINIMAL_PROVIDER: &str = r#"
        [[provider]]
        name = "demo"
        issuer = "http://127.0.0.1:19000"
        client_id = "daemon-web"
        redirect_uri = "http://127.0.0.1:18765/callback"
    "#;

    const TOKEN: &str = "admin-token-value";

    #[test]
    fn defaults() {
        let config = Config::default();
        assert_eq!(load("", &[]).unwrap(), config);
        assert_eq!(config.server.listen, "127.0.0.1:8377".parse().unwrap());
        assert_eq!(config.server.admin_token, None);
        assert_eq!(config.server.lease_ttl, minutes(10));
        assert_eq!(config.store.path, Path::new("data/farm.db"));
        assert_eq!(config.store.key_file, Path::new("data/farm.key"));
        assert_eq!(
            config.store.lease_retention,
            Duration::from_secs(30 * 86400)
        );
        assert_eq!(source(&config.scheduler.sweep), "0 */5 * * * *");
        assert_eq!(config.scheduler.max_concurrent_refreshes, 8);
        assert_eq!(config.rotation.strategy, Strategy::RoundRobin);
        assert_eq!(config.rotation.max_cooldown, minutes(360));
        assert_eq!(config.rotation.client_rate.to_string(), "6000/min");
        assert_eq!(
            config.log,
            LogConfig {
                level: "info".into(),
                format: LogFormat::Text
            }
        );
        assert!(config.providers.is_empty());
        assert_eq!(
            config.events,
            EventsConfig {
                retention: Duration::from_secs(30 * 86400),
                buffer: 1024
            }
        );
        assert!(config.webhooks.is_empty());
        let b = &config.browser;
        assert!(b.enabled && b.headless);
        assert_eq!(b.chromium, Path::new("/usr/bin/chromium"));
        assert_eq!(b.node, Path::new("/usr/bin/node"));
        assert_eq!(
            b.driver,
            Path::new("scripts/playwright/node_modules/playwright-core/cli.js")
        );
        assert_eq!(b.max_concurrent as i64, browsers_per_machine());
        assert_eq!(b.profiles_dir, Path::new("profiles"));
        assert_eq!(b.artifacts_dir, Path::new("data/artifacts"));
        assert_eq!(b.relogin_timeout, minutes(2));
        assert!(b.extra_args.is_empty());
        assert_eq!((b.retry_initial, b.retry_max), (minutes(5), minutes(360)));
    }

    #[test]
    fn load_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("farm.toml");
        let config = Config::load(&path, false, env(&[]), &Overrides::default()).unwrap();
        assert_eq!(config, Config::default());
        let e = Config::load(&path, true, env(&[]), &Overrides::default()).unwrap_err();
        assert!(matches!(e, ConfigError::ReadFile { .. }), "{e}");
        assert!(e.to_string().contains("farm.toml"), "{e}");
    }

    #[test]
    fn browsers_at_once_default_to_one_per_two_cpus() {
        let by_cpus: Vec<i64> = [1, 2, 3, 4, 6, 8, 16, 64].map(browsers_for_cpus).to_vec();
        assert_eq!(by_cpus, [1, 1, 1, 2, 3, 4, 4, 4]);
    }

    #[test]
    fn example_loads() {
        // The example's admin_token_file does not exist here; the variable
        // takes precedence, so it is not read.
        let config = load(EXAMPLE_TOML, &[("RELOGIN_FARM_ADMIN_TOKEN", TOKEN)]).unwrap();
        assert_eq!(config.server.admin_token, Some(Secret::new(TOKEN)));
        let [demo] = &config.providers[..] else {
            panic!("{:?}", config.providers)
        };
        assert_eq!(demo.name, "demo");
        assert_eq!(
            demo.endpoints,
            Endpoints::Discovery {
                issuer: Url::parse("http://127.0.0.1:19000").unwrap()
            }
        );
        assert_eq!(demo.scopes, ["openid", "offline_access"]);
        // Apart from the token file and the provider, the example shows the defaults.
        assert_eq!(
            Config {
                server: ServerConfig {
                    admin_token: None,
                    ..config.server
                },
                providers: vec![],
                ..config
            },
            Config::default()
        );
    }

    #[test]
    fn init_template_points_at_the_token_file() {
        assert!(EXAMPLE_TOML.contains(EXAMPLE_ADMIN_TOKEN_LINE));
        assert!(EXAMPLE_TOML.contains(EXAMPLE_DRIVER_LINE));
        let dir = tempfile::tempdir().unwrap();
        let token_path = dir.path().join("it's \"quoted\" \\ admin.token");
        fs::write(&token_path, format!("{TOKEN}\n")).unwrap();
        let template = init_template(token_path.to_str().unwrap(), "/srv/f \"x\"/cli.js", None);
        let config = load(&template, &[]).unwrap();
        assert_eq!(config.server.admin_token, Some(Secret::new(TOKEN)));
        assert_eq!(config.browser.driver, Path::new("/srv/f \"x\"/cli.js"));
        assert_eq!(config.server.tls, None);
    }

    #[test]
    fn init_template_sets_the_tls_files() {
        assert!(EXAMPLE_TOML.contains(EXAMPLE_TLS_CERT_LINE));
        assert!(EXAMPLE_TOML.contains(EXAMPLE_TLS_KEY_LINE));
        let files = TlsFiles {
            cert_file: PathBuf::from("data/tls.crt"),
            key_file: PathBuf::from("data/tls.key"),
        };
        let template = init_template("data/admin.token", "/srv/cli.js", Some(&files));
        let config = load(&template, &[("RELOGIN_FARM_ADMIN_TOKEN", TOKEN)]).unwrap();
        assert_eq!(config.server.tls, Some(files));
    }

    #[test]
    fn tls_files_come_in_pairs_and_limits_have_ranges() {
        assert_eq!(
            err("[server]\ntls_cert_file = \"c.pem\"", &[]),
            "server.tls_cert_file: needs server.tls_key_file too (give both or neither)"
        );
        assert_eq!(
            err("[server]\ntls_key_file = \"k.pem\"", &[]),
            "server.tls_key_file: needs server.tls_cert_file too (give both or neither)"
        );
        assert_eq!(
            err("[server]\nmax_connections = 0", &[]),
            "server.max_connections: must be between 1 and 1000000, not 0"
        );
        assert_eq!(
            err("[server]\nidle_timeout = \"0s\"", &[]),
            "server.idle_timeout: must be more than 0s"
        );
        let config = load(
            "[server]\nmax_connections = 64\nmax_connections_per_ip = 8\nheader_read_timeout = \"2s\"",
            &[],
        )
        .unwrap();
        assert_eq!(config.server.max_connections, 64);
        assert!(config.server.max_connections_configured);
        assert_eq!(config.server.max_connections_per_ip, 8);
        assert_eq!(config.server.header_read_timeout, Duration::from_secs(2));
        assert_eq!(config.server.idle_timeout, Duration::from_secs(60));
    }

    /// Uncomments every commented-out key (and the second provider) in the
    /// example: all of them must be valid.
    #[test]
    fn example_commented_keys_are_valid() {
        let uncommented: String = EXAMPLE_TOML
            .lines()
            .map(|line| match line.strip_prefix("# ") {
                Some(rest) if looks_like_toml(rest) => rest,
                _ => line,
            })
            .collect::<Vec<_>>()
            .join("\n");
        assert!(uncommented.contains("\nkey_file ="));
        let config = load(
            &uncommented,
            &[
                ("RELOGIN_FARM_ADMIN_TOKEN", TOKEN),
                ("RELOGIN_FARM_PROVIDER_DEMO_CLIENT_SECRET", "s"),
                ("RELOGIN_FARM_WEBHOOK_0_SECRET", "w"),
            ],
        )
        .unwrap();
        let [demo, legacy, devices, work] = &config.providers[..] else {
            panic!("{:?}", config.providers)
        };
        assert!(matches!(devices.endpoints, Endpoints::Device { .. }));
        // The preset block: its own issuer, the preset's scopes.
        assert_eq!(work.preset.as_deref(), Some("keycloak"));
        assert!(work.scopes.iter().any(|s| s == "offline_access"));
        assert!(matches!(work.endpoints, Endpoints::Discovery { .. }));
        assert_eq!(
            demo.login_script.as_deref(),
            Some(Path::new("scripts/login/demo.toml"))
        );
        let proxy = demo.proxy.as_ref().expect("the example's [provider.proxy]");
        assert_eq!(proxy.upstream.as_str(), "https://api.example.com/");
        assert_eq!(
            proxy.session_header.as_deref(),
            Some("x-claude-code-session-id")
        );
        assert_eq!(
            proxy.max_body,
            ProxyConfig::default().max_body,
            "the example shows the default"
        );
        let [hook] = &config.webhooks[..] else {
            panic!("{:?}", config.webhooks)
        };
        assert_eq!(hook.url.as_str(), "http://127.0.0.1:9000/hook");
        assert_eq!(
            hook.events,
            ["needs_relogin", "needs_human", "refresh_failed"]
        );
        assert_eq!(hook.secret, Some(Secret::new("w")));
        assert_eq!(
            (hook.max_attempts, hook.timeout),
            (6, Duration::from_secs(10))
        );
        assert_eq!(
            demo.extra_authorize_params
                .get("prompt")
                .map(String::as_str),
            Some("consent")
        );
        assert_eq!(legacy.client_secret, Some(Secret::new("change-me")));
        assert!(matches!(
            &legacy.endpoints,
            Endpoints::Manual {
                introspection_url: Some(_),
                ..
            }
        ));
    }

    fn looks_like_toml(line: &str) -> bool {
        line.starts_with('[')
            || line.split_once(" = ").is_some_and(|(key, _)| {
                !key.is_empty() && key.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
            })
    }

    #[test]
    fn each_layer_overrides_the_previous() {
        let file = r#"
            [server]
            listen = "127.0.0.1:1001"
            [store]
            path = "file/farm.db"
            [log]
            level = "warn"
        "#;
        let config = load(file, &[]).unwrap();
        assert_eq!(config.server.listen.port(), 1001);
        assert_eq!(config.store.key_file, Path::new("file/farm.key"));
        assert_eq!(config.backup.dir, Path::new("file/backups"));
        assert_eq!(config.log.level, "warn");
        assert_eq!(config.scheduler, SchedulerConfig::default());

        let vars = env(&[
            ("RELOGIN_FARM_SERVER_LISTEN", "127.0.0.1:1002"),
            ("RELOGIN_FARM_STORE_PATH", "env/farm.db"),
            ("RELOGIN_FARM_LOG_LEVEL", "debug"),
            ("RELOGIN_FARM_SCHEDULER_MAX_CONCURRENT_REFRESHES", "3"),
        ]);
        let config = Config::from_toml_str(file, vars.clone(), &Overrides::default()).unwrap();
        assert_eq!(config.server.listen.port(), 1002);
        assert_eq!(config.store.path, Path::new("env/farm.db"));
        assert_eq!(config.store.key_file, Path::new("env/farm.key"));
        assert_eq!(config.log.level, "debug");
        assert_eq!(config.scheduler.max_concurrent_refreshes, 3);

        let flags = Overrides {
            listen: Some("127.0.0.1:1003".parse().unwrap()),
            store_path: Some("flag/farm.db".into()),
            log_level: Some("trace".into()),
        };
        let config = Config::from_toml_str(file, vars, &flags).unwrap();
        assert_eq!(config.server.listen.port(), 1003);
        assert_eq!(config.store.path, Path::new("flag/farm.db"));
        assert_eq!(config.store.key_file, Path::new("flag/farm.key"));
        assert_eq!(config.backup.dir, Path::new("flag/backups"));
        assert_eq!(config.log.level, "trace");
    }

    #[test]
    fn backup_section() {
        let d = load("", &[]).unwrap().backup;
        assert_eq!(
            (source(&d.schedule), d.dir.as_path(), d.keep),
            ("0 30 3 * * *", Path::new("data/backups"), 7)
        );
        let flags = Overrides {
            store_path: Some("elsewhere/x.db".into()),
            ..Overrides::default()
        };
        let text = "[backup]\nschedule = \"\"\ndir = \"/srv/farm-backups\"\nkeep = 30";
        let b = Config::from_toml_str(text, env(&[]), &flags)
            .unwrap()
            .backup;
        assert_eq!(
            (b.schedule, b.dir.as_path(), b.keep),
            (None, Path::new("/srv/farm-backups"), 30)
        );
        let b = load(
            "",
            &[
                ("RELOGIN_FARM_BACKUP_SCHEDULE", "@daily"),
                ("RELOGIN_FARM_BACKUP_KEEP", "2"),
            ],
        )
        .unwrap()
        .backup;
        assert_eq!((source(&b.schedule), b.keep), ("@daily", 2));
        for (text, expected) in [
            ("[backup]\nkeep = 0", "backup.keep: "),
            ("[backup]\nkeep = 1001", "backup.keep: "),
            (
                "[backup]\nschedule = \"30 3 * * *\"",
                "backup.schedule: invalid cron expression",
            ),
            ("[backup]\nevery = \"1d\"", "backup.every: unknown key"),
        ] {
            let e = err(text, &[]);
            assert!(e.starts_with(expected), "{text}: {e}");
        }
    }

    #[test]
    fn explicit_key_file_stays_put() {
        let flags = Overrides {
            store_path: Some("elsewhere/x.db".into()),
            ..Overrides::default()
        };
        let config =
            Config::from_toml_str("[store]\nkey_file = \"k/farm.key\"", env(&[]), &flags).unwrap();
        assert_eq!(config.store.key_file, Path::new("k/farm.key"));
        let config = load("", &[("RELOGIN_FARM_KEY_FILE", "e/k")]).unwrap();
        assert_eq!(config.store.key_file, Path::new("e/k"));
    }

    #[test]
    fn unknown_keys_are_named() {
        for section in [
            "server",
            "store",
            "scheduler",
            "rotation",
            "log",
            "events",
            "browser",
        ] {
            assert_eq!(
                err(&format!("[{section}]\nbogus = 1"), &[]),
                format!("{section}.bogus: unknown key")
            );
        }
        assert_eq!(err("bogus = 1", &[]), "bogus: unknown key");
        assert_eq!(
            err("[schedular]\nsweep = \"\"", &[]),
            "schedular: unknown key"
        );
        let text = format!("{MINIMAL_PROVIDER}\n[[provider]]\nname = \"b\"\nbogus = 1");
        assert_eq!(err(&text, &[]), "provider[1].bogus: unknown key");
        let text = format!("{WEBHOOK}\n[[webhook]]\nurl = \"http://h/\"\nbogus = 1");
        assert_eq!(err(&text, &[]), "webhook[1].bogus: unknown key");
        assert_eq!(
            err("[[webhooks]]\nurl = \"http://h/\"", &[]),
            "webhooks: unknown key"
        );
    }

    #[test]
    fn bad_values_are_named() {
        let cases = [
            ("[scheduler]\nrefresh_margin = \"5 parsecs\"", "scheduler.refresh_margin: invalid duration \"5 parsecs\""),
            ("[scheduler]\nmax_sleep = \"0s\"", "scheduler.max_sleep: must be more than 0s"),
            ("[scheduler]\nretry_max = \"400days\"", "scheduler.retry_max: must be at most 365 days"),
            ("[scheduler]\nretry_initial = \"10m\"", "scheduler.retry_max: 5m must be at least scheduler.retry_initial (10m)"),
            ("[rotation]\nclient_rate = \"600/day\"", "rotation.client_rate: invalid rate \"600/day\": expected <count>/<s|min|h> such as \"600/min\", found \"600/day\""),
            ("[rotation]\nstrategy = \"random\"", "rotation.strategy: invalid strategy \"random\": expected one of round-robin | least-used | fill-first | sticky"),
            ("[rotation]\ndefault_cooldown = \"7h\"", "rotation.max_cooldown: 6h must be at least rotation.default_cooldown (7h)"),
            ("[scheduler]\nsweep = \"0 61 * * * *\"", "scheduler.sweep: invalid cron expression \"0 61 * * * *\": Minutes must be"),
            ("[scheduler]\nsweep = \"*/5 * * * *\"", "scheduler.sweep: invalid cron expression \"*/5 * * * *\": needs 6 or 7 fields, seconds first (e.g. \"0 */5 * * * *\")"),
            ("[scheduler]\nmax_concurrent_refreshes = 0", "scheduler.max_concurrent_refreshes: must be between 1 and 1024, not 0"),
            ("[scheduler]\nmax_concurrent_refreshes = \"8\"", "scheduler.max_concurrent_refreshes: expected an integer, found string"),
            ("[server]\nlisten = \"localhost\"", "server.listen: invalid socket address \"localhost\""),
            ("[server]\nlisten = 8377", "server.listen: expected a string, found integer"),
            ("[log]\nformat = \"xml\"", "log.format: invalid log format \"xml\": expected one of text | json"),
            ("[log]\nlevel = \" \"", "log.level: invalid log level \" \": must not be empty"),
            ("[store]\npath = \"\"", "store.path: invalid path \"\": must not be empty"),
            ("server = 1", "server: expected a table, found integer"),
            ("[events]\nretention = \"0s\"", "events.retention: must be more than 0s"),
            ("[store]\nlease_retention = \"0s\"", "store.lease_retention: must be more than 0s"),
            ("[store]\nlease_retention = \"a month\"", "store.lease_retention: invalid duration \"a month\""),
            ("[events]\nretention = \"forever\"", "events.retention: invalid duration \"forever\""),
            ("[events]\nbuffer = 8", "events.buffer: must be between 16 and 65536, not 8"),
            ("[events]\nbuffer = 100000", "events.buffer: must be between 16 and 65536, not 100000"),
            ("events = []", "events: expected a table, found array"),
            ("[browser]\nenabled = \"no\"", "browser.enabled: expected true or false, found string"),
            ("[browser]\nheadless = 1", "browser.headless: expected true or false, found integer"),
            ("[browser]\nmax_concurrent = 0", "browser.max_concurrent: must be between 1 and 16, not 0"),
            ("[browser]\nmax_concurrent = 17", "browser.max_concurrent: must be between 1 and 16, not 17"),
            ("[browser]\nrelogins_per_minute = 0", "browser.relogins_per_minute: must be between 1 and 600, not 0"),
            ("[browser]\nrelogins_per_minute = 601", "browser.relogins_per_minute: must be between 1 and 600, not 601"),
            ("[browser]\nchromium = \"\"", "browser.chromium: invalid path \"\": must not be empty"),
            ("[browser]\nprofiles_dir = 1", "browser.profiles_dir: expected a string, found integer"),
            ("[browser]\nrelogin_timeout = \"0s\"", "browser.relogin_timeout: must be more than 0s"),
            ("[browser]\nretry_initial = \"7h\"", "browser.retry_max: 6h must be at least browser.retry_initial (7h)"),
            ("[browser]\nextra_args = \"--lang=de\"", "browser.extra_args: expected an array of strings, found string"),
            ("[browser]\nextra_args = [\"--lang=de\", 1]", "browser.extra_args[1]: expected a string, found integer"),
            ("[browser]\nextra_args = [\"no-sandbox\"]", "browser.extra_args[0]: invalid Chromium flag \"no-sandbox\": must be --name or --name=value"),
            ("[browser]\nextra_args = [\"--\"]", "browser.extra_args[0]: invalid Chromium flag \"--\""),
            ("[browser]\nsandbox = \"yes\"", "browser.sandbox: invalid value \"yes\": expected \"auto\", true or false"),
            ("[browser]\nsandbox = 1", "browser.sandbox: expected \"auto\", true or false, found integer"),
            ("[browser]\nallowed_hosts = [\"https://x.test\"]", "browser.allowed_hosts[0]: invalid host \"https://x.test\": a host name such as \"login.example.com\" or \"*.example.com\" (no scheme, port or path)"),
            ("[browser]\nallowed_hosts = [\"x.test:443\"]", "browser.allowed_hosts[0]: invalid host \"x.test:443\": a host name such as \"login.example.com\" or \"*.example.com\" (no scheme, port or path)"),
            ("[browser]\nextra_args = [\"--lang=de\", \"--headless=new\"]", "browser.extra_args[1]: --headless is reserved: relogin-farm sets it itself (use browser.headless)"),
            ("[browser]\nextra_args = [\"-user-data-dir=/tmp/x\"]", "browser.extra_args[0]: -user-data-dir is reserved"),
            ("[browser]\nextra_args = [\"--remote-debugging-port=9222\"]", "browser.extra_args[0]: --remote-debugging-port is reserved"),
        ];
        for (text, expected) in cases {
            let e = err(text, &[]);
            assert!(
                e.starts_with(expected),
                "{text:?}: got {e:?}, want {expected:?}"
            );
        }
    }

    #[test]
    fn bad_env_values_name_the_variable() {
        let e = err(
            "",
            &[("RELOGIN_FARM_SCHEDULER_REFRESH_MARGIN", "5 parsecs")],
        );
        assert!(
            e.starts_with("scheduler.refresh_margin (from RELOGIN_FARM_SCHEDULER_REFRESH_MARGIN): invalid duration \"5 parsecs\""),
            "{e}"
        );
        let e = err(
            "",
            &[("RELOGIN_FARM_SCHEDULER_MAX_CONCURRENT_REFRESHES", "2000")],
        );
        assert!(
            e.contains("(from RELOGIN_FARM_SCHEDULER_MAX_CONCURRENT_REFRESHES): must be between"),
            "{e}"
        );
        let e = err("", &[("RELOGIN_FARM_KEY", "not-a-key")]);
        assert_eq!(
            e,
            "RELOGIN_FARM_KEY: expected base64 of 32 bytes (44 characters)"
        );
        let e = err("", &[("RELOGIN_FARM_LOG_LEVEL", "")]);
        assert!(
            e.starts_with("log.level (from RELOGIN_FARM_LOG_LEVEL): "),
            "{e}"
        );
    }

    /// Every overridable key is actually read from its variable: an invalid
    /// value in each one is reported under that variable's name.
    #[test]
    fn every_env_key_is_read() {
        for key in &env_keys() {
            let var = env_var(key);
            let value = if [
                "scheduler.sweep",
                "backup.schedule",
                "digest.schedule",
                "browser.canary",
            ]
            .contains(&key.as_str())
            {
                "bogus"
            } else {
                ""
            };
            let e = err("", &[(&var, value)]);
            assert!(
                e.starts_with(&format!("{key} (from {var}): ")),
                "{var}: {e}"
            );
        }
    }

    #[test]
    fn env_keys_and_secrets() {
        let key = "A".repeat(43) + "=";
        let config = load(
            "",
            &[
                ("RELOGIN_FARM_ROTATION_STRATEGY", "fill-first"),
                ("RELOGIN_FARM_LOG_FORMAT", "json"),
                ("RELOGIN_FARM_KEY", &key),
                ("RELOGIN_FARM_ADMIN_TOKEN", TOKEN),
            ],
        )
        .unwrap();
        assert_eq!(config.rotation.strategy, Strategy::FillFirst);
        assert_eq!(config.log.format, LogFormat::Json);
        assert_eq!(config.store.key, Some(Secret::new(key.clone())));
        assert_eq!(config.server.admin_token, Some(Secret::new(TOKEN)));
        assert!(load("", &[("RELOGIN_FARM_KEY", &key[..43])]).is_ok());
        let e = err(
            "",
            &[("RELOGIN_FARM_KEY", &key), ("RELOGIN_FARM_KEY_FILE", "k")],
        );
        assert_eq!(
            e,
            "RELOGIN_FARM_KEY: conflicts with RELOGIN_FARM_KEY_FILE; set only one"
        );
    }

    #[test]
    fn unknown_env_vars_are_rejected() {
        let e = err("", &[("RELOGIN_FARM_LISTEN", "127.0.0.1:1")]);
        assert!(
            e.starts_with("RELOGIN_FARM_LISTEN: unknown variable"),
            "{e}"
        );
        let e = err("", &[("RELOGIN_FARM_PROVIDER_NOPE_CLIENT_SECRET", "x")]);
        assert!(
            e.starts_with(
                "RELOGIN_FARM_PROVIDER_NOPE_CLIENT_SECRET: unknown variable (no [[provider]]"
            ),
            "{e}"
        );
        // Other components' variables and foreign ones pass.
        load(
            "",
            &[
                ("RELOGIN_FARM_CONFIG", "farm.toml"),
                ("RELOGIN_FARM_DEMO_PORT", "1"),
                ("HOME", "/root"),
                ("RUST_LOG", "x"),
            ],
        )
        .unwrap();
    }

    #[test]
    fn env_overrides_events_and_browser() {
        let file = "[browser]\nheadless = true\nmax_concurrent = 3\n[events]\nbuffer = 64";
        let config = load(
            file,
            &[
                ("RELOGIN_FARM_EVENTS_RETENTION", "7d"),
                ("RELOGIN_FARM_STORE_LEASE_RETENTION", "90d"),
                ("RELOGIN_FARM_EVENTS_BUFFER", "4096"),
                ("RELOGIN_FARM_BROWSER_ENABLED", "false"),
                ("RELOGIN_FARM_BROWSER_HEADLESS", " false "),
                ("RELOGIN_FARM_BROWSER_MAX_CONCURRENT", "4"),
                ("RELOGIN_FARM_BROWSER_RELOGINS_PER_MINUTE", "12"),
                ("RELOGIN_FARM_BROWSER_CHROMIUM", "/opt/chromium/chrome"),
                ("RELOGIN_FARM_BROWSER_NODE", "node"),
                ("RELOGIN_FARM_BROWSER_DRIVER", "d/cli.js"),
                ("RELOGIN_FARM_BROWSER_PROFILES_DIR", "p"),
                ("RELOGIN_FARM_BROWSER_ARTIFACTS_DIR", "a"),
                ("RELOGIN_FARM_BROWSER_RELOGIN_TIMEOUT", "90s"),
                ("RELOGIN_FARM_BROWSER_RETRY_INITIAL", "1m"),
                ("RELOGIN_FARM_BROWSER_RETRY_MAX", "1h"),
                ("RELOGIN_FARM_BROWSER_SANDBOX", "false"),
            ],
        )
        .unwrap();
        assert_eq!(
            config.events,
            EventsConfig {
                retention: Duration::from_secs(7 * 86400),
                buffer: 4096
            }
        );
        assert_eq!(
            config.store.lease_retention,
            Duration::from_secs(90 * 86400)
        );
        assert_eq!(
            config.browser,
            BrowserSettings {
                enabled: false,
                chromium: "/opt/chromium/chrome".into(),
                node: "node".into(),
                driver: "d/cli.js".into(),
                headless: false,
                max_concurrent: 4,
                relogins_per_minute: 12,
                profiles_dir: "p".into(),
                artifacts_dir: "a".into(),
                relogin_timeout: Duration::from_secs(90),
                driver_linger: Duration::from_secs(30),
                extra_args: vec![],
                retry_initial: minutes(1),
                retry_max: minutes(60),
                sandbox: Sandbox::Off,
                allowed_hosts: vec![],
                session_idle: minutes(10),
                session_max: minutes(60),
                canary: BrowserSettings::default().canary,
            }
        );
        let config = load(
            "[browser]\nenabled = false",
            &[("RELOGIN_FARM_BROWSER_ENABLED", "true")],
        )
        .unwrap();
        assert!(config.browser.enabled);

        let e = err("", &[("RELOGIN_FARM_BROWSER_HEADLESS", "yes")]);
        assert_eq!(
            e,
            "browser.headless (from RELOGIN_FARM_BROWSER_HEADLESS): invalid boolean \"yes\": expected true or false"
        );
        let e = err("", &[("RELOGIN_FARM_EVENTS_BUFFER", "1")]);
        assert_eq!(
            e,
            "events.buffer (from RELOGIN_FARM_EVENTS_BUFFER): must be between 16 and 65536, not 1"
        );
        let e = err("", &[("RELOGIN_FARM_BROWSER_RETRY_INITIAL", "7h")]);
        assert_eq!(
            e,
            "browser.retry_max: 6h must be at least browser.retry_initial (7h)"
        );
        // Arrays and webhook keys have no variables.
        assert!(err("", &[("RELOGIN_FARM_BROWSER_EXTRA_ARGS", "--x")])
            .starts_with("RELOGIN_FARM_BROWSER_EXTRA_ARGS: unknown variable"));
        assert!(err("", &[("RELOGIN_FARM_WEBHOOK_0_URL", "http://h/")])
            .starts_with("RELOGIN_FARM_WEBHOOK_0_URL: unknown variable"));
    }

    const WEBHOOK: &str = r#"
        [[webhook]]
        url = "https://hooks.example.com/services/T0/B0/tokenpart"
    "#;

    #[test]
    fn event_kinds_are_unique_snake_case() {
        let unique: BTreeSet<&str> = EventKind::NAMES.iter().copied().collect();
        assert_eq!(unique.len(), EventKind::NAMES.len());
        for kind in EventKind::NAMES {
            assert!(
                kind.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{kind}"
            );
        }
    }

    #[test]
    fn webhooks() {
        let config = load(WEBHOOK, &[]).unwrap();
        let [hook] = &config.webhooks[..] else {
            panic!("{:?}", config.webhooks)
        };
        assert!(hook.events.is_empty());
        assert!(EventKind::NAMES.iter().all(|k| hook.wants(k)));
        assert_eq!(hook.secret, None);
        assert_eq!(hook.max_attempts, 6);
        assert_eq!(hook.timeout, Duration::from_secs(10));

        let text = format!(
            "{WEBHOOK}events = []\n[[webhook]]\nurl = \"http://127.0.0.1:9/h\"\nevents = [\"needs_human\", \"webhook_failed\"]\nmax_attempts = 20\ntimeout = \"1m\""
        );
        let config = load(&text, &[]).unwrap();
        let [all, some] = &config.webhooks[..] else {
            panic!("{:?}", config.webhooks)
        };
        assert!(all.events.is_empty() && all.wants("refresh_ok"));
        assert_eq!(some.events, ["needs_human", "webhook_failed"]);
        assert!(some.wants("needs_human") && !some.wants("refresh_ok"));
        assert_eq!((some.max_attempts, some.timeout), (20, minutes(1)));

        let with = |extra: &str| format!("{WEBHOOK}{extra}");
        let e = err(&with("events = [\"needs_human\", \"needs_humans\"]"), &[]);
        assert_eq!(
            e,
            format!(
                "webhook[0].events[1]: unknown event kind \"needs_humans\": expected one of {}",
                EventKind::NAMES.join(" | ")
            )
        );
        assert!(e.contains("account_added | account_removed") && e.ends_with("| digest"));
        let cases = [
            (with("events = [\"refresh_ok\", \"refresh_ok\"]"), "webhook[0].events[1]: duplicate event kind \"refresh_ok\" (also webhook[0].events[0])"),
            (with("events = \"needs_human\""), "webhook[0].events: expected an array of strings, found string"),
            (with("events = [1]"), "webhook[0].events[0]: expected a string, found integer"),
            (with("max_attempts = 0"), "webhook[0].max_attempts: must be between 1 and 20, not 0"),
            (with("max_attempts = 21"), "webhook[0].max_attempts: must be between 1 and 20, not 21"),
            (with("timeout = \"0s\""), "webhook[0].timeout: must be more than 0s"),
            ("[[webhook]]\nevents = []".into(), "webhook[0].url: missing"),
            ("[webhook]\nurl = \"http://h/\"".into(), "webhook: expected an array of tables ([[webhook]]), found table"),
            ("webhook = [1]".into(), "webhook[0]: expected a table, found integer"),
        ];
        for (text, expected) in cases {
            assert_eq!(err(&text, &[]), expected, "{text}");
        }
    }

    /// Webhook URLs may carry a credential: errors and `Debug` never show
    /// more than the origin.
    #[test]
    fn webhook_urls_are_not_shown() {
        const TOKEN_PART: &str = "tokenpart";
        let config = load(WEBHOOK, &[]).unwrap();
        let shown = format!("{:?}", config);
        assert!(shown.contains("https://hooks.example.com/***"), "{shown}");
        assert!(!shown.contains(TOKEN_PART), "{shown}");
        let with_user = "[[webhook]]\nurl = \"https://user:tokenpart@h.example/x?k=tokenpart\"";
        let shown = format!("{:?}", load(with_user, &[]).unwrap());
        assert!(!shown.contains(TOKEN_PART), "{shown}");

        for (url, expected) in [
            (
                "ftp://h.example/tokenpart",
                "webhook[0].url: invalid URL: scheme must be http or https, not ftp",
            ),
            (
                "hooks.example.com/tokenpart",
                "webhook[0].url: invalid URL: relative URL without a base",
            ),
            (
                "https://tokenpart:99999/",
                "webhook[0].url: invalid URL: invalid port number",
            ),
        ] {
            let e = load(&format!("[[webhook]]\nurl = \"{url}\""), &[]).unwrap_err();
            assert_eq!(e.to_string(), expected);
            assert!(!all_text(&e).contains(TOKEN_PART), "{}", all_text(&e));
        }
    }

    #[test]
    fn provider_login_script() {
        let config = load(MINIMAL_PROVIDER, &[]).unwrap();
        assert_eq!(config.providers[0].login_script, None);
        let text = format!("{MINIMAL_PROVIDER}\nlogin_script = \"scripts/login/demo.toml\"");
        let config = load(&text, &[]).unwrap();
        assert_eq!(
            config.providers[0].login_script.as_deref(),
            Some(Path::new("scripts/login/demo.toml"))
        );
        assert!(!config.providers[0].reuse_detection);
        let text = format!("{MINIMAL_PROVIDER}\nreuse_detection = true");
        assert!(load(&text, &[]).unwrap().providers[0].reuse_detection);
        let text = format!("{MINIMAL_PROVIDER}\nreuse_detection = \"yes\"");
        assert_eq!(
            err(&text, &[]),
            "provider[0].reuse_detection: expected true or false, found string"
        );
        let text = format!("{MINIMAL_PROVIDER}\nlogin_script = \"\"");
        assert_eq!(
            err(&text, &[]),
            "provider[0].login_script: invalid path \"\": must not be empty"
        );
        let text = format!("{MINIMAL_PROVIDER}\nlogin_script = [\"a\"]");
        assert_eq!(
            err(&text, &[]),
            "provider[0].login_script: expected a string, found array"
        );
    }

    #[test]
    fn provider_identity() {
        use crate::domain::identity::{Rule, Source};
        let config = load(MINIMAL_PROVIDER, &[]).unwrap();
        assert_eq!(config.providers[0].identity, None);
        assert_eq!(IdentityConfig::rule(None), Rule::default());
        let text = format!(
            "{MINIMAL_PROVIDER}identity = {{ from = \"access_token\", claim = [\"https://api.openai.com/auth\", \"chatgpt_account_id\"] }}\n"
        );
        let identity = load(&text, &[]).unwrap().providers[0]
            .identity
            .clone()
            .unwrap();
        assert_eq!(
            IdentityConfig::rule(Some(&identity)),
            Rule {
                from: Source::AccessToken,
                claim: vec![
                    "https://api.openai.com/auth".into(),
                    "chatgpt_account_id".into()
                ],
                required: true,
            }
        );
        let text = format!(
            "{MINIMAL_PROVIDER}identity = {{ from = \"userinfo\", url = \"http://127.0.0.1:9/me\" }}\n"
        );
        let identity = load(&text, &[]).unwrap().providers[0]
            .identity
            .clone()
            .unwrap();
        assert_eq!(
            (identity.from, identity.claim.as_slice()),
            (Source::Userinfo, &["sub".to_owned()][..])
        );
        assert_eq!(identity.url.unwrap().as_str(), "http://127.0.0.1:9/me");
        for (bad, message) in [
            ("identity = { from = \"cookie\" }", "provider[0].identity.from: invalid source \"cookie\": expected id_token | access_token | userinfo"),
            ("identity = { claim = [] }", "provider[0].identity.claim: must name at least one key"),
            ("identity = { claim = [\"a\", \"\"] }", "provider[0].identity.claim[1]: must not be empty"),
            ("identity = { form = \"id_token\" }", "provider[0].identity.form: unknown key"),
            ("identity = \"sub\"", "provider[0].identity: expected a table"),
        ] {
            let e = err(&format!("{MINIMAL_PROVIDER}{bad}\n"), &[]);
            assert!(e.contains(message), "{bad}: {e}");
        }
    }

    #[test]
    fn provider_proxy_section() {
        let config = load(MINIMAL_PROVIDER, &[]).unwrap();
        assert_eq!(config.providers[0].proxy, None);
        let text =
            format!("{MINIMAL_PROVIDER}\n[provider.proxy]\nupstream = \"http://127.0.0.1:9/\"");
        let proxy = load(&text, &[]).unwrap().providers[0]
            .proxy
            .clone()
            .unwrap();
        let d = ProxyConfig::default();
        assert_eq!(proxy.upstream.as_str(), "http://127.0.0.1:9/");
        assert_eq!(
            (proxy.max_body, &proxy.failover_on, proxy.max_attempts),
            (32 * 1024 * 1024, &vec![401, 429, 529], 3)
        );
        assert_eq!(proxy.quota_headers, d.quota_headers);
        assert_eq!(
            (proxy.auth_header.as_str(), proxy.auth_scheme.as_str()),
            ("authorization", "Bearer")
        );
        assert_eq!(proxy.usage_url, None);
        assert_eq!(source(&proxy.usage_schedule), "0 */5 * * * *");
        assert_eq!(proxy.usage_timeout, Duration::from_secs(30));

        let text = format!(
            r#"{MINIMAL_PROVIDER}
            [provider.proxy]
            upstream = "https://api.example.com"
            headers = {{ "Anthropic-Beta" = "oauth-2025-04-20" }}
            auth_header = "X-Api-Key"
            auth_scheme = ""
            session_header = "x-claude-session"
            max_body = 1024
            failover_on = [429]
            max_attempts = 5
            reset_headers = ["x-reset"]
            quota_headers = ["x-q-"]
            connect_timeout = "2s"
            first_byte_timeout = "30s"
            idle_timeout = "1m"
            usage_url = "https://api.example.com/api/oauth/usage"
            usage_schedule = "0 0 * * * *"
            usage_timeout = "5s"
            "#
        );
        let proxy = load(&text, &[]).unwrap().providers[0]
            .proxy
            .clone()
            .unwrap();
        assert_eq!(proxy.headers["anthropic-beta"], "oauth-2025-04-20");
        assert_eq!(
            (proxy.auth_header.as_str(), proxy.auth_scheme.as_str()),
            ("x-api-key", "")
        );
        assert_eq!(proxy.session_header.as_deref(), Some("x-claude-session"));
        assert_eq!((proxy.max_body, proxy.max_attempts), (1024, 5));
        assert_eq!(proxy.failover_on, [429]);
        assert_eq!(proxy.reset_headers, ["x-reset"]);
        assert_eq!(proxy.quota_headers, ["x-q-"]);
        assert_eq!(proxy.connect_timeout, Duration::from_secs(2));
        assert_eq!(proxy.first_byte_timeout, Duration::from_secs(30));
        assert_eq!(proxy.idle_timeout, Duration::from_secs(60));
        assert_eq!(
            proxy.usage_url.as_ref().map(Url::as_str),
            Some("https://api.example.com/api/oauth/usage")
        );
        assert_eq!(source(&proxy.usage_schedule), "0 0 * * * *");
        assert_eq!(proxy.usage_timeout, Duration::from_secs(5));

        for (body, expected) in [
            ("max_body = 1", "provider[0].proxy.upstream: missing"),
            (
                "upstream = \"ftp://x\"",
                "provider[0].proxy.upstream: invalid URL",
            ),
            (
                "upstream = \"http://x\"\nfailover_on = [700]",
                "provider[0].proxy.failover_on[0]: must be an HTTP status",
            ),
            (
                "upstream = \"http://x\"\nmax_attempts = 0",
                "provider[0].proxy.max_attempts: must be between 1 and 10",
            ),
            (
                "upstream = \"http://x\"\nmax_body = 0",
                "provider[0].proxy.max_body: must be between",
            ),
            (
                "upstream = \"http://x\"\nheaders = {{ \"a b\" = \"1\" }}",
                "provider[0].proxy.headers.a b: invalid header name",
            ),
            (
                "upstream = \"http://x\"\nquota_headers = [\"a:\"]",
                "provider[0].proxy.quota_headers[0]: invalid header name",
            ),
            (
                "upstream = \"http://x\"\nauth_scheme = \"a b\"",
                "provider[0].proxy.auth_scheme: invalid scheme",
            ),
            (
                "upstream = \"http://x\"\nusage_url = \"x\"",
                "provider[0].proxy.usage_url: invalid URL",
            ),
            (
                "upstream = \"http://x\"\nusage_schedule = \"*/5 * * * *\"",
                "provider[0].proxy.usage_schedule: invalid cron expression",
            ),
            (
                "upstream = \"http://x\"\nusage_timeout = \"0s\"",
                "provider[0].proxy.usage_timeout: must be more than 0s",
            ),
            (
                "upstream = \"http://x\"\nidle_timeout = \"0s\"",
                "provider[0].proxy.idle_timeout: must be more than 0s",
            ),
            (
                "upstream = \"http://x\"\nbogus = 1",
                "provider[0].proxy.bogus: unknown key",
            ),
        ] {
            let text = format!(
                "{MINIMAL_PROVIDER}\n[provider.proxy]\n{}",
                body.replace("{{", "{").replace("}}", "}")
            );
            let e = err(&text, &[]);
            assert!(e.starts_with(expected), "{body}: got {e}, want {expected}");
        }
        let text = format!("{MINIMAL_PROVIDER}\nproxy = 3");
        assert_eq!(
            err(&text, &[]),
            "provider[0].proxy: expected a table, found integer"
        );
    }

    #[test]
    fn webhook_secrets_are_read_and_never_shown() {
        const SECRET: &str = "hmac-key-very-secret";
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("webhook.secret");
        fs::write(&file, format!("{SECRET}\n")).unwrap();
        let file = file.to_str().unwrap();
        let empty = dir.path().join("empty");
        fs::write(&empty, "").unwrap();
        let empty = empty.to_str().unwrap();
        let two = format!("{WEBHOOK}{WEBHOOK}");
        let with = |extra: &str| format!("{WEBHOOK}{extra}");
        let secret_file = format!("secret_file = {}", Value::String(file.into()));

        let config = load(&with(&secret_file), &[]).unwrap();
        assert_eq!(config.webhooks[0].secret, Some(Secret::new(SECRET)));
        assert!(!format!("{config:?}").contains(SECRET));
        let config = load(&with(&format!("secret = \"{SECRET}\"")), &[]).unwrap();
        assert_eq!(config.webhooks[0].secret, Some(Secret::new(SECRET)));
        // The variable wins, and the file it overrides is not read.
        let config = load(
            &with("secret_file = \"does/not/exist\""),
            &[("RELOGIN_FARM_WEBHOOK_0_SECRET_FILE", file)],
        )
        .unwrap();
        assert_eq!(config.webhooks[0].secret, Some(Secret::new(SECRET)));
        // N is the index: only the second webhook gets this one.
        let config = load(&two, &[("RELOGIN_FARM_WEBHOOK_1_SECRET", SECRET)]).unwrap();
        assert_eq!(config.webhooks[0].secret, None);
        assert_eq!(config.webhooks[1].secret, Some(Secret::new(SECRET)));

        let failures: Vec<(String, Env, &str)> = vec![
            (with("secret_file = \"does/not/exist\""), env(&[]), "webhook[0].secret_file: cannot read secret file does/not/exist"),
            (with(&format!("secret = \"{SECRET}\"\n{secret_file}")), env(&[]), "webhook[0].secret: conflicts with webhook[0].secret_file; set only one"),
            (with(&format!("secret = [\"{SECRET}\"]")), env(&[]), "webhook[0].secret: expected a string, found array"),
            (with("secret = \"\""), env(&[]), "webhook[0].secret: the secret is empty"),
            (with(&format!("secret = \"{SECRET}")), env(&[]), "TOML syntax error at line 4, column"),
            (with(&format!("secrets = \"{SECRET}\"")), env(&[]), "webhook[0].secrets: unknown key"),
            (WEBHOOK.into(), env(&[("RELOGIN_FARM_WEBHOOK_0_SECRET", SECRET), ("RELOGIN_FARM_WEBHOOK_0_SECRET_FILE", file)]), "RELOGIN_FARM_WEBHOOK_0_SECRET: conflicts with RELOGIN_FARM_WEBHOOK_0_SECRET_FILE; set only one"),
            (WEBHOOK.into(), env(&[("RELOGIN_FARM_WEBHOOK_0_SECRET_FILE", empty)]), "RELOGIN_FARM_WEBHOOK_0_SECRET_FILE: the secret is empty"),
            (WEBHOOK.into(), env(&[("RELOGIN_FARM_WEBHOOK_0_SECRET_FILE", dir.path().to_str().unwrap())]), "RELOGIN_FARM_WEBHOOK_0_SECRET_FILE: cannot read secret file"),
            (two.clone(), env(&[("RELOGIN_FARM_WEBHOOK_2_SECRET", SECRET)]), "RELOGIN_FARM_WEBHOOK_2_SECRET: unknown variable (no [[webhook]] with index 2 (indexes start at 0; there are 2))"),
            (WEBHOOK.into(), env(&[("RELOGIN_FARM_WEBHOOK_1_SECRET_FILE", file)]), "RELOGIN_FARM_WEBHOOK_1_SECRET_FILE: unknown variable (no [[webhook]] with index 1 (indexes start at 0; there is 1))"),
            (String::new(), env(&[("RELOGIN_FARM_WEBHOOK_0_SECRET", SECRET)]), "RELOGIN_FARM_WEBHOOK_0_SECRET: unknown variable (no [[webhook]] with index 0"),
            (two, env(&[("RELOGIN_FARM_WEBHOOK_01_SECRET", SECRET)]), "RELOGIN_FARM_WEBHOOK_01_SECRET: unknown variable"),
            (WEBHOOK.into(), env(&[("RELOGIN_FARM_WEBHOOK_SECRET", SECRET)]), "RELOGIN_FARM_WEBHOOK_SECRET: unknown variable"),
            (WEBHOOK.into(), env(&[("RELOGIN_FARM_WEBHOOK_X_SECRET", SECRET)]), "RELOGIN_FARM_WEBHOOK_X_SECRET: unknown variable"),
        ];
        assert_refused_without_leaking(SECRET, failures);
    }

    /// A cron job's expression as configured; panics when it is disabled.
    fn source(schedule: &Option<cron::Schedule>) -> &str {
        schedule.as_ref().expect("a schedule").source()
    }

    #[test]
    fn empty_sweep_disables() {
        let config = load("[scheduler]\nsweep = \"\"", &[]).unwrap();
        assert_eq!(config.scheduler.sweep, None);
        let config = load("", &[("RELOGIN_FARM_SCHEDULER_SWEEP", "")]).unwrap();
        assert_eq!(config.scheduler.sweep, None);
        let config = load("[scheduler]\nsweep = \" @hourly \"", &[]).unwrap();
        assert_eq!(source(&config.scheduler.sweep), "@hourly");
    }

    #[test]
    fn provider_validation() {
        let dup = format!("{MINIMAL_PROVIDER}{MINIMAL_PROVIDER}");
        assert_eq!(
            err(&dup, &[]),
            "provider[1].name: duplicate name \"demo\" (also provider[0])"
        );
        let clash = format!(
            "{}{}",
            MINIMAL_PROVIDER.replace("demo", "a-b"),
            MINIMAL_PROVIDER.replace("demo", "a_b")
        );
        assert!(err(&clash, &[])
            .starts_with("provider[1].name: name \"a_b\" clashes with provider[0] \"a-b\""));

        let without = |key: &str| {
            MINIMAL_PROVIDER
                .lines()
                .filter(|l| !l.trim_start().starts_with(key))
                .collect::<Vec<_>>()
                .join("\n")
        };
        assert!(
            err(&without("issuer"), &[]).starts_with("provider[0].issuer: missing: give issuer")
        );
        assert_eq!(
            err(&without("client_id"), &[]),
            "provider[0].client_id: missing"
        );
        assert_eq!(
            err(&without("redirect_uri"), &[]),
            "provider[0].redirect_uri: missing"
        );
        let half = without("issuer") + "\nauthorize_url = \"https://a.example/auth\"";
        assert_eq!(err(&half, &[]), "provider[0].token_url: missing");
        let both = format!("{MINIMAL_PROVIDER}\nauthorize_url = \"https://a.example/auth\"");
        assert!(err(&both, &[]).starts_with("provider[0].issuer: give either issuer"));
        let bad_name = MINIMAL_PROVIDER.replace("\"demo\"", "\"Demo\"");
        assert!(err(&bad_name, &[]).starts_with("provider[0].name: invalid name \"Demo\""));
        let bad_url = MINIMAL_PROVIDER.replace("http://127.0.0.1:19000", "ftp://x");
        assert!(err(&bad_url, &[]).starts_with(
            "provider[0].issuer: invalid URL \"ftp://x\": scheme must be http or https"
        ));
        let scope = format!("{MINIMAL_PROVIDER}\nscopes = [\"openid\", \"a b\"]");
        assert!(err(&scope, &[]).starts_with("provider[0].scopes[1]: invalid scope"));
        let reserved = format!("{MINIMAL_PROVIDER}\nextra_authorize_params = {{ state = \"x\" }}");
        assert!(
            err(&reserved, &[]).starts_with("provider[0].extra_authorize_params.state: reserved")
        );
        assert_eq!(
            err("provider = 1", &[]),
            "provider: expected an array of tables ([[provider]]), found integer"
        );

        let config = load(MINIMAL_PROVIDER, &[]).unwrap();
        assert_eq!(config.providers[0].login_timeout, minutes(10));
        assert_eq!(config.providers[0].client_secret, None);
        assert!(config.providers[0].scopes.is_empty());
    }

    #[test]
    fn token_endpoint_quirk_keys() {
        let config = load(MINIMAL_PROVIDER, &[]).unwrap();
        let p = &config.providers[0];
        assert_eq!(
            (p.token_request, p.refresh_request, p.refresh_scope),
            (BodyFormat::Form, None, false)
        );
        assert_eq!(p.default_token_ttl, minutes(60));
        assert!(p.token_errors.is_empty() && p.egress_proxy.is_none());

        let text = format!(
            "{MINIMAL_PROVIDER}\ntoken_request = \"json\"\nrefresh_request = \"form\"\n\
             token_params = {{ audience = \"api\" }}\ntoken_headers = {{ User-Agent = \"cli/1\" }}\n\
             egress_proxy = \"http://u:p@127.0.0.1:3128\"\n\
             [[provider.token_errors]]\nstatus = [400, 403]\nerror = \"expired\"\nclass = \"dead\"\n\
             [[provider.token_errors]]\nhtml = true\nclass = \"transient\"\n"
        );
        let config = load(&text, &[]).unwrap();
        let p = &config.providers[0];
        assert_eq!(p.token_request, BodyFormat::Json);
        assert_eq!(p.refresh_request, Some(BodyFormat::Form));
        assert_eq!(p.token_params["audience"], "api");
        assert_eq!(p.token_headers["user-agent"], "cli/1");
        assert_eq!(
            p.token_errors,
            [
                Rule {
                    status: Some((400, 403)),
                    error: Some("expired".into()),
                    html: None,
                    class: Class::Dead,
                },
                Rule {
                    status: None,
                    error: None,
                    html: Some(true),
                    class: Class::Transient,
                },
            ]
        );
        // The proxy's password is a secret: never in Debug.
        assert!(!format!("{p:?}").contains("u:p@"));

        let bad = |extra: &str| err(&format!("{MINIMAL_PROVIDER}\n{extra}"), &[]);
        assert!(bad("token_request = \"xml\"")
            .starts_with("provider[0].token_request: invalid body format \"xml\""));
        assert!(bad("token_params = { grant_type = \"x\" }")
            .starts_with("provider[0].token_params.grant_type: reserved"));
        assert_eq!(
            bad("default_token_ttl = \"0s\""),
            "provider[0].default_token_ttl: must be more than 0s"
        );
        assert_eq!(
            bad("[[provider.token_errors]]\nstatus = 401"),
            "provider[0].token_errors[0].class: missing"
        );
        assert_eq!(
            bad("[[provider.token_errors]]\nclass = \"dead\"\ncode = \"x\""),
            "provider[0].token_errors[0].code: unknown key"
        );
        assert!(
            bad("[[provider.token_errors]]\nstatus = 700\nclass = \"dead\"")
                .starts_with("provider[0].token_errors[0].status: expected an HTTP status")
        );
        assert!(bad("[[provider.token_errors]]\nclass = \"gone\"")
            .starts_with("provider[0].token_errors[0].class: expected \"dead\" or \"transient\""));
        let proxy = bad("egress_proxy = \"socks9://u:hunter2@h\"");
        assert!(
            proxy.starts_with("provider[0].egress_proxy: invalid URL"),
            "{proxy}"
        );
        assert!(!proxy.contains("hunter2"), "{proxy}");
    }

    #[test]
    fn device_login_endpoints() {
        let device = "[[provider]]\nname = \"d\"\nclient_id = \"c\"\n\
                      redirect_uri = \"http://127.0.0.1:1/cb\"\nlogin = \"device\"\n";
        let config = load(
            &format!("{device}device_authorization_url = \"https://a.example/device\"\ntoken_url = \"https://a.example/token\""),
            &[],
        )
        .unwrap();
        assert_eq!(config.providers[0].login, LoginKind::Device);
        assert!(matches!(
            config.providers[0].endpoints,
            Endpoints::Device { .. }
        ));
        // Discovery names the device endpoint.
        let config = load(&format!("{device}issuer = \"https://a.example\""), &[]).unwrap();
        assert!(matches!(
            config.providers[0].endpoints,
            Endpoints::Discovery { .. }
        ));
        assert_eq!(
            err(
                &format!("{device}device_authorization_url = \"https://a.example/d\""),
                &[]
            ),
            "provider[0].token_url: missing"
        );
        assert!(err(device, &[]).starts_with("provider[0].device_authorization_url: missing"));
        assert!(err(
            &format!("{device}device_authorization_url = \"https://a.example/d\"\ntoken_url = \"https://a.example/t\"\nauthorize_url = \"https://a.example/a\""),
            &[]
        )
        .starts_with("provider[0].authorize_url: not with device_authorization_url"));
        assert_eq!(
            err(
                &format!("{MINIMAL_PROVIDER}\ndevice_authorization_url = \"https://a.example/d\""),
                &[]
            ),
            "provider[0].device_authorization_url: only with login = \"device\""
        );
    }

    #[test]
    fn secret_files_are_read_and_never_shown() {
        const SECRET: &str = "hunter2-very-secret";
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("client.secret");
        fs::write(&file, format!("{SECRET}\n")).unwrap();
        let file = file.to_str().unwrap();
        let empty = dir.path().join("empty");
        fs::write(&empty, "\n").unwrap();
        let empty = empty.to_str().unwrap();
        let with = |extra: &str| format!("{MINIMAL_PROVIDER}\n{extra}");

        // From the file's key, and from the variable; the variable wins.
        let config = load(
            &with(&format!(
                "client_secret_file = {}",
                Value::String(file.into())
            )),
            &[],
        )
        .unwrap();
        assert_eq!(config.providers[0].client_secret, Some(Secret::new(SECRET)));
        let config = load(
            &with("client_secret_file = \"does/not/exist\""),
            &[("RELOGIN_FARM_PROVIDER_DEMO_CLIENT_SECRET_FILE", file)],
        )
        .unwrap();
        assert_eq!(config.providers[0].client_secret, Some(Secret::new(SECRET)));
        let config = load("", &[("RELOGIN_FARM_ADMIN_TOKEN_FILE", file)]).unwrap();
        assert_eq!(config.server.admin_token, Some(Secret::new(SECRET)));

        let failures: Vec<(String, Env, &str)> = vec![
            (with("client_secret_file = \"does/not/exist\""), env(&[]), "provider[0].client_secret_file: cannot read secret file does/not/exist"),
            (with(&format!("client_secret = \"{SECRET}\"\nclient_secret_file = {}", Value::String(file.into()))), env(&[]), "provider[0].client_secret: conflicts with provider[0].client_secret_file"),
            (MINIMAL_PROVIDER.into(), env(&[("RELOGIN_FARM_PROVIDER_DEMO_CLIENT_SECRET", SECRET), ("RELOGIN_FARM_PROVIDER_DEMO_CLIENT_SECRET_FILE", file)]), "RELOGIN_FARM_PROVIDER_DEMO_CLIENT_SECRET: conflicts with RELOGIN_FARM_PROVIDER_DEMO_CLIENT_SECRET_FILE"),
            (String::new(), env(&[("RELOGIN_FARM_ADMIN_TOKEN", SECRET), ("RELOGIN_FARM_ADMIN_TOKEN_FILE", file)]), "RELOGIN_FARM_ADMIN_TOKEN: conflicts with RELOGIN_FARM_ADMIN_TOKEN_FILE"),
            (String::new(), env(&[("RELOGIN_FARM_ADMIN_TOKEN_FILE", dir.path().to_str().unwrap())]), "RELOGIN_FARM_ADMIN_TOKEN_FILE: cannot read secret file"),
            (String::new(), env(&[("RELOGIN_FARM_ADMIN_TOKEN_FILE", empty)]), "RELOGIN_FARM_ADMIN_TOKEN_FILE: the secret is empty"),
            (String::new(), env(&[("RELOGIN_FARM_KEY", SECRET)]), "RELOGIN_FARM_KEY: expected base64"),
            (String::new(), env(&[("RELOGIN_FARM_ADMN_TOKEN", SECRET)]), "RELOGIN_FARM_ADMN_TOKEN: unknown variable"),
            (with(&format!("client_secret = [\"{SECRET}\"]")), env(&[]), "provider[0].client_secret: expected a string, found array"),
            (with(&format!("client_secret = \"{SECRET}")), env(&[]), "TOML syntax error at line 8, column"),
            (with(&format!("clientsecret = \"{SECRET}\"")), env(&[]), "provider[0].clientsecret: unknown key"),
        ];
        assert_refused_without_leaking(SECRET, failures);
    }

    #[test]
    fn syntax_errors_have_a_position() {
        let e = load("[server]\nlisten = \"127.0.0.1:1\"\nlease_ttl = 5m\n", &[]).unwrap_err();
        assert!(
            matches!(
                e,
                ConfigError::Syntax {
                    line: 3,
                    column: 13,
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(
            e.to_string()
                .starts_with("TOML syntax error at line 3, column 13: "),
            "{e}"
        );
    }

    const README_TABLE_START: &str = "<!-- config-keys:start -->\n";
    const README_TABLE_END: &str = "<!-- config-keys:end -->";

    #[test]
    fn the_browser_engine_gets_absolute_paths() {
        // Chromium refuses a relative user-data dir; the defaults are relative.
        let c = Config::default().browser.engine();
        assert!(
            c.profiles_dir.is_absolute()
                && c.artifacts_dir.is_absolute()
                && c.driver_cli_js.is_absolute()
        );
        assert!(c.profiles_dir.ends_with("profiles"));
        let dir = Path::new("/srv/relogin-farm");
        let under = BrowserSettings::defaults_under(dir).engine();
        assert_eq!(under.profiles_dir, dir.join("profiles"));
        assert_eq!(under.artifacts_dir, dir.join("data/artifacts"));
        assert!(under.driver_cli_js.starts_with(dir), "{under:?}");
        assert_eq!(
            (under.chromium, under.driver_linger, under.max_concurrent),
            (c.chromium, c.driver_linger, c.max_concurrent)
        );
    }

    /// README.md's key table is the one the tables make. On a difference it
    /// prints the expected table; `UPDATE_README=1` writes it instead.
    #[test]
    fn readme_key_table() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md");
        let readme = fs::read_to_string(&path).unwrap();
        let start =
            readme.find(README_TABLE_START).expect("the start marker") + README_TABLE_START.len();
        let end = readme.find(README_TABLE_END).expect("the end marker");
        let expected = Config::keys_markdown();
        if readme[start..end] == expected {
            return;
        }
        if std::env::var_os("UPDATE_README").is_some() {
            let updated = format!("{}{expected}{}", &readme[..start], &readme[end..]);
            fs::write(&path, updated).unwrap();
        } else {
            panic!(
                "README.md's key table differs from the config tables; run \
                 `UPDATE_README=1 cargo test --lib config::tests::readme_key_table` \
                 or put this between its markers:\n{expected}"
            );
        }
    }

    /// Every key of every `[section]` and block is in the example (commented
    /// out or not) in its section, showing its default when it has one (or
    /// an example, for a default that is an empty list or table). The other
    /// way round, `example_commented_keys_are_valid` loads every key the
    /// example shows, so none is unknown.
    #[test]
    fn example_lists_every_key() {
        let mut section = String::new();
        let mut shown = BTreeMap::new();
        for line in EXAMPLE_TOML.lines() {
            let line = line.strip_prefix("# ").unwrap_or(line);
            let header = line.strip_prefix("[[").and_then(|l| l.strip_suffix("]]"));
            let header =
                header.or_else(|| line.strip_prefix('[').and_then(|l| l.strip_suffix(']')));
            if let Some(name) = header {
                section = name.to_owned();
                // A nested table is shown by its header.
                shown.entry(name.to_owned()).or_insert("");
            } else if let Some((key, value)) =
                line.split_once(" = ").filter(|_| looks_like_toml(line))
            {
                shown.entry(format!("{section}.{key}")).or_insert(value);
            }
        }
        for doc in Config::keys() {
            // A secret and its `_file` are two ways to give one value (both
            // at once is an error): the example shows one of them.
            let value = shown
                .get(&doc.key)
                .or_else(|| shown.get(&format!("{}_file", doc.key)));
            let Some(value) = value else {
                panic!("{} is not in config.example.toml", doc.key);
            };
            let empty = |v: &Value| match v {
                Value::Array(a) => a.is_empty(),
                Value::Table(t) => t.is_empty(),
                _ => false,
            };
            if let Some(default) = doc.default.as_ref().filter(|d| !empty(d)) {
                assert_eq!(
                    *value,
                    default.to_string(),
                    "{} in config.example.toml",
                    doc.key
                );
            }
        }
    }

    #[test]
    fn key_table_names_and_defaults() {
        let keys = Config::keys();
        let driver_linger = keys
            .iter()
            .find(|k| k.key == "browser.driver_linger")
            .unwrap();
        assert_eq!(
            driver_linger.env.as_deref(),
            Some("RELOGIN_FARM_BROWSER_DRIVER_LINGER")
        );
        assert_eq!(driver_linger.shown_default, "30s");
        assert_eq!(
            Config::default().browser.driver_linger,
            Duration::from_secs(30)
        );
        let key_file = keys.iter().find(|k| k.key == "store.key_file").unwrap();
        assert_eq!(key_file.env.as_deref(), Some("RELOGIN_FARM_KEY_FILE"));
        assert_eq!(key_file.default, None);
        let extra_args = keys.iter().find(|k| k.key == "browser.extra_args").unwrap();
        assert_eq!(extra_args.env, None);
        let names: BTreeSet<&str> = keys.iter().map(|k| k.key.as_str()).collect();
        assert_eq!(names.len(), keys.len(), "a key is declared twice");
        assert!(
            keys.iter().all(|k| !k.doc.is_empty()),
            "every key has a doc"
        );
        // A derived default agrees with what the section derives from the defaults.
        assert_eq!(
            StoreConfig::default().key_file,
            default_key_file(&StoreConfig::default().path)
        );
        assert_eq!(
            BackupConfig::default().dir,
            default_backup_dir(&StoreConfig::default().path)
        );
    }

    /// The blocks' keys are in the key list; the environment sets none of
    /// them but the secrets, through the variables their docs name.
    #[test]
    fn block_keys_and_their_variables() {
        let keys = Config::keys();
        let key = |name: &str| keys.iter().find(|k| k.key == name).unwrap();
        assert_eq!(key("provider.name").shown_default, REQUIRED);
        assert_eq!(key("provider.login_script").shown_default, NO_DEFAULT);
        assert_eq!(
            key("provider.login_timeout").default,
            Some(Value::from("10m"))
        );
        assert_eq!(key("provider.proxy.upstream").shown_default, REQUIRED);
        assert_eq!(key("webhook.max_attempts").default, Some(Value::from(6)));
        let blocks = block_keys();
        let vars: Vec<(&str, &str)> = blocks
            .iter()
            .filter_map(|k| Some((k.key.as_str(), k.env.as_deref()?)))
            .collect();
        let documented: Vec<&str> = vars.iter().map(|(k, _)| *k).collect();
        assert_eq!(
            documented,
            [
                "webhook.secret",
                "webhook.secret_file",
                "provider.client_secret",
                "provider.client_secret_file"
            ]
        );
        for (key, var) in vars {
            let var = var.replace("<NAME>", "DEMO").replace("<N>", "0");
            let short = var.strip_prefix(ENV_PREFIX).unwrap();
            let file = key.ends_with("_file");
            let parsed = match key.split('.').next() {
                Some("webhook") => parse_webhook_secret_var(short) == Some((0, file)),
                _ => parse_client_secret_var(short) == Some(("DEMO", file)),
            };
            assert!(parsed, "{key}: {var} is not the variable that sets it");
        }
        let scalars = env_keys();
        assert!(scalars
            .iter()
            .all(|k| !k.starts_with("provider") && !k.starts_with("webhook")));
    }

    /// A misspelled key is reported as unknown, not as the required key it
    /// was meant to be being missing, in every kind of table.
    #[test]
    fn unknown_keys_before_missing_ones() {
        let proxy = format!("{MINIMAL_PROVIDER}\n[provider.proxy]\nupstrem = \"http://x\"");
        for (text, expected) in [
            (
                "[[webhook]]\nurls = \"http://h/\"".to_owned(),
                "webhook[0].urls: unknown key",
            ),
            (
                "[[provider]]\nnames = \"a\"".to_owned(),
                "provider[0].names: unknown key",
            ),
            (proxy, "provider[0].proxy.upstrem: unknown key"),
            (
                "[server]\ntls_cert = \"c.pem\"".to_owned(),
                "server.tls_cert: unknown key",
            ),
        ] {
            assert_eq!(err(&text, &[]), expected, "{text}");
        }
    }

    #[test]
    fn enums_spell_kebab_case() {
        #[derive(Deserialize)]
        struct Wrapper {
            strategy: Strategy,
        }
        for &strategy in Strategy::ALL {
            assert_eq!(strategy.to_string().parse::<Strategy>(), Ok(strategy));
            let text = format!("strategy = \"{strategy}\"");
            assert_eq!(toml::from_str::<Wrapper>(&text).unwrap().strategy, strategy);
        }
        assert_eq!(Strategy::LeastUsed.to_string(), "least-used");
        assert!("LeastUsed".parse::<Strategy>().is_err());
        assert_eq!("json".parse::<LogFormat>(), Ok(LogFormat::Json));
    }
}
