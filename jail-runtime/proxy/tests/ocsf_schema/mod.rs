//! Checks OCSF audit lines against the OCSF 1.3.0 schema with `ocsf_validate.py`: OCSF's own
//! schema export as shipped by the `PyPI` package `ocsf-json-schema`, validated by `jsonschema`,
//! both in the venv tests/scripts/ocsf-tools.sh installs (tests/scripts/setup.sh runs it).

use std::io::Write as _;
use std::process::{Command, Stdio};

use serde_json::Value;

/// The venv's python (readable by every user: these tests also run as uid 65534).
pub const PYTHON: &str = "/opt/agent-boundary-tools/ocsf-json-schema-1.2.0/bin/python";
const VALIDATOR: &str = include_str!("../ocsf_validate.py");

/// Validates `lines` (one OCSF event each): `Ok` when all are valid, else the validator's
/// verdicts of the invalid ones.
pub fn check(lines: &[Value]) -> Result<(), Vec<Value>> {
    assert!(
        std::path::Path::new(PYTHON).exists(),
        "{PYTHON} is missing: run tests/scripts/ocsf-tools.sh (tests/scripts/setup.sh does)"
    );
    let mut child = Command::new(PYTHON)
        .args(["-c", VALIDATOR])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("starting the OCSF validator");
    let mut input = String::new();
    for line in lines {
        input.push_str(&line.to_string());
        input.push('\n');
    }
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let verdicts: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(verdicts.len(), lines.len(), "one verdict per event");
    let bad: Vec<Value> = verdicts
        .into_iter()
        .filter(|v| v["errors"].as_array().is_some_and(|e| !e.is_empty()))
        .collect();
    assert_eq!(
        out.status.success(),
        bad.is_empty(),
        "exit status and verdicts agree"
    );
    if bad.is_empty() { Ok(()) } else { Err(bad) }
}

/// Asserts every line is a valid OCSF event, and that the validator refuses broken copies of
/// the first one (so a pass means something).
pub fn assert_valid(lines: &[Value]) {
    if let Err(bad) = check(lines) {
        panic!("invalid OCSF events: {bad:#?}\nevents: {lines:#?}");
    }
    let mut unknown_attribute = lines[0].clone();
    unknown_attribute["host"] = "not an OCSF attribute".into();
    let mut no_class = lines[0].clone();
    no_class.as_object_mut().unwrap().remove("category_uid");
    let mut bad_activity = lines[0].clone();
    bad_activity["activity_id"] = 42.into();
    for broken in [unknown_attribute, no_class, bad_activity] {
        assert!(
            check(std::slice::from_ref(&broken)).is_err(),
            "accepted: {broken}"
        );
    }
}
