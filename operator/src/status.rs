//! A policy's status from its compile report (pure). `lastTransitionTime` of a condition changes
//! only when the condition's status does.

use boundary_api::crd::{BoundaryPolicyStatus, LintWarning, condition_types};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::compile::{Outcome, PolicyReport};
use crate::enforcement::{MAX_NOT_ENFORCING, Summary, policy_condition};

/// Where the namespace's compiled policy was published.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Publication {
    /// The ConfigMap's name.
    pub config_map: String,
    /// SHA-256 (hex) of the published file.
    pub hash: String,
}

/// Condition reasons the operator writes.
pub mod reasons {
    /// `RulesValid=True`.
    pub const VALID: &str = "Valid";
    /// `RulesValid=False`, `Ready=False`: some rules do not compile.
    pub const INVALID_RULES: &str = "InvalidRules";
    /// `RulesValid=False`, `Ready=False`: the pod selector is malformed.
    pub const INVALID_SELECTOR: &str = "InvalidSelector";
    /// `Ready=True`.
    pub const PUBLISHED: &str = "Published";
    /// `Ready=False` on a cluster policy: not yet in the compiled policy of every namespace it
    /// selects.
    pub const PUBLISHING: &str = "Publishing";
    /// `RulesValid=False`: the rules compile, some credentials do not (they are withheld).
    pub const INVALID_CREDENTIALS: &str = "InvalidCredentials";
    /// `CredentialsReady=True`.
    pub const VALUES_PRESENT: &str = "ValuesPresent";
    /// `CredentialsReady=False`: a referenced Secret or key is missing or unusable.
    pub const VALUE_MISSING: &str = "ValueMissing";
    /// `LintClean=True`.
    pub const NO_WARNINGS: &str = "NoWarnings";
    /// `LintClean=False`: an allow rule opens a channel out (see `lintWarnings`).
    pub const EXFILTRATION_RISK: &str = "ExfiltrationRisk";
}

/// A condition's `(status, reason, message)`.
pub type ConditionState = (&'static str, &'static str, String);

/// `lintWarnings` in a status, at most.
pub const MAX_LINT_WARNINGS: usize = 20;

/// The `LintClean` condition and the `lintWarnings` of a policy whose compile report is
/// `report`: `None` when its rules are not published (their problems are what matters then).
pub fn lint_state(report: &PolicyReport) -> Option<(ConditionState, Vec<LintWarning>)> {
    if report.outcome != Outcome::Published {
        return None;
    }
    let unknown = if report.lint_unknown.is_empty() {
        String::new()
    } else {
        format!(
            " ({} names no lint code: {}; the codes are {})",
            boundary_api::contract::annotations::LINT_IGNORE,
            report.lint_unknown.join(", "),
            boundary_api::lint::Code::ALL
                .map(boundary_api::lint::Code::as_str)
                .join(", ")
        )
    };
    let warnings = &report.lint;
    let condition = if warnings.is_empty() {
        (
            "True",
            reasons::NO_WARNINGS,
            format!("no allow rule opens a known channel out of the jail{unknown}"),
        )
    } else {
        let mut shown: Vec<String> = warnings
            .iter()
            .take(3)
            .map(|w| format!("{}: {} {}: {}", w.field, w.code, w.pattern, w.message))
            .collect();
        if warnings.len() > shown.len() {
            shown.push(format!(
                "and {} more in status.lintWarnings",
                warnings.len() - shown.len()
            ));
        }
        (
            "False",
            reasons::EXFILTRATION_RISK,
            format!(
                "{} allow rule(s) open a channel out of the jail (a warning: the rules are in \
                 force; silence a code with the annotation {}): {}{unknown}",
                warnings.len(),
                boundary_api::contract::annotations::LINT_IGNORE,
                shown.join("; ")
            ),
        )
    };
    let mut listed = warnings.clone();
    listed.truncate(MAX_LINT_WARNINGS);
    Some((condition, listed))
}

