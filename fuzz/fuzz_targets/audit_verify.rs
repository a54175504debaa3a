//! The audit log verified as `deepgate audit verify` and the runtime's start do it: hash chain, sequence and,
//! with a public key, each entry's Ed25519 signature; a bad line is a problem reported, never a crash.
#![no_main]

use deepgate::gate::audit::{parse_public_key, verify};
use libfuzzer_sys::fuzz_target;

/// The public key of the device key that signed the seed logs (made with `deepgate audit keygen`; fuzz/README.md).
const PUBLIC_KEY: &str = include_str!("../audit_verify.public-key");

fuzz_target!(|data: &[u8]| {
    let path = deepgate_fuzz::scratch("audit_verify").join("audit.log");
    deepgate_fuzz::write(&path, data);
    let key = parse_public_key(PUBLIC_KEY.trim()).expect("the seeds' public key parses");
    let unsigned = verify(&path, None).expect("a log that exists can be read");
    let signed = verify(&path, Some(&key)).expect("a log that exists can be read");
    assert!(signed.entries <= unsigned.entries, "a signature check accepted more than the chain");
    assert_eq!(signed.signatures_checked, signed.entries);
});
