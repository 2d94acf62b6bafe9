//! Which element of a batch the kernel refused.
//!
//! An element message carries up to `ELEMS_PER_MSG` elements, so the failing sequence
//! number alone names up to 200 addresses. With extended ACKs the kernel also reports
//! the offset of the attribute it blamed inside that message (nf_tables points at the
//! element's NFTA_LIST_ELEM). These helpers walk the bytes vpnfw itself sent, with
//! safe code, to turn that offset back into an element index.

const NLMSG_HDRLEN: usize = 16;
const NFGENMSG_LEN: usize = 4;
const NLA_HDRLEN: usize = 4;
const NLA_TYPE_MASK: u16 = 0x3fff;
/// NFTA_SET_ELEM_LIST_ELEMENTS (linux/netfilter/nf_tables.h).
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;

/// The message with sequence number `seq` in a batch of concatenated messages.
pub fn find_msg(batch: &[u8], seq: u32) -> Option<&[u8]> {
    let mut off = 0;
    while let Some(h) = batch.get(off..off + NLMSG_HDRLEN) {
        let len = u32::from_ne_bytes([h[0], h[1], h[2], h[3]]) as usize;
        if len < NLMSG_HDRLEN {
            return None;
        }
        if u32::from_ne_bytes([h[8], h[9], h[10], h[11]]) == seq {
            return batch.get(off..off + len);
        }
        off += (len + 3) & !3;
    }
    None
}

/// The index of the element of a set-element message that contains byte `bad` (an
/// offset from the start of the message), if `bad` lies inside the element list.
pub fn elem_index(msg: &[u8], bad: usize) -> Option<usize> {
    let (list_start, list_end) = attrs(msg, NLMSG_HDRLEN + NFGENMSG_LEN, msg.len())
        .find(|&(ty, _, _)| ty == NFTA_SET_ELEM_LIST_ELEMENTS)
        .map(|(_, start, end)| (start + NLA_HDRLEN, end))?;
    attrs(msg, list_start, list_end).position(|(_, start, end)| (start..end).contains(&bad))
}

/// The attributes in `msg[from..to]`: (type, start of header, end of payload).
fn attrs(msg: &[u8], from: usize, to: usize) -> impl Iterator<Item = (u16, usize, usize)> + '_ {
    let to = to.min(msg.len());
    let mut off = from;
    std::iter::from_fn(move || {
        let h = msg.get(off..(off + NLA_HDRLEN).min(to))?;
        if h.len() < NLA_HDRLEN {
            return None;
        }
        let len = u16::from_ne_bytes([h[0], h[1]]) as usize;
        let ty = u16::from_ne_bytes([h[2], h[3]]) & NLA_TYPE_MASK;
        if len < NLA_HDRLEN || off + len > to {
            return None;
        }
        let item = (ty, off, off + len);
        off += (len + 3) & !3;
        Some(item)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(out: &mut Vec<u8>, ty: u16, data: &[u8]) -> usize {
        let at = out.len();
        out.extend_from_slice(&((NLA_HDRLEN + data.len()) as u16).to_ne_bytes());
        out.extend_from_slice(&ty.to_ne_bytes());
        out.extend_from_slice(data);
        out.resize(out.len().next_multiple_of(4), 0);
        at
    }

    fn message(seq: u32, payload: &[u8]) -> Vec<u8> {
        let len = NLMSG_HDRLEN + payload.len();
        let mut m = Vec::new();
        m.extend_from_slice(&(len as u32).to_ne_bytes());
        m.extend_from_slice(&[0; 4]);
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&[0; 4]);
        m.extend_from_slice(payload);
        m
    }

    #[test]
    fn offsets_map_to_elements_and_messages_to_seqs() {
        // Three elements of different sizes inside NFTA_SET_ELEM_LIST_ELEMENTS.
        let mut list = Vec::new();
        let e0 = attr(&mut list, 1 | 0x8000, &[0; 8]);
        let e1 = attr(&mut list, 1 | 0x8000, &[0; 21]);
        let e2 = attr(&mut list, 1 | 0x8000, &[0; 4]);
        let mut payload = vec![1, 0, 0, 0];
        attr(&mut payload, 1, b"vpnfw\0");
        attr(&mut payload, 2, b"staff_v4\0");
        let list_at = attr(&mut payload, NFTA_SET_ELEM_LIST_ELEMENTS | 0x8000, &list);
        let m = message(42, &payload);
        // Offsets as the kernel reports them: from the start of the message.
        let base = NLMSG_HDRLEN + list_at + NLA_HDRLEN;
        assert_eq!(elem_index(&m, base + e0), Some(0));
        assert_eq!(elem_index(&m, base + e1), Some(1));
        assert_eq!(elem_index(&m, base + e1 + 9), Some(1), "inside the element");
        assert_eq!(elem_index(&m, base + e2), Some(2));
        assert_eq!(elem_index(&m, NLMSG_HDRLEN + 4), None, "the table name");
        assert_eq!(elem_index(&m, m.len() + 100), None);

        let mut batch = message(41, &[0; 4]);
        batch.extend_from_slice(&m);
        batch.extend_from_slice(&message(43, &[0; 4]));
        assert_eq!(find_msg(&batch, 42), Some(&m[..]));
        assert_eq!(find_msg(&batch, 44), None);
        assert_eq!(find_msg(&batch[..10], 41), None, "truncated");
    }
}