/// The condition of a policy with credentials: every published credential's value is in the
/// namespace's credentials Secret (or comes from the sidecar's AWS identity). Not in
/// `boundary_api::crd::condition_types`, which lists the conditions every policy has.
pub const CREDENTIALS_READY: &str = "CredentialsReady";

/// The status the operator wants for the policy of `report`, from the compile report alone. The
/// fields computed from pods (`matchedPods`, `tiers`, `enforcedPods`, `notEnforcing`, the
/// `Enforced` condition) are copied from `previous`; the controller sets them.
pub fn desired_status(
    report: &PolicyReport,
    previous: Option<&BoundaryPolicyStatus>,
    publication: &Publication,
    now: &Time,
) -> BoundaryPolicyStatus {
    let (rules_valid, ready) = rule_conditions(report, publication);
    let condition = |type_: &str, (status, reason, message): (&str, &str, String)| {
        condition(
            previous.map(|s| s.conditions.as_slice()),
            type_,
            (status, reason, message),
            report.generation,
            now,
        )
    };
    let published = report.outcome != Outcome::Excluded;
    let (lint_condition, lint_warnings) = match lint_state(report) {
        Some((state, warnings)) => (
            Some(condition(condition_types::LINT_CLEAN, state)),
            warnings,
        ),
        None => (None, Vec::new()),
    };
    BoundaryPolicyStatus {
        observed_generation: report.generation,
        conditions: [
            condition(condition_types::RULES_VALID, rules_valid),
            condition(condition_types::READY, ready),
        ]
        .into_iter()
        .chain(lint_condition)
        .chain(
            previous
                .iter()
                .flat_map(|s| &s.conditions)
                .filter(|c| c.type_ == condition_types::ENFORCED)
                .cloned(),
        )
        .collect(),
        rule_count: Some(i32::try_from(report.rule_count).unwrap_or(i32::MAX)),
        rule_problems: report.problems.clone(),
        config_map: published.then(|| publication.config_map.clone()),
        policy_hash: published.then(|| publication.hash.clone()),
        matched_pods: previous.and_then(|s| s.matched_pods),
        tiers: previous.map(|s| s.tiers.clone()).unwrap_or_default(),
        enforced_pods: previous.and_then(|s| s.enforced_pods),
        not_enforcing: previous
            .map(|s| s.not_enforcing.clone())
            .unwrap_or_default(),
        denied_destinations: previous
            .map(|s| s.denied_destinations.clone())
            .unwrap_or_default(),
        lint_warnings,
    }
}

/// `(RulesValid, Ready)` as `(status, reason, message)` from the compile report.
fn rule_conditions(
    report: &PolicyReport,
    publication: &Publication,
) -> (
    (&'static str, &'static str, String),
    (&'static str, &'static str, String),
) {
    let problems = report
        .problems
        .iter()
        .map(|p| match p.column {
            Some(c) => format!("{} column {c}: {}", p.field, p.message),
            None => format!("{}: {}", p.field, p.message),
        })
        .collect::<Vec<_>>()
        .join("; ");
    let count = report.problems.len();
    let short_hash: String = publication.hash.chars().take(12).collect();
    match report.outcome {
        Outcome::Published if count > 0 => (
            (
                "False",
                reasons::INVALID_CREDENTIALS,
                format!(
                    "all {} rules compile; {count} problem(s) in the credentials (withheld: {}, \
                     never put into requests): {problems}",
                    report.rule_count,
                    report.withheld_credentials.join(", ")
                ),
            ),
            (
                "True",
                reasons::PUBLISHED,
                format!(
                    "compiled into ConfigMap {} (sha256 {short_hash}) without the invalid \
                     credentials",
                    publication.config_map
                ),
            ),
        ),
        Outcome::Published => (
            (
                "True",
                reasons::VALID,
                format!("all {} rules compile", report.rule_count),
            ),
            (
                "True",
                reasons::PUBLISHED,
                format!(
                    "compiled into ConfigMap {} (sha256 {short_hash})",
                    publication.config_map
                ),
            ),
        ),
        Outcome::RulesWithheld => (
            (
                "False",
                reasons::INVALID_RULES,
                format!("{count} problem(s) in the rules: {problems}"),
            ),
            (
                "False",
                reasons::INVALID_RULES,
                "published without its allow rules until they are fixed (its deny rules that \
                 compile stay): the pods it selects are allowed nothing by this policy"
                    .to_owned(),
            ),
        ),
        Outcome::Excluded => (
            (
                "False",
                reasons::INVALID_SELECTOR,
                format!("{count} problem(s): {problems}"),
            ),
            (
                "False",
                reasons::INVALID_SELECTOR,
                "not published: the pod selector cannot be evaluated".to_owned(),
            ),
        ),
    }
}

