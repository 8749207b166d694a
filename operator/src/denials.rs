//! Each policy's `status.deniedDestinations`: what its pods' sidecars report denying, summed per
//! policy across pods and time.
//!
//! A sidecar's counts start at zero when it starts (a new `session`) and only grow, and it is
//! asked every round, so the ledger keeps what it last took from each pod and adds only the
//! difference: a count is never taken twice however often a namespace is reconciled. A policy's
//! totals start from its status as stored (they survive an operator restart); a pod first seen
//! by this operator process adds only destinations denied after the stored `lastSeen` of the same
//! destination, so a restart does not count a running pod's old denials twice (a pod with new
//! denials of a known destination since is counted in full: an overcount the status's doc
//! admits).
//!
//! Pure: the policy controller feeds it the observations and the stored status.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use boundary_api::enforcement::{DeniedDestination, DeniedKey, SidecarStatus};

use crate::enforcement::PodKey;

/// Destinations kept per policy (the status shows the most frequent [`MAX_STATUS_DENIED`]).
pub const MAX_KEPT_DENIED: usize = 500;
/// Destinations in a policy's `status.deniedDestinations`.
pub const MAX_STATUS_DENIED: usize = 50;

#[derive(Clone, Debug)]
struct Tally {
    count: i64,
    first_seen: String,
    last_seen: String,
}

/// What was last taken from one pod's sidecar.
#[derive(Debug, Default)]
struct Taken {
    session: String,
    /// Per container and destination, the count taken.
    counts: HashMap<(String, DeniedKey), i64>,
}

#[derive(Debug, Default)]
struct PolicyTotals {
    seeded: bool,
    by_destination: BTreeMap<DeniedKey, Tally>,
    /// The stored `lastSeen` of each destination when the totals were seeded.
    stored_last_seen: HashMap<DeniedKey, String>,
}

/// The ledger of every policy the operator writes the status of.
#[derive(Debug, Default)]
pub struct DenialLedger {
    taken: HashMap<PodKey, Taken>,
    /// Per `(namespace, policy)`.
    totals: HashMap<(String, String), PolicyTotals>,
}

impl DenialLedger {
    /// Starts `policy`'s totals from its stored status (once per operator process).
    pub fn seed(&mut self, namespace: &str, policy: &str, stored: &[DeniedDestination]) {
        let totals = self
            .totals
            .entry((namespace.to_owned(), policy.to_owned()))
            .or_default();
        if totals.seeded {
            return;
        }
        totals.seeded = true;
        for entry in stored {
            add(&mut totals.by_destination, entry.key(), entry.count, entry);
            totals
                .stored_last_seen
                .insert(entry.key(), entry.last_seen.clone());
        }
    }

    /// Adds what `pod`'s sidecar reports beyond what was taken from it before to each of
    /// `policies` (the policies the pod was jailed under).
    pub fn absorb(
        &mut self,
        namespace: &str,
        pod: &PodKey,
        policies: &[&str],
        status: &SidecarStatus,
    ) {
        let first_sight = !self.taken.contains_key(pod);
        let taken = self.taken.entry(pod.clone()).or_default();
        if taken.session != status.session {
            // A restarted sidecar counts from zero again.
            taken.session.clone_from(&status.session);
            taken.counts.clear();
        }
        for entry in &status.denied {
            let key = entry.key();
            let before = taken
                .counts
                .insert((entry.container.clone(), key.clone()), entry.count)
                .unwrap_or(0);
            let delta = entry.count - before;
            if delta <= 0 {
                continue;
            }
            for policy in policies {
                let totals = self
                    .totals
                    .entry((namespace.to_owned(), (*policy).to_owned()))
                    .or_default();
                let already = first_sight
                    && totals
                        .stored_last_seen
                        .get(&key)
                        .is_some_and(|stored| !earlier(stored, &entry.last_seen));
                if !already {
                    add(&mut totals.by_destination, key.clone(), delta, entry);
                }
            }
        }
    }

    /// Forgets the pods of `namespace` not in `current` and the policies of `namespace` not
    /// in `policies`.
    pub fn retain(&mut self, namespace: &str, current: &BTreeSet<PodKey>, policies: &[String]) {
        self.taken
            .retain(|pod, _| pod.namespace != namespace || current.contains(pod));
        self.totals
            .retain(|(ns, policy), _| ns != namespace || policies.contains(policy));
    }

