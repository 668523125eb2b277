//! Provider presets: `preset = "NAME"` in a `[[provider]]` block.
//!
//! A preset is defaults for the block's own keys, written as the TOML a
//! person would write, taken from the provider's own public client. Before
//! the block is read, [`apply`] puts each preset key the block does not set
//! into it (a nested table such as `identity` key by key); the block is
//! then read and checked like any other, so a preset adds no parsing of its
//! own. Endpoints are one group: a block that sets any endpoint key
//! (`issuer`, `authorize_url`, …) takes none of the preset's, so pointing
//! a preset at another server (a test's, a proxy's) cannot mix the two.
//!
//! `relogin-farm provider add NAME` writes a block from [`Preset::block`].

use toml::{Table, Value};

use super::{ConfigError, Result};

/// One provider's preset.
pub struct Preset {
    /// The value of `preset`.
    pub name: &'static str,
    /// Who it is for, shown by `provider add`.
    pub title: &'static str,
    /// The keys it sets, as TOML.
    pub keys: &'static str,
    /// Keys the block must set itself (no public value exists), with what
    /// goes there; a block without one fails with this text.
    pub needs: &'static [(&'static str, &'static str)],
    /// A client secret is needed (given as the provider's secret variable
    /// or `client_secret(_file)`); `doctor` says so when there is none.
    pub needs_secret: bool,
}

/// The keys that name the provider's endpoints (one group, see above).
const ENDPOINT_KEYS: &[&str] = &[
    "issuer",
    "authorize_url",
    "token_url",
    "device_authorization_url",
    "introspection_url",
];

