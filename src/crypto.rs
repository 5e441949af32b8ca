//! The few primitives the daemon needs, all from OpenSSL: random bytes,
//! HMAC-SHA256, constant-time comparison and wiping secrets from memory.

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

/// Lower-case hex, for digests and MACs written out.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Compares secrets in time independent of where they differ. Lengths are
/// not secret here (tokens and MACs have fixed lengths).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && openssl::memcmp::eq(a, b)
}

extern "C" {
    // libcrypto's memset that the compiler may not optimise away; the
    // openssl crates do not wrap it.
    pub(crate) fn OPENSSL_cleanse(ptr: *mut std::ffi::c_void, len: usize);
}

/// Bytes of a secret (a password, a presented token), wiped when dropped.
/// The whole allocation is wiped, not just the live part, so shrinking the
/// buffer in place leaves nothing behind either.
pub struct Secret(Vec<u8>);

impl Secret {
    /// `len` zero bytes, allocated once: filled in place, never grown.
    pub fn zeroed(len: usize) -> Secret {
        Secret(vec![0; len])
    }

    pub fn from_slice(bytes: &[u8]) -> Secret {
        let mut s = Secret::zeroed(bytes.len());
        s.0.copy_from_slice(bytes);
        s
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn as_mut_bytes(&mut self) -> &mut [u8] {
        &mut self.0
    }

    /// Keeps `range` only, moving it to the front of the same allocation.
    pub fn keep(&mut self, range: std::ops::Range<usize>) {
        let len = range.len();
        self.0.copy_within(range, 0);
        self.0.truncate(len);
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        // SAFETY: the pointer and capacity describe this Vec's allocation,
        // all of which is initialised (it was created zeroed, never grown).
        unsafe { OPENSSL_cleanse(self.0.as_mut_ptr().cast(), self.0.capacity()) }
    }
}

impl PartialEq for Secret {
    fn eq(&self, other: &Secret) -> bool {
        ct_eq(&self.0, &other.0)
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// HMAC-SHA256 under a key chosen at start and never stored. The keyed
/// context is made once and started again for each MAC: a `Signer` per MAC
/// set the key up and looked the algorithm up again each time, twice per
/// request with basic auth (8% of a scrape's instructions in callgrind).
pub struct Mac {
    ctx: std::sync::Mutex<MacCtx>,
}

/// libcrypto's MAC context, OpenSSL 3's `EVP_MAC` (the openssl crate does
/// not wrap it).
struct MacCtx(*mut openssl_sys::EVP_MAC_CTX);

// SAFETY: the context is only used under the mutex, one thread at a time.
unsafe impl Send for MacCtx {}

impl Drop for MacCtx {
    fn drop(&mut self) {
        // SAFETY: a context we made; freeing it wipes the key.
        unsafe { openssl_sys::EVP_MAC_CTX_free(self.0) }
    }
}

impl Mac {
    pub fn new_random() -> Mac {
        Mac::keyed(Secret::from_slice(&random_bytes::<32>()).as_bytes())
    }

    fn keyed(key: &[u8]) -> Mac {
        use openssl_sys as ffi;
        use std::ptr::{null, null_mut};
        // SAFETY: every object made here is checked, and freed once it is
        // no longer needed (the context keeps its own reference to the
        // algorithm); the key is a live buffer of its length.
        let ctx = unsafe {
            let mac = ffi::EVP_MAC_fetch(null_mut(), c"HMAC".as_ptr(), null());
            let ctx = MacCtx(if mac.is_null() { null_mut() } else { ffi::EVP_MAC_CTX_new(mac) });
            ffi::EVP_MAC_free(mac);
            let bld = ffi::OSSL_PARAM_BLD_new();
            let params = if !bld.is_null()
                && ffi::OSSL_PARAM_BLD_push_utf8_string(bld, c"digest".as_ptr(), c"SHA256".as_ptr(), 0) == 1
            {
                ffi::OSSL_PARAM_BLD_to_param(bld)
            } else {
                null_mut()
            };
            ffi::OSSL_PARAM_BLD_free(bld);
            let keyed = !ctx.0.is_null()
                && !params.is_null()
                && ffi::EVP_MAC_init(ctx.0, key.as_ptr(), key.len(), params) == 1;
            ffi::OSSL_PARAM_free(params);
            assert!(keyed, "HMAC key");
            ctx
        };
        Mac { ctx: std::sync::Mutex::new(ctx) }
    }

    /// MAC over the parts, each prefixed with its length so that
    /// ("ab", "c") and ("a", "bc") differ.
    pub fn sign(&self, parts: &[&[u8]]) -> [u8; 32] {
        let mut out = [0u8; 32];
        let ctx = self.ctx.lock().unwrap_or_else(|p| p.into_inner());
        // SAFETY: the keyed context, under its lock: a null key starts a
        // new MAC under the same key; the output holds 32 bytes.
        let ok = unsafe {
            let mut ok = openssl_sys::EVP_MAC_init(ctx.0, std::ptr::null(), 0, std::ptr::null()) == 1;
            for p in parts {
                let len = (p.len() as u64).to_be_bytes();
                ok &= openssl_sys::EVP_MAC_update(ctx.0, len.as_ptr(), len.len()) == 1;
                ok &= openssl_sys::EVP_MAC_update(ctx.0, p.as_ptr(), p.len()) == 1;
            }
            let mut n = 0;
            ok && openssl_sys::EVP_MAC_final(ctx.0, out.as_mut_ptr(), &mut n, out.len()) == 1 && n == 32
        };
        assert!(ok, "HMAC sign");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openssl::hash::MessageDigest;
    use openssl::pkey::PKey;
    use openssl::sign::Signer;

    #[test]
    fn mac_is_hmac_sha256() {
        // RFC 4231, test case 2, through the same context twice.
        let key = b"Jefe";
        let m = Mac::keyed(key);
        let want = "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843";
        // `sign` prefixes each part with its length: undo that by checking
        // against a Signer over the same bytes.
        let msg = b"what do ya want for nothing?";
        let mut framed = (msg.len() as u64).to_be_bytes().to_vec();
        framed.extend_from_slice(msg);
        let pkey = PKey::hmac(key).unwrap();
        let mut s = Signer::new(MessageDigest::sha256(), &pkey).unwrap();
        s.update(&framed).unwrap();
        let expected = s.sign_to_vec().unwrap();
        for _ in 0..2 {
            assert_eq!(m.sign(&[msg]).to_vec(), expected);
        }
        let mut s = Signer::new(MessageDigest::sha256(), &pkey).unwrap();
        s.update(msg).unwrap();
        assert_eq!(hex(&s.sign_to_vec().unwrap()), want);
    }

    #[test]
    fn mac_separates_parts_and_keys() {
        let m = Mac::new_random();
        assert_eq!(m.sign(&[b"a", b"bc"]), m.sign(&[b"a", b"bc"]));
        assert_ne!(m.sign(&[b"ab", b"c"]), m.sign(&[b"a", b"bc"]));
        assert_ne!(Mac::new_random().sign(&[b"x"]), m.sign(&[b"x"]));
    }

    #[test]
    fn secret_keeps_a_range_and_hides_itself() {
        let mut s = Secret::from_slice(b"user:pass");
        s.keep(5..9);
        assert_eq!(s.as_bytes(), b"pass");
        assert_eq!(format!("{s:?}"), "Secret(..)");
    }

    #[test]
    fn ct_eq_works() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"ab"));
        assert!(ct_eq(b"", b""));
    }
}
