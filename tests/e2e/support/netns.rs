//! Agent CLIs that may phone home (`claude`, later `codex`, `opencode`) run
//! in a loopback-only network namespace: whatever they try, no packet can
//! leave for another address. They reach the farm through a unix socket,
//! which crosses network namespaces as a file:
//!
//! ```text
//! namespace (lo only)                                   test's network
//! CLI → 127.0.0.1:<farm port> → fwd.mjs tcp-to-unix → SOCK → fwd.mjs unix-to-tcp → farm
//! ```
//!
//! Inside, the forwarder listens on the farm's own port number (the
//! namespace has a loopback of its own), so the farm's URL works unchanged.
//! The namespace also has its own PID namespace: when the run is killed at
//! its deadline, every process in it dies with it.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use super::clients_dir;
use super::process::{clean_command, run_with_deadline, Daemon};

/// Inside the namespace: bring `lo` up, record the links (the proof that
/// only `lo` exists), then run the program behind the inner forwarder.
const INSIDE: &str = r#"set -e
ip=$1 links=$2 port=$3 sock=$4 fwd=$5
shift 5
"$ip" link set lo up
"$ip" -o link > "$links"
exec node "$fwd" tcp-to-unix "127.0.0.1:$port" "$sock" -- "$@""#;

/// Runs `cmd` (its program, arguments, environment changes and working
/// directory) to its end inside `unshare --net`, where
/// `http://127.0.0.1:<farm_port>` is the farm; kills it and panics after
/// `timeout`. Panics unless the namespace had no link but `lo`, and when
/// `unshare`, `ip` or node are missing: these tests never skip.
pub fn run_in_loopback_namespace(
    name: &str,
    cmd: Command,
    farm_port: u16,
    timeout: Duration,
) -> Output {
    let ip = required_tools();
    let clients = clients_dir();
    let fwd = clients.join("fwd.mjs");
    let dir = tempfile::Builder::new()
        .prefix("netns")
        .tempdir()
        .expect("a temporary directory for the socket");
    let sock = dir.path().join("farm.sock");
    let links = dir.path().join("links");

    let mut outside = clean_command("node");
    outside
        .arg(&fwd)
        .arg("unix-to-tcp")
        .arg(&sock)
        .arg(format!("127.0.0.1:{farm_port}"));
    let (_outside, _) = Daemon::spawn(
        "unix-to-tcp forwarder",
        outside,
        &dir.path().join("fwd.log"),
        "LISTENING ",
    )
    .unwrap_or_else(|f| {
        panic!(
            "the unix-to-tcp forwarder did not start ({:?}):\n{}",
            f.status, f.log
        )
    });

    let mut run = clean_command("unshare");
    run.args(["--net", "--pid", "--fork", "--kill-child", "--mount-proc"]);
    if !is_root() {
        // Without root, a user namespace grants the right to make the others.
        run.arg("--map-root-user");
    }
    run.args(["--", "sh", "-c", INSIDE, "sh", ip])
        .arg(&links)
        .arg(farm_port.to_string())
        .arg(&sock)
        .arg(&fwd)
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (var, value) in cmd.get_envs() {
        match value {
            Some(value) => run.env(var, value),
            None => run.env_remove(var),
        };
    }
    if let Some(cwd) = cmd.get_current_dir() {
        run.current_dir(cwd);
    }
    let out = run_with_deadline(name, run, timeout);
    assert_only_loopback(name, &links, &out);
    out
}

/// The `ip` to run (`/usr/sbin` is not on every user's PATH); panics with
/// how to install them unless `unshare` and `ip` run.
fn required_tools() -> &'static str {
    let runs = |tool: &str, arg: &str| {
        Command::new(tool)
            .arg(arg)
            .output()
            .is_ok_and(|out| out.status.success())
    };
    let fix = "run `scripts/setup`";
    let why = "the agent CLI tests run in a loopback-only network namespace and need";
    assert!(
        runs("unshare", "--version"),
        "{why} `unshare` (Debian package util-linux); {fix}"
    );
    ["ip", "/usr/sbin/ip", "/sbin/ip"]
        .into_iter()
        .find(|ip| runs(ip, "-V"))
        .unwrap_or_else(|| panic!("{why} `ip` (Debian package iproute2); {fix}"))
}

fn is_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// The links `ip -o link` saw inside: `lo` and nothing else.
fn assert_only_loopback(name: &str, links: &Path, out: &Output) {
    let listed = std::fs::read_to_string(links).unwrap_or_else(|e| {
        panic!(
            "{name} did not start in a network namespace ({e}; {:?}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let names: Vec<&str> = listed
        .lines()
        .filter_map(|line| line.split(':').nth(1))
        .map(str::trim)
        .collect();
    assert_eq!(
        names,
        ["lo"],
        "{name}: the namespace has links other than lo:\n{listed}"
    );
}
