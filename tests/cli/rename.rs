//! `token rename ID NEW_LABEL`: a token gets another label and keeps its id, secret and default;
//! a label another token of the service holds, or one that is not a label, is refused with one
//! line and its own exit code, and changes nothing.

use crate::support::TestHome;

fn rename(home: TestHome) {
    home.init();
    let id = home.add("anthropic", "work", "sk-ant-api03-RENAMED", &["--default"]);
    home.add("anthropic", "other", "sk-ant-api03-OTHER", &[]);
    home.add("openai", "personal", "sk-proj-OPENAI", &[]);

    let out = home.ok(&["token", "rename", "anthropic/work", "personal"]);
    assert_eq!(
        out,
        format!(
            "Renamed anthropic/work to anthropic/personal ({}).\n",
            &id[..8]
        )
    );
    assert_eq!(home.reveal("anthropic/personal"), "sk-ant-api03-RENAMED");
    let list = home.list_json();
    let renamed = list.iter().find(|t| t["id"] == id.as_str()).unwrap();
    assert_eq!(renamed["label"], "personal");
    assert_eq!(renamed["default"], true, "the default moved: {list:?}");
    assert!(list.iter().all(|t| t["label"] != "work"));
    home.run(&["token", "show", "anthropic/work"]).fails_with(5);

    // By id prefix, with --json.
    let out = home.ok(&["--json", "token", "rename", &id[..8], "job"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["id"], id.as_str());
    assert_eq!(v["label"], "job");

    let before = home.files();
    let line = home
        .run(&["token", "rename", "anthropic/job", "other"])
        .fails_with(6)
        .to_string();
    assert!(line.contains("anthropic/other already exists"), "{line}");
    for bad in ["", "a/b", "new\nline", &"x".repeat(65)] {
        home.run(&["token", "rename", "anthropic/job", bad])
            .fails_with(2);
    }
    home.run(&["token", "rename", "nothing-like-this", "fine"])
        .fails_with(5);
    assert_eq!(home.files(), before, "a refused rename changed the home");
    // The same label in another service is no conflict.
    home.ok(&["token", "rename", "openai/personal", "other"]);
}

crate::both_modes!(rename);
