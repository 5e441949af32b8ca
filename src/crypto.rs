//! The few primitives the daemon needs, all from OpenSSL: random bytes,
//! HMAC-SHA256, constant-time comparison and wiping secrets from memory.

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
    fn OPENSSL_cleanse(ptr: *mut std::ffi::c_void, len: usize);
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

/// The daemon's allocator: the system's, wiping every block as it is freed
/// (or moved by a reallocation). Request heads, `Authorization` and
/// `Cookie` included, live in the HTTP layer's read buffers and header
/// maps, which it frees without wiping: this is what keeps them from
/// lingering in freed memory once a connection is done. `Secret` still
/// wipes as soon as a secret is no longer needed.
pub struct WipingAlloc;

// SAFETY: every block comes from `System` with the layout it is given back
// with; wiping writes only within a block still owned.
unsafe impl std::alloc::GlobalAlloc for WipingAlloc {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        std::alloc::System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        std::alloc::System.alloc_zeroed(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        OPENSSL_cleanse(ptr.cast(), layout.size());
        std::alloc::System.dealloc(ptr, layout)
    }

    /// Always a new block: the C library's realloc would free (or shrink)
    /// the old one unwiped.
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        let new_layout = std::alloc::Layout::from_size_align_unchecked(new_size, layout.align());
        let new = std::alloc::System.alloc(new_layout);
        if !new.is_null() {
            std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
            self.dealloc(ptr, layout);
        }
        new
    }
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
