//! What a login script cannot do: show a typed secret in a screenshot, or
//! take the browser off the web (host files, browser pages, other hosts).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use relogin_farm::browser::runner::{FailureKind, RunFailure};
use relogin_farm::browser::script::{Action, LoginScript, Step, Template, Vars};
use relogin_farm::secret::Secret;
use url::Url;

use super::support::{free_port, script, serve_html, Png, TestPool, RUN_TIMEOUT};

const SECRET: &str = "Hunter2-Visible-Secret-WWWW";

/// Two text fields at known places (CSS pixels = screenshot pixels).
const FORM: &str = r#"<!doctype html><html><body style="margin:0;background:#fff">
<input id="user" style="position:absolute;left:40px;top:40px;width:400px;height:40px;font-size:28px;border:0;padding:0;color:#000;background:#fff">
<input id="note" style="position:absolute;left:40px;top:140px;width:400px;height:40px;font-size:28px;border:0;padding:0;color:#000;background:#fff">
</body></html>"#;

fn vars_for(page: &Url) -> Vars {
    Vars::new()
        .with_authorize_url(page.clone())
        .with_secret("password", Secret::new(SECRET))
}

async fn run(t: &TestPool, profile: &str, script: &LoginScript, vars: &Vars) -> RunFailure {
    let redirect = Url::parse(&format!("http://127.0.0.1:{}/callback", free_port())).unwrap();
    t.pool
        .run_login(profile, script, vars, &redirect, RUN_TIMEOUT)
        .await
        .expect_err("the script cannot finish")
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_typed_into_a_text_field_is_masked_in_every_screenshot() {
    let t = TestPool::new(1);
    let page = serve_html(FORM.to_string()).await;
    // The secret goes into a plain text field (it would show in clear);
    // a literal goes into the other one, which stays visible.
    let text = r##"provider = "demo"
[[step]]
goto = "${authorize_url}"
[[step]]
fill = "#user"
value = "${secret:password}"
[[step]]
fill = "#note"
value = "WWWWWWWW shown"
[[step]]
screenshot = true
name = "filled"
[[step]]
click = "#never"
timeout_ms = 800
"##;
    let failure = run(&t, "masked", &script(text), &vars_for(&page)).await;
    assert_eq!(failure.kind, FailureKind::Step, "{failure}");
    let shot = failure.screenshot.clone().expect("a failure screenshot");
    let dir = shot.parent().unwrap();
    let step_shot = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with("-filled.png"))
        .expect("the screenshot step's file");
    for path in [&shot, &step_shot] {
        let png = Png::read(path);
        // Inside the secret's field: one solid colour (the mask).
        assert_eq!(
            png.colours_in(44, 44, 436, 76),
            [[0, 0, 0]],
            "{} shows the secret's field",
            path.display()
        );
        // The literal's field shows its text: the check above can see text.
        assert!(
            png.colours_in(44, 144, 436, 176).len() > 2,
            "{}: the unmasked field shows its text",
            path.display()
        );
        assert_eq!(mode(path), 0o600, "{}", path.display());
    }
    assert_eq!(mode(dir), 0o700);
    let said = format!("{failure} {failure:?}");
    assert!(!said.contains(SECRET), "secret leaked: {said}");
    t.assert_no_chromium_left();
}

/// A script built in code (as the recorder builds them) skips the parser's
/// check: the runner refuses the `goto` itself, and the failure screenshot
/// shows a blank page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_goto_off_the_web_is_refused_at_run_time() {
    let t = TestPool::new(1);
    let page = serve_html(FORM.to_string()).await;
    for (i, target) in [
        "file:///etc/passwd",
        "data:text/html,<h1>x</h1>",
        "chrome://version",
    ]
    .into_iter()
    .enumerate()
    {
        let script = LoginScript {
            provider: "demo".into(),
            timeout_ms: 5000,
            steps: vec![Step {
                action: Action::Goto {
                    url: Template::parse(target).unwrap(),
                },
                optional: false,
                timeout_ms: None,
                line: 0,
            }],
        };
        let failure = run(&t, &format!("p{i}"), &script, &vars_for(&page)).await;
        let scheme = target.split(':').next().unwrap();
        assert_eq!(
            failure.reason,
            format!("goto refused: the browser may only visit http(s) pages, not a {scheme}: URL")
        );
        assert_eq!(
            failure.page_url.as_deref(),
            Some("about:blank"),
            "{failure}"
        );
    }
    // The same for an authorize URL that is no web page.
    let failure = run(
        &t,
        "authorize",
        &script("provider = \"demo\"\n[[step]]\ngoto = \"${authorize_url}\"\n"),
        &vars_for(&Url::parse("file:///etc/passwd").unwrap()),
    )
    .await;
    assert!(failure.reason.starts_with("goto refused"), "{failure}");
    assert_eq!(failure.page_url.as_deref(), Some("about:blank"));
    t.assert_no_chromium_left();
}

/// A page's own links and scripts: Chromium refuses web pages' navigations
/// to `file:`, `data:` and `chrome:` pages; whatever happens, the page the
/// run ends on (and its screenshot) is a web page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_cannot_lead_the_browser_to_local_files() {
    let t = TestPool::new(1);
    let page = serve_html(
        r#"<!doctype html><body>
        <a id="file" href="file:///etc/passwd">file</a>
        <a id="data" href="data:text/html,<h1>data</h1>">data</a>
        <a id="chrome" href="chrome://version">chrome</a>
        <button id="js" onclick="location.href='file:///etc/passwd'">js</button>
        </body>"#
            .to_string(),
    )
    .await;
    let text = r##"provider = "demo"
[[step]]
goto = "${authorize_url}"
[[step]]
click = "#file"
[[step]]
click = "#data"
[[step]]
click = "#chrome"
[[step]]
click = "#js"
[[step]]
wait_for = "#never"
timeout_ms = 1500
"##;
    let failure = run(&t, "links", &script(text), &vars_for(&page)).await;
    let url = failure.page_url.clone().unwrap_or_default();
    assert!(
        url == page.as_str() || url == "about:blank",
        "the run ended on {url}: {failure}"
    );
    let step = failure.step.clone().unwrap();
    assert_eq!(
        step.index, 5,
        "every click ran and stayed on the page: {failure}"
    );
    t.assert_no_chromium_left();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_hosts_keep_pages_on_those_hosts() {
    let t = TestPool::with_allowed_hosts(1, &["login.example.test"]);
    // Served on 127.0.0.1 (the authorize URL's host, so allowed); `localhost`
    // names the same server but is another host.
    let page = serve_html(String::new()).await;
    let other = format!("http://localhost:{}/", page.port().unwrap());
    let link = serve_html(format!(r#"<a id="away" href="{other}">away</a>"#)).await;
    let text = format!(
        "provider = \"demo\"\n[[step]]\ngoto = \"${{authorize_url}}\"\n[[step]]\ngoto = \"{other}\"\n"
    );
    let failure = run(&t, "hosts", &script(&text), &vars_for(&page)).await;
    assert_eq!(
        failure.reason,
        "goto refused: localhost is not in browser.allowed_hosts"
    );
    // A link on an allowed page: the navigation is blocked.
    let text = "provider = \"demo\"\n[[step]]\ngoto = \"${authorize_url}\"\n[[step]]\nclick = \"#away\"\n[[step]]\nwait_for = \"#never\"\ntimeout_ms = 800\n";
    let failure = run(&t, "hosts", &script(text), &vars_for(&link)).await;
    let url = failure.page_url.clone().unwrap_or_default();
    assert!(!url.starts_with("http://localhost"), "{failure}");
    t.assert_no_chromium_left();
}
