//! A child daemon that prints one "ready" line on stdout (`READY …`,
//! `LISTENING …`) and logs to stderr. Its stderr is appended to a file, so
//! a test can read everything the process logged, across restarts.
//! Dropping a [`Daemon`] kills it (SIGKILL); [`Daemon::terminate`] stops it
//! gracefully (SIGTERM) and waits.

use std::fs::{self, File};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// How long a daemon may take to print its ready line.
const START_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Daemon {
    name: String,
    child: Child,
    log: PathBuf,
}

/// A daemon that exited (or hung) before it was ready.
#[derive(Debug)]
pub struct StartFailure {
    /// `None`: it did not exit, it was killed after the start timeout.
    pub status: Option<ExitStatus>,
    /// What it wrote to stderr during this start.
    pub log: String,
}

impl Daemon {
    /// Starts `cmd` (its stderr appended to `log`) and waits for a stdout
    /// line starting with `ready_prefix`; returns the daemon and the rest
    /// of that line.
    pub fn spawn(
        name: &str,
        mut cmd: Command,
        log: &Path,
        ready_prefix: &str,
    ) -> Result<(Daemon, String), StartFailure> {
        let log_start = fs::metadata(log).map(|m| m.len()).unwrap_or(0);
        let stderr = File::options()
            .create(true)
            .append(true)
            .open(log)
            .expect("open the daemon's log file");
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({cmd:?}): {e}"));
        let lines = read_lines(child.stdout.take().expect("stdout is piped"));
        let mut daemon = Daemon {
            name: name.to_string(),
            child,
            log: log.to_path_buf(),
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix(ready_prefix) {
                        return Ok((daemon, rest.trim().to_string()));
                    }
                    eprintln!("{name} stdout: {line}");
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    // stdout closed: the process is exiting.
                    let status = daemon.wait(Duration::from_secs(10));
                    return Err(StartFailure {
                        status,
                        log: daemon.log_since(log_start),
                    });
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    // What it was doing, for the failure message.
                    let proc_file = |f: &str| {
                        fs::read_to_string(format!("/proc/{}/{f}", daemon.pid()))
                            .unwrap_or_default()
                    };
                    let stat = proc_file("stat");
                    let state = stat.rsplit(") ").next().unwrap_or("").split(' ').next();
                    let hung = format!(
                        "\n[{name} printed no ready line within {START_TIMEOUT:?}: state {}, waiting in {:?}]\n",
                        state.unwrap_or("?"),
                        proc_file("wchan")
                    );
                    daemon.kill();
                    return Err(StartFailure {
                        status: None,
                        log: daemon.log_since(log_start) + &hung,
                    });
                }
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then waits up to `timeout` for the exit. Panics (after a
    /// SIGKILL) if the process does not stop in time.
    pub fn terminate(&mut self, timeout: Duration) -> ExitStatus {
        let sent = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        assert!(
            sent.is_ok_and(|s| s.success()),
            "could not send SIGTERM to {}",
            self.name
        );
        match self.wait(timeout) {
            Some(status) => status,
            None => {
                self.kill();
                panic!("{} did not stop within {timeout:?} of SIGTERM", self.name)
            }
        }
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits up to `timeout` for the process to exit.
    fn wait(&mut self, timeout: Duration) -> Option<ExitStatus> {
        wait_exit(&mut self.child, timeout)
    }

    fn log_since(&self, offset: u64) -> String {
        let all = fs::read(&self.log).unwrap_or_default();
        String::from_utf8_lossy(all.get(offset as usize..).unwrap_or_default()).into_owned()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.kill();
        }
    }
}

/// Reads `stdout` line by line on a thread. Lines after the ready line are
/// drained (so the child never blocks on a full pipe) and dropped once the
/// receiver is gone.
fn read_lines(stdout: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line);
        }
    });
    rx
}

/// A command with the `RELOGIN_FARM_*` and `RUST_LOG` variables of the
/// test's own environment removed, so that only what a test sets applies.
pub fn clean_command(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new(program);
    for (var, _) in std::env::vars_os() {
        let name = var.to_string_lossy();
        if name.starts_with("RELOGIN_FARM_") || name == "RUST_LOG" {
            cmd.env_remove(&var);
        }
    }
    cmd
}

/// Runs `cmd` to its end and returns its output; kills it and panics if it
/// takes longer than `timeout`.
pub fn run_with_deadline(name: &str, mut cmd: Command, timeout: Duration) -> std::process::Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {name} ({cmd:?}): {e}"));
    let drain = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    };
    let stdout = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
    );
    let stderr = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
    );
    let Some(status) = wait_exit(&mut child, timeout) else {
        let _ = child.kill();
        let _ = child.wait();
        let err = String::from_utf8_lossy(&stderr.join().unwrap_or_default()).into_owned();
        let out = String::from_utf8_lossy(&stdout.join().unwrap_or_default()).into_owned();
        panic!("{name} did not finish within {timeout:?}; killed.\nstdout:\n{out}\nstderr:\n{err}");
    };
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    std::process::Output {
        status,
        stdout,
        stderr,
    }
}

/// Waits up to `timeout` for `child` to exit.
fn wait_exit(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
            _ => return None,
        }
    }
}
