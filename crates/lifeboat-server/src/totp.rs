//! Time-based one-time passwords (RFC 6238 over RFC 4226's HOTP): HMAC-SHA-1, 30-second steps,
//! 6 digits, accepted one step either side of now. Each accepted step is remembered per user
//! and only later steps are accepted afterwards, so a code works once.

use hmac::{Hmac, KeyInit, Mac};
use sha1::Sha1;

/// Seconds per step.
pub const STEP_SECONDS: u64 = 30;
/// Digits of the codes users type.
pub const DIGITS: u32 = 6;
/// Bytes of a generated secret (160 bits, the size RFC 4226 recommends for SHA-1).
pub const SECRET_BYTES: usize = 20;

/// HOTP value of `secret` at `counter` with `digits` digits (RFC 4226 §5.3).
pub fn hotp(secret: &[u8], counter: u64, digits: u32) -> u32 {
    let mut mac = Hmac::<Sha1>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(&counter.to_be_bytes());
    let digest = mac.finalize().into_bytes();
    let offset = (digest[digest.len() - 1] & 0x0f) as usize;
    let value = u32::from_be_bytes([
        digest[offset] & 0x7f,
        digest[offset + 1],
        digest[offset + 2],
        digest[offset + 3],
    ]);
    value % 10u32.pow(digits)
}

/// The step containing `unix_seconds`.
pub fn step_at(unix_seconds: u64) -> u64 {
    unix_seconds / STEP_SECONDS
}

/// The code at `step`, zero-padded.
pub fn code_at(secret: &[u8], step: u64) -> String {
    format!(
        "{:0width$}",
        hotp(secret, step, DIGITS),
        width = DIGITS as usize
    )
}

/// If `code` is valid at `now_step` ± 1 for a step later than `last_used_step`, that step (the
/// caller stores it as the new `last_used_step`); `None` otherwise.
pub fn verify(secret: &[u8], code: &str, now_step: u64, last_used_step: u64) -> Option<u64> {
    let code = code.trim();
    if code.len() != DIGITS as usize || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut accepted = None;
    for step in now_step.saturating_sub(1)..=now_step + 1 {
        // Compare every candidate, so timing does not say which step matched.
        let candidate = code_at(secret, step);
        let equal = constant_time_eq(candidate.as_bytes(), code.as_bytes());
        if equal && step > last_used_step && accepted.is_none() {
            accepted = Some(step);
        }
    }
    accepted
}

/// The `otpauth://` URI authenticator apps read (usually from a QR code).
pub fn provisioning_uri(secret: &[u8], issuer: &str, account: &str) -> String {
    let secret = data_encoding::BASE32_NOPAD.encode(secret);
    let issuer = percent_encode(issuer);
    let account = percent_encode(account);
    format!(
        "otpauth://totp/{issuer}:{account}?secret={secret}&issuer={issuer}&algorithm=SHA1&digits={DIGITS}&period={STEP_SECONDS}"
    )
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Equality whose time depends only on the lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6238 appendix B, SHA-1 rows: the seed is the ASCII string "12345678901234567890",
    /// codes have 8 digits.
    #[test]
    fn rfc6238_test_vectors() {
        let seed = b"12345678901234567890";
        for (time, expected) in [
            (59u64, 94287082u32),
            (1111111109, 7081804),
            (1111111111, 14050471),
            (1234567890, 89005924),
            (2000000000, 69279037),
            (20000000000, 65353130),
        ] {
            assert_eq!(hotp(seed, step_at(time), 8), expected, "time {time}");
        }
    }

    #[test]
    fn window_is_one_step_and_codes_work_once() {
        let secret = [42u8; SECRET_BYTES];
        let now = 1_000_000;
        let code = code_at(&secret, now);
        assert_eq!(verify(&secret, &code, now, 0), Some(now));
        assert_eq!(verify(&secret, &code, now, now), None, "replay refused");
        assert_eq!(
            verify(&secret, &code_at(&secret, now - 1), now, 0),
            Some(now - 1)
        );
        assert_eq!(
            verify(&secret, &code_at(&secret, now + 1), now, 0),
            Some(now + 1)
        );
        assert_eq!(verify(&secret, &code_at(&secret, now - 2), now, 0), None);
        assert_eq!(verify(&secret, &code_at(&secret, now + 2), now, 0), None);
        assert_eq!(verify(&secret, "12345", now, 0), None);
        assert_eq!(verify(&secret, "abcdef", now, 0), None);
    }

    #[test]
    fn provisioning_uri_carries_base32_secret() {
        let uri = provisioning_uri(b"12345678901234567890", "Lifeboat", "alice@example");
        assert!(
            uri.contains("secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ"),
            "{uri}"
        );
        assert!(uri.starts_with("otpauth://totp/Lifeboat:alice%40example?"));
    }
}
