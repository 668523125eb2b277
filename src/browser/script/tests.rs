use super::*;
use crate::secret::Secret;
use url::Url;

/// The example script shipped in `scripts/login/` (the README's).
const DEMO: &str = include_str!("../../../scripts/login/demo-alice.toml");

/// The error for `body` appended to a valid header, as (line, message).
fn err(text: &str) -> (usize, String) {
    let e = LoginScript::parse(text).expect_err("script should be rejected");
    (e.line, e.kind.to_string())
}

fn with_header(steps: &str) -> String {
    format!("provider = \"demo\"\n{steps}")
}

#[test]
fn parses_the_issue_example() {
    let s = LoginScript::parse(DEMO).unwrap();
    assert_eq!(s.provider, "demo");
    assert_eq!(s.timeout_ms, 15000);
    assert_eq!(s.steps.len(), 7);
    assert_eq!(s.steps[0].line, 4);
    assert_eq!(s.steps[1].line, 6);
    assert!(!s.steps[0].optional);
    assert!(s.steps[1].optional);
    assert_eq!(
        s.steps[2].action,
        Action::Fill {
            selector: "#password".into(),
            value: Template::parse("${secret:password}").unwrap()
        }
    );
    assert_eq!(
        s.required_secrets().into_iter().collect::<Vec<_>>(),
        vec!["password".to_string(), "totp".to_string()]
    );
}

#[test]
fn every_action_and_modifier() {
    let text = with_header(
        r##"timeout_ms = 5000
[[step]]
goto = "https://example.test/login?next=$${x}"
[[step]]
press = "#password"
key = "Enter"
timeout_ms = 2000
[[step]]
wait_for = "text=Welcome"
[[step]]
wait_for_url = "**/interaction/*/{login,consent}"
[[step]]
screenshot = true
name = "after-login"
[[step]]
click = "role=button[name='Allow']"
"##,
    );
    let s = LoginScript::parse(&text).unwrap();
    assert_eq!(s.timeout_ms, 5000);
    let keywords: Vec<_> = s.steps.iter().map(|s| s.action.keyword()).collect();
    assert_eq!(
        keywords,
        [
            "goto",
            "press",
            "wait_for",
            "wait_for_url",
            "screenshot",
            "click"
        ]
    );
    assert_eq!(s.steps[1].timeout_ms, Some(2000));
    assert_eq!(s.steps[1].action.to_string(), "press Enter in #password");
    // Round trip through the recorder's writer.
    let back = LoginScript::parse(&s.to_toml()).unwrap();
    let strip = |s: &LoginScript| {
        let mut s = s.clone();
        s.steps.iter_mut().for_each(|st| st.line = 0);
        s
    };
    assert_eq!(strip(&back), strip(&s));
    assert_eq!(
        strip(&LoginScript::parse(&LoginScript::parse(DEMO).unwrap().to_toml()).unwrap()),
        strip(&LoginScript::parse(DEMO).unwrap())
    );
}

#[test]
fn toml_syntax_error_names_its_line() {
    let (line, msg) = err("provider = \"demo\"\n[[step]]\ngoto = \n");
    assert_eq!(line, 3);
    assert!(msg.starts_with("TOML: "), "{msg}");
}

#[test]
fn top_level_errors() {
    assert_eq!(err("[[step]]\ngoto = \"https://x.test/\"\n").0, 1);
    assert_eq!(
        err("[[step]]\ngoto = \"https://x.test/\"\n").1,
        "missing `provider`"
    );
    assert_eq!(
        err("provider = \"demo\"\nretries = 3\n[[step]]\ngoto = \"https://x.test/\"\n"),
        (
            2,
            "unknown key `retries` (the top level takes provider, timeout_ms and [[step]])".into()
        )
    );
    assert_eq!(err("provider = \"demo\"\n").1, "the script has no [[step]]");
    assert_eq!(
        err("provider = \"\"\n[[step]]\ngoto = \"https://x.test/\"\n"),
        (1, "`provider` must not be empty".into())
    );
    assert_eq!(
        err("provider = \"d\"\ntimeout_ms = 0\n[[step]]\ngoto = \"https://x.test/\"\n"),
        (
            2,
            "`timeout_ms` must be a positive integer (milliseconds)".into()
        )
    );
    assert_eq!(
        err("provider = \"d\"\ntimeout_ms = \"15s\"\n[[step]]\ngoto = \"https://x.test/\"\n").0,
        2
    );
    assert_eq!(
        err("provider = \"d\"\nstep = 3\n").1,
        "`step` must be an array of tables ([[step]])"
    );
}

