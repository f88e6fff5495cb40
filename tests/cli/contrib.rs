//! The service units a person installs: the user unit `daemon install` writes, and the relay's
//! in `contrib/`, checked by `systemd-analyze verify` where that tool exists (CI requires it
//! there: `HANDOFF_REQUIRE_SYSTEMD_ANALYZE=1`).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::TestHome;

/// `systemd-analyze`, or `None` after saying loudly that the check is skipped.
fn analyzer() -> Option<PathBuf> {
    let found = crate::support::tool("systemd-analyze");
    if found.is_none() {
        assert!(
            std::env::var_os("HANDOFF_REQUIRE_SYSTEMD_ANALYZE").is_none(),
            "systemd-analyze is required here but missing"
        );
        eprintln!("SKIPPED: systemd-analyze is not installed; the units are not verified");
    }
    found
}

/// `systemd-analyze [--user] verify UNIT`: its exit status and what it said.
fn verify(tool: &Path, user: bool, unit: &Path, scratch: &Path) -> (bool, String) {
    // A user manager needs a runtime directory; the test's own, private.
    let runtime = scratch.join("runtime");
    std::fs::create_dir_all(&runtime).unwrap();
    std::fs::set_permissions(&runtime, std::fs::Permissions::from_mode(0o700)).unwrap();
    let mut cmd = Command::new(tool);
    if user {
        cmd.arg("--user");
    }
    let out = cmd
        .arg("verify")
        .arg(unit)
        .env("XDG_RUNTIME_DIR", &runtime)
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success() && said.trim().is_empty(), said)
}

#[test]
fn the_user_unit_daemon_install_writes_verifies() {
    let Some(tool) = analyzer() else { return };
    let home = TestHome::new();
    home.init();
    let unit = home.ok(&["daemon", "install", "--print"]);
    assert!(unit.contains("ExecStart="), "{unit}");
    let path = home.scratch("handoff.service");
    std::fs::write(&path, unit).unwrap();
    let (ok, said) = verify(&tool, true, &path, &home.scratch("verify"));
    assert!(ok, "systemd-analyze --user verify: {said}");
}

#[test]
fn the_relays_unit_in_contrib_verifies_and_its_settings_are_all_given() {
    let contrib = Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib");
    let unit = std::fs::read_to_string(contrib.join("handoff-relay.service")).unwrap();
    let env = std::fs::read_to_string(contrib.join("handoff-relay.env")).unwrap();
    // Every ${RELAY_...} the command line uses is set in the example settings.
    let given: Vec<&str> = env
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split_once('=').map(|(k, _)| k))
        .collect();
    let exec = unit.lines().find(|l| l.starts_with("ExecStart=")).unwrap();
    for used in exec.split("${").skip(1).filter_map(|s| s.split_once('}')) {
        let name = used.0;
        assert!(
            given.contains(&name) || ["STATE_DIRECTORY", "CREDENTIALS_DIRECTORY"].contains(&name),
            "{name} is used by the unit but not in handoff-relay.env"
        );
    }
    for hardening in [
        "DynamicUser=yes",
        "ProtectSystem=strict",
        "StateDirectory=",
        "NoNewPrivileges=yes",
    ] {
        assert!(unit.contains(hardening), "the relay unit lacks {hardening}");
    }
    let Some(tool) = analyzer() else { return };
    // Verified with the program where this build put it (the unit names /usr/local/bin).
    let scratch = tempfile::tempdir().unwrap();
    let relay = Path::new(crate::support::binary()).with_file_name("handoff-relay");
    let here = scratch.path().join("handoff-relay.service");
    std::fs::write(
        &here,
        unit.replace("/usr/local/bin/handoff-relay", relay.to_str().unwrap()),
    )
    .unwrap();
    let (ok, said) = verify(&tool, false, &here, scratch.path());
    assert!(ok, "systemd-analyze verify: {said}");
}

#[test]
fn the_readme_installs_both_programs_from_paths_that_hold_them() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    for (line, manifest, bin) in [
        ("cargo install --path . --locked", "Cargo.toml", "handoff"),
        (
            "cargo install --path relay --locked",
            "relay/Cargo.toml",
            "handoff-relay",
        ),
    ] {
        assert!(readme.contains(line), "README lacks `{line}`");
        let manifest = std::fs::read_to_string(root.join(manifest)).unwrap();
        let package = manifest.contains(&format!("name = \"{bin}\""));
        assert!(package, "{bin} is not built from where README installs it");
    }
    // No placeholder where a package's repository would be.
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    assert!(!manifest.contains("example.invalid"));
}