    /// `policy`'s `status.deniedDestinations`: the most frequent destinations, most frequent
    /// first (then by destination, so the list is stable).
    pub fn status(&self, namespace: &str, policy: &str) -> Vec<DeniedDestination> {
        let Some(totals) = self.totals.get(&(namespace.to_owned(), policy.to_owned())) else {
            return Vec::new();
        };
        let mut entries: Vec<_> = totals.by_destination.iter().collect();
        entries.sort_by(|(ka, a), (kb, b)| b.count.cmp(&a.count).then_with(|| ka.cmp(kb)));
        entries
            .into_iter()
            .take(MAX_STATUS_DENIED)
            .map(|(key, tally)| DeniedDestination {
                container: String::new(),
                host: key.host.clone(),
                port: key.port,
                method: key.method.clone(),
                path_prefix: key.path_prefix.clone(),
                decision: key.decision.clone(),
                denied_by: key.denied_by.clone(),
                count: tally.count,
                first_seen: tally.first_seen.clone(),
                last_seen: tally.last_seen.clone(),
            })
            .collect()
    }
}

/// Adds `count` denials of `key` (seen between `entry`'s first and last times); past
/// [`MAX_KEPT_DENIED`] destinations the least frequent one makes room.
fn add(
    totals: &mut BTreeMap<DeniedKey, Tally>,
    key: DeniedKey,
    count: i64,
    entry: &DeniedDestination,
) {
    if let Some(tally) = totals.get_mut(&key) {
        tally.count = tally.count.saturating_add(count);
        if earlier(&entry.first_seen, &tally.first_seen) {
            tally.first_seen.clone_from(&entry.first_seen);
        }
        if earlier(&tally.last_seen, &entry.last_seen) {
            tally.last_seen.clone_from(&entry.last_seen);
        }
        return;
    }
    if totals.len() >= MAX_KEPT_DENIED {
        let least = totals
            .iter()
            .min_by(|(ka, a), (kb, b)| a.count.cmp(&b.count).then_with(|| kb.cmp(ka)))
            .map(|(k, t)| (k.clone(), t.count));
        match least {
            Some((least, smallest)) if smallest < count => {
                totals.remove(&least);
            }
            _ => return,
        }
    }
    totals.insert(
        key,
        Tally {
            count,
            first_seen: entry.first_seen.clone(),
            last_seen: entry.last_seen.clone(),
        },
    );
}