#[test]
fn unknown_action() {
    let (line, msg) = err(&with_header(
        "[[step]]\ngoto = \"https://x.test/\"\n[[step]]\nclik = \"#submit\"\n",
    ));
    assert_eq!(line, 5);
    assert_eq!(
        msg,
        "unknown action `clik` (actions: goto, fill, click, press, wait_for, wait_for_url, screenshot)"
    );
}

#[test]
fn two_actions_point_at_the_second() {
    let (line, msg) = err(&with_header(
        "[[step]]\nfill = \"#u\"\nvalue = \"a\"\nclick = \"#submit\"\n",
    ));
    assert_eq!(line, 5);
    assert_eq!(
        msg,
        "two actions in one step: `fill` and `click` (split them into two [[step]]s)"
    );
}

#[test]
fn step_without_action_points_at_its_header() {
    let (line, msg) = err(&with_header(
        "[[step]]\ngoto = \"https://x.test/\"\n\n[[step]]\noptional = true\n",
    ));
    assert_eq!(line, 5);
    assert!(msg.starts_with("step has no action"), "{msg}");
}

#[test]
fn missing_and_misplaced_fields() {
    assert_eq!(
        err(&with_header(
            "[[step]]\nfill = \"#password\"\noptional = true\n"
        )),
        (3, "`fill` needs `value`".into())
    );
    assert_eq!(
        err(&with_header("[[step]]\npress = \"#p\"\n")),
        (3, "`press` needs `key`".into())
    );
    assert_eq!(
        err(&with_header("[[step]]\nscreenshot = true\n")),
        (3, "`screenshot` needs `name`".into())
    );
    assert_eq!(
        err(&with_header(
            "[[step]]\nclick = \"#submit\"\nvalue = \"x\"\n"
        )),
        (4, "`value` does not go with `click`".into())
    );
    assert_eq!(
        err(&with_header("[[step]]\nscreenshot = false\nname = \"x\"\n")).0,
        3
    );
    assert_eq!(
        err(&with_header(
            "[[step]]\nscreenshot = true\nname = \"../etc\"\n"
        )),
        (
            4,
            "screenshot `name` must be 1-64 letters, digits, `_` or `-`".into()
        )
    );
}

#[test]
fn wrong_types_and_empty_values() {
    assert_eq!(
        err(&with_header(
            "[[step]]\nclick = \"#a\"\noptional = \"yes\"\n"
        )),
        (4, "`optional` must be true or false".into())
    );
    assert_eq!(
        err(&with_header("[[step]]\nclick = \"#a\"\ntimeout_ms = -5\n")),
        (
            4,
            "`timeout_ms` must be a positive integer (milliseconds)".into()
        )
    );
    assert_eq!(
        err(&with_header("[[step]]\nclick = 3\n")),
        (3, "`click` must be a string".into())
    );
    assert_eq!(
        err(&with_header("[[step]]\nclick = \"\"\n")),
        (3, "`click` must not be empty".into())
    );
}

#[test]
fn variable_errors() {
    assert_eq!(
        err(&with_header(
            "[[step]]\nfill = \"#u\"\nvalue = \"${user}\"\n"
        )),
        (
            4,
            "unknown variable `${user}` (known: ${authorize_url}, ${secret:NAME}, ${totp}, \
             ${user_code}, ${verification_uri}, ${verification_uri_complete}; \
             write $${ for a literal ${)"
                .into()
        )
    );
    assert_eq!(
        err(&with_header(
            "[[step]]\nfill = \"#u\"\nvalue = \"${totp\"\n"
        )),
        (4, "`${` is never closed with `}`".into())
    );
    assert_eq!(
        err(&with_header(
            "[[step]]\nfill = \"#u\"\nvalue = \"${secret:my pass}\"\n"
        )),
        (
            4,
            "bad secret name `my pass` in ${secret:…} (letters, digits, `_`, `-`, `.`)".into()
        )
    );
    assert_eq!(
        err(&with_header(
            "[[step]]\nclick = \"text=${secret:password}\"\n"
        )),
        (
            3,
            "variables are only allowed in `goto` and `value`, not in `click`".into()
        )
    );
    assert_eq!(
        err(&with_header("[[step]]\ngoto = \"https://x.test/?p=${secret:password}\"\n")),
        (
            3,
            "${secret:password} cannot go in a URL (URLs end up in logs and history): type it with `fill` … `value`"
                .into()
        )
    );
}

