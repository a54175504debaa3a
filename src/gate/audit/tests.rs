//! The audit log's unit tests: receipts, the chain, signatures, keys; torn tails, failed writes, rotation.
use super::*;
use crate::decide::{Reason, Scores};

fn verdict(decision: Decision, scores: &[f32]) -> Verdict {
    let mut reason = Reason::new();
    let _ = reason.push_str("test");
    Verdict {
        decision,
        fake_probability: Some(scores.iter().sum::<f32>() / scores.len() as f32),
        frames_used: scores.len() as u32,
        frames_seen: scores.len() as u32 + 1,
        first_frame: 0,
        last_frame: scores.len() as u64,
        evidence: 1.5,
        reason,
        scores: scores.iter().copied().collect::<Scores>(),
    }
}

fn log_with_three_entries(name: &str) -> PathBuf {
    let path = crate::testing::scratch_dir(name).join("audit.jsonl");
    let models = vec![ModelRecord { id: "detector".into(), sha256: "ab".repeat(32) }];
    let thresholds = Thresholds { frame_threshold: 0.5, genuine_at: -4.55, fake_at: 2.99 };
    let mut log = AuditLog::open(&path, "kiosk-1", models, thresholds, None).unwrap();
    log.append("cam", &verdict(Decision::Genuine, &[0.1, 0.05])).unwrap();
    log.append("cam", &verdict(Decision::Fake, &[0.9, 0.95, 0.99])).unwrap();
    log.append("cam", &verdict(Decision::Uncertain, &[0.5])).unwrap();
    path
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path).unwrap().lines().map(str::to_string).collect()
}

#[test]
fn receipts_record_the_decision_scores_models_and_thresholds_and_verify() {
    let path = log_with_three_entries("intact");
    let verification = verify(&path, None).unwrap();
    assert_eq!(verification.entries, 3);
    assert!(verification.problem.is_none(), "{verification:?}");
    let second: serde_json::Value = serde_json::from_str(&lines(&path)[1]).unwrap();
    let entry = &second["entry"];
    assert_eq!(entry["sequence"], 1);
    assert_eq!(entry["decision"], "fake");
    assert_eq!(entry["board"], "kiosk-1");
    assert_eq!(entry["frame_scores"].as_array().unwrap().len(), 3);
    assert_eq!(entry["models"][0]["sha256"], "ab".repeat(32));
    assert_eq!(entry["thresholds"]["frame_threshold"], 0.5);
    let first: serde_json::Value = serde_json::from_str(&lines(&path)[0]).unwrap();
    assert_eq!(entry["previous"], first["hash"], "each entry carries the hash of the one before");
    assert_eq!(first["entry"]["previous"], GENESIS);
}

#[test]
fn an_altered_entry_is_found_at_its_line() {
    let path = log_with_three_entries("altered");
    let mut text = lines(&path);
    text[1] = text[1].replacen("\"decision\":\"fake\"", "\"decision\":\"genuine\"", 1);
    std::fs::write(&path, text.join("\n") + "\n").unwrap();
    let verification = verify(&path, None).unwrap();
    assert_eq!(verification.entries, 1);
    let problem = verification.problem.unwrap();
    assert!(problem.contains(" line 2:") && problem.contains("altered"), "{problem}");
}

#[test]
fn deleted_reordered_and_torn_entries_are_found() {
    let path = log_with_three_entries("deleted");
    let text = lines(&path);
    std::fs::write(&path, format!("{}\n{}\n", text[0], text[2])).unwrap();
    let problem = verify(&path, None).unwrap().problem.unwrap();
    assert!(problem.contains(" line 2:") && problem.contains("sequence 2 where 1"), "{problem}");

    std::fs::write(&path, format!("{}\n{}\n{}\n", text[1], text[0], text[2])).unwrap();
    let problem = verify(&path, None).unwrap().problem.unwrap();
    assert!(problem.contains(" line 1:"), "{problem}");

    // A crash in the middle of writing leaves a torn last line.
    std::fs::write(&path, format!("{}\n{}\n{}", text[0], text[1], &text[2][..40])).unwrap();
    let verification = verify(&path, None).unwrap();
    assert_eq!(verification.entries, 2);
    assert!(verification.problem.unwrap().contains(" line 3: an unfinished last line"));
}

