//! Lower-case hex, the text form of every key file Duet reads or writes (token signing
//! seeds, token verifying keys, legacy HMAC secrets, the fast-path and reset keys).

/// Encodes `data` as lower-case hex.
pub fn encode(data: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(data.len() * 2);
    for b in data {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

/// Decodes hex (either case, surrounding whitespace ignored); `None` if it is not hex.
pub fn decode(s: &str) -> Option<Vec<u8>> {
    let s = s.trim().as_bytes();
    if s.len() % 2 != 0 {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16).and_then(|d| u8::try_from(d).ok());
    s.chunks_exact(2)
        .map(|p| Some(digit(p[0])? << 4 | digit(p[1])?))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrips_and_refuses_non_hex() {
        assert_eq!(encode(&[0, 0xAB, 0x7f]), "00ab7f");
        assert_eq!(decode(" 00AB7f\n"), Some(vec![0, 0xAB, 0x7f]));
        assert_eq!(decode("abc"), None);
        assert_eq!(decode("zz"), None);
        assert_eq!(decode(""), Some(vec![]));
    }
}
