//! `${…}` templates: the only place a login script refers to data it must
//! not contain (secrets, one-time codes, the per-run authorize URL).

use std::fmt;

/// A variable a script may reference.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Var {
    /// `${authorize_url}`: the farm's PKCE authorize URL for this run.
    AuthorizeUrl,
    /// `${secret:NAME}`: one of the account's stored secrets.
    Secret(String),
    /// `${totp}`: the current code derived from the account's `totp` secret.
    Totp,
    /// `${user_code}`: a device-flow login's code, to type at the
    /// verification page.
    UserCode,
    /// `${verification_uri}`: a device-flow login's page.
    VerificationUri,
    /// `${verification_uri_complete}`: that page with the code already in
    /// it, when the provider gives one.
    VerificationUriComplete,
}

impl Var {
    /// Whether the value is confidential (and so must never end up in a URL
    /// that is logged, or in a selector that shows up in error text).
    pub fn is_confidential(&self) -> bool {
        matches!(self, Var::Secret(_) | Var::Totp)
    }

    /// Whether only a device-flow login (`login = "device"`) sets it.
    pub fn is_device_flow(&self) -> bool {
        matches!(
            self,
            Var::UserCode | Var::VerificationUri | Var::VerificationUriComplete
        )
    }

    fn parse(inner: &str) -> Result<Var, TemplateError> {
        match inner {
            "authorize_url" => Ok(Var::AuthorizeUrl),
            "totp" => Ok(Var::Totp),
            "user_code" => Ok(Var::UserCode),
            "verification_uri" => Ok(Var::VerificationUri),
            "verification_uri_complete" => Ok(Var::VerificationUriComplete),
            _ => match inner.strip_prefix("secret:") {
                Some(name) if is_valid_secret_name(name) => Ok(Var::Secret(name.to_string())),
                Some(name) => Err(TemplateError::BadSecretName(name.to_string())),
                None => Err(TemplateError::UnknownVariable(inner.to_string())),
            },
        }
    }
}

impl fmt::Display for Var {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Var::AuthorizeUrl => f.write_str("${authorize_url}"),
            Var::Secret(name) => write!(f, "${{secret:{name}}}"),
            Var::Totp => f.write_str("${totp}"),
            Var::UserCode => f.write_str("${user_code}"),
            Var::VerificationUri => f.write_str("${verification_uri}"),
            Var::VerificationUriComplete => f.write_str("${verification_uri_complete}"),
        }
    }
}

/// Secret names are path- and log-safe identifiers, so they can be used as
/// keys in the secret store and printed in error messages.
pub fn is_valid_secret_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
}

/// One piece of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    Text(String),
    Var(Var),
}

/// A string with `${…}` variables. `$${` writes a literal `${`; a `$` not
/// followed by `{` is literal, so passwords-as-literals and prices need no
/// escaping.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Template {
    pieces: Vec<Piece>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplateError {
    UnknownVariable(String),
    BadSecretName(String),
    Unterminated,
}

impl Template {
    pub fn parse(source: &str) -> Result<Template, TemplateError> {
        let mut pieces = Vec::new();
        let mut text = String::new();
        let mut rest = source;
        while let Some(pos) = rest.find('$') {
            text.push_str(&rest[..pos]);
            let after = &rest[pos + 1..];
            if let Some(escaped) = after.strip_prefix("${") {
                text.push_str("${");
                rest = escaped;
            } else if let Some(open) = after.strip_prefix('{') {
                let end = open.find('}').ok_or(TemplateError::Unterminated)?;
                push_text(&mut pieces, &mut text);
                pieces.push(Piece::Var(Var::parse(&open[..end])?));
                rest = &open[end + 1..];
            } else {
                text.push('$');
                rest = after;
            }
        }
        text.push_str(rest);
        push_text(&mut pieces, &mut text);
        Ok(Template { pieces })
    }

    /// Text typed as is (the recorder's literal values).
    pub fn literal(text: impl Into<String>) -> Template {
        let mut pieces = Vec::new();
        push_text(&mut pieces, &mut text.into());
        Template { pieces }
    }

    /// A single variable, e.g. `${secret:password}`.
    pub fn var(var: Var) -> Template {
        Template {
            pieces: vec![Piece::Var(var)],
        }
    }

    pub fn pieces(&self) -> &[Piece] {
        &self.pieces
    }

    pub fn vars(&self) -> impl Iterator<Item = &Var> {
        self.pieces.iter().filter_map(|p| match p {
            Piece::Var(v) => Some(v),
            Piece::Text(_) => None,
        })
    }

    /// Whether it expands a secret or a one-time code (what it fills is
    /// masked in screenshots).
    pub fn has_confidential_var(&self) -> bool {
        self.vars().any(Var::is_confidential)
    }

    /// The source form, escaping literal `${` so it parses back identically.
    pub fn to_source(&self) -> String {
        self.pieces
            .iter()
            .map(|p| match p {
                Piece::Text(t) => t.replace("${", "$${"),
                Piece::Var(v) => v.to_string(),
            })
            .collect()
    }
}

fn push_text(pieces: &mut Vec<Piece>, text: &mut String) {
    if !text.is_empty() {
        pieces.push(Piece::Text(std::mem::take(text)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_variables_and_text() {
        let t = Template::parse("a${totp}b${secret:password}${authorize_url}").unwrap();
        let device =
            Template::parse("${verification_uri}|${user_code}|${verification_uri_complete}")
                .unwrap();
        assert_eq!(
            device.vars().cloned().collect::<Vec<_>>(),
            [
                Var::VerificationUri,
                Var::UserCode,
                Var::VerificationUriComplete
            ]
        );
        assert_eq!(Template::parse(&device.to_source()).unwrap(), device);
        assert!(!device.has_confidential_var());
        assert_eq!(
            t.pieces(),
            &[
                Piece::Text("a".into()),
                Piece::Var(Var::Totp),
                Piece::Text("b".into()),
                Piece::Var(Var::Secret("password".into())),
                Piece::Var(Var::AuthorizeUrl),
            ]
        );
    }

    #[test]
    fn dollar_escapes_and_lone_dollars() {
        let t = Template::parse("p$ss$${x}$").unwrap();
        assert_eq!(t.pieces(), &[Piece::Text("p$ss${x}$".into())]);
        assert_eq!(Template::parse(&t.to_source()).unwrap(), t);
    }

    #[test]
    fn constructors_round_trip_through_source() {
        let t = Template::literal("a${b}");
        assert_eq!(Template::parse(&t.to_source()).unwrap(), t);
        assert_eq!(Template::var(Var::Totp).to_source(), "${totp}");
        assert!(Template::literal("").pieces().is_empty());
    }

    #[test]
    fn errors() {
        assert_eq!(
            Template::parse("${nope}"),
            Err(TemplateError::UnknownVariable("nope".into()))
        );
        assert_eq!(Template::parse("${totp"), Err(TemplateError::Unterminated));
        assert_eq!(
            Template::parse("${secret:}"),
            Err(TemplateError::BadSecretName(String::new()))
        );
        assert_eq!(
            Template::parse("${secret:a b}"),
            Err(TemplateError::BadSecretName("a b".into()))
        );
    }
}
