//! `--set-max-user-namespaces N`: turns user namespaces on where the node has them off
//! (`user.max_user_namespaces = 0`, the Bottlerocket and EKS Auto Mode default).
//!
//! Only a value of 0 is changed: a node whose administrator chose any other limit keeps it.
//! Checked before every probe, so a reset (a node settings agent, a reboot) is undone within one
//! interval and the probe reports the state the pods will actually see. Writing
//! `/proc/sys/user/...` needs a privileged container (`/proc/sys` is read-only otherwise).

use std::path::{Path, PathBuf};

use super::Error;

/// The sysctl's file.
pub const MAX_USER_NAMESPACES: &str = "/proc/sys/user/max_user_namespaces";

/// What [`ensure_max_user_namespaces`] found and did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Not 0: left as it was.
    Left(u64),
    /// Was 0, now the value asked for.
    Raised {
        /// The value written.
        to: u64,
    },
}

fn read(path: &Path) -> Result<u64, Error> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Sysctl {
        path: path.to_owned(),
        action: "reading",
        source,
    })?;
    text.trim().parse().map_err(|_| Error::SysctlValue {
        path: path.to_owned(),
        content: text.trim().chars().take(40).collect(),
    })
}

/// Sets the sysctl at `path` to `value` when it is 0; `value` must not be 0.
pub fn ensure_max_user_namespaces(path: &Path, value: u64) -> Result<Outcome, Error> {
    let current = read(path)?;
    if current != 0 {
        return Ok(Outcome::Left(current));
    }
    let write_error = |source| Error::Sysctl {
        path: PathBuf::from(path),
        action: "writing",
        source,
    };
    std::fs::write(path, format!("{value}\n")).map_err(write_error)?;
    // The kernel may clamp or refuse silently (a range check): report what is really there.
    let now = read(path)?;
    if now == value {
        Ok(Outcome::Raised { to: value })
    } else {
        Err(Error::SysctlValue {
            path: path.to_owned(),
            content: format!("{now} after writing {value}"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(content: &str) -> (PathBuf, PathBuf) {
        let dir = std::env::temp_dir().join(format!(
            "boundary-sysctl-{}-{}",
            std::process::id(),
            content.trim()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("max_user_namespaces");
        std::fs::write(&file, content).unwrap();
        (dir, file)
    }

    #[test]
    fn zero_is_raised_and_everything_else_is_left_alone() {
        let (dir, file) = temp("0\n");
        assert_eq!(
            ensure_max_user_namespaces(&file, 15000).unwrap(),
            Outcome::Raised { to: 15000 }
        );
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "15000\n");
        // The next round finds it set and leaves it.
        assert_eq!(
            ensure_max_user_namespaces(&file, 15000).unwrap(),
            Outcome::Left(15000)
        );
        // Someone resets it: raised again.
        std::fs::write(&file, "0").unwrap();
        assert_eq!(
            ensure_max_user_namespaces(&file, 15000).unwrap(),
            Outcome::Raised { to: 15000 }
        );
        // An administrator's own limit is kept, even a small one.
        std::fs::write(&file, "10\n").unwrap();
        assert_eq!(
            ensure_max_user_namespaces(&file, 15000).unwrap(),
            Outcome::Left(10)
        );
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "10\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn unreadable_or_odd_files_are_errors_that_say_so() {
        let (dir, file) = temp("many\n");
        let err = ensure_max_user_namespaces(&file, 1).unwrap_err();
        assert!(matches!(err, Error::SysctlValue { .. }), "{err}");
        assert!(err.to_string().contains("\"many\""), "{err}");
        let err = ensure_max_user_namespaces(&dir.join("missing"), 1).unwrap_err();
        assert!(
            matches!(
                err,
                Error::Sysctl {
                    action: "reading",
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("privileged"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
