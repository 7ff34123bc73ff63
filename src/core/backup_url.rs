//! Where backups go, as users write it: a destination URL (`vfs:///path`,
//! `s3://bucket/prefix`) and a backup's URL (`DESTINATION?backup=NAME`), parsed and
//! validated. Opening a destination is the shell's (`crate::ops::backup::dest`).

use std::path::{Path, PathBuf};

use crate::core::error::{shown, Error, Result};
use crate::core::names::validate_name;

/// A destination, as parsed from its URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dest {
    Vfs {
        path: PathBuf,
    },
    S3 {
        bucket: String,
        region: Option<String>,
        prefix: String,
    },
}

const ACCEPTED: &str =
    "accepted: vfs:///absolute/path or s3://bucket/prefix (s3://bucket@region/prefix)";

impl Dest {
    /// Parses `vfs:///path`, `s3://bucket/prefix` or `s3://bucket@region/prefix`.
    pub fn parse(url: &str) -> Result<Dest> {
        let bad = |why: &str| {
            Error::invalid(format!(
                "backup destination {}: {why}; {ACCEPTED}",
                shown(url)
            ))
        };
        if url.len() > 1024 || url.contains(['\0', '\n', '?', '#']) {
            return Err(bad("not a destination URL"));
        }
        if let Some(path) = url.strip_prefix("vfs://") {
            let p = Path::new(path);
            if !p.is_absolute() {
                return Err(bad(
                    "the path must be absolute (three slashes: vfs:///srv/backups)",
                ));
            }
            if p.components()
                .any(|c| matches!(c, std::path::Component::ParentDir))
            {
                return Err(bad("the path must not hold `..`"));
            }
            return Ok(Dest::Vfs {
                path: p.to_path_buf(),
            });
        }
        if let Some(rest) = url.strip_prefix("s3://") {
            let (host, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            let (bucket, region) = match host.split_once('@') {
                Some((b, r)) => (b, Some(r)),
                None => (host, None),
            };
            let bucket_ok = (3..=63).contains(&bucket.len())
                && bucket
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-.".contains(&b));
            if !bucket_ok {
                return Err(bad(
                    "the bucket name must be 3 to 63 lowercase letters, digits, dots or dashes",
                ));
            }
            if let Some(r) = region {
                if r.is_empty() || !r.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
                    return Err(bad("the region must be letters, digits and dashes"));
                }
            }
            let prefix = prefix.trim_matches('/');
            if prefix.split('/').any(|p| p == "." || p == "..") || prefix.contains("//") {
                return Err(bad("the prefix must not hold `.`, `..` or empty parts"));
            }
            return Ok(Dest::S3 {
                bucket: bucket.to_string(),
                region: region.map(str::to_string),
                prefix: prefix.to_string(),
            });
        }
        Err(bad("unknown scheme"))
    }

    /// The destination's URL, as users write it.
    pub fn url(&self) -> String {
        match self {
            Dest::Vfs { path } => format!("vfs://{}", path.display()),
            Dest::S3 {
                bucket,
                region,
                prefix,
            } => {
                let host = match region {
                    Some(r) => format!("{bucket}@{r}"),
                    None => bucket.clone(),
                };
                if prefix.is_empty() {
                    format!("s3://{host}")
                } else {
                    format!("s3://{host}/{prefix}")
                }
            }
        }
    }
}

/// A backup's URL: its destination and its name, Convoy's way:
/// `vfs:///srv/backups?backup=NAME&volume=VOL` (the volume is for people; the name
/// alone identifies the backup).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupUrl {
    pub dest: Dest,
    pub id: String,
    pub volume: Option<String>,
}

impl BackupUrl {
    pub fn parse(url: &str) -> Result<BackupUrl> {
        let (dest, query) = url.split_once('?').ok_or_else(|| {
            Error::invalid(format!(
                "{} is not a backup URL: expected DESTINATION?backup=NAME (as `caravan backup create` and `caravan backup list` print it)",
                shown(url)
            ))
        })?;
        let dest = Dest::parse(dest)?;
        let (mut id, mut volume) = (None, None);
        for pair in query.split('&') {
            match pair.split_once('=') {
                Some(("backup", v)) => id = Some(v.to_string()),
                Some(("volume", v)) => {
                    validate_name(v)?;
                    volume = Some(v.to_string())
                }
                _ => {
                    return Err(Error::invalid(format!(
                        "backup URL {}: unknown part {}; accepted: backup=NAME, volume=VOLUME",
                        shown(url),
                        shown(pair)
                    )))
                }
            }
        }
        let id = id.ok_or_else(|| {
            Error::invalid(format!(
                "backup URL {} names no backup (backup=NAME)",
                shown(url)
            ))
        })?;
        validate_id(&id)?;
        Ok(BackupUrl { dest, id, volume })
    }
}

impl std::fmt::Display for BackupUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}?backup={}", self.dest.url(), self.id)?;
        if let Some(v) = &self.volume {
            write!(f, "&volume={v}")?;
        }
        Ok(())
    }
}

/// Checks a backup's name: letters, digits, `-`, `_` and `.`, not first, 1 to 80.
pub fn validate_id(id: &str) -> Result<()> {
    let ok = (1..=80).contains(&id.len())
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "backup name {}: accepted are 1 to 80 letters, digits, '-', '_' and '.', not starting with '.'",
            shown(id)
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_parse_and_bad_ones_say_what_is_accepted() {
        assert_eq!(
            Dest::parse("vfs:///srv/backups").unwrap(),
            Dest::Vfs {
                path: "/srv/backups".into()
            }
        );
        assert_eq!(
            Dest::parse("s3://my-bucket@eu-west-1/caravan/prod").unwrap(),
            Dest::S3 {
                bucket: "my-bucket".into(),
                region: Some("eu-west-1".into()),
                prefix: "caravan/prod".into()
            }
        );
        assert_eq!(
            Dest::parse("s3://my-bucket").unwrap().url(),
            "s3://my-bucket"
        );
        assert_eq!(
            Dest::parse("s3://b-1/p/").unwrap().url(),
            "s3://b-1/p",
            "a trailing slash is the same prefix"
        );
        for bad in [
            "vfs://relative",
            "vfs:///a/../etc",
            "s3://UPPER/p",
            "s3://b/../x",
            "s3://bucket@/p",
            "ftp://x",
            "vfs:///a?backup=x",
        ] {
            let e = Dest::parse(bad).unwrap_err().to_string();
            assert!(e.contains("accepted: vfs:///"), "{bad}: {e}");
        }
    }

    #[test]
    fn backup_names_are_checked() {
        assert!(validate_id("20261201T232317Z-3fa9c1").is_ok());
        for bad in ["", ".hidden", "a/b", "a b", &"x".repeat(81)] {
            assert!(validate_id(bad).is_err(), "{bad}");
        }
    }
}
