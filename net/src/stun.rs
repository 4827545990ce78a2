//! Just enough STUN (RFC 8489) to route a datagram from an address the
//! shard has not seen yet: the USERNAME attribute of a binding request,
//! whose first half is the ICE username fragment the server gave that peer.
//! Everything else about STUN is str0m's job.

const HEADER_LEN: usize = 20;
const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xA4, 0x42];
const ATTR_USERNAME: u16 = 0x0006;
/// RFC 8489 caps USERNAME below 513 bytes.
const USERNAME_BYTES_MAX: usize = 513;

/// Whether `datagram` looks like STUN: first byte 0..=3 (RFC 7983 demux) and the magic cookie.
pub fn is_stun(datagram: &[u8]) -> bool {
    datagram.len() >= HEADER_LEN && datagram[0] < 4 && datagram[4..8] == MAGIC_COOKIE
}

/// The local (server-side) ufrag a STUN request is addressed to: the part of
/// its USERNAME before the colon. `None` for anything that is not a
/// well-formed STUN message carrying one.
pub fn local_ufrag(datagram: &[u8]) -> Option<&str> {
    if !is_stun(datagram) {
        return None;
    }
    let body_len = usize::from(u16::from_be_bytes([datagram[2], datagram[3]]));
    let body = datagram.get(HEADER_LEN..HEADER_LEN + body_len)?;
    let mut at = 0;
    while at + 4 <= body.len() {
        let kind = u16::from_be_bytes([body[at], body[at + 1]]);
        let len = usize::from(u16::from_be_bytes([body[at + 2], body[at + 3]]));
        let value = body.get(at + 4..at + 4 + len)?;
        if kind == ATTR_USERNAME {
            if len > USERNAME_BYTES_MAX {
                return None;
            }
            let username = std::str::from_utf8(value).ok()?;
            return username.split_once(':').map(|(local, _)| local);
        }
        // Attributes are padded to a multiple of 4 bytes.
        at += 4 + len.div_ceil(4) * 4;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(username: &[u8]) -> Vec<u8> {
        let mut attrs = Vec::new();
        // A PRIORITY attribute first, so the parser has to skip one.
        attrs.extend_from_slice(&[0x00, 0x24, 0x00, 0x04, 1, 2, 3, 4]);
        attrs.extend_from_slice(&ATTR_USERNAME.to_be_bytes());
        attrs.extend_from_slice(&(username.len() as u16).to_be_bytes());
        attrs.extend_from_slice(username);
        while attrs.len() % 4 != 0 {
            attrs.push(0);
        }
        let mut m = vec![0x00, 0x01];
        m.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
        m.extend_from_slice(&MAGIC_COOKIE);
        m.extend_from_slice(&[7; 12]);
        m.extend_from_slice(&attrs);
        m
    }

    #[test]
    fn finds_the_servers_ufrag() {
        assert_eq!(local_ufrag(&request(b"srvA1:cli9")), Some("srvA1"));
    }

    #[test]
    fn refuses_what_is_not_a_stun_request_with_a_username() {
        assert_eq!(local_ufrag(&request(b"nocolon")), None);
        assert_eq!(local_ufrag(&request(&[0xff, 0xfe, b':', b'a'])), None);
        let mut truncated = request(b"srvA1:cli9");
        truncated.truncate(30);
        assert_eq!(local_ufrag(&truncated), None);
        let mut dtls = request(b"srvA1:cli9");
        dtls[0] = 22; // a DTLS record
        assert_eq!(local_ufrag(&dtls), None);
        assert_eq!(local_ufrag(&[]), None);
    }
}
