//! Heartbeat files, which another machine may have written: any bytes decode to a
//! heartbeat of the node the file is named after or are refused; one that decodes is fed
//! to the liveness judgment, which answers without a panic.
#![no_main]

use std::time::Duration;

use caravan::core::liveness::Watchers;
use caravan::core::time::Moment;
use caravan::cluster::node::decode_heartbeat;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(hb) = decode_heartbeat(data, "b") else {
        return;
    };
    let boot = hb.boot_id.clone();
    let mut w = Watchers::new("a", "me", Duration::from_secs(1), Duration::from_secs(15));
    let t = Moment::from_origin(Duration::from_secs(1));
    w.saw(hb.clone(), t);
    w.saw(hb, t + Duration::from_secs(1));
    let _ = w.judge("b", Some(&boot), t + Duration::from_secs(20));
    let _ = w.judge("b", None, t + Duration::from_secs(20));
});