#[test]
fn reopening_continues_an_intact_chain_and_refuses_a_broken_one() {
    let path = log_with_three_entries("reopen");
    let thresholds = Thresholds { frame_threshold: 0.5, genuine_at: -4.55, fake_at: 2.99 };
    let mut log = AuditLog::open(&path, "kiosk-1", Vec::new(), thresholds, None).unwrap();
    log.append("cam", &verdict(Decision::NoFace, &[0.2])).unwrap();
    drop(log);
    let verification = verify(&path, None).unwrap();
    assert_eq!((verification.entries, verification.problem), (4, None));

    let text = lines(&path);
    std::fs::write(&path, text[1..].join("\n") + "\n").unwrap();
    let error = AuditLog::open(&path, "kiosk-1", Vec::new(), thresholds, None).err().unwrap();
    assert!(format!("{error:#}").contains("does not verify"), "{error:#}");
}

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

fn signed_log(name: &str, signer: &SigningKey) -> PathBuf {
    let path = crate::testing::scratch_dir(name).join("audit.jsonl");
    let thresholds = Thresholds { frame_threshold: 0.5, genuine_at: -4.55, fake_at: 2.99 };
    let mut log = AuditLog::open(&path, "kiosk-1", Vec::new(), thresholds, Some(signer.clone())).unwrap();
    log.append("cam", &verdict(Decision::Genuine, &[0.1])).unwrap();
    log.append("cam", &verdict(Decision::Fake, &[0.9])).unwrap();
    log.append("cam", &verdict(Decision::Genuine, &[0.2])).unwrap();
    path
}

#[test]
fn signed_receipts_verify_against_the_device_key_only() {
    let device = key(7);
    let path = signed_log("signed", &device);
    let verification = verify(&path, Some(&device.verifying_key())).unwrap();
    assert_eq!((verification.entries, verification.signatures_checked), (3, 3));
    assert!(verification.problem.is_none(), "{verification:?}");
    let problem = verify(&path, Some(&key(8).verifying_key())).unwrap().problem.unwrap();
    assert!(problem.contains(" line 1:") && problem.contains("not signed by this key"), "{problem}");
    // Without a key, the chain is still checked and signatures are left alone.
    assert_eq!(verify(&path, None).unwrap().signatures_checked, 0);
}