/// Every preset. The values come from each provider's own public client
/// or documentation; the README's "Providers" table says what each
/// provider's terms allow.
pub const PRESETS: &[Preset] = &[
    Preset {
        name: "google",
        title: "Google (OpenID Connect; a \"Desktop app\" OAuth client of your own)",
        keys: r#"
issuer = "https://accounts.google.com"
scopes = ["openid", "email", "profile"]
redirect_uri = "http://127.0.0.1:8765/callback"
# Google gives a refresh token only for access_type=offline, and again on a
# later login only with prompt=consent; its refresh tokens do not rotate.
extra_authorize_params = { access_type = "offline", prompt = "consent" }
"#,
        needs: &[(
            "client_id",
            "the client id of your own Google OAuth client (type \"Desktop app\", https://console.cloud.google.com/apis/credentials)",
        )],
        needs_secret: true,
    },
    Preset {
        name: "entra",
        title: "Microsoft Entra ID (OpenID Connect v2.0, your tenant)",
        keys: r#"
scopes = ["openid", "profile", "email", "offline_access"]
redirect_uri = "http://localhost:8765/callback"
# The v2.0 token endpoint wants the scopes again on a refresh.
refresh_scope = true
"#,
        needs: &[
            (
                "issuer",
                "https://login.microsoftonline.com/<tenant id>/v2.0 (your tenant's id, not common/organizations: their discovery document names no single issuer)",
            ),
            (
                "client_id",
                "the application (client) id of your app registration (platform \"Mobile and desktop applications\", the redirect_uri added)",
            ),
        ],
        needs_secret: false,
    },
    Preset {
        name: "keycloak",
        title: "Keycloak (OpenID Connect, by issuer URL)",
        keys: r#"
scopes = ["openid", "profile", "email", "offline_access"]
redirect_uri = "http://127.0.0.1:8765/callback"
"#,
        needs: &[
            ("issuer", "https://<host>/realms/<realm>"),
            ("client_id", "the id of a public client with PKCE (S256) in that realm"),
        ],
        needs_secret: false,
    },
    Preset {
        name: "authentik",
        title: "authentik (OpenID Connect, by issuer URL)",
        keys: r#"
# offline_access: authentik issues a refresh token only for this scope.
scopes = ["openid", "profile", "email", "offline_access"]
redirect_uri = "http://127.0.0.1:8765/callback"
"#,
        needs: &[
            ("issuer", "https://<host>/application/o/<application slug>/"),
            ("client_id", "the client id of a public OAuth2/OpenID provider there"),
        ],
        needs_secret: false,
    },
    Preset {
        name: "github",
        title: "GitHub (device flow; your own OAuth app)",
        keys: r#"
login = "device"
device_authorization_url = "https://github.com/login/device/code"
token_url = "https://github.com/login/oauth/access_token"
# Not used by a device login, but every provider names one.
redirect_uri = "http://127.0.0.1:8765/callback"
scopes = ["read:user"]
# GitHub answers form-encoded unless asked for JSON.
token_headers = { accept = "application/json" }
# An OAuth app's tokens carry no expiry (they live until revoked).
default_token_ttl = "365d"
# No id_token: the account is the numeric id of GET /user.
identity = { from = "userinfo", url = "https://api.github.com/user", claim = ["id"] }
"#,
        needs: &[(
            "client_id",
            "the client id of your own GitHub OAuth app with \"Enable Device Flow\" ticked (https://github.com/settings/developers)",
        )],
        needs_secret: false,
    },
    Preset {
        name: "openai-codex",
        title: "OpenAI Codex / Sign in with ChatGPT (the Codex CLI's public client)",
        // From openai/codex, codex-rs/login: the client id (`CLIENT_ID`),
        // the issuer's `/oauth/authorize` and `/oauth/token`, the loopback
        // callback, the scopes and extra parameters of
        // `build_authorize_url`, `originator` (`DEFAULT_ORIGINATOR`), the
        // JSON refresh request, and the account id claim.
        keys: r#"
client_id = "app_EMoamEEZ73f0CkXaXp7hrann"
authorize_url = "https://auth.openai.com/oauth/authorize"
token_url = "https://auth.openai.com/oauth/token"
redirect_uri = "http://localhost:1455/auth/callback"
scopes = ["openid", "profile", "email", "offline_access", "api.connectors.read", "api.connectors.invoke"]
extra_authorize_params = { id_token_add_organizations = "true", codex_cli_simplified_flow = "true", originator = "codex_cli_rs" }
refresh_request = "json"
# A spent refresh token presented again revokes the grant.
reuse_detection = true
identity = { from = "id_token", claim = ["https://api.openai.com/auth", "chatgpt_account_id"] }
"#,
        needs: &[],
        needs_secret: false,
    },
];

/// The preset called `name`.
pub fn find(name: &str) -> Option<&'static Preset> {
    PRESETS.iter().find(|p| p.name == name)
}

/// Every preset's name, for error messages and help.
pub fn names() -> Vec<&'static str> {
    PRESETS.iter().map(|p| p.name).collect()
}

/// `preset = "…"`: a known preset's name.
pub(super) fn parse_name(text: &str) -> std::result::Result<String, String> {
    match find(text) {
        Some(p) => Ok(p.name.to_owned()),
        None => Err(format!("expected {}", names().join(" | "))),
    }
}

impl Preset {
    /// The preset's keys as a table.
    pub fn table(&self) -> Table {
        self.keys
            .parse()
            .expect("a preset's keys are valid TOML (tested)")
    }

    /// A `[[provider]]` block using the preset, for `provider add`: the
    /// keys the person must still fill in are there, commented out, with
    /// what goes in them.
    pub fn block(&self, name: &str) -> String {
        let mut text = format!(
            "\n# {}\n[[provider]]\nname = {}\npreset = {}\n",
            self.title,
            Value::from(name),
            Value::from(self.name)
        );
        for (key, what) in self.needs {
            text.push_str(&format!("# {key} = \"\"  # fill in: {what}\n"));
        }
        text
    }
}

/// Fills each `[[provider]]` block of `value` (the file's `provider`
/// array) from its preset.
pub(super) fn apply_all(value: &mut Option<Value>) -> Result<()> {
    let Some(Value::Array(blocks)) = value else {
        return Ok(());
    };
    for (i, block) in blocks.iter_mut().enumerate() {
        if let Value::Table(table) = block {
            apply(&format!("provider[{i}]"), table)?;
        }
    }
    Ok(())
}

