//! The device's browser session: the `authToken` cookie, compared with the
//! device's `local_auth_token`.

use super::outcome::{visible_ascii, Malformed};
use crate::crypto::ct_eq;

pub const NAME: &str = "authToken";

/// Every `authToken` value in the request's `Cookie` header values (a
/// browser may send two with different paths). `Err` if a value is not
/// visible ASCII.
pub fn session_tokens<'a>(values: &[&'a [u8]]) -> Result<Vec<&'a str>, Malformed> {
    let mut out = Vec::new();
    for value in values {
        let value = visible_ascii(value)?;
        for pair in value.split(';') {
            let Some((name, v)) = pair.trim().split_once('=') else { continue };
            if name.trim() == NAME {
                let v = v.trim();
                let v = v.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(v);
                out.push(v);
            }
        }
    }
    Ok(out)
}

/// Whether any presented token equals the device's (non-empty) token.
pub fn matches(presented: &[&str], device_token: &str) -> bool {
    let mut ok = false;
    for p in presented {
        // No short-circuit: every candidate is compared.
        ok |= ct_eq(p.as_bytes(), device_token.as_bytes());
    }
    ok && !device_token.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_tokens() {
        let h: [&[u8]; 2] = [b"a=1; authToken=abc ; b=2", b"authToken=\"def\""];
        assert_eq!(session_tokens(&h).unwrap(), vec!["abc", "def"]);
        assert_eq!(session_tokens(&[b"authtoken=abc; x"]).unwrap(), Vec::<&str>::new());
        assert!(session_tokens(&[b"authToken=\xff"]).is_err());
    }

    #[test]
    fn matching() {
        assert!(matches(&["x", "abc"], "abc"));
        assert!(!matches(&["abd"], "abc"));
        assert!(!matches(&[""], ""));
        assert!(!matches(&[], "abc"));
    }
}
