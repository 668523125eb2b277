//! `relogin-farm client add | list | revoke` against the running farm: the
//! key printed once works on `/credential/next`, and stops working when
//! revoked.

use crate::support::{Bed, Settings, PROVIDER};

fn stdout_of(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_key_made_with_the_cli_serves_until_the_cli_revokes_it() {
    let bed = Bed::start(Settings::default());
    let alice = bed.logged_in(&["alice"])[0];
    let farm = ["--farm", bed.url()];

    let out = bed.run_cli(
        &[&["client", "add", "nightly-agent"][..], &farm].concat(),
        "",
    );
    let key = stdout_of(&out).trim().to_string();
    assert!(
        key.starts_with("rfk_") && !key.contains(char::is_whitespace),
        "stdout is the key alone: {key:?}"
    );
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("(nightly-agent) created"), "{said}");
    let lease = bed.api(Some(&key)).lease(PROVIDER, None);
    assert_eq!(lease["account_id"], alice);

    let listed = stdout_of(&bed.run_cli(&[&["client", "list"][..], &farm].concat(), ""));
    let line = listed
        .lines()
        .find(|l| l.contains("nightly-agent"))
        .unwrap_or_else(|| panic!("{listed}"));
    assert!(
        line.trim_end().ends_with("active") && !listed.contains(&key),
        "{listed}"
    );
    let id = line.split_whitespace().next().unwrap().to_string();

    let revoked = stdout_of(&bed.run_cli(&[&["client", "revoke", &id][..], &farm].concat(), ""));
    assert_eq!(revoked.trim(), format!("client {id} revoked"));
    bed.api(Some(&key))
        .next(PROVIDER, None)
        .expect_error(401, "unauthorized");
    let listed = stdout_of(&bed.run_cli(&[&["client", "list"][..], &farm].concat(), ""));
    assert!(listed.contains("revoked 20"), "{listed}");

    // An unknown id is the farm's 404, said plainly, exit status non-zero.
    let out = bed.run_cli(&[&["client", "revoke", "999"][..], &farm].concat(), "");
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("404 not_found"), "{said}");
}

#[test]
fn log_level_applies_to_the_commands_that_call_the_farm() {
    let bed = Bed::start(Settings::default());
    let farm = ["--farm", bed.url()];
    let debug = ["--log-level", "debug"];
    let calling = "calling the farm";

    // log.level is info in the bed's farm.toml: no debug lines.
    let quiet = bed.run_cli(&[&["client", "list"][..], &farm].concat(), "");
    stdout_of(&quiet);
    let said = String::from_utf8_lossy(&quiet.stderr);
    assert!(!said.contains(calling), "{said}");

    // After the subcommand's name, too; the admin token never shows.
    let loud = bed.run_cli(&[&["client", "list"][..], &farm, &debug].concat(), "");
    stdout_of(&loud);
    let said = String::from_utf8_lossy(&loud.stderr);
    assert!(
        said.contains(calling) && said.contains("/api/clients"),
        "{said}"
    );
    assert!(!said.contains(&bed.admin_token), "{said}");

    // `token` reads no config: the flag alone sets the level.
    let out = bed.run_cli(
        &[
            &debug[..],
            &["token", PROVIDER, "--key", "not-a-key"],
            &farm,
        ]
        .concat(),
        "",
    );
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains(calling) && said.contains("401 unauthorized") && !said.contains("not-a-key"),
        "{said}"
    );
}