/// Whether RFC 3339 time `a` is before `b` (compared as text when either does not parse).
fn earlier(a: &str, b: &str) -> bool {
    use k8s_openapi::jiff::Timestamp;
    match (a.parse::<Timestamp>(), b.parse::<Timestamp>()) {
        (Ok(a), Ok(b)) => a < b,
        _ => a < b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str) -> PodKey {
        PodKey {
            namespace: "ns".into(),
            name: name.into(),
            uid: format!("uid-{name}"),
        }
    }

    fn denied(
        container: &str,
        host: &str,
        count: i64,
        first: &str,
        last: &str,
    ) -> DeniedDestination {
        DeniedDestination {
            container: container.into(),
            host: host.into(),
            port: 443,
            method: Some("POST".into()),
            path_prefix: Some("/api".into()),
            decision: "deny".into(),
            denied_by: None,
            count,
            first_seen: first.into(),
            last_seen: last.into(),
        }
    }

    fn status(session: &str, denied: Vec<DeniedDestination>) -> SidecarStatus {
        SidecarStatus {
            session: session.into(),
            denied,
            ..SidecarStatus::default()
        }
    }

    fn counts(ledger: &DenialLedger, policy: &str) -> Vec<(String, i64, String, String)> {
        ledger
            .status("ns", policy)
            .into_iter()
            .map(|d| (d.host, d.count, d.first_seen, d.last_seen))
            .collect()
    }

    #[test]
    fn reports_asked_again_add_only_what_is_new_and_pods_and_containers_sum() {
        let mut ledger = DenialLedger::default();
        ledger.seed("ns", "p", &[]);
        let a = status("s1", vec![denied("agent", "paste.test", 2, "t01", "t02")]);
        ledger.absorb("ns", &pod("a"), &["p"], &a);
        ledger.absorb("ns", &pod("a"), &["p"], &a);
        assert_eq!(
            counts(&ledger, "p"),
            [("paste.test".into(), 2, "t01".into(), "t02".into())]
        );
        let a = status(
            "s1",
            vec![
                denied("agent", "paste.test", 5, "t01", "t05"),
                denied("tool", "paste.test", 1, "t03", "t03"),
            ],
        );
        ledger.absorb("ns", &pod("a"), &["p"], &a);
        let b = status("s9", vec![denied("agent", "paste.test", 4, "t00", "t04")]);
        ledger.absorb("ns", &pod("b"), &["p", "q"], &b);
        assert_eq!(
            counts(&ledger, "p"),
            [("paste.test".into(), 10, "t00".into(), "t05".into())]
        );
        assert_eq!(
            counts(&ledger, "q"),
            [("paste.test".into(), 4, "t00".into(), "t04".into())]
        );
    }

    #[test]
    fn a_restarted_sidecar_counts_from_zero_and_its_new_denials_are_added() {
        let mut ledger = DenialLedger::default();
        ledger.seed("ns", "p", &[]);
        ledger.absorb(
            "ns",
            &pod("a"),
            &["p"],
            &status("s1", vec![denied("agent", "x.test", 7, "t01", "t07")]),
        );
        ledger.absorb(
            "ns",
            &pod("a"),
            &["p"],
            &status("s2", vec![denied("agent", "x.test", 2, "t08", "t09")]),
        );
        assert_eq!(
            counts(&ledger, "p"),
            [("x.test".into(), 9, "t01".into(), "t09".into())]
        );
    }

    #[test]
    fn after_an_operator_restart_stored_totals_stay_and_old_denials_are_not_counted_again() {
        let mut ledger = DenialLedger::default();
        ledger.seed(
            "ns",
            "p",
            &[
                denied("", "x.test", 7, "t01", "t07"),
                denied("", "y.test", 1, "t02", "t02"),
            ],
        );
        // Seeding twice (every reconcile) changes nothing.
        ledger.seed("ns", "p", &[denied("", "x.test", 7, "t01", "t07")]);
        // The running pod reports what the stored totals already hold, and one new destination.
        ledger.absorb(
            "ns",
            &pod("a"),
            &["p"],
            &status(
                "s1",
                vec![
                    denied("agent", "x.test", 7, "t01", "t07"),
                    denied("agent", "z.test", 3, "t08", "t09"),
                ],
            ),
        );
        assert_eq!(
            counts(&ledger, "p"),
            [
                ("x.test".into(), 7, "t01".into(), "t07".into()),
                ("z.test".into(), 3, "t08".into(), "t09".into()),
                ("y.test".into(), 1, "t02".into(), "t02".into()),
            ]
        );
        // From then on, only differences.
        ledger.absorb(
            "ns",
            &pod("a"),
            &["p"],
            &status("s1", vec![denied("agent", "x.test", 8, "t01", "t10")]),
        );
        assert_eq!(
            counts(&ledger, "p")[0],
            ("x.test".into(), 8, "t01".into(), "t10".into())
        );
    }

    #[test]
    fn times_are_compared_as_times() {
        assert!(earlier("2026-12-05T23:12:32.5Z", "2026-12-05T23:12:33Z"));
        assert!(earlier("2026-12-05T23:12:32Z", "2026-12-05T23:12:32.5Z"));
        assert!(!earlier("2026-12-05T23:12:33Z", "2026-12-05T23:12:32.5Z"));
    }

    #[test]
    fn the_status_is_bounded_and_sorted_by_count_and_forgotten_policies_go() {
        let mut ledger = DenialLedger::default();
        ledger.seed("ns", "p", &[]);
        let many: Vec<_> = (0..MAX_KEPT_DENIED + 20)
            .map(|n| {
                denied(
                    "agent",
                    &format!("h{n:04}.test"),
                    i64::try_from(n % 7 + 1).unwrap(),
                    "t",
                    "t",
                )
            })
            .collect();
        ledger.absorb("ns", &pod("a"), &["p"], &status("s", many));
        let shown = ledger.status("ns", "p");
        assert_eq!(shown.len(), MAX_STATUS_DENIED);
        assert!(shown.windows(2).all(|w| w[0].count >= w[1].count));
        assert_eq!(shown[0].count, 7);
        assert_eq!(
            ledger.totals[&("ns".to_owned(), "p".to_owned())]
                .by_destination
                .len(),
            MAX_KEPT_DENIED
        );
        ledger.retain("ns", &BTreeSet::new(), &[]);
        assert!(ledger.status("ns", "p").is_empty());
        assert!(ledger.taken.is_empty());
    }
}
