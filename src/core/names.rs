//! Names that become paths and keys: volumes, snapshots, Docker's mount IDs. Each is
//! checked before anything touches the disk, and the message says what is accepted.

use crate::core::error::{shown, Error, Result};

/// The longest volume name accepted. Docker sets none; this keeps every path built from a
/// name (`<root>/volumes/<name>/data`, `<state-dir>/mounts/<name>`) far below `NAME_MAX`.
pub const MAX_NAME_LEN: usize = 128;

/// True if `s` is `min..=max` bytes of a-z A-Z 0-9 _ . - and, with `alnum_first`, starts
/// with a letter or digit: the shape of every name caravan turns into a path or a key.
pub fn is_safe_token(s: &str, min: usize, max: usize, alnum_first: bool) -> bool {
    (min..=max).contains(&s.len())
        && (!alnum_first
            || s.as_bytes()
                .first()
                .is_some_and(|b| b.is_ascii_alphanumeric()))
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// Checks a volume name against Docker's rule `[a-zA-Z0-9][a-zA-Z0-9_.-]+` and
/// [`MAX_NAME_LEN`]. The rule excludes `/`, `..`-only names, NUL and everything else that
/// could escape a directory, so a valid name is always a safe single path component.
pub fn validate_name(name: &str) -> Result<()> {
    const RULE: &str =
        "names are 2 to 128 characters of a-z A-Z 0-9 _ . -, starting with a letter or digit";
    if name.is_empty() {
        return Err(Error::invalid(format!("a volume name is required: {RULE}")));
    }
    let shown = || crate::core::error::shown(name);
    if name.len() < 2 || name.len() > MAX_NAME_LEN {
        // A long name is shown cut, with its length already.
        let length = match crate::core::error::cut(name) {
            std::borrow::Cow::Borrowed(_) => format!(" ({} bytes)", name.len()),
            std::borrow::Cow::Owned(_) => String::new(),
        };
        return Err(Error::invalid(format!(
            "invalid volume name {}{length}: {RULE}",
            shown()
        )));
    }
    if !is_safe_token(name, 2, MAX_NAME_LEN, true) {
        return Err(Error::invalid(format!(
            "invalid volume name {}: {RULE}",
            shown()
        )));
    }
    Ok(())
}

/// Checks a snapshot name: the rule of volume names (it becomes one path component).
pub fn validate_snapshot_name(name: &str) -> Result<()> {
    validate_name(name)
        .map_err(|e| Error::invalid(e.to_string().replacen("volume name", "snapshot name", 2)))
}

/// `VOL@SNAP`, both names checked.
pub fn parse_snapshot_ref(text: &str) -> Result<(String, String)> {
    let Some((vol, snap)) = text.split_once('@') else {
        return Err(Error::invalid(format!(
            "{} is not a snapshot: give VOLUME@SNAPSHOT",
            crate::core::error::shown(text)
        )));
    };
    validate_name(vol)?;
    validate_snapshot_name(snap)?;
    Ok((vol.to_string(), snap.to_string()))
}

/// Validates a Docker mount ID (or a CLI-chosen one): 1 to 128 characters of a-z A-Z 0-9 _ . -.
pub fn validate_mount_id(id: &str) -> Result<()> {
    if is_safe_token(id, 1, 128, false) {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "invalid mount ID {}: IDs are 1 to 128 characters of a-z A-Z 0-9 _ . -",
            shown(id)
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_dockers_rule() {
        for ok in [
            "web",
            "a1",
            "my-vol.v2_x",
            "0abc",
            &"x".repeat(MAX_NAME_LEN),
        ] {
            validate_name(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in [
            "",
            "a",
            "../x",
            "a/b",
            "-x",
            ".x",
            "_x",
            "a\0b",
            "a b",
            "ü1",
            &"x".repeat(MAX_NAME_LEN + 1),
            "..",
        ] {
            let err = validate_name(bad).unwrap_err().to_string();
            let expected = if bad.is_empty() {
                "a volume name is required"
            } else {
                "invalid volume name"
            };
            assert!(err.contains(expected), "{bad:?}: {err}");
        }
    }

    #[test]
    fn a_long_name_is_said_to_be_long_once() {
        let e = validate_name(&"a".repeat(300)).unwrap_err().to_string();
        assert_eq!(e.matches("(300 bytes)").count(), 1, "{e}");
        let e = validate_snapshot_name(&"s".repeat(300))
            .unwrap_err()
            .to_string();
        assert_eq!(e.matches("(300 bytes)").count(), 1, "{e}");
        assert!(e.contains("snapshot name"), "{e}");
        let e = validate_name("x").unwrap_err().to_string();
        assert!(e.contains("(1 bytes)"), "{e}");
    }

    #[test]
    fn long_names_are_shortened_in_messages() {
        let err = validate_name(&"y".repeat(300)).unwrap_err().to_string();
        assert!(err.len() < 200, "{err}");
        assert!(err.contains("300 bytes"), "{err}");
    }
}