/// The condition `type_` with `(status, reason, message)`; its `lastTransitionTime` is the one in
/// `previous` (the conditions of the current status) while the status stays the same, else
/// `now`.
pub fn condition(
    previous: Option<&[Condition]>,
    type_: &str,
    (status, reason, message): (&str, &str, String),
    generation: Option<i64>,
    now: &Time,
) -> Condition {
    let last_transition_time = previous
        .unwrap_or_default()
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map_or_else(|| now.clone(), |c| c.last_transition_time.clone());
    Condition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason: reason.to_owned(),
        message,
        observed_generation: generation,
        last_transition_time,
    }
}

/// Sets the enforcement part of `status` (`enforcedPods`, `notEnforcing`, the `Enforced`
/// condition) from the verdicts on the policy's pods.
pub fn with_enforcement(
    status: &mut BoundaryPolicyStatus,
    previous: Option<&BoundaryPolicyStatus>,
    summary: Summary,
    checks_enabled: bool,
    generation: Option<i64>,
    now: &Time,
) {
    let (state, reason, message) = policy_condition(&summary, checks_enabled);
    status
        .conditions
        .retain(|c| c.type_ != condition_types::ENFORCED);
    status.conditions.push(condition(
        previous.map(|s| s.conditions.as_slice()),
        condition_types::ENFORCED,
        (state, &reason, message),
        generation,
        now,
    ));
    status.enforced_pods = Some(summary.enforced);
    status.not_enforcing = summary.not_enforcing;
    status.not_enforcing.truncate(MAX_NOT_ENFORCING);
}

/// Sets the `CredentialsReady` condition of a policy with credentials from what became of their
/// values (`missing`: one message per published credential whose value could not be copied, never
/// a value); a policy without credentials has none.
pub fn with_credentials(
    status: &mut BoundaryPolicyStatus,
    previous: Option<&BoundaryPolicyStatus>,
    report: &PolicyReport,
    missing: &[String],
    now: &Time,
) {
    status.conditions.retain(|c| c.type_ != CREDENTIALS_READY);
    if report.credential_count == 0 || report.outcome == Outcome::Excluded {
        return;
    }
    let published = report.credential_count - report.withheld_credentials.len();
    let state = if missing.is_empty() {
        (
            "True",
            reasons::VALUES_PRESENT,
            format!(
                "{published} of {} credential(s) published, each with its value in Secret {} \
                 (or the sidecar's AWS identity)",
                report.credential_count,
                boundary_api::contract::objects::CREDENTIALS_SECRET
            ),
        )
    } else {
        (
            "False",
            reasons::VALUE_MISSING,
            format!(
                "{} credential(s) without a value (requests to their destinations are refused \
                 until it is there): {}",
                missing.len(),
                missing.join("; ")
            ),
        )
    };
    status.conditions.push(condition(
        previous.map(|s| s.conditions.as_slice()),
        CREDENTIALS_READY,
        state,
        report.generation,
        now,
    ));
}

