//! Passwords: argon2id hashing with OWASP's parameters or stronger, rehashing when the
//! configured costs were raised, and a length-first policy.
//!
//! Policy: at least `min_length` (≥ 12) characters, up to [`MAX_LENGTH`] (long passphrases are
//! welcome; the bound only stops a caller from making the server hash megabytes), no
//! composition rules, and refusal of passwords that are common, equal to the user name, or one
//! repeated character. The list of common passwords is ours: the patterns that lead every
//! public list of leaked passwords once shorter ones are excluded by the length rule.

use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher as _, PasswordVerifier as _};
use argon2::{Algorithm, Argon2, Params, Version};
use zeroize::Zeroizing;

use crate::config::PasswordConfig;
use crate::error::{Error, Result};

/// Longest password accepted, in characters.
pub const MAX_LENGTH: usize = 1024;

/// Common passwords of 12 characters or more, lower case. Compared after lower-casing.
const COMMON: &[&str] = &[
    "123456789012",
    "1234567890123",
    "12345678901234",
    "123456789123",
    "123123123123",
    "111111111111",
    "000000000000",
    "121212121212",
    "098765432109",
    "147258369147",
    "123qweasdzxc",
    "1q2w3e4r5t6y",
    "1qaz2wsx3edc",
    "1qaz2wsx3edc4rfv",
    "qwertyuiopas",
    "qwertyuiop123",
    "qwerty123456",
    "qwertyqwerty",
    "asdfghjkl123",
    "asdfasdfasdf",
    "zxcvbnm12345",
    "abcdefghijkl",
    "abc123abc123",
    "abcd1234abcd",
    "password1234",
    "password12345",
    "password123456",
    "password1234!",
    "passwordpassword",
    "password123!",
    "p@ssw0rd1234",
    "p@ssword1234",
    "iloveyou1234",
    "iloveyouiloveyou",
    "letmein12345",
    "letmeinletmein",
    "welcome12345",
    "welcome123456",
    "welcometothejungle",
    "changeme1234",
    "changemechangeme",
    "administrator",
    "administrator1",
    "admin1234567",
    "adminadminadmin",
    "rootrootroot",
    "superman1234",
    "football1234",
    "baseball1234",
    "sunshine1234",
    "princess1234",
    "starwars1234",
    "trustno1trustno1",
    "monkey123456",
    "dragon123456",
    "master123456",
    "correcthorsebatterystaple",
    "thequickbrownfox",
    "lifeboat1234",
    "lifeboatlifeboat",
    "backup123456",
    "backupbackup",
];

/// Checks `password` against the policy; the error says what to change.
pub fn check_policy(password: &str, username: &str, min_length: usize) -> Result<()> {
    let length = password.chars().count();
    if length < min_length {
        return Err(Error::WeakPassword(format!(
            "it has {length} characters; use at least {min_length} (a passphrase of several words is easy to remember)"
        )));
    }
    if length > MAX_LENGTH {
        return Err(Error::WeakPassword(format!(
            "it has {length} characters; the most accepted is {MAX_LENGTH}"
        )));
    }
    let lower = password.to_lowercase();
    if COMMON.contains(&lower.as_str()) {
        return Err(Error::WeakPassword(
            "it is on the list of common passwords; choose one nobody else uses".into(),
        ));
    }
    if lower == username.to_lowercase() {
        return Err(Error::WeakPassword(
            "it is the user name; choose something unrelated".into(),
        ));
    }
    let mut chars = password.chars();
    let first = chars.next();
    if chars.all(|c| Some(c) == first) {
        return Err(Error::WeakPassword("it repeats one character".into()));
    }
    Ok(())
}

/// Hashes and verifies passwords with the configured argon2id costs.
pub struct PasswordHasher {
    params: Params,
    /// A hash of a random password, verified when the user does not exist, so that an unknown
    /// user costs the same time as a wrong password.
    dummy: String,
}

