//! Client certificates on the mTLS metrics listener. The TLS layer verifies
//! the chain against `ca_certs` only; this module decides whether a verified
//! certificate's identity is one of `client_allowed_sans` and names it for
//! logs. A verified, allowed certificate authenticates a scrape by itself.

use openssl::x509::X509Ref;

/// Subject alternative names as strings: DNS names, IP addresses, email
/// addresses and URIs.
pub fn sans(cert: &X509Ref) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(names) = cert.subject_alt_names() {
        for n in &names {
            if let Some(d) = n.dnsname() {
                out.push(d.to_owned());
            } else if let Some(ip) = n.ipaddress() {
                match ip.len() {
                    4 => out.push(
                        std::net::Ipv4Addr::from(<[u8; 4]>::try_from(ip).unwrap_or_default()).to_string(),
                    ),
                    16 => out.push(
                        std::net::Ipv6Addr::from(<[u8; 16]>::try_from(ip).unwrap_or_default()).to_string(),
                    ),
                    _ => {}
                }
            } else if let Some(e) = n.email() {
                out.push(e.to_owned());
            } else if let Some(u) = n.uri() {
                out.push(u.to_owned());
            }
        }
    }
    out
}

/// Whether the certificate carries one of the allowed names. An empty list
/// allows any certificate the CAs verify. DNS names compare without case.
pub fn allowed(cert: &X509Ref, allowed: &[String]) -> bool {
    allowed.is_empty() || sans(cert).iter().any(|s| allowed.iter().any(|a| a.eq_ignore_ascii_case(s)))
}

/// A short name for logs: the first SAN, else the subject's common name.
pub fn identity(cert: &X509Ref) -> String {
    if let Some(first) = sans(cert).into_iter().next() {
        return first;
    }
    cert.subject_name()
        .entries_by_nid(openssl::nid::Nid::COMMONNAME)
        .next()
        .and_then(|e| e.data().to_string().ok())
        .unwrap_or_else(|| "unnamed certificate".into())
}
