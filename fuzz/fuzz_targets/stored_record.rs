//! Records in the metadata store, which another machine may have written: a key and a
//! value (split at the first NUL) decode to a record or are skipped with a reason; a
//! record that decodes can be shown, counted, mounted and unmounted without a panic or a
//! wrap, and survives a rewrite unchanged.
#![no_main]

use caravan::core::volume::decode_stored;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (key, value) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (&b"vol"[..], data),
    };
    let Ok(rec) = decode_stored(key, value) else {
        return;
    };
    let _ = rec.created_at_rfc3339();
    let _ = rec.check_writable();
    let _ = rec.options.to_map();
    let nodes: Vec<String> = rec.mounts.keys().cloned().collect();
    for node in &nodes {
        let _ = rec.node_mount_count(node);
    }
    let _ = rec.mounted_on();
    let mut changed = rec.clone();
    for node in &nodes {
        let ids: Vec<String> = changed.mounts[node].keys().cloned().collect();
        for id in ids {
            changed.add_mount(node, "boot", &id);
            let _ = changed.remove_mount(node, &id);
            let _ = changed.remove_mount(node, &id);
        }
    }
    let bytes = serde_json::to_vec(&rec).expect("records serialize");
    let again = decode_stored(key, &bytes).expect("a rewritten record decodes");
    assert_eq!(again, rec);
});
