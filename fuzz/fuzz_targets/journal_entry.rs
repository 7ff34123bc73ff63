//! A change-journal entry is read from the export, which other machines write: any bytes
//! decode to checked changes or to an error, never a panic. The bytes are tried as they
//! are and behind a header with their own hash, so that the fuzzer reaches the body's
//! decoding (an entry whose hash does not match is refused before it is parsed).
#![no_main]

use caravan::cluster::store::journal;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = journal::decode(data, 1, "fuzz-store");
    let mut entry = format!("caravan-journal 1 {}\n", blake3::hash(data).to_hex()).into_bytes();
    entry.extend_from_slice(data);
    if let Ok(changes) = journal::decode(&entry, 1, "fuzz-store") {
        for (name, record) in changes {
            // A record that decodes names its own key, as sled's do.
            if let Some(Ok(r)) = record {
                assert_eq!(r.name, name);
            }
        }
    }
});
