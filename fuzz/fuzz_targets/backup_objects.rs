//! What a backup destination holds is written by other machines: any bytes read back as a
//! tree, an index, a summary or a configuration, and any text given as a backup URL,
//! decode to a checked value or to an error, never a panic.
#![no_main]

use caravan::backup::format::{Config, Index, Summary, Tree};
use caravan::backup::BackupUrl;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&kind, rest)) = data.split_first() else {
        return;
    };
    match kind % 5 {
        0 => {
            // Both compressed (as stored) and as plain JSON compressed here.
            // Bounded well below libFuzzer's memory limit (a zstd frame of a few bytes
            // can claim gigabytes).
            if let Ok(t) = Tree::decode_within(rest, "fuzz", 64 << 20) {
                for i in 0..t.entries.len().min(64) {
                    let _ = t.path_of(i);
                }
            }
            if let Ok(z) = zstd::bulk::compress(rest, 1) {
                let _ = Tree::decode_within(&z, "fuzz", 64 << 20);
            }
        }
        1 => {
            let _ = Index::decode(rest, "fuzz");
        }
        2 => {
            let _ = Summary::decode(rest, "fuzz");
        }
        3 => {
            let _ = Config::decode(rest, "fuzz");
        }
        _ => {
            if let Ok(s) = std::str::from_utf8(rest) {
                if let Ok(u) = BackupUrl::parse(s) {
                    // What is printed parses back to the same backup.
                    assert_eq!(BackupUrl::parse(&u.to_string()).ok(), Some(u));
                }
            }
        }
    }
});
