//! The TCP gate's spool recovered from whatever a file holds (a torn write, corruption, a hostile edit): open
//! either refuses it or recovers verdicts; a recovered spool then takes an append, and opening it again
//! finds the same verdicts under the same ids, and never an id given out twice.
#![no_main]

use deepgate::gate::spool::Spool;
use libfuzzer_sys::fuzz_target;

/// Small, so that inputs reach the capacity bound.
const CAPACITY: usize = 8;

fuzz_target!(|data: &[u8]| {
    let directory = deepgate_fuzz::scratch("spool");
    let path = directory.join("gate.spool");
    deepgate_fuzz::remove(&directory.join("gate.spool.tmp"));
    deepgate_fuzz::write(&path, data);
    let Ok(mut spool) = Spool::open(&path, CAPACITY) else { return };
    assert!(spool.len() <= CAPACITY);
    let ids = |spool: &Spool| spool.records().iter().map(|record| record.id).collect::<Vec<u64>>();
    let found = ids(&spool);
    assert!(found.windows(2).all(|pair| pair[0] < pair[1]), "ids out of order: {found:?}");
    assert!(found.last().is_none_or(|&last| last < spool.next_id()));
    let next = spool.next_id();
    let Ok(appended) = spool.append(br#"{"type":"verdict"}"#) else { return };
    assert_eq!(appended.id, next, "the id after the highest the file held");
    let before = ids(&spool);
    drop(spool);
    let reopened = Spool::open(&path, CAPACITY).expect("a spool this process wrote opens again");
    assert_eq!(ids(&reopened), before);
    assert_eq!(reopened.next_id(), next + 1);
});