#[test]
fn goto_goes_only_to_web_pages() {
    for ok in [
        "${authorize_url}",
        "${authorize_url}&prompt=login",
        "${verification_uri}",
        "${verification_uri_complete}",
        "https://x.test/",
        "HTTP://x.test",
        "http://127.0.0.1:9/a?b=${authorize_url}",
    ] {
        let text = with_header(&format!("[[step]]\ngoto = \"{ok}\"\n"));
        assert!(LoginScript::parse(&text).is_ok(), "{ok}");
    }
    for bad in [
        "file:///etc/passwd",
        "FILE:///etc/passwd",
        "data:text/html,<h1>x</h1>",
        "chrome://settings",
        "javascript:alert(1)",
        "about:blank",
        "/relative/path",
        "https:///no-host",
        "x.test/login",
        "view-source:https://x.test/",
        "ftp://x.test/",
    ] {
        let text = with_header(&format!(
            "[[step]]\nclick = \"#a\"\n\n[[step]]\ngoto = \"{bad}\"\n"
        ));
        assert_eq!(
            err(&text),
            (
                6,
                format!("`goto` may only go to an http:// or https:// URL, ${{authorize_url}} or ${{verification_uri}}, not `{bad}`")
            ),
            "{bad}"
        );
    }
}

#[test]
fn bad_glob() {
    assert_eq!(
        err(&with_header(
            "[[step]]\ngoto = \"https://x.test/\"\n[[step]]\nwait_for_url = \"**/{login,consent\"\n"
        )),
        (5, "bad glob in `wait_for_url`: `{` is never closed".into())
    );
}

#[test]
fn errors_display_with_line() {
    let e = LoginScript::parse(&with_header("[[step]]\nclik = \"#a\"\n")).unwrap_err();
    assert!(
        e.to_string().starts_with("line 3: unknown action `clik`"),
        "{e}"
    );
}

fn demo_vars() -> Vars {
    Vars::new()
        .with_authorize_url(Url::parse("http://127.0.0.1:9/auth?client_id=x").unwrap())
        .with_secret("password", Secret::new("alice-password"))
        // RFC 6238 test seed "12345678901234567890".
        .with_secret("totp", Secret::new("GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ"))
}

#[test]
fn expand_resolves_and_defers_totp() {
    let steps = LoginScript::parse(DEMO)
        .unwrap()
        .expand(&demo_vars())
        .unwrap();
    assert_eq!(steps.len(), 7);
    assert_eq!(steps[0].timeout, std::time::Duration::from_millis(15000));
    let ResolvedAction::Goto { url } = &steps[0].action else {
        panic!()
    };
    assert_eq!(url.render().expose(), "http://127.0.0.1:9/auth?client_id=x");
    let ResolvedAction::Fill { value, .. } = &steps[2].action else {
        panic!()
    };
    assert_eq!(value.render().expose(), "alice-password");
    assert!(value.is_confidential());
    assert_eq!(format!("{value:?}"), "StepValue(***)");
    let ResolvedAction::Fill { value, .. } = &steps[1].action else {
        panic!()
    };
    assert!(!value.is_confidential(), "a literal user name is shown");
    let ResolvedAction::Fill { value, .. } = &steps[4].action else {
        panic!()
    };
    assert!(
        value.is_confidential(),
        "a ${{totp}} is masked like a secret"
    );
    let code = value.render();
    assert_eq!(code.expose().len(), 6);
    assert!(code.expose().chars().all(|c| c.is_ascii_digit()));
    // Display of a resolved step never shows the value.
    assert_eq!(steps[2].action.to_string(), "fill #password");
}

#[test]
fn totp_matches_rfc6238_vector() {
    // RFC 6238 appendix B, SHA1, T = 59 s → 94287082 (8 digits); 6 digits: 287082.
    let totp = super::vars::tests_support::totp(&Secret::new("gezdgnbvgy3tqojq gezdgnbvgy3tqojq"));
    assert_eq!(totp.generate(59), "287082");
    assert_eq!(totp.generate(1111111109), "081804");
}

#[test]
fn expand_errors_name_the_step_line() {
    let script = LoginScript::parse(DEMO).unwrap();
    let e = script
        .expand(&Vars::new().with_secret("password", Secret::new("p")))
        .unwrap_err();
    assert_eq!(
        (e.line, e.kind.to_string()),
        (4, "${authorize_url} is not set for this account".into())
    );
    let vars = Vars::new().with_authorize_url(Url::parse("http://h/").unwrap());
    let e = script.expand(&vars).unwrap_err();
    assert_eq!(
        (e.line, e.kind.to_string()),
        (10, "${secret:password} is not set for this account".into())
    );
    let vars = vars.with_secret("password", Secret::new("p"));
    let e = script.expand(&vars).unwrap_err();
    assert_eq!(e.line, 17);
    assert_eq!(
        e.kind.to_string(),
        "${totp} (secret `totp`) is not set for this account"
    );
    let e = script
        .expand(&vars.with_secret("totp", Secret::new("not base32!")))
        .unwrap_err();
    assert_eq!(
        (e.line, e.kind.to_string()),
        (17, "secret `totp` is not a base32 TOTP seed".into())
    );
    assert!(!e.to_string().contains("not base32!"));
}