/// Whether `current` already says what `desired` says (conditions compared as a set).
pub fn up_to_date(current: Option<&BoundaryPolicyStatus>, desired: &BoundaryPolicyStatus) -> bool {
    let Some(current) = current else {
        return false;
    };
    let mut a = current.clone();
    let mut b = desired.clone();
    a.conditions.sort_by(|x, y| x.type_.cmp(&y.type_));
    b.conditions.sort_by(|x, y| x.type_.cmp(&y.type_));
    a == b
}

#[cfg(test)]
mod tests {
    use super::*;
    use boundary_api::crd::RuleProblem;
    use k8s_openapi::jiff::Timestamp;

    fn time(secs: i64) -> Time {
        Time(Timestamp::from_second(secs).unwrap())
    }

    fn report(outcome: Outcome, generation: i64) -> PolicyReport {
        let problems = if outcome == Outcome::Published {
            vec![]
        } else {
            vec![RuleProblem {
                field: "spec.allow[1]".into(),
                column: Some(8),
                message: "bad wildcard".into(),
            }]
        };
        PolicyReport {
            name: "p".into(),
            generation: Some(generation),
            rule_count: 2,
            problems,
            outcome,
            credential_count: 0,
            withheld_credentials: Vec::new(),
            lint: Vec::new(),
            lint_unknown: Vec::new(),
        }
    }

    #[test]
    fn lint_warnings_make_lint_clean_false_with_the_first_ones_and_the_count() {
        let clean = report(Outcome::Published, 1);
        let (state, warnings) = lint_state(&clean).unwrap();
        assert_eq!((state.0, state.1), ("True", reasons::NO_WARNINGS));
        assert!(warnings.is_empty());
        let mut risky = report(Outcome::Published, 1);
        risky.lint = (0..25)
            .map(|i| LintWarning {
                field: format!("spec.allow[{i}]"),
                code: "publish-anywhere".into(),
                pattern: format!("h{i}.pastebin.com"),
                message: "anyone can publish there".into(),
            })
            .collect();
        risky.lint_unknown = vec!["publish-everywhere".into()];
        let (state, warnings) = lint_state(&risky).unwrap();
        assert_eq!((state.0, state.1), ("False", reasons::EXFILTRATION_RISK));
        assert!(state.2.starts_with("25 allow rule(s)"), "{}", state.2);
        assert!(
            state
                .2
                .contains("spec.allow[0]: publish-anywhere h0.pastebin.com"),
            "{}",
            state.2
        );
        assert!(
            state.2.contains("and 22 more in status.lintWarnings"),
            "{}",
            state.2
        );
        assert!(
            state.2.contains("names no lint code: publish-everywhere"),
            "{}",
            state.2
        );
        assert_eq!(warnings.len(), MAX_LINT_WARNINGS);
        // Rules that are withheld are not linted: their problems are what matters.
        assert!(lint_state(&report(Outcome::RulesWithheld, 1)).is_none());
        let status = desired_status(&risky, None, &publication("h"), &time(1));
        let lint = status
            .conditions
            .iter()
            .find(|c| c.type_ == condition_types::LINT_CLEAN)
            .unwrap();
        assert_eq!(lint.status, "False");
        assert_eq!(status.lint_warnings.len(), MAX_LINT_WARNINGS);
    }

    fn publication(hash: &str) -> Publication {
        Publication {
            config_map: "agent-boundary-policy".into(),
            hash: hash.into(),
        }
    }

