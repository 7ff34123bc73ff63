//! Which machine this is: `/etc/machine-id` (systemd's, written once at install), or
//! D-Bus's copy. Written into the heartbeat, so that a daemon starting under a name can
//! tell that the name's last daemon ran on another machine (see
//! [`crate::core::liveness::name_taken_from`]).

use std::path::Path;

const SOURCES: &[&str] = &["/etc/machine-id", "/var/lib/dbus/machine-id"];

/// This machine's id, or `None` when no source holds one (a container without the file,
/// an image whose id was never set): then nothing is decided by machines.
pub fn id() -> Option<String> {
    SOURCES.iter().find_map(|p| read(Path::new(p)))
}

/// The id in `path`: 32 hexadecimal digits ("uninitialized", empty or anything else is
/// no id).
fn read(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let id = text.trim();
    (id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_32_hexadecimal_digits_are_an_id() {
        let dir = tempfile::tempdir().unwrap();
        let at = |text: &str| {
            let p = dir.path().join("machine-id");
            std::fs::write(&p, text).unwrap();
            read(&p)
        };
        assert_eq!(
            at("3D1219C7C4C5404AAA1F6D2A48ADFDA4\n").as_deref(),
            Some("3d1219c7c4c5404aaa1f6d2a48adfda4")
        );
        assert_eq!(at("uninitialized\n"), None);
        assert_eq!(at(""), None);
        assert_eq!(at("3d1219c7c4c5404aaa1f6d2a48adfda4ff"), None);
        assert_eq!(read(&dir.path().join("missing")), None);
    }
}
