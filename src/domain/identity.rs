//! Whose tokens an account holds: its identity, learnt at its first login
//! and compared at every later one, free of I/O.
//!
//! A person's browser profile can hold another account's session, and a
//! login script can type the wrong secrets: a login then succeeds, for the
//! wrong user. The farm pins the identity the first login yields and
//! refuses the tokens of any later login that yields another one, so a
//! relogin never swaps whose tokens a client gets.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::provider::claim;

/// Who an account is logged in as, at its provider.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Identity {
    /// The stable value compared (the id_token's `sub` by default).
    pub value: String,
    /// What a person recognises (the `email` claim), when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub display: Option<String>,
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.display {
            Some(d) if *d != self.value => write!(f, "{d} ({})", self.value),
            _ => f.write_str(&self.value),
        }
    }
}

/// Where a provider's identity is read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The claims of the token answer's `id_token`.
    IdToken,
    /// The claims of the access token, when it is a JWT.
    AccessToken,
    /// The JSON the userinfo (or the provider's own profile) endpoint
    /// answers to the new access token.
    Userinfo,
}

impl Source {
    pub const NAMES: [&'static str; 3] = ["id_token", "access_token", "userinfo"];

    pub fn parse(text: &str) -> Option<Source> {
        Some(match text {
            "id_token" => Source::IdToken,
            "access_token" => Source::AccessToken,
            "userinfo" => Source::Userinfo,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Source::IdToken => "id_token",
            Source::AccessToken => "access_token",
            Source::Userinfo => "userinfo",
        }
    }
}

/// How a provider's identity is read: from where, and the claim path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub from: Source,
    pub claim: Vec<String>,
    /// Configured: a login that yields no identity fails. The default rule
    /// (the id_token's `sub`) pins only providers that send an id_token.
    pub required: bool,
}

impl Default for Rule {
    fn default() -> Self {
        Rule {
            from: Source::IdToken,
            claim: vec!["sub".into()],
            required: false,
        }
    }
}

/// The claim shown next to the identity, when the source has it.
const DISPLAY_CLAIM: &str = "email";

/// The identity a login yields: `claims` are what `rule.from` gave (`None`:
/// no id_token, an opaque access token). `Ok(None)`: nothing to pin, which
/// only the default rule allows; otherwise the error says what is missing.
pub fn read(rule: &Rule, claims: Option<&Value>) -> Result<Option<Identity>, String> {
    let path = rule.claim.join(" → ");
    let Some(claims) = claims else {
        return if rule.required {
            Err(match rule.from {
                Source::IdToken => "the token answer has no id_token (a JWT)".to_owned(),
                Source::AccessToken => "the access token is not a JWT".to_owned(),
                Source::Userinfo => "the userinfo answer is not a JSON object".to_owned(),
            })
        } else {
            Ok(None)
        };
    };
    match claim(claims, &rule.claim) {
        Some(value) if !value.is_empty() => Ok(Some(Identity {
            value,
            display: claim(claims, &[DISPLAY_CLAIM]),
        })),
        _ if rule.required => Err(format!(
            "the {} has no claim {path} (identity.claim)",
            match rule.from {
                Source::IdToken => "id_token",
                Source::AccessToken => "access token",
                Source::Userinfo => "userinfo answer",
            }
        )),
        _ => Ok(None),
    }
}

/// What a login's identity means for the account.
#[derive(Debug, PartialEq, Eq)]
pub enum Pin {
    /// The account had none: this one is pinned from now on.
    Learn(Identity),
    /// The pinned identity again (or nothing pinned and nothing learnt).
    Same,
    /// Another user (or none at all where one is pinned): the login's tokens
    /// must not be stored.
    Mismatch {
        got: Option<Identity>,
        expected: Identity,
    },
}

/// Compares a login's identity with the pinned one (exactly: identities
/// are provider-issued ids, not names to normalise).
pub fn pin(pinned: Option<&Identity>, got: Option<Identity>) -> Pin {
    match (pinned, got) {
        (None, Some(got)) => Pin::Learn(got),
        (None, None) => Pin::Same,
        (Some(expected), Some(got)) if got.value == expected.value => Pin::Same,
        (Some(expected), got) => Pin::Mismatch {
            got,
            expected: expected.clone(),
        },
    }
}

/// The account's error after a refused login.
pub fn mismatch_message(got: Option<&Identity>, expected: &Identity) -> String {
    match got {
        Some(got) => format!("logged in as {got}, expected {expected}"),
        None => format!("logged in as nobody the provider named, expected {expected}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn id(value: &str, display: Option<&str>) -> Identity {
        Identity {
            value: value.into(),
            display: display.map(Into::into),
        }
    }

    #[test]
    fn the_default_reads_sub_and_shows_email() {
        let claims = json!({"sub": "sub-alice", "email": "alice@example.test"});
        let got = read(&Rule::default(), Some(&claims)).unwrap().unwrap();
        assert_eq!(got, id("sub-alice", Some("alice@example.test")));
        assert_eq!(got.to_string(), "alice@example.test (sub-alice)");
        assert_eq!(id("u1", None).to_string(), "u1");
        assert_eq!(id("a@b", Some("a@b")).to_string(), "a@b");
    }

    #[test]
    fn the_default_pins_nothing_without_an_id_token_or_sub() {
        assert_eq!(read(&Rule::default(), None), Ok(None));
        assert_eq!(
            read(&Rule::default(), Some(&json!({"email": "x"}))),
            Ok(None)
        );
        assert_eq!(read(&Rule::default(), Some(&json!({"sub": ""}))), Ok(None));
    }

    #[test]
    fn a_configured_rule_reads_a_nested_claim_and_requires_it() {
        let rule = Rule {
            from: Source::AccessToken,
            claim: vec![
                "https://api.openai.com/auth".into(),
                "chatgpt_account_id".into(),
            ],
            required: true,
        };
        let claims = json!({"https://api.openai.com/auth": {"chatgpt_account_id": "acct-1"}});
        assert_eq!(read(&rule, Some(&claims)), Ok(Some(id("acct-1", None))));
        let e = read(&rule, Some(&json!({"sub": "s"}))).unwrap_err();
        assert_eq!(
            e,
            "the access token has no claim https://api.openai.com/auth → chatgpt_account_id (identity.claim)"
        );
        assert_eq!(
            read(&rule, None).unwrap_err(),
            "the access token is not a JWT"
        );
        let numeric = Rule {
            from: Source::Userinfo,
            claim: vec!["id".into()],
            required: true,
        };
        assert_eq!(
            read(&numeric, Some(&json!({"id": 42, "email": "a@b"}))),
            Ok(Some(id("42", Some("a@b"))))
        );
    }

    #[test]
    fn the_first_identity_is_learnt_then_compared() {
        let alice = id("sub-alice", Some("alice@example.test"));
        let bob = id("sub-bob", Some("bob@example.test"));
        assert_eq!(pin(None, Some(alice.clone())), Pin::Learn(alice.clone()));
        assert_eq!(pin(None, None), Pin::Same);
        assert_eq!(pin(Some(&alice), Some(alice.clone())), Pin::Same);
        // The display may change (a new email); the value is what counts.
        assert_eq!(
            pin(Some(&alice), Some(id("sub-alice", Some("new@x")))),
            Pin::Same
        );
        assert_eq!(
            pin(Some(&alice), Some(bob.clone())),
            Pin::Mismatch {
                got: Some(bob.clone()),
                expected: alice.clone()
            }
        );
        // No identity where one is pinned cannot be checked: refused.
        assert_eq!(
            pin(Some(&alice), None),
            Pin::Mismatch {
                got: None,
                expected: alice.clone()
            }
        );
        // Exact comparison: no case folding of provider ids.
        assert!(matches!(
            pin(Some(&alice), Some(id("SUB-ALICE", None))),
            Pin::Mismatch { .. }
        ));
        assert_eq!(
            mismatch_message(Some(&bob), &alice),
            "logged in as bob@example.test (sub-bob), expected alice@example.test (sub-alice)"
        );
    }
}
