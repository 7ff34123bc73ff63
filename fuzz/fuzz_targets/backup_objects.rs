//! What a backup destination holds is written by other machines: any bytes read back as a
//! tree (format 1's one object, streamed; format 2's pages), an index, a summary or a
//! configuration, and any text given as a backup URL, decode to a checked value or to an
//! error, never a panic, and within bounded memory: `scripts/fuzz` runs this target with
//! `-malloc_limit_mb`, so that a few bytes that decode into gigabytes (a tree bomb) fail
//! the run.
#![no_main]

use caravan::ops::backup::format::node::{decode_extents, decode_listing};
use caravan::ops::backup::format::{Config, Id, Index, Summary, Tree, MAX_TREE_BYTES};
use caravan::core::backup_url::BackupUrl;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&kind, rest)) = data.split_first() else {
        return;
    };
    match kind % 6 {
        0 => {
            // Streamed as a restore reads it (nothing kept), compressed as stored and as
            // plain JSON compressed here.
            let _ = Tree::stream(rest, "fuzz", MAX_TREE_BYTES, |_, _| Ok(()));
            if let Ok(z) = zstd::bulk::compress(rest, 1) {
                let _ = Tree::stream(&z, "fuzz", MAX_TREE_BYTES, |_, _| Ok(()));
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
        4 => {
            // A page, as stored (named by its own hash, so that the hash check passes
            // and the decoders are reached) and as plain JSON compressed here.
            let _ = decode_listing(rest, &Id::of(rest), "fuzz");
            let _ = decode_extents(rest, &Id::of(rest), "fuzz");
            if let Ok(z) = zstd::bulk::compress(rest, 1) {
                let _ = decode_listing(&z, &Id::of(&z), "fuzz");
                let _ = decode_extents(&z, &Id::of(&z), "fuzz");
            }
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
