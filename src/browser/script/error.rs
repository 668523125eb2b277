//! [`ScriptError`]: what is wrong with a login script, and on which line, so
//! the API can answer `400 line 12: …` and a person can fix the file.

use super::glob::GlobError;

/// A rejected script (or a script that cannot be expanded for an account).
/// `line` is 1-based: the line of the offending key, or of the `[[step]]`
/// header when the problem is the step as a whole.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {kind}")]
pub struct ScriptError {
    pub line: usize,
    pub kind: ScriptErrorKind,
}

impl ScriptError {
    pub fn new(line: usize, kind: ScriptErrorKind) -> Self {
        ScriptError { line, kind }
    }
}

/// The reason, without the line. Never contains a secret value: secrets are
/// only ever named.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScriptErrorKind {
    #[error("TOML: {0}")]
    Syntax(String),
    #[error("unknown key `{0}` (the top level takes provider, timeout_ms and [[step]])")]
    UnknownTopLevelKey(String),
    #[error("missing `provider`")]
    MissingProvider,
    #[error("the script has no [[step]]")]
    NoSteps,
    #[error("unknown action `{0}` (actions: {actions})", actions = super::ACTIONS.join(", "))]
    UnknownAction(String),
    #[error("step has no action (one of: {actions})", actions = super::ACTIONS.join(", "))]
    NoAction,
    #[error("two actions in one step: `{first}` and `{second}` (split them into two [[step]]s)")]
    TwoActions { first: String, second: String },
    #[error("`{action}` needs `{field}`")]
    MissingField {
        action: &'static str,
        field: &'static str,
    },
    #[error("`{field}` does not go with `{action}`")]
    FieldNotAllowed { field: String, action: String },
    #[error("`{key}` must be {expected}")]
    WrongType { key: String, expected: &'static str },
    #[error("`{0}` must not be empty")]
    Empty(String),
    #[error(
        "unknown variable `${{{0}}}` (known: ${{authorize_url}}, ${{secret:NAME}}, ${{totp}}, \
         ${{user_code}}, ${{verification_uri}}, ${{verification_uri_complete}}; \
         write $${{ for a literal ${{)"
    )]
    UnknownVariable(String),
    #[error("bad secret name `{0}` in ${{secret:…}} (letters, digits, `_`, `-`, `.`)")]
    BadSecretName(String),
    #[error("`${{` is never closed with `}}`")]
    UnterminatedVariable,
    #[error("variables are only allowed in `goto` and `value`, not in `{0}`")]
    VariableNotAllowed(String),
    #[error(
        "{0} cannot go in a URL (URLs end up in logs and history): type it with `fill` … `value`"
    )]
    ConfidentialInUrl(String),
    #[error(
        "`goto` may only go to an http:// or https:// URL, ${{authorize_url}} or \
         ${{verification_uri}}, not `{0}`"
    )]
    NotAWebUrl(String),
    #[error("bad glob in `wait_for_url`: {0}")]
    BadGlob(GlobError),
    #[error("screenshot `name` must be 1-64 letters, digits, `_` or `-`")]
    BadScreenshotName,
    #[error("{0} is not set for this account")]
    MissingVariable(String),
    /// A device-flow variable in a code-flow login, or the reverse.
    #[error(
        "{0} is not set in this login: ${{user_code}} and ${{verification_uri(_complete)}} exist \
         only when the provider logs in with a device code (login = \"device\"), \
         ${{authorize_url}} only when it does not"
    )]
    OtherLoginKind(String),
    #[error("secret `totp` is not a base32 TOTP seed")]
    BadTotpSeed,
}