    fn condition<'a>(s: &'a BoundaryPolicyStatus, type_: &str) -> &'a Condition {
        s.conditions.iter().find(|c| c.type_ == type_).unwrap()
    }

    #[test]
    fn transition_times_change_only_with_the_condition_status() {
        let first = desired_status(
            &report(Outcome::Published, 1),
            None,
            &publication("aa"),
            &time(100),
        );
        assert_eq!(condition(&first, condition_types::READY).status, "True");
        assert_eq!(first.policy_hash.as_deref(), Some("aa"));
        assert_eq!(first.rule_count, Some(2));

        // New content, same condition status: the time stays, the message and hash change.
        let second = desired_status(
            &report(Outcome::Published, 2),
            Some(&first),
            &publication("bb"),
            &time(200),
        );
        let ready = condition(&second, condition_types::READY);
        assert_eq!(ready.last_transition_time, time(100));
        assert!(ready.message.contains("sha256 bb"), "{}", ready.message);
        assert_eq!(ready.observed_generation, Some(2));
        assert!(!up_to_date(Some(&first), &second));
        assert!(up_to_date(Some(&second), &second));

        // Broken rules: both conditions flip, with the problem in the message.
        let third = desired_status(
            &report(Outcome::RulesWithheld, 3),
            Some(&second),
            &publication("cc"),
            &time(300),
        );
        let valid = condition(&third, condition_types::RULES_VALID);
        assert_eq!(
            (valid.status.as_str(), valid.reason.as_str()),
            ("False", reasons::INVALID_RULES)
        );
        assert!(
            valid
                .message
                .contains("spec.allow[1] column 8: bad wildcard")
        );
        assert_eq!(valid.last_transition_time, time(300));
        assert_eq!(condition(&third, condition_types::READY).status, "False");
        assert_eq!(third.rule_problems.len(), 1);
        assert_eq!(third.config_map.as_deref(), Some("agent-boundary-policy"));

        let excluded = desired_status(
            &report(Outcome::Excluded, 3),
            Some(&third),
            &publication("cc"),
            &time(400),
        );
        assert_eq!(excluded.policy_hash, None);
        assert_eq!(
            condition(&excluded, condition_types::RULES_VALID).last_transition_time,
            time(300)
        );
    }

    #[test]
    fn credentials_have_their_own_condition_and_invalid_ones_make_rules_invalid() {
        let mut with_creds = report(Outcome::Published, 1);
        with_creds.credential_count = 2;
        let mut base = desired_status(&with_creds, None, &publication("aa"), &time(1));
        assert_eq!(
            condition(&base, condition_types::RULES_VALID).status,
            "True"
        );
        with_credentials(&mut base, None, &with_creds, &[], &time(1));
        let ready = condition(&base, CREDENTIALS_READY).clone();
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("True", reasons::VALUES_PRESENT)
        );
        assert!(
            ready.message.starts_with("2 of 2 credential(s)"),
            "{}",
            ready.message
        );

        // A value goes missing: False, naming the Secret and key; the time moves.
        let missing = ["credential a: Secret agents/llm has no key api-key".to_owned()];
        let mut second = desired_status(&with_creds, Some(&base), &publication("aa"), &time(2));
        assert!(
            second
                .conditions
                .iter()
                .all(|c| c.type_ != CREDENTIALS_READY)
        );
        with_credentials(&mut second, Some(&base), &with_creds, &missing, &time(2));
        let not_ready = condition(&second, CREDENTIALS_READY);
        assert_eq!(
            (not_ready.status.as_str(), not_ready.reason.as_str()),
            ("False", reasons::VALUE_MISSING)
        );
        assert!(
            not_ready
                .message
                .contains("Secret agents/llm has no key api-key")
        );
        assert_eq!(not_ready.last_transition_time, time(2));
        assert!(!up_to_date(Some(&base), &second));

        // An invalid credential: the rules are published, RulesValid is False, Ready stays True.
        let mut invalid = with_creds.clone();
        invalid.problems = vec![RuleProblem {
            field: "spec.credentials[1].env".into(),
            column: None,
            message: "bad".into(),
        }];
        invalid.withheld_credentials = vec!["b".into()];
        let mut third = desired_status(&invalid, Some(&second), &publication("aa"), &time(3));
        let valid = condition(&third, condition_types::RULES_VALID);
        assert_eq!(
            (valid.status.as_str(), valid.reason.as_str()),
            ("False", reasons::INVALID_CREDENTIALS)
        );
        assert!(valid.message.contains("withheld: b"), "{}", valid.message);
        assert!(
            valid.message.contains("spec.credentials[1].env: bad"),
            "{}",
            valid.message
        );
        assert_eq!(condition(&third, condition_types::READY).status, "True");
        assert_eq!(third.rule_problems.len(), 1);
        with_credentials(&mut third, Some(&second), &invalid, &[], &time(3));
        assert!(
            condition(&third, CREDENTIALS_READY)
                .message
                .starts_with("1 of 2")
        );

        // No credentials (any more): no condition.
        let mut none = desired_status(
            &report(Outcome::Published, 4),
            Some(&third),
            &publication("aa"),
            &time(4),
        );
        with_credentials(
            &mut none,
            Some(&third),
            &report(Outcome::Published, 4),
            &[],
            &time(4),
        );
        assert!(none.conditions.iter().all(|c| c.type_ != CREDENTIALS_READY));
    }

    #[test]
    fn fields_computed_elsewhere_are_kept() {
        let previous = BoundaryPolicyStatus {
            matched_pods: Some(4),
            tiers: [("userns".to_owned(), 4)].into(),
            ..BoundaryPolicyStatus::default()
        };
        let s = desired_status(
            &report(Outcome::Published, 1),
            Some(&previous),
            &publication("aa"),
            &time(1),
        );
        assert_eq!(s.matched_pods, Some(4));
        assert_eq!(s.tiers["userns"], 4);
        assert!(!up_to_date(None, &s));
    }

    #[test]
    fn the_enforcement_part_keeps_its_transition_time_and_bounds_the_list() {
        use crate::enforcement::{Summary, reasons};
        use boundary_api::crd::NotEnforcingPod;
        let failing = |n: usize| Summary {
            enforced: 1,
            not_enforcing: (0..n)
                .map(|i| NotEnforcingPod {
                    pod: format!("p{i:02}"),
                    container: Some("agent".into()),
                    reason: reasons::NO_JAIL_CONNECTED.into(),
                    message: "no jail".into(),
                })
                .collect(),
            ..Summary::default()
        };
        let base = desired_status(
            &report(Outcome::Published, 1),
            None,
            &publication("aa"),
            &time(1),
        );
        let mut first = base.clone();
        with_enforcement(&mut first, None, failing(25), true, Some(1), &time(10));
        let enforced = condition(&first, condition_types::ENFORCED).clone();
        assert_eq!(
            (enforced.status.as_str(), enforced.reason.as_str()),
            ("False", reasons::NO_JAIL_CONNECTED)
        );
        assert_eq!(first.not_enforcing.len(), MAX_NOT_ENFORCING);
        assert_eq!(first.enforced_pods, Some(1));
        assert_eq!(
            first.conditions.len(),
            4,
            "RulesValid, Ready, LintClean, Enforced"
        );

        // Still failing (fewer pods): the time stays. The next compile keeps the condition.
        let mut second = desired_status(
            &report(Outcome::Published, 1),
            Some(&first),
            &publication("aa"),
            &time(20),
        );
        assert_eq!(condition(&second, condition_types::ENFORCED), &enforced);
        with_enforcement(
            &mut second,
            Some(&first),
            failing(2),
            true,
            Some(1),
            &time(20),
        );
        assert_eq!(second.conditions.len(), 4);
        let still = condition(&second, condition_types::ENFORCED);
        assert_eq!(still.last_transition_time, time(10));
        assert!(still.message.starts_with("2 of 3"), "{}", still.message);
        assert!(!up_to_date(Some(&first), &second));

        // All enforce: True, list empty, new time.
        let mut third = second.clone();
        with_enforcement(
            &mut third,
            Some(&second),
            failing(0),
            true,
            Some(1),
            &time(30),
        );
        let fine = condition(&third, condition_types::ENFORCED);
        assert_eq!(fine.status, "True");
        assert_eq!(fine.last_transition_time, time(30));
        assert!(third.not_enforcing.is_empty());
        let serialized = serde_json::to_value(&third).unwrap();
        assert!(serialized.get("notEnforcing").is_none());
        assert_eq!(serialized["enforcedPods"], 1);
    }
}
