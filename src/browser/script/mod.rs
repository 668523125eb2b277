//! Login scripts: the readable, editable TOML file a person records once and
//! the farm replays whenever an account's refresh token dies.
//!
//! Pure: parsing, validation, serialization and variable expansion, no I/O,
//! so `PUT /api/accounts/{id}/script` can reject a bad file with its line
//! before anything is launched.
//!
//! ```toml
//! provider = "demo"
//! timeout_ms = 15000            # default per-step auto-wait
//! [[step]]
//! goto = "${authorize_url}"
//! [[step]]
//! fill = "#password"
//! value = "${secret:password}"
//! optional = true               # skipped if not visible once the page has loaded
//! ```

mod error;
mod glob;
mod parse;
mod template;
mod vars;

use std::collections::BTreeSet;
use std::fmt;

pub use error::{ScriptError, ScriptErrorKind};
pub use glob::{Glob, GlobError};
pub use template::{is_valid_secret_name, Piece, Template, Var};
pub use vars::{DeviceCode, ResolvedAction, ResolvedStep, StepValue, Vars, TOTP_SECRET};

/// Per-step wait when the script does not say.
pub const DEFAULT_TIMEOUT_MS: u64 = 15_000;

/// The action keys, in the order the docs list them.
pub const ACTIONS: [&str; 7] = [
    "goto",
    "fill",
    "click",
    "press",
    "wait_for",
    "wait_for_url",
    "screenshot",
];

/// A parsed, valid login script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginScript {
    pub provider: String,
    /// Default per-step timeout (Playwright auto-wait), in milliseconds.
    pub timeout_ms: u64,
    pub steps: Vec<Step>,
}

/// One `[[step]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub action: Action,
    /// Skipped at once when its selector is not visible after the page has
    /// loaded: the pages a live session skips (login, TOTP, consent).
    pub optional: bool,
    /// Overrides the script's `timeout_ms` for this step.
    pub timeout_ms: Option<u64>,
    /// 1-based line of the `[[step]]` header (0 for steps built in code, e.g.
    /// by the recorder, until the script is written and parsed back).
    pub line: usize,
}

/// What a step does. Selectors are Playwright selectors (CSS, `text=`,
/// `role=`, `data-testid=`…).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Goto { url: Template },
    Fill { selector: String, value: Template },
    Click { selector: String },
    Press { selector: String, key: String },
    WaitFor { selector: String },
    WaitForUrl { glob: Glob },
    Screenshot { name: String },
}

impl Action {
    /// The action key as written in the file.
    pub fn keyword(&self) -> &'static str {
        match self {
            Action::Goto { .. } => "goto",
            Action::Fill { .. } => "fill",
            Action::Click { .. } => "click",
            Action::Press { .. } => "press",
            Action::WaitFor { .. } => "wait_for",
            Action::WaitForUrl { .. } => "wait_for_url",
            Action::Screenshot { .. } => "screenshot",
        }
    }

    /// The selector the action targets, if it targets an element.
    pub fn selector(&self) -> Option<&str> {
        match self {
            Action::Fill { selector, .. }
            | Action::Click { selector }
            | Action::Press { selector, .. }
            | Action::WaitFor { selector } => Some(selector),
            Action::Goto { .. } | Action::WaitForUrl { .. } | Action::Screenshot { .. } => None,
        }
    }

    fn templates(&self) -> impl Iterator<Item = &Template> {
        let template = match self {
            Action::Goto { url } => Some(url),
            Action::Fill { value, .. } => Some(value),
            _ => None,
        };
        template.into_iter()
    }
}

/// Short description for logs and errors: the action and its target, never
/// a typed value (that may be a password).
impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Goto { url } => write!(f, "goto {}", url.to_source()),
            Action::Fill { selector, .. } => write!(f, "fill {selector}"),
            Action::Click { selector } => write!(f, "click {selector}"),
            Action::Press { selector, key } => write!(f, "press {key} in {selector}"),
            Action::WaitFor { selector } => write!(f, "wait_for {selector}"),
            Action::WaitForUrl { glob } => write!(f, "wait_for_url {glob}"),
            Action::Screenshot { name } => write!(f, "screenshot {name}"),
        }
    }
}

impl LoginScript {
    /// Parses and validates a script. The error names the line and what is
    /// wrong with it.
    pub fn parse(text: &str) -> Result<LoginScript, ScriptError> {
        parse::parse(text)
    }

    /// Names of the account secrets this script reads (`${secret:NAME}`, and
    /// `totp` for `${totp}`), so attaching a script can list what is missing.
    pub fn required_secrets(&self) -> BTreeSet<String> {
        self.steps
            .iter()
            .flat_map(|s| s.action.templates())
            .flat_map(Template::vars)
            .filter_map(|v| match v {
                Var::Secret(name) => Some(name.clone()),
                Var::Totp => Some(TOTP_SECRET.to_string()),
                Var::AuthorizeUrl
                | Var::UserCode
                | Var::VerificationUri
                | Var::VerificationUriComplete => None,
            })
            .collect()
    }

    /// Refuses a variable only the other login kind sets (`${user_code}`
    /// where the provider logs in with a code and a redirect,
    /// `${authorize_url}` where it logs in with a device code), naming the
    /// step's line: such a script could never run.
    pub fn check_login_kind(&self, device_flow: bool) -> Result<(), ScriptError> {
        for step in &self.steps {
            let vars = step.action.templates().flat_map(Template::vars);
            for var in vars {
                let other = match var {
                    Var::AuthorizeUrl => device_flow,
                    v if v.is_device_flow() => !device_flow,
                    _ => false,
                };
                if other {
                    return Err(ScriptError::new(
                        step.line,
                        ScriptErrorKind::OtherLoginKind(var.to_string()),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Resolves every variable for one run. An unknown or missing variable
    /// is an error, never an empty string; `${totp}` is left to be computed
    /// when its step runs (see [`StepValue::render`]).
    pub fn expand(&self, vars: &Vars) -> Result<Vec<ResolvedStep>, ScriptError> {
        vars::expand(self, vars)
    }

    /// The canonical TOML text (the recorder writes this). Parsing it back
    /// gives the same script, lines aside.
    pub fn to_toml(&self) -> String {
        let mut out = format!(
            "provider = {}\ntimeout_ms = {}\n",
            quote(&self.provider),
            self.timeout_ms
        );
        for step in &self.steps {
            out.push_str("\n[[step]]\n");
            write_action(&mut out, &step.action);
            if step.optional {
                out.push_str("optional = true\n");
            }
            if let Some(ms) = step.timeout_ms {
                out.push_str(&format!("timeout_ms = {ms}\n"));
            }
        }
        out
    }
}

fn write_action(out: &mut String, action: &Action) {
    let mut kv = |key: &str, value: &str| out.push_str(&format!("{key} = {}\n", quote(value)));
    match action {
        Action::Goto { url } => kv("goto", &url.to_source()),
        Action::Fill { selector, value } => {
            kv("fill", selector);
            kv("value", &value.to_source());
        }
        Action::Click { selector } => kv("click", selector),
        Action::Press { selector, key } => {
            kv("press", selector);
            kv("key", key);
        }
        Action::WaitFor { selector } => kv("wait_for", selector),
        Action::WaitForUrl { glob } => kv("wait_for_url", glob.as_str()),
        Action::Screenshot { name } => {
            out.push_str("screenshot = true\n");
            out.push_str(&format!("name = {}\n", quote(name)));
        }
    }
}

/// A TOML basic string with the escaping TOML needs.
fn quote(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

#[cfg(test)]
mod tests;
