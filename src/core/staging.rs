//! The name of a staging folder (`.caravan/staging/<tag>`), where a copy into a new volume
//! (a clone, a restore) is made before its Create commits: the volume it is for and the
//! incarnation making it, so that a start of the same node, or doctor, can tell an
//! abandoned copy from one in progress. The export is written by other machines: a name
//! that does not parse is no staging folder of caravan's and is left alone.

use std::fmt;

use crate::core::names::validate_name;

/// The separator of the tag's parts: no volume name, node name or boot id holds it.
const SEP: char = '@';

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StagingTag {
    pub volume: String,
    pub node: String,
    pub boot_id: String,
    /// Tells apart copies of one incarnation into the same name (the maker's wall clock in
    /// nanoseconds: only unique, never compared).
    pub serial: u128,
}

impl StagingTag {
    /// `<volume>@<node>@<boot id>@<serial>`, each part checked; `None` for anything else.
    pub fn parse(tag: &str) -> Option<StagingTag> {
        let mut parts = tag.split(SEP);
        let (Some(volume), Some(node), Some(boot_id), Some(serial), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return None;
        };
        validate_name(volume).ok()?;
        if node.is_empty() || boot_id.is_empty() || !serial.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        Some(StagingTag {
            volume: volume.to_string(),
            node: node.to_string(),
            boot_id: boot_id.to_string(),
            serial: serial.parse().ok()?,
        })
    }
}

impl fmt::Display for StagingTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}{SEP}{}{SEP}{}{SEP}{}",
            self.volume, self.node, self.boot_id, self.serial
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tag_reads_back_as_written_and_anything_else_is_no_tag() {
        let tag = StagingTag {
            volume: "db".into(),
            node: "h1".into(),
            boot_id: "0f3c-77".into(),
            serial: 1_733_000_000_123_456_789,
        };
        let text = tag.to_string();
        assert_eq!(text, "db@h1@0f3c-77@1733000000123456789");
        assert_eq!(StagingTag::parse(&text), Some(tag));
        for bad in [
            "",
            "db",
            "db@h1@boot",
            "db@h1@boot@1@2",
            "../x@h1@boot@1",
            "db@@boot@1",
            "db@h1@@1",
            "db@h1@boot@",
            "db@h1@boot@-1",
            "db@h1@boot@99999999999999999999999999999999999999999",
        ] {
            assert_eq!(StagingTag::parse(bad), None, "{bad:?}");
        }
    }
}
