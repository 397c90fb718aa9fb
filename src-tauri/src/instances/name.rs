//! Instance names: the one check every route runs before a name touches a map or a path.

use super::InstanceError;

/// Longest accepted name, in bytes (llamactl's limit).
pub const MAX_NAME_LEN: usize = 50;

/// Accepts 1 to 50 of `[A-Za-z0-9_.-]`, not starting or ending with a dot (llamactl 0.19 allows
/// dots, as model names have them: `qwen2.5-7b`), so a name is always a safe file stem and a
/// plain URL path segment: `.` and `..` would be folded away by every HTTP client, a leading dot
/// hides the instance's files, and Windows drops a trailing one from file names.
pub fn validate_name(name: &str) -> Result<(), InstanceError> {
    if name.is_empty() {
        return Err(InstanceError::InvalidName(
            "the name cannot be empty".into(),
        ));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    {
        return Err(InstanceError::InvalidName(format!(
            "'{name}' contains invalid characters: use only letters, digits, hyphens, underscores and dots"
        )));
    }
    if name.starts_with('.') || name.ends_with('.') {
        return Err(InstanceError::InvalidName(format!(
            "'{name}' starts or ends with a dot: a dot may only stand inside the name"
        )));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(InstanceError::InvalidName(format!(
            "the name is {} characters long; the maximum is {MAX_NAME_LEN}",
            name.len()
        )));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;

    #[test]
    fn names_follow_llamactl_rules() {
        for ok in [
            "myinstance",
            "instance123",
            "my-instance",
            "my_instance",
            "my.instance",
            "qwen2.5-7b",
            "a..b",
            "a",
            &"a".repeat(50),
        ] {
            assert!(validate_name(ok).is_ok(), "{ok} should be valid");
        }
        for bad in [
            "",
            "my instance",
            ".",
            "..",
            ".hidden",
            "trailing.",
            "my@instance",
            &"a".repeat(51),
            "test;ls",
            "../x",
            "a/b",
            "é",
        ] {
            assert!(validate_name(bad).is_err(), "{bad} should be invalid");
        }
    }
}
