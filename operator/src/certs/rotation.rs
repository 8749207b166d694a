//! When to rotate the webhook's certificates: the pure [`decide`], tested row by row.
//!
//! A rotation never leaves the apiserver with a bundle that does not verify the certificate the
//! webhook serves:
//!
//! 1. a new CA is made while the old one is still valid; the bundle becomes old + new;
//! 2. only after `propagation` (the apiserver has seen the new bundle) is a serving certificate
//!    signed by the new CA written; the webhook reloads it from the mounted Secret;
//! 3. only after `overlap` more (every replica has reloaded it) does the old CA leave the bundle.
//!
//! A serving certificate alone is renewed under the same CA, which needs no bundle change.

use std::collections::BTreeSet;

/// Certificates are dated this much before they are made, for clocks a little behind ours.
pub const BACKDATE_SECONDS: i64 = 60;

/// Lifetimes and delays of a rotation, in seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// Lifetime of a new CA.
    pub ca_validity: i64,
    /// Lifetime of a new serving certificate (never beyond its CA's).
    pub serving_validity: i64,
    /// From a new CA in the bundle to the first certificate it signs.
    pub propagation: i64,
    /// From the first certificate of a new CA to the old CA leaving the bundle.
    pub overlap: i64,
}

/// What the operator learned from a PEM certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertInfo {
    /// Start of validity (unix seconds).
    pub not_before: i64,
    /// End of validity (unix seconds).
    pub not_after: i64,
    /// DER of the subject name.
    pub subject: Vec<u8>,
    /// DER of the issuer name.
    pub issuer: Vec<u8>,
    /// DNS and IP subject alternative names.
    pub names: BTreeSet<String>,
    /// The subject public key's bits.
    pub public_key: Vec<u8>,
    /// Whether it is a CA certificate.
    pub is_ca: bool,
}

impl CertInfo {
    /// When it was made (the backdating undone).
    pub fn issued(&self) -> i64 {
        self.not_before + BACKDATE_SECONDS
    }

    /// When it is due for renewal: two thirds into its life.
    pub fn renew_at(&self) -> i64 {
        self.issued() + (self.not_after - self.issued()) * 2 / 3
    }
}

/// The certificates as found in the cluster (unusable ones already left out).
#[derive(Clone, Debug, Default)]
pub struct Observed {
    /// The current CA (a CA certificate with its key).
    pub ca: Option<CertInfo>,
    /// The previous CA, still in the bundle during a rotation.
    pub previous_ca: Option<CertInfo>,
    /// The serving certificate with its key.
    pub serving: Option<CertInfo>,
}

/// What to do with the previous CA.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Previous {
    /// No previous CA in the bundle.
    None,
    /// Keep the previous CA that is there.
    Keep,
    /// The current CA becomes the previous one (a new CA is made).
    FromCurrent,
}

/// The outcome of [`decide`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Make a new CA.
    pub new_ca: bool,
    /// The previous CA in the bundle after this step.
    pub previous: Previous,
    /// Sign a new serving certificate with the (possibly new) current CA.
    pub new_serving: bool,
    /// When to look again (unix seconds), even if nothing changes.
    pub next_check: i64,
}