/// Fills the block at `path` (`provider[0]`) from its `preset`, if it names
/// a known one (an unknown name is left for the key's reader to reject).
fn apply(path: &str, block: &mut Table) -> Result<()> {
    let Some(preset) = block.get("preset").and_then(Value::as_str).and_then(find) else {
        return Ok(());
    };
    for (key, what) in preset.needs {
        if !block.contains_key(*key) {
            return Err(ConfigError::Invalid {
                key: format!("{path}.{key}"),
                reason: format!("missing: preset \"{}\" needs {what}", preset.name),
            });
        }
    }
    let own_endpoints = ENDPOINT_KEYS.iter().any(|k| block.contains_key(*k));
    for (key, value) in preset.table() {
        if own_endpoints && ENDPOINT_KEYS.contains(&key.as_str()) {
            continue;
        }
        match (block.get_mut(&key), value) {
            (None, value) => {
                block.insert(key, value);
            }
            (Some(Value::Table(own)), Value::Table(defaults)) => {
                for (k, v) in defaults {
                    own.entry(k).or_insert(v);
                }
            }
            (Some(_), _) => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_preset_parses_and_sets_only_known_provider_keys() {
        let known: Vec<String> = super::super::ProviderConfig::keys()
            .iter()
            .map(|k| k.key.clone())
            .collect();
        for p in PRESETS {
            let keys = p.table().keys().cloned().collect::<Vec<_>>();
            let needs = p.needs.iter().map(|(k, _)| k.to_string());
            for key in keys.into_iter().chain(needs) {
                let full = format!("provider.{key}");
                assert!(
                    known.contains(&full),
                    "preset {}: unknown key {key}",
                    p.name
                );
            }
        }
    }

    #[test]
    fn the_preset_key_s_doc_names_every_preset() {
        let keys = super::super::ProviderConfig::keys();
        let doc = keys.iter().find(|k| k.key == "provider.preset").unwrap();
        for name in names() {
            assert!(
                doc.doc.contains(&format!("`{name}`")),
                "{name}: {}",
                doc.doc
            );
        }
    }

    #[test]
    fn the_blocks_own_keys_win_and_endpoints_come_as_one_group() {
        let mut block: Table = r#"
preset = "openai-codex"
token_url = "http://127.0.0.1:9/token"
authorize_url = "http://127.0.0.1:9/authorize"
scopes = ["openid"]
identity = { from = "access_token" }
"#
        .parse()
        .unwrap();
        apply("provider[0]", &mut block).unwrap();
        assert_eq!(
            block["token_url"].as_str(),
            Some("http://127.0.0.1:9/token")
        );
        assert_eq!(block["scopes"].as_array().unwrap().len(), 1);
        assert_eq!(block["refresh_request"].as_str(), Some("json"));
        let identity = block["identity"].as_table().unwrap();
        assert_eq!(identity["from"].as_str(), Some("access_token"));
        assert_eq!(identity["claim"].as_array().unwrap().len(), 2);
        // An issuer of its own drops the preset's authorize_url/token_url.
        let mut block: Table = "preset = \"openai-codex\"\nissuer = \"http://127.0.0.1:9\""
            .parse()
            .unwrap();
        apply("provider[0]", &mut block).unwrap();
        assert!(!block.contains_key("token_url"), "{block:?}");
    }

    #[test]
    fn a_missing_key_the_preset_needs_is_named_with_what_goes_there() {
        let mut block: Table = "preset = \"github\"\nname = \"gh\"".parse().unwrap();
        let e = apply("provider[1]", &mut block).unwrap_err().to_string();
        assert!(e.contains("provider[1].client_id"), "{e}");
        assert!(e.contains("GitHub OAuth app"), "{e}");
    }
}
