//! Variable values for one run, and the expanded steps the runner executes.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use totp_rs::{Algorithm, TOTP};
use url::Url;

use super::template::{Piece, Template, Var};
use super::{Action, Glob, LoginScript, ScriptError, ScriptErrorKind as K};
use crate::secret::Secret;

/// The secret `${totp}` derives its codes from (base32 seed).
pub const TOTP_SECRET: &str = "totp";

/// What `${…}` resolves to for one account and one run.
#[derive(Debug, Clone, Default)]
pub struct Vars {
    authorize_url: Option<Url>,
    device: Option<DeviceCode>,
    secrets: BTreeMap<String, Secret>,
}

/// What a device-flow login (RFC 8628) shows a person: the code to type and
/// where. Not secret: the farm's API and page show it too, and it is worth
/// nothing without the device code, which stays with the farm's poll.
#[derive(Debug, Clone)]
pub struct DeviceCode {
    pub user_code: String,
    pub verification_uri: Url,
    pub verification_uri_complete: Option<Url>,
}

impl Vars {
    pub fn new() -> Self {
        Vars::default()
    }

    pub fn with_authorize_url(mut self, url: Url) -> Self {
        self.authorize_url = Some(url);
        self
    }

    /// A device-flow login's code and page: `${user_code}`,
    /// `${verification_uri}`, `${verification_uri_complete}`.
    pub fn with_device_code(mut self, device: DeviceCode) -> Self {
        self.device = Some(device);
        self
    }

    pub fn with_secret(mut self, name: impl Into<String>, value: Secret) -> Self {
        self.secrets.insert(name.into(), value);
        self
    }

    /// Every `(name, value)` of `secrets` (an account's, from the store).
    pub fn with_secrets(mut self, secrets: impl IntoIterator<Item = (String, Secret)>) -> Self {
        self.secrets.extend(secrets);
        self
    }

    pub fn authorize_url(&self) -> Option<&Url> {
        self.authorize_url.as_ref()
    }

    /// The provider's page this run starts at: the authorize URL, or a
    /// device login's verification page.
    pub fn provider_page(&self) -> Option<&Url> {
        self.authorize_url
            .as_ref()
            .or(self.device.as_ref().map(|d| &d.verification_uri))
    }

    /// Every URL of the provider's this run was given (the navigation
    /// policy lets the browser reach their hosts).
    pub fn run_urls(&self) -> impl Iterator<Item = &Url> {
        let device = self.device.as_ref();
        self.authorize_url
            .iter()
            .chain(device.map(|d| &d.verification_uri))
            .chain(device.and_then(|d| d.verification_uri_complete.as_ref()))
    }

    /// Replaces every secret value (and every code in `extra`) found in
    /// `text` by `***`. Errors from the browser quote page text and call
    /// logs; this is the last line of defence so no error carries a secret.
    pub fn redact(&self, text: &str, extra: &[Secret]) -> String {
        let mut values: Vec<&str> = self
            .secrets
            .values()
            .chain(extra)
            .map(Secret::expose)
            .filter(|v| !v.is_empty())
            .collect();
        // Longest first, so a secret containing another is replaced whole.
        values.sort_by_key(|v| std::cmp::Reverse(v.len()));
        values
            .iter()
            .fold(text.to_string(), |acc, v| acc.replace(v, "***"))
    }

    fn resolve(&self, var: &Var) -> Result<Part, K> {
        let known = |text: Option<&str>| {
            text.map(|t| Part::Known(Secret::new(t))).ok_or_else(|| {
                // A login of the other kind has its own variables.
                let other_kind = match var.is_device_flow() {
                    true => self.authorize_url.is_some(),
                    false => self.device.is_some(),
                };
                match other_kind {
                    true => K::OtherLoginKind(var.to_string()),
                    false => K::MissingVariable(var.to_string()),
                }
            })
        };
        let device = self.device.as_ref();
        match var {
            Var::AuthorizeUrl => known(self.authorize_url.as_ref().map(Url::as_str)),
            Var::UserCode => known(device.map(|d| d.user_code.as_str())),
            Var::VerificationUri => known(device.map(|d| d.verification_uri.as_str())),
            Var::VerificationUriComplete => known(
                device
                    .and_then(|d| d.verification_uri_complete.as_ref())
                    .map(Url::as_str),
            ),
            Var::Secret(name) => self
                .secrets
                .get(name)
                .map(|s| Part::Known(s.clone()))
                .ok_or_else(|| K::MissingVariable(var.to_string())),
            Var::Totp => {
                let seed = self
                    .secrets
                    .get(TOTP_SECRET)
                    .ok_or_else(|| K::MissingVariable(format!("{var} (secret `{TOTP_SECRET}`)")))?;
                Ok(Part::Totp(Arc::new(totp_from_seed(seed)?)))
            }
        }
    }
}

/// RFC 6238 with the parameters every authenticator app uses: SHA1, 6
/// digits, 30 s. Seeds are accepted as people paste them (spaces, lower
/// case, `=` padding) and shorter than 128 bits (many providers still issue
/// 80-bit seeds), hence `new_unchecked` after our own checks.
fn totp_from_seed(seed: &Secret) -> Result<TOTP, K> {
    let normalized: String = seed
        .expose()
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '=' && *c != '-')
        .map(|c| c.to_ascii_uppercase())
        .collect();
    let bytes = totp_rs::Secret::Encoded(normalized)
        .to_bytes()
        .map_err(|_| K::BadTotpSeed)?;
    if bytes.len() < 10 {
        return Err(K::BadTotpSeed);
    }
    Ok(TOTP::new_unchecked(Algorithm::SHA1, 6, 1, 30, bytes))
}