/// The next step of the certificates' life at `now` (unix seconds), for a serving certificate
/// that must carry `names`.
pub fn decide(now: i64, observed: &Observed, names: &BTreeSet<String>, t: Timing) -> Decision {
    let mut checks = Vec::new();

    // The CA: made when missing or expired, replaced (old kept as previous) two thirds in.
    let (new_ca, mut previous, ca_issued) = match &observed.ca {
        Some(ca) if now < ca.renew_at() && now < ca.not_after => {
            checks.push(ca.renew_at());
            let keep = observed
                .previous_ca
                .as_ref()
                .is_some_and(|p| now < p.not_after);
            (
                false,
                if keep { Previous::Keep } else { Previous::None },
                ca.issued(),
            )
        }
        Some(ca) if now < ca.not_after => (true, Previous::FromCurrent, now),
        _ => (true, Previous::None, now),
    };
    if new_ca {
        checks.push(now + t.ca_validity * 2 / 3);
    }
    let previous_subject = match previous {
        Previous::FromCurrent => observed.ca.as_ref().map(|c| c.subject.as_slice()),
        Previous::Keep => observed.previous_ca.as_ref().map(|c| c.subject.as_slice()),
        Previous::None => None,
    };
    let current_subject = (!new_ca)
        .then(|| observed.ca.as_ref().map(|c| c.subject.as_slice()))
        .flatten();

    // The serving certificate.
    let serving = observed.serving.as_ref().filter(|s| {
        // Usable: right names, still valid, a leaf.
        &s.names == names && now < s.not_after && !s.is_ca
    });
    let by_current = serving.filter(|s| Some(s.issuer.as_slice()) == current_subject);
    let by_previous = serving.filter(|s| Some(s.issuer.as_slice()) == previous_subject);
    let propagated = now >= ca_issued + t.propagation;
    let new_serving = if let Some(s) = by_current {
        now >= s.renew_at()
    } else if let Some(s) = by_previous.filter(|_| !propagated) {
        // Serving from the old CA until the apiserver trusts the new one.
        checks.push(ca_issued + t.propagation);
        checks.push(s.not_after);
        false
    } else {
        true
    };
    let serving_issued = match (new_serving, by_current) {
        (false, Some(s)) => {
            checks.push(s.renew_at());
            Some(s.issued())
        }
        (true, _) => {
            checks.push(now + t.serving_validity * 2 / 3);
            Some(now)
        }
        (false, None) => None,
    };

    // The previous CA leaves the bundle once the new CA's certificate has been served long
    // enough for every replica to have it.
    if previous != Previous::None {
        match serving_issued {
            Some(issued) if now >= issued + t.overlap => previous = Previous::None,
            Some(issued) => checks.push(issued + t.overlap),
            None => {}
        }
    }

    Decision {
        new_ca,
        previous,
        new_serving,
        next_check: checks
            .into_iter()
            .filter(|&c| c > now)
            .min()
            .unwrap_or(now + 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Timing = Timing {
        ca_validity: 3000,
        serving_validity: 900,
        propagation: 60,
        overlap: 300,
    };

    fn names() -> BTreeSet<String> {
        BTreeSet::from(["webhook.ns.svc".to_owned()])
    }

    fn cert(subject: &str, issuer: &str, made: i64, life: i64, is_ca: bool) -> CertInfo {
        CertInfo {
            not_before: made - BACKDATE_SECONDS,
            not_after: made + life,
            subject: subject.as_bytes().to_vec(),
            issuer: issuer.as_bytes().to_vec(),
            names: if is_ca { BTreeSet::new() } else { names() },
            public_key: vec![],
            is_ca,
        }
    }

    #[test]
    fn nothing_yet_makes_both() {
        let d = decide(1000, &Observed::default(), &names(), T);
        assert_eq!(
            d,
            Decision {
                new_ca: true,
                previous: Previous::None,
                new_serving: true,
                next_check: 1600
            }
        );
    }

    #[test]
    fn fresh_certificates_are_left_alone_until_their_renewal() {
        let obs = Observed {
            ca: Some(cert("ca1", "ca1", 0, 3000, true)),
            previous_ca: None,
            serving: Some(cert("leaf", "ca1", 0, 900, false)),
        };
        let d = decide(100, &obs, &names(), T);
        assert_eq!(
            (d.new_ca, d.previous, d.new_serving, d.next_check),
            (false, Previous::None, false, 600)
        );
        // Two thirds in, the serving certificate alone is renewed under the same CA.
        let d = decide(600, &obs, &names(), T);
        assert_eq!(
            (d.new_ca, d.previous, d.new_serving),
            (false, Previous::None, true)
        );
    }

    #[test]
    fn a_ca_rotation_overlaps_old_and_new() {
        // Two thirds into the CA's life: new CA, old one stays, old serving certificate kept
        // until the new bundle has propagated.
        let obs = Observed {
            ca: Some(cert("ca1", "ca1", 0, 3000, true)),
            previous_ca: None,
            serving: Some(cert("leaf", "ca1", 1900, 900, false)),
        };
        let d = decide(2000, &obs, &names(), T);
        assert_eq!(
            (d.new_ca, d.previous, d.new_serving, d.next_check),
            (true, Previous::FromCurrent, false, 2060)
        );

        // Within propagation the old-CA certificate still serves.
        let during = Observed {
            ca: Some(cert("ca2", "ca2", 2000, 3000, true)),
            previous_ca: Some(cert("ca1", "ca1", 0, 3000, true)),
            serving: Some(cert("leaf", "ca1", 1900, 900, false)),
        };
        let d = decide(2030, &during, &names(), T);
        assert_eq!(
            (d.new_ca, d.previous, d.new_serving, d.next_check),
            (false, Previous::Keep, false, 2060)
        );

        // After it, a certificate of the new CA; the old CA stays for the overlap.
        let d = decide(2060, &during, &names(), T);
        assert_eq!(
            (d.new_ca, d.previous, d.new_serving, d.next_check),
            (false, Previous::Keep, true, 2360)
        );
        let after = Observed {
            serving: Some(cert("leaf2", "ca2", 2060, 900, false)),
            ..during
        };
        let d = decide(2200, &after, &names(), T);
        assert_eq!(
            (d.previous, d.new_serving, d.next_check),
            (Previous::Keep, false, 2360)
        );
        // Overlap over: the old CA leaves the bundle.
        let d = decide(2360, &after, &names(), T);
        assert_eq!((d.previous, d.new_serving), (Previous::None, false));
    }

    #[test]
    fn broken_or_wrong_serving_certificates_are_replaced_at_once() {
        let ca = Some(cert("ca1", "ca1", 0, 3000, true));
        for serving in [
            None,
            // Another name.
            Some(CertInfo {
                names: BTreeSet::from(["other.svc".to_owned()]),
                ..cert("leaf", "ca1", 0, 900, false)
            }),
            // Signed by an unknown CA.
            Some(cert("leaf", "someone", 0, 900, false)),
            // Expired.
            Some(cert("leaf", "ca1", 0, 50, false)),
        ] {
            let obs = Observed {
                ca: ca.clone(),
                previous_ca: None,
                serving,
            };
            let d = decide(100, &obs, &names(), T);
            assert!(d.new_serving && !d.new_ca, "{obs:?}");
        }
    }

    #[test]
    fn an_expired_ca_is_replaced_without_keeping_it() {
        let obs = Observed {
            ca: Some(cert("ca1", "ca1", 0, 3000, true)),
            previous_ca: None,
            serving: Some(cert("leaf", "ca1", 2900, 900, false)),
        };
        let d = decide(3100, &obs, &names(), T);
        assert_eq!(
            (d.new_ca, d.previous, d.new_serving),
            (true, Previous::None, true)
        );
    }
}