const DEVICE_SCRIPT: &str = r##"provider = "gh"
[[step]]
goto = "${verification_uri}"
[[step]]
fill = "#code"
value = "${user_code}"
[[step]]
goto = "${verification_uri_complete}"
"##;

fn device_vars(complete: bool) -> Vars {
    let uri = Url::parse("https://idp.test/device").unwrap();
    Vars::new().with_device_code(DeviceCode {
        user_code: "WDJB-MJHT".into(),
        verification_uri_complete: complete
            .then(|| Url::parse("https://idp.test/device?user_code=WDJB-MJHT").unwrap()),
        verification_uri: uri,
    })
}

#[test]
fn a_device_login_fills_its_code_and_page() {
    let script = LoginScript::parse(DEVICE_SCRIPT).unwrap();
    let steps = script.expand(&device_vars(true)).unwrap();
    let rendered: Vec<String> = steps
        .iter()
        .map(|s| match &s.action {
            ResolvedAction::Goto { url } => url.render().expose().to_owned(),
            ResolvedAction::Fill { value, .. } => {
                assert!(!value.is_confidential(), "a user code is shown, not masked");
                value.render().expose().to_owned()
            }
            other => panic!("{other}"),
        })
        .collect();
    assert_eq!(
        rendered,
        [
            "https://idp.test/device",
            "WDJB-MJHT",
            "https://idp.test/device?user_code=WDJB-MJHT"
        ]
    );
    let vars = device_vars(true);
    assert_eq!(
        vars.run_urls().map(Url::as_str).collect::<Vec<_>>(),
        [
            "https://idp.test/device",
            "https://idp.test/device?user_code=WDJB-MJHT"
        ]
    );
    assert_eq!(
        vars.provider_page().unwrap().as_str(),
        "https://idp.test/device"
    );
    // The provider gave no complete URI: the step that uses it is named.
    let e = script.expand(&device_vars(false)).unwrap_err();
    assert_eq!(
        (e.line, e.kind.to_string()),
        (
            7,
            "${verification_uri_complete} is not set for this account".into()
        )
    );
}

#[test]
fn a_variable_of_the_other_login_kind_is_an_error_naming_its_line() {
    // A code-flow login has no user code ...
    let code_flow = Vars::new().with_authorize_url(Url::parse("http://h/auth").unwrap());
    let e = LoginScript::parse(DEVICE_SCRIPT)
        .unwrap()
        .expand(&code_flow)
        .unwrap_err();
    assert_eq!(e.line, 2);
    assert!(
        e.to_string().starts_with(
            "line 2: ${verification_uri} is not set in this login: ${user_code} and \
             ${verification_uri(_complete)} exist only when the provider logs in with a \
             device code (login = \"device\")"
        ),
        "{e}"
    );
    // ... and a device login no authorize URL.
    let e = LoginScript::parse(DEMO)
        .unwrap()
        .expand(&device_vars(true))
        .unwrap_err();
    assert_eq!(e.line, 4);
    assert!(
        e.kind
            .to_string()
            .starts_with("${authorize_url} is not set in this login"),
        "{e}"
    );
}

#[test]
fn attaching_a_script_of_the_other_login_kind_names_its_line() {
    let device = LoginScript::parse(DEVICE_SCRIPT).unwrap();
    assert_eq!(device.check_login_kind(true), Ok(()));
    let e = device.check_login_kind(false).unwrap_err();
    assert_eq!(e.line, 2);
    assert!(
        e.kind
            .to_string()
            .starts_with("${verification_uri} is not set in this login"),
        "{e}"
    );
    let code = LoginScript::parse(DEMO).unwrap();
    assert_eq!(code.check_login_kind(false), Ok(()));
    assert_eq!(code.check_login_kind(true).unwrap_err().line, 4);
}

#[test]
fn redact_hides_every_secret() {
    let vars = demo_vars();
    let text = "fill failed: value alice-password rejected, code 123456";
    assert_eq!(
        vars.redact(text, &[Secret::new("123456")]),
        "fill failed: value *** rejected, code ***"
    );
}