impl std::fmt::Debug for PasswordHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PasswordHasher")
            .field("params", &self.params)
            .finish()
    }
}

impl PasswordHasher {
    /// A hasher with the configured costs.
    pub fn new(config: &PasswordConfig) -> Result<Self> {
        let params = Params::new(
            config.argon2_memory_kib,
            config.argon2_iterations,
            config.argon2_parallelism,
            None,
        )
        .map_err(|e| Error::Hash(e.to_string()))?;
        let mut hasher = PasswordHasher {
            params,
            dummy: String::new(),
        };
        hasher.dummy = hasher.hash(&crate::identity::random_token(24))?;
        Ok(hasher)
    }

    fn argon2(&self) -> Argon2<'static> {
        Argon2::new(Algorithm::Argon2id, Version::V0x13, self.params.clone())
    }

    /// A PHC string (`$argon2id$v=19$m=…,t=…,p=…$salt$hash`) for `password`.
    pub fn hash(&self, password: &str) -> Result<String> {
        let hash = self
            .argon2()
            .hash_password(password.as_bytes())
            .map_err(|e| Error::Hash(e.to_string()))?;
        Ok(hash.to_string())
    }

    /// True if `password` matches `hash` (with the costs recorded in the hash).
    pub fn verify(&self, hash: &str, password: &str) -> bool {
        let password = Zeroizing::new(password.as_bytes().to_vec());
        match PasswordHash::new(hash) {
            Ok(parsed) => self.argon2().verify_password(&password, &parsed).is_ok(),
            Err(_) => false,
        }
    }

    /// Spends the time of one verification without any user (see `dummy`).
    pub fn verify_dummy(&self, password: &str) {
        let _ = self.verify(&self.dummy, password);
    }

    /// True if `hash` was made with weaker costs than configured now (or another algorithm),
    /// so it should be replaced after the next successful login.
    pub fn needs_rehash(&self, hash: &str) -> bool {
        let Ok(parsed) = PasswordHash::new(hash) else {
            return true;
        };
        if parsed.algorithm.as_str() != "argon2id" {
            return true;
        }
        match Params::try_from(&parsed) {
            Ok(stored) => {
                stored.m_cost() < self.params.m_cost()
                    || stored.t_cost() < self.params.t_cost()
                    || stored.p_cost() < self.params.p_cost()
            }
            Err(_) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_is_length_first() {
        assert!(check_policy("short", "alice", 12).is_err());
        assert!(
            check_policy("Password1234", "alice", 12).is_err(),
            "common, any case"
        );
        assert!(check_policy("aaaaaaaaaaaaaa", "alice", 12).is_err());
        assert!(check_policy("alice-alice!", "alice-alice!", 12).is_err());
        assert!(check_policy("correct pony staple mountain", "alice", 12).is_ok());
        let long: String = "a quiet river bends ".repeat(4);
        assert!(long.chars().count() >= 64);
        assert!(check_policy(&long, "alice", 12).is_ok());
        assert!(check_policy(&"x y".repeat(600), "alice", 12).is_err());
        for common in COMMON {
            assert!(
                common.len() >= 12,
                "{common} is shorter than the length rule"
            );
        }
    }

    #[test]
    fn hashes_verify_and_weaker_costs_ask_for_rehash() {
        let base = PasswordConfig::default();
        let hasher = PasswordHasher::new(&base).unwrap();
        let hash = hasher.hash("correct pony staple").unwrap();
        assert!(
            hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{hash}"
        );
        assert!(hasher.verify(&hash, "correct pony staple"));
        assert!(!hasher.verify(&hash, "correct pony stapler"));
        assert!(!hasher.needs_rehash(&hash));
        let stronger = PasswordHasher::new(&PasswordConfig {
            argon2_iterations: 3,
            ..base
        })
        .unwrap();
        assert!(stronger.needs_rehash(&hash));
        assert!(
            stronger.verify(&hash, "correct pony staple"),
            "old hashes still verify"
        );
    }
}
