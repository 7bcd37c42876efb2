//! Recovery of a Raft log segment file at open: torn tails are cut, damaged
//! headers refused, and whatever is kept reads back in index order. Input:
//! the bytes of the only segment file. Opening twice must agree: the first
//! open's cut leaves nothing for the second to cut.
#![no_main]

use libfuzzer_sys::fuzz_target;
use synapse_storage::fuzzing::open_wal_segment;

fuzz_target!(|data: &[u8]| {
    if let Ok(entries) = open_wal_segment(data) {
        assert!(
            entries.windows(2).all(|w| w[1].0 == w[0].0 + 1),
            "entries out of sequence"
        );
        let mut kept = Vec::new();
        for (index, value) in &entries {
            kept.extend_from_slice(&synapse_storage::fuzzing::encode_wal_record(*index, value));
        }
        assert!(data.starts_with(&kept), "kept records are not a prefix of the file");
        assert_eq!(
            open_wal_segment(&kept).ok(),
            Some(entries),
            "reopening what was kept changed it"
        );
    }
});