#[test]
fn a_rebuilt_chain_without_the_key_is_found_where_it_was_rewritten() {
    // Whoever can write the file can alter an entry and recompute every hash after it: the chain then
    // verifies, but the signatures no longer match.
    let device = key(7);
    let path = signed_log("rebuilt", &device);
    let mut rebuilt = Vec::new();
    let mut previous = GENESIS.to_string();
    for (index, line) in lines(&path).iter().enumerate() {
        let parsed: serde_json::Value = serde_json::from_str(line).unwrap();
        if index == 0 {
            // The first entry stays as written.
            rebuilt.push(line.clone());
            previous = parsed["hash"].as_str().unwrap().to_string();
            continue;
        }
        let mut entry = parsed["entry"].clone();
        entry["previous"] = serde_json::Value::String(previous.clone());
        if index == 1 {
            entry["decision"] = serde_json::Value::String("genuine".into());
        }
        let entry_json = serde_json::to_string(&entry).unwrap();
        let hash = chain_hash(&previous, &entry_json);
        let signature = parsed["signature"].as_str().unwrap();
        rebuilt.push(format!(r#"{{"entry":{entry_json},"hash":"{hash}","signature":"{signature}"}}"#));
        previous = hash;
    }
    std::fs::write(&path, rebuilt.join("\n") + "\n").unwrap();
    assert!(verify(&path, None).unwrap().problem.is_none(), "the rebuilt chain itself is consistent");
    let verification = verify(&path, Some(&device.verifying_key())).unwrap();
    assert_eq!(verification.entries, 1);
    assert!(verification.problem.unwrap().contains(" line 2:"));
}

#[test]
fn unsigned_entries_and_another_devices_log_are_refused_when_signing() {
    let path = log_with_three_entries("unsigned");
    let problem = verify(&path, Some(&key(7).verifying_key())).unwrap().problem.unwrap();
    assert!(problem.contains("entry 0 is not signed"), "{problem}");
    let thresholds = Thresholds { frame_threshold: 0.5, genuine_at: -4.55, fake_at: 2.99 };
    let error = AuditLog::open(&path, "kiosk-1", Vec::new(), thresholds, Some(key(7))).err().unwrap();
    assert!(format!("{error:#}").contains("does not verify"), "{error:#}");
    let other = signed_log("other-device", &key(9));
    assert!(AuditLog::open(&other, "kiosk-1", Vec::new(), thresholds, Some(key(7))).is_err());
}

#[test]
fn key_files_are_created_private_and_refused_when_readable_by_others() {
    use std::os::unix::fs::PermissionsExt;
    let path = crate::testing::scratch_dir("audit-key").join("device.key");
    let public = generate_signing_key(&path).unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    let loaded = load_signing_key(&path).unwrap();
    assert_eq!(public_key_hex(&loaded), public);
    assert_eq!(parse_public_key(&public).unwrap(), loaded.verifying_key());
    assert!(generate_signing_key(&path).is_err(), "an existing key is never overwritten");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let error = load_signing_key(&path).err().unwrap();
    assert!(format!("{error:#}").contains("chmod 600"), "{error:#}");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(&path, "not hex\n").unwrap();
    assert!(format!("{:#}", load_signing_key(&path).err().unwrap()).contains("64 hexadecimal digits"));
    assert!(parse_public_key("abc").is_err());
}

/// A fresh directory of its own for one test: rotated files are found by listing the log's directory.
fn directory(name: &str) -> PathBuf {
    crate::testing::scratch_dir(name)
}

fn thresholds() -> Thresholds {
    Thresholds { frame_threshold: 0.5, genuine_at: -4.55, fake_at: 2.99 }
}

fn open(path: &Path, key: Option<SigningKey>) -> Result<AuditLog> {
    AuditLog::open(path, "kiosk-1", Vec::new(), thresholds(), key)
}

#[test]
fn a_torn_last_write_is_cut_and_counted_at_open_and_the_chain_goes_on() {
    let path = directory("torn").join("audit.jsonl");
    let mut log = open(&path, None).unwrap();
    for scores in [[0.1], [0.9], [0.2]] {
        log.append("cam", &verdict(Decision::Genuine, &scores)).unwrap();
    }
    drop(log);
    let whole = std::fs::read(&path).unwrap();
    let text = lines(&path);
    let second_end = text[0].len() + text[1].len() + 2;
    // Power lost in the middle of the third line; then a line of zeros a file system left, newline and all.
    for torn in [whole[..second_end + 40].to_vec(), [&whole[..second_end], &[0u8; 300][..], b"\n"].concat()] {
        std::fs::write(&path, &torn).unwrap();
        let checked = verify(&path, None).unwrap();
        assert_eq!(checked.entries, 2);
        assert!(checked.problem.as_deref().unwrap().contains("torn last write"), "{checked:?}");
        let mut log = open(&path, None).unwrap();
        assert_eq!(log.torn_bytes(), (torn.len() - second_end) as u64);
        assert_eq!(std::fs::read(&path).unwrap(), whole[..second_end], "cut back to the last whole entry");
        log.append("cam", &verdict(Decision::Fake, &[0.8])).unwrap();
        let mut head = crate::gate::Line::new();
        log.head_line(&mut head).unwrap();
        let head: serde_json::Value = serde_json::from_slice(&head).unwrap();
        assert_eq!((head["type"].as_str(), head["sequence"].as_u64()), (Some("audit_head"), Some(2)));
        assert_eq!(head["torn_bytes"].as_u64(), Some((torn.len() - second_end) as u64));
        assert_eq!(head["hash"].as_str(), Some(log.head().1));
        drop(log);
        let checked = verify(&path, None).unwrap();
        assert_eq!((checked.entries, checked.problem), (3, None));
    }
}

#[test]
fn damage_before_the_last_write_and_a_well_formed_altered_tail_are_refused_not_cut() {
    let path = directory("damage").join("audit.jsonl");
    let mut log = open(&path, None).unwrap();
    for _ in 0..3 {
        log.append("cam", &verdict(Decision::Genuine, &[0.1])).unwrap();
    }
    drop(log);
    let text = lines(&path);
    // Garbage in the middle, far from the end: not a write cut short.
    let filler = format!("{{\"padding\":\"{}\"}}", "x".repeat(MAX_TORN_BYTES as usize));
    std::fs::write(&path, format!("{}\ngarbage\n{filler}\n", text[0])).unwrap();
    let error = open(&path, None).err().unwrap();
    assert!(format!("{error:#}").contains("does not verify"), "{error:#}");
    // The last entry altered but whole: tampering, never cut.
    let altered = text[2].replacen("\"genuine\"", "\"fake\"", 1);
    std::fs::write(&path, format!("{}\n{}\n{altered}\n", text[0], text[1])).unwrap();
    let error = open(&path, None).err().unwrap();
    assert!(format!("{error:#}").contains("hash mismatch"), "{error:#}");
    assert_eq!(lines(&path).len(), 3, "a refused log is left as it is");
}

#[test]
fn a_failed_write_leaves_nothing_in_the_chain() {
    let path = directory("failed").join("audit.jsonl");
    let mut log = open(&path, None).unwrap();
    log.append("cam", &verdict(Decision::Genuine, &[0.1])).unwrap();
    // What a write cut short by a full disk leaves: part of a line, and the log told that its write failed.
    let mut file = OpenOptions::new().append(true).open(&path).unwrap();
    file.write_all(b"{\"entry\":{\"sequence\":1,\"prev").unwrap();
    log.dirty = true;
    let mut head = crate::gate::Line::new();
    log.head_line(&mut head).unwrap();
    assert!(String::from_utf8_lossy(&head).contains("\"failing\":true"));
    log.append("cam", &verdict(Decision::Fake, &[0.9])).unwrap();
    drop(log);
    let verification = verify(&path, None).unwrap();
    assert_eq!((verification.entries, verification.problem), (2, None));
}

#[test]
fn rotation_carries_the_chain_across_files_and_verify_follows_it() {
    let dir = directory("rotation");
    let path = dir.join("audit.jsonl");
    let device = key(7);
    let mut log = open(&path, Some(device.clone())).unwrap().rotate_at(Rotation { max_bytes: 1500, keep: 2 });
    for index in 0..12 {
        log.append("cam", &verdict(Decision::Genuine, &[index as f32 / 20.0])).unwrap();
    }
    drop(log);
    let files = chain_files(&path).unwrap();
    assert_eq!(files, [dir.join("audit.jsonl.2"), dir.join("audit.jsonl.1"), path.clone()], "keep = 2");
    let verification = verify(&path, Some(&device.verifying_key())).unwrap();
    assert!(verification.problem.is_none(), "{verification:?}");
    assert!(verification.first_sequence > 0, "the oldest files were deleted: {verification:?}");
    assert_eq!(verification.first_sequence + verification.entries, 12);
    // Each file's first entry names the last hash of the file before it.
    let last_of_older: serde_json::Value = serde_json::from_str(lines(&files[0]).last().unwrap()).unwrap();
    let first_of_newer: serde_json::Value = serde_json::from_str(&lines(&files[1])[0]).unwrap();
    assert_eq!(first_of_newer["entry"]["previous"], last_of_older["hash"]);

    // Reopened, the chain goes on from the newest file.
    let mut log = open(&path, Some(device.clone())).unwrap().rotate_at(Rotation { max_bytes: 1500, keep: 2 });
    log.append("cam", &verdict(Decision::Fake, &[0.9])).unwrap();
    assert_eq!(log.head().0, 13);
    drop(log);

    // A rotated file altered, or one taken out of the middle, is found.
    let rotated_one = lines(&dir.join("audit.jsonl.1"));
    let mut altered = rotated_one.clone();
    altered[0] = altered[0].replacen("\"genuine\"", "\"fake\"", 1);
    std::fs::write(dir.join("audit.jsonl.1"), altered.join("\n") + "\n").unwrap();
    let problem = verify(&path, None).unwrap().problem.unwrap();
    assert!(problem.contains("audit.jsonl.1 line 1") && problem.contains("hash mismatch"), "{problem}");
    assert!(open(&path, Some(device.clone())).is_err(), "a tampered rotated file refuses the start");
    std::fs::remove_file(dir.join("audit.jsonl.1")).unwrap();
    let problem = verify(&path, None).unwrap().problem.unwrap();
    assert!(problem.contains("was expected"), "{problem}");
}

#[test]
fn a_rotation_cut_short_by_a_crash_loses_nothing() {
    let dir = directory("rotation-crash");
    let path = dir.join("audit.jsonl");
    let mut log = open(&path, None).unwrap();
    for _ in 0..3 {
        log.append("cam", &verdict(Decision::Genuine, &[0.1])).unwrap();
    }
    drop(log);
    // Renamed to FILE.1, the new FILE not made yet.
    std::fs::rename(&path, rotated(&path, 1)).unwrap();
    let mut log = open(&path, None).unwrap();
    assert_eq!(log.head().0, 3, "the chain goes on from FILE.1");
    log.append("cam", &verdict(Decision::Genuine, &[0.1])).unwrap();
    drop(log);
    let verification = verify(&path, None).unwrap();
    assert_eq!((verification.entries, verification.problem, verification.files.len()), (4, None, 2));
}
