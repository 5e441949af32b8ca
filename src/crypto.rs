//! The few primitives the daemon needs, all from OpenSSL: random bytes,
//! HMAC-SHA256 and constant-time comparison.

use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, Private};
use openssl::sign::Signer;

/// Initialises OpenSSL without its error-string tables, before any other
/// OpenSSL call (OpenSSL then ignores later requests to load them). Loading
/// them touches pages that would stay resident for messages this daemon
/// words itself; OpenSSL errors still carry their library and reason codes.
pub fn init() {
    const NO_LOAD_CRYPTO_STRINGS: u64 = 0x0000_0001;
    const NO_LOAD_SSL_STRINGS: u64 = 0x0010_0000;
    // SAFETY: an initialisation call with no settings object.
    unsafe {
        openssl_sys::OPENSSL_init_ssl(NO_LOAD_CRYPTO_STRINGS | NO_LOAD_SSL_STRINGS, std::ptr::null_mut());
    }
}

/// Fills a buffer from OpenSSL's CSPRNG. Failing to get randomness is not
/// recoverable for a security daemon.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut buf = [0u8; N];
    openssl::rand::rand_bytes(&mut buf).expect("OpenSSL random number generator failed");
    buf
}

/// Compares secrets in time independent of where they differ. Lengths are
/// not secret here (tokens and MACs have fixed lengths).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && openssl::memcmp::eq(a, b)
}

/// HMAC-SHA256 under a key chosen at start and never stored.
pub struct Mac {
    key: PKey<Private>,
}

impl Mac {
    pub fn new_random() -> Mac {
        let key = PKey::hmac(&random_bytes::<32>()).expect("HMAC key");
        Mac { key }
    }

    /// MAC over the parts, each prefixed with its length so that
    /// ("ab", "c") and ("a", "bc") differ.
    pub fn sign(&self, parts: &[&[u8]]) -> [u8; 32] {
        let mut out = [0u8; 32];
        let mut s = Signer::new(MessageDigest::sha256(), &self.key).expect("HMAC signer");
        for p in parts {
            s.update(&(p.len() as u64).to_be_bytes()).expect("HMAC update");
            s.update(p).expect("HMAC update");
        }
        s.sign(&mut out).expect("HMAC sign");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_separates_parts_and_keys() {
        let m = Mac::new_random();
        assert_eq!(m.sign(&[b"a", b"bc"]), m.sign(&[b"a", b"bc"]));
        assert_ne!(m.sign(&[b"ab", b"c"]), m.sign(&[b"a", b"bc"]));
        assert_ne!(Mac::new_random().sign(&[b"x"]), m.sign(&[b"x"]));
    }

    #[test]
    fn ct_eq_works() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"ab"));
        assert!(ct_eq(b"", b""));
    }
}
