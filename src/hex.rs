//! The one hexadecimal encoding of the runtime: keys, hashes and signatures in files, logs and on the command line.

use anyhow::Result;

/// Lower-case hexadecimal, as keys, hashes and signatures are written in files and on the command line.
pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Exactly `N` bytes from `2N` hexadecimal digits (surrounding white space ignored); `what` names the value.
pub fn from_hex<const N: usize>(text: &str, what: &str) -> Result<[u8; N]> {
    let text = text.trim();
    anyhow::ensure!(
        text.len() == 2 * N && text.bytes().all(|b| b.is_ascii_hexdigit()),
        "{what} must be {} hexadecimal digits",
        2 * N
    );
    let mut bytes = [0u8; N];
    for (index, byte) in bytes.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * index..2 * index + 2], 16)?;
    }
    Ok(bytes)
}
