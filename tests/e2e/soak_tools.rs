//! The soak's own tools (`scripts/soak` is too long for the suite): the
//! fault-injecting TCP proxy's unit tests, `scripts/lib/test_faultproxy.py`,
//! run against a real loopback echo server.

use std::process::Command;

use crate::support::repo_root;

#[test]
fn fault_proxy_refuses_slows_and_cuts_as_told() {
    let out = Command::new("python3")
        .args(["-B", "-m", "unittest", "-v", "test_faultproxy"])
        .current_dir(repo_root().join("scripts/lib"))
        .output()
        .expect("python3 runs");
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the fault proxy's tests failed:\n{log}"
    );
    assert!(log.contains("Ran 5 tests"), "{log}");
}
