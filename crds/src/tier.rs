//! Jail tiers: how the jail gets its namespaces (see ARCHITECTURE.md, "Tiers").

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::contract::tiers;

/// A way to build the jail. Ordered from most to least preferred: the planner and `boundary run
/// --tier auto` take the first one that works.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(rename_all = "kebab-case")]
pub enum Tier {
    /// New user, network, PID and mount namespaces without any added capability.
    Userns,
    /// The same jail made with `SYS_ADMIN` + `NET_ADMIN` where user namespaces are off; both are
    /// dropped from every set before the jailed command runs.
    PrivilegedNetns,
    /// No namespaces: Landlock (ABI 4+) restricts TCP connect to the proxy. Weaker.
    Landlock,
}

impl Tier {
    /// Every tier, in order of preference.
    pub const ALL: [Tier; 3] = [Tier::Userns, Tier::PrivilegedNetns, Tier::Landlock];

    /// The tier's name in labels, annotations, env vars and on the command line.
    pub const fn as_str(self) -> &'static str {
        match self {
            Tier::Userns => tiers::USERNS,
            Tier::PrivilegedNetns => tiers::PRIVILEGED_NETNS,
            Tier::Landlock => tiers::LANDLOCK,
        }
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A tier name that is not one of [`Tier::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown jail tier {0:?}: expected one of userns, privileged-netns, landlock")]
pub struct UnknownTier(pub String);

impl FromStr for Tier {
    type Err = UnknownTier;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Tier::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| UnknownTier(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_str_serde_and_the_contract() {
        for tier in Tier::ALL {
            assert_eq!(tier.as_str().parse::<Tier>(), Ok(tier));
            let json = serde_json::to_string(&tier).unwrap();
            assert_eq!(json, format!("\"{tier}\""));
            assert_eq!(serde_json::from_str::<Tier>(&json).unwrap(), tier);
        }
        assert_eq!(
            Tier::ALL.map(Tier::as_str).as_slice(),
            crate::contract::tiers::ALL
        );
    }

    #[test]
    fn unknown_names_are_rejected_with_the_choices() {
        let err = "nsjail".parse::<Tier>().unwrap_err();
        assert!(
            err.to_string()
                .contains("userns, privileged-netns, landlock")
        );
    }
}