#[derive(Clone)]
enum Part {
    Known(Secret),
    Totp(Arc<TOTP>),
}

/// A resolved `goto` URL or `fill` value. Its text is produced by
/// [`render`](Self::render) at the moment the step runs, so a `${totp}` code
/// is fresh even if the pages before it were slow.
#[derive(Clone)]
pub struct StepValue {
    parts: Vec<Part>,
    /// Holds a `${secret:…}` or `${totp}`: whatever it is typed into is
    /// masked in screenshots.
    confidential: bool,
}

impl StepValue {
    fn resolve(template: &Template, vars: &Vars) -> Result<StepValue, K> {
        let parts = template
            .pieces()
            .iter()
            .map(|piece| match piece {
                Piece::Text(t) => Ok(Part::Known(Secret::new(t.as_str()))),
                Piece::Var(v) => vars.resolve(v),
            })
            .collect::<Result<_, _>>()?;
        Ok(StepValue {
            parts,
            confidential: template.has_confidential_var(),
        })
    }

    /// Whether the value holds a secret or a one-time code.
    pub fn is_confidential(&self) -> bool {
        self.confidential
    }

    /// Whether [`render`](Self::render) includes a one-time code.
    pub fn has_totp(&self) -> bool {
        self.parts.iter().any(|p| matches!(p, Part::Totp(_)))
    }

    /// The text to type or navigate to, now.
    pub fn render(&self) -> Secret {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let text: String = self
            .parts
            .iter()
            .map(|part| match part {
                Part::Known(s) => s.expose().to_string(),
                Part::Totp(totp) => totp.generate(now),
            })
            .collect();
        Secret::new(text)
    }
}

impl fmt::Debug for StepValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StepValue(***)")
    }
}

/// A step ready to run: variables resolved, timeout decided.
#[derive(Debug, Clone)]
pub struct ResolvedStep {
    /// 0-based position in the script.
    pub index: usize,
    /// Line of the step's `[[step]]` in the script file.
    pub line: usize,
    pub optional: bool,
    pub timeout: Duration,
    pub action: ResolvedAction,
}

#[derive(Debug, Clone)]
pub enum ResolvedAction {
    Goto { url: StepValue },
    Fill { selector: String, value: StepValue },
    Click { selector: String },
    Press { selector: String, key: String },
    WaitFor { selector: String },
    WaitForUrl { glob: Glob },
    Screenshot { name: String },
}

impl ResolvedAction {
    pub fn selector(&self) -> Option<&str> {
        match self {
            ResolvedAction::Fill { selector, .. }
            | ResolvedAction::Click { selector }
            | ResolvedAction::Press { selector, .. }
            | ResolvedAction::WaitFor { selector } => Some(selector),
            _ => None,
        }
    }
}

/// Action and target only; values are never shown.
impl fmt::Display for ResolvedAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResolvedAction::Goto { .. } => f.write_str("goto"),
            ResolvedAction::Fill { selector, .. } => write!(f, "fill {selector}"),
            ResolvedAction::Click { selector } => write!(f, "click {selector}"),
            ResolvedAction::Press { selector, key } => write!(f, "press {key} in {selector}"),
            ResolvedAction::WaitFor { selector } => write!(f, "wait_for {selector}"),
            ResolvedAction::WaitForUrl { glob } => write!(f, "wait_for_url {glob}"),
            ResolvedAction::Screenshot { name } => write!(f, "screenshot {name}"),
        }
    }
}

pub(super) fn expand(script: &LoginScript, vars: &Vars) -> Result<Vec<ResolvedStep>, ScriptError> {
    script
        .steps
        .iter()
        .enumerate()
        .map(|(index, step)| {
            let value = |t: &Template| {
                StepValue::resolve(t, vars).map_err(|kind| ScriptError::new(step.line, kind))
            };
            let action = match &step.action {
                Action::Goto { url } => ResolvedAction::Goto { url: value(url)? },
                Action::Fill { selector, value: v } => ResolvedAction::Fill {
                    selector: selector.clone(),
                    value: value(v)?,
                },
                Action::Click { selector } => ResolvedAction::Click {
                    selector: selector.clone(),
                },
                Action::Press { selector, key } => ResolvedAction::Press {
                    selector: selector.clone(),
                    key: key.clone(),
                },
                Action::WaitFor { selector } => ResolvedAction::WaitFor {
                    selector: selector.clone(),
                },
                Action::WaitForUrl { glob } => ResolvedAction::WaitForUrl { glob: glob.clone() },
                Action::Screenshot { name } => ResolvedAction::Screenshot { name: name.clone() },
            };
            Ok(ResolvedStep {
                index,
                line: step.line,
                optional: step.optional,
                timeout: Duration::from_millis(step.timeout_ms.unwrap_or(script.timeout_ms)),
                action,
            })
        })
        .collect()
}

#[cfg(test)]
pub(super) mod tests_support {
    pub fn totp(seed: &crate::secret::Secret) -> totp_rs::TOTP {
        super::totp_from_seed(seed).expect("valid seed")
    }
}
