//! `relogin-farm account add`: the interactive login through the running
//! farm's API, finished by the loopback redirect or by a pasted URL.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::support::process::{clean_command, run_with_deadline};
use crate::support::{browser, Bed, Settings, Value, PROVIDER};

/// The CLI, running: its stdin to paste into, its stdout lines as they come.
struct Cli {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
}

impl Drop for Cli {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Cli {
    fn account_add(bed: &Bed, label: &str) -> Cli {
        let mut child = clean_command(env!("CARGO_BIN_EXE_relogin-farm"))
            .arg("--config")
            .arg(bed.layout.config())
            .args([
                "account",
                "add",
                "--provider",
                PROVIDER,
                "--label",
                label,
                "--farm",
                bed.url(),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start relogin-farm account add");
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Cli {
            child,
            stdin,
            lines,
        }
    }

    /// The first stdout line matching `pick`, within 20 s.
    fn wait_line(&self, what: &str, pick: impl Fn(&str) -> bool) -> String {
        loop {
            match self.lines.recv_timeout(Duration::from_secs(20)) {
                Ok(line) if pick(&line) => return line,
                Ok(_) => {}
                Err(_) => panic!("relogin-farm account add printed no {what}"),
            }
        }
    }

    fn authorize_url(&self) -> String {
        self.wait_line("authorize URL", |l| l.trim_start().starts_with("http"))
            .trim()
            .to_string()
    }

    /// Waits for the CLI's last word, `account N is STATE`, and its exit.
    fn finish(mut self) -> String {
        let done = self.wait_line("final state", |l| {
            l.starts_with("account ") && l.contains(" is ")
        });
        let status = self.child.wait().expect("wait for the CLI");
        assert!(status.success(), "the CLI exited with {status}");
        done
    }
}

#[test]
fn account_add_finishes_through_the_loopback_listener() {
    let bed = Bed::start(Settings::default());
    let cli = Cli::account_add(&bed, "carol");
    let url = cli.authorize_url();
    assert_eq!(
        browser::sign_in_and_follow(&url, "carol"),
        200,
        "the loopback listener answers the browser"
    );
    assert!(cli.finish().ends_with("is healthy"));
    let accounts = bed.admin().get("/api/accounts").ok();
    assert_eq!(accounts[0]["label"], "carol");
    assert_eq!(accounts[0]["state"], "healthy");
}

#[test]
fn account_add_finishes_with_a_pasted_redirect_url() {
    let bed = Bed::start(Settings::default());
    let mut cli = Cli::account_add(&bed, "dave");
    let url = cli.authorize_url();
    let redirect = browser::sign_in(&url, "dave");
    cli.stdin.write_all(b"not a url\n").unwrap(); // a bad paste is refused, the CLI asks again
    writeln!(cli.stdin, "{redirect}").unwrap();
    assert!(cli.finish().ends_with("is healthy"));
    assert_eq!(bed.admin().get("/api/accounts").ok()[0]["state"], "healthy");
}

/// `relogin-farm --config farm.toml ARGS` with no display in its
/// environment, run to its end; its stdout.
fn cli_without_display(bed: &Bed, args: &[&str]) -> String {
    let mut cmd = clean_command(env!("CARGO_BIN_EXE_relogin-farm"));
    cmd.arg("--config")
        .arg(bed.layout.config())
        .args(args)
        .args(["--farm", bed.url()])
        .env_remove("DISPLAY")
        .env_remove("WAYLAND_DISPLAY")
        .current_dir(&bed.layout.root);
    let out = run_with_deadline("relogin-farm", cmd, Duration::from_secs(30));
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{args:?}: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn account_add_no_login_then_record_without_a_display_points_to_the_admin_page() {
    let bed = Bed::start(Settings::default());
    let add = [
        "account",
        "add",
        "--provider",
        PROVIDER,
        "--label",
        "nina",
        "--no-login",
    ];
    let added = cli_without_display(&bed, &add);
    assert!(added.contains("account 1 created"), "{added}");
    assert_eq!(bed.account(1)["state"], "pending_login");
    let record = cli_without_display(&bed, &["account", "record", "1"]);
    let link = format!("{}/admin/#record=1", bed.url());
    // Said once, and as the only thing said: no browser error after it.
    assert_eq!(record.matches(&link).count(), 1, "{record}");
    assert_eq!(record.matches("no display").count(), 1, "{record}");
    assert_eq!(record.lines().count(), 2, "{record}");
    // Nothing was started at the farm: no login is pending for a browser.
    let kinds: Vec<Value> = bed
        .events_since(0)
        .iter()
        .map(|e| e["kind"].clone())
        .collect();
    assert!(!kinds.iter().any(|k| k == "login_started"), "{kinds:?}");
}
