//! The shell's one source of randomness: ids that must differ between daemons and starts
//! (a daemon's boot id, a metadata store's id). The core draws nothing at random: these
//! reach it as values, which is what lets the simulation (tests/sim/) decide everything
//! from one seed.

/// A random id (a UUID from the kernel's generator); where that cannot be read, one made
/// of the process id and the time, which still differs between starts.
pub fn id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/uuid")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            format!("{}-{nanos}", std::process::id())
        })
}

#[cfg(test)]
mod tests {
    #[test]
    fn two_ids_differ() {
        assert_ne!(super::id(), super::id());
    }
}
